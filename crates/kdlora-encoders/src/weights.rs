//! Hugging Face `model.safetensors` in and out: reading tensors into f32, resolving names with or
//! without the base-model prefix, building Burn layers with shape checks, and writing checkpoints.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::{Tensor, TensorData};
use kdlora_lora::LoraLinear;
use kdlora_lora::LoraOps;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::{Dtype, SafeTensors};

use crate::error::{EncoderError, TensorProblem};

/// Name of the single-file weights in a Hugging Face checkpoint folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Name of the index of a sharded safetensors checkpoint.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
/// Pickle weight files that are recognised (and refused).
const PICKLE_FILES: [&str; 4] = ["pytorch_model.bin", "model.bin", "model.pt", "model.pth"];

/// One tensor read from a checkpoint, converted to f32, in Hugging Face layout.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTensor {
    /// Shape as stored.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// All tensors of a checkpoint by name, with a record of which ones the model used.
#[derive(Debug, Clone)]
pub struct WeightMap {
    source: PathBuf,
    tensors: BTreeMap<String, StoredTensor>,
    /// Tensors of other dtypes (integer buffers such as `position_ids`): name -> dtype. They are an
    /// error only if the model asks for one.
    others: BTreeMap<String, String>,
    used: BTreeSet<String>,
}

impl WeightMap {
    /// Reads the weights of a checkpoint folder: `model.safetensors`, or the shards listed in
    /// `model.safetensors.index.json`. Pickle-only folders are refused.
    pub fn from_dir(dir: &Path) -> Result<Self, EncoderError> {
        let single = dir.join(WEIGHTS_FILE);
        if single.is_file() {
            return Self::from_file(&single);
        }
        let index = dir.join(WEIGHTS_INDEX_FILE);
        if index.is_file() {
            return Self::from_index(dir, &index);
        }
        let pickles: Vec<String> = std::fs::read_dir(dir)
            .map_err(|source| io_error(dir, source))?
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| {
                PICKLE_FILES.contains(&name.as_str())
                    || (name.starts_with("pytorch_model-") && name.ends_with(".bin"))
            })
            .collect();
        if !pickles.is_empty() {
            return Err(EncoderError::PickleCheckpoint {
                dir: dir.to_path_buf(),
                files: pickles,
            });
        }
        Err(EncoderError::MissingFile {
            path: single,
            hint: "the checkpoint's weights in safetensors format".into(),
        })
    }

    /// Reads one safetensors file.
    pub fn from_file(path: &Path) -> Result<Self, EncoderError> {
        let bytes = std::fs::read(path).map_err(|source| io_error(path, source))?;
        let mut map = Self {
            source: path.to_path_buf(),
            tensors: BTreeMap::new(),
            others: BTreeMap::new(),
            used: BTreeSet::new(),
        };
        map.add_bytes(&bytes, path)?;
        Ok(map)
    }

    fn from_index(dir: &Path, index: &Path) -> Result<Self, EncoderError> {
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let text = std::fs::read_to_string(index).map_err(|source| io_error(index, source))?;
        let parsed: Index = serde_json::from_str(&text).map_err(|err| EncoderError::Json {
            path: index.to_path_buf(),
            message: err.to_string(),
        })?;
        let shards: BTreeSet<&String> = parsed.weight_map.values().collect();
        let mut map = Self {
            source: dir.to_path_buf(),
            tensors: BTreeMap::new(),
            others: BTreeMap::new(),
            used: BTreeSet::new(),
        };
        for shard in shards {
            let path = dir.join(shard);
            let bytes = std::fs::read(&path).map_err(|source| io_error(&path, source))?;
            map.add_bytes(&bytes, &path)?;
        }
        Ok(map)
    }

    fn add_bytes(&mut self, bytes: &[u8], path: &Path) -> Result<(), EncoderError> {
        let file = SafeTensors::deserialize(bytes).map_err(|err| EncoderError::Safetensors {
            path: path.to_path_buf(),
            message: err.to_string(),
        })?;
        for (name, view) in file.iter() {
            let Some(data) = to_f32(view.dtype(), view.data()) else {
                self.others
                    .insert(name.to_string(), format!("{:?}", view.dtype()));
                continue;
            };
            self.tensors.insert(
                name.to_string(),
                StoredTensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        Ok(())
    }

    /// Builds a map from tensors already in memory (tests, conversions).
    pub fn from_tensors(source: PathBuf, tensors: BTreeMap<String, StoredTensor>) -> Self {
        Self {
            source,
            tensors,
            others: BTreeMap::new(),
            used: BTreeSet::new(),
        }
    }

    /// The file (or folder, for sharded checkpoints) the tensors came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The stored tensor named exactly `key`, without marking it used.
    pub fn get(&self, key: &str) -> Option<&StoredTensor> {
        self.tensors.get(key)
    }

    /// Every float tensor name in the checkpoint (integer buffers are not listed).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Every stored tensor name, float or not.
    pub(crate) fn all_keys(&self) -> impl Iterator<Item = &str> {
        self.tensors
            .keys()
            .chain(self.others.keys())
            .map(String::as_str)
    }

    /// How many float values the checkpoint holds.
    pub(crate) fn num_values(&self) -> usize {
        self.tensors.values().map(|t| t.data.len()).sum()
    }

    /// Whether the checkpoint stores `key` exactly (in any dtype).
    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key) || self.others.contains_key(key)
    }

    /// The dtype of a stored tensor that is not a float (and so cannot be loaded), if `key` is one.
    pub fn non_float_dtype(&self, key: &str) -> Option<&str> {
        self.others.get(key).map(String::as_str)
    }

    /// The stored name for the Hugging Face name `key` of the full model: `key` itself, or `key`
    /// without its `prefix.` (checkpoints of the bare encoder), or with it (the reverse).
    pub fn resolve(&self, key: &str, prefix: &str) -> Option<String> {
        if self.contains(key) {
            return Some(key.to_string());
        }
        if prefix.is_empty() {
            return None;
        }
        let dotted = format!("{prefix}.");
        let alternative = match key.strip_prefix(&dotted) {
            Some(stripped) => stripped.to_string(),
            None => format!("{dotted}{key}"),
        };
        self.contains(&alternative).then_some(alternative)
    }

    /// Marks a stored tensor as used and returns it.
    pub fn take(&mut self, stored_key: &str) -> Option<&StoredTensor> {
        if self.contains(stored_key) {
            self.used.insert(stored_key.to_string());
        }
        self.tensors.get(stored_key)
    }

    /// Stored tensors nobody took, in name order.
    pub fn unused(&self) -> Vec<String> {
        let mut unused: Vec<String> = self
            .tensors
            .keys()
            .chain(self.others.keys())
            .filter(|key| !self.used.contains(*key))
            .cloned()
            .collect();
        unused.sort();
        unused
    }
}

fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        // Narrowing f64 is lossless enough for weights and lets converted checkpoints load.
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("chunk of 8")) as f32)
            .collect(),
        _ => return None,
    })
}

/// What loading a checkpoint did: tensors used, head modules created fresh, tensors left over.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// The weights file (or folder, for sharded checkpoints).
    pub source: PathBuf,
    /// Hugging Face names (full model) of the tensors loaded from the checkpoint.
    pub loaded: Vec<String>,
    /// Module paths that the checkpoint lacks and that were freshly initialised (the task head,
    /// and BERT's pooler when the checkpoint has none).
    pub initialised: Vec<String>,
    /// Tensors in the checkpoint the model does not use (a pretraining head, for example).
    pub unused: Vec<String>,
    /// Known non-parameter buffers that are skipped silently (`embeddings.position_ids`).
    pub ignored: Vec<String>,
}

/// Builds Burn layers from a [`WeightMap`], checking every shape and collecting every problem, so
/// that one error names all missing and mis-shaped tensors.
///
/// Module paths are Hugging Face paths of the full `*ForSequenceClassification` model; stored names
/// with or without the base-model prefix are both found.
pub struct ModuleLoader<'a, B: LoraOps> {
    weights: &'a mut WeightMap,
    prefix: String,
    device: B::Device,
    problems: Vec<TensorProblem>,
    report: LoadReport,
    rng: StdRng,
    init_std: f64,
    fresh_head: bool,
    /// Initialise every tensor the weights lack instead of reporting it missing.
    synthesize: bool,
    /// Log the freshly initialised modules at debug level only (the caller replaces them).
    head_supplied: bool,
}

impl<'a, B: LoraOps> ModuleLoader<'a, B> {
    /// A loader over `weights` for a model whose base-model prefix is `prefix` (`bert`, ...).
    /// Fresh modules are drawn from N(0, `init_std`) with `seed`; with `fresh_head`, head modules
    /// are always initialised fresh even when the checkpoint has them.
    pub fn new(
        weights: &'a mut WeightMap,
        prefix: &str,
        device: &B::Device,
        init_std: f64,
        seed: u64,
        fresh_head: bool,
    ) -> Self {
        let report = LoadReport {
            source: weights.source().to_path_buf(),
            ..LoadReport::default()
        };
        Self {
            weights,
            prefix: prefix.to_string(),
            device: device.clone(),
            problems: Vec::new(),
            report,
            rng: StdRng::seed_from_u64(seed),
            init_std,
            fresh_head,
            synthesize: false,
            head_supplied: false,
        }
    }

    /// A loader whose caller supplies the head afterwards (a PEFT adapter's `modules_to_save`):
    /// the modules it initialises fresh are reported as usual but logged at debug level only,
    /// since an info line would read as if the trained head were lost.
    pub fn head_supplied(mut self, supplied: bool) -> Self {
        self.head_supplied = supplied;
        self
    }

    /// A loader that initialises every tensor the weights lack as transformers does for a model
    /// built from its config (weights normal with std `init_std`, biases zero, LayerNorm one/zero),
    /// for models created without a checkpoint.
    pub fn synthesizing(mut self) -> Self {
        self.synthesize = true;
        self
    }

    /// The device tensors are created on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// Reads `key` with the `expected` Hugging Face shape; records a problem and returns zeros when
    /// it is missing or mis-shaped (so that building continues and every problem gets reported).
    pub fn tensor_data(&mut self, key: &str, expected: &[usize]) -> Vec<f32> {
        let numel = expected.iter().product();
        let Some(stored_key) = self.weights.resolve(key, &self.prefix) else {
            if self.synthesize {
                self.report.initialised.push(key.to_string());
                if key.ends_with(".bias") {
                    return vec![0.0; numel];
                }
                return (0..numel)
                    .map(|_| normal(&mut self.rng, self.init_std))
                    .collect();
            }
            self.problems.push(TensorProblem::Missing {
                key: key.to_string(),
                expected: expected.to_vec(),
            });
            return vec![0.0; numel];
        };
        if let Some(dtype) = self.weights.non_float_dtype(&stored_key) {
            self.problems.push(TensorProblem::UnsupportedDtype {
                key: stored_key.clone(),
                dtype: dtype.to_string(),
            });
            self.weights.take(&stored_key);
            return vec![0.0; numel];
        }
        let tensor = self
            .weights
            .take(&stored_key)
            .expect("resolved float tensor");
        if tensor.shape != expected {
            self.problems.push(TensorProblem::ShapeMismatch {
                key: stored_key,
                expected: expected.to_vec(),
                found: tensor.shape.clone(),
            });
            return vec![0.0; numel];
        }
        let data = tensor.data.clone();
        self.report.loaded.push(key.to_string());
        data
    }

    /// A 1-D parameter `key` of length `n`.
    pub fn vector(&mut self, key: &str, n: usize) -> Param<Tensor<B, 1>> {
        let data = self.tensor_data(key, &[n]);
        Param::from_tensor(Tensor::from_data(TensorData::new(data, [n]), &self.device))
    }

    /// A 2-D parameter `key` of Hugging Face shape `[rows, cols]`, kept in that layout.
    pub fn matrix(&mut self, key: &str, rows: usize, cols: usize) -> Param<Tensor<B, 2>> {
        let data = self.tensor_data(key, &[rows, cols]);
        Param::from_tensor(Tensor::from_data(
            TensorData::new(data, [rows, cols]),
            &self.device,
        ))
    }

    /// The linear projection at module path `path` (`path.weight` `[d_out, d_in]`, `path.bias`).
    pub fn linear(&mut self, path: &str, d_in: usize, d_out: usize, bias: bool) -> LoraLinear<B> {
        let weight = self.tensor_data(&format!("{path}.weight"), &[d_out, d_in]);
        let bias = bias.then(|| self.vector(&format!("{path}.bias"), d_out));
        self.make_linear(weight, d_in, d_out, bias)
    }

    fn make_linear(
        &self,
        weight_out_in: Vec<f32>,
        d_in: usize,
        d_out: usize,
        bias: Option<Param<Tensor<B, 1>>>,
    ) -> LoraLinear<B> {
        // Burn computes x W with W as [d_in, d_out]: the transpose of the stored [out, in].
        let weight = transpose(&weight_out_in, d_out, d_in);
        LoraLinear::from_linear(Linear {
            weight: Param::from_tensor(Tensor::from_data(
                TensorData::new(weight, [d_in, d_out]),
                &self.device,
            )),
            bias,
        })
    }

    /// A head projection: loaded when the checkpoint has it, freshly initialised (normal weights
    /// with std `init_std`, zero bias, as transformers does) when it has none of its tensors.
    pub fn head_linear(&mut self, path: &str, d_in: usize, d_out: usize) -> LoraLinear<B> {
        self.linear_or_fresh(path, d_in, d_out, self.fresh_head)
    }

    /// A base-model projection that some checkpoints lack (BERT's pooler): loaded when present,
    /// freshly initialised like [`ModuleLoader::head_linear`] otherwise, but never replaced.
    pub fn optional_linear(&mut self, path: &str, d_in: usize, d_out: usize) -> LoraLinear<B> {
        self.linear_or_fresh(path, d_in, d_out, false)
    }

    fn linear_or_fresh(
        &mut self,
        path: &str,
        d_in: usize,
        d_out: usize,
        fresh: bool,
    ) -> LoraLinear<B> {
        let weight_key = format!("{path}.weight");
        let bias_key = format!("{path}.bias");
        let present: Vec<String> = [&weight_key, &bias_key]
            .iter()
            .filter_map(|key| self.weights.resolve(key, &self.prefix))
            .collect();
        if !present.is_empty() && !fresh {
            return self.linear(path, d_in, d_out, true);
        }
        for key in &present {
            // Replaced on purpose: not "unused".
            self.weights.take(key);
        }
        let weight: Vec<f32> = (0..d_in * d_out)
            .map(|_| normal(&mut self.rng, self.init_std))
            .collect();
        let bias = Param::from_tensor(Tensor::zeros([d_out], &self.device));
        self.report.initialised.push(path.to_string());
        self.make_linear(weight, d_in, d_out, Some(bias))
    }

    /// The embedding table at `path` (`path.weight` `[n, d]`).
    pub fn embedding(&mut self, path: &str, n: usize, d: usize) -> Embedding<B> {
        Embedding {
            weight: self.matrix(&format!("{path}.weight"), n, d),
        }
    }

    /// The LayerNorm at `path` (`path.weight` and `path.bias`, or the legacy `gamma`/`beta`).
    pub fn layer_norm(&mut self, path: &str, d: usize, eps: f64) -> LayerNorm<B> {
        let mut norm = LayerNormConfig::new(d)
            .with_epsilon(eps)
            .init::<B>(&self.device);
        if self.synthesize && !self.has_module(path) {
            // LayerNormConfig already initialises gamma to one and beta to zero.
            self.report.initialised.push(path.to_string());
            return norm;
        }
        let legacy = |name: &str| format!("{path}.{name}");
        let weight_key = if self
            .weights
            .resolve(&legacy("weight"), &self.prefix)
            .is_none()
            && self
                .weights
                .resolve(&legacy("gamma"), &self.prefix)
                .is_some()
        {
            legacy("gamma")
        } else {
            legacy("weight")
        };
        let bias_key = if self
            .weights
            .resolve(&legacy("bias"), &self.prefix)
            .is_none()
            && self
                .weights
                .resolve(&legacy("beta"), &self.prefix)
                .is_some()
        {
            legacy("beta")
        } else {
            legacy("bias")
        };
        norm.gamma = self.vector(&weight_key, d);
        norm.beta = Some(self.vector(&bias_key, d));
        norm
    }

    /// Whether the checkpoint has any tensor under module path `path`.
    pub fn has_module(&self, path: &str) -> bool {
        let dotted = format!("{path}.");
        let alternative = path
            .strip_prefix(&format!("{}.", self.prefix))
            .map(|p| format!("{p}."));
        self.weights.keys().any(|key| {
            key.starts_with(&dotted)
                || alternative
                    .as_deref()
                    .is_some_and(|alt| key.starts_with(alt))
        })
    }

    /// Records that module `path` was created fresh (for modules built outside this loader).
    pub fn note_initialised(&mut self, path: &str) {
        self.report.initialised.push(path.to_string());
    }

    /// Skips stored tensors for which `is_buffer` holds (non-parameter buffers such as
    /// `embeddings.position_ids` that old checkpoints contain).
    pub fn ignore_buffers(&mut self, is_buffer: impl Fn(&str) -> bool) {
        let buffers: Vec<String> = self
            .weights
            .unused()
            .into_iter()
            .filter(|key| is_buffer(key))
            .collect();
        for key in buffers {
            self.weights.take(&key);
            self.report.ignored.push(key);
        }
    }

    /// Ends loading: an error naming every missing and mis-shaped tensor, or the report (unused
    /// tensors are logged as a warning, fresh modules as info).
    pub fn finish(mut self) -> Result<LoadReport, EncoderError> {
        if !self.problems.is_empty() {
            return Err(EncoderError::Tensors {
                path: self.report.source,
                problems: self.problems,
            });
        }
        self.report.unused = self.weights.unused();
        if !self.report.unused.is_empty() {
            tracing::warn!(
                source = %self.report.source.display(),
                count = self.report.unused.len(),
                "checkpoint tensors not used by the model: {}",
                self.report.unused.join(", ")
            );
        }
        if !self.report.initialised.is_empty() {
            let message = format!(
                "checkpoint has no weights for {}: freshly initialised (normal, std {}, zero bias)",
                self.report.initialised.join(", "),
                self.init_std
            );
            let source = self.report.source.display();
            if self.head_supplied {
                tracing::debug!(%source, "{message}");
            } else {
                tracing::info!(%source, "{message}");
            }
        }
        Ok(self.report)
    }
}

/// A standard-normal sample scaled by `std` (Box-Muller; `rand` alone has no normal distribution).
fn normal(rng: &mut StdRng, std: f64) -> f32 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
}

/// Transposes a row-major `[rows, cols]` matrix.
pub(crate) fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

/// Collects Hugging Face-named f32 tensors for saving.
#[derive(Debug, Default)]
pub struct TensorWriter {
    tensors: Vec<(String, StoredTensor)>,
}

impl TensorWriter {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tensor of any rank under Hugging Face name `key`.
    pub fn tensor<B: LoraOps, const D: usize>(&mut self, key: &str, tensor: Tensor<B, D>) {
        let shape = tensor.dims().to_vec();
        let data = tensor
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("converted to f32");
        self.tensors
            .push((key.to_string(), StoredTensor { shape, data }));
    }

    /// Adds an already converted tensor (Hugging Face layout) under `key`.
    pub fn insert(&mut self, key: &str, tensor: StoredTensor) {
        self.tensors.push((key.to_string(), tensor));
    }

    /// Adds the linear projection at module path `path` in Hugging Face layout (`[out, in]`).
    pub fn linear<B: LoraOps>(&mut self, path: &str, linear: &LoraLinear<B>) {
        if linear.adapter.is_some() {
            tracing::warn!(
                module = path,
                "saving the base weights only: merge the LoRA adapter first to keep it"
            );
        }
        self.tensor(
            &format!("{path}.weight"),
            linear.base.weight.val().transpose(),
        );
        if let Some(bias) = &linear.base.bias {
            self.tensor(&format!("{path}.bias"), bias.val());
        }
    }

    /// Adds an embedding table.
    pub fn embedding<B: LoraOps>(&mut self, path: &str, embedding: &Embedding<B>) {
        self.tensor(&format!("{path}.weight"), embedding.weight.val());
    }

    /// Adds a LayerNorm as `weight` and `bias`.
    pub fn layer_norm<B: LoraOps>(&mut self, path: &str, norm: &LayerNorm<B>) {
        self.tensor(&format!("{path}.weight"), norm.gamma.val());
        if let Some(beta) = &norm.beta {
            self.tensor(&format!("{path}.bias"), beta.val());
        }
    }

    /// The collected tensors, in insertion order.
    pub fn tensors(&self) -> &[(String, StoredTensor)] {
        &self.tensors
    }

    /// Writes a safetensors file (f32, `format: pt` metadata as transformers expects) atomically.
    pub fn save(&self, path: &Path) -> Result<(), EncoderError> {
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = self
            .tensors
            .iter()
            .map(|(key, tensor)| {
                let raw = tensor.data.iter().flat_map(|v| v.to_le_bytes()).collect();
                (key.clone(), raw, tensor.shape.clone())
            })
            .collect();
        let mut views = Vec::with_capacity(bytes.len());
        for (key, raw, shape) in &bytes {
            let view = safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), raw)
                .map_err(|err| EncoderError::Safetensors {
                    path: path.to_path_buf(),
                    message: format!("{key}: {err}"),
                })?;
            views.push((key.clone(), view));
        }
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        let serialized = safetensors::tensor::serialize(views, Some(metadata)).map_err(|err| {
            EncoderError::Safetensors {
                path: path.to_path_buf(),
                message: err.to_string(),
            }
        })?;
        write_atomic(path, &serialized)
    }
}

/// Writes `bytes` to `path` with [`kdlora_schema::write_atomic`]: a reader never sees a
/// half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EncoderError> {
    kdlora_schema::write_atomic(path, bytes).map_err(|source| io_error(path, source))
}

pub(crate) fn io_error(path: &Path, source: std::io::Error) -> EncoderError {
    EncoderError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_is_its_own_inverse() {
        let data: Vec<f32> = (0..6).map(|v| v as f32).collect();
        let t = transpose(&data, 2, 3);
        assert_eq!(t, vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        assert_eq!(transpose(&t, 3, 2), data);
    }

    #[test]
    fn half_precision_converts() {
        let values = [1.5f32, -0.25, 3.0e-3];
        let f16: Vec<u8> = values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let bf16: Vec<u8> = values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        let a = to_f32(Dtype::F16, &f16).unwrap();
        let b = to_f32(Dtype::BF16, &bf16).unwrap();
        for (i, v) in values.iter().enumerate() {
            assert!((a[i] - v).abs() < 1e-3 * v.abs().max(1e-3));
            assert!((b[i] - v).abs() < 1e-2 * v.abs().max(1e-3));
        }
        assert!(to_f32(Dtype::I64, &[0; 8]).is_none());
    }

    #[test]
    fn resolve_with_and_without_prefix() {
        let tensor = StoredTensor {
            shape: vec![1],
            data: vec![0.0],
        };
        let map = WeightMap::from_tensors(
            PathBuf::from("x"),
            BTreeMap::from([
                ("embeddings.a".to_string(), tensor.clone()),
                ("bert.encoder.b".to_string(), tensor.clone()),
                ("classifier.weight".to_string(), tensor),
            ]),
        );
        assert_eq!(
            map.resolve("bert.embeddings.a", "bert").as_deref(),
            Some("embeddings.a")
        );
        assert_eq!(
            map.resolve("encoder.b", "bert").as_deref(),
            Some("bert.encoder.b")
        );
        assert_eq!(
            map.resolve("classifier.weight", "bert").as_deref(),
            Some("classifier.weight")
        );
        assert_eq!(map.resolve("bert.pooler.dense.weight", "bert"), None);
    }
}
