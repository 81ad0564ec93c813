//! Parameter counts of the paper's models, built by kdlora from `config.json` alone, against the
//! counts transformers 4.46.3 reports for `AutoModelForSequenceClassification.from_config` (2 labels)
//! and the closed form of query/value LoRA (`layers * 2 * r * (d_in + d_out)`). Table 2 of
//! `cargo xtask reproduce` prints closed-form counts; this test ties them to the real models.

use std::path::Path;

use burn::backend::NdArray;
use kdlora_encoders::{LoadOptions, ModelConfig, SequenceClassifier};
use kdlora_lora::{LoraConfig, count_params, inject};

type B = NdArray<f32>;

/// (config file, transformers' total, layers, hidden size)
const MODELS: &[(&str, usize, usize, usize)] = &[
    ("bert-base-uncased", 109_483_778, 12, 768),
    ("distilbert-base-uncased", 66_955_010, 6, 768),
    ("roberta-base", 124_647_170, 12, 768),
    ("distilroberta-base", 82_119_938, 6, 768),
    ("deberta-v3-base", 184_423_682, 12, 768),
    ("deberta-v3-small", 141_896_450, 6, 768),
];

#[test]
fn models_built_from_config_have_the_published_parameter_counts() {
    let _guard = crate::common::lock();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let device = Default::default();
    // One model at a time: the largest holds 184M parameters.
    for &(name, expected_total, layers, hidden) in MODELS {
        let path = root.join("configs/models").join(format!("{name}.json"));
        let config = ModelConfig::from_file(&path).unwrap();
        let options = LoadOptions::default().with_num_labels(2);
        let model = SequenceClassifier::<B>::from_config(config, &options, &device)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for r in [8, 64] {
            let cfg = LoraConfig {
                r,
                ..LoraConfig::default()
            };
            let adapted = inject(model.clone(), &cfg, &device).unwrap();
            let counts = count_params(&adapted, &cfg);
            assert_eq!(counts.base(), expected_total, "{name}: total parameters");
            assert_eq!(
                counts.adapter,
                layers * 2 * r * (hidden + hidden),
                "{name}: query/value adapter parameters at r = {r}"
            );
        }
    }
}
