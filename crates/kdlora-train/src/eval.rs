//! Inference side: loading a run folder (or a model folder) as a model, logits over a split,
//! dev evaluation, GLUE submission files and the inference-time measurement.

use std::path::{Path, PathBuf};
use std::time::Instant;

use kdlora_encoders::{LoadOptions, ModelConfig, SequenceClassifier};
use kdlora_glue::{
    DEFAULT_MAX_LEN, GlueBatcher, GlueTask, GlueTokenizer, Label, Prediction, Split, TaskMetrics,
};
use kdlora_lora::LoraOps;

use crate::config::RunConfig;
use crate::data::SplitData;
use crate::error::{Result, TrainError};
use crate::run_dir::RunDir;
use kdlora_hub::resolve_model_path;

pub use kdlora_schema::{TOKENIZER_FILE, TOKENIZER_FILES};

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
    /// The tokenizer's file.
    pub tokenizer_path: PathBuf,
    /// Module paths the checkpoint lacked and that were freshly initialised (a plain model folder
    /// without a trained head); empty for run folders.
    pub initialised: Vec<String>,
}

/// Refuses a run folder that has its `config.toml` but no `model/` or `adapter/` (stopped or
/// failed before its first epoch ended) with how to resume it, instead of reading the folder as
/// a model folder and failing on its missing `config.json`.
pub fn check_finished(path: &Path) -> Result<()> {
    let run = RunDir::new(path);
    if run.config().is_file() && !run.model().is_dir() && !run.adapter().is_dir() {
        return Err(TrainError::UnfinishedRun {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// The one check that a tokenizer and a `max_len` fit a model, run by every command that
/// tokenizes (train for student and teacher, eval, predict, logits): `max_len` within the
/// positions the model has ([`ModelConfig::max_sequence_length`]) and every id the tokenizer can
/// produce inside the embedding table. Either mismatch would otherwise panic in the embedding
/// lookup at the first long or rare input.
pub fn check_tokenizer_fits(
    config: &ModelConfig,
    model_dir: &Path,
    tokenizer: &tokenizers::Tokenizer,
    tokenizer_path: &Path,
    max_len: Option<usize>,
) -> Result<()> {
    if let Some(max_len) = max_len
        && max_len > config.max_sequence_length()
    {
        return Err(TrainError::invalid(
            "max_len",
            format!(
                "{max_len} is more than the {} tokens the model {} takes ({}); set max_len to at \
                 most {}",
                config.max_sequence_length(),
                model_dir.display(),
                config.max_sequence_length_reason(),
                config.max_sequence_length()
            ),
        ));
    }
    // The tokenizers crate truncates the texts to `max_length` minus the special tokens it adds,
    // without checking for underflow: below their count, truncation wraps to "no limit" and a long
    // row then overruns the position table (a panic in the embedding lookup). One token of each
    // text of a pair is the least that leaves anything to classify.
    let special = tokenizer
        .get_post_processor()
        .map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, true));
    if let Some(max_len) = max_len
        && max_len < special + 2
    {
        return Err(TrainError::invalid(
            "max_len",
            format!(
                "{max_len} leaves no room for the text: {} adds {special} special tokens to a \
                 sentence pair; set max_len to at least {}",
                tokenizer_path.display(),
                special + 2
            ),
        ));
    }
    if let Some(id) = kdlora_glue::max_token_id(tokenizer)
        && id as usize >= config.vocab_size
    {
        return Err(TrainError::BadFile {
            path: tokenizer_path.to_path_buf(),
            message: format!(
                "has token ids up to {id}, but the model's config.json in {} has vocab_size {}: \
                 the tokenizer does not belong to this model",
                model_dir.display(),
                config.vocab_size
            ),
        });
    }
    Ok(())
}

/// Applies the PEFT adapter in `adapter_dir` to `base` (loaded from `base_dir`), with
/// [`kdlora_lora::load_adapter`]'s checks, and warns when the adapter records another base model
/// (PEFT does not check it either, but a differing name usually means the wrong base).
pub fn apply_adapter<B: LoraOps>(
    base: SequenceClassifier<B>,
    base_dir: &Path,
    adapter_dir: &Path,
    device: &B::Device,
) -> Result<SequenceClassifier<B>> {
    let (model, _) = kdlora_lora::load_adapter(base, adapter_dir, device)?;
    let recorded = kdlora_lora::PeftAdapterConfig::read(adapter_dir)?
        .base_model_name_or_path
        .unwrap_or_default();
    if !same_base(&recorded, base_dir) {
        tracing::warn!(
            adapter = %adapter_dir.display(),
            adapter_base = recorded.as_str(),
            base = %base_dir.display(),
            "the adapter was trained on another base model (base_model_name_or_path differs)"
        );
    }
    Ok(model)
}

/// Whether an adapter's `base_model_name_or_path` names `base_dir`: the same folder, the Hub
/// repository the folder is a snapshot of, or a folder of the same name (PEFT records whatever
/// path the base was loaded from, so only the last component is comparable across machines).
fn same_base(recorded: &str, base_dir: &Path) -> bool {
    let recorded = recorded.trim_end_matches('/');
    if recorded.is_empty() {
        return true;
    }
    if let (Ok(a), Ok(b)) = (
        std::fs::canonicalize(recorded),
        std::fs::canonicalize(base_dir),
    ) && a == b
    {
        return true;
    }
    let last = |s: &str| s.rsplit(['/', '\\']).next().unwrap_or(s).to_string();
    if let Some(hub) = kdlora_hub::hub_source(base_dir)
        && (hub.id == recorded || last(&hub.id) == last(recorded))
    {
        return true;
    }
    base_dir
        .file_name()
        .is_some_and(|n| n.to_string_lossy() == last(recorded))
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
/// model folder or a Hub id ([`resolve_model`](kdlora_hub::resolve_model)). `num_labels` is used for
/// plain folders without a matching head (fresh head).
pub fn load_model<B: LoraOps>(
    path: &Path,
    num_labels: Option<usize>,
    device: &B::Device,
) -> Result<LoadedModel<B>> {
    check_finished(path)?;
    if !is_run_dir(path) {
        let path = &resolve_model_path(path)?;
        let options = LoadOptions {
            num_labels,
            ..Default::default()
        };
        let (model, report) = SequenceClassifier::<B>::load(path, &options, device)?;
        let tokenizer_path = path.join(TOKENIZER_FILE);
        // No run configuration says how long inputs may be: the default, within the positions
        // the model has.
        let max_len = DEFAULT_MAX_LEN.min(model.max_sequence_length());
        let tokenizer = GlueTokenizer::from_file(&tokenizer_path)?.with_max_len(max_len)?;
        check_tokenizer_fits(
            model.config(),
            path,
            tokenizer.inner(),
            &tokenizer_path,
            None,
        )?;
        return Ok(LoadedModel {
            model,
            tokenizer,
            config: None,
            weight_files: vec![path.join(kdlora_encoders::WEIGHTS_FILE)],
            tokenizer_path,
            initialised: report.initialised,
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
        // The adapter's modules_to_save replace the head the base lacks; a module it does not
        // hold (a BERT pooler left frozen) is drawn from the run's seed exactly as in training.
        let base_options = options.clone().with_head_supplied(true);
        let (base, _) = SequenceClassifier::<B>::load(&base_dir, &base_options, device)?;
        let model = apply_adapter(base, &base_dir, &run.adapter(), device)?;
        (
            model,
            vec![
                base_dir.join(kdlora_encoders::WEIGHTS_FILE),
                run.adapter().join("adapter_model.safetensors"),
            ],
            base_dir,
        )
    };
    let tokenizer_path = tokenizer_dir.join(TOKENIZER_FILE);
    let tokenizer = GlueTokenizer::from_file(&tokenizer_path)?;
    check_tokenizer_fits(
        model.config(),
        &tokenizer_dir,
        tokenizer.inner(),
        &tokenizer_path,
        Some(cfg.max_len),
    )
    .map_err(|e| match e {
        // The key is the run's: say which file holds it.
        TrainError::InvalidValue { key, message } => TrainError::BadFile {
            path: run.config(),
            message: format!("key `{key}`: {message}"),
        },
        other => other,
    })?;
    let tokenizer = tokenizer.with_max_len(cfg.max_len)?;
    Ok(LoadedModel {
        model,
        tokenizer,
        config: Some(cfg),
        weight_files,
        tokenizer_path,
        initialised: Vec::new(),
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
    logits_with(model, data, batcher, batch_size, device, &mut |_| {})
}

/// [`logits`], calling `on_rows` with the number of examples done after every batch.
pub(crate) fn logits_with<B: LoraOps>(
    model: &SequenceClassifier<B>,
    data: &SplitData,
    batcher: &GlueBatcher,
    batch_size: usize,
    device: &B::Device,
    on_rows: &mut dyn FnMut(usize),
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
        // A NaN would otherwise become class 0 (argmax) or a NaN score without a word.
        if let Some(at) = values.iter().position(|v| !v.is_finite()) {
            let position = chunk[at / cols.max(1)];
            let row = data.encoded.get(position).map_or(position, |e| e.index);
            return Err(TrainError::NonFiniteLogits {
                context: format!("{} {:?} row {row}", data.task, data.split),
                value: values[at],
            });
        }
        for r in 0..rows {
            out.push(values[r * cols..(r + 1) * cols].to_vec());
        }
        on_rows(out.len());
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
    evaluate_model_with(model, data, batcher, batch_size, device, &mut |_| {})
}

/// [`evaluate_model`], calling `on_rows` with the number of examples done after every batch.
pub(crate) fn evaluate_model_with<B: LoraOps>(
    model: &SequenceClassifier<B>,
    data: &SplitData,
    batcher: &GlueBatcher,
    batch_size: usize,
    device: &B::Device,
    on_rows: &mut dyn FnMut(usize),
) -> Result<TaskMetrics> {
    let logits = logits_with(model, data, batcher, batch_size, device, on_rows)?;
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
    time_inference_with(
        model,
        data,
        batcher,
        batch_size,
        passes,
        device,
        &mut |_| {},
    )
}

/// [`time_inference`], calling `on_rows` with the examples done over all passes so far. The call
/// falls inside the timed passes, once per batch: callers only move a progress bar there.
pub(crate) fn time_inference_with<B: LoraOps>(
    model: &SequenceClassifier<B>,
    data: &SplitData,
    batcher: &GlueBatcher,
    batch_size: usize,
    passes: usize,
    device: &B::Device,
    on_rows: &mut dyn FnMut(usize),
) -> Result<InferenceTiming> {
    let warm: Vec<usize> = (0..data.len().min(batch_size)).collect();
    let batch = data.batch::<B>(batcher, &warm, device)?;
    let _ = model
        .forward(batch.input_ids, batch.attention_mask, batch.token_type_ids)
        .into_data();
    let mut pass_seconds = Vec::with_capacity(passes);
    for pass in 0..passes {
        let start = Instant::now();
        let done = pass * data.len();
        logits_with(model, data, batcher, batch_size, device, &mut |rows| {
            on_rows(done + rows)
        })?;
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
    check_finished(run_dir)?;
    // Checked before loading: a missing folder that looks like `org/name` is no Hub id here.
    let not_a_run = || TrainError::BadFile {
        path: run_dir.to_path_buf(),
        message: "not a run folder (needs config.toml and model/ or adapter/)".into(),
    };
    if !is_run_dir(run_dir) {
        return Err(not_a_run());
    }
    let mut loaded = load_model::<B>(run_dir, None, device)?;
    let cfg = loaded.config.take().ok_or_else(not_a_run)?;
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
    kdlora_glue::write_predictions(out, task, &preds).map_err(|e| match e {
        // The output file, not the data: without the "data:" prefix of a GLUE error.
        kdlora_glue::GlueError::Io { path, source } => TrainError::io(path, source),
        other => other.into(),
    })?;
    Ok(preds.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiny BERT fixture: 100 tokens, 40 positions.
    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../kdlora-encoders/tests/fixtures/bert_cls3")
    }

    fn config(json: &str) -> ModelConfig {
        ModelConfig::from_json_str(json, Path::new("config.json")).unwrap()
    }

    #[test]
    fn max_len_beyond_the_positions_names_the_key_and_both_numbers() {
        let tokenizer_path = fixture().join(TOKENIZER_FILE);
        let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path).unwrap();
        let bert = config(r#"{"model_type":"bert","vocab_size":100,"max_position_embeddings":40}"#);
        let dir = fixture();
        check_tokenizer_fits(&bert, &dir, &tokenizer, &tokenizer_path, Some(40)).unwrap();
        let err = check_tokenizer_fits(&bert, &dir, &tokenizer, &tokenizer_path, Some(1000))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`max_len`") && err.contains("1000") && err.contains("40"),
            "{err}"
        );
        // RoBERTa loses its padding offset.
        let roberta = config(
            r#"{"model_type":"roberta","vocab_size":100,"max_position_embeddings":42,"pad_token_id":1}"#,
        );
        check_tokenizer_fits(&roberta, &dir, &tokenizer, &tokenizer_path, Some(40)).unwrap();
        let err = check_tokenizer_fits(&roberta, &dir, &tokenizer, &tokenizer_path, Some(41))
            .unwrap_err()
            .to_string();
        assert!(err.contains("42") && err.contains("at most 40"), "{err}");
        // Below [CLS] a [SEP] b [SEP] plus one token of each text.
        check_tokenizer_fits(&bert, &dir, &tokenizer, &tokenizer_path, Some(5)).unwrap();
        let err = check_tokenizer_fits(&bert, &dir, &tokenizer, &tokenizer_path, Some(2))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`max_len`") && err.contains("at least 5"),
            "{err}"
        );
    }

    #[test]
    fn a_tokenizer_larger_than_the_vocabulary_is_refused() {
        let tokenizer_path = fixture().join(TOKENIZER_FILE);
        let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path).unwrap();
        let small = config(r#"{"model_type":"bert","vocab_size":50}"#);
        let err = check_tokenizer_fits(&small, &fixture(), &tokenizer, &tokenizer_path, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tokenizer.json") && err.contains("99") && err.contains("vocab_size 50"),
            "{err}"
        );
    }

    #[test]
    fn adapter_base_names_compare_by_folder_or_hub_name() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("paraphrase-MiniLM-L3-v2");
        std::fs::create_dir(&base).unwrap();
        assert!(same_base("", &base));
        assert!(same_base(&base.to_string_lossy(), &base));
        assert!(same_base(
            "sentence-transformers/paraphrase-MiniLM-L3-v2",
            &base
        ));
        assert!(same_base("/elsewhere/paraphrase-MiniLM-L3-v2/", &base));
        assert!(!same_base("sentence-transformers/all-MiniLM-L6-v2", &base));
    }

    #[test]
    fn an_unfinished_run_says_how_to_resume() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        std::fs::write(run.config(), b"").unwrap();
        std::fs::create_dir(run.checkpoints()).unwrap();
        let err = check_finished(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("did not finish") && err.contains("--config") && err.contains("--resume"),
            "{err}"
        );
        std::fs::create_dir(run.adapter()).unwrap();
        check_finished(dir.path()).unwrap();
    }
}
