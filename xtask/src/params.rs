//! Closed-form parameter counts of the paper's architectures from `config.json` alone.
//!
//! These formulas are the independent oracle for the counts kdlora measures on instantiated models
//! (Table 2): each term is one tensor of the Hugging Face `*ForSequenceClassification` model.

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Parameter counts of one model under one recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// All parameters of the classification model (without adapters).
    pub total: usize,
    /// LoRA adapter parameters (query and value projections of every layer).
    pub adapter: usize,
    /// Parameters of the trained head (`modules_to_save`).
    pub head: usize,
}

fn get(cfg: &Value, key: &str) -> Result<usize> {
    cfg.get(key)
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .with_context(|| format!("config.json: missing or non-integer `{key}`"))
}

fn get_or(cfg: &Value, key: &str, default: usize) -> usize {
    cfg.get(key)
        .and_then(Value::as_u64)
        .map_or(default, |v| v as usize)
}

fn linear(d_in: usize, d_out: usize) -> usize {
    d_in * d_out + d_out
}

/// Closed-form counts for `num_labels` outputs and LoRA rank `r` on the query and value projections.
pub fn closed_form(cfg: &Value, num_labels: usize, r: usize) -> Result<Counts> {
    let model_type = cfg
        .get("model_type")
        .and_then(Value::as_str)
        .context("config.json: missing `model_type`")?;
    match model_type {
        "bert" | "roberta" => {
            let h = get(cfg, "hidden_size")?;
            let layers = get(cfg, "num_hidden_layers")?;
            let inter = get(cfg, "intermediate_size")?;
            let vocab = get(cfg, "vocab_size")?;
            let pos = get(cfg, "max_position_embeddings")?;
            let types = get_or(cfg, "type_vocab_size", 2);
            let embeddings = vocab * h + pos * h + types * h + 2 * h;
            let layer = 4 * linear(h, h) + 2 * h + linear(h, inter) + linear(inter, h) + 2 * h;
            let (pooler, head) = if model_type == "bert" {
                // BertForSequenceClassification: pooler (frozen under LoRA) + classifier.
                (linear(h, h), linear(h, num_labels))
            } else {
                // RobertaForSequenceClassification: no pooler; head = dense + out_proj.
                (0, linear(h, h) + linear(h, num_labels))
            };
            Ok(Counts {
                total: embeddings + layers * layer + pooler + head,
                adapter: layers * 2 * r * (h + h),
                head,
            })
        }
        "distilbert" => {
            let h = get(cfg, "dim")?;
            let layers = get(cfg, "n_layers")?;
            let inter = get(cfg, "hidden_dim")?;
            let vocab = get(cfg, "vocab_size")?;
            let pos = get(cfg, "max_position_embeddings")?;
            let embeddings = vocab * h + pos * h + 2 * h;
            let layer = 4 * linear(h, h) + 2 * h + linear(h, inter) + linear(inter, h) + 2 * h;
            let head = linear(h, h) + linear(h, num_labels);
            Ok(Counts {
                total: embeddings + layers * layer + head,
                adapter: layers * 2 * r * (h + h),
                head,
            })
        }
        "deberta-v2" => {
            let h = get(cfg, "hidden_size")?;
            let layers = get(cfg, "num_hidden_layers")?;
            let inter = get(cfg, "intermediate_size")?;
            let vocab = get(cfg, "vocab_size")?;
            let pos = get(cfg, "max_position_embeddings")?;
            let types = get_or(cfg, "type_vocab_size", 0);
            let emb_size = get_or(cfg, "embedding_size", h);
            let biased = cfg
                .get("position_biased_input")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            if get_or(cfg, "conv_kernel_size", 0) > 0 {
                bail!("config.json: conv_kernel_size > 0 is not supported");
            }
            let mut embeddings = vocab * emb_size + 2 * h;
            if biased {
                embeddings += pos * emb_size;
            }
            if types > 0 {
                embeddings += types * emb_size;
            }
            if emb_size != h {
                embeddings += emb_size * h; // embed_proj has no bias
            }
            let relative = cfg
                .get("relative_attention")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let mut encoder_extra = 0;
            let share = cfg
                .get("share_att_key")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let pos_att: Vec<String> = match cfg.get("pos_att_type") {
                Some(Value::String(s)) => s.split('|').map(|t| t.trim().to_lowercase()).collect(),
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_lowercase)
                    .collect(),
                _ => Vec::new(),
            };
            let mut layer = 4 * linear(h, h) + 2 * h + linear(h, inter) + linear(inter, h) + 2 * h;
            if relative {
                let buckets = get_or(cfg, "position_buckets", 0);
                let max_rel = cfg
                    .get("max_relative_positions")
                    .and_then(Value::as_i64)
                    .unwrap_or(-1);
                let max_rel = if max_rel < 1 { pos } else { max_rel as usize };
                let span = if buckets > 0 { buckets } else { max_rel };
                encoder_extra += 2 * span * h;
                let norm = cfg
                    .get("norm_rel_ebd")
                    .and_then(Value::as_str)
                    .unwrap_or("none");
                if norm.contains("layer_norm") {
                    encoder_extra += 2 * h;
                }
                if !share {
                    if pos_att.iter().any(|t| t == "c2p") {
                        layer += linear(h, h); // pos_key_proj
                    }
                    if pos_att.iter().any(|t| t == "p2c") {
                        layer += linear(h, h); // pos_query_proj
                    }
                }
            }
            let pooler_hidden = get_or(cfg, "pooler_hidden_size", h);
            // DebertaV2ForSequenceClassification: pooler.dense + classifier; both trained as the head.
            let head = linear(h, pooler_hidden) + linear(pooler_hidden, num_labels);
            Ok(Counts {
                total: embeddings + encoder_extra + layers * layer + head,
                adapter: layers * 2 * r * (h + h),
                head,
            })
        }
        other => bail!("config.json: unsupported model_type `{other}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(name: &str) -> Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../configs/models")
            .join(format!("{name}.json"));
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    #[test]
    fn published_sizes_are_matched() {
        // Totals of `AutoModelForSequenceClassification.from_config(cfg, num_labels=2)` counted by
        // transformers 4.46.3, and the paper's exact LoRA count (query+value at r = 8 on 12 layers
        // of width 768 is 294,912).
        let bert = closed_form(&config("bert-base-uncased"), 2, 8).unwrap();
        assert_eq!(bert.total, 109_483_778);
        assert_eq!(bert.adapter, 294_912);
        let roberta = closed_form(&config("roberta-base"), 2, 8).unwrap();
        assert_eq!(roberta.total, 124_647_170);
        let distil = closed_form(&config("distilbert-base-uncased"), 2, 8).unwrap();
        assert_eq!(distil.total, 66_955_010);
        assert_eq!(distil.adapter, 147_456);
        let deberta = closed_form(&config("deberta-v3-base"), 2, 8).unwrap();
        assert_eq!(deberta.total, 184_423_682);
        let small = closed_form(&config("deberta-v3-small"), 2, 8).unwrap();
        assert_eq!(small.total, 141_896_450);
        let distilroberta = closed_form(&config("distilroberta-base"), 2, 8).unwrap();
        assert_eq!(distilroberta.total, 82_119_938);
        assert_eq!(small.adapter, 6 * 2 * 8 * 1536);
    }
}
