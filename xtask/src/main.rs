//! `cargo xtask`: project automation (reproduction grids, benchmarks, fixture regeneration).
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

mod bench;
mod charts;
mod compare_torch;
mod fuzz;
mod paper;
mod paper_shapes;
mod params;
mod preset;
mod reproduce;
mod schedule;
mod slurm;
mod slurm_test;
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
        /// Runs of the grid to train at once, each its own `kdlora train` process (default: the
        /// number of --devices, else 1: one after another). A KD-LoRA run waits for its FFT
        /// teachers. With more than one, each run's output goes to <results>/logs/ and the console
        /// gets one line per start and end. CPU runs get max(1, cores / N) threads each
        /// (RAYON_NUM_THREADS, MATMUL_NUM_THREADS): N runs using every core each would fight over
        /// the cores and all run slower.
        #[arg(long, short = 'j')]
        jobs: Option<usize>,
        /// Devices the job slots take in turn, one kind only: cuda:0,cuda:1,... (each slot pinned
        /// to its GPU through CUDA_VISIBLE_DEVICES; the runs' `device` becomes cuda), or cpu,
        /// ndarray, wgpu, cuda (the default device). Default: each run's configured device.
        #[arg(long, value_delimiter = ',')]
        devices: Option<Vec<String>>,
        /// Write the grid as Slurm job arrays instead of running it: one array task per run
        /// (teachers, then the runs that need no teacher, then the KD-LoRA students after the
        /// teachers), and a job that writes the tables. Submit with `bash <out>/submit.sh`.
        #[arg(
            long,
            value_enum,
            conflicts_with_all = ["dry_run", "compare_torch", "paper_shapes_only", "jobs"]
        )]
        emit: Option<Emit>,
        /// The Slurm folder of --emit slurm and --gather (default: <results>/slurm); it and the
        /// results folder must be on a filesystem the compute nodes share.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Write the tables from the run folders of an emitted Slurm grid (what its gather job
        /// does); the grid (tasks, seeds, devices) is the emitted one.
        #[arg(
            long,
            conflicts_with_all = ["emit", "dry_run", "compare_torch", "paper_shapes_only", "jobs", "devices", "tasks", "seeds"]
        )]
        gather: bool,
        /// --emit slurm: each run's partition (default: the preset's [slurm], else the cluster's).
        #[arg(long, requires = "emit")]
        slurm_partition: Option<String>,
        /// --emit slurm: each run's time limit (`4:00:00`, `1-00:00:00`).
        #[arg(long, requires = "emit")]
        slurm_time: Option<String>,
        /// --emit slurm: CPUs per run (--cpus-per-task); CPU runs use that many threads.
        #[arg(long, requires = "emit")]
        slurm_cpus: Option<u32>,
        /// --emit slurm: GPUs per run (--gres=gpu:N).
        #[arg(long, requires = "emit")]
        slurm_gpus: Option<u32>,
        /// --emit slurm: memory per run (--mem, e.g. 16G).
        #[arg(long, requires = "emit")]
        slurm_mem: Option<String>,
        /// --emit slurm: another sbatch option for every job, repeatable
        /// (--slurm-option=--account=proj --slurm-option=--qos=normal).
        #[arg(long, requires = "emit", allow_hyphen_values = true)]
        slurm_option: Vec<String>,
    },
    /// Runs the `quick` preset through a real Slurm (a one-node cluster on this machine, set up by
    /// xtask/slurm/local-cluster.sh when `sinfo` finds none; that needs root and apt-get) and
    /// checks that its tables match the `--jobs 2` path's, and that a resubmission reuses finished
    /// runs. Uses KDLORA_BIN when set, else builds kdlora.
    SlurmTest {
        /// Work folder (default: target/slurm-test); emptied first.
        #[arg(long)]
        work: Option<PathBuf>,
        /// Minutes to wait for each submission before cancelling it.
        #[arg(long, default_value_t = 30)]
        timeout_min: u64,
        /// Keep the work folder after a pass (about 2 GB of run folders); a failure always keeps it.
        #[arg(long)]
        keep: bool,
    },
    /// One array task of an emitted Slurm grid (run by `<out>/cell.sbatch`).
    #[command(hide = true)]
    SlurmCell {
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        emission: String,
        #[arg(long, value_enum)]
        group: slurm::Group,
        #[arg(long)]
        index: usize,
        #[arg(long)]
        kdlora: PathBuf,
    },
    /// The gather job of an emitted Slurm grid (run by `<out>/gather.sbatch`).
    #[command(hide = true)]
    SlurmGather {
        #[arg(long)]
        out: PathBuf,
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
    /// Redraw the charts of results folders from the data they hold: results.json (reproduce),
    /// bench.json (bench) and each run's train_log.jsonl under runs/ (its loss.svg).
    Charts {
        /// Results folders (e.g. results/quick docs/results/cpu-distill).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
    /// Build the kdlora binary the way `cargo test --workspace` does (one build of Burn serves
    /// both) and print its path.
    BuildCli,
    /// Regenerate the Hugging Face parity fixtures with the pinned Python environment.
    Fixtures {
        /// Python interpreter with torch, transformers and peft installed (versions pinned in the scripts).
        #[arg(long, env = "KDLORA_FIXTURE_PYTHON", default_value = "python3")]
        python: String,
    },
    /// Fuzz every loader of user files (GLUE data, configs, safetensors, adapters, the
    /// teacher-logit store, checkpoints) for N minutes per target: the long form of the
    /// harness `cargo test` runs briefly. Exits non-zero on any crash or hang.
    Fuzz {
        /// Minutes per target.
        #[arg(long)]
        minutes: f64,
        /// Only these targets (default: all; names as printed in the table).
        #[arg(long, value_delimiter = ',')]
        target: Option<Vec<String>>,
        /// Seed of the mutations (default: the harness's fixed seed).
        #[arg(long)]
        seed: Option<u64>,
        /// Folder for reports and crash inputs (default: target/fuzz).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Peak MiB one execution may allocate before it counts as a crash (default 512).
        #[arg(long)]
        memory_mb: Option<u64>,
        /// Milliseconds after which an execution counts as a hang (default 5000).
        #[arg(long)]
        timeout_ms: Option<u64>,
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

/// What `reproduce --emit` writes instead of running the grid.
#[derive(Clone, Copy, ValueEnum)]
enum Emit {
    /// Slurm job arrays (`sbatch`).
    Slurm,
}

#[derive(Clone, Copy, ValueEnum)]
enum Preset {
    /// The paper's three families on all GLUE tasks (GPU).
    Paper,
    /// The ../shared MiniLM pair on GLUE at the paper's recipe (about an hour or more on a CPU;
    /// docs/results/cpu has the measured time).
    Cpu,
    /// Two small tasks, one epoch (minutes).
    Quick,
    /// Does distillation pay on this CPU? The MiniLM pair on three tasks with 6,000 training rows,
    /// two epochs, one teacher and three student seeds (under an hour on a CPU;
    /// docs/results/cpu-distill has the measured time).
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
            jobs,
            devices,
            emit,
            out,
            gather,
            slurm_partition,
            slurm_time,
            slurm_cpus,
            slurm_gpus,
            slurm_mem,
            slurm_option,
        } => {
            let default_results = || root.join("results").join(preset.name());
            if let Some(Emit::Slurm) = emit {
                let results = results.unwrap_or_else(default_results);
                let out = out.unwrap_or_else(|| results.join("slurm"));
                let kdlora = reproduce::build_cli(&root)?;
                let xtask = std::env::current_exe().context("locating the xtask binary")?;
                let emitted = slurm::emit(
                    &root,
                    &shared_dir(&root),
                    &slurm::EmitOptions {
                        preset: preset.name(),
                        results: &results,
                        out: &out,
                        tasks: tasks.as_deref(),
                        seeds: seeds.as_deref(),
                        devices: devices.as_deref(),
                        resources: slurm::Resources {
                            partition: slurm_partition,
                            time: slurm_time,
                            cpus: slurm_cpus,
                            gpus: slurm_gpus,
                            mem: slurm_mem,
                            options: slurm_option,
                        },
                        kdlora: &kdlora,
                        xtask: &xtask,
                    },
                )?;
                let counts: Vec<String> = emitted
                    .counts
                    .iter()
                    .map(|(group, n)| format!("{n} {}", group.name()))
                    .collect();
                eprintln!(
                    "reproduce {} --emit slurm: {} (runs to {}).\n  submit: bash {}\n  \
                     tables: written by the submission's last job, or `cargo xtask reproduce {} \
                     --gather --out {}`",
                    preset.name(),
                    counts.join(", "),
                    emitted.results.display(),
                    emitted.out.join("submit.sh").display(),
                    preset.name(),
                    emitted.out.display()
                );
                return Ok(());
            }
            if gather {
                let out = out.unwrap_or_else(|| {
                    results
                        .clone()
                        .unwrap_or_else(default_results)
                        .join("slurm")
                });
                return slurm::gather_preset(preset.name(), results.as_deref(), &out);
            }
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
                    jobs,
                    devices,
                },
            )
        }
        Task::SlurmTest {
            work,
            timeout_min,
            keep,
        } => slurm_test::run(
            &root,
            &shared_dir(&root),
            work.unwrap_or_else(|| root.join("target/slurm-test")),
            std::time::Duration::from_secs(timeout_min * 60),
            keep,
        ),
        Task::SlurmCell {
            out,
            emission,
            group,
            index,
            kdlora,
        } => slurm::cell_task(&out, &emission, group, index, &kdlora),
        Task::SlurmGather { out } => slurm::gather(&out),
        Task::Fixtures { python } => fixtures(&root, &python),
        Task::Charts { dirs } => charts::redraw(&dirs),
        Task::BuildCli => {
            println!("{}", reproduce::build_cli(&root)?.display());
            Ok(())
        }
        Task::Fuzz {
            minutes,
            target,
            seed,
            out,
            memory_mb,
            timeout_ms,
        } => fuzz::run(
            &root,
            &fuzz::Options {
                minutes,
                targets: target,
                seed,
                out,
                memory_mb,
                timeout_ms,
            },
        ),
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
