//! Burn integration: a `Dataset` of encoded examples, a `Batcher` with dynamic padding, and
//! seeded batch orders (shuffled and length-grouped).

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::data::Label;
use crate::error::GlueError;
use crate::tokenize::{EncodedExample, GlueTokenizer};

/// Gold labels of a batch.
#[derive(Debug, Clone)]
pub enum GlueLabels<B: Backend> {
    /// Class ids, shape `[batch]`.
    Class(Tensor<B, 1, Int>),
    /// STS-B scores, shape `[batch]`.
    Score(Tensor<B, 1>),
}

/// A padded batch. All 2-D tensors have shape `[batch, longest sequence in the batch]`.
#[derive(Debug, Clone)]
pub struct GlueBatch<B: Backend> {
    /// Token ids, right-padded with the tokenizer's pad id.
    pub input_ids: Tensor<B, 2, Int>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Tensor<B, 2, Int>,
    /// Segment ids, padded with the tokenizer's pad type id.
    pub token_type_ids: Tensor<B, 2, Int>,
    /// Labels when every example in the batch has one of the same kind.
    pub labels: Option<GlueLabels<B>>,
    /// Row indices of the examples in their file, in batch order.
    pub indices: Vec<usize>,
}

impl<B: Backend> GlueBatch<B> {
    /// Number of examples.
    pub fn batch_size(&self) -> usize {
        self.indices.len()
    }

    /// Padded sequence length.
    pub fn seq_len(&self) -> usize {
        self.input_ids.dims()[1]
    }
}

/// Host-side padded batch (plain vectors), what [`GlueBatcher`] turns into tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct PaddedBatch {
    /// Number of rows.
    pub batch_size: usize,
    /// Padded length.
    pub seq_len: usize,
    /// Row-major `[batch_size, seq_len]` token ids.
    pub input_ids: Vec<i64>,
    /// Row-major attention mask (1 token, 0 pad).
    pub attention_mask: Vec<i64>,
    /// Row-major token type ids.
    pub token_type_ids: Vec<i64>,
    /// Labels, when all examples have one of the same kind.
    pub labels: Option<PaddedLabels>,
    /// Example indices.
    pub indices: Vec<usize>,
}

/// Labels of a [`PaddedBatch`].
#[derive(Debug, Clone, PartialEq)]
pub enum PaddedLabels {
    /// Class ids.
    Class(Vec<i64>),
    /// Scores.
    Score(Vec<f32>),
}

/// Pads encoded examples to the longest in the batch. Labels are `Some` only when every example
/// has a label and all labels are of one kind; a partly labelled batch is an error.
pub fn pad_examples(
    items: &[EncodedExample],
    pad_id: u32,
    pad_type_id: u32,
) -> Result<PaddedBatch, GlueError> {
    let batch_size = items.len();
    let seq_len = items.iter().map(EncodedExample::len).max().unwrap_or(0);
    let mut input_ids = vec![i64::from(pad_id); batch_size * seq_len];
    let mut attention_mask = vec![0i64; batch_size * seq_len];
    let mut token_type_ids = vec![i64::from(pad_type_id); batch_size * seq_len];
    for (row, item) in items.iter().enumerate() {
        if item.token_type_ids.len() != item.input_ids.len() {
            return Err(GlueError::Batch(format!(
                "example {}: {} token ids but {} token type ids",
                item.index,
                item.input_ids.len(),
                item.token_type_ids.len()
            )));
        }
        let base = row * seq_len;
        for (j, (&id, &ty)) in item.input_ids.iter().zip(&item.token_type_ids).enumerate() {
            input_ids[base + j] = i64::from(id);
            attention_mask[base + j] = 1;
            token_type_ids[base + j] = i64::from(ty);
        }
    }
    let labelled = items.iter().filter(|i| i.label.is_some()).count();
    let labels = if labelled == 0 || batch_size == 0 {
        None
    } else if labelled != batch_size {
        return Err(GlueError::Batch(format!(
            "batch mixes labelled and unlabelled examples ({labelled} of {batch_size} labelled)"
        )));
    } else if let Some(classes) = items
        .iter()
        .map(|i| i.label.and_then(Label::class).map(|c| c as i64))
        .collect::<Option<Vec<_>>>()
    {
        Some(PaddedLabels::Class(classes))
    } else if let Some(scores) = items
        .iter()
        .map(|i| i.label.and_then(Label::score))
        .collect::<Option<Vec<_>>>()
    {
        Some(PaddedLabels::Score(scores))
    } else {
        return Err(GlueError::Batch(
            "batch mixes class labels and scores".to_string(),
        ));
    };
    Ok(PaddedBatch {
        batch_size,
        seq_len,
        input_ids,
        attention_mask,
        token_type_ids,
        labels,
        indices: items.iter().map(|i| i.index).collect(),
    })
}

/// Turns encoded examples into a [`GlueBatch`], padding to the longest example of the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlueBatcher {
    pad_id: u32,
    pad_type_id: u32,
}

impl GlueBatcher {
    /// A batcher padding with `pad_id` (token type 0 for padding).
    pub fn new(pad_id: u32) -> Self {
        Self {
            pad_id,
            pad_type_id: 0,
        }
    }

    /// A batcher using the tokenizer's pad id and pad type id.
    pub fn from_tokenizer(tokenizer: &GlueTokenizer) -> Self {
        Self {
            pad_id: tokenizer.pad_id(),
            pad_type_id: tokenizer.pad_type_id(),
        }
    }

    /// The pad id.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Like [`Batcher::batch`], but reports inconsistent labels as an error instead of
    /// dropping them.
    pub fn try_batch<B: Backend>(
        &self,
        items: &[EncodedExample],
        device: &B::Device,
    ) -> Result<GlueBatch<B>, GlueError> {
        let padded = pad_examples(items, self.pad_id, self.pad_type_id)?;
        Ok(to_tensors(padded, device))
    }
}

fn to_tensors<B: Backend>(p: PaddedBatch, device: &B::Device) -> GlueBatch<B> {
    let shape = [p.batch_size, p.seq_len];
    let int2 = |v: Vec<i64>| Tensor::<B, 2, Int>::from_data(TensorData::new(v, shape), device);
    let labels = p.labels.map(|l| match l {
        PaddedLabels::Class(c) => {
            let n = c.len();
            GlueLabels::Class(Tensor::from_data(TensorData::new(c, [n]), device))
        }
        PaddedLabels::Score(s) => {
            let n = s.len();
            GlueLabels::Score(Tensor::from_data(TensorData::new(s, [n]), device))
        }
    });
    GlueBatch {
        input_ids: int2(p.input_ids),
        attention_mask: int2(p.attention_mask),
        token_type_ids: int2(p.token_type_ids),
        labels,
        indices: p.indices,
    }
}

impl<B: Backend> Batcher<B, EncodedExample, GlueBatch<B>> for GlueBatcher {
    /// Pads and converts a batch. The trait cannot fail, so a batch whose examples are only
    /// partly labelled (or mix classes and scores) gets `labels: None` and a warning; use
    /// [`GlueBatcher::try_batch`] to get an error instead.
    fn batch(&self, items: Vec<EncodedExample>, device: &B::Device) -> GlueBatch<B> {
        match pad_examples(&items, self.pad_id, self.pad_type_id) {
            Ok(padded) => to_tensors(padded, device),
            Err(err) => {
                tracing::warn!(%err, "batch labels dropped");
                let stripped: Vec<EncodedExample> = items
                    .into_iter()
                    .map(|mut e| {
                        e.label = None;
                        if e.token_type_ids.len() != e.input_ids.len() {
                            e.token_type_ids = vec![0; e.input_ids.len()];
                        }
                        e
                    })
                    .collect();
                match pad_examples(&stripped, self.pad_id, self.pad_type_id) {
                    Ok(padded) => to_tensors(padded, device),
                    // Unreachable in practice: unlabelled, length-consistent items always pad.
                    Err(_) => to_tensors(
                        PaddedBatch {
                            batch_size: 0,
                            seq_len: 0,
                            input_ids: vec![],
                            attention_mask: vec![],
                            token_type_ids: vec![],
                            labels: None,
                            indices: vec![],
                        },
                        device,
                    ),
                }
            }
        }
    }
}

impl<B: Backend> Batcher<B, Vec<EncodedExample>, GlueBatch<B>> for GlueBatcher {
    /// Batches pre-formed groups (items of a [`PrebatchedDataset`]) by concatenating them, so a
    /// Burn `DataLoader` with `batch_size(1)` follows a precomputed batch order such as
    /// [`length_grouped_batches`].
    fn batch(&self, items: Vec<Vec<EncodedExample>>, device: &B::Device) -> GlueBatch<B> {
        let flat: Vec<EncodedExample> = items.into_iter().flatten().collect();
        <Self as Batcher<B, EncodedExample, GlueBatch<B>>>::batch(self, flat, device)
    }
}

/// A Burn [`Dataset`] whose items are whole batches, in a fixed precomputed order (e.g. from
/// [`shuffled_batches`] or [`length_grouped_batches`]). Use it with a `DataLoader` of batch
/// size 1 and [`GlueBatcher`].
#[derive(Debug, Clone)]
pub struct PrebatchedDataset {
    items: std::sync::Arc<Vec<EncodedExample>>,
    batches: Vec<Vec<usize>>,
}

impl PrebatchedDataset {
    /// Groups `dataset`'s examples by `batches` (positions into the dataset). Errors when a
    /// position is out of range.
    pub fn new(dataset: &EncodedDataset, batches: Vec<Vec<usize>>) -> Result<Self, GlueError> {
        let n = dataset.items.len();
        if let Some(bad) = batches.iter().flatten().find(|&&i| i >= n) {
            return Err(GlueError::Batch(format!(
                "batch order names position {bad} but the dataset has {n} examples"
            )));
        }
        Ok(Self {
            items: std::sync::Arc::new(dataset.items.clone()),
            batches,
        })
    }

    /// The batch order.
    pub fn batches(&self) -> &[Vec<usize>] {
        &self.batches
    }
}

impl Dataset<Vec<EncodedExample>> for PrebatchedDataset {
    fn get(&self, index: usize) -> Option<Vec<EncodedExample>> {
        self.batches
            .get(index)?
            .iter()
            .map(|&i| self.items.get(i).cloned())
            .collect()
    }

    fn len(&self) -> usize {
        self.batches.len()
    }
}

/// A Burn [`Dataset`] over encoded examples held in memory.
#[derive(Debug, Clone, Default)]
pub struct EncodedDataset {
    items: Vec<EncodedExample>,
}

impl EncodedDataset {
    /// Wraps encoded examples.
    pub fn new(items: Vec<EncodedExample>) -> Self {
        Self { items }
    }

    /// The examples.
    pub fn items(&self) -> &[EncodedExample] {
        &self.items
    }

    /// Token counts of the examples, in order (for [`length_grouped_batches`]).
    pub fn lengths(&self) -> Vec<usize> {
        self.items.iter().map(EncodedExample::len).collect()
    }

    /// The examples at the given positions (e.g. one batch of a batch order); `None` if a
    /// position is out of range.
    pub fn gather(&self, positions: &[usize]) -> Option<Vec<EncodedExample>> {
        positions
            .iter()
            .map(|&i| self.items.get(i).cloned())
            .collect()
    }
}

impl Dataset<EncodedExample> for EncodedDataset {
    fn get(&self, index: usize) -> Option<EncodedExample> {
        self.items.get(index).cloned()
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

fn check_batch_size(batch_size: usize) -> Result<(), GlueError> {
    if batch_size == 0 {
        return Err(GlueError::Batch(
            "batch size must be at least 1".to_string(),
        ));
    }
    Ok(())
}

/// Positions `0..n` in order, in batches of `batch_size` (the last may be smaller).
pub fn sequential_batches(n: usize, batch_size: usize) -> Result<Vec<Vec<usize>>, GlueError> {
    check_batch_size(batch_size)?;
    Ok((0..n)
        .collect::<Vec<_>>()
        .chunks(batch_size)
        .map(<[usize]>::to_vec)
        .collect())
}

/// A seeded random permutation of `0..n` in batches of `batch_size`. The same seed gives the
/// same order (for a given `rand` version, which Cargo.lock pins).
pub fn shuffled_batches(
    n: usize,
    batch_size: usize,
    seed: u64,
) -> Result<Vec<Vec<usize>>, GlueError> {
    check_batch_size(batch_size)?;
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    Ok(order.chunks(batch_size).map(<[usize]>::to_vec).collect())
}

/// Length-grouped batches (as Hugging Face's `LengthGroupedSampler`): a seeded permutation is
/// cut into mega-batches of `batch_size * mega_batch_mult` examples, each sorted by length
/// (longest first) and cut into batches, so batches hold similar lengths and pad little while
/// the order stays random. The batch holding the longest example comes first, so memory
/// problems show up at once.
pub fn length_grouped_batches(
    lengths: &[usize],
    batch_size: usize,
    mega_batch_mult: usize,
    seed: u64,
) -> Result<Vec<Vec<usize>>, GlueError> {
    check_batch_size(batch_size)?;
    let mega = batch_size * mega_batch_mult.max(1);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    let mut batches: Vec<Vec<usize>> = Vec::with_capacity(lengths.len().div_ceil(batch_size));
    for chunk in order.chunks(mega) {
        let mut chunk = chunk.to_vec();
        // Stable sort on a shuffled chunk: ties keep their random order.
        chunk.sort_by(|a, b| lengths[*b].cmp(&lengths[*a]));
        batches.extend(chunk.chunks(batch_size).map(<[usize]>::to_vec));
    }
    if let Some(longest) = (0..batches.len()).max_by_key(|&b| {
        // max_by_key returns the last maximum; negate the position to prefer the first.
        (
            batches[b].iter().map(|&i| lengths[i]).max().unwrap_or(0),
            std::cmp::Reverse(b),
        )
    }) {
        batches.swap(0, longest);
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray<f32>;

    fn ex(index: usize, ids: &[u32], label: Option<Label>) -> EncodedExample {
        EncodedExample {
            index,
            input_ids: ids.to_vec(),
            token_type_ids: ids
                .iter()
                .enumerate()
                .map(|(i, _)| u32::from(i >= 2))
                .collect(),
            label,
        }
    }

    #[test]
    fn pads_to_longest_with_mask_and_labels() {
        let items = vec![
            ex(7, &[101, 5, 102], Some(Label::Class(1))),
            ex(3, &[101, 102], Some(Label::Class(0))),
        ];
        let batch: GlueBatch<B> = GlueBatcher::new(9).batch(items, &Default::default());
        assert_eq!(batch.input_ids.dims(), [2, 3]);
        assert_eq!(batch.indices, vec![7, 3]);
        let ids: Vec<i64> = batch.input_ids.to_data().convert::<i64>().to_vec().unwrap();
        assert_eq!(ids, vec![101, 5, 102, 101, 102, 9]);
        let mask: Vec<i64> = batch
            .attention_mask
            .to_data()
            .convert::<i64>()
            .to_vec()
            .unwrap();
        assert_eq!(mask, vec![1, 1, 1, 1, 1, 0]);
        let types: Vec<i64> = batch
            .token_type_ids
            .to_data()
            .convert::<i64>()
            .to_vec()
            .unwrap();
        assert_eq!(types, vec![0, 0, 1, 0, 0, 0]);
        match batch.labels {
            Some(GlueLabels::Class(t)) => {
                let v: Vec<i64> = t.to_data().convert::<i64>().to_vec().unwrap();
                assert_eq!(v, vec![1, 0]);
            }
            other => panic!("expected class labels, got {other:?}"),
        }
    }

    #[test]
    fn score_labels_and_unlabelled_batches() {
        let items = vec![
            ex(0, &[1], Some(Label::Score(2.5))),
            ex(1, &[1, 2], Some(Label::Score(4.0))),
        ];
        let batch: GlueBatch<B> = GlueBatcher::new(0).batch(items, &Default::default());
        match batch.labels {
            Some(GlueLabels::Score(t)) => {
                let v: Vec<f32> = t.to_data().to_vec().unwrap();
                assert_eq!(v, vec![2.5, 4.0]);
            }
            other => panic!("expected scores, got {other:?}"),
        }
        let items = vec![ex(0, &[1], None), ex(1, &[1, 2], None)];
        let batch: GlueBatch<B> = GlueBatcher::new(0).batch(items, &Default::default());
        assert!(batch.labels.is_none());
        let mixed = vec![ex(0, &[1], None), ex(1, &[1, 2], Some(Label::Class(0)))];
        let err = GlueBatcher::new(0)
            .try_batch::<B>(&mixed, &Default::default())
            .unwrap_err();
        assert!(err.to_string().contains("1 of 2 labelled"), "{err}");
        let batch: GlueBatch<B> = GlueBatcher::new(0).batch(mixed, &Default::default());
        assert!(batch.labels.is_none());
        assert_eq!(batch.batch_size(), 2);
    }

    #[test]
    fn batch_orders_cover_every_example_once() {
        let seq = sequential_batches(10, 4).unwrap();
        assert_eq!(seq, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);
        let a = shuffled_batches(100, 8, 42).unwrap();
        let b = shuffled_batches(100, 8, 42).unwrap();
        let c = shuffled_batches(100, 8, 43).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut all: Vec<usize> = a.concat();
        assert_ne!(all, (0..100).collect::<Vec<_>>());
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert!(shuffled_batches(3, 0, 1).is_err());
    }

    #[test]
    fn length_grouping_reduces_padding() {
        let lengths: Vec<usize> = (0..400).map(|i| 5 + (i * 37) % 120).collect();
        let grouped = length_grouped_batches(&lengths, 16, 50, 7).unwrap();
        let random = shuffled_batches(lengths.len(), 16, 7).unwrap();
        let padded = |batches: &[Vec<usize>]| -> usize {
            batches
                .iter()
                .map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap())
                .sum()
        };
        assert!(padded(&grouped) < padded(&random) * 3 / 4);
        let mut all = grouped.concat();
        all.sort_unstable();
        assert_eq!(all, (0..400).collect::<Vec<_>>());
        let longest = *lengths.iter().max().unwrap();
        assert!(grouped[0].iter().any(|&i| lengths[i] == longest));
        assert_eq!(
            grouped,
            length_grouped_batches(&lengths, 16, 50, 7).unwrap()
        );
    }

    #[test]
    fn burn_dataloader_follows_a_precomputed_order() {
        use burn::data::dataloader::DataLoaderBuilder;
        let d = EncodedDataset::new(
            (0..10)
                .map(|i| ex(i, &vec![1; 1 + i % 4], Some(Label::Class(i % 2))))
                .collect(),
        );
        let order = length_grouped_batches(&d.lengths(), 3, 2, 5).unwrap();
        let pre = PrebatchedDataset::new(&d, order.clone()).unwrap();
        let loader =
            DataLoaderBuilder::<B, Vec<EncodedExample>, GlueBatch<B>>::new(GlueBatcher::new(0))
                .batch_size(1)
                .build(pre);
        let seen: Vec<Vec<usize>> = loader.iter().map(|b| b.indices).collect();
        assert_eq!(seen, order);
        assert!(PrebatchedDataset::new(&d, vec![vec![10]]).is_err());

        // Burn's own shuffling over single examples works as well.
        let loader = DataLoaderBuilder::<B, EncodedExample, GlueBatch<B>>::new(GlueBatcher::new(0))
            .batch_size(4)
            .shuffle(1)
            .build(d);
        let mut all: Vec<usize> = loader.iter().flat_map(|b| b.indices).collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn dataset_trait() {
        let d = EncodedDataset::new(vec![ex(0, &[1], None), ex(1, &[2, 3], None)]);
        assert_eq!(Dataset::len(&d), 2);
        assert_eq!(d.get(1).unwrap().input_ids, vec![2, 3]);
        assert!(d.get(2).is_none());
        assert_eq!(d.lengths(), vec![1, 2]);
        assert!(d.gather(&[1, 5]).is_none());
    }
}
