//! Knowledge distillation for KD-LoRA: the losses and the teacher-logit store.
//!
//! This crate knows nothing of models or GLUE: it works on logits tensors, hidden-state
//! tensors and example indices.
//!
//! - [`soft_loss`]: `T^2 * KL(softmax(z_T/T) || softmax(z_S/T))`, batch mean, via log-softmax.
//! - [`hard_loss`]: cross-entropy against class indices.
//! - [`kd_loss`]: `alpha * hard + (1 - alpha) * soft` ([`KdConfig`]: `T = 2`, `alpha = 0.5`
//!   by default, as the KD-LoRA reference).
//! - [`regression_kd_loss`]: `alpha * MSE(z_S, y) + (1 - alpha) * MSE(z_S, z_T)` for
//!   single-output tasks such as STS-B (the paper does not define this case; KL over one
//!   logit is identically zero).
//! - [`HiddenStateDistillation`]: optional, off by default, masked MSE between mapped hidden
//!   states with a learned projection when hidden sizes differ.
//! - [`TeacherLogits`]: teacher logits for every training example in a safetensors file with
//!   metadata; reused when everything matches, rebuilt (with a log line) otherwise, and looked
//!   up by example index.
//!
//! # Example
//!
//! ```
//! use burn::backend::{Autodiff, NdArray};
//! use burn::tensor::{Int, Tensor};
//! use kdlora_distill::{KdConfig, TeacherLogits, TeacherLogitsMeta, kd_loss};
//!
//! type B = Autodiff<NdArray<f32>>;
//! let device = Default::default();
//!
//! // Teacher logits for a 4-example training set, computed once and stored.
//! let dir = tempfile::tempdir()?;
//! let meta = TeacherLogitsMeta {
//!     teacher: "bert-base-uncased (fine-tuned on sst2)".into(),
//!     task: "sst2".into(),
//!     split: "train".into(),
//!     max_len: 128,
//!     num_examples: 4,
//!     num_outputs: 2,
//!     ..Default::default()
//! };
//! let (store, _outcome) = TeacherLogits::load_or_build(
//!     dir.path().join("teacher_logits.safetensors"),
//!     &meta,
//!     || Ok::<_, std::io::Error>(vec![2.0, -1.0, 0.5, 0.5, -3.0, 1.0, 0.0, 4.0]),
//! )?;
//!
//! // A shuffled batch of examples 2 and 0.
//! let teacher = store.lookup::<B>(&[2, 0], &device)?;
//! let student = Tensor::<B, 2>::from_floats([[0.3, -0.2], [1.0, 0.1]], &device).require_grad();
//! let labels = Tensor::<B, 1, Int>::from_ints([1, 0], &device);
//!
//! let loss = kd_loss(student.clone(), teacher, labels, &KdConfig::default());
//! let grads = loss.total.backward();
//! assert!(student.grad(&grads).is_some());
//! assert!(loss.total.into_scalar().is_finite());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod config;
mod error;
mod hash;
mod hidden;
mod loss;
mod store;

pub use config::KdConfig;
pub use error::DistillError;
pub use hash::{sha256_bytes, sha256_file};
pub use hidden::{HiddenStateDistillation, HiddenStateDistillationConfig, LayerMap};
pub use loss::{
    KdLoss, hard_loss, kd_loss, regression_kd_loss, soft_loss, try_kd_loss, try_regression_kd_loss,
};
pub use store::{
    LOGITS_TENSOR_NAME, RebuildReason, StoreOutcome, TEACHER_LOGITS_FORMAT_VERSION, TeacherLogits,
    TeacherLogitsMeta,
};
