//! PEFT adapter folders written and read on the toy model: round trip and bad input.

use crate::common::{D, Toy, input, max_abs_diff, randomize_lora_b};
use burn::backend::NdArray;
use burn::module::Module;
use kdlora_lora::io::{HostTensor, read_safetensors, write_safetensors};
use kdlora_lora::peft::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use kdlora_lora::{
    LoraConfig, LoraError, PeftAdapterConfig, TargetModules, inject, load_adapter, save_adapter,
};

type B = NdArray<f32>;

fn cfg() -> LoraConfig {
    LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        use_rslora: true,
        target_modules: Some(TargetModules::names(&[
            "query",
            "value",
            "attention.output.dense",
        ])),
        ..LoraConfig::default()
    }
}

/// A trained-looking adapted toy (random B, changed head) saved to a temp folder, plus the fresh
/// base it was built from (same seed of Burn's RNG is not guaranteed, so the base is cloned).
fn saved() -> (tempfile::TempDir, Toy<B>, Toy<B>) {
    let device = Default::default();
    let base = Toy::<B>::new(2, &device);
    let mut model = inject(base.clone(), &cfg(), &device).unwrap();
    randomize_lora_b(&mut model, &device);
    let w = model.classifier.base.weight.val();
    model.classifier.base.weight =
        burn::module::Param::initialized(model.classifier.base.weight.id, w.mul_scalar(-2.0));
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&model, &cfg(), dir.path(), "toy/base").unwrap();
    (dir, base, model)
}

#[test]
fn round_trip_reproduces_outputs_and_peft_layout() {
    let device = Default::default();
    let (dir, base, model) = saved();
    let x = input::<B>(3, &device);

    let (loaded, loaded_cfg) = load_adapter(base, dir.path(), &device).unwrap();
    assert!(max_abs_diff(model.forward(x.clone()), loaded.forward(x)) < 1e-6);
    assert_eq!(loaded_cfg.r, 4);
    assert_eq!(loaded_cfg.alpha, 8.0);
    assert!(loaded_cfg.use_rslora);
    assert_eq!(
        loaded.layers[0].query.adapter.as_ref().unwrap().scaling,
        4.0
    );

    // Keys and shapes as PEFT writes them: lora_A [r, in], lora_B [out, r], head [out, in].
    let tensors = read_safetensors(&dir.path().join(ADAPTER_WEIGHTS_FILE)).unwrap();
    let find = |k: &str| {
        tensors
            .iter()
            .find(|t| t.name == k)
            .map(|t| t.shape.clone())
    };
    assert_eq!(
        find("base_model.model.bert.encoder.layer.1.attention.output.dense.lora_A.weight"),
        Some(vec![4, D])
    );
    assert_eq!(
        find("base_model.model.bert.encoder.layer.0.attention.self.value.lora_B.weight"),
        Some(vec![D, 4])
    );
    assert_eq!(find("base_model.model.classifier.weight"), Some(vec![3, D]));
    assert_eq!(find("base_model.model.classifier.bias"), Some(vec![3]));
    assert_eq!(tensors.len(), 2 * 3 * 2 + 2);
    // The head weight is stored transposed to transformers' [out, in].
    let head = tensors
        .iter()
        .find(|t| t.name == "base_model.model.classifier.weight")
        .unwrap();
    let burn_w = model
        .classifier
        .base
        .weight
        .val()
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    assert_eq!(head.values[1], burn_w[3]); // HF [0][1] == Burn [1][0] (Burn row length 3)

    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(ADAPTER_CONFIG_FILE)).unwrap(),
    )
    .unwrap();
    assert_eq!(json["peft_type"], "LORA");
    assert_eq!(json["task_type"], "SEQ_CLS");
    assert_eq!(json["r"], 4);
    assert_eq!(json["lora_alpha"], 8);
    assert_eq!(json["use_rslora"], true);
    assert_eq!(json["base_model_name_or_path"], "toy/base");
    assert_eq!(
        json["target_modules"],
        serde_json::json!(["query", "value", "attention.output.dense"])
    );
    assert_eq!(json["modules_to_save"], serde_json::json!(["classifier"]));
    let peft = PeftAdapterConfig::read(dir.path()).unwrap();
    assert_eq!(peft.to_lora_config().target_modules, cfg().target_modules);
}

#[test]
fn loaded_adapter_is_trainable_and_base_frozen() {
    use burn::backend::Autodiff;
    type AB = Autodiff<B>;
    let device = Default::default();
    let (dir, _, _) = saved();
    let (model, c) = load_adapter(Toy::<AB>::new(2, &device), dir.path(), &device).unwrap();
    let counts = kdlora_lora::count_params(&model, &c);
    assert_eq!(counts.adapter, 2 * 3 * 4 * (D + D));
    assert_eq!(kdlora_lora::count_trainable(&model), counts.trainable(true));
}

#[test]
fn missing_adapter_config_is_a_clear_error() {
    let device = Default::default();
    let (dir, base, _) = saved();
    std::fs::remove_file(dir.path().join(ADAPTER_CONFIG_FILE)).unwrap();
    let err = load_adapter(base, dir.path(), &device).unwrap_err();
    assert!(matches!(err, LoraError::MissingAdapterConfig { .. }));
    let msg = err.to_string();
    assert!(msg.contains("adapter_config.json"), "{msg}");
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");

    let empty = tempfile::tempdir().unwrap();
    let err = load_adapter(Toy::<B>::new(1, &device), empty.path(), &device).unwrap_err();
    assert!(
        matches!(err, LoraError::MissingAdapterConfig { .. }),
        "{err}"
    );
}

#[test]
fn missing_or_pickle_only_weights_are_clear_errors() {
    let device = Default::default();
    let (dir, base, _) = saved();
    std::fs::rename(
        dir.path().join(ADAPTER_WEIGHTS_FILE),
        dir.path().join("adapter_model.bin"),
    )
    .unwrap();
    let err = load_adapter(base, dir.path(), &device).unwrap_err();
    assert!(
        matches!(err, LoraError::MissingAdapterWeights { has_bin: true, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("pickle"), "{err}");
}

#[test]
fn adapter_for_another_architecture_is_rejected() {
    let device = Default::default();
    let (dir, _, _) = saved();
    // Same shapes, different module paths: a DistilBERT-style model.
    let other = Toy::<B>::with_names(2, "distilbert.transformer", "distilbert", &device);
    let err = load_adapter(other, dir.path(), &device).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, LoraError::ArchitectureMismatch { count: 6, .. }),
        "{msg}"
    );
    assert!(msg.contains("toy/base"), "{msg}");
    assert!(
        msg.contains("bert.encoder.layer.0.attention.output.dense"),
        "{msg}"
    );
    assert!(
        msg.contains("distilbert.transformer.encoder.layer.0"),
        "{msg}"
    );
}

#[test]
fn rank_mismatch_is_rejected() {
    let device = Default::default();
    let (dir, base, _) = saved();
    let path = dir.path().join(ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"r\": 4", "\"r\": 8");
    std::fs::write(&path, text).unwrap();
    let err = load_adapter(base, dir.path(), &device).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            LoraError::RankMismatch {
                expected: 8,
                found: 4,
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("lora_A.weight"), "{msg}");
}

#[test]
fn wrong_shapes_and_incomplete_pairs_are_rejected() {
    let device = Default::default();
    let (dir, _, _) = saved();
    let weights = dir.path().join(ADAPTER_WEIGHTS_FILE);
    let original = read_safetensors(&weights).unwrap();

    // lora_A without its lora_B.
    let tensors: Vec<HostTensor> = original
        .iter()
        .filter(|t| {
            !t.name
                .ends_with("layer.0.attention.self.query.lora_B.weight")
        })
        .cloned()
        .collect();
    write_safetensors(&weights, &tensors).unwrap();
    let err = load_adapter(Toy::<B>::new(2, &device), dir.path(), &device).unwrap_err();
    assert!(matches!(err, LoraError::IncompletePair { .. }), "{err}");

    let mut tensors = original.clone();
    let t = tensors
        .iter_mut()
        .find(|t| t.name.ends_with("classifier.weight"))
        .unwrap();
    t.shape = vec![D, 3];
    write_safetensors(&weights, &tensors).unwrap();
    let err = load_adapter(Toy::<B>::new(2, &device), dir.path(), &device).unwrap_err();
    assert!(matches!(err, LoraError::ShapeMismatch { .. }), "{err}");

    let mut tensors = original;
    tensors.push(HostTensor {
        name: "base_model.model.bert.embeddings.word_embeddings.lora_embedding_A".into(),
        shape: vec![1],
        values: vec![0.0],
    });
    write_safetensors(&weights, &tensors).unwrap();
    let err = load_adapter(Toy::<B>::new(2, &device), dir.path(), &device).unwrap_err();
    assert!(matches!(err, LoraError::UnexpectedKey { .. }), "{err}");
}

#[test]
fn unsupported_peft_settings_and_bad_json_are_rejected() {
    let device = Default::default();
    let (dir, _, _) = saved();
    let path = dir.path().join(ADAPTER_CONFIG_FILE);
    let original = std::fs::read_to_string(&path).unwrap();
    for (from, to, key) in [
        ("\"use_dora\": false", "\"use_dora\": true", "use_dora"),
        (
            "\"peft_type\": \"LORA\"",
            "\"peft_type\": \"IA3\"",
            "peft_type",
        ),
        (
            "\"rank_pattern\": {}",
            "\"rank_pattern\": {\"query\": 2}",
            "rank_pattern",
        ),
    ] {
        std::fs::write(&path, original.replace(from, to)).unwrap();
        let err = load_adapter(Toy::<B>::new(2, &device), dir.path(), &device).unwrap_err();
        assert!(matches!(err, LoraError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains(key), "{err}");
    }
    std::fs::write(&path, "{\"r\": 4,").unwrap();
    let err = load_adapter(Toy::<B>::new(2, &device), dir.path(), &device).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LoraError::BadAdapterConfig { .. }), "{msg}");
    assert!(msg.contains("line 1"), "{msg}");
}

#[test]
fn loading_onto_an_adapted_model_is_rejected() {
    let device = Default::default();
    let (dir, _, model) = saved();
    let err = load_adapter(model, dir.path(), &device).unwrap_err();
    assert!(matches!(err, LoraError::AlreadyAdapted { .. }), "{err}");
}

#[test]
fn num_params_unchanged_by_round_trip() {
    let device = Default::default();
    let (dir, base, model) = saved();
    let (loaded, _) = load_adapter(base, dir.path(), &device).unwrap();
    assert_eq!(loaded.num_params(), model.num_params());
}

/// Rewrites `target_modules` in a saved adapter's config.
fn set_targets(dir: &std::path::Path, targets: serde_json::Value) {
    let path = dir.join(ADAPTER_CONFIG_FILE);
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["target_modules"] = targets;
    std::fs::write(&path, json.to_string()).unwrap();
}

#[test]
fn target_modules_naming_no_module_is_rejected() {
    let device = Default::default();
    let (dir, base, _) = saved();
    set_targets(dir.path(), serde_json::json!(["query", "nonexistent"]));
    let err = load_adapter(base, dir.path(), &device).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LoraError::TargetMismatch { .. }), "{msg}");
    assert!(msg.contains("nonexistent"), "{msg}");
    assert!(msg.contains(ADAPTER_CONFIG_FILE), "{msg}");
}

#[test]
fn tensors_outside_target_modules_are_rejected() {
    let device = Default::default();
    let (dir, base, _) = saved();
    // The file adapts value and attention.output.dense too.
    set_targets(dir.path(), serde_json::json!(["query"]));
    let err = load_adapter(base, dir.path(), &device).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LoraError::TargetMismatch { .. }), "{msg}");
    assert!(msg.contains("does not name"), "{msg}");
    assert!(msg.contains("value"), "{msg}");
}

#[test]
fn adapter_from_a_shallower_model_is_rejected() {
    let device = Default::default();
    // Trained on one layer, applied to two: layer 1 would silently stay unadapted.
    let one = inject(Toy::<B>::new(1, &device), &cfg(), &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&one, &cfg(), dir.path(), "toy/one-layer").unwrap();
    let err = load_adapter(Toy::<B>::new(2, &device), dir.path(), &device).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LoraError::TargetMismatch { .. }), "{msg}");
    assert!(msg.contains("layer.1"), "{msg}");
    assert!(msg.contains("toy/one-layer"), "{msg}");
    // The other way round the tensors name modules the model lacks.
    let two = inject(Toy::<B>::new(2, &device), &cfg(), &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&two, &cfg(), dir.path(), "toy/two-layer").unwrap();
    let err = load_adapter(Toy::<B>::new(1, &device), dir.path(), &device).unwrap_err();
    assert!(
        matches!(err, LoraError::ArchitectureMismatch { .. }),
        "{err}"
    );
}
