//! Progress reporting: the training loop calls a [`TrainObserver`]; [`BarObserver`] draws indicatif
//! progress bars (steps with loss, examples/s and ETA; one per slow phase) on stderr when it is a
//! terminal, and logs one line per logging step and per phase through `tracing` when it is not.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub use kdlora_schema::StepRecord;

/// One optimizer step, as reported to observers.
#[derive(Clone, Debug)]
pub struct StepInfo {
    /// Epoch (1-based).
    pub epoch: usize,
    /// Global optimizer step (1-based).
    pub step: usize,
    /// Total optimizer steps of the run.
    pub total_steps: usize,
    /// Mean loss of the step's micro-batches.
    pub loss: f64,
    /// With a teacher: mean loss of the step's micro-batches against the labels.
    pub task_loss: Option<f64>,
    /// With a teacher: mean loss of the step's micro-batches against the teacher.
    pub kd_loss: Option<f64>,
    /// Learning rate used for the step.
    pub lr: f64,
    /// Global gradient norm before clipping (`None` when no parameter had a gradient).
    pub grad_norm: Option<f64>,
    /// Training examples of this step.
    pub examples: usize,
    /// Wall-clock seconds of this step.
    pub seconds: f64,
    /// Training wall-clock seconds of the run so far (steps only, summed over resumptions).
    pub elapsed_seconds: f64,
    /// Training examples per second so far in the run.
    pub examples_per_second: f64,
}

/// Receives progress events from the training loop. Every method has an empty default.
pub trait TrainObserver {
    /// Training starts (or resumes) at global step `start_step`; this invocation runs until
    /// `end_step` (the end of `stop_after_epochs` when set, else of the run).
    fn on_start(&mut self, _end_step: usize, _start_step: usize) {}
    /// An optimizer step finished.
    fn on_step(&mut self, _info: &StepInfo) {}
    /// A logging step (every `logging_steps` and at each epoch's end): the line just appended to
    /// `train_log.jsonl`.
    fn on_log(&mut self, _record: &StepRecord) {}
    /// A slow phase starts (teacher logits, evaluation, inference timing) over `total` examples.
    fn on_phase_start(&mut self, _name: &str, _total: usize) {}
    /// The current phase has processed `done` of its `total` examples.
    fn on_phase_progress(&mut self, _done: usize) {}
    /// The current phase finished.
    fn on_phase_end(&mut self) {}
    /// An epoch's evaluation finished with its task score.
    fn on_epoch_end(&mut self, _epoch: usize, _score: f64) {}
    /// Training finished.
    fn on_finish(&mut self) {}
}

/// An observer that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl TrainObserver for NoProgress {}

/// Progress on stderr: bars when stderr is a terminal; otherwise (piped, under nohup, in a batch
/// job) one `tracing` line per logging step and per phase, since no bar is drawn there.
#[derive(Debug)]
pub struct BarObserver {
    terminal: bool,
    multi: MultiProgress,
    bar: Option<ProgressBar>,
    phase: Option<Phase>,
    end_step: usize,
}

#[derive(Debug)]
struct Phase {
    name: String,
    total: usize,
    started: Instant,
    bar: Option<ProgressBar>,
}

impl Default for BarObserver {
    fn default() -> Self {
        Self::new()
    }
}

impl BarObserver {
    /// A new observer; the step bar appears at [`TrainObserver::on_start`].
    pub fn new() -> Self {
        Self::with_terminal(std::io::stderr().is_terminal())
    }

    /// An observer that draws bars (`terminal`) or logs lines, whatever stderr is.
    pub fn with_terminal(terminal: bool) -> Self {
        let target = if terminal {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Self {
            terminal,
            multi: MultiProgress::with_draw_target(target),
            bar: None,
            phase: None,
            end_step: 0,
        }
    }

    /// Logs without tearing the bars.
    fn log(&self, f: impl FnOnce()) {
        self.multi.suspend(f);
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// Four decimals, or `-` when absent.
fn short(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"))
}

impl TrainObserver for BarObserver {
    fn on_start(&mut self, end_step: usize, start_step: usize) {
        self.end_step = end_step;
        if !self.terminal {
            return;
        }
        let bar = self.multi.add(ProgressBar::new(end_step as u64));
        bar.set_style(style(
            "{spinner} epoch {prefix} [{bar:30}] {pos}/{len} steps  {msg}  ETA {eta}",
        ));
        bar.set_position(start_step as u64);
        bar.reset_eta();
        self.bar = Some(bar);
    }

    fn on_step(&mut self, info: &StepInfo) {
        if let Some(bar) = &self.bar {
            bar.set_prefix(info.epoch.to_string());
            bar.set_position(info.step as u64);
            bar.set_message(format!(
                "loss {:.4}  lr {:.2e}  {:.1} ex/s",
                info.loss, info.lr, info.examples_per_second
            ));
        }
    }

    fn on_log(&mut self, r: &StepRecord) {
        // On a terminal the step bar shows the same numbers.
        if self.terminal {
            return;
        }
        let parts = match (r.task_loss, r.kd_loss) {
            (Some(t), Some(k)) => format!(" (task {t:.4}, kd {k:.4})"),
            _ => String::new(),
        };
        tracing::info!(
            "step {}/{} epoch {}: loss {:.4}{parts} lr {:.3e} grad_norm {} {:.1} ex/s {:.0} s",
            r.step,
            self.end_step,
            r.epoch,
            r.loss,
            r.lr,
            short(r.grad_norm),
            r.examples_per_second,
            r.elapsed_seconds
        );
    }

    fn on_phase_start(&mut self, name: &str, total: usize) {
        self.on_phase_end();
        let bar = if self.terminal {
            let bar = self.multi.add(ProgressBar::new(total as u64));
            bar.set_style(style(
                "{spinner} {prefix} [{bar:30}] {pos}/{len} examples  ETA {eta}",
            ));
            bar.set_prefix(name.to_string());
            Some(bar)
        } else {
            tracing::info!("{name}: {total} examples");
            None
        };
        self.phase = Some(Phase {
            name: name.to_string(),
            total,
            started: Instant::now(),
            bar,
        });
    }

    fn on_phase_progress(&mut self, done: usize) {
        if let Some(bar) = self.phase.as_ref().and_then(|p| p.bar.as_ref()) {
            bar.set_position(done as u64);
        }
    }

    fn on_phase_end(&mut self) {
        let Some(phase) = self.phase.take() else {
            return;
        };
        let seconds = phase.started.elapsed().as_secs_f64();
        match phase.bar {
            Some(bar) => {
                bar.finish_and_clear();
                self.multi.remove(&bar);
            }
            None => tracing::info!(
                "{}: {} examples done in {seconds:.1} s",
                phase.name,
                phase.total
            ),
        }
    }

    fn on_epoch_end(&mut self, epoch: usize, score: f64) {
        self.log(|| tracing::info!(epoch, score = %format_args!("{score:.2}"), "epoch finished"));
    }

    fn on_finish(&mut self) {
        self.on_phase_end();
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
    }
}
