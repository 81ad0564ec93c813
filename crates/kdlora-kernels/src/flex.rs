//! `LoraOps` for `Flex`, Burn 0.21's pure-Rust CPU backend (SIMD element-wise ops, `gemm` matmuls on
//! every core): the plain-tensor [`crate::reference`] for the adapter and the single-pass loops of
//! [`crate::cpu`] for the encoder's exact GELU, softmax and dropout masks on f32 tensors.
//!
//! Why: profiled on the student's KD-LoRA step, Flex with Burn's own ops spends about 15 % drawing
//! dropout masks (one f64 Bernoulli sample per element from ChaCha, on one core) and runs GELU's
//! backward as a dozen tensor passes.

use burn::{
    backend::{
        Flex,
        flex::{FlexTensor, Layout},
    },
    tensor::{
        Bytes, DType, Shape, TensorMetadata, get_device_settings,
        ops::{FloatTensor, FloatTensorOps},
    },
};

use crate::{LoraOps, cpu};

impl LoraOps for Flex {
    fn exact_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 {
            return <Self as burn::tensor::ops::ActivationOps<Self>>::gelu(x);
        }
        let x = contiguous(x);
        let out = cpu::gelu(f32s(&x));
        f32_tensor(x.shape(), out)
    }

    fn exact_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 || grad.dtype() != DType::F32 || x.shape() != grad.shape() {
            return crate::gelu_backward_reference::<Self>(x, grad);
        }
        let (x, grad) = (contiguous(x), contiguous(grad));
        let out = cpu::gelu_backward(f32s(&x), f32s(&grad));
        f32_tensor(x.shape(), out)
    }

    fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = x.shape();
        if x.dtype() != DType::F32 {
            let dim = shape.num_dims() - 1;
            return <Self as burn::tensor::ops::ActivationOps<Self>>::softmax(x, dim);
        }
        let mut out = f32s(&contiguous(x)).to_vec();
        cpu::softmax_rows(&mut out, shape.last().copied().unwrap_or(1));
        f32_tensor(shape, out)
    }

    fn softmax_last_biased(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = x.shape();
        let rows_per_bias = cpu::rows_per_bias_row(&shape, &bias.shape());
        match rows_per_bias {
            Some(n) if x.dtype() == DType::F32 && bias.dtype() == DType::F32 => {
                let mut out = f32s(&contiguous(x)).to_vec();
                let bias = contiguous(bias);
                cpu::softmax_rows_biased(&mut out, shape[shape.num_dims() - 1], f32s(&bias), n);
                f32_tensor(shape, out)
            }
            _ => Self::softmax_last(<Self as FloatTensorOps<Self>>::float_add(x, bias)),
        }
    }

    fn softmax_last_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        if y.dtype() != DType::F32 || grad.dtype() != DType::F32 || y.shape() != grad.shape() {
            return crate::softmax_backward_reference::<Self>(y, grad);
        }
        let (y, grad) = (contiguous(y), contiguous(grad));
        let shape = y.shape();
        let out = cpu::softmax_backward(f32s(&y), f32s(&grad), shape.last().copied().unwrap_or(1));
        f32_tensor(shape, out)
    }

    fn dropout_mask(shape: Shape, keep: f64, device: &Self::Device) -> FloatTensor<Self> {
        // Flex's float type is a run-time device setting: masks for f16/bf16 models take Burn's ops.
        if DType::from(get_device_settings::<Self>(device).float_dtype) != DType::F32 {
            return crate::dropout_mask_reference::<Self>(shape, keep, device);
        }
        let seed = cpu::mask_seed::<Self>(device);
        let out = cpu::dropout_mask(shape.num_elements(), keep, seed);
        f32_tensor(shape, out)
    }
}

/// `t` with a row-major layout that covers exactly its buffer (no copy when it already has one).
fn contiguous(t: FlexTensor) -> FlexTensor {
    t.to_contiguous()
}

/// The elements of a tensor from [`contiguous`].
fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("a contiguous f32 tensor")
}

fn f32_tensor(shape: Shape, data: Vec<f32>) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(data),
        Layout::contiguous(shape),
        DType::F32,
    )
}
