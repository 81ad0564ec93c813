//! `kdlora logits` on DeBERTa-v2/v3 checkpoints matches transformers: token-id input files (padded
//! batches) and text through a SentencePiece Unigram `tokenizer.json`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const TOLERANCE: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    crate::common::encoder_fixture(name)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Runs `kdlora logits ARGS` and returns each stdout line's logits.
fn logits(args: &[&str]) -> Vec<Vec<f64>> {
    let output = Command::new(env!("CARGO_BIN_EXE_kdlora"))
        .arg("logits")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running kdlora");
    assert!(
        output.status.success(),
        "kdlora logits {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).unwrap();
            value["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        })
        .collect()
}

fn assert_close(actual: &[Vec<f64>], expected: &[Vec<f64>], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: rows");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert_eq!(a.len(), e.len(), "{what}: row {i}");
        for (x, y) in a.iter().zip(e) {
            assert!((x - y).abs() < TOLERANCE, "{what}: row {i}: {a:?} vs {e:?}");
        }
    }
}

fn rows(value: &Value) -> Vec<Vec<f64>> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn token_id_files_give_transformers_logits() {
    for name in ["deberta_v3_cls3", "deberta_c2p_cls2", "deberta_p2c_reg"] {
        let expected = read_json(&fixture(name).join("expected.json"));
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("inputs.jsonl");
        // The fixture's rows are padded to one length; the CLI gets them trimmed (it pads itself)
        // except the first, which keeps its padding and explicit mask.
        let mut lines = Vec::new();
        for (i, ids) in expected["input_ids"].as_array().unwrap().iter().enumerate() {
            let mask = &expected["attention_mask"][i];
            let types = &expected["token_type_ids"][i];
            let real = mask
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m.as_i64() == Some(1))
                .count();
            let trim = |v: &Value| -> Value {
                if i == 0 {
                    v.clone()
                } else {
                    Value::from(v.as_array().unwrap()[..real].to_vec())
                }
            };
            let mut line =
                serde_json::json!({ "input_ids": trim(ids), "attention_mask": trim(mask) });
            if types
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t.as_i64() != Some(0))
            {
                line["token_type_ids"] = trim(types);
            }
            lines.push(line.to_string());
        }
        std::fs::write(&input, lines.join("\n") + "\n").unwrap();
        let model = fixture(name);
        let got = logits(&[
            "--model",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--batch-size",
            "3",
        ]);
        assert_close(&got, &rows(&expected["logits"]), name);
    }
}

#[test]
fn text_through_a_sentencepiece_unigram_tokenizer() {
    let model = fixture("deberta_v3_cls3");
    let texts = read_json(&model.join("text.json"));
    let tokenizer = tokenizers::Tokenizer::from_file(model.join("tokenizer.json")).unwrap();
    for item in texts.as_array().unwrap() {
        // The Rust tokenizers crate splits the text as Python's DebertaV2TokenizerFast did.
        let text = item["text"].as_str().unwrap();
        let encoding = match item["text_pair"].as_str() {
            Some(pair) => tokenizer.encode((text, pair), true),
            None => tokenizer.encode(text, true),
        }
        .unwrap();
        let ids: Vec<i64> = encoding.get_ids().iter().map(|&i| i64::from(i)).collect();
        let want_ids: Vec<i64> = item["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(ids, want_ids, "{text}");
        let types: Vec<i64> = encoding
            .get_type_ids()
            .iter()
            .map(|&i| i64::from(i))
            .collect();
        let want_types: Vec<i64> = item["token_type_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(types, want_types, "{text}");

        let mut args = vec![
            "--model".to_string(),
            model.to_str().unwrap().to_string(),
            "--text".to_string(),
            item["text"].as_str().unwrap().to_string(),
        ];
        if let Some(pair) = item["text_pair"].as_str() {
            args.push("--text-pair".to_string());
            args.push(pair.to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let got = logits(&args);
        let want: Vec<f64> = item["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_close(&got, &[want], item["text"].as_str().unwrap());
    }
}
