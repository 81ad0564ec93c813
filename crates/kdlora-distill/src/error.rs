//! Typed errors of this crate.

use std::path::PathBuf;

/// Everything that can go wrong in `kdlora-distill`.
///
/// Variants name the offending file, key or index so that a log line is enough to act on.
#[derive(Debug, thiserror::Error)]
pub enum DistillError {
    /// A configuration value is outside its valid range.
    #[error("invalid distillation setting `{key}` = {value}: {reason}")]
    InvalidConfig {
        /// The setting's name, e.g. `temperature`.
        key: &'static str,
        /// The offending value, formatted.
        value: String,
        /// Why it is rejected.
        reason: &'static str,
    },

    /// Tensors passed to a loss or to hidden-state distillation have incompatible shapes.
    #[error("shape mismatch in {context}: expected {expected}, got {got}")]
    ShapeMismatch {
        /// Which input, e.g. `kd_loss teacher logits`.
        context: String,
        /// The expected shape, formatted.
        expected: String,
        /// The shape received, formatted.
        got: String,
    },

    /// A layer map refers to a hidden state that was not provided.
    #[error(
        "layer map pair student {student} <- teacher {teacher} is out of range \
         ({num_student} student and {num_teacher} teacher hidden states given)"
    )]
    LayerOutOfRange {
        /// Student hidden-state index of the pair.
        student: usize,
        /// Teacher hidden-state index of the pair.
        teacher: usize,
        /// Number of student hidden states passed in.
        num_student: usize,
        /// Number of teacher hidden states passed in.
        num_teacher: usize,
    },

    /// Reading or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A safetensors file could not be parsed, or could not be serialised.
    #[error("safetensors error on {path}: {detail}")]
    Safetensors {
        /// The file concerned.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },

    /// A teacher-logit file is unusable (corrupt, truncated, or with metadata that cannot be read).
    #[error("teacher-logit file {path} is unusable: {reason}")]
    InvalidStore {
        /// The file concerned.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },

    /// The metadata describing a teacher-logit store is itself invalid (e.g. zero outputs).
    #[error("invalid teacher-logit metadata field `{field}`: {reason}")]
    InvalidMeta {
        /// The field concerned.
        field: &'static str,
        /// Why it is rejected.
        reason: String,
    },

    /// The closure that computes teacher logits failed.
    #[error("computing teacher logits failed: {0}")]
    Build(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),

    /// The closure that computes teacher logits returned the wrong number of values.
    #[error(
        "computed teacher logits have {got} values, expected {expected} \
         ({num_examples} examples x {num_outputs} outputs)"
    )]
    BuildLength {
        /// `num_examples * num_outputs`.
        expected: usize,
        /// Number of values returned.
        got: usize,
        /// Examples declared in the metadata.
        num_examples: usize,
        /// Outputs per example declared in the metadata.
        num_outputs: usize,
    },

    /// A teacher logit is NaN or infinite.
    #[error("teacher logit for example {example}, output {output} is not finite ({value})")]
    NonFinite {
        /// Example index (row).
        example: usize,
        /// Output index (column).
        output: usize,
        /// The offending value.
        value: f32,
    },

    /// A lookup asked for an example index the store does not hold.
    #[error(
        "example index {index} (batch position {position}) is out of range: the store holds {num_examples} examples"
    )]
    IndexOutOfRange {
        /// The requested example index.
        index: usize,
        /// Position of that index in the requested batch.
        position: usize,
        /// Number of examples in the store.
        num_examples: usize,
    },

    /// A lookup was asked for an empty batch.
    #[error("teacher-logit lookup called with no indices")]
    EmptyLookup,
}
