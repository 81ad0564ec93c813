//! [`LoraLinear`]: a frozen base projection plus an optional low-rank adapter.

use burn::module::{Module, Param, ParamId};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::Tensor;
use kdlora_kernels::Dropout;
use kdlora_kernels::LoraOps;

/// Shape of a [`LoraLinear`] before weights are known; builds one with a plain (adapter-free) base.
#[derive(burn::config::Config, Debug)]
pub struct LoraLinearConfig {
    /// Input features.
    pub d_input: usize,
    /// Output features.
    pub d_output: usize,
    /// Whether the base projection has a bias.
    #[config(default = true)]
    pub bias: bool,
}

impl LoraLinearConfig {
    /// Builds a linear layer without adapter (behaves exactly like `nn::Linear`).
    pub fn init<B: LoraOps>(&self, device: &B::Device) -> LoraLinear<B> {
        LoraLinear {
            base: LinearConfig::new(self.d_input, self.d_output)
                .with_bias(self.bias)
                .init(device),
            adapter: None,
        }
    }
}

/// The trainable low-rank part of a [`LoraLinear`]: `scaling * dropout(x) A^T B^T`.
#[derive(Module, Debug)]
pub struct LoraAdapter<B: LoraOps> {
    /// Down projection `A`, stored as `[r, d_input]` (PEFT's `lora_A.weight` layout).
    pub lora_a: Param<Tensor<B, 2>>,
    /// Up projection `B`, stored as `[d_output, r]` (PEFT's `lora_B.weight` layout).
    pub lora_b: Param<Tensor<B, 2>>,
    /// Dropout on the adapter input only.
    pub dropout: Dropout,
    /// `alpha / r`, or `alpha / sqrt(r)` for rsLoRA.
    pub scaling: f64,
    /// Whether `scaling * B A` is currently folded into the base weight (then the adapter path is
    /// skipped in `forward`, and [`LoraLinear::unmerge`] can take it out again).
    pub merged: bool,
}

impl<B: LoraOps> LoraAdapter<B> {
    /// A trainable adapter from `A: [r, d_input]` and `B: [d_output, r]` (PEFT layouts).
    ///
    /// Both become parameters that require gradients (on an autodiff backend, and across
    /// `valid()`/`train()` round trips from the inner backend). Callers check shapes first: the
    /// rank of `lora_a` must equal the rank of `lora_b`.
    pub fn new(lora_a: Tensor<B, 2>, lora_b: Tensor<B, 2>, dropout_p: f64, scaling: f64) -> Self {
        Self {
            lora_a: trainable_param(lora_a),
            lora_b: trainable_param(lora_b),
            dropout: dropout(dropout_p),
            scaling,
            merged: false,
        }
    }

    /// Input features of the adapted projection.
    pub fn d_input(&self) -> usize {
        self.lora_a.dims()[1]
    }

    /// Output features of the adapted projection.
    pub fn d_output(&self) -> usize {
        self.lora_b.dims()[0]
    }

    /// `scaling * A^T B^T`: the weight update in Burn's `[d_input, d_output]` layout (the transpose
    /// of PEFT's `scaling * B A`). Computed on detached values, so it is no part of any graph.
    pub fn delta_weight(&self) -> Tensor<B, 2> {
        let a = self.lora_a.val().detach();
        let b = self.lora_b.val().detach();
        a.transpose().matmul(b.transpose()).mul_scalar(self.scaling)
    }

    /// Rank `r` of the adapter.
    pub fn rank(&self) -> usize {
        self.lora_a.dims()[0]
    }

    /// The adapter's contribution `scaling * dropout(x) A^T B^T` for input `[..., d_input]`.
    pub fn delta<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let x = self.dropout.forward(x);
        let a_t = self.lora_a.val().transpose().unsqueeze::<D>();
        let b_t = self.lora_b.val().transpose().unsqueeze::<D>();
        x.matmul(a_t).matmul(b_t).mul_scalar(self.scaling)
    }
}

/// A linear projection `y = x W^T + b` whose weights can be frozen and extended with a LoRA adapter.
///
/// Every projection in the kdlora encoders is a `LoraLinear`; while `adapter` is `None` it computes
/// exactly what `nn::Linear` computes. Burn stores `base.weight` as `[d_input, d_output]` (the transpose
/// of the Hugging Face `[out, in]` layout).
#[derive(Module, Debug)]
pub struct LoraLinear<B: LoraOps> {
    /// The pretrained projection.
    pub base: Linear<B>,
    /// The low-rank adapter, when attached.
    pub adapter: Option<LoraAdapter<B>>,
}

impl<B: LoraOps> LoraLinear<B> {
    /// Wraps an existing linear layer without adapter.
    pub fn from_linear(base: Linear<B>) -> Self {
        Self {
            base,
            adapter: None,
        }
    }

    /// Input features.
    pub fn d_input(&self) -> usize {
        self.base.weight.dims()[0]
    }

    /// Output features.
    pub fn d_output(&self) -> usize {
        self.base.weight.dims()[1]
    }

    /// `x W^T + b (+ scaling * dropout(x) A^T B^T)` for input `[..., d_input]`.
    ///
    /// The adapter part goes through [`kdlora_kernels::lora_delta_add`]: fused CubeCL kernels on
    /// wgpu/CUDA (forward and backward), plain tensor ops on NdArray or when the fused path is off
    /// (`KDLORA_FUSED_ADAPTER=0`). A merged adapter is skipped: its update already lives in the base
    /// weight.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match &self.adapter {
            Some(adapter) if !adapter.merged => {
                let base = self.base_forward(x.clone());
                // Dropout acts on the adapter input only; the base saw the undropped `x`.
                let x = adapter.dropout.forward(x);
                kdlora_kernels::lora_delta_add(
                    x,
                    base,
                    adapter.lora_a.val(),
                    adapter.lora_b.val(),
                    adapter.scaling as f32,
                )
            }
            _ => self.base_forward(x),
        }
    }

    /// `x W^T + b` through [`kdlora_kernels::linear`] (what `nn::Linear::forward` computes): on the
    /// CPU it writes the product without Flex's zero-fill-and-copy of every output, and a trainable
    /// weight gets its gradient from one product over all tokens instead of one per sequence.
    fn base_forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        kdlora_kernels::linear(
            x,
            self.base.weight.val(),
            self.base.bias.as_ref().map(|b| b.val()),
        )
    }

    /// Folds the adapter into the base weight (`W += scaling * B A`, applied as
    /// `W_burn += scaling * A^T B^T` in Burn's `[d_input, d_output]` layout) so that inference costs
    /// one matmul. Returns `false` (and changes nothing) without adapter or when already merged.
    ///
    /// The base weight keeps its parameter id and its frozen/trainable state.
    pub fn merge(&mut self) -> bool {
        let Some(adapter) = self.adapter.as_mut() else {
            return false;
        };
        if adapter.merged {
            return false;
        }
        let delta = adapter.delta_weight();
        adapter.merged = true;
        update_weight(&mut self.base, |w| w + delta);
        true
    }

    /// Takes a merged adapter's update out of the base weight again (`W -= scaling * B A`).
    /// Returns `false` (and changes nothing) when there is no merged adapter.
    pub fn unmerge(&mut self) -> bool {
        let Some(adapter) = self.adapter.as_mut() else {
            return false;
        };
        if !adapter.merged {
            return false;
        }
        let delta = adapter.delta_weight();
        adapter.merged = false;
        update_weight(&mut self.base, |w| w - delta);
        true
    }

    /// Merges the adapter (if not merged yet) and drops it, leaving a plain linear layer that
    /// saves as an ordinary checkpoint. Returns whether there was an adapter.
    pub fn merge_and_unload(&mut self) -> bool {
        if self.adapter.is_none() {
            return false;
        }
        self.merge();
        self.adapter = None;
        true
    }

    /// Marks the base weight and bias trainable or frozen (used for `modules_to_save`).
    pub fn set_base_trainable(&mut self, trainable: bool) {
        self.base.weight = with_trainable(self.base.weight.clone(), trainable);
        if let Some(bias) = self.base.bias.take() {
            self.base.bias = Some(with_trainable(bias, trainable));
        }
    }

    /// Parameters of the base projection (weight and bias).
    pub fn base_num_params(&self) -> usize {
        let bias = self.base.bias.as_ref().map_or(0, |b| b.dims()[0]);
        self.d_input() * self.d_output() + bias
    }

    /// Parameters of the adapter (`r * (d_input + d_output)`), 0 without adapter.
    pub fn adapter_num_params(&self) -> usize {
        self.adapter
            .as_ref()
            .map_or(0, |a| a.rank() * (a.d_input() + a.d_output()))
    }
}

/// Replaces `linear.weight` by `f(weight)`, computed without graph, keeping the parameter id and
/// whether it requires gradients.
fn update_weight<B: LoraOps>(linear: &mut Linear<B>, f: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 2>) {
    let trainable = linear.weight.is_require_grad();
    let id = linear.weight.id;
    let value = f(linear.weight.val().detach());
    linear.weight = with_trainable(Param::initialized(id, value), trainable);
}

/// A new trainable parameter holding `value`.
pub(crate) fn trainable_param<B: LoraOps, const D: usize>(
    value: Tensor<B, D>,
) -> Param<Tensor<B, D>> {
    with_trainable(Param::initialized(ParamId::new(), value.detach()), true)
}

/// `param` with its gradient requirement set to `trainable`, keeping its id.
///
/// On an autodiff backend the tensor's own flag decides; on the inner backend tensors carry no
/// flag, and only a lazily initialised `Param` remembers `require_grad` (that is what
/// `AutodiffModule::from_inner` reads when the model moves onto the autodiff backend). So the
/// value is re-wrapped as a lazy parameter whose initialiser hands back the existing tensor: the
/// setting then survives `valid()`/`train()` on both kinds of backend.
pub(crate) fn with_trainable<B: LoraOps, const D: usize>(
    param: Param<Tensor<B, D>>,
    trainable: bool,
) -> Param<Tensor<B, D>> {
    let id = param.id;
    let value = param.val();
    let device = value.device();
    let shape = value.shape();
    let param = Param::uninitialized(
        id,
        move |_device: &B::Device, require_grad: bool| value.clone().set_require_grad(require_grad),
        device,
        trainable,
        shape,
    );
    // Initialise now: later code (optimizers, visitors) should see a plain, initialised value.
    let _ = param.val();
    param
}

/// A dropout layer with probability `p` (helper for adapter construction).
pub(crate) fn dropout(p: f64) -> Dropout {
    Dropout::new(p)
}
