//! Readers for the two GLUE file layouts: the original TSV files of the GLUE download script and
//! the Hugging Face `glue` dataset exported as JSON lines.
//!
//! Readers are strict: every line of a file becomes exactly one example or an error that names
//! the file, the 1-based line and the problem. Nothing is skipped or repaired.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::GlueError;
use crate::task::{GlueTask, Split};

/// The gold label of an example.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Label {
    /// A class id in the order of [`GlueTask::label_names`].
    Class(usize),
    /// An STS-B similarity score in [0, 5].
    Score(f32),
}

impl Label {
    /// The class id, if this is a class label.
    pub fn class(self) -> Option<usize> {
        match self {
            Label::Class(c) => Some(c),
            Label::Score(_) => None,
        }
    }

    /// The score, if this is a regression label.
    pub fn score(self) -> Option<f32> {
        match self {
            Label::Score(s) => Some(s),
            Label::Class(_) => None,
        }
    }
}

/// One example: its position in the file, its text(s) and its label (absent in test files).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GlueExample {
    /// 0-based row position in the file (header excluded); stable and unique within a split.
    pub index: usize,
    /// The first (or only) sentence.
    pub text_a: String,
    /// The second sentence of pair tasks.
    pub text_b: Option<String>,
    /// The gold label, `None` in unlabelled (test) files.
    pub label: Option<Label>,
}

/// Which layout a file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DataFormat {
    /// GLUE's original tab-separated files (`<dir>/CoLA/train.tsv`).
    OriginalTsv,
    /// Hugging Face JSON lines (`<dir>/cola/train.jsonl`).
    HfJsonl,
    /// Built in memory with [`GlueDataset::from_examples`].
    InMemory,
}

/// All examples of one split of one task.
#[derive(Debug, Clone)]
pub struct GlueDataset {
    task: GlueTask,
    split: Split,
    path: PathBuf,
    format: DataFormat,
    examples: Vec<GlueExample>,
}

impl GlueDataset {
    /// Loads a split from `dir`, detecting the layout. Tried in order: `<dir>/<GLUE folder>/<file>.tsv`
    /// (e.g. `CoLA/train.tsv`, `MNLI/dev_matched.tsv`, `diagnostic/diagnostic.tsv`),
    /// `<dir>/<hf name>/<split>.jsonl` (e.g. `mnli/validation.jsonl`), then the same file names
    /// directly in `dir` (when `dir` is the task's own folder).
    pub fn load(dir: &Path, task: GlueTask, split: Split) -> Result<Self, GlueError> {
        let (path, format) = locate(dir, task, split)?;
        match format {
            DataFormat::OriginalTsv => Self::from_tsv_file(&path, task, split),
            // `locate` never yields `InMemory`.
            DataFormat::HfJsonl | DataFormat::InMemory => Self::from_jsonl_file(&path, task, split),
        }
    }

    /// Reads one original-layout TSV file.
    pub fn from_tsv_file(path: &Path, task: GlueTask, split: Split) -> Result<Self, GlueError> {
        let bytes = std::fs::read(path).map_err(|e| GlueError::io(path, e))?;
        let examples = parse_tsv(&bytes, path, task, split)?;
        tracing::debug!(path = %path.display(), rows = examples.len(), "loaded GLUE TSV");
        Ok(Self {
            task,
            split: task.canonical_split(split)?,
            path: path.to_path_buf(),
            format: DataFormat::OriginalTsv,
            examples,
        })
    }

    /// Reads one Hugging Face JSON-lines file.
    pub fn from_jsonl_file(path: &Path, task: GlueTask, split: Split) -> Result<Self, GlueError> {
        let bytes = std::fs::read(path).map_err(|e| GlueError::io(path, e))?;
        let examples = parse_jsonl(&bytes, path, task, split)?;
        tracing::debug!(path = %path.display(), rows = examples.len(), "loaded GLUE JSONL");
        Ok(Self {
            task,
            split: task.canonical_split(split)?,
            path: path.to_path_buf(),
            format: DataFormat::HfJsonl,
            examples,
        })
    }

    /// Builds a dataset from examples already in memory (e.g. for tests or custom data).
    pub fn from_examples(task: GlueTask, split: Split, examples: Vec<GlueExample>) -> Self {
        Self {
            task,
            split,
            path: PathBuf::new(),
            format: DataFormat::InMemory,
            examples,
        }
    }

    /// The task.
    pub fn task(&self) -> GlueTask {
        self.task
    }

    /// The split (MNLI aliases resolved: `Dev` is reported as `DevMatched`).
    pub fn split(&self) -> Split {
        self.split
    }

    /// The file the examples came from (empty for in-memory datasets).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The layout of the file.
    pub fn format(&self) -> DataFormat {
        self.format
    }

    /// The examples in file order.
    pub fn examples(&self) -> &[GlueExample] {
        &self.examples
    }

    /// Consumes the dataset, returning its examples.
    pub fn into_examples(self) -> Vec<GlueExample> {
        self.examples
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Whether every example has a label.
    pub fn is_labelled(&self) -> bool {
        !self.examples.is_empty() && self.examples.iter().all(|e| e.label.is_some())
    }

    /// The labels in example order (`None` for unlabelled examples).
    pub fn labels(&self) -> Vec<Option<Label>> {
        self.examples.iter().map(|e| e.label).collect()
    }

    /// Number of examples per class name (classification tasks); unlabelled examples are
    /// counted under `"(none)"`. Empty for STS-B.
    pub fn label_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        if self.task.is_regression() {
            return counts;
        }
        for e in &self.examples {
            let key = match e.label {
                Some(Label::Class(c)) => self
                    .task
                    .label_names()
                    .get(c)
                    .map_or_else(|| c.to_string(), |n| n.to_string()),
                _ => "(none)".to_string(),
            };
            *counts.entry(key).or_insert(0) += 1;
        }
        counts
    }
}

/// Finds the file of a split under `dir` (see [`GlueDataset::load`] for the order tried).
pub fn locate(
    dir: &Path,
    task: GlueTask,
    split: Split,
) -> Result<(PathBuf, DataFormat), GlueError> {
    let tsv = task.tsv_file_name(split)?;
    let jsonl = task.jsonl_file_names(split)?;
    let mut candidates = vec![(
        dir.join(task.original_dir()).join(tsv),
        DataFormat::OriginalTsv,
    )];
    candidates.extend(
        jsonl
            .iter()
            .map(|f| (dir.join(task.hf_dir()).join(f), DataFormat::HfJsonl)),
    );
    candidates.push((dir.join(tsv), DataFormat::OriginalTsv));
    candidates.extend(jsonl.iter().map(|f| (dir.join(f), DataFormat::HfJsonl)));
    for (path, format) in &candidates {
        if path.is_file() {
            return Ok((path.clone(), *format));
        }
    }
    Err(GlueError::DataNotFound {
        task,
        split,
        dir: dir.to_path_buf(),
        tried: candidates.into_iter().map(|(p, _)| p).collect(),
    })
}

/// Splits a file into lines: `\n` separated, a trailing `\r` removed (CRLF files), the UTF-8 BOM
/// removed from the first line, and no phantom empty line after a final newline. Returns
/// 1-based line numbers with the raw bytes.
fn lines(bytes: &[u8]) -> Vec<(usize, &[u8])> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    body.split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, line)| (i + 1, line.strip_suffix(b"\r").unwrap_or(line)))
        .collect()
}

fn utf8<'a>(path: &Path, line: usize, raw: &'a [u8]) -> Result<&'a str, GlueError> {
    std::str::from_utf8(raw).map_err(|e| GlueError::InvalidUtf8 {
        path: path.to_path_buf(),
        line,
        byte: e.valid_up_to(),
    })
}

/// Where the needed fields sit in a TSV row.
struct TsvColumns {
    width: usize,
    text: Vec<usize>,
    label: Option<usize>,
}

/// Parses an original-layout GLUE TSV file held in memory. `path` is only used in errors.
///
/// CoLA's train and dev files have no header (columns: source, label, original mark, sentence);
/// every other file has a header naming its columns, which is used to find the text and label
/// columns. Every row must have as many fields as the header.
pub fn parse_tsv(
    bytes: &[u8],
    path: &Path,
    task: GlueTask,
    split: Split,
) -> Result<Vec<GlueExample>, GlueError> {
    let split = task.canonical_split(split)?;
    let lines = lines(bytes);
    if lines.is_empty() {
        return Err(GlueError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    let headerless = task == GlueTask::Cola && split.is_labelled();
    let (columns, data) = if headerless {
        (
            TsvColumns {
                width: 4,
                text: vec![3],
                label: Some(1),
            },
            &lines[..],
        )
    } else {
        let (line_no, raw) = lines[0];
        let header = utf8(path, line_no, raw)?;
        if header.is_empty() {
            return Err(GlueError::EmptyLine {
                path: path.to_path_buf(),
                line: line_no,
            });
        }
        let names: Vec<&str> = header.split('\t').collect();
        let find = |column: &str| {
            names
                .iter()
                .position(|n| *n == column)
                .ok_or_else(|| GlueError::MissingColumn {
                    path: path.to_path_buf(),
                    line: line_no,
                    column: column.to_string(),
                    header: header.to_string(),
                })
        };
        let text = task
            .tsv_text_columns()
            .iter()
            .map(|c| find(c))
            .collect::<Result<Vec<_>, _>>()?;
        let label = match task.tsv_label_column() {
            Some(col) if split.is_labelled() => Some(find(col)?),
            Some(col) => names.iter().position(|n| *n == col),
            None => None,
        };
        (
            TsvColumns {
                width: names.len(),
                text,
                label,
            },
            &lines[1..],
        )
    };

    let mut examples = Vec::with_capacity(data.len());
    for (index, &(line_no, raw)) in data.iter().enumerate() {
        let line = utf8(path, line_no, raw)?;
        if line.is_empty() {
            return Err(GlueError::EmptyLine {
                path: path.to_path_buf(),
                line: line_no,
            });
        }
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != columns.width {
            return Err(GlueError::ColumnCount {
                path: path.to_path_buf(),
                line: line_no,
                expected: columns.width,
                found: fields.len(),
            });
        }
        let label = match columns.label {
            Some(col) => parse_tsv_label(fields[col], path, line_no, task, split)?,
            None => None,
        };
        examples.push(GlueExample {
            index,
            text_a: fields[columns.text[0]].to_string(),
            text_b: columns.text.get(1).map(|&c| fields[c].to_string()),
            label,
        });
    }
    Ok(examples)
}

fn parse_tsv_label(
    value: &str,
    path: &Path,
    line: usize,
    task: GlueTask,
    split: Split,
) -> Result<Option<Label>, GlueError> {
    if value.is_empty() {
        return if split.is_labelled() {
            Err(GlueError::MissingLabel {
                path: path.to_path_buf(),
                line,
            })
        } else {
            Ok(None)
        };
    }
    if task.is_regression() {
        return parse_score(value, path, line).map(Some);
    }
    task.class_from_tsv(value)
        .map(|c| Some(Label::Class(c)))
        .ok_or_else(|| GlueError::UnknownLabel {
            path: path.to_path_buf(),
            line,
            task,
            label: value.to_string(),
            valid: task.tsv_label_spellings(),
        })
}

fn parse_score(value: &str, path: &Path, line: usize) -> Result<Label, GlueError> {
    let invalid = |problem: &str| GlueError::InvalidScore {
        path: path.to_path_buf(),
        line,
        value: value.to_string(),
        problem: problem.to_string(),
    };
    let score: f32 = value.trim().parse().map_err(|_| invalid("not a number"))?;
    score_label(score).ok_or_else(|| invalid("outside [0, 5]"))
}

fn score_label(score: f32) -> Option<Label> {
    (score.is_finite() && (0.0..=5.0).contains(&score)).then_some(Label::Score(score))
}

/// Parses a Hugging Face `glue` JSON-lines file held in memory. `path` is only used in errors.
///
/// Each line is an object with the task's HF text columns (see [`GlueTask::text_fields`]),
/// `label` (class id, STS-B float, or -1 for "no label" in test files) and optionally `idx`.
pub fn parse_jsonl(
    bytes: &[u8],
    path: &Path,
    task: GlueTask,
    split: Split,
) -> Result<Vec<GlueExample>, GlueError> {
    let split = task.canonical_split(split)?;
    let lines = lines(bytes);
    if lines.is_empty() {
        return Err(GlueError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    let mut examples = Vec::with_capacity(lines.len());
    for (index, &(line_no, raw)) in lines.iter().enumerate() {
        let line = utf8(path, line_no, raw)?;
        if line.trim().is_empty() {
            return Err(GlueError::EmptyLine {
                path: path.to_path_buf(),
                line: line_no,
            });
        }
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| GlueError::Json {
            path: path.to_path_buf(),
            line: line_no,
            message: e.to_string(),
        })?;
        let object = value.as_object().ok_or_else(|| GlueError::Json {
            path: path.to_path_buf(),
            line: line_no,
            message: "expected a JSON object".to_string(),
        })?;
        let field_error = |field: &str, problem: &str| GlueError::JsonField {
            path: path.to_path_buf(),
            line: line_no,
            field: field.to_string(),
            problem: problem.to_string(),
        };
        let mut texts = Vec::with_capacity(2);
        for field in task.text_fields() {
            let text = match object.get(*field) {
                None => return Err(field_error(field, "missing")),
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(_) => return Err(field_error(field, "expected a string")),
            };
            texts.push(text);
        }
        if let Some(idx) = object.get("idx")
            && idx.as_u64().is_none()
        {
            return Err(field_error("idx", "expected a non-negative integer"));
        }
        let label = match object.get("label") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => jsonl_label(v, task).map_err(|p| match p {
                JsonLabelProblem::Field(problem) => field_error("label", problem),
                JsonLabelProblem::UnknownClass(label) => GlueError::UnknownLabel {
                    path: path.to_path_buf(),
                    line: line_no,
                    task,
                    label,
                    valid: format!("0..{} or -1 (no label)", task.num_labels() - 1),
                },
                JsonLabelProblem::Score(value) => GlueError::InvalidScore {
                    path: path.to_path_buf(),
                    line: line_no,
                    value,
                    problem: "outside [0, 5]".to_string(),
                },
            })?,
        };
        if label.is_none() && split.is_labelled() {
            return Err(GlueError::MissingLabel {
                path: path.to_path_buf(),
                line: line_no,
            });
        }
        let mut texts = texts.into_iter();
        examples.push(GlueExample {
            index,
            text_a: texts.next().unwrap_or_default(),
            text_b: texts.next(),
            label,
        });
    }
    Ok(examples)
}

enum JsonLabelProblem {
    Field(&'static str),
    UnknownClass(String),
    Score(String),
}

/// `Ok(None)` is HF's `-1` ("no label").
fn jsonl_label(
    value: &serde_json::Value,
    task: GlueTask,
) -> Result<Option<Label>, JsonLabelProblem> {
    if value.as_i64() == Some(-1) {
        return Ok(None);
    }
    if task.is_regression() {
        let score = value
            .as_f64()
            .ok_or(JsonLabelProblem::Field("expected a number"))?;
        return score_label(score as f32)
            .map(Some)
            .ok_or_else(|| JsonLabelProblem::Score(value.to_string()));
    }
    let class = value
        .as_i64()
        .ok_or(JsonLabelProblem::Field("expected an integer class id"))?;
    usize::try_from(class)
        .ok()
        .filter(|c| *c < task.num_labels())
        .map(|c| Some(Label::Class(c)))
        .ok_or_else(|| JsonLabelProblem::UnknownClass(class.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("mem.tsv")
    }

    #[test]
    fn line_splitting_handles_crlf_bom_and_missing_final_newline() {
        let l = lines(b"\xEF\xBB\xBFa\r\nb\nc");
        assert_eq!(l, vec![(1, &b"a"[..]), (2, &b"b"[..]), (3, &b"c"[..])]);
        let l = lines(b"a\n");
        assert_eq!(l, vec![(1, &b"a"[..])]);
        assert!(lines(b"").is_empty());
        assert_eq!(lines(b"a\n\n"), vec![(1, &b"a"[..]), (2, &b""[..])]);
    }

    #[test]
    fn cola_without_header() {
        let ex = parse_tsv(
            b"gj04\t1\t\tGood.\ngj04\t0\t*\tBad.",
            p(),
            GlueTask::Cola,
            Split::Train,
        )
        .unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[1].index, 1);
        assert_eq!(ex[1].text_a, "Bad.");
        assert_eq!(ex[1].label, Some(Label::Class(0)));
        assert_eq!(ex[0].text_b, None);
    }

    #[test]
    fn string_labels_and_crlf() {
        let ex = parse_tsv(
            b"index\tsentence1\tsentence2\tlabel\r\n0\tA\tB\tnot_entailment\r\n1\tC\tD\tentailment\r\n",
            p(),
            GlueTask::Rte,
            Split::Dev,
        )
        .unwrap();
        assert_eq!(ex[0].label, Some(Label::Class(1)));
        assert_eq!(ex[1].label, Some(Label::Class(0)));
        assert_eq!(ex[1].text_b.as_deref(), Some("D"));
    }

    #[test]
    fn jsonl_minus_one_is_unlabelled_only_in_test() {
        let row = br#"{"premise":"a","hypothesis":"b","label":-1,"idx":0}"#;
        let ex = parse_jsonl(row, p(), GlueTask::Mnli, Split::TestMatched).unwrap();
        assert_eq!(ex[0].label, None);
        let err = parse_jsonl(row, p(), GlueTask::Mnli, Split::Dev).unwrap_err();
        assert!(
            matches!(err, GlueError::MissingLabel { line: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn stsb_scores() {
        let head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n";
        let ok = format!("{head}0\tg\tf\ty\t0\tn\tn\tA\tB\t3.800\n");
        let ex = parse_tsv(ok.as_bytes(), p(), GlueTask::Stsb, Split::Train).unwrap();
        assert_eq!(ex[0].label, Some(Label::Score(3.8)));
        let bad = format!("{head}0\tg\tf\ty\t0\tn\tn\tA\tB\t5.5\n");
        let err = parse_tsv(bad.as_bytes(), p(), GlueTask::Stsb, Split::Train).unwrap_err();
        assert!(
            matches!(err, GlueError::InvalidScore { line: 2, .. }),
            "{err}"
        );
    }
}
