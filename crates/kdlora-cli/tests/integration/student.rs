//! `kdlora student`: a student made of chosen teacher layers. Kept layers carry the teacher's
//! bytes under their new index, everything else is copied unchanged, and a student of all the
//! teacher's layers computes the teacher's transformers logits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::{encoder_fixture, kdlora_logging};

fn kdlora(args: &[&str]) -> Output {
    kdlora_logging("warn", args)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn make_student(from: &Path, layers: &str, out: &Path) {
    let output = kdlora(&[
        "student",
        "--from",
        s(from),
        "--layers",
        layers,
        "--out",
        s(out),
    ]);
    assert!(
        output.status.success(),
        "kdlora student failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Tensor name -> (dtype, shape, bytes).
fn tensors(folder: &Path) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(folder.join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let info = (
                format!("{:?}", view.dtype()),
                view.shape().to_vec(),
                view.data().to_vec(),
            );
            (name, info)
        })
        .collect()
}

fn config(folder: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(folder.join("config.json")).unwrap()).unwrap()
}

/// What the student's tensors must be: the teacher's with layer `layers[i]` renamed to `i` and
/// the other layers left out (computed here from the names, independently of the command).
fn expected_tensors(
    teacher: &Path,
    container: &str,
    layers: &[usize],
) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for (name, info) in tensors(teacher) {
        let Some(at) = name.find(&format!("{container}.layer.")) else {
            out.insert(name, info);
            continue;
        };
        let start = at + container.len() + ".layer.".len();
        let (index, rest) = name[start..].split_once('.').unwrap();
        let index: usize = index.parse().unwrap();
        if let Some(i) = layers.iter().position(|&l| l == index) {
            out.insert(format!("{}{i}.{rest}", &name[..start]), info);
        }
    }
    out
}

#[test]
fn a_student_of_chosen_layers_renames_them_and_keeps_everything_else() {
    let tmp = tempfile::tempdir().unwrap();
    let teacher = encoder_fixture("bert_cls3");
    let out = tmp.path().join("student");
    make_student(&teacher, "1", &out);
    assert_eq!(config(&out)["num_hidden_layers"], 1);
    let mut rest = config(&out);
    rest["num_hidden_layers"] = config(&teacher)["num_hidden_layers"].clone();
    assert_eq!(rest, config(&teacher), "only the layer count changes");
    let got = tensors(&out);
    assert_eq!(got, expected_tensors(&teacher, "encoder", &[1]));
    assert!(got.keys().any(|k| k.contains("encoder.layer.0.")));
    assert!(!got.keys().any(|k| k.contains("encoder.layer.1.")));
    assert_eq!(
        std::fs::read(out.join("tokenizer.json")).unwrap(),
        std::fs::read(teacher.join("tokenizer.json")).unwrap()
    );
    // The folder loads and runs.
    let output = kdlora(&["logits", "--model", s(&out), "--text", "the cat sat"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // DistilBERT names its layers `transformer.layer.N` and its count `n_layers`; f16 stays f16.
    let teacher = encoder_fixture("distilbert_reg");
    let out = tmp.path().join("distil-student");
    make_student(&teacher, "0", &out);
    assert_eq!(config(&out)["n_layers"], 1);
    assert_eq!(
        tensors(&out),
        expected_tensors(&teacher, "transformer", &[0])
    );
    let teacher = encoder_fixture("bert_cls3_f16_noprefix");
    let out = tmp.path().join("f16-student");
    make_student(&teacher, "0", &out);
    let got = tensors(&out);
    assert_eq!(got, expected_tensors(&teacher, "encoder", &[0]));
    assert!(got.values().any(|(dtype, _, _)| dtype == "F16"));
}

#[test]
fn a_student_of_every_layer_computes_the_teachers_transformers_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let teacher = encoder_fixture("bert_cls3");
    let out = tmp.path().join("student");
    make_student(&teacher, "0,1", &out);
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(teacher.join("text.json")).unwrap()).unwrap();
    for case in cases {
        let mut args = vec![
            "logits".to_string(),
            "--model".into(),
            s(&out).into(),
            "--text".into(),
            case["text"].as_str().unwrap().into(),
        ];
        if let Some(pair) = case["text_pair"].as_str() {
            args.extend(["--text-pair".to_string(), pair.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = kdlora(&args);
        assert!(output.status.success());
        let line: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let got: Vec<f64> = serde_json::from_value(line["logits"].clone()).unwrap();
        let want: Vec<f64> = serde_json::from_value(case["logits"].clone()).unwrap();
        crate::common::assert_logits_close(&[got], &[want]);
    }
}

/// Against transformers: the teacher with only the chosen layers left in `bert.encoder.layer`
/// (tests/fixtures/make_student_fixture.py), on the teacher fixture's padded batch.
#[test]
fn students_compute_what_transformers_computes_with_the_same_layers() {
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/fixtures/student/expected.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let rows =
        |key: &str| -> Vec<Vec<i64>> { serde_json::from_value(expected[key].clone()).unwrap() };
    let (ids, mask, types) = (
        rows("input_ids"),
        rows("attention_mask"),
        rows("token_type_ids"),
    );
    let lines: String = (0..ids.len())
        .map(|i| {
            serde_json::json!({"input_ids": ids[i], "attention_mask": mask[i], "token_type_ids": types[i]})
                .to_string()
                + "\n"
        })
        .collect();
    let input = tmp.path().join("inputs.jsonl");
    std::fs::write(&input, lines).unwrap();
    let students = expected["students"].as_array().unwrap();
    assert!(students.len() >= 3);
    for student in students {
        let layers: Vec<usize> = serde_json::from_value(student["layers"].clone()).unwrap();
        let list: Vec<String> = layers.iter().map(usize::to_string).collect();
        let out = tmp.path().join(format!("student-{}", list.join("-")));
        make_student(&encoder_fixture("bert_cls3"), &list.join(","), &out);
        let output = kdlora(&["logits", "--model", s(&out), "--input", s(&input)]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let got: Vec<Vec<f64>> = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                serde_json::from_value(v["logits"].clone()).unwrap()
            })
            .collect();
        let want: Vec<Vec<f64>> = serde_json::from_value(student["logits"].clone()).unwrap();
        crate::common::assert_logits_close(&got, &want);
    }
}

#[test]
fn bad_layer_lists_and_lora_runs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let teacher = encoder_fixture("bert_cls3");
    let out: PathBuf = tmp.path().join("student");
    for (layers, needles) in [
        (
            "2",
            &["layer 2 does not exist", "num_hidden_layers", "config.json"][..],
        ),
        ("1,0", &["increasing"][..]),
        ("0,0", &["increasing"][..]),
        ("x", &["--layers"][..]),
    ] {
        let output = kdlora(&[
            "student",
            "--from",
            s(&teacher),
            "--layers",
            layers,
            "--out",
            s(&out),
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(if layers == "x" { 2 } else { 1 }),
            "{stderr}"
        );
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{layers}: {needle} not in {stderr}"
            );
        }
        assert!(!out.exists(), "nothing is written for a refused list");
    }
    // A LoRA run has no model to take layers from.
    let run = tmp.path().join("lora-run");
    std::fs::create_dir_all(run.join("adapter")).unwrap();
    std::fs::write(run.join("config.toml"), "method = \"lora\"\n").unwrap();
    let output = kdlora(&[
        "student",
        "--from",
        s(&run),
        "--layers",
        "0",
        "--out",
        s(&out),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("kdlora merge"), "{stderr}");
}
