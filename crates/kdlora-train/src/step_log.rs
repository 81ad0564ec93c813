//! `train_log.jsonl`: one [`StepRecord`] every `logging_steps` optimizer steps and at the end of
//! every epoch, for loss curves. Shared by both engines.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Result, TrainError};
use crate::progress::{StepInfo, StepRecord, TrainObserver};
use crate::run_dir::write_atomic;

/// Lines per epoch that `logging_steps = 0` aims at.
const AUTO_LINES_PER_EPOCH: usize = 25;

/// The logging interval in optimizer steps: `logging_steps`, or for 0 about
/// [`AUTO_LINES_PER_EPOCH`] lines per epoch.
pub(crate) fn logging_interval(logging_steps: usize, steps_per_epoch: usize) -> usize {
    if logging_steps > 0 {
        logging_steps
    } else {
        (steps_per_epoch / AUTO_LINES_PER_EPOCH).max(1)
    }
}

/// Sums over the steps since the last line.
#[derive(Debug, Default)]
struct Window {
    steps: usize,
    loss: f64,
    task_loss: f64,
    kd_loss: f64,
    parts: usize,
    grad_norm: f64,
    norms: usize,
    examples: usize,
    seconds: f64,
}

/// Appends the lines of `train_log.jsonl`.
#[derive(Debug)]
pub(crate) struct StepLog {
    path: PathBuf,
    file: Option<File>,
    every: usize,
    steps_per_epoch: usize,
    window: Window,
}

impl StepLog {
    /// Opens `path` for a run that continues after global step `start_step` (0: a fresh run).
    /// Lines of later steps, which an invocation killed after its last checkpoint wrote, are
    /// dropped: the resumed run writes them again, so every step appears once.
    pub(crate) fn open(
        path: &Path,
        every: usize,
        steps_per_epoch: usize,
        start_step: usize,
    ) -> Result<Self> {
        truncate_after(path, start_step)?;
        Ok(Self {
            path: path.to_path_buf(),
            file: None,
            every: every.max(1),
            steps_per_epoch: steps_per_epoch.max(1),
            window: Window::default(),
        })
    }

    /// Records a finished step; on a logging step appends its line (one write, then flushed, so a
    /// crash leaves whole lines) and hands it to `observer`.
    pub(crate) fn step(&mut self, info: &StepInfo, observer: &mut dyn TrainObserver) -> Result<()> {
        let w = &mut self.window;
        w.steps += 1;
        w.loss += info.loss;
        if let (Some(t), Some(k)) = (info.task_loss, info.kd_loss) {
            w.task_loss += t;
            w.kd_loss += k;
            w.parts += 1;
        }
        if let Some(n) = info.grad_norm {
            w.grad_norm += n;
            w.norms += 1;
        }
        w.examples += info.examples;
        w.seconds += info.seconds;
        let due =
            info.step.is_multiple_of(self.every) || info.step.is_multiple_of(self.steps_per_epoch);
        if !due {
            return Ok(());
        }
        let w = std::mem::take(&mut self.window);
        let mean = |sum: f64, n: usize| (n > 0).then(|| sum / n as f64);
        let record = StepRecord {
            step: info.step,
            epoch: info.epoch,
            loss: w.loss / w.steps as f64,
            task_loss: mean(w.task_loss, w.parts),
            kd_loss: mean(w.kd_loss, w.parts),
            lr: info.lr,
            grad_norm: mean(w.grad_norm, w.norms),
            examples_per_second: if w.seconds > 0.0 {
                w.examples as f64 / w.seconds
            } else {
                0.0
            },
            elapsed_seconds: info.elapsed_seconds,
        };
        self.append(&record)?;
        observer.on_log(&record);
        Ok(())
    }

    fn append(&mut self, record: &StepRecord) -> Result<()> {
        let path = &self.path;
        let mut line = serde_json::to_string(record).map_err(|e| TrainError::BadFile {
            path: path.clone(),
            message: e.to_string(),
        })?;
        line.push('\n');
        if self.file.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| TrainError::io(path, e))?;
            self.file = Some(file);
        }
        if let Some(file) = self.file.as_mut() {
            file.write_all(line.as_bytes())
                .and_then(|()| file.flush())
                .map_err(|e| TrainError::io(path, e))?;
        }
        Ok(())
    }
}

/// Keeps the lines of `path` up to `step` (all of them gone for 0), rewriting it atomically when
/// anything is dropped. A line that does not parse (cut by a kill) is dropped with a warning.
fn truncate_after(path: &Path, step: usize) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(TrainError::io(path, e)),
    };
    let mut kept = String::with_capacity(text.len());
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<StepRecord>(line) {
            Ok(r) if r.step <= step => {
                kept.push_str(line);
                kept.push('\n');
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(
                path = %path.display(),
                line = i + 1,
                error = %e,
                "dropping an unreadable train_log.jsonl line"
            ),
        }
    }
    if kept != text {
        write_atomic(path, kept.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;

    fn info(step: usize, loss: f64) -> StepInfo {
        StepInfo {
            epoch: 1 + (step - 1) / 10,
            step,
            total_steps: 20,
            loss,
            task_loss: Some(loss / 2.0),
            kd_loss: Some(loss * 2.0),
            lr: 0.1,
            grad_norm: Some(1.0),
            examples: 8,
            seconds: 0.5,
            elapsed_seconds: step as f64 * 0.5,
            examples_per_second: 16.0,
        }
    }

    fn steps(path: &Path) -> Vec<usize> {
        crate::run_dir::read_jsonl::<StepRecord>(path)
            .unwrap()
            .iter()
            .map(|r| r.step)
            .collect()
    }

    #[test]
    fn auto_interval_gives_a_few_dozen_lines_per_epoch() {
        assert_eq!(logging_interval(0, 1000), 40);
        assert_eq!(logging_interval(0, 3), 1);
        assert_eq!(logging_interval(7, 1000), 7);
    }

    #[test]
    fn lines_every_n_steps_and_at_epoch_ends_with_window_means() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train_log.jsonl");
        let mut log = StepLog::open(&path, 4, 10, 0).unwrap();
        for step in 1..=20 {
            log.step(&info(step, step as f64), &mut NoProgress).unwrap();
        }
        assert_eq!(steps(&path), [4, 8, 10, 12, 16, 20]);
        let rows = crate::run_dir::read_jsonl::<StepRecord>(&path).unwrap();
        // Steps 9 and 10.
        assert_eq!(rows[2].loss, 9.5);
        assert_eq!(rows[2].task_loss, Some(4.75));
        assert_eq!(rows[2].kd_loss, Some(19.0));
        assert_eq!(rows[2].epoch, 1);
        assert_eq!(rows[2].examples_per_second, 16.0);
        assert_eq!(rows[3].epoch, 2);
    }

    #[test]
    fn resuming_drops_the_lines_after_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train_log.jsonl");
        let mut log = StepLog::open(&path, 2, 10, 0).unwrap();
        for step in 1..=7 {
            log.step(&info(step, 1.0), &mut NoProgress).unwrap();
        }
        drop(log);
        // A kill in the middle of a line.
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"step\": 8, \"epo");
        std::fs::write(&path, text).unwrap();
        // Resumed from the checkpoint at step 4: steps 5.. come again, once.
        let mut log = StepLog::open(&path, 2, 10, 4).unwrap();
        assert_eq!(steps(&path), [2, 4]);
        for step in 5..=10 {
            log.step(&info(step, 1.0), &mut NoProgress).unwrap();
        }
        assert_eq!(steps(&path), [2, 4, 6, 8, 10]);
        // A fresh run starts an empty log.
        StepLog::open(&path, 2, 10, 0).unwrap();
        assert!(steps(&path).is_empty());
    }
}
