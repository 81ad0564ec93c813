//! RoBERTa (`RobertaForSequenceClassification`; DistilRoBERTa is the same with fewer layers): BERT's
//! encoder with position ids counted from `padding_idx + 1`, and a head of dense + tanh + out_proj on
//! the first token `<s>`.

use burn::module::Module;
use burn::tensor::{Int, Tensor};
use kdlora_kernels::Dropout;
use kdlora_lora::LoraLinear;
use kdlora_lora::LoraOps;

use crate::bert::BertEncoder;
use crate::blocks::first_token;
use crate::config::ModelConfig;
use crate::error::EncoderError;
use crate::weights::{LoadReport, ModuleLoader, TensorWriter};

/// Base-model prefix of RoBERTa tensor names.
pub const ROBERTA_PREFIX: &str = "roberta";

/// `RobertaForSequenceClassification`.
#[derive(Module, Debug)]
pub struct RobertaForSequenceClassification<B: LoraOps> {
    /// `roberta.embeddings` and `roberta.encoder` (no pooler: the classification model has none).
    pub roberta: BertEncoder<B>,
    /// `classifier.dense`.
    pub dense: LoraLinear<B>,
    /// `classifier.out_proj`.
    pub out_proj: LoraLinear<B>,
    /// Dropout before `dense` and before `out_proj`.
    pub dropout: Dropout,
    /// The checkpoint's configuration.
    pub config: ModelConfig,
}

impl<B: LoraOps> RobertaForSequenceClassification<B> {
    pub(crate) fn load(loader: &mut ModuleLoader<'_, B>, config: ModelConfig) -> Self {
        let h = config.hidden_size;
        let roberta = BertEncoder::load(loader, &config, ROBERTA_PREFIX, Some(config.pad_token_id));
        let dense = loader.head_linear("classifier.dense", h, h);
        let out_proj = loader.head_linear("classifier.out_proj", h, config.num_labels);
        Self {
            roberta,
            dense,
            out_proj,
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
            .roberta
            .forward(input_ids, attention_mask, token_type_ids);
        let x = self.dropout.forward(first_token(hidden));
        let x = self.dense.forward(x).tanh();
        self.out_proj.forward(self.dropout.forward(x))
    }

    pub(crate) fn visit_linears(&self, f: &mut dyn FnMut(&str, &LoraLinear<B>)) {
        self.roberta.visit_linears(ROBERTA_PREFIX, f);
        f("classifier.dense", &self.dense);
        f("classifier.out_proj", &self.out_proj);
    }

    pub(crate) fn visit_linears_mut(&mut self, f: &mut dyn FnMut(&str, &mut LoraLinear<B>)) {
        self.roberta.visit_linears_mut(ROBERTA_PREFIX, f);
        f("classifier.dense", &mut self.dense);
        f("classifier.out_proj", &mut self.out_proj);
    }

    pub(crate) fn write(&self, out: &mut TensorWriter) {
        self.roberta.write(ROBERTA_PREFIX, out);
        out.linear("classifier.dense", &self.dense);
        out.linear("classifier.out_proj", &self.out_proj);
    }
}

/// Loads a checkpoint as RoBERTa (used by [`crate::SequenceClassifier::load`]).
pub(crate) fn load<B: LoraOps>(
    mut loader: ModuleLoader<'_, B>,
    config: ModelConfig,
) -> Result<(RobertaForSequenceClassification<B>, LoadReport), EncoderError> {
    let model = RobertaForSequenceClassification::load(&mut loader, config);
    loader.ignore_buffers(|key| key.ends_with("embeddings.position_ids"));
    Ok((model, loader.finish()?))
}
