//! Inference side: loading a run folder (or a model folder) as a model, logits over a split,
//! dev evaluation, GLUE submission files and the inference-time measurement.

use std::path::{Path, PathBuf};
use std::time::Instant;

use kdlora_encoders::{LoadOptions, SequenceClassifier};
use kdlora_glue::{GlueBatcher, GlueTask, GlueTokenizer, Label, Prediction, Split, TaskMetrics};
use kdlora_lora::LoraOps;

use crate::config::RunConfig;
use crate::data::SplitData;
use crate::error::{Result, TrainError};
use crate::hub::resolve_model_path;
use crate::run_dir::RunDir;

/// Name of the tokenizer file in model folders.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Files copied next to a saved model so the folder is self-contained.
pub(crate) const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
];

/// A model ready for inference, with its tokenizer and (for run folders) its configuration.
#[derive(Debug)]
pub struct LoadedModel<B: LoraOps> {
    /// The classifier (adapters attached when the run used LoRA).
    pub model: SequenceClassifier<B>,
    /// The tokenizer (`max_len` from the run configuration, else the tokenizer's default).
    pub tokenizer: GlueTokenizer,
    /// The run configuration, when loaded from a run folder.
    pub config: Option<RunConfig>,
    /// Files whose bytes determine the model's outputs (for cache keys).
    pub weight_files: Vec<PathBuf>,
}

/// Whether `path` is a run folder (has `config.toml` and a `model/` or `adapter/`).
pub fn is_run_dir(path: &Path) -> bool {
    let run = RunDir::new(path);
    run.config().is_file() && (run.model().is_dir() || run.adapter().is_dir())
}

/// The folder holding the tokenizer of a run folder (`model/`, else the base model of a LoRA run)
/// or of a model folder (itself).
pub fn tokenizer_dir(path: &Path) -> PathBuf {
    if !is_run_dir(path) {
        return path.to_path_buf();
    }
    let run = RunDir::new(path);
    if run.model().join(TOKENIZER_FILE).is_file() {
        return run.model();
    }
    match RunConfig::from_toml_file(&run.config()) {
        Ok(cfg) => resolve_model_path(&cfg.model).unwrap_or(cfg.model),
        Err(_) => path.to_path_buf(),
    }
}

/// Loads a run folder (FFT: `model/`; LoRA: base model + `adapter/`), a plain Hugging Face
/// model folder or a Hub id ([`resolve_model`](crate::resolve_model)). `num_labels` is used for
/// plain folders without a matching head (fresh head).
pub fn load_model<B: LoraOps>(
    path: &Path,
    num_labels: Option<usize>,
    device: &B::Device,
) -> Result<LoadedModel<B>> {
    if !is_run_dir(path) {
        let path = &resolve_model_path(path)?;
        let options = LoadOptions {
            num_labels,
            ..Default::default()
        };
        let (model, _) = SequenceClassifier::<B>::load(path, &options, device)?;
        let tokenizer = GlueTokenizer::from_file(&path.join(TOKENIZER_FILE))?;
        return Ok(LoadedModel {
            model,
            tokenizer,
            config: None,
            weight_files: vec![path.join(kdlora_encoders::WEIGHTS_FILE)],
        });
    }
    let run = RunDir::new(path);
    let mut cfg = RunConfig::from_toml_file(&run.config())?;
    cfg.expand_inputs()?;
    let task = cfg.glue_task()?;
    let options = LoadOptions::default()
        .with_num_labels(task.num_labels())
        .with_seed(cfg.seed);
    let (model, weight_files, tokenizer_dir) = if run.model().is_dir() {
        let (model, _) = SequenceClassifier::<B>::load(&run.model(), &options, device)?;
        let tok_dir = if run.model().join(TOKENIZER_FILE).is_file() {
            run.model()
        } else {
            resolve_model_path(&cfg.model)?
        };
        (
            model,
            vec![run.model().join(kdlora_encoders::WEIGHTS_FILE)],
            tok_dir,
        )
    } else {
        // Saved configs hold a local folder; a hand-written one may name a Hub id.
        let base_dir = resolve_model_path(&cfg.model)?;
        let (base, _) = SequenceClassifier::<B>::load(&base_dir, &options, device)?;
        let (model, _) = kdlora_lora::load_adapter(base, &run.adapter(), device)?;
        (
            model,
            vec![
                base_dir.join(kdlora_encoders::WEIGHTS_FILE),
                run.adapter().join("adapter_model.safetensors"),
            ],
            base_dir,
        )
    };
    let tokenizer =
        GlueTokenizer::from_file(&tokenizer_dir.join(TOKENIZER_FILE))?.with_max_len(cfg.max_len)?;
    Ok(LoadedModel {
        model,
        tokenizer,
        config: Some(cfg),
        weight_files,
    })
}

/// Logits of every example of `data`, in order (`[len][num_labels]`).
pub fn logits<B: LoraOps>(
    model: &SequenceClassifier<B>,
    data: &SplitData,
    batcher: &GlueBatcher,
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<Vec<f32>>> {
    let n = data.len();
    let mut out = Vec::with_capacity(n);
    let positions: Vec<usize> = (0..n).collect();
    for chunk in positions.chunks(batch_size.max(1)) {
        let batch = data.batch::<B>(batcher, chunk, device)?;
        let logits = model.forward(batch.input_ids, batch.attention_mask, batch.token_type_ids);
        let [rows, cols] = logits.dims();
        let values = logits
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| TrainError::Config(format!("reading logits: {e:?}")))?;
        for r in 0..rows {
            out.push(values[r * cols..(r + 1) * cols].to_vec());
        }
    }
    Ok(out)
}

/// Turns logits into predicted labels (argmax, or the single output for regression).
pub fn predictions(task: GlueTask, logits: &[Vec<f32>]) -> Vec<Label> {
    logits
        .iter()
        .map(|row| {
            if task.is_regression() {
                Label::Score(row.first().copied().unwrap_or(0.0))
            } else {
                let mut best = 0;
                for (i, v) in row.iter().enumerate() {
                    if *v > row[best] {
                        best = i;
                    }
                }
                Label::Class(best)
            }
        })
        .collect()
}

/// Evaluates a model on a labelled split with the task's metrics.
pub fn evaluate_model<B: LoraOps>(
    model: &SequenceClassifier<B>,
    data: &SplitData,
    batcher: &GlueBatcher,
    batch_size: usize,
    device: &B::Device,
) -> Result<TaskMetrics> {
    let logits = logits(model, data, batcher, batch_size, device)?;
    let preds = predictions(data.task, &logits);
    let labels = data.labels()?;
    Ok(kdlora_glue::evaluate(data.task, &preds, &labels)?)
}

pub use kdlora_schema::InferenceTiming;

/// Times `passes` full passes of `model` over `data` (batch `batch_size`), after one untimed
/// warm-up batch; each pass includes batching, the forward pass and reading logits back.
pub fn time_inference<B: LoraOps>(
    model: &SequenceClassifier<B>,
    data: &SplitData,
    batcher: &GlueBatcher,
    batch_size: usize,
    passes: usize,
    device: &B::Device,
) -> Result<InferenceTiming> {
    let warm: Vec<usize> = (0..data.len().min(batch_size)).collect();
    let batch = data.batch::<B>(batcher, &warm, device)?;
    let _ = model
        .forward(batch.input_ids, batch.attention_mask, batch.token_type_ids)
        .into_data();
    let mut pass_seconds = Vec::with_capacity(passes);
    for _ in 0..passes {
        let start = Instant::now();
        logits(model, data, batcher, batch_size, device)?;
        pass_seconds.push(start.elapsed().as_secs_f64());
    }
    let mut sorted = pass_seconds.clone();
    sorted.sort_by(f64::total_cmp);
    let median = if sorted.is_empty() {
        0.0
    } else if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    Ok(InferenceTiming {
        median_seconds: median,
        pass_seconds,
        examples: data.len(),
        batch_size,
        examples_per_second: if median > 0.0 {
            data.len() as f64 / median
        } else {
            0.0
        },
        method: format!(
            "median wall-clock time of {passes} full passes over the dev split (batch {batch_size}, \
             dynamic padding, adapters merged into the base weights, no autodiff), after one \
             untimed warm-up batch; each pass includes batching, forward and copying logits to the host"
        ),
    })
}

/// `kdlora eval`: evaluates a run on its task's dev split (or `data_dir` when given).
pub fn eval_run<B: LoraOps>(
    run_dir: &Path,
    data_dir: Option<&Path>,
    device: &B::Device,
) -> Result<TaskMetrics> {
    let mut loaded = load_model::<B>(run_dir, None, device)?;
    let cfg = loaded.config.take().ok_or_else(|| TrainError::BadFile {
        path: run_dir.to_path_buf(),
        message: "not a run folder (needs config.toml and model/ or adapter/)".into(),
    })?;
    let task = cfg.glue_task()?;
    kdlora_lora::merge(&mut loaded.model);
    let data = SplitData::load(
        data_dir.unwrap_or(&cfg.data),
        task,
        Split::Dev,
        cfg.max_eval_examples,
        &loaded.tokenizer,
    )?;
    let batcher = GlueBatcher::from_tokenizer(&loaded.tokenizer);
    evaluate_model(&loaded.model, &data, &batcher, cfg.eval_batch_size, device)
}

/// `kdlora predict`: writes a GLUE submission file of a run's predictions on `split`.
/// Returns the number of predictions written.
pub fn predict_run<B: LoraOps>(
    run_dir: &Path,
    task: GlueTask,
    data_dir: &Path,
    split: Split,
    out: &Path,
    device: &B::Device,
) -> Result<usize> {
    let mut loaded = load_model::<B>(run_dir, Some(task.num_labels()), device)?;
    if let Some(cfg) = &loaded.config {
        let run_task = cfg.glue_task()?;
        if run_task != task {
            return Err(TrainError::invalid(
                "task",
                format!("the run was trained on {run_task}, not {task}"),
            ));
        }
    }
    if loaded.model.num_labels() != task.num_labels() {
        return Err(TrainError::invalid(
            "task",
            format!(
                "the model has {} outputs, {task} needs {}",
                loaded.model.num_labels(),
                task.num_labels()
            ),
        ));
    }
    kdlora_lora::merge(&mut loaded.model);
    let batch_size = loaded.config.as_ref().map_or(64, |c| c.eval_batch_size);
    let data = SplitData::load(data_dir, task, split, None, &loaded.tokenizer)?;
    let batcher = GlueBatcher::from_tokenizer(&loaded.tokenizer);
    let logits = logits(&loaded.model, &data, &batcher, batch_size, device)?;
    let preds: Vec<Prediction> = predictions(task, &logits)
        .into_iter()
        .zip(&data.examples)
        .map(|(label, e)| Prediction {
            index: e.index,
            label,
        })
        .collect();
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| TrainError::io(parent, e))?;
    }
    kdlora_glue::write_predictions(out, task, &preds)?;
    Ok(preds.len())
}
