//! The run folder: its layout, atomic writes, per-epoch metrics and checkpoint bookkeeping.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Names of the files and folders inside a run folder.
#[derive(Clone, Debug)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// A run folder at `root` (not created).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `config.toml`: the complete [`RunConfig`](crate::RunConfig).
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    /// `metrics.jsonl`: one [`EpochRecord`] per line.
    pub fn metrics_jsonl(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    /// `train_log.jsonl`: one [`StepRecord`](kdlora_schema::StepRecord) per logging step.
    pub fn train_log(&self) -> PathBuf {
        self.root.join("train_log.jsonl")
    }

    /// `best/` (with `save_best`): the best epoch's adapter folder (LoRA runs) or model folder.
    pub fn best(&self) -> PathBuf {
        self.root.join("best")
    }

    /// `metrics.json`: the final [`RunMetrics`](crate::RunMetrics).
    pub fn metrics_json(&self) -> PathBuf {
        self.root.join("metrics.json")
    }

    /// `model/`: Hugging Face checkpoint folder of full fine-tuning runs.
    pub fn model(&self) -> PathBuf {
        self.root.join("model")
    }

    /// `adapter/`: PEFT adapter folder of LoRA runs.
    pub fn adapter(&self) -> PathBuf {
        self.root.join("adapter")
    }

    /// `teacher_logits.safetensors`: the teacher-logit store of distillation runs.
    pub fn teacher_logits(&self) -> PathBuf {
        self.root.join("teacher_logits.safetensors")
    }

    /// `checkpoints/`.
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// `learner/`: burn-train's folder of `engine = "learner"` runs (`checkpoint/` with the
    /// epoch-boundary checkpoints `{model,optim,scheduler}-EPOCH.bin`, and its metric logs
    /// `{train,valid}/epoch-N/*.log`).
    pub fn learner_dir(&self) -> PathBuf {
        self.root.join("learner")
    }

    /// The newest complete checkpoint (by global step), if any.
    pub fn latest_checkpoint(&self) -> Result<Option<(PathBuf, CheckpointState)>> {
        let dir = self.checkpoints();
        if !dir.is_dir() {
            return Ok(None);
        }
        let mut best: Option<(PathBuf, CheckpointState)> = None;
        for entry in fs::read_dir(&dir).map_err(|e| TrainError::io(&dir, e))? {
            let entry = entry.map_err(|e| TrainError::io(&dir, e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            // Temporary folders of an interrupted write are never used.
            if !name.starts_with("step-") || !path.is_dir() {
                continue;
            }
            let state_path = path.join("state.json");
            if !state_path.is_file() {
                continue;
            }
            let state = read_json::<CheckpointState>(&state_path)?;
            if best
                .as_ref()
                .is_none_or(|(_, b)| state.global_step > b.global_step)
            {
                best = Some((path, state));
            }
        }
        Ok(best)
    }

    /// Path of a temporary sibling used while writing `target` atomically.
    pub fn temp_for(target: &Path) -> PathBuf {
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        target.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
    }
}

/// Training position and accumulated measurements stored with each checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CheckpointState {
    /// Epochs fully completed (and evaluated).
    pub epochs_completed: usize,
    /// Optimizer steps taken so far.
    pub global_step: usize,
    /// Micro-batches of the current (incomplete) epoch already consumed; 0 at epoch boundaries.
    pub batches_in_epoch: usize,
    /// Training wall-clock seconds accumulated so far.
    pub train_seconds: f64,
    /// Training examples processed so far.
    pub train_examples: usize,
    /// Sum of the micro-batch losses of the current epoch so far.
    pub epoch_loss_sum: f64,
    /// Micro-batches of the current epoch so far (for the epoch's mean loss).
    pub epoch_batches: usize,
    /// Training seconds of the current epoch so far.
    pub epoch_seconds: f64,
    /// The run's first step loss, the reference of the divergence warning (absent in checkpoints
    /// written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_loss: Option<f64>,
}

/// Writes `bytes` to `path` with [`kdlora_schema::write_atomic`] (temporary file in the same
/// folder, then rename; symlinks followed).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    kdlora_schema::write_atomic(path, bytes).map_err(|e| TrainError::io(path, e))
}

/// Serialises `value` as pretty JSON into `path` atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| TrainError::BadFile {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Reads a JSON file.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::BadFile {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Writes JSON lines atomically (the whole file is replaced, so a crash never leaves half a line).
pub fn write_jsonl<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut text = String::new();
    for row in rows {
        let line = serde_json::to_string(row).map_err(|e| TrainError::BadFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        text.push_str(&line);
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}

/// Reads JSON lines; an unparsable line is an error naming its number.
pub fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    let text = fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| TrainError::BadFile {
                path: path.to_path_buf(),
                message: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

/// Replaces folder `target` by the folder `staged` (already complete), as atomically as the file
/// system allows: the old folder is moved aside first and deleted only after the rename.
pub fn replace_dir(staged: &Path, target: &Path) -> Result<()> {
    let old = target.with_file_name(format!(
        ".{}.old-{}",
        target
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        std::process::id()
    ));
    if target.exists() {
        fs::rename(target, &old).map_err(|e| TrainError::io(target, e))?;
    }
    fs::rename(staged, target).map_err(|e| TrainError::io(target, e))?;
    if old.exists() {
        fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
    }
    Ok(())
}

/// Creates a folder and its parents.
pub fn create_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|e| TrainError::io(path, e))
}

/// Removes a folder if it exists.
pub fn remove_dir_if_exists(path: &Path) -> Result<()> {
    if path.exists() {
        fs::remove_dir_all(path).map_err(|e| TrainError::io(path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_json_roundtrip_and_no_temp_left() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        write_json(&p, &serde_json::json!({"a": 1})).unwrap();
        let v: serde_json::Value = read_json(&p).unwrap();
        assert_eq!(v["a"], 1);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn jsonl_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.jsonl");
        fs::write(&p, "{\"a\":1}\nnot json\n").unwrap();
        let err = read_jsonl::<serde_json::Value>(&p).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn latest_checkpoint_ignores_temporary_folders() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let state = |step| CheckpointState {
            epochs_completed: 1,
            global_step: step,
            batches_in_epoch: 0,
            train_seconds: 1.0,
            train_examples: 10,
            epoch_loss_sum: 0.0,
            epoch_batches: 0,
            epoch_seconds: 0.0,
            first_loss: None,
        };
        for (name, step) in [("step-00000004", 4), ("step-00000009", 9)] {
            let d = run.checkpoints().join(name);
            create_dir(&d).unwrap();
            write_json(&d.join("state.json"), &state(step)).unwrap();
        }
        let tmp = run.checkpoints().join(".step-00000012.tmp-1");
        create_dir(&tmp).unwrap();
        write_json(&tmp.join("state.json"), &state(12)).unwrap();
        let (path, s) = run.latest_checkpoint().unwrap().unwrap();
        assert_eq!(s.global_step, 9);
        assert!(path.ends_with("step-00000009"));
    }
}
