//! The plain-ops defaults of the hot-path ops in f64 (`NdArray<f64>`): the GELU gradient against
//! central finite differences and the reference dropout mask's distribution.
//!
//! A test binary of its own: Burn keys a device's default float type by the device, which
//! `NdArray<f32>` and `NdArray<f64>` share, so the first backend to touch it in a process decides it.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::Backend;
use burn::tensor::{Shape, Tensor, TensorPrimitive};
use kdlora_kernels::{dropout_mask_reference, gelu};

#[path = "integration/hotpath/closed_form.rs"]
mod closed_form;
use closed_form::{gelu64, values};

type Cpu64 = NdArray<f64>;

#[test]
fn gelu_gradient_matches_finite_differences_in_f64() {
    // NdArray<f64> takes the plain-ops path (Burn's forward, the default backward), so this checks
    // that path; the finite differences are of the f64 `erfc` forward, independent of both.
    let device = Default::default();
    let xs: Vec<f64> = (0..401).map(|i| -6.0 + i as f64 * 0.03).collect();
    let x = Tensor::<Autodiff<Cpu64>, 1>::from_floats(xs.as_slice(), &device).require_grad();
    let grads = gelu(x.clone()).sum().backward();
    let g = values(x.grad(&grads).expect("x has a gradient"));
    let h = 1e-5;
    for (i, &x) in xs.iter().enumerate() {
        let fd = (gelu64(x + h) - gelu64(x - h)) / (2.0 * h);
        // 1e-7, not 1e-10: Burn 0.21 rounds scalar operands (`mul_scalar(1/√2)`) to f32.
        assert!((g[i] - fd).abs() < 1e-7, "x {x}: {} vs {fd}", g[i]);
    }
}

#[test]
fn reference_mask_has_the_same_distribution() {
    let device = Default::default();
    Cpu64::seed(&device, 1);
    let keep = 0.8;
    let m = dropout_mask_reference::<Cpu64>(Shape::new([200_000]), keep, &device);
    let m = values(Tensor::<Cpu64, 1>::from_primitive(TensorPrimitive::Float(
        m,
    )));
    assert!(
        m.iter()
            .all(|&v| v == 0.0 || (v - 1.0 / keep).abs() < 1e-12)
    );
    let kept = m.iter().filter(|&&v| v != 0.0).count() as f64 / m.len() as f64;
    assert!((kept - keep).abs() < 0.005, "kept {kept}");
}
