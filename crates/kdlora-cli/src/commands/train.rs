//! `kdlora train`: runs a recipe (fft, lora, kd-lora, kd) from a TOML config into a run folder.

use std::path::PathBuf;

use crate::allocator::PacedObserver;
use anyhow::Context;
use kdlora_lora::AutodiffLoraOps;
use kdlora_train::{BarObserver, ConfigSources, RunConfig, RunMetrics};

use crate::device::{AutodiffTask, DeviceArg};

/// Arguments of `kdlora train`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run configuration (TOML). With `--resume` and no `--config`, the run's own config.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a configuration key (`lora.r=16`, `epochs=2`); repeatable, applied last.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Recipe: fft, lora, kd-lora or kd.
    #[arg(long)]
    pub method: Option<String>,
    /// GLUE task (sst2, mrpc, stsb, ...).
    #[arg(long)]
    pub task: Option<String>,
    /// Model folder (Hugging Face layout) or Hugging Face Hub id (`org/name[@revision]`).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Teacher run folder (kd-lora, kd).
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// GLUE data folder.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Run folder to write.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Compute device (overrides the config's `device`).
    #[arg(long, value_enum)]
    pub device: Option<DeviceArg>,
    /// Continue the run in `--out` from its newest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Print the resolved configuration as TOML (defaults, then the --config file, KDLORA_*
    /// environment variables, --set and the flags above, each over the one before) and exit
    /// without training.
    #[arg(long)]
    pub print_config: bool,
}

/// The text after `kdlora train --help`: every configuration key with its default and meaning.
pub fn keys_help() -> String {
    format!(
        "Configuration keys: in the --config file (TOML; lora.* under [lora], kd.* under [kd]), as \
         --set key=value, or as KDLORA_<KEY> environment variables (`__` for a dot: \
         KDLORA_LORA__R=16). --print-config shows the result.\n\n{}",
        kdlora_train::config_keys_table()
    )
}

/// A TOML basic string (JSON string escapes are valid TOML escapes).
fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Builds the run configuration from the file, the environment, `--set` and the flags.
pub fn build_config(args: &Args) -> anyhow::Result<RunConfig> {
    let mut file = args.config.clone();
    if file.is_none() && args.resume {
        let out = args
            .out
            .as_ref()
            .context("--resume needs --out RUN_DIR (or --config)")?;
        file = Some(out.join("config.toml"));
    }
    let mut overrides = ConfigSources::parse_overrides(&args.set)?;
    let path_flag = |key: &str, value: &Option<PathBuf>, overrides: &mut Vec<(String, String)>| {
        if let Some(v) = value {
            // Quoted so that the value is always read as a string.
            let quoted = quote(&v.to_string_lossy());
            overrides.push((key.to_string(), quoted));
        }
    };
    path_flag("model", &args.model, &mut overrides);
    path_flag("teacher", &args.teacher, &mut overrides);
    path_flag("data", &args.data, &mut overrides);
    path_flag("out", &args.out, &mut overrides);
    for (key, value) in [("method", &args.method), ("task", &args.task)] {
        if let Some(v) = value {
            overrides.push((key.to_string(), quote(v)));
        }
    }
    if let Some(d) = args.device {
        overrides.push(("device".into(), format!("\"{}\"", d.name())));
    }
    let cfg = RunConfig::load(&ConfigSources {
        file,
        env: std::env::vars().collect(),
        overrides,
    })?;
    Ok(cfg)
}

/// Runs the verb.
pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = build_config(&args)?;
    if args.print_config {
        print!("{}", cfg.to_toml_resolved()?);
        return Ok(());
    }
    super::check_output("configuration key `out`:", &cfg.out, super::Output::Folder)?;
    let device: DeviceArg = clap::ValueEnum::from_str(&cfg.device, true).map_err(|_| {
        // clap's own message is only "invalid variant: NAME".
        let valid: Vec<&str> = <DeviceArg as clap::ValueEnum>::value_variants()
            .iter()
            .map(|d| d.name())
            .collect();
        anyhow::anyhow!(
            "configuration key `device`: unknown device `{}` (expected {})",
            cfg.device,
            valid.join(", ")
        )
    })?;
    let metrics = device.run_autodiff(Train {
        cfg,
        resume: args.resume,
    })?;
    println!("{}", serde_json::to_string_pretty(&metrics)?);
    Ok(())
}

struct Train {
    cfg: RunConfig,
    resume: bool,
}

impl AutodiffTask for Train {
    type Output = RunMetrics;

    fn run<B: AutodiffLoraOps>(self, device: B::Device) -> anyhow::Result<RunMetrics> {
        // Also paces the allocator's purge delay by the step time (see `allocator`).
        let mut observer = PacedObserver::new(BarObserver::new());
        Ok(kdlora_train::train::<B>(
            &self.cfg,
            self.resume,
            &device,
            &mut observer,
        )?)
    }
}
