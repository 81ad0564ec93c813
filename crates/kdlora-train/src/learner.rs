//! `engine = "learner"`: the recipes on burn-train 0.21's `Learner` (`SupervisedTraining`)
//! instead of the hand-written loop of `runner.rs`.
//!
//! Everything numeric is shared with the loop, so both engines run the same operations in the
//! same order: model building, data and teacher logits ([`prepare`](crate::runner)), the loss and
//! gradient accumulation of one optimizer step ([`group_gradients`]), the grouped AdamW with
//! global clipping ([`GroupedAdamW`]), the linear schedule ([`linear_schedule`]), the per-step
//! dropout seed, the epoch evaluation ([`evaluate_epoch`]) and the final outputs ([`finish`]).
//! What burn-train drives: the epoch loop, the scheduler and optimizer calls, the epoch-boundary
//! checkpoints (`RUN/learner/checkpoint/{model,optim,scheduler}-EPOCH.bin`) and resuming from them.
//!
//! How the pieces map onto burn-train 0.21 (see `crates/kdlora-train/README.md`, "Engines"):
//! - one train-loader item is one optimizer step: the positions of its micro-batches
//!   (burn-train's own `grads_accumulation` sums without `1/n`, steps the scheduler per
//!   micro-batch and drops a trailing partial group, so it is not used);
//! - one valid-loader item is the whole dev evaluation of an epoch (GLUE metrics such as MCC and
//!   F1 are not means over batches, which is all burn-train's metric store aggregates);
//! - burn-train's file metric logger with the step loss, the learning rate and the dev score
//!   ([`ScalarMetric`]) under `RUN/learner/{train,valid}/epoch-N/`, a [`QuietRenderer`] (the
//!   default CLI renderer prints every item to stdout; its TUI needs burn's `tui` feature, which
//!   kdlora does not build) and no application logger (the default installs a global tracing
//!   subscriber and panic hook);
//! - a NaN/infinite loss or gradient norm stores [`TrainError::NonFiniteLoss`] and stops the
//!   run through burn-train's `Interrupter`, before that epoch's evaluation and checkpoint.

use std::any::Any;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::lr_scheduler::LrScheduler;
use burn::module::Module;
use burn::optim::{GradientsParams, MultiGradientsParams, Optimizer};
use burn::record::{BinFileRecorder, FileRecorder, FullPrecisionSettings};
use burn::tensor::backend::Backend;
use burn::train::checkpoint::KeepLastNCheckpoints;
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    Adaptor, LearningRateMetric, Metric, MetricAttributes, MetricDefinition, MetricMetadata,
    MetricName, Numeric, NumericAttributes, NumericEntry, SerializedEntry,
};
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};
use burn::train::{
    InferenceStep, Interrupter, ItemLazy, Learner, LearnerSummary, LearningComponentsMarker,
    SupervisedTraining, TrainOutput, TrainStep,
};
use kdlora_distill::TeacherLogits;
use kdlora_encoders::SequenceClassifier;
use kdlora_lora::{AutodiffLoraOps, LoraOps};

use crate::error::{Result, TrainError};
use crate::optim::{GroupedAdamW, GroupedRecord, linear_schedule, param_groups};
use crate::progress::{StepInfo, StepRecord, TrainObserver};
use crate::record::load_record;
use crate::run_dir::{read_jsonl, write_jsonl};
use crate::runner::{
    EpochRecord, RunContext, RunMetrics, Totals, evaluate_epoch, finish, group_gradients, is_best,
    log_param_groups, mix_seed, save_best,
};
use crate::step_log::StepLog;

/// Checkpoints kept in `RUN/learner/checkpoint/`: burn-train writes the three files of an epoch
/// on three threads, in place and independently, so keeping two epochs leaves one complete set
/// whatever moment a crash hits.
const KEEP_CHECKPOINTS: usize = 2;

/// Stack of the training thread (deep encoders' backward passes on the CPU).
const TRAIN_THREAD_STACK: usize = 64 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// State shared by the model wrapper, the optimizer wrapper and the loaders
// ---------------------------------------------------------------------------------------------

/// Training position and measurements, updated from the training thread.
struct EngineState {
    epochs_completed: usize,
    global_step: usize,
    train_examples: usize,
    train_seconds: f64,
    epoch_loss_sum: f64,
    epoch_batches: usize,
    epoch_seconds: f64,
    /// Learning rate of the last optimizer step.
    lr: f64,
    /// What the train step hands to the optimizer step that follows it.
    pending: Option<Pending>,
    records: Vec<EpochRecord>,
    /// The divergence check (a resumed learner run takes its first loss afresh: its
    /// checkpoints are burn-train's and do not carry it).
    divergence: crate::runner::DivergenceWatch,
}

struct Pending {
    start: Instant,
    step: usize,
    epoch: usize,
    losses: Vec<f64>,
    parts: (Option<f64>, Option<f64>),
    examples: usize,
}

enum Event {
    Step(StepInfo),
    PhaseStart(String, usize),
    PhaseProgress(usize),
    PhaseEnd,
    Log(StepRecord),
    EpochEnd(usize, f64),
    Done,
}

/// Forwards the events of the training thread (the dev evaluation's phase, the logged steps) to
/// the calling thread, whose observer draws them.
struct Forwarder<'a>(&'a Shared);

impl TrainObserver for Forwarder<'_> {
    fn on_log(&mut self, record: &StepRecord) {
        self.0.send(Event::Log(record.clone()));
    }

    fn on_phase_start(&mut self, name: &str, total: usize) {
        self.0.send(Event::PhaseStart(name.to_string(), total));
    }

    fn on_phase_progress(&mut self, done: usize) {
        self.0.send(Event::PhaseProgress(done));
    }

    fn on_phase_end(&mut self) {
        self.0.send(Event::PhaseEnd);
    }
}

/// Everything the burn-train components share (they must be `'static`, `Send` and `Sync`).
struct Shared {
    ctx: RunContext,
    teacher: Option<TeacherLogits>,
    interrupter: Interrupter,
    error: Mutex<Option<TrainError>>,
    state: Mutex<EngineState>,
    events: Mutex<Sender<Event>>,
    /// `train_log.jsonl`, written on the training thread right after each step, so that a line
    /// is on disk before burn-train's next checkpoint.
    step_log: Mutex<StepLog>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("out", &self.ctx.cfg.out)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, EngineState> {
        lock(&self.state)
    }

    /// Records the first error and asks burn-train to stop after the current item.
    fn fail(&self, error: TrainError) {
        let mut slot = lock(&self.error);
        if slot.is_none() {
            self.interrupter.stop(Some(&error.to_string()));
            *slot = Some(error);
        }
    }

    /// Whether the run is stopping (our error, or burn-train's checkpointer failed).
    fn stopping(&self) -> bool {
        self.interrupter.should_stop()
    }

    fn send(&self, event: Event) {
        // The receiver is gone only when the calling thread already gave up; nothing to do.
        let _ = lock(&self.events).send(event);
    }
}

// ---------------------------------------------------------------------------------------------
// The model wrapper: TrainStep and InferenceStep
// ---------------------------------------------------------------------------------------------

/// The student as burn-train's model: the orphan rule forbids implementing `TrainStep` for
/// `SequenceClassifier` here, so it is wrapped. Its record is the classifier's.
#[derive(Module, Debug)]
pub(crate) struct StudentStep<B: LoraOps> {
    model: SequenceClassifier<B>,
    #[module(skip)]
    shared: Arc<Shared>,
}

/// One optimizer step: the positions (into the training split) of its micro-batches.
pub(crate) struct StepBatch<B: Backend> {
    /// Global optimizer step, 0-based.
    step: usize,
    /// Epoch, 1-based.
    epoch: usize,
    group: Vec<Vec<usize>>,
    device: B::Device,
}

/// The output of a train step: everything is recorded in [`Shared`]; burn-train's metric logger
/// gets the step's mean loss (weighted by its examples) through [`ScalarMetric`].
pub(crate) struct StepDone {
    loss: f64,
    examples: usize,
}

impl StepDone {
    /// A step that did nothing (the run is stopping): no weight in the epoch's mean.
    const NOTHING: StepDone = StepDone {
        loss: 0.0,
        examples: 0,
    };
}

impl ItemLazy for StepDone {
    type ItemSync = StepDone;

    fn sync(self) -> Self::ItemSync {
        self
    }
}

/// One epoch's dev evaluation.
pub(crate) struct DevPass<B: Backend> {
    device: B::Device,
}

/// The output of a dev evaluation: the task's score (x100), for burn-train's metric logger.
pub(crate) struct DevDone {
    score: Option<f64>,
}

impl ItemLazy for DevDone {
    type ItemSync = DevDone;

    fn sync(self) -> Self::ItemSync {
        self
    }
}

impl<B: AutodiffLoraOps> TrainStep for StudentStep<B> {
    type Input = StepBatch<B>;
    type Output = StepDone;

    fn step(&self, item: StepBatch<B>) -> TrainOutput<StepDone> {
        let shared = &self.shared;
        let nothing = || TrainOutput {
            grads: GradientsParams::new(),
            item: StepDone::NOTHING,
        };
        if shared.stopping() {
            return nothing();
        }
        let start = Instant::now();
        // As the loop: dropout masks are a function of (seed, step) only.
        B::seed(
            &item.device,
            mix_seed(shared.ctx.cfg.seed, 2, item.step as u64),
        );
        match group_gradients(
            &shared.ctx,
            shared.teacher.as_ref(),
            &self.model,
            &item.group,
            &item.device,
            item.step + 1,
            item.epoch,
        ) {
            Ok(out) => {
                let parts = out.mean_parts();
                let done = StepDone {
                    loss: out.losses.iter().sum::<f64>() / out.losses.len().max(1) as f64,
                    examples: out.examples,
                };
                shared.state().pending = Some(Pending {
                    start,
                    step: item.step,
                    epoch: item.epoch,
                    losses: out.losses,
                    parts,
                    examples: out.examples,
                });
                TrainOutput {
                    grads: out.grads,
                    item: done,
                }
            }
            // Empty gradients make the optimizer step that follows a no-op; burn-train then
            // sees the interrupter and ends the run before evaluation and checkpointing.
            Err(e) => {
                shared.fail(e);
                nothing()
            }
        }
    }
}

impl<B: LoraOps> InferenceStep for StudentStep<B> {
    type Input = DevPass<B>;
    type Output = DevDone;

    fn step(&self, item: DevPass<B>) -> DevDone {
        let shared = &self.shared;
        if shared.stopping() {
            return DevDone { score: None };
        }
        let mut st = shared.state();
        let result = evaluate_epoch(
            &shared.ctx,
            &self.model,
            st.epochs_completed + 1,
            st.global_step,
            st.epoch_loss_sum / st.epoch_batches.max(1) as f64,
            st.lr,
            st.epoch_seconds,
            &item.device,
            &mut Forwarder(shared),
        );
        let record = match result {
            Ok(r) => r,
            Err(e) => {
                drop(st);
                shared.fail(e);
                return DevDone { score: None };
            }
        };
        let done = DevDone {
            score: Some(record.score),
        };
        shared.send(Event::EpochEnd(record.epoch, record.score));
        // As the loop: before this epoch's checkpoint, which burn-train writes after this item.
        if shared.ctx.cfg.save_best
            && is_best(&st.records, &record)
            && let Err(e) = save_best(&shared.ctx, &self.model)
        {
            drop(st);
            shared.fail(e);
            return done;
        }
        st.epochs_completed = record.epoch;
        st.records.push(record);
        st.epoch_loss_sum = 0.0;
        st.epoch_batches = 0;
        st.epoch_seconds = 0.0;
        // Written before burn-train's checkpoint of this epoch, so a checkpoint always has its
        // record (resume requires both).
        if let Err(e) = write_jsonl(&shared.ctx.run.metrics_jsonl(), &st.records) {
            drop(st);
            shared.fail(e);
        }
        done
    }
}

// ---------------------------------------------------------------------------------------------
// Optimizer and schedule
// ---------------------------------------------------------------------------------------------

/// [`GroupedAdamW`] as burn's `Optimizer`: the loop's optimizer (two AdamW groups, global-norm
/// clipping) plus the bookkeeping after each step (timing, loss, progress events) and the check
/// of the gradient norm.
pub(crate) struct LearnerAdamW<B: AutodiffLoraOps> {
    inner: GroupedAdamW<StudentStep<B>, B>,
    shared: Arc<Shared>,
}

impl<B: AutodiffLoraOps> Clone for LearnerAdamW<B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<B: AutodiffLoraOps> Optimizer<StudentStep<B>, B> for LearnerAdamW<B> {
    type Record = GroupedRecord<StudentStep<B>, B>;

    fn step(&mut self, lr: f64, module: StudentStep<B>, grads: GradientsParams) -> StudentStep<B> {
        let shared = self.shared.clone();
        if shared.stopping() {
            return module;
        }
        let Some(pending) = shared.state().pending.take() else {
            return module;
        };
        // Parameter ids come from the model record, and burn-train loads a checkpoint's record
        // after this optimizer was built: regroup from the module itself (no tensor work).
        self.inner.set_groups(&param_groups::<B, _>(&module));
        let (module, norm) = self.inner.step(lr, module, grads);
        if let Some(n) = norm
            && !n.is_finite()
        {
            shared.fail(TrainError::NonFiniteLoss {
                step: pending.step + 1,
                epoch: pending.epoch,
                value: n as f32,
            });
            return module;
        }
        let mut st = shared.state();
        let mut step_loss = 0.0;
        for value in &pending.losses {
            step_loss += value;
            st.epoch_loss_sum += value;
            st.epoch_batches += 1;
        }
        let mean = step_loss / pending.losses.len().max(1) as f64;
        let step = st.global_step + 1;
        if let Err(diverged) = st.divergence.observe(step, pending.epoch, mean) {
            drop(st);
            shared.fail(diverged);
            return module;
        }
        st.global_step += 1;
        st.train_examples += pending.examples;
        let secs = pending.start.elapsed().as_secs_f64();
        st.train_seconds += secs;
        st.epoch_seconds += secs;
        st.lr = lr;
        let info = StepInfo {
            epoch: pending.epoch,
            step: st.global_step,
            total_steps: shared.ctx.total_steps(),
            loss: mean,
            task_loss: pending.parts.0,
            kd_loss: pending.parts.1,
            lr,
            grad_norm: norm,
            examples: pending.examples,
            seconds: secs,
            elapsed_seconds: st.train_seconds,
            examples_per_second: if st.train_seconds > 0.0 {
                st.train_examples as f64 / st.train_seconds
            } else {
                0.0
            },
        };
        drop(st);
        shared.send(Event::Step(info.clone()));
        if let Err(e) = lock(&shared.step_log).step(&info, &mut Forwarder(&shared)) {
            shared.fail(e);
        }
        module
    }

    fn step_multi(
        &mut self,
        _lr: f64,
        module: StudentStep<B>,
        _grads: MultiGradientsParams,
    ) -> StudentStep<B> {
        // Never configured: the multi-device strategy sums per-device gradients and steps the
        // scheduler per round, which is not the recipe.
        self.shared.fail(TrainError::Config(
            "engine = \"learner\" trains on a single device".into(),
        ));
        module
    }

    fn to_record(&self) -> Self::Record {
        self.inner.to_grouped_record()
    }

    fn load_record(self, record: Self::Record) -> Self {
        Self {
            inner: self.inner.load_grouped_record(record),
            shared: self.shared,
        }
    }
}

/// The loop's schedule ([`linear_schedule`]: linear warmup, then linear decay to zero) as a
/// burn-train scheduler. burn-train calls `step` before every train step, so call `k` returns the
/// learning rate of optimizer step `k`. 0.21 has no warmup-then-decay scheduler of its own
/// (`LinearLrScheduler` refuses a start at 0).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LinearWarmupDecay {
    base: f64,
    total: usize,
    warmup: usize,
    step: usize,
}

impl LinearWarmupDecay {
    /// Peak `base` learning rate, `total` steps, `warmup` of them warming up; next step `step`.
    pub(crate) fn new(base: f64, total: usize, warmup: usize, step: usize) -> Self {
        Self {
            base,
            total,
            warmup,
            step,
        }
    }
}

impl LrScheduler for LinearWarmupDecay {
    type Record<B: Backend> = usize;

    fn step(&mut self) -> f64 {
        let lr = linear_schedule(self.base, self.step, self.total, self.warmup);
        self.step += 1;
        lr
    }

    fn to_record<B: Backend>(&self) -> usize {
        self.step
    }

    fn load_record<B: Backend>(mut self, record: usize) -> Self {
        self.step = record;
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Loaders
// ---------------------------------------------------------------------------------------------

/// Train loader: one item per optimizer step, in the loop's seeded order
/// ([`RunContext::epoch_batches`]); the epoch counter is shared by all device copies and starts at the resumed
/// epoch, so a resumed run sees the same order as an uninterrupted one.
struct StepLoader<B: Backend> {
    shared: Arc<Shared>,
    next_epoch: Arc<AtomicUsize>,
    device: B::Device,
}

struct StepIter<B: Backend> {
    groups: std::vec::IntoIter<Vec<Vec<usize>>>,
    epoch: usize,
    next_step: usize,
    consumed: usize,
    total: usize,
    device: B::Device,
}

impl<B: Backend> Iterator for StepIter<B> {
    type Item = StepBatch<B>;

    fn next(&mut self) -> Option<StepBatch<B>> {
        let group = self.groups.next()?;
        self.consumed += group.iter().map(Vec::len).sum::<usize>();
        let step = self.next_step;
        self.next_step += 1;
        Some(StepBatch {
            step,
            epoch: self.epoch,
            group,
            device: self.device.clone(),
        })
    }
}

impl<B: Backend> DataLoaderIterator<StepBatch<B>> for StepIter<B> {
    fn progress(&self) -> Progress {
        Progress {
            items_processed: self.consumed,
            items_total: self.total,
        }
    }
}

impl<B: Backend> DataLoader<B, StepBatch<B>> for StepLoader<B> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<StepBatch<B>> + 'a> {
        let epoch = self.next_epoch.fetch_add(1, Ordering::SeqCst);
        let ctx = &self.shared.ctx;
        let n = ctx.train_data.len();
        let groups: Vec<Vec<Vec<usize>>> = if self.shared.stopping() {
            Vec::new()
        } else {
            ctx.epoch_batches(epoch)
                .chunks(ctx.cfg.grad_accumulation)
                .map(<[Vec<usize>]>::to_vec)
                .collect()
        };
        Box::new(StepIter::<B> {
            groups: groups.into_iter(),
            epoch: epoch + 1,
            next_step: epoch * ctx.steps_per_epoch(),
            consumed: 0,
            total: n,
            device: self.device.clone(),
        })
    }

    fn num_items(&self) -> usize {
        self.shared.ctx.train_data.len()
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, StepBatch<B>>> {
        Arc::new(Self {
            shared: self.shared.clone(),
            next_epoch: self.next_epoch.clone(),
            device: device.clone(),
        })
    }

    fn slice(&self, _start: usize, _end: usize) -> Arc<dyn DataLoader<B, StepBatch<B>>> {
        // Only burn-train's multi-device strategy slices loaders; engine=learner never sets it.
        panic!("engine = \"learner\" trains on a single device; its loader cannot be sliced")
    }
}

/// Valid loader: a single item per epoch, the whole dev evaluation.
struct DevLoader<B: Backend> {
    shared: Arc<Shared>,
    device: B::Device,
}

struct DevIter<B: Backend> {
    item: Option<DevPass<B>>,
    total: usize,
}

impl<B: Backend> Iterator for DevIter<B> {
    type Item = DevPass<B>;

    fn next(&mut self) -> Option<DevPass<B>> {
        self.item.take()
    }
}

impl<B: Backend> DataLoaderIterator<DevPass<B>> for DevIter<B> {
    fn progress(&self) -> Progress {
        Progress {
            items_processed: if self.item.is_some() { 0 } else { self.total },
            items_total: self.total,
        }
    }
}

impl<B: Backend> DataLoader<B, DevPass<B>> for DevLoader<B> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<DevPass<B>> + 'a> {
        Box::new(DevIter::<B> {
            item: Some(DevPass {
                device: self.device.clone(),
            }),
            total: self.num_items(),
        })
    }

    fn num_items(&self) -> usize {
        self.shared.ctx.dev_data.len()
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, DevPass<B>>> {
        Arc::new(Self {
            shared: self.shared.clone(),
            device: device.clone(),
        })
    }

    fn slice(&self, _start: usize, _end: usize) -> Arc<dyn DataLoader<B, DevPass<B>>> {
        panic!("engine = \"learner\" trains on a single device; its loader cannot be sliced")
    }
}

// ---------------------------------------------------------------------------------------------
// Quiet renderer and metrics
// ---------------------------------------------------------------------------------------------

/// Renders nothing: burn-train's default (non-TUI) renderer `println!`s every item, and its
/// `on_train_end` prints the summary. Progress goes to the [`TrainObserver`] instead.
pub(crate) struct QuietRenderer;

impl MetricsRendererTraining for QuietRenderer {
    fn update_train(&mut self, _state: MetricState) {}

    fn update_valid(&mut self, _state: MetricState) {}

    fn render_train(&mut self, _item: TrainingProgress, _progress: Vec<ProgressType>) {}

    fn render_valid(&mut self, _item: TrainingProgress, _progress: Vec<ProgressType>) {}

    fn on_train_end(
        &mut self,
        _summary: Option<LearnerSummary>,
    ) -> std::result::Result<(), Box<dyn core::error::Error>> {
        Ok(())
    }
}

impl MetricsRendererEvaluation for QuietRenderer {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}

    fn render_test(&mut self, _item: EvaluationProgress, _progress: Vec<ProgressType>) {}

    fn on_test_end(
        &mut self,
        _summary: Option<LearnerSummary>,
    ) -> std::result::Result<(), Box<dyn core::error::Error>> {
        Ok(())
    }
}

impl MetricsRenderer for QuietRenderer {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, _definition: MetricDefinition) {}
}

/// One number per item for burn-train's metric logger (`learner/train/epoch-N/Loss.log`,
/// `learner/valid/epoch-N/Dev score.log`): burn-train's own `LossMetric` wants the loss as a
/// tensor, and the dev score is not a mean over batches, so neither of its metrics fits.
#[derive(Clone)]
pub(crate) struct ScalarMetric {
    name: MetricName,
    higher_is_better: bool,
    state: NumericMetricState,
}

/// The input of a [`ScalarMetric`]: a value and its weight in the epoch's mean.
pub(crate) struct Scalar {
    value: f64,
    weight: usize,
}

impl ScalarMetric {
    fn new(name: &str, higher_is_better: bool) -> Self {
        Self {
            name: Arc::new(name.to_string()),
            higher_is_better,
            state: NumericMetricState::new(),
        }
    }
}

impl Metric for ScalarMetric {
    type Input = Scalar;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn update(&mut self, item: &Scalar, _metadata: &MetricMetadata) -> SerializedEntry {
        self.state.update(
            item.value,
            item.weight,
            FormatOptions::new(self.name()).precision(4),
        )
    }

    fn clear(&mut self) {
        self.state.reset();
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: self.higher_is_better,
        }
        .into()
    }
}

impl Numeric for ScalarMetric {
    fn value(&self) -> NumericEntry {
        self.state.current_value()
    }

    fn running_value(&self) -> NumericEntry {
        self.state.running_value()
    }
}

impl Adaptor<Scalar> for StepDone {
    fn adapt(&self) -> Scalar {
        Scalar {
            value: self.loss,
            weight: self.examples,
        }
    }
}

impl Adaptor<Scalar> for DevDone {
    fn adapt(&self) -> Scalar {
        match self.score {
            Some(score) => Scalar {
                value: score,
                weight: 1,
            },
            None => Scalar {
                value: 0.0,
                weight: 0,
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The engine
// ---------------------------------------------------------------------------------------------

type Lc<B> = LearningComponentsMarker<B, LinearWarmupDecay, StudentStep<B>, LearnerAdamW<B>>;

/// The newest epoch that has all three checkpoint files and its `metrics.jsonl` record.
fn latest_complete_epoch<B: Backend>(dir: &Path, records: &[EpochRecord]) -> Option<usize> {
    let ext = <BinFileRecorder<FullPrecisionSettings> as FileRecorder<B>>::file_extension();
    records.iter().map(|r| r.epoch).rev().find(|e| {
        ["model", "optim", "scheduler"]
            .iter()
            .all(|name| dir.join(format!("{name}-{e}.{ext}")).is_file())
    })
}

/// Reads the three records of burn-train's checkpoint `epoch` with kdlora's decoder first:
/// burn-train reads them with Burn's, which panics on a damaged file or aborts the process on a
/// corrupt length.
fn check_checkpoint<B: AutodiffLoraOps>(
    dir: &Path,
    epoch: usize,
    device: &B::Device,
) -> Result<()> {
    let base = |name: &str| dir.join(format!("{name}-{epoch}"));
    load_record::<B, <StudentStep<B> as Module<B>>::Record>(&base("model"), device)?;
    load_record::<B, GroupedRecord<StudentStep<B>, B>>(&base("optim"), device)?;
    load_record::<B, usize>(&base("scheduler"), device)?;
    Ok(())
}

/// Sends [`Event::Done`] when dropped: on return and on panic, so the draining thread ends.
struct DoneOnDrop(Sender<Event>);

impl Drop for DoneOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(Event::Done);
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Trains with burn-train's `Learner`; the run folder is the loop's (plus `learner/` with
/// burn-train's checkpoints).
pub(crate) fn train_learner<B: AutodiffLoraOps>(
    ctx: RunContext,
    teacher: Option<TeacherLogits>,
    model: SequenceClassifier<B>,
    resume: bool,
    device: &B::Device,
    observer: &mut dyn TrainObserver,
) -> Result<RunMetrics> {
    let dir = ctx.run.learner_dir();
    let checkpoint_dir = dir.join("checkpoint");
    let steps_per_epoch = ctx.steps_per_epoch();
    let total_steps = ctx.total_steps();
    let stop_epoch = ctx.stop_epoch();

    let mut records: Vec<EpochRecord> = Vec::new();
    let mut resume_epoch = None;
    if resume {
        if ctx.run.metrics_jsonl().is_file() {
            records = read_jsonl(&ctx.run.metrics_jsonl())?;
        }
        resume_epoch = latest_complete_epoch::<B>(&checkpoint_dir, &records);
        match resume_epoch {
            Some(e) => {
                tracing::info!(checkpoint = %checkpoint_dir.display(), epoch = e, "resuming");
            }
            None => tracing::warn!(
                run = %ctx.run.root().display(),
                "no complete epoch checkpoint to resume from; starting from scratch"
            ),
        }
    }
    if let Some(epoch) = resume_epoch {
        check_checkpoint::<B>(&checkpoint_dir, epoch, device)?;
    }
    let start_epoch = resume_epoch.unwrap_or(0);
    records.retain(|r| r.epoch <= start_epoch);

    // Counts do not depend on parameter ids; the groups are refreshed every step (ids change when
    // burn-train loads the checkpoint's record inside `launch`).
    let groups = param_groups::<B, _>(&model);
    let counts = log_param_groups(&groups);
    let optim = GroupedAdamW::new(&groups, ctx.cfg.weight_decay, ctx.cfg.grad_clip);
    let scheduler = LinearWarmupDecay::new(
        ctx.cfg.lr,
        total_steps,
        ctx.warmup_steps(),
        start_epoch * steps_per_epoch,
    );
    let state = EngineState {
        epochs_completed: start_epoch,
        global_step: start_epoch * steps_per_epoch,
        train_examples: start_epoch * ctx.train_data.len(),
        train_seconds: records.iter().map(|r| r.train_seconds).sum(),
        epoch_loss_sum: 0.0,
        epoch_batches: 0,
        epoch_seconds: 0.0,
        lr: linear_schedule(
            ctx.cfg.lr,
            start_epoch * steps_per_epoch,
            total_steps,
            ctx.warmup_steps(),
        ),
        pending: None,
        divergence: crate::runner::DivergenceWatch::new(ctx.cfg.divergence_factor, None),
        records,
    };
    let start_step = start_epoch * steps_per_epoch;
    let step_log = ctx.step_log(start_step)?;
    let end_step = ctx.end_step();
    let (tx, rx) = channel::<Event>();
    let interrupter = Interrupter::new();
    let shared = Arc::new(Shared {
        ctx,
        teacher,
        interrupter: interrupter.clone(),
        error: Mutex::new(None),
        state: Mutex::new(state),
        events: Mutex::new(tx.clone()),
        step_log: Mutex::new(step_log),
    });
    let student = StudentStep {
        model,
        shared: shared.clone(),
    };
    let optim = LearnerAdamW {
        inner: optim,
        shared: shared.clone(),
    };
    let train_loader: Arc<dyn DataLoader<B, StepBatch<B>>> = Arc::new(StepLoader::<B> {
        shared: shared.clone(),
        next_epoch: Arc::new(AtomicUsize::new(start_epoch)),
        device: device.clone(),
    });
    let dev_loader: Arc<dyn DataLoader<B::InnerBackend, DevPass<B::InnerBackend>>> =
        Arc::new(DevLoader::<B::InnerBackend> {
            shared: shared.clone(),
            device: device.clone(),
        });

    observer.on_start(end_step, start_step);
    let thread_dir = dir.clone();
    // burn-train runs on its own thread (its components must be Send) while this one forwards
    // progress to the observer, which need not be.
    let joined = std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("kdlora-learner".into())
            .stack_size(TRAIN_THREAD_STACK)
            .spawn_scoped(scope, move || {
                let _done = DoneOnDrop(tx);
                let training =
                    SupervisedTraining::<Lc<B>>::new(thread_dir, train_loader, dev_loader)
                        .num_epochs(stop_epoch)
                        .with_file_checkpointer(BinFileRecorder::<FullPrecisionSettings>::new())
                        .with_checkpointing_strategy(KeepLastNCheckpoints::new(KEEP_CHECKPOINTS))
                        .with_interrupter(interrupter)
                        .with_application_logger(None)
                        // burn-train's own file metric logger (its default) under `learner/`.
                        .metric_train_numeric(ScalarMetric::new("Loss", false))
                        .metric_train_numeric(LearningRateMetric::new())
                        .metric_valid_numeric(ScalarMetric::new("Dev score", true))
                        .renderer(QuietRenderer);
                let training = match resume_epoch {
                    Some(e) => training.checkpoint(e),
                    None => training,
                };
                training
                    .launch(Learner::new(student, optim, scheduler))
                    .model
            });
        let handle = match spawned {
            Ok(h) => h,
            Err(e) => return Err(TrainError::io(&dir, e)),
        };
        while let Ok(event) = rx.recv() {
            match event {
                Event::Step(info) => observer.on_step(&info),
                Event::Log(record) => observer.on_log(&record),
                Event::PhaseStart(name, total) => observer.on_phase_start(&name, total),
                Event::PhaseProgress(done) => observer.on_phase_progress(done),
                Event::PhaseEnd => observer.on_phase_end(),
                Event::EpochEnd(epoch, score) => observer.on_epoch_end(epoch, score),
                Event::Done => break,
            }
        }
        Ok(handle.join())
    })?;
    let trained = joined.map_err(|payload| TrainError::Checkpoint {
        path: checkpoint_dir.clone(),
        message: format!(
            "burn-train's Learner panicked: {}",
            panic_message(payload.as_ref())
        ),
    })?;
    observer.on_finish();

    if let Some(e) = lock(&shared.error).take() {
        return Err(e);
    }
    if shared.interrupter.should_stop() {
        // burn-train's checkpointer reports a failed save through the interrupter.
        return Err(TrainError::Checkpoint {
            path: checkpoint_dir,
            message: shared
                .interrupter
                .get_message()
                .unwrap_or_else(|| "training was interrupted".into()),
        });
    }
    let (records, totals) = {
        let st = shared.state();
        (
            st.records.clone(),
            Totals {
                epochs_completed: st.epochs_completed,
                train_examples: st.train_examples,
                train_seconds: st.train_seconds,
            },
        )
    };
    finish(
        &shared.ctx,
        trained.model,
        &records,
        counts,
        totals,
        device,
        observer,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    #[test]
    fn schedule_follows_linear_schedule_and_its_record_round_trips() {
        let mut s = LinearWarmupDecay::new(1.0, 10, 2, 0);
        for step in 0..10 {
            assert_eq!(s.step(), linear_schedule(1.0, step, 10, 2), "step {step}");
        }
        let mut a = LinearWarmupDecay::new(1.0, 10, 2, 0);
        for _ in 0..4 {
            a.step();
        }
        let record = a.to_record::<NdArray<f32>>();
        let mut b = LinearWarmupDecay::new(1.0, 10, 2, 0).load_record::<NdArray<f32>>(record);
        for _ in 0..6 {
            assert_eq!(a.step(), b.step());
        }
    }
}
