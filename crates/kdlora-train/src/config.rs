//! [`RunConfig`]: one struct that describes a run completely, read from layered sources
//! (TOML file < `KDLORA_*` environment < `--set key=value` overrides) and saved into the run folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use config::{Config, File, FileFormat};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

pub use kdlora_schema::Method;

/// Training engine: the hand-written loop (default) or burn-train's `Learner`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    /// The hand-written loop (`runner.rs`): mid-epoch checkpoints (`checkpoint_steps`), atomic
    /// checkpoint writes, bit-exact resume at any step.
    #[default]
    Loop,
    /// burn-train 0.21's `Learner` (`SupervisedTraining`): the same recipes, optimizer, schedule,
    /// clipping, accumulation and outputs; checkpoints only at epoch boundaries.
    Learner,
}

impl Engine {
    /// Whether this is the default hand-written loop.
    pub fn is_loop(&self) -> bool {
        *self == Engine::Loop
    }

    /// The name used in configuration files.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Loop => "loop",
            Engine::Learner => "learner",
        }
    }
}

impl std::str::FromStr for Engine {
    type Err = TrainError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "loop" => Ok(Engine::Loop),
            "learner" => Ok(Engine::Learner),
            other => Err(TrainError::invalid(
                "engine",
                format!("unknown engine `{other}` (expected \"loop\" or \"learner\")"),
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Engine {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        // The config crate appends "for key `engine`" to this message.
        let s = String::deserialize(d)?;
        s.parse().map_err(|_| {
            serde::de::Error::custom(format!(
                "unknown engine `{s}` (expected \"loop\" or \"learner\")"
            ))
        })
    }
}

/// Everything that defines a run. Saved as `config.toml` in the run folder; `kdlora eval` and
/// `kdlora predict` rebuild the model from it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Recipe: `fft`, `lora`, `kd-lora` or `kd`.
    pub method: Method,
    /// GLUE task name (`sst2`, `mrpc`, `stsb`, ...).
    pub task: String,
    /// Model folder (Hugging Face layout: config.json, model.safetensors, tokenizer.json), or a
    /// Hugging Face Hub id `org/name[@revision]` (`train` saves the resolved snapshot folder).
    pub model: PathBuf,
    /// GLUE data folder (original TSV layout or HF JSON lines).
    pub data: PathBuf,
    /// Run folder to write.
    pub out: PathBuf,
    /// Teacher run folder (an FFT run with `model/`), required by `kd-lora` and `kd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<PathBuf>,
    /// Accept a teacher that is not a kdlora run folder (a model folder or Hub id). Its
    /// classification head should already be fine-tuned for the task, which kdlora cannot check;
    /// a head the checkpoint lacks is initialised fresh with a warning. Off by default.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_model_teacher: bool,
    /// Stop the run when a step's loss exceeds this multiple of the run's first step loss
    /// (divergence, usually a learning rate far too high); 0 disables the check.
    #[serde(
        default = "default_divergence_factor",
        skip_serializing_if = "is_default_divergence_factor"
    )]
    pub divergence_factor: f64,
    /// Backend: `cpu` (Burn's Flex backend), `ndarray`, `wgpu` or `cuda` (as compiled into the binary).
    #[serde(default = "default_device")]
    pub device: String,
    /// Passes over the training set.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Examples per forward pass.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Forward passes whose gradients are summed before one optimizer step.
    #[serde(default = "default_one")]
    pub grad_accumulation: usize,
    /// Peak learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// AdamW decoupled weight decay (not applied to biases and LayerNorm).
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// Fraction of optimizer steps spent warming the learning rate up linearly from 0.
    #[serde(default)]
    pub warmup_ratio: f64,
    /// Global gradient-norm clipping threshold; 0 disables clipping.
    #[serde(default = "default_grad_clip")]
    pub grad_clip: f64,
    /// Maximum tokens per example (longest-first truncation).
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// Seed for initialisation, dropout and shuffling.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Use only the first N training rows (CPU runs); all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_train_examples: Option<usize>,
    /// Use only the first N dev rows; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_eval_examples: Option<usize>,
    /// Examples per evaluation batch.
    #[serde(default = "default_eval_batch_size")]
    pub eval_batch_size: usize,
    /// Also write a checkpoint every N optimizer steps (0: only at the end of each epoch).
    #[serde(default)]
    pub checkpoint_steps: usize,
    /// Timed passes over dev for the inference-time measurement (median reported; 0, the
    /// default, skips it: the presets that report inference time set it).
    #[serde(default)]
    pub inference_passes: usize,
    /// A `train_log.jsonl` line (and, when stderr is not a terminal, a log line) every N
    /// optimizer steps and at the end of every epoch; 0 picks about 25 lines per epoch.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub logging_steps: usize,
    /// Keep `checkpoints/` (loop) or `learner/checkpoint/` (learner) after the run finished; by
    /// default they are removed once `metrics.json` is written (a finished run needs no resume).
    #[serde(default, skip_serializing_if = "is_false")]
    pub keep_checkpoints: bool,
    /// Keep the weights of the best epoch (highest dev score; the later one on a tie, as
    /// `metrics.json`'s `best`) in `best/`: a PEFT adapter folder for LoRA runs, a model folder
    /// otherwise.
    #[serde(default, skip_serializing_if = "is_false")]
    pub save_best: bool,
    /// Batch examples of similar length (the Hugging Face Trainer's `group_by_length`): each
    /// epoch's shuffled order is cut into windows of 50 batches, each window sorted by length,
    /// so batches pad less. The batches still come in a seeded random order of windows.
    #[serde(default, skip_serializing_if = "is_false")]
    pub group_by_length: bool,
    /// Stop after this many epochs even though `epochs` is larger (used to simulate an interrupted
    /// run; the schedule still follows `epochs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_after_epochs: Option<usize>,
    /// Training engine: `loop` (default) or `learner` (burn-train's `Learner`; no
    /// `checkpoint_steps`). Not written to `config.toml` when `loop`, so loop runs' saved
    /// configurations are unchanged.
    #[serde(default, skip_serializing_if = "Engine::is_loop")]
    pub engine: Engine,
    /// LoRA settings (used by `lora` and `kd-lora`).
    #[serde(default)]
    pub lora: kdlora_lora::LoraConfig,
    /// Distillation settings (used by `kd-lora` and `kd`).
    #[serde(default)]
    pub kd: kdlora_distill::KdConfig,
}

fn is_false(value: &bool) -> bool {
    !*value
}
fn is_zero(value: &usize) -> bool {
    *value == 0
}
fn default_divergence_factor() -> f64 {
    100.0
}
// Not written to config.toml at its default, so saved configurations stay as they were.
fn is_default_divergence_factor(value: &f64) -> bool {
    *value == default_divergence_factor()
}
fn default_device() -> String {
    "cpu".into()
}
fn default_epochs() -> usize {
    3
}
fn default_batch_size() -> usize {
    32
}
fn default_one() -> usize {
    1
}
fn default_lr() -> f64 {
    2e-5
}
fn default_weight_decay() -> f64 {
    0.01
}
fn default_grad_clip() -> f64 {
    1.0
}
fn default_max_len() -> usize {
    128
}
fn default_seed() -> u64 {
    42
}
fn default_eval_batch_size() -> usize {
    64
}

/// The default of a configuration key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyDefault {
    /// Every run must set it.
    Required,
    /// Unset unless given (what that means is in the key's meaning).
    Unset,
    /// This TOML value.
    Value(&'static str),
}

/// One key of [`RunConfig`]: its dotted name (as in the TOML file and `--set`), its default and
/// what it does, in one line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigKey {
    /// Dotted name: `epochs`, `lora.r`.
    pub key: &'static str,
    /// Its default.
    pub default: KeyDefault,
    /// What it does.
    pub meaning: &'static str,
}

const fn key(key: &'static str, default: KeyDefault, meaning: &'static str) -> ConfigKey {
    ConfigKey {
        key,
        default,
        meaning,
    }
}

use KeyDefault::{Required, Unset, Value};

/// Every key a run configuration has: what `kdlora train --help` lists and which `KDLORA_*`
/// environment variables are read. Tests hold it to [`RunConfig`]: the same keys, and each
/// default the one loading fills in.
pub const CONFIG_KEYS: &[ConfigKey] = &[
    key("method", Required, "recipe: fft, lora, kd-lora or kd"),
    key(
        "task",
        Required,
        "GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli",
    ),
    key(
        "model",
        Required,
        "model folder (Hugging Face layout) or Hub id org/name[@revision]",
    ),
    key(
        "data",
        Required,
        "GLUE data folder (original TSV layout or HF JSON lines)",
    ),
    key("out", Required, "run folder to write"),
    key(
        "teacher",
        Unset,
        "teacher run folder (an FFT run); required by kd-lora and kd",
    ),
    key(
        "allow_model_teacher",
        Value("false"),
        "accept a model folder or Hub id as the teacher",
    ),
    key(
        "divergence_factor",
        Value("100.0"),
        "stop when a step's loss exceeds this multiple of the first (0: never)",
    ),
    key(
        "device",
        Value("\"cpu\""),
        "backend: cpu, ndarray, wgpu or cuda",
    ),
    key("epochs", Value("3"), "passes over the training set"),
    key("batch_size", Value("32"), "examples per forward pass"),
    key(
        "grad_accumulation",
        Value("1"),
        "forward passes summed into one optimizer step",
    ),
    key("lr", Value("2e-5"), "peak learning rate (linear schedule)"),
    key(
        "weight_decay",
        Value("0.01"),
        "AdamW decoupled weight decay (not on biases and LayerNorm)",
    ),
    key(
        "warmup_ratio",
        Value("0.0"),
        "fraction of the steps warming the learning rate up from 0",
    ),
    key(
        "grad_clip",
        Value("1.0"),
        "global gradient-norm clipping threshold (0: off)",
    ),
    key(
        "max_len",
        Value("128"),
        "maximum tokens per example (longest-first truncation)",
    ),
    key(
        "seed",
        Value("42"),
        "seed for initialisation, dropout and shuffling",
    ),
    key(
        "max_train_examples",
        Unset,
        "use only the first N training rows (all when unset)",
    ),
    key(
        "max_eval_examples",
        Unset,
        "use only the first N dev rows (all when unset)",
    ),
    key(
        "eval_batch_size",
        Value("64"),
        "examples per evaluation batch",
    ),
    key(
        "checkpoint_steps",
        Value("0"),
        "also checkpoint every N optimizer steps (0: at epoch ends only)",
    ),
    key(
        "inference_passes",
        Value("0"),
        "timed passes over dev for the inference time (0: skip)",
    ),
    key(
        "logging_steps",
        Value("0"),
        "a train_log.jsonl line every N steps (0: about 25 per epoch)",
    ),
    key(
        "keep_checkpoints",
        Value("false"),
        "keep checkpoints/ after the run finished",
    ),
    key(
        "save_best",
        Value("false"),
        "keep the best epoch's weights in best/",
    ),
    key(
        "group_by_length",
        Value("false"),
        "batch examples of similar length (windows of 50 batches sorted by length)",
    ),
    key(
        "stop_after_epochs",
        Unset,
        "stop after N epochs (the schedule still follows epochs)",
    ),
    key(
        "engine",
        Value("\"loop\""),
        "training engine: loop, or learner (burn-train's Learner)",
    ),
    key("lora.r", Value("8"), "LoRA rank"),
    key(
        "lora.alpha",
        Value("16.0"),
        "LoRA alpha (scaling alpha / r)",
    ),
    key(
        "lora.dropout",
        Value("0.05"),
        "dropout on the adapter input",
    ),
    key(
        "lora.use_rslora",
        Value("false"),
        "rsLoRA scaling alpha / sqrt(r)",
    ),
    key(
        "lora.init",
        Value("\"kaiming_uniform\""),
        "initialisation of A: kaiming_uniform or gaussian",
    ),
    key(
        "lora.target_modules",
        Unset,
        "adapted modules: names or a regex (unset: query and value)",
    ),
    key(
        "lora.modules_to_save",
        Unset,
        "modules trained in full and saved (unset: the head)",
    ),
    key(
        "lora.train_head",
        Value("true"),
        "train the modules_to_save",
    ),
    key("lora.seed", Value("42"), "seed for the initialisation of A"),
    key(
        "kd.temperature",
        Value("2.0"),
        "softmax temperature of the distillation loss",
    ),
    key(
        "kd.alpha",
        Value("0.5"),
        "weight of the hard loss (the teacher's gets 1 - alpha)",
    ),
    key(
        "kd.soft_only_epochs",
        Value("0"),
        "first epochs on the teacher's loss alone (alpha 0), then the mixed loss",
    ),
    key(
        "kd.alpha_end",
        Unset,
        "alpha at the last step, linearly from kd.alpha (unset: constant)",
    ),
    key(
        "kd.temperature_end",
        Unset,
        "temperature at the last step, linearly from kd.temperature (unset: constant)",
    ),
];

/// [`CONFIG_KEYS`] as an aligned table, one key a line (`key  default  meaning`), for
/// `kdlora train --help`.
pub fn config_keys_table() -> String {
    let default = |k: &ConfigKey| match k.default {
        Required => "required".to_string(),
        Unset => "unset".to_string(),
        Value(v) => v.to_string(),
    };
    let key_width = CONFIG_KEYS.iter().map(|k| k.key.len()).max().unwrap_or(0);
    let default_width = CONFIG_KEYS
        .iter()
        .map(|k| default(k).len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for k in CONFIG_KEYS {
        out.push_str(&format!(
            "  {:key_width$}  {:default_width$}  {}\n",
            k.key,
            default(k),
            k.meaning
        ));
    }
    out
}

/// Whether `top` is the first segment of a configuration key; environment variables naming
/// other keys are ignored, so that unrelated `KDLORA_*` variables (such as `KDLORA_SHARED`) do
/// not break configuration.
fn is_top_level_key(top: &str) -> bool {
    CONFIG_KEYS
        .iter()
        .any(|k| k.key.split('.').next() == Some(top))
}

/// The sources of a configuration, lowest priority first.
#[derive(Clone, Debug, Default)]
pub struct ConfigSources {
    /// A TOML file.
    pub file: Option<PathBuf>,
    /// Environment variables (`KDLORA_EPOCHS=2`, `KDLORA_LORA__R=16`: `__` separates nesting).
    /// Usually `std::env::vars().collect()`; passed explicitly so tests need not mutate the process
    /// environment.
    pub env: Vec<(String, String)>,
    /// `key=value` overrides, dotted keys for nesting (`lora.r=16`); the value is read as a TOML
    /// value when it parses as one (`16`, `true`, `["query", "value"]`), else as a string.
    pub overrides: Vec<(String, String)>,
}

impl ConfigSources {
    /// Parses `key=value` strings (as given to `--set`).
    pub fn parse_overrides<S: AsRef<str>>(items: &[S]) -> Result<Vec<(String, String)>> {
        items
            .iter()
            .map(|item| {
                let item = item.as_ref();
                match item.split_once('=') {
                    Some((k, v)) if !k.trim().is_empty() => {
                        Ok((k.trim().to_string(), v.trim().to_string()))
                    }
                    _ => Err(TrainError::Config(format!(
                        "override `{item}` is not of the form key=value"
                    ))),
                }
            })
            .collect()
    }
}

/// Renders `key = value` as a TOML line, quoting the value when it is not itself valid TOML.
fn toml_line(key: &str, value: &str) -> Result<String> {
    if key.is_empty()
        || !key.split('.').all(|seg| {
            !seg.is_empty() && seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    {
        return Err(TrainError::Config(format!("`{key}` is not a valid key")));
    }
    let as_value = format!("{key} = {value}");
    if toml::from_str::<toml::Table>(&as_value).is_ok() {
        return Ok(as_value);
    }
    let quoted = toml::Value::String(value.to_string()).to_string();
    Ok(format!("{key} = {quoted}"))
}

impl RunConfig {
    /// Builds a configuration from layered sources, then validates it.
    ///
    /// Unknown keys and ill-typed values are errors naming the key.
    pub fn load(sources: &ConfigSources) -> Result<Self> {
        let mut builder = Config::builder();
        if let Some(file) = &sources.file {
            if !file.is_file() {
                return Err(TrainError::io(
                    file,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "config file not found"),
                ));
            }
            let text = std::fs::read_to_string(file).map_err(|e| TrainError::io(file, e))?;
            // Parse with toml first: its errors carry line and column, config's do not.
            toml::from_str::<toml::Table>(&text)
                .map_err(|e| TrainError::Config(format!("{}: {e}", file.display())))?;
            builder = builder.add_source(File::from_str(&text, FileFormat::Toml));
        }
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in &sources.env {
            let Some(rest) = name.strip_prefix("KDLORA_") else {
                continue;
            };
            let key = rest.to_ascii_lowercase().replace("__", ".");
            let top = key.split('.').next().unwrap_or_default();
            if is_top_level_key(top) {
                env.insert(key, value.clone());
            }
        }
        for (key, value) in &env {
            let line = toml_line(key, value)?;
            builder = builder.add_source(File::from_str(&line, FileFormat::Toml));
        }
        for (key, value) in &sources.overrides {
            let line = toml_line(key, value)?;
            builder = builder.add_source(File::from_str(&line, FileFormat::Toml));
        }
        let built = builder
            .build()
            .map_err(|e| TrainError::Config(e.to_string()))?;
        let cfg: RunConfig = built
            .try_deserialize()
            .map_err(|e| TrainError::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a run folder's `config.toml` (strict: unknown keys are errors).
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        toml::from_str(&text).map_err(|e| TrainError::BadFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Renders the configuration as TOML.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| TrainError::Config(e.to_string()))
    }

    /// Renders the configuration as TOML with every key that has a value, defaults included
    /// (`kdlora train --print-config`): [`RunConfig::to_toml`] leaves some defaults out so that
    /// saved configurations stay as they were.
    pub fn to_toml_resolved(&self) -> Result<String> {
        let text = self.to_toml()?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| TrainError::Config(e.to_string()))?;
        let missing: String = CONFIG_KEYS
            .iter()
            .filter(|k| !k.key.contains('.') && !table.contains_key(k.key))
            .filter_map(|k| match k.default {
                KeyDefault::Value(v) => Some(format!("{} = {v}\n", k.key)),
                _ => None,
            })
            .collect();
        // Top-level keys must come before the first table (`[lora]`).
        let at = text.find("\n[").map_or(text.len(), |i| i + 1);
        let (head, tail) = text.split_at(at);
        let head = head.trim_end_matches('\n');
        let mut out = format!("{head}\n{missing}\n{tail}");
        // Keys of a table (`kd.soft_only_epochs`) go right below its header.
        for k in CONFIG_KEYS {
            let (Some((section, name)), KeyDefault::Value(v)) = (k.key.split_once('.'), k.default)
            else {
                continue;
            };
            let present = table
                .get(section)
                .and_then(|t| t.as_table())
                .is_some_and(|t| t.contains_key(name));
            let header = format!("[{section}]\n");
            if let (false, Some(pos)) = (present, out.find(&header)) {
                out.insert_str(pos + header.len(), &format!("{name} = {v}\n"));
            }
        }
        Ok(out)
    }

    /// The parsed GLUE task.
    pub fn glue_task(&self) -> Result<kdlora_glue::GlueTask> {
        self.task
            .parse::<kdlora_glue::GlueTask>()
            .map_err(|e| TrainError::invalid("task", e.to_string()))
    }

    /// Checks ranges and cross-field requirements; each error names its key.
    pub fn validate(&self) -> Result<()> {
        self.glue_task()?;
        let positive = [
            ("epochs", self.epochs),
            ("batch_size", self.batch_size),
            ("grad_accumulation", self.grad_accumulation),
            ("max_len", self.max_len),
            ("eval_batch_size", self.eval_batch_size),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(TrainError::invalid(key, "must be at least 1"));
            }
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(TrainError::invalid(
                "lr",
                format!("{} is not a positive number", self.lr),
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(TrainError::invalid("weight_decay", "must be >= 0"));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return Err(TrainError::invalid("warmup_ratio", "must be in [0, 1)"));
        }
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            return Err(TrainError::invalid(
                "grad_clip",
                "must be >= 0 (0 disables clipping)",
            ));
        }
        if !(self.divergence_factor.is_finite() && self.divergence_factor >= 0.0) {
            return Err(TrainError::invalid(
                "divergence_factor",
                format!(
                    "{} is not a number >= 0 (0 disables the check)",
                    self.divergence_factor
                ),
            ));
        }
        if matches!(self.max_train_examples, Some(0)) {
            return Err(TrainError::invalid(
                "max_train_examples",
                "must be at least 1",
            ));
        }
        if matches!(self.max_eval_examples, Some(0)) {
            return Err(TrainError::invalid(
                "max_eval_examples",
                "must be at least 1",
            ));
        }
        if self.engine == Engine::Learner && self.checkpoint_steps > 0 {
            return Err(TrainError::invalid(
                "checkpoint_steps",
                format!(
                    "{} is not supported with engine = \"learner\": burn-train's Learner \
                     checkpoints only at epoch boundaries (set checkpoint_steps = 0, or use \
                     engine = \"loop\" for mid-epoch checkpoints)",
                    self.checkpoint_steps
                ),
            ));
        }
        if self.method.uses_teacher() && self.teacher.is_none() {
            return Err(TrainError::invalid(
                "teacher",
                format!(
                    "method `{}` needs a teacher run folder",
                    self.method.as_str()
                ),
            ));
        }
        Ok(())
    }

    /// Expands `${NAME}` references in the path fields from the environment. `KDLORA_SHARED`
    /// defaults to `../shared` when unset, so configs can say `${KDLORA_SHARED}/models/...`.
    pub fn expand_paths(&mut self) -> Result<()> {
        self.expand_inputs()?;
        self.out = expand_path("out", &self.out)?;
        if let Some(t) = &self.teacher {
            self.teacher = Some(expand_path("teacher", t)?);
        }
        Ok(())
    }

    /// Expands `${NAME}` in `model` and `data` only: what loading a finished run needs. A run folder
    /// saved by `kdlora train` holds resolved paths; one written by hand (or made portable, as the
    /// committed test fixture is) may say `${KDLORA_SHARED}/models/...`.
    pub fn expand_inputs(&mut self) -> Result<()> {
        self.model = expand_path("model", &self.model)?;
        self.data = expand_path("data", &self.data)?;
        Ok(())
    }
}

fn expand_path(key: &str, p: &Path) -> Result<PathBuf> {
    expand_vars(&p.to_string_lossy())
        .map(PathBuf::from)
        .map_err(|m| TrainError::invalid(key, m))
}

fn expand_vars(s: &str) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unterminated `${{` in `{s}`"));
        };
        let name = &after[..end];
        let value = match std::env::var(name) {
            Ok(v) => v,
            Err(_) if name == "KDLORA_SHARED" => "../shared".to_string(),
            Err(_) => return Err(format!("environment variable `{name}` is not set")),
        };
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str =
        "method = \"lora\"\ntask = \"sst2\"\nmodel = \"m\"\ndata = \"d\"\nout = \"o\"\n";

    fn load(file_text: &str, env: &[(&str, &str)], sets: &[&str]) -> Result<RunConfig> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, file_text).unwrap();
        RunConfig::load(&ConfigSources {
            file: Some(file),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            overrides: ConfigSources::parse_overrides(sets)?,
        })
    }

    /// The field names a struct's deserializer expects, from serde's unknown-field message
    /// (`unknown field `x`, expected one of `a`, `b`, ...`, or `expected `a` or `b``).
    fn fields(toml_text: &str) -> Vec<String> {
        let err = toml::from_str::<RunConfig>(toml_text)
            .unwrap_err()
            .to_string();
        let list = err
            .split_once(", expected")
            .unwrap_or_else(|| panic!("{err}"))
            .1;
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn config_keys_are_exactly_the_structs_fields() {
        let mut expected: Vec<String> = fields(&format!("{BASE}zzz_unknown = 1\n"))
            .into_iter()
            .filter(|f| f != "lora" && f != "kd")
            .collect();
        for table in ["lora", "kd"] {
            for field in fields(&format!("{BASE}[{table}]\nzzz_unknown = 1\n")) {
                expected.push(format!("{table}.{field}"));
            }
        }
        let listed: Vec<String> = CONFIG_KEYS.iter().map(|k| k.key.to_string()).collect();
        assert_eq!(listed, expected);
    }

    #[test]
    fn config_key_defaults_are_the_loaded_defaults() {
        let default = load(BASE, &[], &[]).unwrap();
        let saved: toml::Table = toml::from_str(&default.to_toml().unwrap()).unwrap();
        for k in CONFIG_KEYS {
            match k.default {
                // A value other than the default changes the configuration.
                KeyDefault::Value(v) => {
                    let set = format!("{}={v}", k.key);
                    let cfg = load(BASE, &[], &[set.as_str()])
                        .unwrap_or_else(|e| panic!("{}: {e}", k.key));
                    assert_eq!(format!("{cfg:?}"), format!("{default:?}"), "{}", k.key);
                }
                KeyDefault::Unset => {
                    let (table, name) = k.key.split_once('.').unwrap_or(("", k.key));
                    let values = if table.is_empty() {
                        &saved
                    } else {
                        saved.get(table).and_then(|t| t.as_table()).unwrap()
                    };
                    assert!(!values.contains_key(name), "{} is set by default", k.key);
                }
                KeyDefault::Required => {
                    let text: String = BASE
                        .lines()
                        .filter(|l| !l.starts_with(&format!("{} =", k.key)))
                        .map(|l| format!("{l}\n"))
                        .collect();
                    let err = load(&text, &[], &[]).unwrap_err().to_string();
                    assert!(err.contains(k.key), "{}: {err}", k.key);
                }
            }
        }
        let table = config_keys_table();
        assert_eq!(table.lines().count(), CONFIG_KEYS.len());
        assert!(
            table.contains("lora.r") && table.contains("2e-5"),
            "{table}"
        );
    }

    #[test]
    fn the_resolved_toml_has_every_default_and_loads_back() {
        let cfg = load(BASE, &[], &["epochs=5", "lora.r=4"]).unwrap();
        let text = cfg.to_toml_resolved().unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        for k in CONFIG_KEYS {
            let (parent, name) = k.key.split_once('.').unwrap_or(("", k.key));
            let values = if parent.is_empty() {
                &table
            } else {
                table.get(parent).and_then(|t| t.as_table()).unwrap()
            };
            if !matches!(k.default, KeyDefault::Unset) {
                assert!(values.contains_key(name), "{} missing:\n{text}", k.key);
            }
        }
        let back = load(&text, &[], &[]).unwrap();
        assert_eq!(format!("{back:?}"), format!("{cfg:?}"));
    }

    #[test]
    fn defaults_follow_the_paper() {
        let cfg = load(BASE, &[], &[]).unwrap();
        assert_eq!(cfg.method, Method::Lora);
        assert_eq!(
            (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout),
            (8, 16.0, 0.05)
        );
        assert_eq!((cfg.kd.temperature, cfg.kd.alpha), (2.0, 0.5));
        assert_eq!(
            (cfg.weight_decay, cfg.grad_clip, cfg.warmup_ratio),
            (0.01, 1.0, 0.0)
        );
        assert_eq!((cfg.seed, cfg.grad_accumulation), (42, 1));
        // Single runs skip the inference timing (the presets that report it set it), log about
        // 25 lines per epoch and keep no checkpoints or best epoch once finished.
        assert_eq!((cfg.inference_passes, cfg.logging_steps), (0, 0));
        assert!(!cfg.keep_checkpoints && !cfg.save_best);
        // Defaults are not written, so saved configurations stay as they were.
        let text = cfg.to_toml().unwrap();
        for key in ["logging_steps", "keep_checkpoints", "save_best"] {
            assert!(!text.contains(key), "{text}");
        }
    }

    #[test]
    fn layers_file_then_env_then_overrides() {
        let text = format!("{BASE}epochs = 5\nlr = 1e-4\n[lora]\nr = 4\n");
        let env = [
            ("KDLORA_EPOCHS", "4"),
            ("KDLORA_LORA__R", "12"),
            ("KDLORA_SHARED", "/elsewhere"),
            ("PATH", "/bin"),
        ];
        let cfg = load(
            &text,
            &env,
            &["lora.r=16", "lora.target_modules=[\"query\", \"key\"]"],
        )
        .unwrap();
        assert_eq!(cfg.epochs, 4, "env beats file");
        assert_eq!(cfg.lr, 1e-4, "file value kept");
        assert_eq!(cfg.lora.r, 16, "--set beats env");
        assert_eq!(
            cfg.lora.target_modules,
            Some(kdlora_lora::TargetModules::names(&["query", "key"]))
        );
        let cfg = load(BASE, &[], &["method=kd-lora", "teacher=runs/t"]).unwrap();
        assert_eq!(cfg.method, Method::KdLora);
        assert_eq!(cfg.teacher.as_deref(), Some(Path::new("runs/t")));
    }

    #[test]
    fn bad_keys_and_values_name_the_key() {
        let err = load(&format!("{BASE}epoch = 3\n"), &[], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("epoch"), "{err}");
        let err = load(BASE, &[], &["lora.rank=3"]).unwrap_err().to_string();
        assert!(err.contains("rank"), "{err}");
        let err = load(BASE, &[], &["epochs=three"]).unwrap_err().to_string();
        assert!(err.contains("epochs"), "{err}");
        let err = load(BASE, &[], &["lr=0"]).unwrap_err().to_string();
        assert!(err.contains("`lr`"), "{err}");
        let err = load(BASE, &[], &["task=sst3"]).unwrap_err().to_string();
        assert!(err.contains("`task`"), "{err}");
        let err = load(BASE, &[], &["method=kd"]).unwrap_err().to_string();
        assert!(err.contains("`teacher`"), "{err}");
        let err = load(BASE, &[], &["method=\"sgd\""])
            .unwrap_err()
            .to_string();
        assert!(err.contains("method") || err.contains("sgd"), "{err}");
        let err = load(&format!("{BASE}lr = \n"), &[], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.toml"), "{err}");
        let err = ConfigSources::parse_overrides(&["novalue"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("novalue"), "{err}");
    }

    #[test]
    fn saved_config_roundtrips() {
        let cfg = load(
            BASE,
            &[],
            &["max_train_examples=100", "method=kd-lora", "teacher=t"],
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, cfg.to_toml().unwrap()).unwrap();
        let back = RunConfig::from_toml_file(&path).unwrap();
        assert_eq!(back.to_toml().unwrap(), cfg.to_toml().unwrap());
        assert_eq!(back.max_train_examples, Some(100));
    }

    #[test]
    fn expands_environment_references_in_paths() {
        let mut cfg = load(BASE, &[], &["model=\"${KDLORA_SHARED}/models/x\""]).unwrap();
        cfg.expand_paths().unwrap();
        let expected = std::env::var("KDLORA_SHARED").unwrap_or_else(|_| "../shared".into());
        assert_eq!(cfg.model, PathBuf::from(format!("{expected}/models/x")));
        let mut cfg = load(BASE, &[], &["data=\"${KDLORA_TEST_SURELY_UNSET_VAR}/x\""]).unwrap();
        let err = cfg.expand_paths().unwrap_err().to_string();
        assert!(err.contains("`data`"), "{err}");
    }

    #[test]
    fn loading_a_run_expands_model_and_data_only() {
        let mut cfg = load(
            BASE,
            &[],
            &[
                "model=\"${KDLORA_SHARED}/models/x\"",
                "data=\"${KDLORA_SHARED}/glue\"",
                "method=kd-lora",
                // Not needed to load a run: an unset variable there must not stop it.
                "teacher=\"${KDLORA_TEST_SURELY_UNSET_VAR}/t\"",
            ],
        )
        .unwrap();
        cfg.expand_inputs().unwrap();
        let shared = std::env::var("KDLORA_SHARED").unwrap_or_else(|_| "../shared".into());
        assert_eq!(cfg.model, PathBuf::from(format!("{shared}/models/x")));
        assert_eq!(cfg.data, PathBuf::from(format!("{shared}/glue")));
        assert_eq!(
            cfg.teacher,
            Some(PathBuf::from("${KDLORA_TEST_SURELY_UNSET_VAR}/t"))
        );
    }

    #[test]
    fn every_cpu_config_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/cpu");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            // reproduce.toml is the xtask grid preset, not a run configuration.
            let is_run = path.file_name().is_some_and(|n| n != "reproduce.toml");
            if is_run && path.extension().is_some_and(|e| e == "toml") {
                let cfg = RunConfig::load(&ConfigSources {
                    file: Some(path.clone()),
                    ..Default::default()
                })
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert!(
                    cfg.out.starts_with("runs/cpu"),
                    "{}: out {}",
                    path.display(),
                    cfg.out.display()
                );
                n += 1;
            }
        }
        assert!(n >= 8, "only {n} configs in {}", dir.display());
    }
}
