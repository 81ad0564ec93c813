//! Issue #22, inference side: `merge` reads its base from the adapter, keeps an f16 base's dtype
//! and writes the task's label names; loading an adapter that supplies the head does not claim
//! the head was freshly initialised; `predict` takes task and data from the run; `predict` and
//! `logits` label files of texts (TSV and JSON lines); `train --print-config` and the
//! configuration keys in `train --help`; `--device` help without benchmark figures.
//!
//! On the committed tiny BERT fixtures and MNLI rows written here (seconds; no `../shared`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::bad_input::{tiny_model, write_mnli};
use crate::common::assert_logits_close as assert_close;
use crate::train_logs::headless_copy;

const MNLI_LABELS: [&str; 3] = ["entailment", "neutral", "contradiction"];
const DEV_ROWS: usize = 6;
const TEST_ROWS: usize = 5;

/// `kdlora ARGS` with info logging (what a user sees).
fn kdlora(args: &[&str]) -> Output {
    crate::common::kdlora_logging("info", args)
}

/// Stdout and stderr of a successful run.
fn ok(args: &[&str]) -> (String, String) {
    let out = kdlora(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "kdlora {args:?} failed:\n{stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

/// Stderr of a clean failure.
fn fails(args: &[&str]) -> String {
    let out = kdlora(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "kdlora {args:?}:\n{stderr}");
    stderr
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The dtypes of a safetensors file's tensors.
fn dtypes(path: &Path) -> BTreeSet<String> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(_, v)| v["dtype"].as_str().unwrap().to_string())
        .collect()
}

/// The f16 tiny BERT without its classifier (a base as downloaded), with the tokenizer of the
/// f32 fixture (the same model and vocabulary).
fn f16_base(dir: &Path) -> PathBuf {
    let fixtures = tiny_model().parent().unwrap().to_path_buf();
    let base = headless_copy(&fixtures.join("bert_cls3_f16_noprefix"), dir);
    std::fs::copy(
        tiny_model().join("tokenizer.json"),
        base.join("tokenizer.json"),
    )
    .unwrap();
    base
}

/// A finished one-epoch MNLI LoRA run of `base` under `tmp/runs/lora` (data in `tmp/glue`),
/// the classifier trained in full and saved with the adapter.
fn lora_run(tmp: &Path, base: &Path) -> PathBuf {
    let data = write_mnli(&tmp.join("glue"), 16, DEV_ROWS, TEST_ROWS);
    let run = tmp.join("runs/lora");
    let config = tmp.join("lora.toml");
    std::fs::write(
        &config,
        format!(
            "method = \"lora\"\ntask = \"mnli\"\nmodel = {:?}\ndata = {:?}\nout = {:?}\n\
             epochs = 1\nbatch_size = 4\nlr = 1e-3\nmax_len = 32\neval_batch_size = 8\n\
             [lora]\nr = 4\nmodules_to_save = [\"classifier\"]\n",
            s(base),
            s(&data),
            s(&run)
        ),
    )
    .unwrap();
    ok(&["train", "--config", s(&config)]);
    run
}

fn dev_tsv(tmp: &Path) -> PathBuf {
    tmp.join("glue/MNLI/dev_matched.tsv")
}

fn logits_of(stdout: &str) -> Vec<Vec<f64>> {
    json_lines(stdout)
        .iter()
        .map(|l| serde_json::from_value(l["logits"].clone()).unwrap())
        .collect()
}

/// `merge` without `--model` finds the base the adapter records (relative to the run), writes
/// an f16 base as f16 unless `--dtype` says otherwise, names the task's labels, and computes
/// what the run computes; neither it nor `logits --adapter` reports the classifier the adapter
/// supplies as freshly initialised.
#[test]
fn merge_reads_the_base_from_the_adapter_keeps_f16_and_names_the_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let base = f16_base(&tmp.path().join("models/bert16"));
    let run = lora_run(tmp.path(), &base);
    let adapter = run.join("adapter");

    let merged = tmp.path().join("merged");
    let (_, stderr) = ok(&["merge", "--adapter", s(&adapter), "--out", s(&merged)]);
    assert!(!stderr.contains("freshly initialised"), "{stderr}");
    assert_eq!(
        dtypes(&merged.join("model.safetensors")),
        BTreeSet::from(["F16".to_string()])
    );
    let config = json(&merged.join("config.json"));
    assert_eq!(config["torch_dtype"], "float16");
    assert_eq!(
        config["id2label"],
        serde_json::json!({"0": "entailment", "1": "neutral", "2": "contradiction"})
    );
    assert_eq!(
        config["label2id"],
        serde_json::json!({"entailment": 0, "neutral": 1, "contradiction": 2})
    );
    assert!(merged.join("tokenizer.json").is_file());

    // --dtype overrides; a run folder stands for its adapter/.
    let merged32 = tmp.path().join("merged32");
    ok(&[
        "merge",
        "--adapter",
        s(&run),
        "--out",
        s(&merged32),
        "--dtype",
        "f32",
    ]);
    assert_eq!(
        dtypes(&merged32.join("model.safetensors")),
        BTreeSet::from(["F32".to_string()])
    );
    assert_eq!(
        json(&merged32.join("config.json"))["torch_dtype"],
        "float32"
    );

    let input = dev_tsv(tmp.path());
    let (from_run, _) = ok(&["logits", "--run", s(&run), "--input", s(&input)]);
    let (from_merged, _) = ok(&["logits", "--model", s(&merged32), "--input", s(&input)]);
    assert_close(&logits_of(&from_merged), &logits_of(&from_run));
    // The merged config's labels name the merged model's outputs.
    let labels = |stdout: &str| -> Vec<String> {
        json_lines(stdout)
            .iter()
            .map(|l| l["label"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(labels(&from_merged), labels(&from_run));

    let (from_adapter, stderr) = ok(&[
        "logits",
        "--model",
        s(&base),
        "--adapter",
        s(&adapter),
        "--input",
        s(&input),
    ]);
    assert!(!stderr.contains("freshly initialised"), "{stderr}");
    assert_close(&logits_of(&from_adapter), &logits_of(&from_run));
    // An adapter's run names the labels here too.
    assert_eq!(labels(&from_adapter), labels(&from_run));
}

/// `predict --run` needs neither `--task` nor `--data`; `--input` labels a TSV or JSON-lines
/// file of texts as the split mode does; bad rows name file and line; token-id input to
/// `logits` keeps its format.
#[test]
fn predict_takes_task_and_data_from_the_run_and_labels_files_of_texts() {
    let tmp = tempfile::tempdir().unwrap();
    let run = lora_run(tmp.path(), &tiny_model());

    let test_out = tmp.path().join("pred/MNLI-m.tsv");
    ok(&["predict", "--run", s(&run), "--out", s(&test_out)]);
    let text = std::fs::read_to_string(&test_out).unwrap();
    assert_eq!(text.lines().count(), 1 + TEST_ROWS, "{text}");
    let dev_out = tmp.path().join("pred/dev.tsv");
    ok(&[
        "predict",
        "--run",
        s(&run),
        "--split",
        "dev",
        "--out",
        s(&dev_out),
    ]);
    let split_labels: Vec<String> = std::fs::read_to_string(&dev_out)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split('\t').nth(1).unwrap().to_string())
        .collect();
    assert_eq!(split_labels.len(), DEV_ROWS);

    // The dev file itself (its gold_label column is ignored).
    let tsv = dev_tsv(tmp.path());
    let (stdout, _) = ok(&["predict", "--run", s(&run), "--input", s(&tsv)]);
    let rows = json_lines(&stdout);
    assert_eq!(rows.len(), DEV_ROWS);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["index"], i);
        assert!(
            MNLI_LABELS.contains(&row["label"].as_str().unwrap()),
            "{row}"
        );
        let p = row["probabilities"].as_object().unwrap();
        assert_eq!(p.len(), 3, "{row}");
        let sum: f64 = p.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-6, "{row}");
        let best = p
            .iter()
            .max_by(|a, b| a.1.as_f64().unwrap().total_cmp(&b.1.as_f64().unwrap()))
            .unwrap()
            .0;
        assert_eq!(row["label"], best.as_str());
    }
    let input_labels: Vec<&str> = rows.iter().map(|r| r["label"].as_str().unwrap()).collect();
    assert_eq!(input_labels, split_labels);

    // The same texts as JSON lines with the Hugging Face field names, into a file.
    let jsonl = tmp.path().join("texts.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(&tsv)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            serde_json::json!({"premise": f[1], "hypothesis": f[2]}).to_string()
        })
        .collect();
    std::fs::write(&jsonl, lines.join("\n") + "\n").unwrap();
    let jsonl_out = tmp.path().join("pred/texts.jsonl");
    ok(&[
        "predict",
        "--run",
        s(&run),
        "--input",
        s(&jsonl),
        "--out",
        s(&jsonl_out),
    ]);
    assert_eq!(
        json_lines(&std::fs::read_to_string(&jsonl_out).unwrap()),
        rows
    );

    // logits on texts: logits, label and probabilities per line.
    let (stdout, _) = ok(&["logits", "--run", s(&run), "--input", s(&jsonl)]);
    let lines = json_lines(&stdout);
    assert_eq!(lines.len(), DEV_ROWS);
    for (line, row) in lines.iter().zip(&rows) {
        assert_eq!(line["logits"].as_array().unwrap().len(), 3);
        assert_eq!(line["label"], row["label"]);
    }

    // Token ids keep their format.
    let ids = tmp.path().join("ids.jsonl");
    std::fs::write(&ids, "{\"input_ids\": [2, 7, 3]}\n").unwrap();
    let (stdout, _) = ok(&["logits", "--run", s(&run), "--input", s(&ids)]);
    let line = &json_lines(&stdout)[0];
    assert_eq!(line.as_object().unwrap().len(), 1, "{line}");
    assert_eq!(line["logits"].as_array().unwrap().len(), 3);

    // Bad rows name file and line.
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        format!("{}\n{{\"premise\": \"the cat\"}}\n", lines_first(&jsonl)),
    )
    .unwrap();
    let stderr = fails(&["predict", "--run", s(&run), "--input", s(&bad)]);
    assert!(
        stderr.contains("bad.jsonl:2") && stderr.contains("hypothesis"),
        "{stderr}"
    );
    let bad = tmp.path().join("bad.tsv");
    std::fs::write(&bad, "sentence1\tsentence2\nthe cat\tthe dog\nthe cat\n").unwrap();
    let stderr = fails(&["logits", "--run", s(&run), "--input", s(&bad)]);
    assert!(stderr.contains("bad.tsv:3"), "{stderr}");

    // A model folder has no run to take the task from.
    let stderr = fails(&[
        "predict",
        "--run",
        s(&tiny_model()),
        "--out",
        s(&tmp.path().join("x.tsv")),
    ]);
    assert!(stderr.contains("--task"), "{stderr}");
}

fn lines_first(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string()
}

/// `train --print-config` prints defaults < file < `--set` as TOML that loads back, and trains
/// nothing; `train --help` lists every key with its default and meaning.
#[test]
fn print_config_and_the_keys_in_train_help() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("never");
    let config = tmp.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "method = \"lora\"\ntask = \"sst2\"\nmodel = \"m\"\ndata = \"d\"\nout = {:?}\n\
             epochs = 7\nlr = 1e-4\n[lora]\nr = 4\n",
            s(&out)
        ),
    )
    .unwrap();
    let (stdout, _) = ok(&[
        "train",
        "--config",
        s(&config),
        "--set",
        "epochs=2",
        "--set",
        "lora.alpha=32",
        "--print-config",
    ]);
    assert!(!out.exists(), "--print-config trained");
    let printed = tmp.path().join("printed.toml");
    std::fs::write(&printed, &stdout).unwrap();
    let cfg = kdlora_train::RunConfig::from_toml_file(&printed).unwrap();
    assert_eq!(cfg.epochs, 2, "--set beats the file");
    assert_eq!(cfg.lr, 1e-4, "the file beats the default");
    assert_eq!((cfg.lora.r, cfg.lora.alpha), (4, 32.0));
    assert_eq!(cfg.grad_clip, 1.0, "default");
    for key in kdlora_train::CONFIG_KEYS {
        if key.default == kdlora_train::KeyDefault::Unset {
            continue;
        }
        let name = key.key.rsplit('.').next().unwrap();
        assert!(
            stdout.lines().any(|l| l.starts_with(&format!("{name} = "))),
            "{} not printed:\n{stdout}",
            key.key
        );
    }

    let (help, _) = ok(&["train", "--help"]);
    for key in kdlora_train::CONFIG_KEYS {
        let default = match key.default {
            kdlora_train::KeyDefault::Required => "required",
            kdlora_train::KeyDefault::Unset => "unset",
            kdlora_train::KeyDefault::Value(v) => v,
        };
        assert!(
            help.lines().any(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                words.first() == Some(&key.key)
                    && words.get(1) == Some(&default)
                    && l.contains(key.meaning)
            }),
            "{} not listed:\n{help}",
            key.key
        );
    }
    assert!(help.contains("--print-config"), "{help}");
    let (short, _) = ok(&["train", "-h"]);
    assert!(short.contains("--help"), "{short}");
}

/// The `--device` help of every verb describes the backends, with no measured figures (those
/// belong to docs/results/bench).
#[test]
fn device_help_carries_no_benchmark_figures() {
    let (top, _) = ok(&["--help"]);
    let verbs: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|v| v != "help")
        .collect();
    assert!(verbs.len() >= 8, "{verbs:?}");
    let mut checked = 0;
    for verb in &verbs {
        let (help, _) = ok(&[verb.as_str(), "--help"]);
        let Some(start) = help
            .lines()
            .position(|l| l.trim_start().starts_with("--device"))
        else {
            continue;
        };
        let block: Vec<&str> = help
            .lines()
            .skip(start + 1)
            .take_while(|l| {
                let t = l.trim_start();
                !(t.starts_with("--") || (t.starts_with('-') && !t.starts_with("- ")))
            })
            .collect();
        let text = block.join("\n").to_lowercase();
        assert!(text.contains("cpu"), "{verb}: {text}");
        assert!(!text.contains('%') && !text.contains('×'), "{verb}: {text}");
        let words: Vec<&str> = text
            .split(|c: char| !(c.is_alphanumeric() || matches!(c, '.' | '/' | '-')))
            .map(|w| w.trim_end_matches('.'))
            .filter(|w| !w.is_empty())
            .collect();
        for banned in [
            "faster",
            "slower",
            "speedup",
            "speed-up",
            "ms",
            "examples/s",
            "times",
        ] {
            assert!(!words.contains(&banned), "{verb}: {banned:?} in {text}");
        }
        // A figure such as `1.8x`.
        for w in &words {
            let figure = w
                .strip_suffix('x')
                .is_some_and(|n| n.parse::<f64>().is_ok());
            assert!(!figure, "{verb}: {w:?} in {text}");
        }
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} verbs have --device");
}
