//! `kdlora logits --adapter` and `kdlora merge` end to end on the PEFT fixtures
//! (tests/fixtures/lora, made by tests/fixtures/make_lora_fixtures.py with PEFT 0.13.2).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/lora")
}

fn kdlora(args: &[&str]) -> Output {
    crate::common::kdlora_logging("warn", args)
}

fn expected(variant: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()[variant].clone()
}

/// The variant's batch as a JSON-lines file (padding kept, masked by attention_mask).
fn input_file(variant: &str, dir: &Path) -> PathBuf {
    let e = expected(variant);
    let rows = |key: &str| -> Option<Vec<Vec<i64>>> {
        e["inputs"]
            .get(key)
            .map(|v| serde_json::from_value(v.clone()).unwrap())
    };
    let ids = rows("input_ids").unwrap();
    let mask = rows("attention_mask").unwrap();
    let types = rows("token_type_ids");
    let path = dir.join(format!("{variant}.jsonl"));
    let mut f = std::fs::File::create(&path).unwrap();
    for i in 0..ids.len() {
        let mut line = serde_json::json!({ "input_ids": ids[i], "attention_mask": mask[i] });
        if let Some(types) = &types {
            line["token_type_ids"] = serde_json::json!(types[i]);
        }
        writeln!(f, "{line}").unwrap();
    }
    path
}

fn parse_logits(output: &Output) -> Vec<Vec<f64>> {
    assert!(
        output.status.success(),
        "kdlora failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            serde_json::from_value(value["logits"].clone()).unwrap()
        })
        .collect()
}

fn assert_close(got: &[Vec<f64>], want: &serde_json::Value) {
    let want: Vec<Vec<f64>> = serde_json::from_value(want.clone()).unwrap();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.len(), w.len());
        for (a, b) in g.iter().zip(w) {
            assert!((a - b).abs() < 1e-4, "{g:?} vs {w:?}");
        }
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn logits_with_adapter_and_merged_checkpoint_match_peft() {
    let tmp = tempfile::tempdir().unwrap();
    for variant in ["bert_lora", "distilbert_lora"] {
        let e = expected(variant);
        let base = fixtures().join(e["base"].as_str().unwrap());
        let adapter = fixtures().join(variant);
        let input = input_file(variant, tmp.path());

        let plain = parse_logits(&kdlora(&[
            "logits",
            "--model",
            s(&base),
            "--input",
            s(&input),
        ]));
        assert_close(&plain, &e["base_logits"]);
        let adapted = parse_logits(&kdlora(&[
            "logits",
            "--model",
            s(&base),
            "--adapter",
            s(&adapter),
            "--input",
            s(&input),
        ]));
        assert_close(&adapted, &e["peft_logits"]);

        let out = tmp.path().join(format!("{variant}-merged"));
        let merge = kdlora(&[
            "merge",
            "--model",
            s(&base),
            "--adapter",
            s(&adapter),
            "--out",
            s(&out),
        ]);
        assert!(
            merge.status.success(),
            "{}",
            String::from_utf8_lossy(&merge.stderr)
        );
        assert!(out.join("config.json").is_file() && out.join("model.safetensors").is_file());
        let merged = parse_logits(&kdlora(&[
            "logits",
            "--model",
            s(&out),
            "--input",
            s(&input),
        ]));
        assert_close(&merged, &e["peft_logits"]);
    }
}

#[test]
fn merge_copies_tokenizer_files_and_refuses_to_overwrite_its_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    // A base folder with tokenizer files next to the weights.
    let base = tmp.path().join("base");
    std::fs::create_dir(&base).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("bert_base").join(f), base.join(f)).unwrap();
    }
    std::fs::write(base.join("tokenizer.json"), "{\"version\": \"1.0\"}").unwrap();
    std::fs::write(base.join("vocab.txt"), "[PAD]\n").unwrap();
    let adapter = fixtures().join("bert_lora");
    let out = tmp.path().join("merged");
    let ok = kdlora(&[
        "merge",
        "--model",
        s(&base),
        "--adapter",
        s(&adapter),
        "--out",
        s(&out),
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(out.join("tokenizer.json")).unwrap(),
        "{\"version\": \"1.0\"}"
    );
    assert!(out.join("vocab.txt").is_file());

    let refused = kdlora(&[
        "merge",
        "--model",
        s(&base),
        "--adapter",
        s(&adapter),
        "--out",
        s(&base),
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("must differ"));
}

#[test]
fn bad_adapters_fail_with_clear_messages() {
    let base = fixtures().join("bert_base");
    let input_dir = tempfile::tempdir().unwrap();
    let input = input_file("bert_lora", input_dir.path());
    // Not an adapter folder.
    let out = kdlora(&[
        "logits",
        "--model",
        s(&base),
        "--adapter",
        s(&base),
        "--input",
        s(&input),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("adapter_config.json"), "{stderr}");
    // An adapter for another architecture.
    let out = kdlora(&[
        "merge",
        "--model",
        s(&fixtures().join("distilbert_base")),
        "--adapter",
        s(&fixtures().join("bert_lora")),
        "--out",
        s(&input_dir.path().join("never")),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not fit"), "{stderr}");
    assert!(!input_dir.path().join("never").exists());
}
