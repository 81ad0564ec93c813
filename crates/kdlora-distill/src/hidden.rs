//! Optional intermediate-layer (hidden-state) distillation, beyond the KD-LoRA paper.
//!
//! The student's hidden states are pulled towards the teacher's at mapped layers with a masked
//! mean-squared error; padding positions are ignored. When the hidden sizes differ, a learned
//! linear projection maps student states into the teacher's space (as in TinyBERT); it is a
//! Burn [`Module`] and must be trained together with the student (include it in the optimised
//! module).

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::DistillError;

/// Which teacher hidden state each student hidden state is compared with.
///
/// Indices refer to the slices passed to [`HiddenStateDistillation::forward`], so the map
/// depends on whether the caller includes the embedding output. With transformer-layer outputs
/// only (no embeddings), the default `Affine { scale: 2, offset: 1 }` maps a 6-layer student
/// onto a 12-layer teacher as `i <- 2i + 1` (student layer 0 <- teacher layer 1, ...,
/// student layer 5 <- teacher layer 11, the last).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerMap {
    /// Student state `i` <- teacher state `scale * i + offset`, for every student state given.
    Affine {
        /// Multiplier of the student index (>= 1).
        scale: usize,
        /// Added to the scaled index.
        offset: usize,
    },
    /// Explicit `(student, teacher)` index pairs; unmapped student states are not distilled.
    Pairs {
        /// `(student index, teacher index)` pairs (at least one).
        pairs: Vec<(usize, usize)>,
    },
}

impl Default for LayerMap {
    fn default() -> Self {
        Self::Affine {
            scale: 2,
            offset: 1,
        }
    }
}

impl LayerMap {
    /// The `(student, teacher)` pairs for `num_student` student hidden states.
    pub fn pairs(&self, num_student: usize) -> Vec<(usize, usize)> {
        match self {
            Self::Affine { scale, offset } => {
                (0..num_student).map(|i| (i, scale * i + offset)).collect()
            }
            Self::Pairs { pairs } => pairs.clone(),
        }
    }
}

/// Settings of hidden-state distillation. Off by default (`enabled = false`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HiddenStateDistillationConfig {
    /// Whether the trainer adds the hidden-state loss at all.
    pub enabled: bool,
    /// Multiplier of the hidden-state loss when added to the KD loss (finite, >= 0).
    pub weight: f64,
    /// Student <- teacher layer correspondence.
    pub layer_map: LayerMap,
}

impl Default for HiddenStateDistillationConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            weight: 1.0,
            layer_map: LayerMap::default(),
        }
    }
}

impl HiddenStateDistillationConfig {
    /// Checks the weight and the layer map (scale >= 1, at least one explicit pair).
    pub fn validate(&self) -> Result<(), DistillError> {
        if !(self.weight.is_finite() && self.weight >= 0.0) {
            return Err(DistillError::InvalidConfig {
                key: "hidden.weight",
                value: self.weight.to_string(),
                reason: "must be finite and >= 0",
            });
        }
        match &self.layer_map {
            LayerMap::Affine { scale, .. } if *scale == 0 => Err(DistillError::InvalidConfig {
                key: "hidden.layer_map.scale",
                value: "0".to_string(),
                reason: "must be >= 1",
            }),
            LayerMap::Pairs { pairs } if pairs.is_empty() => Err(DistillError::InvalidConfig {
                key: "hidden.layer_map.pairs",
                value: "[]".to_string(),
                reason: "must hold at least one (student, teacher) pair",
            }),
            _ => Ok(()),
        }
    }

    /// Builds the module for the given hidden sizes. A projection `student_hidden ->
    /// teacher_hidden` (with bias) is created only when the sizes differ.
    pub fn init<B: Backend>(
        &self,
        student_hidden: usize,
        teacher_hidden: usize,
        device: &B::Device,
    ) -> HiddenStateDistillation<B> {
        let projection = (student_hidden != teacher_hidden)
            .then(|| LinearConfig::new(student_hidden, teacher_hidden).init(device));
        HiddenStateDistillation {
            projection,
            layer_map: self.layer_map.clone(),
            student_hidden,
            teacher_hidden,
        }
    }
}

/// Masked MSE between mapped student and teacher hidden states, with an optional learned
/// projection. Build it with [`HiddenStateDistillationConfig::init`].
#[derive(Module, Debug)]
pub struct HiddenStateDistillation<B: Backend> {
    /// `student_hidden -> teacher_hidden` projection; `None` when the sizes are equal.
    pub projection: Option<Linear<B>>,
    layer_map: LayerMap,
    student_hidden: usize,
    teacher_hidden: usize,
}

impl<B: Backend> HiddenStateDistillation<B> {
    /// The layer correspondence in use.
    pub fn layer_map(&self) -> &LayerMap {
        &self.layer_map
    }

    /// Hidden-state loss: for each mapped pair, the squared error between the (projected)
    /// student state and the teacher state, summed over the hidden dimension and averaged over
    /// non-padding tokens and hidden units; then averaged over pairs.
    ///
    /// `student_hidden[i]`: `[batch, seq, student_hidden]`; `teacher_hidden[j]`:
    /// `[batch, seq, teacher_hidden]`; `attention_mask`: `[batch, seq]`, 1 for tokens and 0 for
    /// padding (the Hugging Face convention). Teacher states are detached.
    pub fn forward(
        &self,
        student_hidden: &[Tensor<B, 3>],
        teacher_hidden: &[Tensor<B, 3>],
        attention_mask: Tensor<B, 2, Int>,
    ) -> Result<Tensor<B, 1>, DistillError> {
        let pairs = self.layer_map.pairs(student_hidden.len());
        if pairs.is_empty() {
            return Err(DistillError::ShapeMismatch {
                context: "hidden-state distillation student states".to_string(),
                expected: "at least one mapped hidden state".to_string(),
                got: format!("{} student states", student_hidden.len()),
            });
        }
        let [batch, seq] = attention_mask.dims();
        for &(s, t) in &pairs {
            let (Some(sh), Some(th)) = (student_hidden.get(s), teacher_hidden.get(t)) else {
                return Err(DistillError::LayerOutOfRange {
                    student: s,
                    teacher: t,
                    num_student: student_hidden.len(),
                    num_teacher: teacher_hidden.len(),
                });
            };
            check_dims(
                &format!("student hidden state {s}"),
                [batch, seq, self.student_hidden],
                sh.dims(),
            )?;
            check_dims(
                &format!("teacher hidden state {t}"),
                [batch, seq, self.teacher_hidden],
                th.dims(),
            )?;
        }

        let mask = attention_mask.float().unsqueeze_dim::<3>(2);
        // Clamped so that an all-padding batch yields 0 instead of 0/0.
        let denom = mask
            .clone()
            .sum()
            .mul_scalar(self.teacher_hidden as f64)
            .clamp_min(1.0);
        let mut total: Tensor<B, 1> = Tensor::zeros([1], &mask.device());
        for &(s, t) in &pairs {
            let student = student_hidden[s].clone();
            let student = match &self.projection {
                Some(linear) => linear.forward(student),
                None => student,
            };
            let diff = student - teacher_hidden[t].clone().detach();
            let term = (diff.square() * mask.clone()).sum() / denom.clone();
            total = total + term;
        }
        Ok(total.div_scalar(pairs.len() as f64))
    }
}

fn check_dims(context: &str, expected: [usize; 3], got: [usize; 3]) -> Result<(), DistillError> {
    if expected != got {
        return Err(DistillError::ShapeMismatch {
            context: context.to_string(),
            expected: format!("{expected:?}"),
            got: format!("{got:?}"),
        });
    }
    Ok(())
}
