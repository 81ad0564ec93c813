//! The teacher-logit store: teacher outputs for every training example, computed once and
//! reused by later runs while everything that determines them is unchanged.
//!
//! File format: a safetensors file holding one `F32` tensor `logits` of shape
//! `[num_examples, num_outputs]` (row `i` = example index `i`), with every field of
//! [`TeacherLogitsMeta`] as a string in the safetensors `__metadata__`, plus
//! `logits_sha256`, a checksum of the tensor bytes that catches corruption a well-formed header
//! would hide. Python reads it with `safetensors.safe_open(path, "pt")`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use safetensors::tensor::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::DistillError;
use crate::hash::sha256_bytes;

/// Version of the on-disk layout written by this crate; part of the metadata, so a layout
/// change invalidates old files instead of misreading them.
pub const TEACHER_LOGITS_FORMAT_VERSION: u32 = 1;

/// Name of the logits tensor inside the safetensors file.
pub const LOGITS_TENSOR_NAME: &str = "logits";

const CHECKSUM_KEY: &str = "logits_sha256";

/// Everything that determines the teacher logits. A stored file is reused only when every
/// field equals the requested value.
///
/// Build it with struct-update syntax so that `format_version` takes the current value:
/// `TeacherLogitsMeta { teacher: "...".into(), ..Default::default() }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeacherLogitsMeta {
    /// Layout version, [`TEACHER_LOGITS_FORMAT_VERSION`] for files written by this crate.
    pub format_version: u32,
    /// Human-readable teacher identity (hub id or folder, architecture).
    pub teacher: String,
    /// SHA-256 (hex) of the teacher weights file(s).
    pub teacher_weights_sha256: String,
    /// Task name, e.g. `sst2`.
    pub task: String,
    /// Dataset split the rows come from, e.g. `train`.
    pub split: String,
    /// SHA-256 (hex) of the tokenizer definition (e.g. `tokenizer.json`).
    pub tokenizer_sha256: String,
    /// Maximum sequence length used when tokenizing.
    pub max_len: usize,
    /// SHA-256 (hex) of the dataset rows, in example-index order.
    pub dataset_rows_sha256: String,
    /// Number of examples (rows of the logits tensor).
    pub num_examples: usize,
    /// Teacher outputs per example (columns): number of classes, or 1 for regression.
    pub num_outputs: usize,
}

impl Default for TeacherLogitsMeta {
    fn default() -> Self {
        Self {
            format_version: TEACHER_LOGITS_FORMAT_VERSION,
            teacher: String::new(),
            teacher_weights_sha256: String::new(),
            task: String::new(),
            split: String::new(),
            tokenizer_sha256: String::new(),
            max_len: 0,
            dataset_rows_sha256: String::new(),
            num_examples: 0,
            num_outputs: 0,
        }
    }
}

impl TeacherLogitsMeta {
    /// Names of the metadata fields, in the order they are compared.
    pub const FIELDS: [&'static str; 10] = [
        "format_version",
        "teacher",
        "teacher_weights_sha256",
        "task",
        "split",
        "tokenizer_sha256",
        "max_len",
        "dataset_rows_sha256",
        "num_examples",
        "num_outputs",
    ];

    /// Each field as `(name, value as string)`, the form stored in `__metadata__`.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let values = [
            self.format_version.to_string(),
            self.teacher.clone(),
            self.teacher_weights_sha256.clone(),
            self.task.clone(),
            self.split.clone(),
            self.tokenizer_sha256.clone(),
            self.max_len.to_string(),
            self.dataset_rows_sha256.clone(),
            self.num_examples.to_string(),
            self.num_outputs.to_string(),
        ];
        Self::FIELDS.into_iter().zip(values).collect()
    }

    /// Parses the metadata stored in a file; names the missing or malformed key on failure.
    pub fn from_fields(map: &HashMap<String, String>) -> Result<Self, String> {
        let get = |key: &str| {
            map.get(key)
                .cloned()
                .ok_or_else(|| format!("metadata key `{key}` is missing"))
        };
        let num = |key: &str| -> Result<usize, String> {
            let v = get(key)?;
            v.parse()
                .map_err(|_| format!("metadata key `{key}` = {v:?} is not an integer"))
        };
        let format_version = {
            let v = get("format_version")?;
            v.parse()
                .map_err(|_| format!("metadata key `format_version` = {v:?} is not an integer"))?
        };
        Ok(Self {
            format_version,
            teacher: get("teacher")?,
            teacher_weights_sha256: get("teacher_weights_sha256")?,
            task: get("task")?,
            split: get("split")?,
            tokenizer_sha256: get("tokenizer_sha256")?,
            max_len: num("max_len")?,
            dataset_rows_sha256: get("dataset_rows_sha256")?,
            num_examples: num("num_examples")?,
            num_outputs: num("num_outputs")?,
        })
    }

    /// Checks the fields a store cannot work without: at least one example and one output,
    /// and the current format version.
    pub fn validate(&self) -> Result<(), DistillError> {
        if self.format_version != TEACHER_LOGITS_FORMAT_VERSION {
            return Err(DistillError::InvalidMeta {
                field: "format_version",
                reason: format!(
                    "{} is not the version this crate writes ({TEACHER_LOGITS_FORMAT_VERSION})",
                    self.format_version
                ),
            });
        }
        if self.num_examples == 0 {
            return Err(DistillError::InvalidMeta {
                field: "num_examples",
                reason: "must be >= 1".to_string(),
            });
        }
        if self.num_outputs == 0 {
            return Err(DistillError::InvalidMeta {
                field: "num_outputs",
                reason: "must be >= 1".to_string(),
            });
        }
        if self.num_examples.checked_mul(self.num_outputs).is_none() {
            return Err(DistillError::InvalidMeta {
                field: "num_examples",
                reason: "num_examples * num_outputs overflows".to_string(),
            });
        }
        Ok(())
    }
}

/// What [`TeacherLogits::load_or_build`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOutcome {
    /// The stored file matched and was used; the build closure was not called.
    Reused,
    /// No file existed; logits were computed and written.
    Built,
    /// A file existed but could not be used; logits were recomputed and the file replaced.
    Rebuilt {
        /// Why the stored file was rejected.
        reason: RebuildReason,
    },
}

/// Why a stored teacher-logit file was not reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebuildReason {
    /// A metadata field differs from the requested value (or is missing from the file).
    MetadataMismatch {
        /// Field name, one of [`TeacherLogitsMeta::FIELDS`].
        field: &'static str,
        /// Value in the file, `None` when the key is absent.
        stored: Option<String>,
        /// Value requested.
        expected: String,
    },
    /// The file is unreadable, truncated or corrupt, or its tensor disagrees with its metadata.
    Unusable {
        /// What was wrong.
        detail: String,
    },
}

impl fmt::Display for RebuildReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MetadataMismatch {
                field,
                stored: Some(stored),
                expected,
            } => write!(
                f,
                "metadata `{field}` differs: stored {stored:?}, expected {expected:?}"
            ),
            Self::MetadataMismatch {
                field,
                stored: None,
                expected,
            } => write!(
                f,
                "metadata `{field}` missing from file (expected {expected:?})"
            ),
            Self::Unusable { detail } => write!(f, "file unusable: {detail}"),
        }
    }
}

/// Teacher logits `[num_examples, num_outputs]` in f32, looked up by example index.
#[derive(Debug, Clone, PartialEq)]
pub struct TeacherLogits {
    meta: TeacherLogitsMeta,
    logits: Vec<f32>,
}

impl TeacherLogits {
    /// Wraps row-major logits (`num_examples * num_outputs` values, row `i` = example `i`),
    /// checking the metadata, the length and that every value is finite.
    pub fn new(meta: TeacherLogitsMeta, logits: Vec<f32>) -> Result<Self, DistillError> {
        meta.validate()?;
        let expected = meta.num_examples * meta.num_outputs;
        if logits.len() != expected {
            return Err(DistillError::BuildLength {
                expected,
                got: logits.len(),
                num_examples: meta.num_examples,
                num_outputs: meta.num_outputs,
            });
        }
        if let Some(pos) = logits.iter().position(|v| !v.is_finite()) {
            return Err(DistillError::NonFinite {
                example: pos / meta.num_outputs,
                output: pos % meta.num_outputs,
                value: logits[pos],
            });
        }
        Ok(Self { meta, logits })
    }

    /// The metadata the logits were computed under.
    pub fn meta(&self) -> &TeacherLogitsMeta {
        &self.meta
    }

    /// Number of examples (rows).
    pub fn num_examples(&self) -> usize {
        self.meta.num_examples
    }

    /// Outputs per example (columns).
    pub fn num_outputs(&self) -> usize {
        self.meta.num_outputs
    }

    /// All logits, row-major.
    pub fn as_slice(&self) -> &[f32] {
        &self.logits
    }

    /// The logits of one example, `None` when out of range.
    pub fn row(&self, index: usize) -> Option<&[f32]> {
        let c = self.meta.num_outputs;
        let start = index.checked_mul(c)?;
        self.logits.get(start..start.checked_add(c)?)
    }

    /// Gathers the rows of `indices` (example indices, in batch order, repeats allowed) into a
    /// `[indices.len(), num_outputs]` tensor on `device`. Only the batch's rows are copied to
    /// the device.
    pub fn lookup<B: Backend>(
        &self,
        indices: &[usize],
        device: &B::Device,
    ) -> Result<Tensor<B, 2>, DistillError> {
        if indices.is_empty() {
            return Err(DistillError::EmptyLookup);
        }
        let c = self.meta.num_outputs;
        let mut batch = Vec::with_capacity(indices.len() * c);
        for (position, &index) in indices.iter().enumerate() {
            let row = self.row(index).ok_or(DistillError::IndexOutOfRange {
                index,
                position,
                num_examples: self.meta.num_examples,
            })?;
            batch.extend_from_slice(row);
        }
        Ok(Tensor::from_data(
            TensorData::new(batch, [indices.len(), c]),
            device,
        ))
    }

    /// Writes the store atomically (temporary file in the same folder, then rename), creating
    /// the parent folder if needed.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), DistillError> {
        write_atomic(path.as_ref(), &self.to_safetensors_bytes())
    }

    /// The store as safetensors bytes. The header is written here rather than by
    /// `safetensors::serialize` because that takes a `HashMap` for `__metadata__`, whose
    /// iteration order would make identical stores differ byte for byte; keys are sorted here.
    fn to_safetensors_bytes(&self) -> Vec<u8> {
        let data: Vec<u8> = self.logits.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut info: std::collections::BTreeMap<String, String> = self
            .meta
            .to_fields()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        info.insert(CHECKSUM_KEY.to_string(), sha256_bytes(&data));
        let header = serde_json::json!({
            "__metadata__": info,
            LOGITS_TENSOR_NAME: {
                "dtype": "F32",
                "shape": [self.meta.num_examples, self.meta.num_outputs],
                "data_offsets": [0, data.len()],
            },
        });
        let mut header = header.to_string().into_bytes();
        // The format pads the header with spaces so that the data starts 8-byte aligned.
        header.resize(header.len().next_multiple_of(8), b' ');
        let mut out = Vec::with_capacity(8 + header.len() + data.len());
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&data);
        out
    }

    /// Reads and fully checks a store (header, tensor shape against the metadata, checksum,
    /// finite values) without comparing it to any expected metadata.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, DistillError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| DistillError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (meta, logits) = parse(&bytes).map_err(|reason| DistillError::InvalidStore {
            path: path.to_path_buf(),
            reason,
        })?;
        Self::new(meta, logits).map_err(|e| DistillError::InvalidStore {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Returns the logits stored at `path` when the file is intact and its metadata equals
    /// `meta` in every field; otherwise calls `build` (which must return the logits row-major,
    /// `num_examples * num_outputs` values in example-index order; `rows.concat()` of
    /// per-example rows will do), writes them to `path` and returns them.
    ///
    /// Every decision is logged (`tracing`): reuse and first build at info level, a rebuild at
    /// warn level with the reason. A mismatching or corrupt file is never used.
    pub fn load_or_build<E>(
        path: impl AsRef<Path>,
        meta: &TeacherLogitsMeta,
        build: impl FnOnce() -> Result<Vec<f32>, E>,
    ) -> Result<(Self, StoreOutcome), DistillError>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        let path = path.as_ref();
        meta.validate()?;
        let outcome = match std::fs::read(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(
                    path = %path.display(),
                    task = %meta.task,
                    split = %meta.split,
                    "no teacher-logit file; computing teacher logits"
                );
                StoreOutcome::Built
            }
            Err(e) => rebuild_outcome(
                path,
                RebuildReason::Unusable {
                    detail: format!("cannot read: {e}"),
                },
            ),
            Ok(bytes) => match check_stored(&bytes, meta) {
                Ok(logits) => {
                    tracing::info!(
                        path = %path.display(),
                        task = %meta.task,
                        split = %meta.split,
                        num_examples = meta.num_examples,
                        "reusing stored teacher logits"
                    );
                    let store = Self {
                        meta: meta.clone(),
                        logits,
                    };
                    return Ok((store, StoreOutcome::Reused));
                }
                Err(reason) => rebuild_outcome(path, reason),
            },
        };
        let logits = build().map_err(|e| DistillError::Build(e.into()))?;
        let store = Self::new(meta.clone(), logits)?;
        store.save(path)?;
        tracing::info!(path = %path.display(), "teacher logits written");
        Ok((store, outcome))
    }
}

fn rebuild_outcome(path: &Path, reason: RebuildReason) -> StoreOutcome {
    tracing::warn!(
        path = %path.display(),
        %reason,
        "stored teacher logits rejected; recomputing"
    );
    StoreOutcome::Rebuilt { reason }
}

/// Checks a file's bytes against the expected metadata; returns the logits or why they
/// cannot be used.
fn check_stored(bytes: &[u8], expected: &TeacherLogitsMeta) -> Result<Vec<f32>, RebuildReason> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| RebuildReason::Unusable {
        detail: format!("not a complete safetensors file (truncated or corrupt): {e}"),
    })?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| RebuildReason::Unusable {
        detail: e.to_string(),
    })?;
    let empty = HashMap::new();
    let stored = header.metadata().as_ref().unwrap_or(&empty);
    for (field, value) in expected.to_fields() {
        let found = stored.get(field);
        if found != Some(&value) {
            return Err(RebuildReason::MetadataMismatch {
                field,
                stored: found.cloned(),
                expected: value,
            });
        }
    }
    let logits = read_logits(&st, stored, expected.num_examples, expected.num_outputs)
        .map_err(|detail| RebuildReason::Unusable { detail })?;
    if let Some(pos) = logits.iter().position(|v| !v.is_finite()) {
        return Err(RebuildReason::Unusable {
            detail: format!("non-finite logit at flat position {pos}"),
        });
    }
    Ok(logits)
}

fn parse(bytes: &[u8]) -> Result<(TeacherLogitsMeta, Vec<f32>), String> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| format!("not a complete safetensors file (truncated or corrupt): {e}"))?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let empty = HashMap::new();
    let stored = header.metadata().as_ref().unwrap_or(&empty);
    let meta = TeacherLogitsMeta::from_fields(stored)?;
    let logits = read_logits(&st, stored, meta.num_examples, meta.num_outputs)?;
    Ok((meta, logits))
}

fn read_logits(
    st: &SafeTensors<'_>,
    stored: &HashMap<String, String>,
    num_examples: usize,
    num_outputs: usize,
) -> Result<Vec<f32>, String> {
    let view = st
        .tensor(LOGITS_TENSOR_NAME)
        .map_err(|e| format!("tensor `{LOGITS_TENSOR_NAME}`: {e}"))?;
    if view.dtype() != Dtype::F32 {
        return Err(format!(
            "tensor `{LOGITS_TENSOR_NAME}` has dtype {:?}, expected F32",
            view.dtype()
        ));
    }
    if view.shape() != [num_examples, num_outputs] {
        return Err(format!(
            "tensor `{LOGITS_TENSOR_NAME}` has shape {:?}, metadata says [{num_examples}, {num_outputs}]",
            view.shape()
        ));
    }
    let data = view.data();
    let checksum = sha256_bytes(data);
    match stored.get(CHECKSUM_KEY) {
        Some(c) if *c == checksum => {}
        Some(_) => {
            return Err(format!(
                "checksum `{CHECKSUM_KEY}` does not match the tensor bytes"
            ));
        }
        None => return Err(format!("metadata key `{CHECKSUM_KEY}` is missing")),
    }
    Ok(data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Writes `bytes` with [`kdlora_schema::write_atomic`] (parent folders created): readers see
/// either the old or the new file, never a partial one.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DistillError> {
    let io_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| DistillError::Io { path: p, source }
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    kdlora_schema::write_atomic(path, bytes).map_err(io_err(path))
}
