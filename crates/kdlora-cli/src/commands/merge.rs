//! `kdlora merge`: folds a PEFT LoRA adapter into its base model and writes a plain Hugging Face
//! checkpoint folder (config.json + model.safetensors, plus the base's tokenizer files) that
//! transformers loads without PEFT.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::backend::NdArray;
use burn::module::Module;
use safetensors::{Dtype, SafeTensors};

use super::runs::{self, Labels};

/// Floating-point type of the merged weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeArg {
    /// 32-bit floats.
    F32,
    /// IEEE half precision (torch.float16).
    F16,
    /// bfloat16 (torch.bfloat16).
    Bf16,
}

impl DtypeArg {
    fn safetensors(self) -> Dtype {
        match self {
            Self::F32 => Dtype::F32,
            Self::F16 => Dtype::F16,
            Self::Bf16 => Dtype::BF16,
        }
    }

    /// transformers' `torch_dtype` name.
    fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::Bf16 => "bfloat16",
        }
    }
}

/// Arguments of `kdlora merge`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Base checkpoint folder (config.json, model.safetensors), or a Hugging Face Hub id
    /// (`org/name[@revision]`, from the HF cache or downloaded). Default: the base the adapter
    /// records (adapter_config.json's base_model_name_or_path: a Hub id, or a path relative to
    /// the adapter's parent folder, which for `kdlora train` runs is the run folder).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// PEFT adapter folder (adapter_config.json, adapter_model.safetensors), or a LoRA run folder
    /// (its adapter/). When the adapter belongs to a run (its parent holds config.toml), the
    /// merged config.json names the run's task labels in id2label and label2id.
    #[arg(long)]
    pub adapter: PathBuf,
    /// Output folder for the merged checkpoint (created; files in it are replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// Floating-point type of the merged weights. Default: the base checkpoint's (an f16 or
    /// bf16 base is written as such; the merge itself is computed in f32).
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
}

/// Runs the verb. Merging is a handful of small matrix products, so it always runs on the CPU in f32.
pub fn run(args: Args) -> anyhow::Result<()> {
    type B = NdArray<f32>;
    let adapter = runs::adapter_dir(&args.adapter);
    let model_dir = match &args.model {
        Some(model) => kdlora_hub::resolve_model_path(model)?,
        None => runs::adapter_base(&adapter)?,
    };
    let device = Default::default();
    if same_folder(&args.out, &model_dir) || same_folder(&args.out, &adapter) {
        bail!(
            "--out {} must differ from the base model and the adapter (the merge must not overwrite its inputs)",
            args.out.display()
        );
    }
    super::check_output("--out", &args.out, super::Output::Folder)?;
    let run = runs::adapter_run_config(&adapter)?;
    let task = run.as_ref().map(|cfg| cfg.glue_task()).transpose()?;
    let mut model =
        runs::load_with_adapter::<B>(&model_dir, &adapter, task.map(|t| t.num_labels()), &device)?;
    let merged = kdlora_lora::merge_and_unload(&mut model);
    if merged == 0 {
        tracing::warn!(adapter = %adapter.display(), "the adapter has no LoRA tensors; only modules_to_save were applied");
    }
    let dtype = match args.dtype {
        Some(dtype) => dtype,
        None => base_dtype(&model_dir)?,
    };
    model
        .save_pretrained(&args.out)
        .with_context(|| format!("writing the merged checkpoint to {}", args.out.display()))?;
    if dtype != DtypeArg::F32 {
        convert_weights(&args.out.join(kdlora_encoders::WEIGHTS_FILE), dtype)?;
    }
    let labels = task.map(Labels::of_task);
    rewrite_config(
        &args.out.join(kdlora_encoders::CONFIG_FILE),
        dtype,
        labels.as_ref(),
    )?;
    let mut copied = Vec::new();
    for name in kdlora_schema::TOKENIZER_FILES {
        let from = model_dir.join(name);
        if from.is_file() {
            let bytes =
                std::fs::read(&from).with_context(|| format!("reading {}", from.display()))?;
            kdlora_lora::io::atomic_write(&args.out.join(name), &bytes)?;
            copied.push(*name);
        }
    }
    tracing::info!(
        adapters = merged,
        parameters = model.num_params(),
        dtype = dtype.torch_name(),
        base = %model_dir.display(),
        tokenizer_files = copied.len(),
        out = %args.out.display(),
        "merged checkpoint written"
    );
    Ok(())
}

/// The floating-point type most of a checkpoint's float tensors have (f32 when it holds none of
/// the three, or as many f32 tensors). A sharded checkpoint is judged by its first shard.
fn base_dtype(model_dir: &Path) -> anyhow::Result<DtypeArg> {
    let single = model_dir.join(kdlora_encoders::WEIGHTS_FILE);
    let path = if single.is_file() {
        single
    } else {
        let mut shards: Vec<PathBuf> = std::fs::read_dir(model_dir)
            .with_context(|| format!("reading {}", model_dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        shards.sort();
        match shards.into_iter().next() {
            Some(first) => first,
            None => return Ok(DtypeArg::F32),
        }
    };
    let mut counts: HashMap<String, usize> = HashMap::new();
    for info in safetensors_header(&path)?.values() {
        if let Some(dtype) = info.get("dtype").and_then(|d| d.as_str()) {
            *counts.entry(dtype.to_string()).or_default() += 1;
        }
    }
    let count = |name: &str| counts.get(name).copied().unwrap_or(0);
    Ok(if count("F16") > count("F32").max(count("BF16")) {
        DtypeArg::F16
    } else if count("BF16") > count("F32") {
        DtypeArg::Bf16
    } else {
        DtypeArg::F32
    })
}

/// The JSON header of a safetensors file (tensor name -> dtype, shape, offsets), read without
/// the tensor data.
fn safetensors_header(path: &Path) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    use std::io::Read;
    let bad = |what: &str| anyhow::anyhow!("{}: {what}", path.display());
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| bad("too short for a safetensors file"))?;
    let len = usize::try_from(u64::from_le_bytes(len))
        .ok()
        .filter(|n| *n <= 100 << 20)
        .ok_or_else(|| bad("safetensors header too large"))?;
    let mut header = vec![0u8; len];
    file.read_exact(&mut header)
        .map_err(|_| bad("truncated safetensors header"))?;
    let mut map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|err| bad(&format!("safetensors header: {err}")))?;
    map.remove("__metadata__");
    Ok(map)
}

/// Rewrites the f32 safetensors file `path` (as `save_pretrained` writes it) in `dtype`.
fn convert_weights(path: &Path, dtype: DtypeArg) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))?;
    let mut converted: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
    for (name, view) in file.tensors() {
        let values = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        let raw: Vec<u8> = match dtype {
            DtypeArg::F32 => view.data().to_vec(),
            DtypeArg::F16 => values
                .flat_map(|v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            DtypeArg::Bf16 => values
                .flat_map(|v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
        };
        converted.push((name, raw, view.shape().to_vec()));
    }
    // Sorted as safetensors writes them, so the file does not depend on hash order.
    converted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut views = Vec::with_capacity(converted.len());
    for (name, raw, shape) in &converted {
        let view = safetensors::tensor::TensorView::new(dtype.safetensors(), shape.clone(), raw)
            .map_err(|err| anyhow::anyhow!("{}: {name}: {err}", path.display()))?;
        views.push((name.clone(), view));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let out = safetensors::tensor::serialize(views, Some(metadata))
        .map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))?;
    kdlora_lora::io::atomic_write(path, &out)?;
    Ok(())
}

/// Sets `torch_dtype`, and the task's label names in `id2label` and `label2id`, in the saved
/// config.json (the base's own names are usually `LABEL_0`, `LABEL_1`).
fn rewrite_config(path: &Path, dtype: DtypeArg, labels: Option<&Labels>) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut config: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
    let Some(object) = config.as_object_mut() else {
        bail!("{}: not a JSON object", path.display());
    };
    object.insert("torch_dtype".into(), dtype.torch_name().into());
    if let Some(labels) = labels.filter(|l| !l.regression) {
        let id2label: serde_json::Map<String, serde_json::Value> = labels
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| (i.to_string(), name.clone().into()))
            .collect();
        let label2id: serde_json::Map<String, serde_json::Value> = labels
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), i.into()))
            .collect();
        object.insert("id2label".into(), id2label.into());
        object.insert("label2id".into(), label2id.into());
    }
    let mut text = serde_json::to_string_pretty(&config)?;
    text.push('\n');
    kdlora_lora::io::atomic_write(path, text.as_bytes())?;
    Ok(())
}

/// Whether two paths name the same existing folder.
fn same_folder(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_f32(path: &Path, tensors: &[(&str, Vec<f32>)]) {
        let raw: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
            .iter()
            .map(|(name, values)| {
                let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                (name.to_string(), bytes, vec![values.len()])
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = raw
            .iter()
            .map(|(name, bytes, shape)| {
                let view =
                    safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap();
                (name.clone(), view)
            })
            .collect();
        std::fs::write(path, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
    }

    #[test]
    fn weights_convert_to_the_base_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(kdlora_encoders::WEIGHTS_FILE);
        write_f32(&path, &[("a", vec![1.5, -0.25]), ("b", vec![3.0e-3])]);
        assert_eq!(base_dtype(dir.path()).unwrap(), DtypeArg::F32);
        for (dtype, name) in [(DtypeArg::F16, "F16"), (DtypeArg::Bf16, "BF16")] {
            write_f32(&path, &[("a", vec![1.5, -0.25]), ("b", vec![3.0e-3])]);
            convert_weights(&path, dtype).unwrap();
            assert_eq!(base_dtype(dir.path()).unwrap(), dtype);
            let header = safetensors_header(&path).unwrap();
            assert!(header.values().all(|t| t["dtype"] == name), "{header:?}");
            let bytes = std::fs::read(&path).unwrap();
            let file = SafeTensors::deserialize(&bytes).unwrap();
            let a = file.tensor("a").unwrap();
            let back: Vec<f32> = a
                .data()
                .chunks_exact(2)
                .map(|c| match dtype {
                    DtypeArg::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f32(),
                    _ => half::bf16::from_le_bytes([c[0], c[1]]).to_f32(),
                })
                .collect();
            assert_eq!(back, [1.5, -0.25], "{name}");
            let b = file.tensor("b").unwrap();
            assert_eq!(b.data().len(), 2);
        }
        // No weights at all (nothing to judge by): f32.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(base_dtype(empty.path()).unwrap(), DtypeArg::F32);
    }
}
