//! `cargo xtask reproduce`: runs a preset's grid through the `kdlora` binary (one process per run, so
//! each run's peak memory is its own), resuming finished runs, then writes the tables.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::preset::{Cell, Preset, Vars};
use crate::tables::{self, CellResult};

pub struct Options {
    pub preset: String,
    pub results: Option<PathBuf>,
    /// Only print the grid.
    pub dry_run: bool,
    /// Leave out the preset's Table 2 at the paper's model shapes.
    pub skip_paper_shapes: bool,
    /// Measure only the preset's Table 2 at the paper's model shapes (no training grid).
    pub paper_shapes_only: bool,
    /// A built `kdlora` binary to run (default: `KDLORA_BIN`, else built with cargo).
    pub kdlora: Option<PathBuf>,
    /// Run only these tasks of the preset.
    pub tasks: Option<Vec<String>>,
    /// Run every method with these seeds instead of the preset's.
    pub seeds: Option<Vec<u64>>,
    /// Also run the same cells in PyTorch + PEFT and write `compare-torch.md`.
    pub compare_torch: Option<crate::compare_torch::TorchOptions>,
}

pub fn run(root: &Path, shared: &Path, options: &Options) -> Result<()> {
    let preset_path = root
        .join("configs")
        .join(&options.preset)
        .join("reproduce.toml");
    let mut preset = Preset::load(&preset_path)?;
    if let Some(tasks) = &options.tasks {
        preset.keep_tasks(tasks)?;
    }
    if let Some(seeds) = &options.seeds {
        preset.override_seeds(seeds)?;
    }
    if options.paper_shapes_only {
        let Some(shapes) = &preset.paper_shapes else {
            bail!("{} has no [paper_shapes] section", preset_path.display());
        };
        let results = options
            .results
            .clone()
            .unwrap_or_else(|| root.join("results").join(&options.preset));
        let kdlora = match &options.kdlora {
            Some(bin) => bin.clone(),
            None => build_cli(root)?,
        };
        return crate::paper_shapes::run(root, &kdlora, shapes, &results);
    }
    run_preset(root, shared, options, &preset)
}

/// [`run`] for a preset already loaded (`options.preset` names it in the outputs).
pub fn run_preset(root: &Path, shared: &Path, options: &Options, preset: &Preset) -> Result<()> {
    let vars = Vars::new(BTreeMap::from([
        ("KDLORA_SHARED".to_string(), shared.display().to_string()),
        (
            "KDLORA_GLUE".to_string(),
            std::env::var("KDLORA_GLUE")
                .unwrap_or_else(|_| root.join("data/glue").display().to_string()),
        ),
    ]));
    let cells = preset.cells(&vars)?;
    check_inputs(&cells, &options.preset)?;
    let results = options
        .results
        .clone()
        .unwrap_or_else(|| root.join("results").join(&options.preset));
    eprintln!(
        "reproduce {}: {} ({} runs: {} families x {} tasks x {} methods x their seeds) -> {}",
        options.preset,
        preset.description,
        cells.len(),
        preset.families.len(),
        preset.tasks.len(),
        preset.methods().len(),
        results.display()
    );
    if options.dry_run {
        for cell in &cells {
            eprintln!(
                "  {} {} {} {}",
                cell.family, cell.task, cell.method, cell.config_id
            );
        }
        return Ok(());
    }
    let kdlora = match &options.kdlora {
        Some(bin) => bin.clone(),
        None => build_cli(root)?,
    };
    let grid_dir = results.join("grid");
    std::fs::create_dir_all(&grid_dir)
        .with_context(|| format!("creating {}", grid_dir.display()))?;

    let started = Instant::now();
    let mut ran_seconds = Vec::new();
    let mut outcomes: Vec<CellResult> = Vec::with_capacity(cells.len());
    let mut failures = Vec::new();
    for (i, cell) in cells.iter().enumerate() {
        let run_dir = cell.run_dir(&results);
        let label = format!(
            "[{}/{}] {} {} {} {}",
            i + 1,
            cells.len(),
            cell.family,
            cell.task,
            cell.method,
            cell.config_id
        );
        let metrics_path = run_dir.join("metrics.json");
        let teacher = if cell.method == "kd-lora" {
            match best_teacher(cell, &outcomes) {
                Some(dir) => Some(dir),
                None => {
                    let msg = format!("{label}: no finished FFT teacher run for this task");
                    eprintln!("{msg}; skipped");
                    failures.push(msg);
                    outcomes.push(CellResult::failed(cell, &run_dir));
                    continue;
                }
            }
        } else {
            None
        };
        let mut table = cell.run_config.clone();
        table.insert("out".into(), run_dir.display().to_string().into());
        if let Some(teacher) = &teacher {
            table.insert("teacher".into(), teacher.display().to_string().into());
        }
        let config_path = grid_dir.join(format!(
            "{}-{}-{}-{}.toml",
            cell.family, cell.task, cell.method, cell.config_id
        ));
        let config_text = toml::to_string_pretty(&table)?;
        // A finished run is reused only when it was trained from exactly this configuration: an
        // edited preset (or a different teacher) must not leave stale numbers in the tables.
        let unchanged = std::fs::read_to_string(&config_path).is_ok_and(|old| old == config_text);
        if metrics_path.is_file() && unchanged {
            eprintln!("{label}: finished earlier, reused");
            outcomes.push(CellResult::load(cell, &run_dir)?);
            continue;
        }
        if run_dir.exists() && !unchanged {
            eprintln!("{label}: its configuration changed since the earlier run; training afresh");
            std::fs::remove_dir_all(&run_dir)
                .with_context(|| format!("removing {}", run_dir.display()))?;
        }
        std::fs::write(&config_path, &config_text)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let eta = eta(&ran_seconds, cells.len() - i);
        eprintln!("{label}: training{eta}");
        let t0 = Instant::now();
        let mut cmd = Command::new(&kdlora);
        cmd.arg("train").arg("--config").arg(&config_path);
        if run_dir.exists() {
            cmd.arg("--resume");
        }
        let status = cmd
            .status()
            .with_context(|| format!("starting {}", kdlora.display()))?;
        let seconds = t0.elapsed().as_secs_f64();
        ran_seconds.push(seconds);
        if !status.success() || !metrics_path.is_file() {
            let msg = format!(
                "{label}: `kdlora train --config {}` failed ({status})",
                config_path.display()
            );
            eprintln!("{msg}");
            failures.push(msg);
            outcomes.push(CellResult::failed(cell, &run_dir));
            continue;
        }
        eprintln!("{label}: done in {seconds:.0} s");
        outcomes.push(CellResult::load(cell, &run_dir)?);
    }
    tables::write_all(&results, &options.preset, preset, &outcomes, &vars)?;
    eprintln!(
        "reproduce {}: {} runs in {:.1} min; tables in {}",
        options.preset,
        cells.len(),
        started.elapsed().as_secs_f64() / 60.0,
        results.display()
    );
    let shapes_failed = match &preset.paper_shapes {
        Some(shapes) if !options.skip_paper_shapes => {
            paper_shapes_if_changed(root, &kdlora, shapes, &results).err()
        }
        _ => None,
    };
    eprintln!(
        "reproduce {}: finished in {:.1} min",
        options.preset,
        started.elapsed().as_secs_f64() / 60.0
    );
    if let Some(e) = shapes_failed {
        failures.push(format!("{e:#}"));
    }
    if let Some(torch) = &options.compare_torch
        && let Err(e) = crate::compare_torch::run(
            root,
            &results,
            &options.preset,
            preset,
            &cells,
            &outcomes,
            torch,
        )
    {
        failures.push(format!("{e:#}"));
    }
    if !failures.is_empty() {
        bail!(
            "{} run(s) failed; the tables mark them. Rerun the same command to retry them:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    Ok(())
}

/// Table 2 at the paper's shapes, unless an earlier run measured it with the same settings.
fn paper_shapes_if_changed(
    root: &Path,
    kdlora: &Path,
    shapes: &crate::paper_shapes::PaperShapes,
    results: &Path,
) -> Result<()> {
    let json = results.join("table2-paper-shapes.json");
    let earlier = std::fs::read_to_string(&json)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    let same = earlier.as_ref().is_some_and(|v| {
        v["shapes"] == serde_json::to_value(shapes).unwrap_or_default()
            && v["rows"]
                .as_array()
                .is_some_and(|rows| rows.iter().all(|r| r["error"].is_null()))
    });
    if same {
        eprintln!("paper shapes: measured earlier with the same settings, reused");
        return Ok(());
    }
    crate::paper_shapes::run(root, kdlora, shapes, results)
}

fn eta(ran: &[f64], remaining: usize) -> String {
    if ran.is_empty() {
        return String::new();
    }
    let mean = ran.iter().sum::<f64>() / ran.len() as f64;
    format!(
        " (about {:.0} min left for {remaining} runs)",
        mean * remaining as f64 / 60.0
    )
}

/// The finished FFT run with the best last-epoch dev score for the same family and task.
fn best_teacher(cell: &Cell, outcomes: &[CellResult]) -> Option<PathBuf> {
    outcomes
        .iter()
        .filter(|o| o.family == cell.family && o.task == cell.task && o.method == "fft")
        .filter_map(|o| o.score.map(|s| (s, &o.run_dir)))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, dir)| dir.clone())
}

/// Fails early, naming what to get, when a preset's local models or data are absent.
fn check_inputs(cells: &[Cell], preset: &str) -> Result<()> {
    let mut missing = std::collections::BTreeSet::new();
    for cell in cells {
        for key in ["model", "data"] {
            let Some(value) = cell.run_config.get(key).and_then(|v| v.as_str()) else {
                continue;
            };
            let path = Path::new(value);
            // Hub ids (`bert-base-uncased`, `microsoft/deberta-v3-base`) are resolved by kdlora.
            let looks_local = path.is_absolute() || value.starts_with('.');
            if looks_local && !path.exists() {
                missing.insert(value.to_string());
            }
        }
    }
    if !missing.is_empty() {
        bail!(
            "preset `{preset}` needs these local folders, which do not exist:\n  {}\n\
             Point KDLORA_SHARED at a folder with models/all-MiniLM-L6-v2, models/paraphrase-MiniLM-L3-v2, \
             glue/ and glue-subsets/ (the cpu and quick presets), or KDLORA_GLUE at GLUE in its original \
             layout (`kdlora data download --task all --out DIR`, the paper preset). See data/README.md.",
            missing.into_iter().collect::<Vec<_>>().join("\n  ")
        );
    }
    Ok(())
}

/// Builds the `kdlora` binary in the profile xtask itself runs in and returns its path.
///
/// `KDLORA_BIN` names an already built binary instead (the end-to-end test uses the one
/// `cargo test --workspace` built).
pub(crate) fn build_cli(root: &Path) -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("KDLORA_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("KDLORA_BIN={} is not a file", bin.display());
        }
        return Ok(bin);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let release = !cfg!(debug_assertions);
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root).args(["build", "-p", "kdlora-cli"]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo build -p kdlora-cli")?;
    if !status.success() {
        bail!("building the kdlora binary failed ({status})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        root.join(target)
    };
    let bin = target
        .join(if release { "release" } else { "debug" })
        .join("kdlora");
    if !bin.is_file() {
        bail!("expected the kdlora binary at {}", bin.display());
    }
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The workspace root, `../shared` and the `kdlora` binary `cargo test --workspace` built;
    /// `None` (with the reason printed) when the shared models or the binary are absent.
    fn inputs() -> Option<(PathBuf, PathBuf, PathBuf)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let shared = std::env::var_os("KDLORA_SHARED")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("../shared"));
        if !shared.join("models/all-MiniLM-L6-v2").is_dir() {
            eprintln!("skipped: no shared models at {}", shared.display());
            return None;
        }
        // target/debug/deps/xtask-HASH -> target/debug/kdlora.
        let exe = std::env::current_exe().unwrap();
        let bin = exe.parent().and_then(Path::parent).unwrap().join("kdlora");
        if !bin.is_file() {
            eprintln!(
                "skipped: {} not built (run `cargo test --workspace`)",
                bin.display()
            );
            return None;
        }
        Some((root, shared, bin))
    }

    /// MNLI with both dev sets (a small fixture cut from the shared MNLI subset, laid out as the
    /// HF `glue` files): every run scores both, `metrics.json` carries both through the shared
    /// schema, and Table 1 gets the MNLI-m and MNLI-mm rows with their majority baselines.
    #[test]
    fn mnli_is_scored_on_matched_and_mismatched_dev_sets_end_to_end() {
        let Some((root, shared, bin)) = inputs() else {
            return;
        };
        let data = tempfile::tempdir().unwrap();
        let mnli = data.path().join("mnli");
        std::fs::create_dir_all(&mnli).unwrap();
        let lines = |file: &str| -> Vec<String> {
            std::fs::read_to_string(shared.join("glue-subsets/mnli").join(file))
                .unwrap()
                .lines()
                .map(String::from)
                .collect()
        };
        let (train, dev) = (lines("train.jsonl"), lines("validation.jsonl"));
        std::fs::write(mnli.join("train.jsonl"), train[..48].join("\n")).unwrap();
        std::fs::write(mnli.join("validation_matched.jsonl"), dev[..24].join("\n")).unwrap();
        std::fs::write(
            mnli.join("validation_mismatched.jsonl"),
            dev[24..40].join("\n"),
        )
        .unwrap();
        let preset: Preset = toml::from_str(&format!(
            r#"
description = "MNLI fixture"
top_k = 1
seeds = [1]
[[families]]
name = "MiniLM"
teacher = "${{KDLORA_SHARED}}/models/all-MiniLM-L6-v2"
student = "${{KDLORA_SHARED}}/models/paraphrase-MiniLM-L3-v2"
[[tasks]]
name = "mnli"
data = "{}"
[common]
epochs = 1
max_len = 32
inference_passes = 0
[common.lora]
modules_to_save = ["classifier", "pooler"]
[grid.fft]
lr = [5e-5]
[grid.lora]
lr = [5e-4]
[grid.kd-lora]
lr = [5e-4]
"#,
            data.path().display()
        ))
        .unwrap();
        let results = tempfile::tempdir().unwrap();
        let options = Options {
            preset: "mnli-fixture".into(),
            results: Some(results.path().to_path_buf()),
            dry_run: false,
            skip_paper_shapes: true,
            paper_shapes_only: false,
            kdlora: Some(bin),
            tasks: None,
            seeds: None,
            compare_torch: None,
        };
        run_preset(&root, &shared, &options, &preset).unwrap();
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(results.path().join("results.json")).unwrap(),
        )
        .unwrap();
        let runs = json["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 3);
        for run in runs {
            let mm = run["score_mismatched"]
                .as_f64()
                .expect("scored on mismatched");
            assert!((0.0..=100.0).contains(&mm), "{mm}");
            assert_eq!(run["dev_mismatched_examples"], 16);
            assert_eq!(run["dev_examples"], 24);
            let base = &run["majority_baseline"];
            assert!(
                base["score"].as_f64().is_some() && base["score_mismatched"].as_f64().is_some()
            );
        }
        let table1 = std::fs::read_to_string(results.path().join("table1.md")).unwrap();
        assert!(
            table1.contains("| MNLI-m |") && table1.contains("| MNLI-mm |"),
            "{table1}"
        );
        assert!(!table1.contains("failed"), "{table1}");
    }

    /// The `quick` preset end to end: six real training runs through the `kdlora` binary, then the
    /// tables. Skips when the shared models/data or the binary are absent.
    #[test]
    fn quick_preset_produces_every_output_with_sane_content() {
        let Some((root, shared, bin)) = inputs() else {
            return;
        };
        let results = tempfile::tempdir().unwrap();
        run(
            &root,
            &shared,
            &Options {
                preset: "quick".into(),
                results: Some(results.path().to_path_buf()),
                dry_run: false,
                skip_paper_shapes: true,
                paper_shapes_only: false,
                kdlora: Some(bin.clone()),
                tasks: None,
                seeds: None,
                compare_torch: None,
            },
        )
        .unwrap();
        for file in [
            "table1.md",
            "table2.md",
            "results.json",
            "scores-MiniLM.svg",
            "memory.svg",
            "inference.svg",
        ] {
            let path = results.path().join(file);
            assert!(path.is_file(), "{file} missing");
            assert!(
                std::fs::metadata(&path).unwrap().len() > 100,
                "{file} too small"
            );
        }
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(results.path().join("results.json")).unwrap(),
        )
        .unwrap();
        let runs = json["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 6);
        for run in runs {
            let score = run["score"]
                .as_f64()
                .expect("every run finished with a score");
            assert!((0.0..=100.0).contains(&score), "score {score}");
            assert!(run["peak_rss_mib"].as_f64().unwrap() > 10.0);
        }
        let table1 = std::fs::read_to_string(results.path().join("table1.md")).unwrap();
        assert!(table1.contains("| RTE |") && table1.contains("| MRPC |"));
        assert!(!table1.contains("failed"), "{table1}");
        let table2 = json["table2"].as_array().unwrap();
        assert_eq!(table2.len(), 3);
        // LoRA trains far fewer parameters than FFT; the L3 student is smaller than the L6 model.
        let trainable = |i: usize| table2[i]["trainable_r8_16_32_64"][0].as_u64().unwrap();
        assert!(trainable(1) * 100 < trainable(0));
        assert!(table2[2]["total"].as_u64() < table2[1]["total"].as_u64());
        // The grid resumes: a second run reuses every finished run (their metrics are untouched).
        let metrics = results
            .path()
            .join("runs/MiniLM/rte/fft/bs16_lr0.00005_wd0.01_s42/metrics.json");
        let before = std::fs::read(&metrics).unwrap();
        run(
            &root,
            &shared,
            &Options {
                preset: "quick".into(),
                results: Some(results.path().to_path_buf()),
                dry_run: false,
                skip_paper_shapes: true,
                paper_shapes_only: false,
                kdlora: Some(bin.clone()),
                tasks: None,
                seeds: None,
                compare_torch: None,
            },
        )
        .unwrap();
        assert_eq!(
            std::fs::read(&metrics).unwrap(),
            before,
            "finished run was retrained"
        );
    }
}
