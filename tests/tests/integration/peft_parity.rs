//! PEFT parity: adapters saved by PEFT 0.13.2 (tests/fixtures/make_lora_fixtures.py) applied to
//! kdlora's encoders give PEFT's logits; merged checkpoints give the same logits after a save and
//! reload; adapters saved by kdlora round-trip; bad adapters are clear errors.

use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use burn::tensor::{Int, Tensor, TensorData};
use kdlora_encoders::{LoadOptions, SequenceClassifier};
use kdlora_lora::peft::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use kdlora_lora::{
    AdaptableModel, LoraConfig, LoraError, count_params, load_adapter, merge_and_unload,
    save_adapter,
};

type B = NdArray<f32>;

const TOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/lora")
}

fn expected(variant: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    let all: serde_json::Value = serde_json::from_str(&text).unwrap();
    all[variant].clone()
}

fn base(variant: &str) -> SequenceClassifier<B> {
    let dir = fixtures().join(expected(variant)["base"].as_str().unwrap());
    SequenceClassifier::<B>::load(&dir, &LoadOptions::default(), &Default::default())
        .unwrap()
        .0
}

fn adapter_dir(variant: &str) -> PathBuf {
    fixtures().join(variant)
}

/// Logits of `model` on the variant's padded batch.
fn logits(model: &SequenceClassifier<B>, variant: &str) -> Vec<Vec<f32>> {
    let e = expected(variant);
    let rows = |key: &str| -> Option<Vec<Vec<i64>>> {
        e["inputs"]
            .get(key)
            .map(|v| serde_json::from_value(v.clone()).unwrap())
    };
    let ids = rows("input_ids").unwrap();
    let mask = rows("attention_mask").unwrap();
    let types = rows("token_type_ids").unwrap_or_else(|| vec![vec![0; ids[0].len()]; ids.len()]);
    let device = Default::default();
    let shape = [ids.len(), ids[0].len()];
    let t = |rows: Vec<Vec<i64>>| {
        let flat: Vec<i64> = rows.into_iter().flatten().collect();
        Tensor::<B, 2, Int>::from_data(TensorData::new(flat, shape), &device)
    };
    let out = model.forward(t(ids), t(mask), t(types));
    let labels = out.dims()[1];
    out.into_data()
        .to_vec::<f32>()
        .unwrap()
        .chunks(labels)
        .map(<[f32]>::to_vec)
        .collect()
}

fn want(variant: &str, key: &str) -> Vec<Vec<f32>> {
    serde_json::from_value(expected(variant)[key].clone()).unwrap()
}

fn max_diff(got: &[Vec<f32>], want: &[Vec<f32>]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .flat_map(|(g, w)| {
            assert_eq!(g.len(), w.len());
            g.iter().zip(w).map(|(a, b)| (a - b).abs())
        })
        .fold(0.0, f32::max)
}

const VARIANTS: &[&str] = &["bert_lora", "bert_rslora", "distilbert_lora"];

#[test]
fn peft_adapters_give_peft_logits() {
    let _guard = crate::common::lock();
    let device = Default::default();
    for variant in VARIANTS {
        let model = base(variant);
        // The base itself agrees with transformers, and the adapter changes the output.
        assert!(max_diff(&logits(&model, variant), &want(variant, "base_logits")) < TOL);
        let (model, cfg) = load_adapter(model, &adapter_dir(variant), &device).unwrap();
        let d = max_diff(&logits(&model, variant), &want(variant, "peft_logits"));
        assert!(d < TOL, "{variant}: max |kdlora - PEFT| = {d}");
        eprintln!("{variant}: max |kdlora - PEFT| = {d:.2e}");
        assert!(max_diff(&want(variant, "base_logits"), &want(variant, "peft_logits")) > 1e-2);
        let counts = count_params(&model, &cfg);
        assert!(
            counts.adapter > 0 && counts.head > 0,
            "{variant}: {counts:?}"
        );
    }
}

#[test]
fn adapters_land_on_the_expected_modules() {
    let _guard = crate::common::lock();
    let device = Default::default();
    let (model, cfg) = load_adapter(base("bert_lora"), &adapter_dir("bert_lora"), &device).unwrap();
    let mut adapted = Vec::new();
    model.visit_linears(&mut |path, l| {
        if let Some(a) = &l.adapter {
            adapted.push(path.to_string());
            assert_eq!(a.rank(), 4);
            assert_eq!(a.scaling, 2.0);
        }
    });
    assert_eq!(adapted.len(), 6, "{adapted:?}");
    assert!(adapted.contains(&"bert.encoder.layer.1.attention.output.dense".to_string()));
    assert_eq!(cfg.r, 4);
    // Closed form: 2 layers x 3 targets x r (24 + 24), head 24 x 3 + 3.
    let counts = count_params(&model, &cfg);
    assert_eq!(counts.adapter, kdlora_lora::lora_param_count(2, 24, 4, 3));
    assert_eq!(counts.head, 24 * 3 + 3);

    // rsLoRA: alpha / sqrt(r) = 6 / sqrt(3); regex targets key + intermediate.dense.
    let (model, _) =
        load_adapter(base("bert_rslora"), &adapter_dir("bert_rslora"), &device).unwrap();
    let mut n = 0;
    model.visit_linears(&mut |path, l| {
        if let Some(a) = &l.adapter {
            n += 1;
            assert!(
                path.ends_with(".key") || path.ends_with(".intermediate.dense"),
                "{path}"
            );
            assert!((a.scaling - 6.0 / 3f64.sqrt()).abs() < 1e-12);
        }
    });
    assert_eq!(n, 4);
}

#[test]
fn merged_checkpoints_give_the_same_logits_after_reload() {
    let _guard = crate::common::lock();
    let device = Default::default();
    for variant in VARIANTS {
        let (mut model, _) = load_adapter(base(variant), &adapter_dir(variant), &device).unwrap();
        assert!(merge_and_unload(&mut model) > 0);
        let d = max_diff(&logits(&model, variant), &want(variant, "merged_logits"));
        assert!(d < TOL, "{variant} merged in memory: {d}");
        let out = tempfile::tempdir().unwrap();
        model.save_pretrained(out.path()).unwrap();
        let (reloaded, _) =
            SequenceClassifier::<B>::load(out.path(), &LoadOptions::default(), &device).unwrap();
        let d = max_diff(&logits(&reloaded, variant), &want(variant, "peft_logits"));
        assert!(d < TOL, "{variant} merged and reloaded: {d}");
        let mut any_adapter = false;
        reloaded.visit_linears(&mut |_, l| any_adapter |= l.adapter.is_some());
        assert!(!any_adapter);
    }
}

#[test]
fn adapters_saved_by_kdlora_round_trip() {
    let _guard = crate::common::lock();
    let device = Default::default();
    for variant in VARIANTS {
        let (model, cfg) = load_adapter(base(variant), &adapter_dir(variant), &device).unwrap();
        let out = tempfile::tempdir().unwrap();
        save_adapter(&model, &cfg, out.path(), "fixture-base").unwrap();
        // For checking with PEFT itself: KDLORA_KEEP_ADAPTERS=DIR keeps a copy, which
        // `make_lora_fixtures.py --check-adapter DIR/<variant> --variant <variant>` loads.
        if let Some(keep) = std::env::var_os("KDLORA_KEEP_ADAPTERS") {
            save_adapter(
                &model,
                &cfg,
                &Path::new(&keep).join(variant),
                "fixture-base",
            )
            .unwrap();
        }
        let (again, cfg2) = load_adapter(base(variant), out.path(), &device).unwrap();
        let d = max_diff(&logits(&again, variant), &want(variant, "peft_logits"));
        assert!(d < TOL, "{variant} re-saved: {d}");
        assert_eq!(cfg2.r, cfg.r);
        assert_eq!(cfg2.use_rslora, cfg.use_rslora);
        assert_eq!(cfg2.target_modules, cfg.target_modules);
        // Same tensor keys as PEFT wrote.
        let keys = |dir: &Path| -> Vec<String> {
            kdlora_lora::io::read_safetensors(&dir.join(ADAPTER_WEIGHTS_FILE))
                .unwrap()
                .into_iter()
                .map(|t| t.name)
                .collect()
        };
        assert_eq!(keys(out.path()), keys(&adapter_dir(variant)), "{variant}");
    }
}

#[test]
fn injected_config_targets_the_same_modules_as_peft() {
    let _guard = crate::common::lock();
    // kdlora's own injection with the fixture's settings adapts the modules PEFT adapted.
    let device = Default::default();
    let peft = kdlora_lora::PeftAdapterConfig::read(&adapter_dir("bert_lora")).unwrap();
    let cfg = LoraConfig {
        modules_to_save: None,
        ..peft.to_lora_config()
    };
    let model = kdlora_lora::inject(base("bert_lora"), &cfg, &device).unwrap();
    let out = tempfile::tempdir().unwrap();
    save_adapter(&model, &cfg, out.path(), "bert_base").unwrap();
    let names = |dir: &Path| -> Vec<String> {
        kdlora_lora::io::read_safetensors(&dir.join(ADAPTER_WEIGHTS_FILE))
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect()
    };
    assert_eq!(names(out.path()), names(&adapter_dir("bert_lora")));
}

#[test]
fn bad_adapters_are_clear_errors() {
    let _guard = crate::common::lock();
    let device = Default::default();
    // A BERT adapter on DistilBERT: other module paths.
    let err =
        load_adapter(base("distilbert_lora"), &adapter_dir("bert_lora"), &device).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, LoraError::ArchitectureMismatch { .. }),
        "{msg}"
    );
    assert!(msg.contains("distilbert"), "{msg}");
    assert!(msg.contains("bert_base"), "{msg}");

    // Rank in the config disagrees with the tensors.
    let dir = tempfile::tempdir().unwrap();
    for f in [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE] {
        std::fs::copy(adapter_dir("bert_lora").join(f), dir.path().join(f)).unwrap();
    }
    let cfg_path = dir.path().join(ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(&cfg_path, text.replace("\"r\": 4", "\"r\": 16")).unwrap();
    let err = load_adapter(base("bert_lora"), dir.path(), &device).unwrap_err();
    assert!(
        matches!(
            err,
            LoraError::RankMismatch {
                expected: 16,
                found: 4,
                ..
            }
        ),
        "{err}"
    );

    // No adapter_config.json: a model folder is not an adapter folder.
    let model_dir = fixtures().join("bert_base");
    let err = load_adapter(base("bert_lora"), &model_dir, &device).unwrap_err();
    assert!(
        matches!(err, LoraError::MissingAdapterConfig { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("adapter_config.json"), "{err}");
}
