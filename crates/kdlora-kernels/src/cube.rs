//! `LoraOps` for `CubeBackend`: launches the kernels of [`crate::kernels`].

use burn::tensor::{Shape, ops::FloatTensor};
use burn_cubecl::{
    BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement,
    ops::numeric::empty_device_dtype, tensor::CubeTensor,
};
use cubecl::{CubeCount, CubeDim};

use crate::{
    LoraGradRequest, LoraGrads, LoraOps,
    kernels::{lora_down_kernel, lora_token_reduce_kernel, lora_up_kernel},
};

/// Most lanes along the rank in one down-projection cube (more ranks use more cubes).
const DOWN_MAX_LANES: u32 = 32;
/// Units per down-projection cube (lanes x token rows).
const DOWN_UNITS: u32 = 256;
/// Lanes along the output features in the up-projection.
const UP_LANES: u32 = 64;
/// Token rows per cube in the up-projection.
const UP_ROWS: u32 = 4;
/// Grid size limit per dimension that every runtime accepts (WebGPU's minimum).
const MAX_GRID: usize = 65_535;
/// Enough threads to fill a large GPU; token chunks of the weight-gradient reduction aim for it.
const TARGET_THREADS: usize = 1 << 17;

/// Shape of a matrix operand. Shapes are `LoraOps` preconditions (as for Burn's own ops): a wrong
/// rank panics here instead of letting an unchecked kernel index out of bounds.
fn dims2<R: CubeRuntime>(t: &CubeTensor<R>, what: &str) -> [usize; 2] {
    let s = t.meta.shape();
    assert!(
        s.num_dims() == 2,
        "kdlora-kernels: {what} must be 2-D, got {:?}",
        s.as_slice()
    );
    [s[0], s[1]]
}

fn same(a: usize, b: usize, what: &str) {
    assert!(a == b, "kdlora-kernels: {what} differ ({a} vs {b})");
}

fn transposed<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    // A transposed view: the kernels index through strides, so no copy is needed.
    burn_cubecl::ops::permute(t, &[1, 0])
}

/// `scale * x w^T` where `x` is `[tokens, n]` and `w` is `[k, n]` (any strides).
fn down<R: CubeRuntime>(x: CubeTensor<R>, w: CubeTensor<R>, scale: f32) -> CubeTensor<R> {
    x.assert_is_on_same_device(&w);
    let [tokens, inner] = dims2(&x, "x");
    let [rank, w_inner] = dims2(&w, "down-projection weight");
    same(
        inner,
        w_inner,
        "inner dimensions of x and the down-projection weight",
    );
    let out = empty_device_dtype(
        x.client.clone(),
        x.device.clone(),
        Shape::new([tokens, rank]),
        x.dtype,
    );
    if tokens == 0 || rank == 0 {
        return out;
    }
    let lanes = (rank.next_power_of_two() as u32).min(DOWN_MAX_LANES);
    let rows = DOWN_UNITS / lanes;
    let cube_dim = CubeDim::new_2d(lanes, rows);
    let cubes_x = rank.div_ceil(lanes as usize);
    let cubes_y = tokens.div_ceil(rows as usize).min(MAX_GRID);
    let dtype = x.dtype;
    // SAFETY: every index the kernel forms is below the extent of the tensor it indexes, given the
    // shape checks at the top of this function.
    unsafe {
        lora_down_kernel::launch_unchecked::<R>(
            &x.client.clone(),
            CubeCount::Static(cubes_x as u32, cubes_y as u32, 1),
            cube_dim,
            x.into_tensor_arg(),
            w.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            scale,
            dtype.into(),
        );
    }
    out
}

/// `out (+)= scale * h w^T` where `h` is `[tokens, k]`, `w` is `[m, k]` and `out` is `[tokens, m]`.
/// `base` is consumed: written in place when its buffer is exclusively ours, else copied first.
fn up<R: CubeRuntime>(
    h: CubeTensor<R>,
    w: CubeTensor<R>,
    base: Option<CubeTensor<R>>,
    scale: f32,
) -> CubeTensor<R> {
    h.assert_is_on_same_device(&w);
    let [tokens, rank] = dims2(&h, "h");
    let [width, w_rank] = dims2(&w, "up-projection weight");
    same(rank, w_rank, "ranks of h and the up-projection weight");
    if let Some(base) = &base {
        let [b_tokens, b_width] = dims2(base, "base_out");
        same(b_tokens, tokens, "token counts of h and base_out");
        same(
            b_width,
            width,
            "output widths of the up-projection weight and base_out",
        );
    }
    let accumulate = base.is_some();
    let out = match base {
        Some(base) => {
            base.assert_is_on_same_device(&h);
            if base.can_mut() && base.is_nonoverlapping() {
                base
            } else {
                base.copy()
            }
        }
        None => empty_device_dtype(
            h.client.clone(),
            h.device.clone(),
            Shape::new([tokens, width]),
            h.dtype,
        ),
    };
    if tokens == 0 || width == 0 {
        return out;
    }
    let cube_dim = CubeDim::new_2d(UP_LANES, UP_ROWS);
    let cubes_x = width.div_ceil(UP_LANES as usize);
    let cubes_y = tokens.div_ceil(UP_ROWS as usize).min(MAX_GRID);
    let dtype = h.dtype;
    // SAFETY: every index the kernel forms is below the extent of the tensor it indexes, given the
    // shape checks at the top of this function.
    unsafe {
        lora_up_kernel::launch_unchecked::<R>(
            &h.client.clone(),
            CubeCount::Static(cubes_x as u32, cubes_y as u32, 1),
            cube_dim,
            h.into_tensor_arg(),
            w.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            scale,
            accumulate,
            dtype.into(),
        );
    }
    out
}

/// `scale * l^T r` where `l` is `[tokens, p]` and `r` is `[tokens, q]`: a `[p, q]` reduction over
/// tokens, split into token chunks summed afterwards.
fn token_reduce<R, F, I, BT>(l: CubeTensor<R>, r: CubeTensor<R>, scale: f32) -> CubeTensor<R>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    l.assert_is_on_same_device(&r);
    let [tokens, p] = dims2(&l, "token-reduction lhs");
    let [r_tokens, q] = dims2(&r, "token-reduction rhs");
    same(
        tokens,
        r_tokens,
        "token counts of the token-reduction operands",
    );
    let outputs = (p * q).max(1);
    let chunks = TARGET_THREADS
        .div_ceil(outputs)
        .clamp(1, tokens.div_ceil(64).max(1))
        .min(MAX_GRID);
    let chunk_len = tokens.div_ceil(chunks).max(1);
    let chunks = tokens.div_ceil(chunk_len).max(1);

    let partial = empty_device_dtype(
        l.client.clone(),
        l.device.clone(),
        Shape::new([chunks, p, q]),
        l.dtype,
    );
    if p == 0 || q == 0 {
        return reshape_2d(partial, p, q);
    }
    let lanes = (q.next_power_of_two() as u32).min(64);
    let rows = 256 / lanes;
    let cube_dim = CubeDim::new_2d(lanes, rows);
    let count = CubeCount::Static(
        q.div_ceil(lanes as usize) as u32,
        p.div_ceil(rows as usize) as u32,
        chunks as u32,
    );
    let dtype = l.dtype;
    // SAFETY: every index the kernel forms is below the extent of the tensor it indexes, given the
    // shape checks at the top of this function.
    unsafe {
        lora_token_reduce_kernel::launch_unchecked::<R>(
            &l.client.clone(),
            count,
            cube_dim,
            l.into_tensor_arg(),
            r.into_tensor_arg(),
            partial.clone().into_tensor_arg(),
            scale,
            chunk_len as u32,
            dtype.into(),
        );
    }
    if chunks == 1 {
        return reshape_2d(partial, p, q);
    }
    let summed = <CubeBackend<R, F, I, BT> as burn::tensor::ops::FloatTensorOps<_>>::float_sum_dim(
        partial, 0,
    );
    reshape_2d(summed, p, q)
}

fn reshape_2d<R: CubeRuntime>(t: CubeTensor<R>, p: usize, q: usize) -> CubeTensor<R> {
    burn_cubecl::ops::reshape(t, Shape::new([p, q]))
}

impl<R, F, I, BT> LoraOps for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn lora_down(x: FloatTensor<Self>, a: FloatTensor<Self>) -> FloatTensor<Self> {
        down(x, a, 1.0)
    }

    fn device_memory_reserved(device: &Self::Device) -> Option<u64> {
        R::client(device)
            .memory_usage()
            .ok()
            .map(|usage| usage.bytes_reserved)
    }

    fn lora_up_add(
        h: FloatTensor<Self>,
        b: FloatTensor<Self>,
        base: FloatTensor<Self>,
        scaling: f32,
    ) -> FloatTensor<Self> {
        up(h, b, Some(base), scaling)
    }

    fn lora_backward(
        x: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        h: Option<FloatTensor<Self>>,
        grad_out: FloatTensor<Self>,
        scaling: f32,
        wanted: LoraGradRequest,
    ) -> LoraGrads<FloatTensor<Self>> {
        let mut grads = LoraGrads::none();
        if wanted.x || wanted.a {
            // g = s dY B: a down-projection of dY through B^T (a strided view), scaling folded in.
            let g = down(grad_out.clone(), transposed(b.clone()), scaling);
            if wanted.x {
                // dx = g A: an up-projection through A^T, nothing to accumulate into.
                grads.x = Some(up(g.clone(), transposed(a.clone()), None, 1.0));
            }
            if wanted.a {
                grads.a = Some(token_reduce::<R, F, I, BT>(g, x.clone(), 1.0));
            }
        }
        if wanted.b {
            let h = h.unwrap_or_else(|| down(x, a, 1.0));
            grads.b = Some(token_reduce::<R, F, I, BT>(grad_out, h, scaling));
        }
        grads
    }
}
