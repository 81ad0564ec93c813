//! `config.json` of a Hugging Face checkpoint: the normalised fields the encoders need, plus the raw
//! JSON so that saving writes every field back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::EncoderError;
use crate::weights::write_atomic;

/// Feed-forward activation (`hidden_act`, or DistilBERT's `activation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU with `erf` (`gelu`).
    Gelu,
    /// Tanh approximation of GELU (`gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`).
    GeluTanh,
    /// `relu`.
    Relu,
    /// `silu` / `swish`.
    Silu,
}

impl Activation {
    /// Parses a transformers activation name.
    pub fn from_hf_name(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Self::GeluTanh),
            "relu" => Some(Self::Relu),
            "silu" | "swish" => Some(Self::Silu),
            _ => None,
        }
    }

    /// The canonical transformers name.
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Gelu => "gelu",
            Self::GeluTanh => "gelu_new",
            Self::Relu => "relu",
            Self::Silu => "silu",
        }
    }

    /// Applies the activation element-wise.
    pub fn apply<B: kdlora_kernels::LoraOps, const D: usize>(
        self,
        x: burn::tensor::Tensor<B, D>,
    ) -> burn::tensor::Tensor<B, D> {
        use burn::tensor::activation;
        match self {
            Self::Gelu => kdlora_kernels::gelu(x),
            Self::GeluTanh => activation::gelu_approximate(x),
            Self::Relu => activation::relu(x),
            Self::Silu => activation::silu(x),
        }
    }
}

/// What the classification head predicts (transformers' `problem_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemType {
    /// One real value per input (`num_labels == 1`, e.g. STS-B); MSE loss.
    Regression,
    /// One class per input; cross-entropy loss.
    SingleLabelClassification,
    /// Independent binary labels; BCE loss.
    MultiLabelClassification,
}

impl ProblemType {
    /// transformers' name of the problem type.
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Regression => "regression",
            Self::SingleLabelClassification => "single_label_classification",
            Self::MultiLabelClassification => "multi_label_classification",
        }
    }

    /// Parses transformers' name.
    pub fn from_hf_name(name: &str) -> Option<Self> {
        match name {
            "regression" => Some(Self::Regression),
            "single_label_classification" => Some(Self::SingleLabelClassification),
            "multi_label_classification" => Some(Self::MultiLabelClassification),
            _ => None,
        }
    }
}

/// The architecture-independent view of a checkpoint's `config.json`.
///
/// Field names follow BERT's config; DistilBERT's own names (`dim`, `n_layers`, `n_heads`,
/// `hidden_dim`, `activation`, `dropout`, `attention_dropout`, `seq_classif_dropout`) are mapped onto
/// them when reading and back when writing. Defaults are those of the transformers config classes.
/// Fields kdlora does not interpret stay in [`ModelConfig::raw`] and are written back unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// transformers `model_type` (`bert`, `distilbert`, `roberta`, ...).
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size (DistilBERT `dim`).
    pub hidden_size: usize,
    /// Number of transformer layers (DistilBERT `n_layers`).
    pub num_hidden_layers: usize,
    /// Attention heads per layer (DistilBERT `n_heads`).
    pub num_attention_heads: usize,
    /// Feed-forward inner size (DistilBERT `hidden_dim`).
    pub intermediate_size: usize,
    /// Feed-forward activation.
    pub hidden_act: Activation,
    /// Dropout on hidden states (DistilBERT `dropout`).
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities (DistilBERT `attention_dropout`).
    pub attention_probs_dropout_prob: f64,
    /// Dropout before the classifier, resolved as transformers does (`classifier_dropout` falling back
    /// to `hidden_dropout_prob`; DistilBERT `seq_classif_dropout`).
    pub classifier_dropout: f64,
    /// Number of learned position embeddings.
    pub max_position_embeddings: usize,
    /// Number of token types (segment ids); 0 when the model has no token-type embeddings.
    pub type_vocab_size: usize,
    /// LayerNorm epsilon (DistilBERT: always 1e-12).
    pub layer_norm_eps: f64,
    /// Id of the padding token (RoBERTa's `padding_idx` for position ids).
    pub pad_token_id: usize,
    /// Standard deviation of fresh weight initialisation.
    pub initializer_range: f64,
    /// Output size of the classification head.
    pub num_labels: usize,
    /// Label names, indexed by class id (`LABEL_i` when the checkpoint has none).
    pub id2label: Vec<String>,
    /// Regression or classification.
    pub problem_type: ProblemType,
    raw: Map<String, Value>,
}

/// Reads a field, checking its JSON type; `None` when absent or `null`.
fn field<T: DeserializeOwned>(
    raw: &Map<String, Value>,
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

impl ModelConfig {
    /// Reads and normalises `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, EncoderError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                EncoderError::MissingFile {
                    path: path.to_path_buf(),
                    hint: "every checkpoint folder needs the model's config.json".into(),
                }
            } else {
                EncoderError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        Self::from_json_str(&text, path)
    }

    /// Parses `config.json` text; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self, EncoderError> {
        let value: Value = serde_json::from_str(text).map_err(|err| EncoderError::Json {
            path: path.to_path_buf(),
            message: err.to_string(),
        })?;
        let Value::Object(raw) = value else {
            return Err(EncoderError::Json {
                path: path.to_path_buf(),
                message: "expected a JSON object".into(),
            });
        };
        Self::from_raw(raw, path)
    }

    fn from_raw(raw: Map<String, Value>, path: &Path) -> Result<Self, EncoderError> {
        let model_type: String =
            field(&raw, "model_type", path)?.ok_or_else(|| EncoderError::InvalidConfig {
                path: path.to_path_buf(),
                field: "model_type".into(),
                message: "missing; transformers writes it into every config.json".into(),
            })?;
        let distil = model_type == "distilbert";
        // Names differ between BERT-style configs and DistilBERT's.
        let name = |bert: &'static str, distilbert: &'static str| {
            if distil { distilbert } else { bert }
        };
        let usize_field = |key: &str, default: usize| -> Result<usize, EncoderError> {
            Ok(field::<usize>(&raw, key, path)?.unwrap_or(default))
        };
        let f64_field = |key: &str, default: f64| -> Result<f64, EncoderError> {
            Ok(field::<f64>(&raw, key, path)?.unwrap_or(default))
        };
        let invalid = |field: &str, message: String| EncoderError::InvalidConfig {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        };

        let (default_pad, default_eps, default_types) = match model_type.as_str() {
            "roberta" | "xlm-roberta" | "camembert" => (1, 1e-12, 2),
            "deberta-v2" | "deberta" => (0, 1e-7, 0),
            "distilbert" => (0, 1e-12, 0),
            _ => (0, 1e-12, 2),
        };
        // The sizes transformers' config class for the model type defaults to. A file that
        // lacks one is accepted only when the weights agree with the default (checked when the
        // model is built): transformers itself writes every size into config.json.
        let sizes = HfSizes::for_model_type(&model_type);
        let act_key = name("hidden_act", "activation");
        let act_name: String = field(&raw, act_key, path)?.unwrap_or_else(|| "gelu".to_string());
        let hidden_act = Activation::from_hf_name(&act_name).ok_or_else(|| {
            invalid(
                act_key,
                format!(
                    "unsupported activation {act_name:?} (supported: gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu, silu)"
                ),
            )
        })?;
        let hidden_dropout_prob = f64_field(name("hidden_dropout_prob", "dropout"), 0.1)?;
        let classifier_dropout = if distil {
            f64_field("seq_classif_dropout", 0.2)?
        } else {
            f64_field("classifier_dropout", hidden_dropout_prob)?
        };
        let position_type: Option<String> = field(&raw, "position_embedding_type", path)?;
        if let Some(kind) = position_type
            && kind != "absolute"
            && !model_type.starts_with("deberta")
        {
            return Err(invalid(
                "position_embedding_type",
                format!("{kind:?} is not supported (only \"absolute\")"),
            ));
        }

        let id2label_map: Option<BTreeMap<String, String>> = field(&raw, "id2label", path)?;
        let explicit_labels: Option<usize> = field(&raw, "num_labels", path)?;
        // The label names (and later the head) are sized from `num_labels` before any weight is
        // read: a value such as 1e9 would allocate gigabytes, or abort, instead of failing here.
        if let Some(n) = explicit_labels
            && n > MAX_LABELS
        {
            return Err(invalid(
                "num_labels",
                format!("{n} is more than {MAX_LABELS} labels"),
            ));
        }
        let id2label = match id2label_map {
            Some(map) => {
                let mut labels = vec![String::new(); map.len()];
                for (id, label) in map {
                    let index: usize =
                        id.parse()
                            .ok()
                            .filter(|i| *i < labels.len())
                            .ok_or_else(|| {
                                invalid(
                                    "id2label",
                                    format!("key {id:?} is not a class id 0..{}", labels.len()),
                                )
                            })?;
                    labels[index] = label;
                }
                labels
            }
            None => default_labels(explicit_labels.unwrap_or(2)),
        };
        let num_labels = id2label.len();
        if num_labels == 0 {
            return Err(invalid(
                "id2label",
                "the head needs at least one label".into(),
            ));
        }
        let problem_type = match field::<String>(&raw, "problem_type", path)? {
            Some(name) => ProblemType::from_hf_name(&name)
                .ok_or_else(|| invalid("problem_type", format!("unknown problem type {name:?}")))?,
            None => default_problem(num_labels),
        };

        let config = Self {
            vocab_size: usize_field("vocab_size", sizes.vocab)?,
            hidden_size: usize_field(name("hidden_size", "dim"), sizes.hidden)?,
            num_hidden_layers: usize_field(name("num_hidden_layers", "n_layers"), sizes.layers)?,
            num_attention_heads: usize_field(name("num_attention_heads", "n_heads"), sizes.heads)?,
            intermediate_size: usize_field(
                name("intermediate_size", "hidden_dim"),
                sizes.intermediate,
            )?,
            hidden_act,
            hidden_dropout_prob,
            attention_probs_dropout_prob: f64_field(
                name("attention_probs_dropout_prob", "attention_dropout"),
                0.1,
            )?,
            classifier_dropout,
            max_position_embeddings: usize_field("max_position_embeddings", 512)?,
            type_vocab_size: if distil {
                0
            } else {
                usize_field("type_vocab_size", default_types)?
            },
            layer_norm_eps: if distil {
                1e-12
            } else {
                f64_field("layer_norm_eps", default_eps)?
            },
            pad_token_id: usize_field("pad_token_id", default_pad)?,
            initializer_range: f64_field("initializer_range", 0.02)?,
            num_labels,
            id2label,
            problem_type,
            model_type,
            raw,
        };
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), EncoderError> {
        let invalid = |field: &str, message: String| EncoderError::InvalidConfig {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        };
        for (value, key) in [
            (self.vocab_size, "vocab_size"),
            (self.hidden_size, "hidden_size"),
            (self.num_attention_heads, "num_attention_heads"),
            (self.intermediate_size, "intermediate_size"),
            (self.max_position_embeddings, "max_position_embeddings"),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be positive".into()));
            }
        }
        // BERT and RoBERTa always add a token-type embedding (transformers looks up type 0 when no
        // types are given, so a table of no rows fails there); only DeBERTa-v2 and DistilBERT go
        // without one. Accepting 0 here would silently drop the checkpoint's table.
        let has_token_types =
            !(self.model_type == "distilbert" || self.model_type.starts_with("deberta"));
        if has_token_types && self.type_vocab_size == 0 {
            return Err(invalid(
                "type_vocab_size",
                format!(
                    "must be at least 1: {} adds a token-type embedding to every token",
                    self.model_type
                ),
            ));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(invalid(
                "num_attention_heads",
                format!(
                    "hidden size {} is not a multiple of {} heads",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        // Indices and divisors read from the file: out of range they panic inside a gather or
        // turn every output into NaN, long after loading.
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(invalid(
                "layer_norm_eps",
                format!("{} is not a positive number", self.layer_norm_eps),
            ));
        }
        if !(self.initializer_range.is_finite() && self.initializer_range >= 0.0) {
            return Err(invalid(
                "initializer_range",
                format!("{} is not a number >= 0", self.initializer_range),
            ));
        }
        if self.pad_token_id >= self.vocab_size {
            return Err(invalid(
                "pad_token_id",
                format!(
                    "{} is outside the vocabulary (vocab_size {})",
                    self.pad_token_id, self.vocab_size
                ),
            ));
        }
        if self.max_sequence_length() == 0 {
            return Err(invalid(
                "max_position_embeddings",
                format!(
                    "leaves no position for a token ({})",
                    self.max_sequence_length_reason()
                ),
            ));
        }
        for (value, key) in [
            (self.hidden_dropout_prob, "hidden_dropout_prob"),
            (
                self.attention_probs_dropout_prob,
                "attention_probs_dropout_prob",
            ),
            (self.classifier_dropout, "classifier_dropout"),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(invalid(key, format!("{value} is not a probability")));
            }
        }
        Ok(())
    }

    /// Whether position ids start after the padding index, as in RoBERTa (`padding_idx + 1`).
    fn has_position_offset(&self) -> bool {
        matches!(
            self.model_type.as_str(),
            "roberta" | "xlm-roberta" | "camembert"
        )
    }

    /// The longest sequence the position embeddings allow: `max_position_embeddings`, less
    /// RoBERTa's offset of `pad_token_id + 1`. Every length check (a configured `max_len`, a
    /// sequence given to `logits`) compares against this one number.
    pub fn max_sequence_length(&self) -> usize {
        if self.has_position_offset() {
            self.max_position_embeddings
                .saturating_sub(self.pad_token_id + 1)
        } else {
            self.max_position_embeddings
        }
    }

    /// How [`ModelConfig::max_sequence_length`] comes about, for error messages.
    pub fn max_sequence_length_reason(&self) -> String {
        if self.has_position_offset() {
            format!(
                "max_position_embeddings {} minus the {} positions {} reserves before the first token",
                self.max_position_embeddings,
                self.pad_token_id + 1,
                self.model_type
            )
        } else {
            format!("max_position_embeddings {}", self.max_position_embeddings)
        }
    }

    /// The raw JSON object as read (before any change through the typed fields).
    pub fn raw(&self) -> &Map<String, Value> {
        &self.raw
    }

    /// Reads an architecture-specific field from the raw JSON; `None` when absent or `null`.
    pub fn raw_field<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, EncoderError> {
        field(&self.raw, key, Path::new("config.json"))
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Changes the head size; label names become `LABEL_i` unless the count is unchanged, and the
    /// problem type follows (`num_labels == 1` means regression).
    pub fn set_num_labels(&mut self, num_labels: usize) {
        if num_labels != self.num_labels {
            self.num_labels = num_labels;
            self.id2label = default_labels(num_labels);
            self.problem_type = default_problem(num_labels);
        }
    }

    /// The `config.json` object to save: the raw fields with the typed ones written over them, in
    /// the architecture's own names, for a `*ForSequenceClassification` model in float32.
    pub fn to_json(&self) -> Value {
        let mut out = self.raw.clone();
        let distil = self.model_type == "distilbert";
        let mut set = |key: &str, value: Value| {
            out.insert(key.to_string(), value);
        };
        set("model_type", self.model_type.clone().into());
        set("vocab_size", self.vocab_size.into());
        set(
            "max_position_embeddings",
            self.max_position_embeddings.into(),
        );
        set("pad_token_id", self.pad_token_id.into());
        set("initializer_range", self.initializer_range.into());
        if distil {
            set("dim", self.hidden_size.into());
            set("n_layers", self.num_hidden_layers.into());
            set("n_heads", self.num_attention_heads.into());
            set("hidden_dim", self.intermediate_size.into());
            set("activation", self.hidden_act.hf_name().into());
            set("dropout", self.hidden_dropout_prob.into());
            set(
                "attention_dropout",
                self.attention_probs_dropout_prob.into(),
            );
            set("seq_classif_dropout", self.classifier_dropout.into());
        } else {
            set("hidden_size", self.hidden_size.into());
            set("num_hidden_layers", self.num_hidden_layers.into());
            set("num_attention_heads", self.num_attention_heads.into());
            set("intermediate_size", self.intermediate_size.into());
            set("hidden_act", self.raw_act_name().into());
            set("hidden_dropout_prob", self.hidden_dropout_prob.into());
            set(
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob.into(),
            );
            set("type_vocab_size", self.type_vocab_size.into());
            set("layer_norm_eps", self.layer_norm_eps.into());
        }
        let id2label: Map<String, Value> = self
            .id2label
            .iter()
            .enumerate()
            .map(|(i, label)| (i.to_string(), Value::from(label.clone())))
            .collect();
        let label2id: Map<String, Value> = self
            .id2label
            .iter()
            .enumerate()
            .map(|(i, label)| (label.clone(), Value::from(i)))
            .collect();
        set("id2label", Value::Object(id2label));
        set("label2id", Value::Object(label2id));
        set("problem_type", self.problem_type.hf_name().into());
        set("torch_dtype", "float32".into());
        if let Some(arch) = classification_architecture(&self.model_type) {
            set("architectures", Value::from(vec![arch]));
        }
        // transformers derives num_labels from id2label and warns when both disagree.
        out.remove("num_labels");
        Value::Object(out)
    }

    /// Writes [`ModelConfig::to_json`] to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), EncoderError> {
        let mut text =
            serde_json::to_string_pretty(&self.to_json()).map_err(|err| EncoderError::Json {
                path: PathBuf::from(path),
                message: err.to_string(),
            })?;
        text.push('\n');
        write_atomic(path, text.as_bytes())
    }

    /// Keeps an equivalent spelling of the activation (`gelu_pytorch_tanh` stays as written).
    fn raw_act_name(&self) -> String {
        match self.raw.get("hidden_act").and_then(Value::as_str) {
            Some(name) if Activation::from_hf_name(name) == Some(self.hidden_act) => {
                name.to_string()
            }
            _ => self.hidden_act.hf_name().to_string(),
        }
    }
}

/// The size defaults of transformers' config classes (`BertConfig`, `RobertaConfig`,
/// `DistilBertConfig`, `DebertaV2Config`), used for a key `config.json` lacks.
struct HfSizes {
    vocab: usize,
    hidden: usize,
    layers: usize,
    heads: usize,
    intermediate: usize,
}

impl HfSizes {
    fn for_model_type(model_type: &str) -> Self {
        let base = Self {
            vocab: 30522,
            hidden: 768,
            layers: 12,
            heads: 12,
            intermediate: 3072,
        };
        match model_type {
            "roberta" | "deberta" => Self {
                vocab: 50265,
                ..base
            },
            "distilbert" => Self { layers: 6, ..base },
            "deberta-v2" => Self {
                vocab: 128100,
                hidden: 1536,
                layers: 24,
                heads: 24,
                intermediate: 6144,
            },
            _ => base,
        }
    }
}

/// The most labels a `config.json` may declare through `num_labels`: far above any text
/// classification head, far below what the label list allocated from it can afford.
const MAX_LABELS: usize = 1 << 16;

fn default_labels(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("LABEL_{i}")).collect()
}

fn default_problem(num_labels: usize) -> ProblemType {
    if num_labels == 1 {
        ProblemType::Regression
    } else {
        ProblemType::SingleLabelClassification
    }
}

fn classification_architecture(model_type: &str) -> Option<&'static str> {
    match model_type {
        "bert" => Some("BertForSequenceClassification"),
        "distilbert" => Some("DistilBertForSequenceClassification"),
        "roberta" => Some("RobertaForSequenceClassification"),
        "deberta-v2" => Some("DebertaV2ForSequenceClassification"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distilbert_names_map_and_round_trip() {
        let text = r#"{"model_type":"distilbert","dim":24,"n_layers":2,"n_heads":3,"hidden_dim":40,
            "activation":"relu","vocab_size":100,"custom_field":[1,2],"id2label":{"0":"LABEL_0"}}"#;
        let config = ModelConfig::from_json_str(text, Path::new("c.json")).unwrap();
        assert_eq!(config.hidden_size, 24);
        assert_eq!(config.num_hidden_layers, 2);
        assert_eq!(config.intermediate_size, 40);
        assert_eq!(config.hidden_act, Activation::Relu);
        assert_eq!(config.num_labels, 1);
        assert_eq!(config.problem_type, ProblemType::Regression);
        assert_eq!(config.type_vocab_size, 0);
        assert!((config.classifier_dropout - 0.2).abs() < 1e-12);
        let json = config.to_json();
        assert_eq!(json["custom_field"], serde_json::json!([1, 2]));
        assert_eq!(
            json["architectures"][0],
            "DistilBertForSequenceClassification"
        );
        let again = ModelConfig::from_json_str(&json.to_string(), Path::new("c.json")).unwrap();
        assert_eq!(again.hidden_size, config.hidden_size);
        assert_eq!(again.id2label, config.id2label);
    }

    #[test]
    fn bert_defaults_and_num_labels_override() {
        let mut config =
            ModelConfig::from_json_str(r#"{"model_type":"bert"}"#, Path::new("c.json")).unwrap();
        assert_eq!(config.hidden_size, 768);
        assert_eq!(config.num_labels, 2);
        assert_eq!(config.type_vocab_size, 2);
        assert!((config.layer_norm_eps - 1e-12).abs() < 1e-20);
        config.set_num_labels(3);
        assert_eq!(config.id2label, vec!["LABEL_0", "LABEL_1", "LABEL_2"]);
        assert_eq!(config.problem_type, ProblemType::SingleLabelClassification);
    }

    #[test]
    fn bad_fields_name_the_field() {
        let err = ModelConfig::from_json_str(
            r#"{"model_type":"bert","hidden_size":"big"}"#,
            Path::new("c.json"),
        )
        .unwrap_err();
        assert!(
            matches!(&err, EncoderError::InvalidConfig { field, .. } if field == "hidden_size"),
            "{err}"
        );
        let err = ModelConfig::from_json_str(
            r#"{"model_type":"bert","hidden_size":10,"num_attention_heads":3}"#,
            Path::new("c.json"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("multiple"), "{err}");
        let err = ModelConfig::from_json_str(
            r#"{"model_type":"bert","hidden_act":"swiglu"}"#,
            Path::new("c.json"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("swiglu"), "{err}");
    }

    /// Values that used to load and then panicked (an index) or produced NaN (a divisor).
    #[test]
    fn out_of_range_values_are_refused_at_load() {
        for (json, key) in [
            (
                r#"{"model_type":"bert","layer_norm_eps":-1e-12}"#,
                "layer_norm_eps",
            ),
            (
                r#"{"model_type":"bert","layer_norm_eps":0}"#,
                "layer_norm_eps",
            ),
            (
                r#"{"model_type":"bert","initializer_range":-1}"#,
                "initializer_range",
            ),
            (
                r#"{"model_type":"bert","vocab_size":10,"pad_token_id":10}"#,
                "pad_token_id",
            ),
            (
                r#"{"model_type":"roberta","max_position_embeddings":2,"pad_token_id":1}"#,
                "max_position_embeddings",
            ),
            (
                r#"{"model_type":"bert","type_vocab_size":0}"#,
                "type_vocab_size",
            ),
            (
                r#"{"model_type":"bert","num_labels":1000000000}"#,
                "num_labels",
            ),
        ] {
            let err = ModelConfig::from_json_str(json, Path::new("c.json")).unwrap_err();
            assert!(
                matches!(&err, EncoderError::InvalidConfig { field, .. } if field == key),
                "{json}: {err}"
            );
            assert!(err.to_string().contains("c.json"), "{err}");
        }
    }

    #[test]
    fn max_sequence_length_subtracts_the_roberta_offset_only() {
        let bert = ModelConfig::from_json_str(
            r#"{"model_type":"bert","max_position_embeddings":512}"#,
            Path::new("c.json"),
        )
        .unwrap();
        assert_eq!(bert.max_sequence_length(), 512);
        let roberta = ModelConfig::from_json_str(
            r#"{"model_type":"roberta","max_position_embeddings":514,"pad_token_id":1}"#,
            Path::new("c.json"),
        )
        .unwrap();
        assert_eq!(roberta.max_sequence_length(), 512);
        assert!(
            roberta.max_sequence_length_reason().contains("514"),
            "{}",
            roberta.max_sequence_length_reason()
        );
    }
}
