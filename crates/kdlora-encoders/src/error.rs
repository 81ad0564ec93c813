//! Errors of checkpoint loading, saving and input validation.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong while reading or writing a checkpoint, or checking model inputs.
///
/// Each variant names the file (and the key or field where there is one) so the message alone is
/// enough to find the problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncoderError {
    /// A file the checkpoint needs does not exist.
    #[error("{}: file not found{}", path.display(), hint_suffix(hint))]
    MissingFile {
        /// The file that was looked for.
        path: PathBuf,
        /// What the file is for, or how to produce it (may be empty).
        hint: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file does not parse.
    #[error("{}: invalid JSON: {message}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// serde_json's message (with line and column).
        message: String,
    },
    /// `config.json` parses but a field has an invalid value.
    #[error("{}: field `{field}`: {message}", path.display())]
    InvalidConfig {
        /// The config file.
        path: PathBuf,
        /// The offending field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// `model_type` names an architecture kdlora does not implement.
    #[error("unsupported model_type {name:?} (supported: {})", supported.join(", "))]
    UnsupportedModelType {
        /// The `model_type` found.
        name: String,
        /// The `model_type`s that are implemented.
        supported: Vec<String>,
    },
    /// The safetensors file is not valid (truncated, bad header, ...).
    #[error("{}: not a valid safetensors file: {message}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The folder only has pickle (`pytorch_model.bin`-style) weights, which are never loaded.
    #[error(
        "{}: only pickle checkpoint files found ({}); kdlora loads safetensors only. Convert it, e.g. \
         `AutoModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)`",
        dir.display(),
        files.join(", ")
    )]
    PickleCheckpoint {
        /// The checkpoint folder.
        dir: PathBuf,
        /// The pickle files found.
        files: Vec<String>,
    },
    /// Tensors are missing or have the wrong shape; every problem is listed.
    #[error("{}: {} tensor problem(s):\n{}", path.display(), problems.len(), list(problems))]
    Tensors {
        /// The weights file (or folder, for sharded checkpoints).
        path: PathBuf,
        /// Every missing or mis-shaped tensor.
        problems: Vec<TensorProblem>,
    },
    /// Model inputs are inconsistent (shapes, token ids out of the vocabulary, too long).
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

/// One missing or mis-shaped tensor in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TensorProblem {
    /// The model needs `key` but the file does not have it.
    Missing {
        /// Hugging Face tensor name (with the base-model prefix).
        key: String,
        /// Shape the model expects, in Hugging Face layout.
        expected: Vec<usize>,
    },
    /// The file has `key` with a different shape.
    ShapeMismatch {
        /// Tensor name as stored in the file.
        key: String,
        /// Shape the model expects, in Hugging Face layout.
        expected: Vec<usize>,
        /// Shape found in the file.
        found: Vec<usize>,
    },
    /// The file has `key` in a dtype that is not a float (F32, F16, BF16, F64).
    UnsupportedDtype {
        /// Tensor name as stored in the file.
        key: String,
        /// The stored dtype.
        dtype: String,
    },
}

impl TensorProblem {
    /// The tensor name the problem is about.
    pub fn key(&self) -> &str {
        match self {
            Self::Missing { key, .. }
            | Self::ShapeMismatch { key, .. }
            | Self::UnsupportedDtype { key, .. } => key,
        }
    }
}

impl fmt::Display for TensorProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { key, expected } => {
                write!(f, "missing tensor `{key}` (expected shape {expected:?})")
            }
            Self::ShapeMismatch {
                key,
                expected,
                found,
            } => write!(
                f,
                "tensor `{key}` has shape {found:?}, expected {expected:?}"
            ),
            Self::UnsupportedDtype { key, dtype } => write!(
                f,
                "tensor `{key}` has dtype {dtype}; supported: F32, F16, BF16 (F64 narrowed)"
            ),
        }
    }
}

fn list(problems: &[TensorProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn hint_suffix(hint: &str) -> String {
    if hint.is_empty() {
        String::new()
    } else {
        format!(" ({hint})")
    }
}
