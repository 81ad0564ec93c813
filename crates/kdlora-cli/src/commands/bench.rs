//! `kdlora bench`: measures one configuration (model x mode x device) and prints one JSON object.
//!
//! One configuration per process, so the peak resident memory (`VmHWM`) reported is that
//! configuration's alone; `cargo xtask bench` starts one process per configuration and puts the
//! results side by side with `bench/torch_reference.py`, which prints the same keys.
//!
//! A training step is the real one of `kdlora train`: forward on a fixed random batch, the loss
//! (cross-entropy; for `kd-lora` the KD-LoRA mix of cross-entropy and the T^2-scaled KL to
//! teacher logits looked up by example index in an in-memory [`TeacherLogits`] store), backward,
//! global gradient-norm clipping and the grouped AdamW update of `kdlora-train`. Inference is a
//! forward pass with the LoRA adapters merged into the base weights, on the plain (non-autodiff)
//! backend, reading the logits back to the host.

use std::path::PathBuf;
use std::time::Instant;

use crate::allocator::PurgePacer;

use anyhow::{Context, bail};
use burn::optim::GradientsParams;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use kdlora_distill::{KdConfig, TeacherLogits, TeacherLogitsMeta};
use kdlora_encoders::{LoadOptions, ModelConfig, SequenceClassifier};
use kdlora_lora::LoraConfig;
use kdlora_lora::{AutodiffLoraOps, LoraOps};
use kdlora_train::{GroupedAdamW, linear_schedule, param_counts, param_groups, peak_rss_bytes};
use serde::Serialize;

use crate::device::{AutodiffTask, BackendTask, DeviceArg};

/// Environment variable that carries `--threads` into the re-executed process (Burn's CPU
/// backend and the tokenizer size their rayon pools from it).
const THREADS_ENV: &str = "RAYON_NUM_THREADS";

/// What one step measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Full fine-tuning: every parameter trainable.
    Fft,
    /// LoRA (rank `--r`, alpha 16, dropout 0.05, query and value) with a trained head.
    Lora,
    /// LoRA trained against teacher logits (KD-LoRA loss, T = 2, alpha = 0.5).
    KdLora,
    /// Forward pass with merged adapters, no autodiff.
    Inference,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Fft => "fft",
            Mode::Lora => "lora",
            Mode::KdLora => "kd-lora",
            Mode::Inference => "inference",
        }
    }
}

/// Arguments of `kdlora bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Model folder (Hugging Face layout: config.json, model.safetensors), a Hugging Face Hub id
    /// (`org/name[@revision]`), or a config.json file alone for a model of that shape with
    /// freshly initialised weights (e.g. BERT-base).
    #[arg(long)]
    pub model: PathBuf,
    /// What to measure.
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// Compute device.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// Sequences per step.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
    /// Tokens per sequence (all attended).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub seq: u32,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub steps: u32,
    /// Untimed steps before the timed ones.
    #[arg(long, default_value_t = 2)]
    pub warmup: u32,
    /// Worker threads of CPU thread pools (sets RAYON_NUM_THREADS; the process re-executes
    /// itself when it was not started with that value).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
    /// LoRA rank (lora, kd-lora, inference).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub r: u32,
    /// Classifier outputs.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(2..))]
    pub num_labels: u32,
    /// Seed of the random batch, teacher logits and fresh weights.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// The JSON object `kdlora bench` prints (keys shared with `bench/torch_reference.py`).
#[derive(Debug, Serialize)]
pub struct BenchResult {
    /// Always `kdlora`.
    pub framework: &'static str,
    /// kdlora version.
    pub version: &'static str,
    /// fft, lora, kd-lora or inference.
    pub mode: &'static str,
    /// Model folder name.
    pub model: String,
    /// `model_type` of its config.json.
    pub model_type: String,
    /// cpu, ndarray, wgpu or cuda.
    pub device: &'static str,
    /// Burn's name of the backend and device.
    pub backend: String,
    /// Requested pool size (`--threads`, else RAYON_NUM_THREADS, else the number of cores).
    pub threads: usize,
    /// Average number of cores busy during the timed steps: process CPU time / wall time.
    pub cpu_cores_used: Option<f64>,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// LoRA rank where adapters are used.
    pub lora_r: Option<usize>,
    /// Scalars that receive gradients (0 for inference).
    pub trainable_params: usize,
    /// All scalars of the model as measured.
    pub total_params: usize,
    /// Median seconds of one timed step.
    pub median_step_s: f64,
    /// `batch / median_step_s`.
    pub examples_per_s: f64,
    /// Seconds of each timed step.
    pub step_seconds: Vec<f64>,
    /// Timed steps.
    pub steps: usize,
    /// Untimed warm-up steps.
    pub warmup: usize,
    /// Peak resident set size of the process (VmHWM) in MB (10^6 bytes).
    pub peak_rss_mb: Option<f64>,
    /// Seconds to load the model (and attach adapters).
    pub load_s: f64,
    /// mimalloc's purge delay at the end (ms), as paced by the step time (`MIMALLOC_PURGE_DELAY`
    /// fixes it).
    pub purge_delay_ms: std::ffi::c_long,
    /// Training loss of the first and last step (a fixed batch: it should fall).
    pub loss_first_last: Option<[f64; 2]>,
}

/// Runs the verb.
pub fn run(mut args: Args) -> anyhow::Result<()> {
    if let Some(threads) = args.threads
        && std::env::var(THREADS_ENV).ok() != Some(threads.to_string())
    {
        return reexec_with_threads(threads);
    }
    // Resolved (and downloaded) before any timing starts.
    args.model = kdlora_hub::resolve_model_path(&args.model)?;
    let result = match args.mode {
        Mode::Inference => args.device.run(Infer { args })?,
        _ => args.device.run_autodiff(Train { args })?,
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

/// Thread pools read their size when first used, so the variable has to be in place at start.
fn reexec_with_threads(threads: u32) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the kdlora executable")?;
    let status = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env(THREADS_ENV, threads.to_string())
        // matrixmultiply's own pool (when Burn's CPU backend is built with threads).
        .env("MATMUL_NUM_THREADS", threads.to_string())
        .status()
        .with_context(|| format!("re-running {}", exe.display()))?;
    if status.success() {
        return Ok(());
    }
    // The child has printed its own error; pass its exit status on without repeating it.
    std::process::exit(status.code().unwrap_or(1))
}

fn requested_threads(args: &Args) -> usize {
    args.threads
        .map(|t| t as usize)
        .or_else(|| std::env::var(THREADS_ENV).ok()?.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// SplitMix64: a fixed, dependency-free stream for the random batch.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// A full-attention batch of random token ids (as the PyTorch script: ids from 1000 up, where
/// the vocabulary is large enough, so special tokens are avoided).
struct Batch {
    ids: Vec<i64>,
    labels: Vec<i64>,
    shape: [usize; 2],
}

impl Batch {
    fn random(args: &Args, vocab: usize) -> Self {
        let (batch, seq) = (args.batch as usize, args.seq as usize);
        let mut rng = SplitMix(args.seed);
        let low = if vocab > 2000 { 1000 } else { 0 };
        let ids = (0..batch * seq)
            .map(|_| (low + rng.below((vocab - low) as u64) as usize) as i64)
            .collect();
        let labels = (0..batch)
            .map(|_| rng.below(u64::from(args.num_labels)) as i64)
            .collect();
        Self {
            ids,
            labels,
            shape: [batch, seq],
        }
    }

    fn inputs<B: LoraOps>(
        &self,
        device: &B::Device,
    ) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>, Tensor<B, 2, Int>) {
        let n = self.ids.len();
        let int =
            |v: Vec<i64>| Tensor::<B, 2, Int>::from_data(TensorData::new(v, self.shape), device);
        (int(self.ids.clone()), int(vec![1; n]), int(vec![0; n]))
    }

    fn labels<B: LoraOps>(&self, device: &B::Device) -> Tensor<B, 1, Int> {
        Tensor::from_data(
            TensorData::new(self.labels.clone(), [self.labels.len()]),
            device,
        )
    }
}

fn load<B: LoraOps>(args: &Args, device: &B::Device) -> anyhow::Result<SequenceClassifier<B>> {
    let options = LoadOptions::default()
        .with_num_labels(args.num_labels as usize)
        .with_seed(args.seed)
        .with_fresh_head(true);
    let model = if args.model.is_file() {
        let config = ModelConfig::from_file(&args.model)?;
        SequenceClassifier::<B>::from_config(config, &options, device)
            .with_context(|| format!("building a model from {}", args.model.display()))?
    } else {
        SequenceClassifier::<B>::load(&args.model, &options, device)
            .with_context(|| format!("loading the model from {}", args.model.display()))?
            .0
    };
    let max = model.max_sequence_length();
    if args.seq as usize > max {
        bail!(
            "--seq {} exceeds the model's maximum sequence length {max}",
            args.seq
        );
    }
    if args.mode == Mode::Fft {
        return Ok(model);
    }
    let cfg = LoraConfig {
        r: args.r as usize,
        seed: args.seed,
        ..LoraConfig::default()
    };
    kdlora_lora::inject(model, &cfg, device).context("attaching LoRA adapters")
}

/// CPU seconds of the whole process (all threads), from the scheduler's per-thread totals.
fn process_cpu_seconds() -> Option<f64> {
    let mut total_ns: u128 = 0;
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let path = entry.ok()?.path().join("schedstat");
        let text = std::fs::read_to_string(path).ok()?;
        total_ns += text.split_whitespace().next()?.parse::<u128>().ok()?;
    }
    Some(total_ns as f64 / 1e9)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// Wall time of the timed steps (those after the warm-up) and the cores busy meanwhile.
/// Every step, warm-up included, also paces the allocator's purge delay, as `kdlora train` does.
struct Timer {
    warmup: usize,
    seconds: Vec<f64>,
    started: Option<(Instant, bool)>,
    first: Option<(Instant, Option<f64>)>,
    pacer: PurgePacer,
}

impl Timer {
    fn new(warmup: usize) -> Self {
        Self {
            warmup,
            seconds: Vec::new(),
            started: None,
            first: None,
            pacer: PurgePacer::new(),
        }
    }

    fn begin(&mut self, step: usize) {
        let now = Instant::now();
        let timed = step >= self.warmup;
        if timed && self.first.is_none() {
            self.first = Some((now, process_cpu_seconds()));
        }
        self.started = Some((now, timed));
    }

    fn end(&mut self) {
        if let Some((start, timed)) = self.started.take() {
            let elapsed = start.elapsed();
            self.pacer.observe(elapsed);
            if timed {
                self.seconds.push(elapsed.as_secs_f64());
            }
        }
    }

    /// Step seconds, process CPU time / wall time over the timed steps, and the purge delay.
    fn finish(self) -> (Vec<f64>, Option<f64>, std::ffi::c_long) {
        let cores = self.first.and_then(|(wall_start, cpu_start)| {
            let wall = wall_start.elapsed().as_secs_f64();
            let cpu = process_cpu_seconds()? - cpu_start?;
            (wall > 0.0).then_some(cpu / wall)
        });
        (self.seconds, cores, self.pacer.delay_ms())
    }
}

/// What a measurement knows besides the timings.
struct Measured {
    model_type: String,
    backend: String,
    trainable: usize,
    total: usize,
    load_s: f64,
    losses: Option<[f64; 2]>,
}

fn result(
    args: &Args,
    measured: Measured,
    (step_seconds, cores, purge_delay_ms): (Vec<f64>, Option<f64>, std::ffi::c_long),
) -> BenchResult {
    let median_step_s = median(&step_seconds);
    BenchResult {
        framework: "kdlora",
        version: env!("CARGO_PKG_VERSION"),
        mode: args.mode.name(),
        // A Hub snapshot folder is named by its commit: report the repository instead.
        model: kdlora_hub::hub_source(&args.model).map_or_else(
            || {
                args.model
                    .file_stem()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_else(|| args.model.display().to_string())
            },
            |hub| hub.id,
        ),
        model_type: measured.model_type,
        device: args.device.name(),
        backend: measured.backend,
        threads: requested_threads(args),
        cpu_cores_used: cores,
        batch: args.batch as usize,
        seq: args.seq as usize,
        lora_r: (args.mode != Mode::Fft).then_some(args.r as usize),
        trainable_params: measured.trainable,
        total_params: measured.total,
        median_step_s,
        examples_per_s: if median_step_s > 0.0 {
            f64::from(args.batch) / median_step_s
        } else {
            0.0
        },
        steps: step_seconds.len(),
        step_seconds,
        warmup: args.warmup as usize,
        peak_rss_mb: peak_rss_bytes().map(|b| b as f64 / 1e6),
        load_s: measured.load_s,
        purge_delay_ms,
        loss_first_last: measured.losses,
    }
}

struct Train {
    args: Args,
}

impl AutodiffTask for Train {
    type Output = BenchResult;

    fn run<B: AutodiffLoraOps>(self, device: B::Device) -> anyhow::Result<BenchResult> {
        let args = self.args;
        B::seed(&device, args.seed);
        let load_start = Instant::now();
        let mut model = load::<B>(&args, &device)?;
        let load_s = load_start.elapsed().as_secs_f64();
        let batch = Batch::random(&args, model.config().vocab_size);
        let kd = KdConfig::default();
        // Teacher logits for four batches' worth of examples, looked up by index each step as
        // the training loop does with the store it computed.
        let teacher = if args.mode == Mode::KdLora {
            let n = 4 * args.batch as usize;
            let classes = args.num_labels as usize;
            let mut rng = SplitMix(args.seed ^ 0x7EAC);
            let logits = (0..n * classes).map(|_| 3.0 * rng.unit()).collect();
            let meta = TeacherLogitsMeta {
                teacher: "random (kdlora bench)".into(),
                task: "bench".into(),
                split: "train".into(),
                max_len: args.seq as usize,
                num_examples: n,
                num_outputs: classes,
                ..Default::default()
            };
            Some(TeacherLogits::new(meta, logits)?)
        } else {
            None
        };
        let groups = param_groups::<B, _>(&model);
        let counts = groups
            .counts
            .unwrap_or_else(|| param_counts::<B, _>(&model));
        let mut optim = GroupedAdamW::<SequenceClassifier<B>, B>::new(&groups, 0.01, 1.0);
        let total_steps = (args.warmup + args.steps) as usize;
        let mut losses = Vec::with_capacity(total_steps);
        let mut timer = Timer::new(args.warmup as usize);
        for step in 0..total_steps {
            timer.begin(step);
            let (ids, mask, types) = batch.inputs::<B>(&device);
            let logits = model.forward(ids, mask, types);
            let labels = batch.labels::<B>(&device);
            let loss = match &teacher {
                Some(store) => {
                    let n = store.num_examples();
                    let positions: Vec<usize> = (0..args.batch as usize)
                        .map(|i| (step * args.batch as usize + i) % n)
                        .collect();
                    let t = store.lookup::<B>(&positions, &device)?;
                    kdlora_distill::try_kd_loss(logits, t, labels, &kd)?.total
                }
                None => kdlora_distill::hard_loss(logits, labels),
            };
            // The training loop reads every loss (to stop on a non-finite one); so does this.
            let value: f64 = loss.clone().into_scalar().elem();
            if !value.is_finite() {
                bail!("non-finite loss {value} at step {}", step + 1);
            }
            losses.push(value);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let lr = linear_schedule(5e-4, step, total_steps, 0);
            (model, _) = optim.step(lr, model, grads);
            B::sync(&device).map_err(|e| anyhow::anyhow!("synchronising the device: {e:?}"))?;
            timer.end();
        }
        let measured = Measured {
            model_type: model.config().model_type.clone(),
            backend: B::name(&device),
            trainable: counts.trainable,
            total: counts.total,
            load_s,
            losses: match (losses.first(), losses.last()) {
                (Some(&a), Some(&b)) => Some([a, b]),
                _ => None,
            },
        };
        Ok(result(&args, measured, timer.finish()))
    }
}

struct Infer {
    args: Args,
}

impl BackendTask for Infer {
    type Output = BenchResult;

    fn run<B: LoraOps>(self, device: B::Device) -> anyhow::Result<BenchResult> {
        let args = self.args;
        B::seed(&device, args.seed);
        let load_start = Instant::now();
        let mut model = load::<B>(&args, &device)?;
        // As PEFT's merge_and_unload: the adapters are folded in and dropped.
        kdlora_lora::merge_and_unload(&mut model);
        let load_s = load_start.elapsed().as_secs_f64();
        let counts = param_counts::<B, _>(&model);
        let batch = Batch::random(&args, model.config().vocab_size);
        let mut timer = Timer::new(args.warmup as usize);
        for step in 0..(args.warmup + args.steps) as usize {
            timer.begin(step);
            let (ids, mask, types) = batch.inputs::<B>(&device);
            let logits = model.forward(ids, mask, types);
            // Reading the logits back is part of inference and waits for the device.
            let _ = logits.into_data();
            timer.end();
        }
        let measured = Measured {
            model_type: model.config().model_type.clone(),
            backend: B::name(&device),
            trainable: 0,
            total: counts.total,
            load_s,
            losses: None,
        };
        Ok(result(&args, measured, timer.finish()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_lists() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn random_ids_stay_in_the_vocabulary() {
        let args = Args {
            model: PathBuf::from("m"),
            mode: Mode::Fft,
            device: DeviceArg::Cpu,
            batch: 4,
            seq: 16,
            steps: 1,
            warmup: 0,
            threads: None,
            r: 8,
            num_labels: 3,
            seed: 1,
        };
        let small = Batch::random(&args, 100);
        assert!(small.ids.iter().all(|&i| (0..100).contains(&i)));
        let large = Batch::random(&args, 30522);
        assert!(large.ids.iter().all(|&i| (1000..30522).contains(&i)));
        assert!(small.labels.iter().all(|&l| (0..3).contains(&l)));
        assert_eq!(small.ids.len(), 64);
        let mut rng = SplitMix(7);
        assert!(
            (0..1000)
                .map(|_| rng.unit())
                .all(|u| (-1.0..1.0).contains(&u))
        );
    }
}
