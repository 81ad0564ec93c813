//! Distillation losses on logits.
//!
//! All losses return a one-element `Tensor<B, 1>` (Burn's scalar convention) averaged over the
//! batch, so they can be added, scaled and back-propagated directly.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use crate::{DistillError, KdConfig};

/// The parts of a distillation loss. `total` is what the optimiser sees; `hard` and `soft` are
/// kept for logging.
#[derive(Debug, Clone)]
pub struct KdLoss<B: Backend> {
    /// `alpha * hard + (1 - alpha) * soft`.
    pub total: Tensor<B, 1>,
    /// Loss against the ground truth (cross-entropy, or MSE for regression).
    pub hard: Tensor<B, 1>,
    /// Loss against the teacher (`T^2`-scaled KL, or MSE to the teacher output for regression).
    pub soft: Tensor<B, 1>,
}

/// Soft distillation loss `T^2 * KL(softmax(z_T / T) || softmax(z_S / T))`, averaged over the
/// batch.
///
/// `student` and `teacher` are `[batch, classes]` logits. Both distributions are formed with
/// log-softmax (max-shifted), so logits of magnitude `1e4` give finite values and gradients.
/// The teacher is detached: no gradient flows into it. The `T^2` factor (Hinton et al., 2015)
/// keeps the gradient with respect to the student logits at a scale that does not shrink as
/// `T` grows: it is `T * (softmax(z_S/T) - softmax(z_T/T)) / batch`, which tends to
/// `(centre(z_S) - centre(z_T)) / (classes * batch)` for large `T`.
///
/// # Panics
/// When the two shapes differ (as Burn's element-wise ops do); use [`try_kd_loss`] to get an
/// error instead. `temperature` must be > 0 ([`KdConfig::validate`]).
pub fn soft_loss<B: Backend>(
    student: Tensor<B, 2>,
    teacher: Tensor<B, 2>,
    temperature: f64,
) -> Tensor<B, 1> {
    let log_p_student = log_softmax(student.div_scalar(temperature), 1);
    let log_p_teacher = log_softmax(teacher.detach().div_scalar(temperature), 1);
    // Where the teacher probability underflows to 0 the log-ratio stays finite (log-softmax of
    // finite logits is finite), so the product is an exact 0 rather than 0 * -inf = NaN.
    let p_teacher = log_p_teacher.clone().exp();
    let kl_per_example = (p_teacher * (log_p_teacher - log_p_student)).sum_dim(1);
    kl_per_example.mean().mul_scalar(temperature * temperature)
}

/// Hard loss: mean cross-entropy of `[batch, classes]` logits against class indices `[batch]`.
///
/// # Panics
/// On mismatched batch sizes. Labels must lie in `0..classes`; they are not range-checked
/// here because that would force a device-to-host copy every step (the GLUE readers validate
/// labels when loading).
pub fn hard_loss<B: Backend>(student: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let log_p = log_softmax(student, 1);
    let picked = log_p.gather(1, labels.unsqueeze_dim::<2>(1));
    picked.mean().neg()
}

/// KD-LoRA classification loss `alpha * hard_loss + (1 - alpha) * soft_loss(T)`.
///
/// `student`, `teacher`: `[batch, classes]` logits; `labels`: `[batch]` class indices.
///
/// # Panics
/// On shape mismatches; see [`try_kd_loss`] for the checked variant. `cfg` is assumed valid
/// ([`KdConfig::validate`]).
pub fn kd_loss<B: Backend>(
    student: Tensor<B, 2>,
    teacher: Tensor<B, 2>,
    labels: Tensor<B, 1, Int>,
    cfg: &KdConfig,
) -> KdLoss<B> {
    let hard = hard_loss(student.clone(), labels);
    let soft = soft_loss(student, teacher, cfg.temperature);
    mix(hard, soft, cfg.alpha)
}

/// Regression (single-output, e.g. STS-B) loss
/// `alpha * MSE(z_S, y) + (1 - alpha) * MSE(z_S, z_T)`.
///
/// KL over a single logit is identically zero (softmax of one value is 1), so the teacher
/// signal is the squared distance to the teacher's prediction instead; the temperature is not
/// used. `student`, `teacher`: `[batch, 1]`; `targets`: `[batch]`.
///
/// # Panics
/// On shape mismatches; see [`try_regression_kd_loss`] for the checked variant.
pub fn regression_kd_loss<B: Backend>(
    student: Tensor<B, 2>,
    teacher: Tensor<B, 2>,
    targets: Tensor<B, 1>,
    cfg: &KdConfig,
) -> KdLoss<B> {
    let [batch, _] = student.dims();
    let student = student.reshape([batch]);
    let teacher = teacher.detach().reshape([batch]);
    let hard = (student.clone() - targets).square().mean();
    let soft = (student - teacher).square().mean();
    mix(hard, soft, cfg.alpha)
}

/// [`kd_loss`] after validating `cfg` and all shapes, returning an error instead of panicking.
pub fn try_kd_loss<B: Backend>(
    student: Tensor<B, 2>,
    teacher: Tensor<B, 2>,
    labels: Tensor<B, 1, Int>,
    cfg: &KdConfig,
) -> Result<KdLoss<B>, DistillError> {
    cfg.validate()?;
    let s = student.dims();
    check_logits("kd_loss student logits", s)?;
    check_same("kd_loss teacher logits", &s, &teacher.dims())?;
    check_same("kd_loss labels", &[s[0]], &labels.dims())?;
    Ok(kd_loss(student, teacher, labels, cfg))
}

/// [`regression_kd_loss`] after validating `cfg` and all shapes.
pub fn try_regression_kd_loss<B: Backend>(
    student: Tensor<B, 2>,
    teacher: Tensor<B, 2>,
    targets: Tensor<B, 1>,
    cfg: &KdConfig,
) -> Result<KdLoss<B>, DistillError> {
    cfg.validate()?;
    let s = student.dims();
    check_logits("regression_kd_loss student output", s)?;
    check_same("regression_kd_loss student output", &[s[0], 1], &s)?;
    check_same("regression_kd_loss teacher output", &s, &teacher.dims())?;
    check_same("regression_kd_loss targets", &[s[0]], &targets.dims())?;
    Ok(regression_kd_loss(student, teacher, targets, cfg))
}

fn mix<B: Backend>(hard: Tensor<B, 1>, soft: Tensor<B, 1>, alpha: f64) -> KdLoss<B> {
    let total = hard.clone().mul_scalar(alpha) + soft.clone().mul_scalar(1.0 - alpha);
    KdLoss { total, hard, soft }
}

fn check_logits(context: &str, dims: [usize; 2]) -> Result<(), DistillError> {
    if dims[0] == 0 || dims[1] == 0 {
        return Err(DistillError::ShapeMismatch {
            context: context.to_string(),
            expected: "[batch >= 1, outputs >= 1]".to_string(),
            got: format!("{dims:?}"),
        });
    }
    Ok(())
}

fn check_same(context: &str, expected: &[usize], got: &[usize]) -> Result<(), DistillError> {
    if expected != got {
        return Err(DistillError::ShapeMismatch {
            context: context.to_string(),
            expected: format!("{expected:?}"),
            got: format!("{got:?}"),
        });
    }
    Ok(())
}
