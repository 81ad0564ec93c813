//! Progress reporting: the training loop calls a [`TrainObserver`]; [`BarObserver`] draws an
//! indicatif progress bar (loss, examples/s, ETA) on stderr when it is a terminal.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

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
    /// Learning rate used for the step.
    pub lr: f64,
    /// Training examples per second so far in this epoch.
    pub examples_per_second: f64,
}

/// Receives progress events from the training loop. Every method has an empty default.
pub trait TrainObserver {
    /// Training starts (or resumes) at `start_step` of `total_steps`.
    fn on_start(&mut self, _total_steps: usize, _start_step: usize) {}
    /// An optimizer step finished.
    fn on_step(&mut self, _info: &StepInfo) {}
    /// A longer phase starts (teacher logits, evaluation, timing).
    fn on_phase(&mut self, _message: &str) {}
    /// An epoch's evaluation finished with its task score.
    fn on_epoch_end(&mut self, _epoch: usize, _score: f64) {}
    /// Training finished.
    fn on_finish(&mut self) {}
}

/// An observer that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl TrainObserver for NoProgress {}

/// Draws a progress bar on stderr (hidden when stderr is not a terminal).
#[derive(Debug, Default)]
pub struct BarObserver {
    bar: Option<ProgressBar>,
}

impl BarObserver {
    /// A new observer; the bar appears at [`TrainObserver::on_start`].
    pub fn new() -> Self {
        Self::default()
    }
}

impl TrainObserver for BarObserver {
    fn on_start(&mut self, total_steps: usize, start_step: usize) {
        let bar =
            ProgressBar::with_draw_target(Some(total_steps as u64), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{spinner} epoch {prefix} [{bar:30}] {pos}/{len} steps  {msg}  ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
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

    fn on_phase(&mut self, message: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| tracing::info!("{message}")),
            None => tracing::info!("{message}"),
        }
    }

    fn on_epoch_end(&mut self, epoch: usize, score: f64) {
        let log = || tracing::info!(epoch, score, "epoch finished");
        match &self.bar {
            Some(bar) => bar.suspend(log),
            None => log(),
        }
    }

    fn on_finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
