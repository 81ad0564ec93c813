//! Softmax over the last dimension as one autodiff node.
//!
//! Burn 0.21's `softmax` is a composition (`max`, `sub`, `exp`, `sum`, `div`) that autodiff
//! differentiates op by op: on the CPU backend that is about ten serial passes over the attention
//! scores (`[batch, heads, seq, seq]`, the largest tensor of the encoder) per layer and direction.
//! Here the backward is the closed form `dx = y (dy - Σ dy y)` from the saved output, and `NdArray`
//! computes both directions one row at a time, rows spread over threads.

use burn::{
    backend::autodiff::{
        Autodiff,
        checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
        grads::Gradients,
        ops::{Backward, Ops, OpsKind},
    },
    tensor::{Tensor, TensorMetadata, TensorPrimitive, backend::Backend, ops::FloatTensor},
};

use crate::LoraOps;

/// Softmax over the last dimension through [`LoraOps::softmax_last`] (one graph node under
/// autodiff, backward from the saved output).
///
/// ```
/// use burn::backend::NdArray;
/// use burn::tensor::Tensor;
///
/// let device = Default::default();
/// let x = Tensor::<NdArray<f32>, 2>::from_floats([[0.0, 0.0], [0.0, 2.0f32.ln()]], &device);
/// let y: Vec<f32> = kdlora_kernels::softmax(x).into_data().to_vec().unwrap();
/// let expected = [0.5, 0.5, 1.0 / 3.0, 2.0 / 3.0];
/// assert!(y.iter().zip(expected).all(|(y, e)| (y - e).abs() < 1e-6));
/// ```
pub fn softmax<B: LoraOps, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::softmax_last(
        x.into_primitive().tensor(),
    )))
}

/// `softmax(x + bias)` over the last dimension through [`LoraOps::softmax_last_biased`]: the
/// attention mask bias added inside the softmax pass instead of as a broadcast tensor op of its own.
/// `bias` broadcasts to `x` (same rank, each dimension equal or 1) and is a constant: it gets no
/// gradient.
///
/// ```
/// use burn::backend::NdArray;
/// use burn::tensor::Tensor;
///
/// let device = Default::default();
/// let scores = Tensor::<NdArray<f32>, 4>::zeros([1, 2, 1, 3], &device);
/// // The third key is padding.
/// let bias = Tensor::<NdArray<f32>, 4>::from_floats([[[[0.0, 0.0, -1e9]]]], &device);
/// let y: Vec<f32> = kdlora_kernels::softmax_with_bias(scores, bias).into_data().to_vec().unwrap();
/// let expected = [0.5, 0.5, 0.0, 0.5, 0.5, 0.0];
/// assert!(y.iter().zip(expected).all(|(y, e)| (y - e).abs() < 1e-6));
/// ```
pub fn softmax_with_bias<B: LoraOps, const D: usize>(
    x: Tensor<B, D>,
    bias: Tensor<B, D>,
) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::softmax_last_biased(
        x.into_primitive().tensor(),
        bias.into_primitive().tensor(),
    )))
}

/// `y (dy - Σ_last dy y)` from ordinary Burn ops, where `y` is the softmax output: the default of
/// [`LoraOps::softmax_last_backward`] and the tests' reference.
pub fn softmax_backward_reference<B: Backend>(
    y: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    // As 2-D `[rows, last]` so any rank goes through the same code.
    let shape = y.shape();
    let last = shape[shape.num_dims() - 1];
    let rows = shape.num_elements() / last.max(1);
    let y = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(B::float_reshape(
        y,
        [rows, last].into(),
    )));
    let grad = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(B::float_reshape(
        grad,
        [rows, last].into(),
    )));
    let dot = (grad.clone() * y.clone()).sum_dim(1);
    B::float_reshape((y * (grad - dot)).into_primitive().tensor(), shape)
}

#[derive(Debug)]
struct SoftmaxBackward;

impl<B: LoraOps> Backward<B, 1> for SoftmaxBackward {
    /// The forward's output.
    type State = FloatTensor<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [parent] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(parent) = parent {
            grads.register::<B>(parent.id, B::softmax_last_backward(ops.state, grad));
        }
    }
}

/// The autodiff node: keeps the output `y` (needed by the backward anyway, so nothing extra is
/// held) and calls the inner backend's [`LoraOps::softmax_last_backward`].
pub(crate) fn autodiff_softmax<B: LoraOps, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    match SoftmaxBackward
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let y = B::softmax_last(x.primitive);
            prep.finish(y.clone(), y)
        }
        OpsKind::UnTracked(prep) => prep.finish(B::softmax_last(x.primitive)),
    }
}

/// The node of [`softmax_with_bias`]: the same backward as [`autodiff_softmax`], with `x` the only
/// parent (the bias is used as a constant).
pub(crate) fn autodiff_softmax_biased<B: LoraOps, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    bias: FloatTensor<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    let bias = bias.primitive;
    match SoftmaxBackward
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let y = B::softmax_last_biased(x.primitive, bias);
            prep.finish(y.clone(), y)
        }
        OpsKind::UnTracked(prep) => prep.finish(B::softmax_last_biased(x.primitive, bias)),
    }
}

/// Softmax of one row in place (the CPU fast path).
#[inline(always)]
pub(crate) fn softmax_row_f32(row: &mut [f32]) {
    use crate::simd::{exp, lane_max, lane_sum};
    // Three passes over a row that sits in L1: each loop is free of loop-carried float chains, so
    // `exp` runs a full vector of elements at a time.
    let max = lane_max(row);
    for v in row.iter_mut() {
        *v = exp(*v - max);
    }
    let inv = 1.0 / lane_sum(row);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// `dx = y (dy - Σ dy y)` for one row (the CPU fast path).
#[inline(always)]
pub(crate) fn softmax_backward_row_f32(dx: &mut [f32], y: &[f32], dy: &[f32]) {
    let dot = crate::simd::lane_dot(y, dy);
    for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(dy) {
        *dx = y * (g - dot);
    }
}
