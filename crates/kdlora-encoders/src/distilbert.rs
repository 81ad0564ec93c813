//! DistilBERT (`DistilBertForSequenceClassification`): BERT-style embeddings without token types,
//! post-LayerNorm layers with DistilBERT's module names, and a head of pre_classifier + ReLU +
//! dropout + classifier on the first token.

use burn::module::Module;
use burn::nn::LayerNorm;
use burn::tensor::activation::relu;
use burn::tensor::{Int, Tensor};
use kdlora_kernels::Dropout;
use kdlora_lora::LoraLinear;
use kdlora_lora::LoraOps;

use crate::bert::BertEmbeddings;
use crate::blocks::{attention_bias, first_token, multi_head_attention};
use crate::config::{Activation, ModelConfig};
use crate::error::EncoderError;
use crate::weights::{LoadReport, ModuleLoader, TensorWriter};

/// Base-model prefix of DistilBERT tensor names.
pub const DISTILBERT_PREFIX: &str = "distilbert";

/// One DistilBERT transformer block.
#[derive(Module, Debug)]
pub struct DistilBertLayer<B: LoraOps> {
    /// `attention.q_lin`.
    pub q_lin: LoraLinear<B>,
    /// `attention.k_lin`.
    pub k_lin: LoraLinear<B>,
    /// `attention.v_lin`.
    pub v_lin: LoraLinear<B>,
    /// `attention.out_lin`.
    pub out_lin: LoraLinear<B>,
    /// `sa_layer_norm`.
    pub sa_layer_norm: LayerNorm<B>,
    /// `ffn.lin1`.
    pub lin1: LoraLinear<B>,
    /// `ffn.lin2`.
    pub lin2: LoraLinear<B>,
    /// `output_layer_norm`.
    pub output_layer_norm: LayerNorm<B>,
    /// Dropout on attention probabilities.
    pub attention_dropout: Dropout,
    /// Dropout after the feed-forward network.
    pub dropout: Dropout,
    /// Number of attention heads.
    pub n_heads: usize,
    /// Feed-forward activation.
    pub activation: Activation,
}

macro_rules! distilbert_layer_linears {
    (mut $layer:expr) => {
        [
            ("attention.q_lin", &mut $layer.q_lin),
            ("attention.k_lin", &mut $layer.k_lin),
            ("attention.v_lin", &mut $layer.v_lin),
            ("attention.out_lin", &mut $layer.out_lin),
            ("ffn.lin1", &mut $layer.lin1),
            ("ffn.lin2", &mut $layer.lin2),
        ]
    };
    ($layer:expr) => {
        [
            ("attention.q_lin", &$layer.q_lin),
            ("attention.k_lin", &$layer.k_lin),
            ("attention.v_lin", &$layer.v_lin),
            ("attention.out_lin", &$layer.out_lin),
            ("ffn.lin1", &$layer.lin1),
            ("ffn.lin2", &$layer.lin2),
        ]
    };
}

impl<B: LoraOps> DistilBertLayer<B> {
    fn load(loader: &mut ModuleLoader<'_, B>, config: &ModelConfig, path: &str) -> Self {
        let h = config.hidden_size;
        let inner = config.intermediate_size;
        let eps = config.layer_norm_eps;
        Self {
            q_lin: loader.linear(&format!("{path}.attention.q_lin"), h, h, true),
            k_lin: loader.linear(&format!("{path}.attention.k_lin"), h, h, true),
            v_lin: loader.linear(&format!("{path}.attention.v_lin"), h, h, true),
            out_lin: loader.linear(&format!("{path}.attention.out_lin"), h, h, true),
            sa_layer_norm: loader.layer_norm(&format!("{path}.sa_layer_norm"), h, eps),
            lin1: loader.linear(&format!("{path}.ffn.lin1"), h, inner, true),
            lin2: loader.linear(&format!("{path}.ffn.lin2"), inner, h, true),
            output_layer_norm: loader.layer_norm(&format!("{path}.output_layer_norm"), h, eps),
            attention_dropout: Dropout::new(config.attention_probs_dropout_prob),
            dropout: Dropout::new(config.hidden_dropout_prob),
            n_heads: config.num_attention_heads,
            activation: config.hidden_act,
        }
    }

    /// `[batch, seq, hidden]` -> `[batch, seq, hidden]` with attention bias `[batch, 1, 1, seq]`.
    pub fn forward(&self, x: Tensor<B, 3>, bias: Tensor<B, 4>) -> Tensor<B, 3> {
        let context = multi_head_attention(
            self.q_lin.forward(x.clone()),
            self.k_lin.forward(x.clone()),
            self.v_lin.forward(x.clone()),
            bias,
            self.n_heads,
            &self.attention_dropout,
        );
        // DistilBERT applies no dropout to the attention output, unlike BERT.
        let attended = self
            .sa_layer_norm
            .forward(self.out_lin.forward(context) + x);
        let inner = self.activation.apply(self.lin1.forward(attended.clone()));
        let ffn = self.dropout.forward(self.lin2.forward(inner));
        self.output_layer_norm.forward(ffn + attended)
    }

    fn write(&self, path: &str, out: &mut TensorWriter) {
        for (name, linear) in distilbert_layer_linears!(self) {
            out.linear(&format!("{path}.{name}"), linear);
        }
        out.layer_norm(&format!("{path}.sa_layer_norm"), &self.sa_layer_norm);
        out.layer_norm(
            &format!("{path}.output_layer_norm"),
            &self.output_layer_norm,
        );
    }
}

/// DistilBERT's encoder: embeddings plus `transformer.layer.N`.
#[derive(Module, Debug)]
pub struct DistilBertEncoder<B: LoraOps> {
    /// `embeddings` (word + position, no token types).
    pub embeddings: BertEmbeddings<B>,
    /// `transformer.layer.N`.
    pub layers: Vec<DistilBertLayer<B>>,
}

impl<B: LoraOps> DistilBertEncoder<B> {
    fn load(loader: &mut ModuleLoader<'_, B>, config: &ModelConfig) -> Self {
        let embeddings = BertEmbeddings::load(
            loader,
            config,
            &format!("{DISTILBERT_PREFIX}.embeddings"),
            None,
        );
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                DistilBertLayer::load(
                    loader,
                    config,
                    &format!("{DISTILBERT_PREFIX}.transformer.layer.{i}"),
                )
            })
            .collect();
        Self { embeddings, layers }
    }

    /// Last hidden state `[batch, seq, hidden]`; token types are ignored (DistilBERT has none).
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        token_type_ids: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        let bias = attention_bias(attention_mask);
        let mut x = self.embeddings.forward(input_ids, token_type_ids);
        for layer in &self.layers {
            x = layer.forward(x, bias.clone());
        }
        x
    }
}

/// `DistilBertForSequenceClassification`.
#[derive(Module, Debug)]
pub struct DistilBertForSequenceClassification<B: LoraOps> {
    /// `distilbert.embeddings` and `distilbert.transformer`.
    pub distilbert: DistilBertEncoder<B>,
    /// `pre_classifier`: `[hidden] -> [hidden]`, followed by ReLU.
    pub pre_classifier: LoraLinear<B>,
    /// `classifier`: `[hidden] -> [num_labels]`.
    pub classifier: LoraLinear<B>,
    /// Dropout before the classifier (`seq_classif_dropout`).
    pub dropout: Dropout,
    /// The checkpoint's configuration.
    pub config: ModelConfig,
}

impl<B: LoraOps> DistilBertForSequenceClassification<B> {
    pub(crate) fn load(loader: &mut ModuleLoader<'_, B>, config: ModelConfig) -> Self {
        let h = config.hidden_size;
        let distilbert = DistilBertEncoder::load(loader, &config);
        let pre_classifier = loader.head_linear("pre_classifier", h, h);
        let classifier = loader.head_linear("classifier", h, config.num_labels);
        Self {
            distilbert,
            pre_classifier,
            classifier,
            dropout: Dropout::new(config.classifier_dropout),
            config,
        }
    }

    /// Logits `[batch, num_labels]`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        token_type_ids: Tensor<B, 2, Int>,
    ) -> Tensor<B, 2> {
        let hidden = self
            .distilbert
            .forward(input_ids, attention_mask, token_type_ids);
        let x = relu(self.pre_classifier.forward(first_token(hidden)));
        self.classifier.forward(self.dropout.forward(x))
    }

    pub(crate) fn visit_linears(&self, f: &mut dyn FnMut(&str, &LoraLinear<B>)) {
        for (i, layer) in self.distilbert.layers.iter().enumerate() {
            for (name, linear) in distilbert_layer_linears!(layer) {
                f(
                    &format!("{DISTILBERT_PREFIX}.transformer.layer.{i}.{name}"),
                    linear,
                );
            }
        }
        f("pre_classifier", &self.pre_classifier);
        f("classifier", &self.classifier);
    }

    pub(crate) fn visit_linears_mut(&mut self, f: &mut dyn FnMut(&str, &mut LoraLinear<B>)) {
        for (i, layer) in self.distilbert.layers.iter_mut().enumerate() {
            for (name, linear) in distilbert_layer_linears!(mut layer) {
                f(
                    &format!("{DISTILBERT_PREFIX}.transformer.layer.{i}.{name}"),
                    linear,
                );
            }
        }
        f("pre_classifier", &mut self.pre_classifier);
        f("classifier", &mut self.classifier);
    }

    pub(crate) fn write(&self, out: &mut TensorWriter) {
        self.distilbert
            .embeddings
            .write(&format!("{DISTILBERT_PREFIX}.embeddings"), out);
        for (i, layer) in self.distilbert.layers.iter().enumerate() {
            layer.write(&format!("{DISTILBERT_PREFIX}.transformer.layer.{i}"), out);
        }
        out.linear("pre_classifier", &self.pre_classifier);
        out.linear("classifier", &self.classifier);
    }
}

/// Loads a checkpoint as DistilBERT (used by [`crate::SequenceClassifier::load`]).
pub(crate) fn load<B: LoraOps>(
    mut loader: ModuleLoader<'_, B>,
    config: ModelConfig,
) -> Result<(DistilBertForSequenceClassification<B>, LoadReport), EncoderError> {
    let model = DistilBertForSequenceClassification::load(&mut loader, config);
    loader.ignore_buffers(|key| key.ends_with("embeddings.position_ids"));
    Ok((model, loader.finish()?))
}
