//! `kdlora merge`: folds a PEFT LoRA adapter into its base model and writes a plain Hugging Face
//! checkpoint folder (config.json + model.safetensors, plus the base's tokenizer files) that
//! transformers loads without PEFT.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::backend::NdArray;
use burn::module::Module;
use kdlora_encoders::{LoadOptions, SequenceClassifier};

/// Tokenizer files copied from the base folder when present.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spm.model",
    "sentencepiece.bpe.model",
];

/// Arguments of `kdlora merge`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Base checkpoint folder (config.json, model.safetensors), or a Hugging Face Hub id
    /// (`org/name[@revision]`, from the HF cache or downloaded).
    #[arg(long)]
    pub model: PathBuf,
    /// PEFT adapter folder (adapter_config.json, adapter_model.safetensors).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Output folder for the merged checkpoint (created; files in it are replaced).
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs the verb. Merging is a handful of small matrix products, so it always runs on the CPU in f32.
pub fn run(mut args: Args) -> anyhow::Result<()> {
    type B = NdArray<f32>;
    args.model = kdlora_train::resolve_model_path(&args.model)?;
    let device = Default::default();
    if same_folder(&args.out, &args.model) || same_folder(&args.out, &args.adapter) {
        bail!(
            "--out {} must differ from --model and --adapter (the merge must not overwrite its inputs)",
            args.out.display()
        );
    }
    super::check_output("--out", &args.out, super::Output::Folder)?;
    let (model, _report) =
        SequenceClassifier::<B>::load(&args.model, &LoadOptions::default(), &device)
            .with_context(|| format!("loading the model from {}", args.model.display()))?;
    let mut model = kdlora_train::apply_adapter(model, &args.model, &args.adapter, &device)
        .with_context(|| format!("applying the adapter {}", args.adapter.display()))?;
    let merged = kdlora_lora::merge_and_unload(&mut model);
    if merged == 0 {
        tracing::warn!(adapter = %args.adapter.display(), "the adapter has no LoRA tensors; only modules_to_save were applied");
    }
    model
        .save_pretrained(&args.out)
        .with_context(|| format!("writing the merged checkpoint to {}", args.out.display()))?;
    let mut copied = Vec::new();
    for name in TOKENIZER_FILES {
        let from = args.model.join(name);
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
        tokenizer_files = copied.len(),
        out = %args.out.display(),
        "merged checkpoint written"
    );
    Ok(())
}

/// Whether two paths name the same existing folder.
fn same_folder(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
