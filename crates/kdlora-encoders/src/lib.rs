//! BERT, DistilBERT, RoBERTa and DeBERTa-v2/v3 encoders with their sequence-classification heads,
//! for Burn, loaded from (and saved to) Hugging Face checkpoints with the same numbers transformers
//! computes.
//!
//! * [`ModelConfig`] reads `config.json` (BERT and DistilBERT field names, transformers' defaults)
//!   and keeps unknown fields so saving writes them back.
//! * [`WeightMap`] reads `model.safetensors` (f32, f16, bf16; with or without the base-model prefix;
//!   sharded or not) and refuses pickle checkpoints; [`ModuleLoader`] builds layers from it,
//!   checking every shape and naming every missing or mis-shaped tensor in one
//!   [`EncoderError::Tensors`].
//! * [`SequenceClassifier`] is the model: `forward` gives logits, `last_hidden_state` the encoder
//!   output, `save_pretrained` writes a checkpoint transformers loads. Every projection is a
//!   [`kdlora_lora::LoraLinear`] reachable by its Hugging Face module path through
//!   [`kdlora_lora::AdaptableModel`].
//!
//! A checkpoint without a head (a bare encoder) gets a fresh one: normal weights with std
//! `initializer_range`, zero bias, reported in [`LoadReport::initialised`] and logged.
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::tensor::{Int, Tensor, TensorData};
//! use kdlora_encoders::{LoadOptions, SequenceClassifier};
//!
//! type B = NdArray<f32>;
//! let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bert_cls3");
//! let device = Default::default();
//! let (model, report) = SequenceClassifier::<B>::load(&dir, &LoadOptions::default(), &device)?;
//! assert!(report.initialised.is_empty());
//!
//! let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![2i64, 10, 11, 3], [1, 4]), &device);
//! let logits = model.forward(ids.clone(), ids.ones_like(), ids.zeros_like());
//! assert_eq!(logits.dims(), [1, model.num_labels()]);
//! # Ok::<(), kdlora_encoders::EncoderError>(())
//! ```

pub mod bert;
mod blocks;
mod classifier;
mod config;
pub mod deberta_v2;
pub mod distilbert;
mod error;
pub mod roberta;
mod sizes;
mod weights;

pub use blocks::{attention_bias, first_token, multi_head_attention};
pub use classifier::{CONFIG_FILE, LoadOptions, SUPPORTED_MODEL_TYPES, SequenceClassifier};
pub use config::{Activation, ModelConfig, ProblemType};
pub use error::{EncoderError, TensorProblem};
pub use weights::{
    LoadReport, ModuleLoader, StoredTensor, TensorWriter, WEIGHTS_FILE, WEIGHTS_INDEX_FILE,
    WeightMap, write_atomic,
};
