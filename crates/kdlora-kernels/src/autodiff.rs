//! `LoraOps` for `Autodiff<B, C>`: the whole adapter is one graph node with a hand-written backward
//! that calls the inner backend's `lora_backward` (kernels on CubeCL backends).

use burn::{
    backend::autodiff::{
        Autodiff, NodeId,
        checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
        grads::Gradients,
        ops::{Backward, Ops, OpsKind},
    },
    tensor::{Shape, backend::AutodiffBackend, ops::FloatTensor},
};

use crate::{LoraGradRequest, LoraOps};

#[derive(Debug)]
struct LoraForwardBackward;

/// Checkpointed `x`, `A`, `B`, the forward's `h = x A^T` (small, and costly to recompute relative to
/// its size) and the scaling.
type State<B> = (NodeId, NodeId, NodeId, FloatTensor<B>, f32);

impl<B: LoraOps> Backward<B, 4> for LoraForwardBackward {
    type State = State<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 4>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_base, node_a, node_b] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_id, a_id, b_id, h, scaling) = ops.state;
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_id);
        let a: FloatTensor<B> = checkpointer.retrieve_node_output(a_id);
        let b: FloatTensor<B> = checkpointer.retrieve_node_output(b_id);

        let wanted = LoraGradRequest {
            x: node_x.is_some(),
            a: node_a.is_some(),
            b: node_b.is_some(),
        };
        let computed = if wanted.x || wanted.a || wanted.b {
            Some(B::lora_backward(
                x,
                a,
                b,
                Some(h),
                grad.clone(),
                scaling,
                wanted,
            ))
        } else {
            None
        };

        // The output is `base + delta`, so base's gradient is the output gradient unchanged.
        if let Some(node) = node_base {
            grads.register::<B>(node.id, grad);
        }
        if let Some(computed) = computed {
            if let (Some(node), Some(g)) = (node_x, computed.x) {
                grads.register::<B>(node.id, g);
            }
            if let (Some(node), Some(g)) = (node_a, computed.a) {
                grads.register::<B>(node.id, g);
            }
            if let (Some(node), Some(g)) = (node_b, computed.b) {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

impl<B: LoraOps, C: CheckpointStrategy> LoraOps for Autodiff<B, C> {
    fn device_memory_reserved(device: &Self::Device) -> Option<u64> {
        B::device_memory_reserved(device)
    }

    fn exact_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::gelu::autodiff_gelu::<B, C>(x)
    }

    fn exact_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        // Only reached when someone differentiates through the backward itself (not done here):
        // the plain ops keep that correct.
        crate::gelu_backward_reference::<Self>(x, grad)
    }

    fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::softmax::autodiff_softmax::<B, C>(x)
    }

    fn softmax_last_biased(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::softmax::autodiff_softmax_biased::<B, C>(x, bias)
    }

    fn softmax_last_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::softmax_backward_reference::<Self>(y, grad)
    }

    fn matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::matmul::autodiff_matmul::<B, C>(lhs, rhs)
    }

    fn swap_middle_dims(x: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::heads::autodiff_swap_middle_dims::<B, C>(x)
    }

    fn dropout_mask(shape: Shape, keep: f64, device: &Self::Device) -> FloatTensor<Self> {
        // A constant of the graph: drawn on the inner backend, never tracked.
        <Self as AutodiffBackend>::from_inner(B::dropout_mask(shape, keep, device))
    }

    fn lora_forward(
        x: FloatTensor<Self>,
        base_out: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        scaling: f32,
    ) -> FloatTensor<Self> {
        match LoraForwardBackward
            .prepare::<C>([
                x.node.clone(),
                base_out.node.clone(),
                a.node.clone(),
                b.node.clone(),
            ])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_id = prep.checkpoint(&x);
                let a_id = prep.checkpoint(&a);
                let b_id = prep.checkpoint(&b);
                let h = B::lora_down(x.primitive, a.primitive);
                let out = B::lora_up_add(h.clone(), b.primitive, base_out.primitive, scaling);
                prep.finish((x_id, a_id, b_id, h, scaling), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::lora_forward(
                x.primitive,
                base_out.primitive,
                a.primitive,
                b.primitive,
                scaling,
            )),
        }
    }
}
