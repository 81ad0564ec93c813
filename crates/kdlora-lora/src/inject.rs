//! Turning a model into a LoRA model: resolve targets, freeze everything, attach adapters, unfreeze
//! the head.

use burn::module::Module;
use burn::tensor::Tensor;
use kdlora_kernels::LoraOps;

use crate::config::{LoraConfig, TargetMatcher, module_covers};
use crate::error::{LoraError, sample};
use crate::init::{init_lora_a, module_seed};
use crate::linear::LoraAdapter;
use crate::model::AdaptableModel;

/// How many module paths error messages show.
pub(crate) const EXAMPLES: usize = 6;

/// The module paths a [`LoraConfig`] resolves to on a given model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraPlan {
    /// Linear modules that receive an adapter, in the model's visiting order.
    pub targets: Vec<String>,
    /// Linear modules covered by `modules_to_save` (trained in full when `train_head`).
    pub modules_to_save: Vec<String>,
    /// The `modules_to_save` names as configured (or the model's head paths).
    pub modules_to_save_names: Vec<String>,
}

/// All linear module paths of `model`, in visiting order.
pub fn linear_paths<B: LoraOps, M: AdaptableModel<B>>(model: &M) -> Vec<String> {
    let mut paths = Vec::new();
    model.visit_linears(&mut |path, _| paths.push(path.to_string()));
    paths
}

/// Resolves `cfg` against `model`: every target entry must match at least one linear module.
///
/// Head modules are never adapted, even when a target name matches them (PEFT does the same: a
/// module in `modules_to_save` is trained in full instead).
pub fn plan<B: LoraOps, M: AdaptableModel<B>>(
    model: &M,
    cfg: &LoraConfig,
) -> Result<LoraPlan, LoraError> {
    cfg.validate()?;
    let paths = linear_paths(model);
    let matcher: TargetMatcher = cfg.targets_for(model.model_type())?.matcher()?;
    for (i, entry) in matcher.entries().into_iter().enumerate() {
        if !paths.iter().any(|p| matcher.entry_matches(i, p)) {
            return Err(LoraError::TargetNotFound {
                target: entry,
                model_type: model.model_type().to_string(),
                count: paths.len(),
                examples: sample(&paths, EXAMPLES),
            });
        }
    }
    let save_names = cfg
        .modules_to_save
        .clone()
        .unwrap_or_else(|| model.head_module_paths());
    let saved: Vec<String> = paths
        .iter()
        .filter(|p| save_names.iter().any(|n| module_covers(n, p)))
        .cloned()
        .collect();
    for name in &save_names {
        if !paths.iter().any(|p| module_covers(name, p)) {
            tracing::warn!(
                module = name.as_str(),
                "modules_to_save entry matches no linear module; ignored"
            );
        }
    }
    let targets = paths
        .iter()
        .filter(|p| matcher.matches(p) && !saved.contains(p))
        .cloned()
        .collect();
    Ok(LoraPlan {
        targets,
        modules_to_save: saved,
        modules_to_save_names: save_names,
    })
}

/// Freezes `model`, attaches freshly initialised adapters to the targets of `cfg`, and makes the
/// `modules_to_save` trainable when `cfg.train_head`.
///
/// `A` is drawn as [`LoraConfig::init`] says from a stream seeded by `(cfg.seed, module path)`;
/// `B` starts at zero, so the returned model computes exactly what `model` computed.
///
/// Trainability lives in the parameters: on an autodiff backend only adapter (and head) tensors
/// require gradients, so backward passes produce no base-weight gradients and optimizers keep no
/// state for them. Inject on the autodiff backend you train on (or on its inner backend and move
/// the model with `Module::train`, which carries the setting over).
pub fn inject<B, M>(model: M, cfg: &LoraConfig, device: &B::Device) -> Result<M, LoraError>
where
    B: LoraOps,
    M: Module<B> + AdaptableModel<B>,
{
    let plan = plan(&model, cfg)?;
    let scaling = cfg.scaling();
    let mut model = model.no_grad();
    let mut error = None;
    model.visit_linears_mut(&mut |path, linear| {
        if error.is_some() {
            return;
        }
        if plan.targets.iter().any(|t| t == path) {
            if linear.adapter.is_some() {
                error = Some(LoraError::AlreadyAdapted {
                    path: path.to_string(),
                });
                return;
            }
            let lora_a = init_lora_a::<B>(
                cfg.init,
                cfg.r,
                linear.d_input(),
                module_seed(cfg.seed, path),
                device,
            );
            let lora_b = Tensor::zeros([linear.d_output(), cfg.r], device);
            linear.adapter = Some(LoraAdapter::new(lora_a, lora_b, cfg.dropout, scaling));
        } else if cfg.train_head && plan.modules_to_save.iter().any(|t| t == path) {
            linear.set_base_trainable(true);
        }
    });
    match error {
        Some(e) => Err(e),
        None => {
            tracing::info!(
                adapters = plan.targets.len(),
                head_modules = plan.modules_to_save.len(),
                r = cfg.r,
                scaling,
                "LoRA adapters attached"
            );
            Ok(model)
        }
    }
}

/// Folds every unmerged adapter into its base weight; returns how many were merged.
pub fn merge<B: LoraOps, M: AdaptableModel<B>>(model: &mut M) -> usize {
    let mut n = 0;
    model.visit_linears_mut(&mut |_, linear| n += usize::from(linear.merge()));
    n
}

/// Takes every merged adapter out of its base weight again; returns how many were unmerged.
pub fn unmerge<B: LoraOps, M: AdaptableModel<B>>(model: &mut M) -> usize {
    let mut n = 0;
    model.visit_linears_mut(&mut |_, linear| n += usize::from(linear.unmerge()));
    n
}

/// Merges every adapter and removes it, leaving a plain model (what `kdlora merge` saves);
/// returns how many adapters were folded in.
pub fn merge_and_unload<B: LoraOps, M: AdaptableModel<B>>(model: &mut M) -> usize {
    let mut n = 0;
    model.visit_linears_mut(&mut |_, linear| n += usize::from(linear.merge_and_unload()));
    n
}
