//! Checkpoint loading edge cases: fresh heads, saving, and bad inputs (each a clear error, no panic).
//! Broken checkpoints are built in a temporary folder from the good bert_cls3 fixture.

use std::path::Path;

use crate::common::*;
use kdlora_encoders::{
    EncoderError, LoadOptions, SequenceClassifier, StoredTensor, TensorProblem, TensorWriter,
    WeightMap,
};

/// Rewrites `dir/model.safetensors` through `edit` (which may add, drop or change tensors).
fn rewrite_weights(
    dir: &Path,
    edit: impl Fn(&str, StoredTensor) -> Option<(String, StoredTensor)>,
) {
    let path = dir.join("model.safetensors");
    let weights = WeightMap::from_file(&path).unwrap();
    let mut writer = TensorWriter::new();
    let keys: Vec<String> = weights.keys().map(str::to_string).collect();
    for key in keys {
        let tensor = weights.get(&key).unwrap().clone();
        if let Some((key, tensor)) = edit(&key, tensor) {
            writer.insert(&key, tensor);
        }
    }
    writer.save(&path).unwrap();
}

fn load(dir: &Path) -> Result<SequenceClassifier<B>, EncoderError> {
    load_with(dir, &LoadOptions::default())
}

fn load_with(dir: &Path, options: &LoadOptions) -> Result<SequenceClassifier<B>, EncoderError> {
    SequenceClassifier::<B>::load(dir, options, &Default::default()).map(|(model, _)| model)
}

fn logits(model: &SequenceClassifier<B>) -> Vec<f32> {
    let expected = expected("bert_cls3");
    to_vec(model.forward(
        int_tensor(&expected.input_ids),
        int_tensor(&expected.attention_mask),
        int_tensor(&expected.token_type_ids),
    ))
}

#[test]
fn missing_config_json() {
    let dir = copy_fixture("bert_cls3");
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let err = load(dir.path()).unwrap_err();
    assert!(
        matches!(&err, EncoderError::MissingFile { path, .. } if path.ends_with("config.json")),
        "{err}"
    );
    let missing = load(&dir.path().join("nope")).unwrap_err();
    assert!(
        matches!(missing, EncoderError::MissingFile { .. }),
        "{missing}"
    );
}

#[test]
fn invalid_config_json() {
    let dir = copy_fixture("bert_cls3");
    std::fs::write(dir.path().join("config.json"), "{\"model_type\": \"bert\",").unwrap();
    let err = load(dir.path()).unwrap_err();
    assert!(matches!(&err, EncoderError::Json { .. }), "{err}");
    assert!(err.to_string().contains("config.json"), "{err}");
}

#[test]
fn truncated_safetensors() {
    let dir = copy_fixture("bert_cls3");
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load(dir.path()).unwrap_err();
    assert!(matches!(&err, EncoderError::Safetensors { .. }), "{err}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    // A file too short to hold even the header length.
    std::fs::write(&path, [1u8, 2, 3]).unwrap();
    let err = load(dir.path()).unwrap_err();
    assert!(matches!(&err, EncoderError::Safetensors { .. }), "{err}");
}

#[test]
fn missing_tensors_are_all_named() {
    let dir = copy_fixture("bert_cls3");
    let dropped = [
        "bert.encoder.layer.1.output.dense.weight",
        "bert.embeddings.LayerNorm.bias",
    ];
    rewrite_weights(dir.path(), |key, tensor| {
        (!dropped.contains(&key)).then(|| (key.to_string(), tensor))
    });
    let err = load(dir.path()).unwrap_err();
    let EncoderError::Tensors { problems, .. } = &err else {
        panic!("expected a tensor error, got {err}");
    };
    let mut keys: Vec<&str> = problems.iter().map(TensorProblem::key).collect();
    keys.sort();
    assert_eq!(keys, vec![dropped[1], dropped[0]]);
    assert!(problems.contains(&TensorProblem::Missing {
        key: dropped[0].to_string(),
        expected: vec![24, 40],
    }));
    let message = err.to_string();
    assert!(
        message.contains(dropped[0]) && message.contains("[24, 40]"),
        "{message}"
    );
}

#[test]
fn mis_shaped_tensor_names_both_shapes() {
    let dir = copy_fixture("bert_cls3");
    let key = "bert.encoder.layer.0.attention.self.query.weight";
    rewrite_weights(dir.path(), |k, tensor| {
        if k == key {
            Some((
                k.to_string(),
                StoredTensor {
                    shape: vec![24, 20],
                    data: tensor.data[..480].to_vec(),
                },
            ))
        } else {
            Some((k.to_string(), tensor))
        }
    });
    let err = load(dir.path()).unwrap_err();
    let EncoderError::Tensors { problems, .. } = &err else {
        panic!("expected a tensor error, got {err}");
    };
    assert_eq!(
        problems,
        &vec![TensorProblem::ShapeMismatch {
            key: key.to_string(),
            expected: vec![24, 24],
            found: vec![24, 20],
        }]
    );
    assert!(err.to_string().contains("[24, 20]"), "{err}");
}

/// Rewrites `dir/config.json` through `edit`.
fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(config.as_object_mut().unwrap());
    std::fs::write(&path, config.to_string()).unwrap();
}

/// Asserts a config.json error on `key` whose message has `needle`.
fn config_error(err: EncoderError, key: &str, needle: &str) {
    let message = err.to_string();
    assert!(
        matches!(&err, EncoderError::InvalidConfig { path, field, .. }
            if field == key && path.ends_with("config.json")),
        "{key}: {message}"
    );
    assert!(
        message.contains(needle),
        "{key}: {needle:?} not in {message}"
    );
}

/// Sizes far beyond the weights are refused before the model is built at them: each of these
/// once aborted the process (an allocation of terabytes) or built a billion layers first.
#[test]
fn absurd_sizes_are_refused_before_building() {
    let cases: [(&str, serde_json::Value, &str); 5] = [
        (
            "vocab_size",
            1_000_000_000_000u64.into(),
            "[1000000000000, 24]",
        ),
        ("hidden_size", (3u64 << 40).into(), "word_embeddings"),
        ("num_hidden_layers", 1_000_000_000u64.into(), "layer.2"),
        ("intermediate_size", (1u64 << 40).into(), "intermediate"),
        (
            "max_position_embeddings",
            (1u64 << 40).into(),
            "position_embeddings",
        ),
    ];
    for (key, value, needle) in cases {
        let dir = copy_fixture("bert_cls3");
        edit_config(dir.path(), |c| {
            c.insert(key.to_string(), value);
        });
        config_error(load(dir.path()).unwrap_err(), key, needle);
    }
}

/// A size key config.json lacks takes transformers' default, which the weights must then have.
#[test]
fn missing_sizes_are_named_when_the_weights_disagree() {
    for key in [
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
    ] {
        let dir = copy_fixture("bert_cls3");
        edit_config(dir.path(), |c| {
            c.remove(key);
        });
        config_error(load(dir.path()).unwrap_err(), key, "missing");
    }
    // DistilBERT spells them its own way.
    let dir = copy_fixture("distilbert_reg");
    edit_config(dir.path(), |c| {
        c.remove("dim");
    });
    config_error(load(dir.path()).unwrap_err(), "dim", "missing");
}

/// Without weights (a model built from its configuration), the sizes have a sane ceiling.
#[test]
fn fresh_models_have_a_size_ceiling() {
    let text = std::fs::read_to_string(fixture("bert_cls3").join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    config["vocab_size"] = 1_000_000_000_000u64.into();
    let config =
        kdlora_encoders::ModelConfig::from_json_str(&config.to_string(), Path::new("config.json"))
            .unwrap();
    let err =
        SequenceClassifier::<B>::from_config(config, &LoadOptions::default(), &Default::default())
            .unwrap_err();
    config_error(err, "vocab_size", "values");
}

#[test]
fn unknown_model_type() {
    let dir = copy_fixture("bert_cls3");
    let path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"model_type\": \"bert\"", "\"model_type\": \"gpt2\"");
    std::fs::write(&path, text).unwrap();
    let err = load(dir.path()).unwrap_err();
    assert!(
        matches!(&err, EncoderError::UnsupportedModelType { name, supported }
            if name == "gpt2" && supported.iter().any(|s| s == "bert")),
        "{err}"
    );
    assert!(err.to_string().contains("distilbert"), "{err}");
}

#[test]
fn pickle_checkpoint_is_refused() {
    let dir = copy_fixture("bert_cls3");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    std::fs::write(dir.path().join("pytorch_model.bin"), b"\x80\x02not really").unwrap();
    let err = load(dir.path()).unwrap_err();
    assert!(
        matches!(&err, EncoderError::PickleCheckpoint { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("safetensors"), "{err}");
    std::fs::remove_file(dir.path().join("pytorch_model.bin")).unwrap();
    let err = load(dir.path()).unwrap_err();
    assert!(
        matches!(&err, EncoderError::MissingFile { path, .. } if path.ends_with("model.safetensors")),
        "{err}"
    );
}

#[test]
fn integer_tensor_is_an_unsupported_dtype() {
    let dir = copy_fixture("bert_cls3");
    let path = dir.path().join("model.safetensors");
    let weights = WeightMap::from_file(&path).unwrap();
    let key = "bert.embeddings.token_type_embeddings.weight";
    // Float tensors as they were, except one stored as I64; plus an unused I64 buffer.
    let mut bytes: Vec<(String, Vec<u8>, Vec<usize>, safetensors::Dtype)> = weights
        .keys()
        .filter(|k| *k != key)
        .map(|k| {
            let t = weights.get(k).unwrap();
            let raw = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (k.to_string(), raw, t.shape.clone(), safetensors::Dtype::F32)
        })
        .collect();
    bytes.push((
        key.into(),
        vec![0u8; 2 * 24 * 8],
        vec![2, 24],
        safetensors::Dtype::I64,
    ));
    bytes.push((
        "bert.embeddings.position_ids".into(),
        vec![0u8; 40 * 8],
        vec![1, 40],
        safetensors::Dtype::I64,
    ));
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(k, raw, shape, dtype)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), raw).unwrap(),
            )
        })
        .collect();
    std::fs::write(&path, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
    let err = load(dir.path()).unwrap_err();
    let EncoderError::Tensors { problems, .. } = &err else {
        panic!("expected a tensor error, got {err}");
    };
    assert_eq!(
        problems,
        &vec![TensorProblem::UnsupportedDtype {
            key: key.into(),
            dtype: "I64".into()
        }]
    );
    assert!(err.to_string().contains("I64"), "{err}");
}

#[test]
fn bare_encoder_gets_a_seeded_fresh_head() {
    let dir = copy_fixture("bert_cls3");
    rewrite_weights(dir.path(), |key, tensor| {
        let head = key.starts_with("classifier") || key.starts_with("bert.pooler");
        (!head).then(|| (key.to_string(), tensor))
    });
    let options = LoadOptions::default().with_num_labels(1).with_seed(7);
    let (model, report) =
        SequenceClassifier::<B>::load(dir.path(), &options, &Default::default()).unwrap();
    assert_eq!(report.initialised, vec!["bert.pooler.dense", "classifier"]);
    assert_eq!(model.num_labels(), 1);
    assert_eq!(
        model.problem_type(),
        kdlora_encoders::ProblemType::Regression
    );

    // Same seed, same head; another seed, another head.
    let again = load_with(dir.path(), &options).unwrap();
    assert_eq!(logits(&model), logits(&again));
    let other = load_with(dir.path(), &options.clone().with_seed(8)).unwrap();
    assert_ne!(logits(&model), logits(&other));

    // Weights are N(0, initializer_range = 0.02) and the bias is zero.
    let SequenceClassifier::Bert(bert) = &model else {
        panic!("not BERT")
    };
    let weights = to_vec(bert.pooler.base.weight.val());
    let std = (weights.iter().map(|w| w * w).sum::<f32>() / weights.len() as f32).sqrt();
    assert!((std - 0.02).abs() < 0.004, "std {std}");
    let bias = to_vec(bert.classifier.base.bias.as_ref().unwrap().val());
    assert!(bias.iter().all(|b| *b == 0.0));
}

#[test]
fn fresh_head_option_replaces_a_trained_head_only() {
    let options = LoadOptions::default().with_fresh_head(true);
    let (model, report) =
        SequenceClassifier::<B>::load(&fixture("bert_cls3"), &options, &Default::default())
            .unwrap();
    // The pooler belongs to the pretrained encoder and is kept.
    assert_eq!(report.initialised, vec!["classifier"]);
    assert!(report.unused.is_empty());
    let trained = load(&fixture("bert_cls3")).unwrap();
    assert_ne!(logits(&model), logits(&trained));
}

#[test]
fn save_pretrained_round_trips() {
    for name in ["bert_cls3", "distilbert_reg", "roberta_cls2"] {
        let model = load(&fixture(name)).unwrap();
        let out = tempfile::tempdir().unwrap();
        let target = out.path().join("saved");
        model.save_pretrained(&target).unwrap();
        let reloaded = load(&target).unwrap();
        assert_eq!(reloaded.config().num_labels, model.config().num_labels);
        assert_eq!(reloaded.config().hidden_size, model.config().hidden_size);

        let expected = expected(name);
        let run = |m: &SequenceClassifier<B>| {
            to_vec(m.forward(
                int_tensor(&expected.input_ids),
                int_tensor(&expected.attention_mask),
                int_tensor(&expected.token_type_ids),
            ))
        };
        assert_eq!(run(&model), run(&reloaded), "{name}");
        // Same tensor names and shapes as the transformers checkpoint.
        let original = WeightMap::from_dir(&fixture(name)).unwrap();
        let saved = WeightMap::from_dir(&target).unwrap();
        let names = |w: &WeightMap| w.keys().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(names(&saved), names(&original), "{name}");
        for key in saved.keys() {
            assert_eq!(
                saved.get(key).unwrap().shape,
                original.get(key).unwrap().shape
            );
        }
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(target.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["model_type"], expected_type(name));
        // No temporary files are left behind.
        let leftovers: Vec<_> = std::fs::read_dir(&target)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

fn expected_type(name: &str) -> &'static str {
    match name {
        "bert_cls3" => "bert",
        "distilbert_reg" => "distilbert",
        _ => "roberta",
    }
}

#[test]
fn sequences_are_checked_before_forward() {
    let bert = load(&fixture("bert_cls3")).unwrap();
    assert!(
        bert.check_sequence(&[2, 5, 3], &[1, 1, 1], &[0, 1, 1])
            .is_ok()
    );
    for (ids, mask, types, needle) in [
        (vec![2, 100, 3], vec![1, 1, 1], vec![0, 0, 0], "vocabulary"),
        (vec![2, -1, 3], vec![1, 1, 1], vec![0, 0, 0], "vocabulary"),
        (vec![2, 5, 3], vec![1, 1], vec![0, 0, 0], "length"),
        (
            vec![2, 5, 3],
            vec![1, 1, 1],
            vec![0, 2, 0],
            "type_vocab_size",
        ),
        (
            vec![2, 5, 3],
            vec![1, 7, 1],
            vec![0, 0, 0],
            "attention_mask",
        ),
        (vec![5; 41], vec![1; 41], vec![0; 41], "maximum of 40"),
        (vec![], vec![], vec![], "empty"),
    ] {
        let err = bert.check_sequence(&ids, &mask, &types).unwrap_err();
        assert!(matches!(err, EncoderError::InvalidInput(_)));
        assert!(err.to_string().contains(needle), "{err}");
    }
    // RoBERTa positions start after padding_idx = 1: 18 positions leave 16 tokens.
    let roberta = load(&fixture("roberta_cls2")).unwrap();
    assert_eq!(roberta.max_sequence_length(), 16);
    // DistilBERT has no token types: only 0 is valid.
    let distil = load(&fixture("distilbert_reg")).unwrap();
    assert!(distil.check_sequence(&[2, 5], &[1, 1], &[0, 1]).is_err());
}

#[test]
fn dropout_is_active_only_when_training() {
    use burn::backend::Autodiff;
    use burn::module::AutodiffModule;
    type Ad = Autodiff<B>;

    let expected = expected("bert_cls3");
    let device = burn::backend::ndarray::NdArrayDevice::default();
    let (model, _) =
        SequenceClassifier::<Ad>::load(&fixture("bert_cls3"), &LoadOptions::default(), &device)
            .unwrap();
    let int = |rows: &[Vec<i64>]| {
        let flat: Vec<i64> = rows.iter().flatten().copied().collect();
        burn::tensor::Tensor::<Ad, 2, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(flat, [rows.len(), rows[0].len()]),
            &device,
        )
    };
    let run = || {
        model
            .forward(
                int(&expected.input_ids),
                int(&expected.attention_mask),
                int(&expected.token_type_ids),
            )
            .into_data()
            .into_vec::<f32>()
            .unwrap()
    };
    // hidden_dropout_prob is 0.1: two training passes differ.
    assert_ne!(run(), run());
    // The inner (validation) model is deterministic and matches transformers' eval mode.
    let valid = model.valid();
    let eval = logits(&valid);
    let want: Vec<f32> = expected.logits.iter().flatten().copied().collect();
    assert!(max_abs_diff(&eval, &want) < 1e-4);
    assert_eq!(eval, logits(&valid));
}
