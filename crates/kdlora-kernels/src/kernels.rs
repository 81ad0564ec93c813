//! The CubeCL kernels. Each works on 2-D tensors of any strides (so transposed views of `A`/`B` need no
//! copy), reads elements of the tensor's float type `F` and accumulates in `f32`, which is what makes
//! f16/bf16 inputs safe: only the final value is rounded to `F`.

use cubecl::prelude::*;

/// `out[t, k] = scale * sum_i x[t, i] * w[k, i]` for a small `k` range (the LoRA rank).
///
/// One unit per `(t, k)`, lanes along `k` first: the lanes of a token read the same `x[t, i]` (a
/// broadcast, so each row of `x` comes from memory once) and the `r` rows of `w` stay in cache across
/// tokens. No shared memory and no barriers, which keeps it fast on software rasterisers too. Cubes
/// stride over tokens, so any token count fits in a bounded grid.
#[cube(launch_unchecked)]
pub fn lora_down_kernel<F: Float>(
    x: &Tensor<F>,
    w: &Tensor<F>,
    out: &mut Tensor<F>,
    scale: f32,
    #[define(F)] _dtype: StorageType,
) {
    let tokens = x.shape(0);
    let inner = x.shape(1);
    let rank = w.shape(0);
    let k = ABSOLUTE_POS_X as usize;
    if k >= rank {
        terminate!();
    }

    let xs0 = x.stride(0);
    let xs1 = x.stride(1);
    let ws0 = w.stride(0);
    let ws1 = w.stride(1);
    let os0 = out.stride(0);
    let os1 = out.stride(1);
    let t_step = (CUBE_COUNT_Y * CUBE_DIM_Y) as usize;

    let mut t = ABSOLUTE_POS_Y as usize;
    while t < tokens {
        let mut acc = f32::new(0.0);
        for i in 0..inner {
            acc += f32::cast_from(x[t * xs0 + i * xs1]) * f32::cast_from(w[k * ws0 + i * ws1]);
        }
        out[t * os0 + k * os1] = F::cast_from(acc * scale);
        t += t_step;
    }
}

/// `out[t, o] (+)= scale * sum_k h[t, k] * w[o, k]`: the up-projection with the scaling and (when
/// `accumulate`) the add into an existing output fused, so the `[tokens, out]` product is never
/// materialised on its own.
///
/// Lanes run along `o` (coalesced reads and writes of `out`); every lane of a row reads the same
/// `h[t, k]` (a broadcast) and `w` is small enough to stay in cache. Cubes stride over tokens.
#[cube(launch_unchecked)]
pub fn lora_up_kernel<F: Float>(
    h: &Tensor<F>,
    w: &Tensor<F>,
    out: &mut Tensor<F>,
    scale: f32,
    #[comptime] accumulate: bool,
    #[define(F)] _dtype: StorageType,
) {
    let tokens = out.shape(0);
    let width = out.shape(1);
    let rank = h.shape(1);
    let o = ABSOLUTE_POS_X as usize;
    if o >= width {
        terminate!();
    }

    let hs0 = h.stride(0);
    let hs1 = h.stride(1);
    let ws0 = w.stride(0);
    let ws1 = w.stride(1);
    let os0 = out.stride(0);
    let os1 = out.stride(1);
    let t_step = (CUBE_COUNT_Y * CUBE_DIM_Y) as usize;

    let mut t = ABSOLUTE_POS_Y as usize;
    while t < tokens {
        let mut acc = f32::new(0.0);
        for k in 0..rank {
            acc += f32::cast_from(h[t * hs0 + k * hs1]) * f32::cast_from(w[o * ws0 + k * ws1]);
        }
        let idx = t * os0 + o * os1;
        if accumulate {
            out[idx] = F::cast_from(f32::cast_from(out[idx]) + acc * scale);
        } else {
            out[idx] = F::cast_from(acc * scale);
        }
        t += t_step;
    }
}

/// `out[c, p, q] = scale * sum_{t in chunk c} l[t, p] * r[t, q]`: a reduction over tokens for the
/// weight gradients (`dA = g^T x`, `dB = dY^T h`). Token chunks run on the grid's z axis so that the
/// small `[p, q]` output still fills the device; the caller sums the chunk axis.
#[cube(launch_unchecked)]
pub fn lora_token_reduce_kernel<F: Float>(
    l: &Tensor<F>,
    r: &Tensor<F>,
    out: &mut Tensor<F>,
    scale: f32,
    chunk_len: u32,
    #[define(F)] _dtype: StorageType,
) {
    let tokens = l.shape(0);
    let p_len = l.shape(1);
    let q_len = r.shape(1);
    let q = ABSOLUTE_POS_X as usize;
    let p = ABSOLUTE_POS_Y as usize;
    let chunk = CUBE_POS_Z as usize;
    if q >= q_len || p >= p_len {
        terminate!();
    }

    let ls0 = l.stride(0);
    let ls1 = l.stride(1);
    let rs0 = r.stride(0);
    let rs1 = r.stride(1);

    let start = chunk * chunk_len as usize;
    let mut end = start + chunk_len as usize;
    if end > tokens {
        end = tokens;
    }
    let mut acc = f32::new(0.0);
    for t in start..end {
        acc += f32::cast_from(l[t * ls0 + p * ls1]) * f32::cast_from(r[t * rs0 + q * rs1]);
    }
    out[chunk * out.stride(0) + p * out.stride(1) + q * out.stride(2)] = F::cast_from(acc * scale);
}
