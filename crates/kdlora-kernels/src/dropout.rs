//! Dropout whose mask comes from [`LoraOps::dropout_mask`].
//!
//! Same semantics as `burn::nn::Dropout` (inverted dropout, identity when autodiff is off or
//! `prob = 0`), but the mask is drawn by the backend extension: `NdArray` fills it in parallel from a
//! counter-based generator seeded by the backend's own seeded RNG, instead of drawing one f64
//! Bernoulli sample per element from a ChaCha stream on one core (12 % of a CPU training step of the
//! student, measured with `perf`), and the `1 / keep` scaling is folded into the mask (one tensor pass
//! instead of two).

use burn::{
    module::Module,
    tensor::{Distribution, Shape, Tensor, TensorPrimitive, backend::Backend, ops::FloatTensor},
};

use crate::LoraOps;

/// Inverted dropout as a module (a constant: nothing to save or load), a drop-in replacement for
/// `burn::nn::Dropout` on backends with [`LoraOps`].
///
/// ```
/// use burn::backend::{Autodiff, NdArray};
/// use burn::tensor::Tensor;
/// use kdlora_kernels::Dropout;
///
/// type B = Autodiff<NdArray<f32>>;
/// let device = Default::default();
/// let x = Tensor::<B, 2>::ones([64, 64], &device);
/// let y: Vec<f32> = Dropout::new(0.25).forward(x).into_data().to_vec().unwrap();
/// // Every entry is dropped (0) or scaled by 1 / 0.75.
/// assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
/// ```
#[derive(Module, Clone, Debug)]
pub struct Dropout {
    /// Probability of zeroing an element during training.
    pub prob: f64,
}

impl Dropout {
    /// A dropout layer; `prob` is clamped into `[0, 1]` (configs are validated where they are read).
    pub fn new(prob: f64) -> Self {
        Self {
            prob: if prob.is_nan() {
                0.0
            } else {
                prob.clamp(0.0, 1.0)
            },
        }
    }

    /// Applies dropout when the backend records gradients (training); the identity otherwise.
    pub fn forward<B: LoraOps, const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        dropout(x, self.prob)
    }
}

/// Inverted dropout: each element is zeroed with probability `prob` and the others are scaled by
/// `1 / (1 - prob)`; the identity when `prob = 0` or the backend does not record gradients.
pub fn dropout<B: LoraOps, const D: usize>(x: Tensor<B, D>, prob: f64) -> Tensor<B, D> {
    if prob <= 0.0 || !B::ad_enabled(&x.device()) {
        return x;
    }
    if prob >= 1.0 {
        return x.zeros_like();
    }
    let mask = B::dropout_mask(x.shape(), 1.0 - prob, &x.device());
    x * Tensor::from_primitive(TensorPrimitive::Float(mask))
}

/// The default [`LoraOps::dropout_mask`]: Burn's Bernoulli sampling, then the `1 / keep` scaling.
pub fn dropout_mask_reference<B: Backend>(
    shape: Shape,
    keep: f64,
    device: &B::Device,
) -> FloatTensor<B> {
    let n = shape.num_elements();
    let mask = Tensor::<B, 1>::random([n], Distribution::Bernoulli(keep), device).div_scalar(keep);
    B::float_reshape(mask.into_primitive().tensor(), shape)
}

/// `splitmix64`'s output function: the `index`-th value of the stream that starts at `seed`. A
/// counter-based generator, so any split of the mask across threads draws the same values.
#[inline(always)]
pub(crate) fn splitmix64(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Keep threshold on 32-bit draws: an element is kept when its draw is below it.
#[inline]
pub(crate) fn keep_threshold(keep: f64) -> u64 {
    (keep * (1u64 << 32) as f64).round() as u64
}
