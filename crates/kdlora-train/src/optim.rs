//! Optimizer side of the training loop: AdamW with weight decay only on weights (not on biases and
//! LayerNorm, as Hugging Face's Trainer), global gradient-norm clipping (as PyTorch's
//! `clip_grad_norm_`; Burn's own clipping is per tensor), and the linear schedule with warmup.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::record::{AdaptorRecord as StateRecord, AdaptorRecordV1};
use burn::optim::{AdamW, AdamWConfig, AdamWState, GradientsParams, Optimizer};
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};

use crate::error::{Result, TrainError};
use crate::record::{MAX_OPTIMIZER_TIME, damaged, load_record, record_path};

pub use kdlora_schema::ParamCounts;

/// Trainable parameters split by whether weight decay applies.
#[derive(Clone, Debug, Default)]
pub struct ParamGroups {
    /// Weights that decay.
    pub decay: HashSet<ParamId>,
    /// Biases and LayerNorm scales/shifts: no decay.
    pub no_decay: HashSet<ParamId>,
    /// The shape of every trainable parameter (an optimizer state must have the same).
    pub shapes: HashMap<ParamId, Vec<usize>>,
    /// Scalar counts.
    pub counts: Option<ParamCounts>,
}

struct GroupVisitor {
    path: Vec<(String, String)>,
    groups: ParamGroups,
    trainable: usize,
    total: usize,
}

impl<B: Backend> ModuleVisitor<B> for GroupVisitor {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        let n = value.shape().num_elements();
        self.total += n;
        if !value.is_require_grad() {
            return;
        }
        self.trainable += n;
        self.groups.shapes.insert(param.id, value.dims().to_vec());
        // The derive calls enter_module(field, "Struct:Parent") before each field, so the top of
        // the stack is the parameter's own field name and the type that holds it. Option fields
        // (a Linear's bias, a LayerNorm's beta) are entered without a frame of their own.
        let (field, parent) = self
            .path
            .last()
            .map(|(n, c)| (n.as_str(), c.as_str()))
            .unwrap_or(("", ""));
        let is_norm = parent == "Struct:LayerNorm" || matches!(field, "gamma" | "beta");
        if field == "bias" || is_norm {
            self.groups.no_decay.insert(param.id);
        } else {
            self.groups.decay.insert(param.id);
        }
    }
}

/// Splits a model's trainable parameters into decay / no-decay groups and counts parameters.
pub fn param_groups<B: Backend, M: Module<B>>(model: &M) -> ParamGroups {
    let mut visitor = GroupVisitor {
        path: Vec::new(),
        groups: ParamGroups::default(),
        trainable: 0,
        total: 0,
    };
    model.visit(&mut visitor);
    let mut groups = visitor.groups;
    groups.counts = Some(ParamCounts {
        trainable: visitor.trainable,
        total: visitor.total,
    });
    groups
}

/// Exact trainable and total parameter counts of a model.
pub fn param_counts<B: Backend, M: Module<B>>(model: &M) -> ParamCounts {
    param_groups::<B, M>(model).counts.unwrap_or(ParamCounts {
        trainable: 0,
        total: 0,
    })
}

struct SquaredNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    acc: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let s = g.square().sum();
            self.acc = Some(match self.acc.take() {
                Some(a) => a + s,
                None => s,
            });
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// Global L2 norm of all gradients (as one vector); `None` when there are none.
pub fn grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &GradientsParams,
) -> Option<f64> {
    let mut v = SquaredNorm::<B> { grads, acc: None };
    model.visit(&mut v);
    v.acc.map(|a| a.sqrt().into_scalar().elem::<f64>())
}

/// Scales every gradient by `factor`.
pub fn scale_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &mut GradientsParams,
    factor: f64,
) {
    let mut v = Scale { grads, factor };
    model.visit(&mut v);
}

struct Split<'a> {
    from: &'a mut GradientsParams,
    to: GradientsParams,
    ids: &'a HashSet<ParamId>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Split<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.ids.contains(&param.id)
            && let Some(g) = self.from.remove::<B::InnerBackend, D>(param.id)
        {
            self.to.register(param.id, g);
        }
    }
}

/// Moves the gradients of `ids` out of `grads` into a new container.
fn split_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &mut GradientsParams,
    ids: &HashSet<ParamId>,
) -> GradientsParams {
    let mut v = Split {
        from: grads,
        to: GradientsParams::new(),
        ids,
    };
    model.visit(&mut v);
    v.to
}

/// Learning rate at optimizer step `step` (0-based) of `total`, linear warmup for `warmup` steps then
/// linear decay to zero, as `transformers.get_linear_schedule_with_warmup`.
pub fn linear_schedule(base_lr: f64, step: usize, total: usize, warmup: usize) -> f64 {
    if step < warmup {
        return base_lr * step as f64 / warmup.max(1) as f64;
    }
    let remaining = total.saturating_sub(step) as f64;
    let span = total.saturating_sub(warmup).max(1) as f64;
    base_lr * (remaining / span).max(0.0)
}

type Adaptor<M, B> = OptimizerAdaptor<AdamW, M, B>;
type AdaptorRecord<M, B> = <Adaptor<M, B> as Optimizer<M, B>>::Record;
/// Both groups' AdamW states (decay, no-decay), as one Burn record.
pub(crate) type GroupedRecord<M, B> = (AdaptorRecord<M, B>, AdaptorRecord<M, B>);

/// AdamW over two parameter groups (with and without weight decay).
pub struct GroupedAdamW<M: AutodiffModule<B>, B: AutodiffBackend> {
    decay: Adaptor<M, B>,
    no_decay: Adaptor<M, B>,
    decay_ids: HashSet<ParamId>,
    no_decay_ids: HashSet<ParamId>,
    shapes: HashMap<ParamId, Vec<usize>>,
    grad_clip: f64,
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> Clone for GroupedAdamW<M, B> {
    fn clone(&self) -> Self {
        Self {
            decay: self.decay.clone(),
            no_decay: self.no_decay.clone(),
            decay_ids: self.decay_ids.clone(),
            no_decay_ids: self.no_decay_ids.clone(),
            shapes: self.shapes.clone(),
            grad_clip: self.grad_clip,
        }
    }
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> GroupedAdamW<M, B> {
    /// AdamW (beta 0.9 / 0.999, eps 1e-8) with `weight_decay` on `groups.decay` only, and global
    /// norm clipping at `grad_clip` (0 disables).
    pub fn new(groups: &ParamGroups, weight_decay: f64, grad_clip: f64) -> Self {
        let base = AdamWConfig::new()
            .with_beta_1(0.9)
            .with_beta_2(0.999)
            .with_epsilon(1e-8);
        Self {
            decay: base.clone().with_weight_decay(weight_decay as f32).init(),
            no_decay: base.with_weight_decay(0.0).init(),
            decay_ids: groups.decay.clone(),
            no_decay_ids: groups.no_decay.clone(),
            shapes: groups.shapes.clone(),
            grad_clip,
        }
    }

    /// Clips and applies one update. Returns the updated model and the gradient norm before
    /// clipping (`None` when no parameter had a gradient).
    pub fn step(&mut self, lr: f64, model: M, mut grads: GradientsParams) -> (M, Option<f64>) {
        let norm = grad_norm::<B, M>(&model, &grads);
        if let Some(n) = norm
            && self.grad_clip > 0.0
            && n.is_finite()
            && n > self.grad_clip
        {
            // Same coefficient as torch.nn.utils.clip_grad_norm_.
            scale_grads::<B, M>(&model, &mut grads, self.grad_clip / (n + 1e-6));
        }
        let no_decay = split_grads::<B, M>(&model, &mut grads, &self.no_decay_ids);
        let model = self.decay.step(lr, model, grads);
        let model = self.no_decay.step(lr, model, no_decay);
        (model, norm)
    }

    /// Replaces the parameter ids of the two groups (after the model's record, and with it its
    /// parameter ids, was loaded from a checkpoint).
    pub(crate) fn set_groups(&mut self, groups: &ParamGroups) {
        if self.decay_ids != groups.decay {
            self.decay_ids = groups.decay.clone();
        }
        if self.no_decay_ids != groups.no_decay {
            self.no_decay_ids = groups.no_decay.clone();
        }
        self.shapes = groups.shapes.clone();
    }

    /// Both groups' states as one record (burn-train's checkpointer).
    pub(crate) fn to_grouped_record(&self) -> GroupedRecord<M, B> {
        (self.decay.to_record(), self.no_decay.to_record())
    }

    /// Restores the states of [`GroupedAdamW::to_grouped_record`].
    pub(crate) fn load_grouped_record(mut self, (decay, no_decay): GroupedRecord<M, B>) -> Self {
        self.decay = self.decay.load_record(decay);
        self.no_decay = self.no_decay.load_record(no_decay);
        self
    }

    /// Writes the optimizer state (moments and step counts of both groups) under `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let recorder = BinFileRecorder::<FullPrecisionSettings>::new();
        for (name, optim) in [
            ("optim_decay", &self.decay),
            ("optim_no_decay", &self.no_decay),
        ] {
            let path = dir.join(name);
            Recorder::<B>::record(&recorder, optim.to_record(), path.clone()).map_err(|e| {
                TrainError::Checkpoint {
                    path,
                    message: e.to_string(),
                }
            })?;
        }
        Ok(())
    }

    /// Restores the state written by [`GroupedAdamW::save`]. A damaged file, or state that does
    /// not fit the model's parameters, is a [`TrainError::DamagedCheckpoint`] naming the file.
    pub fn load(mut self, dir: &Path, device: &B::Device) -> Result<Self> {
        let mut records = Vec::new();
        for (name, ids) in [
            ("optim_decay", &self.decay_ids),
            ("optim_no_decay", &self.no_decay_ids),
        ] {
            let base = dir.join(name);
            let path = record_path(&base);
            if !path.is_file() {
                return Err(TrainError::Checkpoint {
                    path,
                    message: "missing: the checkpoint has no optimizer state".into(),
                });
            }
            // Not Burn's recorder: its decoder panics or aborts on a damaged file.
            let record: AdaptorRecord<M, B> = load_record::<B, _>(&base, device)?;
            for (id, state) in &record {
                // State keyed by parameters the model does not have would be silently ignored
                // and the moments restarted; refuse instead.
                if !ids.contains(id) {
                    return Err(damaged(
                        &path,
                        format!(
                            "optimizer state for parameter {id} which is not a trainable \
                             parameter of this group of the model (checkpoint from another run?)"
                        ),
                    ));
                }
                let shape = self.shapes.get(id).map(Vec::as_slice);
                check_state::<B>(state, shape)
                    .map_err(|message| damaged(&path, format!("parameter {id}: {message}")))?;
            }
            records.push(record);
        }
        let no_decay = records.pop().unwrap_or_default();
        let decay = records.pop().unwrap_or_default();
        self.decay = self.decay.load_record(decay);
        self.no_decay = self.no_decay.load_record(no_decay);
        Ok(self)
    }
}

/// Checks one parameter's AdamW state against its shape (`None`: unknown, only the state's
/// own consistency is checked). Burn would take a mis-shaped moment or a state of another rank
/// as it is and panic at the next step.
fn check_state<B: AutodiffBackend>(
    state: &StateRecord<AdamW, B>,
    shape: Option<&[usize]>,
) -> std::result::Result<(), String> {
    fn dims<BK: Backend, const D: usize>(state: &AdamWState<BK, D>) -> (usize, Vec<Vec<usize>>) {
        let m = &state.momentum;
        let mut tensors = vec![m.moment_1.dims().to_vec(), m.moment_2.dims().to_vec()];
        if let Some(max) = &m.max_moment_2 {
            tensors.push(max.dims().to_vec());
        }
        (m.time, tensors)
    }
    let StateRecord::V1(v1) = state;
    let (time, tensors) = match v1 {
        AdaptorRecordV1::Rank0(s) => dims(s),
        AdaptorRecordV1::Rank1(s) => dims(s),
        AdaptorRecordV1::Rank2(s) => dims(s),
        AdaptorRecordV1::Rank3(s) => dims(s),
        AdaptorRecordV1::Rank4(s) => dims(s),
        AdaptorRecordV1::Rank5(s) => dims(s),
        AdaptorRecordV1::Rank6(s) => dims(s),
        AdaptorRecordV1::Rank7(s) => dims(s),
        AdaptorRecordV1::Rank8(s) => dims(s),
    };
    if time > MAX_OPTIMIZER_TIME {
        return Err(format!(
            "step count {time} is not a count of optimizer steps"
        ));
    }
    for found in &tensors {
        let expected = shape.unwrap_or(&tensors[0]);
        if found.as_slice() != expected {
            return Err(format!(
                "moment of shape {found:?} for a parameter of shape {expected:?}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_transformers_linear_with_warmup() {
        // get_linear_schedule_with_warmup(num_warmup_steps=2, num_training_steps=10), lr 1.0:
        // [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]
        let expected = [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125];
        for (step, e) in expected.iter().enumerate() {
            let got = linear_schedule(1.0, step, 10, 2);
            assert!((got - e).abs() < 1e-12, "step {step}: {got} vs {e}");
        }
        assert_eq!(linear_schedule(1.0, 0, 4, 0), 1.0);
        assert_eq!(linear_schedule(1.0, 3, 4, 0), 0.25);
    }
}
