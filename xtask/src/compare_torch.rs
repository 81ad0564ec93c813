//! `cargo xtask reproduce PRESET --compare-torch`: the preset's runs again in PyTorch +
//! transformers + PEFT (`bench/torch_recipe.py`, the same recipe read from each kdlora run's own
//! `config.toml`), one seed per cell, side by side with kdlora's seeds in `compare-torch.md`.
//!
//! The question it answers: does kdlora train like the PyTorch recipe it replaces? The random
//! streams (data order, fresh head, LoRA `A`, dropout) cannot be the same in both, so a PyTorch run
//! is compared with the spread of kdlora's seeds, not with one kdlora number.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::preset::{Cell, Preset};
use crate::tables::{CellResult, method_name, write_atomic};

/// The schema `bench/torch_recipe.py` writes (`metrics.json` of a PyTorch run).
pub const TORCH_SCHEMA: &str = "kdlora-torch-recipe/1";

/// How to run the PyTorch side.
pub struct TorchOptions {
    /// Python with torch, transformers and peft (`bench/requirements-torch.txt`).
    pub python: String,
    /// Worker threads for torch (default: all cores).
    pub threads: Option<usize>,
}

/// The part of a PyTorch run's `metrics.json` the comparison reads.
#[derive(Debug, Deserialize)]
struct TorchMetrics {
    schema: String,
    last: TorchEpoch,
    train_seconds: f64,
}

#[derive(Debug, Deserialize)]
struct TorchEpoch {
    score: f64,
    #[serde(default)]
    score_mismatched: Option<f64>,
}

/// One compared cell (family, task, method, configuration).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Comparison {
    pub family: String,
    pub task: String,
    pub method: String,
    pub config: String,
    /// kdlora's last-epoch scores, by seed.
    pub kdlora: Vec<(u64, f64)>,
    /// The PyTorch run's seed and last-epoch score (`None`: it failed).
    pub torch_seed: u64,
    pub torch: Option<f64>,
    pub torch_seconds: Option<f64>,
    pub torch_error: Option<String>,
}

impl Comparison {
    fn range(&self) -> Option<(f64, f64)> {
        let lo = self.kdlora.iter().map(|s| s.1).reduce(f64::min)?;
        let hi = self.kdlora.iter().map(|s| s.1).reduce(f64::max)?;
        Some((lo, hi))
    }

    /// Whether the PyTorch score lies inside kdlora's seed range widened by `slack` points.
    pub fn inside(&self, slack: f64) -> Option<bool> {
        let (lo, hi) = self.range()?;
        self.torch.map(|t| t >= lo - slack && t <= hi + slack)
    }
}

/// Points by which kdlora's seed range is widened before a PyTorch cell counts as outside it.
pub const SLACK: f64 = 1.0;

/// Runs `torch_recipe.py` for every cell's first seed (teachers first, reusing finished runs whose
/// kdlora configuration is unchanged) and writes `compare-torch.{md,json}` into `results`.
pub fn run(
    root: &Path,
    results: &Path,
    preset_name: &str,
    preset: &Preset,
    cells: &[Cell],
    outcomes: &[CellResult],
    options: &TorchOptions,
) -> Result<()> {
    let script = root.join("bench/torch_recipe.py");
    let torch_root = results.join("torch");
    let first_seed = |cell: &Cell| {
        cells
            .iter()
            .filter(|c| c.family == cell.family && c.task == cell.task && c.method == cell.method)
            .map(|c| c.seed)
            .min()
            == Some(cell.seed)
    };
    let todo: Vec<&Cell> = cells.iter().filter(|c| first_seed(c)).collect();
    let started = Instant::now();
    let mut torch_scores: BTreeMap<PathBuf, Result<TorchMetrics, String>> = BTreeMap::new();
    for (i, cell) in todo.iter().enumerate() {
        let label = format!(
            "[torch {}/{}] {} {} {} {}",
            i + 1,
            todo.len(),
            cell.family,
            cell.task,
            cell.method,
            cell.config_id
        );
        let kdlora_dir = cell.run_dir(results);
        let out = cell.run_dir(&torch_root);
        let config = kdlora_dir.join("config.toml");
        if !config.is_file() {
            eprintln!("{label}: the kdlora run has no config.toml; skipped");
            torch_scores.insert(out, Err("kdlora run missing".into()));
            continue;
        }
        let mut config_text = std::fs::read_to_string(&config)
            .with_context(|| format!("reading {}", config.display()))?;
        // A KD-LoRA cell distils from the PyTorch twin of kdlora's own teacher run; a retrained
        // teacher must retrain the student, so the teacher's stamp is part of the student's.
        let teacher = if crate::preset::uses_teacher(&cell.method) {
            match torch_teacher(&config_text, results, &torch_root) {
                Some(dir) => {
                    config_text.push_str(
                        &std::fs::read_to_string(dir.join("kdlora-config.toml"))
                            .unwrap_or_default(),
                    );
                    Some(dir)
                }
                None => {
                    eprintln!("{label}: no finished PyTorch run of its kdlora teacher; skipped");
                    torch_scores.insert(out, Err("no PyTorch teacher".into()));
                    continue;
                }
            }
        } else {
            None
        };
        let stamp = out.join("kdlora-config.toml");
        let metrics = out.join("metrics.json");
        let unchanged = std::fs::read_to_string(&stamp).is_ok_and(|t| t == config_text);
        if !(unchanged && metrics.is_file()) {
            if out.exists() {
                std::fs::remove_dir_all(&out)
                    .with_context(|| format!("removing {}", out.display()))?;
            }
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let mut cmd = Command::new(&options.python);
            cmd.arg(&script)
                .arg("--config")
                .arg(&config)
                .arg("--out")
                .arg(&out)
                .stdin(Stdio::null());
            if let Some(threads) = options.threads {
                cmd.args(["--threads", &threads.to_string()]);
            }
            if let Some(teacher) = &teacher {
                cmd.arg("--teacher").arg(teacher);
            }
            let log = out.join("torch.log");
            let log_file = std::fs::File::create(&log)
                .with_context(|| format!("creating {}", log.display()))?;
            cmd.stdout(log_file.try_clone()?).stderr(log_file);
            eprintln!(
                "{label}: training in PyTorch ({:.0} min so far; log {})",
                started.elapsed().as_secs_f64() / 60.0,
                log.display()
            );
            let status = cmd
                .status()
                .with_context(|| format!("starting {}", options.python))?;
            if !status.success() {
                let msg = format!(
                    "{label}: torch_recipe.py failed ({status}); see {}",
                    log.display()
                );
                eprintln!("{msg}");
                torch_scores.insert(out, Err(msg));
                continue;
            }
            write_atomic(&stamp, &config_text)?;
        } else {
            eprintln!("{label}: finished earlier, reused");
        }
        let parsed = std::fs::read_to_string(&metrics)
            .map_err(|e| format!("{}: {e}", metrics.display()))
            .and_then(|t| {
                serde_json::from_str::<TorchMetrics>(&t)
                    .map_err(|e| format!("{}: {e}", metrics.display()))
            })
            .and_then(|m| {
                if m.schema == TORCH_SCHEMA {
                    Ok(m)
                } else {
                    Err(format!(
                        "{}: schema `{}`, expected `{TORCH_SCHEMA}`",
                        metrics.display(),
                        m.schema
                    ))
                }
            });
        torch_scores.insert(out, parsed);
    }

    let mut rows = Vec::new();
    for cell in &todo {
        let out = cell.run_dir(&torch_root);
        let config = cell
            .config_id
            .rsplit_once("_s")
            .map_or(cell.config_id.clone(), |(c, _)| c.to_string());
        // kdlora's seeds of this cell's configuration, for one score of a run.
        let kdlora_scores = |score: fn(&CellResult) -> Option<f64>| -> Vec<(u64, f64)> {
            outcomes
                .iter()
                .filter(|o| {
                    o.family == cell.family
                        && o.task == cell.task
                        && o.method == cell.method
                        && o.config == config
                })
                .filter_map(|o| score(o).map(|s| (o.seed, s)))
                .collect()
        };
        let kdlora = kdlora_scores(|o| o.score);
        let torch = torch_scores.get(&out);
        rows.push(Comparison {
            family: cell.family.clone(),
            task: cell.task.clone(),
            method: cell.method.clone(),
            config: config.clone(),
            kdlora,
            torch_seed: cell.seed,
            torch: torch.and_then(|t| t.as_ref().ok()).map(|m| m.last.score),
            torch_seconds: torch.and_then(|t| t.as_ref().ok()).map(|m| m.train_seconds),
            torch_error: torch.and_then(|t| t.as_ref().err()).cloned(),
        });
        // MNLI's mismatched row, when both sides scored it.
        if let Some(Ok(m)) = torch
            && let Some(mm) = m.last.score_mismatched
        {
            let kdlora_mm = kdlora_scores(|o| o.score_mismatched);
            rows.push(Comparison {
                task: format!("{}-mm", cell.task),
                kdlora: kdlora_mm,
                torch: Some(mm),
                ..rows.last().cloned().expect("pushed above")
            });
        }
    }
    let md = markdown(preset_name, preset, &rows, started.elapsed().as_secs_f64());
    write_atomic(&results.join("compare-torch.md"), &md)?;
    write_atomic(
        &results.join("compare-torch.json"),
        &serde_json::to_string_pretty(&serde_json::json!({
            "preset": preset_name,
            "slack_points": SLACK,
            "rows": rows,
        }))?,
    )?;
    eprintln!(
        "compare-torch: {}",
        results.join("compare-torch.md").display()
    );
    let failed: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.torch_error.as_deref())
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} PyTorch run(s) failed:\n  {}",
            failed.len(),
            failed.join("\n  ")
        );
    }
    Ok(())
}

/// The PyTorch run a PyTorch KD-LoRA cell distils from: the twin (same path below the torch
/// folder) of the teacher run named in the kdlora run's `config.toml`, once it has a `model/`.
fn torch_teacher(kdlora_config: &str, results: &Path, torch_root: &Path) -> Option<PathBuf> {
    let table: toml::Table = toml::from_str(kdlora_config).ok()?;
    let teacher = Path::new(table.get("teacher")?.as_str()?);
    let relative = teacher.strip_prefix(results).ok()?;
    let dir = torch_root.join(relative);
    dir.join("model").is_dir().then_some(dir)
}

fn markdown(preset_name: &str, preset: &Preset, rows: &[Comparison], seconds: f64) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# kdlora vs PyTorch + PEFT: the same recipes ({preset_name} preset)\n"
    );
    let _ = writeln!(
        md,
        "{}. Every PyTorch run is `bench/torch_recipe.py` reading the kdlora run's own \
         `config.toml` (same rows, max_len, batch, lr, schedule, warm-up, weight-decay groups, \
         clipping, LoRA targets/r/alpha/dropout, trained head, KD T and alpha, teacher logits by \
         example index from its own PyTorch FFT teacher); what cannot be the same is the random \
         streams and the float kernels (bench/README.md). Last-epoch dev scores x100. A PyTorch \
         cell is *inside* when it lies in kdlora's range over seeds widened by {SLACK} point. \
         PyTorch time: {:.0} min.\n",
        preset.description,
        seconds / 60.0
    );
    let _ = writeln!(
        md,
        "| task | method | kdlora mean [min, max] (seeds) | PyTorch (seed) | PyTorch - kdlora mean | inside |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    let (mut inside, mut judged) = (0, 0);
    for r in rows {
        let values: Vec<f64> = r.kdlora.iter().map(|s| s.1).collect();
        let mean = crate::tables::mean_sd(&values).map(|(m, _)| m);
        let ours = match (mean, r.range()) {
            (Some(m), Some((lo, hi))) => format!("{m:.1} [{lo:.1}, {hi:.1}] ({})", values.len()),
            _ => "n/a".into(),
        };
        let theirs = match (&r.torch, &r.torch_error) {
            (Some(t), _) => format!("{t:.1} ({})", r.torch_seed),
            (None, Some(_)) => "failed".into(),
            (None, None) => "n/a".into(),
        };
        let diff = match (r.torch, mean) {
            (Some(t), Some(m)) => format!("{:+.1}", t - m),
            _ => "n/a".into(),
        };
        let verdict = match r.inside(SLACK) {
            Some(true) => {
                inside += 1;
                judged += 1;
                "yes"
            }
            Some(false) => {
                judged += 1;
                "**no**"
            }
            None => "n/a",
        };
        let _ = writeln!(
            md,
            "| {} | {} | {ours} | {theirs} | {diff} | {verdict} |",
            r.task,
            method_name(&r.method)
        );
    }
    let _ = writeln!(
        md,
        "\n{inside} of {judged} PyTorch cells inside kdlora's seed range +- {SLACK}."
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kdlora: &[f64], torch: Option<f64>) -> Comparison {
        Comparison {
            family: "F".into(),
            task: "rte".into(),
            method: "kd-lora".into(),
            config: "c".into(),
            kdlora: kdlora
                .iter()
                .enumerate()
                .map(|(i, &v)| (42 + i as u64, v))
                .collect(),
            torch_seed: 42,
            torch,
            torch_seconds: Some(1.0),
            torch_error: None,
        }
    }

    #[test]
    fn inside_means_within_the_seed_range_widened_by_the_slack() {
        let r = row(&[60.0, 62.0, 65.0], Some(66.0));
        assert_eq!(r.inside(SLACK), Some(true));
        assert_eq!(
            row(&[60.0, 62.0, 65.0], Some(66.1)).inside(SLACK),
            Some(false)
        );
        assert_eq!(
            row(&[60.0, 62.0, 65.0], Some(59.0)).inside(SLACK),
            Some(true)
        );
        assert_eq!(row(&[60.0], Some(58.9)).inside(SLACK), Some(false));
        assert_eq!(row(&[], Some(60.0)).inside(SLACK), None);
        assert_eq!(row(&[60.0], None).inside(SLACK), None);
    }

    #[test]
    fn the_table_has_one_line_per_cell_and_a_count() {
        let preset: Preset = toml::from_str(
            "description = \"d\"\ntop_k = 1\nseeds = [42]\n[[families]]\nname = \"F\"\n\
             teacher = \"/t\"\nstudent = \"/s\"\n[[tasks]]\nname = \"rte\"\ndata = \"/g\"\n\
             [grid.fft]\n[grid.lora]\n[grid.kd-lora]\n",
        )
        .unwrap();
        let mut failed = row(&[50.0], None);
        failed.torch_error = Some("boom".into());
        let md = markdown(
            "cpu",
            &preset,
            &[row(&[60.0, 62.0, 64.0], Some(63.5)), failed],
            60.0,
        );
        assert!(
            md.contains("| rte | KD-LoRA | 62.0 [60.0, 64.0] (3) | 63.5 (42) | +1.5 | yes |"),
            "{md}"
        );
        assert!(
            md.contains("| rte | KD-LoRA | 50.0 [50.0, 50.0] (1) | failed | n/a | n/a |"),
            "{md}"
        );
        assert!(md.contains("1 of 1 PyTorch cells inside"), "{md}");
    }
}
