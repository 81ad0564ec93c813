//! GLUE submission files: `index<TAB>prediction` with a header line, class names for
//! MNLI/AX/QNLI/RTE and class ids elsewhere, scores for STS-B.

use std::collections::HashMap;
use std::path::Path;

use crate::data::{GlueDataset, Label};
use crate::error::GlueError;
use crate::task::GlueTask;

/// Header line of a submission file.
pub const SUBMISSION_HEADER: &str = "index\tprediction";

/// One prediction: the example's row index and the predicted label.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// Row index of the example ([`crate::GlueExample::index`]).
    pub index: usize,
    /// The predicted class or score.
    pub label: Label,
}

/// Formats predictions as a submission file's text.
pub fn format_predictions(task: GlueTask, predictions: &[Prediction]) -> Result<String, GlueError> {
    let mut out = String::with_capacity(16 * predictions.len() + 20);
    out.push_str(SUBMISSION_HEADER);
    out.push('\n');
    for (i, p) in predictions.iter().enumerate() {
        let value = match (task.is_regression(), p.label) {
            (true, Label::Score(s)) if s.is_finite() => format!("{s}"),
            (false, Label::Class(c)) => task.class_to_tsv(c).ok_or_else(|| {
                GlueError::MetricInput(format!(
                    "prediction {i} (index {}): class {c} out of range for {task}",
                    p.index
                ))
            })?,
            (_, other) => {
                return Err(GlueError::MetricInput(format!(
                    "prediction {i} (index {}): {other:?} is not a valid {task} prediction",
                    p.index
                )));
            }
        };
        out.push_str(&format!("{}\t{value}\n", p.index));
    }
    Ok(out)
}

/// Writes `bytes` to `path` with [`kdlora_schema::write_atomic`] (missing parent folders are
/// created): never half a file, symlinks followed, pipes and devices written in place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), GlueError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| GlueError::io(dir, e))?;
    kdlora_schema::write_atomic(path, bytes).map_err(|e| GlueError::io(path, e))
}

/// Writes a submission file atomically.
pub fn write_predictions(
    path: &Path,
    task: GlueTask,
    predictions: &[Prediction],
) -> Result<(), GlueError> {
    write_atomic(path, format_predictions(task, predictions)?.as_bytes())
}

/// Reads a submission file. Strict: the header must be `index<TAB>prediction`, each row two
/// fields, indices unique non-negative integers, predictions spelled as the task's submissions
/// spell them (finite numbers for STS-B).
pub fn read_predictions(path: &Path, task: GlueTask) -> Result<Vec<Prediction>, GlueError> {
    let bytes = std::fs::read(path).map_err(|e| GlueError::io(path, e))?;
    parse_predictions(&bytes, path, task)
}

/// Parses a submission file held in memory (`path` is only used in errors).
pub fn parse_predictions(
    bytes: &[u8],
    path: &Path,
    task: GlueTask,
) -> Result<Vec<Prediction>, GlueError> {
    let err = |line: usize, problem: String| GlueError::Submission {
        path: path.to_path_buf(),
        line,
        problem,
    };
    let text = std::str::from_utf8(bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes))
        .map_err(|e| err(0, format!("invalid UTF-8 at byte {}", e.valid_up_to())))?;
    let body = text.strip_suffix('\n').unwrap_or(text);
    let mut lines = body
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .enumerate()
        .map(|(i, l)| (i + 1, l));
    match lines.next() {
        Some((_, h)) if h == SUBMISSION_HEADER => {}
        Some((n, h)) if !text.is_empty() => {
            return Err(err(
                n,
                format!("expected header {SUBMISSION_HEADER:?}, found {h:?}"),
            ));
        }
        _ => return Err(err(0, "file is empty".to_string())),
    }
    let mut seen: HashMap<usize, usize> = HashMap::new();
    let mut out = Vec::new();
    for (n, line) in lines {
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != 2 {
            return Err(err(
                n,
                format!("expected 2 tab-separated fields, found {}", fields.len()),
            ));
        }
        let index: usize = fields[0]
            .parse()
            .map_err(|_| err(n, format!("invalid index {:?}", fields[0])))?;
        if let Some(first) = seen.insert(index, n) {
            return Err(err(n, format!("index {index} repeats line {first}")));
        }
        let value = fields[1];
        let label = if task.is_regression() {
            let v: f32 = value
                .parse()
                .map_err(|_| err(n, format!("invalid score {value:?}")))?;
            if !v.is_finite() {
                return Err(err(n, format!("score {value:?} is not finite")));
            }
            Label::Score(v)
        } else {
            Label::Class(task.class_from_tsv(value).ok_or_else(|| {
                err(
                    n,
                    format!(
                        "unknown prediction {value:?} for {task}; valid: {}",
                        task.tsv_label_spellings()
                    ),
                )
            })?)
        };
        out.push(Prediction { index, label });
    }
    Ok(out)
}

/// Pairs predictions with a labelled dataset's gold labels, in dataset order. Every example
/// needs exactly one prediction, and every prediction must name an example.
pub fn align_predictions(
    predictions: &[Prediction],
    dataset: &GlueDataset,
) -> Result<(Vec<Label>, Vec<Label>), GlueError> {
    let by_index: HashMap<usize, Label> = predictions.iter().map(|p| (p.index, p.label)).collect();
    let known: std::collections::HashSet<usize> =
        dataset.examples().iter().map(|e| e.index).collect();
    if let Some(extra) = predictions.iter().find(|p| !known.contains(&p.index)) {
        return Err(GlueError::MetricInput(format!(
            "prediction for index {} but {} has no such example",
            extra.index,
            dataset.path().display()
        )));
    }
    let mut preds = Vec::with_capacity(dataset.len());
    let mut golds = Vec::with_capacity(dataset.len());
    for e in dataset.examples() {
        let p = by_index.get(&e.index).ok_or_else(|| {
            GlueError::MetricInput(format!("no prediction for index {}", e.index))
        })?;
        let g = e.label.ok_or_else(|| {
            GlueError::MetricInput(format!(
                "example {} of {} has no gold label",
                e.index,
                dataset.path().display()
            ))
        })?;
        preds.push(*p);
        golds.push(g);
    }
    Ok((preds, golds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_string_and_score_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("RTE.tsv");
        let preds = vec![
            Prediction {
                index: 0,
                label: Label::Class(1),
            },
            Prediction {
                index: 1,
                label: Label::Class(0),
            },
        ];
        write_predictions(&path, GlueTask::Rte, &preds).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "index\tprediction\n0\tnot_entailment\n1\tentailment\n"
        );
        assert_eq!(read_predictions(&path, GlueTask::Rte).unwrap(), preds);

        let path = dir.path().join("STS-B.tsv");
        let preds = vec![Prediction {
            index: 4,
            label: Label::Score(3.25),
        }];
        write_predictions(&path, GlueTask::Stsb, &preds).unwrap();
        assert_eq!(read_predictions(&path, GlueTask::Stsb).unwrap(), preds);
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn rejects_bad_submissions() {
        let p = Path::new("x.tsv");
        let cases: [(&[u8], &str); 5] = [
            (b"", "empty"),
            (b"id\tlabel\n0\t1\n", "expected header"),
            (b"index\tprediction\n0\t1\n0\t0\n", "repeats line 2"),
            (b"index\tprediction\n0\tentailment\n", "unknown prediction"),
            (b"index\tprediction\nx\t1\n", "invalid index"),
        ];
        for (bytes, want) in cases {
            let err = parse_predictions(bytes, p, GlueTask::Cola)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err} (wanted {want})");
        }
        assert!(
            format_predictions(
                GlueTask::Cola,
                &[Prediction {
                    index: 0,
                    label: Label::Class(5)
                }]
            )
            .is_err()
        );
    }
}
