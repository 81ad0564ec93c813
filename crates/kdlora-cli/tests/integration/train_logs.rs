//! Issue #22, training side: `train_log.jsonl` and its log lines when stderr is piped, the run
//! folder after a run (checkpoints removed unless `keep_checkpoints`, `best/` with `save_best`,
//! LoRA checkpoints holding only the trainable tensors, the adapter's base path), and no
//! "freshly initialised" line when an adapter supplies the head.
//!
//! On the committed tiny BERT fixture and a few dozen MNLI rows written here (seconds; no
//! `../shared` needed).

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::bad_input::{tiny_model, write_mnli};

const TRAIN_ROWS: usize = 24;
const BATCH: usize = 2;
/// Optimizer steps per epoch (no accumulation).
const STEPS_PER_EPOCH: usize = TRAIN_ROWS / BATCH;

/// A LoRA run of two epochs logging every 4 steps (`extra` appended to the TOML).
fn write_config(dir: &Path, data: &Path, model: &Path, out: &Path, extra: &str) -> PathBuf {
    let path = dir.join(format!(
        "{}.toml",
        out.file_name().unwrap().to_string_lossy()
    ));
    let text = format!(
        "method = \"lora\"\ntask = \"mnli\"\nmodel = {:?}\ndata = {:?}\nout = {:?}\n\
         epochs = 2\nbatch_size = {BATCH}\nlr = 1e-3\nmax_len = 32\nseed = 5\n\
         eval_batch_size = 8\nlogging_steps = 4\n{extra}\n\
         [lora]\nr = 4\nmodules_to_save = [\"classifier\"]\n",
        model.to_str().unwrap(),
        data.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `kdlora ARGS` with stderr piped (not a terminal) and info logging.
fn kdlora(args: &[&str]) -> Output {
    crate::common::kdlora_logging("info", args)
}

fn ok(args: &[&str]) -> String {
    let out = kdlora(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "kdlora {args:?} failed:\n{stderr}");
    stderr
}

fn train_log(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn steps(run: &Path) -> Vec<u64> {
    train_log(run)
        .iter()
        .map(|r| r["step"].as_u64().unwrap())
        .collect()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A copy of the tiny BERT without its classifier tensors (a base model as downloaded: the
/// head comes from training, and from the adapter when the run is loaded).
fn headless_model(dir: &Path) -> PathBuf {
    headless_copy(&tiny_model(), dir)
}

/// [`headless_model`] of the model folder `src` (its config.json and tokenizer.json when present;
/// tensors keep their dtype).
pub(crate) fn headless_copy(src: &Path, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for name in ["config.json", "tokenizer.json"] {
        if src.join(name).is_file() {
            std::fs::copy(src.join(name), dir.join(name)).unwrap();
        }
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut kept: Vec<(String, serde_json::Value)> = header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__" && !k.starts_with("classifier."))
        .collect();
    kept.sort_by_key(|(_, v)| v["data_offsets"][0].as_u64().unwrap());
    let (mut new_header, mut new_data) = (serde_json::Map::new(), Vec::new());
    for (name, mut info) in kept {
        let (s, e) = (
            info["data_offsets"][0].as_u64().unwrap() as usize,
            info["data_offsets"][1].as_u64().unwrap() as usize,
        );
        let start = new_data.len();
        new_data.extend_from_slice(&data[s..e]);
        info["data_offsets"] = serde_json::json!([start, new_data.len()]);
        new_header.insert(name, info);
    }
    let mut text = serde_json::to_string(&new_header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&new_data);
    std::fs::write(dir.join("model.safetensors"), out).unwrap();
    dir.to_path_buf()
}

/// Piped stderr gets one line per logging step and per slow phase; `train_log.jsonl` holds the
/// same steps with their scalars; the finished run keeps no checkpoints, no inference timing
/// (off by default) and records its base relative to the run; loading it does not claim the
/// head was freshly initialised.
#[test]
fn piped_run_logs_steps_and_leaves_a_tidy_run_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_mnli(&tmp.path().join("glue"), TRAIN_ROWS, 8, 0);
    let model = headless_model(&tmp.path().join("models/bert"));
    let run = tmp.path().join("runs/lora");
    let config = write_config(tmp.path(), &data, &model, &run, "");
    let stderr = ok(&["train", "--config", config.to_str().unwrap()]);

    let total = 2 * STEPS_PER_EPOCH;
    let expected: Vec<u64> = (4..=total as u64).step_by(4).collect();
    assert_eq!(steps(&run), expected);
    for record in train_log(&run) {
        for key in [
            "epoch",
            "loss",
            "lr",
            "grad_norm",
            "examples_per_second",
            "elapsed_seconds",
        ] {
            assert!(record[key].is_number(), "{key} in {record}");
        }
        // No teacher, so no loss parts.
        assert!(record.get("kd_loss").is_none(), "{record}");
    }
    assert_eq!(train_log(&run)[2]["epoch"], 1);
    assert_eq!(train_log(&run)[3]["epoch"], 2);
    for step in &expected {
        let line = format!("step {step}/{total} epoch ");
        assert_eq!(
            stderr.matches(&line).count(),
            1,
            "{line:?} once in:\n{stderr}"
        );
    }
    assert!(
        stderr.contains("evaluating epoch 1: 8 examples"),
        "{stderr}"
    );
    assert!(!stderr.contains("timing inference"), "{stderr}");

    let metrics = json(&run.join("metrics.json"));
    assert!(metrics.get("inference").is_none_or(|v| v.is_null()));
    assert_eq!(
        names(&run),
        [
            "adapter",
            "config.toml",
            "metrics.json",
            "metrics.jsonl",
            "train_log.jsonl"
        ]
    );
    let adapter = json(&run.join("adapter/adapter_config.json"));
    assert_eq!(adapter["base_model_name_or_path"], "../../models/bert");

    // Loading the run: the base lacks the classifier, the adapter supplies it.
    let stderr = ok(&["eval", "--run", run.to_str().unwrap()]);
    assert!(!stderr.contains("freshly initialised"), "{stderr}");

    // A finished run has nothing to resume once its checkpoints are gone.
    let out = kdlora(&["train", "--out", run.to_str().unwrap(), "--resume"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "resumed a finished run: {stderr}");
    assert!(stderr.contains("keep_checkpoints"), "{stderr}");
}

/// A run stopped after its first epoch, with a line of a later step left behind (as a process
/// killed after its last checkpoint leaves it), resumes to exactly the steps and weights of an
/// uninterrupted run; its LoRA checkpoint holds only the trainable tensors.
#[test]
fn resume_logs_every_step_once_from_a_trainable_only_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_mnli(&tmp.path().join("glue"), TRAIN_ROWS, 8, 0);
    let model = tiny_model();
    let part = tmp.path().join("part");
    let config = write_config(tmp.path(), &data, &model, &part, "");
    let stderr = ok(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--set",
        "stop_after_epochs=1",
    ]);
    // This invocation runs one epoch: its lines count to the end of that epoch.
    assert!(
        stderr.contains(&format!("step 4/{STEPS_PER_EPOCH} epoch 1")),
        "{stderr}"
    );
    let ckpt = part
        .join("checkpoints")
        .join(format!("step-{STEPS_PER_EPOCH:08}"));
    assert_eq!(
        names(&ckpt),
        [
            "optim_decay.bin",
            "optim_no_decay.bin",
            "state.json",
            "trainable.safetensors",
            "trainable_ids.json"
        ]
    );
    let model_bytes = std::fs::metadata(model.join("model.safetensors"))
        .unwrap()
        .len();
    let trainable_bytes = std::fs::metadata(ckpt.join("trainable.safetensors"))
        .unwrap()
        .len();
    assert!(
        trainable_bytes * 4 < model_bytes,
        "{trainable_bytes} bytes of trainable tensors for a {model_bytes}-byte model"
    );
    assert_eq!(steps(&part), [4, 8, 12]);
    let log = part.join("train_log.jsonl");
    let mut text = std::fs::read_to_string(&log).unwrap();
    text.push_str(
        &text
            .lines()
            .last()
            .unwrap()
            .replace("\"step\":12", "\"step\":16"),
    );
    text.push_str("\n{\"step\":17,\"ep");
    std::fs::write(&log, text).unwrap();
    assert_eq!(steps_lenient(&log), [4, 8, 12, 16]);

    ok(&["train", "--out", part.to_str().unwrap(), "--resume"]);
    assert_eq!(steps(&part), [4, 8, 12, 16, 20, 24]);

    let full = tmp.path().join("full");
    let config = write_config(tmp.path(), &data, &model, &full, "");
    ok(&["train", "--config", config.to_str().unwrap()]);
    assert_eq!(steps(&full), steps(&part));
    let bytes = |run: &Path| std::fs::read(run.join("adapter/adapter_model.safetensors")).unwrap();
    assert!(bytes(&part) == bytes(&full), "resumed weights differ");
    let losses = |run: &Path| -> Vec<f64> {
        train_log(run)
            .iter()
            .map(|r| r["loss"].as_f64().unwrap())
            .collect()
    };
    // The window after the checkpoint starts there: epoch ends are logged, so windows align.
    assert_eq!(losses(&part), losses(&full));
}

/// The steps of the lines that parse.
fn steps_lenient(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|r| r["step"].as_u64().unwrap())
        .collect()
}

/// `keep_checkpoints` keeps the newest checkpoint; `save_best` keeps the best epoch's weights in
/// `best/`: an adapter folder for LoRA, a model folder (with the tokenizer) for full fine-tuning.
#[test]
fn keep_checkpoints_and_save_best() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_mnli(&tmp.path().join("glue"), TRAIN_ROWS, 8, 0);
    let model = tiny_model();

    let lora = tmp.path().join("lora");
    let config = write_config(
        tmp.path(),
        &data,
        &model,
        &lora,
        "keep_checkpoints = true\nsave_best = true",
    );
    ok(&["train", "--config", config.to_str().unwrap()]);
    let step = 2 * STEPS_PER_EPOCH;
    assert_eq!(
        names(&lora.join("checkpoints")),
        [format!("step-{step:08}")]
    );
    assert_eq!(
        names(&lora.join("best")),
        ["adapter_config.json", "adapter_model.safetensors"]
    );
    let metrics = json(&lora.join("metrics.json"));
    let best_epoch = metrics["best"]["epoch"].as_u64().unwrap();
    let last_epoch = metrics["last"]["epoch"].as_u64().unwrap();
    let same = std::fs::read(lora.join("best/adapter_model.safetensors")).unwrap()
        == std::fs::read(lora.join("adapter/adapter_model.safetensors")).unwrap();
    assert_eq!(same, best_epoch == last_epoch, "best epoch {best_epoch}");

    // One epoch of full fine-tuning: the best epoch is the last one, so best/ is model/.
    let fft = tmp.path().join("fft");
    let config = write_config(
        tmp.path(),
        &data,
        &model,
        &fft,
        "method = \"fft\"\nepochs = 1\nsave_best = true",
    );
    // `method` and `epochs` appear twice in that TOML; override them instead.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("method = \"lora\"\n", "")
        .replace("epochs = 2\n", "");
    std::fs::write(&config, text).unwrap();
    ok(&["train", "--config", config.to_str().unwrap()]);
    assert!(!fft.join("checkpoints").exists());
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert_eq!(
            std::fs::read(fft.join("best").join(name)).unwrap(),
            std::fs::read(fft.join("model").join(name)).unwrap(),
            "{name}"
        );
    }
}

/// `kd.soft_only_epochs` and `kd.alpha_end`: in the soft-only epoch each step optimises the loss
/// against the teacher alone; after it, the mix `alpha * task + (1 - alpha) * kd` with alpha on
/// its line from `kd.alpha` at the run's first step to `kd.alpha_end` at its last.
#[test]
fn kd_schedules_set_each_steps_mix() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_mnli(&tmp.path().join("glue"), TRAIN_ROWS, 8, 0);
    let common = format!(
        "task = \"mnli\"\nmodel = {:?}\ndata = {:?}\nbatch_size = {BATCH}\nlr = 1e-3\n\
         max_len = 32\nseed = 5\neval_batch_size = 8\nlogging_steps = 1\n",
        tiny_model(),
        data
    );
    let teacher = tmp.path().join("runs/fft");
    let fft = tmp.path().join("fft.toml");
    std::fs::write(
        &fft,
        format!("method = \"fft\"\nout = {teacher:?}\nepochs = 1\n{common}"),
    )
    .unwrap();
    ok(&["train", "--config", fft.to_str().unwrap()]);
    let student = tmp.path().join("runs/kd");
    let kd = tmp.path().join("kd.toml");
    std::fs::write(
        &kd,
        format!(
            "method = \"kd-lora\"\nout = {student:?}\nteacher = {teacher:?}\nepochs = 2\n\
             {common}[lora]\nr = 4\nmodules_to_save = [\"classifier\"]\n\
             [kd]\nsoft_only_epochs = 1\nalpha = 0.5\nalpha_end = 1.0\n"
        ),
    )
    .unwrap();
    ok(&["train", "--config", kd.to_str().unwrap()]);

    let log = train_log(&student);
    let total = 2 * STEPS_PER_EPOCH;
    assert_eq!(log.len(), total, "one line per step");
    for record in &log {
        let step = record["step"].as_u64().unwrap() as f64;
        let epoch = record["epoch"].as_u64().unwrap();
        let (loss, task, kd) = (
            record["loss"].as_f64().unwrap(),
            record["task_loss"].as_f64().unwrap(),
            record["kd_loss"].as_f64().unwrap(),
        );
        let alpha = if epoch == 1 {
            0.0
        } else {
            0.5 + 0.5 * (step - 1.0) / (total as f64 - 1.0)
        };
        let want = alpha * task + (1.0 - alpha) * kd;
        assert!(
            (loss - want).abs() <= 1e-5 * (1.0 + want.abs()),
            "step {step}: loss {loss}, task {task}, kd {kd}, alpha {alpha}"
        );
    }
    // The last step follows the labels alone, and the saved configuration keeps the schedule.
    let last = &log[total - 1];
    assert!((last["loss"].as_f64().unwrap() - last["task_loss"].as_f64().unwrap()).abs() < 1e-5);
    let saved = std::fs::read_to_string(student.join("config.toml")).unwrap();
    assert!(
        saved.contains("soft_only_epochs = 1") && saved.contains("alpha_end = 1.0"),
        "{saved}"
    );
}
