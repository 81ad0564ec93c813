// Included once per CPU backend by `hotpath.rs`, with `Cpu` naming the backend.

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Shape, Tensor, TensorData, TensorPrimitive};
use kdlora_kernels::{Dropout, LoraOps, dropout, gelu, gelu_reference};

use super::closed_form::{close, gelu_grad64, gelu64, points, softmax64, values};

#[test]
fn gelu_forward_matches_closed_form_values() {
    let device = Default::default();
    // Φ(1) = 0.841344746..., so gelu(1) = 0.841344746 and gelu(-1) = -(1 - Φ(1)).
    let x = Tensor::<Cpu, 1>::from_floats([1.0, -1.0, 0.0, 3.0], &device);
    let y = values(gelu(x));
    let expected = [
        0.841_344_746_068_543,
        -0.158_655_253_931_457,
        0.0,
        2.995_950_1,
    ];
    for (y, e) in y.iter().zip(expected) {
        assert!((y - e).abs() < 1e-6, "{y} vs {e}");
    }
}

#[test]
fn gelu_forward_matches_f64_erf_and_burn_on_every_point() {
    let device = Default::default();
    let xs = points();
    let y = values(gelu(Tensor::<Cpu, 1>::from_floats(xs.as_slice(), &device)));
    let burn_gelu = values(burn::tensor::activation::gelu(
        Tensor::<Cpu, 1>::from_floats(xs.as_slice(), &device),
    ));
    for ((&x, &y), &b) in xs.iter().zip(&y).zip(&burn_gelu) {
        let e = gelu64(x as f64);
        // Relative precision everywhere, tails included: f32 rounding of x / √2 moves erfc by a
        // relative ~x² ulp there, hence the x² factor.
        let x2 = (x as f64).powi(2).max(1.0);
        assert!(close(y, e, 2e-7 * x2 + 1e-6), "x {x}: {y} vs {e}");
        // Burn's `1 + erf` form loses the negative tail in f32: compare it in absolute terms.
        assert!(
            (y - b).abs() <= 2e-6 * e.abs().max(1.0),
            "x {x}: {y} vs burn {b}"
        );
    }
}

/// The `erf` form from Burn ops (what the candle backend uses): shape kept, absolute error like
/// Burn's own `1 + erf` form (the negative tail loses relative precision in f32).
#[test]
fn gelu_reference_matches_f64_erf_and_keeps_the_shape() {
    let device = Default::default();
    let xs = &points()[..23_000];
    let x = Tensor::<Cpu, 1>::from_floats(xs, &device).reshape([1, 1, 11_500, 2]);
    let shape = x.shape();
    let y = Tensor::<Cpu, 4>::from_primitive(TensorPrimitive::Float(gelu_reference::<Cpu>(
        x.into_primitive().tensor(),
    )));
    assert_eq!(y.shape(), shape);
    for (&x, y) in xs.iter().zip(values(y)) {
        let e = gelu64(x as f64);
        assert!((y - e).abs() <= 2e-6 * e.abs().max(1.0), "x {x}: {y} vs {e}");
    }
}

#[test]
fn gelu_gradient_matches_closed_form_derivative() {
    let device = Default::default();
    let xs = points();
    let n = xs.len();
    // A weighted sum so the incoming gradient is not all ones.
    let w: Vec<f32> = (0..n).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
    let x = Tensor::<Autodiff<Cpu>, 1>::from_floats(xs.as_slice(), &device).require_grad();
    let wt = Tensor::<Autodiff<Cpu>, 1>::from_floats(w.as_slice(), &device);
    let grads = (gelu(x.clone()) * wt).sum().backward();
    let g = values(x.grad(&grads).expect("x has a gradient"));
    for i in 0..n {
        let e = w[i] as f64 * gelu_grad64(xs[i] as f64);
        // Relative, except near gelu's minimum (x = -0.75) where Φ + xφ cancels to 0: there an
        // f32-sized absolute error (1e-7 per unit of incoming gradient, ~3 ulp of the 0.2-sized
        // terms Φ and xφ).
        let x2 = (xs[i] as f64).powi(2).max(1.0);
        let ok = close(g[i], e, 2e-7 * x2 + 2e-6) || (g[i] - e).abs() < 1e-7 * w[i] as f64;
        assert!(ok, "x {}: {} vs {e}", xs[i], g[i]);
    }
}

type Prim = burn::tensor::ops::FloatTensor<Cpu>;

/// Largest difference between a fast backward and its plain-ops reference, both applied to
/// `(input, grad)`; also checks the output keeps the input's shape.
fn max_backward_difference<const D: usize>(
    fast: fn(Prim, Prim) -> Prim,
    reference: fn(Prim, Prim) -> Prim,
    input: Tensor<Cpu, D>,
    grad: Tensor<Cpu, D>,
) -> f32 {
    let dims = input.dims();
    let run = |f: fn(Prim, Prim) -> Prim| {
        Tensor::<Cpu, D>::from_primitive(TensorPrimitive::Float(f(
            input.clone().into_primitive().tensor(),
            grad.clone().into_primitive().tensor(),
        )))
    };
    let (fast, reference) = (run(fast), run(reference));
    assert_eq!(fast.dims(), dims);
    (fast - reference).abs().max().into_scalar()
}

#[test]
fn fast_backward_equals_the_plain_ops_reference() {
    let device = Default::default();
    let x = Tensor::<Cpu, 3>::random([3, 17, 1001], Distribution::Normal(0.0, 2.0), &device);
    let grad = Tensor::<Cpu, 3>::random([3, 17, 1001], Distribution::Normal(0.0, 1.0), &device);
    let max = max_backward_difference(
        Cpu::exact_gelu_backward,
        kdlora_kernels::gelu_backward_reference::<Cpu>,
        x,
        grad,
    );
    assert!(max < 1e-5, "max difference {max}");
}

#[test]
fn gelu_of_a_non_contiguous_tensor_is_element_wise() {
    let device = Default::default();
    let x = Tensor::<Cpu, 2>::random([37, 53], Distribution::Normal(0.0, 2.0), &device);
    let via_transpose = gelu(x.clone().transpose()).transpose();
    let direct = gelu(x);
    assert_eq!(
        via_transpose.into_data().to_vec::<f32>().unwrap(),
        direct.into_data().to_vec::<f32>().unwrap()
    );
}

fn mask(seed: u64, shape: [usize; 3], keep: f64) -> Vec<f32> {
    let device = Default::default();
    Cpu::seed(&device, seed);
    let m = Cpu::dropout_mask(Shape::new(shape), keep, &device);
    Tensor::<Cpu, 3>::from_primitive(TensorPrimitive::Float(m))
        .into_data()
        .to_vec()
        .unwrap()
}

#[test]
fn dropout_mask_values_rate_and_seeding() {
    // Not a multiple of the parallel chunk size.
    let shape = [7, 301, 499];
    let n = 7 * 301 * 499;
    for keep in [0.9, 0.5, 0.05] {
        let m = mask(42, shape, keep);
        assert_eq!(m.len(), n);
        let scale = (1.0 / keep) as f32;
        assert!(
            m.iter().all(|&v| v == 0.0 || v == scale),
            "values are 0 or 1/keep"
        );
        let kept = m.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
        let sigma = (keep * (1.0 - keep) / n as f64).sqrt();
        assert!(
            (kept - keep).abs() < 6.0 * sigma,
            "keep {keep}: kept {kept}"
        );
        // Neighbours are independent: P(both kept) ~ keep^2.
        let both =
            m.windows(2).filter(|w| w[0] != 0.0 && w[1] != 0.0).count() as f64 / (n - 1) as f64;
        assert!(
            (both - keep * keep).abs() < 0.01,
            "keep {keep}: pairs {both}"
        );
    }
    assert_eq!(
        mask(7, shape, 0.9),
        mask(7, shape, 0.9),
        "same seed, same mask"
    );
    assert_ne!(
        mask(7, shape, 0.9),
        mask(8, shape, 0.9),
        "another seed, another mask"
    );

    // Consecutive masks after one seed differ (the backend RNG advances).
    let device = Default::default();
    Cpu::seed(&device, 3);
    let a = Cpu::dropout_mask(Shape::new([1000]), 0.5, &device);
    let b = Cpu::dropout_mask(Shape::new([1000]), 0.5, &device);
    let a: Vec<f32> = Tensor::<Cpu, 1>::from_primitive(TensorPrimitive::Float(a))
        .into_data()
        .to_vec()
        .unwrap();
    let b: Vec<f32> = Tensor::<Cpu, 1>::from_primitive(TensorPrimitive::Float(b))
        .into_data()
        .to_vec()
        .unwrap();
    assert_ne!(a, b);
}

#[test]
fn dropout_scales_kept_values_and_routes_gradients_through_the_mask() {
    let device = Default::default();
    Cpu::seed(&device, 11);
    let data: Vec<f32> = (0..5000).map(|i| (i as f32 * 0.37).sin()).collect();
    let x = Tensor::<Autodiff<Cpu>, 1>::from_floats(data.as_slice(), &device).require_grad();
    let y = Dropout::new(0.1).forward(x.clone());
    let grads = y.clone().sum().backward();
    let y: Vec<f32> = y.into_data().to_vec().unwrap();
    let g: Vec<f32> = x.grad(&grads).unwrap().into_data().to_vec().unwrap();
    let scale = 1.0 / 0.9f32;
    let mut dropped = 0;
    for i in 0..data.len() {
        if g[i] == 0.0 {
            dropped += 1;
            assert_eq!(y[i], 0.0);
        } else {
            assert!((g[i] - scale).abs() < 1e-6);
            assert!((y[i] - data[i] * scale).abs() < 1e-6);
        }
    }
    assert!(
        (300..700).contains(&dropped),
        "dropped {dropped} of 5000 at p = 0.1"
    );
}

#[test]
fn dropout_is_the_identity_without_autodiff_or_probability() {
    let device = Default::default();
    let x = Tensor::<Cpu, 2>::random([16, 16], Distribution::Default, &device);
    let expected: TensorData = x.to_data();
    assert_eq!(dropout(x.clone(), 0.5).into_data(), expected);
    let xa = Tensor::<Autodiff<Cpu>, 2>::from_data(expected.clone(), &device);
    assert_eq!(dropout(xa.clone(), 0.0).into_data(), expected);
    let all = dropout(xa, 1.0).into_data().to_vec::<f32>().unwrap();
    assert!(all.iter().all(|&v| v == 0.0));
}

#[test]
fn softmax_forward_matches_f64_rows_and_burn() {
    let device = Default::default();
    // Last dimension 131 (not a divisor of the parallel chunk), masked entries at -1e9 as in attention.
    let x = Tensor::<Cpu, 3>::random([3, 5, 131], Distribution::Normal(0.0, 3.0), &device);
    let masked = x
        .clone()
        .slice([0..3, 0..5, 100..131])
        .mul_scalar(0.0)
        .add_scalar(-1e9);
    let x = x.slice_assign([0..3, 0..5, 100..131], masked);
    let xs = values(x.clone());
    let y = values(kdlora_kernels::softmax(x.clone()));
    let burn_y = values(burn::tensor::activation::softmax(x, 2));
    for (r, row) in xs.chunks(131).enumerate() {
        let e = softmax64(row);
        for j in 0..131 {
            let got = y[r * 131 + j];
            assert!(
                (got - e[j]).abs() < 1e-6,
                "row {r} col {j}: {got} vs {}",
                e[j]
            );
            assert!((got - burn_y[r * 131 + j]).abs() < 1e-6);
        }
        assert!(
            y[r * 131 + 100..(r + 1) * 131].iter().all(|&v| v == 0.0),
            "masked keys get 0"
        );
    }
}

#[test]
fn softmax_gradient_matches_finite_differences_and_the_reference() {
    let device = Default::default();
    let (rows, last) = (6, 37);
    let xs: Vec<f64> = (0..rows * last)
        .map(|i| ((i * 7919) % 101) as f64 / 25.0 - 2.0)
        .collect();
    let w: Vec<f64> = (0..rows * last)
        .map(|i| ((i * 31) % 17) as f64 / 8.0 - 1.0)
        .collect();
    let loss = |x: &[f64]| -> f64 {
        x.chunks(last)
            .flat_map(softmax64)
            .zip(&w)
            .map(|(y, w)| y * w)
            .sum()
    };
    let x = Tensor::<Autodiff<Cpu>, 1>::from_floats(
        xs.iter().map(|&v| v as f32).collect::<Vec<_>>().as_slice(),
        &device,
    )
    .reshape([rows, last])
    .require_grad();
    let wt = Tensor::<Autodiff<Cpu>, 1>::from_floats(
        w.iter().map(|&v| v as f32).collect::<Vec<_>>().as_slice(),
        &device,
    )
    .reshape([rows, last]);
    let grads = (kdlora_kernels::softmax(x.clone()) * wt.clone())
        .sum()
        .backward();
    let g = values(x.grad(&grads).expect("x has a gradient"));
    // Burn's own composed softmax, differentiated op by op, as a second reference.
    let x2 = x.clone().detach().require_grad();
    let grads2 = (burn::tensor::activation::softmax(x2.clone(), 1) * wt)
        .sum()
        .backward();
    let g_burn = values(x2.grad(&grads2).expect("x has a gradient"));
    let h = 1e-6;
    for i in 0..xs.len() {
        let (mut plus, mut minus) = (xs.clone(), xs.clone());
        plus[i] += h;
        minus[i] -= h;
        let fd = (loss(&plus) - loss(&minus)) / (2.0 * h);
        assert!((g[i] - fd).abs() < 2e-6, "element {i}: {} vs {fd}", g[i]);
        assert!(
            (g[i] - g_burn[i]).abs() < 2e-6,
            "element {i}: {} vs burn {}",
            g[i],
            g_burn[i]
        );
    }
}

#[test]
fn fast_softmax_backward_equals_the_plain_ops_reference() {
    let device = Default::default();
    let y = kdlora_kernels::softmax(Tensor::<Cpu, 4>::random(
        [2, 3, 45, 129],
        Distribution::Normal(0.0, 2.0),
        &device,
    ));
    let grad = Tensor::<Cpu, 4>::random([2, 3, 45, 129], Distribution::Normal(0.0, 1.0), &device);
    let max = max_backward_difference(
        Cpu::softmax_last_backward,
        kdlora_kernels::softmax_backward_reference::<Cpu>,
        y,
        grad,
    );
    assert!(max < 1e-6, "max difference {max}");
}

#[test]
fn softmax_of_a_non_contiguous_tensor_uses_its_logical_layout() {
    let device = Default::default();
    let x = Tensor::<Cpu, 2>::random([19, 23], Distribution::Normal(0.0, 2.0), &device);
    let via_transpose = kdlora_kernels::softmax(x.clone().transpose());
    // The same values laid out contiguously.
    let contiguous = Tensor::<Cpu, 2>::from_data(x.transpose().into_data(), &device);
    let a: Vec<f32> = via_transpose.into_data().to_vec().unwrap();
    let b: Vec<f32> = kdlora_kernels::softmax(contiguous)
        .into_data()
        .to_vec()
        .unwrap();
    assert_eq!(a, b);
}

/// `softmax_with_bias` against f64 rows of `softmax(x + bias)` (forward and the gradient of a
/// weighted sum with respect to the scores) and against Burn's broadcasting add followed by Burn's
/// softmax (forward), for the attention-mask bias shapes (fast path) and one other broadcast shape
/// (the fallback). Burn's own op-by-op gradient is not a reference here: on these peaked rows it is
/// off from the f64 value by up to 4e-5 (measured), ours by 1e-7.
#[test]
fn softmax_with_bias_equals_the_broadcast_add_then_softmax() {
    type Ad = Autodiff<Cpu>;
    let device = Default::default();
    let dims = [3, 4, 5, 67];
    let (rows, last) = (3 * 4 * 5, 67);
    for bias_dims in [[3, 1, 1, 67], [1, 1, 1, 67], [3, 4, 1, 67]] {
        let x = Tensor::<Cpu, 4>::random(dims, Distribution::Normal(0.0, 2.0), &device);
        // Padding-style entries far below the scores, as the attention mask has.
        let bias = Tensor::<Cpu, 4>::random(bias_dims, Distribution::Default, &device)
            .lower_elem(0.3)
            .float()
            .mul_scalar(-1e9);
        let w = Tensor::<Cpu, 4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
        let (xv, wv) = (values(x.clone()), values(w.clone()));
        // The bias broadcast to x's shape, read back from Burn.
        let full_bias = values(bias.clone().expand(dims));

        let xa = Tensor::<Ad, 4>::from_inner(x.clone()).require_grad();
        let y = kdlora_kernels::softmax_with_bias(xa.clone(), Tensor::from_inner(bias.clone()));
        let g = values(
            xa.grad(&(y.clone() * Tensor::from_inner(w)).sum().backward())
                .unwrap(),
        );
        let y = y.inner();
        let burn_y = burn::tensor::activation::softmax(x + bias, 3);
        let to_burn = (y.clone() - burn_y).abs().max().into_scalar();
        assert!(to_burn < 1e-6, "bias {bias_dims:?}: {to_burn} from Burn's");

        let y = values(y);
        for r in 0..rows {
            let row = r * last..(r + 1) * last;
            let z: Vec<f64> = row.clone().map(|i| xv[i] + full_bias[i]).collect();
            let e = softmax64(&z);
            let dot: f64 = row.clone().zip(&e).map(|(i, e)| e * wv[i]).sum();
            for (j, i) in row.enumerate() {
                let de = e[j] * (wv[i] - dot);
                assert!((y[i] - e[j]).abs() < 1e-6, "bias {bias_dims:?} [{i}]: y");
                assert!(
                    close(g[i], de, 1e-5) || (g[i] - de).abs() < 1e-6,
                    "bias {bias_dims:?} [{i}]: gradient {} vs {de}",
                    g[i]
                );
            }
        }
    }
}
