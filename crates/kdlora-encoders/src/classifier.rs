//! [`SequenceClassifier`]: one type over every supported architecture, loaded from and saved to
//! Hugging Face checkpoint folders.

use std::path::Path;

use burn::module::Module;
use burn::tensor::{Int, Tensor};
use kdlora_lora::LoraOps;
use kdlora_lora::{AdaptableModel, LoraLinear};

use crate::bert::{self, BERT_PREFIX, BertForSequenceClassification};
use crate::config::{ModelConfig, ProblemType};
use crate::deberta_v2::{
    self, DEBERTA_PREFIX, DebertaV2ForSequenceClassification, DebertaV2Settings,
};
use crate::distilbert::{self, DISTILBERT_PREFIX, DistilBertForSequenceClassification};
use crate::error::EncoderError;
use crate::roberta::{self, ROBERTA_PREFIX, RobertaForSequenceClassification};
use crate::sizes::check_sizes;
use crate::weights::{LoadReport, ModuleLoader, TensorWriter, WEIGHTS_FILE, WeightMap};

/// `model_type`s that [`SequenceClassifier::load`] accepts.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["bert", "distilbert", "roberta", "deberta-v2"];

/// Name of the configuration file in a checkpoint folder.
pub const CONFIG_FILE: &str = "config.json";

/// How to turn a checkpoint into a classifier.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadOptions {
    /// Head size; `None` keeps the checkpoint's (`id2label`, default 2). `Some(1)` means regression.
    pub num_labels: Option<usize>,
    /// Overrides the problem type (otherwise regression when `num_labels == 1`).
    pub problem_type: Option<ProblemType>,
    /// Seed for freshly initialised head weights.
    pub seed: u64,
    /// Initialise the head fresh even if the checkpoint has one (a new task on a fine-tuned model).
    pub fresh_head: bool,
    /// The caller replaces the head after loading (a PEFT adapter's `modules_to_save`): modules
    /// the checkpoint lacks are still initialised and reported, but logged at debug level only.
    pub head_supplied: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            num_labels: None,
            problem_type: None,
            seed: 42,
            fresh_head: false,
            head_supplied: false,
        }
    }
}

impl LoadOptions {
    /// Options with the head size set.
    pub fn with_num_labels(mut self, num_labels: usize) -> Self {
        self.num_labels = Some(num_labels);
        self
    }

    /// Options with the head-initialisation seed set.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Options that always initialise the head fresh.
    pub fn with_fresh_head(mut self, fresh_head: bool) -> Self {
        self.fresh_head = fresh_head;
        self
    }

    /// Options for a base whose head an adapter supplies ([`LoadOptions::head_supplied`]).
    pub fn with_head_supplied(mut self, head_supplied: bool) -> Self {
        self.head_supplied = head_supplied;
        self
    }
}

/// A transformer encoder with its sequence-classification (or regression) head, as in transformers'
/// `AutoModelForSequenceClassification`.
///
/// Dropout is active only on an autodiff backend (training); on a plain backend, and on the
/// `valid()` model of an autodiff one, the forward pass is deterministic.
// Burn's Module derive has no Box<T> impl, so the variants stay inline; a model is built once and
// rarely moved, so its size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum SequenceClassifier<B: LoraOps> {
    /// `BertForSequenceClassification`.
    Bert(BertForSequenceClassification<B>),
    /// `DistilBertForSequenceClassification`.
    DistilBert(DistilBertForSequenceClassification<B>),
    /// `RobertaForSequenceClassification`.
    Roberta(RobertaForSequenceClassification<B>),
    /// `DebertaV2ForSequenceClassification` (DeBERTa-v2 and DeBERTa-v3).
    DebertaV2(DebertaV2ForSequenceClassification<B>),
}

impl<B: LoraOps> SequenceClassifier<B> {
    /// Loads `config.json` and `model.safetensors` (f32, f16 or bf16; with or without the base-model
    /// prefix) from a Hugging Face checkpoint folder.
    ///
    /// A head (and BERT pooler) the checkpoint lacks is initialised fresh (normal with std
    /// `initializer_range`, zero bias) and listed in [`LoadReport::initialised`]. Missing or
    /// mis-shaped encoder tensors are an error naming each; unused tensors are logged.
    pub fn load(
        dir: &Path,
        options: &LoadOptions,
        device: &B::Device,
    ) -> Result<(Self, LoadReport), EncoderError> {
        if !dir.is_dir() {
            return Err(EncoderError::MissingFile {
                path: dir.to_path_buf(),
                hint: "a checkpoint folder with config.json and model.safetensors".into(),
            });
        }
        let config = ModelConfig::from_file(&dir.join(CONFIG_FILE))?;
        // Fail on the architecture before reading possibly large weights.
        base_prefix(&config.model_type)?;
        if config.model_type == "deberta-v2" {
            DebertaV2Settings::from_config(&config, &dir.join(CONFIG_FILE))?;
        }
        let mut weights = WeightMap::from_dir(dir)?;
        // Here with the folder's own config.json in the errors; `build` checks again for the
        // other entry points.
        check_sizes(
            &config,
            Some(&weights),
            base_prefix(&config.model_type)?,
            &dir.join(CONFIG_FILE),
        )?;
        Self::from_weights(config, &mut weights, options, device)
    }

    /// Builds a classifier from its configuration alone, every tensor freshly initialised
    /// (weights normal with std `initializer_range`, biases zero, LayerNorm one/zero), as
    /// transformers' `from_config` does. Used to count parameters without downloading weights.
    pub fn from_config(
        config: ModelConfig,
        options: &LoadOptions,
        device: &B::Device,
    ) -> Result<Self, EncoderError> {
        let mut weights =
            WeightMap::from_tensors(std::path::PathBuf::from("<config>"), Default::default());
        Self::build(config, &mut weights, options, device, true).map(|(model, _)| model)
    }

    /// Builds a classifier from an already parsed configuration and tensors.
    pub fn from_weights(
        config: ModelConfig,
        weights: &mut WeightMap,
        options: &LoadOptions,
        device: &B::Device,
    ) -> Result<(Self, LoadReport), EncoderError> {
        Self::build(config, weights, options, device, false)
    }

    fn build(
        mut config: ModelConfig,
        weights: &mut WeightMap,
        options: &LoadOptions,
        device: &B::Device,
        synthesize: bool,
    ) -> Result<(Self, LoadReport), EncoderError> {
        if let Some(num_labels) = options.num_labels {
            if num_labels == 0 {
                return Err(EncoderError::InvalidInput(
                    "num_labels must be at least 1".into(),
                ));
            }
            config.set_num_labels(num_labels);
        }
        if let Some(problem_type) = options.problem_type {
            config.problem_type = problem_type;
        }
        let prefix = base_prefix(&config.model_type)?;
        // Before anything is allocated at the configured sizes.
        check_sizes(
            &config,
            (!synthesize).then_some(&*weights),
            prefix,
            Path::new(CONFIG_FILE),
        )?;
        let loader = ModuleLoader::new(
            weights,
            prefix,
            device,
            config.initializer_range,
            options.seed,
            options.fresh_head,
        )
        .head_supplied(options.head_supplied);
        let loader = if synthesize {
            loader.synthesizing()
        } else {
            loader
        };
        Ok(match config.model_type.as_str() {
            "bert" => {
                let (model, report) = bert::load(loader, config)?;
                (Self::Bert(model), report)
            }
            "distilbert" => {
                let (model, report) = distilbert::load(loader, config)?;
                (Self::DistilBert(model), report)
            }
            "roberta" => {
                let (model, report) = roberta::load(loader, config)?;
                (Self::Roberta(model), report)
            }
            "deberta-v2" => {
                let (model, report) = deberta_v2::load(loader, config)?;
                (Self::DebertaV2(model), report)
            }
            other => return Err(unsupported(other)),
        })
    }

    /// Writes `config.json` and `model.safetensors` (f32, Hugging Face names with the base-model
    /// prefix) into `dir`, creating it; transformers' `AutoModelForSequenceClassification` loads
    /// the result. Each file is written atomically. LoRA adapters are not saved (merge them first).
    pub fn save_pretrained(&self, dir: &Path) -> Result<(), EncoderError> {
        std::fs::create_dir_all(dir).map_err(|source| EncoderError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut writer = TensorWriter::new();
        match self {
            Self::Bert(model) => model.write(&mut writer),
            Self::DistilBert(model) => model.write(&mut writer),
            Self::Roberta(model) => model.write(&mut writer),
            Self::DebertaV2(model) => model.write(&mut writer),
        }
        writer.save(&dir.join(WEIGHTS_FILE))?;
        self.config().save(&dir.join(CONFIG_FILE))
    }

    /// Logits `[batch, num_labels]` for `[batch, seq]` token ids, attention mask (1 = token,
    /// 0 = padding) and token types (ignored by DistilBERT).
    ///
    /// Ids must be valid for the model: check untrusted input with
    /// [`SequenceClassifier::check_sequence`] first.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        token_type_ids: Tensor<B, 2, Int>,
    ) -> Tensor<B, 2> {
        match self {
            Self::Bert(model) => model.forward(input_ids, attention_mask, token_type_ids),
            Self::DistilBert(model) => model.forward(input_ids, attention_mask, token_type_ids),
            Self::Roberta(model) => model.forward(input_ids, attention_mask, token_type_ids),
            Self::DebertaV2(model) => model.forward(input_ids, attention_mask, token_type_ids),
        }
    }

    /// The encoder's last hidden state `[batch, seq, hidden]` (before pooler and head).
    pub fn last_hidden_state(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        token_type_ids: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        match self {
            Self::Bert(model) => model
                .bert
                .forward(input_ids, attention_mask, token_type_ids),
            Self::DistilBert(model) => {
                model
                    .distilbert
                    .forward(input_ids, attention_mask, token_type_ids)
            }
            Self::Roberta(model) => {
                model
                    .roberta
                    .forward(input_ids, attention_mask, token_type_ids)
            }
            Self::DebertaV2(model) => model.encode(input_ids, attention_mask, token_type_ids),
        }
    }

    /// The model's configuration (with the head size actually built).
    pub fn config(&self) -> &ModelConfig {
        match self {
            Self::Bert(model) => &model.config,
            Self::DistilBert(model) => &model.config,
            Self::Roberta(model) => &model.config,
            Self::DebertaV2(model) => &model.config,
        }
    }

    /// Output size of the head (1 for regression).
    pub fn num_labels(&self) -> usize {
        self.config().num_labels
    }

    /// Regression or classification.
    pub fn problem_type(&self) -> ProblemType {
        self.config().problem_type
    }

    /// The longest sequence the position embeddings allow (RoBERTa loses `padding_idx + 1`).
    pub fn max_sequence_length(&self) -> usize {
        self.config().max_sequence_length()
    }

    /// Checks one sequence before it goes into [`SequenceClassifier::forward`]: ids within the
    /// vocabulary, token types within `type_vocab_size`, length within
    /// [`SequenceClassifier::max_sequence_length`], and all three lists of equal length.
    pub fn check_sequence(
        &self,
        input_ids: &[i64],
        attention_mask: &[i64],
        token_type_ids: &[i64],
    ) -> Result<(), EncoderError> {
        let config = self.config();
        let invalid = |message: String| Err(EncoderError::InvalidInput(message));
        if input_ids.is_empty() {
            return invalid("empty input_ids".into());
        }
        if attention_mask.len() != input_ids.len() || token_type_ids.len() != input_ids.len() {
            return invalid(format!(
                "input_ids, attention_mask and token_type_ids differ in length ({}, {}, {})",
                input_ids.len(),
                attention_mask.len(),
                token_type_ids.len()
            ));
        }
        if input_ids.len() > self.max_sequence_length() {
            return invalid(format!(
                "sequence of {} tokens is longer than the model's maximum of {} ({})",
                input_ids.len(),
                self.max_sequence_length(),
                config.max_sequence_length_reason()
            ));
        }
        if let Some(id) = input_ids
            .iter()
            .find(|id| **id < 0 || **id as usize >= config.vocab_size)
        {
            return invalid(format!(
                "token id {id} is outside the vocabulary (size {})",
                config.vocab_size
            ));
        }
        if let Some(m) = attention_mask.iter().find(|m| **m != 0 && **m != 1) {
            return invalid(format!("attention_mask value {m} is not 0 or 1"));
        }
        let types = config.type_vocab_size.max(1);
        // DeBERTa ignores token types when it has no type embeddings, and its tokenizers still
        // mark the second text of a pair with 1.
        let ignores_types = matches!(self, Self::DebertaV2(_)) && config.type_vocab_size == 0;
        if let Some(t) = token_type_ids
            .iter()
            .filter(|_| !ignores_types)
            .find(|t| **t < 0 || **t as usize >= types)
        {
            return invalid(format!(
                "token type {t} is outside 0..{types} (type_vocab_size)"
            ));
        }
        Ok(())
    }
}

impl<B: LoraOps> AdaptableModel<B> for SequenceClassifier<B> {
    fn model_type(&self) -> &str {
        &self.config().model_type
    }

    fn visit_linears(&self, f: &mut dyn FnMut(&str, &LoraLinear<B>)) {
        match self {
            Self::Bert(model) => model.visit_linears(f),
            Self::DistilBert(model) => model.visit_linears(f),
            Self::Roberta(model) => model.visit_linears(f),
            Self::DebertaV2(model) => model.visit_linears(f),
        }
    }

    fn visit_linears_mut(&mut self, f: &mut dyn FnMut(&str, &mut LoraLinear<B>)) {
        match self {
            Self::Bert(model) => model.visit_linears_mut(f),
            Self::DistilBert(model) => model.visit_linears_mut(f),
            Self::Roberta(model) => model.visit_linears_mut(f),
            Self::DebertaV2(model) => model.visit_linears_mut(f),
        }
    }

    fn head_module_paths(&self) -> Vec<String> {
        let paths: &[&str] = match self {
            Self::Bert(_) | Self::Roberta(_) => &["classifier"],
            Self::DistilBert(_) => &["pre_classifier", "classifier"],
            Self::DebertaV2(_) => &["pooler", "classifier"],
        };
        paths.iter().map(|p| p.to_string()).collect()
    }
}

/// The base-model prefix of an architecture's tensor names, or the unsupported-type error.
fn base_prefix(model_type: &str) -> Result<&'static str, EncoderError> {
    match model_type {
        "bert" => Ok(BERT_PREFIX),
        "distilbert" => Ok(DISTILBERT_PREFIX),
        "roberta" => Ok(ROBERTA_PREFIX),
        "deberta-v2" => Ok(DEBERTA_PREFIX),
        other => Err(unsupported(other)),
    }
}

fn unsupported(name: &str) -> EncoderError {
    EncoderError::UnsupportedModelType {
        name: name.to_string(),
        supported: SUPPORTED_MODEL_TYPES
            .iter()
            .map(|s| s.to_string())
            .collect(),
    }
}
