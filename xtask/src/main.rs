//! `cargo xtask`: project automation (reproduction grids, benchmarks, fixture regeneration).
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

mod bench;
mod paper;
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

#[derive(Clone, Copy, ValueEnum)]
enum Preset {
    /// The paper's three families on all GLUE tasks (GPU).
    Paper,
    /// The ../shared MiniLM pair on GLUE (this 2-core CPU, under an hour).
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
        } => reproduce::run(
            &root,
            &shared_dir(&root),
            &reproduce::Options {
                preset: preset.name().to_string(),
                results,
                dry_run,
            },
        ),
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
