//! The fuzz targets: every parser and loader that reads a user's file, called through its public
//! entry point, with valid seeds from the repository's fixtures or generated here.
//!
//! A target also checks what the loader promises of an accepted input where that is cheap (a
//! loaded model runs a forward pass, a saved configuration reloads, a store the loader reuses
//! holds finite values of the expected shape): a loader that accepts an inconsistent file and
//! lets training panic later is as much a crash as a panic in the parser.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use burn::module::{AutodiffModule, Module};
use burn::optim::GradientsParams;
use burn::record::{BinFileRecorder, FullPrecisionSettings};
use burn::tensor::{Int, Tensor, TensorData};
use kdlora_distill::{TeacherLogits, TeacherLogitsMeta};
use kdlora_encoders::deberta_v2::DebertaV2Settings;
use kdlora_encoders::{LoadOptions, ModelConfig, SequenceClassifier};
use kdlora_glue::{
    GlueDataset, GlueTask, Label, Prediction, Split, format_predictions, parse_jsonl,
    parse_predictions, parse_tsv,
};
use kdlora_lora::peft::{PeftAdapterConfig, adapter_modules};
use kdlora_lora::{LoraOps, load_adapter, merge_and_unload};
use kdlora_train::{
    CONFIG_KEYS, ConfigSources, EpochRecord, GroupedAdamW, RunConfig, RunDir,
    load_checkpoint_model, param_groups, read_jsonl,
};

use super::engine::{Kind, Part, Spec, Target, write_parts};

type B = NdArray<f32>;
type AB = Autodiff<NdArray<f32>>;

/// Every target, by name, in the order the long form runs them.
pub const NAMES: &[&str] = &[
    "glue_tsv",
    "glue_jsonl",
    "glue_predictions",
    "run_config",
    "model_config",
    "model_weights",
    "model_dir",
    "peft_adapter",
    "teacher_logits",
    "checkpoint",
    "checkpoint_records",
];

/// Builds the target called `name`.
pub fn make(name: &str) -> Box<dyn Target> {
    match name {
        "glue_tsv" => Box::new(Glue { jsonl: false }),
        "glue_jsonl" => Box::new(Glue { jsonl: true }),
        "glue_predictions" => Box::new(GluePredictions),
        "run_config" => Box::new(RunConfigTarget),
        "model_config" => Box::new(ModelConfigTarget),
        "model_weights" => Box::new(ModelWeights::new()),
        "model_dir" => Box::new(ModelDir::new()),
        "peft_adapter" => Box::new(PeftAdapter::new()),
        "teacher_logits" => Box::new(TeacherStore::new()),
        "checkpoint" => Box::new(Checkpoint::new(false)),
        "checkpoint_records" => Box::new(Checkpoint::new(true)),
        other => panic!(
            "unknown fuzz target {other:?} (known: {})",
            NAMES.join(", ")
        ),
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading fuzz seed {}: {e}", path.display()))
}

/// Files in `dir` whose names end with `suffix`, sorted (a stable seed order).
fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    files
}

fn selector(input: &[Vec<u8>], n: usize) -> usize {
    input[0].first().copied().unwrap_or(0) as usize % n
}

fn tokens(items: &[&str]) -> Vec<Vec<u8>> {
    items.iter().map(|s| s.as_bytes().to_vec()).collect()
}

/// Logits of a one-row batch of four tokens (ids below every fixture's vocabulary and lengths
/// within every fixture's positions).
fn forward_tiny<BK: LoraOps>(model: &SequenceClassifier<BK>) -> Vec<f32> {
    let device = Default::default();
    let ids = |v: Vec<i64>| Tensor::<BK, 2, Int>::from_data(TensorData::new(v, [1, 4]), &device);
    model
        .forward(
            ids(vec![2, 5, 7, 3]),
            ids(vec![1, 1, 1, 0]),
            ids(vec![0; 4]),
        )
        .into_data()
        .to_vec::<f32>()
        .unwrap_or_default()
}

// ------------------------------------------------------------------------------------------------
// GLUE TSV and JSON lines

/// Every (task, split) pair, valid or not: a selector byte picks one.
fn glue_pairs() -> Vec<(GlueTask, Split)> {
    GlueTask::ALL
        .iter()
        .flat_map(|&t| Split::ALL.iter().map(move |&s| (t, s)))
        .collect()
}

fn glue_pair(input: &[Vec<u8>]) -> (GlueTask, Split) {
    let pairs = glue_pairs();
    pairs[selector(input, pairs.len())]
}

fn describe_glue(input: &[Vec<u8>]) -> String {
    let (task, split) = glue_pair(input);
    format!(
        "task {} split {} (selector byte in `selector`)",
        task.name(),
        split.name()
    )
}

fn glue_selector(task: GlueTask, split: Split) -> u8 {
    glue_pairs()
        .iter()
        .position(|p| *p == (task, split))
        .expect("a known pair") as u8
}

fn tsv_label(task: GlueTask, row: usize) -> String {
    if task.is_regression() {
        ["0.000", "3.800", "5.000"][row % 3].to_string()
    } else {
        task.class_to_tsv(row % task.num_labels())
            .expect("class in range")
    }
}

/// A valid original-layout TSV file for `task`/`split`: three rows.
fn tsv_seed(task: GlueTask, split: Split) -> Vec<u8> {
    if task == GlueTask::Cola && split.is_labelled() {
        return b"gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n\
                 gj04\t0\t*\tThe more books I ask to whom he will give, the more he reads.\n\
                 clc95\t1\t\tOne more pseudo generalization and I'm giving up.\n"
            .to_vec();
    }
    let mut header = vec!["index".to_string()];
    header.extend(task.tsv_text_columns().iter().map(|c| c.to_string()));
    let label = task.tsv_label_column().filter(|_| split.is_labelled());
    header.extend(label.map(str::to_string));
    let mut out = header.join("\t");
    out.push('\n');
    for row in 0..3 {
        let mut fields = vec![row.to_string()];
        fields.extend(
            task.tsv_text_columns()
                .iter()
                .map(|c| format!("Text {row} of {c}.")),
        );
        if label.is_some() {
            fields.push(tsv_label(task, row));
        }
        out.push_str(&fields.join("\t"));
        out.push('\n');
    }
    out.into_bytes()
}

/// A valid Hugging Face JSON-lines file for `task`/`split`: three rows.
fn jsonl_seed(task: GlueTask, split: Split) -> Vec<u8> {
    let mut out = String::new();
    for row in 0..3 {
        let mut object = serde_json::Map::new();
        for field in task.text_fields() {
            object.insert(field.to_string(), format!("Text {row} of {field}.").into());
        }
        let label = if !split.is_labelled() {
            serde_json::json!(-1)
        } else if task.is_regression() {
            serde_json::json!([0.0, 3.8, 5.0][row % 3])
        } else {
            serde_json::json!(row % task.num_labels())
        };
        object.insert("label".into(), label);
        object.insert("idx".into(), row.into());
        out.push_str(&serde_json::Value::Object(object).to_string());
        out.push('\n');
    }
    out.into_bytes()
}

/// Column names, label spellings and control bytes of the GLUE formats.
fn glue_dictionary() -> Vec<Vec<u8>> {
    let mut words: Vec<String> = [
        "\t",
        "\n",
        "\r\n",
        "\r",
        "\u{feff}",
        "\u{2028}",
        "\0",
        "index",
        "idx",
        "label",
        "-1",
        "null",
        "\"label\":",
        "\"idx\":",
        "{",
        "}",
        "\"",
        ",",
        ":",
        "[",
        "]",
        "5.000",
        "nan",
        "inf",
        "1e309",
        "prediction",
        "index\tprediction",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for task in GlueTask::ALL {
        words.extend(task.tsv_text_columns().iter().map(|s| s.to_string()));
        words.extend(task.tsv_label_column().map(str::to_string));
        words.extend(task.text_fields().iter().map(|s| format!("\"{s}\"")));
        words.extend(task.label_names().iter().map(|s| s.to_string()));
    }
    words.sort();
    words.dedup();
    words.into_iter().map(String::into_bytes).collect()
}

/// The malformed-file fixtures of kdlora-glue's tests, with the task their names start with.
fn malformed_seeds(extension: &str) -> Vec<(GlueTask, Split, Vec<u8>)> {
    let dir = repo().join("crates/kdlora-glue/tests/data/malformed");
    files_ending(&dir, extension)
        .into_iter()
        .filter_map(|path| {
            let name = path.file_name()?.to_string_lossy().to_string();
            let task: GlueTask = name.split('_').next()?.parse().ok()?;
            let split = if name.contains("test") {
                Split::Test
            } else if name.contains("validation") {
                Split::Dev
            } else {
                Split::Train
            };
            Some((task, task.canonical_split(split).ok()?, read(&path)))
        })
        .collect()
}

/// `parse_tsv` or `parse_jsonl` (what `GlueDataset::load` calls on the file's bytes) for a task
/// and split chosen by the selector.
struct Glue {
    jsonl: bool,
}

impl Target for Glue {
    fn spec(&self) -> Spec {
        let (extension, kind) = if self.jsonl {
            (".jsonl", Kind::JsonLines)
        } else {
            (".tsv", Kind::Text)
        };
        let mut seeds = Vec::new();
        for task in GlueTask::ALL {
            for &split in task.splits() {
                let file = if self.jsonl {
                    jsonl_seed(task, split)
                } else {
                    tsv_seed(task, split)
                };
                seeds.push(vec![vec![glue_selector(task, split)], file]);
            }
        }
        let extra = malformed_seeds(extension)
            .into_iter()
            .map(|(task, split, file)| vec![vec![glue_selector(task, split)], file])
            .collect();
        Spec {
            name: if self.jsonl { "glue_jsonl" } else { "glue_tsv" },
            parts: vec![
                Part {
                    file: "selector",
                    kind: Kind::Selector,
                },
                Part {
                    file: if self.jsonl { "data.jsonl" } else { "data.tsv" },
                    kind,
                },
            ],
            seeds,
            extra,
            dictionary: glue_dictionary(),
            describe: describe_glue,
        }
    }

    fn run(&mut self, input: &[Vec<u8>], _work: &Path) -> Result<String, String> {
        let (task, split) = glue_pair(input);
        let path = Path::new("data");
        let rows = if self.jsonl {
            parse_jsonl(&input[1], path, task, split)
        } else {
            parse_tsv(&input[1], path, task, split)
        }
        .map_err(|e| e.to_string())?;
        // Accepted: one example per row, indices in row order, labels of the task's kind.
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(row.index, i, "example indices follow the rows");
            match row.label {
                Some(Label::Class(c)) => assert!(c < task.num_labels(), "class {c} in range"),
                Some(Label::Score(s)) => assert!((0.0..=5.0).contains(&s), "score {s} in range"),
                None => assert!(!split.is_labelled(), "labelled split without a label"),
            }
            assert_eq!(row.text_b.is_some(), task.is_pair(), "text_b iff pair task");
        }
        let n = rows.len();
        let dataset = GlueDataset::from_examples(task, split, rows);
        let counts = dataset.label_counts();
        Ok(format!(
            "{} {} rows={} classes={}",
            task.name(),
            split.name(),
            n.min(3),
            counts.len()
        ))
    }
}

// ------------------------------------------------------------------------------------------------
// Submission files

fn describe_task(input: &[Vec<u8>]) -> String {
    let task = GlueTask::ALL[selector(input, GlueTask::ALL.len())];
    format!("task {} (selector byte in `selector`)", task.name())
}

/// `parse_predictions` (`kdlora score --predictions`): the submission file's reader.
struct GluePredictions;

impl Target for GluePredictions {
    fn spec(&self) -> Spec {
        let seeds = GlueTask::ALL
            .iter()
            .enumerate()
            .map(|(i, &task)| {
                let predictions: Vec<Prediction> = (0..4)
                    .map(|index| Prediction {
                        index,
                        label: if task.is_regression() {
                            Label::Score([0.0, 2.5, 4.75, 5.0][index])
                        } else {
                            Label::Class(index % task.num_labels())
                        },
                    })
                    .collect();
                let text = format_predictions(task, &predictions).expect("valid predictions");
                vec![vec![i as u8], text.into_bytes()]
            })
            .collect();
        Spec {
            name: "glue_predictions",
            parts: vec![
                Part {
                    file: "selector",
                    kind: Kind::Selector,
                },
                Part {
                    file: "predictions.tsv",
                    kind: Kind::Text,
                },
            ],
            seeds,
            extra: Vec::new(),
            dictionary: glue_dictionary(),
            describe: describe_task,
        }
    }

    fn run(&mut self, input: &[Vec<u8>], _work: &Path) -> Result<String, String> {
        let task = GlueTask::ALL[selector(input, GlueTask::ALL.len())];
        let predictions = parse_predictions(&input[1], Path::new("predictions.tsv"), task)
            .map_err(|e| e.to_string())?;
        // Accepted: written back in the task's spelling, the file reads as the same predictions.
        let text = format_predictions(task, &predictions)
            .unwrap_or_else(|e| panic!("accepted predictions do not format: {e}"));
        let again = parse_predictions(text.as_bytes(), Path::new("again.tsv"), task)
            .unwrap_or_else(|e| panic!("formatted predictions do not parse: {e}\n{text}"));
        assert_eq!(again, predictions, "predictions round-trip");
        Ok(format!("{} n={}", task.name(), predictions.len().min(3)))
    }
}

// ------------------------------------------------------------------------------------------------
// Run configuration (TOML)

const MODEL_TYPES: &[&str] = &["bert", "distilbert", "roberta", "deberta-v2", "gpt2"];

/// `RunConfig::load` (the layered loader `kdlora train --config` uses, with `--set` overrides
/// from the second part, one per line) and `RunConfig::from_toml_file` (a run folder's
/// `config.toml`, read by eval, predict and resume).
struct RunConfigTarget;

impl Target for RunConfigTarget {
    fn spec(&self) -> Spec {
        let mut files: Vec<PathBuf> = files_ending(&repo().join("configs/cpu"), ".toml")
            .into_iter()
            .filter(|p| !p.ends_with("reproduce.toml"))
            .collect();
        files.push(repo().join("tests/fixtures/run_lora/config.toml"));
        let overrides = [
            "",
            "lora.r=16\nepochs=2",
            "kd.temperature=4\nkd.alpha=0.25",
            "engine=learner\ncheckpoint_steps=0",
            "lora.target_modules=[\"query\", \"value\"]",
            "max_train_examples=10\nteacher=runs/t",
        ];
        let seeds = files
            .iter()
            .enumerate()
            .map(|(i, f)| vec![read(f), overrides[i % overrides.len()].as_bytes().to_vec()])
            .collect();
        // The keys as `RunConfig` lists them, dotted (`lora.r`) and by their last part (`r`, as
        // written under a `[lora]` table).
        let mut keys: Vec<&str> = CONFIG_KEYS.iter().map(|k| k.key).collect();
        keys.extend(
            CONFIG_KEYS
                .iter()
                .filter_map(|k| k.key.split_once('.'))
                .flat_map(|(table, key)| [table, key]),
        );
        keys.sort_unstable();
        keys.dedup();
        let mut dictionary = tokens(&keys);
        dictionary.extend(tokens(&[
            "=", " = ", "\n", "[", "]", "\"", "${", "}", "#", "'", ".",
        ]));
        Spec {
            name: "run_config",
            parts: vec![
                Part {
                    file: "config.toml",
                    kind: Kind::Toml,
                },
                Part {
                    file: "overrides.txt",
                    kind: Kind::Text,
                },
            ],
            seeds,
            extra: Vec::new(),
            dictionary,
            describe: |_| "overrides.txt: one `--set key=value` per line".into(),
        }
    }

    fn run(&mut self, input: &[Vec<u8>], work: &Path) -> Result<String, String> {
        let file = work.join("config.toml");
        std::fs::write(&file, &input[0]).map_err(|e| e.to_string())?;
        let strict = RunConfig::from_toml_file(&file).and_then(|c| c.validate().map(|_| c));
        let text = String::from_utf8_lossy(&input[1]);
        let items: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        let overrides = ConfigSources::parse_overrides(&items).map_err(|e| e.to_string())?;
        let mut cfg = RunConfig::load(&ConfigSources {
            file: Some(file),
            env: Vec::new(),
            overrides,
        })
        .map_err(|e| format!("{e} / strict: {}", strict.is_ok()))?;
        // Accepted: the saved form (a run folder's config.toml) reads back.
        let saved = cfg.to_toml().map_err(|e| e.to_string())?;
        let copy = work.join("saved.toml");
        std::fs::write(&copy, &saved).map_err(|e| e.to_string())?;
        RunConfig::from_toml_file(&copy).unwrap_or_else(|e| {
            panic!("an accepted configuration's config.toml does not reload: {e}\n{saved}")
        });
        // What training does with it next: LoRA targets per architecture, the KD settings, paths.
        let mut notes = vec![format!("strict:{}", strict.is_ok())];
        notes.push(format!("lora:{}", cfg.lora.validate().is_ok()));
        notes.push(format!("kd:{}", cfg.kd.validate().is_ok()));
        for model_type in MODEL_TYPES {
            let matcher = cfg.lora.targets_for(model_type).and_then(|t| t.matcher());
            if let Ok(m) = matcher {
                let _ = m.matches("bert.encoder.layer.0.attention.self.query");
            }
        }
        let _ = cfg.lora.scaling();
        notes.push(format!("paths:{}", cfg.expand_paths().is_ok()));
        Ok(notes.join(" "))
    }
}

// ------------------------------------------------------------------------------------------------
// Model configuration (config.json)

fn model_config_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in [
        repo().join("crates/kdlora-encoders/tests/fixtures"),
        repo().join("tests/fixtures/lora"),
    ] {
        for sub in files_ending(&dir, "") {
            let config = sub.join("config.json");
            if config.is_file() {
                files.push(config);
            }
        }
    }
    files.extend(files_ending(&repo().join("configs/models"), ".json"));
    files
}

/// `ModelConfig::from_json_str` (what `ModelConfig::from_file` calls on `config.json`) and the
/// DeBERTa settings read from it.
struct ModelConfigTarget;

impl Target for ModelConfigTarget {
    fn spec(&self) -> Spec {
        Spec {
            name: "model_config",
            parts: vec![Part {
                file: "config.json",
                kind: Kind::Json,
            }],
            seeds: model_config_files().iter().map(|f| vec![read(f)]).collect(),
            extra: Vec::new(),
            dictionary: tokens(&[
                "\"model_type\"",
                "\"bert\"",
                "\"distilbert\"",
                "\"roberta\"",
                "\"deberta-v2\"",
                "\"xlm-roberta\"",
                "vocab_size",
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "intermediate_size",
                "hidden_act",
                "hidden_dropout_prob",
                "attention_probs_dropout_prob",
                "classifier_dropout",
                "max_position_embeddings",
                "type_vocab_size",
                "layer_norm_eps",
                "pad_token_id",
                "initializer_range",
                "num_labels",
                "id2label",
                "label2id",
                "problem_type",
                "position_embedding_type",
                "dim",
                "n_layers",
                "n_heads",
                "hidden_dim",
                "activation",
                "dropout",
                "attention_dropout",
                "seq_classif_dropout",
                "relative_attention",
                "max_relative_positions",
                "position_buckets",
                "pos_att_type",
                "position_biased_input",
                "share_att_key",
                "norm_rel_ebd",
                "pooler_hidden_size",
                "pooler_hidden_act",
                "pooler_dropout",
                "\"c2p\"",
                "\"p2c\"",
                "\"layer_norm\"",
                "\"gelu_new\"",
                "\"regression\"",
                "\"single_label_classification\"",
                "\"multi_label_classification\"",
                "1e309",
                "-1",
                "NaN",
            ]),
            describe: |_| String::new(),
        }
    }

    fn run(&mut self, input: &[Vec<u8>], _work: &Path) -> Result<String, String> {
        // `from_file` reads the file with `read_to_string`: invalid UTF-8 is an I/O error there.
        let text = std::str::from_utf8(&input[0]).map_err(|_| "invalid UTF-8".to_string())?;
        let path = Path::new("config.json");
        let config = ModelConfig::from_json_str(text, path).map_err(|e| e.to_string())?;
        let _ = (config.max_sequence_length(), config.head_dim());
        let _ = config.max_sequence_length_reason();
        let deberta = if config.model_type == "deberta-v2" {
            Some(DebertaV2Settings::from_config(&config, path).is_ok())
        } else {
            None
        };
        // Accepted: the config.json `save_pretrained` writes reads back.
        let saved = config.to_json().to_string();
        ModelConfig::from_json_str(&saved, path).unwrap_or_else(|e| {
            panic!("an accepted config.json does not reload after saving: {e}\n{saved}")
        });
        let known = kdlora_encoders::SUPPORTED_MODEL_TYPES.contains(&config.model_type.as_str());
        Ok(format!(
            "known:{known} {:?} labels:{} deberta:{deberta:?}",
            config.problem_type,
            config.num_labels.min(4)
        ))
    }
}

// ------------------------------------------------------------------------------------------------
// Model weights (model.safetensors)

const MODEL_FIXTURES: &[&str] = &[
    "bert_cls3",
    "bert_cls3_f16_noprefix",
    "deberta_c2p_cls2",
    "deberta_p2c_reg",
    "deberta_v3_cls3",
    "distilbert_reg",
    "roberta_cls2",
    "roberta_cls2_bf16",
];

fn describe_model_fixture(input: &[Vec<u8>]) -> String {
    format!(
        "config.json of crates/kdlora-encoders/tests/fixtures/{} (selector byte in `selector`)",
        MODEL_FIXTURES[selector(input, MODEL_FIXTURES.len())]
    )
}

/// `SequenceClassifier::load` on a folder with a fixture's `config.json` (chosen by the selector)
/// and a mutated `model.safetensors`: the safetensors header, dtype conversion, name resolution
/// and shape checks. The configuration stays valid so that every tensor the model allocates is
/// the fixture's size.
struct ModelWeights {
    configs: Vec<Vec<u8>>,
}

impl ModelWeights {
    fn new() -> Self {
        let dir = repo().join("crates/kdlora-encoders/tests/fixtures");
        Self {
            configs: MODEL_FIXTURES
                .iter()
                .map(|f| read(&dir.join(f).join("config.json")))
                .collect(),
        }
    }
}

fn safetensors_dictionary(names: &[&str]) -> Vec<Vec<u8>> {
    let mut out = tokens(&[
        "\"dtype\"",
        "\"shape\"",
        "\"data_offsets\"",
        "\"__metadata__\"",
        "\"format\"",
        "\"pt\"",
        "\"F32\"",
        "\"F16\"",
        "\"BF16\"",
        "\"F64\"",
        "\"I64\"",
        "\"U8\"",
        "\"BOOL\"",
        ".weight",
        ".bias",
        ".gamma",
        ".beta",
    ]);
    out.extend(tokens(names));
    out
}

impl Target for ModelWeights {
    fn spec(&self) -> Spec {
        let dir = repo().join("crates/kdlora-encoders/tests/fixtures");
        Spec {
            name: "model_weights",
            parts: vec![
                Part {
                    file: "selector",
                    kind: Kind::Selector,
                },
                Part {
                    file: "model.safetensors",
                    kind: Kind::Safetensors,
                },
            ],
            seeds: MODEL_FIXTURES
                .iter()
                .enumerate()
                .map(|(i, f)| vec![vec![i as u8], read(&dir.join(f).join("model.safetensors"))])
                .collect(),
            extra: Vec::new(),
            dictionary: safetensors_dictionary(&[
                "bert.embeddings.word_embeddings.weight",
                "bert.pooler.dense.weight",
                "classifier.weight",
                "classifier.bias",
                "distilbert.embeddings.word_embeddings.weight",
                "pre_classifier.weight",
                "roberta.embeddings.position_embeddings.weight",
                "classifier.dense.weight",
                "classifier.out_proj.weight",
                "deberta.encoder.rel_embeddings.weight",
                "deberta.encoder.LayerNorm.weight",
                "pooler.dense.weight",
                "embeddings.position_ids",
                "encoder.layer.0.attention.self.query.weight",
                "encoder.layer.1.attention.self.query_proj.weight",
            ]),
            describe: describe_model_fixture,
        }
    }

    fn run(&mut self, input: &[Vec<u8>], work: &Path) -> Result<String, String> {
        let dir = work.join("model");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let config = &self.configs[selector(input, self.configs.len())];
        std::fs::write(dir.join("config.json"), config).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("model.safetensors"), &input[1]).map_err(|e| e.to_string())?;
        let (model, report) =
            SequenceClassifier::<B>::load(&dir, &LoadOptions::default(), &Default::default())
                .map_err(|e| e.to_string())?;
        // Accepted: every tensor has the shape the configuration implies, so the model runs.
        let logits = forward_tiny(&model);
        assert!(!logits.is_empty(), "a loaded model gives logits");
        Ok(format!(
            "initialised={} unused={} ignored={}",
            report.initialised.len(),
            report.unused.len().min(2),
            report.ignored.len().min(2)
        ))
    }
}

/// `SequenceClassifier::load` on a folder with a mutated `config.json` and the fixture's
/// `model.safetensors` (chosen by the selector): the sizes the model is built with come from the
/// configuration, the tensors from the file, and they must be checked against each other.
struct ModelDir {
    weights: Vec<Vec<u8>>,
}

impl ModelDir {
    fn new() -> Self {
        let dir = repo().join("crates/kdlora-encoders/tests/fixtures");
        Self {
            weights: MODEL_FIXTURES
                .iter()
                .map(|f| read(&dir.join(f).join("model.safetensors")))
                .collect(),
        }
    }
}

impl Target for ModelDir {
    fn spec(&self) -> Spec {
        let mut spec = ModelConfigTarget.spec();
        let dir = repo().join("crates/kdlora-encoders/tests/fixtures");
        Spec {
            name: "model_dir",
            parts: vec![
                Part {
                    file: "selector",
                    kind: Kind::Selector,
                },
                Part {
                    file: "config.json",
                    kind: Kind::Json,
                },
            ],
            seeds: MODEL_FIXTURES
                .iter()
                .enumerate()
                .map(|(i, f)| vec![vec![i as u8], read(&dir.join(f).join("config.json"))])
                .collect(),
            extra: Vec::new(),
            dictionary: std::mem::take(&mut spec.dictionary),
            describe: |input| {
                format!(
                    "model.safetensors of crates/kdlora-encoders/tests/fixtures/{} (selector byte \
                     in `selector`)",
                    MODEL_FIXTURES[selector(input, MODEL_FIXTURES.len())]
                )
            },
        }
    }

    fn run(&mut self, input: &[Vec<u8>], work: &Path) -> Result<String, String> {
        let dir = work.join("model");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let weights = &self.weights[selector(input, self.weights.len())];
        std::fs::write(dir.join("config.json"), &input[1]).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("model.safetensors"), weights).map_err(|e| e.to_string())?;
        let (model, report) =
            SequenceClassifier::<B>::load(&dir, &LoadOptions::default(), &Default::default())
                .map_err(|e| e.to_string())?;
        let logits = forward_tiny(&model);
        assert!(!logits.is_empty(), "a loaded model gives logits");
        Ok(format!(
            "initialised={} unused={}",
            report.initialised.len(),
            report.unused.len().min(2)
        ))
    }
}

// ------------------------------------------------------------------------------------------------
// PEFT adapters

const ADAPTER_BASES: &[&str] = &["bert_base", "distilbert_base"];

fn describe_adapter(input: &[Vec<u8>]) -> String {
    format!(
        "base model tests/fixtures/lora/{} (selector byte in `selector`)",
        ADAPTER_BASES[selector(input, ADAPTER_BASES.len())]
    )
}

/// `load_adapter` (with `PeftAdapterConfig::read` and `adapter_modules`) on a PEFT folder:
/// `adapter_config.json` and `adapter_model.safetensors` onto one of the fixture base models.
struct PeftAdapter {
    bases: Vec<SequenceClassifier<B>>,
}

impl PeftAdapter {
    fn new() -> Self {
        let dir = repo().join("tests/fixtures/lora");
        Self {
            bases: ADAPTER_BASES
                .iter()
                .map(|b| {
                    SequenceClassifier::<B>::load(
                        &dir.join(b),
                        &LoadOptions::default(),
                        &Default::default(),
                    )
                    .expect("fixture base model")
                    .0
                })
                .collect(),
        }
    }
}

impl Target for PeftAdapter {
    fn spec(&self) -> Spec {
        let dir = repo().join("tests/fixtures/lora");
        let seeds = [
            ("bert_lora", 0u8),
            ("bert_rslora", 0),
            ("distilbert_lora", 1),
        ]
        .iter()
        .map(|(adapter, base)| {
            vec![
                vec![*base],
                read(&dir.join(adapter).join("adapter_config.json")),
                read(&dir.join(adapter).join("adapter_model.safetensors")),
            ]
        })
        .collect();
        Spec {
            name: "peft_adapter",
            parts: vec![
                Part {
                    file: "selector",
                    kind: Kind::Selector,
                },
                Part {
                    file: "adapter_config.json",
                    kind: Kind::Json,
                },
                Part {
                    file: "adapter_model.safetensors",
                    kind: Kind::Safetensors,
                },
            ],
            seeds,
            extra: Vec::new(),
            dictionary: safetensors_dictionary(&[
                "peft_type",
                "\"LORA\"",
                "\"PREFIX_TUNING\"",
                "task_type",
                "\"SEQ_CLS\"",
                "base_model_name_or_path",
                "r",
                "lora_alpha",
                "lora_dropout",
                "use_rslora",
                "target_modules",
                "modules_to_save",
                "init_lora_weights",
                "\"gaussian\"",
                "bias",
                "\"all\"",
                "fan_in_fan_out",
                "use_dora",
                "rank_pattern",
                "alpha_pattern",
                "layers_to_transform",
                "\"query\"",
                "\"value\"",
                "\"key\"",
                "\"q_lin\"",
                "\"v_lin\"",
                "\"classifier\"",
                "\"pre_classifier\"",
                "\"bert.pooler\"",
                "\"score\"",
                "\".*query\"",
                "\"(\"",
                "base_model.model.",
                ".lora_A.weight",
                ".lora_B.weight",
                ".lora_embedding_A",
                "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight",
                "base_model.model.classifier.weight",
                "base_model.model.classifier.bias",
                "base_model.model.distilbert.transformer.layer.0.attention.q_lin.lora_B.weight",
            ]),
            describe: describe_adapter,
        }
    }

    fn run(&mut self, input: &[Vec<u8>], work: &Path) -> Result<String, String> {
        let dir = work.join("adapter");
        write_parts(
            &dir,
            &[
                Part {
                    file: "adapter_config.json",
                    kind: Kind::Json,
                },
                Part {
                    file: "adapter_model.safetensors",
                    kind: Kind::Safetensors,
                },
            ],
            &input[1..],
        )
        .map_err(|e| e.to_string())?;
        let config = PeftAdapterConfig::read(&dir).is_ok();
        let modules = adapter_modules(&dir).ok().map(|m| m.len().min(3));
        let base = self.bases[selector(input, self.bases.len())].clone();
        let (mut model, cfg) = load_adapter(base, &dir, &Default::default())
            .map_err(|e| format!("{e} / config:{config} modules:{}", modules.is_some()))?;
        // Accepted: the adapters fit their layers, unmerged and merged into the weights.
        let unmerged = forward_tiny(&model);
        merge_and_unload(&mut model);
        let merged = forward_tiny(&model);
        assert_eq!(
            unmerged.len(),
            merged.len(),
            "merging keeps the output shape"
        );
        Ok(format!(
            "r={} rslora={} modules={modules:?}",
            cfg.r.min(9),
            cfg.use_rslora
        ))
    }
}

// ------------------------------------------------------------------------------------------------
// Teacher-logit store

fn store_meta(task: &str, num_examples: usize, num_outputs: usize) -> TeacherLogitsMeta {
    TeacherLogitsMeta {
        teacher: "fixtures/teacher (bert)".into(),
        teacher_weights_sha256: "ab".repeat(32),
        task: task.into(),
        split: "train".into(),
        tokenizer_sha256: "cd".repeat(32),
        max_len: 64,
        dataset_rows_sha256: "ef".repeat(32),
        num_examples,
        num_outputs,
        ..TeacherLogitsMeta::default()
    }
}

/// `TeacherLogits::load` (`kdlora logits` / inspection) and `TeacherLogits::load_or_build` (what a
/// distillation run does with `teacher_logits.safetensors`: reuse when intact and matching,
/// rebuild otherwise) against the metadata the selector picks.
struct TeacherStore {
    stores: Vec<(TeacherLogitsMeta, Vec<f32>)>,
}

impl TeacherStore {
    fn new() -> Self {
        let stores = [("sst2", 4, 2), ("stsb", 3, 1), ("mnli", 2, 3)]
            .iter()
            .map(|&(task, n, c)| {
                let logits = (0..n * c).map(|i| i as f32 * 0.75 - 1.5).collect();
                (store_meta(task, n, c), logits)
            })
            .collect();
        Self { stores }
    }
}

impl Target for TeacherStore {
    fn spec(&self) -> Spec {
        let dir = tempfile::tempdir().expect("temp dir");
        let seeds = self
            .stores
            .iter()
            .enumerate()
            .map(|(i, (meta, logits))| {
                let path = dir.path().join(format!("{i}.safetensors"));
                TeacherLogits::new(meta.clone(), logits.clone())
                    .and_then(|s| s.save(&path))
                    .expect("writing a seed store");
                vec![vec![i as u8], read(&path)]
            })
            .collect();
        let mut dictionary = safetensors_dictionary(&["\"logits\""]);
        dictionary.extend(
            TeacherLogitsMeta::FIELDS
                .iter()
                .chain(&["logits_sha256"])
                .map(|s| s.as_bytes().to_vec()),
        );
        Spec {
            name: "teacher_logits",
            parts: vec![
                Part {
                    file: "selector",
                    kind: Kind::Selector,
                },
                Part {
                    file: "teacher_logits.safetensors",
                    kind: Kind::Safetensors,
                },
            ],
            seeds,
            extra: Vec::new(),
            dictionary,
            describe: |input| format!("expected metadata: seed store {}", selector(input, 3)),
        }
    }

    fn run(&mut self, input: &[Vec<u8>], work: &Path) -> Result<String, String> {
        let path = work.join("teacher_logits.safetensors");
        std::fs::write(&path, &input[1]).map_err(|e| e.to_string())?;
        let loaded = TeacherLogits::load(&path).map(|store| {
            for i in 0..store.num_examples() {
                assert!(
                    store.row(i).is_some(),
                    "row {i} of {}",
                    store.num_examples()
                );
            }
            let last = store.num_examples() - 1;
            let batch = store
                .lookup::<B>(&[last, 0], &Default::default())
                .unwrap_or_else(|e| panic!("lookup in a loaded store: {e}"));
            assert_eq!(batch.dims(), [2, store.num_outputs()]);
        });
        // Whatever the file holds, a run gets usable logits: the stored ones when intact and
        // matching, freshly built ones otherwise.
        let (meta, logits) = &self.stores[selector(input, self.stores.len())];
        let (store, outcome) =
            TeacherLogits::load_or_build(&path, meta, || Ok::<_, std::io::Error>(logits.clone()))
                .unwrap_or_else(|e| panic!("load_or_build over a bad store failed: {e}"));
        assert_eq!(store.meta(), meta, "the store has the requested metadata");
        assert_eq!(store.as_slice().len(), meta.num_examples * meta.num_outputs);
        assert!(
            store.as_slice().iter().all(|v| v.is_finite()),
            "finite logits"
        );
        let outcome = format!("{outcome:?}");
        let outcome = outcome
            .split(['{', '('])
            .next()
            .unwrap_or_default()
            .to_string();
        match loaded {
            Ok(()) => Ok(format!("loaded; {outcome}")),
            Err(e) => Err(format!("{e}; {outcome}")),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Checkpoints

const STEP: &str = "checkpoints/step-00000001";

/// The files of a run folder with one checkpoint; `records` says whether a part is one of
/// Burn's record files (decoded by Burn) or a kdlora JSON file.
fn checkpoint_files() -> Vec<(Part, bool)> {
    vec![
        (
            Part {
                file: "checkpoints/step-00000001/state.json",
                kind: Kind::Json,
            },
            false,
        ),
        (
            Part {
                file: "checkpoints/step-00000001/model.bin",
                kind: Kind::Binary,
            },
            true,
        ),
        (
            Part {
                file: "checkpoints/step-00000001/optim_decay.bin",
                kind: Kind::Binary,
            },
            true,
        ),
        (
            Part {
                file: "checkpoints/step-00000001/optim_no_decay.bin",
                kind: Kind::Binary,
            },
            true,
        ),
        (
            Part {
                file: "metrics.jsonl",
                kind: Kind::JsonLines,
            },
            false,
        ),
    ]
}

/// What `kdlora train --resume` reads from a run folder, in the order the loop engine reads it:
/// `RunDir::latest_checkpoint` (`state.json`), the model record (`load_checkpoint_model`: Burn's
/// `BinFileRecorder` format, decoded by kdlora), `metrics.jsonl`, and `GroupedAdamW::load` (the
/// optimizer records) onto the fixture BERT.
///
/// Two targets: `checkpoint` mutates kdlora's own files (`state.json`, `metrics.jsonl`) with
/// valid records, `checkpoint_records` mutates Burn's record files (bincode, decoded by Burn)
/// with valid JSON. Apart, the second's findings (in Burn's decoder) do not hide the first's.
struct Checkpoint {
    records: bool,
    model: SequenceClassifier<AB>,
    num_labels: usize,
    /// Every file of the seed run folder, in [`checkpoint_files`] order.
    files: Vec<Vec<u8>>,
}

impl Checkpoint {
    fn new(records: bool) -> Self {
        let device = Default::default();
        let dir = repo().join("tests/fixtures/lora/bert_base");
        let model = SequenceClassifier::<AB>::load(&dir, &LoadOptions::default(), &device)
            .expect("fixture base model")
            .0;
        // One optimizer step, so the optimizer records hold moments. Dropout draws from Burn's
        // process-wide RNG, which the seeded end-to-end tests share: hold their lock.
        let files = {
            let _lock = crate::common::lock();
            let ids =
                |v: Vec<i64>| Tensor::<AB, 2, Int>::from_data(TensorData::new(v, [1, 4]), &device);
            let loss = model
                .forward(ids(vec![2, 5, 7, 3]), ids(vec![1; 4]), ids(vec![0; 4]))
                .sum();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let mut optim = GroupedAdamW::<SequenceClassifier<AB>, AB>::new(
                &param_groups::<AB, _>(&model),
                0.01,
                1.0,
            );
            let (stepped, _) = optim.step(1e-3, model.clone(), grads);
            let tmp = tempfile::tempdir().expect("temp dir");
            let step = tmp.path().join(STEP);
            std::fs::create_dir_all(&step).expect("checkpoint folder");
            stepped
                .clone()
                .save_file(
                    step.join("model"),
                    &BinFileRecorder::<FullPrecisionSettings>::new(),
                )
                .expect("saving the model record");
            optim.save(&step).expect("saving the optimizer records");
            // As JSON rather than a `CheckpointState` literal: fields added later with a serde
            // default keep this seed valid.
            let state = serde_json::json!({
                "epochs_completed": 0,
                "global_step": 1,
                "batches_in_epoch": 1,
                "train_seconds": 0.5,
                "train_examples": 1,
                "epoch_loss_sum": 0.69,
                "epoch_batches": 1,
                "epoch_seconds": 0.5,
                "first_loss": 0.69,
            });
            let metrics = "{\"epoch\":1,\"step\":1,\"train_loss\":0.69,\"lr\":0.001,\"score\":50.0,\
                           \"dev\":{\"accuracy\":0.5},\"train_seconds\":0.5,\"eval_seconds\":0.1}\n";
            checkpoint_files()
                .iter()
                .map(|(part, _)| {
                    if part.file.ends_with("state.json") {
                        serde_json::to_vec_pretty(&state).expect("state")
                    } else if part.file == "metrics.jsonl" {
                        metrics.as_bytes().to_vec()
                    } else {
                        read(&tmp.path().join(part.file))
                    }
                })
                .collect()
        };
        let num_labels = forward_tiny(&model.valid()).len();
        Self {
            records,
            model,
            num_labels,
            files,
        }
    }
}

impl Target for Checkpoint {
    fn spec(&self) -> Spec {
        Spec {
            name: if self.records {
                "checkpoint_records"
            } else {
                "checkpoint"
            },
            parts: checkpoint_files()
                .into_iter()
                .filter(|(_, record)| *record == self.records)
                .map(|(part, _)| part)
                .collect(),
            seeds: vec![
                checkpoint_files()
                    .iter()
                    .zip(&self.files)
                    .filter(|((_, record), _)| *record == self.records)
                    .map(|(_, bytes)| bytes.clone())
                    .collect(),
            ],
            extra: Vec::new(),
            dictionary: tokens(&[
                "epochs_completed",
                "global_step",
                "batches_in_epoch",
                "train_seconds",
                "train_examples",
                "epoch_loss_sum",
                "epoch_batches",
                "epoch_seconds",
                "first_loss",
                "epoch",
                "step",
                "train_loss",
                "lr",
                "score",
                "score_mismatched",
                "dev",
                "dev_mismatched",
                "eval_seconds",
            ]),
            describe: |_| "a run folder: pass its path to `kdlora train --resume`".into(),
        }
    }

    fn run(&mut self, input: &[Vec<u8>], work: &Path) -> Result<String, String> {
        let root = work.join("run");
        // The mutated files from the input, the others as in the seed run folder.
        let mut mutated = input.iter();
        for ((part, record), seed) in checkpoint_files().iter().zip(&self.files) {
            let bytes = if *record == self.records {
                mutated.next().expect("one input part per mutated file")
            } else {
                seed
            };
            write_parts(
                &root,
                std::slice::from_ref(part),
                std::slice::from_ref(bytes),
            )
            .map_err(|e| e.to_string())?;
        }
        let run = RunDir::new(&root);
        let (dir, state) = run
            .latest_checkpoint()
            .map_err(|e| e.to_string())?
            .ok_or("no checkpoint")?;
        let device = Default::default();
        let model = load_checkpoint_model(&dir, self.model.clone(), &device)
            .map_err(|e| format!("model record: {e}"))?;
        let records: Vec<EpochRecord> =
            read_jsonl(&run.metrics_jsonl()).map_err(|e| e.to_string())?;
        let groups = param_groups::<AB, _>(&model);
        let _optim = GroupedAdamW::<SequenceClassifier<AB>, AB>::new(&groups, 0.01, 1.0)
            .load(&dir, &device)
            .map_err(|e| e.to_string())?;
        // Accepted: the restored model is the model (shapes included) and runs.
        let logits = forward_tiny(&model.valid());
        assert_eq!(logits.len(), self.num_labels, "the restored model's head");
        Ok(format!(
            "epochs={} records={}",
            state.epochs_completed.min(3),
            records.len().min(3)
        ))
    }
}
