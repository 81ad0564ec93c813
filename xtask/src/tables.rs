//! Aggregation of finished runs into the paper's tables: `table1.md`, `table2.md`, `results.json` and
//! SVG charts under `results/<preset>/`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kdlora_schema::{MajorityBaseline, RunMetrics};
use serde::Serialize;
use serde_json::Value;

use crate::paper;
use crate::params;
use crate::preset::{Cell, LORA_STUDENT, METHODS, Preset, Vars, uses_student};

/// What one finished (or failed) run contributed.
#[derive(Debug, Clone, Serialize)]
pub struct CellResult {
    pub family: String,
    pub task: String,
    pub subset: bool,
    pub method: String,
    /// Configuration without the seed (seeds of one configuration are averaged).
    pub config: String,
    pub seed: u64,
    pub run_dir: PathBuf,
    /// Last-epoch dev score (what the paper reports), x100.
    pub score: Option<f64>,
    /// Best-epoch dev score, x100.
    pub best_score: Option<f64>,
    /// MNLI mismatched last-epoch score when the run evaluated it.
    pub score_mismatched: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    /// GPU runs: device memory reserved by the allocator (what Table 2 reports when present).
    pub device_memory_mib: Option<f64>,
    pub inference_seconds: Option<f64>,
    pub train_examples_per_second: Option<f64>,
    pub trainable_params: Option<u64>,
    pub total_params: Option<u64>,
    /// Dev rows scored (MNLI: matched), for the chance margin.
    pub dev_examples: Option<usize>,
    /// MNLI mismatched dev rows scored.
    pub dev_mismatched_examples: Option<usize>,
    /// What a constant prediction scores on the same dev rows.
    pub majority_baseline: Option<MajorityBaseline>,
}

impl CellResult {
    fn empty(cell: &Cell, run_dir: &Path) -> Self {
        let config = cell
            .config_id
            .rsplit_once("_s")
            .map_or(cell.config_id.clone(), |(c, _)| c.to_string());
        CellResult {
            family: cell.family.clone(),
            task: cell.task.clone(),
            subset: cell.subset,
            method: cell.method.clone(),
            config,
            seed: cell.seed,
            run_dir: run_dir.to_path_buf(),
            score: None,
            best_score: None,
            score_mismatched: None,
            peak_rss_mib: None,
            device_memory_mib: None,
            inference_seconds: None,
            train_examples_per_second: None,
            trainable_params: None,
            total_params: None,
            dev_examples: None,
            dev_mismatched_examples: None,
            majority_baseline: None,
        }
    }

    /// A run that did not finish.
    pub fn failed(cell: &Cell, run_dir: &Path) -> Self {
        Self::empty(cell, run_dir)
    }

    /// Reads a finished run's `metrics.json`.
    pub fn load(cell: &Cell, run_dir: &Path) -> Result<Self> {
        let path = run_dir.join("metrics.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        // The struct `kdlora train` writes: a renamed field fails to compile here, not silently.
        let m: RunMetrics =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let mut r = Self::empty(cell, run_dir);
        r.score = Some(m.last.score);
        r.best_score = Some(m.best.score);
        r.score_mismatched = m.last.score_mismatched;
        r.peak_rss_mib = m.memory.peak_rss_mib;
        r.device_memory_mib = m.memory.device_reserved_mib;
        r.inference_seconds = m.inference.as_ref().map(|i| i.median_seconds);
        r.train_examples_per_second = Some(m.train.examples_per_second);
        r.trainable_params = Some(m.params.trainable as u64);
        r.total_params = Some(m.params.total as u64);
        r.dev_examples = Some(m.dev_examples);
        r.dev_mismatched_examples = m.dev_mismatched_examples;
        r.majority_baseline = m.majority_baseline;
        Ok(r)
    }
}

/// Display name of a task row.
fn row_name(task: &str) -> &'static str {
    match task {
        "cola" => "CoLA",
        "sst2" => "SST-2",
        "mrpc" => "MRPC",
        "stsb" => "STS-B",
        "qqp" => "QQP",
        "mnli" => "MNLI-m",
        "qnli" => "QNLI",
        "rte" => "RTE",
        "wnli" => "WNLI",
        _ => "?",
    }
}

pub(crate) fn method_name(method: &str) -> &'static str {
    match method {
        "fft" => "FFT",
        "lora" => "LoRA",
        "kd-lora" => "KD-LoRA",
        LORA_STUDENT => "LoRA (student, no KD)",
        _ => "?",
    }
}

/// Column of a method in the paper's Table 1 (the ablation has none).
fn paper_column(method: &str) -> Option<usize> {
    METHODS.iter().position(|m| *m == method)
}

/// Median of the `top_k` best configurations (each averaged over its seeds).
pub fn median_of_top_k(scores_by_config: &BTreeMap<String, Vec<f64>>, top_k: usize) -> Option<f64> {
    let mut means: Vec<f64> = scores_by_config
        .values()
        .filter_map(|v| mean_sd(v).map(|(mean, _)| mean))
        .collect();
    means.sort_by(|a, b| b.total_cmp(a));
    means.truncate(top_k);
    median(&mut means)
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// One row of Table 1 for one family.
#[derive(Debug, Serialize)]
pub struct Table1Row {
    pub family: String,
    pub row: String,
    pub subset: bool,
    /// One per method of [`Preset::methods`], in that order.
    pub scores: Vec<Option<f64>>,
    /// The majority-class baseline on the same dev rows (as the runs measured it).
    pub majority: Option<f64>,
    /// Dev rows the row is scored on.
    pub dev_examples: Option<usize>,
}

impl Table1Row {
    /// Whether a score is within the chance margin of the majority baseline: the method did not
    /// learn the task (or cannot be told apart from a constant prediction on this dev set).
    pub fn at_chance(&self, score: f64) -> bool {
        match (self.majority, self.dev_examples) {
            (Some(majority), Some(n)) => score < majority + chance_margin(n),
            _ => false,
        }
    }
}

/// Two binomial standard errors of an accuracy near 0.5 on `n` dev rows, in points (x100):
/// `2 * 100 * sqrt(0.25 / n) = 100 / sqrt(n)`. A score closer than this to the majority baseline
/// is not evidence that the task was learned (RTE's 277 rows: 6.0 points; CoLA's 1,043: 3.1).
pub fn chance_margin(n: usize) -> f64 {
    100.0 / (n.max(1) as f64).sqrt()
}

/// Table 1 rows per family, in preset task order, with MNLI-mm when evaluated.
pub fn table1_rows(preset: &Preset, results: &[CellResult]) -> Vec<Table1Row> {
    let methods = preset.methods();
    let mut rows = Vec::new();
    for family in &preset.families {
        for task in &preset.tasks {
            for mismatched in [false, true] {
                let mut scores = vec![None; methods.len()];
                let mut any = false;
                for (mi, method) in methods.iter().enumerate() {
                    let mut by_config: BTreeMap<String, Vec<f64>> = BTreeMap::new();
                    for r in results.iter().filter(|r| {
                        r.family == family.name && r.task == task.name && r.method == *method
                    }) {
                        let value = if mismatched {
                            r.score_mismatched
                        } else {
                            r.score
                        };
                        if let Some(v) = value {
                            by_config.entry(r.config.clone()).or_default().push(v);
                            any = true;
                        }
                    }
                    scores[mi] = median_of_top_k(&by_config, preset.top_k);
                }
                if mismatched && !any {
                    continue;
                }
                let row = if mismatched {
                    "MNLI-mm".to_string()
                } else {
                    row_name(&task.name).to_string()
                };
                // Every run of a task is scored on the same dev rows; any finished one says.
                let task_runs = || {
                    results
                        .iter()
                        .filter(|r| r.family == family.name && r.task == task.name)
                };
                let majority = task_runs().find_map(|r| {
                    let b = r.majority_baseline.as_ref()?;
                    if mismatched {
                        b.score_mismatched
                    } else {
                        Some(b.score)
                    }
                });
                let dev_examples = task_runs().find_map(|r| {
                    if mismatched {
                        r.dev_mismatched_examples
                    } else {
                        r.dev_examples
                    }
                });
                rows.push(Table1Row {
                    family: family.name.clone(),
                    row,
                    subset: task.subset,
                    scores,
                    majority,
                    dev_examples,
                });
            }
        }
    }
    rows
}

/// Scores of every seed of one configuration: the best one (by mean over its seeds) of a table cell.
#[derive(Debug, Serialize)]
pub struct SeedScores {
    pub family: String,
    pub task: String,
    pub method: String,
    pub config: String,
    /// `(seed, last-epoch dev score x100)`, by seed.
    pub scores: Vec<(u64, f64)>,
}

impl SeedScores {
    fn values(&self) -> Vec<f64> {
        self.scores.iter().map(|&(_, v)| v).collect()
    }
}

/// Mean and sample standard deviation (n - 1); the deviation is `None` for fewer than two values.
pub fn mean_sd(values: &[f64]) -> Option<(f64, Option<f64>)> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let sd = (values.len() > 1)
        .then(|| (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    Some((mean, sd))
}

/// For every family, task and method, the seeds of its best configuration (main rows, not MNLI-mm).
pub fn seed_scores(preset: &Preset, results: &[CellResult]) -> Vec<SeedScores> {
    let mut out = Vec::new();
    for family in &preset.families {
        for task in &preset.tasks {
            for method in preset.methods() {
                let mut by_config: BTreeMap<&str, Vec<(u64, f64)>> = BTreeMap::new();
                for r in results.iter().filter(|r| {
                    r.family == family.name && r.task == task.name && r.method == method
                }) {
                    if let Some(v) = r.score {
                        by_config.entry(&r.config).or_default().push((r.seed, v));
                    }
                }
                // Same ranking as the table cell: configurations by their mean over seeds.
                let mean = |s: &[(u64, f64)]| {
                    let values: Vec<f64> = s.iter().map(|&(_, v)| v).collect();
                    mean_sd(&values).map_or(f64::NEG_INFINITY, |(mean, _)| mean)
                };
                let best = by_config
                    .into_iter()
                    .max_by(|a, b| mean(&a.1).total_cmp(&mean(&b.1)));
                if let Some((config, mut scores)) = best {
                    scores.sort_by_key(|&(seed, _)| seed);
                    out.push(SeedScores {
                        family: family.name.clone(),
                        task: task.name.clone(),
                        method: method.to_string(),
                        config: config.to_string(),
                        scores,
                    });
                }
            }
        }
    }
    out
}

/// Markdown section with the spread over seeds, when some cell ran more than one seed: mean +- sample
/// standard deviation per method, and distillation's gain paired by seed (KD-LoRA minus LoRA on the
/// student with the same seed: same data order and adapter initialisation, so the pairing removes the
/// part of the noise both share).
fn seed_section(preset: &Preset, family: &str, seeds: &[SeedScores]) -> Option<String> {
    let fam: Vec<&SeedScores> = seeds.iter().filter(|s| s.family == family).collect();
    if !fam.iter().any(|s| s.scores.len() > 1) {
        return None;
    }
    let methods = preset.methods();
    let paired = methods.contains(&LORA_STUDENT);
    let mut md = String::new();
    let names: Vec<&str> = methods.iter().map(|m| method_name(m)).collect();
    let _ = writeln!(
        md,
        "Spread over seeds (best configuration of each cell): mean +- sample standard deviation (seeds).\n"
    );
    let _ = write!(md, "| task | {} |", names.join(" | "));
    let _ = writeln!(
        md,
        "{}",
        if paired {
            " KD minus no KD, paired by seed |"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "|---|{}{}",
        "---|".repeat(methods.len()),
        if paired { "---|" } else { "" }
    );
    for task in &preset.tasks {
        let find = |method: &str| {
            fam.iter()
                .find(|s| s.task == task.name && s.method == method)
                .copied()
        };
        let cell = |values: &[f64]| match mean_sd(values) {
            Some((mean, Some(sd))) => format!("{mean:.1} +- {sd:.1} ({})", values.len()),
            Some((mean, None)) => format!("{mean:.1} (1)"),
            None => "failed".into(),
        };
        let cells: Vec<String> = methods
            .iter()
            .map(|m| find(m).map_or("failed".into(), |s| cell(&s.values())))
            .collect();
        let star = if task.subset { "*" } else { "" };
        let _ = write!(
            md,
            "| {}{star} | {} |",
            row_name(&task.name),
            cells.join(" | ")
        );
        if paired {
            let diffs: Vec<f64> = match (find("kd-lora"), find(LORA_STUDENT)) {
                (Some(kd), Some(plain)) => paired_differences(kd, plain),
                _ => Vec::new(),
            };
            let text = match mean_sd(&diffs) {
                Some((mean, Some(sd))) => format!("{mean:+.1} +- {sd:.1} ({})", diffs.len()),
                Some((mean, None)) => format!("{mean:+.1} (1)"),
                None => "n/a".into(),
            };
            let _ = write!(md, " {text} |");
        }
        md.push('\n');
    }
    md.push('\n');
    Some(md)
}

/// The GLUE rows of the paper's Table 1; a family with exactly these gets the paper's GLUE score.
const GLUE_ROWS: [&str; 10] = [
    "CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI-m", "MNLI-mm", "QNLI", "RTE", "WNLI",
];

/// Label of the score row: the paper's GLUE score when the rows are its ten, else a plain mean.
fn score_label(rows: &[&Table1Row]) -> String {
    let mut names: Vec<&str> = rows.iter().map(|r| r.row.as_str()).collect();
    names.sort_unstable();
    let mut glue = GLUE_ROWS.to_vec();
    glue.sort_unstable();
    if names == glue {
        "**GLUE score** (mean of the 10 rows, MNLI twice, WNLI included, as the paper)".into()
    } else {
        match rows.len() {
            1 => "**Score** (the one row)".into(),
            n => format!("**Score** (mean of the {n} rows)"),
        }
    }
}

/// Distillation's gain over the no-KD student, paired by seed, summarised over a family's rows.
#[derive(Debug, Serialize, PartialEq)]
pub struct PairedGain {
    /// Mean over rows of each row's mean paired difference (points).
    pub mean: f64,
    /// Sample standard deviation over rows (`None` for one row).
    pub sd: Option<f64>,
    /// Rows with at least one seed pair.
    pub rows: usize,
    /// Rows where the mean paired difference is positive.
    pub wins: usize,
}

/// `a - b` for every seed both ran (same seed: same data order and adapter initialisation).
fn paired_differences(a: &SeedScores, b: &SeedScores) -> Vec<f64> {
    a.scores
        .iter()
        .filter_map(|&(seed, v)| {
            b.scores
                .iter()
                .find(|&&(s, _)| s == seed)
                .map(|&(_, p)| v - p)
        })
        .collect()
}

/// KD-LoRA minus LoRA(student) per row, over the seeds both ran (same seed: same data order and
/// adapter initialisation), then summarised over rows.
pub fn paired_kd_gain(seeds: &[SeedScores], family: &str) -> Option<PairedGain> {
    let per_row: Vec<f64> = seeds
        .iter()
        .filter(|s| s.family == family && s.method == "kd-lora")
        .filter_map(|kd| {
            let plain = seeds
                .iter()
                .find(|s| s.family == family && s.task == kd.task && s.method == LORA_STUDENT)?;
            mean_sd(&paired_differences(kd, plain)).map(|(mean, _)| mean)
        })
        .collect();
    let (mean, sd) = mean_sd(&per_row)?;
    Some(PairedGain {
        mean,
        sd,
        rows: per_row.len(),
        wins: per_row.iter().filter(|d| **d > 0.0).count(),
    })
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("failed".into(), |v| format!("{v:.1}"))
}

/// Writes every output of a preset.
pub fn write_all(
    results_dir: &Path,
    preset_name: &str,
    preset: &Preset,
    results: &[CellResult],
    vars: &Vars,
) -> Result<()> {
    let rows = table1_rows(preset, results);
    let seeds = seed_scores(preset, results);
    let with_paper = preset_name == "paper";
    let mut md = String::new();
    let _ = writeln!(md, "# Table 1: GLUE dev scores ({preset_name} preset)\n");
    let _ = writeln!(
        md,
        "{}. Each cell is the median of the top {} configuration(s) of the last-epoch dev score (x100), \
         as in the paper. CoLA: Matthews correlation; STS-B: mean of Pearson and Spearman; MRPC and QQP: \
         mean of accuracy and F1; others: accuracy.{}\n",
        preset.description,
        preset.top_k,
        if rows.iter().any(|r| r.subset) {
            " Rows marked * are scored on labelled subsets whose validation rows come from GLUE's train \
             split: not comparable to published dev scores."
        } else {
            ""
        }
    );
    let mut summary = Vec::new();
    for family in &preset.families {
        let fam_rows: Vec<&Table1Row> = rows.iter().filter(|r| r.family == family.name).collect();
        let _ = writeln!(
            md,
            "## {} (teacher-size model `{}`, student `{}`)\n",
            family.name,
            short_model(&family.teacher),
            short_model(&family.student)
        );
        let methods = preset.methods();
        let n_methods = methods.len();
        let column = |name: &str| methods.iter().position(|m| *m == name);
        let names: Vec<&str> = methods.iter().map(|m| method_name(m)).collect();
        let _ = writeln!(md, "| task | majority | {} |", names.join(" | "));
        let _ = writeln!(md, "|---|---|{}", "---|".repeat(n_methods));
        let mut sums = vec![0.0; n_methods];
        let mut complete = vec![true; n_methods];
        let paper_cell = |row: &str, mi: usize, ours: String| match (
            with_paper,
            paper_column(methods[mi]).and_then(|pc| paper::table1(row, &family.name, pc)),
        ) {
            (true, Some(p)) => format!("{ours} (paper {p:.1})"),
            _ => ours,
        };
        let mut any_chance = false;
        for row in &fam_rows {
            let cells: Vec<String> = (0..n_methods)
                .map(|mi| {
                    let text = match row.scores[mi] {
                        Some(v) if row.at_chance(v) => {
                            any_chance = true;
                            format!("{v:.1} (chance)")
                        }
                        other => fmt(other),
                    };
                    paper_cell(&row.row, mi, text)
                })
                .collect();
            let star = if row.subset { "*" } else { "" };
            let majority = row.majority.map_or("n/a".into(), |v| format!("{v:.1}"));
            let _ = writeln!(
                md,
                "| {}{star} | {majority} | {} |",
                row.row,
                cells.join(" | ")
            );
            for mi in 0..n_methods {
                match row.scores[mi] {
                    Some(v) => sums[mi] += v,
                    None => complete[mi] = false,
                }
            }
        }
        let n = fam_rows.len().max(1) as f64;
        let score: Vec<Option<f64>> = (0..n_methods)
            .map(|mi| complete[mi].then(|| sums[mi] / n))
            .collect();
        let score_cells: Vec<String> = (0..n_methods)
            .map(|mi| paper_cell("Score", mi, fmt(score[mi])))
            .collect();
        let majority_mean = fam_rows
            .iter()
            .map(|r| r.majority)
            .sum::<Option<f64>>()
            .map(|s| s / n);
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            score_label(&fam_rows),
            majority_mean.map_or("n/a".into(), |v| format!("{v:.1}")),
            score_cells.join(" | ")
        );
        let _ = writeln!(
            md,
            "\nmajority: the train rows' most frequent class predicted for every dev row (STS-B: a \
             constant, correlation 0), on the same dev rows as the runs.{}",
            if any_chance {
                " (chance): the score is less than 100/sqrt(n) points above it (two standard errors \
                 on n dev rows): the method did not learn the task at this budget, or cannot be told \
                 apart from a constant prediction on this dev set."
            } else {
                " Every score is more than 100/sqrt(n) points (two standard errors on n dev rows) \
                 above it."
            }
        );
        if fam_rows.iter().any(|r| r.row == "WNLI") {
            let _ = writeln!(
                md,
                "WNLI: GLUE's dev set is adversarial (a hypothesis of a dev example is sometimes \
                 shared with a train example of the other label), so a model that fits train \
                 scores at or below the majority baseline; the paper prints 56.3 (majority on the \
                 full dev set) for most WNLI cells. It counts in the score, as in the paper."
            );
        }
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(100.0 * a / b),
            _ => None,
        };
        let score_of = |name: &str| column(name).and_then(|mi| score[mi]);
        let of_lora = ratio(score_of("kd-lora"), score_of("lora"));
        let of_fft = ratio(score_of("kd-lora"), score_of("fft"));
        let _ = writeln!(
            md,
            "\nKD-LoRA keeps {} of LoRA's score and {} of FFT's (paper: 98.1% and 97% on average).",
            of_lora.map_or("n/a".into(), |v| format!("{v:.1}%")),
            of_fft.map_or("n/a".into(), |v| format!("{v:.1}%"))
        );
        let kd_gain = match (score_of("kd-lora"), score_of(LORA_STUDENT)) {
            (Some(kd), Some(plain)) => Some(kd - plain),
            _ => None,
        };
        let paired = paired_kd_gain(&seeds, &family.name);
        if let Some(gain) = &paired {
            let _ = writeln!(
                md,
                "Distillation: KD-LoRA minus LoRA on the same student without a teacher, paired by \
                 seed, is {:+.1} points on average over {} rows ({}; KD-LoRA ahead on {} \
                 of {}).",
                gain.mean,
                gain.rows,
                gain.sd
                    .map_or("one row".into(), |sd| format!("sd {sd:.1} over rows")),
                gain.wins,
                gain.rows
            );
        } else if let Some(gain) = kd_gain {
            let _ = writeln!(
                md,
                "Distillation adds {gain:+.1} points over LoRA on the same student without a teacher."
            );
        }
        md.push('\n');
        if let Some(section) = seed_section(preset, &family.name, &seeds) {
            md.push_str(&section);
        }
        let scores_json: serde_json::Map<String, Value> = methods
            .iter()
            .zip(&score)
            .map(|(m, s)| (m.replace('-', "_"), serde_json::json!(s)))
            .collect();
        summary.push(serde_json::json!({
            "family": family.name,
            "score": scores_json,
            "kd_lora_percent_of_lora": of_lora,
            "kd_lora_percent_of_fft": of_fft,
            "kd_gain_over_lora_student": kd_gain,
            "kd_gain_paired_by_seed": paired,
            "majority_score": majority_mean,
        }));
    }
    write_atomic(&results_dir.join("table1.md"), &md)?;

    let table2 = table2(preset, results, vars, with_paper)?;
    write_atomic(&results_dir.join("table2.md"), &table2.markdown)?;
    let json = serde_json::json!({
        "preset": preset_name,
        "description": preset.description,
        "top_k": preset.top_k,
        "methods": preset.methods(),
        "table1": rows,
        "seed_scores": seeds,
        "summary": summary,
        "table2": table2.rows,
        "runs": results,
    });
    write_atomic(
        &results_dir.join("results.json"),
        &serde_json::to_string_pretty(&json)?,
    )?;
    // Drawn from results.json alone, so that `cargo xtask charts` redraws them the same way.
    for (name, svg) in crate::charts::results_charts(&json)? {
        write_atomic(&results_dir.join(name), &svg)?;
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct Table2Row {
    family: String,
    model: String,
    method: String,
    trainable_r8_16_32_64: Vec<u64>,
    adapter_r8: u64,
    head: u64,
    total: u64,
    /// Trainable parameters counted in the preset's runs (their head may be wider than PEFT's).
    trainable_in_runs: Option<u64>,
    peak_rss_mib: Option<f64>,
    inference_seconds: Option<f64>,
    inference_task: Option<String>,
}

struct Table2 {
    markdown: String,
    rows: Vec<Table2Row>,
}

/// `config.json` of a model argument: a local folder's, or the committed copy for a hub id.
fn model_config(model: &str) -> Result<Value> {
    let local = Path::new(model).join("config.json");
    let path = if local.is_file() {
        local
    } else {
        let name = model.rsplit('/').next().unwrap_or(model);
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../configs/models")
            .join(format!("{name}.json"))
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn table2(
    preset: &Preset,
    results: &[CellResult],
    vars: &Vars,
    with_paper: bool,
) -> Result<Table2> {
    let mut md = String::new();
    let _ = writeln!(md, "# Table 2: parameters, memory and inference time\n");
    let _ = writeln!(
        md,
        "- Trainable parameters: exact closed-form counts for a 2-label head. FFT trains everything; \
         LoRA and KD-LoRA train the query/value adapters plus PEFT's default head (`classifier`). \
         `trainable in runs` is what the preset's runs counted (their `modules_to_save` may be wider). \
         Adapter-only counts are in `results.json`.\n\
         - Total: parameters of the classification model without adapters.\n\
         - Memory: peak resident memory of the training process (VmHWM of the `kdlora train` process: \
         weights, optimizer state, activations and the runtime; the teacher is not loaded during \
         KD-LoRA, whose teacher logits come from the store), MiB, median over the preset's tasks. GPU runs \
         report the device memory reserved by the allocator instead (`memory.device_reserved_mib`); the \
         paper's measure is allocated device memory, so compare ratios, not absolute values.\n\
         - Inference: median wall time of a full pass over the dev split of the named task (batch 32, \
         adapters merged), seconds.\n"
    );
    let _ = writeln!(
        md,
        "| family | model | method | trainable r=8 / 16 / 32 / 64 | trainable in runs | total | memory MiB | inference s (task) |{}",
        if with_paper {
            " paper memory MB / inference s |"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "|---|---|---|---|---|---|---|---|{}",
        if with_paper { "---|" } else { "" }
    );
    let mut rows = Vec::new();
    for family in &preset.families {
        for method in METHODS {
            let model = if uses_student(method) {
                &family.student
            } else {
                &family.teacher
            };
            let model = vars.expand(model)?;
            let cfg = model_config(&model)?;
            let mut trainable = Vec::new();
            let mut counts8 = None;
            for r in [8, 16, 32, 64] {
                let c = params::closed_form(&cfg, 2, r)?;
                if r == 8 {
                    counts8 = Some(c);
                }
                trainable.push(if method == "fft" {
                    c.total as u64
                } else {
                    (c.adapter + c.head) as u64
                });
            }
            let counts8 = counts8.expect("r = 8 is in the list");
            let runs: Vec<&CellResult> = results
                .iter()
                .filter(|r| r.family == family.name && r.method == method)
                .collect();
            // GPU runs report device memory (the paper's measure); CPU runs the process's peak RSS.
            let mut rss: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.device_memory_mib.or(r.peak_rss_mib))
                .collect();
            let mem = median(&mut rss);
            let inference_task = preset
                .tasks
                .iter()
                .map(|t| t.name.clone())
                .find(|t| t == "cola")
                .or_else(|| preset.tasks.first().map(|t| t.name.clone()));
            let mut t: Vec<f64> = runs
                .iter()
                .filter(|r| Some(&r.task) == inference_task.as_ref())
                .filter_map(|r| r.inference_seconds)
                .collect();
            let time = median(&mut t);
            let trainable_in_runs = runs.iter().find_map(|r| r.trainable_params);
            let short = model.rsplit('/').next().unwrap_or(&model).to_string();
            let paper_cell = if with_paper {
                match paper::table2(&family.name, method) {
                    Some((m, s)) => format!(" {m:.1} / {s:.2} |"),
                    None => " |".into(),
                }
            } else {
                String::new()
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |{}",
                family.name,
                short,
                method_name(method),
                trainable
                    .iter()
                    .map(|v| group_digits(*v))
                    .collect::<Vec<_>>()
                    .join(" / "),
                trainable_in_runs.map_or("n/a".into(), group_digits),
                group_digits(counts8.total as u64),
                mem.map_or("n/a".into(), |v| format!("{v:.0}")),
                match (&time, &inference_task) {
                    (Some(s), Some(task)) => format!("{s:.2} ({task})"),
                    _ => "n/a".into(),
                },
                paper_cell
            );
            rows.push(Table2Row {
                family: family.name.clone(),
                model: short,
                method: method.to_string(),
                trainable_r8_16_32_64: trainable,
                adapter_r8: counts8.adapter as u64,
                head: counts8.head as u64,
                total: counts8.total as u64,
                trainable_in_runs,
                peak_rss_mib: mem,
                inference_seconds: time,
                inference_task,
            });
        }
    }
    Ok(Table2 { markdown: md, rows })
}

/// A model argument without the machine-specific folder it lives in.
fn short_model(model: &str) -> String {
    model
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_string()
}

pub(crate) fn group_digits(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Writes through a temporary file and a rename, so no reader sees a half-written table.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    kdlora_schema::write_atomic(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_sd_match_closed_forms() {
        // 2, 4, 4, 4, 5, 5, 7, 9: mean 5, squared deviations sum to 32, sample variance 32 / 7.
        let (mean, sd) = mean_sd(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
        assert_eq!(mean, 5.0);
        assert!((sd.unwrap() - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_sd(&[3.0]), Some((3.0, None)));
        assert_eq!(mean_sd(&[]), None);
    }

    fn result(task: &str, method: &str, config: &str, seed: u64, score: f64) -> CellResult {
        CellResult {
            family: "F".into(),
            task: task.into(),
            subset: false,
            method: method.into(),
            config: config.into(),
            seed,
            run_dir: PathBuf::from("/r"),
            score: Some(score),
            best_score: None,
            score_mismatched: None,
            peak_rss_mib: None,
            device_memory_mib: None,
            inference_seconds: None,
            train_examples_per_second: None,
            trainable_params: None,
            total_params: None,
            dev_examples: Some(400),
            dev_mismatched_examples: None,
            majority_baseline: None,
        }
    }

    /// A preset of the paper's nine tasks on the committed BERT-base/DistilBERT configs.
    fn glue_preset() -> Preset {
        let mut text = String::from(
            "description = \"t\"\ntop_k = 1\nseeds = [1]\n[[families]]\nname = \"F\"\n\
             teacher = \"bert-base-uncased\"\nstudent = \"distilbert-base-uncased\"\n",
        );
        for task in [
            "cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli",
        ] {
            text.push_str(&format!("[[tasks]]\nname = \"{task}\"\ndata = \"/glue\"\n"));
        }
        text.push_str("[grid.fft]\n[grid.lora]\n[grid.lora-student]\n[grid.kd-lora]\n");
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn table1_prints_mnli_twice_the_glue_score_the_majority_and_chance_cells() {
        let preset = glue_preset();
        let mut results = Vec::new();
        for task in [
            "cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli",
        ] {
            for (method, score) in [
                ("fft", 80.0),
                ("lora", 78.0),
                ("lora-student", 70.0),
                ("kd-lora", 72.0),
            ] {
                let mut r = result(task, method, "a", 1, score);
                r.majority_baseline = Some(MajorityBaseline {
                    prediction: "x".into(),
                    // RTE's LoRA(student) at 70 is within 5 points (400 rows) of 66.
                    score: if task == "rte" { 66.0 } else { 50.0 },
                    score_mismatched: (task == "mnli").then_some(40.0),
                });
                if task == "mnli" {
                    r.score_mismatched = Some(score + 1.0);
                    r.dev_mismatched_examples = Some(300);
                }
                results.push(r);
            }
        }
        let rows = table1_rows(&preset, &results);
        assert_eq!(rows.len(), 10);
        let mm = rows.iter().find(|r| r.row == "MNLI-mm").unwrap();
        assert_eq!(
            mm.scores,
            vec![Some(81.0), Some(79.0), Some(71.0), Some(73.0)]
        );
        assert_eq!((mm.majority, mm.dev_examples), (Some(40.0), Some(300)));
        assert!((chance_margin(400) - 5.0).abs() < 1e-12);
        let rte = rows.iter().find(|r| r.row == "RTE").unwrap();
        assert!(rte.at_chance(70.9) && !rte.at_chance(71.0));

        let dir = tempfile::tempdir().unwrap();
        let vars = Vars::new(BTreeMap::new());
        write_all(dir.path(), "t", &preset, &results, &vars).unwrap();
        let md = std::fs::read_to_string(dir.path().join("table1.md")).unwrap();
        for needle in [
            "| task | majority | FFT | LoRA | LoRA (student, no KD) | KD-LoRA |",
            "| MNLI-m | 50.0 | 80.0 | 78.0 | 70.0 | 72.0 |",
            "| MNLI-mm | 40.0 | 81.0 | 79.0 | 71.0 | 73.0 |",
            "| RTE | 66.0 | 80.0 | 78.0 | 70.0 (chance) | 72.0 |",
            // (9 * 80 + 81) / 10 = 80.1; majorities (8 * 50 + 66 + 40) / 10 = 50.6.
            "| **GLUE score** (mean of the 10 rows, MNLI twice, WNLI included, as the paper) | 50.6 | 80.1 |",
            "(chance): the score is less than 100/sqrt(n) points",
            "WNLI: GLUE's dev set is adversarial",
            "KD-LoRA keeps",
            "paired by seed, is +2.0 points on average over 9 rows (sd 0.0 over rows; KD-LoRA ahead on 9 of 9)",
        ] {
            assert!(md.contains(needle), "missing `{needle}` in\n{md}");
        }
        let json: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("results.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(json["summary"][0]["kd_gain_paired_by_seed"]["wins"], 9);

        // Without MNLI-mm the rows are not the paper's ten: a plain mean, labelled as such.
        let no_mm: Vec<CellResult> = results
            .into_iter()
            .map(|mut r| {
                r.score_mismatched = None;
                r
            })
            .collect();
        write_all(dir.path(), "t", &preset, &no_mm, &vars).unwrap();
        let md = std::fs::read_to_string(dir.path().join("table1.md")).unwrap();
        assert!(md.contains("| **Score** (mean of the 9 rows) |"), "{md}");
        assert!(!md.contains("MNLI-mm"), "{md}");
    }

    #[test]
    fn cell_results_load_the_metrics_file_kdlora_writes() {
        use kdlora_schema::{EpochRecord, Memory, Method, ParamCounts, Throughput};
        let record = |score| EpochRecord {
            epoch: 1,
            step: 1,
            train_loss: 0.1,
            lr: 0.0,
            score,
            score_mismatched: Some(score + 1.0),
            dev: Value::Null,
            dev_mismatched: None,
            train_seconds: 1.0,
            eval_seconds: 1.0,
        };
        let metrics = RunMetrics {
            method: Method::Fft,
            task: "mnli".into(),
            model: "m".into(),
            model_hub: None,
            teacher: None,
            device: "cpu".into(),
            train_examples: 10,
            dev_examples: 7,
            dev_mismatched_examples: Some(9),
            majority_baseline: Some(MajorityBaseline {
                prediction: "entailment".into(),
                score: 35.0,
                score_mismatched: Some(36.0),
            }),
            epochs: 1,
            last: record(60.0),
            best: record(61.0),
            params: ParamCounts {
                trainable: 3,
                total: 4,
            },
            trainable_percent: 75.0,
            lora_params: None,
            train: Throughput {
                examples: 10,
                seconds: 1.0,
                examples_per_second: 10.0,
                method: "m".into(),
            },
            memory: Memory {
                peak_rss_bytes: None,
                peak_rss_mib: Some(12.0),
                method: "m".into(),
                device_reserved_bytes: None,
                device_reserved_mib: None,
                device_method: None,
            },
            inference: None,
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("metrics.json"),
            serde_json::to_string(&metrics).unwrap(),
        )
        .unwrap();
        let preset = glue_preset();
        let cell = preset
            .cells(&Vars::new(BTreeMap::new()))
            .unwrap()
            .into_iter()
            .find(|c| c.task == "mnli")
            .unwrap();
        let r = CellResult::load(&cell, dir.path()).unwrap();
        assert_eq!(
            (r.score, r.best_score, r.score_mismatched),
            (Some(60.0), Some(61.0), Some(61.0))
        );
        assert_eq!(
            (r.dev_examples, r.dev_mismatched_examples),
            (Some(7), Some(9))
        );
        assert_eq!(r.majority_baseline, metrics.majority_baseline);
        assert_eq!((r.peak_rss_mib, r.trainable_params), (Some(12.0), Some(3)));
        // A file that is not a run's metrics is an error naming it.
        std::fs::write(dir.path().join("metrics.json"), "{\"last\": {}}").unwrap();
        let err = format!("{:#}", CellResult::load(&cell, dir.path()).unwrap_err());
        assert!(err.contains("metrics.json"), "{err}");
    }

    #[test]
    fn seed_section_pairs_distillation_by_seed_and_uses_the_best_configuration() {
        let preset: Preset = toml::from_str(
            r#"
description = "t"
top_k = 1
seeds = [1, 2, 3]
[[families]]
name = "F"
teacher = "/t"
student = "/s"
[[tasks]]
name = "sst2"
data = "/glue"
[grid.fft]
seeds = [1]
[grid.lora]
seeds = [1]
[grid.lora-student]
[grid.kd-lora]
"#,
        )
        .unwrap();
        let mut results = vec![
            result("sst2", "fft", "a", 1, 90.0),
            result("sst2", "lora", "a", 1, 88.0),
            // A worse configuration of the ablation must not be picked.
            result("sst2", "lora-student", "bad", 1, 10.0),
        ];
        for (seed, plain, kd) in [(1, 80.0, 82.0), (2, 70.0, 73.0), (3, 75.0, 76.0)] {
            results.push(result("sst2", "lora-student", "a", seed, plain));
            results.push(result("sst2", "kd-lora", "a", seed, kd));
        }
        let seeds = seed_scores(&preset, &results);
        let md = seed_section(&preset, "F", &seeds).unwrap();
        // no KD: 80, 70, 75 -> 75 +- 5; KD: 82, 73, 76 -> 77 +- 4.58; paired 2, 3, 1 -> +2 +- 1.
        assert!(md.contains("| SST-2 | 90.0 (1) | 88.0 (1) | 75.0 +- 5.0 (3) | 77.0 +- 4.6 (3) | +2.0 +- 1.0 (3) |"), "{md}");
        // One seed everywhere: no section.
        let single: Vec<CellResult> = results.into_iter().filter(|r| r.seed == 1).collect();
        assert!(seed_section(&preset, "F", &seed_scores(&preset, &single)).is_none());
    }

    #[test]
    fn median_of_top_k_matches_hand_computed_cases() {
        let m = |pairs: &[(&str, &[f64])], k| {
            let map: BTreeMap<String, Vec<f64>> = pairs
                .iter()
                .map(|(c, v)| (c.to_string(), v.to_vec()))
                .collect();
            median_of_top_k(&map, k)
        };
        // top 3 of {90, 80, 70, 60} = {90, 80, 70}: median 80
        assert_eq!(
            m(
                &[
                    ("a", &[90.0]),
                    ("b", &[80.0]),
                    ("c", &[70.0]),
                    ("d", &[60.0])
                ],
                3
            ),
            Some(80.0)
        );
        // top 2 = {90, 80}: median 85
        assert_eq!(
            m(&[("a", &[90.0]), ("b", &[80.0]), ("c", &[70.0])], 2),
            Some(85.0)
        );
        // seeds of one config are averaged first: a = 75, b = 80
        assert_eq!(m(&[("a", &[70.0, 80.0]), ("b", &[80.0])], 1), Some(80.0));
        assert_eq!(m(&[], 6), None);
    }

    #[test]
    fn digits_are_grouped() {
        assert_eq!(group_digits(294_912), "294,912");
        assert_eq!(group_digits(109_483_778), "109,483,778");
        assert_eq!(group_digits(12), "12");
    }
}
