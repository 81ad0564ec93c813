//! `kdlora logits`: one JSON line `{"logits": [...]}` per input, in input order.
//!
//! Inputs are token ids from a JSON-lines file (`--input FILE`, `-` for stdin), each line
//! `{"input_ids": [...], "attention_mask": [...], "token_type_ids": [...]}` with the last two
//! optional (all ones / all zeros), or one text (pair) tokenised with the model folder's
//! `tokenizer.json`. Scripts outside the project depend on this format: keep it stable.
//!
//! `--input` also takes a file of texts (see [`super::texts`]); their lines add the predicted
//! `label` and the `probabilities` per label name (or an STS-B `score`) beside `logits`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::tensor::{Int, Tensor, TensorData};
use kdlora_encoders::{LoadOptions, SequenceClassifier};
use kdlora_lora::LoraOps;
use kdlora_train::RunConfig;

use super::runs::{self, Labels};
use super::texts::{self, InputKind};
use crate::device::{BackendTask, DeviceArg};

/// Arguments of `kdlora logits`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint folder (config.json, model.safetensors; tokenizer.json for --text), a run
    /// folder written by `kdlora train` (`--run` is an alias), or a Hugging Face Hub id
    /// (`org/name[@revision]`, from the HF cache or downloaded).
    #[arg(long, visible_alias = "run")]
    pub model: PathBuf,
    /// Input file, one output line per row (`-` reads stdin). Either JSON lines of token ids,
    /// `{"input_ids": [...], "attention_mask": [...], "token_type_ids": [...]}` (the last two
    /// optional), or a file of texts: a `.tsv` file with a header row, or JSON lines of objects,
    /// naming the task's text columns (`sentence`; `sentence1` and `sentence2`; `question` and
    /// `sentence`; `premise` and `hypothesis`; ...; other columns are ignored). A `.tsv` file
    /// holds texts; JSON lines hold token ids when the first row has `input_ids`. Texts are
    /// tokenised with the model's tokenizer.json, and their lines also carry the predicted
    /// `label` and the `probabilities` per label name (an STS-B run: `score`).
    #[arg(long, required_unless_present = "text", conflicts_with = "text")]
    pub input: Option<PathBuf>,
    /// A text to tokenise with the model's tokenizer.json.
    #[arg(long)]
    pub text: Option<String>,
    /// Second text of a pair (with --text).
    // `conflicts_with` as well: with `--input` given, clap let `requires` pass and the pair was
    // silently ignored (found by the bad-input suite).
    #[arg(long, requires = "text", conflicts_with = "input")]
    pub text_pair: Option<String>,
    /// Compute device.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// Sequences per forward pass (padding is masked, so it does not change the logits).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// PEFT LoRA adapter folder (adapter_config.json, adapter_model.safetensors), or a LoRA run
    /// folder, applied to the model before computing logits. When the adapter belongs to a run
    /// (its parent holds config.toml), texts are truncated to the run's max_len and labelled
    /// with its task's label names.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

/// One input sequence.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
struct Sequence {
    input_ids: Vec<i64>,
    #[serde(default)]
    attention_mask: Option<Vec<i64>>,
    #[serde(default)]
    token_type_ids: Option<Vec<i64>>,
}

/// A sequence with defaults filled in; `origin` says where it came from, for error messages.
pub(crate) struct Prepared {
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
    pub types: Vec<i64>,
    pub origin: String,
}

/// Runs the verb.
pub fn run(mut args: Args) -> anyhow::Result<()> {
    args.model = kdlora_hub::resolve_model_path(&args.model)?;
    let device = args.device;
    device.run(Logits { args })
}

struct Logits {
    args: Args,
}

impl BackendTask for Logits {
    type Output = ();

    fn run<B: LoraOps>(self, device: B::Device) -> anyhow::Result<()> {
        let args = self.args;
        let adapter = args.adapter.as_deref().map(runs::adapter_dir);
        let (model, run) = load_model::<B>(&args, adapter.as_deref(), &device)?;
        let task = run.as_ref().map(RunConfig::glue_task).transpose()?;
        let run_max_len = run.as_ref().map(|cfg| cfg.max_len);
        // Labels only for texts: token-id lines keep their `{"logits": [...]}` format.
        let mut labels = None;
        let inputs = match (&args.input, &args.text) {
            (Some(path), _) => {
                let bytes = read_input(path)?;
                match texts::input_kind(path, &bytes) {
                    InputKind::TokenIds => read_jsonl(path, &bytes)?,
                    InputKind::Texts => {
                        let rows = texts::read_texts(path, &bytes, task)?;
                        // Without a run, at most the positions the model has (as `predict`
                        // truncates a plain model folder's inputs).
                        let max_len = run_max_len.unwrap_or_else(|| {
                            kdlora_glue::DEFAULT_MAX_LEN.min(model.max_sequence_length())
                        });
                        let tokenizer =
                            TextTokenizer::new(&args.model, model.config(), Some(max_len))?;
                        labels = Some(Labels::of(task, &model));
                        rows.iter()
                            .map(|row| {
                                tokenizer.encode(&row.text, row.pair.as_deref(), row.origin.clone())
                            })
                            .collect::<anyhow::Result<Vec<_>>>()?
                    }
                }
            }
            (None, Some(text)) => {
                let tokenizer = TextTokenizer::new(&args.model, model.config(), run_max_len)?;
                vec![tokenizer.encode(text, args.text_pair.as_deref(), "--text".into())?]
            }
            (None, None) => bail!("give --input FILE or --text TEXT"),
        };
        for input in &inputs {
            model
                .check_sequence(&input.ids, &input.mask, &input.types)
                .with_context(|| input.origin.clone())?;
        }
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        for batch in inputs.chunks(args.batch_size as usize) {
            for (logits, input) in forward_batch(&model, batch, &device)?.iter().zip(batch) {
                check_finite(logits, &input.origin)?;
                let mut line = serde_json::Map::new();
                line.insert("logits".into(), serde_json::json!(logits));
                if let Some(labels) = &labels {
                    line.extend(texts::prediction(logits, labels));
                }
                serde_json::to_writer(&mut out, &line)?;
                out.write_all(b"\n")?;
            }
        }
        out.flush().context("writing to stdout")?;
        Ok(())
    }
}

/// Loads the classifier the logits come from, with the configuration of its run (a run folder,
/// or the run an adapter belongs to) when there is one.
fn load_model<B: LoraOps>(
    args: &Args,
    adapter: Option<&Path>,
    device: &B::Device,
) -> anyhow::Result<(SequenceClassifier<B>, Option<RunConfig>)> {
    if let Some(dir) = adapter {
        let run = runs::adapter_run_config(dir)?;
        let model = runs::load_with_adapter::<B>(&args.model, dir, None, device)?;
        return Ok((model, run));
    }
    if kdlora_train::is_run_dir(&args.model) {
        let loaded = kdlora_train::load_model::<B>(&args.model, None, device)
            .with_context(|| format!("loading the run {}", args.model.display()))?;
        return Ok((loaded.model, loaded.config));
    }
    let (model, _report) =
        SequenceClassifier::<B>::load(&args.model, &LoadOptions::default(), device)
            .with_context(|| format!("loading the model from {}", args.model.display()))?;
    Ok((model, None))
}

/// Pads a batch with the model's pad token (masked out) and returns each row's logits.
pub(crate) fn forward_batch<B: LoraOps>(
    model: &SequenceClassifier<B>,
    batch: &[Prepared],
    device: &B::Device,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let seq = batch.iter().map(|p| p.ids.len()).max().unwrap_or(0);
    let pad = model.config().pad_token_id as i64;
    let mut ids = Vec::with_capacity(batch.len() * seq);
    let mut mask = Vec::with_capacity(batch.len() * seq);
    let mut types = Vec::with_capacity(batch.len() * seq);
    for p in batch {
        let fill = seq - p.ids.len();
        ids.extend(p.ids.iter().copied().chain(std::iter::repeat_n(pad, fill)));
        mask.extend(p.mask.iter().copied().chain(std::iter::repeat_n(0, fill)));
        types.extend(p.types.iter().copied().chain(std::iter::repeat_n(0, fill)));
    }
    let shape = [batch.len(), seq];
    let tensor =
        |values: Vec<i64>| Tensor::<B, 2, Int>::from_data(TensorData::new(values, shape), device);
    let logits = model.forward(tensor(ids), tensor(mask), tensor(types));
    let labels = model.num_labels();
    let values = logits
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|err| anyhow::anyhow!("reading logits: {err:?}"))?;
    Ok(values.chunks(labels).map(<[f32]>::to_vec).collect())
}

/// Refuses NaN and infinite logits: JSON has no spelling for them (serde_json writes `null`), and
/// a consumer reading `null` as a number is silently wrong.
pub(crate) fn check_finite(logits: &[f32], origin: &str) -> anyhow::Result<()> {
    if let Some(v) = logits.iter().find(|v| !v.is_finite()) {
        bail!(
            "{origin}: the model produced a non-finite logit ({v}); its weights or config.json are broken"
        );
    }
    Ok(())
}

/// The bytes of the input file (`-`: stdin).
pub(crate) fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("reading stdin")?;
        return Ok(bytes);
    }
    std::fs::read(path).with_context(|| format!("opening the input file {}", path.display()))
}

/// Reads the JSON-lines inputs; blank lines are skipped.
fn read_jsonl(path: &Path, bytes: &[u8]) -> anyhow::Result<Vec<Prepared>> {
    let reader = BufReader::new(bytes);
    let mut inputs = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let origin = format!("{}:{}", path.display(), index + 1);
        let line = line.with_context(|| origin.clone())?;
        if line.trim().is_empty() {
            continue;
        }
        let sequence: Sequence = serde_json::from_str(&line)
            .with_context(|| format!("{origin}: expected {{\"input_ids\": [...], \"attention_mask\": [...], \"token_type_ids\": [...]}}"))?;
        inputs.push(prepare(sequence, origin));
    }
    if inputs.is_empty() {
        bail!("{}: no inputs", path.display());
    }
    Ok(inputs)
}

fn prepare(sequence: Sequence, origin: String) -> Prepared {
    let n = sequence.input_ids.len();
    Prepared {
        mask: sequence.attention_mask.unwrap_or_else(|| vec![1; n]),
        types: sequence.token_type_ids.unwrap_or_else(|| vec![0; n]),
        ids: sequence.input_ids,
        origin,
    }
}

/// The model folder's `tokenizer.json`, truncating longest-first to `max_len` when given (as a
/// run's own evaluation does).
struct TextTokenizer {
    tokenizer: tokenizers::Tokenizer,
    path: PathBuf,
}

impl TextTokenizer {
    fn new(
        model_dir: &Path,
        config: &kdlora_encoders::ModelConfig,
        max_len: Option<usize>,
    ) -> anyhow::Result<Self> {
        let tokenizer_dir = kdlora_train::tokenizer_dir(model_dir);
        let path = tokenizer_dir.join("tokenizer.json");
        if !path.is_file() {
            bail!(
                "{}: not found; texts need the model's tokenizer.json (or pass token ids with --input)",
                path.display()
            );
        }
        let mut tokenizer = tokenizers::Tokenizer::from_file(&path)
            .map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))?;
        kdlora_train::check_tokenizer_fits(config, &tokenizer_dir, &tokenizer, &path, max_len)?;
        if let Some(max_len) = max_len {
            tokenizer
                .with_truncation(Some(tokenizers::TruncationParams {
                    direction: tokenizers::TruncationDirection::Right,
                    max_length: max_len,
                    strategy: tokenizers::TruncationStrategy::LongestFirst,
                    stride: 0,
                }))
                .map_err(|err| anyhow::anyhow!("{}: truncation: {err}", path.display()))?;
        }
        Ok(Self { tokenizer, path })
    }

    /// Tokenises a text (pair), special tokens included.
    fn encode(&self, text: &str, pair: Option<&str>, origin: String) -> anyhow::Result<Prepared> {
        let encoding = match pair {
            Some(pair) => self.tokenizer.encode((text, pair), true),
            None => self.tokenizer.encode(text, true),
        }
        .map_err(|err| {
            anyhow::anyhow!("{origin}: tokenising with {}: {err}", self.path.display())
        })?;
        let widen = |values: &[u32]| values.iter().map(|v| i64::from(*v)).collect::<Vec<_>>();
        Ok(Prepared {
            ids: widen(encoding.get_ids()),
            mask: widen(encoding.get_attention_mask()),
            types: widen(encoding.get_type_ids()),
            origin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_logits_are_an_error_naming_the_input() {
        check_finite(&[0.5, -1.0], "in.jsonl:1").unwrap();
        let err = check_finite(&[f32::NAN, 1.0], "in.jsonl:3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("in.jsonl:3") && err.contains("NaN"), "{err}");
        assert!(check_finite(&[f32::INFINITY], "--text").is_err());
    }

    #[test]
    fn optional_fields_default_to_ones_and_zeros() {
        let sequence: Sequence = serde_json::from_str(r#"{"input_ids": [2, 7, 3]}"#).unwrap();
        let prepared = prepare(sequence, "x:1".into());
        assert_eq!(prepared.mask, vec![1, 1, 1]);
        assert_eq!(prepared.types, vec![0, 0, 0]);
    }
}
