//! `kdlora logits` end to end on the tiny BERT fixture, against logits from transformers.

use std::path::PathBuf;
use std::process::Output;

use crate::common::assert_logits_close as assert_close;

fn fixture(name: &str) -> PathBuf {
    crate::common::encoder_fixture(name)
}

fn kdlora(args: &[&str]) -> Output {
    crate::common::kdlora_logging("warn", args)
}

/// The `logits` arrays of stdout's JSON lines.
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
            assert_eq!(value.as_object().unwrap().len(), 1, "{line}");
            serde_json::from_value(value["logits"].clone()).unwrap()
        })
        .collect()
}

#[test]
fn token_id_lines_give_one_logits_line_each_in_order() {
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("bert_cls3").join("expected.json")).unwrap(),
    )
    .unwrap();
    let rows =
        |key: &str| -> Vec<Vec<i64>> { serde_json::from_value(expected[key].clone()).unwrap() };
    let (ids, mask, types) = (
        rows("input_ids"),
        rows("attention_mask"),
        rows("token_type_ids"),
    );
    let want: Vec<Vec<f64>> = serde_json::from_value(expected["logits"].clone()).unwrap();
    let length = |i: usize| mask[i].iter().filter(|m| **m == 1).count();
    // Line 1: padded, all fields. Line 2: unpadded, mask left to its default. Line 3: padding cut
    // off, mask and types given. A blank line is skipped.
    let lines = [
        serde_json::json!({"input_ids": ids[0], "attention_mask": mask[0], "token_type_ids": types[0]}),
        serde_json::json!({"input_ids": ids[1], "token_type_ids": types[1]}),
        serde_json::json!({
            "input_ids": ids[2][..length(2)],
            "attention_mask": mask[2][..length(2)],
            "token_type_ids": types[2][..length(2)],
        }),
    ];
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("inputs.jsonl");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect::<String>() + "\n";
    std::fs::write(&input, text).unwrap();
    let model = fixture("bert_cls3");
    for batch in ["1", "16"] {
        let output = kdlora(&[
            "logits",
            "--model",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--device",
            "cpu",
            "--batch-size",
            batch,
        ]);
        assert_close(&parse_logits(&output), &want);
    }
}

#[test]
fn text_and_text_pair_use_the_model_tokenizer() {
    let cases: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(fixture("bert_cls3").join("text.json")).unwrap(),
    )
    .unwrap();
    let model = fixture("bert_cls3");
    for case in cases {
        let mut args = vec![
            "logits".to_string(),
            "--model".into(),
            model.to_str().unwrap().into(),
            "--text".into(),
            case["text"].as_str().unwrap().into(),
        ];
        if let Some(pair) = case["text_pair"].as_str() {
            args.extend(["--text-pair".to_string(), pair.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let want: Vec<f64> = serde_json::from_value(case["logits"].clone()).unwrap();
        assert_close(&parse_logits(&kdlora(&args)), &[want]);
    }
}

#[test]
fn bad_inputs_fail_with_a_message() {
    let model = fixture("bert_cls3");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.jsonl");
    std::fs::write(
        &input,
        "{\"input_ids\": [2, 5, 3]}\n{\"input_ids\": [2, 500, 3]}\n",
    )
    .unwrap();
    let output = kdlora(&[
        "logits",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "no partial output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.jsonl:2") && stderr.contains("vocabulary"),
        "{stderr}"
    );

    std::fs::write(&input, "{\"ids\": [1]}\n").unwrap();
    let output = kdlora(&[
        "logits",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("bad.jsonl:1"));

    let missing = dir.path().join("no-model");
    let output = kdlora(&[
        "logits",
        "--model",
        missing.to_str().unwrap(),
        "--text",
        "hi",
    ]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no-model"));

    // The regression fixture has no tokenizer.json.
    let output = kdlora(&[
        "logits",
        "--model",
        fixture("distilbert_reg").to_str().unwrap(),
        "--text",
        "hi",
    ]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("tokenizer.json"));
}
