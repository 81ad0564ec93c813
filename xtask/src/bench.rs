//! `cargo xtask bench`: throughput and peak memory of training (FFT, LoRA, KD-LoRA) and inference,
//! per model and device, through `kdlora bench` (one process per configuration, so each peak memory
//! is that configuration's), optionally side by side with `bench/torch_reference.py` (PyTorch +
//! PEFT, same batch, same thread count, run in the same session, interleaved configuration by
//! configuration so machine load affects both alike). Writes `bench.md`, `bench.json` and SVG
//! charts with the machine description.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::charts::{self, Bars, Group};
use crate::reproduce::build_cli;
use crate::tables::write_atomic;

pub struct Options {
    pub compare_torch: bool,
    pub models: Vec<String>,
    pub modes: Vec<String>,
    pub devices: Vec<String>,
    pub quick: bool,
    pub steps: Option<u32>,
    pub warmup: Option<u32>,
    pub threads: Option<u32>,
    pub batch: u32,
    pub seq: u32,
    pub results: Option<PathBuf>,
    pub python: String,
}

const MODES: [&str; 4] = ["fft", "lora", "kd-lora", "inference"];

/// Timed steps and warm-up steps for a device. CPU defaults keep the default run (2 models x 4
/// modes, kdlora and PyTorch) near 8 minutes on the 2-core development machine; lavapipe (wgpu on
/// the CPU) is 30-40x slower than ndarray, so it gets one step.
fn step_counts(options: &Options, device: &str) -> (u32, u32) {
    let (steps, warmup) = match (device, options.quick) {
        (_, true) => (2, 1),
        ("wgpu", false) => (1, 1),
        _ => (4, 1),
    };
    (
        options.steps.unwrap_or(steps),
        options.warmup.unwrap_or(warmup),
    )
}

/// A model to measure: a name from the shared folder or a local path.
struct ModelSpec {
    name: String,
    path: Option<PathBuf>,
    skip_reason: Option<String>,
}

fn resolve_model(name: &str, root: &Path, shared: &Path) -> ModelSpec {
    let named = |folder: &str| shared.join("models").join(folder);
    let (path, skip_reason) = match name {
        "student" => (Some(named("paraphrase-MiniLM-L3-v2")), None),
        "teacher" => (Some(named("all-MiniLM-L6-v2")), None),
        // Random weights of BERT-base's shapes: throughput and memory do not depend on values.
        "bert-base" => (
            Some(root.join("configs/models/bert-base-uncased.json")),
            None,
        ),
        other => (Some(PathBuf::from(other)), None),
    };
    let skip_reason = skip_reason.or_else(|| match &path {
        Some(p) if !p.is_file() && !p.join("config.json").is_file() => Some(format!(
            "{}: no config.json (is KDLORA_SHARED set?)",
            p.display()
        )),
        _ => None,
    });
    // Folders are labelled by their last component in tables and file names.
    let label = Path::new(name)
        .file_stem()
        .map_or(name.to_string(), |n| n.to_string_lossy().to_string());
    ModelSpec {
        name: label,
        path,
        skip_reason,
    }
}

/// Runs one measuring process and parses the JSON object on its last stdout line.
pub(crate) fn measure(mut cmd: Command, label: &str) -> Result<Value> {
    let started = Instant::now();
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{label}: starting {:?}", cmd.get_program()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("{label} failed ({}): {}", output.status, tail.join(" | "));
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("{label}: no JSON object on stdout"))?;
    let value: Value =
        serde_json::from_str(line).with_context(|| format!("{label}: parsing {line}"))?;
    eprintln!(
        "  {label}: {:.2} examples/s, median step {:.3} s, peak {:.0} MB ({:.0} s)",
        value["examples_per_s"].as_f64().unwrap_or(f64::NAN),
        value["median_step_s"].as_f64().unwrap_or(f64::NAN),
        value["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
        started.elapsed().as_secs_f64()
    );
    Ok(value)
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// What the numbers were measured on.
pub(crate) fn machine(python: Option<&str>) -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let flags = field("flags").unwrap_or_default();
    let simd: Vec<&str> = ["avx2", "fma", "avx512f"]
        .into_iter()
        .filter(|f| flags.split_whitespace().any(|x| x == *f))
        .collect();
    let mem_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kb| kb * 1024.0 / 1e9);
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("PRETTY_NAME="))
                .map(|l| l["PRETTY_NAME=".len()..].trim_matches('"').to_string())
        });
    json!({
        "cpu": field("model name"),
        "cpu_flags": simd,
        "cores": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "memory_gb": mem_gb,
        "os": os,
        "kernel": read_trimmed("/proc/sys/kernel/osrelease"),
        "rustc": command_line("rustc", &["--version"]),
        "python": python.and_then(|p| command_line(p, &["--version"])),
        "load_average_at_start": read_trimmed("/proc/loadavg"),
        "kdlora_profile": if cfg!(debug_assertions) { "dev (dependencies and kdlora-kernels opt-level 3, other kdlora crates opt-level 1)" } else { "release" },
    })
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".to_string(), |x| format!("{x:.digits$}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

pub fn run(root: &Path, shared: &Path, options: &Options) -> Result<()> {
    for mode in &options.modes {
        if !MODES.contains(&mode.as_str()) {
            bail!("unknown mode {mode:?}; expected one of {MODES:?}");
        }
    }
    for device in &options.devices {
        // `candle` needs a kdlora binary built with `--features candle` (passed in KDLORA_BIN).
        if !["cpu", "ndarray", "wgpu", "cuda", "candle"].contains(&device.as_str()) {
            bail!("unknown device {device:?}; expected cpu, ndarray, wgpu, cuda or candle");
        }
    }
    let results = options
        .results
        .clone()
        .unwrap_or_else(|| root.join("results").join("bench"));
    let runs_dir = results.join("runs");
    std::fs::create_dir_all(&runs_dir)
        .with_context(|| format!("creating {}", runs_dir.display()))?;
    let threads = options
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    let machine = machine(options.compare_torch.then_some(options.python.as_str()));
    let kdlora = build_cli(root)?;
    let script = root.join("bench").join("torch_reference.py");

    let specs: Vec<ModelSpec> = options
        .models
        .iter()
        .map(|m| resolve_model(m, root, shared))
        .collect();
    let mut skipped = Vec::new();
    let mut rows = Vec::new();
    let started = Instant::now();
    for spec in &specs {
        let (Some(path), None) = (&spec.path, &spec.skip_reason) else {
            let reason = spec.skip_reason.clone().unwrap_or_default();
            eprintln!("skipping {}: {reason}", spec.name);
            skipped.push(json!({"model": spec.name, "reason": reason}));
            continue;
        };
        for device in &options.devices {
            let (steps, warmup) = step_counts(options, device);
            for mode in &options.modes {
                eprintln!(
                    "[{:.0} s] {} {mode} on {device} (batch {}, seq {}, {warmup} warm-up + {steps} steps, {threads} threads)",
                    started.elapsed().as_secs_f64(),
                    spec.name,
                    options.batch,
                    options.seq
                );
                let common = |cmd: &mut Command| {
                    cmd.arg("--model")
                        .arg(path)
                        .args(["--mode", mode])
                        .args(["--batch", &options.batch.to_string()])
                        .args(["--seq", &options.seq.to_string()])
                        .args(["--steps", &steps.to_string()])
                        .args(["--warmup", &warmup.to_string()])
                        .args(["--threads", &threads.to_string()]);
                };
                let mut cmd = Command::new(&kdlora);
                cmd.arg("bench").args(["--device", device]);
                common(&mut cmd);
                cmd.env("RUST_LOG", "warn")
                    .env("RAYON_NUM_THREADS", threads.to_string());
                let ours = measure(cmd, "kdlora");
                // PyTorch runs on the CPU or CUDA; wgpu has no PyTorch counterpart here.
                let theirs = (options.compare_torch && device != "wgpu").then(|| {
                    let mut cmd = Command::new(&options.python);
                    // Every kdlora CPU backend compares against PyTorch's CPU.
                    let torch_device = if matches!(device.as_str(), "ndarray" | "candle") {
                        "cpu"
                    } else {
                        device
                    };
                    cmd.arg(&script).args(["--device", torch_device]);
                    common(&mut cmd);
                    measure(cmd, "pytorch")
                });
                let file = |framework: &str| {
                    runs_dir.join(format!("{}-{mode}-{device}-{framework}.json", spec.name))
                };
                let mut row = json!({
                    "model": spec.name, "model_folder": path.display().to_string(),
                    "mode": mode, "device": device, "steps": steps, "warmup": warmup,
                });
                for (key, outcome) in [("kdlora", Some(ours)), ("pytorch", theirs)] {
                    match outcome {
                        Some(Ok(v)) => {
                            write_atomic(&file(key), &serde_json::to_string_pretty(&v)?)?;
                            row[key] = v;
                        }
                        Some(Err(e)) => {
                            eprintln!("  {e:#}");
                            row[format!("{key}_error")] = json!(format!("{e:#}"));
                        }
                        None => {}
                    }
                }
                let ex = |k: &str| row.get(k).and_then(|v| num(v, "examples_per_s"));
                let mem = |k: &str| row.get(k).and_then(|v| num(v, "peak_rss_mb"));
                let ratios = (
                    ratio(ex("kdlora"), ex("pytorch")),
                    ratio(mem("kdlora"), mem("pytorch")),
                );
                row["ratio_examples_per_s"] = json!(ratios.0);
                row["ratio_peak_rss"] = json!(ratios.1);
                rows.push(row);
            }
        }
    }
    let report = json!({
        "machine": machine,
        "settings": {
            "batch": options.batch, "seq": options.seq, "threads": threads,
            "compare_torch": options.compare_torch, "quick": options.quick,
            "devices": options.devices, "modes": options.modes,
            "method": "median wall-clock seconds of the timed steps after the warm-up steps, one \
                       process per configuration; a training step = forward, loss, loss read \
                       back, backward, global gradient-norm clipping, AdamW update; inference = \
                       forward with merged adapters, logits read back; peak memory = VmHWM of \
                       that process (MB = 10^6 bytes); cores used = process CPU time / wall time \
                       over the timed steps",
        },
        "results": rows,
        "skipped": skipped,
        "total_seconds": started.elapsed().as_secs_f64(),
    });
    write_atomic(
        &results.join("bench.json"),
        &serde_json::to_string_pretty(&report)?,
    )?;
    write_atomic(&results.join("bench.md"), &markdown(&report))?;
    for (file, svg) in charts(&report)? {
        write_atomic(&results.join(file), &svg)?;
    }
    eprintln!(
        "bench: {} configurations in {:.0} s -> {}",
        report["results"].as_array().map_or(0, Vec::len),
        started.elapsed().as_secs_f64(),
        results.display()
    );
    Ok(())
}

fn rows(report: &Value) -> &[Value] {
    report["results"].as_array().map_or(&[], Vec::as_slice)
}

fn markdown(report: &Value) -> String {
    let mut md = String::new();
    let m = &report["machine"];
    let s = &report["settings"];
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "unknown".into(),
        other => other.to_string(),
    };
    let _ = writeln!(md, "# kdlora benchmark\n");
    let _ = writeln!(
        md,
        "Machine: {} ({} cores, SIMD {}), {:.1} GB memory, {} (kernel {}), {}; python: {}; load \
         average at start: {}. kdlora build profile: {}; allocator: mimalloc, purge delay paced \
         by the step time (1.5x the moving average, 100 ms to 10 s; `purge_delay_ms` in each \
         run's JSON).\n",
        text(&m["cpu"]),
        text(&m["cores"]),
        text(&m["cpu_flags"]),
        m["memory_gb"].as_f64().unwrap_or(f64::NAN),
        text(&m["os"]),
        text(&m["kernel"]),
        text(&m["rustc"]),
        text(&m["python"]),
        text(&m["load_average_at_start"]),
        text(&m["kdlora_profile"]),
    );
    let _ = writeln!(
        md,
        "Batch {}, sequence {}, {} threads requested on both sides. {}.\n",
        s["batch"],
        s["seq"],
        s["threads"],
        text(&s["method"])
    );
    let _ = writeln!(
        md,
        "| model | mode | device | steps | kdlora ex/s | PyTorch ex/s | kdlora / PyTorch | kdlora peak MB | PyTorch peak MB | kdlora / PyTorch | trainable params | cores used (kdlora / PyTorch) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows(report) {
        let k = &row["kdlora"];
        let p = &row["pytorch"];
        let cell = |v: &Value, key: &str, digits: usize| fmt_opt(num(v, key), digits);
        let errors: Vec<String> = ["kdlora_error", "pytorch_error"]
            .iter()
            .filter_map(|e| row.get(*e).and_then(Value::as_str))
            .map(|e| e.chars().take(160).collect())
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {}+{} | {} | {} | {} | {} | {} | {} | {} | {} / {} |",
            text(&row["model"]),
            text(&row["mode"]),
            text(&row["device"]),
            row["warmup"],
            row["steps"],
            cell(k, "examples_per_s", 2),
            cell(p, "examples_per_s", 2),
            fmt_opt(num(row, "ratio_examples_per_s"), 2),
            cell(k, "peak_rss_mb", 0),
            cell(p, "peak_rss_mb", 0),
            fmt_opt(num(row, "ratio_peak_rss"), 2),
            k.get("trainable_params")
                .or_else(|| p.get("trainable_params"))
                .map_or("–".into(), |v| v.to_string()),
            cell(k, "cpu_cores_used", 2),
            cell(p, "cpu_cores_used", 2),
        );
        if !errors.is_empty() {
            let _ = writeln!(
                md,
                "|  | errors: {} | | | | | | | | | | |",
                errors.join("; ")
            );
        }
    }
    // Backend comparison: kdlora throughput per device, one column per device.
    let mut devices: Vec<String> = Vec::new();
    for row in rows(report) {
        let d = text(&row["device"]);
        if !devices.contains(&d) {
            devices.push(d);
        }
    }
    if devices.len() > 1 {
        let _ = writeln!(md, "\n## Backend comparison (kdlora examples/s)\n");
        let _ = writeln!(md, "| model | mode | {} |", devices.join(" | "));
        let _ = writeln!(md, "|---|---|{}", "---|".repeat(devices.len()));
        for (model, mode) in model_modes(report) {
            let cells: Vec<String> = devices
                .iter()
                .map(|d| {
                    fmt_opt(
                        find(report, &model, &mode, d)
                            .and_then(|r| num(&r["kdlora"], "examples_per_s")),
                        2,
                    )
                })
                .collect();
            let _ = writeln!(md, "| {model} | {mode} | {} |", cells.join(" | "));
        }
    }
    if let Some(skipped) = report["skipped"].as_array()
        && !skipped.is_empty()
    {
        let _ = writeln!(md, "\nSkipped:\n");
        for s in skipped {
            let _ = writeln!(md, "- {}: {}", text(&s["model"]), text(&s["reason"]));
        }
    }
    let _ = writeln!(
        md,
        "\nCharts: `throughput.svg`, `memory.svg`. Raw per-process JSON: `runs/`. Total time {:.0} s.",
        report["total_seconds"].as_f64().unwrap_or(0.0)
    );
    md
}

fn model_modes(report: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for row in rows(report) {
        let key = (
            row["model"].as_str().unwrap_or("").to_string(),
            row["mode"].as_str().unwrap_or("").to_string(),
        );
        if !out.contains(&key) {
            out.push(key);
        }
    }
    out
}

fn find<'a>(report: &'a Value, model: &str, mode: &str, device: &str) -> Option<&'a Value> {
    rows(report)
        .iter()
        .find(|r| r["model"] == model && r["mode"] == mode && r["device"] == device)
}

/// Throughput and memory charts: one group per (model, mode), one bar per (framework, device).
pub(crate) fn charts(report: &Value) -> Result<Vec<(&'static str, String)>> {
    let mut series: Vec<(String, &'static str, String)> = Vec::new();
    for row in rows(report) {
        let device = row["device"].as_str().unwrap_or("").to_string();
        for (framework, label) in [("kdlora", "kdlora"), ("pytorch", "PyTorch")] {
            let name = format!("{label} {device}");
            if row.get(framework).is_some_and(Value::is_object)
                && !series.iter().any(|(n, _, _)| n == &name)
            {
                series.push((name, framework, device.clone()));
            }
        }
    }
    let names: Vec<String> = series.iter().map(|(n, _, _)| n.clone()).collect();
    let groups = |key: &str| -> Vec<Group> {
        model_modes(report)
            .into_iter()
            .map(|(model, mode)| Group {
                label: format!("{model} {mode}"),
                values: series
                    .iter()
                    .map(|(_, framework, device)| {
                        find(report, &model, &mode, device).and_then(|r| num(&r[*framework], key))
                    })
                    .collect(),
            })
            .collect()
    };
    let settings = &report["settings"];
    let shape = match (settings["batch"].as_u64(), settings["seq"].as_u64()) {
        (Some(batch), Some(seq)) => format!(" (batch {batch}, seq {seq})"),
        _ => String::new(),
    };
    Ok(vec![
        (
            "throughput.svg",
            charts::grouped_bars(&Bars {
                title: &format!("Training and inference throughput{shape}"),
                y_label: "examples / s",
                series: &names,
                groups: &groups("examples_per_s"),
                note: None,
            })?,
        ),
        (
            "memory.svg",
            charts::grouped_bars(&Bars {
                title: "Peak resident memory per configuration",
                y_label: "MB",
                series: &names,
                groups: &groups("peak_rss_mb"),
                note: None,
            })?,
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Value {
        json!({
            "machine": {"cpu": "Test CPU", "cores": 2},
            "settings": {"batch": 32, "seq": 128, "threads": 2, "method": "m"},
            "results": [
                {"model": "student", "mode": "lora", "device": "cpu", "steps": 4, "warmup": 1,
                 "kdlora": {"examples_per_s": 10.0, "peak_rss_mb": 800.0, "trainable_params": 37634},
                 "pytorch": {"examples_per_s": 8.0, "peak_rss_mb": 1600.0},
                 "ratio_examples_per_s": 1.25, "ratio_peak_rss": 0.5},
                {"model": "student", "mode": "lora", "device": "wgpu", "steps": 1, "warmup": 1,
                 "kdlora": {"examples_per_s": 0.5, "peak_rss_mb": 900.0}}
            ],
            "skipped": [{"model": "bert-base", "reason": "no config"}],
            "total_seconds": 3.0
        })
    }

    #[test]
    fn markdown_has_ratios_backend_table_and_skips() {
        let md = markdown(&sample());
        assert!(
            md.contains(
                "| student | lora | cpu | 1+4 | 10.00 | 8.00 | 1.25 | 800 | 1600 | 0.50 | 37634 |"
            ),
            "{md}"
        );
        assert!(md.contains("## Backend comparison"), "{md}");
        assert!(md.contains("| student | lora | 10.00 | 0.50 |"), "{md}");
        assert!(md.contains("- bert-base: no config"), "{md}");
    }

    #[test]
    fn charts_have_one_series_per_framework_and_device() {
        let charts = charts(&sample()).unwrap();
        assert_eq!(charts.len(), 2);
        let (_, svg) = &charts[0];
        for name in ["kdlora cpu", "PyTorch cpu", "kdlora wgpu"] {
            assert!(svg.contains(name), "{name} missing");
        }
        assert!(!svg.contains("PyTorch wgpu"));
        assert!(svg.contains("(batch 32, seq 128)"));
        for (_, svg) in &charts {
            crate::charts::tests::assert_text_fits(svg);
        }
    }

    #[test]
    fn ratio_needs_both_sides() {
        assert_eq!(ratio(Some(2.0), Some(4.0)), Some(0.5));
        assert_eq!(ratio(Some(2.0), None), None);
        assert_eq!(ratio(Some(2.0), Some(0.0)), None);
    }
}
