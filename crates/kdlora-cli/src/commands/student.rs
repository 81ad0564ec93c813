//! `kdlora student`: a smaller model of the teacher's family made from chosen teacher layers, as
//! DistilBERT was initialised from BERT (every other layer). Embeddings, pooler, head and every
//! other tensor are copied as they are; layer `layers[i]` of the teacher becomes layer `i`. The
//! result is a Hugging Face folder (config.json with the new layer count, model.safetensors in the
//! teacher's dtype, tokenizer files) that transformers and `kdlora train --set model=...` load.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use safetensors::SafeTensors;
use safetensors::tensor::TensorView;

/// Arguments of `kdlora student`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Teacher: a model folder (config.json, model.safetensors), a full fine-tuning run folder
    /// (its model/), or a Hugging Face Hub id (`org/name[@revision]`).
    #[arg(long)]
    pub from: PathBuf,
    /// Teacher layers to keep, 0-based and increasing: `0,2,4` keeps three of six.
    #[arg(long, value_delimiter = ',', required = true)]
    pub layers: Vec<usize>,
    /// Output folder (created; files in it are replaced).
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs the verb: file work only, no model is built.
pub fn run(args: Args) -> anyhow::Result<()> {
    super::check_output("--out", &args.out, super::Output::Folder)?;
    let teacher = teacher_dir(&args.from)?;
    if same_folder(&args.out, &teacher) {
        bail!(
            "--out {} is the teacher's folder; give another (the student must not overwrite it)",
            args.out.display()
        );
    }
    let config_path = teacher.join(kdlora_encoders::CONFIG_FILE);
    let config_text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let mut config: serde_json::Value = serde_json::from_str(&config_text)
        .with_context(|| format!("{}: not JSON", config_path.display()))?;
    let layers_key = layers_key(&config);
    let teacher_layers = config
        .get(layers_key)
        .and_then(serde_json::Value::as_u64)
        .with_context(|| {
            format!(
                "{}: no whole number `{layers_key}` (the teacher's layer count)",
                config_path.display()
            )
        })? as usize;
    check_layers(&args.layers, teacher_layers, &config_path, layers_key)?;

    let weights_path = teacher.join(kdlora_encoders::WEIGHTS_FILE);
    if !weights_path.is_file() {
        bail!(
            "{}: not found (a student is made from a single model.safetensors; sharded or \
             pickle checkpoints are not supported)",
            weights_path.display()
        );
    }
    let bytes = std::fs::read(&weights_path)
        .with_context(|| format!("reading {}", weights_path.display()))?;
    let student = select_layers(&bytes, &args.layers)
        .with_context(|| format!("{}", weights_path.display()))?;

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let weights_out = args.out.join(kdlora_encoders::WEIGHTS_FILE);
    kdlora_schema::write_atomic(&weights_out, &student.bytes)
        .with_context(|| format!("writing {}", weights_out.display()))?;
    config[layers_key] = args.layers.len().into();
    let config_out = args.out.join(kdlora_encoders::CONFIG_FILE);
    let mut text = serde_json::to_string_pretty(&config)?;
    text.push('\n');
    kdlora_schema::write_atomic(&config_out, text.as_bytes())
        .with_context(|| format!("writing {}", config_out.display()))?;
    for name in kdlora_schema::TOKENIZER_FILES {
        let from = teacher.join(name);
        if from.is_file() {
            let bytes =
                std::fs::read(&from).with_context(|| format!("reading {}", from.display()))?;
            let to = args.out.join(name);
            kdlora_schema::write_atomic(&to, &bytes)
                .with_context(|| format!("writing {}", to.display()))?;
        }
    }
    let kept: Vec<String> = args.layers.iter().map(usize::to_string).collect();
    eprintln!(
        "wrote {}: layers {} of {}'s {teacher_layers} ({} tensors, {} parameters; {} left out)",
        args.out.display(),
        kept.join(", "),
        teacher.display(),
        student.tensors,
        student.parameters,
        student.dropped
    );
    Ok(())
}

/// The teacher's model folder: a run folder's `model/`, else the folder or Hub id itself.
fn teacher_dir(from: &Path) -> anyhow::Result<PathBuf> {
    if from.join("config.toml").is_file() {
        let model = from.join("model");
        if model.join(kdlora_encoders::CONFIG_FILE).is_file() {
            return Ok(model);
        }
        if from.join("adapter").is_dir() {
            bail!(
                "--from {}: a LoRA run has an adapter, not a model; merge it first (`kdlora merge \
                 --adapter {} --out DIR`) and give DIR",
                from.display(),
                from.display()
            );
        }
        bail!(
            "--from {}: a run folder without model/ (did the run finish?)",
            from.display()
        );
    }
    Ok(kdlora_hub::resolve_model_path(from)?)
}

/// The config.json key of the layer count.
fn layers_key(config: &serde_json::Value) -> &'static str {
    match config.get("model_type").and_then(serde_json::Value::as_str) {
        Some("distilbert") => "n_layers",
        _ => "num_hidden_layers",
    }
}

fn check_layers(layers: &[usize], teacher: usize, config: &Path, key: &str) -> anyhow::Result<()> {
    if layers.is_empty() {
        bail!("--layers: give at least one teacher layer");
    }
    if let Some(&bad) = layers.iter().find(|&&l| l >= teacher) {
        bail!(
            "--layers: layer {bad} does not exist: the teacher has {teacher} (`{key}` in {}), \
             numbered 0 to {}",
            config.display(),
            teacher.saturating_sub(1)
        );
    }
    if let Some(pair) = layers.windows(2).find(|w| w[0] >= w[1]) {
        bail!(
            "--layers: {} then {}: give each layer once, in increasing order",
            pair[0],
            pair[1]
        );
    }
    Ok(())
}

/// Where a tensor name holds a layer index: `…encoder.layer.N.…` (BERT, RoBERTa, DeBERTa) or
/// `…transformer.layer.N.…` (DistilBERT), with or without the base-model prefix.
fn layer_of(name: &str) -> Option<(usize, String, String)> {
    let parts: Vec<&str> = name.split('.').collect();
    (1..parts.len().saturating_sub(1)).find_map(|k| {
        let container = parts[k - 1];
        if parts[k] != "layer" || !(container == "encoder" || container == "transformer") {
            return None;
        }
        let index = parts[k + 1].parse::<usize>().ok()?;
        Some((index, parts[..=k].join("."), parts[k + 2..].join(".")))
    })
}

/// A student's weights.
struct Selected {
    bytes: Vec<u8>,
    tensors: usize,
    parameters: usize,
    dropped: usize,
}

/// The safetensors file of the student: layer `layers[i]` renamed to layer `i`, other layers left
/// out, every other tensor kept; dtypes, shapes and bytes unchanged, metadata kept.
fn select_layers(bytes: &[u8], layers: &[usize]) -> anyhow::Result<Selected> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    let position: HashMap<usize, usize> = layers.iter().enumerate().map(|(i, &l)| (l, i)).collect();
    let mut found = BTreeSet::new();
    let mut kept: BTreeMap<String, TensorView<'_>> = BTreeMap::new();
    let mut dropped = 0;
    for (name, view) in file.tensors() {
        let renamed = match layer_of(&name) {
            Some((index, head, tail)) => match position.get(&index) {
                Some(&i) => {
                    found.insert(index);
                    format!("{head}.{i}.{tail}")
                }
                None => {
                    dropped += 1;
                    continue;
                }
            },
            None => name.clone(),
        };
        let view = TensorView::new(view.dtype(), view.shape().to_vec(), view.data())
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        if kept.insert(renamed.clone(), view).is_some() {
            bail!("two tensors would be named {renamed}");
        }
    }
    if let Some(missing) = layers.iter().find(|l| !found.contains(l)) {
        bail!(
            "no tensor of layer {missing} (`encoder.layer.{missing}.*` or `transformer.layer.{missing}.*`)"
        );
    }
    let tensors = kept.len();
    let parameters = kept
        .values()
        .map(|v| v.shape().iter().product::<usize>())
        .sum();
    let metadata = header.metadata().clone();
    let bytes =
        safetensors::tensor::serialize(kept, metadata).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Selected {
        bytes,
        tensors,
        parameters,
        dropped,
    })
}

fn same_folder(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_indices_are_found_with_and_without_prefix() {
        assert_eq!(
            layer_of("bert.encoder.layer.3.attention.self.query.weight"),
            Some((
                3,
                "bert.encoder.layer".into(),
                "attention.self.query.weight".into()
            ))
        );
        assert_eq!(
            layer_of("encoder.layer.0.output.dense.bias"),
            Some((0, "encoder.layer".into(), "output.dense.bias".into()))
        );
        assert_eq!(
            layer_of("distilbert.transformer.layer.5.ffn.lin1.weight"),
            Some((
                5,
                "distilbert.transformer.layer".into(),
                "ffn.lin1.weight".into()
            ))
        );
        assert_eq!(layer_of("deberta.encoder.rel_embeddings.weight"), None);
        assert_eq!(layer_of("bert.pooler.dense.weight"), None);
        assert_eq!(layer_of("classifier.layer.weight"), None);
    }

    #[test]
    fn layer_lists_are_checked() {
        let config = Path::new("config.json");
        assert!(check_layers(&[0, 2, 4], 6, config, "num_hidden_layers").is_ok());
        let err = |layers: &[usize]| {
            check_layers(layers, 6, config, "num_hidden_layers")
                .unwrap_err()
                .to_string()
        };
        assert!(err(&[]).contains("at least one"));
        assert!(err(&[0, 6]).contains("layer 6 does not exist"));
        assert!(err(&[2, 2]).contains("increasing"));
        assert!(err(&[3, 1]).contains("increasing"));
    }
}
