//! Table 2 at the paper's model shapes: peak training memory and inference time of BERT-base,
//! RoBERTa-base and DeBERTa-v3-base (FFT and LoRA) and their students (KD-LoRA), measured on this
//! machine with fresh weights (`configs/models/`), beside the paper's numbers as ratios.
//!
//! Memory and time depend on shapes, not on trained weights, so this part of the paper's Table 2
//! can be measured on any machine; the scores cannot. Every figure is one `kdlora bench` process
//! (so the peak resident memory is that configuration's alone): FFT and LoRA steps on the teacher,
//! KD-LoRA steps on the student with teacher logits from an in-memory store (as a real KD-LoRA run
//! looks them up), and a forward pass of each model with adapters merged.

use std::fmt::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::paper;

/// The paper's families: (name in the paper's tables, teacher config, student config).
pub const FAMILIES: [(&str, &str, &str); 3] = [
    ("BERT", "bert-base-uncased", "distilbert-base-uncased"),
    ("RoBERTa", "roberta-base", "distilroberta-base"),
    ("DeBERTaV3", "deberta-v3-base", "deberta-v3-small"),
];

/// `[paper_shapes]` of a preset: how the measurement is sized.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PaperShapes {
    /// `kdlora bench --device`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Sequences per training step.
    pub batch: u32,
    /// Tokens per sequence (all attended): a GLUE-like length.
    pub seq: u32,
    /// Timed training steps (median reported).
    pub steps: u32,
    /// Untimed training steps first.
    #[serde(default = "default_one")]
    pub warmup: u32,
    /// Sequences per inference batch.
    pub inference_batch: u32,
    /// Tokens per sequence at inference.
    pub inference_seq: u32,
    /// Timed inference batches (median reported).
    pub inference_steps: u32,
    /// LoRA rank.
    #[serde(default = "default_rank")]
    pub r: u32,
}

fn default_device() -> String {
    "cpu".into()
}

fn default_one() -> u32 {
    1
}

fn default_rank() -> u32 {
    8
}

/// One measured configuration.
#[derive(Debug, Clone, Serialize)]
pub struct ShapeRow {
    pub family: String,
    pub model: String,
    /// `fft`, `lora` or `kd-lora`.
    pub method: String,
    pub trainable_params: Option<u64>,
    pub total_params: Option<u64>,
    /// Peak resident memory of the training process, MB (10^6 bytes).
    pub train_peak_mb: Option<f64>,
    /// Median seconds of one training step.
    pub train_step_s: Option<f64>,
    /// Median seconds of one inference batch (LoRA: adapters merged, the same model as FFT).
    pub inference_batch_s: Option<f64>,
    pub error: Option<String>,
}

/// Measures every family and writes `table2-paper-shapes.{md,json}` into `results`.
pub fn run(root: &Path, kdlora: &Path, shapes: &PaperShapes, results: &Path) -> Result<()> {
    let started = Instant::now();
    let models = root.join("configs/models");
    let total = FAMILIES.len() * 5;
    let mut done = 0;
    let mut bench = |model: &str, mode: &str, inference: bool| -> Result<Value> {
        done += 1;
        let config = models.join(format!("{model}.json"));
        let mut cmd = Command::new(kdlora);
        cmd.arg("bench")
            .arg("--model")
            .arg(&config)
            .args(["--mode", mode, "--device", &shapes.device])
            .args(["--r", &shapes.r.to_string()]);
        if inference {
            cmd.args(["--batch", &shapes.inference_batch.to_string()])
                .args(["--seq", &shapes.inference_seq.to_string()])
                .args(["--steps", &shapes.inference_steps.to_string()])
                .args(["--warmup", "1"]);
        } else {
            cmd.args(["--batch", &shapes.batch.to_string()])
                .args(["--seq", &shapes.seq.to_string()])
                .args(["--steps", &shapes.steps.to_string()])
                .args(["--warmup", &shapes.warmup.to_string()]);
        }
        let label = format!("[{done}/{total}] paper shapes: {model} {mode}");
        eprintln!("{label} ({:.0} s so far)", started.elapsed().as_secs_f64());
        crate::bench::measure(cmd, &label)
    };
    let mut rows = Vec::new();
    for (family, teacher, student) in FAMILIES {
        let teacher_infer = bench(teacher, "inference", true);
        let student_infer = bench(student, "inference", true);
        for (method, model, infer) in [
            ("fft", teacher, &teacher_infer),
            ("lora", teacher, &teacher_infer),
            ("kd-lora", student, &student_infer),
        ] {
            let train = bench(model, method, false);
            let mut errors = Vec::new();
            let train = train.map_err(|e| errors.push(format!("{e:#}"))).ok();
            let infer = match infer {
                Ok(v) => Some(v),
                Err(e) => {
                    errors.push(format!("inference: {e:#}"));
                    None
                }
            };
            let num = |v: Option<&Value>, key: &str| v.and_then(|v| v[key].as_f64());
            rows.push(ShapeRow {
                family: family.into(),
                model: model.into(),
                method: method.into(),
                trainable_params: train.as_ref().and_then(|v| v["trainable_params"].as_u64()),
                total_params: train.as_ref().and_then(|v| v["total_params"].as_u64()),
                train_peak_mb: num(train.as_ref(), "peak_rss_mb"),
                train_step_s: num(train.as_ref(), "median_step_s"),
                inference_batch_s: num(infer, "median_step_s"),
                error: (!errors.is_empty()).then(|| errors.join("; ")),
            });
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    std::fs::create_dir_all(results).with_context(|| format!("creating {}", results.display()))?;
    let machine = crate::bench::machine(None);
    let md = markdown(shapes, &rows, seconds, &machine_line(&machine));
    crate::tables::write_atomic(&results.join("table2-paper-shapes.md"), &md)?;
    let json = serde_json::json!({
        "shapes": shapes,
        "machine": machine,
        "seconds": seconds,
        "rows": rows,
        "summary": summary(&rows),
    });
    crate::tables::write_atomic(
        &results.join("table2-paper-shapes.json"),
        &serde_json::to_string_pretty(&json)?,
    )?;
    eprintln!(
        "paper shapes: {} configurations in {:.1} min -> {}",
        total,
        seconds / 60.0,
        results.join("table2-paper-shapes.md").display()
    );
    let failed: Vec<String> = rows.iter().filter_map(|r| r.error.clone()).collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "{} paper-shape measurement(s) failed; the table marks them:\n  {}",
            failed.len(),
            failed.join("\n  ")
        );
    }
    Ok(())
}

/// `a / b` when both are known.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn find<'a>(rows: &'a [ShapeRow], family: &str, method: &str) -> Option<&'a ShapeRow> {
    rows.iter()
        .find(|r| r.family == family && r.method == method)
}

/// Per family: KD-LoRA's memory as a fraction of LoRA's and its inference time as a fraction of
/// FFT's, here and in the paper.
#[derive(Debug, Serialize, PartialEq)]
pub struct FamilyRatios {
    pub family: String,
    pub kd_memory_of_lora: Option<f64>,
    pub paper_kd_memory_of_lora: Option<f64>,
    pub kd_inference_of_fft: Option<f64>,
    pub paper_kd_inference_of_fft: Option<f64>,
}

pub fn summary(rows: &[ShapeRow]) -> Vec<FamilyRatios> {
    FAMILIES
        .iter()
        .map(|(family, _, _)| {
            let get = |m: &str| find(rows, family, m);
            let paper = |m: &str| paper::table2(family, m);
            FamilyRatios {
                family: family.to_string(),
                kd_memory_of_lora: ratio(
                    get("kd-lora").and_then(|r| r.train_peak_mb),
                    get("lora").and_then(|r| r.train_peak_mb),
                ),
                paper_kd_memory_of_lora: ratio(
                    paper("kd-lora").map(|p| p.0),
                    paper("lora").map(|p| p.0),
                ),
                kd_inference_of_fft: ratio(
                    get("kd-lora").and_then(|r| r.inference_batch_s),
                    get("fft").and_then(|r| r.inference_batch_s),
                ),
                paper_kd_inference_of_fft: ratio(
                    paper("kd-lora").map(|p| p.1),
                    paper("fft").map(|p| p.1),
                ),
            }
        })
        .collect()
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.digits$}"))
}

/// "AMD EPYC ..., 2 cores (avx2, fma), 24 GB, Debian ..." from `bench::machine`.
fn machine_line(m: &Value) -> String {
    let flags: Vec<&str> = m["cpu_flags"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    format!(
        "{}, {} cores ({}), {:.0} GB, {}",
        m["cpu"].as_str().unwrap_or("unknown CPU"),
        m["cores"].as_u64().unwrap_or(0),
        flags.join(", "),
        m["memory_gb"].as_f64().unwrap_or(f64::NAN),
        m["os"].as_str().unwrap_or("unknown OS"),
    )
}

fn markdown(shapes: &PaperShapes, rows: &[ShapeRow], seconds: f64, machine: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Table 2 at the paper's model shapes ({})\n",
        shapes.device
    );
    let _ = writeln!(md, "Machine: {machine}.\n");
    let _ = writeln!(
        md,
        "The paper's models with fresh weights of their published shapes (`configs/models/`), \
         measured here by `kdlora bench` in one process per configuration ({:.1} min in all). \
         Training: batch {} x {} tokens, median of {} step(s) after {} warm-up step(s); memory is \
         the process's peak resident set (VmHWM, MB = 10^6 bytes: weights, gradients, AdamW state, \
         activations and the runtime). Inference: forward passes of batch {} x {} tokens with \
         adapters merged (so LoRA's model is FFT's), median of {}. LoRA: r = {} on query and value \
         with the head trained; KD-LoRA adds the KD loss against teacher logits looked up by \
         example index. The paper measured CUDA allocated memory on an A100 and seconds over the \
         CoLA dev set: compare the ratios, not the absolute numbers.\n",
        seconds / 60.0,
        shapes.batch,
        shapes.seq,
        shapes.steps,
        shapes.warmup,
        shapes.inference_batch,
        shapes.inference_seq,
        shapes.inference_steps,
        shapes.r,
    );
    let _ = writeln!(
        md,
        "| family | model | method | trainable | total | peak MB | x FFT | paper MB | paper x FFT | \
         step s | inference s/batch | x FFT | paper s | paper x FFT |"
    );
    let _ = writeln!(
        md,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in rows {
        let fft = find(rows, &r.family, "fft");
        let paper_row = paper::table2(&r.family, &r.method);
        let paper_fft = paper::table2(&r.family, "fft");
        let count = |v: Option<u64>| v.map_or("n/a".into(), crate::tables::group_digits);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |{}",
            r.family,
            r.model,
            crate::tables::method_name(&r.method),
            count(r.trainable_params),
            count(r.total_params),
            fmt(r.train_peak_mb, 0),
            fmt(ratio(r.train_peak_mb, fft.and_then(|f| f.train_peak_mb)), 2),
            fmt(paper_row.map(|p| p.0), 1),
            fmt(ratio(paper_row.map(|p| p.0), paper_fft.map(|p| p.0)), 2),
            fmt(r.train_step_s, 2),
            fmt(r.inference_batch_s, 3),
            fmt(
                ratio(r.inference_batch_s, fft.and_then(|f| f.inference_batch_s)),
                2
            ),
            fmt(paper_row.map(|p| p.1), 2),
            fmt(ratio(paper_row.map(|p| p.1), paper_fft.map(|p| p.1)), 2),
            r.error
                .as_ref()
                .map_or(String::new(), |e| format!(" failed: {e}")),
        );
    }
    md.push('\n');
    let _ = writeln!(
        md,
        "| family | KD-LoRA memory / LoRA's (here) | (paper) | KD-LoRA inference / FFT's (here) | (paper) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for s in summary(rows) {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            s.family,
            fmt(s.kd_memory_of_lora, 2),
            fmt(s.paper_kd_memory_of_lora, 2),
            fmt(s.kd_inference_of_fft, 2),
            fmt(s.paper_kd_inference_of_fft, 2),
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(family: &str, method: &str, mb: f64, infer: f64) -> ShapeRow {
        ShapeRow {
            family: family.into(),
            model: "m".into(),
            method: method.into(),
            trainable_params: Some(10),
            total_params: Some(100),
            train_peak_mb: Some(mb),
            train_step_s: Some(1.0),
            inference_batch_s: Some(infer),
            error: None,
        }
    }

    #[test]
    fn ratios_are_against_the_same_familys_rows_and_the_papers() {
        let rows = vec![
            row("BERT", "fft", 2000.0, 0.5),
            row("BERT", "lora", 1000.0, 0.5),
            row("BERT", "kd-lora", 700.0, 0.3),
        ];
        let s = summary(&rows);
        assert_eq!(s[0].kd_memory_of_lora, Some(0.7));
        assert!((s[0].kd_inference_of_fft.unwrap() - 0.6).abs() < 1e-12);
        // Paper, BERT: 296.8 / 463.5 and 5.36 / 6.10.
        assert!((s[0].paper_kd_memory_of_lora.unwrap() - 296.8 / 463.5).abs() < 1e-12);
        assert!((s[0].paper_kd_inference_of_fft.unwrap() - 5.36 / 6.10).abs() < 1e-12);
        // Families without rows have no ratio of ours.
        assert_eq!(s[1].kd_memory_of_lora, None);
        let shapes: PaperShapes = toml::from_str(
            "batch = 8\nseq = 64\nsteps = 2\ninference_batch = 32\ninference_seq = 64\ninference_steps = 3",
        )
        .unwrap();
        let md = markdown(&shapes, &rows, 60.0, "a test machine");
        assert!(md.contains("Machine: a test machine."), "{md}");
        assert!(
            md.contains("| BERT | m | KD-LoRA | 10 | 100 | 700 | 0.35 | 296.8 | 0.22 |"),
            "{md}"
        );
        assert!(md.contains("| BERT | 0.70 | 0.64 | 0.60 | 0.88 |"), "{md}");
    }
}
