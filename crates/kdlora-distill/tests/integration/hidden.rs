//! Optional hidden-state distillation: masked MSE against an f64 reference, padding ignored,
//! projection learned when hidden sizes differ, layer-map errors.

use burn::backend::{Autodiff, NdArray};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use kdlora_distill::{DistillError, HiddenStateDistillationConfig, LayerMap};

type B = NdArray<f32>;
type AD = Autodiff<NdArray<f32>>;

const BATCH: usize = 2;
const SEQ: usize = 4;

fn pseudo(seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed.wrapping_add(0x9e3779b97f4a7c15);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn states<Bk: Backend>(
    seed: u64,
    count: usize,
    hidden: usize,
    device: &Bk::Device,
) -> Vec<Tensor<Bk, 3>> {
    (0..count)
        .map(|k| {
            Tensor::from_data(
                TensorData::new(
                    pseudo(seed * 100 + k as u64, BATCH * SEQ * hidden),
                    [BATCH, SEQ, hidden],
                ),
                device,
            )
        })
        .collect()
}

/// Row 0: all tokens; row 1: two tokens then padding.
const MASK: [[i64; SEQ]; BATCH] = [[1, 1, 1, 1], [1, 1, 0, 0]];

fn mask<Bk: Backend>(device: &Bk::Device) -> Tensor<Bk, 2, Int> {
    Tensor::from_data(
        TensorData::new(
            MASK.iter().flatten().copied().collect::<Vec<i64>>(),
            [BATCH, SEQ],
        ),
        device,
    )
}

fn data<Bk: Backend, const D: usize>(t: &Tensor<Bk, D>) -> Vec<f64> {
    t.to_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// f64 reference: mean over pairs of sum_{valid tokens, dims} (P(s) - t)^2 / (n_valid * d_t),
/// with P(x) = x W + b (W: [d_s, d_t]) or identity.
fn reference(
    student: &[Vec<f64>],
    teacher: &[Vec<f64>],
    pairs: &[(usize, usize)],
    d_s: usize,
    d_t: usize,
    proj: Option<(&[f64], &[f64])>,
) -> f64 {
    let n_valid: f64 = MASK.iter().flatten().map(|&m| m as f64).sum();
    let mut total = 0.0;
    for &(si, ti) in pairs {
        let mut sum = 0.0;
        for b in 0..BATCH {
            for s in 0..SEQ {
                if MASK[b][s] == 0 {
                    continue;
                }
                let x = &student[si][(b * SEQ + s) * d_s..(b * SEQ + s + 1) * d_s];
                let y = &teacher[ti][(b * SEQ + s) * d_t..(b * SEQ + s + 1) * d_t];
                for o in 0..d_t {
                    let p = match proj {
                        Some((w, bias)) => {
                            bias[o] + (0..d_s).map(|i| x[i] * w[i * d_t + o]).sum::<f64>()
                        }
                        None => x[o],
                    };
                    sum += (p - y[o]).powi(2);
                }
            }
        }
        total += sum / (n_valid * d_t as f64);
    }
    total / pairs.len() as f64
}

fn scalar<Bk: Backend>(t: Tensor<Bk, 1>) -> f64 {
    data(&t)[0]
}

#[test]
fn default_config_is_off_and_maps_i_to_2i_plus_1() {
    let cfg = HiddenStateDistillationConfig::default();
    assert!(!cfg.enabled);
    cfg.validate().unwrap();
    assert_eq!(
        cfg.layer_map.pairs(6),
        vec![(0, 1), (1, 3), (2, 5), (3, 7), (4, 9), (5, 11)]
    );
    let explicit = LayerMap::Pairs {
        pairs: vec![(0, 4), (2, 11)],
    };
    assert_eq!(explicit.pairs(6), vec![(0, 4), (2, 11)]);

    let json = r#"{"enabled": true, "layer_map": {"kind": "affine", "scale": 3, "offset": 2}}"#;
    let parsed: HiddenStateDistillationConfig = serde_json::from_str(json).unwrap();
    assert!(parsed.enabled);
    assert_eq!(parsed.weight, 1.0);
    assert_eq!(
        parsed.layer_map,
        LayerMap::Affine {
            scale: 3,
            offset: 2
        }
    );
    let back: HiddenStateDistillationConfig =
        serde_json::from_str(&serde_json::to_string(&parsed).unwrap()).unwrap();
    assert_eq!(back, parsed);

    for bad in [
        HiddenStateDistillationConfig {
            weight: -1.0,
            ..Default::default()
        },
        HiddenStateDistillationConfig {
            layer_map: LayerMap::Affine {
                scale: 0,
                offset: 0,
            },
            ..Default::default()
        },
        HiddenStateDistillationConfig {
            layer_map: LayerMap::Pairs { pairs: vec![] },
            ..Default::default()
        },
    ] {
        assert!(matches!(
            bad.validate(),
            Err(DistillError::InvalidConfig { .. })
        ));
    }
}

#[test]
fn equal_sizes_masked_mse_matches_reference_and_ignores_padding() {
    let device = Default::default();
    let d = 5;
    let cfg = HiddenStateDistillationConfig::default();
    let module = cfg.init::<B>(d, d, &device);
    assert!(module.projection.is_none());
    assert_eq!(module.num_params(), 0);

    let student = states::<B>(1, 3, d, &device);
    let teacher = states::<B>(2, 6, d, &device);
    let loss = scalar(module.forward(&student, &teacher, mask(&device)).unwrap());
    let s: Vec<Vec<f64>> = student.iter().map(data).collect();
    let t: Vec<Vec<f64>> = teacher.iter().map(data).collect();
    let want = reference(&s, &t, &[(0, 1), (1, 3), (2, 5)], d, d, None);
    assert!(want > 0.1);
    assert!(
        (loss - want).abs() < 1e-5 * want.max(1.0),
        "{loss} vs {want}"
    );

    // Changing padded positions (row 1, tokens 2..4) of every state must not change the loss.
    let pad = Tensor::<B, 3>::full([1, 2, d], 50.0, &device);
    let poke = |v: &[Tensor<B, 3>]| -> Vec<Tensor<B, 3>> {
        v.iter()
            .map(|x| x.clone().slice_assign([1..2, 2..4, 0..d], pad.clone()))
            .collect()
    };
    let poked = scalar(
        module
            .forward(&poke(&student), &poke(&teacher), mask(&device))
            .unwrap(),
    );
    assert!(
        (poked - loss).abs() < 1e-6,
        "padding leaked into the loss: {poked} vs {loss}"
    );
}

#[test]
fn identical_states_give_zero_loss() {
    let device = Default::default();
    let cfg = HiddenStateDistillationConfig {
        enabled: true,
        layer_map: LayerMap::Affine {
            scale: 1,
            offset: 0,
        },
        ..Default::default()
    };
    let module = cfg.init::<B>(4, 4, &device);
    let s = states::<B>(3, 2, 4, &device);
    let loss = scalar(module.forward(&s, &s, mask(&device)).unwrap());
    assert!(loss.abs() < 1e-7, "{loss}");
}

#[test]
fn projection_is_used_and_learned_when_sizes_differ() {
    let device = Default::default();
    let (d_s, d_t) = (3, 5);
    let cfg = HiddenStateDistillationConfig {
        enabled: true,
        layer_map: LayerMap::Pairs {
            pairs: vec![(0, 1), (1, 3)],
        },
        ..Default::default()
    };
    let module = cfg.init::<AD>(d_s, d_t, &device);
    let proj = module
        .projection
        .as_ref()
        .expect("projection when sizes differ");
    assert_eq!(proj.weight.dims(), [d_s, d_t]);
    assert_eq!(module.num_params(), d_s * d_t + d_t);

    let student: Vec<Tensor<AD, 3>> = states::<AD>(4, 2, d_s, &device)
        .into_iter()
        .map(|t| t.require_grad())
        .collect();
    let teacher: Vec<Tensor<AD, 3>> = states::<AD>(5, 4, d_t, &device)
        .into_iter()
        .map(|t| t.require_grad())
        .collect();
    let loss = module.forward(&student, &teacher, mask(&device)).unwrap();

    let w = data(&proj.weight.val());
    let b = data(&proj.bias.as_ref().unwrap().val());
    let s: Vec<Vec<f64>> = student.iter().map(data).collect();
    let t: Vec<Vec<f64>> = teacher.iter().map(data).collect();
    let want = reference(&s, &t, &[(0, 1), (1, 3)], d_s, d_t, Some((&w, &b)));
    let got = scalar(loss.clone());
    assert!((got - want).abs() < 1e-5 * want.max(1.0), "{got} vs {want}");

    let grads = loss.backward();
    let gw = proj
        .weight
        .grad(&grads)
        .expect("projection weight gradient");
    assert!(data(&gw).iter().any(|v| v.abs() > 1e-6));
    assert!(student[0].grad(&grads).is_some());
    assert!(
        teacher[1].grad(&grads).is_none(),
        "teacher states must be detached"
    );

    // Gradient w.r.t. one projection weight against a central finite difference of the
    // f64 reference.
    let eps = 1e-5;
    let k = 7;
    let mut wp = w.clone();
    wp[k] += eps;
    let mut wm = w.clone();
    wm[k] -= eps;
    let fd = (reference(&s, &t, &[(0, 1), (1, 3)], d_s, d_t, Some((&wp, &b)))
        - reference(&s, &t, &[(0, 1), (1, 3)], d_s, d_t, Some((&wm, &b))))
        / (2.0 * eps);
    let g = data(&gw)[k];
    assert!((g - fd).abs() < 1e-4 * fd.abs().max(1e-2), "{g} vs {fd}");
}

#[test]
fn bad_inputs_are_errors() {
    let device = Default::default();
    let module = HiddenStateDistillationConfig::default().init::<B>(4, 4, &device);
    // 6 student states need teacher state 11, only 6 given.
    let err = module
        .forward(
            &states::<B>(6, 6, 4, &device),
            &states::<B>(7, 6, 4, &device),
            mask(&device),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            DistillError::LayerOutOfRange {
                student: 3,
                teacher: 7,
                ..
            }
        ),
        "{err}"
    );
    // Wrong hidden size.
    let err = module
        .forward(
            &states::<B>(8, 1, 3, &device),
            &states::<B>(9, 2, 4, &device),
            mask(&device),
        )
        .unwrap_err();
    assert!(matches!(err, DistillError::ShapeMismatch { .. }), "{err}");
    // No student states.
    let err = module
        .forward(&[], &states::<B>(9, 2, 4, &device), mask(&device))
        .unwrap_err();
    assert!(matches!(err, DistillError::ShapeMismatch { .. }), "{err}");
}

#[test]
fn all_padding_batch_gives_zero_not_nan() {
    let device = Default::default();
    let module = HiddenStateDistillationConfig::default().init::<B>(4, 4, &device);
    let empty_mask = Tensor::<B, 2, Int>::zeros([BATCH, SEQ], &device);
    let loss = scalar(
        module
            .forward(
                &states::<B>(10, 1, 4, &device),
                &states::<B>(11, 2, 4, &device),
                empty_mask,
            )
            .unwrap(),
    );
    assert_eq!(loss, 0.0);
}
