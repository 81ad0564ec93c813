//! Targeting, injection, counting and merging on a toy model (NdArray backend).

use crate::common::{D, FF, LABELS, Toy, input, max_abs_diff, randomize_lora_b};
use burn::backend::NdArray;
use burn::module::Module;
use kdlora_lora::{
    LoraConfig, LoraError, LoraInit, TargetModules, count_params, inject, merge, merge_and_unload,
    plan, unmerge,
};

type B = NdArray<f32>;

fn cfg(targets: &[&str]) -> LoraConfig {
    LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: Some(TargetModules::names(targets)),
        ..LoraConfig::default()
    }
}

#[test]
fn default_targets_are_query_and_value() {
    let device = Default::default();
    let model = Toy::<B>::new(2, &device);
    let p = plan(&model, &LoraConfig::default()).unwrap();
    assert_eq!(
        p.targets,
        vec![
            "bert.encoder.layer.0.attention.self.query",
            "bert.encoder.layer.0.attention.self.value",
            "bert.encoder.layer.1.attention.self.query",
            "bert.encoder.layer.1.attention.self.value",
        ]
    );
    assert_eq!(p.modules_to_save, vec!["classifier"]);
}

#[test]
fn dotted_names_and_regex_select_exactly_their_modules() {
    let device = Default::default();
    let model = Toy::<B>::new(3, &device);
    let p = plan(&model, &cfg(&["attention.output.dense"])).unwrap();
    assert_eq!(p.targets.len(), 3);
    assert!(
        p.targets
            .iter()
            .all(|t| t.ends_with(".attention.output.dense"))
    );

    let regex = LoraConfig {
        target_modules: Some(TargetModules::Regex(r".*layer\.1\..*\.(key|dense)".into())),
        ..cfg(&[])
    };
    let p = plan(&model, &regex).unwrap();
    assert_eq!(
        p.targets,
        vec![
            "bert.encoder.layer.1.attention.self.key",
            "bert.encoder.layer.1.attention.output.dense",
            "bert.encoder.layer.1.intermediate.dense",
            "bert.encoder.layer.1.output.dense",
        ]
    );
}

#[test]
fn a_target_that_matches_nothing_lists_what_exists() {
    let device = Default::default();
    let model = Toy::<B>::new(2, &device);
    let err = inject(model, &cfg(&["query", "q_lin"]), &device).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, LoraError::TargetNotFound { count: 13, .. }),
        "{msg}"
    );
    assert!(msg.contains("\"q_lin\""), "{msg}");
    assert!(
        msg.contains("bert.encoder.layer.0.attention.self.query"),
        "{msg}"
    );

    let model = Toy::<B>::new(1, &device);
    let regex = LoraConfig {
        target_modules: Some(TargetModules::Regex("query".into())),
        ..cfg(&[])
    };
    assert!(matches!(
        inject(model, &regex, &device),
        Err(LoraError::TargetNotFound { .. })
    ));

    let model = Toy::<B>::with_names(1, "gpt", "gpt2", &device);
    let err = inject(model, &LoraConfig::default(), &device).unwrap_err();
    assert!(matches!(err, LoraError::NoDefaultTargets { .. }), "{err}");
}

#[test]
fn injection_preserves_outputs_and_counts_are_exact() {
    let device = Default::default();
    let model = Toy::<B>::new(2, &device);
    let x = input::<B>(5, &device);
    let before = model.forward(x.clone());
    let total_before = model.num_params();
    let c = cfg(&["query", "value", "attention.output.dense"]);
    let model = inject(model, &c, &device).unwrap();
    // B = 0: the adapted model computes exactly the base model.
    assert_eq!(max_abs_diff(before, model.forward(x)), 0.0);

    let counts = count_params(&model, &c);
    let per_adapter = c.r * (D + D);
    assert_eq!(counts.adapter, 2 * 3 * per_adapter);
    assert_eq!(counts.head, D * LABELS + LABELS);
    assert_eq!(counts.total, total_before + counts.adapter);
    assert_eq!(counts.base(), total_before);
    // Closed form of the whole toy: 2 layers x (4 D x D + D x FF + FF x D + biases + norm) + head.
    let layer = 4 * (D * D + D) + (D * FF + FF) + (FF * D + D) + 2 * D;
    assert_eq!(total_before, 2 * layer + D * LABELS + LABELS);
    assert_eq!(counts.trainable(true), counts.adapter + counts.head);

    // Injecting twice is an error, not a silent second adapter.
    let err = inject(model, &c, &device).unwrap_err();
    assert!(matches!(err, LoraError::AlreadyAdapted { .. }), "{err}");
}

#[test]
fn init_is_seeded_and_has_the_right_scale() {
    let device = Default::default();
    let c = cfg(&["query"]);
    let a1 = inject(Toy::<B>::new(1, &device), &c, &device).unwrap();
    let a2 = inject(Toy::<B>::new(1, &device), &c, &device).unwrap();
    let get = |m: &Toy<B>| {
        let ad = m.layers[0].query.adapter.as_ref().unwrap();
        (
            ad.lora_a.val().into_data().to_vec::<f32>().unwrap(),
            ad.lora_b.val().into_data().to_vec::<f32>().unwrap(),
            ad.scaling,
        )
    };
    let (x1, b1, s) = get(&a1);
    let (x2, _, _) = get(&a2);
    assert_eq!(x1, x2, "same seed, same A");
    assert!(b1.iter().all(|&v| v == 0.0), "B starts at zero");
    assert_eq!(s, 2.0);
    let bound = 1.0 / (D as f32).sqrt();
    assert!(x1.iter().all(|v| v.abs() <= bound));
    assert!(x1.iter().any(|v| v.abs() > bound / 2.0));

    let other = inject(
        Toy::<B>::new(1, &device),
        &LoraConfig {
            seed: 7,
            ..c.clone()
        },
        &device,
    )
    .unwrap();
    assert_ne!(get(&other).0, x1, "another seed, another A");

    let gauss = LoraConfig {
        init: LoraInit::Gaussian,
        r: 2,
        ..c
    };
    let g = inject(Toy::<B>::new(1, &device), &gauss, &device).unwrap();
    let (xg, _, _) = get(&g);
    let mean = xg.iter().sum::<f32>() / xg.len() as f32;
    let std = (xg.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / xg.len() as f32).sqrt();
    // N(0, (1/r)^2) = N(0, 0.25) over 24 draws: loose bounds that still reject Kaiming's 0.17.
    assert!((0.3..0.75).contains(&std), "std {std}");
}

#[test]
fn merged_and_unmerged_outputs_agree() {
    let device = Default::default();
    let c = LoraConfig {
        use_rslora: true,
        ..cfg(&["query", "value", "attention.output.dense", "output.dense"])
    };
    let mut model = inject(Toy::<B>::new(2, &device), &c, &device).unwrap();
    randomize_lora_b(&mut model, &device);
    let x = input::<B>(4, &device);
    let base_w = model.layers[1].attn_out.base.weight.val();
    let adapted = model.forward(x.clone());

    // The adapters really change the output (else agreement would prove nothing).
    let mut plain = model.clone();
    plain.visit_adapters_off();
    assert!(max_abs_diff(adapted.clone(), plain.forward(x.clone())) > 1e-2);

    assert_eq!(merge(&mut model), 8);
    assert_eq!(merge(&mut model), 0, "merging twice is a no-op");
    let merged = model.forward(x.clone());
    assert!(max_abs_diff(adapted.clone(), merged) < 1e-5);
    // The merged weight is W + s * (B A)^T in Burn's [in, out] layout.
    let ad = model.layers[1].attn_out.adapter.as_ref().unwrap();
    let expected = base_w.clone()
        + ad.lora_a
            .val()
            .transpose()
            .matmul(ad.lora_b.val().transpose())
            .mul_scalar(c.alpha / (c.r as f64).sqrt());
    assert!(max_abs_diff(expected, model.layers[1].attn_out.base.weight.val()) < 1e-6);

    assert_eq!(unmerge(&mut model), 8);
    assert!(max_abs_diff(base_w, model.layers[1].attn_out.base.weight.val()) < 1e-6);
    assert!(max_abs_diff(adapted.clone(), model.forward(x.clone())) < 1e-5);

    assert_eq!(merge_and_unload(&mut model), 8);
    assert!(model.layers[0].query.adapter.is_none());
    assert!(max_abs_diff(adapted, model.forward(x)) < 1e-5);
    assert_eq!(count_params(&model, &c).adapter, 0);
}

/// Test helper: drop all adapters without merging.
trait AdaptersOff {
    fn visit_adapters_off(&mut self);
}

impl AdaptersOff for Toy<B> {
    fn visit_adapters_off(&mut self) {
        use kdlora_lora::AdaptableModel;
        self.visit_linears_mut(&mut |_, l| l.adapter = None);
    }
}
