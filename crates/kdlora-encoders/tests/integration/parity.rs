//! Logits and hidden states against transformers 4.46.3 (fixtures from tests/fixtures/make_parity.py).

use crate::common::*;
use kdlora_encoders::{LoadOptions, ProblemType, SequenceClassifier, WeightMap};
use kdlora_lora::AdaptableModel;

const TOLERANCE: f32 = 1e-4;

/// Loads a fixture, runs its padded batch, and compares logits and last hidden states.
fn check_parity(name: &str) -> SequenceClassifier<B> {
    let expected = expected(name);
    let (model, report) =
        SequenceClassifier::<B>::load(&fixture(name), &LoadOptions::default(), &Default::default())
            .unwrap();
    assert!(report.initialised.is_empty(), "{name}: {report:?}");
    assert!(report.unused.is_empty(), "{name}: {report:?}");
    let ids = int_tensor(&expected.input_ids);
    let mask = int_tensor(&expected.attention_mask);
    let types = int_tensor(&expected.token_type_ids);
    // The batch really is padded.
    assert!(expected.attention_mask.iter().flatten().any(|m| *m == 0));

    let logits = model.forward(ids.clone(), mask.clone(), types.clone());
    assert_eq!(logits.dims(), [expected.logits.len(), model.num_labels()]);
    let want: Vec<f32> = expected.logits.iter().flatten().copied().collect();
    let diff = max_abs_diff(&to_vec(logits), &want);
    eprintln!("{name}: max |logits - transformers| = {diff:.2e}");
    assert!(diff < TOLERANCE, "{name}: logits differ by {diff}");

    let hidden = model.last_hidden_state(ids, mask, types);
    let want: Vec<f32> = expected
        .last_hidden_state
        .iter()
        .flatten()
        .flatten()
        .copied()
        .collect();
    let diff = max_abs_diff(&to_vec(hidden), &want);
    assert!(diff < TOLERANCE, "{name}: hidden states differ by {diff}");
    model
}

#[test]
fn bert_with_three_labels_matches_transformers() {
    let model = check_parity("bert_cls3");
    assert_eq!(model.num_labels(), 3);
    assert_eq!(model.problem_type(), ProblemType::SingleLabelClassification);
}

#[test]
fn bert_in_f16_without_prefix_matches_transformers() {
    let weights = WeightMap::from_dir(&fixture("bert_cls3_f16_noprefix")).unwrap();
    assert!(weights.keys().all(|k| !k.starts_with("bert.")));
    check_parity("bert_cls3_f16_noprefix");
}

#[test]
fn distilbert_regression_matches_transformers() {
    let model = check_parity("distilbert_reg");
    assert_eq!(model.num_labels(), 1);
    assert_eq!(model.problem_type(), ProblemType::Regression);
}

#[test]
fn roberta_matches_transformers() {
    check_parity("roberta_cls2");
}

#[test]
fn roberta_in_bf16_matches_transformers() {
    check_parity("roberta_cls2_bf16");
}

#[test]
fn module_paths_are_transformers_paths() {
    let device = Default::default();
    let options = LoadOptions::default();
    let cases = [
        (
            "bert_cls3",
            vec![
                "bert.encoder.layer.0.attention.self.query",
                "bert.encoder.layer.1.attention.output.dense",
                "bert.encoder.layer.1.intermediate.dense",
                "bert.encoder.layer.1.output.dense",
                "bert.pooler.dense",
                "classifier",
            ],
            14,
            vec!["classifier"],
        ),
        (
            "distilbert_reg",
            vec![
                "distilbert.transformer.layer.0.attention.q_lin",
                "distilbert.transformer.layer.1.attention.out_lin",
                "distilbert.transformer.layer.1.ffn.lin2",
                "pre_classifier",
                "classifier",
            ],
            14,
            vec!["pre_classifier", "classifier"],
        ),
        (
            "roberta_cls2",
            vec![
                "roberta.encoder.layer.0.attention.self.key",
                "roberta.encoder.layer.1.output.dense",
                "classifier.dense",
                "classifier.out_proj",
            ],
            14,
            vec!["classifier"],
        ),
    ];
    for (name, some_paths, count, head) in cases {
        let (mut model, _) =
            SequenceClassifier::<B>::load(&fixture(name), &options, &device).unwrap();
        let mut paths = Vec::new();
        model.visit_linears(&mut |path, linear| {
            paths.push((path.to_string(), linear.d_input(), linear.d_output()))
        });
        assert_eq!(paths.len(), count, "{name}: {paths:?}");
        for path in some_paths {
            assert!(
                paths.iter().any(|(p, _, _)| p == path),
                "{name}: no {path} in {paths:?}"
            );
        }
        // The last projection is the classifier: hidden -> num_labels.
        let (_, d_in, d_out) = paths.last().unwrap();
        assert_eq!((*d_in, *d_out), (24, model.num_labels()));
        let mut mutable = Vec::new();
        model.visit_linears_mut(&mut |path, _| mutable.push(path.to_string()));
        let names: Vec<String> = paths.into_iter().map(|(p, _, _)| p).collect();
        assert_eq!(mutable, names, "{name}: visit orders differ");
        assert_eq!(model.head_module_paths(), head);
        assert_eq!(model.model_type(), model.config().model_type);
    }
}

/// `../shared` (or `KDLORA_SHARED`), where the pretrained MiniLM encoders live.
fn shared_dir() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("KDLORA_SHARED")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
        });
    dir.join("models").is_dir().then_some(dir)
}

#[derive(serde::Deserialize)]
struct SharedExpected {
    input_ids: Vec<Vec<i64>>,
    attention_mask: Vec<Vec<i64>>,
    token_type_ids: Vec<Vec<i64>>,
    hidden_first16: Vec<Vec<Vec<f32>>>,
    hidden_norm: Vec<Vec<f32>>,
}

/// A pretrained bare encoder (no head, no `bert.` prefix) loads with a fresh head and reproduces
/// transformers' last hidden state.
fn check_shared(model_name: &str, pooler_in_checkpoint: bool) {
    let Some(shared) = shared_dir() else {
        eprintln!("skipping: ../shared/models not found (set KDLORA_SHARED to run {model_name})");
        return;
    };
    let all: std::collections::HashMap<String, SharedExpected> =
        serde_json::from_str(&std::fs::read_to_string(fixture("shared_hidden.json")).unwrap())
            .unwrap();
    let expected = &all[model_name];
    let (model, report) = SequenceClassifier::<B>::load(
        &shared.join("models").join(model_name),
        &LoadOptions::default(),
        &Default::default(),
    )
    .unwrap();
    let mut fresh = vec!["classifier".to_string()];
    if !pooler_in_checkpoint {
        fresh.insert(0, "bert.pooler.dense".to_string());
    }
    assert_eq!(report.initialised, fresh);
    assert!(report.unused.is_empty(), "{:?}", report.unused);

    let hidden = model.last_hidden_state(
        int_tensor(&expected.input_ids),
        int_tensor(&expected.attention_mask),
        int_tensor(&expected.token_type_ids),
    );
    let [batch, seq, width] = hidden.dims();
    assert_eq!(width, 384);
    let values = to_vec(hidden);
    let mut worst_value = 0.0f32;
    let mut worst_norm = 0.0f32;
    for b in 0..batch {
        for s in 0..seq {
            let row = &values[(b * seq + s) * width..(b * seq + s + 1) * width];
            worst_value = worst_value.max(max_abs_diff(&row[..16], &expected.hidden_first16[b][s]));
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            worst_norm = worst_norm.max((norm - expected.hidden_norm[b][s]).abs());
        }
    }
    eprintln!(
        "{model_name}: max |hidden - transformers| = {worst_value:.2e}, norms {worst_norm:.2e}"
    );
    assert!(
        worst_value < TOLERANCE,
        "{model_name}: hidden values differ by {worst_value}"
    );
    assert!(
        worst_norm < 1e-3,
        "{model_name}: hidden norms differ by {worst_norm}"
    );
}

#[test]
fn all_minilm_l6_fp32_matches_transformers() {
    check_shared("all-MiniLM-L6-v2", true);
}

#[test]
fn paraphrase_minilm_l3_fp16_matches_transformers() {
    check_shared("paraphrase-MiniLM-L3-v2", false);
}
