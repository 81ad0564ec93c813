//! Plain-tensor reference of the adapter path, built from ordinary Burn ops only.
//!
//! This is what the `NdArray` implementation of [`LoraOps`](crate::LoraOps) runs, what the fused path
//! falls back to when [`set_fused_enabled(false)`](crate::set_fused_enabled) is in effect, and what the
//! tests compare the kernels against. With `s = scaling`, `h = x A^T` and `g = dY B`:
//!
//! | quantity            | formula           | shape          |
//! |---------------------|-------------------|----------------|
//! | forward             | `base + s h B^T`  | `[tokens, out]`|
//! | `dx` (adapter part) | `s g A`           | `[tokens, in]` |
//! | `dA`                | `s g^T x`         | `[r, in]`      |
//! | `dB`                | `s dY^T h`        | `[out, r]`     |
//! | `d base`            | `dY`              | `[tokens, out]`|

use burn::tensor::{Tensor, backend::Backend};

use crate::{LoraGradRequest, LoraGrads};

/// Down-projection `h = x A^T`: `x` is `[tokens, in]`, `a` is `[r, in]`, the result `[tokens, r]`.
pub fn lora_down_reference<B: Backend>(x: Tensor<B, 2>, a: Tensor<B, 2>) -> Tensor<B, 2> {
    x.matmul(a.transpose())
}

/// `base + scaling * h B^T`: `h` is `[tokens, r]`, `b` is `[out, r]`, `base` is `[tokens, out]`.
pub fn lora_up_add_reference<B: Backend>(
    h: Tensor<B, 2>,
    b: Tensor<B, 2>,
    base: Tensor<B, 2>,
    scaling: f32,
) -> Tensor<B, 2> {
    base + h.matmul(b.transpose()).mul_scalar(scaling)
}

/// The adapter forward `base_out + scaling * (x A^T) B^T` on `[tokens, features]` matrices.
pub fn lora_forward_reference<B: Backend>(
    x: Tensor<B, 2>,
    base_out: Tensor<B, 2>,
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    scaling: f32,
) -> Tensor<B, 2> {
    lora_up_add_reference(lora_down_reference(x, a), b, base_out, scaling)
}

/// The adapter backward: gradients of `x`, `A` and `B` (only those `wanted`) given the output
/// gradient `grad_out` (`[tokens, out]`). `h = x A^T` is recomputed when not given. The gradient of
/// `base_out` is `grad_out` itself and is not returned.
pub fn lora_backward_reference<B: Backend>(
    x: Tensor<B, 2>,
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    h: Option<Tensor<B, 2>>,
    grad_out: Tensor<B, 2>,
    scaling: f32,
    wanted: LoraGradRequest,
) -> LoraGrads<Tensor<B, 2>> {
    let mut grads = LoraGrads::none();
    if wanted.x || wanted.a {
        // Scaling folded into g once, so dx and dA need no further scalar pass.
        let g = grad_out.clone().matmul(b.clone()).mul_scalar(scaling);
        if wanted.x {
            grads.x = Some(g.clone().matmul(a.clone()));
        }
        if wanted.a {
            grads.a = Some(g.transpose().matmul(x.clone()));
        }
    }
    if wanted.b {
        let h = h.unwrap_or_else(|| lora_down_reference(x, a));
        grads.b = Some(grad_out.transpose().matmul(h).mul_scalar(scaling));
    }
    grads
}

/// N-dimensional version of [`lora_forward_reference`]: `x` is `[..., in]`, `base_out` is `[..., out]`
/// with the same leading dimensions. Shapes are not checked here; see
/// [`try_lora_delta_add`](crate::try_lora_delta_add) for the checked entry point.
pub fn lora_delta_add_reference<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    base_out: Tensor<B, D>,
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    scaling: f32,
) -> Tensor<B, D> {
    let out_dims = base_out.dims();
    let (x2, base2) = crate::flatten_tokens(x, base_out);
    lora_forward_reference(x2, base2, a, b, scaling).reshape(out_dims)
}
