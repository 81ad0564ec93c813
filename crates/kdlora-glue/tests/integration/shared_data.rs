//! Every GLUE file in ../shared loads with its exact row count, and tokenization of real rows
//! matches the Python `tokenizers` package. Skips (with a message) when ../shared is absent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use kdlora_glue::{
    DataFormat, EncodedDataset, GlueBatch, GlueBatcher, GlueDataset, GlueLabels, GlueTask,
    GlueTokenizer, Label, Split, dataset_stats, length_grouped_batches,
};

fn shared() -> Option<PathBuf> {
    let dir = std::env::var_os("KDLORA_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    if dir.join("glue").is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "skipping: shared data not found at {} (set KDLORA_SHARED)",
            dir.display()
        );
        None
    }
}

/// (folder under shared, task, split, file relative to the folder, rows).
/// MRPC train: ../shared/README.md says 3,668 (the Hugging Face count), but the file has a
/// header and 3,667 data rows (3,668 lines); 3,667 is what it holds.
const FILES: &[(&str, GlueTask, Split, &str, usize)] = &[
    ("glue", GlueTask::Cola, Split::Train, "CoLA/train.tsv", 8551),
    ("glue", GlueTask::Cola, Split::Dev, "CoLA/dev.tsv", 1043),
    ("glue", GlueTask::Cola, Split::Test, "CoLA/test.tsv", 1063),
    (
        "glue",
        GlueTask::Sst2,
        Split::Train,
        "SST-2/train.tsv",
        67349,
    ),
    ("glue", GlueTask::Sst2, Split::Dev, "SST-2/dev.tsv", 872),
    ("glue", GlueTask::Sst2, Split::Test, "SST-2/test.tsv", 1821),
    ("glue", GlueTask::Mrpc, Split::Train, "MRPC/train.tsv", 3667),
    ("glue", GlueTask::Mrpc, Split::Dev, "MRPC/dev.tsv", 408),
    ("glue", GlueTask::Mrpc, Split::Test, "MRPC/test.tsv", 1725),
    (
        "glue",
        GlueTask::Stsb,
        Split::Train,
        "STS-B/train.tsv",
        5749,
    ),
    ("glue", GlueTask::Stsb, Split::Dev, "STS-B/dev.tsv", 1500),
    ("glue", GlueTask::Stsb, Split::Test, "STS-B/test.tsv", 1379),
    ("glue", GlueTask::Rte, Split::Train, "RTE/train.tsv", 2490),
    ("glue", GlueTask::Rte, Split::Dev, "RTE/dev.tsv", 277),
    ("glue", GlueTask::Rte, Split::Test, "RTE/test.tsv", 3000),
    ("glue", GlueTask::Wnli, Split::Train, "WNLI/train.tsv", 635),
    ("glue", GlueTask::Wnli, Split::Dev, "WNLI/dev.tsv", 71),
    ("glue", GlueTask::Wnli, Split::Test, "WNLI/test.tsv", 146),
    ("glue", GlueTask::Qnli, Split::Dev, "QNLI/dev.tsv", 5463),
    ("glue", GlueTask::Qnli, Split::Test, "QNLI/test.tsv", 5463),
    (
        "glue",
        GlueTask::Ax,
        Split::Test,
        "diagnostic/diagnostic.tsv",
        1104,
    ),
    (
        "glue-subsets",
        GlueTask::Mnli,
        Split::Train,
        "mnli/train.jsonl",
        8999,
    ),
    (
        "glue-subsets",
        GlueTask::Mnli,
        Split::Dev,
        "mnli/validation.jsonl",
        1000,
    ),
    (
        "glue-subsets",
        GlueTask::Qqp,
        Split::Train,
        "qqp/train.jsonl",
        8999,
    ),
    (
        "glue-subsets",
        GlueTask::Qqp,
        Split::Dev,
        "qqp/validation.jsonl",
        1000,
    ),
    (
        "glue-subsets",
        GlueTask::Qnli,
        Split::Train,
        "qnli/train.jsonl",
        8999,
    ),
    (
        "glue-subsets",
        GlueTask::Qnli,
        Split::Dev,
        "qnli/validation.jsonl",
        1000,
    ),
];

fn counts(d: &GlueDataset) -> BTreeMap<String, usize> {
    d.label_counts()
}

#[test]
fn every_shared_file_loads_with_exact_row_count() {
    let Some(shared) = shared() else { return };
    // Every data file present is listed above (so a new file cannot go untested).
    for folder in ["glue", "glue-subsets"] {
        for task_dir in std::fs::read_dir(shared.join(folder)).unwrap() {
            let task_dir = task_dir.unwrap().path();
            for f in std::fs::read_dir(&task_dir).unwrap() {
                let f = f.unwrap().path();
                let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("");
                if ext != "tsv" && ext != "jsonl" {
                    continue;
                }
                let rel = f
                    .strip_prefix(shared.join(folder))
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                assert!(
                    FILES
                        .iter()
                        .any(|(fo, _, _, r, _)| *fo == folder && *r == rel),
                    "{folder}/{rel} is not covered"
                );
            }
        }
    }
    for &(folder, task, split, rel, rows) in FILES {
        let dir = shared.join(folder);
        let d =
            GlueDataset::load(&dir, task, split).unwrap_or_else(|e| panic!("{folder}/{rel}: {e}"));
        assert_eq!(
            d.path(),
            dir.join(rel),
            "{folder}/{rel}: wrong file located"
        );
        assert_eq!(d.len(), rows, "{folder}/{rel}");
        let expected_format = if rel.ends_with(".jsonl") {
            DataFormat::HfJsonl
        } else {
            DataFormat::OriginalTsv
        };
        assert_eq!(d.format(), expected_format);
        assert!(d.examples().iter().enumerate().all(|(i, e)| e.index == i));
        assert!(
            d.examples()
                .iter()
                .all(|e| e.text_b.is_some() == task.is_pair())
        );
        if split == Split::Test {
            assert!(d.examples().iter().all(|e| e.label.is_none()), "{rel}");
        } else {
            assert!(d.is_labelled(), "{rel}");
        }
    }
}

#[test]
fn shared_files_content_spot_checks() {
    let Some(shared) = shared() else { return };
    let glue = shared.join("glue");
    let subsets = shared.join("glue-subsets");

    // MRPC: the BOM before the header must not hide the "Quality" column.
    let mrpc = GlueDataset::load(&glue, GlueTask::Mrpc, Split::Train).unwrap();
    assert!(
        mrpc.examples()[0]
            .text_a
            .starts_with("Amrozi accused his brother")
    );
    assert_eq!(mrpc.examples()[0].label, Some(Label::Class(1)));

    // CoLA dev: the last line has no newline and is still a row.
    let cola = GlueDataset::load(&glue, GlueTask::Cola, Split::Dev).unwrap();
    let last = cola.examples().last().unwrap();
    assert_eq!(last.text_a, "John talked to Bill about himself.");
    assert_eq!(last.label, Some(Label::Class(1)));

    let stsb = GlueDataset::load(&glue, GlueTask::Stsb, Split::Train).unwrap();
    assert_eq!(stsb.examples()[1].label, Some(Label::Score(3.8)));
    assert_eq!(
        stsb.examples()[0].text_b.as_deref(),
        Some("An air plane is taking off.")
    );

    let map = |pairs: &[(&str, usize)]| -> BTreeMap<String, usize> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    };
    let rte = GlueDataset::load(&glue, GlueTask::Rte, Split::Train).unwrap();
    assert_eq!(
        counts(&rte),
        map(&[("entailment", 1249), ("not_entailment", 1241)])
    );
    let sst = GlueDataset::load(&glue, GlueTask::Sst2, Split::Train).unwrap();
    assert_eq!(
        counts(&sst),
        map(&[("negative", 29780), ("positive", 37569)])
    );
    let qnli = GlueDataset::load(&glue, GlueTask::Qnli, Split::Dev).unwrap();
    assert_eq!(
        counts(&qnli),
        map(&[("entailment", 2702), ("not_entailment", 2761)])
    );
    let mnli = GlueDataset::load(&subsets, GlueTask::Mnli, Split::Train).unwrap();
    assert_eq!(
        counts(&mnli),
        map(&[
            ("contradiction", 2958),
            ("entailment", 3061),
            ("neutral", 2980)
        ])
    );
    assert!(
        mnli.examples()[0]
            .text_a
            .starts_with("Our hearts are particularly heavy")
    );
    // MNLI's mismatched dev set is not in the subsets: a clear error, not a fallback.
    let err = GlueDataset::load(&subsets, GlueTask::Mnli, Split::DevMismatched).unwrap_err();
    assert!(
        err.to_string().contains("validation_mismatched.jsonl"),
        "{err}"
    );
    // QNLI train exists only as a subset; the TSV folder has none.
    assert!(GlueDataset::load(&glue, GlueTask::Qnli, Split::Train).is_err());
}

fn fixture() -> serde_json::Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/tokenizer_fixture.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn tokenization_matches_python_tokenizers() {
    let Some(shared) = shared() else { return };
    let fx = fixture();
    let path = shared.join("models/all-MiniLM-L6-v2/tokenizer.json");
    let glue = shared.join("glue");
    for (task, key, max_key) in [
        (GlueTask::Rte, "rte_dev", "rte_dev_max_len"),
        (GlueTask::Cola, "cola_dev", "cola_dev_max_len"),
    ] {
        let max_len = fx[max_key].as_u64().unwrap() as usize;
        let tok = GlueTokenizer::from_file(&path)
            .unwrap()
            .with_max_len(max_len)
            .unwrap();
        assert_eq!(tok.pad_id(), 0);
        let data = GlueDataset::load(&glue, task, Split::Dev).unwrap();
        let want = fx[key].as_array().unwrap();
        let got = tok.encode_examples(&data.examples()[..want.len()]).unwrap();
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.index, w["index"].as_u64().unwrap() as usize);
            assert_eq!(g.input_ids, ids(&w["input_ids"]), "{key} row {}", g.index);
            assert_eq!(
                g.token_type_ids,
                ids(&w["token_type_ids"]),
                "{key} row {}",
                g.index
            );
            assert!(g.len() <= max_len);
        }
        // Some rows must actually be truncated, or the check proves little.
        assert!(got.iter().any(|g| g.len() == max_len));
    }
}

#[test]
fn real_batches_from_shared_tokenizer() {
    let Some(shared) = shared() else { return };
    type B = NdArray<f32>;
    let tok = GlueTokenizer::from_file(&shared.join("models/all-MiniLM-L6-v2/tokenizer.json"))
        .unwrap()
        .with_max_len(128)
        .unwrap();
    let stsb = GlueDataset::load(&shared.join("glue"), GlueTask::Stsb, Split::Dev).unwrap();
    let encoded = EncodedDataset::new(tok.encode_dataset(&stsb).unwrap());
    assert_eq!(encoded.items().len(), 1500);
    let batches = length_grouped_batches(&encoded.lengths(), 32, 20, 42).unwrap();
    let batcher = GlueBatcher::from_tokenizer(&tok);
    let first = encoded.gather(&batches[0]).unwrap();
    let longest = first.iter().map(|e| e.len()).max().unwrap();
    let batch: GlueBatch<B> = batcher.try_batch(&first, &Default::default()).unwrap();
    assert_eq!(batch.input_ids.dims(), [32, longest]);
    let mask: Vec<i64> = batch
        .attention_mask
        .clone()
        .to_data()
        .convert::<i64>()
        .to_vec()
        .unwrap();
    let ones: usize = mask.iter().filter(|&&m| m == 1).count();
    assert_eq!(ones, first.iter().map(|e| e.len()).sum::<usize>());
    assert!(matches!(batch.labels, Some(GlueLabels::Score(_))));
    let indices: Vec<usize> = first.iter().map(|e| e.index).collect();
    assert_eq!(batch.indices, indices);

    let stats = dataset_stats(&stsb, Some(&tok)).unwrap();
    let lengths = stats.token_lengths.unwrap();
    assert_eq!(stats.examples, 1500);
    assert!(lengths.min >= 5 && lengths.p50 <= lengths.p90 && lengths.p99 <= lengths.max);
    let mean = stats.score_mean.unwrap();
    assert!((0.0..=5.0).contains(&mean));
}

#[test]
fn gold_labels_as_submission_score_100_on_every_shared_dev_set() {
    use kdlora_glue::{
        Prediction, align_predictions, evaluate, read_predictions, write_predictions,
    };
    let Some(shared) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    for &(folder, task, split, rel, _) in FILES {
        if split != Split::Dev {
            continue;
        }
        let data = GlueDataset::load(&shared.join(folder), task, split).unwrap();
        let preds: Vec<Prediction> = data
            .examples()
            .iter()
            .map(|e| Prediction {
                index: e.index,
                label: e.label.unwrap(),
            })
            .collect();
        let file = tmp.path().join(task.submission_file_name_for(split));
        write_predictions(&file, task, &preds).unwrap();
        let back = read_predictions(&file, task).unwrap();
        let (p, g) = align_predictions(&back, &data).unwrap();
        let m = evaluate(task, &p, &g).unwrap();
        assert!((m.score - 100.0).abs() < 1e-9, "{folder}/{rel}: {m:?}");
    }
}
