//! The lines of `train_log.jsonl` ([`StepRecord`]): training scalars every `logging_steps`.

use serde::{Deserialize, Serialize};

/// One line of `train_log.jsonl`, written every `logging_steps` optimizer steps and at the end
/// of every epoch. Means are over the optimizer steps since the previous line (on a resumed run,
/// the first line's window starts at the checkpoint).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StepRecord {
    /// Global optimizer step (1-based); strictly increasing through the file, resumptions included.
    pub step: usize,
    /// Epoch (1-based) the step belongs to.
    pub epoch: usize,
    /// Mean training loss (the loss that is optimised: with a teacher, the KD mix).
    pub loss: f64,
    /// With a teacher: mean loss against the labels (cross-entropy, MSE for STS-B).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_loss: Option<f64>,
    /// With a teacher: mean loss against the teacher (`T^2`-scaled KL, MSE for STS-B).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kd_loss: Option<f64>,
    /// Learning rate used for this step.
    pub lr: f64,
    /// Mean global gradient norm before clipping (absent when no parameter had a gradient).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// Training examples per second over the steps since the previous line.
    pub examples_per_second: f64,
    /// Training wall-clock seconds so far (the steps only, summed over resumptions; evaluation,
    /// checkpoints and teacher logits excluded), as `metrics.json`'s `train.seconds`.
    pub elapsed_seconds: f64,
}
