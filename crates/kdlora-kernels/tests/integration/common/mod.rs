//! Helpers shared by the test modules: random problems built on the CPU, the reference forward and
//! gradients computed by Burn's autodiff of plain ops (independent of the hand-written backward), and
//! a tolerance check.

#![allow(dead_code)]

use std::sync::{Mutex, MutexGuard};

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Distribution, Tensor, TensorData, backend::AutodiffBackend};
use kdlora_kernels::{LoraOps, lora_delta_add, reference::lora_delta_add_reference};

pub type Cpu = NdArray<f32>;
pub type CpuAd = Autodiff<Cpu>;

/// One adapter problem: `x` `[tokens, in]`, `base` `[tokens, out]`, `a` `[r, in]`, `b` `[out, r]`, and
/// weights `w` `[tokens, out]` defining the loss `sum(y * w)` so that `dY = w` is not trivial.
#[derive(Clone)]
pub struct Problem {
    pub tokens: usize,
    pub d_in: usize,
    pub d_out: usize,
    pub rank: usize,
    pub scaling: f32,
    pub x: TensorData,
    pub base: TensorData,
    pub a: TensorData,
    pub b: TensorData,
    pub w: TensorData,
}

impl Problem {
    pub fn random(tokens: usize, d_in: usize, d_out: usize, rank: usize) -> Self {
        let dev = Default::default();
        let u = Distribution::Uniform(-1.0, 1.0);
        let data = |shape: [usize; 2]| Tensor::<Cpu, 2>::random(shape, u, &dev).into_data();
        Self {
            tokens,
            d_in,
            d_out,
            rank,
            scaling: 16.0 / rank as f32,
            x: data([tokens, d_in]),
            base: data([tokens, d_out]),
            a: data([rank, d_in]),
            b: data([d_out, rank]),
            w: data([tokens, d_out]),
        }
    }
}

/// Forward output and gradients `(y, dx, d base, dA, dB)`.
pub struct Outputs {
    pub y: TensorData,
    pub dx: TensorData,
    pub dbase: TensorData,
    pub da: TensorData,
    pub db: TensorData,
}

fn run<B: AutodiffBackend>(
    p: &Problem,
    device: &B::Device,
    f: impl Fn(Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>, f32) -> Tensor<B, 2>,
) -> Outputs {
    let t = |d: &TensorData| Tensor::<B, 2>::from_data(d.clone(), device).require_grad();
    let (x, base, a, b) = (t(&p.x), t(&p.base), t(&p.a), t(&p.b));
    let w = Tensor::<B, 2>::from_data(p.w.clone(), device);
    let y = f(x.clone(), base.clone(), a.clone(), b.clone(), p.scaling);
    let grads = (y.clone() * w).sum().backward();
    let g = |t: &Tensor<B, 2>, name: &str| {
        t.grad(&grads)
            .unwrap_or_else(|| panic!("no gradient for {name}"))
            .into_data()
    };
    Outputs {
        dx: g(&x, "x"),
        dbase: g(&base, "base"),
        da: g(&a, "A"),
        db: g(&b, "B"),
        y: y.into_data(),
    }
}

/// Reference: plain ops on the CPU, differentiated by Burn's autodiff.
pub fn reference_outputs(p: &Problem) -> Outputs {
    run::<CpuAd>(p, &Default::default(), lora_delta_add_reference)
}

/// Through `lora_delta_add` (the fused path unless turned off) on backend `B`.
pub fn fused_outputs<B: AutodiffBackend + LoraOps>(p: &Problem, device: &B::Device) -> Outputs {
    run::<B>(p, device, lora_delta_add)
}

/// Element-wise `|actual - expected| <= tol * max(1, |expected|, rms(expected))`.
///
/// The rms term matters for the weight gradients: they are sums over thousands of tokens of terms
/// around the rms, so an entry that cancels to near zero still carries the rounding error of its
/// large terms (in both implementations, which sum in different orders).
pub fn assert_close(actual: &TensorData, expected: &TensorData, tol: f32, what: &str) {
    assert_eq!(actual.shape, expected.shape, "{what}: shape");
    let a = actual.to_vec::<f32>().expect("f32 data");
    let e = expected.to_vec::<f32>().expect("f32 data");
    let rms = (e.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / e.len().max(1) as f64).sqrt();
    let scale = (rms as f32).max(1.0);
    let mut worst = (0.0f32, 0usize);
    for (i, (x, y)) in a.iter().zip(&e).enumerate() {
        let err = (x - y).abs() / y.abs().max(scale);
        assert!(err.is_finite(), "{what}: non-finite at {i}: {x} vs {y}");
        if err > worst.0 {
            worst = (err, i);
        }
    }
    assert!(
        worst.0 <= tol,
        "{what}: relative error {} at {} ({} vs {}) exceeds {tol}",
        worst.0,
        worst.1,
        a[worst.1],
        e[worst.1]
    );
}

pub fn assert_outputs_close(actual: &Outputs, expected: &Outputs, tol: f32, what: &str) {
    assert_close(&actual.y, &expected.y, tol, &format!("{what}: forward"));
    assert_close(&actual.dx, &expected.dx, tol, &format!("{what}: dx"));
    assert_close(
        &actual.dbase,
        &expected.dbase,
        tol,
        &format!("{what}: d base"),
    );
    assert_close(&actual.da, &expected.da, tol, &format!("{what}: dA"));
    assert_close(&actual.db, &expected.db, tol, &format!("{what}: dB"));
}

/// Tests that read or flip the process-wide fused switch (and the wgpu tests, which also share the
/// device) run one at a time: every module of this binary shares the switch.
pub fn fused_switch_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
