//! Matrix products and linear layers as kdlora ops: one autodiff node each, and on the `Flex` CPU
//! backend `gemm` calls that write straight into a fresh output buffer.
//!
//! Why, from profiles of the student's training and inference steps on Flex: every Flex matmul
//! allocates its output zero-filled and then copies it once more into an aligned buffer, both on the
//! calling thread while the other cores wait (about a tenth of all CPU samples of a step); and the
//! weight gradient of Burn's linear layer is a batched matmul with one `[d_input, d_output]` matrix
//! per sequence, summed afterwards (32x the gradient's memory at batch 32, at ~40 % of the flat
//! product's speed). Here the output is written by `gemm` directly (each page first touched by the
//! thread computing it), and a weight shared over the batch gets its gradient from a single product
//! over all tokens.

use burn::{
    backend::autodiff::{
        Autodiff,
        checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
        grads::Gradients,
        ops::{Backward, Ops, OpsKind},
    },
    tensor::{Shape, Tensor, TensorMetadata, TensorPrimitive, backend::Backend, ops::FloatTensor},
};

use crate::LoraOps;

/// `lhs @ rhs` over the last two dimensions through [`LoraOps::matmul`]; the batch dimensions of
/// `rhs` either equal those of `lhs` or are all 1 (one matrix shared by the whole batch, as a
/// linear layer's weight). Other broadcasts take Burn's matmul.
///
/// ```
/// use burn::backend::NdArray;
/// use burn::tensor::Tensor;
///
/// let device = Default::default();
/// let x = Tensor::<NdArray<f32>, 3>::from_floats([[[1.0, 2.0]], [[3.0, 4.0]]], &device);
/// let w = Tensor::<NdArray<f32>, 3>::from_floats([[[1.0], [10.0]]], &device);
/// let y: Vec<f32> = kdlora_kernels::matmul(x, w).into_data().to_vec().unwrap();
/// assert_eq!(y, [21.0, 43.0]);
/// ```
pub fn matmul<B: LoraOps, const D: usize>(lhs: Tensor<B, D>, rhs: Tensor<B, D>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::matmul(
        lhs.into_primitive().tensor(),
        rhs.into_primitive().tensor(),
    )))
}

/// `x @ weight + bias` for `x: [..., d_input]`, `weight: [d_input, d_output]` (Burn's layout) and
/// `bias: [d_output]`: what `burn::nn::Linear::forward` computes, through [`matmul`].
///
/// ```
/// use burn::backend::NdArray;
/// use burn::tensor::Tensor;
///
/// let device = Default::default();
/// let x = Tensor::<NdArray<f32>, 3>::from_floats([[[1.0, 2.0]]], &device);
/// let w = Tensor::<NdArray<f32>, 2>::from_floats([[1.0, 0.0], [0.0, 1.0]], &device);
/// let b = Tensor::<NdArray<f32>, 1>::from_floats([0.5, -0.5], &device);
/// let y: Vec<f32> = kdlora_kernels::linear(x, w, Some(b)).into_data().to_vec().unwrap();
/// assert_eq!(y, [1.5, 1.5]);
/// ```
pub fn linear<B: LoraOps, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    if D == 1 {
        // A single input vector: as a one-row matrix.
        let d_out = weight.dims()[1];
        return linear(x.unsqueeze::<2>(), weight, bias).reshape([d_out; D]);
    }
    let y = matmul(x, weight.unsqueeze::<D>());
    match bias {
        Some(bias) => y + bias.unsqueeze::<D>(),
        None => y,
    }
}

/// How `rhs`'s batch dimensions relate to `lhs`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Batching {
    /// Same batch dimensions: one product per batch entry.
    Paired,
    /// `rhs` has only size-1 batch dimensions: one matrix for every batch entry.
    SharedRhs,
}

/// The [`Batching`] of `lhs @ rhs`, `None` for shapes this module leaves to Burn (different ranks,
/// other broadcasts, mismatched inner dimensions).
pub(crate) fn batching(lhs: &Shape, rhs: &Shape) -> Option<Batching> {
    let rank = lhs.num_dims();
    if rank < 2 || rhs.num_dims() != rank || lhs[rank - 1] != rhs[rank - 2] {
        return None;
    }
    let (lb, rb) = (&lhs[..rank - 2], &rhs[..rank - 2]);
    if lb == rb {
        Some(Batching::Paired)
    } else if rb.iter().all(|&d| d == 1) {
        Some(Batching::SharedRhs)
    } else {
        None
    }
}

/// The default of [`LoraOps::matmul`]: Burn's matmul.
pub(crate) fn matmul_reference<B: Backend>(
    lhs: FloatTensor<B>,
    rhs: FloatTensor<B>,
) -> FloatTensor<B> {
    B::float_matmul(lhs, rhs)
}

/// `t` with its last two dimensions swapped (a view on every backend).
fn swap_last<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
    let rank = t.shape().num_dims();
    B::float_swap_dims(t, rank - 2, rank - 1)
}

/// The gradient of a shared `rhs` (`[1, .., 1, k, n]`): `Σ_batch lhs_b^T grad_b`, computed as one
/// product `lhs^T grad` over the batch-flattened rows (`[rows, k]` and `[rows, n]`).
fn shared_rhs_grad<B: LoraOps>(
    lhs: FloatTensor<B>,
    grad: FloatTensor<B>,
    rhs_shape: Shape,
) -> FloatTensor<B> {
    let (ls, gs) = (lhs.shape(), grad.shape());
    let rank = ls.num_dims();
    let (k, n) = (ls[rank - 1], gs[rank - 1]);
    let rows = ls.num_elements() / k.max(1);
    let lhs = B::float_reshape(lhs, [rows, k].into());
    let grad = B::float_reshape(grad, [rows, n].into());
    let out = B::matmul(swap_last::<B>(lhs), grad);
    B::float_reshape(out, rhs_shape)
}

#[derive(Debug)]
struct MatmulBackward;

/// `(lhs if rhs needs a gradient, rhs if lhs needs one, how they batch, rhs's shape)`.
type MatmulState<B> = (
    Option<FloatTensor<B>>,
    Option<FloatTensor<B>>,
    Batching,
    Shape,
);

impl<B: LoraOps> Backward<B, 2> for MatmulBackward {
    type State = MatmulState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [lhs_parent, rhs_parent] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (lhs, rhs, batching, rhs_shape) = ops.state;
        if let (Some(parent), Some(rhs)) = (lhs_parent, rhs) {
            // A shared rhs broadcasts in `matmul` itself: the lhs gradient keeps lhs's shape.
            grads.register::<B>(parent.id, B::matmul(grad.clone(), swap_last::<B>(rhs)));
        }
        if let (Some(parent), Some(lhs)) = (rhs_parent, lhs) {
            let rhs_grad = match batching {
                Batching::Paired => B::matmul(swap_last::<B>(lhs), grad),
                Batching::SharedRhs => shared_rhs_grad::<B>(lhs, grad, rhs_shape),
            };
            grads.register::<B>(parent.id, rhs_grad);
        }
    }
}

/// The autodiff node of [`matmul`]: keeps each operand only when the other one needs a gradient
/// (a frozen weight's input is not kept for a weight gradient nobody asked for).
pub(crate) fn autodiff_matmul<B: LoraOps, C: CheckpointStrategy>(
    lhs: FloatTensor<Autodiff<B, C>>,
    rhs: FloatTensor<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    let Some(batching) = batching(&lhs.primitive.shape(), &rhs.primitive.shape()) else {
        return <Autodiff<B, C> as burn::tensor::ops::FloatTensorOps<_>>::float_matmul(lhs, rhs);
    };
    let (lhs_tracked, rhs_tracked) = (lhs.is_tracked(), rhs.is_tracked());
    let rhs_shape = rhs.primitive.shape();
    match MatmulBackward
        .prepare::<C>([lhs.node.clone(), rhs.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let lhs_state = rhs_tracked.then(|| lhs.primitive.clone());
            let rhs_state = lhs_tracked.then(|| rhs.primitive.clone());
            let out = B::matmul(lhs.primitive, rhs.primitive);
            prep.finish((lhs_state, rhs_state, batching, rhs_shape), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(B::matmul(lhs.primitive, rhs.primitive)),
    }
}
