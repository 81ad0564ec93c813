//! f64 closed forms the hot-path tests compare against (shared by `hotpath.rs` and `hotpath_f64.rs`).

#![allow(dead_code)]

use burn::tensor::{Tensor, backend::Backend};

/// `Φ(x)` in f64 through `erfc` (no cancellation in the negative tail).
pub fn phi_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

/// `|a - b| <= rel |b|`, with a floor far below anything f32 resolves near 1.
pub fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs() + 1e-30
}

pub fn gelu64(x: f64) -> f64 {
    x * phi_cdf(x)
}

pub fn gelu_grad64(x: f64) -> f64 {
    phi_cdf(x) + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// Points across the whole range: both tails (where erf saturates), zero, and the curved middle.
pub fn points() -> Vec<f32> {
    (0..23_001).map(|i| -13.0 + i as f32 * 0.001).collect()
}

pub fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data().iter::<f64>().collect()
}

/// Softmax of one row in f64, shifted by the max: the closed form the tests compare against.
pub fn softmax64(row: &[f64]) -> Vec<f64> {
    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = row.iter().map(|v| (v - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}
