//! Training recipes for KD-LoRA (arXiv 2410.20777) on GLUE: full fine-tuning (`fft`), LoRA
//! (`lora`), LoRA distilled from a fine-tuned teacher (`kd-lora`) and full distillation (`kd`).
//!
//! A [`RunConfig`] describes a run completely; [`train`] turns it into a run folder:
//!
//! ```text
//! RUN/config.toml                   the configuration (reload with RunConfig::from_toml_file)
//! RUN/metrics.jsonl                 one EpochRecord per epoch (dev metrics after every epoch)
//! RUN/train_log.jsonl               one StepRecord every `logging_steps` (loss curves)
//! RUN/metrics.json                  RunMetrics: last and best epoch, parameter counts,
//!                                   throughput, peak memory, inference time
//! RUN/model/                        fft / kd: Hugging Face checkpoint folder (+ tokenizer files)
//! RUN/adapter/                      lora / kd-lora: PEFT adapter folder (base model recorded)
//! RUN/teacher_logits.safetensors    kd / kd-lora: the teacher-logit store
//! RUN/best/                         save_best: the best epoch's adapter or model folder
//! RUN/checkpoints/step-NNNNNNNN/    newest checkpoint (trainable tensors, AdamW state,
//!                                   position); removed once the run finished, unless
//!                                   keep_checkpoints
//! RUN/learner/checkpoint/           engine = "learner": burn-train's epoch checkpoints
//! ```
//!
//! The loop is hand-written over `kdlora-glue` batches: AdamW (0.9, 0.999, eps 1e-8) with weight
//! decay on weights only (not biases and LayerNorm), a linear schedule with optional warmup,
//! global gradient-norm clipping, gradient accumulation, and seeding that makes a resumed run
//! equal to an uninterrupted one on CPU. The teacher runs on the inner (non-autodiff) backend
//! once, and its logits are looked up per batch by example position.
//!
//! `engine = "learner"` runs the same recipes on burn-train's `Learner` instead of the loop (same
//! outputs; checkpoints only at epoch boundaries); see the crate README, "Engines".
//!
//! Configuration layers a TOML file, `KDLORA_*` environment variables and `key=value`
//! overrides:
//!
//! ```
//! use kdlora_train::{ConfigSources, Method, RunConfig};
//!
//! let dir = tempfile::tempdir()?;
//! let file = dir.path().join("run.toml");
//! std::fs::write(&file, "method = \"kd-lora\"\ntask = \"sst2\"\nmodel = \"m\"\ndata = \"d\"\n\
//!                        out = \"runs/x\"\nteacher = \"runs/teacher\"\n")?;
//! let cfg = RunConfig::load(&ConfigSources {
//!     file: Some(file),
//!     env: vec![("KDLORA_EPOCHS".into(), "2".into())],
//!     overrides: ConfigSources::parse_overrides(&["lora.r=16", "lr=5e-4"])?,
//! })?;
//! assert_eq!(cfg.method, Method::KdLora);
//! assert_eq!((cfg.epochs, cfg.lora.r, cfg.lr), (2, 16, 5e-4));
//! assert_eq!(cfg.kd.temperature, 2.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod checkpoint;
mod config;
mod data;
mod error;
mod eval;
mod learner;
mod memory;
mod optim;
mod progress;
mod record;
mod run_dir;
mod runner;
mod step_log;

pub use checkpoint::load_checkpoint_model;
pub use config::{
    CONFIG_KEYS, ConfigKey, ConfigSources, Engine, KeyDefault, Method, RunConfig, config_keys_table,
};
pub use data::SplitData;
pub use error::{Result, TrainError};
pub use eval::{
    InferenceTiming, LoadedModel, TOKENIZER_FILE, apply_adapter, check_finished,
    check_tokenizer_fits, eval_run, evaluate_model, is_run_dir, load_model, logits, predict_run,
    predictions, time_inference, tokenizer_dir,
};
pub use memory::{PEAK_RSS_METHOD, peak_rss_bytes};
pub use optim::{
    GroupedAdamW, ParamCounts, ParamGroups, grad_norm, linear_schedule, param_counts, param_groups,
    scale_grads,
};
pub use progress::{BarObserver, NoProgress, StepInfo, StepRecord, TrainObserver};
pub use run_dir::{CheckpointState, RunDir, read_json, read_jsonl, write_atomic, write_json};
pub use runner::{
    EpochRecord, INFERENCE_BATCH_SIZE, LoraParams, Memory, RunMetrics, Throughput, model_dir, train,
};
