//! Fuzzing of every parser and loader that reads a user's file (GLUE TSV and JSON lines,
//! submission files, the run configuration TOML, `config.json`, `model.safetensors`, PEFT adapter
//! folders, the teacher-logit store, training checkpoints), on stable Rust.
//!
//! Short form (CI, part of `cargo test --workspace`): one test per target, a fixed number of
//! executions from a fixed seed, so every run tries the same inputs. Long form:
//! `cargo xtask fuzz --minutes N [--target NAME]`, which runs [`long_form`] once per target with
//!
//! - `KDLORA_FUZZ_SECONDS`: seconds per target (default 10);
//! - `KDLORA_FUZZ_TARGET`: comma-separated targets (default all; names in [`targets::NAMES`]);
//! - `KDLORA_FUZZ_REPORT`: a file to write the reports to, as a JSON array;
//! - `KDLORA_FUZZ_DIR`: where crash inputs go (`crashes/<target>/<id>/`, each with the loader's
//!   files under their real names and `CRASH.txt` with the message and backtrace; default
//!   `<temp>/kdlora-fuzz`);
//! - `KDLORA_FUZZ_SEED` (default a fixed value), `KDLORA_FUZZ_TIMEOUT_MS` (an execution over this
//!   is a hang, default 5000), `KDLORA_FUZZ_MEMORY_MB` (peak allocation of one execution counted
//!   as a crash, default 512; 4x aborts), `KDLORA_FUZZ_SAVE_EACH=1` (write every input to
//!   `crashes/<target>/last-input/` first, to catch the input of a process abort);
//! - `KDLORA_FUZZ_LIST`: write the target names to this file and run nothing.
//!
//! To reproduce a crash, point the loader at the saved folder (its files are named as the loader
//! expects), or rerun the session with the seed printed in its summary.

mod engine;
mod targets;

use std::path::PathBuf;
use std::time::Duration;

use engine::{Options, Report};

/// The seed of the short form and the default of the long form.
const DEFAULT_SEED: u64 = 0x6b64_6c6f_7261_2101;

fn env_parse<T: std::str::FromStr>(name: &str) -> Option<T> {
    let value = std::env::var(name).ok()?;
    let parsed = if let Some(hex) = value.strip_prefix("0x") {
        u64::from_str_radix(hex, 16)
            .ok()
            .and_then(|v| v.to_string().parse().ok())
    } else {
        value.parse().ok()
    };
    Some(parsed.unwrap_or_else(|| panic!("{name}={value:?} is not a valid value")))
}

fn base_options() -> Options {
    Options {
        seed: env_parse("KDLORA_FUZZ_SEED").unwrap_or(DEFAULT_SEED),
        max_execs: None,
        duration: None,
        timeout: Duration::from_millis(env_parse("KDLORA_FUZZ_TIMEOUT_MS").unwrap_or(5000)),
        soft_memory: env_parse::<usize>("KDLORA_FUZZ_MEMORY_MB").unwrap_or(512) << 20,
        dir: std::env::var_os("KDLORA_FUZZ_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("kdlora-fuzz")),
        save_each: std::env::var_os("KDLORA_FUZZ_SAVE_EACH").is_some_and(|v| v == "1"),
    }
}

fn check(report: &Report) {
    eprintln!("{}", report.summary());
    assert!(
        report.rejected_seeds.is_empty(),
        "{}: valid seeds were refused (the target is broken): {:?}",
        report.target,
        report.rejected_seeds
    );
    assert_eq!(
        (report.crashes, report.hangs),
        (0, 0),
        "{}: crashes or hangs; inputs saved in {:?}",
        report.target,
        report.crash_dirs
    );
}

/// Short form: `execs` executions of `name` from the fixed seed.
fn short(name: &str, execs: u64) {
    let opts = Options {
        max_execs: Some(execs),
        ..base_options()
    };
    check(&engine::fuzz(targets::make(name), &opts));
}

// Executions per target: about 2-5 s each here (2 cores, dev profile), under 20 s for all of them
// on the two test threads; the slower loaders (a model built per input) get fewer.
#[test]
fn glue_tsv() {
    short("glue_tsv", 100_000);
}

#[test]
fn glue_jsonl() {
    short("glue_jsonl", 100_000);
}

#[test]
fn glue_predictions() {
    short("glue_predictions", 100_000);
}

#[test]
fn run_config() {
    short("run_config", 5_000);
}

#[test]
fn model_config() {
    short("model_config", 50_000);
}

#[test]
fn model_weights() {
    short("model_weights", 1_500);
}

/// `SequenceClassifier::load` sizes every tensor from `config.json`: the sizes are checked
/// against the weights' shapes before anything is built (a `vocab_size` of 1e17 once aborted the
/// process on allocating the model, a large `num_hidden_layers` built that many layers first).
#[test]
fn model_dir() {
    short("model_dir", 400);
}

#[test]
fn peft_adapter() {
    short("peft_adapter", 1_500);
}

#[test]
fn teacher_logits() {
    short("teacher_logits", 3_000);
}

#[test]
fn checkpoint() {
    short("checkpoint", 1_200);
}

/// Burn 0.21's record decoding panics on corrupt `.bin` records (a byte length that is not a
/// whole number of values, a shape that does not match the data, a length field past `usize`)
/// and aborts the process on a length field larger than memory: kdlora decodes its checkpoint
/// records itself (`kdlora_train`'s `record` module), and this checks that it never does either.
#[test]
fn checkpoint_records() {
    short("checkpoint_records", 300);
}

/// Long form (`cargo xtask fuzz`): each selected target for `KDLORA_FUZZ_SECONDS`, a summary line
/// per target, the reports as JSON to `KDLORA_FUZZ_REPORT`.
#[test]
#[ignore = "long form: run through `cargo xtask fuzz --minutes N`"]
fn long_form() {
    if let Some(list) = std::env::var_os("KDLORA_FUZZ_LIST") {
        std::fs::write(&list, targets::NAMES.join("\n") + "\n").expect("writing the target list");
        return;
    }
    let seconds: f64 = env_parse("KDLORA_FUZZ_SECONDS").unwrap_or(10.0);
    let selected: Vec<String> = match std::env::var("KDLORA_FUZZ_TARGET") {
        Ok(list) if !list.is_empty() && list != "all" => {
            list.split(',').map(|s| s.trim().to_string()).collect()
        }
        _ => targets::NAMES.iter().map(|s| s.to_string()).collect(),
    };
    let mut reports = Vec::new();
    for name in &selected {
        let opts = Options {
            duration: Some(Duration::from_secs_f64(seconds)),
            ..base_options()
        };
        let report = engine::fuzz(targets::make(name), &opts);
        println!("{}", report.summary());
        reports.push(report);
        // Written after each target, so an abort in a later one keeps the earlier reports.
        if let Some(path) = std::env::var_os("KDLORA_FUZZ_REPORT") {
            let json: Vec<serde_json::Value> = reports.iter().map(Report::to_json).collect();
            let json = serde_json::to_string_pretty(&json).expect("reports as JSON");
            std::fs::write(&path, json + "\n").expect("writing KDLORA_FUZZ_REPORT");
        }
    }
    let failed: Vec<&Report> = reports
        .iter()
        .filter(|r| r.crashes + r.hangs > 0 || !r.rejected_seeds.is_empty())
        .collect();
    assert!(
        failed.is_empty(),
        "fuzzing found problems: {:#?}",
        failed
            .iter()
            .map(|r| (
                &r.target,
                r.crashes,
                r.hangs,
                &r.crash_dirs,
                &r.rejected_seeds
            ))
            .collect::<Vec<_>>()
    );
}
