//! Teacher-logit store: build, reuse, invalidation, corruption and lookup.

use std::cell::Cell;
use std::collections::HashMap;
use std::path::Path;

use burn::backend::NdArray;
use kdlora_distill::{
    DistillError, LOGITS_TENSOR_NAME, RebuildReason, StoreOutcome, TEACHER_LOGITS_FORMAT_VERSION,
    TeacherLogits, TeacherLogitsMeta, sha256_bytes,
};
use safetensors::tensor::{Dtype, TensorView};

type B = NdArray<f32>;

fn base_meta() -> TeacherLogitsMeta {
    TeacherLogitsMeta {
        teacher: "test-teacher".into(),
        teacher_weights_sha256: sha256_bytes(b"weights"),
        task: "mnli".into(),
        split: "train".into(),
        tokenizer_sha256: sha256_bytes(b"tokenizer"),
        max_len: 128,
        dataset_rows_sha256: sha256_bytes(b"rows"),
        num_examples: 7,
        num_outputs: 3,
        ..Default::default()
    }
}

/// Distinct, recognisable values: example i, output c -> i * 10 + c (+ a version offset).
fn fake_logits(meta: &TeacherLogitsMeta, version: f32) -> Vec<f32> {
    (0..meta.num_examples)
        .flat_map(|i| (0..meta.num_outputs).map(move |c| i as f32 * 10.0 + c as f32 + version))
        .collect()
}

/// Calls `load_or_build`, counting how often the build closure runs.
fn run(
    path: &Path,
    meta: &TeacherLogitsMeta,
    version: f32,
    calls: &Cell<usize>,
) -> (TeacherLogits, StoreOutcome) {
    TeacherLogits::load_or_build(path, meta, || {
        calls.set(calls.get() + 1);
        Ok::<_, std::io::Error>(fake_logits(meta, version))
    })
    .unwrap()
}

fn changed(meta: &TeacherLogitsMeta, field: &str) -> TeacherLogitsMeta {
    let mut m = meta.clone();
    match field {
        "teacher" => m.teacher.push_str("-v2"),
        "teacher_weights_sha256" => m.teacher_weights_sha256 = sha256_bytes(b"other weights"),
        "task" => m.task = "qnli".into(),
        "split" => m.split = "validation".into(),
        "tokenizer_sha256" => m.tokenizer_sha256 = sha256_bytes(b"other tokenizer"),
        "max_len" => m.max_len = 256,
        "dataset_rows_sha256" => m.dataset_rows_sha256 = sha256_bytes(b"other rows"),
        "num_examples" => m.num_examples = 9,
        "num_outputs" => m.num_outputs = 2,
        other => panic!("test does not know field {other}"),
    }
    m
}

/// Writes a safetensors file by hand, for cases the library refuses to produce.
fn write_raw(path: &Path, fields: &HashMap<String, String>, shape: [usize; 2], data: &[f32]) {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = TensorView::new(Dtype::F32, shape.to_vec(), &bytes).unwrap();
    let out = safetensors::serialize([(LOGITS_TENSOR_NAME, view)], Some(fields.clone())).unwrap();
    std::fs::write(path, out).unwrap();
}

fn fields_of(meta: &TeacherLogitsMeta, data: &[f32]) -> HashMap<String, String> {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut map: HashMap<String, String> = meta
        .to_fields()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    map.insert("logits_sha256".into(), sha256_bytes(&bytes));
    map
}

fn assert_unusable(outcome: &StoreOutcome, needle: &str) {
    match outcome {
        StoreOutcome::Rebuilt {
            reason: RebuildReason::Unusable { detail },
        } => assert!(
            detail.contains(needle),
            "detail {detail:?} lacks {needle:?}"
        ),
        other => panic!("expected Rebuilt(Unusable ~ {needle}), got {other:?}"),
    }
}

#[test]
fn build_then_reuse_without_recompute() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/dir/teacher_logits.safetensors");
    let meta = base_meta();
    let calls = Cell::new(0);

    let (built, outcome) = run(&path, &meta, 0.0, &calls);
    assert_eq!(outcome, StoreOutcome::Built);
    assert_eq!(calls.get(), 1);
    assert_eq!(built.as_slice(), fake_logits(&meta, 0.0).as_slice());
    assert!(path.exists());

    // A second run must not call the closure; the version offset would reveal a recompute.
    let (reused, outcome) = run(&path, &meta, 100.0, &calls);
    assert_eq!(outcome, StoreOutcome::Reused);
    assert_eq!(calls.get(), 1, "build closure must not run on reuse");
    assert_eq!(reused, built);
    assert_eq!(reused.meta(), &meta);

    // No temporary files are left beside the store.
    let names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["teacher_logits.safetensors".to_string()]);

    // The plain loader sees the same store.
    assert_eq!(TeacherLogits::load(&path).unwrap(), built);

    // Saving is deterministic: the same store gives the same bytes (stable file hashes).
    let copy = dir.path().join("copy.safetensors");
    built.save(&copy).unwrap();
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&path).unwrap());
}

#[test]
fn every_metadata_field_change_invalidates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("teacher_logits.safetensors");
    let meta = base_meta();
    let mut tested = Vec::new();
    for field in TeacherLogitsMeta::FIELDS {
        if field == "format_version" {
            continue; // covered by `format_version_change_invalidates`
        }
        TeacherLogits::new(meta.clone(), fake_logits(&meta, 0.0))
            .unwrap()
            .save(&path)
            .unwrap();
        let calls = Cell::new(0);
        let other = changed(&meta, field);
        let (store, outcome) = run(&path, &other, 1.0, &calls);
        assert_eq!(calls.get(), 1, "{field}: change must trigger a rebuild");
        match &outcome {
            StoreOutcome::Rebuilt {
                reason:
                    RebuildReason::MetadataMismatch {
                        field: f,
                        stored,
                        expected,
                    },
            } => {
                assert_eq!(*f, field);
                assert_ne!(stored.as_deref(), Some(expected.as_str()));
            }
            other => panic!("{field}: expected a metadata mismatch, got {other:?}"),
        }
        assert!(outcome_reason(&outcome).contains(field));
        assert_eq!(store.as_slice(), fake_logits(&other, 1.0).as_slice());
        // The file now holds the new metadata and is reused for it.
        let (_, again) = run(&path, &other, 2.0, &calls);
        assert_eq!(again, StoreOutcome::Reused, "{field}");
        assert_eq!(calls.get(), 1);
        tested.push(field);
    }
    assert_eq!(tested.len(), TeacherLogitsMeta::FIELDS.len() - 1);
}

fn outcome_reason(outcome: &StoreOutcome) -> String {
    match outcome {
        StoreOutcome::Rebuilt { reason } => reason.to_string(),
        other => format!("{other:?}"),
    }
}

#[test]
fn format_version_change_invalidates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.safetensors");
    let meta = base_meta();
    let data = fake_logits(&meta, 0.0);
    let old = TeacherLogitsMeta {
        format_version: TEACHER_LOGITS_FORMAT_VERSION + 1,
        ..meta.clone()
    };
    write_raw(&path, &fields_of(&old, &data), [7, 3], &data);
    let calls = Cell::new(0);
    let (_, outcome) = run(&path, &meta, 0.0, &calls);
    assert_eq!(calls.get(), 1);
    assert!(matches!(
        outcome,
        StoreOutcome::Rebuilt {
            reason: RebuildReason::MetadataMismatch {
                field: "format_version",
                ..
            }
        }
    ));
    // Requesting an unknown version is a caller error, not a rebuild.
    let err = TeacherLogits::load_or_build(&path, &old, || Ok::<_, std::io::Error>(data.clone()))
        .unwrap_err();
    assert!(matches!(
        err,
        DistillError::InvalidMeta {
            field: "format_version",
            ..
        }
    ));
}

#[test]
fn missing_metadata_key_invalidates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.safetensors");
    let meta = base_meta();
    let data = fake_logits(&meta, 0.0);
    let mut fields = fields_of(&meta, &data);
    fields.remove("tokenizer_sha256");
    write_raw(&path, &fields, [7, 3], &data);
    let calls = Cell::new(0);
    let (_, outcome) = run(&path, &meta, 0.0, &calls);
    assert_eq!(calls.get(), 1);
    assert!(matches!(
        outcome,
        StoreOutcome::Rebuilt {
            reason: RebuildReason::MetadataMismatch {
                field: "tokenizer_sha256",
                stored: None,
                ..
            }
        }
    ));
}

#[test]
fn truncated_and_corrupt_files_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.safetensors");
    let meta = base_meta();
    let good = || {
        TeacherLogits::new(meta.clone(), fake_logits(&meta, 0.0))
            .unwrap()
            .save(&path)
            .unwrap();
        std::fs::read(&path).unwrap()
    };
    let calls = Cell::new(0);

    // Truncated in the data region, in the header, and to nothing.
    let full = good();
    for keep in [full.len() - 5, full.len() / 2, 20, 3, 0] {
        good();
        std::fs::write(&path, &full[..keep]).unwrap();
        let before = calls.get();
        let (store, outcome) = run(&path, &meta, 0.0, &calls);
        assert_eq!(calls.get(), before + 1, "truncated to {keep} bytes");
        assert_unusable(&outcome, "truncated or corrupt");
        assert_eq!(store.as_slice(), fake_logits(&meta, 0.0).as_slice());
        // The rebuilt file is whole again.
        assert_eq!(std::fs::read(&path).unwrap(), full);
        // And the plain loader rejects a truncated copy with a typed error.
        std::fs::write(&path, &full[..keep]).unwrap();
        assert!(matches!(
            TeacherLogits::load(&path),
            Err(DistillError::InvalidStore { .. })
        ));
    }

    // A flipped bit in the data region keeps the header valid; the checksum catches it.
    let mut flipped = good();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    std::fs::write(&path, &flipped).unwrap();
    let (_, outcome) = run(&path, &meta, 0.0, &calls);
    assert_unusable(&outcome, "checksum");

    // Tensor shape disagreeing with the metadata.
    let data = fake_logits(&meta, 0.0);
    write_raw(&path, &fields_of(&meta, &data), [3, 7], &data);
    let (_, outcome) = run(&path, &meta, 0.0, &calls);
    assert_unusable(&outcome, "shape");

    // Non-finite stored values.
    let mut nan = data.clone();
    nan[4] = f32::NAN;
    write_raw(&path, &fields_of(&meta, &nan), [7, 3], &nan);
    let (_, outcome) = run(&path, &meta, 0.0, &calls);
    assert_unusable(&outcome, "non-finite");

    // Not a safetensors file at all.
    std::fs::write(&path, b"definitely not safetensors").unwrap();
    let (_, outcome) = run(&path, &meta, 0.0, &calls);
    assert_unusable(&outcome, "truncated or corrupt");
}

#[test]
fn lookup_by_shuffled_indices_returns_the_right_rows() {
    let meta = base_meta();
    let store = TeacherLogits::new(meta.clone(), fake_logits(&meta, 0.5)).unwrap();
    let device = Default::default();
    let indices = [5usize, 0, 6, 2, 2, 3];
    let batch = store.lookup::<B>(&indices, &device).unwrap();
    assert_eq!(batch.dims(), [indices.len(), 3]);
    let got = batch.into_data().to_vec::<f32>().unwrap();
    for (pos, &i) in indices.iter().enumerate() {
        for c in 0..3 {
            assert_eq!(got[pos * 3 + c], i as f32 * 10.0 + c as f32 + 0.5);
        }
        assert_eq!(&got[pos * 3..pos * 3 + 3], store.row(i).unwrap());
    }
}

#[test]
fn lookup_rejects_out_of_range_and_empty() {
    let meta = base_meta();
    let store = TeacherLogits::new(meta.clone(), fake_logits(&meta, 0.0)).unwrap();
    let device = Default::default();
    let err = store.lookup::<B>(&[1, 7, 2], &device).unwrap_err();
    assert!(
        matches!(
            err,
            DistillError::IndexOutOfRange {
                index: 7,
                position: 1,
                num_examples: 7
            }
        ),
        "{err}"
    );
    assert!(matches!(
        store.lookup::<B>(&[], &device),
        Err(DistillError::EmptyLookup)
    ));
    assert!(store.row(7).is_none());
    assert!(store.row(usize::MAX).is_none());
}

#[test]
fn bad_builds_are_errors_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.safetensors");
    let meta = base_meta();

    let err = TeacherLogits::load_or_build(&path, &meta, || {
        Err::<Vec<f32>, _>(std::io::Error::other("teacher exploded"))
    })
    .unwrap_err();
    assert!(matches!(err, DistillError::Build(_)));
    assert!(err.to_string().contains("teacher exploded"));
    assert!(!path.exists());

    let err = TeacherLogits::load_or_build(&path, &meta, || Ok::<_, std::io::Error>(vec![0.0; 5]))
        .unwrap_err();
    assert!(
        matches!(
            err,
            DistillError::BuildLength {
                expected: 21,
                got: 5,
                ..
            }
        ),
        "{err}"
    );
    assert!(!path.exists());

    let mut data = fake_logits(&meta, 0.0);
    data[3 * 3 + 1] = f32::INFINITY;
    let err = TeacherLogits::load_or_build(&path, &meta, || Ok::<_, std::io::Error>(data.clone()))
        .unwrap_err();
    assert!(
        matches!(
            err,
            DistillError::NonFinite {
                example: 3,
                output: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(!path.exists());

    let empty = TeacherLogitsMeta {
        num_outputs: 0,
        ..meta.clone()
    };
    let err = TeacherLogits::load_or_build(&path, &empty, || Ok::<_, std::io::Error>(vec![]))
        .unwrap_err();
    assert!(matches!(
        err,
        DistillError::InvalidMeta {
            field: "num_outputs",
            ..
        }
    ));
}

#[test]
fn metadata_round_trips_through_fields_and_serde() {
    let meta = base_meta();
    let map: HashMap<String, String> = meta
        .to_fields()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(TeacherLogitsMeta::from_fields(&map).unwrap(), meta);
    let json = serde_json::to_string(&meta).unwrap();
    assert_eq!(
        serde_json::from_str::<TeacherLogitsMeta>(&json).unwrap(),
        meta
    );
    let mut bad = map.clone();
    bad.insert("max_len".into(), "long".into());
    assert!(
        TeacherLogitsMeta::from_fields(&bad)
            .unwrap_err()
            .contains("max_len")
    );
}
