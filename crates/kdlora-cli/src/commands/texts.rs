//! Files of texts for `kdlora predict --input` and `kdlora logits --input`, and the JSON line
//! written for each row.
//!
//! A file of texts is TSV with a header row or JSON lines of objects; either names its text
//! columns as the GLUE task does (the Hugging Face names such as `sentence`, `sentence1` and
//! `sentence2`, `question` and `sentence`, `premise` and `hypothesis`, or the original TSV
//! headers such as MRPC's `#1 String`). Other columns (a label, an index) are ignored, so GLUE's
//! own dev and test files are valid input. Without a task, the first of [`GENERIC_COLUMNS`] the
//! file has is used.

use std::path::Path;

use anyhow::bail;
use kdlora_glue::GlueTask;

use super::runs::Labels;

/// One text (pair); `origin` (`FILE:LINE`) names it in errors.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TextRow {
    pub text: String,
    pub pair: Option<String>,
    pub origin: String,
}

/// What an `--input` file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InputKind {
    /// JSON lines of `{"input_ids": [...], ...}` (`kdlora logits` only).
    TokenIds,
    /// TSV with a header, or JSON lines of objects with text fields.
    Texts,
}

/// Text columns tried in order when no task says which. Pairs come first: a file with
/// `question` and `sentence` is a QNLI pair, not a single `sentence`.
const GENERIC_COLUMNS: &[&[&str]] = &[
    &["sentence1", "sentence2"],
    &["question1", "question2"],
    &["premise", "hypothesis"],
    &["question", "sentence"],
    &["#1 String", "#2 String"],
    &["text", "text_pair"],
    &["sentence"],
    &["text"],
];

/// Decides what an input file holds: a `.tsv` file holds texts; otherwise the first non-blank
/// line does, token ids when it is a JSON object with `input_ids`, texts when it is another JSON
/// object. Anything else is read as token ids, whose reader names the line that is wrong.
pub(crate) fn input_kind(path: &Path, bytes: &[u8]) -> InputKind {
    if is_tsv(path) {
        return InputKind::Texts;
    }
    let text = String::from_utf8_lossy(bytes);
    let first = text.lines().find(|l| !l.trim().is_empty());
    match first.and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
        Some(serde_json::Value::Object(object)) if !object.contains_key("input_ids") => {
            InputKind::Texts
        }
        _ => InputKind::TokenIds,
    }
}

fn is_tsv(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("tsv") || e.eq_ignore_ascii_case("tab"))
}

/// The column sets a file may use for `task` (or any task).
fn column_sets(task: Option<GlueTask>) -> Vec<&'static [&'static str]> {
    match task {
        Some(task) => {
            let mut sets = vec![task.text_fields()];
            if task.tsv_text_columns() != task.text_fields() {
                sets.push(task.tsv_text_columns());
            }
            sets
        }
        None => GENERIC_COLUMNS.to_vec(),
    }
}

fn describe(sets: &[&[&str]]) -> String {
    sets.iter()
        .map(|set| {
            set.iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(" and ")
        })
        .collect::<Vec<_>>()
        .join(", or ")
}

/// Reads a file of texts (`path` is only used in messages); see the module documentation. Blank
/// lines are skipped; every other row must hold its texts, or the error names file and line.
pub(crate) fn read_texts(
    path: &Path,
    bytes: &[u8],
    task: Option<GlueTask>,
) -> anyhow::Result<Vec<TextRow>> {
    let sets = column_sets(task);
    let what = match task {
        Some(task) => format!("the text columns of {task}: {}", describe(&sets)),
        None => format!("text columns: {}", describe(&sets)),
    };
    let mut lines = Vec::new();
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    for (index, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let origin = format!("{}:{}", path.display(), index + 1);
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(line) = std::str::from_utf8(raw) else {
            bail!("{origin}: not valid UTF-8");
        };
        if !line.trim().is_empty() {
            lines.push((origin, line));
        }
    }
    let rows = if is_tsv(path) {
        read_tsv(&lines, &sets, &what)?
    } else {
        read_jsonl(&lines, &sets, &what)?
    };
    if rows.is_empty() {
        bail!("{}: no rows", path.display());
    }
    Ok(rows)
}

fn read_tsv(
    lines: &[(String, &str)],
    sets: &[&[&str]],
    what: &str,
) -> anyhow::Result<Vec<TextRow>> {
    let Some(((header_origin, header), rows)) = lines.split_first() else {
        return Ok(Vec::new());
    };
    let names: Vec<&str> = header.split('\t').map(str::trim).collect();
    let Some(columns) = sets.iter().find_map(|set| {
        set.iter()
            .map(|c| names.iter().position(|n| n == c))
            .collect::<Option<Vec<usize>>>()
    }) else {
        bail!(
            "{header_origin}: the header names none of {what} (it has: {})",
            names.join(", ")
        );
    };
    rows.iter()
        .map(|(origin, line)| {
            let fields: Vec<&str> = line.split('\t').collect();
            if fields.len() != names.len() {
                bail!(
                    "{origin}: {} fields, but the header has {} columns",
                    fields.len(),
                    names.len()
                );
            }
            Ok(TextRow {
                text: fields[columns[0]].to_string(),
                pair: columns.get(1).map(|&c| fields[c].to_string()),
                origin: origin.clone(),
            })
        })
        .collect()
}

fn read_jsonl(
    lines: &[(String, &str)],
    sets: &[&[&str]],
    what: &str,
) -> anyhow::Result<Vec<TextRow>> {
    lines
        .iter()
        .map(|(origin, line)| {
            let value: serde_json::Value = serde_json::from_str(line)
                .map_err(|err| anyhow::anyhow!("{origin}: not valid JSON: {err}"))?;
            let Some(object) = value.as_object() else {
                bail!("{origin}: expected a JSON object with {what}");
            };
            let Some(set) = sets
                .iter()
                .find(|set| set.iter().all(|c| object.contains_key(*c)))
            else {
                let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
                keys.sort_unstable();
                bail!(
                    "{origin}: the object has none of {what} (it has: {})",
                    keys.join(", ")
                );
            };
            let field = |name: &str| match &object[name] {
                serde_json::Value::String(s) => Ok(s.clone()),
                other => bail!("{origin}: field `{name}` is {other}, not a string"),
            };
            Ok(TextRow {
                text: field(set[0])?,
                pair: set.get(1).map(|c| field(c)).transpose()?,
                origin: origin.clone(),
            })
        })
        .collect()
}

/// The JSON object reported for one row: the predicted label's name and the softmax probability
/// of every label (`{"label": "positive", "probabilities": {"negative": 0.1, "positive": 0.9}}`),
/// or for a regression (STS-B) the score (`{"score": 3.2}`).
pub(crate) fn prediction(
    logits: &[f32],
    labels: &Labels,
) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    if labels.regression || logits.len() == 1 {
        out.insert(
            "score".into(),
            logits.first().copied().unwrap_or(0.0).into(),
        );
        return out;
    }
    // A config.json whose id2label disagrees with the head would misname every class.
    let names: Vec<String> = if labels.names.len() == logits.len() {
        labels.names.clone()
    } else {
        (0..logits.len()).map(|i| format!("LABEL_{i}")).collect()
    };
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f64> = logits.iter().map(|v| f64::from(v - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    let mut best = 0;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[best] {
            best = i;
        }
    }
    out.insert("label".into(), names[best].clone().into());
    let probabilities: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .zip(&exp)
        .map(|(name, e)| (name.clone(), (e / sum).into()))
        .collect();
    out.insert("probabilities".into(), probabilities.into());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str) -> &Path {
        Path::new(name)
    }

    #[test]
    fn the_extension_and_first_line_decide_the_kind() {
        let ids = b"\n{\"input_ids\": [2, 3]}\n";
        assert_eq!(input_kind(p("in.jsonl"), ids), InputKind::TokenIds);
        assert_eq!(input_kind(p("-"), ids), InputKind::TokenIds);
        let texts = b"{\"sentence\": \"a b\"}\n";
        assert_eq!(input_kind(p("in.jsonl"), texts), InputKind::Texts);
        assert_eq!(input_kind(p("in.TSV"), b"sentence\na\n"), InputKind::Texts);
        assert_eq!(input_kind(p("in.jsonl"), b"garbage"), InputKind::TokenIds);
    }

    #[test]
    fn tsv_and_jsonl_rows_use_the_tasks_columns() {
        let tsv =
            b"index\tsentence1\tsentence2\tgold_label\r\n0\ta b\tc d\tneutral\r\n\n1\te\tf\t\n";
        let rows = read_texts(p("x.tsv"), tsv, Some(GlueTask::Mnli)).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[1].text.as_str(), rows[1].pair.as_deref()),
            ("e", Some("f"))
        );
        assert_eq!(rows[1].origin, "x.tsv:4");
        let jsonl = b"{\"premise\": \"a\", \"hypothesis\": \"b\"}\n";
        let rows = read_texts(p("x.jsonl"), jsonl, Some(GlueTask::Mnli)).unwrap();
        assert_eq!(rows[0].pair.as_deref(), Some("b"));
        // Without a task, a single sentence.
        let rows = read_texts(p("x.jsonl"), b"{\"sentence\": \"a\"}", None).unwrap();
        assert_eq!((rows[0].text.as_str(), rows[0].pair.clone()), ("a", None));
    }

    /// The error `read_texts` gives for `bytes` read as `name`, which must mention every `needle`.
    fn assert_refused(name: &str, bytes: &[u8], task: GlueTask, needles: &[&str]) {
        let err = read_texts(p(name), bytes, Some(task))
            .unwrap_err()
            .to_string();
        for needle in needles {
            assert!(err.contains(needle), "{needle} not in: {err}");
        }
    }

    #[test]
    fn bad_rows_name_file_and_line() {
        let sst2 = GlueTask::Sst2;
        assert_refused(
            "x.tsv",
            b"sentence\tlabel\na\t1\nb\n",
            sst2,
            &["x.tsv:3", "1 fields"],
        );
        assert_refused("x.tsv", b"text2\nb\n", sst2, &["x.tsv:1", "`sentence`"]);
        let jsonl = b"{\"sentence\": \"a\"}\n{\"sentence\": 3}\n";
        assert_refused("x.jsonl", jsonl, sst2, &["x.jsonl:2", "`sentence`"]);
        let jsonl = b"{\"sentence\": \"a\"}\n{\"sentence1\": \"a\"}\n";
        assert_refused("x.jsonl", jsonl, sst2, &["x.jsonl:2", "sentence1"]);
        // A pair task needs both texts.
        let jsonl = b"{\"sentence1\": \"a\"}";
        assert_refused("x.jsonl", jsonl, GlueTask::Mrpc, &["`sentence2`"]);
    }

    #[test]
    fn predictions_name_labels_and_sum_to_one() {
        let labels = Labels::of_task(GlueTask::Sst2);
        let row = prediction(&[0.0, 2.0], &labels);
        assert_eq!(row["label"], "positive");
        let p = &row["probabilities"];
        let sum = p["negative"].as_f64().unwrap() + p["positive"].as_f64().unwrap();
        assert!((sum - 1.0).abs() < 1e-9);
        assert!(p["positive"].as_f64().unwrap() > 0.88);
        let row = prediction(&[3.25], &Labels::of_task(GlueTask::Stsb));
        assert_eq!(row["score"], 3.25);
        assert!(row.get("label").is_none());
    }
}
