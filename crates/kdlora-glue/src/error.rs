//! The crate's error type.

use std::path::PathBuf;

use crate::task::{GlueTask, Split};

/// Everything that can go wrong in `kdlora-glue`. Data errors name the file and the 1-based
/// line number.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GlueError {
    /// An unknown task name.
    #[error("unknown GLUE task {name:?}; valid tasks: {valid}")]
    UnknownTask {
        /// The name given.
        name: String,
        /// Comma-separated valid names.
        valid: String,
    },
    /// An unknown split name.
    #[error("unknown split {name:?}; valid splits: {valid}")]
    UnknownSplit {
        /// The name given.
        name: String,
        /// Comma-separated valid names.
        valid: String,
    },
    /// The task has no such split.
    #[error("task {task} has no split {split}; its splits: {valid}")]
    UnsupportedSplit {
        /// The task.
        task: GlueTask,
        /// The split asked for.
        split: Split,
        /// Comma-separated valid splits.
        valid: String,
    },
    /// No data file for the task and split under the folder.
    #[error("no {split} file for task {task} under {}; looked for: {}", dir.display(), tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    DataNotFound {
        /// The task.
        task: GlueTask,
        /// The split.
        split: Split,
        /// The folder searched.
        dir: PathBuf,
        /// Every path tried.
        tried: Vec<PathBuf>,
    },
    /// An I/O error on a file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file has no rows (not even a header).
    #[error("{}: file is empty", path.display())]
    EmptyFile {
        /// The file.
        path: PathBuf,
    },
    /// A line is not valid UTF-8.
    #[error("{}:{line}: invalid UTF-8 at byte {byte} of the line", path.display())]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Offset of the first invalid byte within the line.
        byte: usize,
    },
    /// An empty line inside the data (rows are never skipped).
    #[error("{}:{line}: empty line", path.display())]
    EmptyLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// The header lacks a column the task needs.
    #[error("{}:{line}: header has no column {column:?} (header: {header:?})", path.display())]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// 1-based line number of the header.
        line: usize,
        /// The missing column name.
        column: String,
        /// The header found.
        header: String,
    },
    /// The header is not the one the task's files have.
    #[error("{}:{line}: unexpected header {found:?}; expected {expected}", path.display())]
    UnexpectedHeader {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The first line found.
        found: String,
        /// What was expected.
        expected: String,
    },
    /// A row has the wrong number of tab-separated fields.
    #[error("{}:{line}: wrong column count: expected {expected} tab-separated fields, found {found}", path.display())]
    ColumnCount {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Fields the header (or the format) has.
        expected: usize,
        /// Fields found.
        found: usize,
    },
    /// A labelled split has a row without a label.
    #[error("{}:{line}: missing label", path.display())]
    MissingLabel {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// A class label outside the task's label set.
    #[error("{}:{line}: unknown label {label:?} for {task}; valid labels: {valid}", path.display())]
    UnknownLabel {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The task.
        task: GlueTask,
        /// The label found.
        label: String,
        /// The valid spellings.
        valid: String,
    },
    /// An STS-B score that is not a finite number in [0, 5].
    #[error("{}:{line}: invalid similarity score {value:?}: {problem}", path.display())]
    InvalidScore {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The value found.
        value: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A JSON-lines row that is not a JSON object.
    #[error("{}:{line}: invalid JSON: {message}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// A JSON-lines row with a missing or mistyped field.
    #[error("{}:{line}: field {field:?}: {problem}", path.display())]
    JsonField {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The field.
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// A problem with a prediction (submission) file's structure.
    #[error("{}:{line}: {problem}", path.display())]
    Submission {
        /// The file.
        path: PathBuf,
        /// 1-based line number (0 for whole-file problems).
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// Examples that cannot be batched, or a bad batching parameter.
    #[error("batch: {0}")]
    Batch(String),
    /// Predictions and labels that cannot be compared.
    #[error("metric input: {0}")]
    MetricInput(String),
    /// The rows given to [`crate::glue_score`] are not the paper's ten rows.
    #[error("GLUE score needs exactly one score for each of the 10 rows: {0}")]
    ScoreRows(String),
    /// The tokenizer could not be loaded or failed to encode.
    #[error("tokenizer {context}: {message}")]
    Tokenizer {
        /// The file or the operation.
        context: String,
        /// The tokenizers crate's message.
        message: String,
    },
    /// A download failed.
    #[error("download {url}: {problem}")]
    Download {
        /// The URL.
        url: String,
        /// What went wrong.
        problem: String,
    },
    /// A zip archive is invalid or unsafe.
    #[error("archive {}: {problem}", path.display())]
    Archive {
        /// The archive.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

impl GlueError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        GlueError::Io {
            path: path.into(),
            source,
        }
    }
}
