//! Tokenization of GLUE examples with a Hugging Face `tokenizer.json`.

use std::path::Path;

use serde::Serialize;
use tokenizers::{
    EncodeInput, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::data::{GlueDataset, GlueExample, Label};
use crate::error::GlueError;

/// One tokenized example, unpadded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EncodedExample {
    /// The example's row index in its file.
    pub index: usize,
    /// Token ids, special tokens included, at most `max_len` long.
    pub input_ids: Vec<u32>,
    /// Segment ids as the tokenizer's post-processor defines them (0 for A, 1 for B in BERT).
    pub token_type_ids: Vec<u32>,
    /// The gold label, if any.
    pub label: Option<Label>,
}

impl EncodedExample {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
}

/// A `tokenizers::Tokenizer` configured for GLUE: longest-first truncation to `max_len`, no
/// padding (batches are padded dynamically by [`crate::GlueBatcher`]).
#[derive(Clone)]
pub struct GlueTokenizer {
    tokenizer: Tokenizer,
    max_len: usize,
    pad_id: u32,
    pad_type_id: u32,
}

impl std::fmt::Debug for GlueTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlueTokenizer")
            .field("max_len", &self.max_len)
            .field("pad_id", &self.pad_id)
            .field("vocab_size", &self.tokenizer.get_vocab_size(true))
            .finish()
    }
}

/// The largest token id `tokenizer` can produce (its vocabulary and added tokens), `None` for an
/// empty vocabulary. A model whose embedding table is smaller than this would index past it.
pub fn max_token_id(tokenizer: &Tokenizer) -> Option<u32> {
    tokenizer.get_vocab(true).into_values().max()
}

/// Default maximum sequence length (the paper pads and truncates to 512).
pub const DEFAULT_MAX_LEN: usize = 512;

fn tok_err(context: impl Into<String>, e: impl std::fmt::Display) -> GlueError {
    GlueError::Tokenizer {
        context: context.into(),
        message: e.to_string(),
    }
}

impl GlueTokenizer {
    /// Loads `tokenizer.json` with `max_len` = [`DEFAULT_MAX_LEN`].
    pub fn from_file(path: &Path) -> Result<Self, GlueError> {
        let tokenizer =
            Tokenizer::from_file(path).map_err(|e| tok_err(path.display().to_string(), e))?;
        Self::from_tokenizer(tokenizer, DEFAULT_MAX_LEN)
            .map_err(|e| tok_err(path.display().to_string(), e))
    }

    /// Wraps a tokenizer. The pad id is taken from the tokenizer's padding settings, else from a
    /// `[PAD]` or `<pad>` token in its vocabulary; without either this fails.
    pub fn from_tokenizer(mut tokenizer: Tokenizer, max_len: usize) -> Result<Self, GlueError> {
        let (pad_id, pad_type_id) = match tokenizer.get_padding() {
            Some(p) => (p.pad_id, p.pad_type_id),
            None => {
                let id = ["[PAD]", "<pad>"]
                    .iter()
                    .find_map(|t| tokenizer.token_to_id(t))
                    .ok_or_else(|| {
                        tok_err(
                            "padding",
                            "tokenizer defines no padding and has no [PAD] or <pad> token",
                        )
                    })?;
                (id, 0)
            }
        };
        tokenizer.with_padding(None);
        let mut this = Self {
            tokenizer,
            max_len,
            pad_id,
            pad_type_id,
        };
        this.set_max_len(max_len)?;
        Ok(this)
    }

    /// Sets the maximum length (special tokens included); pairs are truncated longest-first.
    pub fn set_max_len(&mut self, max_len: usize) -> Result<(), GlueError> {
        if max_len == 0 {
            return Err(tok_err("max_len", "must be at least 1"));
        }
        self.tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| tok_err("truncation", e))?;
        self.max_len = max_len;
        Ok(())
    }

    /// Builder form of [`GlueTokenizer::set_max_len`].
    pub fn with_max_len(mut self, max_len: usize) -> Result<Self, GlueError> {
        self.set_max_len(max_len)?;
        Ok(self)
    }

    /// The maximum length.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The padding token id.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The token type id used for padding.
    pub fn pad_type_id(&self) -> u32 {
        self.pad_type_id
    }

    /// The largest token id the tokenizer can produce (see [`max_token_id`]).
    pub fn max_token_id(&self) -> Option<u32> {
        max_token_id(&self.tokenizer)
    }

    /// The wrapped tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Encodes examples in parallel (the tokenizers crate's rayon pool), keeping their order.
    pub fn encode_examples(
        &self,
        examples: &[GlueExample],
    ) -> Result<Vec<EncodedExample>, GlueError> {
        let inputs: Vec<EncodeInput<'_>> = examples
            .iter()
            .map(|e| match &e.text_b {
                Some(b) => EncodeInput::Dual(e.text_a.as_str().into(), b.as_str().into()),
                None => EncodeInput::Single(e.text_a.as_str().into()),
            })
            .collect();
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| tok_err("encode", e))?;
        Ok(examples
            .iter()
            .zip(encodings)
            .map(|(e, enc)| EncodedExample {
                index: e.index,
                input_ids: enc.get_ids().to_vec(),
                token_type_ids: enc.get_type_ids().to_vec(),
                label: e.label,
            })
            .collect())
    }

    /// Encodes a whole dataset.
    pub fn encode_dataset(&self, dataset: &GlueDataset) -> Result<Vec<EncodedExample>, GlueError> {
        self.encode_examples(dataset.examples())
    }

    /// Token counts of examples without truncation (for length statistics).
    pub fn untruncated_lengths(&self, examples: &[GlueExample]) -> Result<Vec<usize>, GlueError> {
        let mut plain = self.tokenizer.clone();
        plain
            .with_truncation(None)
            .map_err(|e| tok_err("truncation", e))?;
        let inputs: Vec<EncodeInput<'_>> = examples
            .iter()
            .map(|e| match &e.text_b {
                Some(b) => EncodeInput::Dual(e.text_a.as_str().into(), b.as_str().into()),
                None => EncodeInput::Single(e.text_a.as_str().into()),
            })
            .collect();
        Ok(plain
            .encode_batch(inputs, true)
            .map_err(|e| tok_err("encode", e))?
            .iter()
            .map(|e| e.get_ids().len())
            .collect())
    }
}
