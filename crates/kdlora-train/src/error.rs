//! [`TrainError`]: everything that can stop a run, naming the file, key or step involved.

use std::path::PathBuf;

/// Errors of configuration, training, evaluation and run-folder handling.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The layered configuration could not be read or has a bad key or value.
    #[error("configuration: {0}")]
    Config(String),

    /// A configuration value is present but not usable.
    #[error("configuration key `{key}`: {message}")]
    InvalidValue {
        /// The configuration key (dotted path).
        key: String,
        /// What is wrong with it.
        message: String,
    },

    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A file exists but its content is not what was expected.
    #[error("{path}: {message}")]
    BadFile {
        /// The file involved.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// The loss became NaN or infinite.
    #[error(
        "loss is {value} at optimizer step {step} (epoch {epoch}); the run was stopped and its checkpoint at this step was not written (lower the learning rate?)"
    )]
    NonFiniteLoss {
        /// Global optimizer step (1-based) at which the loss was not finite.
        step: usize,
        /// Epoch (1-based).
        epoch: usize,
        /// The offending loss value.
        value: f32,
    },

    /// The loss stayed finite but exploded: above `divergence_factor` times the run's first.
    #[error(
        "training diverged at optimizer step {step} (epoch {epoch}): loss {loss:.4e} is more than \
         divergence_factor = {factor} times the first step's {first:.4}; the run was stopped and \
         this step's checkpoint was not written (lower the learning rate, or set \
         divergence_factor = 0 to train on regardless)"
    )]
    Diverged {
        /// Global optimizer step (1-based).
        step: usize,
        /// Epoch (1-based).
        epoch: usize,
        /// The step's mean loss.
        loss: f64,
        /// The run's first step loss.
        first: f64,
        /// The configured factor.
        factor: f64,
    },

    /// A run folder has its `config.toml` but no `model/` or `adapter/`: it was stopped before
    /// its first epoch ended, or it failed.
    #[error(
        "{}: this run did not finish (no model/ or adapter/ yet); resume it with \
         `kdlora train --config {} --resume`",
        path.display(),
        path.join("config.toml").display()
    )]
    UnfinishedRun {
        /// The run folder.
        path: PathBuf,
    },

    /// A model produced a NaN or infinite logit: broken weights or `config.json` values.
    #[error(
        "{context}: the model produced a non-finite logit ({value}); its weights or config.json \
         are broken"
    )]
    NonFiniteLogits {
        /// Which input (split and row).
        context: String,
        /// The offending value.
        value: f32,
    },

    /// The encoder crate failed (loading or saving a model).
    #[error("model: {0}")]
    Encoder(#[from] kdlora_encoders::EncoderError),

    /// The LoRA crate failed (injecting, saving or loading adapters).
    #[error("lora: {0}")]
    Lora(#[from] kdlora_lora::LoraError),

    /// The GLUE crate failed (data, tokenizer, metrics).
    #[error("data: {0}")]
    Glue(#[from] kdlora_glue::GlueError),

    /// The distillation crate failed (teacher-logit store).
    #[error("distillation: {0}")]
    Distill(#[from] kdlora_distill::DistillError),

    /// A model argument could not be resolved to a local folder (a missing path, or a Hugging
    /// Face Hub id not cached while offline, not found or not downloadable).
    #[error(transparent)]
    Hub(#[from] kdlora_hub::HubError),

    /// A Burn recorder failed to save or load a checkpoint.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// The recorder's message.
        message: String,
    },

    /// A checkpoint file exists but is truncated, corrupt or from another model.
    #[error(
        "checkpoint {} is damaged: {message}; delete {} to restart the run from its beginning \
         with --resume (only the newest checkpoint is kept)",
        path.display(),
        path.parent().unwrap_or(path).display()
    )]
    DamagedCheckpoint {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(key: &str, message: impl Into<String>) -> Self {
        Self::InvalidValue {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
