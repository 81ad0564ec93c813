//! Exact (erf) GELU with its exact derivative, as one autodiff node.
//!
//! `gelu(x) = x Φ(x)` with `Φ(x) = (1 + erf(x / √2)) / 2`, and `gelu'(x) = Φ(x) + x φ(x)` with
//! `φ(x) = exp(-x² / 2) / √(2π)`. This is what `hidden_act = "gelu"` means in transformers (PyTorch's
//! `F.gelu`). Burn 0.21's own `gelu_backward` differentiates the tanh approximation instead (a few
//! 1e-4 off the exact derivative) and takes a dozen tensor passes on the CPU backend; [`gelu`] fixes
//! both: the derivative is exact on every backend, and `NdArray` computes the forward and the
//! backward in one multi-threaded pass each.

use burn::{
    backend::autodiff::{
        Autodiff, NodeId,
        checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
        grads::Gradients,
        ops::{Backward, Ops, OpsKind},
    },
    tensor::{Tensor, TensorMetadata, TensorPrimitive, backend::Backend, ops::FloatTensor},
};

use crate::LoraOps;

/// `1 / √2`.
pub(crate) const FRAC_1_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
/// `1 / √(2π)`.
pub(crate) const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// Exact GELU, `x Φ(x)`, through [`LoraOps::exact_gelu`] (one graph node under autodiff, with the
/// exact derivative).
///
/// ```
/// use burn::backend::NdArray;
/// use burn::tensor::Tensor;
///
/// let device = Default::default();
/// let x = Tensor::<NdArray<f32>, 1>::from_floats([-1.0, 0.0, 2.0], &device);
/// let y: Vec<f32> = kdlora_kernels::gelu(x).into_data().to_vec().unwrap();
/// assert!((y[0] + 0.158_655_26).abs() < 1e-6);
/// assert_eq!(y[1], 0.0);
/// assert!((y[2] - 1.954_499_7).abs() < 1e-6);
/// ```
pub fn gelu<B: LoraOps, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::exact_gelu(
        x.into_primitive().tensor(),
    )))
}

/// Exact GELU `x Φ(x)` from ordinary Burn ops (`erf`), for backends whose own `gelu` is not exact:
/// Burn's candle backend maps it to candle's tanh approximation (logits off by ~1e-4 on BERT).
pub fn gelu_reference<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let shape = x.shape();
    let x = flat::<B>(x);
    B::float_reshape((x.clone() * normal_cdf(x)).into_primitive().tensor(), shape)
}

/// The exact GELU derivative applied to an output gradient, `grad (Φ(x) + x φ(x))`, from ordinary
/// Burn ops: the default of [`LoraOps::exact_gelu_backward`] and the tests' reference.
pub fn gelu_backward_reference<B: Backend>(
    x: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let shape = x.shape();
    let (x, grad) = (flat::<B>(x), flat::<B>(grad));
    let pdf = x
        .clone()
        .powi_scalar(2)
        .mul_scalar(-0.5)
        .exp()
        .mul_scalar(FRAC_1_SQRT_2PI);
    let cdf = normal_cdf(x.clone());
    B::float_reshape((grad * (cdf + x * pdf)).into_primitive().tensor(), shape)
}

/// Element-wise ops work on a flat view so any rank goes through the same 1-D tensor code.
fn flat<B: Backend>(x: FloatTensor<B>) -> Tensor<B, 1> {
    let n = x.shape().num_elements();
    Tensor::from_primitive(TensorPrimitive::Float(B::float_reshape(x, [n].into())))
}

/// `Φ(x) = (1 + erf(x / √2)) / 2`.
fn normal_cdf<B: Backend>(x: Tensor<B, 1>) -> Tensor<B, 1> {
    (x.mul_scalar(FRAC_1_SQRT_2).erf() + 1.0).mul_scalar(0.5)
}

#[derive(Debug)]
struct GeluBackward;

impl<B: LoraOps> Backward<B, 1> for GeluBackward {
    type State = NodeId;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [parent] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(parent) = parent {
            let x: FloatTensor<B> = checkpointer.retrieve_node_output(ops.state);
            grads.register::<B>(parent.id, B::exact_gelu_backward(x, grad));
        }
    }
}

/// The autodiff node: keeps `x` and calls the inner backend's [`LoraOps::exact_gelu_backward`].
pub(crate) fn autodiff_gelu<B: LoraOps, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    match GeluBackward
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let state = prep.checkpoint(&x);
            prep.finish(state, B::exact_gelu(x.primitive))
        }
        OpsKind::UnTracked(prep) => prep.finish(B::exact_gelu(x.primitive)),
    }
}

/// Scalar exact GELU in f32 (the CPU fast path), in vectorisable form ([`crate::simd`]).
#[inline(always)]
pub(crate) fn gelu_f32(x: f32) -> f32 {
    x * crate::simd::cdf(x)
}

/// Scalar exact GELU derivative `Φ(x) + x φ(x)` in f32 (the CPU fast path).
#[inline(always)]
pub(crate) fn gelu_grad_f32(x: f32) -> f32 {
    let pdf = crate::simd::exp(-0.5 * x * x) * FRAC_1_SQRT_2PI as f32;
    crate::simd::cdf(x) + x * pdf
}
