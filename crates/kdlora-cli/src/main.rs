//! `kdlora`: fine-tune, distil, evaluate and inspect GLUE encoders with LoRA.
use clap::{Parser, Subcommand};

mod allocator;
mod commands;
mod device;

/// Training allocates and frees tensors of tens of MiB every step. glibc's malloc returns most of
/// them to the kernel (mmap/munmap and heap trimming) and pays page faults to get them back on the
/// next step; mimalloc keeps them for reuse: 15-20 % faster CPU steps at the same peak memory
/// (docs/results/bench/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "kdlora",
    version,
    about = "KD-LoRA: LoRA fine-tuning with knowledge distillation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Metrics of a GLUE submission file against a labelled split (one JSON object).
    Score(commands::score::Args),
    /// GLUE data: `download` the official files, `stats` of a task's splits.
    Data(commands::data::Args),
    /// Print one JSON line of logits per input (token ids or texts from a file, or one text).
    Logits(commands::logits::Args),
    /// Fold a PEFT LoRA adapter into its base model and write a plain Hugging Face checkpoint.
    Merge(commands::merge::Args),
    /// Make a smaller student from chosen teacher layers (as DistilBERT was made from BERT).
    Student(commands::student::Args),
    /// Train a run (fft, lora, kd-lora, kd) from a TOML config into a run folder.
    #[command(
        after_help = "`kdlora train --help` lists every configuration key with its default.",
        after_long_help = commands::train::keys_help()
    )]
    Train(commands::train::Args),
    /// Evaluate a run folder on its task's dev split (one JSON object).
    Eval(commands::eval::Args),
    /// Write a GLUE submission file of a run's predictions, or label a file of texts.
    Predict(commands::predict::Args),
    /// Measure one training or inference configuration (one JSON object).
    Bench(commands::bench::Args),
}

fn main() -> std::process::ExitCode {
    allocator::init();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // burn-train (engine = "learner") logs every iteration at info level.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,burn_train=warn")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: logs redirected to files stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Score(args) => commands::score::run(args),
        Command::Data(args) => commands::data::run(args),
        Command::Logits(args) => commands::logits::run(args),
        Command::Merge(args) => commands::merge::run(args),
        Command::Student(args) => commands::student::run(args),
        Command::Train(args) => commands::train::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Predict(args) => commands::predict::run(args),
        Command::Bench(args) => commands::bench::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", render_error(&err));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by `: `, leaving out a cause whose text the error before it
/// already shows. The library errors put their source's message into their own (`{path}:
/// {source}`) and also return it as `source()`, so anyhow's `{:#}` would print it twice or three
/// times.
fn render_error(err: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut previous = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if previous.is_empty() {
            out.push_str(&text);
        } else if !previous.contains(&text) {
            out.push_str(": ");
            // A context that ends with the path its cause starts with (`loading the model from X`
            // + `X: file not found`) names it once.
            match text.split_once(": ") {
                Some((head, rest)) if head.len() > 2 && previous.ends_with(head) => {
                    out.push_str(rest)
                }
                _ => out.push_str(&text),
            }
        }
        previous = text;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Inner {
        #[error("{path}: {source}")]
        Io {
            path: String,
            #[source]
            source: std::io::Error,
        },
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("lora: {0}")]
        Lora(#[from] Inner),
    }

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = anyhow::Error::from(Outer::from(Inner::Io {
            path: "a/b.json".into(),
            source: io,
        }))
        .context("applying the adapter a");
        assert_eq!(
            render_error(&err),
            "applying the adapter a: lora: a/b.json: no such file"
        );
        // The plain `{:#}` rendering this replaces repeated both causes.
        assert_eq!(format!("{err:#}").matches("no such file").count(), 3);
    }

    #[test]
    fn a_context_ending_with_the_path_its_cause_starts_with_names_it_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = anyhow::Error::from(Inner::Io {
            path: "a/b.json".into(),
            source: io,
        })
        .context("loading the model from a/b.json");
        assert_eq!(
            render_error(&err),
            "loading the model from a/b.json: no such file"
        );
    }
}
