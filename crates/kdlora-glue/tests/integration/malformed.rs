//! Every file in `tests/data/malformed/` must fail with its own specific error (file, line and
//! problem), never panic, never load.

use std::path::{Path, PathBuf};

use kdlora_glue::{GlueDataset, GlueError, GlueTask, Split};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/malformed")
}

fn load(name: &str, task: GlueTask, split: Split) -> GlueError {
    let path = corpus().join(name);
    let result = if name.ends_with(".jsonl") {
        GlueDataset::from_jsonl_file(&path, task, split)
    } else {
        GlueDataset::from_tsv_file(&path, task, split)
    };
    let err = match result {
        Ok(d) => panic!("{name} loaded {} rows instead of failing", d.len()),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(
        msg.contains(name),
        "{name}: error message does not name the file: {msg}"
    );
    err
}

#[test]
fn corpus_has_at_least_twelve_files_and_all_are_covered() {
    let mut names: Vec<String> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 12, "only {} malformed files", names.len());
    let covered = COVERED;
    for n in &names {
        assert!(covered.contains(&n.as_str()), "{n} has no assertion");
    }
}

const COVERED: &[&str] = &[
    "cola_wrong_column_count.tsv",
    "cola_unknown_label.tsv",
    "sst2_missing_header.tsv",
    "sst2_empty_line.tsv",
    "mrpc_invalid_utf8.tsv",
    "rte_numeric_label.tsv",
    "rte_missing_label.tsv",
    "stsb_score_out_of_range.tsv",
    "stsb_score_not_a_number.tsv",
    "qnli_extra_column.tsv",
    "wnli_empty_file.tsv",
    "mnli_unknown_gold_label.tsv",
    "rte_crlf_trailing_blank_line.tsv",
    "sst2_test_wrong_header.tsv",
    "mnli_invalid_json.jsonl",
    "mnli_not_an_object.jsonl",
    "mnli_minus_one_in_validation.jsonl",
    "qqp_label_out_of_range.jsonl",
    "qnli_missing_field.jsonl",
    "stsb_string_label.jsonl",
    "cola_text_not_a_string.jsonl",
];

#[test]
fn cola_wrong_column_count() {
    let e = load("cola_wrong_column_count.tsv", GlueTask::Cola, Split::Train);
    assert!(
        matches!(
            e,
            GlueError::ColumnCount {
                line: 2,
                expected: 4,
                found: 3,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn cola_unknown_label() {
    let e = load("cola_unknown_label.tsv", GlueTask::Cola, Split::Train);
    match &e {
        GlueError::UnknownLabel {
            line: 3,
            label,
            valid,
            ..
        } => {
            assert_eq!(label, "2");
            assert_eq!(valid, "0, 1");
        }
        _ => panic!("{e}"),
    }
}

#[test]
fn sst2_missing_header() {
    let e = load("sst2_missing_header.tsv", GlueTask::Sst2, Split::Train);
    match &e {
        GlueError::MissingColumn {
            line: 1, column, ..
        } => assert_eq!(column, "sentence"),
        _ => panic!("{e}"),
    }
}

#[test]
fn sst2_empty_line() {
    let e = load("sst2_empty_line.tsv", GlueTask::Sst2, Split::Train);
    assert!(matches!(e, GlueError::EmptyLine { line: 3, .. }), "{e}");
}

#[test]
fn mrpc_invalid_utf8() {
    let e = load("mrpc_invalid_utf8.tsv", GlueTask::Mrpc, Split::Train);
    assert!(
        matches!(
            e,
            GlueError::InvalidUtf8 {
                line: 3,
                byte: 8,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn rte_numeric_label() {
    let e = load("rte_numeric_label.tsv", GlueTask::Rte, Split::Dev);
    match &e {
        GlueError::UnknownLabel {
            line: 3,
            label,
            valid,
            task,
            ..
        } => {
            assert_eq!(label, "0");
            assert_eq!(valid, "entailment, not_entailment");
            assert_eq!(*task, GlueTask::Rte);
        }
        _ => panic!("{e}"),
    }
}

#[test]
fn rte_missing_label() {
    let e = load("rte_missing_label.tsv", GlueTask::Rte, Split::Train);
    assert!(matches!(e, GlueError::MissingLabel { line: 2, .. }), "{e}");
}

#[test]
fn stsb_score_out_of_range() {
    let e = load("stsb_score_out_of_range.tsv", GlueTask::Stsb, Split::Train);
    match &e {
        GlueError::InvalidScore {
            line: 2,
            value,
            problem,
            ..
        } => {
            assert_eq!(value, "6.000");
            assert!(problem.contains("outside"));
        }
        _ => panic!("{e}"),
    }
}

#[test]
fn stsb_score_not_a_number() {
    let e = load("stsb_score_not_a_number.tsv", GlueTask::Stsb, Split::Dev);
    match &e {
        GlueError::InvalidScore {
            line: 3,
            value,
            problem,
            ..
        } => {
            assert_eq!(value, "high");
            assert_eq!(problem, "not a number");
        }
        _ => panic!("{e}"),
    }
}

#[test]
fn qnli_extra_column() {
    let e = load("qnli_extra_column.tsv", GlueTask::Qnli, Split::Dev);
    assert!(
        matches!(
            e,
            GlueError::ColumnCount {
                line: 3,
                expected: 4,
                found: 5,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn wnli_empty_file() {
    let e = load("wnli_empty_file.tsv", GlueTask::Wnli, Split::Train);
    assert!(matches!(e, GlueError::EmptyFile { .. }), "{e}");
}

#[test]
fn mnli_unknown_gold_label() {
    let e = load("mnli_unknown_gold_label.tsv", GlueTask::Mnli, Split::Train);
    match &e {
        GlueError::UnknownLabel {
            line: 3,
            label,
            valid,
            ..
        } => {
            assert_eq!(label, "-");
            assert_eq!(valid, "entailment, neutral, contradiction");
        }
        _ => panic!("{e}"),
    }
}

#[test]
fn rte_crlf_trailing_blank_line() {
    let e = load(
        "rte_crlf_trailing_blank_line.tsv",
        GlueTask::Rte,
        Split::Train,
    );
    assert!(matches!(e, GlueError::EmptyLine { line: 3, .. }), "{e}");
}

#[test]
fn sst2_test_wrong_header() {
    let e = load("sst2_test_wrong_header.tsv", GlueTask::Sst2, Split::Test);
    match &e {
        GlueError::MissingColumn {
            line: 1,
            column,
            header,
            ..
        } => {
            assert_eq!(column, "sentence");
            assert_eq!(header, "id\ttext");
        }
        _ => panic!("{e}"),
    }
}

#[test]
fn mnli_invalid_json() {
    let e = load("mnli_invalid_json.jsonl", GlueTask::Mnli, Split::Train);
    assert!(matches!(e, GlueError::Json { line: 2, .. }), "{e}");
}

#[test]
fn mnli_not_an_object() {
    let e = load("mnli_not_an_object.jsonl", GlueTask::Mnli, Split::Train);
    match &e {
        GlueError::Json {
            line: 1, message, ..
        } => assert_eq!(message, "expected a JSON object"),
        _ => panic!("{e}"),
    }
}

#[test]
fn mnli_minus_one_in_validation() {
    let e = load(
        "mnli_minus_one_in_validation.jsonl",
        GlueTask::Mnli,
        Split::Dev,
    );
    assert!(matches!(e, GlueError::MissingLabel { line: 2, .. }), "{e}");
}

#[test]
fn qqp_label_out_of_range() {
    let e = load("qqp_label_out_of_range.jsonl", GlueTask::Qqp, Split::Train);
    match &e {
        GlueError::UnknownLabel { line: 1, label, .. } => assert_eq!(label, "2"),
        _ => panic!("{e}"),
    }
}

#[test]
fn qnli_missing_field() {
    let e = load("qnli_missing_field.jsonl", GlueTask::Qnli, Split::Train);
    match &e {
        GlueError::JsonField {
            line: 1,
            field,
            problem,
            ..
        } => {
            assert_eq!(field, "sentence");
            assert_eq!(problem, "missing");
        }
        _ => panic!("{e}"),
    }
}

#[test]
fn stsb_string_label() {
    let e = load("stsb_string_label.jsonl", GlueTask::Stsb, Split::Train);
    match &e {
        GlueError::JsonField {
            line: 1,
            field,
            problem,
            ..
        } => {
            assert_eq!(field, "label");
            assert_eq!(problem, "expected a number");
        }
        _ => panic!("{e}"),
    }
}

#[test]
fn cola_text_not_a_string() {
    let e = load("cola_text_not_a_string.jsonl", GlueTask::Cola, Split::Train);
    match &e {
        GlueError::JsonField {
            line: 1,
            field,
            problem,
            ..
        } => {
            assert_eq!(field, "sentence");
            assert_eq!(problem, "expected a string");
        }
        _ => panic!("{e}"),
    }
}
