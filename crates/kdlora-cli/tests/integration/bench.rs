//! `kdlora bench` end to end on the tiny BERT fixture: one warm-up and one timed step per mode,
//! one valid JSON object with the documented keys. No timing is asserted.

use std::path::PathBuf;
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    crate::common::encoder_fixture(name)
}

fn bench(mode: &str, extra: &[&str]) -> Output {
    let model = fixture("bert_cls3");
    Command::new(env!("CARGO_BIN_EXE_kdlora"))
        .arg("bench")
        .arg("--model")
        .arg(&model)
        .args(["--mode", mode, "--batch", "4", "--seq", "16"])
        .args(["--steps", "1", "--warmup", "1"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .env_remove("RAYON_NUM_THREADS")
        .output()
        .expect("running kdlora")
}

fn parse(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "kdlora bench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one JSON object expected: {stdout}");
    serde_json::from_str(lines[0]).unwrap()
}

const KEYS: [&str; 14] = [
    "framework",
    "mode",
    "model",
    "device",
    "backend",
    "threads",
    "batch",
    "seq",
    "trainable_params",
    "total_params",
    "median_step_s",
    "examples_per_s",
    "peak_rss_mb",
    "step_seconds",
];

#[test]
fn every_mode_prints_one_json_object_with_the_expected_keys() {
    // Exact counts of the fixture (hidden 24, intermediate 40, 2 layers, vocab 100, 40 positions,
    // 2 token types, fresh 2-class head): what PyTorch + PEFT report for the same model.
    let full = 13_066;
    let adapter = 2 * 2 * 8 * (24 + 24); // query and value, 2 layers, rank 8
    let head = 24 * 2 + 2;
    for mode in ["fft", "lora", "kd-lora", "inference"] {
        let v = parse(&bench(mode, &[]));
        for key in KEYS {
            assert!(v.get(key).is_some(), "{mode}: key {key} missing in {v}");
        }
        assert_eq!(v["framework"], "kdlora");
        assert_eq!(v["mode"], mode);
        assert_eq!(v["model"], "bert_cls3");
        assert_eq!(v["device"], "cpu");
        assert_eq!(
            (v["batch"].as_u64(), v["seq"].as_u64()),
            (Some(4), Some(16))
        );
        assert_eq!(v["step_seconds"].as_array().unwrap().len(), 1, "{mode}");
        let median = v["median_step_s"].as_f64().unwrap();
        let throughput = v["examples_per_s"].as_f64().unwrap();
        assert!(
            median > 0.0 && (throughput * median - 4.0).abs() < 1e-6,
            "{v}"
        );
        assert!(v["peak_rss_mb"].as_f64().unwrap() > 1.0, "{v}");
        let trainable = v["trainable_params"].as_u64().unwrap();
        let total = v["total_params"].as_u64().unwrap();
        match mode {
            "fft" => assert_eq!((trainable, total), (full, full)),
            "lora" | "kd-lora" => {
                assert_eq!(trainable, adapter + head);
                assert_eq!(total, full + adapter);
            }
            // Merged and unloaded: no adapter tensors left, nothing trainable.
            _ => assert_eq!((trainable, total), (0, full)),
        }
        if mode != "inference" {
            let losses = v["loss_first_last"].as_array().unwrap();
            assert!(
                losses.iter().all(|l| l.as_f64().unwrap().is_finite()),
                "{v}"
            );
        }
    }
}

#[test]
fn threads_flag_is_applied_and_reported() {
    let v = parse(&bench("inference", &["--threads", "1"]));
    assert_eq!(v["threads"], 1);
}

#[test]
fn too_long_sequences_are_an_error_not_a_panic() {
    let model = fixture("bert_cls3");
    let output = Command::new(env!("CARGO_BIN_EXE_kdlora"))
        .arg("bench")
        .arg("--model")
        .arg(&model)
        .args(["--mode", "inference", "--seq", "64", "--steps", "1"])
        .output()
        .expect("running kdlora");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("maximum sequence length 40"), "{stderr}");
}

#[test]
fn a_config_file_alone_gives_a_fresh_model_of_that_shape() {
    let config = fixture("bert_cls3").join("config.json");
    let output = Command::new(env!("CARGO_BIN_EXE_kdlora"))
        .arg("bench")
        .arg("--model")
        .arg(&config)
        .args(["--mode", "lora", "--batch", "2", "--seq", "8"])
        .args(["--steps", "1", "--warmup", "0"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("running kdlora");
    let v = parse(&output);
    assert_eq!(v["model"], "config");
    assert_eq!(v["trainable_params"], 2 * 2 * 8 * (24 + 24) + 24 * 2 + 2);
}
