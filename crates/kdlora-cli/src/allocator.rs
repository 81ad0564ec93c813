//! mimalloc's purge delay, paced by the training step.
//!
//! Training frees and reallocates its activations (tens of MiB each) every step. mimalloc returns
//! freed memory to the kernel after its purge delay (default 10 ms); when that is shorter than a
//! step, the next step faults the same pages back in and the kernel zeroes them again (with
//! transparent huge pages, 2 MiB at a time): ~5,000 page faults and 10-20 % of a CPU step in `perf`.
//! Never purging is fastest but keeps what variable-length batches fragment (up to 40 % more peak
//! memory on real runs). So the delay follows the step time: 1.5x a moving average of the step,
//! between [`MIN_DELAY_MS`] and [`MAX_DELAY_MS`]. Freed memory then lives just long enough for the
//! next step to reuse it. Measurements: `docs/results/bench/README.md`.

use std::ffi::c_long;
use std::time::{Duration, Instant};

use kdlora_train::{StepInfo, StepRecord, TrainObserver};

/// `mi_option_purge_delay` in mimalloc.h (v2 and v3): milliseconds before freed memory is returned
/// to the kernel (-1: never). mimalloc reads it whenever it schedules a purge, so it can change
/// while the process runs.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The delay before any step was timed, and the floor: SST-2 runs of the cpu preset (steps of
/// 0.1-0.5 s) were as fast at 100 ms as at 1 s, with 10-15 % less peak memory.
pub const MIN_DELAY_MS: i64 = 100;

/// The ceiling: a step longer than this is dominated by its compute, not by page faults.
pub const MAX_DELAY_MS: i64 = 10_000;

/// Sets the purge delay from the environment's `MIMALLOC_PURGE_DELAY` when present (mimalloc
/// read it at start-up; the pacer then leaves it alone), else to [`MIN_DELAY_MS`].
pub fn init() {
    if !env_fixed() {
        set_delay(MIN_DELAY_MS);
    }
}

fn env_fixed() -> bool {
    std::env::var_os("MIMALLOC_PURGE_DELAY").is_some()
}

fn set_delay(ms: i64) {
    // SAFETY: stores a process-wide integer option; mimalloc reads it atomically.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms as c_long) };
}

/// The delay for a moving-average step of `step_s` seconds.
pub fn delay_for_step(step_s: f64) -> i64 {
    ((1.5 * step_s * 1000.0).round() as i64).clamp(MIN_DELAY_MS, MAX_DELAY_MS)
}

/// Tracks step times and keeps the purge delay at [`delay_for_step`] of their moving average.
#[derive(Debug)]
pub struct PurgePacer {
    average_s: Option<f64>,
    applied_ms: i64,
    fixed: bool,
}

impl Default for PurgePacer {
    fn default() -> Self {
        Self::new()
    }
}

impl PurgePacer {
    /// A pacer starting from [`MIN_DELAY_MS`]; inert when `MIMALLOC_PURGE_DELAY` is set.
    pub fn new() -> Self {
        Self::with_fixed(env_fixed())
    }

    /// A pacer starting from [`MIN_DELAY_MS`] that changes nothing when `fixed`.
    fn with_fixed(fixed: bool) -> Self {
        Self {
            average_s: None,
            applied_ms: MIN_DELAY_MS,
            fixed,
        }
    }

    /// Records one step's wall time and updates the delay when it moved by more than a tenth (or
    /// reached a bound).
    pub fn observe(&mut self, step: Duration) {
        let s = step.as_secs_f64();
        let average = match self.average_s {
            Some(a) => 0.7 * a + 0.3 * s,
            None => s,
        };
        self.average_s = Some(average);
        let ms = delay_for_step(average);
        let moved = (ms - self.applied_ms).abs() * 10 > self.applied_ms;
        let at_bound = ms != self.applied_ms && (ms == MIN_DELAY_MS || ms == MAX_DELAY_MS);
        if !self.fixed && (moved || at_bound) {
            set_delay(ms);
            self.applied_ms = ms;
        }
    }

    /// The delay in effect, in milliseconds (as mimalloc reports it: also right when
    /// `MIMALLOC_PURGE_DELAY` fixed it).
    pub fn delay_ms(&self) -> c_long {
        // SAFETY: reads a process-wide integer option.
        unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
    }
}

/// A [`TrainObserver`] that paces the purge delay by the time between optimizer steps, then
/// forwards every event to `inner`. Phases (teacher logits, evaluation) restart the clock so they
/// do not count as steps.
pub struct PacedObserver<O> {
    inner: O,
    pacer: PurgePacer,
    last: Option<Instant>,
}

impl<O: TrainObserver> PacedObserver<O> {
    /// Wraps `inner`.
    pub fn new(inner: O) -> Self {
        Self {
            inner,
            pacer: PurgePacer::new(),
            last: None,
        }
    }
}

impl<O: TrainObserver> TrainObserver for PacedObserver<O> {
    fn on_start(&mut self, end_step: usize, start_step: usize) {
        self.last = Some(Instant::now());
        self.inner.on_start(end_step, start_step);
    }

    fn on_step(&mut self, info: &StepInfo) {
        let now = Instant::now();
        if let Some(last) = self.last {
            self.pacer.observe(now - last);
        }
        self.last = Some(now);
        self.inner.on_step(info);
    }

    fn on_log(&mut self, record: &StepRecord) {
        self.inner.on_log(record);
    }

    fn on_phase_start(&mut self, name: &str, total: usize) {
        self.last = None;
        self.inner.on_phase_start(name, total);
    }

    fn on_phase_progress(&mut self, done: usize) {
        self.inner.on_phase_progress(done);
    }

    fn on_phase_end(&mut self) {
        self.last = None;
        self.inner.on_phase_end();
    }

    fn on_epoch_end(&mut self, epoch: usize, score: f64) {
        self.last = None;
        self.inner.on_epoch_end(epoch, score);
    }

    fn on_finish(&mut self) {
        self.inner.on_finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_is_one_and_a_half_steps_within_bounds() {
        assert_eq!(delay_for_step(0.01), MIN_DELAY_MS);
        assert_eq!(delay_for_step(0.8), 1200);
        assert_eq!(delay_for_step(60.0), MAX_DELAY_MS);
    }

    #[test]
    fn the_pacer_follows_a_moving_average_and_ignores_small_moves() {
        let mut pacer = PurgePacer::with_fixed(false);
        pacer.observe(Duration::from_millis(1000));
        assert_eq!(pacer.applied_ms, 1500);
        // Average 0.7 * 1.0 + 0.3 * 1.05 = 1.015 s: 1523 ms is within a tenth of 1500, kept.
        pacer.observe(Duration::from_millis(1050));
        assert_eq!(pacer.applied_ms, 1500);
        // A run of short steps pulls it down to the floor.
        for _ in 0..20 {
            pacer.observe(Duration::from_millis(10));
        }
        assert_eq!(pacer.applied_ms, MIN_DELAY_MS);
    }

    #[test]
    fn a_fixed_environment_setting_is_left_alone() {
        let mut pacer = PurgePacer::with_fixed(true);
        pacer.observe(Duration::from_secs(2));
        assert_eq!(pacer.applied_ms, MIN_DELAY_MS);
    }
}
