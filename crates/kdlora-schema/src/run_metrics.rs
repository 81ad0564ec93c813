//! `metrics.json` ([`RunMetrics`]) and the lines of `metrics.jsonl` ([`EpochRecord`]).

use serde::{Deserialize, Serialize};

use crate::Method;

/// One line of `metrics.jsonl`: an epoch's training loss and dev metrics.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    /// Epoch (1-based).
    pub epoch: usize,
    /// Optimizer steps taken by the end of the epoch.
    pub step: usize,
    /// Mean training loss over the epoch's micro-batches.
    pub train_loss: f64,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// The task's GLUE number (x100) on dev (for MNLI: the matched dev set).
    pub score: f64,
    /// MNLI: the GLUE number (x100) on the mismatched dev set, when the data folder has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_mismatched: Option<f64>,
    /// All dev metrics (`kdlora_glue::TaskMetrics`).
    pub dev: serde_json::Value,
    /// MNLI: all metrics on the mismatched dev set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_mismatched: Option<serde_json::Value>,
    /// Training wall-clock seconds of the epoch (steps only).
    pub train_seconds: f64,
    /// Evaluation wall-clock seconds.
    pub eval_seconds: f64,
}

/// Training throughput.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Throughput {
    /// Training examples processed (all epochs).
    pub examples: usize,
    /// Seconds spent in training steps.
    pub seconds: f64,
    /// `examples / seconds`.
    pub examples_per_second: f64,
    /// How it was measured.
    pub method: String,
}

/// Peak memory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Memory {
    /// Peak resident set size of the process, bytes (`None` where unavailable).
    pub peak_rss_bytes: Option<u64>,
    /// The same in MiB.
    pub peak_rss_mib: Option<f64>,
    /// How it was measured.
    pub method: String,
    /// GPU backends: device memory held by the backend's allocator at the end of the run, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_reserved_bytes: Option<u64>,
    /// The same in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_reserved_mib: Option<f64>,
    /// How the device figure was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_method: Option<String>,
}

/// Exact parameter counts of a model, by `require_grad`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamCounts {
    /// Scalars that receive gradients.
    pub trainable: usize,
    /// All scalars.
    pub total: usize,
}

/// Parameter counts of a LoRA run.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LoraParams {
    /// Parameters of the adapters (`sum r * (d_in + d_out)`): trainable count without the head.
    pub adapter: usize,
    /// Parameters of the head modules trained in full.
    pub head: usize,
}

/// Inference-time measurement on a split (see [`InferenceTiming::method`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InferenceTiming {
    /// Median wall-clock seconds of one pass over the split.
    pub median_seconds: f64,
    /// Seconds of each timed pass.
    pub pass_seconds: Vec<f64>,
    /// Examples per pass.
    pub examples: usize,
    /// Batch size.
    pub batch_size: usize,
    /// `examples / median_seconds`.
    pub examples_per_second: f64,
    /// How it was measured.
    pub method: String,
}

/// Where a model folder came from on the Hugging Face Hub.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubSource {
    /// Repository id (`org/name` or `name`).
    pub id: String,
    /// The revision asked for (`main` unless `@revision` was given; the commit when unknown).
    pub revision: String,
    /// The commit the snapshot holds.
    pub commit: String,
}

/// The score of a model that ignores its input: the train split's most frequent class predicted for
/// every dev row (regression: the train mean, whose correlation with anything is 0). A trained
/// model that does not clearly beat it has not learned the task.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MajorityBaseline {
    /// The constant prediction (a class name, or `mean 2.70` for STS-B).
    pub prediction: String,
    /// Its GLUE number (x100) on the dev rows the run was scored on.
    pub score: f64,
    /// MNLI: the same on the mismatched dev set, when scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_mismatched: Option<f64>,
}

/// `metrics.json`: the final numbers of a run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunMetrics {
    /// Recipe.
    pub method: Method,
    /// Task name.
    pub task: String,
    /// Model folder.
    pub model: String,
    /// The Hub repository and commit the model folder is a snapshot of, when it came from the Hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_hub: Option<HubSource>,
    /// Teacher run, for distillation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<String>,
    /// Backend the run used.
    pub device: String,
    /// Training examples per epoch.
    pub train_examples: usize,
    /// Dev examples (MNLI: matched).
    pub dev_examples: usize,
    /// MNLI: mismatched dev examples, when the data folder has that split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_mismatched_examples: Option<usize>,
    /// What a constant prediction scores on the same dev rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub majority_baseline: Option<MajorityBaseline>,
    /// Epochs trained.
    pub epochs: usize,
    /// Last epoch (what the paper reports).
    pub last: EpochRecord,
    /// Best epoch by dev score.
    pub best: EpochRecord,
    /// Exact parameter counts.
    pub params: ParamCounts,
    /// `100 * trainable / total`.
    pub trainable_percent: f64,
    /// LoRA runs: adapter parameters alone and the head's (trained in full, `modules_to_save`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_params: Option<LoraParams>,
    /// Training throughput.
    pub train: Throughput,
    /// Peak memory.
    pub memory: Memory,
    /// Inference time on dev (absent when `inference_passes = 0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference: Option<InferenceTiming>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: usize, score: f64, mm: Option<f64>) -> EpochRecord {
        EpochRecord {
            epoch,
            step: 10 * epoch,
            train_loss: 0.5,
            lr: 1e-4,
            score,
            score_mismatched: mm,
            dev: serde_json::json!({"accuracy": score / 100.0}),
            dev_mismatched: mm.map(|s| serde_json::json!({"accuracy": s / 100.0})),
            train_seconds: 1.0,
            eval_seconds: 0.5,
        }
    }

    fn metrics() -> RunMetrics {
        RunMetrics {
            method: Method::Fft,
            task: "mnli".into(),
            model: "m".into(),
            model_hub: None,
            teacher: None,
            device: "cpu".into(),
            train_examples: 100,
            dev_examples: 20,
            dev_mismatched_examples: Some(30),
            majority_baseline: Some(MajorityBaseline {
                prediction: "entailment".into(),
                score: 35.0,
                score_mismatched: Some(36.6),
            }),
            epochs: 2,
            last: record(2, 61.0, Some(62.5)),
            best: record(2, 61.0, Some(62.5)),
            params: ParamCounts {
                trainable: 5,
                total: 10,
            },
            trainable_percent: 50.0,
            lora_params: None,
            train: Throughput {
                examples: 200,
                seconds: 2.0,
                examples_per_second: 100.0,
                method: "m".into(),
            },
            memory: Memory {
                peak_rss_bytes: Some(1 << 20),
                peak_rss_mib: Some(1.0),
                method: "m".into(),
                device_reserved_bytes: None,
                device_reserved_mib: None,
                device_method: None,
            },
            inference: None,
        }
    }

    #[test]
    fn metrics_round_trip_with_every_optional_field() {
        let m = metrics();
        let text = serde_json::to_string_pretty(&m).unwrap();
        // The names other tools (and the paper tables) key on.
        for key in [
            "\"score_mismatched\": 62.5",
            "\"dev_mismatched_examples\": 30",
            "\"majority_baseline\"",
        ] {
            assert!(text.contains(key), "{key} missing from\n{text}");
        }
        assert_eq!(serde_json::from_str::<RunMetrics>(&text).unwrap(), m);
    }

    #[test]
    fn older_files_without_the_later_fields_still_load() {
        let mut value = serde_json::to_value(metrics()).unwrap();
        let obj = value.as_object_mut().unwrap();
        obj.remove("dev_mismatched_examples");
        obj.remove("majority_baseline");
        for key in ["last", "best"] {
            let rec = obj[key].as_object_mut().unwrap();
            rec.remove("score_mismatched");
            rec.remove("dev_mismatched");
        }
        let m: RunMetrics = serde_json::from_value(value).unwrap();
        assert_eq!(m.last.score_mismatched, None);
        assert_eq!(m.majority_baseline, None);
    }

    #[test]
    fn a_missing_required_field_is_an_error_naming_it() {
        let mut value = serde_json::to_value(metrics()).unwrap();
        value.as_object_mut().unwrap().remove("last");
        let err = serde_json::from_value::<RunMetrics>(value).unwrap_err();
        assert!(err.to_string().contains("`last`"), "{err}");
    }
}
