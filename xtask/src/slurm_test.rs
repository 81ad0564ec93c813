//! `cargo xtask slurm-test`: `reproduce quick --emit slurm` against a real Slurm, compared with the
//! `--jobs 2` path on the same machine.
//!
//! Not a `cargo test`: it needs slurmctld, slurmd and munge running (xtask/slurm/local-cluster.sh
//! sets up a one-node cluster, as root with apt-get), and it trains the quick grid twice plus a
//! resubmission, a few minutes on two cores.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::reproduce;
use crate::slurm;

pub fn run(root: &Path, shared: &Path, work: PathBuf, timeout: Duration, keep: bool) -> Result<()> {
    if !shared.join("models/all-MiniLM-L6-v2").is_dir() {
        eprintln!(
            "slurm-test: skipped: no shared models at {} (set KDLORA_SHARED)",
            shared.display()
        );
        return Ok(());
    }
    // Stops the cluster again when this test started it, however the test ends.
    let _cluster = ensure_cluster(root)?;
    let kdlora = reproduce::build_cli(root)?;
    let xtask = std::env::current_exe().context("locating the xtask binary")?;
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("emptying {}", work.display()))?;
    }
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let work = std::path::absolute(&work)?;
    let started = Instant::now();

    // The Slurm path: one CPU per run, so that the node's two cores run two at once, as --jobs 2.
    let slurm_results = work.join("slurm");
    let out = slurm_results.join("slurm");
    let emit = || {
        slurm::emit(
            root,
            shared,
            &slurm::EmitOptions {
                preset: "quick",
                results: &slurm_results,
                out: &out,
                tasks: None,
                seeds: None,
                devices: None,
                resources: slurm::Resources {
                    cpus: Some(1),
                    ..Default::default()
                },
                kdlora: &kdlora,
                xtask: &xtask,
            },
        )
    };
    let emitted = emit()?;
    eprintln!(
        "slurm-test: emitted {:?} to {}",
        emitted.counts,
        out.display()
    );
    let t = Instant::now();
    let jobs = submit_and_wait(&out, timeout)?;
    let slurm_time = t.elapsed();
    check_jobs(&jobs, &out)?;
    eprintln!(
        "slurm-test: the Slurm grid took {:.1} min",
        slurm_time.as_secs_f64() / 60.0
    );

    // The same grid through `reproduce --jobs 2`.
    let jobs_results = work.join("jobs");
    let t = Instant::now();
    reproduce::run(
        root,
        shared,
        &reproduce::Options {
            preset: "quick".into(),
            results: Some(jobs_results.clone()),
            dry_run: false,
            skip_paper_shapes: true,
            paper_shapes_only: false,
            kdlora: Some(kdlora.clone()),
            tasks: None,
            seeds: None,
            compare_torch: None,
            jobs: Some(2),
            devices: None,
        },
    )?;
    let jobs_time = t.elapsed();
    compare(&slurm_results, &jobs_results)?;
    eprintln!("slurm-test: the tables match the --jobs 2 path's");

    // Resubmitted after losing RTE's LoRA run: that one trains again, the rest are reused, and
    // the tables come out the same.
    let lost = slurm_results.join("runs/MiniLM/rte/lora");
    let kept = metrics_files(&slurm_results.join("runs"))?
        .into_iter()
        .filter(|p| !p.starts_with(&lost))
        .map(|p| std::fs::read(&p).map(|bytes| (p, bytes)))
        .collect::<std::io::Result<Vec<_>>>()?;
    let table1 = read(&slurm_results.join("table1.md"))?;
    std::fs::remove_dir_all(&lost)?;
    let t = Instant::now();
    let jobs = submit_and_wait(&out, timeout)?;
    let resubmit_time = t.elapsed();
    check_jobs(&jobs, &out)?;
    if metrics_files(&lost)?.len() != 1 {
        bail!("the resubmission did not train {} again", lost.display());
    }
    for (path, bytes) in &kept {
        if std::fs::read(path)? != *bytes {
            bail!(
                "the resubmission retrained the finished run {}",
                path.display()
            );
        }
    }
    if read(&slurm_results.join("table1.md"))? != table1 {
        bail!("the resubmission changed table1.md");
    }
    eprintln!(
        "slurm-test: passed in {:.1} min (Slurm grid {:.1} min, --jobs 2 {:.1} min, resubmission \
         retraining one run {:.0} s)",
        started.elapsed().as_secs_f64() / 60.0,
        slurm_time.as_secs_f64() / 60.0,
        jobs_time.as_secs_f64() / 60.0,
        resubmit_time.as_secs_f64(),
    );
    if keep {
        eprintln!("slurm-test: files in {}", work.display());
    } else {
        // Two grids of run folders with their checkpoints: about 2 GB, which CI's disk is short of.
        std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    Ok(())
}

/// A local cluster this test started: stopped when dropped (munged stays, as harmless).
struct StartedCluster {
    script: PathBuf,
}

impl Drop for StartedCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(&self.script).arg("stop").status();
    }
}

/// A Slurm with an idle node: the one `sinfo` finds, else a local one started as root (returned,
/// to be stopped at the end).
fn ensure_cluster(root: &Path) -> Result<Option<StartedCluster>> {
    let up = Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .output()
        .is_ok_and(|o| {
            o.status.success() && {
                let states = String::from_utf8_lossy(&o.stdout);
                states
                    .split_whitespace()
                    .any(|s| matches!(s, "idle" | "mixed" | "allocated"))
            }
        });
    if up {
        return Ok(None);
    }
    let script = root.join("xtask/slurm/local-cluster.sh");
    eprintln!(
        "slurm-test: no Slurm answers; starting a local one ({})",
        script.display()
    );
    let status = Command::new("bash")
        .arg(&script)
        .arg("start")
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!(
            "{} failed ({status}); it needs root and apt-get (Debian/Ubuntu), or a running Slurm",
            script.display()
        );
    }
    Ok(Some(StartedCluster { script }))
}

/// Runs `submit.sh` and waits until none of its jobs is queued or running; returns the job ids.
fn submit_and_wait(out: &Path, timeout: Duration) -> Result<Vec<String>> {
    let submit = out.join("submit.sh");
    let output = Command::new("bash")
        .arg(&submit)
        .output()
        .with_context(|| format!("running {}", submit.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}): {}",
            submit.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // Its last line: `teachers=12 baselines=13 students=14 gather=15` (several ids joined by `:`
    // when a group took several arrays).
    let stdout = String::from_utf8_lossy(&output.stdout);
    let ids: Vec<String> = stdout
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .flat_map(|(_, ids)| ids.split(':').map(String::from))
        .filter(|id| !id.is_empty())
        .collect();
    if ids.is_empty() || ids.iter().any(|id| id.parse::<u64>().is_err()) {
        bail!("unexpected output of {}: {stdout}", submit.display());
    }
    eprintln!("slurm-test: submitted jobs {}", ids.join(", "));
    let list = ids.join(",");
    let t0 = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let q = Command::new("squeue")
            .args(["-h", "-o", "%i %T", "-j", &list])
            .output()
            .context("running squeue")?;
        let text = String::from_utf8_lossy(&q.stdout).to_string();
        let stderr = String::from_utf8_lossy(&q.stderr);
        // squeue lists queued and running jobs only; a job the controller has forgotten is an
        // "Invalid job id" error, which also means it has ended.
        let ended =
            text.trim().is_empty() && (q.status.success() || stderr.contains("Invalid job id"));
        if ended {
            return Ok(ids);
        }
        if !q.status.success() && !stderr.contains("Invalid job id") {
            bail!("squeue failed ({}): {stderr}", q.status);
        }
        if t0.elapsed() > timeout {
            let _ = Command::new("scancel").args(&ids).status();
            bail!(
                "the jobs did not end within {} min; cancelled them. Queue:\n{text}",
                timeout.as_secs() / 60
            );
        }
        if last_report.elapsed() > Duration::from_secs(60) {
            let mut states = BTreeMap::<String, usize>::new();
            for line in text.lines() {
                let state = line.split_whitespace().nth(1).unwrap_or("?");
                *states.entry(state.to_string()).or_default() += 1;
            }
            eprintln!(
                "slurm-test: {:.1} min: {states:?}",
                t0.elapsed().as_secs_f64() / 60.0
            );
            last_report = Instant::now();
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Every job (each array task) ended COMPLETED, as far as the controller still knows them.
fn check_jobs(ids: &[String], out: &Path) -> Result<()> {
    let mut bad = Vec::new();
    for id in ids {
        let o = Command::new("scontrol")
            .args(["show", "job", "-o", id])
            .output()
            .context("running scontrol")?;
        if !o.status.success() {
            eprintln!("slurm-test: the controller forgot job {id}; its state goes unchecked");
            continue;
        }
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|f| f.strip_prefix(name))
                    .unwrap_or("?")
                    .to_string()
            };
            if field("JobState=") != "COMPLETED" {
                bad.push(format!(
                    "{} task {}: {} (exit {})",
                    field("JobName="),
                    field("ArrayTaskId="),
                    field("JobState="),
                    field("ExitCode=")
                ));
            }
        }
    }
    if !bad.is_empty() {
        bail!(
            "Slurm jobs did not complete (logs in {}):\n  {}",
            out.join("logs").display(),
            bad.join("\n  ")
        );
    }
    Ok(())
}

/// The two results folders hold the same outputs: Table 1 identical, every run's scores equal,
/// Table 2 with the same rows (its memory and time columns are measurements).
fn compare(slurm: &Path, jobs: &Path) -> Result<()> {
    for file in [
        "table1.md",
        "table2.md",
        "results.json",
        "scores-MiniLM.svg",
        "memory.svg",
        "inference.svg",
    ] {
        for dir in [slurm, jobs] {
            if !dir.join(file).is_file() {
                bail!("{} is missing", dir.join(file).display());
            }
        }
    }
    let (a, b) = (
        read(&slurm.join("table1.md"))?,
        read(&jobs.join("table1.md"))?,
    );
    if a != b {
        bail!("table1.md differs:\n--- Slurm\n{a}\n--- --jobs 2\n{b}");
    }
    let runs = |dir: &Path| -> Result<BTreeMap<String, String>> {
        let json: serde_json::Value = serde_json::from_str(&read(&dir.join("results.json"))?)?;
        let mut runs = BTreeMap::new();
        for run in json["runs"]
            .as_array()
            .context("results.json without runs")?
        {
            let key = ["family", "task", "method", "config", "seed"]
                .map(|k| run[k].to_string())
                .join(" ");
            if run["score"].as_f64().is_none() {
                bail!("{}: run {key} has no score", dir.display());
            }
            runs.insert(key, format!("{} {}", run["score"], run["best_score"]));
        }
        Ok(runs)
    };
    let (a, b) = (runs(slurm)?, runs(jobs)?);
    if a != b || a.len() != 6 {
        bail!("the runs' scores differ:\n  Slurm:   {a:?}\n  --jobs 2: {b:?}");
    }
    let rows = |dir: &Path| -> Result<Vec<String>> {
        Ok(read(&dir.join("table2.md"))?
            .lines()
            .filter(|l| l.starts_with('|'))
            .map(|l| l.split('|').nth(1).unwrap_or_default().trim().to_string())
            .collect())
    };
    let (a, b) = (rows(slurm)?, rows(jobs)?);
    if a != b {
        bail!("table2.md has other rows:\n  Slurm:   {a:?}\n  --jobs 2: {b:?}");
    }
    Ok(())
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// The `metrics.json` files below `dir`.
fn metrics_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    if !dir.is_dir() {
        return Ok(found);
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(metrics_files(&path)?);
        } else if path.file_name().is_some_and(|n| n == "metrics.json") {
            found.push(path);
        }
    }
    Ok(found)
}
