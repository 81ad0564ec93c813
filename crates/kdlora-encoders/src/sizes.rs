//! The sizes of `config.json` checked against the weights before a model is built.
//!
//! Every tensor of a model is allocated at the sizes the configuration gives (a missing or
//! mis-shaped one as zeros, so that one error can name them all): a `vocab_size` of 1e12 or a
//! `hidden_size` of 1e9 would abort the process on allocation long before the shapes are
//! compared, and a million layers would be built one by one. So each size is first compared
//! with the stored tensor that fixes it, and what no tensor fixes is bounded by what the weights
//! (or, for a fresh model, a sane limit) can hold.

use std::path::Path;

use crate::config::ModelConfig;
use crate::deberta_v2::DebertaV2Settings;
use crate::error::EncoderError;
use crate::weights::WeightMap;

/// Values (f32 elements) a model may have beyond its stored tensors: a fresh head and pooler
/// (`hidden_size` squared plus a row per label) on top of the largest encoders' weights.
const FRESH_SLACK: u128 = 1 << 24;

/// The most values a model built from its configuration alone may have: above the largest
/// encoder kdlora supports (DeBERTa-v2 xxlarge, 1.5e9), far below what would abort on allocation.
const MAX_FRESH_VALUES: u128 = 1 << 31;

/// The most layers of a model built from its configuration alone.
const MAX_FRESH_LAYERS: usize = 1024;

/// One size of `config.json` and the stored tensor dimension that must equal it.
struct Fixed {
    /// The key as `config.json` spells it for this architecture.
    key: &'static str,
    value: usize,
    /// Hugging Face name of the tensor (with the base-model prefix).
    tensor: String,
    dim: usize,
    /// What the key means for that dimension, when not the value itself.
    note: Option<String>,
}

impl Fixed {
    fn new(key: &'static str, value: usize, tensor: String, dim: usize) -> Self {
        Self {
            key,
            value,
            tensor,
            dim,
            note: None,
        }
    }

    fn with_note(mut self, note: Option<String>) -> Self {
        self.note = note;
        self
    }
}

/// Checks the sizes of `config` against `weights` (`None`: a model built from its configuration
/// alone), before any tensor is allocated. `prefix` is the base model's (`bert`, ...); `path` is
/// `config.json`, named in the errors.
pub(crate) fn check_sizes(
    config: &ModelConfig,
    weights: Option<&WeightMap>,
    prefix: &str,
    path: &Path,
) -> Result<(), EncoderError> {
    let invalid = |field: &str, message: String| EncoderError::InvalidConfig {
        path: path.to_path_buf(),
        field: field.to_string(),
        message,
    };
    let missing = |key: &str| config.raw().get(key).is_none_or(|v| v.is_null());
    let distil = config.model_type == "distilbert";
    let deberta = config.model_type == "deberta-v2";
    let key = |bert: &'static str, distilbert: &'static str| if distil { distilbert } else { bert };
    let settings = if deberta {
        Some(DebertaV2Settings::from_config(config, path)?)
    } else {
        None
    };
    let h = config.hidden_size;
    let embedding_width = settings.as_ref().map_or(h, |s| s.embedding_size);
    let has_positions = settings.as_ref().is_none_or(|s| s.position_biased_input);
    let relative_span = settings
        .as_ref()
        .filter(|s| s.relative_attention)
        .map(DebertaV2Settings::attention_span);
    let root = if distil {
        format!("{prefix}.transformer.layer")
    } else {
        format!("{prefix}.encoder.layer")
    };
    let layers_key = key("num_hidden_layers", "n_layers");
    let layers = config.num_hidden_layers;

    if let Some(weights) = weights {
        let heads_key = key("num_attention_heads", "n_heads");
        if missing(heads_key) {
            // No tensor's shape tells the heads apart: a default would change the attention of
            // pretrained weights without a word.
            return Err(invalid(
                heads_key,
                format!(
                    "missing; the weights do not fix it, and transformers' default for {} ({}) \
                     may not be what they were trained with",
                    config.model_type, config.num_attention_heads
                ),
            ));
        }
        let stored = stored_layers(weights, &root, prefix);
        // Weights with no layer at all are reported tensor by tensor when the model loads (a
        // list that says more than a count); only a layer count that could exhaust memory
        // before that is refused here.
        if (stored > 0 && layers > stored) || (stored == 0 && layers > MAX_FRESH_LAYERS) {
            let why = if missing(layers_key) {
                format!(
                    "missing, and transformers' default for {} is {layers}",
                    config.model_type
                )
            } else {
                format!("{layers} layers")
            };
            return Err(invalid(
                layers_key,
                format!(
                    "{why}, but {} has {stored} (no tensor under {root}.{stored})",
                    weights.source().display()
                ),
            ));
        }

        let mut fixed = vec![Fixed::new(
            "vocab_size",
            config.vocab_size,
            format!("{prefix}.embeddings.word_embeddings.weight"),
            0,
        )];
        if deberta {
            fixed.push(
                Fixed::new(
                    "embedding_size",
                    embedding_width,
                    format!("{prefix}.embeddings.word_embeddings.weight"),
                    1,
                )
                .with_note(missing("embedding_size").then(|| "hidden_size when absent".into())),
            );
        } else {
            fixed.push(Fixed::new(
                key("hidden_size", "dim"),
                h,
                format!("{prefix}.embeddings.word_embeddings.weight"),
                1,
            ));
        }
        if layers > 0 {
            let (output, inner) = if distil {
                ("attention.out_lin", "ffn.lin1")
            } else {
                ("attention.output.dense", "intermediate.dense")
            };
            fixed.push(Fixed::new(
                key("hidden_size", "dim"),
                h,
                format!("{root}.0.{output}.weight"),
                0,
            ));
            fixed.push(Fixed::new(
                key("intermediate_size", "hidden_dim"),
                config.intermediate_size,
                format!("{root}.0.{inner}.weight"),
                0,
            ));
        }
        if has_positions {
            fixed.push(Fixed::new(
                "max_position_embeddings",
                config.max_position_embeddings,
                format!("{prefix}.embeddings.position_embeddings.weight"),
                0,
            ));
        }
        if config.type_vocab_size > 0 {
            fixed.push(Fixed::new(
                "type_vocab_size",
                config.type_vocab_size,
                format!("{prefix}.embeddings.token_type_embeddings.weight"),
                0,
            ));
        }
        if let (Some(span), Some(s)) = (relative_span, &settings) {
            let span_key = if s.position_buckets.is_some() {
                "position_buckets"
            } else if config
                .raw()
                .get("max_relative_positions")
                .and_then(|v| v.as_i64())
                .is_some_and(|v| v >= 1)
            {
                "max_relative_positions"
            } else {
                "max_position_embeddings"
            };
            fixed.push(
                Fixed::new(
                    span_key,
                    span.saturating_mul(2),
                    format!("{prefix}.encoder.rel_embeddings.weight"),
                    0,
                )
                .with_note(Some(format!("{span}, a table of twice as many rows"))),
            );
        }
        for f in &fixed {
            let Some(stored) = weights.resolve(&f.tensor, prefix) else {
                continue;
            };
            let Some(tensor) = weights.get(&stored) else {
                continue;
            };
            let Some(&actual) = tensor.shape.get(f.dim) else {
                continue;
            };
            if actual == f.value {
                continue;
            }
            let mut expected = tensor.shape.clone();
            expected[f.dim] = f.value;
            let what = if missing(f.key) && f.note.is_none() {
                format!(
                    "missing, and transformers' default for {} ({})",
                    config.model_type, f.value
                )
            } else {
                match &f.note {
                    Some(note) => format!("{} ({note})", f.value),
                    None => f.value.to_string(),
                }
            };
            return Err(invalid(
                f.key,
                format!(
                    "{what} does not match the weights: {} has {stored} of shape {:?}, not {expected:?}",
                    weights.source().display(),
                    tensor.shape
                ),
            ));
        }
    } else if layers > MAX_FRESH_LAYERS {
        return Err(invalid(
            layers_key,
            format!("{layers} layers is more than the {MAX_FRESH_LAYERS} kdlora builds"),
        ));
    }

    // What no tensor fixed (a tensor the weights lack, a fresh model): the values the model
    // would allocate, bounded by what the weights hold.
    let n = |v: usize| v as u128;
    let hh = n(h).saturating_mul(n(h));
    let layer = hh.saturating_mul(4).saturating_add(
        n(h).saturating_mul(n(config.intermediate_size))
            .saturating_mul(2),
    );
    let mut terms: Vec<(&str, u128)> = vec![
        (
            "vocab_size",
            n(config.vocab_size).saturating_mul(n(embedding_width)),
        ),
        (
            if config.intermediate_size > h.saturating_mul(2) {
                key("intermediate_size", "hidden_dim")
            } else {
                layers_key
            },
            n(layers).saturating_mul(layer),
        ),
        (
            "type_vocab_size",
            n(config.type_vocab_size).saturating_mul(n(embedding_width)),
        ),
        (
            "num_labels",
            hh.saturating_add(n(h).saturating_mul(n(config.num_labels))),
        ),
    ];
    if embedding_width != h {
        terms.push(("embedding_size", n(embedding_width).saturating_mul(n(h))));
    }
    if has_positions {
        terms.push((
            "max_position_embeddings",
            n(config.max_position_embeddings).saturating_mul(n(embedding_width)),
        ));
    }
    if let Some(span) = relative_span {
        terms.push((
            "max_relative_positions",
            n(span).saturating_mul(2).saturating_mul(n(h)),
        ));
    }
    let total = terms
        .iter()
        .fold(0u128, |acc, (_, t)| acc.saturating_add(*t));
    let (limit, against) = match weights {
        Some(w) => (
            n(w.num_values())
                .saturating_mul(2)
                .saturating_add(FRESH_SLACK),
            format!("{} holds {} values", w.source().display(), w.num_values()),
        ),
        None => (
            MAX_FRESH_VALUES,
            format!("a model built from its configuration may have {MAX_FRESH_VALUES}"),
        ),
    };
    if total > limit {
        let largest = terms
            .iter()
            .max_by_key(|(_, t)| *t)
            .map_or("hidden_size", |(k, _)| *k);
        let sizes = format!(
            "vocab_size {}, {} {h}, {layers_key} {layers}, {} {}",
            config.vocab_size,
            key("hidden_size", "dim"),
            key("intermediate_size", "hidden_dim"),
            config.intermediate_size
        );
        return Err(invalid(
            largest,
            format!("the sizes ({sizes}) make a model of {total} values, but {against}"),
        ));
    }
    Ok(())
}

/// How many consecutive layers (`root.0.`, `root.1.`, ...) the weights have tensors for, with
/// or without the base-model prefix.
fn stored_layers(weights: &WeightMap, root: &str, prefix: &str) -> usize {
    let prefixed = format!("{root}.");
    let bare = prefixed
        .strip_prefix(&format!("{prefix}."))
        .unwrap_or(&prefixed)
        .to_string();
    let mut present = std::collections::BTreeSet::new();
    for name in weights.all_keys() {
        let Some(rest) = name
            .strip_prefix(&prefixed)
            .or_else(|| name.strip_prefix(&bare))
        else {
            continue;
        };
        if let Some(index) = rest.split('.').next().and_then(|i| i.parse::<usize>().ok()) {
            present.insert(index);
        }
    }
    (0..).take_while(|i| present.contains(i)).count()
}
