//! `LoraOps` for the `NdArray` CPU backend: the plain-tensor [`crate::reference`] for the adapter,
//! and the multi-threaded single-pass loops of [`crate::cpu`] for the encoder's exact GELU (forward
//! and backward), softmax and dropout masks on f32 tensors.
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
    tensor::{Shape, TensorMetadata, ops::FloatTensor},
};
use ndarray::{ArcArray, ArrayViewD, IxDyn};

use crate::{LoraOps, cpu};

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
            NdArrayTensor::F32(x) => {
                let x = x.view();
                let out = cpu::gelu(contiguous(&x).as_slice().expect("contiguous"));
                f32_tensor(x.shape().to_vec(), out)
            }
            other => <Self as burn::tensor::ops::ActivationOps<Self>>::gelu(other),
        }
    }

    fn exact_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        match (x, grad) {
            (NdArrayTensor::F32(x), NdArrayTensor::F32(grad)) if x.shape() == grad.shape() => {
                let (x, grad) = (x.view(), grad.view());
                let out = cpu::gelu_backward(
                    contiguous(&x).as_slice().expect("contiguous"),
                    contiguous(&grad).as_slice().expect("contiguous"),
                );
                f32_tensor(x.shape().to_vec(), out)
            }
            (x, grad) => crate::gelu_backward_reference::<Self>(x, grad),
        }
    }

    fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match x {
            NdArrayTensor::F32(x) => {
                let x = x.view();
                let shape = x.shape().to_vec();
                let out = cpu::softmax_rows(
                    contiguous(&x).as_slice().expect("contiguous"),
                    shape.last().copied().unwrap_or(1),
                );
                f32_tensor(shape, out)
            }
            other => {
                let dim = other.shape().num_dims() - 1;
                <Self as burn::tensor::ops::ActivationOps<Self>>::softmax(other, dim)
            }
        }
    }

    fn softmax_last_biased(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        let fast = match (&x, &bias) {
            (NdArrayTensor::F32(x), NdArrayTensor::F32(bias)) => {
                cpu::rows_per_bias_row(x.shape(), bias.shape()).map(|n| (x.view(), bias.view(), n))
            }
            _ => None,
        };
        let Some((x, bias, rows_per_bias)) = fast else {
            return Self::softmax_last(
                <Self as burn::tensor::ops::FloatTensorOps<Self>>::float_add(x, bias),
            );
        };
        let shape = x.shape().to_vec();
        let out = cpu::softmax_rows_biased(
            contiguous(&x).as_slice().expect("contiguous"),
            shape.last().copied().unwrap_or(1),
            contiguous(&bias).as_slice().expect("contiguous"),
            rows_per_bias,
        );
        f32_tensor(shape, out)
    }

    fn softmax_last_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        match (y, grad) {
            (NdArrayTensor::F32(y), NdArrayTensor::F32(grad)) if y.shape() == grad.shape() => {
                let (y, grad) = (y.view(), grad.view());
                let shape = y.shape().to_vec();
                let out = cpu::softmax_backward(
                    contiguous(&y).as_slice().expect("contiguous"),
                    contiguous(&grad).as_slice().expect("contiguous"),
                    shape.last().copied().unwrap_or(1),
                );
                f32_tensor(shape, out)
            }
            (y, grad) => crate::softmax_backward_reference::<Self>(y, grad),
        }
    }

    fn swap_middle_dims(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match x {
            NdArrayTensor::F32(x) if x.shape().len() == 4 => {
                let x = x.view();
                let s = x.shape();
                let dims = [s[0], s[1], s[2], s[3]];
                let out = cpu::swap_middle(contiguous(&x).as_slice().expect("contiguous"), dims);
                f32_tensor(vec![dims[0], dims[2], dims[1], dims[3]], out)
            }
            other => crate::heads::swap_middle_dims_reference::<Self>(other),
        }
    }

    fn dropout_mask(shape: Shape, keep: f64, device: &Self::Device) -> FloatTensor<Self> {
        if E::dtype() != burn::tensor::DType::F32 {
            return crate::dropout_mask_reference::<Self>(shape, keep, device);
        }
        let seed = cpu::mask_seed::<Self>(device);
        f32_tensor(
            shape.to_vec(),
            cpu::dropout_mask(shape.num_elements(), keep, seed),
        )
    }
}

/// The row-major contents of `view`, borrowed when already in that layout.
fn contiguous<'a>(view: &'a ArrayViewD<'_, f32>) -> ndarray::CowArray<'a, f32, IxDyn> {
    view.as_standard_layout()
}

fn f32_tensor(shape: Vec<usize>, data: Vec<f32>) -> NdArrayTensor {
    let array = ArcArray::from_shape_vec(IxDyn(&shape), data)
        .expect("output length equals the product of the shape");
    NdArrayTensor::from(array)
}
