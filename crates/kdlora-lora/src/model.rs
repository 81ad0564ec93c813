//! The contract between a model and the LoRA machinery: every projection reachable by its
//! Hugging Face module path.

use kdlora_kernels::LoraOps;

use crate::LoraLinear;

/// A model whose linear projections are [`LoraLinear`]s addressable by Hugging Face module path.
///
/// Paths are those of the full `*ForSequenceClassification` model in transformers, e.g.
/// `bert.encoder.layer.0.attention.self.query`, `distilbert.transformer.layer.0.attention.q_lin`,
/// `classifier`, `classifier.out_proj`. PEFT adapter keys are built from them, so they must match
/// transformers exactly.
pub trait AdaptableModel<B: LoraOps> {
    /// Hugging Face `model_type` of the architecture (`bert`, `distilbert`, `roberta`, `deberta-v2`).
    fn model_type(&self) -> &str;

    /// Visits every linear projection with its module path, in a stable order.
    fn visit_linears(&self, f: &mut dyn FnMut(&str, &LoraLinear<B>));

    /// Visits every linear projection mutably with its module path, in the same order.
    fn visit_linears_mut(&mut self, f: &mut dyn FnMut(&str, &mut LoraLinear<B>));

    /// Module paths of the task head (PEFT's default `modules_to_save` for sequence classification),
    /// e.g. `["classifier"]` for BERT or `["pre_classifier", "classifier"]` for DistilBERT.
    fn head_module_paths(&self) -> Vec<String>;
}
