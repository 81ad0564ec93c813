//! `kdlora score`: metrics of a GLUE submission file against a labelled split, as one JSON
//! object (`accuracy`, `f1`, `mcc`, `pearson`, `spearman` as they apply, fractions; `score` is
//! the task's GLUE number x100).

use std::path::PathBuf;

use anyhow::Context;
use kdlora_glue::{GlueDataset, GlueTask, Split, align_predictions, evaluate, read_predictions};

/// Arguments of `kdlora score`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli, ax).
    #[arg(long)]
    pub task: GlueTask,
    /// Data folder (original GLUE TSV layout or Hugging Face JSON lines).
    #[arg(long)]
    pub data: PathBuf,
    /// Split the predictions are for (dev, dev_matched, dev_mismatched, train, ...).
    #[arg(long, default_value = "dev")]
    pub split: Split,
    /// Prediction file in GLUE submission format (`index<TAB>prediction`, header line).
    #[arg(long)]
    pub predictions: PathBuf,
}

/// Computes the JSON object `kdlora score` prints.
pub fn score(args: &Args) -> anyhow::Result<serde_json::Value> {
    let dataset = GlueDataset::load(&args.data, args.task, args.split)?;
    let predictions = read_predictions(&args.predictions, args.task)?;
    let (predicted, gold) = align_predictions(&predictions, &dataset).with_context(|| {
        format!(
            "matching {} to {}",
            args.predictions.display(),
            dataset.path().display()
        )
    })?;
    let metrics = evaluate(args.task, &predicted, &gold)?;
    let mut value = serde_json::to_value(&metrics)?;
    if let Some(object) = value.as_object_mut() {
        object.insert("split".into(), dataset.split().name().into());
    }
    Ok(value)
}

/// Runs `kdlora score`.
pub fn run(args: Args) -> anyhow::Result<()> {
    print_line(&serde_json::to_string(&score(&args)?)?)
}

/// Writes one line to stdout; a closed pipe (`| head`) ends output quietly instead of failing.
pub(crate) fn print_line(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdlora_glue::{Label, Prediction, write_predictions};

    #[test]
    fn scores_an_mrpc_submission() {
        let dir = tempfile::tempdir().unwrap();
        let mrpc = dir.path().join("MRPC");
        std::fs::create_dir(&mrpc).unwrap();
        std::fs::write(
            mrpc.join("dev.tsv"),
            "\u{feff}Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA\tB\n1\t3\t4\tC\tD\n0\t5\t6\tE\tF\n1\t7\t8\tG\tH\n0\t9\t10\tI\tJ\n",
        )
        .unwrap();
        // Labels [1,1,0,1,0], predictions [1,1,1,0,0]: accuracy 0.6, F1 2/3.
        let preds: Vec<Prediction> = [1, 1, 1, 0, 0]
            .iter()
            .enumerate()
            .map(|(index, &c)| Prediction {
                index,
                label: Label::Class(c),
            })
            .collect();
        let file = dir.path().join("MRPC.tsv");
        write_predictions(&file, GlueTask::Mrpc, &preds).unwrap();
        let args = Args {
            task: GlueTask::Mrpc,
            data: dir.path().to_path_buf(),
            split: Split::Dev,
            predictions: file.clone(),
        };
        let v = score(&args).unwrap();
        assert!((v["accuracy"].as_f64().unwrap() - 0.6).abs() < 1e-12);
        assert!((v["f1"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!((v["score"].as_f64().unwrap() - 50.0 * (0.6 + 2.0 / 3.0)).abs() < 1e-9);
        assert!(v.get("mcc").is_none());
        assert_eq!(v["split"], "dev");

        // A missing prediction is an error, not a silent partial score.
        write_predictions(&file, GlueTask::Mrpc, &preds[..4]).unwrap();
        let err = score(&args).unwrap_err();
        assert!(
            format!("{err:#}").contains("no prediction for index 4"),
            "{err:#}"
        );
    }
}
