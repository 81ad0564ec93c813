//! What the inference verbs learn from a run folder or an adapter folder: the run's
//! configuration (task, data, `max_len`, seed), the base model an adapter names, and the label
//! names the outputs are reported in.

use std::path::{Path, PathBuf};

use anyhow::Context;
use kdlora_encoders::{LoadOptions, ProblemType, SequenceClassifier};
use kdlora_glue::GlueTask;
use kdlora_lora::{LoraOps, PeftAdapterConfig};
use kdlora_train::{RunConfig, RunDir};

/// The configuration of a finished run folder (`config.toml`, with `${VAR}` in its model and data
/// paths expanded); `None` when `path` is no run folder. An unfinished run is an error saying how
/// to resume it, rather than `None` (which would send the caller looking for a model there).
pub(crate) fn run_config(path: &Path) -> anyhow::Result<Option<RunConfig>> {
    kdlora_train::check_finished(path)?;
    if !kdlora_train::is_run_dir(path) {
        return Ok(None);
    }
    read_run_config(path).map(Some)
}

fn read_run_config(run: &Path) -> anyhow::Result<RunConfig> {
    let mut cfg = RunConfig::from_toml_file(&RunDir::new(run).config())?;
    cfg.expand_inputs()?;
    Ok(cfg)
}

/// The run folder an adapter folder belongs to: its parent, when that holds a `config.toml`
/// (`RUN/adapter`, `RUN/best`).
fn adapter_run(adapter: &Path) -> Option<PathBuf> {
    let absolute = std::path::absolute(adapter).ok()?;
    let parent = absolute.parent()?;
    RunDir::new(parent)
        .config()
        .is_file()
        .then(|| parent.to_path_buf())
}

/// The configuration of the run an adapter folder belongs to, if any.
pub(crate) fn adapter_run_config(adapter: &Path) -> anyhow::Result<Option<RunConfig>> {
    adapter_run(adapter)
        .map(|run| read_run_config(&run))
        .transpose()
}

/// The adapter folder an `--adapter` argument names: the folder itself, or `RUN/adapter` for a
/// LoRA run folder.
pub(crate) fn adapter_dir(arg: &Path) -> PathBuf {
    let run = RunDir::new(arg);
    if run.config().is_file() && run.adapter().is_dir() {
        run.adapter()
    } else {
        arg.to_path_buf()
    }
}

/// The base model an adapter records in `base_model_name_or_path`: a path relative to the
/// adapter's parent folder (what `kdlora train` writes: the run folder; PEFT's own layout keeps
/// the base beside the adapter), an absolute path, or a Hugging Face Hub id.
pub(crate) fn adapter_base(adapter: &Path) -> anyhow::Result<PathBuf> {
    let config_file = adapter.join("adapter_config.json");
    let recorded = PeftAdapterConfig::read(adapter)
        .with_context(|| format!("reading the adapter {}", adapter.display()))?
        .base_model_name_or_path
        .filter(|s| !s.trim().is_empty())
        .with_context(|| {
            format!(
                "{}: records no base_model_name_or_path; give the base model with --model",
                config_file.display()
            )
        })?;
    let as_path = Path::new(&recorded);
    if as_path.is_relative()
        && let Ok(absolute) = std::path::absolute(adapter)
        && let Some(parent) = absolute.parent()
    {
        let beside = parent.join(as_path);
        if beside.exists() {
            return Ok(beside);
        }
    }
    kdlora_hub::resolve_model(&recorded).with_context(|| {
        format!(
            "the base model `{recorded}` that {} names (give it with --model)",
            config_file.display()
        )
    })
}

/// Loads the base model `base` and applies the adapter in `adapter`. When the adapter belongs
/// to a run, the head has its task's size (unless `num_labels` says otherwise) and the run's seed
/// draws a module neither the base nor the adapter holds (a frozen BERT pooler) as in training.
///
/// When the adapter saves modules in full (`modules_to_save`: the classifier, a pooler), the
/// base lacking them is expected and not worth an info line that reads as if the trained head
/// were lost; modules the adapter does not replace are still reported.
pub(crate) fn load_with_adapter<B: LoraOps>(
    base: &Path,
    adapter: &Path,
    num_labels: Option<usize>,
    device: &B::Device,
) -> anyhow::Result<SequenceClassifier<B>> {
    // The adapter's own errors name its folder and files: a context would print the path twice.
    let saved = PeftAdapterConfig::read(adapter)?
        .modules_to_save
        .unwrap_or_default();
    let mut options = LoadOptions {
        num_labels,
        ..Default::default()
    }
    .with_head_supplied(!saved.is_empty());
    if let Some(cfg) = adapter_run_config(adapter)? {
        options = options.with_seed(cfg.seed);
        if num_labels.is_none() {
            options = options.with_num_labels(cfg.glue_task()?.num_labels());
        }
    }
    let (model, report) = SequenceClassifier::<B>::load(base, &options, device)
        .with_context(|| format!("loading the model from {}", base.display()))?;
    let left: Vec<&str> = report
        .initialised
        .iter()
        .filter(|module| !saved.iter().any(|s| replaces(s, module)))
        .map(String::as_str)
        .collect();
    if !saved.is_empty() && !left.is_empty() {
        tracing::info!(
            source = %base.display(),
            "checkpoint has no weights for {}: freshly initialised (the adapter's modules_to_save, {}, do not hold them)",
            left.join(", "),
            saved.join(", ")
        );
    }
    kdlora_train::apply_adapter(model, base, adapter, device)
        .with_context(|| format!("applying the adapter {}", adapter.display()))
}

/// Whether a `modules_to_save` entry replaces module `module` (PEFT matches entries against
/// whole path segments: `classifier` replaces `classifier` and `classifier.dense`, `pooler`
/// replaces `bert.pooler.dense`).
fn replaces(saved: &str, module: &str) -> bool {
    format!(".{module}.").contains(&format!(".{saved}."))
}

/// The names the outputs of a model are reported in.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Labels {
    /// Class names in output order (one `LABEL_0` for a regression).
    pub names: Vec<String>,
    /// A single score (STS-B) instead of classes.
    pub regression: bool,
}

impl Labels {
    /// A GLUE task's class names.
    pub fn of_task(task: GlueTask) -> Self {
        if task.is_regression() {
            return Self {
                names: vec!["LABEL_0".into()],
                regression: true,
            };
        }
        Self {
            names: task.label_names().iter().map(|s| s.to_string()).collect(),
            regression: false,
        }
    }

    /// The task's names when the run is known, else the model's `config.json` (`id2label`).
    pub fn of<B: LoraOps>(task: Option<GlueTask>, model: &SequenceClassifier<B>) -> Self {
        match task {
            Some(task) => Self::of_task(task),
            None => Self {
                names: model.config().id2label.clone(),
                regression: model.problem_type() == ProblemType::Regression,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_to_save_replace_whole_path_segments() {
        assert!(replaces("classifier", "classifier"));
        assert!(replaces("classifier", "classifier.dense"));
        assert!(replaces("pooler", "bert.pooler.dense"));
        assert!(!replaces("classifier", "bert.pooler.dense"));
        assert!(!replaces("pool", "bert.pooler.dense"));
    }

    #[test]
    fn adapter_base_is_read_relative_to_the_adapters_parent_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("models/bert");
        let adapter = tmp.path().join("runs/r/adapter");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::create_dir_all(&adapter).unwrap();
        let write = |recorded: &str| {
            std::fs::write(
                adapter.join("adapter_config.json"),
                serde_json::json!({
                    "peft_type": "LORA", "r": 4, "lora_alpha": 8,
                    "base_model_name_or_path": recorded,
                })
                .to_string(),
            )
            .unwrap();
        };
        write("../../models/bert");
        let found = adapter_base(&adapter).unwrap();
        assert_eq!(found.canonicalize().unwrap(), base.canonicalize().unwrap());
        write(&base.to_string_lossy());
        assert_eq!(adapter_base(&adapter).unwrap(), base);
        write("");
        let err = adapter_base(&adapter).unwrap_err().to_string();
        assert!(err.contains("--model"), "{err}");
    }

    #[test]
    fn task_labels_are_the_glue_names() {
        let mnli = Labels::of_task(GlueTask::Mnli);
        assert_eq!(mnli.names, ["entailment", "neutral", "contradiction"]);
        assert!(!mnli.regression);
        assert!(Labels::of_task(GlueTask::Stsb).regression);
    }
}
