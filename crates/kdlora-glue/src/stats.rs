//! Summary statistics of a split: counts, label distribution, token lengths.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::data::{GlueDataset, Label};
use crate::error::GlueError;
use crate::tokenize::GlueTokenizer;

/// Token-length distribution (special tokens included, before truncation).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LengthStats {
    /// Shortest.
    pub min: usize,
    /// Mean.
    pub mean: f64,
    /// Median (nearest rank).
    pub p50: usize,
    /// 90th percentile (nearest rank).
    pub p90: usize,
    /// 95th percentile (nearest rank).
    pub p95: usize,
    /// 99th percentile (nearest rank).
    pub p99: usize,
    /// Longest.
    pub max: usize,
    /// The tokenizer's `max_len`.
    pub max_len: usize,
    /// Examples longer than `max_len` (they get truncated).
    pub truncated: usize,
}

/// Statistics of one split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetStats {
    /// Task name.
    pub task: String,
    /// Split name.
    pub split: String,
    /// The file read.
    pub path: String,
    /// Number of examples.
    pub examples: usize,
    /// Examples per class name (classification; `(none)` counts unlabelled ones).
    pub labels: BTreeMap<String, usize>,
    /// Mean STS-B score of labelled examples.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score_mean: Option<f64>,
    /// Token lengths, when a tokenizer was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_lengths: Option<LengthStats>,
}

/// Nearest-rank percentile of sorted values (`q` in (0, 100]).
pub fn percentile(sorted: &[usize], q: f64) -> usize {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summarises token lengths against a maximum length.
pub fn length_stats(lengths: &[usize], max_len: usize) -> LengthStats {
    let mut sorted = lengths.to_vec();
    sorted.sort_unstable();
    LengthStats {
        min: sorted.first().copied().unwrap_or(0),
        mean: if sorted.is_empty() {
            0.0
        } else {
            sorted.iter().sum::<usize>() as f64 / sorted.len() as f64
        },
        p50: percentile(&sorted, 50.0),
        p90: percentile(&sorted, 90.0),
        p95: percentile(&sorted, 95.0),
        p99: percentile(&sorted, 99.0),
        max: sorted.last().copied().unwrap_or(0),
        max_len,
        truncated: sorted.iter().filter(|&&l| l > max_len).count(),
    }
}

/// Computes a split's statistics; token lengths only when a tokenizer is given.
pub fn dataset_stats(
    dataset: &GlueDataset,
    tokenizer: Option<&GlueTokenizer>,
) -> Result<DatasetStats, GlueError> {
    let scores: Vec<f64> = dataset
        .examples()
        .iter()
        .filter_map(|e| e.label.and_then(Label::score))
        .map(f64::from)
        .collect();
    let token_lengths = match tokenizer {
        Some(t) => Some(length_stats(
            &t.untruncated_lengths(dataset.examples())?,
            t.max_len(),
        )),
        None => None,
    };
    Ok(DatasetStats {
        task: dataset.task().name().to_string(),
        split: dataset.split().name().to_string(),
        path: dataset.path().display().to_string(),
        examples: dataset.len(),
        labels: dataset.label_counts(),
        score_mean: (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64),
        token_lengths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<usize> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[7], 50.0), 7);
        let s = length_stats(&[3, 1, 2, 10], 5);
        assert_eq!((s.min, s.max, s.p50, s.truncated), (1, 10, 2, 1));
        assert_eq!(s.mean, 4.0);
    }
}
