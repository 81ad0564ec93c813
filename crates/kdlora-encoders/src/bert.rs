//! BERT (`BertForSequenceClassification`): embeddings, post-LayerNorm transformer layers, pooler
//! (dense + tanh on `[CLS]`), dropout and classifier. The embeddings and layers are shared with
//! RoBERTa, which differs only in its position ids and its head.

use burn::module::Module;
use burn::nn::{Embedding, LayerNorm};
use burn::tensor::{Int, Tensor};
use kdlora_kernels::Dropout;
use kdlora_lora::LoraLinear;
use kdlora_lora::LoraOps;

use crate::blocks::{attention_bias, first_token, multi_head_attention};
use crate::config::{Activation, ModelConfig};
use crate::error::EncoderError;
use crate::weights::{LoadReport, ModuleLoader, TensorWriter};

/// Word, position and token-type embeddings, summed, normalised and dropped out.
#[derive(Module, Debug)]
pub struct BertEmbeddings<B: LoraOps> {
    /// `word_embeddings`: `[vocab, hidden]`.
    pub word_embeddings: Embedding<B>,
    /// `position_embeddings`: `[max_positions, hidden]`.
    pub position_embeddings: Embedding<B>,
    /// `token_type_embeddings`: `[type_vocab, hidden]`, absent when `type_vocab_size` is 0.
    pub token_type_embeddings: Option<Embedding<B>>,
    /// `LayerNorm`.
    pub layer_norm: LayerNorm<B>,
    /// Dropout after the normalisation (training only).
    pub dropout: Dropout,
    /// RoBERTa's `padding_idx`: positions are then counted from `padding_idx + 1` over non-pad
    /// tokens, and pad tokens get position `padding_idx`. `None` for BERT (positions 0..seq).
    pub padding_idx: Option<usize>,
}

impl<B: LoraOps> BertEmbeddings<B> {
    pub(crate) fn load(
        loader: &mut ModuleLoader<'_, B>,
        config: &ModelConfig,
        path: &str,
        padding_idx: Option<usize>,
    ) -> Self {
        let hidden = config.hidden_size;
        Self {
            word_embeddings: loader.embedding(
                &format!("{path}.word_embeddings"),
                config.vocab_size,
                hidden,
            ),
            position_embeddings: loader.embedding(
                &format!("{path}.position_embeddings"),
                config.max_position_embeddings,
                hidden,
            ),
            token_type_embeddings: (config.type_vocab_size > 0).then(|| {
                loader.embedding(
                    &format!("{path}.token_type_embeddings"),
                    config.type_vocab_size,
                    hidden,
                )
            }),
            layer_norm: loader.layer_norm(
                &format!("{path}.LayerNorm"),
                hidden,
                config.layer_norm_eps,
            ),
            dropout: Dropout::new(config.hidden_dropout_prob),
            padding_idx,
        }
    }

    /// Position ids `[batch, seq]` for `input_ids`.
    pub fn position_ids(&self, input_ids: &Tensor<B, 2, Int>) -> Tensor<B, 2, Int> {
        let [batch, seq] = input_ids.dims();
        match self.padding_idx {
            None => Tensor::<B, 1, Int>::arange(0..seq as i64, &input_ids.device())
                .reshape([1, seq])
                .expand([batch, seq]),
            Some(pad) => {
                let real = input_ids.clone().not_equal_elem(pad as i64).int();
                (real.clone().cumsum(1) * real).add_scalar(pad as i64)
            }
        }
    }

    /// Embeds `[batch, seq]` token ids and token types into `[batch, seq, hidden]`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        token_type_ids: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        let positions = self.position_ids(&input_ids);
        let mut x =
            self.word_embeddings.forward(input_ids) + self.position_embeddings.forward(positions);
        if let Some(types) = &self.token_type_embeddings {
            x = x + types.forward(token_type_ids);
        }
        self.dropout.forward(self.layer_norm.forward(x))
    }

    pub(crate) fn write(&self, path: &str, out: &mut TensorWriter) {
        out.embedding(&format!("{path}.word_embeddings"), &self.word_embeddings);
        out.embedding(
            &format!("{path}.position_embeddings"),
            &self.position_embeddings,
        );
        if let Some(types) = &self.token_type_embeddings {
            out.embedding(&format!("{path}.token_type_embeddings"), types);
        }
        out.layer_norm(&format!("{path}.LayerNorm"), &self.layer_norm);
    }
}

/// One post-LayerNorm transformer layer with BERT's module names.
#[derive(Module, Debug)]
pub struct BertLayer<B: LoraOps> {
    /// `attention.self.query`.
    pub query: LoraLinear<B>,
    /// `attention.self.key`.
    pub key: LoraLinear<B>,
    /// `attention.self.value`.
    pub value: LoraLinear<B>,
    /// `attention.output.dense`.
    pub attention_output: LoraLinear<B>,
    /// `attention.output.LayerNorm`.
    pub attention_norm: LayerNorm<B>,
    /// `intermediate.dense`.
    pub intermediate: LoraLinear<B>,
    /// `output.dense`.
    pub output: LoraLinear<B>,
    /// `output.LayerNorm`.
    pub output_norm: LayerNorm<B>,
    /// Dropout on attention probabilities.
    pub attention_dropout: Dropout,
    /// Dropout on sub-layer outputs.
    pub dropout: Dropout,
    /// Number of attention heads.
    pub n_heads: usize,
    /// Feed-forward activation.
    pub activation: Activation,
}

/// The projections of a [`BertLayer`] with their path suffixes, in HF order.
macro_rules! bert_layer_linears {
    (mut $layer:expr) => {
        [
            ("attention.self.query", &mut $layer.query),
            ("attention.self.key", &mut $layer.key),
            ("attention.self.value", &mut $layer.value),
            ("attention.output.dense", &mut $layer.attention_output),
            ("intermediate.dense", &mut $layer.intermediate),
            ("output.dense", &mut $layer.output),
        ]
    };
    ($layer:expr) => {
        [
            ("attention.self.query", &$layer.query),
            ("attention.self.key", &$layer.key),
            ("attention.self.value", &$layer.value),
            ("attention.output.dense", &$layer.attention_output),
            ("intermediate.dense", &$layer.intermediate),
            ("output.dense", &$layer.output),
        ]
    };
}

impl<B: LoraOps> BertLayer<B> {
    fn load(loader: &mut ModuleLoader<'_, B>, config: &ModelConfig, path: &str) -> Self {
        let h = config.hidden_size;
        let inner = config.intermediate_size;
        let eps = config.layer_norm_eps;
        Self {
            query: loader.linear(&format!("{path}.attention.self.query"), h, h, true),
            key: loader.linear(&format!("{path}.attention.self.key"), h, h, true),
            value: loader.linear(&format!("{path}.attention.self.value"), h, h, true),
            attention_output: loader.linear(&format!("{path}.attention.output.dense"), h, h, true),
            attention_norm: loader.layer_norm(
                &format!("{path}.attention.output.LayerNorm"),
                h,
                eps,
            ),
            intermediate: loader.linear(&format!("{path}.intermediate.dense"), h, inner, true),
            output: loader.linear(&format!("{path}.output.dense"), inner, h, true),
            output_norm: loader.layer_norm(&format!("{path}.output.LayerNorm"), h, eps),
            attention_dropout: Dropout::new(config.attention_probs_dropout_prob),
            dropout: Dropout::new(config.hidden_dropout_prob),
            n_heads: config.num_attention_heads,
            activation: config.hidden_act,
        }
    }

    /// `[batch, seq, hidden]` -> `[batch, seq, hidden]` with attention bias `[batch, 1, 1, seq]`.
    pub fn forward(&self, x: Tensor<B, 3>, bias: Tensor<B, 4>) -> Tensor<B, 3> {
        let context = multi_head_attention(
            self.query.forward(x.clone()),
            self.key.forward(x.clone()),
            self.value.forward(x.clone()),
            bias,
            self.n_heads,
            &self.attention_dropout,
        );
        let attended = self
            .attention_norm
            .forward(self.dropout.forward(self.attention_output.forward(context)) + x);
        let inner = self
            .activation
            .apply(self.intermediate.forward(attended.clone()));
        self.output_norm
            .forward(self.dropout.forward(self.output.forward(inner)) + attended)
    }

    fn write(&self, path: &str, out: &mut TensorWriter) {
        for (name, linear) in bert_layer_linears!(self) {
            out.linear(&format!("{path}.{name}"), linear);
        }
        out.layer_norm(
            &format!("{path}.attention.output.LayerNorm"),
            &self.attention_norm,
        );
        out.layer_norm(&format!("{path}.output.LayerNorm"), &self.output_norm);
    }
}

/// Embeddings plus the stack of layers: BERT's and RoBERTa's encoder (without pooler).
#[derive(Module, Debug)]
pub struct BertEncoder<B: LoraOps> {
    /// `embeddings`.
    pub embeddings: BertEmbeddings<B>,
    /// `encoder.layer.N`.
    pub layers: Vec<BertLayer<B>>,
}

impl<B: LoraOps> BertEncoder<B> {
    /// Loads `{prefix}.embeddings.*` and `{prefix}.encoder.layer.N.*`.
    pub(crate) fn load(
        loader: &mut ModuleLoader<'_, B>,
        config: &ModelConfig,
        prefix: &str,
        padding_idx: Option<usize>,
    ) -> Self {
        let embeddings =
            BertEmbeddings::load(loader, config, &format!("{prefix}.embeddings"), padding_idx);
        let layers = (0..config.num_hidden_layers)
            .map(|i| BertLayer::load(loader, config, &format!("{prefix}.encoder.layer.{i}")))
            .collect();
        Self { embeddings, layers }
    }

    /// Last hidden state `[batch, seq, hidden]`.
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

    pub(crate) fn visit_linears(&self, prefix: &str, f: &mut dyn FnMut(&str, &LoraLinear<B>)) {
        for (i, layer) in self.layers.iter().enumerate() {
            for (name, linear) in bert_layer_linears!(layer) {
                f(&format!("{prefix}.encoder.layer.{i}.{name}"), linear);
            }
        }
    }

    pub(crate) fn visit_linears_mut(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut LoraLinear<B>),
    ) {
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for (name, linear) in bert_layer_linears!(mut layer) {
                f(&format!("{prefix}.encoder.layer.{i}.{name}"), linear);
            }
        }
    }

    pub(crate) fn write(&self, prefix: &str, out: &mut TensorWriter) {
        self.embeddings.write(&format!("{prefix}.embeddings"), out);
        for (i, layer) in self.layers.iter().enumerate() {
            layer.write(&format!("{prefix}.encoder.layer.{i}"), out);
        }
    }
}

/// `BertForSequenceClassification`: encoder, pooler (dense + tanh on `[CLS]`), dropout, classifier.
#[derive(Module, Debug)]
pub struct BertForSequenceClassification<B: LoraOps> {
    /// `bert.embeddings` and `bert.encoder`.
    pub bert: BertEncoder<B>,
    /// `bert.pooler.dense`.
    pub pooler: LoraLinear<B>,
    /// Dropout before the classifier.
    pub dropout: Dropout,
    /// `classifier`: `[hidden] -> [num_labels]`.
    pub classifier: LoraLinear<B>,
    /// The checkpoint's configuration.
    pub config: ModelConfig,
}

/// Base-model prefix of BERT tensor names.
pub const BERT_PREFIX: &str = "bert";

impl<B: LoraOps> BertForSequenceClassification<B> {
    /// Builds the model from a checkpoint's tensors; the pooler and classifier are initialised
    /// fresh when the checkpoint lacks them.
    pub(crate) fn load(loader: &mut ModuleLoader<'_, B>, config: ModelConfig) -> Self {
        let h = config.hidden_size;
        let bert = BertEncoder::load(loader, &config, BERT_PREFIX, None);
        let pooler = loader.optional_linear("bert.pooler.dense", h, h);
        let classifier = loader.head_linear("classifier", h, config.num_labels);
        Self {
            bert,
            pooler,
            dropout: Dropout::new(config.classifier_dropout),
            classifier,
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
        let hidden = self.bert.forward(input_ids, attention_mask, token_type_ids);
        let pooled = self.pooler.forward(first_token(hidden)).tanh();
        self.classifier.forward(self.dropout.forward(pooled))
    }

    pub(crate) fn visit_linears(&self, f: &mut dyn FnMut(&str, &LoraLinear<B>)) {
        self.bert.visit_linears(BERT_PREFIX, f);
        f("bert.pooler.dense", &self.pooler);
        f("classifier", &self.classifier);
    }

    pub(crate) fn visit_linears_mut(&mut self, f: &mut dyn FnMut(&str, &mut LoraLinear<B>)) {
        self.bert.visit_linears_mut(BERT_PREFIX, f);
        f("bert.pooler.dense", &mut self.pooler);
        f("classifier", &mut self.classifier);
    }

    pub(crate) fn write(&self, out: &mut TensorWriter) {
        self.bert.write(BERT_PREFIX, out);
        out.linear("bert.pooler.dense", &self.pooler);
        out.linear("classifier", &self.classifier);
    }
}

/// Loads a checkpoint as BERT (used by [`crate::SequenceClassifier::load`]).
pub(crate) fn load<B: LoraOps>(
    mut loader: ModuleLoader<'_, B>,
    config: ModelConfig,
) -> Result<(BertForSequenceClassification<B>, LoadReport), EncoderError> {
    let model = BertForSequenceClassification::load(&mut loader, config);
    loader.ignore_buffers(|key| key.ends_with("embeddings.position_ids"));
    Ok((model, loader.finish()?))
}
