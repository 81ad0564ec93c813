//! Loss values and gradients against closed forms computed independently in f64, and against
//! central finite differences.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use kdlora_distill::{
    DistillError, KdConfig, hard_loss, kd_loss, regression_kd_loss, soft_loss, try_kd_loss,
    try_regression_kd_loss,
};

type B = NdArray<f32>;
type AD = Autodiff<NdArray<f32>>;

// ---------- independent f64 reference ----------

fn log_softmax_ref(z: &[f64], t: f64) -> Vec<f64> {
    let scaled: Vec<f64> = z.iter().map(|v| v / t).collect();
    let max = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + scaled.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
    scaled.iter().map(|v| v - lse).collect()
}

fn softmax_ref(z: &[f64], t: f64) -> Vec<f64> {
    log_softmax_ref(z, t).into_iter().map(f64::exp).collect()
}

fn soft_ref(s: &[Vec<f64>], t: &[Vec<f64>], temp: f64) -> f64 {
    let mut total = 0.0;
    for (zs, zt) in s.iter().zip(t) {
        let ls = log_softmax_ref(zs, temp);
        let lt = log_softmax_ref(zt, temp);
        total += lt
            .iter()
            .zip(&ls)
            .map(|(a, b)| a.exp() * (a - b))
            .sum::<f64>();
    }
    temp * temp * total / s.len() as f64
}

fn hard_ref(s: &[Vec<f64>], labels: &[usize]) -> f64 {
    s.iter()
        .zip(labels)
        .map(|(z, &y)| -log_softmax_ref(z, 1.0)[y])
        .sum::<f64>()
        / s.len() as f64
}

fn total_ref(s: &[Vec<f64>], t: &[Vec<f64>], labels: &[usize], cfg: &KdConfig) -> f64 {
    cfg.alpha * hard_ref(s, labels) + (1.0 - cfg.alpha) * soft_ref(s, t, cfg.temperature)
}

/// Closed-form gradient of the KD loss w.r.t. the student logits.
fn grad_ref(s: &[Vec<f64>], t: &[Vec<f64>], labels: &[usize], cfg: &KdConfig) -> Vec<Vec<f64>> {
    let b = s.len() as f64;
    let temp = cfg.temperature;
    s.iter()
        .zip(t)
        .zip(labels)
        .map(|((zs, zt), &y)| {
            let ps1 = softmax_ref(zs, 1.0);
            let pst = softmax_ref(zs, temp);
            let ptt = softmax_ref(zt, temp);
            (0..zs.len())
                .map(|c| {
                    let onehot = if c == y { 1.0 } else { 0.0 };
                    cfg.alpha * (ps1[c] - onehot) / b
                        + (1.0 - cfg.alpha) * temp * (pst[c] - ptt[c]) / b
                })
                .collect()
        })
        .collect()
}

/// Central finite differences of the f64 reference loss.
fn grad_fd(s: &[Vec<f64>], t: &[Vec<f64>], labels: &[usize], cfg: &KdConfig) -> Vec<Vec<f64>> {
    let eps = 1e-5;
    let mut out = vec![vec![0.0; s[0].len()]; s.len()];
    for i in 0..s.len() {
        for c in 0..s[0].len() {
            let mut plus = s.to_vec();
            plus[i][c] += eps;
            let mut minus = s.to_vec();
            minus[i][c] -= eps;
            out[i][c] = (total_ref(&plus, t, labels, cfg) - total_ref(&minus, t, labels, cfg))
                / (2.0 * eps);
        }
    }
    out
}

// ---------- helpers ----------

/// Deterministic pseudo-random logits in `[-scale, scale]` (no RNG dependency needed).
fn logits(seed: u64, batch: usize, classes: usize, scale: f64) -> Vec<Vec<f64>> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..batch)
        .map(|_| {
            (0..classes)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let u = (state >> 11) as f64 / (1u64 << 53) as f64;
                    // Round to f32 so that reference and tensor see identical inputs.
                    ((2.0 * u - 1.0) * scale) as f32 as f64
                })
                .collect()
        })
        .collect()
}

fn labels_for(batch: usize, classes: usize) -> Vec<usize> {
    (0..batch).map(|i| (i * 7 + 1) % classes).collect()
}

fn to_tensor<Bk: Backend>(rows: &[Vec<f64>], device: &Bk::Device) -> Tensor<Bk, 2> {
    let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), rows[0].len()]), device)
}

fn labels_tensor<Bk: Backend>(labels: &[usize], device: &Bk::Device) -> Tensor<Bk, 1, Int> {
    let v: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    Tensor::from_data(TensorData::new(v, [labels.len()]), device)
}

fn scalar<Bk: Backend>(t: Tensor<Bk, 1>) -> f64 {
    let v = t.into_data().convert::<f32>().to_vec::<f32>().unwrap();
    assert_eq!(v.len(), 1);
    v[0] as f64
}

fn values<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f64> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

fn assert_close(got: f64, want: f64, rtol: f64, atol: f64, what: &str) {
    assert!(
        got.is_finite() && (got - want).abs() <= atol + rtol * want.abs(),
        "{what}: got {got}, want {want}"
    );
}

fn student_grad(
    s: &[Vec<f64>],
    t: &[Vec<f64>],
    labels: &[usize],
    cfg: &KdConfig,
) -> (Vec<f64>, KdValues) {
    let device = Default::default();
    let student = to_tensor::<AD>(s, &device).require_grad();
    let teacher = to_tensor::<AD>(t, &device).require_grad();
    let loss = kd_loss(
        student.clone(),
        teacher.clone(),
        labels_tensor::<AD>(labels, &device),
        cfg,
    );
    let grads = loss.total.backward();
    assert!(
        teacher.grad(&grads).is_none(),
        "teacher logits must not receive a gradient"
    );
    let g = values(student.grad(&grads).expect("student gradient"));
    let vals = KdValues {
        total: scalar(loss.total),
        hard: scalar(loss.hard),
        soft: scalar(loss.soft),
    };
    (g, vals)
}

struct KdValues {
    total: f64,
    hard: f64,
    soft: f64,
}

const TEMPS: [f64; 5] = [0.5, 1.0, 2.0, 4.0, 10.0];
const ALPHAS: [f64; 4] = [0.0, 0.3, 0.5, 1.0];
const CLASSES: [usize; 3] = [2, 3, 5];

// ---------- values ----------

#[test]
fn soft_loss_matches_closed_form() {
    let device = Default::default();
    let mut checked = 0;
    for (k, &classes) in CLASSES.iter().enumerate() {
        let s = logits(1 + k as u64, 6, classes, 4.0);
        let t = logits(100 + k as u64, 6, classes, 4.0);
        for &temp in &TEMPS {
            let got = scalar(soft_loss(
                to_tensor::<B>(&s, &device),
                to_tensor::<B>(&t, &device),
                temp,
            ));
            let want = soft_ref(&s, &t, temp);
            assert!(want > 1e-3, "test data should give a non-trivial KL");
            assert_close(got, want, 1e-4, 1e-6, &format!("soft C={classes} T={temp}"));
            checked += 1;
        }
    }
    assert_eq!(checked, 15);
}

#[test]
fn hard_loss_matches_closed_form() {
    let device = Default::default();
    for (k, &classes) in CLASSES.iter().enumerate() {
        let s = logits(7 + k as u64, 5, classes, 3.0);
        let labels = labels_for(5, classes);
        let got = scalar(hard_loss(
            to_tensor::<B>(&s, &device),
            labels_tensor::<B>(&labels, &device),
        ));
        assert_close(
            got,
            hard_ref(&s, &labels),
            1e-5,
            1e-6,
            &format!("hard C={classes}"),
        );
    }
}

#[test]
fn kd_loss_mixes_hard_and_soft() {
    let device = Default::default();
    for (k, &classes) in CLASSES.iter().enumerate() {
        let s = logits(20 + k as u64, 4, classes, 3.0);
        let t = logits(30 + k as u64, 4, classes, 3.0);
        let labels = labels_for(4, classes);
        for &temperature in &[1.0, 2.0, 5.0] {
            for &alpha in &ALPHAS {
                let cfg = KdConfig {
                    temperature,
                    alpha,
                    ..KdConfig::default()
                };
                let out = kd_loss(
                    to_tensor::<B>(&s, &device),
                    to_tensor::<B>(&t, &device),
                    labels_tensor::<B>(&labels, &device),
                    &cfg,
                );
                let what = format!("C={classes} T={temperature} alpha={alpha}");
                assert_close(scalar(out.hard), hard_ref(&s, &labels), 1e-5, 1e-6, &what);
                assert_close(
                    scalar(out.soft),
                    soft_ref(&s, &t, temperature),
                    1e-4,
                    1e-6,
                    &what,
                );
                assert_close(
                    scalar(out.total),
                    total_ref(&s, &t, &labels, &cfg),
                    1e-4,
                    1e-6,
                    &what,
                );
            }
        }
    }
}

#[test]
fn kl_is_zero_for_identical_inputs() {
    let device = Default::default();
    for &classes in &CLASSES {
        let z = logits(41, 8, classes, 6.0);
        for &temp in &TEMPS {
            let student = to_tensor::<AD>(&z, &device).require_grad();
            let loss = soft_loss(student.clone(), to_tensor::<AD>(&z, &device), temp);
            let grads = loss.backward();
            let value = scalar(loss);
            assert!(value.abs() < 1e-6, "C={classes} T={temp}: KL={value}");
            let g = values(student.grad(&grads).unwrap());
            assert!(
                g.iter().all(|v| v.abs() < 1e-6),
                "C={classes} T={temp}: {g:?}"
            );
        }
    }
    // Shifting all logits of a row by a constant leaves the distribution (and the KL) unchanged.
    let z = logits(42, 3, 4, 2.0);
    let shifted: Vec<Vec<f64>> = z
        .iter()
        .map(|r| r.iter().map(|v| v + 17.0).collect())
        .collect();
    let kl = scalar(soft_loss(
        to_tensor::<B>(&z, &device),
        to_tensor::<B>(&shifted, &device),
        2.0,
    ));
    assert!(kl.abs() < 1e-5, "shift-invariance: KL={kl}");
}

#[test]
fn extreme_logits_stay_finite_and_correct() {
    // Confident, opposing teacher and student at magnitude 1e4, plus a tie row.
    let s = vec![
        vec![1e4, -1e4, 0.0],
        vec![-1e4, 1e4, 1e4],
        vec![0.0, 0.0, 0.0],
    ];
    let t = vec![
        vec![-1e4, 1e4, 0.0],
        vec![1e4, -1e4, -1e4],
        vec![1e4, -1e4, 0.0],
    ];
    let labels = vec![1, 0, 2];
    for &temperature in &[1.0, 2.0, 10.0] {
        for &alpha in &[0.0, 0.5, 1.0] {
            let cfg = KdConfig {
                temperature,
                alpha,
                ..KdConfig::default()
            };
            let (g, v) = student_grad(&s, &t, &labels, &cfg);
            let what = format!("extreme T={temperature} alpha={alpha}");
            assert!(
                v.total.is_finite() && v.hard.is_finite() && v.soft.is_finite(),
                "{what}"
            );
            assert_close(v.total, total_ref(&s, &t, &labels, &cfg), 1e-4, 1e-3, &what);
            assert_close(v.soft, soft_ref(&s, &t, temperature), 1e-4, 1e-3, &what);
            let want = grad_ref(&s, &t, &labels, &cfg);
            for (gv, wv) in g.iter().zip(want.iter().flatten()) {
                assert_close(*gv, *wv, 1e-4, 1e-5, &format!("{what} grad"));
            }
        }
    }
}

// ---------- gradients ----------

#[test]
fn gradients_match_closed_form_and_finite_differences() {
    let mut checked = 0;
    for (k, &classes) in CLASSES.iter().enumerate() {
        let s = logits(50 + k as u64, 4, classes, 3.0);
        let t = logits(60 + k as u64, 4, classes, 3.0);
        let labels = labels_for(4, classes);
        for &temperature in &[0.5, 1.0, 2.0, 4.0] {
            for &alpha in &ALPHAS {
                let cfg = KdConfig {
                    temperature,
                    alpha,
                    ..KdConfig::default()
                };
                let what = format!("C={classes} T={temperature} alpha={alpha}");
                let (g, _) = student_grad(&s, &t, &labels, &cfg);
                let closed = grad_ref(&s, &t, &labels, &cfg);
                let fd = grad_fd(&s, &t, &labels, &cfg);
                for ((gv, cv), fv) in g
                    .iter()
                    .zip(closed.iter().flatten())
                    .zip(fd.iter().flatten())
                {
                    // The closed form itself is checked against finite differences in f64 ...
                    assert_close(*cv, *fv, 1e-5, 1e-8, &format!("{what} closed vs fd"));
                    // ... and Burn's autodiff against both, at f32 precision.
                    assert_close(*gv, *cv, 1e-4, 1e-6, &format!("{what} burn vs closed"));
                    assert_close(*gv, *fv, 1e-4, 1e-6, &format!("{what} burn vs fd"));
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, (2 + 3 + 5) * 4 * 4 * 4);
}

#[test]
fn burn_loss_is_consistent_with_its_gradient() {
    // Finite differences through Burn's own forward pass (f32, so a coarse step), which checks
    // that the value and gradient Burn computes belong to the same function.
    let device = burn::backend::ndarray::NdArrayDevice::default();
    let s = logits(70, 3, 3, 2.0);
    let t = logits(71, 3, 3, 2.0);
    let labels = labels_for(3, 3);
    let cfg = KdConfig {
        temperature: 3.0,
        alpha: 0.4,
        ..KdConfig::default()
    };
    let (g, _) = student_grad(&s, &t, &labels, &cfg);
    let eval = |rows: &[Vec<f64>]| {
        scalar(
            kd_loss(
                to_tensor::<B>(rows, &device),
                to_tensor::<B>(&t, &device),
                labels_tensor::<B>(&labels, &device),
                &cfg,
            )
            .total,
        )
    };
    let eps = 1e-2;
    for i in 0..3 {
        for c in 0..3 {
            let mut plus = s.clone();
            plus[i][c] += eps;
            let mut minus = s.clone();
            minus[i][c] -= eps;
            let fd = (eval(&plus) - eval(&minus)) / (2.0 * eps);
            assert_close(g[i * 3 + c], fd, 1e-2, 2e-4, &format!("burn fd [{i},{c}]"));
        }
    }
}

#[test]
fn t_squared_keeps_soft_gradient_scale() {
    // Soft part only (alpha = 0). Its gradient is T * (softmax(z_S/T) - softmax(z_T/T)) / b,
    // which tends to (centre(z_S) - centre(z_T)) / (C * b) as T grows: with the T^2 factor the
    // gradient scale settles instead of vanishing like 1/T^2.
    let s = logits(80, 4, 5, 3.0);
    let t = logits(81, 4, 5, 3.0);
    let labels = labels_for(4, 5);
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let grad_at = |temperature: f64| {
        student_grad(
            &s,
            &t,
            &labels,
            &KdConfig {
                temperature,
                alpha: 0.0,
                ..KdConfig::default()
            },
        )
        .0
    };
    let (b, c) = (4.0, 5.0);
    let limit: Vec<f64> = s
        .iter()
        .zip(&t)
        .flat_map(|(zs, zt)| {
            let ms = zs.iter().sum::<f64>() / c;
            let mt = zt.iter().sum::<f64>() / c;
            zs.iter()
                .zip(zt)
                .map(move |(a, bb)| ((a - ms) - (bb - mt)) / (c * b))
                .collect::<Vec<_>>()
        })
        .collect();
    let temps = [2.0, 4.0, 8.0, 16.0, 64.0];
    let norms: Vec<f64> = temps.iter().map(|&t| norm(&grad_at(t))).collect();
    for w in norms.windows(2) {
        let ratio = w[1] / w[0];
        // Without T^2 the ratio for a doubling of T would be about 1/4 at large T.
        assert!(
            (0.6..=1.5).contains(&ratio),
            "gradient norm changes too much with T: {norms:?}"
        );
    }
    let g64 = grad_at(64.0);
    let err: Vec<f64> = g64.iter().zip(&limit).map(|(a, b)| a - b).collect();
    assert!(
        norm(&err) < 0.05 * norm(&limit),
        "T=64 gradient {g64:?} should approach the high-temperature limit {limit:?}"
    );
}

// ---------- regression ----------

#[test]
fn regression_loss_closed_form_and_gradient() {
    let device = Default::default();
    let s: [f64; 5] = [0.3, -1.2, 2.5, 4.0, 0.0];
    let t: [f64; 5] = [0.1, -0.7, 3.0, 3.5, 1.0];
    let y: [f64; 5] = [0.0, -1.0, 2.0, 5.0, 0.5];
    let b = s.len() as f64;
    for &alpha in &ALPHAS {
        // The temperature must not matter for regression.
        for &temperature in &[1.0, 4.0] {
            let cfg = KdConfig {
                temperature,
                alpha,
                ..KdConfig::default()
            };
            let student = Tensor::<AD, 2>::from_data(
                TensorData::new(s.iter().map(|&v| v as f32).collect::<Vec<_>>(), [5, 1]),
                &device,
            )
            .require_grad();
            let teacher = Tensor::<AD, 2>::from_data(
                TensorData::new(t.iter().map(|&v| v as f32).collect::<Vec<_>>(), [5, 1]),
                &device,
            )
            .require_grad();
            let targets = Tensor::<AD, 1>::from_data(
                TensorData::new(y.iter().map(|&v| v as f32).collect::<Vec<_>>(), [5]),
                &device,
            );
            let out = regression_kd_loss(student.clone(), teacher.clone(), targets, &cfg);
            let grads = out.total.backward();
            assert!(teacher.grad(&grads).is_none());
            let g = values(student.grad(&grads).unwrap());

            let mse_y = s.iter().zip(&y).map(|(p, q)| (p - q).powi(2)).sum::<f64>() / b;
            let mse_t = s.iter().zip(&t).map(|(p, q)| (p - q).powi(2)).sum::<f64>() / b;
            let what = format!("regression alpha={alpha} T={temperature}");
            assert_close(scalar(out.hard), mse_y, 1e-5, 1e-6, &what);
            assert_close(scalar(out.soft), mse_t, 1e-5, 1e-6, &what);
            assert_close(
                scalar(out.total),
                alpha * mse_y + (1.0 - alpha) * mse_t,
                1e-5,
                1e-6,
                &what,
            );
            let total = |sv: &[f64]| {
                let a = sv.iter().zip(&y).map(|(p, q)| (p - q).powi(2)).sum::<f64>() / b;
                let c = sv.iter().zip(&t).map(|(p, q)| (p - q).powi(2)).sum::<f64>() / b;
                alpha * a + (1.0 - alpha) * c
            };
            for i in 0..5 {
                let closed =
                    alpha * 2.0 * (s[i] - y[i]) / b + (1.0 - alpha) * 2.0 * (s[i] - t[i]) / b;
                let eps = 1e-6;
                let mut plus = s;
                plus[i] += eps;
                let mut minus = s;
                minus[i] -= eps;
                let fd = (total(&plus) - total(&minus)) / (2.0 * eps);
                assert_close(closed, fd, 1e-6, 1e-8, &format!("{what} closed vs fd"));
                assert_close(g[i], closed, 1e-5, 1e-6, &format!("{what} burn vs closed"));
            }
        }
    }
}

// ---------- checked variants ----------

#[test]
fn try_variants_report_bad_inputs() {
    let device = Default::default();
    let s = to_tensor::<B>(&logits(90, 3, 4, 1.0), &device);
    let t_bad = to_tensor::<B>(&logits(91, 3, 5, 1.0), &device);
    let labels = labels_tensor::<B>(&[0, 1, 2], &device);
    let err = try_kd_loss(s.clone(), t_bad, labels.clone(), &KdConfig::default()).unwrap_err();
    assert!(
        matches!(&err, DistillError::ShapeMismatch { context, .. } if context.contains("teacher")),
        "{err}"
    );
    let short_labels = labels_tensor::<B>(&[0, 1], &device);
    let err = try_kd_loss(s.clone(), s.clone(), short_labels, &KdConfig::default()).unwrap_err();
    assert!(
        matches!(&err, DistillError::ShapeMismatch { context, .. } if context.contains("labels")),
        "{err}"
    );
    let bad_cfg = KdConfig {
        temperature: 0.0,
        alpha: 0.5,
        ..KdConfig::default()
    };
    let err = try_kd_loss(s.clone(), s.clone(), labels.clone(), &bad_cfg).unwrap_err();
    assert!(matches!(
        err,
        DistillError::InvalidConfig {
            key: "temperature",
            ..
        }
    ));
    let ok = try_kd_loss(s.clone(), s.clone(), labels, &KdConfig::default()).unwrap();
    assert!(scalar(ok.soft).abs() < 1e-6);

    // Regression expects [batch, 1] outputs.
    let targets = Tensor::<B, 1>::from_floats([0.0, 1.0, 2.0], &device);
    let err = try_regression_kd_loss(s.clone(), s.clone(), targets.clone(), &KdConfig::default())
        .unwrap_err();
    assert!(matches!(err, DistillError::ShapeMismatch { .. }), "{err}");
    let one = Tensor::<B, 2>::from_floats([[0.0], [1.0], [2.0]], &device);
    let ok = try_regression_kd_loss(one.clone(), one, targets, &KdConfig::default()).unwrap();
    assert!(scalar(ok.total).abs() < 1e-6);
}
