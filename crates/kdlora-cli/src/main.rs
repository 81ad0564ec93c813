//! `kdlora`: fine-tune, distil, evaluate and inspect GLUE encoders with LoRA.
use clap::{Parser, Subcommand};

mod commands;
mod device;

/// Training allocates and frees tensors of tens of MiB every step. glibc's malloc returns most of
/// them to the kernel (mmap/munmap and heap trimming) and pays page faults to get them back on the
/// next step; mimalloc keeps them for reuse: 15-20 % faster CPU steps at the same peak memory
/// (docs/results/bench/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (v2 and v3): milliseconds before freed memory is returned
/// to the kernel (-1: never).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The purge delay kdlora sets: a training step frees and reallocates its activations (tens of MiB
/// each), and with mimalloc's default of 10 ms those pages went back to the kernel and were faulted
/// (and zeroed) in again on the next step: ~5,000 page faults per benchmark step, 8-16 % of a CPU
/// step in `perf`. Measured on the cpu preset's SST-2 runs (`docs/results/bench/README.md`), delay
/// 10 / 100 / 1000 ms / never: KD-LoRA 10.8 / 9.4 / 9.1 / 8.7 s at 238 / 252 / 280 / 329 MiB peak,
/// FFT 51.3 / 43.9 / 37.8 / 33.8 s at 632 / 655 / 716 / 804 MiB. 100 ms keeps most of the speed for
/// 3-6 % more memory (varying sequence lengths fragment what is kept, so "never" costs up to 40 %).
const PURGE_DELAY_MS: std::ffi::c_long = 100;

/// Applies [`PURGE_DELAY_MS`] unless `MIMALLOC_PURGE_DELAY` is set in the environment (which then
/// wins, as mimalloc reads it at start-up).
fn set_purge_delay() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a process-wide integer option; called before any other thread exists.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

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
    /// Print one JSON line of logits per input (token ids from a JSON-lines file, or text).
    Logits(commands::logits::Args),
    /// Fold a PEFT LoRA adapter into its base model and write a plain Hugging Face checkpoint.
    Merge(commands::merge::Args),
    /// Train a run (fft, lora, kd-lora, kd) from a TOML config into a run folder.
    Train(commands::train::Args),
    /// Evaluate a run folder on its task's dev split (one JSON object).
    Eval(commands::eval::Args),
    /// Write a GLUE submission file of a run's predictions.
    Predict(commands::predict::Args),
    /// Measure one training or inference configuration (one JSON object).
    Bench(commands::bench::Args),
}

fn main() -> std::process::ExitCode {
    set_purge_delay();
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
        Command::Train(args) => commands::train::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Predict(args) => commands::predict::run(args),
        Command::Bench(args) => commands::bench::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
