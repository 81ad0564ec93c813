//! `kdlora data download | stats`: fetch the official GLUE files; summarise a task's splits.

use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use kdlora_glue::download::{
    BASE_URL_ENV, DownloadEvent, DownloadOptions, DownloadOutcome, GlueSources,
};
use kdlora_glue::{
    GlueDataset, GlueError, GlueTask, GlueTokenizer, Split, dataset_stats, download_task,
};

/// Arguments of `kdlora data`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: DataCommand,
}

/// `kdlora data` sub-commands.
#[derive(clap::Subcommand, Debug)]
pub enum DataCommand {
    /// Download official GLUE files into the original layout (<out>/CoLA/train.tsv, ...).
    Download(DownloadArgs),
    /// Print counts, label distribution and token-length percentiles of a task's splits (JSON).
    Stats(StatsArgs),
}

/// Arguments of `kdlora data download`.
#[derive(clap::Args, Debug)]
pub struct DownloadArgs {
    /// Task(s), comma-separated, or `all`.
    #[arg(long, value_delimiter = ',', required = true)]
    pub task: Vec<String>,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Fetch every file from this base URL instead of the official locations (a mirror).
    #[arg(long, env = BASE_URL_ENV)]
    pub base_url: Option<String>,
    /// Replace task folders that already exist.
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `kdlora data stats`.
#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// GLUE task.
    #[arg(long)]
    pub task: GlueTask,
    /// Data folder (original TSV or Hugging Face JSON-lines layout).
    #[arg(long)]
    pub data: PathBuf,
    /// One split; default: every split of the task found under --data.
    #[arg(long)]
    pub split: Option<Split>,
    /// tokenizer.json for token-length percentiles.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Maximum sequence length (examples above it are counted as truncated).
    #[arg(long, default_value_t = kdlora_glue::DEFAULT_MAX_LEN)]
    pub max_len: usize,
}

/// Runs `kdlora data`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        DataCommand::Download(a) => download(a),
        DataCommand::Stats(a) => {
            super::score::print_line(&serde_json::to_string_pretty(&stats(&a)?)?)
        }
    }
}

fn parse_tasks(names: &[String]) -> anyhow::Result<Vec<GlueTask>> {
    if names.iter().any(|n| n.eq_ignore_ascii_case("all")) {
        return Ok(GlueTask::ALL.to_vec());
    }
    let mut tasks = Vec::new();
    for n in names {
        let t: GlueTask = n.parse()?;
        if !tasks.contains(&t) {
            tasks.push(t);
        }
    }
    Ok(tasks)
}

fn download(args: DownloadArgs) -> anyhow::Result<()> {
    let tasks = parse_tasks(&args.task)?;
    let options = DownloadOptions {
        sources: args
            .base_url
            .as_deref()
            .map(GlueSources::from_base_url)
            .unwrap_or_default(),
        force: args.force,
        ..DownloadOptions::default()
    };
    let style = ProgressStyle::with_template(
        "{msg:24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )?
    .progress_chars("=> ");
    for task in tasks {
        let mut bar: Option<ProgressBar> = None;
        let mut on_event = |event: DownloadEvent| match event {
            DownloadEvent::Started { url, total } => {
                let pb = match total {
                    Some(t) => ProgressBar::new(t).with_style(style.clone()),
                    None => ProgressBar::new_spinner(),
                };
                pb.set_message(url.rsplit('/').next().unwrap_or("").to_string());
                bar = Some(pb);
            }
            DownloadEvent::Progress { bytes } => {
                if let Some(pb) = &bar {
                    pb.set_position(bytes);
                }
            }
            DownloadEvent::Finished { .. } => {
                if let Some(pb) = bar.take() {
                    pb.finish_and_clear();
                }
            }
            DownloadEvent::Extracting { folder } => {
                tracing::info!(folder = %folder, "extracting");
            }
        };
        match download_task(task, &args.out, &options, &mut on_event)
            .with_context(|| format!("downloading {}", task.display_name()))?
        {
            DownloadOutcome::Downloaded(p) => eprintln!("{}: {}", task.display_name(), p.display()),
            DownloadOutcome::AlreadyPresent(p) => eprintln!(
                "{}: {} exists, skipped (use --force to replace)",
                task.display_name(),
                p.display()
            ),
        }
    }
    Ok(())
}

/// Computes the JSON `kdlora data stats` prints.
pub fn stats(args: &StatsArgs) -> anyhow::Result<serde_json::Value> {
    let tokenizer = match &args.tokenizer {
        Some(p) => Some(GlueTokenizer::from_file(p)?.with_max_len(args.max_len)?),
        None => None,
    };
    let splits: Vec<Split> = match args.split {
        Some(s) => vec![s],
        None => args.task.splits().to_vec(),
    };
    let mut out = Vec::new();
    for split in splits {
        let dataset = match GlueDataset::load(&args.data, args.task, split) {
            Ok(d) => d,
            // Without --split, splits that are simply absent are left out of the summary.
            Err(GlueError::DataNotFound { .. }) if args.split.is_none() => continue,
            Err(e) => return Err(e.into()),
        };
        out.push(serde_json::to_value(dataset_stats(
            &dataset,
            tokenizer.as_ref(),
        )?)?);
    }
    if out.is_empty() {
        anyhow::bail!(
            "no {} split found under {}",
            args.task.display_name(),
            args.data.display()
        );
    }
    Ok(serde_json::json!({ "task": args.task.name(), "splits": out }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_present_splits_only() {
        let dir = tempfile::tempdir().unwrap();
        let rte = dir.path().join("RTE");
        std::fs::create_dir(&rte).unwrap();
        std::fs::write(
            rte.join("dev.tsv"),
            "index\tsentence1\tsentence2\tlabel\n0\tA\tB\tentailment\n1\tC\tD\tnot_entailment\n2\tE\tF\tentailment\n",
        )
        .unwrap();
        let args = StatsArgs {
            task: GlueTask::Rte,
            data: dir.path().to_path_buf(),
            split: None,
            tokenizer: None,
            max_len: 128,
        };
        let v = stats(&args).unwrap();
        let splits = v["splits"].as_array().unwrap();
        assert_eq!(splits.len(), 1);
        assert_eq!(splits[0]["split"], "dev");
        assert_eq!(splits[0]["examples"], 3);
        assert_eq!(splits[0]["labels"]["entailment"], 2);
        let missing = StatsArgs {
            split: Some(Split::Train),
            ..args
        };
        assert!(stats(&missing).is_err());
    }

    #[test]
    fn task_lists() {
        assert_eq!(parse_tasks(&["all".into()]).unwrap().len(), 10);
        assert_eq!(
            parse_tasks(&["CoLA".into(), "sst-2".into(), "cola".into()]).unwrap(),
            vec![GlueTask::Cola, GlueTask::Sst2]
        );
        assert!(parse_tasks(&["imdb".into()]).is_err());
    }
}
