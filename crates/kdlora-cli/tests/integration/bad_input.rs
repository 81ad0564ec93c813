//! Bad input to the `kdlora` binary (issue #21): every case exits non-zero with a message naming
//! the offending file, line or key, never panics, and leaves no half-made run folder.
//!
//! Most cases are rows of one table ([`cases`]: data, submission files, model folders, adapters,
//! configurations, CLI misuse, checkpoints, output paths), run by one test that reports every
//! failing row at once; [`the_controls_are_accepted`] runs the same setups without the defect.
//! They use the committed tiny fixtures and small GLUE files written here (no `../shared`, except
//! the divergence test, which skips without it), so the whole table runs in seconds in CI.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The tiny BERT fixture with a tokenizer: 100 tokens, 40 positions, 3 labels.
pub(crate) fn tiny_model() -> PathBuf {
    root().join("crates/kdlora-encoders/tests/fixtures/bert_cls3")
}

fn kdlora(args: &[&str]) -> Output {
    crate::common::kdlora_logging("warn", args)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Asserts a clean failure: non-zero exit (not a panic's 101), each `needles` in the message,
/// and no cause printed twice.
fn fails_with(output: &Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "accepted: {stderr}");
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
    }
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    let parts: Vec<&str> = line.split(": ").filter(|p| p.len() > 12).collect();
    for (i, a) in parts.iter().enumerate() {
        assert!(!parts[i + 1..].contains(a), "{a:?} printed twice: {line}");
    }
    stderr
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Rewrites one top-level key of a JSON file.
fn set_json(path: &Path, key: &str, value: serde_json::Value) {
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    json[key] = value;
    std::fs::write(path, json.to_string()).unwrap();
}

fn train(model: &Path, out: &Path, extra: &[&str]) -> Output {
    train_with("fft", model, out, extra)
}

fn train_with(method: &str, model: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--method",
        method,
        "--task",
        "mnli",
        "--model",
        s(model),
        "--data",
        "/nonexistent/glue",
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    kdlora(&args)
}

#[test]
fn max_len_beyond_the_position_table_is_refused_by_train() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let output = train(&tiny_model(), &out, &["--set", "max_len=64"]);
    fails_with(&output, &["max_len", "64", "40"]);
    assert!(!out.exists(), "the refused run left {}", out.display());
}

#[test]
fn a_tokenizer_larger_than_the_vocabulary_is_refused_by_train() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    copy_dir(&tiny_model(), &model);
    set_json(&model.join("config.json"), "vocab_size", 50.into());
    let output = train(&model, &tmp.path().join("run"), &["--set", "max_len=32"]);
    fails_with(&output, &["tokenizer.json", "vocab_size 50"]);
}

#[test]
fn a_failed_fresh_run_leaves_no_config_toml() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    // Everything checks out until the data folder is read.
    let output = train(&tiny_model(), &out, &["--set", "max_len=32"]);
    fails_with(&output, &["/nonexistent/glue"]);
    assert!(!out.join("config.toml").exists());
    assert!(!out.exists());
}

#[test]
fn teachers_that_cannot_teach_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let kd = |teacher: &Path| {
        train_with(
            "kd-lora",
            &tiny_model(),
            &out,
            &["--set", "max_len=32", "--teacher", s(teacher)],
        )
    };
    // A plain model folder (its head is not known to be fine-tuned) and a mistyped run path
    // (never looked up on the Hub).
    fails_with(
        &kd(&tiny_model()),
        &["teacher", "allow_model_teacher = true"],
    );
    fails_with(
        &kd(Path::new("runs/nope")),
        &["runs/nope", "allow_model_teacher"],
    );
    // A run of another task.
    let teacher = tmp.path().join("teacher");
    copy_dir(&tiny_model(), &teacher.join("model"));
    std::fs::write(
        teacher.join("config.toml"),
        format!(
            "method = \"fft\"\ntask = \"qnli\"\nmodel = {:?}\ndata = \"d\"\nout = \"o\"\n",
            s(&tiny_model())
        ),
    )
    .unwrap();
    fails_with(&kd(&teacher), &["qnli", "mnli", "teacher"]);
    assert!(!out.exists());
}

/// A run folder as `kdlora train` writes it, with `max_len` as given.
fn finished_run(dir: &Path, max_len: usize) -> PathBuf {
    let run = dir.join("run");
    copy_dir(&tiny_model(), &run.join("model"));
    std::fs::write(
        run.join("config.toml"),
        format!(
            "method = \"fft\"\ntask = \"mnli\"\nmodel = {:?}\ndata = \"/nonexistent/glue\"\n\
             out = {:?}\nmax_len = {max_len}\n",
            s(&tiny_model()),
            s(&run)
        ),
    )
    .unwrap();
    run
}

#[test]
fn eval_and_predict_refuse_a_run_whose_max_len_exceeds_the_positions() {
    let tmp = tempfile::tempdir().unwrap();
    let run = finished_run(tmp.path(), 1000);
    let output = kdlora(&["eval", "--run", s(&run)]);
    fails_with(&output, &["config.toml", "max_len", "1000", "40"]);
    let output = kdlora(&[
        "predict",
        "--run",
        s(&run),
        "--task",
        "mnli",
        "--data",
        "/nonexistent/glue",
        "--out",
        s(&tmp.path().join("p.tsv")),
    ]);
    fails_with(&output, &["max_len", "1000"]);
}

#[test]
fn eval_of_an_unfinished_run_says_how_to_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let run = finished_run(tmp.path(), 32);
    std::fs::remove_dir_all(run.join("model")).unwrap();
    std::fs::create_dir(run.join("checkpoints")).unwrap();
    let output = kdlora(&["eval", "--run", s(&run)]);
    fails_with(&output, &["did not finish", "--resume", "config.toml"]);
}

#[test]
fn negative_layer_norm_eps_is_refused_instead_of_printing_null() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    copy_dir(&tiny_model(), &model);
    set_json(
        &model.join("config.json"),
        "layer_norm_eps",
        (-1e-12).into(),
    );
    let output = kdlora(&["logits", "--model", s(&model), "--text", "hello world"]);
    let stderr = fails_with(&output, &["layer_norm_eps", "config.json"]);
    assert!(output.stdout.is_empty(), "{stderr}");
}

#[test]
fn adapters_whose_target_modules_do_not_fit_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let fixtures = root().join("tests/fixtures/lora");
    let input = tmp.path().join("in.jsonl");
    std::fs::write(&input, "{\"input_ids\": [2, 7, 3]}\n").unwrap();
    let run = |adapter: &Path| {
        kdlora(&[
            "logits",
            "--model",
            s(&fixtures.join("bert_base")),
            "--adapter",
            s(adapter),
            "--input",
            s(&input),
        ])
    };
    let adapter = tmp.path().join("adapter");
    copy_dir(&fixtures.join("bert_lora"), &adapter);
    set_json(
        &adapter.join("adapter_config.json"),
        "target_modules",
        serde_json::json!(["query", "not_a_module"]),
    );
    fails_with(&run(&adapter), &["not_a_module", "adapter_config.json"]);
    set_json(
        &adapter.join("adapter_config.json"),
        "target_modules",
        serde_json::json!(["query"]),
    );
    fails_with(&run(&adapter), &["does not name", "value"]);
}

/// The shared MiniLM student and GLUE data (`KDLORA_SHARED`), or `None` with a message.
fn shared() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("KDLORA_SHARED")?);
    let present = dir
        .join("models/paraphrase-MiniLM-L3-v2/model.safetensors")
        .is_file()
        && dir.join("glue/SST-2/train.tsv").is_file();
    if !present {
        eprintln!(
            "skipping: shared models/data not found at {}",
            dir.display()
        );
    }
    present.then_some(dir)
}

/// A learning rate far too high: the run stops with the step named (the issue saw a loss of ~6e6
/// and exit 0). Either the divergence stop or the non-finite stop is acceptable.
#[test]
fn a_diverging_run_is_stopped() {
    let Some(shared) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let model = shared.join("models/paraphrase-MiniLM-L3-v2");
    let data = shared.join("glue");
    let output = kdlora(&[
        "train",
        "--method",
        "fft",
        "--task",
        "sst2",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--out",
        s(&tmp.path().join("run")),
        "--set",
        "lr=1e3",
        "--set",
        "max_train_examples=64",
        "--set",
        "max_eval_examples=16",
        "--set",
        "max_len=32",
        "--set",
        "batch_size=8",
        "--set",
        "epochs=1",
        "--set",
        "inference_passes=0",
    ]);
    fails_with(&output, &["optimizer step"]);
}

// ---------------------------------------------------------------------------------------------
// The table-driven suite (issue #21's acceptance: at least 60 bad inputs across data, model
// folders, adapters, configs, CLI misuse and output paths; every one a non-zero exit with a
// message naming the offending file, line or key; no panic; nothing accepted).

/// One bad input. `setup` builds it in the case's own empty folder, from the committed fixtures
/// and files written here, and returns the `kdlora` arguments; the error message must contain
/// every one of `needles` (the offending file, line or key).
struct Case {
    name: &'static str,
    setup: fn(&Path) -> Vec<String>,
    needles: &'static [&'static str],
}

fn case(
    name: &'static str,
    setup: fn(&Path) -> Vec<String>,
    needles: &'static [&'static str],
) -> Case {
    Case {
        name,
        setup,
        needles,
    }
}

/// What one `kdlora` invocation did.
struct Outcome {
    /// `None` when a signal ended it (or it hung and was killed).
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `kdlora` in `dir` with its output in files under `logs` (a pipe that fills up would block
/// the child) and a hang guard: a child still running after 5 minutes is killed and reported.
fn run_in(dir: &Path, logs: &Path, args: &[String]) -> Outcome {
    std::fs::create_dir_all(logs).unwrap();
    let (out_path, err_path) = (logs.join("stdout"), logs.join("stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_kdlora"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        // A path is never a Hub id, but should one be taken for one, nothing is downloaded.
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", logs.join("hf"))
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("running kdlora");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned();
    Outcome {
        code,
        stdout: read(&out_path),
        stderr: read(&err_path),
    }
}

/// Why `outcome` is not a clean refusal naming each of `needles`, if it is not.
fn judge(outcome: &Outcome, needles: &[&str]) -> Result<(), String> {
    let stderr = &outcome.stderr;
    match outcome.code {
        Some(0) => {
            let stdout: String = outcome.stdout.chars().take(200).collect();
            return Err(format!("accepted (exit 0); stdout: {stdout}"));
        }
        // 1: kdlora's own errors; 2: clap's usage errors.
        Some(1 | 2) => {}
        Some(code) => return Err(format!("exit {code}: {stderr}")),
        None => return Err(format!("killed by a signal or hung: {stderr}")),
    }
    if stderr.contains("panicked") {
        return Err(format!("panicked: {stderr}"));
    }
    let Some(at) = stderr.find("error:") else {
        return Err(format!("no error line: {stderr}"));
    };
    let message = &stderr[at..];
    for needle in needles {
        if !message.contains(needle) {
            return Err(format!("{needle:?} not in the message: {message}"));
        }
    }
    let line = message.lines().next().unwrap_or_default();
    let parts: Vec<&str> = line.split(": ").filter(|p| p.len() > 12).collect();
    for (i, a) in parts.iter().enumerate() {
        if parts[i + 1..].contains(a) {
            return Err(format!("{a:?} printed twice: {line}"));
        }
    }
    // A path given twice in a row (`checkpoint X: X: ...`): one cause wrapped with its own path.
    let words: Vec<&str> = line
        .split([' ', '\t'])
        .map(|w| w.trim_end_matches([':', ',', ';']))
        .collect();
    for pair in words.windows(2) {
        if pair[0] == pair[1] && pair[0].len() > 12 && pair[0].starts_with('/') {
            return Err(format!("{:?} printed twice: {line}", pair[0]));
        }
    }
    Ok(())
}

/// The `--out` of a `train` invocation, when given.
fn train_out(dir: &Path, args: &[String]) -> Option<PathBuf> {
    if args.first().map(String::as_str) != Some("train") {
        return None;
    }
    let at = args.iter().position(|a| a == "--out")?;
    args.get(at + 1).map(|o| dir.join(o))
}

fn a(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn p(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

/// Writes `bytes` to `path`, creating its folder.
fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Applies `edit` to a JSON file.
fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(path, json.to_string()).unwrap();
}

/// Applies `edit` to the JSON header of a safetensors file, keeping the tensor bytes.
fn edit_safetensors(
    path: &Path,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(header.as_object_mut().unwrap());
    let mut text = header.to_string();
    // The format pads the header with spaces to a multiple of 8 bytes.
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

/// Renames the tensor keys of a safetensors file that contain `from`.
fn rename_tensors(path: &Path, from: &str, to: &str) {
    edit_safetensors(path, |header| {
        let keys: Vec<String> = header
            .keys()
            .filter(|k| k.contains(from))
            .cloned()
            .collect();
        assert!(!keys.is_empty(), "no key with {from} in {}", path.display());
        for key in keys {
            let value = header.remove(&key).unwrap();
            header.insert(key.replace(from, to), value);
        }
    });
}

/// A copy of the tiny BERT fixture (with tokenizer) at `dir/model`, changed by `edit`.
fn model_with(dir: &Path, edit: impl FnOnce(&Path)) -> PathBuf {
    let model = dir.join("model");
    copy_dir(&tiny_model(), &model);
    edit(&model);
    model
}

/// `config.json` of a copy of the tiny model, changed by `edit`.
fn config_with(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    model_with(dir, |m| edit_json(&m.join("config.json"), edit))
}

/// `kdlora logits` of a short text through `model`.
fn logits_text(model: &Path) -> Vec<String> {
    a(&[
        "logits",
        "--model",
        &p(model),
        "--text",
        "the cat sat on the mat",
    ])
}

/// A pseudo-random generator for test data (the same rows on every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as usize
    }

    /// A sentence of words the tiny fixture's tokenizer knows.
    fn sentence(&mut self) -> String {
        const WORDS: &[&str] = &[
            "the", "cat", "sat", "on", "mat", "dog", "dogs", "ran", "far", "w1", "w7", "w42",
        ];
        let n = 2 + self.next() % 7;
        (0..n)
            .map(|_| WORDS[self.next() % WORDS.len()])
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Writes a small MNLI data folder in the original TSV layout (`glue/MNLI/train.tsv`,
/// `dev_matched.tsv`, `test_matched.tsv`) with sentences the tiny fixture's tokenizer knows.
/// Returns the data folder.
pub(crate) fn write_mnli(glue: &Path, train: usize, dev: usize, test: usize) -> PathBuf {
    const LABELS: [&str; 3] = ["entailment", "neutral", "contradiction"];
    let mut rng = Lcg(7);
    let mut rows = |n: usize, labelled: bool| {
        let mut text = String::from("index\tsentence1\tsentence2");
        text.push_str(if labelled { "\tgold_label\n" } else { "\n" });
        for i in 0..n {
            text.push_str(&format!("{i}\t{}\t{}", rng.sentence(), rng.sentence()));
            if labelled {
                text.push('\t');
                text.push_str(LABELS[rng.next() % 3]);
            }
            text.push('\n');
        }
        text
    };
    let dir = glue.join("MNLI");
    write(&dir.join("train.tsv"), rows(train, true));
    write(&dir.join("dev_matched.tsv"), rows(dev, true));
    write(&dir.join("test_matched.tsv"), rows(test, false));
    glue.to_path_buf()
}

/// A valid MNLI data folder at `dir/glue`, written unless it exists (a case may have changed
/// it before the run configuration that names it is written).
fn glue(dir: &Path) -> PathBuf {
    let glue = dir.join("glue");
    if glue.exists() {
        return glue;
    }
    write_mnli(&glue, 8, 4, 4)
}

/// A valid data folder whose `MNLI/<file>` holds `text` instead.
fn glue_file(dir: &Path, file: &str, text: impl AsRef<[u8]>) -> PathBuf {
    let glue = glue(dir);
    write(&glue.join("MNLI").join(file), text);
    glue
}

/// `kdlora data stats` of MNLI's train split in `glue`.
fn stats(glue: &Path) -> Vec<String> {
    a(&[
        "data",
        "stats",
        "--task",
        "mnli",
        "--split",
        "train",
        "--data",
        &p(glue),
    ])
}

/// `kdlora data stats` of a file whose `MNLI/train.tsv` holds `text`.
fn stats_tsv(dir: &Path, text: impl AsRef<[u8]>) -> Vec<String> {
    stats(&glue_file(dir, "train.tsv", text))
}

/// `kdlora data stats` of `mnli/train.jsonl` holding `text` (the HF JSON-lines layout).
fn stats_jsonl(dir: &Path, text: &str) -> Vec<String> {
    let glue = dir.join("glue");
    write(&glue.join("mnli/train.jsonl"), text);
    stats(&glue)
}

const MNLI_HEADER: &str = "index\tsentence1\tsentence2\tgold_label\n";

/// A short valid run configuration (LoRA on the tiny model, valid data in `dir/glue`) followed
/// by `extra` lines; written to `dir/c.toml`. Training it for real takes a second, so a check
/// that is missing shows up as an accepted case rather than a slow test.
fn config_file(dir: &Path, extra: &str) -> PathBuf {
    let glue = glue(dir);
    let path = dir.join("c.toml");
    write(
        &path,
        format!(
            "method = \"lora\"\ntask = \"mnli\"\nmodel = {:?}\ndata = {:?}\nout = {:?}\n\
             epochs = 1\nbatch_size = 4\nmax_len = 32\ninference_passes = 0\n{extra}",
            p(&tiny_model()),
            p(&glue),
            p(&dir.join("run")),
        ),
    );
    path
}

/// `kdlora train` of [`config_file`] with `extra` lines and `sets` (`--set`), into `dir/run`.
fn train_config(dir: &Path, extra: &str, sets: &[&str]) -> Vec<String> {
    train_into(dir, &dir.join("run"), extra, sets)
}

/// [`train_config`] into `out`.
fn train_into(dir: &Path, out: &Path, extra: &str, sets: &[&str]) -> Vec<String> {
    let config = config_file(dir, extra);
    let mut args = a(&["train", "--config", &p(&config), "--out", &p(out)]);
    for set in sets {
        args.extend(a(&["--set", set]));
    }
    args
}

/// `kdlora train` of `model` (LoRA, valid data) into `dir/run`.
fn train_model(dir: &Path, model: &Path) -> Vec<String> {
    let mut args = train_config(dir, "", &[]);
    args.extend(a(&["--model", &p(model)]));
    args
}

/// A one-line token-id input for `kdlora logits --input`.
fn ids_input(dir: &Path) -> PathBuf {
    let input = dir.join("in.jsonl");
    write(&input, "{\"input_ids\": [2, 7, 3]}\n");
    input
}

fn lora_fixtures() -> PathBuf {
    root().join("tests/fixtures/lora")
}

/// `kdlora logits` through the PEFT fixture base with a copy of its adapter changed by `edit`.
fn adapter_with(dir: &Path, edit: impl FnOnce(&Path)) -> Vec<String> {
    let adapter = dir.join("adapter");
    copy_dir(&lora_fixtures().join("bert_lora"), &adapter);
    edit(&adapter);
    logits_adapter(dir, &lora_fixtures().join("bert_base"), &adapter)
}

fn logits_adapter(dir: &Path, base: &Path, adapter: &Path) -> Vec<String> {
    a(&[
        "logits",
        "--model",
        &p(base),
        "--adapter",
        &p(adapter),
        "--input",
        &p(&ids_input(dir)),
    ])
}

/// Writes a BERT checkpoint (config.json and tokenizer.json from the tiny fixture, small constant
/// weights) with `hidden` units, `layers` layers and `vocab` tokens at `dir`: a model of another
/// shape than the fixtures', consistent in itself.
fn write_bert(dir: &Path, hidden: usize, layers: usize, vocab: usize) -> PathBuf {
    let inter = 2 * hidden;
    let mut tensors: Vec<(String, Vec<usize>)> = Vec::new();
    let mut add = |name: String, shape: &[usize]| tensors.push((name, shape.to_vec()));
    let linear = |add: &mut dyn FnMut(String, &[usize]), name: &str, out: usize, inp: usize| {
        add(format!("{name}.weight"), &[out, inp]);
        add(format!("{name}.bias"), &[out]);
    };
    let norm = |add: &mut dyn FnMut(String, &[usize]), name: &str| {
        add(format!("{name}.weight"), &[hidden]);
        add(format!("{name}.bias"), &[hidden]);
    };
    add(
        "bert.embeddings.word_embeddings.weight".into(),
        &[vocab, hidden],
    );
    add(
        "bert.embeddings.position_embeddings.weight".into(),
        &[40, hidden],
    );
    add(
        "bert.embeddings.token_type_embeddings.weight".into(),
        &[2, hidden],
    );
    norm(&mut add, "bert.embeddings.LayerNorm");
    for l in 0..layers {
        let at = format!("bert.encoder.layer.{l}");
        for m in ["query", "key", "value"] {
            linear(
                &mut add,
                &format!("{at}.attention.self.{m}"),
                hidden,
                hidden,
            );
        }
        linear(
            &mut add,
            &format!("{at}.attention.output.dense"),
            hidden,
            hidden,
        );
        norm(&mut add, &format!("{at}.attention.output.LayerNorm"));
        linear(&mut add, &format!("{at}.intermediate.dense"), inter, hidden);
        linear(&mut add, &format!("{at}.output.dense"), hidden, inter);
        norm(&mut add, &format!("{at}.output.LayerNorm"));
    }
    linear(&mut add, "bert.pooler.dense", hidden, hidden);
    linear(&mut add, "classifier", 3, hidden);
    let mut header = serde_json::Map::new();
    let mut data: Vec<u8> = Vec::new();
    for (name, shape) in &tensors {
        let n: usize = shape.iter().product();
        let start = data.len();
        let value: f32 = if name.ends_with("LayerNorm.weight") {
            1.0
        } else {
            0.01
        };
        for _ in 0..n {
            data.extend_from_slice(&value.to_le_bytes());
        }
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut text = serde_json::Value::Object(header).to_string();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(text.as_bytes());
    bytes.extend_from_slice(&data);
    write(&dir.join("model.safetensors"), bytes);
    std::fs::copy(
        tiny_model().join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    std::fs::copy(tiny_model().join("config.json"), dir.join("config.json")).unwrap();
    edit_json(&dir.join("config.json"), |c| {
        c["hidden_size"] = hidden.into();
        c["intermediate_size"] = inter.into();
        c["vocab_size"] = vocab.into();
        c["num_hidden_layers"] = layers.into();
    });
    dir.to_path_buf()
}

/// A finished FFT run of the tiny model on MNLI (`dir/run`) and valid data (`dir/glue`), for
/// `predict` and `eval` cases; returns the run folder.
fn run_and_data(dir: &Path) -> PathBuf {
    glue(dir);
    finished_run(dir, 32)
}

/// An interrupted run at `dir/run` made by `kdlora train` itself (one of two epochs, a
/// checkpoint per step: `checkpoints/step-00000002/`), then damaged by `edit` (given the
/// checkpoint folder). Returns the arguments that resume it.
fn interrupted_with(dir: &Path, edit: impl FnOnce(&Path)) -> Vec<String> {
    interrupted_as(dir, &[], edit)
}

/// [`interrupted_with`] for a full fine-tuning run, whose checkpoint holds Burn's `model.bin`.
fn interrupted_fft_with(dir: &Path, edit: impl FnOnce(&Path)) -> Vec<String> {
    interrupted_as(dir, &["method=fft"], edit)
}

fn interrupted_as(dir: &Path, more: &[&str], edit: impl FnOnce(&Path)) -> Vec<String> {
    let mut sets = vec!["epochs=2", "stop_after_epochs=1", "checkpoint_steps=1"];
    sets.extend_from_slice(more);
    let status = Command::new(env!("CARGO_BIN_EXE_kdlora"))
        .args(train_config(dir, "", &sets))
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("running kdlora");
    assert!(status.success(), "training the run to interrupt failed");
    edit(&dir.join("run/checkpoints/step-00000002"));
    a(&["train", "--out", &p(&dir.join("run")), "--resume"])
}

/// A file of checkpoint folder `c`: an optimizer state (`optim*`) or, with `optim` false, the
/// weights (any other file that is not JSON). Found by name so the cases follow the layout.
fn checkpoint_file(c: &Path, optim: bool) -> PathBuf {
    let mut names: Vec<String> = std::fs::read_dir(c)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let name = names
        .into_iter()
        .find(|n| n.starts_with("optim") == optim && !n.ends_with(".json"))
        .unwrap_or_else(|| panic!("no such file in {}", c.display()));
    c.join(name)
}

/// Makes the first length field of a Burn record (bincode) claim u64::MAX bytes: Burn's own
/// decoder allocates that before reading.
fn huge_length(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[0] = 0xfd;
    bytes[1..9].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

/// Keeps the first `n` bytes of a file.
fn truncate(path: &Path, n: usize) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..n.min(bytes.len())]).unwrap();
}

/// `kdlora predict` of [`run_and_data`] into `out`.
fn predict_to(dir: &Path, out: &Path) -> Vec<String> {
    let run = run_and_data(dir);
    a(&[
        "predict",
        "--run",
        &p(&run),
        "--task",
        "mnli",
        "--data",
        &p(&dir.join("glue")),
        "--out",
        &p(out),
    ])
}

/// `kdlora score` of a predictions file holding `text` against valid dev data.
fn score(dir: &Path, text: &str) -> Vec<String> {
    let glue = glue(dir);
    let predictions = dir.join("p.tsv");
    write(&predictions, text);
    a(&[
        "score",
        "--task",
        "mnli",
        "--split",
        "dev_matched",
        "--data",
        &p(&glue),
        "--predictions",
        &p(&predictions),
    ])
}

/// Whether this process runs as root (which ignores file permissions). Read from
/// /proc/self/status so that the test needs no libc binding.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// The case of a `config.json` without `$key`: the message names the file and the key.
macro_rules! config_without {
    ($key:literal) => {
        case(
            concat!("config.json without ", $key),
            |d| {
                logits_text(&config_with(d, |c| {
                    c.as_object_mut().unwrap().remove($key);
                }))
            },
            &["config.json", concat!("`", $key, "`"), "missing"],
        )
    };
}

fn cases() -> Vec<Case> {
    let mut cases = vec![
        // --- GLUE data -----------------------------------------------------------------------
        case(
            "data folder missing",
            |d| stats(&d.join("no_glue")),
            &["no_glue/MNLI/train.tsv"],
        ),
        case(
            "data folder is a file",
            |d| {
                write(&d.join("glue.txt"), "x");
                stats(&d.join("glue.txt"))
            },
            &["glue.txt"],
        ),
        case(
            "dev split missing (train)",
            |d| {
                let glue = glue(d);
                std::fs::remove_file(glue.join("MNLI/dev_matched.tsv")).unwrap();
                train_config(d, "", &[])
            },
            &["dev_matched"],
        ),
        case(
            "TSV header lacks the label column",
            |d| stats_tsv(d, "index\tsentence1\tsentence2\na\tb\tc\n"),
            &["train.tsv:1", "gold_label"],
        ),
        case(
            "TSV of another task's layout (SST-2 header in MNLI/)",
            |d| stats_tsv(d, "sentence\tlabel\nthe cat\t1\n"),
            &["train.tsv:1", "sentence1"],
        ),
        case(
            "TSV row with a missing column",
            |d| {
                stats_tsv(
                    d,
                    format!("{MNLI_HEADER}0\tthe cat\tthe dog\tneutral\n1\tthe cat\tneutral\n"),
                )
            },
            &["train.tsv:3", "column"],
        ),
        case(
            "TSV row with an extra column",
            |d| stats_tsv(d, format!("{MNLI_HEADER}0\ta\tb\tneutral\textra\n")),
            &["train.tsv:2", "column"],
        ),
        case(
            "TSV unknown label",
            |d| stats_tsv(d, format!("{MNLI_HEADER}0\tthe cat\tthe dog\tmaybe\n")),
            &["train.tsv:2", "maybe"],
        ),
        case(
            "TSV numeric label where MNLI spells names",
            |d| stats_tsv(d, format!("{MNLI_HEADER}0\tthe cat\tthe dog\t1\n")),
            &["train.tsv:2", "\"1\""],
        ),
        case(
            "TSV missing label in a labelled split",
            |d| stats_tsv(d, format!("{MNLI_HEADER}0\tthe cat\tthe dog\t\n")),
            &["train.tsv:2", "label"],
        ),
        case(
            "TSV invalid UTF-8",
            |d| {
                let mut bytes = MNLI_HEADER.as_bytes().to_vec();
                bytes.extend_from_slice(b"0\tthe \xff cat\tthe dog\tneutral\n");
                stats_tsv(d, bytes)
            },
            &["train.tsv:2", "UTF-8"],
        ),
        case(
            "TSV empty file",
            |d| stats_tsv(d, ""),
            &["train.tsv", "empty"],
        ),
        case(
            "TSV empty line inside the data",
            |d| {
                stats_tsv(
                    d,
                    format!("{MNLI_HEADER}0\ta\tb\tneutral\n\n1\ta\tb\tneutral\n"),
                )
            },
            &["train.tsv:3", "empty line"],
        ),
        case(
            "TSV empty training split (header only) given to train",
            |d| {
                glue_file(d, "train.tsv", MNLI_HEADER);
                train_config(d, "", &[])
            },
            &["train.tsv"],
        ),
        case(
            "TSV empty dev split (header only) given to train",
            |d| {
                glue_file(d, "dev_matched.tsv", MNLI_HEADER);
                train_config(d, "", &[])
            },
            &["dev_matched.tsv"],
        ),
        case(
            "TSV bad label reached through train",
            |d| {
                glue_file(d, "dev_matched.tsv", format!("{MNLI_HEADER}0\ta\tb\tyes\n"));
                train_config(d, "", &[])
            },
            &["dev_matched.tsv:2", "yes"],
        ),
        case(
            "STS-B score outside [0, 5]",
            |d| {
                write(
                    &d.join("glue/STS-B/train.tsv"),
                    "index\tsentence1\tsentence2\tscore\n0\ta\tb\t7.5\n",
                );
                a(&[
                    "data",
                    "stats",
                    "--task",
                    "stsb",
                    "--split",
                    "train",
                    "--data",
                    &p(&d.join("glue")),
                ])
            },
            &["train.tsv:2", "7.5"],
        ),
        case(
            "STS-B score not a number",
            |d| {
                write(
                    &d.join("glue/STS-B/train.tsv"),
                    "index\tsentence1\tsentence2\tscore\n0\ta\tb\thigh\n",
                );
                a(&[
                    "data",
                    "stats",
                    "--task",
                    "stsb",
                    "--split",
                    "train",
                    "--data",
                    &p(&d.join("glue")),
                ])
            },
            &["train.tsv:2", "high"],
        ),
        case(
            "CoLA headerless row with three columns",
            |d| {
                write(&d.join("glue/CoLA/train.tsv"), "src\t1\tthe cat sat\n");
                a(&[
                    "data",
                    "stats",
                    "--task",
                    "cola",
                    "--split",
                    "train",
                    "--data",
                    &p(&d.join("glue")),
                ])
            },
            &["train.tsv:1", "column"],
        ),
        case(
            "JSONL line that is not JSON",
            |d| {
                stats_jsonl(
                    d,
                    "{\"premise\": \"a\", \"hypothesis\": \"b\", \"label\": 0}\n{not json\n",
                )
            },
            &["train.jsonl:2", "JSON"],
        ),
        case(
            "JSONL line that is not an object",
            |d| stats_jsonl(d, "[1, 2]\n"),
            &["train.jsonl:1", "object"],
        ),
        case(
            "JSONL missing text field",
            |d| stats_jsonl(d, "{\"premise\": \"a\", \"label\": 0}\n"),
            &["train.jsonl:1", "hypothesis"],
        ),
        case(
            "JSONL text that is not a string",
            |d| stats_jsonl(d, "{\"premise\": 3, \"hypothesis\": \"b\", \"label\": 0}\n"),
            &["train.jsonl:1", "premise"],
        ),
        case(
            "JSONL label out of range",
            |d| {
                stats_jsonl(
                    d,
                    "{\"premise\": \"a\", \"hypothesis\": \"b\", \"label\": 7}\n",
                )
            },
            &["train.jsonl:1", "7"],
        ),
        case(
            "JSONL no label (-1) in a labelled split",
            |d| {
                stats_jsonl(
                    d,
                    "{\"premise\": \"a\", \"hypothesis\": \"b\", \"label\": -1}\n",
                )
            },
            &["train.jsonl:1", "label"],
        ),
        case(
            "JSONL negative idx",
            |d| {
                stats_jsonl(
                    d,
                    "{\"premise\": \"a\", \"hypothesis\": \"b\", \"label\": 0, \"idx\": -3}\n",
                )
            },
            &["train.jsonl:1", "idx"],
        ),
        case(
            "JSONL empty line",
            |d| {
                stats_jsonl(
                    d,
                    "{\"premise\": \"a\", \"hypothesis\": \"b\", \"label\": 0}\n\n{\"premise\": \"a\", \"hypothesis\": \"b\", \"label\": 0}\n",
                )
            },
            &["train.jsonl:2"],
        ),
        case(
            "data stats of a split the task does not have",
            |d| {
                let glue = glue(d);
                a(&[
                    "data",
                    "stats",
                    "--task",
                    "sst2",
                    "--split",
                    "dev_mismatched",
                    "--data",
                    &p(&glue),
                ])
            },
            &["sst2", "dev_mismatched"],
        ),
        case(
            "data download of an unknown task",
            |d| {
                a(&[
                    "data",
                    "download",
                    "--task",
                    "sst3",
                    "--out",
                    &p(&d.join("dl")),
                ])
            },
            &["sst3"],
        ),
        case(
            "eval --data whose dev split is malformed",
            |d| {
                let run = finished_run(d, 32);
                let glue = glue_file(d, "dev_matched.tsv", format!("{MNLI_HEADER}0\ta\tb\n"));
                a(&["eval", "--run", &p(&run), "--data", &p(&glue)])
            },
            &["dev_matched.tsv:2", "column"],
        ),
        case(
            "data stats tokenizer missing",
            |d| {
                let mut args = stats(&glue(d));
                args.extend(a(&["--tokenizer", &p(&d.join("nope/tokenizer.json"))]));
                args
            },
            &["nope/tokenizer.json"],
        ),
        // --- Submission files (kdlora score) ---------------------------------------------------
        case(
            "predictions file missing",
            |d| {
                let mut args = score(d, "");
                let at = args.len() - 1;
                args[at] = p(&d.join("absent.tsv"));
                args
            },
            &["absent.tsv"],
        ),
        case(
            "predictions file with a wrong header",
            |d| score(d, "id\tlabel\n0\tneutral\n"),
            &["p.tsv:1"],
        ),
        case(
            "predictions file with an unknown label",
            |d| {
                score(
                    d,
                    "index\tprediction\n0\tmaybe\n1\tneutral\n2\tneutral\n3\tneutral\n",
                )
            },
            &["p.tsv:2", "maybe"],
        ),
        case(
            "predictions file with a duplicate index",
            |d| {
                score(
                    d,
                    "index\tprediction\n0\tneutral\n0\tneutral\n2\tneutral\n3\tneutral\n",
                )
            },
            &["p.tsv:3"],
        ),
        case(
            "predictions file missing a dev row",
            |d| score(d, "index\tprediction\n0\tneutral\n1\tneutral\n"),
            &["p.tsv"],
        ),
        // --- Model folders ---------------------------------------------------------------------
        case(
            "model folder missing",
            |d| logits_text(&d.join("no_model")),
            &["no_model"],
        ),
        case(
            "model folder is a file",
            |d| {
                write(&d.join("model.bin"), "x");
                logits_text(&d.join("model.bin"))
            },
            &["model.bin"],
        ),
        case(
            "config.json missing",
            |d| {
                logits_text(&model_with(d, |m| {
                    std::fs::remove_file(m.join("config.json")).unwrap()
                }))
            },
            &["config.json"],
        ),
        case(
            "config.json not JSON",
            |d| {
                logits_text(&model_with(d, |m| {
                    write(&m.join("config.json"), "{\"hidden_size\": 24,")
                }))
            },
            &["config.json", "JSON"],
        ),
        case(
            "config.json an array",
            |d| logits_text(&model_with(d, |m| write(&m.join("config.json"), "[]"))),
            &["config.json"],
        ),
        case(
            "config.json without hidden_size",
            |d| {
                logits_text(&config_with(d, |c| {
                    c.as_object_mut().unwrap().remove("hidden_size");
                }))
            },
            // transformers' default (768) would apply, and the weights say otherwise.
            &["config.json", "`hidden_size`", "missing", "[100, 768]"],
        ),
        config_without!("vocab_size"),
        config_without!("num_hidden_layers"),
        config_without!("num_attention_heads"),
        config_without!("intermediate_size"),
        config_without!("max_position_embeddings"),
        case(
            "config.json with a vocab_size of 1e12",
            |d| {
                logits_text(&config_with(d, |c| {
                    c["vocab_size"] = 1_000_000_000_000u64.into()
                }))
            },
            &["config.json", "`vocab_size`", "[1000000000000, 24]"],
        ),
        case(
            "config.json with a huge hidden_size",
            |d| logits_text(&config_with(d, |c| c["hidden_size"] = (3u64 << 40).into())),
            &["config.json", "`hidden_size`"],
        ),
        // Found by `cargo xtask fuzz --target model_dir`: doubling it overflowed.
        case(
            "config.json with hidden_size u64::MAX",
            |d| logits_text(&config_with(d, |c| c["hidden_size"] = u64::MAX.into())),
            &["config.json", "hidden_size"],
        ),
        case(
            "config.json with a billion layers",
            |d| {
                logits_text(&config_with(d, |c| {
                    c["num_hidden_layers"] = 1_000_000_000.into()
                }))
            },
            &["config.json", "`num_hidden_layers`", "layer.2"],
        ),
        case(
            "config.json without model_type",
            |d| {
                logits_text(&config_with(d, |c| {
                    c.as_object_mut().unwrap().remove("model_type");
                }))
            },
            &["config.json", "model_type"],
        ),
        case(
            "config.json negative hidden_size",
            |d| logits_text(&config_with(d, |c| c["hidden_size"] = (-24).into())),
            &["config.json", "hidden_size"],
        ),
        case(
            "config.json hidden_size as a string",
            |d| logits_text(&config_with(d, |c| c["hidden_size"] = "24".into())),
            &["config.json", "hidden_size"],
        ),
        case(
            "config.json zero attention heads",
            |d| logits_text(&config_with(d, |c| c["num_attention_heads"] = 0.into())),
            &["config.json", "num_attention_heads"],
        ),
        case(
            "config.json hidden_size not divisible by the heads",
            |d| logits_text(&config_with(d, |c| c["num_attention_heads"] = 5.into())),
            &["config.json", "num_attention_heads"],
        ),
        case(
            "config.json zero vocab_size",
            |d| logits_text(&config_with(d, |c| c["vocab_size"] = 0.into())),
            &["config.json", "vocab_size"],
        ),
        case(
            "config.json zero type_vocab_size",
            |d| logits_text(&config_with(d, |c| c["type_vocab_size"] = 0.into())),
            &["config.json", "type_vocab_size"],
        ),
        case(
            "config.json pad_token_id outside the vocabulary",
            |d| logits_text(&config_with(d, |c| c["pad_token_id"] = 500.into())),
            &["config.json", "pad_token_id"],
        ),
        case(
            "config.json dropout above 1",
            |d| logits_text(&config_with(d, |c| c["hidden_dropout_prob"] = 1.5.into())),
            &["config.json", "hidden_dropout_prob"],
        ),
        case(
            "config.json unsupported model_type",
            |d| logits_text(&config_with(d, |c| c["model_type"] = "gpt2".into())),
            &["model_type", "gpt2"],
        ),
        case(
            "config.json more layers than the weights have",
            |d| logits_text(&config_with(d, |c| c["num_hidden_layers"] = 3.into())),
            &["model.safetensors", "layer.2"],
        ),
        case(
            "config.json intermediate_size disagrees with the weights",
            |d| logits_text(&config_with(d, |c| c["intermediate_size"] = 48.into())),
            &["model.safetensors", "intermediate"],
        ),
        case(
            "config.json vocab_size disagrees with the weights",
            |d| logits_text(&config_with(d, |c| c["vocab_size"] = 50.into())),
            &["model.safetensors", "word_embeddings", "[50, 24]"],
        ),
        case(
            "vocabulary smaller than the tokenizer's (logits)",
            |d| logits_text(&write_bert(&d.join("small_vocab"), 24, 2, 50)),
            &["tokenizer.json", "vocab_size 50"],
        ),
        case(
            "vocabulary smaller than the tokenizer's (train)",
            |d| train_model(d, &write_bert(&d.join("small_vocab"), 24, 2, 50)),
            &["tokenizer.json", "vocab_size 50"],
        ),
        case(
            "max_len beyond the position table (train --set)",
            |d| train_config(d, "", &["max_len=64"]),
            &["max_len", "64", "40"],
        ),
        case(
            "max_len below the tokenizer's special tokens (train)",
            |d| {
                // Rows longer than the 40 positions: with max_len under the 3 special tokens of a
                // pair, the tokenizers crate stopped truncating and the lookup panicked.
                let long = ["the cat sat on the mat"; 8].join(" ");
                let row = format!("0\t{long}\t{long}\tneutral\n");
                glue_file(d, "train.tsv", format!("{MNLI_HEADER}{row}"));
                train_config(d, "", &["max_len=2"])
            },
            &["max_len", "at least 5"],
        ),
        case(
            "max_len below the tokenizer's special tokens (a run's config.toml, eval)",
            |d| a(&["eval", "--run", &p(&finished_run(d, 2))]),
            &["config.toml", "max_len", "at least 5"],
        ),
        case(
            "max_len beyond the position table (a run's config.toml, eval)",
            |d| a(&["eval", "--run", &p(&finished_run(d, 1000))]),
            &["config.toml", "max_len", "1000", "40"],
        ),
        case(
            "model.safetensors missing",
            |d| {
                logits_text(&model_with(d, |m| {
                    std::fs::remove_file(m.join("model.safetensors")).unwrap()
                }))
            },
            &["model.safetensors"],
        ),
        case(
            "model.safetensors not safetensors",
            |d| {
                logits_text(&model_with(d, |m| {
                    write(&m.join("model.safetensors"), "not a checkpoint")
                }))
            },
            &["model.safetensors"],
        ),
        case(
            "model.safetensors header length beyond the file",
            |d| {
                logits_text(&model_with(d, |m| {
                    let mut bytes = 1_000_000u64.to_le_bytes().to_vec();
                    bytes.extend_from_slice(b"{\"a\":");
                    write(&m.join("model.safetensors"), bytes);
                }))
            },
            &["model.safetensors"],
        ),
        case(
            "model.safetensors truncated",
            |d| {
                logits_text(&model_with(d, |m| {
                    let path = m.join("model.safetensors");
                    let bytes = std::fs::read(&path).unwrap();
                    write(&path, &bytes[..bytes.len() / 2]);
                }))
            },
            &["model.safetensors"],
        ),
        case(
            "model.safetensors tensor of the wrong shape",
            |d| {
                logits_text(&model_with(d, |m| {
                    edit_safetensors(&m.join("model.safetensors"), |h| {
                        h["bert.encoder.layer.0.intermediate.dense.weight"]["shape"] =
                            serde_json::json!([24, 40]);
                    })
                }))
            },
            &[
                "model.safetensors",
                "bert.encoder.layer.0.intermediate.dense.weight",
            ],
        ),
        case(
            "model.safetensors tensor missing",
            |d| {
                logits_text(&model_with(d, |m| {
                    rename_tensors(
                        &m.join("model.safetensors"),
                        "layer.1.output.dense",
                        "layer.1.output.dunse",
                    )
                }))
            },
            &["model.safetensors", "layer.1.output.dense"],
        ),
        case(
            "tokenizer.json missing (logits --text)",
            |d| {
                logits_text(&model_with(d, |m| {
                    std::fs::remove_file(m.join("tokenizer.json")).unwrap()
                }))
            },
            &["tokenizer.json"],
        ),
        case(
            "tokenizer.json corrupt (train)",
            |d| {
                train_model(
                    d,
                    &model_with(d, |m| write(&m.join("tokenizer.json"), "{\"model\": 3}")),
                )
            },
            &["tokenizer.json"],
        ),
        case(
            "token id beyond the vocabulary (logits --input)",
            |d| {
                let input = d.join("ids.jsonl");
                write(
                    &input,
                    "{\"input_ids\": [2, 7, 3]}\n{\"input_ids\": [2, 500, 3]}\n",
                );
                a(&[
                    "logits",
                    "--model",
                    &p(&tiny_model()),
                    "--input",
                    &p(&input),
                ])
            },
            &["ids.jsonl:2", "500"],
        ),
        case(
            "token type beyond type_vocab_size (logits --input)",
            |d| {
                let input = d.join("ids.jsonl");
                write(
                    &input,
                    "{\"input_ids\": [2, 7, 3], \"token_type_ids\": [0, 5, 0]}\n",
                );
                a(&[
                    "logits",
                    "--model",
                    &p(&tiny_model()),
                    "--input",
                    &p(&input),
                ])
            },
            &["ids.jsonl:1", "type_vocab_size"],
        ),
        case(
            "sequence longer than the positions (logits --input)",
            |d| {
                let ids: Vec<i64> = (0..60).map(|i| 5 + i % 80).collect();
                let input = d.join("ids.jsonl");
                write(
                    &input,
                    format!("{}\n", serde_json::json!({ "input_ids": ids })),
                );
                a(&[
                    "logits",
                    "--model",
                    &p(&tiny_model()),
                    "--input",
                    &p(&input),
                ])
            },
            &["ids.jsonl:1", "40"],
        ),
        case(
            "logits input that is not JSON",
            |d| {
                let input = d.join("ids.jsonl");
                write(&input, "{\"input_ids\": [2, 7, 3]}\ninput_ids = 3\n");
                a(&[
                    "logits",
                    "--model",
                    &p(&tiny_model()),
                    "--input",
                    &p(&input),
                ])
            },
            &["ids.jsonl:2"],
        ),
        case(
            "logits input without a sequence",
            |d| {
                let input = d.join("ids.jsonl");
                write(&input, "\n");
                a(&[
                    "logits",
                    "--model",
                    &p(&tiny_model()),
                    "--input",
                    &p(&input),
                ])
            },
            &["ids.jsonl", "no inputs"],
        ),
        case(
            "logits attention_mask of another length",
            |d| {
                let input = d.join("ids.jsonl");
                write(
                    &input,
                    "{\"input_ids\": [2, 7, 3], \"attention_mask\": [1, 1]}\n",
                );
                a(&[
                    "logits",
                    "--model",
                    &p(&tiny_model()),
                    "--input",
                    &p(&input),
                ])
            },
            &["ids.jsonl:1", "attention_mask"],
        ),
        // --- Adapters ---------------------------------------------------------------------------
        case(
            "adapter folder missing",
            |d| logits_adapter(d, &lora_fixtures().join("bert_base"), &d.join("no_adapter")),
            &["no_adapter"],
        ),
        case(
            "adapter_config.json missing",
            |d| {
                adapter_with(d, |ad| {
                    std::fs::remove_file(ad.join("adapter_config.json")).unwrap()
                })
            },
            &["adapter_config.json"],
        ),
        case(
            "adapter_model.safetensors missing",
            |d| {
                adapter_with(d, |ad| {
                    std::fs::remove_file(ad.join("adapter_model.safetensors")).unwrap()
                })
            },
            &["adapter_model.safetensors"],
        ),
        case(
            "adapter_config.json not JSON",
            |d| adapter_with(d, |ad| write(&ad.join("adapter_config.json"), "{\"r\": 4")),
            &["adapter_config.json"],
        ),
        case(
            "adapter_config.json r = 0",
            |d| {
                adapter_with(d, |ad| {
                    edit_json(&ad.join("adapter_config.json"), |c| c["r"] = 0.into())
                })
            },
            &["adapter_config.json", "r"],
        ),
        case(
            "adapter_config.json r as a string",
            |d| {
                adapter_with(d, |ad| {
                    edit_json(&ad.join("adapter_config.json"), |c| c["r"] = "4".into())
                })
            },
            &["adapter_config.json", "r"],
        ),
        case(
            "adapter_config.json without lora_alpha",
            |d| {
                adapter_with(d, |ad| {
                    edit_json(&ad.join("adapter_config.json"), |c| {
                        c.as_object_mut().unwrap().remove("lora_alpha");
                    })
                })
            },
            &["adapter_config.json", "lora_alpha"],
        ),
        case(
            "adapter_config.json r disagrees with the tensors' rank",
            |d| {
                adapter_with(d, |ad| {
                    edit_json(&ad.join("adapter_config.json"), |c| c["r"] = 8.into())
                })
            },
            &["adapter_model.safetensors", "r = 8"],
        ),
        case(
            "adapter_config.json peft_type PREFIX_TUNING",
            |d| {
                adapter_with(d, |ad| {
                    edit_json(&ad.join("adapter_config.json"), |c| {
                        c["peft_type"] = "PREFIX_TUNING".into()
                    })
                })
            },
            &["adapter_config.json", "peft_type"],
        ),
        case(
            "adapter_config.json use_dora",
            |d| {
                adapter_with(d, |ad| {
                    edit_json(&ad.join("adapter_config.json"), |c| {
                        c["use_dora"] = true.into()
                    })
                })
            },
            &["adapter_config.json", "use_dora"],
        ),
        case(
            "adapter target_modules not in the model",
            |d| {
                adapter_with(d, |ad| {
                    edit_json(&ad.join("adapter_config.json"), |c| {
                        c["target_modules"] = serde_json::json!(["q_lin", "v_lin"])
                    })
                })
            },
            &["adapter_config.json", "q_lin"],
        ),
        case(
            "adapter tensors for modules target_modules does not name",
            |d| {
                adapter_with(d, |ad| {
                    edit_json(&ad.join("adapter_config.json"), |c| {
                        c["target_modules"] = serde_json::json!(["query"])
                    })
                })
            },
            &["adapter_model.safetensors", "target_modules"],
        ),
        case(
            "adapter_model.safetensors not safetensors",
            |d| {
                adapter_with(d, |ad| {
                    write(&ad.join("adapter_model.safetensors"), "garbage")
                })
            },
            &["adapter_model.safetensors"],
        ),
        case(
            "adapter_model.safetensors truncated",
            |d| {
                adapter_with(d, |ad| {
                    let path = ad.join("adapter_model.safetensors");
                    let bytes = std::fs::read(&path).unwrap();
                    write(&path, &bytes[..bytes.len() - 100]);
                })
            },
            &["adapter_model.safetensors"],
        ),
        case(
            "adapter lora_A of the wrong shape",
            |d| {
                adapter_with(d, |ad| {
                    edit_safetensors(&ad.join("adapter_model.safetensors"), |h| {
                        h["base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"]
                            ["shape"] = serde_json::json!([8, 12]);
                    })
                })
            },
            &[
                "adapter_model.safetensors",
                "layer.0.attention.self.query.lora_A",
            ],
        ),
        case(
            "adapter with lora_A but no lora_B",
            |d| {
                adapter_with(d, |ad| {
                    rename_tensors(
                        &ad.join("adapter_model.safetensors"),
                        "layer.1.attention.self.value.lora_B",
                        "layer.1.attention.self.value.lora_C",
                    )
                })
            },
            &["adapter_model.safetensors", "layer.1.attention.self.value"],
        ),
        case(
            "adapter for a deeper model (layer 5 on a 2-layer base)",
            |d| {
                adapter_with(d, |ad| {
                    rename_tensors(
                        &ad.join("adapter_model.safetensors"),
                        "layer.1.",
                        "layer.5.",
                    )
                })
            },
            &["adapter_model.safetensors", "layer.5"],
        ),
        case(
            "adapter from a shallower model (2 layers on a 3-layer base)",
            |d| {
                let base = write_bert(&d.join("base3"), 24, 3, 100);
                logits_adapter(d, &base, &lora_fixtures().join("bert_lora"))
            },
            &["adapter_model.safetensors", "layer.2"],
        ),
        case(
            "adapter from a base of another width (24 on 12)",
            |d| {
                let base = write_bert(&d.join("base12"), 12, 2, 100);
                logits_adapter(d, &base, &lora_fixtures().join("bert_lora"))
            },
            &["adapter_model.safetensors", "24"],
        ),
        case(
            "adapter from another architecture (DistilBERT on BERT)",
            |d| {
                logits_adapter(
                    d,
                    &lora_fixtures().join("bert_base"),
                    &lora_fixtures().join("distilbert_lora"),
                )
            },
            &["adapter_model.safetensors", "q_lin"],
        ),
        // --- Configurations ---------------------------------------------------------------------
        case(
            "config unknown key",
            |d| train_config(d, "epoch = 3\n", &[]),
            &["epoch"],
        ),
        case(
            "config unknown nested key",
            |d| train_config(d, "[lora]\nrank = 3\n", &[]),
            &["rank"],
        ),
        case(
            "--set unknown key",
            |d| train_config(d, "", &["learning_rate=1e-3"]),
            &["learning_rate"],
        ),
        case(
            "config wrong type",
            |d| train_config(d, "", &["epochs=three"]),
            &["epochs"],
        ),
        case(
            "config wrong type in the file",
            |d| train_config(d, "seed = \"seven\"\n", &[]),
            &["seed"],
        ),
        case(
            "grad_accumulation = 0",
            |d| train_config(d, "", &["grad_accumulation=0"]),
            &["grad_accumulation"],
        ),
        case(
            "divergence_factor < 0",
            |d| train_config(d, "", &["divergence_factor=-1"]),
            &["divergence_factor"],
        ),
        case("seed < 0", |d| train_config(d, "", &["seed=-1"]), &["seed"]),
        case(
            "lora.target_modules of the wrong type",
            |d| train_config(d, "", &["lora.target_modules=3"]),
            &["target_modules"],
        ),
        case(
            "kd.alpha above 1",
            |d| train_config(d, "", &["method=kd-lora", "teacher=t", "kd.alpha=2"]),
            &["kd", "alpha"],
        ),
        case("lr = 0", |d| train_config(d, "", &["lr=0"]), &["`lr`"]),
        case("lr < 0", |d| train_config(d, "", &["lr=-1e-3"]), &["`lr`"]),
        case(
            "epochs = 0",
            |d| train_config(d, "", &["epochs=0"]),
            &["epochs"],
        ),
        case(
            "batch_size = 0",
            |d| train_config(d, "", &["batch_size=0"]),
            &["batch_size"],
        ),
        case(
            "warmup_ratio = 1.5",
            |d| train_config(d, "", &["warmup_ratio=1.5"]),
            &["warmup_ratio"],
        ),
        case(
            "grad_clip < 0",
            |d| train_config(d, "", &["grad_clip=-1"]),
            &["grad_clip"],
        ),
        case(
            "max_train_examples = 0",
            |d| train_config(d, "", &["max_train_examples=0"]),
            &["max_train_examples"],
        ),
        case(
            "unknown method",
            |d| train_config(d, "", &["method=sgd"]),
            &["method", "sgd"],
        ),
        case(
            "unknown task",
            |d| train_config(d, "", &["task=sst3"]),
            &["task", "sst3"],
        ),
        case(
            "unknown device",
            |d| train_config(d, "", &["device=tpu"]),
            &["device", "tpu"],
        ),
        case(
            "unknown engine",
            |d| train_config(d, "", &["engine=keras"]),
            &["engine", "keras"],
        ),
        case(
            "checkpoint_steps with the learner engine",
            |d| train_config(d, "", &["engine=learner", "checkpoint_steps=5"]),
            &["checkpoint_steps"],
        ),
        case(
            "lora.r = 0",
            |d| train_config(d, "", &["lora.r=0"]),
            &["lora", "r"],
        ),
        case(
            "lora.dropout = 1.5",
            |d| train_config(d, "", &["lora.dropout=1.5"]),
            &["lora", "dropout"],
        ),
        case(
            "lora.target_modules naming no module",
            |d| train_config(d, "", &["lora.target_modules=[\"nope\"]"]),
            &["nope"],
        ),
        case(
            "kd.temperature = 0",
            |d| train_config(d, "", &["method=kd-lora", "teacher=t", "kd.temperature=0"]),
            &["kd", "temperature"],
        ),
        case(
            "kd method without a teacher",
            |d| train_config(d, "", &["method=kd-lora"]),
            &["teacher"],
        ),
        case(
            "config missing the required key model",
            |d| {
                let path = d.join("c.toml");
                write(
                    &path,
                    "method = \"lora\"\ntask = \"mnli\"\ndata = \"d\"\nout = \"o\"\n",
                );
                a(&["train", "--config", &p(&path), "--out", &p(&d.join("run"))])
            },
            &["model"],
        ),
        case(
            "config file not found",
            |d| {
                a(&[
                    "train",
                    "--config",
                    &p(&d.join("absent.toml")),
                    "--out",
                    &p(&d.join("run")),
                ])
            },
            &["absent.toml"],
        ),
        case(
            "config TOML syntax error",
            |d| train_config(d, "lr = \nseed = 3\n", &[]),
            &["c.toml", "line 10"],
        ),
        case(
            "config an unterminated table header",
            |d| train_config(d, "[lora\nr = 4\n", &[]),
            &["c.toml", "line 10"],
        ),
        case(
            "--set without =",
            |d| train_config(d, "", &["epochs"]),
            &["epochs", "key=value"],
        ),
        case(
            "--set with an empty key",
            |d| train_config(d, "", &["=3"]),
            &["=3"],
        ),
        case(
            "--set with an invalid key",
            |d| train_config(d, "", &["lora..r=3"]),
            &["lora..r"],
        ),
        case(
            "model path naming an unset ${VAR}",
            |d| train_config(d, "", &["model=\"${KDLORA_TEST_SURELY_UNSET_VAR}/m\""]),
            &["model", "KDLORA_TEST_SURELY_UNSET_VAR"],
        ),
        // --- CLI misuse -------------------------------------------------------------------------
        case(
            "unknown flag",
            |_| a(&["train", "--epochs", "3"]),
            &["--epochs"],
        ),
        case(
            "unknown subcommand",
            |_| a(&["fit", "--config", "c.toml"]),
            &["fit"],
        ),
        case(
            "train with nothing to train",
            |d| a(&["train", "--out", &p(&d.join("run"))]),
            &["method"],
        ),
        case(
            "logits without --input or --text",
            |_| a(&["logits", "--model", &p(&tiny_model())]),
            &["--input"],
        ),
        case(
            "logits with both --input and --text",
            |d| {
                a(&[
                    "logits",
                    "--model",
                    &p(&tiny_model()),
                    "--input",
                    &p(&ids_input(d)),
                    "--text",
                    "the cat",
                ])
            },
            &["--input", "--text"],
        ),
        case(
            "logits --text-pair without --text",
            |d| {
                a(&[
                    "logits",
                    "--model",
                    &p(&tiny_model()),
                    "--input",
                    &p(&ids_input(d)),
                    "--text-pair",
                    "the cat",
                ])
            },
            &["--text"],
        ),
        case(
            "logits --batch-size 0",
            |_| {
                a(&[
                    "logits",
                    "--model",
                    &p(&tiny_model()),
                    "--text",
                    "the cat",
                    "--batch-size",
                    "0",
                ])
            },
            &["--batch-size"],
        ),
        case(
            "unknown --device",
            |_| {
                a(&[
                    "logits",
                    "--model",
                    &p(&tiny_model()),
                    "--text",
                    "the cat",
                    "--device",
                    "tpu",
                ])
            },
            &["--device", "tpu"],
        ),
        case("eval without --run", |_| a(&["eval"]), &["--run"]),
        case(
            "predict without --out",
            |d| {
                a(&[
                    "predict",
                    "--run",
                    &p(&d.join("run")),
                    "--task",
                    "mnli",
                    "--data",
                    "glue",
                ])
            },
            &["--out"],
        ),
        case(
            "predict unknown --task",
            |d| {
                let mut args = predict_to(d, &d.join("p.tsv"));
                args[4] = "mnlx".into();
                args
            },
            &["--task", "mnlx"],
        ),
        case(
            "predict unknown --split",
            |d| {
                let mut args = predict_to(d, &d.join("p.tsv"));
                args.extend(a(&["--split", "holdout"]));
                args
            },
            &["--split", "holdout"],
        ),
        case(
            "predict --task other than the run's",
            |d| {
                let mut args = predict_to(d, &d.join("p.tsv"));
                args[4] = "qnli".into();
                args
            },
            &["task", "mnli", "qnli"],
        ),
        case(
            "nonexistent --teacher",
            |d| {
                train_config(
                    d,
                    "",
                    &[
                        "method=kd-lora",
                        &format!("teacher={:?}", p(&d.join("no_teacher"))),
                    ],
                )
            },
            &["no_teacher"],
        ),
        case(
            "--resume on an empty folder",
            |d| {
                std::fs::create_dir_all(d.join("run")).unwrap();
                a(&["train", "--out", &p(&d.join("run")), "--resume"])
            },
            &["run/config.toml"],
        ),
        case(
            "--resume from a checkpoint whose state.json is corrupt",
            |d| {
                interrupted_with(d, |c| {
                    write(&c.join("state.json"), "{\"global_step\": \"two\"}")
                })
            },
            &["step-00000002/state.json"],
        ),
        case(
            "--resume from a checkpoint whose weights are truncated",
            |d| interrupted_with(d, |c| truncate(&checkpoint_file(c, false), 100)),
            &["step-00000002/trainable.safetensors", "is damaged"],
        ),
        case(
            "--resume from a checkpoint whose optimizer state is truncated",
            |d| interrupted_with(d, |c| truncate(&checkpoint_file(c, true), 100)),
            &["step-00000002/optim", "is damaged"],
        ),
        case(
            "--resume from a checkpoint whose optimizer state has a huge length field",
            |d| interrupted_with(d, |c| huge_length(&checkpoint_file(c, true))),
            &["step-00000002/optim", "is damaged"],
        ),
        case(
            "--resume from a full fine-tuning checkpoint whose model.bin is truncated",
            |d| interrupted_fft_with(d, |c| truncate(&c.join("model.bin"), 100)),
            &["step-00000002/model.bin", "is damaged"],
        ),
        case(
            "--resume from a full fine-tuning checkpoint whose model.bin has a huge length field",
            |d| interrupted_fft_with(d, |c| huge_length(&c.join("model.bin"))),
            &["step-00000002/model.bin", "is damaged"],
        ),
        case(
            "--resume from a checkpoint without its optimizer state",
            |d| {
                interrupted_with(d, |c| {
                    std::fs::remove_file(checkpoint_file(c, true)).unwrap()
                })
            },
            &["step-00000002/optim"],
        ),
        case(
            "--resume with a key changed",
            |d| {
                let run = finished_run(d, 32);
                std::fs::remove_dir_all(run.join("model")).unwrap();
                std::fs::create_dir_all(run.join("checkpoints")).unwrap();
                let config = run.join("config.toml");
                a(&[
                    "train",
                    "--config",
                    &p(&config),
                    "--resume",
                    "--set",
                    "max_len=24",
                ])
            },
            &["max_len"],
        ),
        case(
            "train into a finished run without --resume",
            |d| {
                let args = train_config(d, "", &[]);
                write(&d.join("run/metrics.json"), "{}");
                args
            },
            &["already holds a run", "--resume"],
        ),
        case(
            "train into an interrupted run without --resume",
            |d| {
                let args = train_config(d, "", &[]);
                std::fs::create_dir_all(d.join("run/checkpoints/step-00000004")).unwrap();
                args
            },
            &["already holds a run", "--resume"],
        ),
        case(
            "predict on an unfinished run",
            |d| {
                let args = predict_to(d, &d.join("p.tsv"));
                std::fs::remove_dir_all(d.join("run/model")).unwrap();
                std::fs::create_dir_all(d.join("run/checkpoints")).unwrap();
                args
            },
            &["did not finish", "--resume"],
        ),
        case(
            "eval --run of a folder that is no run",
            |d| {
                std::fs::create_dir_all(d.join("empty")).unwrap();
                a(&["eval", "--run", &p(&d.join("empty"))])
            },
            &["empty", "not a run folder"],
        ),
        case(
            "eval --run of a missing folder",
            |d| a(&["eval", "--run", &p(&d.join("no_run"))]),
            &["no_run"],
        ),
        case(
            "eval of a run whose config.toml is corrupt",
            |d| {
                let run = run_and_data(d);
                write(&run.join("config.toml"), "method = \"fft\"\ntask = \n");
                a(&["eval", "--run", &p(&run)])
            },
            &["config.toml"],
        ),
        case(
            "eval of a run whose config.toml has an unknown key",
            |d| {
                let run = run_and_data(d);
                let path = run.join("config.toml");
                let text = std::fs::read_to_string(&path).unwrap();
                write(&path, format!("{text}lerning_rate = 3\n"));
                a(&["eval", "--run", &p(&run)])
            },
            &["config.toml", "lerning_rate"],
        ),
        case(
            "merge --out the same folder as --model",
            |_| {
                let base = lora_fixtures().join("bert_base");
                a(&[
                    "merge",
                    "--model",
                    &p(&base),
                    "--adapter",
                    &p(&lora_fixtures().join("bert_lora")),
                    "--out",
                    &p(&base),
                ])
            },
            &["--out"],
        ),
        case(
            "bench --seq beyond the positions",
            |_| {
                a(&[
                    "bench",
                    "--model",
                    &p(&tiny_model()),
                    "--mode",
                    "inference",
                    "--seq",
                    "1000",
                ])
            },
            &["--seq", "1000", "40"],
        ),
        case(
            "bench --batch 0",
            |_| {
                a(&[
                    "bench",
                    "--model",
                    &p(&tiny_model()),
                    "--mode",
                    "lora",
                    "--batch",
                    "0",
                ])
            },
            &["--batch"],
        ),
        case(
            "bench of a config.json alone that is invalid",
            |d| {
                let config = d.join("bert.json");
                std::fs::copy(tiny_model().join("config.json"), &config).unwrap();
                edit_json(&config, |c| c["num_attention_heads"] = 5.into());
                a(&["bench", "--model", &p(&config), "--mode", "inference"])
            },
            &["bert.json", "num_attention_heads"],
        ),
        // --- Output paths ----------------------------------------------------------------------
        case(
            "predict --out is a directory",
            |d| {
                std::fs::create_dir_all(d.join("out_dir")).unwrap();
                predict_to(d, &d.join("out_dir"))
            },
            &["out_dir", "directory"],
        ),
        case(
            "predict --out under a file",
            |d| {
                write(&d.join("plain.txt"), "x");
                predict_to(d, &d.join("plain.txt/p.tsv"))
            },
            &["plain.txt"],
        ),
        case(
            "train --out is a file",
            |d| {
                write(&d.join("run.txt"), "x");
                train_into(d, &d.join("run.txt"), "", &[])
            },
            &["run.txt"],
        ),
        case(
            "train --out under a file",
            |d| {
                write(&d.join("plain.txt"), "x");
                train_into(d, &d.join("plain.txt/run"), "", &[])
            },
            &["plain.txt"],
        ),
        case(
            "merge --out is a file",
            |d| {
                write(&d.join("merged"), "x");
                a(&[
                    "merge",
                    "--model",
                    &p(&lora_fixtures().join("bert_base")),
                    "--adapter",
                    &p(&lora_fixtures().join("bert_lora")),
                    "--out",
                    &p(&d.join("merged")),
                ])
            },
            &["merged"],
        ),
    ];
    if is_root() {
        eprintln!("skipping the read-only folder cases: root ignores file permissions");
    } else {
        cases.push(case(
            "predict --out in a read-only folder",
            |d| {
                let ro = d.join("ro");
                std::fs::create_dir_all(&ro).unwrap();
                set_mode(&ro, 0o555);
                predict_to(d, &ro.join("p.tsv"))
            },
            &["ro/p.tsv"],
        ));
        cases.push(case(
            "train --out in a read-only folder",
            |d| {
                let ro = d.join("ro");
                std::fs::create_dir_all(&ro).unwrap();
                set_mode(&ro, 0o555);
                train_into(d, &ro.join("run"), "", &[])
            },
            &["ro/run"],
        ));
    }
    cases
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) {}

/// Every case of [`cases`] is refused cleanly; all failures are reported together.
#[test]
fn every_bad_input_is_refused_with_a_message_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = cases();
    let mut names = std::collections::BTreeSet::new();
    for c in &cases {
        assert!(names.insert(c.name), "two cases named {:?}", c.name);
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    // Each refusal's first line, printed (with --nocapture) for reviewing the messages.
    let messages = std::sync::Mutex::new(Vec::new());
    // A few at a time: each case is its own process, mostly waiting on loading a tiny model.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(c) = cases.get(i) else { break };
                    let dir = tmp.path().join(format!("case{i:03}"));
                    std::fs::create_dir_all(&dir).unwrap();
                    let setup = std::panic::catch_unwind(|| (c.setup)(&dir));
                    let Ok(args) = setup else {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{} ({i}): its setup panicked", c.name));
                        continue;
                    };
                    let out = train_out(&dir, &args).filter(|o| !o.exists());
                    let outcome = run_in(&dir, &tmp.path().join(format!("logs{i:03}")), &args);
                    let mut verdict = judge(&outcome, c.needles);
                    if verdict.is_ok()
                        && let Some(out) = out.filter(|o| o.exists())
                    {
                        verdict = Err(format!("the refused run left {}", out.display()));
                    }
                    match verdict {
                        Ok(()) => {
                            let line = outcome.stderr.lines().find(|l| l.starts_with("error:"));
                            let line: String = line.unwrap_or_default().chars().take(240).collect();
                            messages
                                .lock()
                                .unwrap()
                                .push((i, format!("{}: {line}", c.name)));
                        }
                        Err(why) => failures
                            .lock()
                            .unwrap()
                            .push(format!("{} ({}): {why}\n  args: {args:?}", c.name, i)),
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    let mut messages = messages.into_inner().unwrap();
    messages.sort();
    for (_, message) in &messages {
        eprintln!("{message}");
    }
    eprintln!(
        "{} bad-input cases, {} failed, {:.1} s",
        cases.len(),
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(cases.len() >= 60, "only {} cases", cases.len());
}

/// Valid inputs built the same way as the bad ones pass: the suite's refusals come from the
/// defects put in, not from the way the cases are set up.
#[test]
fn the_controls_are_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let logs = d.join("logs");
    let ok = |args: Vec<String>| {
        let outcome = run_in(d, &logs, &args);
        assert_eq!(outcome.code, Some(0), "{args:?} failed: {}", outcome.stderr);
        assert!(!outcome.stderr.contains("panicked"), "{}", outcome.stderr);
        outcome.stdout
    };
    // A text through the tiny model: one line of three logits.
    let line = ok(logits_text(&tiny_model()));
    let json: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(json["logits"].as_array().unwrap().len(), 3, "{line}");
    // The data the cases start from, read both ways.
    let glue = glue(d);
    ok(stats(&glue));
    let jsonl = d.join("jsonl");
    write(
        &jsonl.join("mnli/train.jsonl"),
        "{\"premise\": \"a\", \"hypothesis\": \"b\", \"label\": 0, \"idx\": 0}\n",
    );
    ok(stats(&jsonl));
    // The PEFT fixture adapter on its base, and a base written by `write_bert` with the fixture
    // adapter's shape.
    ok(logits_adapter(
        d,
        &lora_fixtures().join("bert_base"),
        &lora_fixtures().join("bert_lora"),
    ));
    let base = write_bert(&d.join("base24"), 24, 2, 100);
    ok(logits_adapter(d, &base, &lora_fixtures().join("bert_lora")));
    // A valid submission file scores.
    ok(score(
        &d.join("score"),
        "index\tprediction\n0\tneutral\n1\tneutral\n2\tentailment\n3\tcontradiction\n",
    ));
    // The run configuration of the config cases trains (one short epoch), and the run then
    // evaluates and predicts; `predict_to`'s hand-made run predicts too.
    // One epoch of two, then resumed with `--out` spelled otherwise than the saved absolute `out`
    // (relative, with the slash a shell's completion adds).
    ok(train_config(d, "", &["epochs=2", "stop_after_epochs=1"]));
    ok(a(&["train", "--out", "run/", "--resume"]));
    let run = d.join("run");
    assert!(run.join("adapter/adapter_model.safetensors").is_file());
    assert!(run.join("metrics.json").is_file());
    ok(a(&["eval", "--run", &p(&run)]));
    let predictions = d.join("preds/p.tsv");
    ok(a(&[
        "predict",
        "--run",
        &p(&run),
        "--task",
        "mnli",
        "--data",
        &p(&glue),
        "--out",
        &p(&predictions),
    ]));
    assert_eq!(
        std::fs::read_to_string(&predictions)
            .unwrap()
            .lines()
            .count(),
        5
    );
    ok(predict_to(&d.join("hand"), &d.join("hand/p.tsv")));
}
