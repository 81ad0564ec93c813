//! Reproduction presets (`configs/<preset>/reproduce.toml`) and their expansion into run cells.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// The three recipes of the paper's Table 1, in table order.
pub const METHODS: [&str; 3] = ["fft", "lora", "kd-lora"];

/// Optional ablation: LoRA on the student without distillation (`kdlora train --method lora` on the
/// student model). Beside KD-LoRA it shows what the teacher adds; a preset runs it when it has a
/// `[grid.lora-student]` table.
pub const LORA_STUDENT: &str = "lora-student";

/// The grid key that overrides the preset's seeds for one method.
const SEEDS_KEY: &str = "seeds";

/// A preset file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub description: String,
    /// Number of best configurations whose median is reported (the paper: 6).
    pub top_k: usize,
    pub seeds: Vec<u64>,
    pub families: Vec<Family>,
    pub tasks: Vec<TaskEntry>,
    /// RunConfig keys applied to every run.
    #[serde(default)]
    pub common: toml::Table,
    /// Per method, RunConfig keys (dotted for nested tables) to lists of values; `seeds` (a list of
    /// integers) instead replaces the preset's seeds for that method (e.g. one teacher, several
    /// students).
    pub grid: BTreeMap<String, BTreeMap<String, Vec<toml::Value>>>,
    /// Also measure Table 2 at the paper's model shapes (fresh weights) after the grid.
    #[serde(default)]
    pub paper_shapes: Option<crate::paper_shapes::PaperShapes>,
    /// Resources of each run's Slurm array task (`reproduce --emit slurm`; `--slurm-*` flags
    /// override them).
    #[serde(default)]
    pub slurm: Option<crate::slurm::Resources>,
    /// Runs trained at once when `--jobs` and `--devices` are not given (default 1). The cpu
    /// preset takes 2: one `kdlora` process leaves a fifth of the two cores idle.
    #[serde(default)]
    pub jobs: Option<usize>,
}

/// A model family: teacher-size model (FFT and LoRA baselines) and its student (KD-LoRA).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Family {
    pub name: String,
    pub teacher: String,
    pub student: String,
}

/// A GLUE task and where its data lives.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskEntry {
    pub name: String,
    pub data: String,
    /// Validation rows come from a labelled subset of the train split (not comparable to GLUE dev).
    #[serde(default)]
    pub subset: bool,
    /// RunConfig keys for this task's runs only (dotted for nested tables), applied over `common`
    /// and under the method grid: a longer `max_len` for a task of long pairs, a train-row cap for
    /// a large task.
    #[serde(default)]
    pub set: toml::Table,
}

/// One training run of the grid.
#[derive(Debug, Clone)]
pub struct Cell {
    pub family: String,
    pub task: String,
    pub subset: bool,
    pub method: String,
    /// Short stable name of the configuration (`lr5e-4_bs16_r8`), seed included.
    pub config_id: String,
    /// RunConfig as TOML, without `out` and `teacher` (set when the cell runs).
    pub run_config: toml::Table,
    pub seed: u64,
}

impl Cell {
    /// The run folder below the preset's results folder.
    pub fn run_dir(&self, results: &Path) -> PathBuf {
        results
            .join("runs")
            .join(&self.family)
            .join(&self.task)
            .join(&self.method)
            .join(&self.config_id)
    }
}

impl Preset {
    /// Reads and checks a preset file.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let preset: Preset =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if preset.top_k == 0 {
            bail!("{}: top_k must be at least 1", path.display());
        }
        if preset.seeds.is_empty() || preset.families.is_empty() || preset.tasks.is_empty() {
            bail!(
                "{}: seeds, families and tasks must not be empty",
                path.display()
            );
        }
        for method in METHODS {
            if !preset.grid.contains_key(method) {
                bail!("{}: missing [grid.{method}]", path.display());
            }
        }
        for key in preset.grid.keys() {
            if !METHODS.contains(&key.as_str()) && key != LORA_STUDENT {
                bail!(
                    "{}: unknown method [grid.{key}] (expected one of {}, {LORA_STUDENT})",
                    path.display(),
                    METHODS.join(", ")
                );
            }
        }
        for (method, grid) in &preset.grid {
            if let Some(seeds) = grid.get(SEEDS_KEY) {
                let valid = !seeds.is_empty()
                    && seeds.iter().all(|v| v.as_integer().is_some_and(|i| i >= 0));
                if !valid {
                    bail!(
                        "{}: [grid.{method}] seeds must be a non-empty list of non-negative integers",
                        path.display()
                    );
                }
            }
        }
        Ok(preset)
    }

    /// Runs every method with `seeds` (replacing the preset's and each method's own).
    pub fn override_seeds(&mut self, seeds: &[u64]) -> Result<()> {
        if seeds.is_empty() {
            bail!("--seeds needs at least one seed");
        }
        self.seeds = seeds.to_vec();
        for grid in self.grid.values_mut() {
            grid.remove(SEEDS_KEY);
        }
        Ok(())
    }

    /// Keeps only the named tasks (an error names any the preset does not have).
    pub fn keep_tasks(&mut self, names: &[String]) -> Result<()> {
        let unknown: Vec<&str> = names
            .iter()
            .filter(|n| !self.tasks.iter().any(|t| &t.name == *n))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            bail!(
                "--tasks: the preset has no task {} (it has {})",
                unknown.join(", "),
                self.tasks
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        self.tasks.retain(|t| names.contains(&t.name));
        Ok(())
    }

    /// The seeds a method runs with: its grid's `seeds` when given, else the preset's.
    fn seeds_for(&self, method: &str) -> Vec<u64> {
        match self.grid[method].get(SEEDS_KEY) {
            Some(seeds) => seeds
                .iter()
                .filter_map(|v| v.as_integer().map(|i| i as u64))
                .collect(),
            None => self.seeds.clone(),
        }
    }

    /// The methods this preset runs, in table order: FFT, LoRA, the LoRA-on-student ablation when
    /// configured, KD-LoRA.
    pub fn methods(&self) -> Vec<&'static str> {
        let mut methods = vec!["fft", "lora"];
        if self.grid.contains_key(LORA_STUDENT) {
            methods.push(LORA_STUDENT);
        }
        methods.push("kd-lora");
        methods
    }

    /// Every run of the grid, teachers (FFT) first so distillation finds them.
    pub fn cells(&self, vars: &Vars) -> Result<Vec<Cell>> {
        let mut cells = Vec::new();
        for method in self.methods() {
            let mut grid = self.grid[method].clone();
            grid.remove(SEEDS_KEY);
            let combos = expand(&grid);
            let seeds = self.seeds_for(method);
            for family in &self.families {
                for task in &self.tasks {
                    for combo in &combos {
                        for &seed in &seeds {
                            let model = if uses_student(method) {
                                &family.student
                            } else {
                                &family.teacher
                            };
                            // The ablation is a plain LoRA run; only its model differs.
                            let recipe = if method == LORA_STUDENT {
                                "lora"
                            } else {
                                method
                            };
                            let mut table = self.common.clone();
                            for (key, value) in &task.set {
                                set_dotted(&mut table, key, value.clone());
                            }
                            table.insert("method".into(), recipe.into());
                            table.insert("task".into(), task.name.clone().into());
                            table.insert("model".into(), vars.expand(model)?.into());
                            table.insert("data".into(), vars.expand(&task.data)?.into());
                            table.insert("seed".into(), (seed as i64).into());
                            for (key, value) in combo {
                                set_dotted(&mut table, key, value.clone());
                            }
                            cells.push(Cell {
                                family: family.name.clone(),
                                task: task.name.clone(),
                                subset: task.subset,
                                method: method.to_string(),
                                config_id: format!("{}_s{seed}", combo_id(combo)),
                                run_config: table,
                                seed,
                            });
                        }
                    }
                }
            }
        }
        Ok(cells)
    }
}

/// Whether a method distils from a teacher run (KD-LoRA).
pub fn uses_teacher(method: &str) -> bool {
    method == "kd-lora"
}

/// Whether a method trains the student model (KD-LoRA and the LoRA-on-student ablation).
pub fn uses_student(method: &str) -> bool {
    method == "kd-lora" || method == LORA_STUDENT
}

/// The cartesian product of a method's grid, keys in sorted order.
fn expand(grid: &BTreeMap<String, Vec<toml::Value>>) -> Vec<Vec<(String, toml::Value)>> {
    let mut combos: Vec<Vec<(String, toml::Value)>> = vec![Vec::new()];
    for (key, values) in grid {
        let mut next = Vec::with_capacity(combos.len() * values.len());
        for combo in &combos {
            for value in values {
                let mut c = combo.clone();
                c.push((key.clone(), value.clone()));
                next.push(c);
            }
        }
        combos = next;
    }
    combos
}

fn combo_id(combo: &[(String, toml::Value)]) -> String {
    if combo.is_empty() {
        return "default".into();
    }
    combo
        .iter()
        .map(|(key, value)| {
            let short = key.rsplit('.').next().unwrap_or(key);
            let short = match short {
                "batch_size" => "bs",
                "weight_decay" => "wd",
                "epochs" => "ep",
                "dropout" => "do",
                other => other,
            };
            let value = match value {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            format!("{short}{value}")
        })
        .collect::<Vec<_>>()
        .join("_")
}

fn set_dotted(table: &mut toml::Table, key: &str, value: toml::Value) {
    match key.split_once('.') {
        None => {
            table.insert(key.to_string(), value);
        }
        Some((head, rest)) => {
            let entry = table
                .entry(head.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(inner) = entry {
                set_dotted(inner, rest, value);
            }
        }
    }
}

/// `${NAME}` substitution in preset paths.
pub struct Vars {
    vars: BTreeMap<String, String>,
}

impl Vars {
    pub fn new(vars: BTreeMap<String, String>) -> Self {
        Self { vars }
    }

    pub fn expand(&self, text: &str) -> Result<String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                bail!("unterminated `${{` in `{text}`");
            };
            let name = &after[..end];
            let value = self
                .vars
                .get(name)
                .cloned()
                .or_else(|| std::env::var(name).ok())
                .with_context(|| format!("`{text}` uses ${{{name}}}, which is not set"))?;
            out.push_str(&value);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_expands_to_the_cartesian_product_with_nested_keys() {
        let preset: Preset = toml::from_str(
            r#"
description = "t"
top_k = 1
seeds = [1, 2]
[[families]]
name = "F"
teacher = "${ROOT}/t"
student = "${ROOT}/s"
[[tasks]]
name = "rte"
data = "${ROOT}/glue"
[common]
epochs = 1
[grid.fft]
lr = [1e-5, 2e-5]
[grid.lora]
"lora.r" = [4, 8]
"lora.alpha" = [16.0]
[grid.kd-lora]
lr = [5e-4]
"#,
        )
        .unwrap();
        let vars = Vars::new(BTreeMap::from([("ROOT".to_string(), "/x".to_string())]));
        let cells = preset.cells(&vars).unwrap();
        // fft: 2 lr x 2 seeds, lora: 2 r x 2 seeds, kd-lora: 1 x 2 seeds
        assert_eq!(cells.len(), 10);
        assert_eq!(cells[0].method, "fft");
        let kd = cells.iter().find(|c| c.method == "kd-lora").unwrap();
        assert_eq!(kd.run_config["model"].as_str(), Some("/x/s"));
        let lora = cells.iter().find(|c| c.method == "lora").unwrap();
        assert_eq!(lora.run_config["lora"]["r"].as_integer(), Some(4));
        assert_eq!(lora.run_config["model"].as_str(), Some("/x/t"));
        assert_eq!(lora.config_id, "alpha16.0_r4_s1");
        let ids: std::collections::BTreeSet<_> =
            cells.iter().map(|c| c.run_dir(Path::new("/r"))).collect();
        assert_eq!(ids.len(), cells.len(), "run folders are unique");
    }

    #[test]
    fn a_tasks_own_keys_override_common_and_yield_to_the_grid() {
        let preset: Preset = toml::from_str(
            r#"
description = "t"
top_k = 1
seeds = [1]
[[families]]
name = "F"
teacher = "/t"
student = "/s"
[[tasks]]
name = "rte"
data = "/glue"
set = { max_len = 128, "lora.dropout" = 0.1, lr = 1.0 }
[[tasks]]
name = "cola"
data = "/glue"
[common]
max_len = 64
[grid.fft]
lr = [2e-5]
[grid.lora]
[grid.kd-lora]
"#,
        )
        .unwrap();
        let cells = preset.cells(&Vars::new(BTreeMap::new())).unwrap();
        let find = |task: &str, method: &str| {
            cells
                .iter()
                .find(|c| c.task == task && c.method == method)
                .unwrap()
        };
        let rte = &find("rte", "fft").run_config;
        assert_eq!(rte["max_len"].as_integer(), Some(128));
        assert_eq!(rte["lora"]["dropout"].as_float(), Some(0.1));
        assert_eq!(
            rte["lr"].as_float(),
            Some(2e-5),
            "the grid wins over the task"
        );
        assert_eq!(find("rte", "lora").run_config["lr"].as_float(), Some(1.0));
        assert_eq!(
            find("cola", "fft").run_config["max_len"].as_integer(),
            Some(64)
        );
    }

    #[test]
    fn seeds_and_tasks_can_be_overridden_from_the_command_line() {
        let mut preset: Preset = toml::from_str(ONE_TEACHER_THREE_STUDENTS).unwrap();
        preset.override_seeds(&[7, 8]).unwrap();
        let cells = preset.cells(&Vars::new(BTreeMap::new())).unwrap();
        assert!(cells.iter().all(|c| c.seed == 7 || c.seed == 8));
        assert_eq!(
            cells.iter().filter(|c| c.method == "fft").count(),
            2 * preset.tasks.len()
        );
        assert!(preset.override_seeds(&[]).is_err());
        let first = preset.tasks[0].name.clone();
        let err = preset.keep_tasks(&["nope".into()]).unwrap_err().to_string();
        assert!(
            err.contains("no task nope") && err.contains(&first),
            "{err}"
        );
        preset.keep_tasks(std::slice::from_ref(&first)).unwrap();
        assert_eq!(preset.tasks.len(), 1);
    }

    #[test]
    fn lora_student_ablation_runs_plain_lora_on_the_student() {
        let preset: Preset = toml::from_str(
            r#"
description = "t"
top_k = 1
seeds = [1]
[[families]]
name = "F"
teacher = "/t"
student = "/s"
[[tasks]]
name = "rte"
data = "/glue"
[grid.fft]
lr = [1e-5]
[grid.lora]
lr = [1e-3]
[grid.lora-student]
lr = [2e-3]
[grid.kd-lora]
lr = [1e-3]
"#,
        )
        .unwrap();
        assert_eq!(preset.methods(), ["fft", "lora", "lora-student", "kd-lora"]);
        let cells = preset.cells(&Vars::new(BTreeMap::new())).unwrap();
        let ablation = cells.iter().find(|c| c.method == LORA_STUDENT).unwrap();
        assert_eq!(ablation.run_config["method"].as_str(), Some("lora"));
        assert_eq!(ablation.run_config["model"].as_str(), Some("/s"));
        assert!(
            ablation
                .run_dir(Path::new("/r"))
                .ends_with("rte/lora-student/lr0.002_s1")
        );
        let lora = cells.iter().find(|c| c.method == "lora").unwrap();
        assert_eq!(lora.run_config["model"].as_str(), Some("/t"));
    }

    const ONE_TEACHER_THREE_STUDENTS: &str = r#"
description = "t"
top_k = 1
seeds = [1, 2, 3]
[[families]]
name = "F"
teacher = "/t"
student = "/s"
[[tasks]]
name = "sst2"
data = "/glue"
[grid.fft]
seeds = [7]
lr = [1e-4]
[grid.lora]
seeds = [7]
lr = [1e-3]
[grid.kd-lora]
lr = [1e-3]
"#;

    #[test]
    fn a_methods_seeds_replace_the_presets() {
        let preset: Preset = toml::from_str(ONE_TEACHER_THREE_STUDENTS).unwrap();
        let cells = preset.cells(&Vars::new(BTreeMap::new())).unwrap();
        let seeds = |method: &str| {
            cells
                .iter()
                .filter(|c| c.method == method)
                .map(|c| c.seed)
                .collect::<Vec<_>>()
        };
        assert_eq!(seeds("fft"), [7]);
        assert_eq!(seeds("lora"), [7]);
        assert_eq!(seeds("kd-lora"), [1, 2, 3]);
        let fft = cells.iter().find(|c| c.method == "fft").unwrap();
        // `seeds` selects runs; it is not a run configuration key.
        assert!(!fft.run_config.contains_key("seeds"));
        assert_eq!(fft.run_config["seed"].as_integer(), Some(7));
        assert_eq!(fft.config_id, "lr0.0001_s7");
    }

    #[test]
    fn bad_method_seeds_are_rejected_naming_the_method() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["seeds = []", "seeds = [-1]", "seeds = [\"a\"]"] {
            let path = dir.path().join("reproduce.toml");
            std::fs::write(
                &path,
                ONE_TEACHER_THREE_STUDENTS.replace("seeds = [7]", bad),
            )
            .unwrap();
            let err = format!("{:#}", Preset::load(&path).unwrap_err());
            assert!(err.contains("[grid.fft] seeds"), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_variable_is_an_error() {
        let vars = Vars::new(BTreeMap::new());
        let err = vars.expand("${NOPE_NOT_SET_ANYWHERE}/x").unwrap_err();
        assert!(err.to_string().contains("NOPE_NOT_SET_ANYWHERE"));
    }

    #[test]
    fn every_committed_preset_parses() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for name in ["quick", "cpu", "paper", "cpu-distill"] {
            let preset = Preset::load(&root.join(format!("configs/{name}/reproduce.toml")))
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
            let vars = Vars::new(BTreeMap::from([
                ("KDLORA_SHARED".to_string(), "/s".to_string()),
                ("KDLORA_GLUE".to_string(), "/g".to_string()),
            ]));
            assert!(!preset.cells(&vars).unwrap().is_empty());
        }
    }
}
