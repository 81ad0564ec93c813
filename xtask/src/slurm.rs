//! `cargo xtask reproduce PRESET --emit slurm`: a preset's grid as Slurm job arrays, one array task
//! per run, and `--gather`: the tables from the run folders those tasks leave on the shared
//! filesystem.
//!
//! Each array task runs a copy of this xtask binary (`OUT/bin/xtask slurm-cell`; the compute nodes
//! need no cargo and no source tree), which trains its one cell through
//! [`reproduce::run_one_cell`]. So a run's configuration file, the reuse of a finished run, the
//! `--resume` of an interrupted one and the choice of teacher are `reproduce --jobs N`'s own code,
//! not a second implementation in shell. Configuration files written once at emit time, with each
//! task running `kdlora train --config` directly, cannot do that: a KD-LoRA run distils from the
//! *best finished* FFT run of its family and task, known only once the teachers have run, and
//! picking it on the compute node would take a JSON parser there and a copy of the rules.
//!
//! The grid goes to Slurm as three arrays (`submit.sh`): the teachers (FFT), the baselines that
//! need no teacher (LoRA, LoRA on the student), and the students (KD-LoRA), which wait for the
//! whole teacher array; then one job that writes the tables. Array task `i` of a group trains the
//! group's `i`-th cell as listed in `cells.tsv`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::preset::{Cell, Preset, Vars, uses_teacher};
use crate::reproduce::{self, CellOutcome, KdloraProcess, Slot, Trainer};
use crate::tables::{self, CellResult};

/// Version of `grid.json`: an xtask reads only the version it writes (the folder is re-emitted,
/// not migrated).
const SPEC_VERSION: u32 = 1;

/// Tasks per array. Slurm's default `MaxArraySize` is 1001 (task ids 0..=1000); a larger group is
/// split into several arrays (the paper preset's groups have 648 runs each).
const MAX_ARRAY_TASKS: usize = 1000;

/// Resources of each run's array task: a preset's `[slurm]` table, then the `--slurm-*` flags.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--time`, the run's wall-clock limit (`30:00`, `4:00:00`, `1-00:00:00`).
    pub time: Option<String>,
    /// `--cpus-per-task`; CPU runs then use that many threads.
    pub cpus: Option<u32>,
    /// GPUs per run, as `--gres=gpu:N` (the form every GPU cluster accepts, whatever its select
    /// plugin); 0 asks for none.
    pub gpus: Option<u32>,
    /// `--mem` (`16G`).
    pub mem: Option<String>,
    /// More `sbatch` options, one per entry, for every job including the gather job
    /// (`--account=X`, `--qos=Y`, `--constraint=a100`).
    #[serde(default)]
    pub options: Vec<String>,
}

impl Resources {
    /// `self` with every field `flags` sets replaced; `flags`' options come after `self`'s, so
    /// that sbatch (which takes the last of a repeated option) lets the flags win there too.
    pub fn overridden_by(self, flags: Resources) -> Resources {
        Resources {
            partition: flags.partition.or(self.partition),
            time: flags.time.or(self.time),
            cpus: flags.cpus.or(self.cpus),
            gpus: flags.gpus.or(self.gpus),
            mem: flags.mem.or(self.mem),
            options: self.options.into_iter().chain(flags.options).collect(),
        }
    }

    /// Values that would break the `#SBATCH` lines (sbatch splits them at white space and has no
    /// quoting worth relying on) or that Slurm would only reject after submission.
    fn check(&self) -> Result<()> {
        for (name, value) in [
            ("partition", &self.partition),
            ("time", &self.time),
            ("mem", &self.mem),
        ] {
            if let Some(value) = value
                && (value.is_empty() || value.chars().any(|c| c.is_whitespace() || c == '#'))
            {
                bail!("slurm {name} `{value}`: must be one word (no spaces, no #)");
            }
        }
        if self.cpus == Some(0) {
            bail!("slurm cpus must be at least 1");
        }
        for option in &self.options {
            if !option.starts_with('-') || option.chars().any(|c| c.is_control()) {
                bail!(
                    "slurm option `{option}`: expected one sbatch option such as --qos=normal or \
                     --account=proj"
                );
            }
        }
        Ok(())
    }

    /// `#SBATCH` lines of a run's array task.
    fn cell_lines(&self) -> Vec<String> {
        let mut lines = self.common_lines();
        if let Some(cpus) = self.cpus {
            lines.push(format!("--cpus-per-task={cpus}"));
        }
        if let Some(gpus) = self.gpus.filter(|&g| g > 0) {
            lines.push(format!("--gres=gpu:{gpus}"));
        }
        if let Some(mem) = &self.mem {
            lines.push(format!("--mem={mem}"));
        }
        lines.extend(self.options.iter().cloned());
        lines
    }

    /// `#SBATCH` lines of the gather job: where to run and for how long, no GPU.
    fn gather_lines(&self) -> Vec<String> {
        let mut lines = self.common_lines();
        lines.push("--cpus-per-task=1".into());
        lines.extend(self.options.iter().cloned());
        lines
    }

    fn common_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(partition) = &self.partition {
            lines.push(format!("--partition={partition}"));
        }
        if let Some(time) = &self.time {
            lines.push(format!("--time={time}"));
        }
        lines
    }
}

/// The arrays a grid is submitted as, in submission order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    /// FFT runs: every KD-LoRA run of the same family and task may take its teacher from them.
    Teachers,
    /// Runs that need no teacher (LoRA, LoRA on the student): no dependency.
    Baselines,
    /// KD-LoRA runs: after the whole teacher array.
    Students,
}

impl Group {
    const ALL: [Group; 3] = [Group::Teachers, Group::Baselines, Group::Students];

    fn of(cell: &Cell) -> Group {
        // The runs `reproduce::run_grid` makes a KD-LoRA cell wait for.
        if cell.method == "fft" {
            Group::Teachers
        } else if uses_teacher(&cell.method) {
            Group::Students
        } else {
            Group::Baselines
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Group::Teachers => "teachers",
            Group::Baselines => "baselines",
            Group::Students => "students",
        }
    }
}

/// `grid.json`: what the array tasks and the gather job need to rebuild the grid exactly as it
/// was emitted (with `preset.toml`, the preset file as it was then).
#[derive(Debug, Serialize, Deserialize)]
struct Spec {
    version: u32,
    /// Names this emission; `cell.sbatch` carries it, so that a task queued from an earlier
    /// emission of the same folder fails instead of training whatever cell now has its number.
    id: String,
    preset: String,
    tasks: Option<Vec<String>>,
    seeds: Option<Vec<u64>>,
    /// Every `${NAME}` the preset uses, resolved on the submitting machine: a compute node's
    /// environment must not change a path (and with it a run's configuration).
    vars: BTreeMap<String, String>,
    results: PathBuf,
    /// `--devices`' kind for every run (`None`: each run's configured device).
    device: Option<String>,
    /// Each group's cells by name (`reproduce::cell_name`), in array-task order.
    groups: Vec<GroupCells>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct GroupCells {
    group: Group,
    cells: Vec<String>,
}

/// What `reproduce --emit slurm` was asked for.
pub struct EmitOptions<'a> {
    pub preset: &'a str,
    pub results: &'a Path,
    /// The folder of the Slurm files.
    pub out: &'a Path,
    pub tasks: Option<&'a [String]>,
    pub seeds: Option<&'a [u64]>,
    pub devices: Option<&'a [String]>,
    /// From the flags (over the preset's `[slurm]`).
    pub resources: Resources,
    /// The `kdlora` binary the tasks run (`KDLORA_BIN` at submission overrides it).
    pub kdlora: &'a Path,
    /// The xtask binary copied into the folder for the tasks to run.
    pub xtask: &'a Path,
}

/// What [`emit`] wrote.
#[derive(Debug)]
pub struct Emitted {
    pub out: PathBuf,
    pub results: PathBuf,
    /// Runs per group, in submission order.
    pub counts: Vec<(Group, usize)>,
}

/// Writes the Slurm folder: `submit.sh`, `cell.sbatch`, `gather.sbatch`, `cells.tsv`,
/// `grid.json`, `preset.toml`, `bin/xtask`, `logs/`. Submits nothing.
pub fn emit(root: &Path, shared: &Path, options: &EmitOptions) -> Result<Emitted> {
    let preset_path = root
        .join("configs")
        .join(options.preset)
        .join("reproduce.toml");
    let preset_text = std::fs::read_to_string(&preset_path)
        .with_context(|| format!("reading {}", preset_path.display()))?;
    let mut vars = reproduce::preset_vars(root, shared);
    for name in referenced_vars(&preset_text) {
        if !vars.contains_key(&name)
            && let Ok(value) = std::env::var(&name)
        {
            vars.insert(name, value);
        }
    }
    let tasks = options.tasks.map(<[String]>::to_vec);
    let seeds = options.seeds.map(<[u64]>::to_vec);
    let (preset, cells) = expand(&preset_path, tasks.as_deref(), seeds.as_deref(), &vars)?;
    if cells.is_empty() {
        bail!("the grid of {} is empty", preset_path.display());
    }
    reproduce::check_inputs(&cells, options.preset)?;
    let device = slurm_device(options.devices)?;
    let resources = preset
        .slurm
        .clone()
        .unwrap_or_default()
        .overridden_by(options.resources.clone());
    resources.check()?;
    let results = absolute(options.results)?;
    let out = absolute(options.out)?;
    let kdlora = absolute(options.kdlora)?;
    if !kdlora.is_file() {
        bail!("the kdlora binary {} does not exist", kdlora.display());
    }
    for path in [&results, &out, &kdlora] {
        check_script_path(path)?;
    }
    let groups = groups(&cells);
    let spec = Spec {
        version: SPEC_VERSION,
        id: emission_id(),
        preset: options.preset.to_string(),
        tasks,
        seeds,
        vars,
        results: results.clone(),
        device,
        groups: groups
            .iter()
            .map(|(group, indices)| GroupCells {
                group: *group,
                cells: indices
                    .iter()
                    .map(|&i| reproduce::cell_name(&cells[i]))
                    .collect(),
            })
            .collect(),
    };

    for dir in [out.clone(), out.join("logs"), out.join("bin")] {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // The tasks read these when they start, possibly hours from now: a copy, so that editing the
    // preset or rebuilding xtask meanwhile changes nothing (re-emit to take changes up).
    tables::write_atomic(&out.join("preset.toml"), &preset_text)?;
    tables::write_atomic(
        &out.join("grid.json"),
        &serde_json::to_string_pretty(&spec)?,
    )?;
    tables::write_atomic(
        &out.join("cells.tsv"),
        &cells_tsv(&cells, &groups, &results),
    )?;
    let script = |name: &str, text: String| -> Result<()> {
        let path = out.join(name);
        tables::write_atomic(&path, &text)?;
        make_executable(&path)
    };
    script(
        "cell.sbatch",
        cell_sbatch(options.preset, &out, &kdlora, &spec.id, &resources),
    )?;
    script(
        "gather.sbatch",
        gather_sbatch(options.preset, &out, &resources),
    )?;
    script("submit.sh", submit_sh(options.preset, &out, &groups))?;
    copy_binary(options.xtask, &out.join("bin/xtask"))?;
    Ok(Emitted {
        out,
        results,
        counts: groups.iter().map(|(g, cells)| (*g, cells.len())).collect(),
    })
}

/// The preset's grid with the filters applied, as `reproduce::run` builds it.
fn expand(
    preset_path: &Path,
    tasks: Option<&[String]>,
    seeds: Option<&[u64]>,
    vars: &BTreeMap<String, String>,
) -> Result<(Preset, Vec<Cell>)> {
    let mut preset = Preset::load(preset_path)?;
    if let Some(tasks) = tasks {
        preset.keep_tasks(tasks)?;
    }
    if let Some(seeds) = seeds {
        preset.override_seeds(seeds)?;
    }
    let cells = preset.cells(&Vars::new(vars.clone()))?;
    Ok((preset, cells))
}

/// The `${NAME}`s in a preset's text.
fn referenced_vars(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        names.push(after[..end].to_string());
        rest = &after[end + 1..];
    }
    names
}

/// The device kind every run gets from `--devices` on Slurm: one kind, no GPU numbers (Slurm
/// hands each task its GPUs as `CUDA_VISIBLE_DEVICES`, and kdlora's `cuda` is the first of them).
fn slurm_device(devices: Option<&[String]>) -> Result<Option<String>> {
    let Some(devices) = devices else {
        return Ok(None);
    };
    if let Some(spec) = devices.iter().find(|d| d.contains(':')) {
        bail!(
            "--devices {spec}: on Slurm each task gets its GPUs from Slurm (--slurm-gpus N); \
             give the kind alone, e.g. --devices cuda"
        );
    }
    // Checks the kinds, and that there is only one.
    reproduce::plan_slots(Some(1), Some(devices), None)?;
    Ok(devices.first().cloned())
}

/// Cell indices per group, in grid order, leaving out empty groups.
fn groups(cells: &[Cell]) -> Vec<(Group, Vec<usize>)> {
    Group::ALL
        .iter()
        .map(|&group| {
            let indices = (0..cells.len())
                .filter(|&i| Group::of(&cells[i]) == group)
                .collect::<Vec<_>>();
            (group, indices)
        })
        .filter(|(_, indices)| !indices.is_empty())
        .collect()
}

/// `(offset, count)` of each array a group of `n` runs is submitted as.
fn chunks(n: usize) -> Vec<(usize, usize)> {
    (0..n)
        .step_by(MAX_ARRAY_TASKS)
        .map(|offset| (offset, MAX_ARRAY_TASKS.min(n - offset)))
        .collect()
}

fn emission_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}.{:09}-{}",
        now.as_secs(),
        now.subsec_nanos(),
        std::process::id()
    )
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("making {} absolute", path.display()))
}

/// Paths go into `#SBATCH --output=` (no quoting there; `%` is a file-name pattern) and, single
/// quoted, into the scripts.
fn check_script_path(path: &Path) -> Result<()> {
    let text = path
        .to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))?;
    if text
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '\'' | '"' | '%' | '\\'))
    {
        bail!(
            "{text}: Slurm scripts need paths without spaces, quotes, backslashes or % (choose \
             other --results/--out folders)"
        );
    }
    Ok(())
}

fn make_executable(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", path.display()))?;
    }
    Ok(())
}

/// Copies a binary under a temporary name and renames it into place: tasks of an earlier
/// submission may be running the old copy, which must not be overwritten in place.
fn copy_binary(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp)
        .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    make_executable(&tmp)?;
    std::fs::rename(&tmp, to).with_context(|| format!("renaming {}", tmp.display()))
}

fn cells_tsv(cells: &[Cell], groups: &[(Group, Vec<usize>)], results: &Path) -> String {
    let mut text = String::from("# group\tarray_task\tfamily\ttask\tmethod\tconfig\trun_folder\n");
    for (group, indices) in groups {
        for (task, &i) in indices.iter().enumerate() {
            let cell = &cells[i];
            let _ = writeln!(
                text,
                "{}\t{task}\t{}\t{}\t{}\t{}\t{}",
                group.name(),
                cell.family,
                cell.task,
                cell.method,
                cell.config_id,
                cell.run_dir(results).display()
            );
        }
    }
    text
}

/// Single-quoted for the shell (paths are checked to hold no quote).
fn sh(path: &Path) -> String {
    format!("'{}'", path.display())
}

fn cell_sbatch(preset: &str, out: &Path, kdlora: &Path, id: &str, resources: &Resources) -> String {
    let mut text = format!(
        "#!/usr/bin/env bash\n\
         # Written by `cargo xtask reproduce {preset} --emit slurm`: one array task trains one run of\n\
         # the grid. submit.sh submits it as `sbatch --array=0-N cell.sbatch GROUP OFFSET`; task i\n\
         # trains run OFFSET+i of GROUP in cells.tsv (its output: <results>/logs/).\n\
         #SBATCH --job-name=kdlora-{preset}\n\
         #SBATCH --output={}/logs/%x-%A_%a.out\n",
        out.display()
    );
    for line in resources.cell_lines() {
        let _ = writeln!(text, "#SBATCH {line}");
    }
    let _ = write!(
        text,
        "set -euo pipefail\n\
         # Absolute, so that the compute nodes need no cargo; KDLORA_BIN at submission replaces it.\n\
         kdlora=\"${{KDLORA_BIN:-{kdlora}}}\"\n\
         # The copy of the xtask that wrote this folder trains the run exactly as `cargo xtask\n\
         # reproduce --jobs N` would: its configuration, its teacher (the best finished FFT run of\n\
         # its family and task), and reusing a finished run or resuming an interrupted one.\n\
         exec {xtask} slurm-cell --out {out} --emission {id} --group \"$1\" \\\n    \
         --index \"$(( $2 + SLURM_ARRAY_TASK_ID ))\" --kdlora \"$kdlora\"\n",
        kdlora = kdlora.display(),
        xtask = sh(&out.join("bin/xtask")),
        out = sh(out),
    );
    text
}

fn gather_sbatch(preset: &str, out: &Path, resources: &Resources) -> String {
    let mut text = format!(
        "#!/usr/bin/env bash\n\
         # Written by `cargo xtask reproduce {preset} --emit slurm`: the tables from the run\n\
         # folders, once every run has ended (`cargo xtask reproduce {preset} --gather --out\n\
         # {out}` does the same).\n\
         #SBATCH --job-name=kdlora-{preset}-gather\n\
         #SBATCH --output={out}/logs/%x-%j.out\n",
        out = out.display()
    );
    for line in resources.gather_lines() {
        let _ = writeln!(text, "#SBATCH {line}");
    }
    let _ = write!(
        text,
        "set -euo pipefail\nexec {} slurm-gather --out {}\n",
        sh(&out.join("bin/xtask")),
        sh(out)
    );
    text
}

fn submit_sh(preset: &str, out: &Path, groups: &[(Group, Vec<usize>)]) -> String {
    let mut text = format!(
        "#!/usr/bin/env bash\n\
         # Written by `cargo xtask reproduce {preset} --emit slurm`: submits the grid as job arrays\n\
         # and a job that writes the tables once every run has ended. Run it again to retry what\n\
         # failed: finished runs are reused and interrupted ones continued, as with `reproduce`.\n\
         set -euo pipefail\n\
         out={}\n\
         # `sbatch --parsable` prints `jobid` or `jobid;cluster`. The `|| return`: errexit does not\n\
         # reach into the $(...) that calls this, and an empty job id must not pass.\n\
         submit() {{ local id; id=$(sbatch --parsable \"$@\") || return 1; echo \"${{id%%;*}}\"; }}\n",
        sh(out)
    );
    let present = |g: Group| groups.iter().any(|(group, _)| *group == g);
    for (group, indices) in groups {
        let name = group.name();
        let _ = writeln!(
            text,
            "\n# {}",
            match group {
                Group::Teachers => format!("Teachers: the {} FFT run(s).", indices.len()),
                Group::Baselines => format!(
                    "Baselines: the {} run(s) that need no teacher; they run beside the teachers.",
                    indices.len()
                ),
                Group::Students => format!(
                    "Students: the {} KD-LoRA run(s). Each distils from the best finished FFT run of \
                     its\n# family and task, so the array waits for the whole teacher array. \
                     `afterany`, not `afterok`:\n# with afterok one failed teacher would leave every \
                     student pending for good, those of\n# other tasks too; `reproduce --jobs N` \
                     trains every student that has at least one\n# finished teacher and skips the \
                     others, and so does each task here (it picks the teacher\n# itself). \
                     `aftercorr` does not fit either: it pairs task i with teacher task i, while a\n\
                     # student needs all the FFT runs of its family and task, wherever they are in \
                     the array.",
                    indices.len()
                ),
            }
        );
        let dependency = if *group == Group::Students && present(Group::Teachers) {
            " --dependency=afterany:$teachers"
        } else {
            ""
        };
        for (i, (offset, count)) in chunks(indices.len()).into_iter().enumerate() {
            let assign = if i == 0 {
                format!("{name}=$(")
            } else {
                // More runs than one array may hold: the group's job ids, colon-separated, as a
                // dependency list takes them.
                format!("{name}=\"${name}:$(")
            };
            let close = if i == 0 { ")" } else { ")\"" };
            let _ = writeln!(
                text,
                "{assign}submit --job-name=kdlora-{preset}-{name} --array=0-{}{dependency} \
                 \"$out/cell.sbatch\" {name} {offset}{close}",
                count - 1
            );
        }
    }
    let all: Vec<String> = groups
        .iter()
        .map(|(g, _)| format!("${}", g.name()))
        .collect();
    let _ = write!(
        text,
        "\n# The tables, once every run has ended (whatever its outcome: failed runs are marked).\n\
         gather=$(submit --dependency=afterany:{} \"$out/gather.sbatch\")\n\
         echo \"{} gather=$gather\" | tee \"$out/jobs.txt\"\n",
        all.join(":"),
        groups
            .iter()
            .map(|(g, _)| format!("{0}=${0}", g.name()))
            .collect::<Vec<_>>()
            .join(" "),
    );
    text
}

/// An emitted grid, loaded back by a task or the gather step.
struct Loaded {
    spec: Spec,
    preset: Preset,
    cells: Vec<Cell>,
    slot: Slot,
}

impl Loaded {
    fn load(out: &Path) -> Result<Loaded> {
        let path = out.join("grid.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (write it with `cargo xtask reproduce PRESET --emit slurm`)",
                path.display()
            )
        })?;
        let spec: Spec =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if spec.version != SPEC_VERSION {
            bail!(
                "{} is version {}, this xtask reads version {SPEC_VERSION}: emit the folder again",
                path.display(),
                spec.version
            );
        }
        let (preset, cells) = expand(
            &out.join("preset.toml"),
            spec.tasks.as_deref(),
            spec.seeds.as_deref(),
            &spec.vars,
        )?;
        let derived: Vec<GroupCells> = groups(&cells)
            .into_iter()
            .map(|(group, indices)| GroupCells {
                group,
                cells: indices
                    .iter()
                    .map(|&i| reproduce::cell_name(&cells[i]))
                    .collect(),
            })
            .collect();
        if derived != spec.groups {
            bail!(
                "{} lists other runs than {} expands to: emit the folder again",
                path.display(),
                out.join("preset.toml").display()
            );
        }
        let slot = reproduce::plan_slots(
            Some(1),
            spec.device.as_ref().map(std::slice::from_ref),
            None,
        )?
        .remove(0);
        Ok(Loaded {
            spec,
            preset,
            cells,
            slot,
        })
    }

    /// The grid index of array task `index` of `group`.
    fn cell_index(&self, group: Group, index: usize) -> Result<usize> {
        let names = self
            .spec
            .groups
            .iter()
            .find(|g| g.group == group)
            .map(|g| g.cells.as_slice())
            .unwrap_or_default();
        let name = names.get(index).with_context(|| {
            format!(
                "{} has {} run(s), no array task {index}",
                group.name(),
                names.len()
            )
        })?;
        self.cells
            .iter()
            .position(|c| &reproduce::cell_name(c) == name)
            .with_context(|| format!("no run {name} in the grid"))
    }

    /// What a cell's run folder holds, training nothing: its result when it finished from exactly
    /// the configuration `reproduce` would give it now (so that a run left from an earlier,
    /// different grid never counts), else why not.
    fn settled(&self, cell: &Cell, teacher: Option<&Path>) -> CellOutcome {
        let results = &self.spec.results;
        let run_dir = cell.run_dir(results);
        let name = reproduce::cell_name(cell);
        let failed = |why: String| CellOutcome {
            result: CellResult::failed(cell, &run_dir),
            failure: Some(format!(
                "{} {} {} {}: {why}",
                cell.family, cell.task, cell.method, cell.config_id
            )),
        };
        if !run_dir.join("metrics.json").is_file() {
            return failed(format!(
                "not finished (see {})",
                results.join("logs").join(format!("{name}.log")).display()
            ));
        }
        let expected =
            toml::to_string_pretty(&reproduce::cell_config(cell, &self.slot, &run_dir, teacher));
        let recorded = std::fs::read_to_string(results.join("grid").join(format!("{name}.toml")));
        match (expected, recorded) {
            (Ok(expected), Ok(recorded)) if expected == recorded => {}
            _ => {
                return failed(
                    "its run folder was trained from another configuration; submit again to \
                     retrain it"
                        .into(),
                );
            }
        }
        match CellResult::load(cell, &run_dir) {
            Ok(result) => CellOutcome {
                result,
                failure: None,
            },
            Err(e) => failed(format!("{e:#}")),
        }
    }

    /// The candidate teachers of a KD-LoRA cell, as they stand.
    fn teachers_of(&self, cell: &Cell) -> Vec<CellOutcome> {
        self.cells
            .iter()
            .filter(|c| c.method == "fft" && c.family == cell.family && c.task == cell.task)
            .map(|c| self.settled(c, None))
            .collect()
    }

    /// One array task's run, as `reproduce --jobs N` would run it.
    fn run_cell(
        &self,
        index: usize,
        threads: Option<usize>,
        trainer: &dyn Trainer,
    ) -> Result<CellOutcome> {
        let cell = &self.cells[index];
        let teachers = if uses_teacher(&cell.method) {
            self.teachers_of(cell)
        } else {
            Vec::new()
        };
        reproduce::run_one_cell(
            &self.cells,
            index,
            &self.spec.results,
            &self.slot,
            threads,
            &teachers,
            trainer,
        )
    }

    /// Every cell's outcome, training nothing; teachers first, since a student's configuration
    /// names the teacher chosen from them.
    fn settle_all(&self) -> Vec<CellOutcome> {
        let mut outcomes: Vec<Option<CellOutcome>> = vec![None; self.cells.len()];
        for (i, cell) in self.cells.iter().enumerate() {
            if !uses_teacher(&cell.method) {
                outcomes[i] = Some(self.settled(cell, None));
            }
        }
        for (i, cell) in self.cells.iter().enumerate() {
            if uses_teacher(&cell.method) {
                let finished = outcomes.iter().flatten().map(|o| &o.result);
                outcomes[i] = Some(match reproduce::best_teacher(cell, finished) {
                    Some(teacher) => self.settled(cell, Some(&teacher)),
                    None => CellOutcome {
                        result: CellResult::failed(cell, &cell.run_dir(&self.spec.results)),
                        failure: Some(format!(
                            "{} {} {} {}: no finished FFT teacher run for this task",
                            cell.family, cell.task, cell.method, cell.config_id
                        )),
                    },
                });
            }
        }
        outcomes.into_iter().flatten().collect()
    }
}

/// `xtask slurm-cell`: one array task.
pub fn cell_task(
    out: &Path,
    emission: &str,
    group: Group,
    index: usize,
    kdlora: &Path,
) -> Result<()> {
    let grid = Loaded::load(out)?;
    if grid.spec.id != emission {
        bail!(
            "{} was emitted again since this job was submitted (emission {} there, {emission} \
             here): cancel this submission and run the new submit.sh",
            out.display(),
            grid.spec.id
        );
    }
    let index = grid.cell_index(group, index)?;
    // Without task binding a run would see every core of the node; with --cpus-per-task it uses
    // its share, as `--jobs N` gives each of its runs.
    let threads = std::env::var("SLURM_CPUS_PER_TASK")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0);
    let outcome = grid.run_cell(index, threads, &KdloraProcess { kdlora })?;
    match outcome.failure {
        // A failed array task shows as FAILED in squeue/sacct.
        Some(failure) => bail!("{failure}"),
        None => Ok(()),
    }
}

/// `reproduce --gather` and the gather job: the tables from the run folders. Errors, after writing
/// the tables, when runs are missing or failed.
pub fn gather(out: &Path) -> Result<()> {
    let grid = Loaded::load(out)?;
    let outcomes = grid.settle_all();
    let results = &grid.spec.results;
    let only: Vec<CellResult> = outcomes.iter().map(|o| o.result.clone()).collect();
    tables::write_all(
        results,
        &grid.spec.preset,
        &grid.preset,
        &only,
        &Vars::new(grid.spec.vars.clone()),
    )?;
    let failures: Vec<&str> = outcomes
        .iter()
        .filter_map(|o| o.failure.as_deref())
        .collect();
    eprintln!(
        "gather {}: {} of {} runs finished; tables in {}",
        grid.spec.preset,
        outcomes.len() - failures.len(),
        outcomes.len(),
        results.display()
    );
    if grid.preset.paper_shapes.is_some() {
        eprintln!(
            "  (Table 2 at the paper's shapes is no part of the Slurm grid: `cargo xtask reproduce \
             {} --paper-shapes-only` measures it)",
            grid.spec.preset
        );
    }
    if !failures.is_empty() {
        bail!(
            "{} run(s) missing or failed; the tables mark them. Run {} again to retry them:\n  {}",
            failures.len(),
            out.join("submit.sh").display(),
            failures.join("\n  ")
        );
    }
    Ok(())
}

/// `reproduce PRESET --gather`: checks that the folder is this preset's (and these results').
pub fn gather_preset(preset: &str, results: Option<&Path>, out: &Path) -> Result<()> {
    let spec: Spec = {
        let path = out.join("grid.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (emit it first: `cargo xtask reproduce {preset} --emit slurm`, or name \
                 the folder with --out)",
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
    };
    if spec.preset != preset {
        bail!(
            "{} holds the {} preset's grid, not {preset}'s",
            out.display(),
            spec.preset
        );
    }
    if let Some(results) = results
        && absolute(results)? != spec.results
    {
        bail!(
            "{} sends its runs to {}, not {}",
            out.display(),
            spec.results.display(),
            results.display()
        );
    }
    gather(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reproduce::{Exit, Launch};
    use std::sync::Mutex;

    /// Two tasks; two FFT learning rates (teacher candidates), one LoRA and one KD-LoRA
    /// configuration each: 4 teachers, 2 baselines, 2 students.
    const PRESET: &str = r#"
description = "fake"
top_k = 1
seeds = [1]
[[families]]
name = "F"
teacher = "bert-base-uncased"
student = "distilbert-base-uncased"
[[tasks]]
name = "rte"
data = "glue"
[[tasks]]
name = "mrpc"
data = "glue"
[common]
epochs = 1
[grid.fft]
lr = [1e-5, 3e-5]
[grid.lora]
lr = [1e-3]
[grid.kd-lora]
lr = [2e-3]
"#;

    /// A workspace root with `configs/fake/reproduce.toml`, a fake kdlora and a fake xtask.
    struct Fixture {
        root: tempfile::TempDir,
    }

    impl Fixture {
        fn new(preset: &str) -> Fixture {
            let root = tempfile::tempdir().unwrap();
            let dir = root.path().join("configs/fake");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("reproduce.toml"), preset).unwrap();
            std::fs::write(root.path().join("kdlora"), "#!/bin/sh\n").unwrap();
            std::fs::write(root.path().join("xtask"), "fake xtask").unwrap();
            Fixture { root }
        }

        fn path(&self, p: &str) -> PathBuf {
            self.root.path().join(p)
        }

        fn emit(&self, resources: Resources, devices: Option<&[String]>) -> Result<Emitted> {
            let (kdlora, xtask) = (self.path("kdlora"), self.path("xtask"));
            let (results, out) = (self.path("results"), self.path("results/slurm"));
            emit(
                self.root.path(),
                self.root.path(),
                &EmitOptions {
                    preset: "fake",
                    results: &results,
                    out: &out,
                    tasks: None,
                    seeds: None,
                    devices,
                    resources,
                    kdlora: &kdlora,
                    xtask: &xtask,
                },
            )
        }

        fn read(&self, p: &str) -> String {
            std::fs::read_to_string(self.path(p)).unwrap()
        }
    }

    /// Writes the `metrics.json` a run would (FFT scored by its learning rate, so that the
    /// teacher to pick is known); records each run's folder and whether it resumed.
    #[derive(Default)]
    struct FakeKdlora {
        calls: Mutex<Vec<(PathBuf, bool)>>,
    }

    impl Trainer for FakeKdlora {
        fn train(&self, launch: &Launch) -> Result<Exit> {
            let config: toml::Table =
                toml::from_str(&std::fs::read_to_string(launch.config_path)?)?;
            let run_dir = PathBuf::from(config["out"].as_str().unwrap());
            self.calls
                .lock()
                .unwrap()
                .push((run_dir.clone(), launch.resume));
            let score = match (config["method"].as_str(), config["lr"].as_float()) {
                (Some("fft"), Some(lr)) => 50.0 + lr * 1e5,
                _ => 60.0,
            };
            std::fs::create_dir_all(&run_dir)?;
            std::fs::write(
                run_dir.join("metrics.json"),
                crate::reproduce::tests::fake_metrics(score),
            )?;
            Ok(Exit {
                success: true,
                status: "exit status: 0".into(),
            })
        }
    }

    impl FakeKdlora {
        fn calls(&self) -> Vec<(PathBuf, bool)> {
            std::mem::take(&mut self.calls.lock().unwrap())
        }
    }

    /// Runs every array task of the emitted folder in submission order, as Slurm would.
    fn run_all_tasks(out: &Path, trainer: &FakeKdlora) {
        let grid = Loaded::load(out).unwrap();
        for g in &grid.spec.groups {
            for i in 0..g.cells.len() {
                let index = grid.cell_index(g.group, i).unwrap();
                let outcome = grid.run_cell(index, Some(1), trainer).unwrap();
                assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
            }
        }
    }

    #[test]
    fn the_scripts_hold_one_array_task_per_run_the_dependency_and_the_resources() {
        let fixture = Fixture::new(&format!(
            "{PRESET}\n[slurm]\npartition = \"cpu\"\ntime = \"2:00:00\"\ncpus = 2\n\
             options = [\"--account=proj\"]\n"
        ));
        let flags = Resources {
            partition: Some("gpu".into()),
            gpus: Some(1),
            mem: Some("8G".into()),
            options: vec!["--qos=low".into()],
            ..Default::default()
        };
        let emitted = fixture.emit(flags, None).unwrap();
        assert_eq!(
            emitted.counts,
            [
                (Group::Teachers, 4),
                (Group::Baselines, 2),
                (Group::Students, 2)
            ]
        );
        let submit = fixture.read("results/slurm/submit.sh");
        let line = |start: &str| -> String {
            submit
                .lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("no line {start} in\n{submit}"))
                .to_string()
        };
        let teachers = line("teachers=");
        assert!(
            teachers.contains("--array=0-3 ")
                && teachers.ends_with("\"$out/cell.sbatch\" teachers 0)")
                && !teachers.contains("--dependency"),
            "{teachers}"
        );
        let baselines = line("baselines=");
        assert!(
            baselines.contains("--array=0-1 ") && !baselines.contains("--dependency"),
            "{baselines}"
        );
        let students = line("students=");
        assert!(
            students.contains("--array=0-1 --dependency=afterany:$teachers ")
                && students.ends_with("students 0)"),
            "{students}"
        );
        let gather = line("gather=");
        assert!(
            gather.contains(
                "--dependency=afterany:$teachers:$baselines:$students \"$out/gather.sbatch\""
            ),
            "{gather}"
        );
        let out = fixture.path("results/slurm");
        assert!(submit.contains(&format!("out='{}'", out.display())));

        // The preset's resources, the flags over them; options from both, the flags' last.
        let cell = fixture.read("results/slurm/cell.sbatch");
        let directives: Vec<&str> = cell
            .lines()
            .filter_map(|l| l.strip_prefix("#SBATCH "))
            .collect();
        let output = format!("--output={}/logs/%x-%A_%a.out", out.display());
        assert_eq!(
            directives,
            [
                "--job-name=kdlora-fake",
                output.as_str(),
                "--partition=gpu",
                "--time=2:00:00",
                "--cpus-per-task=2",
                "--gres=gpu:1",
                "--mem=8G",
                "--account=proj",
                "--qos=low",
            ]
        );
        let kdlora = fixture.path("kdlora");
        assert!(
            cell.contains(&format!("kdlora=\"${{KDLORA_BIN:-{}}}\"", kdlora.display())),
            "{cell}"
        );
        let spec: Spec = serde_json::from_str(&fixture.read("results/slurm/grid.json")).unwrap();
        assert!(
            cell.contains(&format!(
                "exec '{}/bin/xtask' slurm-cell --out '{}' --emission {} --group \"$1\"",
                out.display(),
                out.display(),
                spec.id
            )),
            "{cell}"
        );
        assert!(cell.contains("--index \"$(( $2 + SLURM_ARRAY_TASK_ID ))\" --kdlora \"$kdlora\""));
        // The gather job asks for no GPU.
        let gather = fixture.read("results/slurm/gather.sbatch");
        assert!(gather.contains("#SBATCH --partition=gpu\n") && !gather.contains("gres"));
        assert!(gather.contains("slurm-gather --out '"));

        // One line per run, in array-task order within each group.
        let tsv = fixture.read("results/slurm/cells.tsv");
        let rows: Vec<Vec<&str>> = tsv
            .lines()
            .skip(1)
            .map(|l| l.split('\t').collect())
            .collect();
        assert_eq!(rows.len(), 8);
        assert_eq!(
            rows[0][..6],
            ["teachers", "0", "F", "rte", "fft", "lr0.00001_s1"]
        );
        assert_eq!(rows[7][..5], ["students", "1", "F", "mrpc", "kd-lora"]);
        assert!(rows[7][6].ends_with("results/runs/F/mrpc/kd-lora/lr0.002_s1"));
        assert_eq!(spec.groups[0].cells.len(), 4);
        assert_eq!(fixture.read("results/slurm/bin/xtask"), "fake xtask");
        assert_eq!(
            fixture.read("results/slurm/preset.toml"),
            fixture.read("configs/fake/reproduce.toml")
        );

        // The shell accepts the scripts.
        if std::process::Command::new("bash")
            .arg("--version")
            .output()
            .is_ok()
        {
            for script in ["submit.sh", "cell.sbatch", "gather.sbatch"] {
                let status = std::process::Command::new("bash")
                    .arg("-n")
                    .arg(out.join(script))
                    .status()
                    .unwrap();
                assert!(status.success(), "{script}");
            }
        }
    }

    #[test]
    fn a_group_larger_than_slurm_takes_goes_as_several_arrays() {
        assert_eq!(chunks(0), []);
        assert_eq!(chunks(3), [(0, 3)]);
        assert_eq!(chunks(1000), [(0, 1000)]);
        assert_eq!(chunks(2500), [(0, 1000), (1000, 1000), (2000, 500)]);
        let groups = vec![
            (Group::Teachers, (0..1500).collect::<Vec<_>>()),
            (Group::Students, (1500..1600).collect()),
        ];
        let text = submit_sh("p", Path::new("/o"), &groups);
        assert!(
            text.contains("teachers=$(submit --job-name=kdlora-p-teachers --array=0-999 \"$out/cell.sbatch\" teachers 0)\n"),
            "{text}"
        );
        assert!(
            text.contains("teachers=\"$teachers:$(submit --job-name=kdlora-p-teachers --array=0-499 \"$out/cell.sbatch\" teachers 1000)\"\n"),
            "{text}"
        );
        assert!(text.contains("--dependency=afterany:$teachers:$students \"$out/gather.sbatch\""));
    }

    #[test]
    fn bad_resources_devices_and_paths_are_refused_before_anything_is_written() {
        let fixture = Fixture::new(PRESET);
        for bad in [
            Resources {
                time: Some("2 hours".into()),
                ..Default::default()
            },
            Resources {
                partition: Some(String::new()),
                ..Default::default()
            },
            Resources {
                cpus: Some(0),
                ..Default::default()
            },
            Resources {
                options: vec!["qos=low".into()],
                ..Default::default()
            },
            Resources {
                options: vec!["--qos=low\nrm -rf /".into()],
                ..Default::default()
            },
        ] {
            let err = fixture.emit(bad.clone(), None).unwrap_err();
            assert!(format!("{err:#}").contains("slurm"), "{bad:?}: {err:#}");
        }
        let gpu0 = ["cuda:0".to_string()];
        let err = fixture
            .emit(Resources::default(), Some(&gpu0[..]))
            .unwrap_err();
        assert!(format!("{err:#}").contains("--devices cuda"), "{err:#}");
        assert!(!fixture.path("results/slurm").exists());

        assert!(check_script_path(Path::new("/a b/c")).is_err());
        assert!(check_script_path(Path::new("/a/%j")).is_err());
        assert!(check_script_path(Path::new("/shared/kdlora/results-1")).is_ok());

        // An unknown key in a preset's [slurm] table is an error, not ignored.
        let typo = Fixture::new(&format!("{PRESET}\n[slurm]\ngpu = 1\n"));
        assert!(typo.emit(Resources::default(), None).is_err());
    }

    #[test]
    fn array_tasks_then_gather_give_the_tables_of_the_jobs_path_and_reruns_reuse_runs() {
        let fixture = Fixture::new(PRESET);
        let cuda = ["cuda".to_string()];
        fixture.emit(Resources::default(), Some(&cuda[..])).unwrap();
        let out = fixture.path("results/slurm");
        let trainer = FakeKdlora::default();
        run_all_tasks(&out, &trainer);
        assert_eq!(trainer.calls().len(), 8);
        gather(&out).unwrap();
        let results = fixture.path("results");

        // The same grid through `run_grid` (the `--jobs` path) with the same fake.
        let preset: Preset = toml::from_str(PRESET).unwrap();
        let vars = Vars::new(BTreeMap::new());
        let cells = preset.cells(&vars).unwrap();
        let jobs = tempfile::tempdir().unwrap();
        let slots = reproduce::plan_slots(Some(2), Some(&cuda[..]), None).unwrap();
        let outcomes =
            reproduce::run_grid(&cells, jobs.path(), &slots, &FakeKdlora::default()).unwrap();
        let only: Vec<CellResult> = outcomes.into_iter().map(|o| o.result).collect();
        tables::write_all(jobs.path(), "fake", &preset, &only, &vars).unwrap();
        let table1 = std::fs::read_to_string(results.join("table1.md")).unwrap();
        assert!(
            table1.contains("| RTE |") && !table1.contains("failed"),
            "{table1}"
        );
        assert_eq!(
            table1,
            std::fs::read_to_string(jobs.path().join("table1.md")).unwrap()
        );
        // Every run's configuration file is the one `run_grid` writes, paths aside; the student
        // distils from the better teacher (lr 3e-5), and `--devices cuda` reached every run.
        for cell in &cells {
            let name = format!("grid/{}.toml", reproduce::cell_name(cell));
            let ours = std::fs::read_to_string(results.join(&name)).unwrap();
            let theirs = std::fs::read_to_string(jobs.path().join(&name)).unwrap();
            assert_eq!(
                ours.replace(&results.display().to_string(), "R"),
                theirs.replace(&jobs.path().display().to_string(), "R")
            );
            assert!(ours.contains("device = \"cuda\""));
        }
        let student = fixture.read("results/grid/F-rte-kd-lora-lr0.002_s1.toml");
        assert!(
            student.contains(&format!(
                "teacher = \"{}\"",
                results.join("runs/F/rte/fft/lr0.00003_s1").display()
            )),
            "{student}"
        );

        // Submitted again: every run is reused.
        run_all_tasks(&out, &trainer);
        assert!(trainer.calls().is_empty());
        // An interrupted run (folder, no metrics.json) is continued with --resume.
        let lora = results.join("runs/F/mrpc/lora/lr0.001_s1");
        std::fs::remove_file(lora.join("metrics.json")).unwrap();
        let err = gather(&out).unwrap_err();
        assert!(
            format!("{err:#}").contains("1 run(s) missing or failed")
                && format!("{err:#}").contains("F mrpc lora lr0.001_s1: not finished"),
            "{err:#}"
        );
        run_all_tasks(&out, &trainer);
        assert_eq!(trainer.calls(), [(lora, true)]);
        gather(&out).unwrap();
    }

    #[test]
    fn a_stale_teacher_is_never_taken_and_a_re_emitted_folder_stops_old_tasks() {
        let fixture = Fixture::new(PRESET);
        fixture.emit(Resources::default(), None).unwrap();
        let out = fixture.path("results/slurm");
        let trainer = FakeKdlora::default();
        run_all_tasks(&out, &trainer);
        assert_eq!(trainer.calls().len(), 8);
        // MRPC's teachers were trained from another configuration (an earlier grid, a task that
        // died before it could retrain them): its student has no teacher, RTE's is unaffected.
        for lr in ["0.00001", "0.00003"] {
            let path = fixture.path(&format!("results/grid/F-mrpc-fft-lr{lr}_s1.toml"));
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(&path, text.replace("epochs = 1", "epochs = 2")).unwrap();
        }
        let grid = Loaded::load(&out).unwrap();
        let student = grid.cell_index(Group::Students, 1).unwrap();
        assert_eq!(grid.cells[student].task, "mrpc");
        let outcome = grid.run_cell(student, None, &trainer).unwrap();
        assert!(
            outcome
                .failure
                .as_deref()
                .is_some_and(|f| f.contains("no finished FFT teacher run")),
            "{:?}",
            outcome.failure
        );
        assert!(trainer.calls().is_empty());
        let err = format!("{:#}", gather(&out).unwrap_err());
        assert!(err.contains("3 run(s) missing or failed"), "{err}");
        assert!(err.contains("trained from another configuration"), "{err}");

        let spec: Spec = serde_json::from_str(&fixture.read("results/slurm/grid.json")).unwrap();
        let kdlora = fixture.path("kdlora");
        let err = cell_task(&out, "older", Group::Teachers, 0, &kdlora).unwrap_err();
        assert!(format!("{err:#}").contains("emitted again"), "{err:#}");
        let err = cell_task(&out, &spec.id, Group::Students, 2, &kdlora).unwrap_err();
        assert!(
            format!("{err:#}").contains("students has 2 run(s), no array task 2"),
            "{err:#}"
        );
        let err = gather_preset("cpu", None, &out).unwrap_err();
        assert!(format!("{err:#}").contains("fake preset's grid"), "{err:#}");
        let err = gather_preset("fake", Some(Path::new("/elsewhere")), &out).unwrap_err();
        assert!(format!("{err:#}").contains("sends its runs to"), "{err:#}");
    }
}
