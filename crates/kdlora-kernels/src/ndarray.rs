//! `LoraOps` for the CPU backend: the plain-tensor [`crate::reference`] for the adapter, and
//! multi-threaded single-pass loops for the encoder's exact GELU (forward and backward) and dropout
//! masks on f32 tensors.
//!
//! Why: with burn-ndarray's matmuls on every core, a profile of the student's training step showed
//! the serial element-wise work dominating: GELU's backward alone is about twelve tensor passes on
//! one core (with `tanh`, `powf` and `expm1` per element), and every dropout mask is one f64
//! Bernoulli draw per element from a ChaCha stream. Here each is one `rayon` pass.

use burn::{
    backend::{
        NdArray,
        ndarray::{
            FloatNdArrayElement, IntNdArrayElement, NdArrayTensor, QuantElement, SharedArray,
        },
    },
    tensor::{Distribution, Shape, Tensor, TensorMetadata, ops::FloatTensor},
};
use ndarray::{ArcArray, ArrayViewD, IxDyn};
use rayon::prelude::*;

use crate::{
    LoraOps,
    dropout::{keep_threshold, splitmix64},
    gelu::{gelu_f32, gelu_grad_f32},
    softmax::{softmax_backward_row_f32, softmax_row_f32},
};

/// Elements per parallel task: large enough to amortise scheduling, small enough to balance.
const CHUNK: usize = 16 * 1024;

impl<E, I, Q> LoraOps for NdArray<E, I, Q>
where
    E: FloatNdArrayElement,
    I: IntNdArrayElement,
    Q: QuantElement,
    NdArrayTensor: From<SharedArray<E>>,
    NdArrayTensor: From<SharedArray<I>>,
{
    fn exact_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match x {
            NdArrayTensor::F32(storage) => {
                let view = storage.view();
                let shape = view.shape().to_vec();
                let x = view.as_standard_layout();
                let x = x.as_slice().expect("standard layout is contiguous");
                let mut out = vec![0f32; x.len()];
                out.par_chunks_mut(CHUNK)
                    .zip(x.par_chunks(CHUNK))
                    .for_each(|(o, x)| {
                        for (o, &x) in o.iter_mut().zip(x) {
                            *o = gelu_f32(x);
                        }
                    });
                f32_tensor(shape, out)
            }
            other => <Self as burn::tensor::ops::ActivationOps<Self>>::gelu(other),
        }
    }

    fn exact_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        match (x, grad) {
            (NdArrayTensor::F32(x), NdArrayTensor::F32(grad)) if x.shape() == grad.shape() => {
                let shape = x.shape().to_vec();
                let out = zip_map_f32(x.view(), grad.view(), CHUNK, |o, x, g| {
                    for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
                        *o = g * gelu_grad_f32(x);
                    }
                });
                f32_tensor(shape, out)
            }
            (x, grad) => crate::gelu_backward_reference::<Self>(x, grad),
        }
    }

    fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match x {
            NdArrayTensor::F32(storage) => {
                let view = storage.view();
                let shape = view.shape().to_vec();
                let last = shape.last().copied().unwrap_or(1).max(1);
                let mut out = view
                    .as_standard_layout()
                    .into_owned()
                    .into_raw_vec_and_offset()
                    .0;
                out.par_chunks_mut(rows_per_task(last) * last)
                    .for_each(|rows| rows.chunks_mut(last).for_each(softmax_row_f32));
                f32_tensor(shape, out)
            }
            other => {
                let dim = other.shape().num_dims() - 1;
                <Self as burn::tensor::ops::ActivationOps<Self>>::softmax(other, dim)
            }
        }
    }

    fn softmax_last_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        match (y, grad) {
            (NdArrayTensor::F32(y), NdArrayTensor::F32(grad)) if y.shape() == grad.shape() => {
                let shape = y.shape().to_vec();
                let last = shape.last().copied().unwrap_or(1).max(1);
                let out = zip_map_f32(
                    y.view(),
                    grad.view(),
                    rows_per_task(last) * last,
                    |o, y, g| {
                        for ((o, y), g) in
                            o.chunks_mut(last).zip(y.chunks(last)).zip(g.chunks(last))
                        {
                            softmax_backward_row_f32(o, y, g);
                        }
                    },
                );
                f32_tensor(shape, out)
            }
            (y, grad) => crate::softmax_backward_reference::<Self>(y, grad),
        }
    }

    fn dropout_mask(shape: Shape, keep: f64, device: &Self::Device) -> FloatTensor<Self> {
        if E::dtype() != burn::tensor::DType::F32 {
            return crate::dropout_mask_reference::<Self>(shape, keep, device);
        }
        // Three uniform draws from the backend's (seeded) RNG make the generator's seed, so
        // `NdArray::seed` governs these masks exactly as it governs Burn's own dropout.
        let draws = Tensor::<Self, 1>::random([3], Distribution::Default, device).into_data();
        let seed = draws.iter::<f64>().fold(0u64, |acc, u| {
            (acc << 24) ^ ((u * (1u64 << 24) as f64) as u64)
        });
        let threshold = keep_threshold(keep);
        let scale = (1.0 / keep) as f32;
        let draw = |bits: u64| if bits < threshold { scale } else { 0.0 };
        let mut out = vec![0f32; shape.num_elements()];
        // Each 64-bit value decides two neighbouring elements (its low and high 32 bits); CHUNK is
        // even, so every task starts on a pair boundary.
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(chunk, o)| {
                let first_pair = (chunk * CHUNK / 2) as u64;
                for (j, pair) in o.chunks_mut(2).enumerate() {
                    let bits = splitmix64(seed, first_pair + j as u64);
                    pair[0] = draw(bits & 0xffff_ffff);
                    if let Some(second) = pair.get_mut(1) {
                        *second = draw(bits >> 32);
                    }
                }
            });
        f32_tensor(shape.to_vec(), out)
    }
}

/// `f(out, a, b)` on matching `step`-element pieces of the row-major contents of two same-shape
/// arrays, pieces spread over threads; returns `out`.
fn zip_map_f32(
    a: ArrayViewD<'_, f32>,
    b: ArrayViewD<'_, f32>,
    step: usize,
    f: impl Fn(&mut [f32], &[f32], &[f32]) + Sync,
) -> Vec<f32> {
    let a = a.as_standard_layout();
    let a = a.as_slice().expect("standard layout is contiguous");
    let b = b.as_standard_layout();
    let b = b.as_slice().expect("standard layout is contiguous");
    let mut out = vec![0f32; a.len()];
    out.par_chunks_mut(step)
        .zip(a.par_chunks(step).zip(b.par_chunks(step)))
        .for_each(|(o, (a, b))| f(o, a, b));
    out
}

/// Whole rows per parallel task, about [`CHUNK`] elements.
fn rows_per_task(row_len: usize) -> usize {
    (CHUNK / row_len).max(1)
}

fn f32_tensor(shape: Vec<usize>, data: Vec<f32>) -> NdArrayTensor {
    let array = ArcArray::from_shape_vec(IxDyn(&shape), data)
        .expect("output length equals the product of the shape");
    NdArrayTensor::from(array)
}
