//! The GLUE task catalogue: names, fields, label sets, metrics, splits and file names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::GlueError;

/// One GLUE task (plus the AX diagnostic set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GlueTask {
    /// Corpus of Linguistic Acceptability (single sentence, MCC).
    Cola,
    /// Stanford Sentiment Treebank, binary (single sentence, accuracy).
    Sst2,
    /// Microsoft Research Paraphrase Corpus (pairs, accuracy and F1).
    Mrpc,
    /// Semantic Textual Similarity Benchmark (pairs, regression 0-5, Pearson and Spearman).
    Stsb,
    /// Quora Question Pairs (pairs, accuracy and F1).
    Qqp,
    /// Multi-Genre NLI (pairs, 3 classes, matched and mismatched accuracy).
    Mnli,
    /// Question NLI (pairs, accuracy).
    Qnli,
    /// Recognizing Textual Entailment (pairs, accuracy).
    Rte,
    /// Winograd NLI (pairs, accuracy).
    Wnli,
    /// The diagnostic set (pairs labelled as MNLI, test only, scored with MCC).
    Ax,
}

/// A metric a task reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Fraction of exact matches.
    Accuracy,
    /// F1 of the positive class (label 1).
    F1,
    /// Matthews correlation coefficient.
    Mcc,
    /// Pearson correlation.
    Pearson,
    /// Spearman rank correlation (average ranks for ties).
    Spearman,
}

/// A data split. `Dev` means the task's standard dev split (MNLI: matched).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Training split.
    Train,
    /// Dev (HF: `validation`); for MNLI the matched dev set.
    Dev,
    /// MNLI matched dev set (`dev_matched.tsv`, HF `validation_matched`).
    DevMatched,
    /// MNLI mismatched dev set (`dev_mismatched.tsv`, HF `validation_mismatched`).
    DevMismatched,
    /// Test split (unlabelled in GLUE); for MNLI the matched test set.
    Test,
    /// MNLI matched test set.
    TestMatched,
    /// MNLI mismatched test set.
    TestMismatched,
}

impl Split {
    /// All splits, in a fixed order.
    pub const ALL: [Split; 7] = [
        Split::Train,
        Split::Dev,
        Split::DevMatched,
        Split::DevMismatched,
        Split::Test,
        Split::TestMatched,
        Split::TestMismatched,
    ];

    /// Canonical lowercase name (`train`, `dev`, `dev_matched`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
            Split::DevMatched => "dev_matched",
            Split::DevMismatched => "dev_mismatched",
            Split::Test => "test",
            Split::TestMatched => "test_matched",
            Split::TestMismatched => "test_mismatched",
        }
    }

    /// Name of the split in the Hugging Face `glue` dataset (`validation`,
    /// `validation_matched`, ...).
    pub fn hf_name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "validation",
            Split::DevMatched => "validation_matched",
            Split::DevMismatched => "validation_mismatched",
            Split::Test => "test",
            Split::TestMatched => "test_matched",
            Split::TestMismatched => "test_mismatched",
        }
    }

    /// Whether GLUE ships labels for this split.
    pub fn is_labelled(self) -> bool {
        matches!(
            self,
            Split::Train | Split::Dev | Split::DevMatched | Split::DevMismatched
        )
    }

    /// Whether this split is one of MNLI's mismatched sets.
    pub fn is_mismatched(self) -> bool {
        matches!(self, Split::DevMismatched | Split::TestMismatched)
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Split {
    type Err = GlueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key = s.trim().to_ascii_lowercase().replace('-', "_");
        Ok(match key.as_str() {
            "train" => Split::Train,
            "dev" | "validation" | "valid" => Split::Dev,
            "dev_matched" | "validation_matched" | "matched" | "dev_m" => Split::DevMatched,
            "dev_mismatched" | "validation_mismatched" | "mismatched" | "dev_mm" => {
                Split::DevMismatched
            }
            "test" => Split::Test,
            "test_matched" | "test_m" => Split::TestMatched,
            "test_mismatched" | "test_mm" => Split::TestMismatched,
            _ => {
                return Err(GlueError::UnknownSplit {
                    name: s.to_string(),
                    valid: Split::ALL
                        .iter()
                        .map(|s| s.name())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        })
    }
}

impl GlueTask {
    /// All tasks, in the order of the GLUE benchmark (AX last).
    pub const ALL: [GlueTask; 10] = [
        GlueTask::Cola,
        GlueTask::Sst2,
        GlueTask::Mrpc,
        GlueTask::Stsb,
        GlueTask::Qqp,
        GlueTask::Mnli,
        GlueTask::Qnli,
        GlueTask::Rte,
        GlueTask::Wnli,
        GlueTask::Ax,
    ];

    /// Lowercase name, as the Hugging Face `glue` configuration (`cola`, `sst2`, `stsb`, ...).
    pub fn name(self) -> &'static str {
        match self {
            GlueTask::Cola => "cola",
            GlueTask::Sst2 => "sst2",
            GlueTask::Mrpc => "mrpc",
            GlueTask::Stsb => "stsb",
            GlueTask::Qqp => "qqp",
            GlueTask::Mnli => "mnli",
            GlueTask::Qnli => "qnli",
            GlueTask::Rte => "rte",
            GlueTask::Wnli => "wnli",
            GlueTask::Ax => "ax",
        }
    }

    /// Display name as GLUE prints it (`CoLA`, `SST-2`, `STS-B`, ...).
    pub fn display_name(self) -> &'static str {
        match self {
            GlueTask::Cola => "CoLA",
            GlueTask::Sst2 => "SST-2",
            GlueTask::Mrpc => "MRPC",
            GlueTask::Stsb => "STS-B",
            GlueTask::Qqp => "QQP",
            GlueTask::Mnli => "MNLI",
            GlueTask::Qnli => "QNLI",
            GlueTask::Rte => "RTE",
            GlueTask::Wnli => "WNLI",
            GlueTask::Ax => "AX",
        }
    }

    /// Folder of the task in the original GLUE layout (as the GLUE download script names it).
    pub fn original_dir(self) -> &'static str {
        match self {
            GlueTask::Ax => "diagnostic",
            other => other.display_name(),
        }
    }

    /// Folder of the task in the Hugging Face JSON-lines layout (same as [`GlueTask::name`]).
    pub fn hf_dir(self) -> &'static str {
        self.name()
    }

    /// Hugging Face column names of the text fields: one for single-sentence tasks, two for pairs.
    pub fn text_fields(self) -> &'static [&'static str] {
        match self {
            GlueTask::Cola | GlueTask::Sst2 => &["sentence"],
            GlueTask::Mrpc | GlueTask::Stsb | GlueTask::Rte | GlueTask::Wnli => {
                &["sentence1", "sentence2"]
            }
            GlueTask::Qqp => &["question1", "question2"],
            GlueTask::Mnli | GlueTask::Ax => &["premise", "hypothesis"],
            GlueTask::Qnli => &["question", "sentence"],
        }
    }

    /// Whether examples are sentence pairs.
    pub fn is_pair(self) -> bool {
        self.text_fields().len() == 2
    }

    /// Column names of the text fields in the original TSV files (CoLA train/dev have no header:
    /// there the sentence is the fourth column).
    pub fn tsv_text_columns(self) -> &'static [&'static str] {
        match self {
            GlueTask::Cola | GlueTask::Sst2 => &["sentence"],
            GlueTask::Mrpc => &["#1 String", "#2 String"],
            GlueTask::Stsb | GlueTask::Rte | GlueTask::Wnli | GlueTask::Mnli | GlueTask::Ax => {
                &["sentence1", "sentence2"]
            }
            GlueTask::Qqp => &["question1", "question2"],
            GlueTask::Qnli => &["question", "sentence"],
        }
    }

    /// Column name of the label in the original TSV files (`None` for AX, which has no labels).
    pub fn tsv_label_column(self) -> Option<&'static str> {
        match self {
            GlueTask::Cola | GlueTask::Sst2 | GlueTask::Qnli | GlueTask::Rte | GlueTask::Wnli => {
                Some("label")
            }
            GlueTask::Mrpc => Some("Quality"),
            GlueTask::Stsb => Some("score"),
            GlueTask::Qqp => Some("is_duplicate"),
            GlueTask::Mnli => Some("gold_label"),
            GlueTask::Ax => None,
        }
    }

    /// Class names in label-id order, as the Hugging Face `glue` dataset (empty for STS-B).
    pub fn label_names(self) -> &'static [&'static str] {
        match self {
            GlueTask::Cola => &["unacceptable", "acceptable"],
            GlueTask::Sst2 => &["negative", "positive"],
            GlueTask::Mrpc => &["not_equivalent", "equivalent"],
            GlueTask::Stsb => &[],
            GlueTask::Qqp => &["not_duplicate", "duplicate"],
            GlueTask::Mnli | GlueTask::Ax => &["entailment", "neutral", "contradiction"],
            GlueTask::Qnli | GlueTask::Rte => &["entailment", "not_entailment"],
            GlueTask::Wnli => &["not_entailment", "entailment"],
        }
    }

    /// Number of model outputs: classes, or 1 for the STS-B regression.
    pub fn num_labels(self) -> usize {
        match self {
            GlueTask::Stsb => 1,
            other => other.label_names().len(),
        }
    }

    /// Whether the task is a regression (STS-B).
    pub fn is_regression(self) -> bool {
        self == GlueTask::Stsb
    }

    /// Whether the original TSV files and GLUE submissions spell labels as class names
    /// (MNLI, AX, QNLI, RTE) rather than as class ids (`0`, `1`).
    pub fn uses_string_labels(self) -> bool {
        matches!(
            self,
            GlueTask::Mnli | GlueTask::Ax | GlueTask::Qnli | GlueTask::Rte
        )
    }

    /// Metrics the task reports, in GLUE's order; the task's GLUE number is their mean.
    pub fn metrics(self) -> &'static [Metric] {
        match self {
            GlueTask::Cola | GlueTask::Ax => &[Metric::Mcc],
            GlueTask::Mrpc | GlueTask::Qqp => &[Metric::Accuracy, Metric::F1],
            GlueTask::Stsb => &[Metric::Pearson, Metric::Spearman],
            GlueTask::Sst2 | GlueTask::Mnli | GlueTask::Qnli | GlueTask::Rte | GlueTask::Wnli => {
                &[Metric::Accuracy]
            }
        }
    }

    /// GLUE submission file name (`CoLA.tsv`, `MNLI-m.tsv`, `AX.tsv`, ...).
    pub fn submission_file_name(self) -> &'static str {
        match self {
            GlueTask::Cola => "CoLA.tsv",
            GlueTask::Sst2 => "SST-2.tsv",
            GlueTask::Mrpc => "MRPC.tsv",
            GlueTask::Stsb => "STS-B.tsv",
            GlueTask::Qqp => "QQP.tsv",
            GlueTask::Mnli => "MNLI-m.tsv",
            GlueTask::Qnli => "QNLI.tsv",
            GlueTask::Rte => "RTE.tsv",
            GlueTask::Wnli => "WNLI.tsv",
            GlueTask::Ax => "AX.tsv",
        }
    }

    /// Submission file name for a split: `MNLI-mm.tsv` for MNLI's mismatched sets, otherwise
    /// [`GlueTask::submission_file_name`].
    pub fn submission_file_name_for(self, split: Split) -> &'static str {
        if self == GlueTask::Mnli && split.is_mismatched() {
            "MNLI-mm.tsv"
        } else {
            self.submission_file_name()
        }
    }

    /// The splits the task has. MNLI has matched and mismatched dev/test sets
    /// (`Dev` is an alias of `DevMatched`); AX has only `Test`.
    pub fn splits(self) -> &'static [Split] {
        match self {
            GlueTask::Mnli => &[
                Split::Train,
                Split::DevMatched,
                Split::DevMismatched,
                Split::TestMatched,
                Split::TestMismatched,
            ],
            GlueTask::Ax => &[Split::Test],
            _ => &[Split::Train, Split::Dev, Split::Test],
        }
    }

    /// Resolves MNLI aliases (`Dev` -> `DevMatched`, `Test` -> `TestMatched`) and rejects splits
    /// the task does not have.
    pub fn canonical_split(self, split: Split) -> Result<Split, GlueError> {
        let resolved = match (self, split) {
            (GlueTask::Mnli, Split::Dev) => Split::DevMatched,
            (GlueTask::Mnli, Split::Test) => Split::TestMatched,
            (GlueTask::Ax, Split::TestMatched) => Split::Test,
            (_, s) => s,
        };
        if self.splits().contains(&resolved) {
            Ok(resolved)
        } else {
            Err(GlueError::UnsupportedSplit {
                task: self,
                split,
                valid: self
                    .splits()
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    }

    /// File name of a split in the original GLUE layout (`train.tsv`, `dev_matched.tsv`, ...).
    pub fn tsv_file_name(self, split: Split) -> Result<&'static str, GlueError> {
        let split = self.canonical_split(split)?;
        Ok(match (self, split) {
            (GlueTask::Ax, _) => "diagnostic.tsv",
            (_, Split::Train) => "train.tsv",
            (_, Split::Dev) => "dev.tsv",
            (_, Split::DevMatched) => "dev_matched.tsv",
            (_, Split::DevMismatched) => "dev_mismatched.tsv",
            (_, Split::Test) => "test.tsv",
            (_, Split::TestMatched) => "test_matched.tsv",
            (_, Split::TestMismatched) => "test_mismatched.tsv",
        })
    }

    /// Candidate file names of a split in the Hugging Face JSON-lines layout, in the order they
    /// are tried (MNLI's matched dev set may be stored as `validation_matched.jsonl` or, as in
    /// the subsets, `validation.jsonl`).
    pub fn jsonl_file_names(self, split: Split) -> Result<&'static [&'static str], GlueError> {
        let split = self.canonical_split(split)?;
        Ok(match (self, split) {
            (_, Split::Train) => &["train.jsonl"],
            (_, Split::Dev) => &["validation.jsonl"],
            (_, Split::DevMatched) => &["validation_matched.jsonl", "validation.jsonl"],
            (_, Split::DevMismatched) => &["validation_mismatched.jsonl"],
            (_, Split::Test) => &["test.jsonl"],
            (_, Split::TestMatched) => &["test_matched.jsonl", "test.jsonl"],
            (_, Split::TestMismatched) => &["test_mismatched.jsonl"],
        })
    }

    /// Spelling of a class id in TSV files and submissions (`0`/`1`, or the class name for
    /// MNLI/AX/QNLI/RTE). `None` when the id is out of range or the task is a regression.
    pub fn class_to_tsv(self, class: usize) -> Option<String> {
        if self.is_regression() {
            return None;
        }
        let names = self.label_names();
        if class >= names.len() {
            return None;
        }
        Some(if self.uses_string_labels() {
            names[class].to_string()
        } else {
            class.to_string()
        })
    }

    /// Parses a class label as spelled in TSV files and submissions. Strict: `0`/`1` for id
    /// tasks, class names for MNLI/AX/QNLI/RTE.
    pub fn class_from_tsv(self, value: &str) -> Option<usize> {
        if self.is_regression() {
            return None;
        }
        let names = self.label_names();
        if self.uses_string_labels() {
            names.iter().position(|n| *n == value)
        } else {
            value
                .parse::<usize>()
                .ok()
                .filter(|c| *c < names.len())
                .filter(|_| {
                    // Only canonical spellings: "1" but not "+1" or "01".
                    value.bytes().all(|b| b.is_ascii_digit())
                        && (value == "0" || !value.starts_with('0'))
                })
        }
    }

    /// The valid label spellings in TSV files, for error messages.
    pub fn tsv_label_spellings(self) -> String {
        if self.is_regression() {
            return "a number between 0 and 5".to_string();
        }
        (0..self.label_names().len())
            .filter_map(|c| self.class_to_tsv(c))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for GlueTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GlueTask {
    type Err = GlueError;

    /// Case-insensitive; `-` and `_` are ignored (`sst2`, `SST-2`, `sts-b`, `STS_B`), and
    /// `diagnostic` is accepted for AX.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key: String = s
            .trim()
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .flat_map(char::to_lowercase)
            .collect();
        GlueTask::ALL
            .iter()
            .copied()
            .find(|t| t.name() == key)
            .or(match key.as_str() {
                "diagnostic" => Some(GlueTask::Ax),
                _ => None,
            })
            .ok_or_else(|| GlueError::UnknownTask {
                name: s.to_string(),
                valid: GlueTask::ALL
                    .iter()
                    .map(|t| t.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_task_names_case_insensitively() {
        assert_eq!("SST-2".parse::<GlueTask>().unwrap(), GlueTask::Sst2);
        assert_eq!("sst2".parse::<GlueTask>().unwrap(), GlueTask::Sst2);
        assert_eq!("sts-b".parse::<GlueTask>().unwrap(), GlueTask::Stsb);
        assert_eq!("CoLA".parse::<GlueTask>().unwrap(), GlueTask::Cola);
        assert_eq!("diagnostic".parse::<GlueTask>().unwrap(), GlueTask::Ax);
        for t in GlueTask::ALL {
            assert_eq!(t.name().parse::<GlueTask>().unwrap(), t);
            assert_eq!(t.display_name().parse::<GlueTask>().unwrap(), t);
        }
        let err = "imdb".parse::<GlueTask>().unwrap_err().to_string();
        assert!(
            err.contains("imdb") && err.contains("cola") && err.contains("wnli"),
            "{err}"
        );
    }

    #[test]
    fn parses_split_names() {
        assert_eq!("validation".parse::<Split>().unwrap(), Split::Dev);
        assert_eq!(
            "validation_mismatched".parse::<Split>().unwrap(),
            Split::DevMismatched
        );
        assert_eq!("dev-matched".parse::<Split>().unwrap(), Split::DevMatched);
        assert!("holdout".parse::<Split>().is_err());
    }

    #[test]
    fn label_catalogue_matches_hugging_face() {
        assert_eq!(
            GlueTask::Mnli.label_names(),
            &["entailment", "neutral", "contradiction"]
        );
        assert_eq!(
            GlueTask::Rte.label_names(),
            &["entailment", "not_entailment"]
        );
        assert_eq!(GlueTask::Stsb.num_labels(), 1);
        assert!(GlueTask::Stsb.is_regression());
        assert_eq!(GlueTask::Mnli.num_labels(), 3);
        assert_eq!(GlueTask::Cola.num_labels(), 2);
    }

    #[test]
    fn label_spelling_round_trips() {
        for t in GlueTask::ALL {
            for c in 0..t.label_names().len() {
                let s = t.class_to_tsv(c).unwrap();
                assert_eq!(t.class_from_tsv(&s), Some(c), "{t} {c}");
            }
        }
        assert_eq!(GlueTask::Rte.class_from_tsv("0"), None);
        assert_eq!(GlueTask::Cola.class_from_tsv("entailment"), None);
        assert_eq!(GlueTask::Cola.class_from_tsv("01"), None);
        assert_eq!(GlueTask::Cola.class_from_tsv("2"), None);
        assert_eq!(GlueTask::Cola.class_from_tsv("+1"), None);
    }

    #[test]
    fn file_names() {
        assert_eq!(
            GlueTask::Mnli.submission_file_name_for(Split::DevMismatched),
            "MNLI-mm.tsv"
        );
        assert_eq!(
            GlueTask::Mnli.tsv_file_name(Split::Dev).unwrap(),
            "dev_matched.tsv"
        );
        assert_eq!(
            GlueTask::Ax.tsv_file_name(Split::Test).unwrap(),
            "diagnostic.tsv"
        );
        assert!(GlueTask::Ax.tsv_file_name(Split::Train).is_err());
        assert!(GlueTask::Cola.tsv_file_name(Split::DevMismatched).is_err());
        assert_eq!(
            GlueTask::Mnli.jsonl_file_names(Split::Dev).unwrap(),
            &["validation_matched.jsonl", "validation.jsonl"]
        );
    }
}
