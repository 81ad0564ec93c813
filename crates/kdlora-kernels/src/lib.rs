//! Fused CubeCL kernels for the LoRA adapter path, exposed as a Burn 0.21 backend extension.
//!
//! A LoRA layer computes `y = base_out + s * (x A^T) B^T` where `base_out = x W^T (+ bias)` comes from
//! the frozen base layer, `A` is `[r, in]`, `B` is `[out, r]` and `s = alpha / r`. Written with plain
//! ops that is two matmuls, a scalar multiply and an add, with a `[tokens, out]` temporary in between.
//! [`LoraOps`] computes it with two kernels that never materialise more than the `[tokens, r]`
//! intermediate: a down-projection built for small `r`, and an up-projection that applies the scaling
//! and adds into `base_out` in place. The backward (`dx`, `dA`, `dB`, `d base_out`) is hand-written and
//! reuses the same kernels plus a token-reduction kernel for the weight gradients.
//!
//! Implementations:
//! - [`CubeBackend<R, F, I, BT>`](burn_cubecl::CubeBackend): the kernels, for every CubeCL runtime
//!   (wgpu/Vulkan/Metal, CUDA). They read `F` (f32, f16, bf16) and accumulate in f32.
//! - [`Fusion<B>`](burn_fusion::Fusion) (what `burn::backend::Wgpu` and `Cuda` are with burn's
//!   `fusion` feature): each adapter op is registered in the fusion stream as a custom operation that
//!   runs the `CubeBackend` kernel. Burn's fuser does not look inside custom operations, so the
//!   elementwise ops around them are fused as usual but not into them.
//! - [`Autodiff<B, C>`](burn::backend::Autodiff): custom backward (one graph node for the whole
//!   adapter, compute bound; `x`, `A`, `B` checkpointed, `h = x A^T` kept as state).
//! - [`Flex`](burn::backend::Flex) and [`NdArray`](burn::backend::NdArray), the CPU backends: the
//!   plain-tensor [`reference`](mod@reference).
//!
//! The fused path can be turned off at run time with [`set_fused_enabled`] or the environment variable
//! `KDLORA_FUSED_ADAPTER=0`; [`lora_delta_add`] then uses the reference ops on every backend.
//!
//! Encoder hot path: the same trait also carries the exact GELU ([`gelu`]), softmax over the last
//! dimension ([`softmax`], [`softmax_with_bias`]) and dropout masks ([`Dropout`]), each one autodiff
//! node with a closed-form backward, and single multi-threaded vectorised passes on the CPU backends
//! (see the crate README for the profile that motivated them); matrix products ([`matmul`],
//! [`linear`]: on `Flex` written by `gemm` straight into a fresh buffer, and one product for a shared
//! weight's gradient) and the attention head swap ([`swap_middle_dims`]: a parallel copy on the CPU).
//! Other backends use Burn's ops for the forward.
//!
//! Dropout: LoRA's dropout acts on the adapter input only (`B A dropout(x)`). Apply it to `x` before
//! calling [`lora_delta_add`] and pass the base output computed from the undropped `x`; the result
//! equals the reference with the same mask (tested).
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::tensor::{Tensor, Tolerance};
//! use kdlora_kernels::{lora_delta_add, reference::lora_delta_add_reference};
//!
//! type B = NdArray<f32>;
//! let device = Default::default();
//! // batch 2, sequence 3, in 4, out 5, rank 2
//! let x = Tensor::<B, 3>::ones([2, 3, 4], &device);
//! let base = Tensor::<B, 3>::zeros([2, 3, 5], &device);
//! let a = Tensor::<B, 2>::full([2, 4], 0.5, &device);
//! let b = Tensor::<B, 2>::full([5, 2], 0.25, &device);
//! let y = lora_delta_add(x.clone(), base.clone(), a.clone(), b.clone(), 2.0);
//! // every entry: 2 * (2 ranks * 0.25 * (4 * 0.5)) = 2
//! y.to_data().assert_approx_eq::<f32>(
//!     &Tensor::<B, 3>::full([2, 3, 5], 2.0, &device).to_data(),
//!     Tolerance::default(),
//! );
//! let r = lora_delta_add_reference(x, base, a, b, 2.0);
//! y.to_data().assert_approx_eq::<f32>(&r.to_data(), Tolerance::default());
//! ```

mod autodiff;
#[cfg(feature = "candle")]
mod candle;
mod cpu;
mod cube;
mod dropout;
mod flex;
mod fusion;
mod gelu;
mod heads;
pub mod kernels;
mod matmul;
mod ndarray;
pub mod reference;
mod simd;
mod softmax;

use std::sync::atomic::{AtomicU8, Ordering};

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Shape, Tensor, TensorMetadata, TensorPrimitive, ops::FloatTensor};

pub use dropout::{Dropout, dropout, dropout_mask_reference};
pub use gelu::{gelu, gelu_backward_reference, gelu_reference};
pub use heads::swap_middle_dims;
pub use matmul::{linear, matmul};
pub use softmax::{softmax, softmax_backward_reference, softmax_with_bias};

/// Errors of the checked entry point [`try_lora_delta_add`].
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum KernelError {
    /// Two operands disagree on a dimension.
    #[error("LoRA adapter shape mismatch: {what} (x {x:?}, base_out {base:?}, A {a:?}, B {b:?})")]
    ShapeMismatch {
        /// Which dimension disagrees.
        what: &'static str,
        /// Shape of `x`.
        x: Vec<usize>,
        /// Shape of `base_out`.
        base: Vec<usize>,
        /// Shape of `A`.
        a: Vec<usize>,
        /// Shape of `B`.
        b: Vec<usize>,
    },
    /// The scaling factor is NaN or infinite.
    #[error("LoRA scaling must be finite, got {0}")]
    NonFiniteScaling(f32),
}

/// Which gradients [`LoraOps::lora_backward`] should compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LoraGradRequest {
    /// The adapter's contribution to the input gradient, `s (dY B) A`.
    pub x: bool,
    /// `dA = s (dY B)^T x`.
    pub a: bool,
    /// `dB = s dY^T (x A^T)`.
    pub b: bool,
}

impl LoraGradRequest {
    /// All three gradients.
    pub const ALL: Self = Self {
        x: true,
        a: true,
        b: true,
    };
}

/// Gradients of the adapter op; a field is `None` when it was not requested.
#[derive(Debug, Clone)]
pub struct LoraGrads<T> {
    /// Adapter part of the input gradient, `[tokens, in]`.
    pub x: Option<T>,
    /// Gradient of `A`, `[r, in]`.
    pub a: Option<T>,
    /// Gradient of `B`, `[out, r]`.
    pub b: Option<T>,
}

impl<T> LoraGrads<T> {
    /// No gradient computed.
    pub fn none() -> Self {
        Self {
            x: None,
            a: None,
            b: None,
        }
    }

    /// Applies `f` to every present gradient.
    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> LoraGrads<U> {
        LoraGrads {
            x: self.x.map(&mut f),
            a: self.a.map(&mut f),
            b: self.b.map(&mut f),
        }
    }
}

/// Backend extension with the LoRA adapter ops. All tensors are 2-D: `x` `[tokens, in]`, `A` `[r, in]`,
/// `B` `[out, r]`, `base_out` and the output gradient `[tokens, out]`.
///
/// Shapes are preconditions, as for Burn's own ops: a mismatch panics (the kernels check them on the
/// host before launching; the reference panics inside matmul). Use [`try_lora_delta_add`] for a
/// checked entry point. Every method has a default built from ordinary Burn ops (the
/// [`reference`](mod@reference)), which is what the CPU backends use; the CubeCL backends override them
/// with kernels.
pub trait LoraOps: Backend {
    /// `h = x A^T`, `[tokens, r]`.
    fn lora_down(x: FloatTensor<Self>, a: FloatTensor<Self>) -> FloatTensor<Self> {
        reference::lora_down_reference(float::<Self>(x), float::<Self>(a))
            .into_primitive()
            .tensor()
    }

    /// `base + scaling * h B^T`, `[tokens, out]`. May reuse `base`'s buffer.
    fn lora_up_add(
        h: FloatTensor<Self>,
        b: FloatTensor<Self>,
        base: FloatTensor<Self>,
        scaling: f32,
    ) -> FloatTensor<Self> {
        reference::lora_up_add_reference(
            float::<Self>(h),
            float::<Self>(b),
            float::<Self>(base),
            scaling,
        )
        .into_primitive()
        .tensor()
    }

    /// Bytes of device memory this backend's allocator holds on `device` (CubeCL's reserved memory
    /// pools, which grow to the run's peak working set and are not returned while the process
    /// lives), after the queued work has run; `None` for host backends (Flex, NdArray).
    ///
    /// Not an adapter op: it lives here because this trait is the one backend extension the models
    /// and the training code are already generic over.
    fn device_memory_reserved(_device: &Self::Device) -> Option<u64> {
        None
    }

    /// Exact (erf) GELU `x Φ(x)`, any shape; see [`gelu`]. Default: Burn's `gelu` (exact on every
    /// backend but candle, which overrides this with [`gelu_reference`]). Under autodiff one
    /// graph node whose backward is [`exact_gelu_backward`](LoraOps::exact_gelu_backward).
    ///
    /// Not an adapter op either: the encoder's hot element-wise ops live here so the models stay
    /// generic over one backend extension. `Flex` and `NdArray` override them with multi-threaded
    /// vectorised loops.
    fn exact_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as burn::tensor::ops::ActivationOps<Self>>::gelu(x)
    }

    /// `grad (Φ(x) + x φ(x))`: the exact GELU derivative (Burn's own `gelu_backward` is the tanh
    /// approximation's). Default: [`gelu_backward_reference`].
    fn exact_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        gelu_backward_reference::<Self>(x, grad)
    }

    /// Softmax over the last dimension; see [`softmax`]. Default: Burn's `softmax`. Under autodiff one
    /// graph node whose backward is [`softmax_last_backward`](LoraOps::softmax_last_backward).
    fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let dim = x.shape().num_dims() - 1;
        <Self as burn::tensor::ops::ActivationOps<Self>>::softmax(x, dim)
    }

    /// `softmax(x + bias)` over the last dimension, `bias` broadcast to `x`'s shape (the attention
    /// mask bias `[batch, 1, 1, keys]` on the scores `[batch, heads, queries, keys]`); see
    /// [`softmax_with_bias`]. `bias` is a constant: no gradient flows to it. Default: Burn's
    /// broadcasting add, then [`softmax_last`](LoraOps::softmax_last). Under autodiff one graph node
    /// with the softmax backward.
    fn softmax_last_biased(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::softmax_last(<Self as burn::tensor::ops::FloatTensorOps<Self>>::float_add(x, bias))
    }

    /// `y (dy - Σ_last dy y)` from the softmax output `y` and the output gradient `dy`. Default:
    /// [`softmax_backward_reference`].
    fn softmax_last_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        softmax_backward_reference::<Self>(y, grad)
    }

    /// `lhs @ rhs` over the last two dimensions, `rhs`'s batch dimensions equal to `lhs`'s or all 1;
    /// see [`matmul`]. Default: Burn's matmul. `Flex` calls `gemm` into an uninitialised output.
    /// Under autodiff one graph node; a shared `rhs` (a weight) gets its gradient from one product
    /// over all batch rows.
    fn matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        matmul::matmul_reference::<Self>(lhs, rhs)
    }

    /// `[a, b, c, d]` -> `[a, c, b, d]`: the values of `swap_dims(1, 2)`; see [`swap_middle_dims`].
    /// Default: Burn's `swap_dims` (a strided view). The CPU backends write a new contiguous tensor,
    /// whole rows at a time on every core. Under autodiff one graph node whose backward swaps the
    /// gradient back.
    fn swap_middle_dims(x: FloatTensor<Self>) -> FloatTensor<Self> {
        heads::swap_middle_dims_reference::<Self>(x)
    }

    /// An inverted-dropout mask of `shape`: `1 / keep` with probability `keep`, else 0, drawn from the
    /// backend's seeded RNG (so [`Backend::seed`] makes it reproducible). Default:
    /// [`dropout_mask_reference`]; see [`dropout`].
    fn dropout_mask(shape: Shape, keep: f64, device: &Self::Device) -> FloatTensor<Self> {
        dropout_mask_reference::<Self>(shape, keep, device)
    }

    /// The adapter forward `base_out + scaling * (x A^T) B^T`, `[tokens, out]`.
    fn lora_forward(
        x: FloatTensor<Self>,
        base_out: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        scaling: f32,
    ) -> FloatTensor<Self> {
        let h = Self::lora_down(x, a);
        Self::lora_up_add(h, b, base_out, scaling)
    }

    /// The adapter backward for the `wanted` gradients; `h = x A^T` from the forward when available.
    /// `d base_out` is `grad_out` itself and is left to the caller.
    fn lora_backward(
        x: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        h: Option<FloatTensor<Self>>,
        grad_out: FloatTensor<Self>,
        scaling: f32,
        wanted: LoraGradRequest,
    ) -> LoraGrads<FloatTensor<Self>> {
        reference::lora_backward_reference(
            float::<Self>(x),
            float::<Self>(a),
            float::<Self>(b),
            h.map(float::<Self>),
            float::<Self>(grad_out),
            scaling,
            wanted,
        )
        .map(|t| t.into_primitive().tensor())
    }
}

/// An autodiff backend whose inner backend has the adapter ops as well: what training code is generic
/// over (the model trains on `B` and evaluates on `B::InnerBackend` after `valid()`). Implemented for
/// every such backend; never implement it by hand.
pub trait AutodiffLoraOps: AutodiffBackend<InnerBackend: LoraOps> + LoraOps {}

impl<B> AutodiffLoraOps for B
where
    B: AutodiffBackend + LoraOps,
    B::InnerBackend: LoraOps,
{
}

fn float<B: Backend>(t: FloatTensor<B>) -> Tensor<B, 2> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

const FUSED_UNSET: u8 = 0;
const FUSED_ON: u8 = 1;
const FUSED_OFF: u8 = 2;
static FUSED: AtomicU8 = AtomicU8::new(FUSED_UNSET);

/// Environment variable read (once) when [`set_fused_enabled`] was never called: `0`, `false`, `off`
/// or `no` turn the fused path off.
pub const FUSED_ENV: &str = "KDLORA_FUSED_ADAPTER";

/// Turns the fused adapter path on or off for the whole process. When off, [`lora_delta_add`]
/// computes the adapter with the [`reference`](mod@reference) ops (and Burn's autodiff of them) on
/// every backend.
pub fn set_fused_enabled(enabled: bool) {
    FUSED.store(
        if enabled { FUSED_ON } else { FUSED_OFF },
        Ordering::Relaxed,
    );
}

/// Whether [`lora_delta_add`] uses [`LoraOps::lora_forward`] (default: yes, unless [`FUSED_ENV`] says
/// otherwise).
pub fn fused_enabled() -> bool {
    match FUSED.load(Ordering::Relaxed) {
        FUSED_ON => true,
        FUSED_OFF => false,
        _ => {
            let on = std::env::var(FUSED_ENV)
                .map(|v| {
                    !matches!(
                        v.trim().to_ascii_lowercase().as_str(),
                        "0" | "false" | "off" | "no"
                    )
                })
                .unwrap_or(true);
            // A concurrent explicit setting wins over the environment.
            let _ = FUSED.compare_exchange(
                FUSED_UNSET,
                if on { FUSED_ON } else { FUSED_OFF },
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            FUSED.load(Ordering::Relaxed) == FUSED_ON
        }
    }
}

/// Adds the LoRA delta to a base output: `base_out + scaling * (x A^T) B^T`.
///
/// `x` is `[..., in]`, `base_out` `[..., out]` with the same leading dimensions (flattened into tokens),
/// `a` is `[r, in]`, `b` is `[out, r]`. Apply adapter dropout to `x` before calling. Uses the fused
/// [`LoraOps`] path unless [`fused_enabled`] is false.
///
/// # Panics
/// On inconsistent shapes, like Burn's own matmul; [`try_lora_delta_add`] checks them instead.
pub fn lora_delta_add<B: LoraOps, const D: usize>(
    x: Tensor<B, D>,
    base_out: Tensor<B, D>,
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    scaling: f32,
) -> Tensor<B, D> {
    if !fused_enabled() {
        return reference::lora_delta_add_reference(x, base_out, a, b, scaling);
    }
    let out_dims = base_out.dims();
    let (x2, base2) = flatten_tokens(x, base_out);
    let y = B::lora_forward(
        x2.into_primitive().tensor(),
        base2.into_primitive().tensor(),
        a.into_primitive().tensor(),
        b.into_primitive().tensor(),
        scaling,
    );
    Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(y)).reshape(out_dims)
}

/// [`lora_delta_add`] with the shapes and the scaling checked first.
pub fn try_lora_delta_add<B: LoraOps, const D: usize>(
    x: Tensor<B, D>,
    base_out: Tensor<B, D>,
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    scaling: f32,
) -> Result<Tensor<B, D>, KernelError> {
    check_shapes(&x.dims(), &base_out.dims(), &a.dims(), &b.dims())?;
    if !scaling.is_finite() {
        return Err(KernelError::NonFiniteScaling(scaling));
    }
    Ok(lora_delta_add(x, base_out, a, b, scaling))
}

fn check_shapes(x: &[usize], base: &[usize], a: &[usize], b: &[usize]) -> Result<(), KernelError> {
    let err = |what| KernelError::ShapeMismatch {
        what,
        x: x.to_vec(),
        base: base.to_vec(),
        a: a.to_vec(),
        b: b.to_vec(),
    };
    let (Some((&d_in, x_lead)), Some((&d_out, base_lead))) = (x.split_last(), base.split_last())
    else {
        return Err(err("x and base_out need at least one dimension"));
    };
    if x_lead != base_lead {
        return Err(err("leading (token) dimensions of x and base_out differ"));
    }
    if a[1] != d_in {
        return Err(err("A must be [r, in] with in = last dimension of x"));
    }
    if b[0] != d_out {
        return Err(err(
            "B must be [out, r] with out = last dimension of base_out",
        ));
    }
    if a[0] != b[1] {
        return Err(err("rank of A (rows) and B (columns) differ"));
    }
    if a[0] == 0 {
        return Err(err("rank must be at least 1"));
    }
    Ok(())
}

/// Reshapes `[..., in]` and `[..., out]` into `[tokens, in]` and `[tokens, out]`.
pub(crate) fn flatten_tokens<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    base_out: Tensor<B, D>,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let xd = x.dims();
    let bd = base_out.dims();
    let tokens: usize = xd[..D - 1].iter().product();
    (
        x.reshape([tokens, xd[D - 1]]),
        base_out.reshape([tokens, bd[D - 1]]),
    )
}
