//! `cargo xtask fuzz --minutes N [--target NAME,...]`: the long form of the fuzz harness in
//! `tests/tests/integration/fuzz/`, one process per target (an abort in one loader, such as a
//! failed allocation, then ends only that target), and a table of what each found.
//!
//! The harness is built with `cargo test --workspace --no-run`, the build CI makes, so the same
//! features are resolved and nothing of Burn is rebuilt. Its binary is then copied and run
//! directly for every target: edits to the tree during an hour of fuzzing neither trigger a
//! rebuild nor change the code under test halfway.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// What `cargo xtask fuzz` was asked to do.
pub struct Options {
    pub minutes: f64,
    pub targets: Option<Vec<String>>,
    pub seed: Option<u64>,
    pub out: Option<PathBuf>,
    pub memory_mb: Option<u64>,
    pub timeout_ms: Option<u64>,
}

/// One target's report as the harness writes it (`engine::Report`).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
struct Report {
    target: String,
    seed: u64,
    executions: u64,
    seconds: f64,
    crashes: u64,
    crashing_executions: u64,
    hangs: u64,
    accepted: u64,
    outcomes: u64,
    corpus: u64,
    slowest_ms: f64,
    peak_memory_mb: f64,
    crash_dirs: Vec<String>,
    rejected_seeds: Vec<String>,
    /// Set here, not by the harness: the process ended without a report (an abort).
    aborted: Option<String>,
}

impl Report {
    fn failed(&self) -> bool {
        self.crashes + self.hangs > 0 || self.aborted.is_some() || !self.rejected_seeds.is_empty()
    }
}

/// Builds the end-to-end test binary (when needed) and returns its path.
fn build_harness(root: &Path) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(&cargo)
        // Exactly CI's build (all test targets): a narrower selection (`--test integration`)
        // leaves out other targets' dev-dependencies, whose features would then differ.
        .args([
            "test",
            "--workspace",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(root)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("starting {cargo} test --no-run"))?;
    if !output.status.success() {
        bail!("building the fuzz harness failed ({})", output.status);
    }
    // Several packages have an `integration` test; the harness is kdlora-e2e's (tests/).
    let manifest = root.join("tests").join("Cargo.toml").canonicalize()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "integration")
        .filter(|m| m["manifest_path"].as_str().map(Path::new) == Some(manifest.as_path()))
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo named no executable for kdlora-e2e's integration tests")
}

fn run_harness(binary: &Path, root: &Path, envs: &[(&str, String)]) -> Result<ExitStatus> {
    Command::new(binary)
        .args(["--ignored", "--exact", "fuzz::long_form", "--nocapture"])
        // Where `cargo test` runs a package's tests.
        .current_dir(root.join("tests"))
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .status()
        .with_context(|| format!("starting {}", binary.display()))
}

pub fn run(root: &Path, opts: &Options) -> Result<()> {
    if opts.minutes.is_nan() || opts.minutes <= 0.0 {
        bail!("--minutes must be positive");
    }
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| root.join("target").join("fuzz"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.canonicalize()?;

    let built = build_harness(root)?;
    let binary = out.join("harness");
    std::fs::copy(&built, &binary)
        .with_context(|| format!("copying {} to {}", built.display(), binary.display()))?;
    let list = out.join("targets.txt");
    let status = run_harness(
        &binary,
        root,
        &[("KDLORA_FUZZ_LIST", list.display().to_string())],
    )?;
    if !status.success() {
        bail!("listing the fuzz targets failed ({status})");
    }
    let known: Vec<String> = std::fs::read_to_string(&list)
        .with_context(|| format!("reading {}", list.display()))?
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect();
    let selected = match &opts.targets {
        Some(names) => {
            if let Some(unknown) = names.iter().find(|n| !known.contains(n)) {
                bail!(
                    "unknown fuzz target {unknown:?} (known: {})",
                    known.join(", ")
                );
            }
            names.clone()
        }
        None => known,
    };

    let seconds = opts.minutes * 60.0;
    eprintln!(
        "fuzzing {} target(s) for {} min each: {}",
        selected.len(),
        opts.minutes,
        selected.join(", ")
    );
    let mut reports = Vec::new();
    for name in &selected {
        let report_path = out.join(format!("{name}.json"));
        let _ = std::fs::remove_file(&report_path);
        let mut envs = vec![
            ("KDLORA_FUZZ_SECONDS", seconds.to_string()),
            ("KDLORA_FUZZ_TARGET", name.clone()),
            ("KDLORA_FUZZ_REPORT", report_path.display().to_string()),
            ("KDLORA_FUZZ_DIR", out.display().to_string()),
        ];
        if let Some(seed) = opts.seed {
            envs.push(("KDLORA_FUZZ_SEED", seed.to_string()));
        }
        if let Some(mb) = opts.memory_mb {
            envs.push(("KDLORA_FUZZ_MEMORY_MB", mb.to_string()));
        }
        if let Some(ms) = opts.timeout_ms {
            envs.push(("KDLORA_FUZZ_TIMEOUT_MS", ms.to_string()));
        }
        let status = run_harness(&binary, root, &envs)?;
        let mut report = std::fs::read_to_string(&report_path)
            .ok()
            .and_then(|text| serde_json::from_str::<Vec<Report>>(&text).ok())
            .and_then(|mut r| r.pop())
            .unwrap_or_else(|| Report {
                target: name.clone(),
                ..Report::default()
            });
        if report.executions == 0 && !status.success() {
            report.aborted = Some(format!(
                "the test process ended ({status}) without a report; rerun with \
                 KDLORA_FUZZ_SAVE_EACH=1 (the last input is then in {}/crashes/{name}/last-input/)",
                out.display()
            ));
        }
        reports.push(report);
    }

    let table = render(&reports);
    println!("\n{table}");
    let machine = format!(
        "{} logical CPUs, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::env::consts::ARCH
    );
    std::fs::write(
        out.join("report.md"),
        format!("{table}\nmachine: {machine}\n"),
    )?;
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&reports)? + "\n",
    )?;
    eprintln!(
        "reports: {} and report.json; crash inputs under {}",
        out.join("report.md").display(),
        out.join("crashes").display()
    );
    let failed: Vec<&Report> = reports.iter().filter(|r| r.failed()).collect();
    if !failed.is_empty() {
        for r in &failed {
            eprintln!(
                "{}: {} crash(es), {} hang(s){}{}",
                r.target,
                r.crashes,
                r.hangs,
                r.crash_dirs
                    .iter()
                    .map(|d| format!("\n  {d}"))
                    .collect::<String>(),
                r.aborted
                    .as_deref()
                    .map(|a| format!("\n  {a}"))
                    .unwrap_or_default()
            );
        }
        bail!("fuzzing found problems in {} target(s)", failed.len());
    }
    Ok(())
}

/// The reports as a Markdown table (the form the README quotes).
fn render(reports: &[Report]) -> String {
    let mut out = String::from(
        "| target | executions | minutes | exec/s | accepted | outcomes | crashes | hangs | slowest |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut total = (0u64, 0.0f64, 0u64, 0u64);
    for r in reports {
        let crashes = if r.aborted.is_some() {
            "abort".to_string()
        } else {
            r.crashes.to_string()
        };
        out.push_str(&format!(
            "| {} | {} | {:.1} | {:.0} | {:.1}% | {} | {} | {} | {:.1} ms |\n",
            r.target,
            r.executions,
            r.seconds / 60.0,
            r.executions as f64 / r.seconds.max(1e-9),
            100.0 * r.accepted as f64 / r.executions.max(1) as f64,
            r.outcomes,
            crashes,
            r.hangs,
            r.slowest_ms
        ));
        total.0 += r.executions;
        total.1 += r.seconds;
        total.2 += r.crashes;
        total.3 += r.hangs;
    }
    out.push_str(&format!(
        "| **all** | {} | {:.1} | | | | {} | {} | |\n",
        total.0,
        total.1 / 60.0,
        total.2,
        total.3
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_render_and_fail_on_crashes_hangs_and_aborts() {
        let ok = Report {
            target: "glue_tsv".into(),
            executions: 1200,
            seconds: 60.0,
            accepted: 300,
            ..Report::default()
        };
        let table = render(std::slice::from_ref(&ok));
        assert!(
            table.contains("| glue_tsv | 1200 | 1.0 | 20 | 25.0% |"),
            "{table}"
        );
        assert!(!ok.failed());
        let crashed = Report {
            crashes: 1,
            ..Report::default()
        };
        let aborted = Report {
            aborted: Some("signal 6".into()),
            ..Report::default()
        };
        assert!(crashed.failed() && aborted.failed());
        assert!(render(&[aborted]).contains("| abort |"));
    }

    #[test]
    fn harness_reports_parse() {
        let text = r#"[{"target":"checkpoint","seed":1,"executions":5,"seconds":1.5,"crashes":0,
            "crashing_executions":0,"hangs":0,"accepted":2,"outcomes":3,"corpus":4,
            "slowest_ms":2.0,"peak_memory_mb":1.0,"crash_dirs":[],"rejected_seeds":[]}]"#;
        let reports: Vec<Report> = serde_json::from_str(text).unwrap();
        assert_eq!(reports[0].executions, 5);
        assert!(!reports[0].failed());
    }
}
