//! `cargo xtask reproduce`: runs a preset's grid through the `kdlora` binary (one process per run, so
//! each run's peak memory is its own; `--jobs N` runs N of them at once), resuming finished runs,
//! then writes the tables.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::preset::{Cell, Preset, Vars, uses_teacher};
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
    /// Grid cells run at once, each as its own `kdlora train` process (default: one per entry of
    /// `devices`, else 1, which runs them one after another as before).
    pub jobs: Option<usize>,
    /// Devices the job slots take in turn (`cuda:0`, `cuda:1`, `cpu`, ...; see [`plan_slots`]);
    /// `None` leaves each run's configured `device`.
    pub devices: Option<Vec<String>>,
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
    let vars = Vars::new(preset_vars(root, shared));
    let cells = preset.cells(&vars)?;
    check_inputs(&cells, &options.preset)?;
    let cuda_visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    let jobs = match (options.jobs, &options.devices) {
        (None, None) => preset.jobs,
        (jobs, _) => jobs,
    };
    let slots = plan_slots(jobs, options.devices.as_deref(), cuda_visible.as_deref())?;
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
    if slots.len() > 1 || options.devices.is_some() {
        eprintln!("  {}", describe_slots(&slots, &results));
    }
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
    let started = Instant::now();
    let grid = run_grid(&cells, &results, &slots, &KdloraProcess { kdlora: &kdlora })?;
    let mut failures: Vec<String> = grid.iter().filter_map(|o| o.failure.clone()).collect();
    let outcomes: Vec<CellResult> = grid.into_iter().map(|o| o.result).collect();
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

/// The `${NAME}`s a preset's paths may use beyond the environment's.
pub(crate) fn preset_vars(root: &Path, shared: &Path) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("KDLORA_SHARED".to_string(), shared.display().to_string()),
        (
            "KDLORA_GLUE".to_string(),
            std::env::var("KDLORA_GLUE")
                .unwrap_or_else(|_| root.join("data/glue").display().to_string()),
        ),
    ])
}

/// Device kinds the run configuration's `device` key takes (as compiled into `kdlora`).
const DEVICE_KINDS: [&str; 5] = ["cpu", "ndarray", "wgpu", "cuda", "candle"];
/// Of those, the ones that compute on the CPU's cores (whose threads `--jobs` divides).
const CPU_KINDS: [&str; 3] = ["cpu", "ndarray", "candle"];

/// Where one job slot runs its cells.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Slot {
    /// The run configuration's `device` for this slot's cells; `None` keeps the preset's.
    device: Option<String>,
    /// `CUDA_VISIBLE_DEVICES` for this slot's children: kdlora's `cuda` device is the first
    /// visible GPU, so this is how `cuda:N` picks GPU N without an index in the run configuration
    /// (which would also make a finished run look changed when it is rerun on another GPU).
    cuda_visible: Option<String>,
}

/// The job slots for `--jobs` and `--devices`: slot `i` takes `devices[i % len]`; the number of
/// slots defaults to the number of devices, else 1. `cuda_visible` is this process's
/// `CUDA_VISIBLE_DEVICES`, through which `cuda:N` is mapped (N counts the GPUs visible to us).
pub(crate) fn plan_slots(
    jobs: Option<usize>,
    devices: Option<&[String]>,
    cuda_visible: Option<&str>,
) -> Result<Vec<Slot>> {
    let Some(devices) = devices else {
        let jobs = jobs.unwrap_or(1);
        if jobs == 0 {
            bail!("--jobs must be at least 1");
        }
        return Ok(vec![Slot::default(); jobs]);
    };
    if devices.is_empty() {
        bail!("--devices needs at least one device");
    }
    let visible: Option<Vec<&str>> = cuda_visible
        .filter(|v| !v.trim().is_empty())
        .map(|v| v.split(',').map(str::trim).collect());
    let mut parsed = Vec::with_capacity(devices.len());
    for spec in devices {
        let (kind, index) = match spec.split_once(':') {
            Some((kind, index)) => (kind, Some(index)),
            None => (spec.as_str(), None),
        };
        if !DEVICE_KINDS.contains(&kind) {
            bail!(
                "--devices: unknown device `{spec}` (expected {}, or cuda:N)",
                DEVICE_KINDS.join(", ")
            );
        }
        let cuda_visible = match index {
            None => None,
            Some(index) if kind == "cuda" => {
                let n: usize = index.parse().with_context(|| {
                    format!("--devices: `{spec}`: `{index}` is not a GPU number")
                })?;
                Some(match &visible {
                    // Our own CUDA_VISIBLE_DEVICES renumbers the GPUs; pass on the one it maps N to.
                    Some(list) => list.get(n).map(|s| s.to_string()).with_context(|| {
                        format!(
                            "--devices: `{spec}`, but CUDA_VISIBLE_DEVICES={} makes only {} GPU(s) visible",
                            cuda_visible.unwrap_or_default(),
                            list.len()
                        )
                    })?,
                    None => n.to_string(),
                })
            }
            Some(_) => bail!(
                "--devices: `{spec}`: only cuda devices take an index (kdlora runs `{kind}` on its \
                 default device); list `{kind}` once per job, or use cuda:N"
            ),
        };
        parsed.push(Slot {
            device: Some(kind.to_string()),
            cuda_visible,
        });
    }
    if parsed.iter().any(|s| s.device != parsed[0].device) {
        // A cell's configuration (and with it whether a finished run is reused) would depend on
        // which slot happened to take it.
        bail!(
            "--devices: {} mixes device kinds; list devices of one kind",
            devices.join(",")
        );
    }
    let jobs = jobs.unwrap_or(parsed.len());
    if jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    Ok((0..jobs)
        .map(|i| parsed[i % parsed.len()].clone())
        .collect())
}

/// Threads for each of `jobs` CPU runs side by side: the cores split between them, so that they
/// do not oversubscribe the cores and slow each other down.
fn cpu_threads(jobs: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / jobs.max(1)).max(1)
}

/// One line saying how the grid will run: slots, devices, threads, logs.
fn describe_slots(slots: &[Slot], results: &Path) -> String {
    let devices: Vec<String> = slots
        .iter()
        .map(|s| match (&s.device, &s.cuda_visible) {
            (Some(d), Some(v)) => format!("{d} (CUDA_VISIBLE_DEVICES={v})"),
            (Some(d), None) => d.clone(),
            (None, _) => "the configured device".into(),
        })
        .collect();
    let mut line = format!("{} job(s) at once on {}", slots.len(), devices.join(", "));
    if slots.len() > 1 {
        let _ = write!(
            line,
            "; {} thread(s) per CPU run; each run's output in {}",
            cpu_threads(slots.len()),
            results.join("logs").display()
        );
    }
    line
}

/// What one run of the grid came to.
#[derive(Debug, Clone)]
pub(crate) struct CellOutcome {
    pub result: CellResult,
    /// Why it has no result: its training failed, or it had no teacher to distil from.
    pub failure: Option<String>,
}

/// One `kdlora train` to run, prepared by [`run_grid`].
pub(crate) struct Launch<'a> {
    /// The run's configuration (its `out` is the run folder).
    pub config_path: &'a Path,
    /// The run folder is left from an interrupted run of the same configuration: continue it.
    pub resume: bool,
    /// Variables to set for the child (its threads, its GPU).
    pub env: Vec<(&'static str, String)>,
    /// Where the child's output goes; `None`: the terminal, as with one job.
    pub log: Option<&'a Path>,
}

/// How a training child ended.
pub(crate) struct Exit {
    pub success: bool,
    /// For messages (`exit status: 1`, `signal: 9 (SIGKILL)`).
    pub status: String,
}

/// Trains one cell. The grid's logic (teachers, reuse, resume) is [`run_grid`]'s; this only runs
/// the child, so tests can put a fake in its place.
pub(crate) trait Trainer: Sync {
    fn train(&self, launch: &Launch) -> Result<Exit>;
}

/// The real trainer: a `kdlora train` child process.
pub(crate) struct KdloraProcess<'a> {
    pub(crate) kdlora: &'a Path,
}

impl Trainer for KdloraProcess<'_> {
    fn train(&self, launch: &Launch) -> Result<Exit> {
        let mut cmd = Command::new(self.kdlora);
        cmd.arg("train").arg("--config").arg(launch.config_path);
        if launch.resume {
            cmd.arg("--resume");
        }
        cmd.envs(launch.env.iter().map(|(k, v)| (k, v)));
        // `kdlora train` prints its metrics JSON on stdout: the run folder's metrics.json holds
        // the same, and the console (or log) gets the one-line summary instead.
        cmd.stdout(Stdio::null());
        if let Some(log) = launch.log {
            // Appended to, so that an interrupted attempt's output stays above the resumed one.
            let mut file = std::fs::File::options()
                .create(true)
                .append(true)
                .open(log)
                .with_context(|| format!("opening {}", log.display()))?;
            writeln!(file, "==> {cmd:?}")?;
            // Several children must not read one terminal; they still share its process group,
            // so Ctrl-C stops them with us.
            cmd.stdin(Stdio::null()).stderr(file);
        }
        let status = cmd
            .status()
            .with_context(|| format!("starting {}", self.kdlora.display()))?;
        Ok(Exit {
            success: status.success(),
            status: status.to_string(),
        })
    }
}

/// Runs the grid's cells on `slots` (one after another when there is one slot), reusing finished
/// runs, resuming interrupted ones and training the rest; returns the outcomes in cell order,
/// whatever order the runs finished in.
///
/// A `kd-lora` cell starts only once every FFT cell it could take its teacher from has finished.
/// A failed run does not stop the others; an error of the grid itself (a run folder that cannot be
/// removed, an unreadable `metrics.json`) stops new runs, lets the running ones finish and is
/// returned.
pub(crate) fn run_grid(
    cells: &[Cell],
    results: &Path,
    slots: &[Slot],
    trainer: &dyn Trainer,
) -> Result<Vec<CellOutcome>> {
    let grid_dir = results.join("grid");
    std::fs::create_dir_all(&grid_dir)
        .with_context(|| format!("creating {}", grid_dir.display()))?;
    let parallel = slots.len() > 1;
    let log_dir = results.join("logs");
    if parallel {
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
    }
    // Exactly the runs `best_teacher` chooses among.
    let deps: Vec<Vec<usize>> = cells
        .iter()
        .map(|cell| {
            if !uses_teacher(&cell.method) {
                return Vec::new();
            }
            cells
                .iter()
                .enumerate()
                .filter(|(_, c)| {
                    c.method == "fft" && c.family == cell.family && c.task == cell.task
                })
                .map(|(j, _)| j)
                .collect()
        })
        .collect();
    let grid = Grid {
        cells,
        results,
        grid_dir: &grid_dir,
        log_dir: parallel.then_some(log_dir.as_path()),
        threads: parallel.then(|| cpu_threads(slots.len())),
        progress: Progress::new(cells.len(), slots.len()),
        trainer,
        noted_no_log: AtomicBool::new(false),
    };
    crate::schedule::run_jobs(&deps, slots.len(), |job| {
        grid.run_cell(job.index, &slots[job.slot], &job.deps)
    })
}

struct Grid<'a> {
    cells: &'a [Cell],
    results: &'a Path,
    grid_dir: &'a Path,
    /// Per-run log files go here when runs go side by side.
    log_dir: Option<&'a Path>,
    /// Threads per CPU run when runs go side by side.
    threads: Option<usize>,
    progress: Progress,
    trainer: &'a dyn Trainer,
    /// Whether the note about runs without a `train_log.jsonl` was printed.
    noted_no_log: AtomicBool,
}

impl Grid<'_> {
    /// One cell, given the outcomes of the cells it depends on (its candidate teachers).
    fn run_cell(&self, index: usize, slot: &Slot, teachers: &[CellOutcome]) -> Result<CellOutcome> {
        let cell = &self.cells[index];
        let run_dir = cell.run_dir(self.results);
        let name = cell_name(cell);
        let label = format!(
            "[{}/{}] {} {} {} {}",
            index + 1,
            self.cells.len(),
            cell.family,
            cell.task,
            cell.method,
            cell.config_id
        );
        let failed = |msg: String| CellOutcome {
            result: CellResult::failed(cell, &run_dir),
            failure: Some(msg),
        };
        let metrics_path = run_dir.join("metrics.json");
        let teacher = if uses_teacher(&cell.method) {
            match best_teacher(cell, teachers.iter().map(|o| &o.result)) {
                Some(dir) => Some(dir),
                None => {
                    let msg = format!("{label}: no finished FFT teacher run for this task");
                    self.progress.finished(&format!("{msg}; skipped"), None);
                    return Ok(failed(msg));
                }
            }
        } else {
            None
        };
        let table = cell_config(cell, slot, &run_dir, teacher.as_deref());
        let config_path = self.grid_dir.join(format!("{name}.toml"));
        let config_text = toml::to_string_pretty(&table)?;
        // A finished run is reused only when it was trained from exactly this configuration: an
        // edited preset (or a different teacher) must not leave stale numbers in the tables.
        let unchanged = std::fs::read_to_string(&config_path).is_ok_and(|old| old == config_text);
        if metrics_path.is_file() && unchanged {
            let result = CellResult::load(cell, &run_dir)?;
            self.loss_chart(cell, &run_dir);
            self.progress.finished(
                &format!(
                    "{label}: finished earlier, reused; {}",
                    score_summary(&result)
                ),
                None,
            );
            return Ok(CellOutcome {
                result,
                failure: None,
            });
        }
        if run_dir.exists() && !unchanged {
            eprintln!("{label}: its configuration changed since the earlier run; training afresh");
            std::fs::remove_dir_all(&run_dir)
                .with_context(|| format!("removing {}", run_dir.display()))?;
        }
        std::fs::write(&config_path, &config_text)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let device = table
            .get("device")
            .and_then(|v| v.as_str())
            .unwrap_or("cpu");
        let mut env = Vec::new();
        if let Some(threads) = self.threads
            && CPU_KINDS.contains(&device)
        {
            // Both pools read these once at start: Burn's CPU backends (rayon) and matrixmultiply.
            env.push(("RAYON_NUM_THREADS", threads.to_string()));
            env.push(("MATMUL_NUM_THREADS", threads.to_string()));
        }
        if let Some(visible) = &slot.cuda_visible {
            env.push(("CUDA_VISIBLE_DEVICES", visible.clone()));
        }
        let log = self.log_dir.map(|dir| dir.join(format!("{name}.log")));
        self.progress.started(&label, log.as_deref());
        let t0 = Instant::now();
        let exit = self.trainer.train(&Launch {
            config_path: &config_path,
            resume: run_dir.exists(),
            env,
            log: log.as_deref(),
        })?;
        let seconds = t0.elapsed().as_secs_f64();
        if !exit.success || !metrics_path.is_file() {
            let mut msg = format!(
                "{label}: `kdlora train --config {}` failed ({})",
                config_path.display(),
                exit.status
            );
            let line = match &log {
                Some(log) => {
                    let _ = write!(msg, "; log: {}", log.display());
                    format!(
                        "{label}: failed after {seconds:.0} s (see log {}; last lines:{})",
                        log.display(),
                        last_lines(log, 5)
                            .iter()
                            .map(|l| format!("\n      {l}"))
                            .collect::<String>()
                    )
                }
                None => msg.clone(),
            };
            self.progress.finished(&line, Some(seconds));
            return Ok(failed(msg));
        }
        let result = CellResult::load(cell, &run_dir)?;
        self.loss_chart(cell, &run_dir);
        self.progress.finished(
            &format!(
                "{label}: done in {seconds:.0} s; {}",
                score_summary(&result)
            ),
            Some(seconds),
        );
        Ok(CellOutcome {
            result,
            failure: None,
        })
    }

    /// Draws the run's `loss.svg` from its `train_log.jsonl`. A run without that log (a `kdlora`
    /// that writes none) gets a note once per grid; a chart that cannot be drawn never fails the
    /// run, whose results are already on disk.
    fn loss_chart(&self, cell: &Cell, run_dir: &Path) {
        let title = format!(
            "{} {} {} {}: training loss",
            cell.family, cell.task, cell.method, cell.config_id
        );
        match crate::charts::write_loss_chart(run_dir, &title) {
            Ok(crate::charts::LossChart::NoLog) => {
                if !self.noted_no_log.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "note: {} has no {}, so no loss.svg (a kdlora without step logging)",
                        run_dir.display(),
                        crate::charts::TRAIN_LOG
                    );
                }
            }
            Ok(_) => {}
            Err(e) => eprintln!("note: no loss.svg for {}: {e:#}", run_dir.display()),
        }
    }
}

/// A finished run's dev score as a line states it: x100 with two decimals, as the tables round it.
pub(crate) fn score_summary(result: &CellResult) -> String {
    let mut text = match result.score {
        Some(score) => format!("score {score:.2}"),
        None => "no score".to_string(),
    };
    if let Some(mm) = result.score_mismatched {
        let _ = write!(text, " (mismatched {mm:.2})");
    }
    if let (Some(best), Some(last)) = (result.best_score, result.score)
        && (best - last).abs() >= 0.005
    {
        let _ = write!(text, ", best epoch {best:.2}");
    }
    text
}

/// A cell's name in `grid/` (its configuration) and `logs/`.
pub(crate) fn cell_name(cell: &Cell) -> String {
    format!(
        "{}-{}-{}-{}",
        cell.family, cell.task, cell.method, cell.config_id
    )
}

/// The configuration a cell trains from (`grid/NAME.toml`), in one place so that the Slurm path
/// (`crate::slurm`) writes and checks exactly what `run_grid` does.
pub(crate) fn cell_config(
    cell: &Cell,
    slot: &Slot,
    run_dir: &Path,
    teacher: Option<&Path>,
) -> toml::Table {
    let mut table = cell.run_config.clone();
    if let Some(device) = &slot.device {
        table.insert("device".into(), device.clone().into());
    }
    table.insert("out".into(), run_dir.display().to_string().into());
    if let Some(teacher) = teacher {
        table.insert("teacher".into(), teacher.display().to_string().into());
    }
    table
}

/// One cell outside [`run_grid`], given the outcomes of its candidate teachers (a Slurm array task,
/// `crate::slurm`): the same reuse, resume and teacher rules; its output goes to
/// `<results>/logs/`, and CPU runs get `threads` threads when given.
pub(crate) fn run_one_cell(
    cells: &[Cell],
    index: usize,
    results: &Path,
    slot: &Slot,
    threads: Option<usize>,
    teachers: &[CellOutcome],
    trainer: &dyn Trainer,
) -> Result<CellOutcome> {
    let grid_dir = results.join("grid");
    let log_dir = results.join("logs");
    for dir in [&grid_dir, &log_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let grid = Grid {
        cells,
        results,
        grid_dir: &grid_dir,
        log_dir: Some(&log_dir),
        threads,
        progress: Progress::new(1, 1),
        trainer,
        noted_no_log: AtomicBool::new(false),
    };
    grid.run_cell(index, slot, teachers)
}

/// The last `n` non-empty lines of a log (progress bars redraw with `\r`: each redraw is a line).
fn last_lines(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text
        .split(['\n', '\r'])
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.chars().take(240).collect())
        .collect()
}

/// The console side of a grid run: one line per event. With one slot, the lines the sequential
/// grid always printed (the child's own output in between); with several, each line also says how
/// far the grid is, how long it has run and about how long it has left.
struct Progress {
    total: usize,
    slots: usize,
    t0: Instant,
    state: Mutex<ProgressState>,
}

#[derive(Default)]
struct ProgressState {
    /// Cells with an outcome (trained, failed, reused or skipped).
    finished: usize,
    /// Seconds of the runs that trained (reused runs take none, so they do not count).
    ran_seconds: Vec<f64>,
}

impl Progress {
    fn new(total: usize, slots: usize) -> Self {
        Self {
            total,
            slots,
            t0: Instant::now(),
            state: Mutex::new(ProgressState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProgressState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn started(&self, label: &str, log: Option<&Path>) {
        let state = self.lock();
        match log {
            None => {
                let eta = eta(&state.ran_seconds, self.total - state.finished);
                eprintln!("{label}: training{eta}");
            }
            Some(log) => eprintln!(
                "{label}: started (log: {}){}",
                log.display(),
                self.where_we_are(&state)
            ),
        }
    }

    /// A cell's outcome: `line` says what it was; `seconds` when it trained (or tried to).
    fn finished(&self, line: &str, seconds: Option<f64>) {
        let mut state = self.lock();
        state.finished += 1;
        state.ran_seconds.extend(seconds);
        if self.slots > 1 {
            eprintln!("{line}{}", self.where_we_are(&state));
        } else {
            eprintln!("{line}");
        }
    }

    /// ` [3/12 finished, 4.2 min elapsed, about 10 min left]`: the left time is the mean of the
    /// runs trained so far for each run left, shared among the slots.
    fn where_we_are(&self, state: &ProgressState) -> String {
        // A lone cell (a Slurm array task) has no grid to place it in.
        if self.total <= 1 {
            return String::new();
        }
        let left = self.total - state.finished;
        let mut text = format!(
            " [{}/{} finished, {:.1} min elapsed",
            state.finished,
            self.total,
            self.t0.elapsed().as_secs_f64() / 60.0
        );
        if !state.ran_seconds.is_empty() && left > 0 {
            let mean = state.ran_seconds.iter().sum::<f64>() / state.ran_seconds.len() as f64;
            let minutes = mean * left as f64 / self.slots.min(left) as f64 / 60.0;
            if minutes < 1.0 {
                text.push_str(", under a minute left");
            } else {
                let _ = write!(text, ", about {minutes:.0} min left");
            }
        }
        text.push(']');
        text
    }
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
pub(crate) fn best_teacher<'a>(
    cell: &Cell,
    outcomes: impl IntoIterator<Item = &'a CellResult>,
) -> Option<PathBuf> {
    outcomes
        .into_iter()
        .filter(|o| o.family == cell.family && o.task == cell.task && o.method == "fft")
        .filter_map(|o| o.score.map(|s| (s, &o.run_dir)))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, dir)| dir.clone())
}

/// Fails early, naming what to get, when a preset's local models or data are absent.
pub(crate) fn check_inputs(cells: &[Cell], preset: &str) -> Result<()> {
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

/// The cargo command that builds the `kdlora` binary: the build of `cargo test --workspace` (the
/// README's second command, and CI's), without running the tests.
///
/// Cargo resolves features for the packages and targets a command selects. `-p kdlora-cli` leaves
/// out the other members' features, and even `cargo build --workspace` leaves out the
/// dev-dependencies' and builds Burn a second time next to the tests' build. The tests' own
/// command gives every crate of the CubeCL/Burn tree the fingerprint the tests need, so either
/// command reuses the other's build; `.ci/run` fails when that stops being true.
pub(crate) fn cli_build_args(release: bool) -> Vec<&'static str> {
    let mut args = vec!["test", "--workspace", "--no-run"];
    if release {
        args.push("--release");
    }
    args
}

/// Builds the `kdlora` binary in the profile xtask itself runs in (see [`cli_build_args`]) and
/// returns its path.
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
    let args = cli_build_args(release);
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root).args(&args);
    // From a fresh clone this compiles all of Burn: say so before the wait starts.
    eprintln!(
        "building kdlora: cargo {} (the build `cargo test --workspace` reuses; the first one \
         compiles Burn and takes a while)",
        args.join(" ")
    );
    let status = cmd
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
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
pub(crate) mod tests {
    use super::*;

    /// The binary the xtask runs comes out of the tests' own build: the same command (less
    /// running the tests), no package selection or feature flags of its own. `.ci/run` checks the outcome (no
    /// Burn crate compiles when the xtask builds after the tests).
    #[test]
    fn kdlora_is_built_by_the_workspace_build_the_tests_share() {
        assert_eq!(cli_build_args(false), ["test", "--workspace", "--no-run"]);
        assert_eq!(
            cli_build_args(true),
            ["test", "--workspace", "--no-run", "--release"]
        );
        let root = crate::workspace_root();
        let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
        assert!(
            ci.contains("\ncargo test --workspace\n"),
            "CI's test command changed"
        );
        assert!(
            ci.contains("cargo xtask build-cli"),
            "CI no longer checks the shared build"
        );
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        assert!(
            readme.contains("cargo test --workspace "),
            "README's test command changed"
        );
    }

    /// A Slurm array task runs one cell: its log starts without a meaningless `[0/1 finished]`.
    #[test]
    fn progress_places_a_run_only_within_a_grid() {
        let lone = Progress::new(1, 1);
        assert_eq!(lone.where_we_are(&lone.lock()), "");
        let grid = Progress::new(3, 2);
        let text = grid.where_we_are(&grid.lock());
        assert!(text.starts_with(" [0/3 finished, "), "{text}");
    }

    /// A grid of two tasks: two FFT learning rates (the teacher candidates), one LoRA, one
    /// KD-LoRA configuration each; eight cells.
    fn fake_grid_preset(epochs: i64) -> Preset {
        toml::from_str(&format!(
            r#"
description = "fake"
top_k = 1
seeds = [1]
[[families]]
name = "F"
teacher = "bert-base-uncased"
student = "distilbert-base-uncased"
[[tasks]]
name = "rte"
data = "/glue"
[[tasks]]
name = "mrpc"
data = "/glue"
[common]
epochs = {epochs}
[grid.fft]
lr = [1e-5, 3e-5]
[grid.lora]
lr = [1e-3]
[grid.kd-lora]
lr = [2e-3]
"#
        ))
        .unwrap()
    }

    fn fake_cells(preset: &Preset) -> Vec<Cell> {
        preset.cells(&Vars::new(BTreeMap::new())).unwrap()
    }

    /// The `metrics.json` a run scoring `score` would write.
    pub(crate) fn fake_metrics(score: f64) -> String {
        use kdlora_schema::{EpochRecord, Memory, Method, ParamCounts, RunMetrics, Throughput};
        let record = EpochRecord {
            epoch: 1,
            step: 1,
            train_loss: 0.1,
            lr: 0.0,
            score,
            score_mismatched: None,
            dev: serde_json::Value::Null,
            dev_mismatched: None,
            train_seconds: 1.0,
            eval_seconds: 1.0,
        };
        serde_json::to_string(&RunMetrics {
            method: Method::Fft,
            task: "rte".into(),
            model: "m".into(),
            model_hub: None,
            teacher: None,
            device: "cpu".into(),
            train_examples: 10,
            dev_examples: 400,
            dev_mismatched_examples: None,
            majority_baseline: None,
            epochs: 1,
            last: record.clone(),
            best: record,
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
        })
        .unwrap()
    }

    #[derive(Debug, Clone, PartialEq)]
    enum Event {
        Start(PathBuf),
        End(PathBuf),
    }

    /// What the fake trainer was asked to do for one run.
    #[derive(Debug, Clone)]
    struct Call {
        run_dir: PathBuf,
        config: toml::Table,
        resume: bool,
        env: Vec<(&'static str, String)>,
        log: Option<PathBuf>,
    }

    /// A stand-in for `kdlora train`: writes the `metrics.json` a run would (FFT scored by its
    /// learning rate, so the teacher to pick is known), or fails the runs whose folder contains one
    /// of `fail`; records every call, start and end, and how many ran at once.
    #[derive(Default)]
    struct FakeTrainer {
        fail: Vec<&'static str>,
        calls: Mutex<Vec<Call>>,
        events: Mutex<Vec<Event>>,
        running: std::sync::atomic::AtomicUsize,
        most: std::sync::atomic::AtomicUsize,
    }

    impl Trainer for FakeTrainer {
        fn train(&self, launch: &Launch) -> Result<Exit> {
            use std::sync::atomic::Ordering::SeqCst;
            let now = self.running.fetch_add(1, SeqCst) + 1;
            self.most.fetch_max(now, SeqCst);
            let config: toml::Table =
                toml::from_str(&std::fs::read_to_string(launch.config_path)?)?;
            let run_dir = PathBuf::from(config["out"].as_str().unwrap());
            self.events
                .lock()
                .unwrap()
                .push(Event::Start(run_dir.clone()));
            self.calls.lock().unwrap().push(Call {
                run_dir: run_dir.clone(),
                config: config.clone(),
                resume: launch.resume,
                env: launch.env.clone(),
                log: launch.log.map(Path::to_path_buf),
            });
            if let Some(log) = launch.log {
                std::fs::write(log, "loading\nepoch 1\ntraining went wrong\n")?;
            }
            // Teachers take longer, so a student started too early would overlap them.
            let fft = config["method"].as_str() == Some("fft");
            std::thread::sleep(std::time::Duration::from_millis(if fft { 30 } else { 5 }));
            let failing = self
                .fail
                .iter()
                .any(|f| run_dir.to_str().unwrap().contains(f));
            if !failing {
                let score = match config["lr"].as_float() {
                    Some(lr) if fft => 50.0 + lr * 1e5,
                    _ => 60.0,
                };
                std::fs::create_dir_all(&run_dir)?;
                std::fs::write(run_dir.join("metrics.json"), fake_metrics(score))?;
            }
            self.events.lock().unwrap().push(Event::End(run_dir));
            self.running.fetch_sub(1, SeqCst);
            Ok(Exit {
                success: !failing,
                status: if failing {
                    "exit status: 1".into()
                } else {
                    "exit status: 0".into()
                },
            })
        }
    }

    impl FakeTrainer {
        fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }
    }

    #[test]
    fn parallel_grid_waits_for_teachers_and_skips_students_whose_teachers_all_failed() {
        let preset = fake_grid_preset(1);
        let cells = fake_cells(&preset);
        assert_eq!(cells.len(), 8);
        let results = tempfile::tempdir().unwrap();
        let trainer = FakeTrainer {
            fail: vec!["/mrpc/fft/"],
            ..Default::default()
        };
        let slots = plan_slots(Some(3), None, None).unwrap();
        let outcomes = run_grid(&cells, results.path(), &slots, &trainer).unwrap();

        // In the grid's order, whatever order they finished in.
        let key = |c: &Cell| (c.family.clone(), c.task.clone(), c.method.clone(), c.seed);
        assert_eq!(
            outcomes
                .iter()
                .map(|o| (
                    o.result.family.clone(),
                    o.result.task.clone(),
                    o.result.method.clone(),
                    o.result.seed
                ))
                .collect::<Vec<_>>(),
            cells.iter().map(key).collect::<Vec<_>>()
        );
        let most = trainer.most.load(std::sync::atomic::Ordering::SeqCst);
        assert!((1..=3).contains(&most), "{most} ran at once");

        // Every student started after every FFT run of its task had ended.
        let events = trainer.events.lock().unwrap().clone();
        let at = |e: &Event| events.iter().position(|x| x == e);
        for student in cells.iter().filter(|c| c.method == "kd-lora") {
            let Some(start) = at(&Event::Start(student.run_dir(results.path()))) else {
                continue;
            };
            for teacher in cells
                .iter()
                .filter(|c| c.method == "fft" && c.task == student.task)
            {
                let end = at(&Event::End(teacher.run_dir(results.path()))).unwrap();
                assert!(end < start, "{} started before its teacher", student.task);
            }
        }

        // RTE's student distils from the better of its two teachers (lr 3e-5 scores 53).
        let calls = trainer.calls();
        let rte_student = calls
            .iter()
            .find(|c| c.run_dir.ends_with("rte/kd-lora/lr0.002_s1"))
            .unwrap();
        assert_eq!(
            rte_student.config["teacher"].as_str().map(PathBuf::from),
            Some(results.path().join("runs/F/rte/fft/lr0.00003_s1"))
        );
        // MRPC's teachers both failed: its student is skipped, not trained, and counted as failed.
        assert!(
            !calls
                .iter()
                .any(|c| c.run_dir.ends_with("mrpc/kd-lora/lr0.002_s1"))
        );
        let failures: Vec<&str> = outcomes
            .iter()
            .filter_map(|o| o.failure.as_deref())
            .collect();
        assert_eq!(failures.len(), 3, "{failures:?}");
        assert!(failures[2].contains("F mrpc kd-lora lr0.002_s1: no finished FFT teacher run"));
        assert!(
            failures[0].contains("failed (exit status: 1); log: ")
                && failures[0].contains("logs/F-mrpc-fft-lr0.00001_s1.log"),
            "{}",
            failures[0]
        );
        let mrpc_student = outcomes
            .iter()
            .find(|o| o.result.task == "mrpc" && o.result.method == "kd-lora")
            .unwrap();
        assert_eq!(mrpc_student.result.score, None);
        assert_eq!(
            outcomes.iter().filter(|o| o.result.score.is_some()).count(),
            5
        );

        // Side by side, every run logs to its own file and gets its share of the cores.
        let threads = cpu_threads(3).to_string();
        for call in &calls {
            let log = call.log.as_ref().expect("a log per run");
            assert!(log.starts_with(results.path().join("logs")), "{log:?}");
            assert!(call.env.contains(&("RAYON_NUM_THREADS", threads.clone())));
            assert!(call.env.contains(&("MATMUL_NUM_THREADS", threads.clone())));
            assert!(!call.resume);
        }
        let logs: std::collections::BTreeSet<_> = calls.iter().map(|c| c.log.clone()).collect();
        assert_eq!(logs.len(), calls.len());
        assert_eq!(
            last_lines(calls[0].log.as_ref().unwrap(), 2),
            ["epoch 1", "training went wrong"]
        );
    }

    #[test]
    fn one_job_and_three_give_the_same_outcomes_and_tables() {
        let preset = fake_grid_preset(1);
        let cells = fake_cells(&preset);
        let vars = Vars::new(BTreeMap::new());
        let mut tables = Vec::new();
        for jobs in [1, 3] {
            let results = tempfile::tempdir().unwrap();
            let trainer = FakeTrainer::default();
            let slots = plan_slots(Some(jobs), None, None).unwrap();
            let outcomes = run_grid(&cells, results.path(), &slots, &trainer).unwrap();
            assert!(outcomes.iter().all(|o| o.failure.is_none()));
            let calls = trainer.calls();
            if jobs == 1 {
                // One job is the sequential grid: the grid's order, the terminal, the threads
                // the child picks itself.
                let order: Vec<_> = calls.iter().map(|c| c.run_dir.clone()).collect();
                let expected: Vec<_> = cells.iter().map(|c| c.run_dir(results.path())).collect();
                assert_eq!(order, expected);
                assert!(calls.iter().all(|c| c.log.is_none() && c.env.is_empty()));
                assert!(!results.path().join("logs").exists());
            }
            let results_only: Vec<CellResult> = outcomes.into_iter().map(|o| o.result).collect();
            tables::write_all(results.path(), "fake", &preset, &results_only, &vars).unwrap();
            tables.push(std::fs::read_to_string(results.path().join("table1.md")).unwrap());
        }
        assert!(tables[0].contains("| RTE |"), "{}", tables[0]);
        assert_eq!(tables[0], tables[1]);
    }

    #[test]
    fn a_rerun_reuses_finished_runs_resumes_interrupted_ones_and_retrains_changed_ones() {
        let preset = fake_grid_preset(1);
        let cells = fake_cells(&preset);
        let results = tempfile::tempdir().unwrap();
        let slots = plan_slots(Some(2), None, None).unwrap();
        run_grid(&cells, results.path(), &slots, &FakeTrainer::default()).unwrap();

        // Nothing changed, whatever the job count: nothing trains.
        for jobs in [1, 2] {
            let trainer = FakeTrainer::default();
            let slots = plan_slots(Some(jobs), None, None).unwrap();
            let outcomes = run_grid(&cells, results.path(), &slots, &trainer).unwrap();
            assert!(trainer.calls().is_empty(), "jobs {jobs}");
            assert!(outcomes.iter().all(|o| o.result.score.is_some()));
        }

        // An interrupted run (folder left, no metrics.json) is continued with --resume.
        let lora = cells.iter().find(|c| c.method == "lora").unwrap();
        std::fs::remove_file(lora.run_dir(results.path()).join("metrics.json")).unwrap();
        let trainer = FakeTrainer::default();
        run_grid(&cells, results.path(), &slots, &trainer).unwrap();
        let calls = trainer.calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].run_dir, lora.run_dir(results.path()));
        assert!(calls[0].resume);

        // An edited preset trains every run afresh (the old folders are removed first).
        let edited = fake_cells(&fake_grid_preset(2));
        let trainer = FakeTrainer::default();
        run_grid(&edited, results.path(), &slots, &trainer).unwrap();
        let calls = trainer.calls();
        assert_eq!(calls.len(), edited.len());
        assert!(calls.iter().all(|c| !c.resume));
        assert!(
            calls
                .iter()
                .all(|c| c.config["epochs"].as_integer() == Some(2))
        );
    }

    #[test]
    fn devices_pin_each_slot_to_its_gpu_without_splitting_cpu_threads() {
        let preset = fake_grid_preset(1);
        let cells = fake_cells(&preset);
        let results = tempfile::tempdir().unwrap();
        let devices = ["cuda:0".to_string(), "cuda:1".to_string()];
        let slots = plan_slots(None, Some(&devices), None).unwrap();
        assert_eq!(slots.len(), 2);
        let trainer = FakeTrainer::default();
        run_grid(&cells, results.path(), &slots, &trainer).unwrap();
        for call in trainer.calls() {
            assert_eq!(call.config["device"].as_str(), Some("cuda"));
            assert_eq!(call.env.len(), 1, "{:?}", call.env);
            let (name, value) = &call.env[0];
            assert_eq!(*name, "CUDA_VISIBLE_DEVICES");
            assert!(value == "0" || value == "1", "{value}");
        }
    }

    #[test]
    fn job_slots_follow_jobs_and_devices() {
        let list = |d: &[&str]| d.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let visible = |slots: &[Slot]| {
            slots
                .iter()
                .map(|s| s.cuda_visible.clone().unwrap_or_default())
                .collect::<Vec<_>>()
        };
        assert_eq!(plan_slots(None, None, None).unwrap(), [Slot::default()]);
        assert_eq!(plan_slots(Some(3), None, None).unwrap().len(), 3);
        assert!(plan_slots(Some(0), None, None).is_err());

        let two = plan_slots(None, Some(&list(&["cuda:0", "cuda:1"])), None).unwrap();
        assert_eq!(visible(&two), ["0", "1"]);
        assert!(two.iter().all(|s| s.device.as_deref() == Some("cuda")));
        // More jobs than devices: the slots take the devices in turn.
        let four = plan_slots(Some(4), Some(&list(&["cuda:0", "cuda:1"])), None).unwrap();
        assert_eq!(visible(&four), ["0", "1", "0", "1"]);
        // GPU numbers count the GPUs this process sees.
        let mapped = plan_slots(None, Some(&list(&["cuda:1"])), Some("4,5")).unwrap();
        assert_eq!(visible(&mapped), ["5"]);
        let err = plan_slots(None, Some(&list(&["cuda:2"])), Some("4,5")).unwrap_err();
        assert!(format!("{err:#}").contains("only 2 GPU(s)"), "{err:#}");

        let cpu = plan_slots(Some(2), Some(&list(&["cpu"])), None).unwrap();
        assert_eq!(cpu.len(), 2);
        assert!(
            cpu.iter()
                .all(|s| s.device.as_deref() == Some("cpu") && s.cuda_visible.is_none())
        );
        for bad in [
            &["cpu", "cuda:0"][..],
            &["wgpu:1"],
            &["cpu:0"],
            &["tpu"],
            &["cuda:x"],
            &[],
        ] {
            assert!(
                plan_slots(None, Some(&list(bad)), None).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn cpu_runs_side_by_side_split_the_cores() {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(cpu_threads(1), cores);
        assert_eq!(cpu_threads(cores * 4), 1, "never fewer than one");
        assert_eq!(cpu_threads(2), (cores / 2).max(1));
    }

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
            jobs: None,
            devices: None,
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

    /// The `quick` preset end to end: six real training runs through the `kdlora` binary, two at a
    /// time (`--jobs 2`), then the tables; then again with one job after removing one task's runs,
    /// which retrains those, reuses the rest and must write the same tables. Skips when the shared
    /// models/data or the binary are absent.
    #[test]
    fn quick_preset_produces_every_output_with_sane_content() {
        let Some((root, shared, bin)) = inputs() else {
            return;
        };
        let results = tempfile::tempdir().unwrap();
        let options = |jobs| Options {
            preset: "quick".into(),
            results: Some(results.path().to_path_buf()),
            dry_run: false,
            skip_paper_shapes: true,
            paper_shapes_only: false,
            kdlora: Some(bin.clone()),
            tasks: None,
            seeds: None,
            compare_torch: None,
            jobs,
            devices: None,
        };
        run(&root, &shared, &options(Some(2))).unwrap();
        let logs: Vec<_> = std::fs::read_dir(results.path().join("logs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(logs.len(), 6, "one log per run: {logs:?}");
        for log in &logs {
            let text = std::fs::read_to_string(log).unwrap();
            assert!(
                text.starts_with("==> ") && text.contains("train") && text.lines().count() > 1,
                "{}: {text}",
                log.display()
            );
        }
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
        // The same grid with one job: RTE's runs are trained again one after another (each with
        // every core where the two jobs had half each) and must score as they did; MRPC's are
        // reused (their metrics are untouched), since the job count is no part of a run's
        // configuration. The tables come out in grid order, whatever order the runs finished in.
        std::fs::remove_dir_all(results.path().join("runs/MiniLM/rte")).unwrap();
        let metrics = results
            .path()
            .join("runs/MiniLM/mrpc/fft/bs16_lr0.00005_wd0.01_s42/metrics.json");
        let before = std::fs::read(&metrics).unwrap();
        run(&root, &shared, &options(None)).unwrap();
        assert_eq!(
            std::fs::read(&metrics).unwrap(),
            before,
            "finished run was retrained"
        );
        assert!(
            results
                .path()
                .join("runs/MiniLM/rte/kd-lora/bs16_alpha16.0_r8_lr0.0005_s42/metrics.json")
                .is_file()
        );
        assert_eq!(
            std::fs::read_to_string(results.path().join("table1.md")).unwrap(),
            table1,
            "one job and two gave different tables"
        );
    }
}
