//! Exact parameter counts (the paper's "trainable parameters" column) and their closed form.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use kdlora_kernels::LoraOps;

use crate::config::{LoraConfig, module_covers};
use crate::model::AdaptableModel;

/// Parameter counts of a (possibly adapted) model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParamCounts {
    /// Every float parameter of the model, adapters included.
    pub total: usize,
    /// Parameters of the attached adapters (`sum r * (d_in + d_out)`).
    pub adapter: usize,
    /// Parameters of the linear modules covered by `modules_to_save` (the head).
    pub head: usize,
}

impl ParamCounts {
    /// Parameters of the model without adapters.
    pub fn base(&self) -> usize {
        self.total - self.adapter
    }

    /// Trainable parameters: adapters, plus the head when it is trained.
    pub fn trainable(&self, train_head: bool) -> usize {
        self.adapter + if train_head { self.head } else { 0 }
    }
}

/// Counts parameters from the model's structure (works on every backend).
///
/// `head` covers the linears named by `cfg.modules_to_save` (default: the model's head paths).
pub fn count_params<B, M>(model: &M, cfg: &LoraConfig) -> ParamCounts
where
    B: LoraOps,
    M: Module<B> + AdaptableModel<B>,
{
    let save = cfg
        .modules_to_save
        .clone()
        .unwrap_or_else(|| model.head_module_paths());
    let mut adapter = 0;
    let mut head = 0;
    model.visit_linears(&mut |path, linear| {
        adapter += linear.adapter_num_params();
        if save.iter().any(|n| module_covers(n, path)) {
            head += linear.base_num_params();
        }
    });
    ParamCounts {
        total: model.num_params(),
        adapter,
        head,
    }
}

/// Counts float parameters whose tensors require gradients: on an autodiff backend, exactly what an
/// optimizer updates. (Inner backends keep no gradient flag on tensors, so there it returns 0.)
pub fn count_trainable<B: Backend, M: Module<B>>(model: &M) -> usize {
    struct Trainable(usize);
    impl<B: Backend> ModuleVisitor<B> for Trainable {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let value = param.val();
            if value.is_require_grad() {
                self.0 += value.shape().num_elements();
            }
        }
    }
    let mut visitor = Trainable(0);
    model.visit(&mut visitor);
    visitor.0
}

/// Closed form of the adapter parameter count for `layers` encoder layers whose `targets_per_layer`
/// adapted projections are all `d_model x d_model`: `layers * targets * r * (d_model + d_model)`.
///
/// BERT-base (12 layers, d_model 768), query + value, r = 8: 294,912.
pub fn lora_param_count(
    layers: usize,
    d_model: usize,
    r: usize,
    targets_per_layer: usize,
) -> usize {
    layers * targets_per_layer * r * 2 * d_model
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_form_matches_known_peft_numbers() {
        // PEFT's print_trainable_parameters for bert-base-uncased, r=8, query+value: 294,912
        // adapter parameters; DistilBERT (6 layers) has half of that.
        assert_eq!(lora_param_count(12, 768, 8, 2), 294_912);
        assert_eq!(lora_param_count(6, 768, 8, 2), 147_456);
        assert_eq!(lora_param_count(24, 1024, 16, 2), 1_572_864);
    }

    #[test]
    fn trainable_adds_the_head_only_when_trained() {
        let c = ParamCounts {
            total: 1000,
            adapter: 30,
            head: 7,
        };
        assert_eq!(c.trainable(true), 37);
        assert_eq!(c.trainable(false), 30);
        assert_eq!(c.base(), 970);
    }
}
