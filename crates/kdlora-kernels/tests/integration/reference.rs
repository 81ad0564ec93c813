//! CPU tests: the reference against closed forms, the hand-written `Autodiff` backward against Burn's
//! autodiff of plain ops, the N-d helper, dropout with a fixed mask, the checked entry point and the
//! switch that turns the fused path off.

use crate::common;

use crate::common::{
    Cpu, CpuAd, Problem, assert_close, assert_outputs_close, fused_outputs, fused_switch_lock,
};
use burn::tensor::{Distribution, Tensor, TensorData};
use kdlora_kernels::{
    KernelError, LoraGradRequest, LoraOps, fused_enabled, lora_delta_add,
    reference::{lora_backward_reference, lora_forward_reference},
    set_fused_enabled, try_lora_delta_add,
};

fn t2(d: &TensorData) -> Tensor<Cpu, 2> {
    Tensor::from_data(d.clone(), &Default::default())
}

/// Triple loop over plain vectors: base + s * sum_k (sum_i x[t,i] a[k,i]) b[o,k].
fn naive_forward(p: &Problem) -> Vec<f32> {
    let x = p.x.to_vec::<f32>().unwrap();
    let base = p.base.to_vec::<f32>().unwrap();
    let a = p.a.to_vec::<f32>().unwrap();
    let b = p.b.to_vec::<f32>().unwrap();
    let mut y = base.clone();
    for t in 0..p.tokens {
        for k in 0..p.rank {
            let h: f64 = (0..p.d_in)
                .map(|i| x[t * p.d_in + i] as f64 * a[k * p.d_in + i] as f64)
                .sum();
            for o in 0..p.d_out {
                y[t * p.d_out + o] += (p.scaling as f64 * h * b[o * p.rank + k] as f64) as f32;
            }
        }
    }
    y
}

#[test]
fn reference_forward_matches_triple_loop() {
    for &(tokens, d_in, d_out, rank) in &[(7, 5, 3, 1), (33, 17, 29, 4), (10, 64, 48, 16)] {
        let p = Problem::random(tokens, d_in, d_out, rank);
        let y = lora_forward_reference(t2(&p.x), t2(&p.base), t2(&p.a), t2(&p.b), p.scaling);
        let expected = TensorData::new(naive_forward(&p), [tokens, d_out]);
        assert_close(&y.into_data(), &expected, 1e-5, "reference forward");
    }
}

#[test]
fn reference_backward_matches_closed_form_entries() {
    // dB[o,k] = s * sum_t dY[t,o] h[t,k]; dA[k,i] = s * sum_t (dY B)[t,k] x[t,i]; checked entry-wise.
    let p = Problem::random(9, 6, 5, 3);
    let g = lora_backward_reference(
        t2(&p.x),
        t2(&p.a),
        t2(&p.b),
        None,
        t2(&p.w),
        p.scaling,
        LoraGradRequest::ALL,
    );
    let (x, a, b, dy) = (
        p.x.to_vec::<f32>().unwrap(),
        p.a.to_vec::<f32>().unwrap(),
        p.b.to_vec::<f32>().unwrap(),
        p.w.to_vec::<f32>().unwrap(),
    );
    let h = |t: usize, k: usize| {
        (0..p.d_in)
            .map(|i| x[t * 6 + i] * a[k * 6 + i])
            .sum::<f32>()
    };
    let gy = |t: usize, k: usize| {
        (0..p.d_out)
            .map(|o| dy[t * 5 + o] * b[o * 3 + k])
            .sum::<f32>()
    };
    let db = g.b.unwrap().into_data().to_vec::<f32>().unwrap();
    let da = g.a.unwrap().into_data().to_vec::<f32>().unwrap();
    let dx = g.x.unwrap().into_data().to_vec::<f32>().unwrap();
    for o in 0..5 {
        for k in 0..3 {
            let e = p.scaling * (0..9).map(|t| dy[t * 5 + o] * h(t, k)).sum::<f32>();
            assert!(
                (db[o * 3 + k] - e).abs() <= 1e-4 * e.abs().max(1.0),
                "dB[{o},{k}]"
            );
        }
    }
    for k in 0..3 {
        for i in 0..6 {
            let e = p.scaling * (0..9).map(|t| gy(t, k) * x[t * 6 + i]).sum::<f32>();
            assert!(
                (da[k * 6 + i] - e).abs() <= 1e-4 * e.abs().max(1.0),
                "dA[{k},{i}]"
            );
        }
    }
    for t in 0..9 {
        for i in 0..6 {
            let e = p.scaling * (0..3).map(|k| gy(t, k) * a[k * 6 + i]).sum::<f32>();
            assert!(
                (dx[t * 6 + i] - e).abs() <= 1e-4 * e.abs().max(1.0),
                "dx[{t},{i}]"
            );
        }
    }
}

#[test]
fn custom_autodiff_backward_matches_autodiff_of_plain_ops() {
    let _guard = fused_switch_lock();
    set_fused_enabled(true);
    for &(tokens, d_in, d_out, rank) in &[(1, 3, 2, 1), (37, 29, 33, 4), (130, 70, 65, 8)] {
        let p = Problem::random(tokens, d_in, d_out, rank);
        let expected = common::reference_outputs(&p);
        let actual = fused_outputs::<CpuAd>(&p, &Default::default());
        assert_outputs_close(
            &actual,
            &expected,
            1e-4,
            &format!("{tokens}x{d_in}->{d_out} r{rank}"),
        );
    }
}

#[test]
fn backward_skips_untracked_inputs() {
    // Only A and B tracked (the LoRA training case with frozen input): x and base get no gradient.
    let p = Problem::random(12, 8, 6, 2);
    let dev = Default::default();
    let x = Tensor::<CpuAd, 2>::from_data(p.x.clone(), &dev);
    let base = Tensor::<CpuAd, 2>::from_data(p.base.clone(), &dev);
    let a = Tensor::<CpuAd, 2>::from_data(p.a.clone(), &dev).require_grad();
    let b = Tensor::<CpuAd, 2>::from_data(p.b.clone(), &dev).require_grad();
    let y = Tensor::<CpuAd, 2>::from_primitive(burn::tensor::TensorPrimitive::Float(
        CpuAd::lora_forward(
            x.clone().into_primitive().tensor(),
            base.clone().into_primitive().tensor(),
            a.clone().into_primitive().tensor(),
            b.clone().into_primitive().tensor(),
            p.scaling,
        ),
    ));
    let grads = y.sum().backward();
    assert!(x.grad(&grads).is_none());
    assert!(base.grad(&grads).is_none());
    // The loss here is sum(y), so compare against a plain-op run whose loss weights are ones.
    let ones = Problem {
        w: Tensor::<Cpu, 2>::ones([12, 6], &Default::default()).into_data(),
        ..p.clone()
    };
    let expected_ones = common::reference_outputs(&ones);
    assert_close(
        &a.grad(&grads).unwrap().into_data(),
        &expected_ones.da,
        1e-4,
        "dA",
    );
    assert_close(
        &b.grad(&grads).unwrap().into_data(),
        &expected_ones.db,
        1e-4,
        "dB",
    );
}

#[test]
fn three_d_input_is_flattened_into_tokens() {
    let _guard = fused_switch_lock();
    set_fused_enabled(true);
    let dev = Default::default();
    let u = Distribution::Uniform(-1.0, 1.0);
    let x = Tensor::<Cpu, 3>::random([3, 5, 7], u, &dev);
    let base = Tensor::<Cpu, 3>::random([3, 5, 4], u, &dev);
    let a = Tensor::<Cpu, 2>::random([2, 7], u, &dev);
    let b = Tensor::<Cpu, 2>::random([4, 2], u, &dev);
    let y = lora_delta_add(x.clone(), base.clone(), a.clone(), b.clone(), 0.5);
    assert_eq!(y.dims(), [3, 5, 4]);
    let flat = lora_forward_reference(x.reshape([15, 7]), base.reshape([15, 4]), a, b, 0.5);
    assert_close(
        &y.reshape([15, 4]).into_data(),
        &flat.into_data(),
        1e-6,
        "3-d",
    );
}

#[test]
fn dropout_mask_applied_before_the_op_matches_reference() {
    let _guard = fused_switch_lock();
    set_fused_enabled(true);
    let p = Problem::random(40, 24, 16, 4);
    let keep = 0.9f32;
    let mask = Tensor::<Cpu, 2>::random(
        [40, 24],
        Distribution::Bernoulli(keep as f64),
        &Default::default(),
    )
    .into_data();
    let dropped = |x: &TensorData| {
        let m = mask.to_vec::<f32>().unwrap();
        let v: Vec<f32> = x
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .zip(&m)
            .map(|(x, m)| x * m / keep)
            .collect();
        TensorData::new(v, [40, 24])
    };
    // Caller-side dropout with the mask as a tensor op (so dx flows through it) ...
    let dev = Default::default();
    let x = Tensor::<CpuAd, 2>::from_data(p.x.clone(), &dev).require_grad();
    let m = Tensor::<CpuAd, 2>::from_data(mask.clone(), &dev);
    let base = Tensor::<CpuAd, 2>::from_data(p.base.clone(), &dev);
    let a = Tensor::<CpuAd, 2>::from_data(p.a.clone(), &dev).require_grad();
    let b = Tensor::<CpuAd, 2>::from_data(p.b.clone(), &dev).require_grad();
    let y = lora_delta_add(x.clone() * m / keep, base, a, b, p.scaling);
    let grads = y.clone().sum().backward();
    // ... equals the reference on the pre-masked input.
    let y_ref = lora_forward_reference(
        t2(&dropped(&p.x)),
        t2(&p.base),
        t2(&p.a),
        t2(&p.b),
        p.scaling,
    );
    assert_close(&y.into_data(), &y_ref.into_data(), 1e-5, "masked forward");
    // dx is zero exactly where the mask dropped the input.
    let dx = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
    for (g, m) in dx.iter().zip(mask.to_vec::<f32>().unwrap()) {
        if m == 0.0 {
            assert_eq!(*g, 0.0);
        }
    }
}

#[test]
fn switch_off_uses_reference_and_gives_same_result() {
    let _guard = fused_switch_lock();
    let p = Problem::random(21, 13, 11, 4);
    set_fused_enabled(false);
    assert!(!fused_enabled());
    let off = fused_outputs::<CpuAd>(&p, &Default::default());
    set_fused_enabled(true);
    assert!(fused_enabled());
    let on = fused_outputs::<CpuAd>(&p, &Default::default());
    assert_outputs_close(&on, &off, 1e-5, "switch");
}

#[test]
fn checked_entry_point_rejects_bad_shapes_and_scaling() {
    let dev = Default::default();
    let x = Tensor::<Cpu, 3>::zeros([2, 3, 4], &dev);
    let base = Tensor::<Cpu, 3>::zeros([2, 3, 5], &dev);
    let a = Tensor::<Cpu, 2>::zeros([2, 4], &dev);
    let b = Tensor::<Cpu, 2>::zeros([5, 2], &dev);
    assert!(try_lora_delta_add(x.clone(), base.clone(), a.clone(), b.clone(), 1.0).is_ok());

    let bad_a = Tensor::<Cpu, 2>::zeros([2, 3], &dev);
    let err = try_lora_delta_add(x.clone(), base.clone(), bad_a, b.clone(), 1.0).unwrap_err();
    assert!(matches!(err, KernelError::ShapeMismatch { .. }), "{err}");
    assert!(err.to_string().contains("A must be [r, in]"), "{err}");

    let bad_rank = Tensor::<Cpu, 2>::zeros([5, 3], &dev);
    let err = try_lora_delta_add(x.clone(), base.clone(), a.clone(), bad_rank, 1.0).unwrap_err();
    assert!(err.to_string().contains("rank"), "{err}");

    let bad_base = Tensor::<Cpu, 3>::zeros([2, 4, 5], &dev);
    let err = try_lora_delta_add(x.clone(), bad_base, a.clone(), b.clone(), 1.0).unwrap_err();
    assert!(err.to_string().contains("leading"), "{err}");

    let err = try_lora_delta_add(x, base, a, b, f32::NAN).unwrap_err();
    assert!(matches!(err, KernelError::NonFiniteScaling(_)));
}
