//! GLUE for kdlora: the task catalogue, readers for both file layouts, tokenization, Burn
//! batching, the official metrics, the paper's GLUE score, submission files and downloads.
//!
//! The crate knows nothing of models. Its pieces, in pipeline order:
//! - [`GlueTask`] / [`Split`]: names, text fields, label sets, metrics, file names.
//! - [`GlueDataset::load`]: reads the original GLUE TSV layout (`<dir>/CoLA/train.tsv`) or the
//!   Hugging Face JSON-lines layout (`<dir>/cola/train.jsonl`), strictly: a malformed row is a
//!   [`GlueError`] naming file, line and problem.
//! - [`GlueTokenizer`]: a `tokenizer.json` with longest-first truncation, parallel encoding.
//! - [`GlueBatcher`] / [`EncodedDataset`]: Burn `Batcher`/`Dataset` with dynamic padding;
//!   [`shuffled_batches`] and [`length_grouped_batches`] give seeded batch orders.
//! - [`evaluate`] and [`glue_score`]: the metrics GLUE and the paper report.
//! - [`write_predictions`] / [`read_predictions`]: GLUE submission TSVs.
//! - [`download_task`]: the official files, for users online.
//!
//! ```
//! use std::path::Path;
//! use kdlora_glue::{evaluate, parse_tsv, GlueTask, Label, Split};
//!
//! let tsv = b"index\tsentence1\tsentence2\tlabel\n\
//!             0\tA man sleeps.\tA person rests.\tentailment\n\
//!             1\tIt rains.\tThe sun shines.\tnot_entailment";
//! let examples = parse_tsv(tsv, Path::new("RTE/dev.tsv"), GlueTask::Rte, Split::Dev)?;
//! assert_eq!(examples[1].index, 1);
//! assert_eq!(examples[1].text_b.as_deref(), Some("The sun shines."));
//! assert_eq!(examples[1].label, Some(Label::Class(1))); // not_entailment
//!
//! let gold: Vec<Label> = examples.iter().filter_map(|e| e.label).collect();
//! let metrics = evaluate(GlueTask::Rte, &[Label::Class(0), Label::Class(0)], &gold)?;
//! assert_eq!(metrics.accuracy, Some(0.5));
//! assert_eq!(metrics.score, 50.0);
//!
//! // A malformed row is an error naming the file and line.
//! let bad = b"index\tsentence1\tsentence2\tlabel\n0\tA\tB\tmaybe\n";
//! let err = parse_tsv(bad, Path::new("RTE/dev.tsv"), GlueTask::Rte, Split::Dev).unwrap_err();
//! assert!(err.to_string().starts_with("RTE/dev.tsv:2: unknown label \"maybe\""));
//! # Ok::<(), kdlora_glue::GlueError>(())
//! ```

mod batch;
mod data;
pub mod download;
mod error;
mod metrics;
mod stats;
mod submission;
mod task;
mod tokenize;

pub use batch::{
    EncodedDataset, GlueBatch, GlueBatcher, GlueLabels, PaddedBatch, PaddedLabels,
    PrebatchedDataset, length_grouped_batches, pad_examples, sequential_batches, shuffled_batches,
};
pub use data::{DataFormat, GlueDataset, GlueExample, Label, locate, parse_jsonl, parse_tsv};
pub use download::{DownloadEvent, DownloadOptions, DownloadOutcome, GlueSources, download_task};
pub use error::GlueError;
pub use metrics::{
    Baseline, GlueRow, TaskMetrics, TaskScore, accuracy, average_ranks, evaluate, evaluate_classes,
    evaluate_scores, f1, glue_score, majority_baseline, matthews_corrcoef, pearson, spearman,
};
pub use stats::{DatasetStats, LengthStats, dataset_stats, length_stats, percentile};
pub use submission::{
    Prediction, SUBMISSION_HEADER, align_predictions, format_predictions, parse_predictions,
    read_predictions, write_atomic, write_predictions,
};
pub use task::{GlueTask, Metric, Split};
pub use tokenize::{DEFAULT_MAX_LEN, EncodedExample, GlueTokenizer, max_token_id};
