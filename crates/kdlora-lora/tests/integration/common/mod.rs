//! A tiny BERT-shaped toy model implementing `AdaptableModel`, so the LoRA machinery is tested
//! without any real encoder.
#![allow(dead_code)]

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::{Distribution, ElementConversion, Tensor, TensorData};
use kdlora_lora::{AdaptableModel, LoraLinear, LoraLinearConfig, LoraOps};
use std::collections::BTreeMap;

/// One layer with BERT's projection names.
#[derive(Module, Debug)]
pub struct ToyLayer<B: LoraOps> {
    pub query: LoraLinear<B>,
    pub key: LoraLinear<B>,
    pub value: LoraLinear<B>,
    pub attn_out: LoraLinear<B>,
    pub intermediate: LoraLinear<B>,
    pub output: LoraLinear<B>,
    pub norm: LayerNorm<B>,
}

/// Layers + classifier; `prefix` is the base-model prefix (`bert` by default), `model_type` its
/// Hugging Face type.
#[derive(Module, Debug)]
pub struct Toy<B: LoraOps> {
    pub layers: Vec<ToyLayer<B>>,
    pub classifier: LoraLinear<B>,
    pub prefix: String,
    pub model_type: String,
}

pub const D: usize = 12;
pub const FF: usize = 20;
pub const LABELS: usize = 3;

impl<B: LoraOps> Toy<B> {
    pub fn new(layers: usize, device: &B::Device) -> Self {
        Self::with_names(layers, "bert", "bert", device)
    }

    pub fn with_names(layers: usize, prefix: &str, model_type: &str, device: &B::Device) -> Self {
        let lin = |i, o| LoraLinearConfig::new(i, o).init::<B>(device);
        let model = Self {
            layers: (0..layers)
                .map(|_| ToyLayer {
                    query: lin(D, D),
                    key: lin(D, D),
                    value: lin(D, D),
                    attn_out: lin(D, D),
                    intermediate: lin(D, FF),
                    output: lin(FF, D),
                    norm: LayerNormConfig::new(D).init(device),
                })
                .collect(),
            classifier: lin(D, LABELS),
            prefix: prefix.to_string(),
            model_type: model_type.to_string(),
        };
        // Burn initialises parameters lazily, and a clone of a lazy parameter draws its own values:
        // materialise them so that clones share the weights.
        let _ = model.num_params();
        let _ = snapshot(&model);
        model
    }

    /// A small nonlinear network that uses every parameter.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let mut h = x;
        for l in &self.layers {
            let gate = sigmoid(l.key.forward(h.clone()));
            let mixed = l.query.forward(h.clone()) * gate + l.value.forward(h.clone());
            let a = l.norm.forward(h + l.attn_out.forward(mixed));
            h = a.clone() + l.output.forward(relu(l.intermediate.forward(a)));
        }
        self.classifier.forward(h)
    }

    fn named(&self) -> Vec<(String, &LoraLinear<B>)> {
        let mut v = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("{}.encoder.layer.{i}", self.prefix);
            v.push((format!("{p}.attention.self.query"), &l.query));
            v.push((format!("{p}.attention.self.key"), &l.key));
            v.push((format!("{p}.attention.self.value"), &l.value));
            v.push((format!("{p}.attention.output.dense"), &l.attn_out));
            v.push((format!("{p}.intermediate.dense"), &l.intermediate));
            v.push((format!("{p}.output.dense"), &l.output));
        }
        v.push(("classifier".to_string(), &self.classifier));
        v
    }
}

impl<B: LoraOps> AdaptableModel<B> for Toy<B> {
    fn model_type(&self) -> &str {
        &self.model_type
    }

    fn visit_linears(&self, f: &mut dyn FnMut(&str, &LoraLinear<B>)) {
        for (path, l) in self.named() {
            f(&path, l);
        }
    }

    fn visit_linears_mut(&mut self, f: &mut dyn FnMut(&str, &mut LoraLinear<B>)) {
        let prefix = self.prefix.clone();
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = format!("{prefix}.encoder.layer.{i}");
            f(&format!("{p}.attention.self.query"), &mut l.query);
            f(&format!("{p}.attention.self.key"), &mut l.key);
            f(&format!("{p}.attention.self.value"), &mut l.value);
            f(&format!("{p}.attention.output.dense"), &mut l.attn_out);
            f(&format!("{p}.intermediate.dense"), &mut l.intermediate);
            f(&format!("{p}.output.dense"), &mut l.output);
        }
        f("classifier", &mut self.classifier);
    }

    fn head_module_paths(&self) -> Vec<String> {
        vec!["classifier".to_string()]
    }
}

/// Gives every adapter a random non-zero `B` (fresh adapters have `B = 0`, which would make merge
/// and gradient checks trivially pass).
pub fn randomize_lora_b<B: LoraOps, M: AdaptableModel<B>>(model: &mut M, device: &B::Device) {
    model.visit_linears_mut(&mut |_, linear| {
        if let Some(adapter) = linear.adapter.as_mut() {
            let shape = adapter.lora_b.dims();
            let b = Tensor::<B, 2>::random(shape, Distribution::Uniform(-0.5, 0.5), device);
            adapter.lora_b = Param::initialized(adapter.lora_b.id, b.require_grad());
        }
    });
}

/// Every float parameter's values by id.
pub fn snapshot<B: LoraOps, M: Module<B>>(model: &M) -> BTreeMap<ParamId, Vec<f32>> {
    struct Snap(BTreeMap<ParamId, Vec<f32>>);
    impl<B: LoraOps> ModuleVisitor<B> for Snap {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let v = param
                .val()
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .unwrap();
            self.0.insert(param.id, v);
        }
    }
    let mut s = Snap(BTreeMap::new());
    model.visit(&mut s);
    s.0
}

/// A deterministic input batch.
pub fn input<B: LoraOps>(batch: usize, device: &B::Device) -> Tensor<B, 2> {
    let values: Vec<f32> = (0..batch * D)
        .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
        .collect();
    Tensor::from_data(TensorData::new(values, [batch, D]), device)
}

pub fn max_abs_diff<B: LoraOps, const N: usize>(a: Tensor<B, N>, b: Tensor<B, N>) -> f32 {
    (a - b).abs().max().into_scalar().elem::<f32>()
}
