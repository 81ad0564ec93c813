//! The CPU hot-path loops on plain `f32` slices, shared by the two CPU backends (`NdArray`, `Flex`):
//! one `rayon` pass each for the exact GELU and its derivative, the row softmax and its backward, and
//! dropout masks, each task compiled for the CPU's vector unit ([`vectorized`]). The backend modules
//! only move their tensors in and out of contiguous slices.

use burn::tensor::{Distribution, Tensor, backend::Backend};
use rayon::prelude::*;

use crate::{
    dropout::{keep_threshold, splitmix64},
    gelu::{gelu_f32, gelu_grad_f32},
    simd::vectorized,
    softmax::{softmax_backward_row_f32, softmax_row_f32},
};

/// Elements per parallel task: large enough to amortise scheduling, small enough to balance.
const CHUNK: usize = 16 * 1024;

/// `x Φ(x)` element-wise.
pub(crate) fn gelu(x: &[f32]) -> Vec<f32> {
    par_build(x.len(), CHUNK, |task, o| {
        gelu_slice(o, &x[task * CHUNK..][..o.len()])
    })
}

vectorized! {
    fn gelu_slice(out: &mut [f32], x: &[f32]) {
        for (o, &x) in out.iter_mut().zip(x) {
            *o = gelu_f32(x);
        }
    }
}

/// `grad (Φ(x) + x φ(x))` element-wise.
pub(crate) fn gelu_backward(x: &[f32], grad: &[f32]) -> Vec<f32> {
    zip_map(x, grad, CHUNK, gelu_backward_slice)
}

vectorized! {
    fn gelu_backward_slice(out: &mut [f32], x: &[f32], grad: &[f32]) {
        for ((o, &x), &g) in out.iter_mut().zip(x).zip(grad) {
            *o = g * gelu_grad_f32(x);
        }
    }
}

/// Softmax of every `row_len`-element row of `x`.
pub(crate) fn softmax_rows(x: &[f32], row_len: usize) -> Vec<f32> {
    let row_len = row_len.max(1);
    let step = rows_per_task(row_len) * row_len;
    par_build(x.len(), step, |task, rows| {
        rows.copy_from_slice(&x[task * step..][..rows.len()]);
        softmax_rows_slice(rows, row_len)
    })
}

vectorized! {
    fn softmax_rows_slice(rows: &mut [f32], row_len: usize) {
        for row in rows.chunks_mut(row_len) {
            softmax_row_f32(row);
        }
    }
}

/// How a bias of shape `bias` broadcasts over the rows (last dimension) of `x`: `Some(n)` when every
/// `n` consecutive rows of `x` share one bias row, which holds for the attention-mask shape
/// `[batch, 1, .., 1, keys]` (n = the product of `x`'s middle dimensions) and for
/// `[1, .., 1, keys]` (n = all rows); `None` for any other shape (the caller falls back to Burn's
/// broadcasting add).
pub(crate) fn rows_per_bias_row(x: &[usize], bias: &[usize]) -> Option<usize> {
    let rank = x.len();
    if rank < 2 || bias.len() != rank || bias[rank - 1] != x[rank - 1] {
        return None;
    }
    if bias[1..rank - 1].iter().any(|&d| d != 1) {
        return None;
    }
    let middle: usize = x[1..rank - 1].iter().product();
    match bias[0] {
        b if b == x[0] => Some(middle),
        1 => Some(middle * x[0]),
        _ => None,
    }
}

/// Softmax of every `row_len`-element row of `x` plus its bias row: row `i` adds `bias` row
/// `i / rows_per_bias` (see [`rows_per_bias_row`]).
pub(crate) fn softmax_rows_biased(
    x: &[f32],
    row_len: usize,
    bias: &[f32],
    rows_per_bias: usize,
) -> Vec<f32> {
    let row_len = row_len.max(1);
    let per_task = rows_per_task(row_len);
    let step = per_task * row_len;
    par_build(x.len(), step, |task, rows| {
        rows.copy_from_slice(&x[task * step..][..rows.len()]);
        softmax_rows_biased_slice(rows, row_len, bias, task * per_task, rows_per_bias.max(1))
    })
}

vectorized! {
    /// `rows` starts at row `first_row` of the whole tensor.
    fn softmax_rows_biased_slice(
        rows: &mut [f32],
        row_len: usize,
        bias: &[f32],
        first_row: usize,
        rows_per_bias: usize,
    ) {
        for (j, row) in rows.chunks_mut(row_len).enumerate() {
            let b = (first_row + j) / rows_per_bias;
            for (v, b) in row.iter_mut().zip(&bias[b * row_len..(b + 1) * row_len]) {
                *v += b;
            }
            softmax_row_f32(row);
        }
    }
}

/// `y (dy - Σ_row dy y)` for every `row_len`-element row.
pub(crate) fn softmax_backward(y: &[f32], grad: &[f32], row_len: usize) -> Vec<f32> {
    let row_len = row_len.max(1);
    zip_map(y, grad, rows_per_task(row_len) * row_len, |o, y, g| {
        softmax_backward_slice(o, y, g, row_len)
    })
}

vectorized! {
    fn softmax_backward_slice(out: &mut [f32], y: &[f32], grad: &[f32], row_len: usize) {
        for ((o, y), g) in out
            .chunks_mut(row_len)
            .zip(y.chunks(row_len))
            .zip(grad.chunks(row_len))
        {
            softmax_backward_row_f32(o, y, g);
        }
    }
}

/// The seed of a dropout mask: three uniform draws from the backend's (seeded) RNG, so
/// `Backend::seed` governs these masks exactly as it governs Burn's own dropout.
pub(crate) fn mask_seed<B: Backend>(device: &B::Device) -> u64 {
    let draws = Tensor::<B, 1>::random([3], Distribution::Default, device).into_data();
    draws.iter::<f64>().fold(0u64, |acc, u| {
        (acc << 24) ^ ((u * (1u64 << 24) as f64) as u64)
    })
}

/// `len` inverted-dropout mask values: `1 / keep` with probability `keep`, else 0, from the
/// counter-based stream at `seed` (the same values however the work is split across threads).
pub(crate) fn dropout_mask(len: usize, keep: f64, seed: u64) -> Vec<f32> {
    let threshold = keep_threshold(keep);
    let scale = (1.0 / keep) as f32;
    // Each 64-bit value decides two neighbouring elements (its low and high 32 bits); CHUNK is even,
    // so every task starts on a pair boundary.
    par_build(len, CHUNK, |chunk, o| {
        mask_slice(o, seed, (chunk * CHUNK / 2) as u64, threshold, scale)
    })
}

vectorized! {
    /// `out` starts at pair `first_pair` of the stream.
    fn mask_slice(out: &mut [f32], seed: u64, first_pair: u64, threshold: u64, scale: f32) {
        let draw = |bits: u64| if bits < threshold { scale } else { 0.0 };
        let mut pairs = out.chunks_exact_mut(2);
        let mut index = first_pair;
        for pair in &mut pairs {
            let bits = splitmix64(seed, index);
            pair[0] = draw(bits & 0xffff_ffff);
            pair[1] = draw(bits >> 32);
            index += 1;
        }
        if let [last] = pairs.into_remainder() {
            *last = draw(splitmix64(seed, index) & 0xffff_ffff);
        }
    }
}

/// `f(out, a, b)` on matching `step`-element pieces of two equal-length slices, pieces spread over
/// threads; returns `out`.
fn zip_map(
    a: &[f32],
    b: &[f32],
    step: usize,
    f: impl Fn(&mut [f32], &[f32], &[f32]) + Sync,
) -> Vec<f32> {
    debug_assert_eq!(a.len(), b.len());
    par_build(a.len(), step, |task, o| {
        let (a, b) = (&a[task * step..][..o.len()], &b[task * step..][..o.len()]);
        f(o, a, b)
    })
}

/// A `len`-element vector built in `step`-element pieces by `fill(piece_index, piece)`, pieces
/// spread over threads.
///
/// Why not `vec![0.0; len]` and `par_chunks_mut`: the zeroing is a serial pass on the calling
/// thread (mimalloc reuses freed blocks, which are not zero), over tensors of tens of MiB, while
/// the other cores wait; and the first touch of fresh pages (the page faults) happens there too.
/// Here each task zeroes its own piece right before `fill` overwrites it, in cache.
pub(crate) fn par_build(
    len: usize,
    step: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let step = step.max(1);
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(step)
        .enumerate()
        .for_each(|(task, piece)| {
            piece.fill(std::mem::MaybeUninit::new(0.0));
            // SAFETY: every element of `piece` was initialised by the `fill` just above, and
            // `MaybeUninit<f32>` has the layout of `f32`.
            let piece = unsafe {
                std::slice::from_raw_parts_mut(piece.as_mut_ptr().cast::<f32>(), piece.len())
            };
            fill(task, piece);
        });
    // SAFETY: the pieces cover `0..len`, and each was initialised above.
    unsafe { out.set_len(len) };
    out
}

/// `[a, b, c, d]` -> `[a, c, b, d]` (swapping the two middle dimensions), written contiguously:
/// the copy between the `[batch, seq, heads, head_dim]` layout of the projections and the
/// `[batch, heads, seq, head_dim]` layout of attention, in both directions. Rows of `d` elements
/// move whole; output rows are spread over threads.
pub(crate) fn swap_middle(x: &[f32], [a, b, c, d]: [usize; 4]) -> Vec<f32> {
    debug_assert_eq!(x.len(), a * b * c * d);
    let d = d.max(1);
    // One task per output `[b, d]` block: all of output row group (a_i, c_i).
    let step = (b * d).max(1);
    par_build(x.len(), step, |task, out| {
        let (ai, ci) = (task / c.max(1), task % c.max(1));
        for (bi, row) in out.chunks_mut(d).enumerate() {
            let src = ((ai * b + bi) * c + ci) * d;
            row.copy_from_slice(&x[src..src + d]);
        }
    })
}

/// The `[rows, cols]` matrix at `start` of `src` with element strides `[row_stride, col_stride]`,
/// copied row-major. Tasks of 16 output rows: with a column-major source (`row_stride == 1`, a
/// transposed view) each task reads 16 consecutive elements per column and keeps 16 output rows
/// in cache.
pub(crate) fn to_row_major(
    src: &[f32],
    start: isize,
    [rows, cols]: [usize; 2],
    [row_stride, col_stride]: [isize; 2],
) -> Vec<f32> {
    const TILE: usize = 16;
    let cols = cols.max(1);
    par_build(rows * cols, TILE * cols, |task, out| {
        let first = (task * TILE) as isize;
        let tile_rows = out.len() / cols;
        for j in 0..cols {
            let column = start + j as isize * col_stride;
            for i in 0..tile_rows {
                out[i * cols + j] = src[(column + (first + i as isize) * row_stride) as usize];
            }
        }
    })
}

/// Whole rows per parallel task, about [`CHUNK`] elements.
fn rows_per_task(row_len: usize) -> usize {
    (CHUNK / row_len).max(1)
}
