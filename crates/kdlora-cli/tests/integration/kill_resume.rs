//! Issue #21: a real `kdlora train` killed with SIGKILL at a random optimizer step, then resumed
//! with `--resume`, finishes with the same bytes and numbers as an uninterrupted run.
//!
//! The tiny committed BERT fixture and a few dozen MNLI rows written here keep it to seconds, so
//! it runs in CI on every push (no `../shared` needed).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bad_input::{tiny_model, write_mnli};

const TRAIN_ROWS: usize = 48;
const BATCH: usize = 2;
const EPOCHS: usize = 2;
/// Optimizer steps of the whole run (one per batch: no accumulation).
const STEPS: usize = EPOCHS * TRAIN_ROWS / BATCH;

/// A LoRA run checkpointing after every optimizer step, with dropout (so the resumed run must also
/// restore the random streams) and warmup (so it must restore the schedule position).
fn write_config(dir: &Path, data: &Path, out: &Path) -> PathBuf {
    let path = dir.join(format!(
        "{}.toml",
        out.file_name().unwrap().to_string_lossy()
    ));
    let text = format!(
        "method = \"lora\"\ntask = \"mnli\"\nmodel = {:?}\ndata = {:?}\nout = {:?}\n\
         epochs = {EPOCHS}\nbatch_size = {BATCH}\nlr = 1e-3\nwarmup_ratio = 0.1\nmax_len = 32\n\
         seed = 11\ncheckpoint_steps = 1\ninference_passes = 0\neval_batch_size = 8\n\
         [lora]\nr = 4\ndropout = 0.1\nmodules_to_save = [\"classifier\"]\n",
        tiny_model().to_str().unwrap(),
        data.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn spawn(args: &[&str], log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kdlora"))
        .args(args)
        // The loop's "resuming" line (info) tells a resumed run from one that started over, which
        // would give the same numbers.
        .env("RUST_LOG", "warn,kdlora_train=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // A file, not a pipe: nobody reads the pipe while the test polls, and a full one blocks.
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("running kdlora")
}

/// Runs `kdlora` to completion and asserts that it succeeded.
fn run_ok(args: &[&str], log: &Path) {
    let status = spawn(args, log).wait().unwrap();
    assert!(
        status.success(),
        "kdlora {args:?}: {status}\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// The global step of the newest complete checkpoint in `run`, if any (`checkpoints/step-N`;
/// staged writes are dot-files).
fn newest_checkpoint(run: &Path) -> Option<usize> {
    std::fs::read_dir(run.join("checkpoints"))
        .ok()?
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            name.strip_prefix("step-")?.parse().ok()
        })
        .max()
}

/// Where to kill: once checkpoint `step` exists, after `delay_ms` more (so that the kill also
/// lands inside the next step's forward, backward or checkpoint write, not only right after a
/// checkpoint). `KDLORA_KILL_AT=STEP+MS` reproduces a failure; otherwise drawn from the clock,
/// within the first three quarters of the run so that the kill lands before it finishes.
fn kill_point() -> (usize, u64) {
    if let Some((step, ms)) = std::env::var("KDLORA_KILL_AT")
        .ok()
        .and_then(|s| s.split_once('+').map(|(a, b)| (a.parse(), b.parse())))
        .and_then(|(a, b)| Some((a.ok()?, b.ok()?)))
    {
        return (step, ms);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as usize;
    (1 + nanos % (STEPS * 3 / 4), (nanos / 1000 % 10) as u64)
}

/// Drops the fields that measure time or memory (they differ between any two runs) from a
/// metrics value, recursively.
fn without_measurements(value: &mut serde_json::Value) {
    const MEASURED: &[&str] = &[
        "train_seconds",
        "eval_seconds",
        "seconds",
        "examples_per_second",
        "memory",
        "inference",
    ];
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|k, _| !MEASURED.contains(&k.as_str()));
            map.values_mut().for_each(without_measurements);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(without_measurements),
        _ => {}
    }
}

fn metrics(run: &Path) -> serde_json::Value {
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    without_measurements(&mut json);
    json
}

fn epoch_records(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let mut json = serde_json::from_str(line).unwrap();
            without_measurements(&mut json);
            json
        })
        .collect()
}

/// Paths under `dir` (relative) whose names are temporaries a killed write leaves behind.
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.contains(".tmp-") || name.contains(".old-") {
            found.push(path.clone());
        }
        if path.is_dir() {
            found.extend(temporaries(&path));
        }
    }
    found
}

#[test]
fn sigkill_at_a_random_step_then_resume_equals_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_mnli(&tmp.path().join("glue"), TRAIN_ROWS, 12, 0);
    let killed = tmp.path().join("killed");
    let full = tmp.path().join("full");
    let (k, delay_ms) = kill_point();
    eprintln!(
        "killing {delay_ms} ms after checkpoint {k} of {STEPS} (KDLORA_KILL_AT={k}+{delay_ms} \
         reproduces it)"
    );

    let config = write_config(tmp.path(), &data, &killed);
    let log = tmp.path().join("killed.log");
    let mut child = spawn(&["train", "--config", config.to_str().unwrap()], &log);
    // A hang guard, not a timing assertion: the whole run takes seconds.
    let deadline = Instant::now() + Duration::from_secs(300);
    let seen = loop {
        if let Some(step) = newest_checkpoint(&killed).filter(|s| *s >= k) {
            std::thread::sleep(Duration::from_millis(delay_ms));
            // SIGKILL on Unix: no handler runs, nothing is flushed.
            child.kill().unwrap();
            break step;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the run ended ({status}) before step {k}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint {k} after 5 minutes"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run finished before the kill");
    assert!(
        !killed.join("metrics.json").exists(),
        "the kill came after the run finished; lower the kill step"
    );
    let newest = newest_checkpoint(&killed).expect("a checkpoint survives the kill");
    eprintln!("killed {delay_ms} ms after checkpoint {seen} was seen; newest checkpoint: {newest}");

    // Resumed exactly as the README says: the run's own config.toml and --resume.
    let saved = killed.join("config.toml");
    let log = tmp.path().join("resumed.log");
    run_ok(
        &["train", "--config", saved.to_str().unwrap(), "--resume"],
        &log,
    );
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("resuming") && l.contains(&format!("step={newest}"))),
        "the run did not resume from checkpoint {newest}:\n{log}"
    );
    let config = write_config(tmp.path(), &data, &full);
    run_ok(
        &["train", "--config", config.to_str().unwrap()],
        &tmp.path().join("full.log"),
    );

    for file in [
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
    ] {
        let (a, b) = (
            std::fs::read(killed.join(file)).unwrap(),
            std::fs::read(full.join(file)).unwrap(),
        );
        assert!(
            a == b,
            "{file} differs between the resumed and the uninterrupted run"
        );
    }
    assert_eq!(metrics(&killed), metrics(&full), "metrics.json");
    let (resumed, uninterrupted) = (epoch_records(&killed), epoch_records(&full));
    assert_eq!(resumed.len(), EPOCHS);
    assert_eq!(resumed, uninterrupted, "metrics.jsonl");
    // The saved configurations differ only in `out`.
    let config_without_out = |run: &Path| {
        std::fs::read_to_string(run.join("config.toml"))
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("out = "))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(config_without_out(&killed), config_without_out(&full));
    assert_eq!(temporaries(&killed), Vec::<PathBuf>::new(), "left behind");
}
