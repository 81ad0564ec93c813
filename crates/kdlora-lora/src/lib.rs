//! LoRA adapters for Burn models: [`LoraLinear`] (a frozen projection plus a low-rank update),
//! targeting by Hugging Face module path, injection, merging, exact parameter counts, and PEFT
//! adapter folders (`adapter_config.json` + `adapter_model.safetensors`).
//!
//! A model opts in by implementing [`AdaptableModel`]: it names its [`LoraLinear`]s by the module
//! paths transformers uses, so configurations and adapter files carry over between PEFT and kdlora.
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::module::Module;
//! use burn::tensor::Tensor;
//! use kdlora_lora::{AdaptableModel, LoraConfig, LoraLinear, LoraLinearConfig, LoraOps, TargetModules};
//!
//! // A two-projection toy model with Hugging Face-style paths. Models are generic over `LoraOps`
//! // (a Burn backend with the adapter ops; every Burn backend kdlora runs on has them).
//! #[derive(Module, Debug)]
//! struct Toy<B: LoraOps> {
//!     query: LoraLinear<B>,
//!     classifier: LoraLinear<B>,
//! }
//!
//! impl<B: LoraOps> AdaptableModel<B> for Toy<B> {
//!     fn model_type(&self) -> &str { "toy" }
//!     fn visit_linears(&self, f: &mut dyn FnMut(&str, &LoraLinear<B>)) {
//!         f("encoder.query", &self.query);
//!         f("classifier", &self.classifier);
//!     }
//!     fn visit_linears_mut(&mut self, f: &mut dyn FnMut(&str, &mut LoraLinear<B>)) {
//!         f("encoder.query", &mut self.query);
//!         f("classifier", &mut self.classifier);
//!     }
//!     fn head_module_paths(&self) -> Vec<String> { vec!["classifier".into()] }
//! }
//!
//! type B = NdArray<f32>;
//! let device = Default::default();
//! let model = Toy::<B> {
//!     query: LoraLinearConfig::new(16, 16).init(&device),
//!     classifier: LoraLinearConfig::new(16, 2).init(&device),
//! };
//! let cfg = LoraConfig {
//!     r: 4,
//!     target_modules: Some(TargetModules::names(&["query"])),
//!     ..LoraConfig::default()
//! };
//! let mut model = kdlora_lora::inject(model, &cfg, &device).unwrap();
//! let counts = kdlora_lora::count_params(&model, &cfg);
//! assert_eq!(counts.adapter, 4 * (16 + 16));
//! assert_eq!(counts.head, 16 * 2 + 2);
//!
//! // Merging folds `scaling * B A` into the base weight; outputs do not change.
//! let x = Tensor::<B, 2>::ones([3, 16], &device);
//! let before = model.query.forward(x.clone());
//! assert_eq!(kdlora_lora::merge(&mut model), 1);
//! let after = model.query.forward(x);
//! before.into_data().assert_approx_eq::<f32>(&after.into_data(), Default::default());
//! ```
#![warn(missing_docs)]

mod config;
mod count;
mod error;
mod init;
mod inject;
pub mod io;
mod linear;
mod model;
pub mod peft;

pub use config::{LoraConfig, LoraInit, TargetMatcher, TargetModules, module_covers, name_matches};
pub use count::{ParamCounts, count_params, count_trainable, lora_param_count};
pub use error::LoraError;
pub use inject::{LoraPlan, inject, linear_paths, merge, merge_and_unload, plan, unmerge};
/// The backend extension every model generic is bound by: the adapter forward/backward (fused CubeCL
/// kernels on wgpu/CUDA, plain tensor ops on NdArray). Re-exported so model crates need not name
/// `kdlora-kernels`.
pub use kdlora_kernels::{AutodiffLoraOps, LoraOps};
pub use linear::{LoraAdapter, LoraLinear, LoraLinearConfig};
pub use model::AdaptableModel;
pub use peft::{PeftAdapterConfig, load_adapter, save_adapter};
