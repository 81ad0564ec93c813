//! `engine = "learner"` (burn-train's `Learner`) against the hand-written loop, on the tiny SST-2
//! setups of `train_e2e.rs` (real MiniLM student and data from `../shared`; skipped when absent).
//!
//! The tests share the process-wide CPU RNG (Burn's ndarray seed is global), so they run one at
//! a time under a lock.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use kdlora_train::{
    Engine, EpochRecord, NoProgress, RunConfig, RunMetrics, StepRecord, TrainError,
};

use crate::common::{load, lock, q, shared, tiny};

type B = Autodiff<NdArray<f32>>;
type Inner = NdArray<f32>;

fn learner() -> (&'static str, String) {
    ("engine", "\"learner\"".to_string())
}

fn run(cfg: &RunConfig, resume: bool) -> kdlora_train::Result<RunMetrics> {
    kdlora_train::train::<B>(cfg, resume, &Default::default(), &mut NoProgress)
}

fn rows(dir: &Path) -> Vec<EpochRecord> {
    kdlora_train::read_jsonl(&dir.join("metrics.jsonl")).unwrap()
}

fn adapter_bytes(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("adapter/adapter_model.safetensors")).unwrap()
}

/// burn-train's file metric logger wrote, per epoch, one `loss,examples` line per optimizer step
/// (the examples adding up to the epoch's `examples`) and the learning rate, and one
/// `score,1` line for the dev evaluation equal to the epoch's score in `metrics.jsonl`.
fn assert_burn_train_metric_logs(run: &Path, epochs: &[EpochRecord], examples: usize) {
    let entries = |file: PathBuf| -> Vec<(f64, usize)> {
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        text.lines()
            .map(|line| {
                let (value, count) = line.split_once(',').expect("value,count");
                (value.parse().unwrap(), count.parse().unwrap())
            })
            .collect()
    };
    for record in epochs {
        let train = run.join(format!("learner/train/epoch-{}", record.epoch));
        let losses = entries(train.join("Loss.log"));
        assert!(!losses.is_empty());
        assert!(
            losses
                .iter()
                .all(|(loss, _)| loss.is_finite() && *loss > 0.0)
        );
        assert_eq!(losses.iter().map(|(_, n)| n).sum::<usize>(), examples);
        assert_eq!(entries(train.join("Learning_Rate.log")).len(), losses.len());
        let valid = run.join(format!("learner/valid/epoch-{}", record.epoch));
        assert_eq!(
            entries(valid.join("Dev_score.log")),
            vec![(record.score, 1)]
        );
    }
}

/// Same seed, same numbers: both engines run the same operations in the same order (shared
/// batching, loss, accumulation, optimizer, schedule and per-step dropout seed), so on the CPU
/// the epochs' losses, dev metrics and the saved adapter are bit-identical; only the wall-clock
/// measurements differ.
fn assert_same_run(a: &Path, b: &Path) {
    let (x, y) = (rows(a), rows(b));
    assert_eq!(x.len(), y.len());
    for (x, y) in x.iter().zip(&y) {
        assert_eq!(x.epoch, y.epoch);
        assert_eq!(x.step, y.step, "epoch {}", x.epoch);
        assert_eq!(x.lr, y.lr, "epoch {}", x.epoch);
        assert_eq!(x.train_loss, y.train_loss, "epoch {}", x.epoch);
        assert_eq!(x.dev, y.dev, "epoch {}", x.epoch);
        assert_eq!(x.score, y.score, "epoch {}", x.epoch);
    }
    assert!(
        adapter_bytes(a) == adapter_bytes(b),
        "adapter weights of {} and {} differ",
        a.display(),
        b.display()
    );
    let metrics =
        |d: &Path| -> RunMetrics { kdlora_train::read_json(&d.join("metrics.json")).unwrap() };
    let (ma, mb) = (metrics(a), metrics(b));
    assert_eq!(
        (ma.last.score, ma.last.train_loss, &ma.last.dev),
        (mb.last.score, mb.last.train_loss, &mb.last.dev)
    );
    assert_eq!(ma.params, mb.params);
    assert_eq!(ma.lora_params, mb.lora_params);
    assert_eq!(ma.train.examples, mb.train.examples);
    assert_eq!(ma.epochs, mb.epochs);
}

/// LoRA and KD-LoRA under `engine = "learner"` end to end, each against the loop on the same
/// seed; and a learner run stopped after one epoch and resumed equals the uninterrupted one.
#[test]
fn learner_engine_matches_the_loop_on_lora_and_kd_lora() {
    let Some(shared) = shared() else { return };
    let _guard = lock();
    let tmp = tempfile::tempdir().unwrap();
    let t = std::time::Instant::now();

    let loop_lora = tmp.path().join("loop-lora");
    let learner_lora = tmp.path().join("learner-lora");
    run(&tiny("lora", &shared, &loop_lora, &[]), false).unwrap();
    let keep = ("keep_checkpoints", "true".to_string());
    let m = run(
        &tiny("lora", &shared, &learner_lora, &[learner(), keep]),
        false,
    )
    .unwrap();
    eprintln!("lora runs: {:.1}s", t.elapsed().as_secs_f64());
    assert_eq!(m.epochs, 2);
    assert_eq!(m.train.examples, 2 * 48);
    assert!(m.train.examples_per_second > 0.0);
    assert!(learner_lora.join("metrics.json").is_file());
    assert!(learner_lora.join("adapter/adapter_config.json").is_file());
    assert!(!learner_lora.join("model").exists());
    assert!(!learner_lora.join("checkpoints").exists());
    let saved = RunConfig::from_toml_file(&learner_lora.join("config.toml")).unwrap();
    assert_eq!(saved.engine, Engine::Learner);
    assert_eq!(rows(&learner_lora).len(), 2);
    assert_same_run(&loop_lora, &learner_lora);
    // burn-train wrote its epoch checkpoints (the last two, kept with keep_checkpoints), its
    // metric logs, and no application log.
    let ckpt = learner_lora.join("learner/checkpoint");
    for name in [
        "model-2.bin",
        "optim-2.bin",
        "scheduler-2.bin",
        "model-1.bin",
    ] {
        assert!(ckpt.join(name).is_file(), "{name} missing");
    }
    assert!(!learner_lora.join("learner/experiment.log").exists());
    assert_burn_train_metric_logs(&learner_lora, &rows(&learner_lora), 48);
    // `kdlora eval` reads the learner's run folder like any other.
    let again = kdlora_train::eval_run::<Inner>(&learner_lora, None, &Default::default()).unwrap();
    assert_eq!(serde_json::to_value(&again).unwrap(), m.last.dev);

    // KD-LoRA distilled from the LoRA run (a run folder serves as the teacher).
    let t = std::time::Instant::now();
    let kd = |out: &Path, extra: &[(&str, String)]| {
        let mut pairs = vec![("teacher", q(&loop_lora))];
        pairs.extend(extra.iter().cloned());
        tiny("kd-lora", &shared, out, &pairs)
    };
    let loop_kd = tmp.path().join("loop-kd");
    let learner_kd = tmp.path().join("learner-kd");
    run(&kd(&loop_kd, &[]), false).unwrap();
    let m = run(&kd(&learner_kd, &[learner()]), false).unwrap();
    eprintln!("kd-lora runs: {:.1}s", t.elapsed().as_secs_f64());
    assert!(m.teacher.is_some());
    assert!(learner_kd.join("metrics.json").is_file());
    assert!(
        learner_kd
            .join("adapter/adapter_model.safetensors")
            .is_file()
    );
    assert!(learner_kd.join("teacher_logits.safetensors").is_file());
    // Without keep_checkpoints a finished run keeps no checkpoint, but burn-train's metric logs.
    assert!(!learner_kd.join("learner/checkpoint").exists());
    assert_burn_train_metric_logs(&learner_kd, &rows(&learner_kd), 48);
    assert!(!loop_kd.join("checkpoints").exists());
    assert_same_run(&loop_kd, &learner_kd);
    // Both engines log the same steps and losses (the KD runs with their two parts).
    let log = |d: &Path| -> Vec<StepRecord> {
        kdlora_train::read_jsonl(&d.join("train_log.jsonl")).unwrap()
    };
    let (a, b) = (log(&loop_kd), log(&learner_kd));
    assert_eq!(a.len(), 2 * 3, "one line per step of the 3-step epochs");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (x.step, x.epoch, x.loss, x.lr),
            (y.step, y.epoch, y.loss, y.lr)
        );
        assert_eq!((x.task_loss, x.kd_loss), (y.task_loss, y.kd_loss));
        assert!(x.task_loss.is_some() && x.kd_loss.is_some() && x.grad_norm.is_some());
    }

    // Epoch-boundary resume: stop after epoch 1, resume, same result as uninterrupted.
    let t = std::time::Instant::now();
    let part = tmp.path().join("learner-part");
    let stopped = run(
        &tiny(
            "lora",
            &shared,
            &part,
            &[learner(), ("stop_after_epochs", "1".to_string())],
        ),
        false,
    )
    .unwrap();
    assert_eq!(stopped.epochs, 1);
    assert!(!part.join("metrics.json").exists());
    let resumed = run(&tiny("lora", &shared, &part, &[learner()]), true).unwrap();
    eprintln!("learner stop + resume: {:.1}s", t.elapsed().as_secs_f64());
    assert_eq!(resumed.epochs, 2);
    assert_eq!(resumed.train.examples, 2 * 48);
    assert_same_run(&learner_lora, &part);

    // A loop run cannot be resumed by the learner (and vice versa): engine is part of the run.
    let err = run(&tiny("lora", &shared, &loop_lora, &[learner()]), true).unwrap_err();
    assert!(err.to_string().contains("engine"), "{err}");
}

/// A NaN loss under the learner stops the run with the step named, before that epoch's
/// evaluation and checkpoint, leaving no final outputs.
#[test]
fn learner_engine_stops_on_non_finite_loss() {
    let Some(shared) = shared() else { return };
    let _guard = lock();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("nan");
    let cfg = tiny(
        "fft",
        &shared,
        &out,
        &[
            learner(),
            ("lr", "1e30".to_string()),
            ("grad_clip", "0".to_string()),
            ("warmup_ratio", "0".to_string()),
            ("grad_accumulation", "1".to_string()),
        ],
    );
    let t = std::time::Instant::now();
    let err = run(&cfg, false).unwrap_err();
    eprintln!("nan run: {:.1}s", t.elapsed().as_secs_f64());
    let msg = err.to_string();
    match err {
        TrainError::NonFiniteLoss { step, epoch, .. } => {
            assert!(
                step >= 2,
                "the first step's loss is finite; got step {step}"
            );
            assert_eq!(epoch, 1);
            assert!(msg.contains(&format!("step {step}")), "{msg}");
        }
        other => panic!("expected NonFiniteLoss, got {other}"),
    }
    assert!(!out.join("metrics.json").exists());
    assert!(!out.join("model").exists());
    assert!(!out.join("metrics.jsonl").exists());
    // No checkpoint for the failed epoch.
    assert!(!out.join("learner/checkpoint/model-1.bin").exists());
    // Nothing was saved, so the folder does not count as a run: the same command runs again
    // (and stops at the same step).
    let again = run(&cfg, false).unwrap_err();
    assert!(
        matches!(again, TrainError::NonFiniteLoss { .. }),
        "expected NonFiniteLoss, got {again}"
    );
    assert_eq!(again.to_string(), msg);
}

/// `engine` is a checked key: learner + `checkpoint_steps` and unknown values are configuration
/// errors naming the key. Needs no models.
#[test]
fn engine_key_is_validated() {
    let _guard = lock();
    let base = |extra: &[(&str, &str)]| {
        let mut pairs: Vec<(&str, String)> = vec![
            ("method", "\"lora\"".into()),
            ("task", "\"sst2\"".into()),
            ("model", "\"m\"".into()),
            ("data", "\"d\"".into()),
            ("out", "\"o\"".into()),
        ];
        pairs.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        load(&pairs)
    };
    assert_eq!(base(&[]).unwrap().engine, Engine::Loop);
    assert_eq!(
        base(&[("engine", "learner")]).unwrap().engine,
        Engine::Learner
    );
    // The loop's saved config.toml does not change: the default is not written.
    assert!(!base(&[]).unwrap().to_toml().unwrap().contains("engine"));
    assert!(
        base(&[("engine", "learner")])
            .unwrap()
            .to_toml()
            .unwrap()
            .contains("engine = \"learner\"")
    );
    // Mid-epoch checkpoints exist only in the loop.
    assert!(
        base(&[("engine", "loop"), ("checkpoint_steps", "5")])
            .unwrap()
            .checkpoint_steps
            == 5
    );
    let err = base(&[("engine", "learner"), ("checkpoint_steps", "5")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`checkpoint_steps`") && err.contains("learner"),
        "{err}"
    );
    let err = base(&[("engine", "burn")]).unwrap_err().to_string();
    assert!(err.contains("engine") && err.contains("burn"), "{err}");
    let err = base(&[("engine", "3")]).unwrap_err().to_string();
    assert!(err.contains("engine"), "{err}");
}
