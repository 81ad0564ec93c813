//! `cargo xtask`: project automation (reproduction grids, benchmarks, fixture regeneration).
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

mod bench;
mod compare_torch;
mod paper;
mod paper_shapes;
mod params;
mod preset;
mod reproduce;
mod svg;
mod tables;

#[derive(Parser)]
#[command(name = "xtask", about = "kdlora project automation")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Reproduce the paper's Tables 1 and 2 for a preset (default: cpu).
    Reproduce {
        #[arg(value_enum, default_value_t = Preset::Cpu)]
        preset: Preset,
        /// Results folder (default: results/<preset>).
        #[arg(long)]
        results: Option<PathBuf>,
        /// Print the grid without running it.
        #[arg(long)]
        dry_run: bool,
        /// Leave out Table 2 at the paper's model shapes (presets with `[paper_shapes]`: cpu, paper).
        #[arg(long)]
        skip_paper_shapes: bool,
        /// Measure only Table 2 at the paper's model shapes (no training grid).
        #[arg(long, conflicts_with = "skip_paper_shapes")]
        paper_shapes_only: bool,
        /// Run only these tasks of the preset (e.g. cola,mrpc,stsb,rte).
        #[arg(long, value_delimiter = ',')]
        tasks: Option<Vec<String>>,
        /// Run every method with these seeds instead of the preset's (e.g. 42,43,44).
        #[arg(long, value_delimiter = ',')]
        seeds: Option<Vec<u64>>,
        /// Also train every cell's first seed in PyTorch + transformers + PEFT
        /// (bench/torch_recipe.py, reading each kdlora run's config.toml) and write
        /// compare-torch.md beside the tables.
        #[arg(long)]
        compare_torch: bool,
        /// Python for --compare-torch (default: .venv-bench/bin/python when it exists, else python3).
        #[arg(long, env = "KDLORA_TORCH_PYTHON")]
        python: Option<String>,
        /// Create or update .venv-bench with the pinned versions (bench/setup-torch-venv.sh) first.
        #[arg(long)]
        setup_python: bool,
    },
    /// Throughput and peak memory of training (fft, lora, kd-lora) and inference, per model and
    /// device, optionally against PyTorch + PEFT (bench/torch_reference.py) in the same run.
    Bench {
        /// Also run bench/torch_reference.py for each configuration and report kdlora/PyTorch ratios.
        #[arg(long)]
        compare_torch: bool,
        /// Models: student, teacher (../shared MiniLM pair), bert-base, or model folders.
        #[arg(long, value_delimiter = ',', default_value = "student,teacher")]
        models: Vec<String>,
        /// Modes: fft, lora, kd-lora, inference.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "fft,lora,kd-lora,inference"
        )]
        modes: Vec<String>,
        /// Devices: cpu (Burn's Flex backend), ndarray (Burn's ndarray backend), wgpu (lavapipe here:
        /// very slow), cuda, candle (Burn's candle backend: needs KDLORA_BIN built with
        /// `--features candle`).
        #[arg(long, value_delimiter = ',', default_value = "cpu")]
        devices: Vec<String>,
        /// One warm-up and two timed steps per configuration.
        #[arg(long)]
        quick: bool,
        /// Timed steps per configuration (default 4 on cpu/cuda, 1 on wgpu).
        #[arg(long)]
        steps: Option<u32>,
        /// Warm-up steps per configuration (default 1).
        #[arg(long)]
        warmup: Option<u32>,
        /// Threads on both sides (default: number of cores).
        #[arg(long)]
        threads: Option<u32>,
        #[arg(long, default_value_t = 32)]
        batch: u32,
        #[arg(long, default_value_t = 128)]
        seq: u32,
        /// Results folder (default: results/bench).
        #[arg(long)]
        results: Option<PathBuf>,
        /// Python with torch 2.5.1, transformers 4.46.3, peft 0.13.2.
        #[arg(long, env = "KDLORA_BENCH_PYTHON", default_value = "python3")]
        python: String,
    },
    /// Regenerate the Hugging Face parity fixtures with the pinned Python environment.
    Fixtures {
        /// Python interpreter with torch, transformers and peft installed (versions pinned in the scripts).
        #[arg(long, env = "KDLORA_FIXTURE_PYTHON", default_value = "python3")]
        python: String,
    },
}

/// The Python of the PyTorch side: `--python`, else the project's venv, created first when asked.
fn torch_python(root: &Path, python: Option<String>, setup: bool) -> Result<String> {
    let venv = root.join(".venv-bench");
    if setup {
        let status = Command::new("bash")
            .arg(root.join("bench/setup-torch-venv.sh"))
            .arg(&venv)
            .status()
            .context("running bench/setup-torch-venv.sh")?;
        if !status.success() {
            bail!("bench/setup-torch-venv.sh failed ({status})");
        }
    }
    if let Some(python) = python {
        return Ok(python);
    }
    let venv_python = venv.join("bin/python");
    Ok(if venv_python.is_file() {
        venv_python.display().to_string()
    } else {
        eprintln!(
            "note: no .venv-bench; using python3 (pass --setup-python to install the pinned torch, transformers and peft)"
        );
        "python3".into()
    })
}

#[derive(Clone, Copy, ValueEnum)]
enum Preset {
    /// The paper's three families on all GLUE tasks (GPU).
    Paper,
    /// The ../shared MiniLM pair on GLUE at the paper's recipe (this 2-core CPU, about 75 minutes).
    Cpu,
    /// Two small tasks, one epoch (minutes).
    Quick,
    /// Does distillation pay on this CPU? The MiniLM pair on three tasks with 6,000 training rows,
    /// two epochs, one teacher and three student seeds (about 45 minutes).
    CpuDistill,
}

impl Preset {
    fn name(self) -> &'static str {
        match self {
            Preset::Paper => "paper",
            Preset::Cpu => "cpu",
            Preset::Quick => "quick",
            Preset::CpuDistill => "cpu-distill",
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn shared_dir(root: &Path) -> PathBuf {
    std::env::var_os("KDLORA_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("..").join("shared"))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Task::Reproduce {
            preset,
            results,
            dry_run,
            skip_paper_shapes,
            paper_shapes_only,
            tasks,
            seeds,
            compare_torch,
            python,
            setup_python,
        } => {
            let compare_torch = if compare_torch {
                Some(compare_torch::TorchOptions {
                    python: torch_python(&root, python, setup_python)?,
                    threads: None,
                })
            } else {
                None
            };
            reproduce::run(
                &root,
                &shared_dir(&root),
                &reproduce::Options {
                    preset: preset.name().to_string(),
                    results,
                    dry_run,
                    skip_paper_shapes,
                    paper_shapes_only,
                    kdlora: None,
                    tasks,
                    seeds,
                    compare_torch,
                },
            )
        }
        Task::Fixtures { python } => fixtures(&root, &python),
        Task::Bench {
            compare_torch,
            models,
            modes,
            devices,
            quick,
            steps,
            warmup,
            threads,
            batch,
            seq,
            results,
            python,
        } => bench::run(
            &root,
            &shared_dir(&root),
            &bench::Options {
                compare_torch,
                models,
                modes,
                devices,
                quick,
                steps,
                warmup,
                threads,
                batch,
                seq,
                results,
                python,
            },
        ),
    }
}

fn fixtures(root: &Path, python: &str) -> Result<()> {
    let dir = root.join("tests/fixtures");
    let mut scripts: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "py"))
        .collect();
    scripts.sort();
    for script in scripts {
        eprintln!("running {}", script.display());
        let status = Command::new(python)
            .arg(&script)
            .current_dir(root)
            .status()
            .with_context(|| format!("starting {python}"))?;
        if !status.success() {
            bail!("{} failed with {status}", script.display());
        }
    }
    Ok(())
}
