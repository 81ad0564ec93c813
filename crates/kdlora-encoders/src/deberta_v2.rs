//! DeBERTa-v2 and DeBERTa-v3 (`model_type` `deberta-v2`) with disentangled attention and the
//! `DebertaV2ForSequenceClassification` head, computed as transformers 4.46 does.
//!
//! What differs from BERT:
//! - embeddings: no absolute positions when `position_biased_input` is false (all v3 checkpoints),
//!   token types only when `type_vocab_size > 0`, an `embed_proj` when `embedding_size` differs from
//!   the hidden size, and padded positions multiplied by zero after the LayerNorm;
//! - attention scores add content-to-position (`c2p`) and position-to-content (`p2c`) terms built from
//!   shared relative-position embeddings (`encoder.rel_embeddings`, optionally LayerNorm-ed), indexed by
//!   log-bucketed relative distances, and everything is scaled by `sqrt(head_dim * (1 + #terms))`;
//! - the attention mask is pairwise (query and key both real) and fully padded rows get zero
//!   probabilities (transformers' `XSoftmax`);
//! - the head is a context pooler (dropout, dense, activation on the first token), dropout and the
//!   classifier.
//!
//! DeBERTa-v2's optional convolution after the first layer (`conv_kernel_size > 0`, used by the v2
//! xlarge/xxlarge checkpoints, never by v3) is rejected with an "unsupported" error.

use std::path::Path;

use burn::module::Module;
use burn::nn::{Embedding, LayerNorm};
use burn::tensor::{Bool, Int, Tensor, TensorData};
use kdlora_kernels::Dropout;
use kdlora_kernels::{matmul, softmax, swap_middle_dims};
use kdlora_lora::LoraLinear;
use kdlora_lora::LoraOps;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::classifier::CONFIG_FILE;
use crate::config::{Activation, ModelConfig};
use crate::error::EncoderError;
use crate::weights::{LoadReport, ModuleLoader, TensorWriter};

/// Base-model prefix of DeBERTa tensor names (`deberta.embeddings...`).
pub const DEBERTA_PREFIX: &str = "deberta";

/// Replaces the scores of masked (query, key) pairs before the softmax. Any value far below the
/// scores gives exactly zero weight; a finite one keeps fully padded rows free of NaN on every
/// backend (those rows are zeroed afterwards anyway, as `XSoftmax` does).
const MASKED: f32 = -1.0e9;

/// Activation of the context pooler (`pooler_hidden_act`): the feed-forward activations plus `tanh`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolerActivation {
    /// One of the feed-forward activations.
    Act(Activation),
    /// `tanh`.
    Tanh,
}

impl PoolerActivation {
    fn from_hf_name(name: &str) -> Option<Self> {
        if name == "tanh" {
            Some(Self::Tanh)
        } else {
            Activation::from_hf_name(name).map(Self::Act)
        }
    }

    fn apply<B: LoraOps, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Self::Act(act) => act.apply(x),
            Self::Tanh => x.tanh(),
        }
    }
}

/// The DeBERTa-specific fields of `config.json`, resolved as transformers resolves them.
#[derive(Debug, Clone, PartialEq)]
pub struct DebertaV2Settings {
    /// Width of the token embeddings (`embedding_size`, default the hidden size); an `embed_proj`
    /// maps them to the hidden size when it differs.
    pub embedding_size: usize,
    /// Width of one attention head (`attention_head_size`, default hidden size / heads).
    pub attention_head_size: usize,
    /// Whether absolute position embeddings are added to the token embeddings.
    pub position_biased_input: bool,
    /// Whether the disentangled (relative-position) attention terms are computed.
    pub relative_attention: bool,
    /// Largest relative distance (`max_relative_positions`, where -1 means
    /// `max_position_embeddings`).
    pub max_relative_positions: usize,
    /// Number of log buckets for relative distances (`position_buckets`); `None` when not bucketed.
    pub position_buckets: Option<usize>,
    /// Content-to-position term (`"c2p"` in `pos_att_type`).
    pub c2p: bool,
    /// Position-to-content term (`"p2c"` in `pos_att_type`).
    pub p2c: bool,
    /// Whether the position projections reuse `query_proj`/`key_proj` (`share_att_key`).
    pub share_att_key: bool,
    /// Whether the relative embeddings go through `encoder.LayerNorm` (`norm_rel_ebd` has
    /// `layer_norm`).
    pub norm_rel_embeddings: bool,
    /// Activation of the context pooler (`pooler_hidden_act`, default `gelu`).
    pub pooler_hidden_act: PoolerActivation,
    /// Dropout on the first token before the pooler (`pooler_dropout`, default 0).
    pub pooler_dropout: f64,
    /// Dropout before the classifier (`cls_dropout`, default `hidden_dropout_prob`).
    pub cls_dropout: f64,
}

impl DebertaV2Settings {
    /// Reads the DeBERTa fields from a parsed `config.json` at `path` (used in error messages).
    pub fn from_config(config: &ModelConfig, path: &Path) -> Result<Self, EncoderError> {
        let raw = config.raw();
        let invalid = |field: &str, message: String| EncoderError::InvalidConfig {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        };
        fn get<T: DeserializeOwned>(
            raw: &serde_json::Map<String, Value>,
            key: &str,
            path: &Path,
        ) -> Result<Option<T>, EncoderError> {
            match raw.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(value) => serde_json::from_value(value.clone())
                    .map(Some)
                    .map_err(|err| EncoderError::InvalidConfig {
                        path: path.to_path_buf(),
                        field: key.to_string(),
                        message: format!("{err} (value: {value})"),
                    }),
            }
        }

        let conv_kernel_size: i64 = get(raw, "conv_kernel_size", path)?.unwrap_or(0);
        if conv_kernel_size > 0 {
            return Err(invalid(
                "conv_kernel_size",
                format!(
                    "{conv_kernel_size}: unsupported: the convolution layer of DeBERTa-v2 \
                     xlarge/xxlarge checkpoints is not implemented (DeBERTa-v3 checkpoints have none)"
                ),
            ));
        }
        let hidden = config.hidden_size;
        let heads = config.num_attention_heads;
        let attention_head_size: usize =
            get(raw, "attention_head_size", path)?.unwrap_or(hidden / heads);
        if attention_head_size * heads != hidden {
            // transformers builds attention.output.dense as hidden -> hidden, so anything else
            // fails in its forward pass.
            return Err(invalid(
                "attention_head_size",
                format!(
                    "{heads} heads of {attention_head_size} do not make the hidden size {hidden}"
                ),
            ));
        }
        let embedding_size: usize = get(raw, "embedding_size", path)?.unwrap_or(hidden);
        if embedding_size == 0 {
            return Err(invalid("embedding_size", "must be positive".into()));
        }
        let pooler_hidden_size: usize = get(raw, "pooler_hidden_size", path)?.unwrap_or(hidden);
        if pooler_hidden_size != hidden {
            // The pooler reads the hidden state of the first token and the classifier reads
            // `hidden_size` features, so transformers only runs when both are equal.
            return Err(invalid(
                "pooler_hidden_size",
                format!("{pooler_hidden_size} differs from hidden_size {hidden}"),
            ));
        }

        // A list (current configs) or a "p2c|c2p" string (older configs, and the hub's v3 ones).
        let pos_att_type: Vec<String> = match raw.get("pos_att_type") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => s
                .to_lowercase()
                .split('|')
                .map(|t| t.trim().to_string())
                .collect(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str().map(str::to_string).ok_or_else(|| {
                        invalid("pos_att_type", format!("expected strings, found {item}"))
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(invalid(
                    "pos_att_type",
                    format!("expected a list or a \"|\"-separated string, found {other}"),
                ));
            }
        };
        let norm_rel_ebd: String =
            get(raw, "norm_rel_ebd", path)?.unwrap_or_else(|| "none".to_string());
        let norm_rel_embeddings = norm_rel_ebd
            .to_lowercase()
            .split('|')
            .any(|t| t.trim() == "layer_norm");

        let max_relative: i64 = get(raw, "max_relative_positions", path)?.unwrap_or(-1);
        let max_relative_positions = if max_relative < 1 {
            config.max_position_embeddings
        } else {
            max_relative as usize
        };
        let buckets: i64 = get(raw, "position_buckets", path)?.unwrap_or(-1);
        let position_buckets = (buckets > 0).then_some(buckets as usize);
        // Log bucketing divides by ln((max_relative_positions - 1) / (buckets / 2)): at or below 1
        // that ratio gives an infinite or sign-flipped bucket (transformers computes garbage there).
        if let Some(b) = position_buckets
            && (b < 2 || max_relative_positions < 2 || max_relative_positions - 1 <= b / 2)
        {
            return Err(invalid(
                "position_buckets",
                format!(
                    "{b} buckets with max_relative_positions {max_relative_positions}: log \
                     bucketing needs at least 2 buckets and max_relative_positions - 1 above \
                     half the buckets"
                ),
            ));
        }

        let act_name: String =
            get(raw, "pooler_hidden_act", path)?.unwrap_or_else(|| "gelu".to_string());
        let pooler_hidden_act = PoolerActivation::from_hf_name(&act_name).ok_or_else(|| {
            invalid(
                "pooler_hidden_act",
                format!("unsupported activation {act_name:?}"),
            )
        })?;
        let pooler_dropout: f64 = get(raw, "pooler_dropout", path)?.unwrap_or(0.0);
        let cls_dropout: f64 = get(raw, "cls_dropout", path)?.unwrap_or(config.hidden_dropout_prob);
        for (value, key) in [
            (pooler_dropout, "pooler_dropout"),
            (cls_dropout, "cls_dropout"),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(invalid(key, format!("{value} is not a probability")));
            }
        }

        Ok(Self {
            embedding_size,
            attention_head_size,
            position_biased_input: get(raw, "position_biased_input", path)?.unwrap_or(true),
            relative_attention: get(raw, "relative_attention", path)?.unwrap_or(false),
            max_relative_positions,
            position_buckets,
            c2p: pos_att_type.iter().any(|t| t == "c2p"),
            p2c: pos_att_type.iter().any(|t| t == "p2c"),
            share_att_key: get(raw, "share_att_key", path)?.unwrap_or(false),
            norm_rel_embeddings,
            pooler_hidden_act,
            pooler_dropout,
            cls_dropout,
        })
    }

    /// Half the number of relative-embedding rows (transformers' `pos_ebd_size`, the attention span).
    pub fn attention_span(&self) -> usize {
        self.position_buckets.unwrap_or(self.max_relative_positions)
    }

    /// `1 + ` the number of position terms: scores are divided by `sqrt(head_dim * scale_factor)`.
    pub fn scale_factor(&self) -> usize {
        1 + usize::from(self.c2p) + usize::from(self.p2c)
    }
}

/// transformers' `make_log_bucket_position` for one relative distance, in the same float32
/// arithmetic as torch (the ceiling makes the exact rounding matter).
pub fn log_bucket_position(relative: i64, bucket_size: usize, max_position: usize) -> i64 {
    let mid = (bucket_size / 2) as i64;
    let abs = if relative < mid && relative > -mid {
        mid - 1
    } else {
        relative.abs()
    };
    if abs <= mid {
        return relative;
    }
    // torch: log(abs / mid) / log(tensor((max_position - 1) / mid)) * (mid - 1), all float32; the
    // ratio is computed in double precision by Python before it becomes a float32 tensor.
    let ratio = ((max_position as f64 - 1.0) / mid as f64) as f32;
    let scaled = (abs as f32 / mid as f32).ln() / ratio.ln() * (mid - 1) as f32;
    let log_pos = scaled.ceil() + mid as f32;
    (log_pos * relative.signum() as f32) as i64
}

/// The relative position of query `i` to key `j` (`i - j`, bucketed when `buckets` is set), as
/// transformers' `build_relative_position` computes it.
fn relative_position(i: usize, j: usize, buckets: Option<usize>, max_position: usize) -> i64 {
    let relative = i as i64 - j as i64;
    match buckets {
        Some(b) if max_position > 0 => log_bucket_position(relative, b, max_position),
        _ => relative,
    }
}

/// Gather indices into the `2 * span` relative embeddings for a sequence of `seq` tokens:
/// `(c2p, p2c)` as `[seq, seq]` row-major, both clamped to `0..2 * span` as transformers does.
fn relative_indices(
    seq: usize,
    span: usize,
    buckets: Option<usize>,
    max_position: usize,
) -> (Vec<i64>, Vec<i64>) {
    let top = 2 * span as i64 - 1;
    let mut c2p = Vec::with_capacity(seq * seq);
    let mut p2c = Vec::with_capacity(seq * seq);
    for i in 0..seq {
        for j in 0..seq {
            let r = relative_position(i, j, buckets, max_position);
            c2p.push((r + span as i64).clamp(0, top));
            p2c.push((-r + span as i64).clamp(0, top));
        }
    }
    (c2p, p2c)
}

/// What every layer needs for the position terms of one batch: the (normalised) relative embeddings
/// `[2 * span, hidden]` and the gather indices `[batch, heads, seq, seq]`.
#[derive(Debug, Clone)]
pub struct RelativeContext<B: LoraOps> {
    embeddings: Tensor<B, 2>,
    c2p_index: Tensor<B, 4, Int>,
    p2c_index: Tensor<B, 4, Int>,
}

/// DeBERTa-v2 embeddings: word (+ absolute position) (+ token type) (-> `embed_proj`) -> LayerNorm,
/// then multiplied by the attention mask.
#[derive(Module, Debug)]
pub struct DebertaV2Embeddings<B: LoraOps> {
    /// `embeddings.word_embeddings`, `[vocab, embedding_size]`.
    pub word_embeddings: Embedding<B>,
    /// `embeddings.position_embeddings`, only when `position_biased_input`.
    pub position_embeddings: Option<Embedding<B>>,
    /// `embeddings.token_type_embeddings`, only when `type_vocab_size > 0`.
    pub token_type_embeddings: Option<Embedding<B>>,
    /// `embeddings.embed_proj` (no bias), only when `embedding_size != hidden_size`.
    pub embed_proj: Option<LoraLinear<B>>,
    /// `embeddings.LayerNorm`.
    pub layer_norm: LayerNorm<B>,
    /// Dropout on the output.
    pub dropout: Dropout,
}

impl<B: LoraOps> DebertaV2Embeddings<B> {
    /// `[batch, seq]` ids, types and 0/1 mask to `[batch, seq, hidden]`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        token_type_ids: Tensor<B, 2, Int>,
        keep: Tensor<B, 2>,
    ) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let mut x = self.word_embeddings.forward(input_ids);
        if let Some(positions) = &self.position_embeddings {
            let table = positions.weight.val();
            let width = table.dims()[1];
            x = x + table.narrow(0, 0, seq).reshape([1, seq, width]);
        }
        if let Some(types) = &self.token_type_embeddings {
            x = x + types.forward(token_type_ids);
        }
        if let Some(proj) = &self.embed_proj {
            x = proj.forward(x);
        }
        let x = self.layer_norm.forward(x) * keep.reshape([batch, seq, 1]);
        self.dropout.forward(x)
    }
}

/// DeBERTa's disentangled self-attention (`attention.self`).
#[derive(Module, Debug)]
pub struct DisentangledSelfAttention<B: LoraOps> {
    /// `query_proj`.
    pub query_proj: LoraLinear<B>,
    /// `key_proj`.
    pub key_proj: LoraLinear<B>,
    /// `value_proj`.
    pub value_proj: LoraLinear<B>,
    /// `pos_key_proj`: only with `c2p` and without `share_att_key`.
    pub pos_key_proj: Option<LoraLinear<B>>,
    /// `pos_query_proj`: only with `p2c` and without `share_att_key`.
    pub pos_query_proj: Option<LoraLinear<B>>,
    /// Dropout on the attention probabilities.
    pub dropout: Dropout,
    /// Dropout on the relative embeddings.
    pub pos_dropout: Dropout,
    num_heads: usize,
    head_size: usize,
    c2p: bool,
    p2c: bool,
    relative_attention: bool,
    share_att_key: bool,
    scale_factor: usize,
}

impl<B: LoraOps> DisentangledSelfAttention<B> {
    /// `[batch, seq, hidden]` to `[batch, heads, seq, head]`.
    fn split_heads(&self, x: Tensor<B, 3>) -> Tensor<B, 4> {
        let [batch, seq, _] = x.dims();
        swap_middle_dims(x.reshape([batch, seq, self.num_heads, self.head_size]))
    }

    /// Heads of a projection of the relative embeddings, repeated over the batch:
    /// `[batch, heads, 2 * span, head]`.
    fn position_heads(
        &self,
        proj: &LoraLinear<B>,
        rel: &Tensor<B, 2>,
        batch: usize,
    ) -> Tensor<B, 4> {
        let rows = rel.dims()[0];
        let projected = proj.forward(rel.clone().unsqueeze::<3>());
        projected
            .reshape([1, rows, self.num_heads, self.head_size])
            .swap_dims(1, 2)
            .repeat_dim(0, batch)
    }

    /// Attention over `hidden` `[batch, seq, hidden]`; `masked` is `[batch, heads, seq, seq]`, true
    /// where the (query, key) pair is padding.
    pub fn forward(
        &self,
        hidden: Tensor<B, 3>,
        masked: Tensor<B, 4, Bool>,
        relative: Option<&RelativeContext<B>>,
    ) -> Tensor<B, 3> {
        let [batch, seq, _] = hidden.dims();
        let q = self.split_heads(self.query_proj.forward(hidden.clone()));
        let k = self.split_heads(self.key_proj.forward(hidden.clone()));
        let v = self.split_heads(self.value_proj.forward(hidden));
        let scale = ((self.head_size * self.scale_factor) as f64).sqrt();

        let mut scores = matmul(q.clone(), k.clone().swap_dims(2, 3)).div_scalar(scale);
        if self.relative_attention
            && let Some(ctx) = relative
        {
            let rel = self.pos_dropout.forward(ctx.embeddings.clone());
            if self.c2p {
                let proj = if self.share_att_key {
                    &self.key_proj
                } else {
                    self.pos_key_proj.as_ref().unwrap_or(&self.key_proj)
                };
                let pos_key = self.position_heads(proj, &rel, batch);
                let c2p = q.matmul(pos_key.swap_dims(2, 3));
                scores = scores + c2p.gather(3, ctx.c2p_index.clone()).div_scalar(scale);
            }
            if self.p2c {
                let proj = if self.share_att_key {
                    &self.query_proj
                } else {
                    self.pos_query_proj.as_ref().unwrap_or(&self.query_proj)
                };
                let pos_query = self.position_heads(proj, &rel, batch);
                // Row j of the gathered matrix holds key j against every query; transposed it
                // lines up with the [query, key] scores.
                let p2c = k.matmul(pos_query.swap_dims(2, 3));
                scores = scores
                    + p2c
                        .gather(3, ctx.p2c_index.clone())
                        .swap_dims(2, 3)
                        .div_scalar(scale);
            }
        }

        let probs = softmax(scores.mask_fill(masked.clone(), MASKED)).mask_fill(masked, 0.0);
        let probs = self.dropout.forward(probs);
        swap_middle_dims(matmul(probs, v)).reshape([batch, seq, self.num_heads * self.head_size])
    }
}

/// `dense -> dropout -> LayerNorm(x + residual)`: `attention.output` and `output`.
#[derive(Module, Debug)]
pub struct DebertaV2ResidualOutput<B: LoraOps> {
    /// `dense`.
    pub dense: LoraLinear<B>,
    /// `LayerNorm`.
    pub layer_norm: LayerNorm<B>,
    /// Dropout after `dense`.
    pub dropout: Dropout,
}

impl<B: LoraOps> DebertaV2ResidualOutput<B> {
    /// Projects `x` and adds the residual.
    pub fn forward(&self, x: Tensor<B, 3>, residual: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = self.dropout.forward(self.dense.forward(x));
        self.layer_norm.forward(x + residual)
    }
}

/// One encoder layer (`encoder.layer.N`).
#[derive(Module, Debug)]
pub struct DebertaV2Layer<B: LoraOps> {
    /// `attention.self`.
    pub attention: DisentangledSelfAttention<B>,
    /// `attention.output`.
    pub attention_output: DebertaV2ResidualOutput<B>,
    /// `intermediate.dense`.
    pub intermediate: LoraLinear<B>,
    /// `output`.
    pub output: DebertaV2ResidualOutput<B>,
    activation: Activation,
}

impl<B: LoraOps> DebertaV2Layer<B> {
    /// One layer over `[batch, seq, hidden]`.
    pub fn forward(
        &self,
        hidden: Tensor<B, 3>,
        masked: Tensor<B, 4, Bool>,
        relative: Option<&RelativeContext<B>>,
    ) -> Tensor<B, 3> {
        let context = self.attention.forward(hidden.clone(), masked, relative);
        let attended = self.attention_output.forward(context, hidden);
        let inner = self
            .activation
            .apply(self.intermediate.forward(attended.clone()));
        self.output.forward(inner, attended)
    }
}

/// `DebertaV2ForSequenceClassification`: the `deberta` encoder, the context pooler and the
/// classifier.
#[derive(Module, Debug)]
pub struct DebertaV2ForSequenceClassification<B: LoraOps> {
    /// `deberta.embeddings`.
    pub embeddings: DebertaV2Embeddings<B>,
    /// `deberta.encoder.layer`.
    pub layers: Vec<DebertaV2Layer<B>>,
    /// `deberta.encoder.rel_embeddings`, with `relative_attention`.
    pub rel_embeddings: Option<Embedding<B>>,
    /// `deberta.encoder.LayerNorm` on the relative embeddings, with `norm_rel_ebd = "layer_norm"`.
    pub rel_layer_norm: Option<LayerNorm<B>>,
    /// `pooler.dense`.
    pub pooler_dense: LoraLinear<B>,
    /// Dropout on the first token before `pooler.dense`.
    pub pooler_dropout: Dropout,
    /// Dropout before the classifier.
    pub dropout: Dropout,
    /// `classifier`.
    pub classifier: LoraLinear<B>,
    /// The checkpoint's configuration.
    pub config: ModelConfig,
    /// Its DeBERTa-specific fields.
    pub settings: DebertaV2Settings,
}

fn dropout(p: f64) -> Dropout {
    Dropout::new(p)
}

impl<B: LoraOps> DebertaV2ForSequenceClassification<B> {
    /// Builds the model from `config` with the weights in `loader` (tensor names as transformers
    /// writes them, with or without the `deberta.` prefix). `pooler.dense` and `classifier` are
    /// created fresh when the checkpoint lacks them (a pretrained DeBERTa-v3 has neither).
    pub(crate) fn load(
        loader: &mut ModuleLoader<'_, B>,
        config: ModelConfig,
        settings: DebertaV2Settings,
    ) -> Self {
        let h = config.hidden_size;
        let e = settings.embedding_size;
        let eps = config.layer_norm_eps;
        let p = "deberta";

        let embeddings = DebertaV2Embeddings {
            word_embeddings: loader.embedding(
                &format!("{p}.embeddings.word_embeddings"),
                config.vocab_size,
                e,
            ),
            position_embeddings: settings.position_biased_input.then(|| {
                loader.embedding(
                    &format!("{p}.embeddings.position_embeddings"),
                    config.max_position_embeddings,
                    e,
                )
            }),
            token_type_embeddings: (config.type_vocab_size > 0).then(|| {
                loader.embedding(
                    &format!("{p}.embeddings.token_type_embeddings"),
                    config.type_vocab_size,
                    e,
                )
            }),
            embed_proj: (e != h)
                .then(|| loader.linear(&format!("{p}.embeddings.embed_proj"), e, h, false)),
            layer_norm: loader.layer_norm(&format!("{p}.embeddings.LayerNorm"), h, eps),
            dropout: dropout(config.hidden_dropout_prob),
        };

        let separate_pos = settings.relative_attention && !settings.share_att_key;
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = format!("{p}.encoder.layer.{i}");
                let a = format!("{l}.attention.self");
                DebertaV2Layer {
                    attention: DisentangledSelfAttention {
                        query_proj: loader.linear(&format!("{a}.query_proj"), h, h, true),
                        key_proj: loader.linear(&format!("{a}.key_proj"), h, h, true),
                        value_proj: loader.linear(&format!("{a}.value_proj"), h, h, true),
                        pos_key_proj: (separate_pos && settings.c2p)
                            .then(|| loader.linear(&format!("{a}.pos_key_proj"), h, h, true)),
                        pos_query_proj: (separate_pos && settings.p2c)
                            .then(|| loader.linear(&format!("{a}.pos_query_proj"), h, h, true)),
                        dropout: dropout(config.attention_probs_dropout_prob),
                        pos_dropout: dropout(config.hidden_dropout_prob),
                        num_heads: config.num_attention_heads,
                        head_size: settings.attention_head_size,
                        c2p: settings.c2p,
                        p2c: settings.p2c,
                        relative_attention: settings.relative_attention,
                        share_att_key: settings.share_att_key,
                        scale_factor: settings.scale_factor(),
                    },
                    attention_output: DebertaV2ResidualOutput {
                        dense: loader.linear(&format!("{l}.attention.output.dense"), h, h, true),
                        layer_norm: loader.layer_norm(
                            &format!("{l}.attention.output.LayerNorm"),
                            h,
                            eps,
                        ),
                        dropout: dropout(config.hidden_dropout_prob),
                    },
                    intermediate: loader.linear(
                        &format!("{l}.intermediate.dense"),
                        h,
                        config.intermediate_size,
                        true,
                    ),
                    output: DebertaV2ResidualOutput {
                        dense: loader.linear(
                            &format!("{l}.output.dense"),
                            config.intermediate_size,
                            h,
                            true,
                        ),
                        layer_norm: loader.layer_norm(&format!("{l}.output.LayerNorm"), h, eps),
                        dropout: dropout(config.hidden_dropout_prob),
                    },
                    activation: config.hidden_act,
                }
            })
            .collect();

        let span = settings.attention_span();
        let rel_embeddings = settings
            .relative_attention
            .then(|| loader.embedding(&format!("{p}.encoder.rel_embeddings"), 2 * span, h));
        // transformers creates this LayerNorm from norm_rel_ebd alone, so checkpoints carry it
        // even when relative attention is off.
        let rel_layer_norm = settings
            .norm_rel_embeddings
            .then(|| loader.layer_norm(&format!("{p}.encoder.LayerNorm"), h, eps));

        Self {
            embeddings,
            layers,
            rel_embeddings,
            rel_layer_norm,
            pooler_dense: loader.head_linear("pooler.dense", h, h),
            pooler_dropout: dropout(settings.pooler_dropout),
            dropout: dropout(settings.cls_dropout),
            classifier: loader.head_linear("classifier", h, config.num_labels),
            config,
            settings,
        }
    }

    /// The relative embeddings and gather indices for a batch of `[batch, seq]`.
    fn relative_context(
        &self,
        batch: usize,
        seq: usize,
        device: &B::Device,
    ) -> Option<RelativeContext<B>> {
        let table = self.rel_embeddings.as_ref()?.weight.val();
        let embeddings = match &self.rel_layer_norm {
            Some(norm) => norm.forward(table),
            None => table,
        };
        let s = &self.settings;
        let (c2p, p2c) = relative_indices(
            seq,
            s.attention_span(),
            s.position_buckets,
            s.max_relative_positions,
        );
        let heads = self.config.num_attention_heads;
        let index = |values: Vec<i64>| {
            Tensor::<B, 2, Int>::from_data(TensorData::new(values, [seq, seq]), device)
                .reshape([1, 1, seq, seq])
                .repeat_dim(0, batch)
                .repeat_dim(1, heads)
        };
        Some(RelativeContext {
            embeddings,
            c2p_index: index(c2p),
            p2c_index: index(p2c),
        })
    }

    /// The last hidden state `[batch, seq, hidden]` of `deberta` for `[batch, seq]` inputs.
    pub fn encode(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        token_type_ids: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        let keep = attention_mask.float();
        // A (query, key) pair takes part only when both tokens are real.
        let masked = (keep.clone().reshape([batch, 1, seq, 1])
            * keep.clone().reshape([batch, 1, 1, seq]))
        .equal_elem(0.0)
        .repeat_dim(1, self.config.num_attention_heads);
        let relative = self.relative_context(batch, seq, &device);
        let mut hidden = self.embeddings.forward(input_ids, token_type_ids, keep);
        for layer in &self.layers {
            hidden = layer.forward(hidden, masked.clone(), relative.as_ref());
        }
        hidden
    }

    /// Logits `[batch, num_labels]` for `[batch, seq]` token ids, 0/1 attention mask and token types.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        token_type_ids: Tensor<B, 2, Int>,
    ) -> Tensor<B, 2> {
        let hidden = self.encode(input_ids, attention_mask, token_type_ids);
        let [batch, _, width] = hidden.dims();
        let first = hidden.narrow(1, 0, 1).reshape([batch, width]);
        let pooled = self.settings.pooler_hidden_act.apply(
            self.pooler_dense
                .forward(self.pooler_dropout.forward(first)),
        );
        self.classifier.forward(self.dropout.forward(pooled))
    }

    /// Every linear projection with its transformers module path, in a stable order.
    pub fn linears(&self) -> Vec<(String, &LoraLinear<B>)> {
        let p = "deberta";
        let mut out = Vec::new();
        if let Some(proj) = &self.embeddings.embed_proj {
            out.push((format!("{p}.embeddings.embed_proj"), proj));
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let l = format!("{p}.encoder.layer.{i}");
            let a = &layer.attention;
            out.push((format!("{l}.attention.self.query_proj"), &a.query_proj));
            out.push((format!("{l}.attention.self.key_proj"), &a.key_proj));
            out.push((format!("{l}.attention.self.value_proj"), &a.value_proj));
            if let Some(proj) = &a.pos_key_proj {
                out.push((format!("{l}.attention.self.pos_key_proj"), proj));
            }
            if let Some(proj) = &a.pos_query_proj {
                out.push((format!("{l}.attention.self.pos_query_proj"), proj));
            }
            out.push((
                format!("{l}.attention.output.dense"),
                &layer.attention_output.dense,
            ));
            out.push((format!("{l}.intermediate.dense"), &layer.intermediate));
            out.push((format!("{l}.output.dense"), &layer.output.dense));
        }
        out.push(("pooler.dense".to_string(), &self.pooler_dense));
        out.push(("classifier".to_string(), &self.classifier));
        out
    }

    /// Visits every linear projection with its transformers module path, in the order of
    /// [`Self::linears`].
    pub fn visit_linears(&self, f: &mut dyn FnMut(&str, &LoraLinear<B>)) {
        for (path, linear) in self.linears() {
            f(&path, linear);
        }
    }

    /// Visits every linear projection mutably with its transformers module path, in the order of
    /// [`Self::linears`].
    pub fn visit_linears_mut(&mut self, f: &mut dyn FnMut(&str, &mut LoraLinear<B>)) {
        let p = "deberta";
        if let Some(proj) = &mut self.embeddings.embed_proj {
            f(&format!("{p}.embeddings.embed_proj"), proj);
        }
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let l = format!("{p}.encoder.layer.{i}");
            let a = &mut layer.attention;
            f(&format!("{l}.attention.self.query_proj"), &mut a.query_proj);
            f(&format!("{l}.attention.self.key_proj"), &mut a.key_proj);
            f(&format!("{l}.attention.self.value_proj"), &mut a.value_proj);
            if let Some(proj) = &mut a.pos_key_proj {
                f(&format!("{l}.attention.self.pos_key_proj"), proj);
            }
            if let Some(proj) = &mut a.pos_query_proj {
                f(&format!("{l}.attention.self.pos_query_proj"), proj);
            }
            f(
                &format!("{l}.attention.output.dense"),
                &mut layer.attention_output.dense,
            );
            f(&format!("{l}.intermediate.dense"), &mut layer.intermediate);
            f(&format!("{l}.output.dense"), &mut layer.output.dense);
        }
        f("pooler.dense", &mut self.pooler_dense);
        f("classifier", &mut self.classifier);
    }

    /// Module paths of the task head: the context pooler and the classifier. Pretrained DeBERTa
    /// checkpoints have neither, so both are trained with the adapters (PEFT's default
    /// `modules_to_save` would leave the random pooler frozen).
    pub fn head_module_paths(&self) -> Vec<String> {
        vec!["pooler".to_string(), "classifier".to_string()]
    }

    /// Writes every parameter under its transformers name (with the `deberta.` prefix).
    pub(crate) fn write(&self, w: &mut TensorWriter) {
        let p = "deberta";
        let emb = &self.embeddings;
        w.embedding(
            &format!("{p}.embeddings.word_embeddings"),
            &emb.word_embeddings,
        );
        if let Some(table) = &emb.position_embeddings {
            w.embedding(&format!("{p}.embeddings.position_embeddings"), table);
        }
        if let Some(table) = &emb.token_type_embeddings {
            w.embedding(&format!("{p}.embeddings.token_type_embeddings"), table);
        }
        w.layer_norm(&format!("{p}.embeddings.LayerNorm"), &emb.layer_norm);
        for (path, linear) in self.linears() {
            w.linear(&path, linear);
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let l = format!("{p}.encoder.layer.{i}");
            w.layer_norm(
                &format!("{l}.attention.output.LayerNorm"),
                &layer.attention_output.layer_norm,
            );
            w.layer_norm(&format!("{l}.output.LayerNorm"), &layer.output.layer_norm);
        }
        if let Some(table) = &self.rel_embeddings {
            w.embedding(&format!("{p}.encoder.rel_embeddings"), table);
        }
        if let Some(norm) = &self.rel_layer_norm {
            w.layer_norm(&format!("{p}.encoder.LayerNorm"), norm);
        }
    }
}

/// Loads a checkpoint as DeBERTa-v2 (used by [`crate::SequenceClassifier::load`]).
pub(crate) fn load<B: LoraOps>(
    mut loader: ModuleLoader<'_, B>,
    config: ModelConfig,
) -> Result<(DebertaV2ForSequenceClassification<B>, LoadReport), EncoderError> {
    let settings = DebertaV2Settings::from_config(&config, Path::new(CONFIG_FILE))?;
    let model = DebertaV2ForSequenceClassification::load(&mut loader, config, settings);
    loader.ignore_buffers(|key| key.ends_with("embeddings.position_ids"));
    Ok((model, loader.finish()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(json: &str) -> Result<DebertaV2Settings, EncoderError> {
        let config = ModelConfig::from_json_str(json, Path::new("config.json"))?;
        DebertaV2Settings::from_config(&config, Path::new("config.json"))
    }

    #[test]
    fn small_distances_are_not_bucketed() {
        for r in -2..=2 {
            assert_eq!(log_bucket_position(r, 4, 16), r);
        }
        // Beyond the middle the bucket grows logarithmically and keeps the sign.
        assert_eq!(log_bucket_position(15, 4, 16), 3);
        assert_eq!(log_bucket_position(-15, 4, 16), -3);
        assert_eq!(log_bucket_position(3, 4, 16), 3);
    }

    #[test]
    fn indices_are_clamped_into_the_table() {
        // No buckets, span 2: distances beyond +-2 clamp to the table ends.
        let (c2p, p2c) = relative_indices(5, 2, None, 2);
        assert!(c2p.iter().chain(&p2c).all(|&i| (0..4).contains(&i)));
        // Query 4, key 0: distance 4 -> 2 + 4 clamped to 3; p2c mirrors it to 0.
        assert_eq!(c2p[4 * 5], 3);
        assert_eq!(p2c[4 * 5], 0);
        // The diagonal is the span itself.
        assert_eq!(c2p[2 * 5 + 2], 2);
    }

    #[test]
    fn pos_att_type_string_and_list_forms() {
        let s = settings(r#"{"model_type":"deberta-v2","pos_att_type":"p2c|c2p"}"#).unwrap();
        assert!(s.c2p && s.p2c);
        assert_eq!(s.scale_factor(), 3);
        let s = settings(r#"{"model_type":"deberta-v2","pos_att_type":["c2p"]}"#).unwrap();
        assert!(s.c2p && !s.p2c);
        let s = settings(r#"{"model_type":"deberta-v2"}"#).unwrap();
        assert!(!s.c2p && !s.p2c && !s.relative_attention && s.position_biased_input);
        assert_eq!(s.scale_factor(), 1);
    }

    /// Found by the `model_dir` fuzz target: 4 buckets with max_relative_positions 3 made the
    /// bucket's logarithm divide by ln(1) = 0 and overflow when negated.
    #[test]
    fn buckets_that_would_divide_by_ln_1_are_refused() {
        let err = settings(
            r#"{"model_type":"deberta-v2","relative_attention":true,"max_relative_positions":3,
                "position_buckets":4,"max_position_embeddings":24}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("position_buckets"), "{err}");
        // The shipped DeBERTa-v3 settings stay accepted.
        settings(
            r#"{"model_type":"deberta-v2","relative_attention":true,"max_relative_positions":-1,
                "position_buckets":256,"max_position_embeddings":512}"#,
        )
        .unwrap();
    }

    #[test]
    fn max_relative_positions_defaults_to_max_positions() {
        let s = settings(
            r#"{"model_type":"deberta-v2","relative_attention":true,"max_relative_positions":-1,
                "max_position_embeddings":128}"#,
        )
        .unwrap();
        assert_eq!(s.max_relative_positions, 128);
        assert_eq!(s.attention_span(), 128);
        assert_eq!(s.position_buckets, None);
    }

    #[test]
    fn conv_layer_is_rejected_as_unsupported() {
        let err = settings(r#"{"model_type":"deberta-v2","conv_kernel_size":3}"#).unwrap_err();
        assert!(
            matches!(&err, EncoderError::InvalidConfig { field, message, .. }
                if field == "conv_kernel_size" && message.contains("unsupported")),
            "{err}"
        );
        // 0 means no convolution.
        settings(r#"{"model_type":"deberta-v2","conv_kernel_size":0}"#).unwrap();
    }

    #[test]
    fn inconsistent_head_sizes_are_rejected() {
        let err = settings(
            r#"{"model_type":"deberta-v2","hidden_size":24,"num_attention_heads":4,"attention_head_size":5}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("attention_head_size"), "{err}");
        let err = settings(r#"{"model_type":"deberta-v2","hidden_size":24,"num_attention_heads":4,"pooler_hidden_size":12}"#)
            .unwrap_err();
        assert!(err.to_string().contains("pooler_hidden_size"), "{err}");
        let err =
            settings(r#"{"model_type":"deberta-v2","pooler_hidden_act":"swiglu"}"#).unwrap_err();
        assert!(err.to_string().contains("swiglu"), "{err}");
    }
}
