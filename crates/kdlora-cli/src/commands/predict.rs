//! `kdlora predict`: a GLUE submission file (`index<TAB>prediction`) of a run's predictions.

use std::path::PathBuf;

use anyhow::Context;
use kdlora_glue::{GlueTask, Split};
use kdlora_lora::LoraOps;

use crate::device::{BackendTask, DeviceArg};

/// Arguments of `kdlora predict`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run folder (written by `kdlora train`), or a model folder with a trained head.
    #[arg(long)]
    pub run: PathBuf,
    /// GLUE task.
    #[arg(long)]
    pub task: String,
    /// GLUE data folder.
    #[arg(long)]
    pub data: PathBuf,
    /// Split to predict: test (default), dev, train, ...
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Submission file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Compute device.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
}

/// Runs the verb.
pub fn run(args: Args) -> anyhow::Result<()> {
    super::check_output("--out", &args.out, super::Output::File)?;
    let device = args.device;
    let task: GlueTask = args
        .task
        .parse()
        .with_context(|| format!("--task {}", args.task))?;
    let split: Split = args
        .split
        .parse()
        .with_context(|| format!("--split {}", args.split))?;
    let n = device.run(Predict { args, task, split })?;
    eprintln!("wrote {n} predictions");
    Ok(())
}

struct Predict {
    args: Args,
    task: GlueTask,
    split: Split,
}

impl BackendTask for Predict {
    type Output = usize;

    fn run<B: LoraOps>(self, device: B::Device) -> anyhow::Result<usize> {
        Ok(kdlora_train::predict_run::<B>(
            &self.args.run,
            self.task,
            &self.args.data,
            self.split,
            &self.args.out,
            &device,
        )?)
    }
}
