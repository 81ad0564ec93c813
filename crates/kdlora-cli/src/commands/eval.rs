//! `kdlora eval`: a run's metrics on its task's dev split, as one JSON object.

use std::path::PathBuf;

use kdlora_glue::TaskMetrics;
use kdlora_lora::LoraOps;

use crate::device::{BackendTask, DeviceArg};

/// Arguments of `kdlora eval`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run folder (written by `kdlora train`): task, data folder, max_len and the dev rows used
    /// (max_eval_examples) come from its config.toml.
    #[arg(long)]
    pub run: PathBuf,
    /// GLUE data folder (default: the run's).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Compute device.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
}

/// Runs the verb.
pub fn run(args: Args) -> anyhow::Result<()> {
    let device = args.device;
    let metrics = device.run(Eval { args })?;
    println!("{}", serde_json::to_string(&metrics)?);
    Ok(())
}

struct Eval {
    args: Args,
}

impl BackendTask for Eval {
    type Output = TaskMetrics;

    fn run<B: LoraOps>(self, device: B::Device) -> anyhow::Result<TaskMetrics> {
        Ok(kdlora_train::eval_run::<B>(
            &self.args.run,
            self.args.data.as_deref(),
            &device,
        )?)
    }
}
