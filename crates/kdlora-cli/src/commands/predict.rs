//! `kdlora predict`: a GLUE submission file (`index<TAB>prediction`) of a run's predictions, or
//! with `--input` one JSON line per row of a file of texts (label name and probabilities).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use kdlora_glue::{GlueTask, Split};
use kdlora_lora::LoraOps;

use super::runs::{self, Labels};
use crate::device::{BackendTask, DeviceArg};

/// Arguments of `kdlora predict`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run folder (written by `kdlora train`): task, data folder and max_len come from its
    /// config.toml. Or a model folder with a trained head (then give --task, and --data unless
    /// --input).
    #[arg(long)]
    pub run: PathBuf,
    /// GLUE task (default: the run's; must match it).
    #[arg(long)]
    pub task: Option<String>,
    /// GLUE data folder (default: the run's).
    #[arg(long, conflicts_with = "input")]
    pub data: Option<PathBuf>,
    /// Split to predict: test (default), dev, train, ...
    #[arg(long, default_value = "test", conflicts_with = "input")]
    pub split: String,
    /// A file of texts to classify instead of a GLUE split: a `.tsv` file with a header row, or
    /// JSON lines of objects, naming the task's text columns (`sentence`; `sentence1` and
    /// `sentence2`; `question` and `sentence`; ...; other columns such as a label are ignored;
    /// `-` reads JSON lines from stdin). Writes one JSON line per row: `{"index": 0, "label":
    /// "positive", "probabilities": {"negative": 0.1, "positive": 0.9}}`, or for STS-B
    /// `{"index": 0, "score": 3.2}`. A bad row is an error naming file and line.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// File to write: the submission file (required without --input), or the JSON lines of
    /// --input (default: stdout).
    #[arg(long, required_unless_present = "input")]
    pub out: Option<PathBuf>,
    /// Compute device.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
}

/// Runs the verb.
pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(out) = &args.out {
        super::check_output("--out", out, super::Output::File)?;
    }
    let device = args.device;
    let run = runs::run_config(&args.run)?;
    if run.is_none() && !args.run.exists() && args.task.is_none() {
        // Not "give --task": no flag makes a missing folder a model.
        bail!("--run {}: no such run folder", args.run.display());
    }
    let task: GlueTask = match (&args.task, &run) {
        (Some(name), _) => name
            .parse::<GlueTask>()
            .with_context(|| format!("--task {name}"))?,
        (None, Some(cfg)) => cfg.glue_task()?,
        (None, None) => bail!(
            "--run {}: not a run folder (no config.toml), so give the task with --task",
            args.run.display()
        ),
    };
    if let Some(input) = args.input.clone() {
        let n = device.run(Predict {
            args,
            task,
            source: Source::Texts(input),
        })?;
        eprintln!("wrote {n} predictions");
        return Ok(());
    }
    let data = match (&args.data, &run) {
        (Some(data), _) => data.clone(),
        (None, Some(cfg)) => cfg.data.clone(),
        (None, None) => bail!(
            "--run {}: not a run folder (no config.toml), so give the data folder with --data",
            args.run.display()
        ),
    };
    let split: Split = args
        .split
        .parse()
        .with_context(|| format!("--split {}", args.split))?;
    let n = device.run(Predict {
        args,
        task,
        source: Source::Split { data, split },
    })?;
    eprintln!("wrote {n} predictions");
    Ok(())
}

struct Predict {
    args: Args,
    task: GlueTask,
    source: Source,
}

/// What `predict` classifies.
enum Source {
    /// A GLUE split, to a submission file.
    Split { data: PathBuf, split: Split },
    /// A file of texts (`--input`), to JSON lines.
    Texts(PathBuf),
}

impl BackendTask for Predict {
    type Output = usize;

    fn run<B: LoraOps>(self, device: B::Device) -> anyhow::Result<usize> {
        match &self.source {
            Source::Split { data, split } => {
                let out = self.args.out.as_deref().context("--out is required")?;
                Ok(kdlora_train::predict_run::<B>(
                    &self.args.run,
                    self.task,
                    data,
                    *split,
                    out,
                    &device,
                )?)
            }
            Source::Texts(input) => self.predict_texts::<B>(input, &device),
        }
    }
}

impl Predict {
    fn predict_texts<B: LoraOps>(
        &self,
        input: &std::path::Path,
        device: &B::Device,
    ) -> anyhow::Result<usize> {
        let bytes = super::logits::read_input(input)?;
        let rows = super::texts::read_texts(input, &bytes, Some(self.task))?;
        let mut loaded =
            kdlora_train::load_model::<B>(&self.args.run, Some(self.task.num_labels()), device)?;
        if let Some(cfg) = &loaded.config {
            let run_task = cfg.glue_task()?;
            if run_task != self.task {
                bail!(
                    "--task {}: the run {} was trained on {run_task}",
                    self.task,
                    self.args.run.display()
                );
            }
        }
        kdlora_lora::merge(&mut loaded.model);
        let examples: Vec<kdlora_glue::GlueExample> = rows
            .iter()
            .enumerate()
            .map(|(index, row)| kdlora_glue::GlueExample {
                index,
                text_a: row.text.clone(),
                text_b: row.pair.clone(),
                label: None,
            })
            .collect();
        let encoded = loaded.tokenizer.encode_examples(&examples)?;
        let prepared: Vec<super::logits::Prepared> = encoded
            .into_iter()
            .zip(&rows)
            .map(|(e, row)| super::logits::Prepared {
                mask: vec![1; e.input_ids.len()],
                ids: e.input_ids.iter().map(|v| i64::from(*v)).collect(),
                types: e.token_type_ids.iter().map(|v| i64::from(*v)).collect(),
                origin: row.origin.clone(),
            })
            .collect();
        let batch_size = loaded.config.as_ref().map_or(64, |c| c.eval_batch_size);
        let labels = Labels::of_task(self.task);
        for input in &prepared {
            loaded
                .model
                .check_sequence(&input.ids, &input.mask, &input.types)
                .with_context(|| input.origin.clone())?;
        }
        // A file is written whole at the end (never a truncated one); stdout streams.
        let mut file_bytes = Vec::new();
        let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
        let out: &mut dyn Write = match &self.args.out {
            Some(_) => &mut file_bytes,
            None => &mut stdout,
        };
        let mut index = 0;
        for batch in prepared.chunks(batch_size.max(1)) {
            let logits = super::logits::forward_batch(&loaded.model, batch, device)?;
            for (logits, input) in logits.iter().zip(batch) {
                super::logits::check_finite(logits, &input.origin)?;
                let mut line = serde_json::Map::new();
                line.insert("index".into(), index.into());
                line.extend(super::texts::prediction(logits, &labels));
                serde_json::to_writer(&mut *out, &line)?;
                out.write_all(b"\n")?;
                index += 1;
            }
        }
        out.flush().context("writing the predictions")?;
        if let Some(path) = &self.args.out {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            kdlora_schema::write_atomic(path, &file_bytes)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(index)
    }
}
