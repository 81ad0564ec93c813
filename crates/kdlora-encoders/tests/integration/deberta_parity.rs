//! DeBERTa-v2/v3 against transformers 4.46.3: logits and last hidden states of tiny random models
//! (fixtures written by `tests/fixtures/make_deberta_fixtures.py`), relative-position buckets, module
//! paths, saving, bare-encoder loading, v3 configurations and gradients.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use kdlora_encoders::deberta_v2::{DebertaV2Settings, log_bucket_position};
use kdlora_encoders::{
    EncoderError, LoadOptions, ModelConfig, ProblemType, SequenceClassifier, TensorWriter,
    WeightMap,
};
use kdlora_lora::AdaptableModel;
use serde_json::Value;

type B = NdArray<f32>;

const TOLERANCE: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn rows(value: &Value) -> Vec<Vec<f64>> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        })
        .collect()
}

fn int_tensor<BK: Backend>(value: &Value, device: &BK::Device) -> Tensor<BK, 2, Int> {
    let rows = rows(value);
    let (n, m) = (rows.len(), rows[0].len());
    let flat: Vec<i64> = rows.into_iter().flatten().map(|v| v as i64).collect();
    Tensor::from_data(TensorData::new(flat, [n, m]), device)
}

fn inputs<BK: Backend>(
    expected: &Value,
    device: &BK::Device,
) -> (Tensor<BK, 2, Int>, Tensor<BK, 2, Int>, Tensor<BK, 2, Int>) {
    (
        int_tensor::<BK>(&expected["input_ids"], device),
        int_tensor::<BK>(&expected["attention_mask"], device),
        int_tensor::<BK>(&expected["token_type_ids"], device),
    )
}

fn max_abs_diff(actual: Vec<f32>, expected: &[f64]) -> f32 {
    assert_eq!(actual.len(), expected.len(), "element count");
    actual
        .iter()
        .zip(expected)
        .map(|(a, e)| (a - *e as f32).abs())
        .fold(0.0, f32::max)
}

fn load(name: &str) -> SequenceClassifier<B> {
    let (model, report) =
        SequenceClassifier::<B>::load(&fixture(name), &LoadOptions::default(), &Default::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(
        report.initialised.is_empty(),
        "{name}: {:?}",
        report.initialised
    );
    assert!(report.unused.is_empty(), "{name}: {:?}", report.unused);
    model
}

/// Logits and last hidden state (every position, padding included) of a fixture's padded batch.
fn check_parity(name: &str) -> SequenceClassifier<B> {
    let model = load(name);
    let expected = read_json(&fixture(name).join("expected.json"));
    let device = Default::default();
    let (ids, mask, types) = inputs::<B>(&expected, &device);

    let logits = model.forward(ids.clone(), mask.clone(), types.clone());
    let want: Vec<f64> = rows(&expected["logits"]).into_iter().flatten().collect();
    let diff = max_abs_diff(logits.into_data().into_vec::<f32>().unwrap(), &want);
    assert!(diff < TOLERANCE, "{name}: logits differ by {diff}");

    let hidden = model.last_hidden_state(ids, mask, types);
    let want: Vec<f64> = expected["last_hidden_state"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|seq| rows(seq).into_iter().flatten())
        .collect();
    let diff = max_abs_diff(hidden.into_data().into_vec::<f32>().unwrap(), &want);
    assert!(diff < TOLERANCE, "{name}: hidden states differ by {diff}");

    // Exactly transformers' parameters: nothing extra (an unused LayerNorm, a projection built for
    // an absent attention term) and nothing missing.
    assert_eq!(
        model.num_params() as u64,
        expected["num_parameters"].as_u64().unwrap(),
        "{name}: parameter count"
    );
    model
}

#[test]
fn v3_layout_with_log_buckets_matches_transformers() {
    // 5 heads of 6, buckets 4 < sequence 12, p2c + c2p with shared keys, LayerNorm-ed relative
    // embeddings, no absolute positions, token types.
    let model = check_parity("deberta_v3_cls3");
    assert_eq!(model.num_labels(), 3);
    assert_eq!(model.model_type(), "deberta-v2");
}

#[test]
fn c2p_only_with_separate_position_key_matches_transformers() {
    // c2p only, pos_key_proj, unbucketed span 5 < sequence (clamped), absolute positions,
    // embed_proj 20 -> 24, gelu_new, tanh pooler.
    check_parity("deberta_c2p_cls2");
}

#[test]
fn p2c_only_regression_matches_transformers() {
    let model = check_parity("deberta_p2c_reg");
    assert_eq!(model.num_labels(), 1);
    assert_eq!(model.problem_type(), ProblemType::Regression);
}

#[test]
fn log_buckets_match_torch_beyond_the_fixture_lengths() {
    let tables = read_json(&fixture("deberta_buckets.json"));
    let mut checked = 0;
    for table in tables.as_array().unwrap() {
        let buckets = table["position_buckets"].as_u64().unwrap() as usize;
        let max_pos = table["max_relative_positions"].as_u64().unwrap() as usize;
        let distances = table["distances"].as_array().unwrap();
        let values = table["buckets"].as_array().unwrap();
        for (d, v) in distances.iter().zip(values) {
            let (d, v) = (d.as_i64().unwrap(), v.as_i64().unwrap());
            assert_eq!(
                log_bucket_position(d, buckets, max_pos),
                v,
                "distance {d}, buckets {buckets}, max {max_pos}"
            );
            checked += 1;
        }
    }
    // DeBERTa-v3's (256, 512) over distances up to 1023, plus the toy settings.
    assert!(checked > 2000, "{checked}");
}

fn linear_paths(model: &SequenceClassifier<B>) -> Vec<String> {
    let mut paths = Vec::new();
    model.visit_linears(&mut |path, _| paths.push(path.to_string()));
    paths
}

#[test]
fn module_paths_are_transformers_names() {
    let model = load("deberta_v3_cls3");
    let paths = linear_paths(&model);
    let layer0: Vec<&str> = paths
        .iter()
        .filter(|p| p.starts_with("deberta.encoder.layer.0."))
        .map(String::as_str)
        .collect();
    assert_eq!(
        layer0,
        [
            "deberta.encoder.layer.0.attention.self.query_proj",
            "deberta.encoder.layer.0.attention.self.key_proj",
            "deberta.encoder.layer.0.attention.self.value_proj",
            "deberta.encoder.layer.0.attention.output.dense",
            "deberta.encoder.layer.0.intermediate.dense",
            "deberta.encoder.layer.0.output.dense",
        ]
    );
    assert_eq!(paths.len(), 2 * 6 + 2);
    assert_eq!(paths[paths.len() - 2..], ["pooler.dense", "classifier"]);
    assert_eq!(model.head_module_paths(), ["pooler", "classifier"]);

    // Every path names a linear of the checkpoint transformers wrote, and vice versa.
    for name in ["deberta_v3_cls3", "deberta_c2p_cls2", "deberta_p2c_reg"] {
        let model = load(name);
        let weights = WeightMap::from_dir(&fixture(name)).unwrap();
        let ours: BTreeSet<String> = linear_paths(&model).into_iter().collect();
        let stored: BTreeSet<String> = weights
            .keys()
            .filter_map(|k| k.strip_suffix(".weight"))
            .filter(|k| k.contains("proj") || k.ends_with("dense") || *k == "classifier")
            .map(str::to_string)
            .collect();
        assert_eq!(ours, stored, "{name}");
    }
    let c2p = linear_paths(&load("deberta_c2p_cls2"));
    assert!(c2p.contains(&"deberta.encoder.layer.1.attention.self.pos_key_proj".to_string()));
    assert!(c2p.contains(&"deberta.embeddings.embed_proj".to_string()));
    let p2c = linear_paths(&load("deberta_p2c_reg"));
    assert!(p2c.contains(&"deberta.encoder.layer.0.attention.self.pos_query_proj".to_string()));
}

#[test]
fn save_pretrained_round_trips_with_the_same_tensor_names() {
    let device = Default::default();
    for name in ["deberta_v3_cls3", "deberta_c2p_cls2"] {
        let model = load(name);
        let dir = tempfile::tempdir().unwrap();
        model.save_pretrained(dir.path()).unwrap();

        let original = WeightMap::from_dir(&fixture(name)).unwrap();
        let saved = WeightMap::from_dir(dir.path()).unwrap();
        let a: BTreeSet<&str> = original.keys().collect();
        let b: BTreeSet<&str> = saved.keys().collect();
        assert_eq!(a, b, "{name}: saved tensor names");

        let config = read_json(&dir.path().join("config.json"));
        assert_eq!(config["model_type"], "deberta-v2");
        assert_eq!(
            config["architectures"][0],
            "DebertaV2ForSequenceClassification"
        );
        assert_eq!(
            config["position_buckets"],
            read_json(&fixture(name).join("config.json"))["position_buckets"]
        );

        let (again, _) =
            SequenceClassifier::<B>::load(dir.path(), &LoadOptions::default(), &device).unwrap();
        let expected = read_json(&fixture(name).join("expected.json"));
        let (ids, mask, types) = inputs::<B>(&expected, &device);
        let before = model.forward(ids.clone(), mask.clone(), types.clone());
        let after = again.forward(ids, mask, types);
        let before: Vec<f64> = before
            .into_data()
            .into_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        let diff = max_abs_diff(after.into_data().into_vec::<f32>().unwrap(), &before);
        assert_eq!(diff, 0.0, "{name}");
    }
}

#[test]
fn bare_v3_encoder_gets_a_fresh_pooler_and_classifier() {
    // A pretrained DeBERTa-v3 checkpoint: `deberta.`-less or prefixed names, no head, plus the
    // pretraining heads it was saved with.
    let mut original = WeightMap::from_dir(&fixture("deberta_v3_cls3")).unwrap();
    let keys: Vec<String> = original.keys().map(str::to_string).collect();
    let mut tensors = BTreeMap::new();
    for key in keys {
        if key.starts_with("pooler.") || key.starts_with("classifier.") {
            continue;
        }
        let tensor = original.take(&key).unwrap().clone();
        tensors.insert(
            key.trim_start_matches("deberta.").to_string(),
            tensor.clone(),
        );
        if key.ends_with("word_embeddings.weight") {
            tensors.insert("lm_predictions.lm_head.bias".to_string(), tensor);
        }
    }
    let config = ModelConfig::from_file(&fixture("deberta_v3_cls3").join("config.json")).unwrap();
    let mut weights = WeightMap::from_tensors(PathBuf::from("bare"), tensors);
    let options = LoadOptions::default().with_num_labels(2);
    let (model, report) =
        SequenceClassifier::<B>::from_weights(config, &mut weights, &options, &Default::default())
            .unwrap();
    assert_eq!(report.initialised, ["pooler.dense", "classifier"]);
    assert_eq!(report.unused, ["lm_predictions.lm_head.bias"]);
    assert_eq!(model.num_labels(), 2);

    // The encoder is the fixture's: same hidden states.
    let expected = read_json(&fixture("deberta_v3_cls3").join("expected.json"));
    let (ids, mask, types) = inputs::<B>(&expected, &Default::default());
    let hidden = model.last_hidden_state(ids, mask, types);
    let want: Vec<f64> = expected["last_hidden_state"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|seq| rows(seq).into_iter().flatten())
        .collect();
    assert!(max_abs_diff(hidden.into_data().into_vec::<f32>().unwrap(), &want) < TOLERANCE);
}

/// config.json of microsoft/deberta-v3-{base,small,xsmall} as published (no weights needed).
fn v3_config(hidden: usize, layers: usize, heads: usize, intermediate: usize) -> String {
    format!(
        r#"{{
  "model_type": "deberta-v2",
  "attention_probs_dropout_prob": 0.1,
  "hidden_act": "gelu",
  "hidden_dropout_prob": 0.1,
  "hidden_size": {hidden},
  "initializer_range": 0.02,
  "intermediate_size": {intermediate},
  "max_position_embeddings": 512,
  "relative_attention": true,
  "position_buckets": 256,
  "norm_rel_ebd": "layer_norm",
  "share_att_key": true,
  "pos_att_type": "p2c|c2p",
  "layer_norm_eps": 1e-7,
  "max_relative_positions": -1,
  "position_biased_input": false,
  "num_attention_heads": {heads},
  "num_hidden_layers": {layers},
  "type_vocab_size": 0,
  "vocab_size": 128100
}}"#
    )
}

#[test]
fn deberta_v3_base_small_xsmall_configs_load() {
    for (name, hidden, layers, heads, inner) in [
        ("base", 768, 12, 12, 3072),
        ("small", 768, 6, 12, 3072),
        ("xsmall", 384, 12, 6, 1536),
    ] {
        let path = Path::new("config.json");
        let config = ModelConfig::from_json_str(&v3_config(hidden, layers, heads, inner), path)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let s = DebertaV2Settings::from_config(&config, path).unwrap();
        assert_eq!(config.num_hidden_layers, layers, "{name}");
        assert_eq!(config.type_vocab_size, 0);
        assert!((config.layer_norm_eps - 1e-7).abs() < 1e-15);
        assert!(s.relative_attention && s.c2p && s.p2c && s.share_att_key);
        assert!(s.norm_rel_embeddings && !s.position_biased_input);
        assert_eq!(s.max_relative_positions, 512);
        assert_eq!(s.position_buckets, Some(256));
        assert_eq!(s.attention_span(), 256);
        assert_eq!(s.attention_head_size, 64);
        assert_eq!(s.scale_factor(), 3);
        assert_eq!(s.embedding_size, hidden);
        assert!((s.cls_dropout - 0.1).abs() < 1e-12 && s.pooler_dropout == 0.0);
    }
}

#[test]
fn v3_shaped_config_without_weights_lists_every_missing_tensor() {
    // The v3 attention settings (256 buckets over 512 positions) at a small width: every tensor is
    // missing, and the error lists each with its shape instead of panicking.
    let dir = tempfile::tempdir().unwrap();
    let text = v3_config(12, 1, 2, 16).replace("128100", "40");
    std::fs::write(dir.path().join("config.json"), text).unwrap();
    TensorWriter::new()
        .save(&dir.path().join("model.safetensors"))
        .unwrap();
    let err =
        SequenceClassifier::<B>::load(dir.path(), &LoadOptions::default(), &Default::default())
            .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, EncoderError::Tensors { .. }), "{message}");
    assert!(
        message.contains("deberta.encoder.rel_embeddings.weight"),
        "{message}"
    );
    assert!(message.contains("[512, 12]"), "{message}");
    assert!(
        message.contains("deberta.encoder.LayerNorm.weight"),
        "{message}"
    );
    assert!(!message.contains("position_embeddings"), "{message}");
}

#[test]
fn conv_layer_configs_are_refused_before_reading_weights() {
    let dir = tempfile::tempdir().unwrap();
    let text = v3_config(12, 1, 2, 16).replace(
        "\"model_type\": \"deberta-v2\",",
        "\"model_type\": \"deberta-v2\", \"conv_kernel_size\": 3, \"conv_act\": \"gelu\",",
    );
    std::fs::write(dir.path().join("config.json"), text).unwrap();
    let err =
        SequenceClassifier::<B>::load(dir.path(), &LoadOptions::default(), &Default::default())
            .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("conv_kernel_size") && message.contains("unsupported"),
        "{message}"
    );
    assert!(message.contains("config.json"), "{message}");
}

#[test]
fn gradients_reach_the_position_projections() {
    type AB = Autodiff<NdArray<f32>>;
    let device = Default::default();
    for name in ["deberta_v3_cls3", "deberta_c2p_cls2"] {
        let (model, _) =
            SequenceClassifier::<AB>::load(&fixture(name), &LoadOptions::default(), &device)
                .unwrap();
        let expected = read_json(&fixture(name).join("expected.json"));
        let (ids, mask, types) = inputs::<AB>(&expected, &device);
        let grads = model.forward(ids, mask, types).sum().backward();
        let mut checked = 0;
        model.visit_linears(&mut |path, linear| {
            if path.contains("layer.0.attention.self") || path == "classifier" {
                let grad = linear
                    .base
                    .weight
                    .val()
                    .grad(&grads)
                    .unwrap_or_else(|| panic!("{name}: no gradient for {path}"));
                let norm = grad.abs().sum().into_scalar();
                assert!(norm > 0.0, "{name}: zero gradient for {path}");
                checked += 1;
            }
        });
        assert!(checked >= 4, "{name}: {checked}");
    }
}
