//! Only adapters (and the head, when trained) receive gradients and optimizer updates.

use std::collections::BTreeSet;

use crate::common::{Toy, input, randomize_lora_b, snapshot};
use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use kdlora_lora::{
    AdaptableModel, LoraConfig, TargetModules, count_params, count_trainable, inject,
};

type Inner = NdArray<f32>;
type AB = Autodiff<Inner>;

fn cfg(train_head: bool) -> LoraConfig {
    LoraConfig {
        r: 2,
        alpha: 4.0,
        dropout: 0.1,
        train_head,
        target_modules: Some(TargetModules::names(&[
            "query",
            "value",
            "attention.output.dense",
        ])),
        ..LoraConfig::default()
    }
}

/// Ids of adapter parameters and of head parameters.
fn trainable_ids(model: &Toy<AB>) -> (BTreeSet<ParamId>, BTreeSet<ParamId>) {
    let mut adapters = BTreeSet::new();
    let mut head = BTreeSet::new();
    model.visit_linears(&mut |path, l| {
        if let Some(a) = &l.adapter {
            adapters.insert(a.lora_a.id);
            adapters.insert(a.lora_b.id);
        }
        if path == "classifier" {
            head.insert(l.base.weight.id);
            head.insert(l.base.bias.as_ref().unwrap().id);
        }
    });
    (adapters, head)
}

fn loss(model: &Toy<AB>) -> burn::tensor::Tensor<AB, 1> {
    let device = Default::default();
    model.forward(input::<AB>(6, &device)).powi_scalar(2).mean()
}

fn check(train_head: bool) {
    let device = Default::default();
    let c = cfg(train_head);
    let mut model = inject(Toy::<AB>::new(2, &device), &c, &device).unwrap();
    randomize_lora_b(&mut model, &device);
    let (adapters, head) = trainable_ids(&model);
    assert_eq!(adapters.len(), 2 * 3 * 2);
    let expected: BTreeSet<ParamId> = if train_head {
        adapters.union(&head).cloned().collect()
    } else {
        adapters.clone()
    };
    assert_eq!(
        count_trainable(&model),
        count_params(&model, &c).trainable(train_head)
    );

    let before = snapshot(&model);
    let all: BTreeSet<ParamId> = before.keys().cloned().collect();
    let frozen: BTreeSet<ParamId> = all.difference(&expected).cloned().collect();
    // 2 layers x (6 linears x (weight, bias) + LayerNorm gamma, beta), plus the head when frozen.
    assert_eq!(frozen.len(), 2 * 14 + if train_head { 0 } else { 2 });

    let mut optim = AdamWConfig::new()
        .with_weight_decay(0.1)
        .init::<AB, Toy<AB>>();
    for step in 0..2 {
        let grads = GradientsParams::from_grads(loss(&model).backward(), &model);
        // Exactly the trainable parameters have gradients.
        assert_eq!(grads.len(), expected.len(), "step {step}");
        for id in &expected {
            let has = grads.get::<Inner, 2>(*id).is_some() || grads.get::<Inner, 1>(*id).is_some();
            assert!(has, "trainable param {id} has no gradient");
        }
        model = optim.step(1e-2, model, grads);
    }
    let after = snapshot(&model);
    for id in &frozen {
        assert_eq!(before[id], after[id], "frozen param {id} changed");
    }
    for id in &expected {
        assert_ne!(before[id], after[id], "trainable param {id} did not change");
    }
    // The optimizer keeps state for the trainable parameters only.
    let record = optim.to_record();
    assert_eq!(record.len(), expected.len());
    assert!(expected.iter().all(|id| record.contains_key(id)));
}

#[test]
fn only_adapters_and_head_train() {
    check(true);
}

#[test]
fn only_adapters_train_when_head_is_frozen() {
    check(false);
}

#[test]
fn trainability_survives_the_inner_backend_round_trip() {
    // Injected on the inner backend, moved to autodiff with `train()`, and back with `valid()`.
    let device = Default::default();
    let c = cfg(true);
    let model = inject(Toy::<Inner>::new(1, &device), &c, &device).unwrap();
    let counts = count_params(&model, &c);
    let model: Toy<AB> = model.train::<AB>();
    assert_eq!(count_trainable(&model), counts.trainable(true));
    let model: Toy<AB> = Toy::<AB>::from_inner_roundtrip(model);
    assert_eq!(count_trainable(&model), counts.trainable(true));
}

trait RoundTrip {
    fn from_inner_roundtrip(m: Self) -> Self;
}

impl RoundTrip for Toy<AB> {
    fn from_inner_roundtrip(m: Self) -> Self {
        use burn::module::AutodiffModule;
        <Toy<AB> as AutodiffModule<AB>>::from_inner(m.valid())
    }
}
