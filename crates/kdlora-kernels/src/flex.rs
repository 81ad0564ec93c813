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

use crate::{LoraOps, cpu, matmul::Batching};

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
        let out = cpu::softmax_rows(f32s(&contiguous(x)), shape.last().copied().unwrap_or(1));
        f32_tensor(shape, out)
    }

    fn softmax_last_biased(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = x.shape();
        let rows_per_bias = cpu::rows_per_bias_row(&shape, &bias.shape());
        match rows_per_bias {
            Some(n) if x.dtype() == DType::F32 && bias.dtype() == DType::F32 => {
                let bias = contiguous(bias);
                let row_len = shape[shape.num_dims() - 1];
                let out = cpu::softmax_rows_biased(f32s(&contiguous(x)), row_len, f32s(&bias), n);
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

    fn matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        match crate::matmul::batching(&lhs.shape(), &rhs.shape()) {
            Some(batching) if lhs.dtype() == DType::F32 && rhs.dtype() == DType::F32 => {
                gemm_f32(&lhs, &rhs, batching)
            }
            _ => <Self as FloatTensorOps<Self>>::float_matmul(lhs, rhs),
        }
    }

    fn swap_middle_dims(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = x.shape();
        if x.dtype() != DType::F32 || shape.num_dims() != 4 {
            return crate::heads::swap_middle_dims_reference::<Self>(x);
        }
        let dims = [shape[0], shape[1], shape[2], shape[3]];
        let out = cpu::swap_middle(f32s(&contiguous(x)), dims);
        f32_tensor([dims[0], dims[2], dims[1], dims[3]].into(), out)
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

/// Below this many multiply-adds a lone product runs on one thread (`gemm`'s threading costs more
/// than it saves); Flex uses the same bound.
const PARALLEL_MULADDS: usize = 192 * 192 * 192;

/// A raw output pointer shared by the tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint ranges of a buffer that outlives them (see `gemm_f32`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The element `offset` places further (a method, so closures capture the whole `OutPtr`).
    ///
    /// # Safety
    /// `offset` must stay inside the allocation.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: the caller keeps `offset` inside the allocation.
        unsafe { self.0.add(offset) }
    }
}

/// Element offset of batch entry `b` (row-major over `dims`) under per-dimension `strides`.
fn batch_offset(mut b: usize, dims: &[usize], strides: &[isize]) -> isize {
    let mut offset = 0;
    for (&d, &s) in dims.iter().zip(strides).rev() {
        offset += (b % d) as isize * s;
        b /= d;
    }
    offset
}

/// `lhs @ rhs` for f32 tensors of any strides: one `gemm` per batch entry, entries spread over
/// threads (a lone product uses `gemm`'s own threading), written into an uninitialised buffer.
fn gemm_f32(lhs: &FlexTensor, rhs: &FlexTensor, batching: Batching) -> FlexTensor {
    let (ll, rl) = (lhs.layout(), rhs.layout());
    let shape = ll.shape();
    let rank = shape.num_dims();
    let (m, k, n) = (shape[rank - 2], shape[rank - 1], rl.shape()[rank - 1]);
    let batch_dims = &shape[..rank - 2];
    let batch: usize = batch_dims.iter().product();
    let mut out_dims = shape.to_vec();
    out_dims[rank - 1] = n;
    let len = batch * m * n;
    if k == 0 || len == 0 {
        return f32_tensor(out_dims.into(), vec![0.0; len]);
    }
    let (ls, rs) = (ll.strides(), rl.strides());
    let (l_rows, l_cols) = (ls[rank - 2], ls[rank - 1]);
    let (l_data, l_start) = (lhs.storage::<f32>(), ll.start_offset() as isize);
    // `gemm` packs the right operand's columns as contiguous runs only when its rows are contiguous;
    // a transposed view (`dy @ W^T` in every linear's backward) is gathered one element at a time, in
    // every batch entry's product. A shared one is copied row-major once, for all entries.
    let rhs_copy;
    let (r_data, r_start, r_rows, r_cols) =
        if matches!(batching, Batching::SharedRhs) && batch > 1 && rs[rank - 1] != 1 {
            rhs_copy = cpu::to_row_major(
                rhs.storage::<f32>(),
                rl.start_offset() as isize,
                [k, n],
                [rs[rank - 2], rs[rank - 1]],
            );
            (&rhs_copy[..], 0, n as isize, 1)
        } else {
            (
                rhs.storage::<f32>(),
                rl.start_offset() as isize,
                rs[rank - 2],
                rs[rank - 1],
            )
        };

    let mut out: Vec<f32> = Vec::with_capacity(len);
    let dst = OutPtr(out.as_mut_ptr());
    let product = |b: usize, parallelism: gemm::Parallelism| {
        let l_off = l_start + batch_offset(b, batch_dims, &ls[..rank - 2]);
        let r_off = match batching {
            Batching::Paired => r_start + batch_offset(b, batch_dims, &rs[..rank - 2]),
            Batching::SharedRhs => r_start,
        };
        // SAFETY: the offsets and strides come from the operands' own layouts, so every element
        // read lies in their buffers; entry `b` writes exactly `out[b*m*n .. (b+1)*m*n]`, inside the
        // allocation, disjoint from every other entry. `read_dst = false`: gemm only writes the
        // output (never reads the uninitialised memory).
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.at(b * m * n),
                1,
                n as isize,
                false,
                l_data.as_ptr().offset(l_off),
                l_cols,
                l_rows,
                r_data.as_ptr().offset(r_off),
                r_cols,
                r_rows,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
    };
    if batch == 1 {
        let parallelism = if m * n * k >= PARALLEL_MULADDS {
            gemm::Parallelism::Rayon(0)
        } else {
            gemm::Parallelism::None
        };
        product(0, parallelism);
    } else {
        use rayon::prelude::*;
        (0..batch)
            .into_par_iter()
            .for_each(|b| product(b, gemm::Parallelism::None));
    }
    // SAFETY: the products above wrote all `len` elements.
    unsafe { out.set_len(len) };
    f32_tensor(out_dims.into(), out)
}
