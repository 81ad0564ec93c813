//! A real kdlora LoRA run folder (`tests/fixtures/run_lora/`: config.toml + adapter/, trained on
//! SST-2 from paraphrase-MiniLM-L3-v2) gives the logits PEFT 0.13.2 computes after
//! `PeftModel.from_pretrained` on the same adapter (`expected_logits.json`, written by
//! `tests/fixtures/make_run_adapter_fixture.py`). Loaded the way `kdlora logits --run` loads it,
//! and through the `kdlora` binary when it is built. Skipped when the shared models are absent.

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::backend::NdArray;
use burn::tensor::{Int, Tensor, TensorData};
use kdlora_encoders::SequenceClassifier;
use kdlora_glue::GlueExample;

type B = NdArray<f32>;

const TOL: f32 = 1e-4;
const MODEL: &str = "models/paraphrase-MiniLM-L3-v2";

fn shared() -> Option<PathBuf> {
    let dir = std::env::var_os("KDLORA_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    if dir.join(MODEL).join("model.safetensors").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "skipping: shared model {MODEL} not found under {} (set KDLORA_SHARED)",
            dir.display()
        );
        None
    }
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/run_lora")
}

struct Expected {
    sentences: Vec<String>,
    ids: Vec<Vec<i64>>,
    mask: Vec<Vec<i64>>,
    types: Vec<Vec<i64>>,
    logits: Vec<Vec<f32>>,
    no_lora_logits: Vec<Vec<f32>>,
}

fn expected() -> Expected {
    let text = std::fs::read_to_string(fixture().join("expected_logits.json")).unwrap();
    let e: serde_json::Value = serde_json::from_str(&text).unwrap();
    let get = |key: &str| e[key].clone();
    Expected {
        sentences: serde_json::from_value(get("sentences")).unwrap(),
        ids: serde_json::from_value(get("input_ids")).unwrap(),
        mask: serde_json::from_value(get("attention_mask")).unwrap(),
        types: serde_json::from_value(get("token_type_ids")).unwrap(),
        logits: serde_json::from_value(get("logits")).unwrap(),
        no_lora_logits: serde_json::from_value(get("no_lora_logits")).unwrap(),
    }
}

/// A copy of the committed run folder whose config.toml names the real shared folder, as a run
/// folder saved by `kdlora train` does (resolved paths; the fixture stores `${KDLORA_SHARED}`).
fn run_copy(shared: &Path) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let shared = std::fs::canonicalize(shared).unwrap();
    let shared = shared.to_string_lossy().replace('\\', "/");
    let config = std::fs::read_to_string(fixture().join("config.toml")).unwrap();
    assert!(config.contains("${KDLORA_SHARED}/"), "{config}");
    std::fs::write(
        tmp.path().join("config.toml"),
        config.replace("${KDLORA_SHARED}", &shared),
    )
    .unwrap();
    std::fs::create_dir(tmp.path().join("adapter")).unwrap();
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(
            fixture().join("adapter").join(file),
            tmp.path().join("adapter").join(file),
        )
        .unwrap();
    }
    tmp
}

fn forward(model: &SequenceClassifier<B>, e: &Expected) -> Vec<Vec<f32>> {
    let device = Default::default();
    let shape = [e.ids.len(), e.ids[0].len()];
    let t = |rows: &[Vec<i64>]| {
        let flat: Vec<i64> = rows.iter().flatten().copied().collect();
        Tensor::<B, 2, Int>::from_data(TensorData::new(flat, shape), &device)
    };
    let out = model.forward(t(&e.ids), t(&e.mask), t(&e.types));
    let labels = out.dims()[1];
    out.into_data()
        .to_vec::<f32>()
        .unwrap()
        .chunks(labels)
        .map(<[f32]>::to_vec)
        .collect()
}

fn max_diff(got: &[Vec<f32>], want: &[Vec<f32>]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .flat_map(|(g, w)| {
            assert_eq!(g.len(), w.len(), "labels");
            g.iter().zip(w).map(|(a, b)| (a - b).abs())
        })
        .fold(0.0, f32::max)
}

#[test]
fn run_folder_adapter_gives_peft_logits() {
    let _guard = crate::common::lock();
    let Some(shared) = shared() else { return };
    let e = expected();
    let run = run_copy(&shared);
    let device = Default::default();
    assert!(kdlora_train::is_run_dir(run.path()));
    let loaded = kdlora_train::load_model::<B>(run.path(), None, &device).unwrap();
    assert_eq!(loaded.model.num_labels(), 2);

    // The run's tokenizer (max_len from its config.toml) gives the ids transformers gave.
    let examples: Vec<GlueExample> = e
        .sentences
        .iter()
        .enumerate()
        .map(|(index, s)| GlueExample {
            index,
            text_a: s.clone(),
            text_b: None,
            label: None,
        })
        .collect();
    let encoded = loaded.tokenizer.encode_examples(&examples).unwrap();
    for (enc, (ids, mask)) in encoded.iter().zip(e.ids.iter().zip(&e.mask)) {
        let n = mask.iter().filter(|&&m| m == 1).count();
        let ours: Vec<i64> = enc.input_ids.iter().map(|&i| i64::from(i)).collect();
        assert_eq!(ours, ids[..n], "row {}", enc.index);
    }
    let lengths: Vec<usize> = encoded.iter().map(|x| x.len()).collect();
    assert!(lengths.iter().any(|&n| n < e.ids[0].len()), "{lengths:?}");

    let got = forward(&loaded.model, &e);
    let d = max_diff(&got, &e.logits);
    eprintln!("run folder: max |kdlora - PEFT| = {d:.2e}");
    assert!(d <= TOL, "max |kdlora - PEFT| = {d}");

    // The check has teeth: the LoRA deltas and the adapter's pooler + classifier both move
    // the logits far beyond the tolerance.
    let lora_effect = max_diff(&e.logits, &e.no_lora_logits);
    assert!(
        lora_effect > 1e-2,
        "LoRA deltas change PEFT's logits by {lora_effect}"
    );
    let bare = kdlora_train::load_model::<B>(&shared.join(MODEL), Some(2), &device).unwrap();
    let bare_diff = max_diff(&forward(&bare.model, &e), &e.logits);
    assert!(
        bare_diff > 1e-2,
        "the bare base is within {bare_diff} of PEFT"
    );
}

/// `target/debug/kdlora` next to this test's `deps/` folder, when built (`cargo build -p
/// kdlora-cli` or `cargo test --workspace`); the e2e package cannot depend on the binary.
fn kdlora_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)?
        .join(format!("kdlora{}", std::env::consts::EXE_SUFFIX));
    if bin.is_file() {
        Some(bin)
    } else {
        eprintln!("skipping the CLI part: {} not built", bin.display());
        None
    }
}

fn logits_lines(stdout: &[u8]) -> Vec<Vec<f32>> {
    String::from_utf8(stdout.to_vec())
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            serde_json::from_value(v["logits"].clone()).unwrap()
        })
        .collect()
}

/// `kdlora logits --run <run> <args>` (with `env` set), asserting success; its logits per line.
fn run_logits(
    bin: &Path,
    run: &Path,
    args: &[&std::ffi::OsStr],
    env: &[(&str, &Path)],
) -> Vec<Vec<f32>> {
    let mut cmd = Command::new(bin);
    cmd.arg("logits").arg("--run").arg(run).args(args);
    for (key, value) in env {
        cmd.env(key, value);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    logits_lines(&out.stdout)
}

#[test]
fn kdlora_logits_run_gives_peft_logits() {
    let _guard = crate::common::lock();
    let Some(shared) = shared() else { return };
    let Some(bin) = kdlora_bin() else { return };
    let e = expected();
    let run = run_copy(&shared);

    // The padded batch as JSON lines.
    let input = run.path().join("inputs.jsonl");
    let lines: Vec<String> = (0..e.ids.len())
        .map(|i| {
            serde_json::json!({
                "input_ids": e.ids[i],
                "attention_mask": e.mask[i],
                "token_type_ids": e.types[i],
            })
            .to_string()
        })
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let input_args = [std::ffi::OsStr::new("--input"), input.as_os_str()];
    let got = run_logits(&bin, run.path(), &input_args, &[]);
    let d = max_diff(&got, &e.logits);
    eprintln!("kdlora logits --run --input: max |kdlora - PEFT| = {d:.2e}");
    assert!(d <= TOL, "max |kdlora - PEFT| = {d}");

    // The committed folder itself, in place: its config.toml says `${KDLORA_SHARED}/models/...`,
    // which loading a run expands from the environment.
    let got = run_logits(&bin, &fixture(), &input_args, &[("KDLORA_SHARED", &shared)]);
    let d = max_diff(&got, &e.logits);
    eprintln!("kdlora logits --run <fixture in place>: max |kdlora - PEFT| = {d:.2e}");
    assert!(d <= TOL, "max |kdlora - PEFT| = {d}");

    // --text tokenises with the base model's tokenizer.json, truncated to the run's max_len as its
    // evaluation does; unpadded, so the sentences shorter than the batch check that padding is
    // masked out, and the longest one (truncated by PEFT's tokenizer call too) checks truncation.
    for (i, sentence) in e.sentences.iter().enumerate() {
        let text_args = [
            std::ffi::OsStr::new("--text"),
            std::ffi::OsStr::new(sentence),
        ];
        let got = run_logits(&bin, run.path(), &text_args, &[]);
        let d = max_diff(&got, &e.logits[i..=i]);
        eprintln!("kdlora logits --run --text {sentence:?}: max |kdlora - PEFT| = {d:.2e}");
        assert!(d <= TOL, "{sentence:?}: max |kdlora - PEFT| = {d}");
    }
}
