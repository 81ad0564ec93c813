//! GLUE metrics, the per-task GLUE number and the paper's GLUE score.
//!
//! Conventions for degenerate inputs follow scikit-learn where it defines them: MCC is 0 when
//! its denominator is 0 (e.g. every prediction in one class), F1 is 0 when there are no
//! positive predictions and no positive labels. Pearson and Spearman are undefined for a
//! constant input; they are reported as 0 (no measurable correlation) with a warning.

use serde::Serialize;

use crate::data::Label;
use crate::error::GlueError;
use crate::task::{GlueTask, Metric};

fn check_lengths(a: usize, b: usize) -> Result<(), GlueError> {
    if a != b {
        return Err(GlueError::MetricInput(format!(
            "{a} predictions but {b} labels"
        )));
    }
    if a == 0 {
        return Err(GlueError::MetricInput("no examples".to_string()));
    }
    Ok(())
}

/// Fraction of predictions equal to the labels.
pub fn accuracy(predictions: &[usize], labels: &[usize]) -> Result<f64, GlueError> {
    check_lengths(predictions.len(), labels.len())?;
    let correct = predictions
        .iter()
        .zip(labels)
        .filter(|(p, l)| p == l)
        .count();
    Ok(correct as f64 / labels.len() as f64)
}

/// F1 of the positive class (label 1): `2 tp / (2 tp + fp + fn)`; 0 when that is 0/0.
pub fn f1(predictions: &[usize], labels: &[usize]) -> Result<f64, GlueError> {
    check_lengths(predictions.len(), labels.len())?;
    let (mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize);
    for (&p, &l) in predictions.iter().zip(labels) {
        match (p == 1, l == 1) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            (false, false) => {}
        }
    }
    let denominator = 2 * tp + fp + fn_;
    Ok(if denominator == 0 {
        0.0
    } else {
        2.0 * tp as f64 / denominator as f64
    })
}

/// Matthews correlation coefficient, multi-class form (Gorodkin's R_K, as scikit-learn);
/// for two classes it is the usual `(tp tn - fp fn) / sqrt(...)`. 0 when undefined.
pub fn matthews_corrcoef(predictions: &[usize], labels: &[usize]) -> Result<f64, GlueError> {
    check_lengths(predictions.len(), labels.len())?;
    let classes = predictions.iter().chain(labels).copied().max().unwrap_or(0) + 1;
    let mut predicted = vec![0f64; classes];
    let mut truth = vec![0f64; classes];
    let mut correct = 0f64;
    for (&p, &l) in predictions.iter().zip(labels) {
        predicted[p] += 1.0;
        truth[l] += 1.0;
        if p == l {
            correct += 1.0;
        }
    }
    let n = labels.len() as f64;
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let cov_pt = correct * n - dot(&predicted, &truth);
    let cov_pp = n * n - dot(&predicted, &predicted);
    let cov_tt = n * n - dot(&truth, &truth);
    let denominator = (cov_pp * cov_tt).sqrt();
    Ok(if denominator == 0.0 {
        0.0
    } else {
        cov_pt / denominator
    })
}

/// Pearson correlation; 0 (with a warning) when either input is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> Result<f64, GlueError> {
    check_lengths(x.len(), y.len())?;
    if x.iter().chain(y).any(|v| !v.is_finite()) {
        return Err(GlueError::MetricInput(
            "correlation input contains a non-finite value".to_string(),
        ));
    }
    let n = x.len() as f64;
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0f64, 0f64, 0f64);
    for (&a, &b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        tracing::warn!("correlation of a constant input is undefined; reporting 0");
        return Ok(0.0);
    }
    // Rounding can push |r| a hair past 1 for (anti)collinear inputs.
    Ok((sxy / (sxx.sqrt() * syy.sqrt())).clamp(-1.0, 1.0))
}

/// 1-based ranks with ties given the average of the ranks they span.
pub fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0f64; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        // Positions start..end (0-based) hold ranks start+1..=end; their mean:
        let rank = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

/// Spearman rank correlation: Pearson of the average ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> Result<f64, GlueError> {
    check_lengths(x.len(), y.len())?;
    if x.iter().chain(y).any(|v| !v.is_finite()) {
        return Err(GlueError::MetricInput(
            "correlation input contains a non-finite value".to_string(),
        ));
    }
    pearson(&average_ranks(x), &average_ranks(y))
}

/// Metrics of one task on one split. Values are fractions; `score` is the task's GLUE number
/// (mean of its metrics) x100.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskMetrics {
    /// Task name (`mnli`, ...).
    pub task: String,
    /// Number of examples scored.
    pub examples: usize,
    /// Accuracy (SST-2, MRPC, QQP, MNLI, QNLI, RTE, WNLI).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// F1 of class 1 (MRPC, QQP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub f1: Option<f64>,
    /// Matthews correlation (CoLA, AX).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcc: Option<f64>,
    /// Pearson correlation (STS-B).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pearson: Option<f64>,
    /// Spearman correlation (STS-B).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spearman: Option<f64>,
    /// The task's GLUE number x100.
    pub score: f64,
}

fn classes(values: &[Label], what: &str, task: GlueTask) -> Result<Vec<usize>, GlueError> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Label::Class(c) if *c < task.num_labels() => Ok(*c),
            Label::Class(c) => Err(GlueError::MetricInput(format!(
                "{what} {i}: class {c} out of range for {task} ({} classes)",
                task.num_labels()
            ))),
            Label::Score(_) => Err(GlueError::MetricInput(format!(
                "{what} {i}: a score where {task} needs a class"
            ))),
        })
        .collect()
}

fn scores(values: &[Label], what: &str, task: GlueTask) -> Result<Vec<f64>, GlueError> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Label::Score(s) => Ok(f64::from(*s)),
            Label::Class(_) => Err(GlueError::MetricInput(format!(
                "{what} {i}: a class where {task} needs a score"
            ))),
        })
        .collect()
}

/// Computes the task's metrics and GLUE number from predictions and gold labels (same order).
pub fn evaluate(
    task: GlueTask,
    predictions: &[Label],
    labels: &[Label],
) -> Result<TaskMetrics, GlueError> {
    check_lengths(predictions.len(), labels.len())?;
    let mut m = TaskMetrics {
        task: task.name().to_string(),
        examples: labels.len(),
        accuracy: None,
        f1: None,
        mcc: None,
        pearson: None,
        spearman: None,
        score: 0.0,
    };
    let mut values = Vec::new();
    if task.is_regression() {
        let p = scores(predictions, "prediction", task)?;
        let l = scores(labels, "label", task)?;
        for metric in task.metrics() {
            let v = match metric {
                Metric::Pearson => pearson(&p, &l)?,
                Metric::Spearman => spearman(&p, &l)?,
                other => unreachable_metric(task, *other)?,
            };
            store(&mut m, *metric, v);
            values.push(v);
        }
    } else {
        let p = classes(predictions, "prediction", task)?;
        let l = classes(labels, "label", task)?;
        for metric in task.metrics() {
            let v = match metric {
                Metric::Accuracy => accuracy(&p, &l)?,
                Metric::F1 => f1(&p, &l)?,
                Metric::Mcc => matthews_corrcoef(&p, &l)?,
                other => unreachable_metric(task, *other)?,
            };
            store(&mut m, *metric, v);
            values.push(v);
        }
    }
    m.score = 100.0 * values.iter().sum::<f64>() / values.len() as f64;
    Ok(m)
}

/// [`evaluate`] for class ids (classification tasks).
pub fn evaluate_classes(
    task: GlueTask,
    predictions: &[usize],
    labels: &[usize],
) -> Result<TaskMetrics, GlueError> {
    let p: Vec<Label> = predictions.iter().map(|&c| Label::Class(c)).collect();
    let l: Vec<Label> = labels.iter().map(|&c| Label::Class(c)).collect();
    evaluate(task, &p, &l)
}

/// [`evaluate`] for scores (STS-B).
pub fn evaluate_scores(
    task: GlueTask,
    predictions: &[f32],
    labels: &[f32],
) -> Result<TaskMetrics, GlueError> {
    let p: Vec<Label> = predictions.iter().map(|&s| Label::Score(s)).collect();
    let l: Vec<Label> = labels.iter().map(|&s| Label::Score(s)).collect();
    evaluate(task, &p, &l)
}

/// What a model that ignores its input scores: the constant prediction learned from `train`
/// labels, scored on `dev` labels with the task's GLUE number.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Baseline {
    /// The constant prediction: the name of train's most frequent class (ties: the lower class
    /// id), or `mean X.XX` for STS-B.
    pub prediction: String,
    /// Its GLUE number (x100) on `dev`.
    pub score: f64,
}

/// The majority-class baseline of a split: train's most frequent class predicted for every dev
/// row. For STS-B the train mean is predicted; a constant has no correlation with anything, so
/// the score is 0 (computed directly: Pearson of a constant is undefined and would warn).
pub fn majority_baseline(
    task: GlueTask,
    train: &[Label],
    dev: &[Label],
) -> Result<Baseline, GlueError> {
    if train.is_empty() || dev.is_empty() {
        return Err(GlueError::MetricInput(
            "a baseline needs train and dev labels".to_string(),
        ));
    }
    if task.is_regression() {
        let s = scores(train, "label", task)?;
        let mean = s.iter().sum::<f64>() / s.len() as f64;
        return Ok(Baseline {
            prediction: format!("mean {mean:.2}"),
            score: 0.0,
        });
    }
    let train = classes(train, "label", task)?;
    let mut counts = vec![0usize; task.num_labels().max(1)];
    for &c in &train {
        if c >= counts.len() {
            counts.resize(c + 1, 0);
        }
        counts[c] += 1;
    }
    // max_by_key keeps the last maximum; scanning in reverse makes ties go to the lower id.
    let (class, _) = counts
        .iter()
        .enumerate()
        .rev()
        .max_by_key(|(_, n)| **n)
        .unwrap_or((0, &0));
    let predictions = vec![Label::Class(class); dev.len()];
    let metrics = evaluate(task, &predictions, dev)?;
    Ok(Baseline {
        prediction: task
            .label_names()
            .get(class)
            .map_or_else(|| class.to_string(), |n| n.to_string()),
        score: metrics.score,
    })
}

fn unreachable_metric(task: GlueTask, metric: Metric) -> Result<f64, GlueError> {
    Err(GlueError::MetricInput(format!(
        "metric {metric:?} does not apply to {task}"
    )))
}

fn store(m: &mut TaskMetrics, metric: Metric, v: f64) {
    match metric {
        Metric::Accuracy => m.accuracy = Some(v),
        Metric::F1 => m.f1 = Some(v),
        Metric::Mcc => m.mcc = Some(v),
        Metric::Pearson => m.pearson = Some(v),
        Metric::Spearman => m.spearman = Some(v),
    }
}

/// A row of the paper's GLUE table (MNLI is two rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum GlueRow {
    /// CoLA (MCC).
    Cola,
    /// SST-2 (accuracy).
    Sst2,
    /// MRPC (mean of accuracy and F1).
    Mrpc,
    /// STS-B (mean of Pearson and Spearman).
    Stsb,
    /// QQP (mean of accuracy and F1).
    Qqp,
    /// MNLI matched (accuracy).
    MnliMatched,
    /// MNLI mismatched (accuracy).
    MnliMismatched,
    /// QNLI (accuracy).
    Qnli,
    /// RTE (accuracy).
    Rte,
    /// WNLI (accuracy).
    Wnli,
}

impl GlueRow {
    /// The ten rows of the paper's Table 1.
    pub const ALL: [GlueRow; 10] = [
        GlueRow::Cola,
        GlueRow::Sst2,
        GlueRow::Mrpc,
        GlueRow::Stsb,
        GlueRow::Qqp,
        GlueRow::MnliMatched,
        GlueRow::MnliMismatched,
        GlueRow::Qnli,
        GlueRow::Rte,
        GlueRow::Wnli,
    ];

    /// The row for a task and split (`None` for AX, which is not in the score).
    pub fn for_task(task: GlueTask, mismatched: bool) -> Option<GlueRow> {
        Some(match task {
            GlueTask::Cola => GlueRow::Cola,
            GlueTask::Sst2 => GlueRow::Sst2,
            GlueTask::Mrpc => GlueRow::Mrpc,
            GlueTask::Stsb => GlueRow::Stsb,
            GlueTask::Qqp => GlueRow::Qqp,
            GlueTask::Mnli if mismatched => GlueRow::MnliMismatched,
            GlueTask::Mnli => GlueRow::MnliMatched,
            GlueTask::Qnli => GlueRow::Qnli,
            GlueTask::Rte => GlueRow::Rte,
            GlueTask::Wnli => GlueRow::Wnli,
            GlueTask::Ax => return None,
        })
    }

    /// Row label as in the paper's table (`MNLI-m`, `STS-B`, ...).
    pub fn name(self) -> &'static str {
        match self {
            GlueRow::Cola => "CoLA",
            GlueRow::Sst2 => "SST-2",
            GlueRow::Mrpc => "MRPC",
            GlueRow::Stsb => "STS-B",
            GlueRow::Qqp => "QQP",
            GlueRow::MnliMatched => "MNLI-m",
            GlueRow::MnliMismatched => "MNLI-mm",
            GlueRow::Qnli => "QNLI",
            GlueRow::Rte => "RTE",
            GlueRow::Wnli => "WNLI",
        }
    }
}

/// One row's GLUE number (x100, as [`TaskMetrics::score`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TaskScore {
    /// The row.
    pub row: GlueRow,
    /// Its score x100.
    pub score: f64,
}

/// The paper's GLUE score: the plain mean of the ten rows (MNLI twice, WNLI included). Errors
/// unless every row appears exactly once.
pub fn glue_score(rows: &[TaskScore]) -> Result<f64, GlueError> {
    let mut problems = Vec::new();
    for row in GlueRow::ALL {
        match rows.iter().filter(|r| r.row == row).count() {
            0 => problems.push(format!("{} missing", row.name())),
            1 => {}
            n => problems.push(format!("{} given {n} times", row.name())),
        }
    }
    if let Some(bad) = rows.iter().find(|r| !r.score.is_finite()) {
        problems.push(format!("{} is not finite", bad.row.name()));
    }
    if !problems.is_empty() {
        return Err(GlueError::ScoreRows(problems.join(", ")));
    }
    Ok(rows.iter().map(|r| r.score).sum::<f64>() / rows.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn hand_computed_binary_cases() {
        // tp=2 (0,1), fp=1 (2), fn=1 (3), tn=1 (4)
        let p = [1, 1, 1, 0, 0];
        let l = [1, 1, 0, 1, 0];
        close(accuracy(&p, &l).unwrap(), 3.0 / 5.0);
        close(f1(&p, &l).unwrap(), 4.0 / 6.0);
        // (2*1 - 1*1) / sqrt(3*2*3*2) = 1/6
        close(matthews_corrcoef(&p, &l).unwrap(), 1.0 / 6.0);
    }

    #[test]
    fn mcc_all_one_class_prediction_is_zero() {
        close(
            matthews_corrcoef(&[1, 1, 1, 1], &[0, 1, 1, 0]).unwrap(),
            0.0,
        );
        close(matthews_corrcoef(&[0, 0, 0], &[0, 0, 0]).unwrap(), 0.0);
        close(matthews_corrcoef(&[0, 1, 0], &[0, 1, 0]).unwrap(), 1.0);
        close(matthews_corrcoef(&[1, 0], &[0, 1]).unwrap(), -1.0);
    }

    #[test]
    fn f1_without_positives_is_zero() {
        close(f1(&[0, 0], &[0, 0]).unwrap(), 0.0);
    }

    #[test]
    fn ranks_average_ties() {
        assert_eq!(
            average_ranks(&[10.0, 20.0, 20.0, 5.0, 20.0]),
            vec![2.0, 4.0, 4.0, 1.0, 4.0]
        );
        // x ranks [1, 2.5, 2.5, 4], y = x reversed-ish: hand computed.
        let x = [1.0, 2.0, 2.0, 3.0];
        let y = [4.0, 3.0, 2.0, 1.0];
        // rx = [1,2.5,2.5,4], ry = [4,3,2,1]; dx = [-1.5,0,0,1.5], dy = [1.5,.5,-.5,-1.5]
        // sxy = -2.25-2.25 = -4.5, sxx = 4.5, syy = 5 -> -4.5/sqrt(22.5)
        close(spearman(&x, &y).unwrap(), -4.5 / 22.5f64.sqrt());
    }

    #[test]
    fn pearson_hand_computed() {
        // x = [1,2,3], y = [1,3,2]: dx = [-1,0,1], dy = [-1,1,0]: sxy=1, sxx=2, syy=2 -> 0.5
        close(pearson(&[1.0, 2.0, 3.0], &[1.0, 3.0, 2.0]).unwrap(), 0.5);
        close(pearson(&[1.0, 1.0], &[1.0, 2.0]).unwrap(), 0.0);
        assert!(pearson(&[1.0], &[1.0, 2.0]).is_err());
        assert!(pearson(&[], &[]).is_err());
    }

    #[test]
    fn majority_baseline_predicts_trains_most_frequent_class() {
        let c = |v: &[usize]| v.iter().map(|&x| Label::Class(x)).collect::<Vec<_>>();
        // Train's majority is class 1; on dev [1,1,0,0,0] that is accuracy 0.4, F1 2*2/(4+3) = 4/7.
        let b = majority_baseline(GlueTask::Mrpc, &c(&[1, 1, 0]), &c(&[1, 1, 0, 0, 0])).unwrap();
        close(b.score, 100.0 * (0.4 + 4.0 / 7.0) / 2.0);
        assert_eq!(b.prediction, GlueTask::Mrpc.label_names()[1]);
        // A constant prediction has MCC 0 (CoLA); ties go to the lower class id.
        let b = majority_baseline(GlueTask::Cola, &c(&[0, 1]), &c(&[0, 1, 1])).unwrap();
        close(b.score, 0.0);
        assert_eq!(b.prediction, GlueTask::Cola.label_names()[0]);
        // Three classes: accuracy of the majority class.
        let b = majority_baseline(GlueTask::Mnli, &c(&[2, 2, 1]), &c(&[2, 0, 1, 2])).unwrap();
        close(b.score, 50.0);
        // STS-B: the train mean, score 0.
        let s = |v: &[f32]| v.iter().map(|&x| Label::Score(x)).collect::<Vec<_>>();
        let b = majority_baseline(GlueTask::Stsb, &s(&[1.0, 4.0]), &s(&[0.0, 5.0])).unwrap();
        assert_eq!((b.prediction.as_str(), b.score), ("mean 2.50", 0.0));
        assert!(majority_baseline(GlueTask::Sst2, &[], &c(&[1])).is_err());
        assert!(majority_baseline(GlueTask::Sst2, &c(&[1]), &[]).is_err());
    }

    #[test]
    fn evaluate_mrpc_and_stsb() {
        let p: Vec<Label> = [1, 1, 1, 0, 0].map(Label::Class).to_vec();
        let l: Vec<Label> = [1, 1, 0, 1, 0].map(Label::Class).to_vec();
        let m = evaluate(GlueTask::Mrpc, &p, &l).unwrap();
        close(m.score, 100.0 * (0.6 + 4.0 / 6.0) / 2.0);
        assert!(m.mcc.is_none() && m.pearson.is_none());
        let json = serde_json::to_value(&m).unwrap();
        assert!(json.get("mcc").is_none() && json.get("f1").is_some());

        let p: Vec<Label> = [1.0, 2.0, 3.0].map(Label::Score).to_vec();
        let l: Vec<Label> = [1.0, 3.0, 2.0].map(Label::Score).to_vec();
        let m = evaluate(GlueTask::Stsb, &p, &l).unwrap();
        close(m.pearson.unwrap(), 0.5);
        close(m.spearman.unwrap(), 0.5);
        close(m.score, 50.0);
        assert!(evaluate(GlueTask::Stsb, &[Label::Class(1)], &[Label::Score(1.0)]).is_err());
        assert!(evaluate(GlueTask::Rte, &[Label::Class(2)], &[Label::Class(1)]).is_err());
    }

    #[test]
    fn glue_score_reproduces_paper_bert_fft() {
        // Table 1, BERT FFT column, rows in table order; the paper prints 80.8.
        let values = [
            (GlueRow::Cola, 57.7),
            (GlueRow::MnliMatched, 84.5),
            (GlueRow::MnliMismatched, 84.9),
            (GlueRow::Mrpc, 89.0),
            (GlueRow::Qnli, 91.8),
            (GlueRow::Qqp, 89.7),
            (GlueRow::Rte, 71.6),
            (GlueRow::Sst2, 92.8),
            (GlueRow::Stsb, 89.5),
            (GlueRow::Wnli, 56.3),
        ];
        let rows: Vec<TaskScore> = values
            .iter()
            .map(|&(row, score)| TaskScore { row, score })
            .collect();
        let s = glue_score(&rows).unwrap();
        assert!((s - 80.78).abs() < 1e-9, "{s}");
        assert_eq!(format!("{s:.1}"), "80.8");
        let err = glue_score(&rows[1..]).unwrap_err().to_string();
        assert!(err.contains("CoLA missing"), "{err}");
        let mut dup = rows.clone();
        dup.push(rows[0]);
        assert!(
            glue_score(&dup)
                .unwrap_err()
                .to_string()
                .contains("2 times")
        );
    }
}
