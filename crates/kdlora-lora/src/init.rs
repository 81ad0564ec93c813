//! Seeded adapter initialisation that does not depend on the backend's global RNG.
//!
//! Values are drawn on the host from a SplitMix64 stream seeded by `(seed, module path)`, so a
//! module's initial `A` is the same on every backend and does not change when other modules are
//! added to or removed from the target list.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::config::LoraInit;

/// SplitMix64 (Steele, Lea & Flood 2014): tiny, fast and statistically fine for initialisation.
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal via Box-Muller (one of the pair is discarded; speed is irrelevant here).
    pub(crate) fn next_normal(&mut self) -> f64 {
        // 1 - u is in (0, 1], so the logarithm is finite.
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// FNV-1a of the module path mixed with the seed: one independent stream per module.
pub(crate) fn module_seed(seed: u64, path: &str) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for byte in path.bytes() {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    let mut mix = SplitMix64::new(seed ^ h);
    mix.next_u64()
}

/// `A: [r, d_input]` as PEFT initialises it.
///
/// * Kaiming-uniform with `a = sqrt(5)` (PyTorch's `nn.Linear` default, PEFT's `init_lora_weights=True`):
///   gain `sqrt(2 / (1 + a^2)) = sqrt(1/3)`, bound `gain * sqrt(3 / fan_in) = 1 / sqrt(d_input)`.
/// * Gaussian (PEFT's `"gaussian"`): `N(0, (1/r)^2)`.
pub(crate) fn init_lora_a<B: Backend>(
    init: LoraInit,
    r: usize,
    d_input: usize,
    seed: u64,
    device: &B::Device,
) -> Tensor<B, 2> {
    let mut rng = SplitMix64::new(seed);
    let n = r * d_input;
    let values: Vec<f32> = match init {
        LoraInit::KaimingUniform => {
            let bound = 1.0 / (d_input as f64).sqrt();
            (0..n)
                .map(|_| ((2.0 * rng.next_f64() - 1.0) * bound) as f32)
                .collect()
        }
        LoraInit::Gaussian => {
            let std = 1.0 / r as f64;
            (0..n).map(|_| (rng.next_normal() * std) as f32).collect()
        }
    };
    Tensor::from_data(TensorData::new(values, [r, d_input]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_moments_match_closed_form() {
        // U(0,1): mean 1/2, variance 1/12.
        let mut rng = SplitMix64::new(7);
        let xs: Vec<f64> = (0..200_000).map(|_| rng.next_f64()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
        assert!((var - 1.0 / 12.0).abs() < 0.002, "var {var}");
        assert!(xs.iter().all(|&x| (0.0..1.0).contains(&x)));
    }

    #[test]
    fn normal_moments_match_closed_form() {
        let mut rng = SplitMix64::new(11);
        let xs: Vec<f64> = (0..200_000).map(|_| rng.next_normal()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
    }

    #[test]
    fn module_seeds_differ_by_path_and_seed() {
        let a = module_seed(0, "bert.encoder.layer.0.attention.self.query");
        let b = module_seed(0, "bert.encoder.layer.0.attention.self.value");
        let c = module_seed(1, "bert.encoder.layer.0.attention.self.query");
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            a,
            module_seed(0, "bert.encoder.layer.0.attention.self.query")
        );
    }
}
