//! Data plumbing between `kdlora-glue` and the loops: load a split (optionally its first rows),
//! tokenize it, and gather batches by position.

use std::path::Path;

use burn::tensor::backend::Backend;
use kdlora_glue::{
    EncodedExample, GlueBatch, GlueBatcher, GlueDataset, GlueExample, GlueTask, GlueTokenizer,
    Label, Split,
};

use crate::error::{Result, TrainError};

/// A tokenized split held in memory. Positions (`0..len`) address examples in the loops and in
/// the teacher-logit store; `EncodedExample::index` keeps the row index of the file.
#[derive(Clone, Debug)]
pub struct SplitData {
    /// The task.
    pub task: GlueTask,
    /// The split.
    pub split: Split,
    /// The raw examples (texts and labels).
    pub examples: Vec<GlueExample>,
    /// The tokenized examples, same order.
    pub encoded: Vec<EncodedExample>,
}

impl SplitData {
    /// Loads `split` of `task` from `dir`, keeps the first `limit` rows when given, and tokenizes.
    pub fn load(
        dir: &Path,
        task: GlueTask,
        split: Split,
        limit: Option<usize>,
        tokenizer: &GlueTokenizer,
    ) -> Result<Self> {
        let dataset = GlueDataset::load(dir, task, split)?;
        // The file, not the folder: the folder may hold the task's files in two layouts.
        let path = dataset.path().to_path_buf();
        let mut examples = dataset.into_examples();
        if let Some(n) = limit {
            examples.truncate(n);
        }
        if examples.is_empty() {
            return Err(TrainError::BadFile {
                path,
                message: format!("no {} examples for {task} (only a header?)", split.name()),
            });
        }
        let encoded = tokenizer.encode_examples(&examples)?;
        Ok(Self {
            task,
            split,
            examples,
            encoded,
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.encoded.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.encoded.is_empty()
    }

    /// Gold labels in order (error if a row has none).
    pub fn labels(&self) -> Result<Vec<Label>> {
        self.examples
            .iter()
            .map(|e| {
                e.label.ok_or_else(|| TrainError::BadFile {
                    path: Default::default(),
                    message: format!("{:?} row {} has no label", self.split, e.index),
                })
            })
            .collect()
    }

    /// The padded batch of the examples at `positions`.
    pub fn batch<B: Backend>(
        &self,
        batcher: &GlueBatcher,
        positions: &[usize],
        device: &B::Device,
    ) -> Result<GlueBatch<B>> {
        let items: Vec<EncodedExample> =
            positions.iter().map(|&p| self.encoded[p].clone()).collect();
        Ok(batcher.try_batch::<B>(&items, device)?)
    }

    /// A content hash of the rows (texts and labels in order), for the teacher-logit store.
    pub fn rows_sha256(&self) -> String {
        let mut bytes = Vec::new();
        for e in &self.examples {
            bytes.extend_from_slice(serde_json::to_string(e).unwrap_or_default().as_bytes());
            bytes.push(b'\n');
        }
        kdlora_distill::sha256_bytes(&bytes)
    }
}
