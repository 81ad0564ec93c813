//! The training loop: FFT, LoRA, KD-LoRA and KD runs from a [`RunConfig`] to a finished run folder.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{ElementConversion, Tensor};
use kdlora_distill::{TeacherLogits, TeacherLogitsMeta};
use kdlora_encoders::{LoadOptions, SequenceClassifier};
use kdlora_glue::{GlueBatcher, GlueLabels, GlueTask, GlueTokenizer, Split};
use kdlora_lora::{AutodiffLoraOps, LoraOps};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::checkpoint::{load_checkpoint_model, save_checkpoint};
use crate::config::{Engine, RunConfig};
use crate::data::SplitData;
use crate::error::{Result, TrainError};
use crate::eval::{
    TOKENIZER_FILE, TOKENIZER_FILES, check_finished, check_tokenizer_fits, evaluate_model_with,
    load_model, time_inference_with,
};
use crate::memory::{DEVICE_MEMORY_METHOD, PEAK_RSS_METHOD, peak_rss_bytes};
use crate::optim::{GroupedAdamW, ParamCounts, linear_schedule, param_groups};
use crate::progress::{StepInfo, TrainObserver};
use crate::run_dir::{
    CheckpointState, RunDir, create_dir, read_jsonl, remove_dir_if_exists, replace_dir,
    write_atomic, write_json, write_jsonl,
};
use crate::step_log::{StepLog, logging_interval};
pub use kdlora_schema::{
    EpochRecord, LoraParams, MajorityBaseline, Memory, RunMetrics, Throughput,
};

/// Batch size of the inference-time measurement (the paper's setting).
pub const INFERENCE_BATCH_SIZE: usize = 32;

/// The majority-class baseline on the run's dev rows (`None`, with a warning, when a split has no
/// labels: it is a reference number, not a reason to stop a run).
fn majority_baseline(
    task: GlueTask,
    train: &SplitData,
    dev: &SplitData,
    dev_mismatched: Option<&SplitData>,
) -> Option<MajorityBaseline> {
    let score = |eval: &SplitData| -> Result<kdlora_glue::Baseline> {
        Ok(kdlora_glue::majority_baseline(
            task,
            &train.labels()?,
            &eval.labels()?,
        )?)
    };
    let result = score(dev).and_then(|b| {
        let mismatched = dev_mismatched.map(score).transpose()?;
        Ok(MajorityBaseline {
            prediction: b.prediction,
            score: b.score,
            score_mismatched: mismatched.map(|m| m.score),
        })
    });
    match result {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!(error = %e, "no majority baseline for this run");
            None
        }
    }
}

/// Resolves a model argument: a run folder's `model/` or the folder itself.
pub fn model_dir(path: &Path) -> PathBuf {
    let inner = path.join("model");
    if inner.join(kdlora_encoders::CONFIG_FILE).is_file() {
        inner
    } else {
        path.to_path_buf()
    }
}

/// Whether `dir` is a folder with at least one entry (burn-train creates its checkpoint folder
/// before the first checkpoint is written).
fn has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Keys that may differ between a stopped run and its resumption.
fn comparable(cfg: &RunConfig) -> RunConfig {
    let mut c = cfg.clone();
    // The same folders however they are spelled: `--out runs/x/ --resume` against a saved
    // absolute `out`, or a hand-written config.toml with `${VAR}` or `..` in its paths. (An
    // unset variable is reported where the path is used.)
    let _ = c.expand_paths();
    c.out = absolute(&c.out);
    c.model = absolute(&c.model);
    c.data = absolute(&c.data);
    c.teacher = c.teacher.as_deref().map(absolute);
    c.stop_after_epochs = None;
    c.device = String::new();
    c.inference_passes = 0;
    c.logging_steps = 0;
    c.keep_checkpoints = false;
    c
}

/// The dotted keys whose values differ between two TOML documents, each with both values.
fn differing_keys(saved: &str, given: &str) -> Vec<String> {
    fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
        match value {
            toml::Value::Table(table) => {
                for (key, value) in table {
                    let key = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    flatten(&key, value, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let parse = |text: &str| {
        let mut out = BTreeMap::new();
        if let Ok(table) = toml::from_str::<toml::Table>(text) {
            flatten("", &toml::Value::Table(table), &mut out);
        }
        out
    };
    let (saved, given) = (parse(saved), parse(given));
    let keys: BTreeSet<&String> = saved.keys().chain(given.keys()).collect();
    keys.into_iter()
        .filter(|k| saved.get(*k) != given.get(*k))
        .map(|k| {
            let show = |v: Option<&String>| v.map_or("(absent)".to_string(), String::clone);
            format!(
                "`{k}` (saved {}, given {})",
                show(saved.get(k)),
                show(given.get(k))
            )
        })
        .collect()
}

/// Checks the teacher before anything is loaded or written: a kdlora run folder must have
/// finished and been trained on this run's task; anything else (a model folder, a Hub id, a
/// mistyped path) needs `allow_model_teacher`, so a typo is never looked up on the Hub and an
/// untuned head is never distilled from by accident.
fn check_teacher(cfg: &RunConfig, task: GlueTask) -> Result<()> {
    let Some(teacher) = cfg.teacher.as_ref().filter(|_| cfg.method.uses_teacher()) else {
        return Ok(());
    };
    let run = RunDir::new(teacher);
    if run.config().is_file() {
        check_finished(teacher)?;
        let saved = RunConfig::from_toml_file(&run.config())?;
        let teacher_task = saved.glue_task().map_err(|e| TrainError::BadFile {
            path: run.config(),
            message: e.to_string(),
        })?;
        if teacher_task != task {
            return Err(TrainError::invalid(
                "teacher",
                format!(
                    "{} was trained on {teacher_task}, this run is {task}: the teacher must be \
                     fine-tuned on the same task",
                    teacher.display()
                ),
            ));
        }
        return Ok(());
    }
    if !cfg.allow_model_teacher {
        return Err(TrainError::invalid(
            "teacher",
            format!(
                "{} is not a kdlora run folder (no config.toml); give a run fine-tuned on {task} \
                 (`kdlora train --method fft ...`), or, for a model folder or Hub id whose \
                 classification head is already fine-tuned for {task}, set \
                 allow_model_teacher = true (`--set allow_model_teacher=true`)",
                teacher.display()
            ),
        ));
    }
    Ok(())
}

/// Removes what a killed process leaves in a run folder: staged `.adapter.tmp-PID/`,
/// `.model.old-PID/`, `.step-N.tmp-PID/` folders and temporary files. Only names of that shape
/// are touched.
fn remove_stale_temporaries(run: &RunDir) -> Result<()> {
    for dir in [run.root().to_path_buf(), run.checkpoints()] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let entry = entry.map_err(|e| TrainError::io(&dir, e))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if !kdlora_schema::is_temporary_name(&name) {
                continue;
            }
            let path = entry.path();
            let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(|e| TrainError::io(&path, e))?;
            tracing::debug!(path = %path.display(), "removed a stale temporary");
        }
    }
    Ok(())
}

/// Undoes what a fresh run that failed before its first checkpoint wrote (its `config.toml`, and
/// the folder when this invocation created it and nothing else is left), so the folder does not
/// look like a run. Best effort: the run's own error is what gets reported.
fn discard_unstarted_run(run: &RunDir, created_root: bool) {
    let started = run.checkpoints().exists()
        || has_entries(&run.learner_dir().join("checkpoint"))
        || run.metrics_json().exists();
    if started {
        return;
    }
    let _ = std::fs::remove_file(run.config());
    let _ = std::fs::remove_file(run.train_log());
    let _ = remove_stale_temporaries(run);
    if created_root {
        // Fails, as intended, when the folder is not empty (a teacher-logit cache, user files).
        let _ = std::fs::remove_dir(run.root());
    }
}

/// Watches the step loss for divergence: a loss above `factor` times the first step's (at least
/// 0.1, so that a near-zero start does not make noise a divergence). NaN and infinity are stopped
/// elsewhere ([`TrainError::NonFiniteLoss`]); this stops a finite loss that exploded.
#[derive(Clone, Debug)]
pub(crate) struct DivergenceWatch {
    factor: f64,
    first: Option<f64>,
}

impl DivergenceWatch {
    pub(crate) fn new(factor: f64, first: Option<f64>) -> Self {
        Self { factor, first }
    }

    /// The first step loss seen (for the checkpoint, so a resumed run compares with the same).
    pub(crate) fn first(&self) -> Option<f64> {
        self.first
    }

    /// Records a step's mean loss; [`TrainError::Diverged`] when it exploded.
    pub(crate) fn observe(&mut self, step: usize, epoch: usize, loss: f64) -> Result<()> {
        let first = *self.first.get_or_insert(loss);
        if self.factor > 0.0 && loss > self.factor * first.max(0.1) {
            return Err(TrainError::Diverged {
                step,
                epoch,
                loss,
                first,
                factor: self.factor,
            });
        }
        Ok(())
    }
}

pub(crate) fn mix_seed(seed: u64, stream: u64, n: u64) -> u64 {
    // SplitMix64 finaliser over (seed, stream, n): distinct, well-spread seeds per epoch/step.
    let mut z = seed
        .wrapping_add(stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(n.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Batches per window of [`epoch_batches`] with `lengths` (as the Hugging Face Trainer's
/// `LengthGroupedSampler` groups 50 batches).
const LENGTH_WINDOW_BATCHES: usize = 50;

/// Micro-batches (positions) of an epoch in the seeded shuffled order (0-based `epoch`). With
/// `lengths` (token counts by position), each window of [`LENGTH_WINDOW_BATCHES`] batches of
/// that order is sorted by length, longest first, before it is cut into batches: batches pad
/// less, while which examples share a window stays random.
pub(crate) fn epoch_batches(
    n: usize,
    batch_size: usize,
    seed: u64,
    epoch: usize,
    lengths: Option<&[usize]>,
) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(mix_seed(seed, 1, epoch as u64)));
    if let Some(lengths) = lengths {
        for window in order.chunks_mut(batch_size * LENGTH_WINDOW_BATCHES) {
            // Stable: equal lengths keep their shuffled order.
            window.sort_by_key(|&p| std::cmp::Reverse(lengths.get(p).copied().unwrap_or(0)));
        }
    }
    order.chunks(batch_size).map(<[usize]>::to_vec).collect()
}

/// Computes (or reuses) the teacher's logits over the training split, in position order.
fn teacher_logits<B: LoraOps>(
    cfg: &RunConfig,
    run: &RunDir,
    train_examples: &SplitData,
    device: &B::Device,
    observer: &mut dyn TrainObserver,
) -> Result<TeacherLogits> {
    let teacher_path = cfg
        .teacher
        .as_ref()
        .ok_or_else(|| TrainError::invalid("teacher", "missing"))?;
    let task = cfg.glue_task()?;
    let teacher = load_model::<B>(teacher_path, Some(task.num_labels()), device)?;
    if !teacher.initialised.is_empty() {
        // Only reachable with allow_model_teacher (check_teacher refuses model folders otherwise):
        // the user asked for it, but the result teaches random outputs.
        tracing::warn!(
            teacher = %teacher_path.display(),
            initialised = ?teacher.initialised,
            "the teacher checkpoint has no head for {task}; distilling from a freshly initialised one"
        );
    }
    // The teacher reads the examples with its own tokenizer at the run's max_len.
    check_tokenizer_fits(
        teacher.model.config(),
        teacher_path,
        teacher.tokenizer.inner(),
        &teacher.tokenizer_path,
        Some(cfg.max_len),
    )?;
    if teacher.model.num_labels() != task.num_labels() {
        return Err(TrainError::invalid(
            "teacher",
            format!(
                "the teacher has {} outputs, {task} needs {}",
                teacher.model.num_labels(),
                task.num_labels()
            ),
        ));
    }
    let mut model = teacher.model;
    kdlora_lora::merge(&mut model);
    let tokenizer = teacher.tokenizer.with_max_len(cfg.max_len)?;
    let mut weights = String::new();
    for file in &teacher.weight_files {
        weights.push_str(&kdlora_distill::sha256_file(file)?);
    }
    let tokenizer_json = serde_json::to_vec(tokenizer.inner())
        .map_err(|e| TrainError::Config(format!("serialising the teacher tokenizer: {e}")))?;
    let meta = TeacherLogitsMeta {
        teacher: format!("{} ({})", teacher_path.display(), model.config().model_type),
        teacher_weights_sha256: kdlora_distill::sha256_bytes(weights.as_bytes()),
        task: task.name().to_string(),
        split: "train".into(),
        tokenizer_sha256: kdlora_distill::sha256_bytes(&tokenizer_json),
        max_len: cfg.max_len,
        dataset_rows_sha256: train_examples.rows_sha256(),
        num_examples: train_examples.len(),
        num_outputs: task.num_labels(),
        ..Default::default()
    };
    let build = || -> Result<Vec<f32>> {
        observer.on_phase_start("teacher logits", train_examples.len());
        let encoded = tokenizer.encode_examples(&train_examples.examples)?;
        let data = SplitData {
            encoded,
            ..train_examples.clone()
        };
        let batcher = GlueBatcher::from_tokenizer(&tokenizer);
        let rows = crate::eval::logits_with(
            &model,
            &data,
            &batcher,
            cfg.eval_batch_size,
            device,
            &mut |done| observer.on_phase_progress(done),
        )?;
        observer.on_phase_end();
        Ok(rows.concat())
    };
    let (store, outcome) = TeacherLogits::load_or_build(run.teacher_logits(), &meta, build)?;
    tracing::info!(?outcome, "teacher logits ready");
    Ok(store)
}

/// What one optimizer step's micro-batches produced: the summed gradients of the scaled losses
/// and the unscaled loss values.
pub(crate) struct GroupOutcome {
    /// Gradients of `sum(loss_i / n)` over the group's `n` micro-batches.
    pub(crate) grads: GradientsParams,
    /// The micro-batch losses (unscaled), in order (callers add them one by one, so sums round
    /// the same way in both engines).
    pub(crate) losses: Vec<f64>,
    /// Examples in the group.
    pub(crate) examples: usize,
    /// With a teacher: the sums over the micro-batches of the loss against the labels and of the
    /// loss against the teacher (the parts of `losses`).
    pub(crate) parts: Option<(f64, f64)>,
}

impl GroupOutcome {
    /// Means over the micro-batches of the loss parts: (against the labels, against the teacher).
    pub(crate) fn mean_parts(&self) -> (Option<f64>, Option<f64>) {
        let n = self.losses.len().max(1) as f64;
        match self.parts {
            Some((task, kd)) => (Some(task / n), Some(kd / n)),
            None => (None, None),
        }
    }
}

/// Forward and backward over one optimizer step's micro-batches (gradient accumulation), shared
/// by both engines so they run the same operations in the same order. A non-finite micro-batch
/// loss is [`TrainError::NonFiniteLoss`] at `step` (1-based) of `epoch` (1-based).
pub(crate) fn group_gradients<B: AutodiffLoraOps>(
    ctx: &RunContext,
    teacher: Option<&TeacherLogits>,
    model: &SequenceClassifier<B>,
    group: &[Vec<usize>],
    device: &B::Device,
    step: usize,
    epoch: usize,
) -> Result<GroupOutcome> {
    let mut accumulator = GradientsAccumulator::<SequenceClassifier<B>>::new();
    let mut out = GroupOutcome {
        grads: GradientsParams::new(),
        losses: Vec::with_capacity(group.len()),
        examples: 0,
        parts: None,
    };
    // This step's distillation settings (constant unless `kd` schedules them).
    let kd = ctx.cfg.kd.at(epoch, run_progress(step, ctx.total_steps()));
    for positions in group {
        let (loss, parts) = micro_batch_loss(ctx, teacher, model, positions, device, &kd)?;
        let value: f64 = loss.clone().into_scalar().elem::<f64>();
        if let Some([task, kd]) = parts {
            // Read on the inner backend: the values only, nothing joins the autodiff graph.
            let values = Tensor::cat(vec![task.inner(), kd.inner()], 0)
                .into_data()
                .convert::<f64>()
                .into_vec::<f64>()
                .unwrap_or_default();
            if let [task, kd] = values[..] {
                let (t, k) = out.parts.unwrap_or((0.0, 0.0));
                out.parts = Some((t + task, k + kd));
            }
        }
        if !value.is_finite() {
            return Err(TrainError::NonFiniteLoss {
                step,
                epoch,
                value: value as f32,
            });
        }
        let scaled = loss.div_scalar(group.len() as f64);
        let grads = GradientsParams::from_grads(scaled.backward(), model);
        accumulator.accumulate(model, grads);
        out.losses.push(value);
        out.examples += positions.len();
    }
    out.grads = accumulator.grads();
    Ok(out)
}

/// Where 1-based optimizer `step` lies in a run of `total` steps: 0 at the first, 1 at the last.
fn run_progress(step: usize, total: usize) -> f64 {
    if total <= 1 {
        return 0.0;
    }
    (step.saturating_sub(1) as f64 / (total - 1) as f64).min(1.0)
}

/// A micro-batch's loss and, with a teacher, its two parts (against the labels, against the
/// teacher).
type MicroBatchLoss<B> = (Tensor<B, 1>, Option<[Tensor<B, 1>; 2]>);

/// Loss of one micro-batch (unscaled): cross-entropy (MSE for regression), or the KD loss
/// against the teacher's logits looked up by example position.
fn micro_batch_loss<B: AutodiffLoraOps>(
    ctx: &RunContext,
    teacher: Option<&TeacherLogits>,
    model: &SequenceClassifier<B>,
    positions: &[usize],
    device: &B::Device,
    kd: &kdlora_distill::KdConfig,
) -> Result<MicroBatchLoss<B>> {
    let cfg = &ctx.cfg;
    let batch = ctx.train_data.batch::<B>(&ctx.batcher, positions, device)?;
    let logits = model.forward(batch.input_ids, batch.attention_mask, batch.token_type_ids);
    let teacher = match teacher {
        Some(t) => Some(t.lookup::<B>(positions, device)?),
        None => None,
    };
    let labels = batch.labels.ok_or_else(|| TrainError::BadFile {
        path: cfg.data.clone(),
        message: "training batch without labels".into(),
    })?;
    let kd = match (labels, teacher) {
        (GlueLabels::Class(l), None) => return Ok((kdlora_distill::hard_loss(logits, l), None)),
        (GlueLabels::Score(s), None) => {
            let n = s.dims()[0];
            return Ok(((logits.reshape([n]) - s).square().mean(), None));
        }
        (GlueLabels::Class(l), Some(t)) => kdlora_distill::try_kd_loss(logits, t, l, kd)?,
        (GlueLabels::Score(s), Some(t)) => {
            kdlora_distill::try_regression_kd_loss(logits, t, s, kd)?
        }
    };
    Ok((kd.total, Some([kd.hard, kd.soft])))
}

type Optim<B> = GroupedAdamW<SequenceClassifier<B>, B>;

/// Builds the student as the recipe wants it: LoRA adapters attached (base frozen) or all
/// parameters trainable.
fn build_student<B: AutodiffLoraOps>(
    cfg: &RunConfig,
    num_labels: usize,
    device: &B::Device,
) -> Result<SequenceClassifier<B>> {
    let options = LoadOptions::default()
        .with_num_labels(num_labels)
        .with_seed(cfg.seed);
    let (model, report) = SequenceClassifier::<B>::load(&cfg.model, &options, device)?;
    tracing::info!(model = %cfg.model.display(), initialised = ?report.initialised, "student loaded");
    if cfg.method.uses_lora() {
        Ok(kdlora_lora::inject(model, &cfg.lora, device)?)
    } else {
        Ok(model)
    }
}

/// What both engines share before the first step: the resolved configuration, the run folder,
/// the tokenized data and the batcher.
pub(crate) struct RunContext {
    /// The configuration with paths expanded and the model resolved to a local folder.
    pub(crate) cfg: RunConfig,
    /// The Hub repository the model folder is a snapshot of.
    pub(crate) model_hub: Option<kdlora_hub::HubSource>,
    pub(crate) task: GlueTask,
    pub(crate) run: RunDir,
    pub(crate) batcher: GlueBatcher,
    pub(crate) train_data: SplitData,
    pub(crate) dev_data: SplitData,
    /// MNLI: the mismatched dev set, when the data folder has one (scored beside `dev_data`).
    pub(crate) dev_mismatched: Option<SplitData>,
    /// What a constant prediction scores on the dev rows.
    pub(crate) majority_baseline: Option<MajorityBaseline>,
    pub(crate) lora_params: Option<LoraParams>,
}

impl RunContext {
    /// Optimizer steps per epoch (a trailing partial accumulation group is a step of its own).
    pub(crate) fn steps_per_epoch(&self) -> usize {
        self.train_data
            .len()
            .div_ceil(self.cfg.batch_size)
            .div_ceil(self.cfg.grad_accumulation)
    }

    /// The micro-batches of 0-based `epoch` ([`epoch_batches`], grouped by length when the run
    /// asks for it).
    pub(crate) fn epoch_batches(&self, epoch: usize) -> Vec<Vec<usize>> {
        let lengths: Option<Vec<usize>> = self.cfg.group_by_length.then(|| {
            self.train_data
                .encoded
                .iter()
                .map(|e| e.input_ids.len())
                .collect()
        });
        epoch_batches(
            self.train_data.len(),
            self.cfg.batch_size,
            self.cfg.seed,
            epoch,
            lengths.as_deref(),
        )
    }

    /// Optimizer steps of the whole run (the schedule follows `epochs`, not `stop_after_epochs`).
    pub(crate) fn total_steps(&self) -> usize {
        self.steps_per_epoch() * self.cfg.epochs
    }

    /// Warmup steps of the linear schedule.
    pub(crate) fn warmup_steps(&self) -> usize {
        (self.cfg.warmup_ratio * self.total_steps() as f64).ceil() as usize
    }

    /// The last epoch this invocation trains (1-based, inclusive).
    pub(crate) fn stop_epoch(&self) -> usize {
        self.cfg
            .stop_after_epochs
            .unwrap_or(self.cfg.epochs)
            .min(self.cfg.epochs)
    }

    /// The global step this invocation stops at (the end of [`RunContext::stop_epoch`]).
    pub(crate) fn end_step(&self) -> usize {
        self.steps_per_epoch() * self.stop_epoch()
    }

    /// Opens `train_log.jsonl` for a run continuing after `start_step`.
    pub(crate) fn step_log(&self, start_step: usize) -> Result<StepLog> {
        let every = logging_interval(self.cfg.logging_steps, self.steps_per_epoch());
        StepLog::open(
            &self.run.train_log(),
            every,
            self.steps_per_epoch(),
            start_step,
        )
    }

    /// Whether the loop's checkpoints hold only the trainable tensors (LoRA: the frozen base is
    /// rebuilt from the model folder and the seed).
    pub(crate) fn trainable_checkpoints(&self) -> bool {
        self.cfg.method.uses_lora()
    }
}

/// Accumulated training measurements at the end of an invocation.
pub(crate) struct Totals {
    pub(crate) epochs_completed: usize,
    pub(crate) train_examples: usize,
    pub(crate) train_seconds: f64,
}

/// Checks and resolves the configuration, prepares the run folder (writing `config.toml`), seeds
/// the backend, loads and tokenizes the data, computes (or reuses) the teacher logits and builds
/// the student. Shared by both engines, in this order, so they start from the same state.
fn prepare<B: AutodiffLoraOps>(
    cfg: &RunConfig,
    resume: bool,
    device: &B::Device,
    observer: &mut dyn TrainObserver,
    fresh: &mut Option<(RunDir, bool)>,
) -> Result<(RunContext, Option<TeacherLogits>, SequenceClassifier<B>)> {
    let mut cfg = cfg.clone();
    cfg.expand_paths()?;
    cfg.validate()?;
    cfg.lora
        .validate()
        .map_err(|e| TrainError::invalid("lora", e.to_string()))?;
    cfg.kd
        .validate()
        .map_err(|e| TrainError::invalid("kd", e.to_string()))?;
    if cfg.kd.soft_only_epochs > cfg.epochs {
        return Err(TrainError::invalid(
            "kd.soft_only_epochs",
            format!(
                "{} soft-only epochs in a run of {} (epochs)",
                cfg.kd.soft_only_epochs, cfg.epochs
            ),
        ));
    }
    if !cfg.kd.is_constant() && !cfg.method.uses_teacher() {
        return Err(TrainError::invalid(
            "kd",
            "soft_only_epochs, alpha_end and temperature_end schedule the loss against a \
             teacher; this run has none (method kd-lora or kd with `teacher`)",
        ));
    }
    // A Hub id (`org/name[@rev]`) becomes its cached (or downloaded) snapshot folder; the saved
    // config.toml records that local folder, so eval/predict of the run work offline.
    let resolved = kdlora_hub::resolve_model_in(
        &cfg.model.to_string_lossy(),
        &kdlora_hub::HubSettings::from_env(),
    )?;
    cfg.model = absolute(&resolved.path);
    let model_hub = resolved.hub;
    cfg.data = absolute(&cfg.data);
    cfg.teacher = cfg.teacher.as_deref().map(absolute);
    let cfg = cfg;
    let task = cfg.glue_task()?;
    let run = RunDir::new(&cfg.out);

    // Everything that can be checked without loading weights or data is checked before the run
    // folder is touched.
    let model_config =
        kdlora_encoders::ModelConfig::from_file(&cfg.model.join(kdlora_encoders::CONFIG_FILE))?;
    let tokenizer_path = cfg.model.join(TOKENIZER_FILE);
    let tokenizer = GlueTokenizer::from_file(&tokenizer_path)?;
    check_tokenizer_fits(
        &model_config,
        &cfg.model,
        tokenizer.inner(),
        &tokenizer_path,
        Some(cfg.max_len),
    )?;
    let tokenizer = tokenizer.with_max_len(cfg.max_len)?;
    check_teacher(&cfg, task)?;

    let resumable = resume && run.config().is_file();
    if resumable {
        let saved = RunConfig::from_toml_file(&run.config())?;
        let (a, b) = (comparable(&saved).to_toml()?, comparable(&cfg).to_toml()?);
        if a != b {
            return Err(TrainError::Config(format!(
                "{} differs from the configuration given in {}; resume with the run's own \
                 configuration (`kdlora train --out {} --resume`)",
                run.config().display(),
                differing_keys(&a, &b).join(", "),
                run.root().display()
            )));
        }
        // A finished run's checkpoints are removed (unless keep_checkpoints): without one,
        // --resume would silently train it again from scratch.
        if run.metrics_json().is_file()
            && !run.checkpoints().exists()
            && !has_entries(&run.learner_dir().join("checkpoint"))
        {
            return Err(TrainError::invalid(
                "out",
                format!(
                    "{} is a finished run (metrics.json) whose checkpoints were removed; there is \
                     nothing to resume (train into another folder, or set keep_checkpoints = true \
                     to keep them)",
                    run.root().display()
                ),
            ));
        }
    } else if !resume
        && (run.checkpoints().exists()
            || has_entries(&run.learner_dir().join("checkpoint"))
            || run.metrics_json().exists())
    {
        return Err(TrainError::invalid(
            "out",
            format!(
                "{} already holds a run; pass --resume to continue it or choose another folder",
                run.root().display()
            ),
        ));
    }
    let created_root = !run.root().exists();
    create_dir(run.root())?;
    remove_stale_temporaries(&run)?;
    // An early stop is an instruction to this invocation, not part of the run: `--resume` with
    // the saved configuration continues to `epochs`.
    let mut saved_cfg = cfg.clone();
    saved_cfg.stop_after_epochs = None;
    write_atomic(&run.config(), saved_cfg.to_toml()?.as_bytes())?;
    if !resumable {
        *fresh = Some((run.clone(), created_root));
    }

    B::seed(device, cfg.seed);
    let train_data = SplitData::load(
        &cfg.data,
        task,
        Split::Train,
        cfg.max_train_examples,
        &tokenizer,
    )?;
    let dev_data = SplitData::load(
        &cfg.data,
        task,
        Split::Dev,
        cfg.max_eval_examples,
        &tokenizer,
    )?;
    // MNLI is reported on both dev sets (the paper's MNLI-m and MNLI-mm rows); the mismatched
    // one is optional because the labelled subsets used on small machines have no such split.
    let dev_mismatched = if task.splits().contains(&Split::DevMismatched)
        && kdlora_glue::locate(&cfg.data, task, Split::DevMismatched).is_ok()
    {
        Some(SplitData::load(
            &cfg.data,
            task,
            Split::DevMismatched,
            cfg.max_eval_examples,
            &tokenizer,
        )?)
    } else {
        None
    };
    let majority_baseline =
        majority_baseline(task, &train_data, &dev_data, dev_mismatched.as_ref());
    tracing::info!(
        task = task.name(),
        train = train_data.len(),
        dev = dev_data.len(),
        dev_mismatched = dev_mismatched.as_ref().map(SplitData::len),
        method = cfg.method.as_str(),
        engine = cfg.engine.as_str(),
        "data loaded"
    );

    let teacher = if cfg.method.uses_teacher() {
        Some(teacher_logits::<B::InnerBackend>(
            &cfg,
            &run,
            &train_data,
            device,
            observer,
        )?)
    } else {
        None
    };

    let model = build_student::<B>(&cfg, task.num_labels(), device)?;
    let lora_params = cfg.method.uses_lora().then(|| {
        let c = kdlora_lora::count_params(&model, &cfg.lora);
        LoraParams {
            adapter: c.adapter,
            head: c.head,
        }
    });
    let ctx = RunContext {
        batcher: GlueBatcher::from_tokenizer(&tokenizer),
        cfg,
        model_hub,
        task,
        run,
        train_data,
        dev_data,
        dev_mismatched,
        majority_baseline,
        lora_params,
    };
    Ok((ctx, teacher, model))
}

/// Trains a run described by `cfg` on autodiff backend `B`, writing the run folder `cfg.out`.
///
/// `cfg.engine` picks the hand-written loop (default) or burn-train's `Learner`
/// ([`Engine`](crate::Engine)); both write the same run folder.
///
/// With `resume`, continues from the newest checkpoint in the run folder (the saved
/// `config.toml` must match `cfg` except `stop_after_epochs`, `device`, `inference_passes`,
/// `logging_steps` and `keep_checkpoints`); the result equals an uninterrupted run with the same
/// seed on CPU. A finished run whose checkpoints were removed is not resumed (an error).
pub fn train<B: AutodiffLoraOps>(
    cfg: &RunConfig,
    resume: bool,
    device: &B::Device,
    observer: &mut dyn TrainObserver,
) -> Result<RunMetrics> {
    let mut fresh = None;
    let result = (|| {
        let (ctx, teacher, model) = prepare::<B>(cfg, resume, device, observer, &mut fresh)?;
        let engine = ctx.cfg.engine;
        match engine {
            Engine::Loop => train_loop(&ctx, teacher, model, resume, device, observer),
            Engine::Learner => {
                crate::learner::train_learner(ctx, teacher, model, resume, device, observer)
            }
        }
    })();
    if result.is_err()
        && let Some((run, created_root)) = &fresh
    {
        discard_unstarted_run(run, *created_root);
    }
    result
}

/// The hand-written loop: mid-epoch checkpoints and bit-exact resume at any step.
fn train_loop<B: AutodiffLoraOps>(
    ctx: &RunContext,
    teacher: Option<TeacherLogits>,
    mut model: SequenceClassifier<B>,
    resume: bool,
    device: &B::Device,
    observer: &mut dyn TrainObserver,
) -> Result<RunMetrics> {
    let cfg = &ctx.cfg;
    let run = &ctx.run;
    let checkpoint = if resume {
        run.latest_checkpoint()?
    } else {
        None
    };
    if resume && checkpoint.is_none() {
        tracing::warn!(run = %run.root().display(), "no checkpoint to resume from; starting from scratch");
    }

    let mut state = CheckpointState {
        epochs_completed: 0,
        global_step: 0,
        batches_in_epoch: 0,
        train_seconds: 0.0,
        train_examples: 0,
        epoch_loss_sum: 0.0,
        epoch_batches: 0,
        epoch_seconds: 0.0,
        first_loss: None,
    };
    let mut records: Vec<EpochRecord> = Vec::new();
    if let Some((dir, saved)) = &checkpoint {
        tracing::info!(checkpoint = %dir.display(), step = saved.global_step, "resuming");
        model = load_checkpoint_model(dir, model, device)?;
        state = saved.clone();
        if run.metrics_jsonl().is_file() {
            records = read_jsonl(&run.metrics_jsonl())?;
            records.retain(|r| r.epoch <= state.epochs_completed);
        }
    }
    // Groups are keyed by parameter id, and loading a checkpoint restores the saved ids: group
    // only after that, so the optimizer state found in the checkpoint matches.
    let groups = param_groups::<B, _>(&model);
    let counts = log_param_groups(&groups);
    let mut optim = Optim::<B>::new(&groups, cfg.weight_decay, cfg.grad_clip);
    if let Some((dir, _)) = &checkpoint {
        optim = optim.load(dir, device)?;
    }

    let total_steps = ctx.total_steps();
    let warmup = ctx.warmup_steps();
    // A run resumed after it finished only needs its final outputs rewritten.
    let stop_epoch = ctx.stop_epoch();

    let mut divergence = DivergenceWatch::new(cfg.divergence_factor, state.first_loss);
    let mut step_log = ctx.step_log(state.global_step)?;
    observer.on_start(ctx.end_step(), state.global_step);
    let mut lr = linear_schedule(cfg.lr, state.global_step, total_steps, warmup);
    for epoch in state.epochs_completed..stop_epoch {
        let batches = ctx.epoch_batches(epoch);
        let skip = state.batches_in_epoch;
        let groups_of_epoch: Vec<&[Vec<usize>]> =
            batches[skip..].chunks(cfg.grad_accumulation).collect();
        for group in groups_of_epoch {
            let step_start = Instant::now();
            // Reseeding per step makes dropout masks a function of (seed, step) only, so a
            // resumed run draws exactly what an uninterrupted one would.
            B::seed(device, mix_seed(cfg.seed, 2, state.global_step as u64));
            lr = linear_schedule(cfg.lr, state.global_step, total_steps, warmup);
            let out = group_gradients(
                ctx,
                teacher.as_ref(),
                &model,
                group,
                device,
                state.global_step + 1,
                epoch + 1,
            )?;
            let mut step_loss = 0.0;
            for value in &out.losses {
                step_loss += value;
                state.epoch_loss_sum += value;
                state.epoch_batches += 1;
            }
            divergence.observe(
                state.global_step + 1,
                epoch + 1,
                step_loss / group.len() as f64,
            )?;
            state.first_loss = divergence.first();
            let (task_loss, kd_loss) = out.mean_parts();
            let (updated, norm) = optim.step(lr, model, out.grads);
            model = updated;
            if let Some(n) = norm
                && !n.is_finite()
            {
                return Err(TrainError::NonFiniteLoss {
                    step: state.global_step + 1,
                    epoch: epoch + 1,
                    value: n as f32,
                });
            }
            state.global_step += 1;
            state.batches_in_epoch += group.len();
            state.train_examples += out.examples;
            let secs = step_start.elapsed().as_secs_f64();
            state.train_seconds += secs;
            state.epoch_seconds += secs;
            let info = StepInfo {
                epoch: epoch + 1,
                step: state.global_step,
                total_steps,
                loss: step_loss / group.len() as f64,
                task_loss,
                kd_loss,
                lr,
                grad_norm: norm,
                examples: out.examples,
                seconds: secs,
                elapsed_seconds: state.train_seconds,
                examples_per_second: if state.train_seconds > 0.0 {
                    state.train_examples as f64 / state.train_seconds
                } else {
                    0.0
                },
            };
            observer.on_step(&info);
            step_log.step(&info, observer)?;
            let at_epoch_end = state.batches_in_epoch == batches.len();
            if cfg.checkpoint_steps > 0
                && state.global_step.is_multiple_of(cfg.checkpoint_steps)
                && !at_epoch_end
            {
                save_checkpoint(run, &model, &optim, &state, ctx.trainable_checkpoints())?;
            }
        }

        let valid = model.valid();
        let record = evaluate_epoch(
            ctx,
            &valid,
            epoch + 1,
            state.global_step,
            state.epoch_loss_sum / state.epoch_batches.max(1) as f64,
            lr,
            state.epoch_seconds,
            device,
            observer,
        )?;
        observer.on_epoch_end(record.epoch, record.score);
        // Before the epoch's checkpoint: a run killed in between redoes the epoch and rewrites it.
        if cfg.save_best && is_best(&records, &record) {
            save_best(ctx, &valid)?;
        }
        drop(valid);
        records.push(record);
        state.epochs_completed = epoch + 1;
        state.batches_in_epoch = 0;
        state.epoch_loss_sum = 0.0;
        state.epoch_batches = 0;
        state.epoch_seconds = 0.0;
        write_jsonl(&run.metrics_jsonl(), &records)?;
        save_checkpoint(run, &model, &optim, &state, ctx.trainable_checkpoints())?;
    }
    observer.on_finish();

    finish(
        ctx,
        model.valid(),
        &records,
        counts,
        Totals {
            epochs_completed: state.epochs_completed,
            train_examples: state.train_examples,
            train_seconds: state.train_seconds,
        },
        device,
        observer,
    )
}

/// Logs the parameter groups and returns the counts.
pub(crate) fn log_param_groups(groups: &crate::optim::ParamGroups) -> ParamCounts {
    let counts = groups.counts.unwrap_or(ParamCounts {
        trainable: 0,
        total: 0,
    });
    tracing::info!(
        trainable = counts.trainable,
        total = counts.total,
        decay_tensors = groups.decay.len(),
        no_decay_tensors = groups.no_decay.len(),
        "parameters"
    );
    counts
}

/// Dev evaluation at the end of an epoch, as one `metrics.jsonl` record (`epoch` 1-based).
#[allow(clippy::too_many_arguments)]
pub(crate) fn evaluate_epoch<B: LoraOps>(
    ctx: &RunContext,
    valid: &SequenceClassifier<B>,
    epoch: usize,
    step: usize,
    train_loss: f64,
    lr: f64,
    train_seconds: f64,
    device: &B::Device,
    observer: &mut dyn TrainObserver,
) -> Result<EpochRecord> {
    let eval_start = Instant::now();
    let matched = ctx.dev_data.len();
    let total = matched + ctx.dev_mismatched.as_ref().map_or(0, SplitData::len);
    observer.on_phase_start(&format!("evaluating epoch {epoch}"), total);
    let metrics = evaluate_model_with(
        valid,
        &ctx.dev_data,
        &ctx.batcher,
        ctx.cfg.eval_batch_size,
        device,
        &mut |done| observer.on_phase_progress(done),
    )?;
    let mismatched = match &ctx.dev_mismatched {
        Some(data) => Some(evaluate_model_with(
            valid,
            data,
            &ctx.batcher,
            ctx.cfg.eval_batch_size,
            device,
            &mut |done| observer.on_phase_progress(matched + done),
        )?),
        None => None,
    };
    observer.on_phase_end();
    let record = EpochRecord {
        epoch,
        step,
        train_loss,
        lr,
        score: metrics.score,
        score_mismatched: mismatched.as_ref().map(|m| m.score),
        dev: serde_json::to_value(&metrics).unwrap_or_default(),
        dev_mismatched: mismatched
            .as_ref()
            .map(|m| serde_json::to_value(m).unwrap_or_default()),
        train_seconds,
        eval_seconds: eval_start.elapsed().as_secs_f64(),
    };
    // Rounded for the log only; metrics.jsonl keeps full precision.
    tracing::info!(
        epoch = record.epoch,
        train_loss = rounded(record.train_loss, 4),
        score = rounded(record.score, 2),
        score_mismatched = record.score_mismatched.map(|s| rounded(s, 2)),
        "epoch evaluated"
    );
    Ok(record)
}

fn rounded(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

/// The final outputs of a run, for both engines: `adapter/` or `model/`, the inference timing and
/// `metrics.json` (written only when all `epochs` are done).
pub(crate) fn finish<B: LoraOps>(
    ctx: &RunContext,
    mut valid: SequenceClassifier<B>,
    records: &[EpochRecord],
    counts: ParamCounts,
    totals: Totals,
    device: &B::Device,
    observer: &mut dyn TrainObserver,
) -> Result<RunMetrics> {
    let cfg = &ctx.cfg;
    let run = &ctx.run;
    if totals.epochs_completed < cfg.epochs {
        tracing::info!(
            epochs = totals.epochs_completed,
            "stopped early as configured; resume with --resume"
        );
    }
    let (Some(last), Some(best)) = (
        records.last().cloned(),
        records
            .iter()
            .max_by(|a, b| a.score.total_cmp(&b.score))
            .cloned(),
    ) else {
        return Err(TrainError::Config(
            "no epoch was trained (epochs or stop_after_epochs is 0)".into(),
        ));
    };

    // Before the inference timing, which would otherwise count towards it.
    let device_reserved = B::device_memory_reserved(device);

    // Final artifacts.
    let target = if cfg.method.uses_lora() {
        run.adapter()
    } else {
        run.model()
    };
    save_weights(ctx, &valid, &target)?;

    let inference = if cfg.inference_passes > 0 {
        observer.on_phase_start(
            "timing inference on dev",
            cfg.inference_passes * ctx.dev_data.len(),
        );
        kdlora_lora::merge(&mut valid);
        let timing = time_inference_with(
            &valid,
            &ctx.dev_data,
            &ctx.batcher,
            INFERENCE_BATCH_SIZE,
            cfg.inference_passes,
            device,
            &mut |done| observer.on_phase_progress(done),
        )?;
        observer.on_phase_end();
        Some(timing)
    } else {
        None
    };

    let peak = peak_rss_bytes();
    let metrics = RunMetrics {
        method: cfg.method,
        task: ctx.task.name().to_string(),
        model: cfg.model.display().to_string(),
        model_hub: ctx.model_hub.clone(),
        teacher: cfg.teacher.as_ref().map(|t| t.display().to_string()),
        device: cfg.device.clone(),
        train_examples: ctx.train_data.len(),
        dev_examples: ctx.dev_data.len(),
        dev_mismatched_examples: ctx.dev_mismatched.as_ref().map(SplitData::len),
        majority_baseline: ctx.majority_baseline.clone(),
        epochs: totals.epochs_completed,
        last,
        best,
        params: counts,
        trainable_percent: 100.0 * counts.trainable as f64 / counts.total.max(1) as f64,
        lora_params: ctx.lora_params,
        train: Throughput {
            examples: totals.train_examples,
            seconds: totals.train_seconds,
            examples_per_second: if totals.train_seconds > 0.0 {
                totals.train_examples as f64 / totals.train_seconds
            } else {
                0.0
            },
            method: "training examples processed divided by wall-clock seconds of the training \
                     steps (batching, forward, backward, optimizer), summed over epochs and \
                     resumptions; evaluation, checkpoints and teacher logits excluded"
                .into(),
        },
        memory: Memory {
            peak_rss_bytes: peak,
            peak_rss_mib: peak.map(|b| b as f64 / (1024.0 * 1024.0)),
            method: PEAK_RSS_METHOD.into(),
            device_reserved_bytes: device_reserved,
            device_reserved_mib: device_reserved.map(|b| b as f64 / (1024.0 * 1024.0)),
            device_method: device_reserved.map(|_| DEVICE_MEMORY_METHOD.to_string()),
        },
        inference,
    };
    if totals.epochs_completed == cfg.epochs {
        write_json(&run.metrics_json(), &metrics)?;
        // A finished run is not resumed: its checkpoints (each the size of the model and two
        // optimizer moments for full fine-tuning) are only kept when asked.
        if !cfg.keep_checkpoints {
            remove_dir_if_exists(&run.checkpoints())?;
            remove_dir_if_exists(&run.learner_dir().join("checkpoint"))?;
        }
    }
    remove_stale_temporaries(run)?;
    Ok(metrics)
}

/// Writes the weights of `valid` to the folder `target`, replacing it: a PEFT adapter folder for
/// LoRA runs, a Hugging Face model folder (with the tokenizer files) otherwise.
fn save_weights<B: LoraOps>(
    ctx: &RunContext,
    valid: &SequenceClassifier<B>,
    target: &Path,
) -> Result<()> {
    let cfg = &ctx.cfg;
    let staged = RunDir::temp_for(target);
    remove_dir_if_exists(&staged)?;
    if cfg.method.uses_lora() {
        let base = adapter_base(ctx);
        kdlora_lora::save_adapter(valid, &cfg.lora, &staged, &base)?;
    } else {
        valid.save_pretrained(&staged)?;
        for name in TOKENIZER_FILES {
            let src = cfg.model.join(name);
            if src.is_file() {
                std::fs::copy(&src, staged.join(name)).map_err(|e| TrainError::io(&src, e))?;
            }
        }
    }
    replace_dir(&staged, target)
}

/// The adapter's `base_model_name_or_path`: the Hub id when the base came from the Hub, else the
/// model folder relative to the run folder (`../../shared/models/x`), which stays right when the
/// run and the models move together and is the same whatever path spelling or working folder the
/// run was started (or resumed) with; an absolute path where no relative one exists.
fn adapter_base(ctx: &RunContext) -> String {
    if let Some(hub) = &ctx.model_hub {
        return hub.id.clone();
    }
    let run = absolute(ctx.run.root());
    relative_path(&ctx.cfg.model, &run)
        .unwrap_or_else(|| ctx.cfg.model.clone())
        .to_string_lossy()
        .into_owned()
}

/// `path` relative to the folder `base` (both absolute), `None` when they share no root.
fn relative_path(path: &Path, base: &Path) -> Option<PathBuf> {
    use std::path::Component;
    if !path.is_absolute() || !base.is_absolute() {
        return None;
    }
    let (a, b): (Vec<Component>, Vec<Component>) =
        (path.components().collect(), base.components().collect());
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    // Only the root in common (or a different drive): a relative path would say nothing useful.
    if common <= 1 {
        return None;
    }
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &a[common..] {
        out.push(c.as_os_str());
    }
    Some(if out.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        out
    })
}

/// Whether `record` is the best epoch so far: the highest score, the later epoch on a tie (as
/// `metrics.json`'s `best`).
pub(crate) fn is_best(earlier: &[EpochRecord], record: &EpochRecord) -> bool {
    earlier.iter().all(|r| record.score >= r.score)
}

/// `save_best`: the weights of the epoch just evaluated into `best/`.
pub(crate) fn save_best<B: LoraOps>(ctx: &RunContext, valid: &SequenceClassifier<B>) -> Result<()> {
    save_weights(ctx, valid, &ctx.run.best())?;
    tracing::debug!(best = %ctx.run.best().display(), "best epoch's weights saved");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_by_length_sorts_windows_and_keeps_the_epochs_examples() {
        let n = 250;
        // Lengths 5..=64 spread over positions.
        let lengths: Vec<usize> = (0..n).map(|p| 5 + (p * 37) % 60).collect();
        let plain = epoch_batches(n, 2, 7, 0, None);
        let grouped = epoch_batches(n, 2, 7, 0, Some(&lengths));
        let flat = |b: &[Vec<usize>]| b.iter().flatten().copied().collect::<Vec<usize>>();
        let (plain_order, grouped_order) = (flat(&plain), flat(&grouped));
        // The same examples, each once, in batches of the same sizes.
        let mut sorted = grouped_order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..n).collect::<Vec<_>>());
        assert_eq!(
            grouped.iter().map(Vec::len).collect::<Vec<_>>(),
            plain.iter().map(Vec::len).collect::<Vec<_>>()
        );
        // Each window of 50 batches holds the plain order's examples, longest first.
        let window = 2 * LENGTH_WINDOW_BATCHES;
        for (g, p) in grouped_order.chunks(window).zip(plain_order.chunks(window)) {
            let mut a = g.to_vec();
            let mut b = p.to_vec();
            a.sort_unstable();
            b.sort_unstable();
            assert_eq!(a, b);
            assert!(g.windows(2).all(|w| lengths[w[0]] >= lengths[w[1]]));
        }
        // Padding: the summed batch maxima shrink.
        let padded = |b: &[Vec<usize>]| -> usize {
            b.iter()
                .map(|batch| batch.len() * batch.iter().map(|&p| lengths[p]).max().unwrap())
                .sum()
        };
        assert!(padded(&grouped) < padded(&plain));
        // Other epochs shuffle differently.
        assert_ne!(
            flat(&epoch_batches(n, 2, 7, 1, Some(&lengths))),
            grouped_order
        );
    }

    #[test]
    fn run_progress_runs_from_the_first_step_to_the_last() {
        assert_eq!(run_progress(1, 10), 0.0);
        assert_eq!(run_progress(10, 10), 1.0);
        assert!((run_progress(4, 10) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(run_progress(1, 1), 0.0);
        assert_eq!(run_progress(12, 10), 1.0);
    }

    fn run_config(extra: &str) -> RunConfig {
        toml::from_str(&format!(
            "method = \"kd-lora\"\ntask = \"sst2\"\nmodel = \"m\"\ndata = \"d\"\nout = \"o\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn differing_keys_name_each_key_with_both_values() {
        let keys = differing_keys(
            "out = \"a\"\nlr = 0.001\n[lora]\nr = 8\n",
            "out = \"b\"\nlr = 0.001\n[lora]\nr = 16\nalpha = 2\n",
        );
        assert_eq!(
            keys,
            vec![
                "`lora.alpha` (saved (absent), given 2)",
                "`lora.r` (saved 8, given 16)",
                "`out` (saved \"a\", given \"b\")",
            ]
        );
    }

    #[test]
    fn adapter_base_paths_are_relative_to_the_run() {
        let rel = |p: &str, b: &str| relative_path(Path::new(p), Path::new(b));
        assert_eq!(
            rel("/work/shared/models/x", "/work/main/runs/a"),
            Some(PathBuf::from("../../../shared/models/x"))
        );
        assert_eq!(
            rel("/work/main/runs/a/model", "/work/main/runs/a"),
            Some(PathBuf::from("model"))
        );
        // Nothing but the root in common, or a relative input: no relative path.
        assert_eq!(rel("/opt/models/x", "/tmp/run"), None);
        assert_eq!(rel("models/x", "/tmp/run"), None);
    }

    #[test]
    fn the_best_epoch_is_the_later_one_on_a_tie() {
        let record = |epoch: usize, score: f64| EpochRecord {
            epoch,
            step: epoch,
            train_loss: 0.5,
            lr: 0.0,
            score,
            score_mismatched: None,
            dev: serde_json::Value::Null,
            dev_mismatched: None,
            train_seconds: 1.0,
            eval_seconds: 1.0,
        };
        let earlier = [record(1, 60.0), record(2, 70.0)];
        assert!(is_best(&[], &record(1, 10.0)));
        assert!(is_best(&earlier, &record(3, 70.0)));
        assert!(!is_best(&earlier, &record(3, 69.9)));
        // The same choice as metrics.json's `best`.
        let mut all = earlier.to_vec();
        all.push(record(3, 70.0));
        let best = all
            .iter()
            .max_by(|a, b| a.score.total_cmp(&b.score))
            .unwrap();
        assert_eq!(best.epoch, 3);
    }

    #[test]
    fn divergence_is_judged_against_the_first_loss() {
        let mut watch = DivergenceWatch::new(100.0, None);
        assert!(watch.observe(1, 1, 0.7).is_ok());
        assert!(watch.observe(2, 1, 50.0).is_ok());
        match watch.observe(3, 1, 6e6) {
            Err(TrainError::Diverged {
                step: 3,
                epoch: 1,
                first,
                ..
            }) => assert_eq!(first, 0.7),
            other => panic!("expected Diverged, got {other:?}"),
        }
        assert_eq!(watch.first(), Some(0.7));
        // A resumed run compares with the first loss of the run, not of the invocation.
        let mut resumed = DivergenceWatch::new(100.0, Some(0.7));
        assert!(resumed.observe(40, 2, 100.0).is_err());
        // A near-zero first loss does not make ordinary noise a divergence.
        let mut tiny = DivergenceWatch::new(100.0, None);
        assert!(tiny.observe(1, 1, 1e-6).is_ok());
        assert!(tiny.observe(2, 1, 0.5).is_ok());
        // 0 disables the check.
        let mut off = DivergenceWatch::new(0.0, None);
        assert!(off.observe(1, 1, 0.7).is_ok());
        assert!(off.observe(2, 1, 1e9).is_ok());
    }

    #[test]
    fn stale_temporaries_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        for d in [".adapter.tmp-4242", ".model.old-17", "adapter", ".git"] {
            create_dir(&dir.path().join(d)).unwrap();
        }
        create_dir(&run.checkpoints().join(".step-00000008.tmp-4242")).unwrap();
        create_dir(&run.checkpoints().join("step-00000004")).unwrap();
        std::fs::write(dir.path().join(".metrics.json.tmp-1-0"), b"{").unwrap();
        std::fs::write(dir.path().join(".notes.tmp-draft"), b"mine").unwrap();
        remove_stale_temporaries(&run).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![".git", ".notes.tmp-draft", "adapter", "checkpoints"]
        );
        assert!(run.checkpoints().join("step-00000004").is_dir());
        assert!(!run.checkpoints().join(".step-00000008.tmp-4242").exists());
    }

    #[test]
    fn a_failed_fresh_run_leaves_no_config_behind() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let run = RunDir::new(&out);
        create_dir(&out).unwrap();
        std::fs::write(run.config(), b"method = \"fft\"\n").unwrap();
        discard_unstarted_run(&run, true);
        assert!(!out.exists());
        // A run with a checkpoint keeps everything: it can be resumed.
        create_dir(&run.checkpoints().join("step-00000001")).unwrap();
        std::fs::write(run.config(), b"method = \"fft\"\n").unwrap();
        discard_unstarted_run(&run, true);
        assert!(run.config().is_file());
        // A folder that was there before stays, without the config.
        let kept = RunDir::new(dir.path().join("kept"));
        create_dir(kept.root()).unwrap();
        std::fs::write(kept.config(), b"").unwrap();
        discard_unstarted_run(&kept, false);
        assert!(kept.root().is_dir() && !kept.config().exists());
    }

    #[test]
    fn teacher_must_be_a_finished_run_of_the_same_task() {
        let dir = tempfile::tempdir().unwrap();
        let teacher = dir.path().join("teacher");
        create_dir(&teacher.join("model")).unwrap();
        std::fs::write(
            teacher.join("config.toml"),
            "method = \"fft\"\ntask = \"rte\"\nmodel = \"m\"\ndata = \"d\"\nout = \"o\"\n",
        )
        .unwrap();
        let cfg = run_config(&format!("teacher = {:?}", teacher.to_string_lossy()));
        let err = check_teacher(&cfg, GlueTask::Sst2).unwrap_err().to_string();
        assert!(err.contains("`teacher`") && err.contains("rte"), "{err}");
        assert!(check_teacher(&cfg, GlueTask::Rte).is_ok());

        std::fs::remove_dir(teacher.join("model")).unwrap();
        let err = check_teacher(&cfg, GlueTask::Rte).unwrap_err().to_string();
        assert!(
            err.contains("did not finish") && err.contains("--resume"),
            "{err}"
        );

        // A model folder, a Hub id or a typo: only with the opt-in, and never looked up first.
        let cfg = run_config("teacher = \"runs/nope\"");
        let err = check_teacher(&cfg, GlueTask::Sst2).unwrap_err().to_string();
        assert!(err.contains("allow_model_teacher = true"), "{err}");
        let cfg = run_config("teacher = \"runs/nope\"\nallow_model_teacher = true");
        assert!(check_teacher(&cfg, GlueTask::Sst2).is_ok());
    }
}
