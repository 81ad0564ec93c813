//! Swapping the two middle dimensions of a 4-D tensor into a new contiguous tensor: the move between
//! the `[batch, seq, heads, head_dim]` layout of the attention projections and the
//! `[batch, heads, seq, head_dim]` layout the attention matmuls work in, as one autodiff node.
//!
//! Why: Burn's `swap_dims` is a strided view, and the `reshape` after it (merging the heads back
//! into `[batch, seq, hidden]`, and the same in the backward for every projection) makes the CPU
//! backends copy element by element on one thread while the other cores wait. Here the copy moves
//! whole `head_dim` rows, spread over threads, and the backward is the same swap of the gradient.

use burn::{
    backend::autodiff::{
        Autodiff,
        checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
        grads::Gradients,
        ops::{Backward, Ops},
    },
    tensor::{Tensor, TensorPrimitive, backend::Backend, ops::FloatTensor},
};

use crate::LoraOps;

/// `[a, b, c, d]` -> `[a, c, b, d]` through [`LoraOps::swap_middle_dims`]: values as
/// `x.swap_dims(1, 2)`, stored contiguously on the CPU backends.
///
/// ```
/// use burn::backend::NdArray;
/// use burn::tensor::Tensor;
///
/// let device = Default::default();
/// let x = Tensor::<NdArray<f32>, 4>::from_floats([[[[1.0], [2.0]], [[3.0], [4.0]]]], &device);
/// let y: Vec<f32> = kdlora_kernels::swap_middle_dims(x).into_data().to_vec().unwrap();
/// assert_eq!(y, [1.0, 3.0, 2.0, 4.0]);
/// ```
pub fn swap_middle_dims<B: LoraOps>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    Tensor::from_primitive(TensorPrimitive::Float(B::swap_middle_dims(
        x.into_primitive().tensor(),
    )))
}

/// The default of [`LoraOps::swap_middle_dims`]: Burn's (lazy) `swap_dims`.
pub(crate) fn swap_middle_dims_reference<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    B::float_swap_dims(x, 1, 2)
}

#[derive(Debug)]
struct SwapMiddleBackward;

impl<B: LoraOps> Backward<B, 1> for SwapMiddleBackward {
    type State = ();

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [parent] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(parent) = parent {
            // The swap is its own inverse.
            grads.register::<B>(parent.id, B::swap_middle_dims(grad));
        }
    }
}

/// The autodiff node: stateless (the backward needs nothing from the forward). Marked compute
/// bound only so that checkpointing never re-runs it; the copy is cheap either way.
pub(crate) fn autodiff_swap_middle_dims<B: LoraOps, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    let prep = SwapMiddleBackward
        .prepare::<C>([x.node.clone()])
        .compute_bound();
    prep.stateless(B::swap_middle_dims(x.primitive))
}
