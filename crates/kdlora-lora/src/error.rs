//! [`LoraError`]: everything that can go wrong configuring, injecting, merging or (de)serialising
//! adapters. Every variant names the file, key or module path involved.

use std::path::PathBuf;

/// Errors of the LoRA layer.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    /// A configuration value is out of range (e.g. `r = 0`, dropout outside `[0, 1)`).
    #[error("invalid LoRA configuration: {field} = {value}: {reason}")]
    InvalidConfig {
        /// The offending field (`r`, `lora_dropout`, ...).
        field: &'static str,
        /// Its value, rendered.
        value: String,
        /// Why it is rejected.
        reason: String,
    },

    /// A `target_modules` regex does not compile.
    #[error("invalid target_modules regex {pattern:?}: {source}")]
    InvalidRegex {
        /// The pattern as written.
        pattern: String,
        /// The regex error.
        #[source]
        source: regex::Error,
    },

    /// A target (name or regex) matches no linear module of the model.
    #[error(
        "LoRA target {target:?} matches no linear module of this {model_type} model; \
         it has {count} linear modules, e.g. {examples}"
    )]
    TargetNotFound {
        /// The target as written in the configuration.
        target: String,
        /// `model_type` of the model.
        model_type: String,
        /// Number of linear module paths the model has.
        count: usize,
        /// A few of them, comma separated.
        examples: String,
    },

    /// The model has no model-type-specific default targets.
    #[error(
        "no default LoRA targets for model_type {model_type:?} (known: bert, roberta, distilbert, deberta-v2); set target_modules explicitly"
    )]
    NoDefaultTargets {
        /// `model_type` of the model.
        model_type: String,
    },

    /// `inject` was asked to put a second adapter on a module.
    #[error("module {path} already has a LoRA adapter")]
    AlreadyAdapted {
        /// Module path.
        path: String,
    },

    /// Reading or writing a file failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done (`reading`, `writing`, ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The adapter folder has no `adapter_config.json`.
    #[error(
        "{} is not a PEFT adapter folder: missing adapter_config.json (expected adapter_config.json + adapter_model.safetensors)",
        dir.display()
    )]
    MissingAdapterConfig {
        /// The folder.
        dir: PathBuf,
    },

    /// The adapter folder has no `adapter_model.safetensors` (pickle `adapter_model.bin` is not read).
    #[error("{}: missing adapter_model.safetensors{}", dir.display(), if *has_bin { " (only adapter_model.bin is present; pickle files are never loaded: re-save with safe_serialization=True)" } else { "" })]
    MissingAdapterWeights {
        /// The folder.
        dir: PathBuf,
        /// Whether a pickle `adapter_model.bin` is there instead.
        has_bin: bool,
    },

    /// `adapter_config.json` is not valid JSON or lacks a required field.
    #[error("{}: {message}", path.display())]
    BadAdapterConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong (serde's message includes line and column).
        message: String,
    },

    /// The adapter uses a PEFT feature kdlora does not implement.
    #[error("{}: unsupported PEFT setting {key} = {value} ({hint})", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// Its value.
        value: String,
        /// What kdlora supports instead.
        hint: &'static str,
    },

    /// The safetensors file cannot be parsed or a tensor has an unusable dtype.
    #[error("{}: {message}", path.display())]
    BadSafetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// Adapter tensors name modules the model does not have: the adapter belongs to another architecture.
    #[error(
        "adapter {} does not fit this {model_type} model (adapter base model: {adapter_base}): \
         {count} module path(s) are not linear modules of the model, e.g. {missing}; \
         the model's linear modules look like {examples}",
        path.display()
    )]
    ArchitectureMismatch {
        /// The adapter weights file.
        path: PathBuf,
        /// `model_type` of the model.
        model_type: String,
        /// `base_model_name_or_path` recorded in the adapter, or `unknown`.
        adapter_base: String,
        /// How many paths are unknown.
        count: usize,
        /// A few unknown paths (boxed to keep the error small).
        missing: Box<str>,
        /// A few of the model's paths.
        examples: Box<str>,
    },

    /// An adapter tensor's rank disagrees with `r` in `adapter_config.json`.
    #[error("{}: tensor {key} has rank {found} but adapter_config.json says r = {expected}", path.display())]
    RankMismatch {
        /// The weights file.
        path: PathBuf,
        /// The tensor key.
        key: String,
        /// `r` from the config.
        expected: usize,
        /// Rank implied by the tensor's shape.
        found: usize,
    },

    /// A tensor's shape does not fit the module it belongs to.
    #[error("{}: tensor {key} has shape {found:?}, expected {expected:?}", path.display())]
    ShapeMismatch {
        /// The weights file.
        path: PathBuf,
        /// The tensor key.
        key: String,
        /// Expected shape.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },

    /// A key of the safetensors file is not a LoRA or modules_to_save tensor kdlora understands.
    #[error("{}: unexpected tensor key {key} ({reason})", path.display())]
    UnexpectedKey {
        /// The weights file.
        path: PathBuf,
        /// The key.
        key: String,
        /// Why it is rejected.
        reason: String,
    },

    /// `target_modules` of `adapter_config.json`, the adapter's tensors and the model disagree: a
    /// target the model does not have, tensors for modules no target names, or targeted modules
    /// without tensors (an adapter trained on a model with fewer layers).
    #[error("{}: {message}", path.display())]
    TargetMismatch {
        /// The adapter folder.
        path: PathBuf,
        /// Which modules disagree, with examples.
        message: String,
    },

    /// One of `lora_A` / `lora_B` is present for a module without the other.
    #[error("{}: module {module} has {present} but no {absent}", path.display())]
    IncompletePair {
        /// The weights file.
        path: PathBuf,
        /// Module path.
        module: String,
        /// The key present.
        present: &'static str,
        /// The key absent.
        absent: &'static str,
    },
}

/// Renders up to `n` items, comma separated, with `...` when there are more.
pub(crate) fn sample(items: &[String], n: usize) -> String {
    let mut out = items
        .iter()
        .take(n)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > n {
        out.push_str(", ...");
    }
    if out.is_empty() {
        out.push_str("(none)");
    }
    out
}
