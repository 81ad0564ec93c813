//! The same KD-LoRA run on the wgpu backend (Burn's fused `Wgpu` type, so the adapter goes through
//! kdlora-kernels' CubeCL kernels and their hand-written backward) and on the CPU backend (the
//! plain-tensor reference) gives the same numbers.
//!
//! On a machine without a GPU, wgpu runs on Mesa's software Vulkan driver (lavapipe, installed by
//! `.ci/run`); the shapes are small because lavapipe is 30-40x slower than NdArray. Dropout is off in
//! the model and the adapter so both runs compute the same function and only floating-point
//! summation order differs. Skips when `../shared` or a Vulkan driver is missing.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use burn::backend::wgpu::WgpuDevice;
use burn::backend::{Autodiff, NdArray, Wgpu};
use burn::tensor::Tensor;
use kdlora_train::{NoProgress, RunMetrics};

use crate::common::{config, q, shared};

type Cpu = Autodiff<NdArray<f32>>;
type Gpu = Autodiff<Wgpu>;

/// Whether a wgpu device can be created here (a Vulkan driver exists and works).
fn wgpu_available() -> bool {
    let icd_dirs = [
        "/usr/share/vulkan/icd.d",
        "/etc/vulkan/icd.d",
        "/usr/local/share/vulkan/icd.d",
    ];
    let has_icd = std::env::var_os("VK_ICD_FILENAMES").is_some()
        || std::env::var_os("VK_DRIVER_FILES").is_some()
        || icd_dirs.iter().any(|d| {
            std::fs::read_dir(d)
                .map(|mut e| e.next().is_some())
                .unwrap_or(false)
        });
    if !has_icd {
        eprintln!("skipping: no Vulkan ICD found (install mesa-vulkan-drivers)");
        return false;
    }
    // A failed probe panics; keep its backtrace out of the test output.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let probe = catch_unwind(AssertUnwindSafe(|| {
        let t = Tensor::<Wgpu, 1>::from_floats([1.0, 2.0], &WgpuDevice::default());
        (t * 2.0).into_data().to_vec::<f32>().ok()
    }));
    std::panic::set_hook(hook);
    match probe {
        Ok(Some(v)) if v == [2.0, 4.0] => true,
        other => {
            eprintln!("skipping: creating the wgpu device failed ({other:?})");
            false
        }
    }
}

/// The student model folder with every dropout probability set to 0 (weights and tokenizer linked).
fn without_dropout(model: &Path, out: &Path) -> PathBuf {
    std::fs::create_dir_all(out).unwrap();
    for entry in std::fs::read_dir(model).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name != "config.json" {
            std::fs::copy(entry.path(), out.join(&name)).unwrap();
        }
    }
    let text = std::fs::read_to_string(model.join("config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    for key in ["hidden_dropout_prob", "attention_probs_dropout_prob"] {
        cfg[key] = serde_json::json!(0.0);
    }
    std::fs::write(
        out.join("config.json"),
        serde_json::to_string(&cfg).unwrap(),
    )
    .unwrap();
    out.to_path_buf()
}

/// Tensors of a safetensors file by name, as f32.
fn tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, values)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn kd_lora_on_wgpu_matches_the_cpu_backend() {
    let _guard = crate::common::lock();
    let Some(shared) = shared() else { return };
    if !wgpu_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = without_dropout(
        &shared.join("models/paraphrase-MiniLM-L3-v2"),
        &tmp.path().join("student"),
    );
    let common = |method: &str, out: &Path| {
        vec![
            ("method", format!("{method:?}")),
            ("task", "\"sst2\"".to_string()),
            ("model", q(&model)),
            ("data", q(&shared.join("glue"))),
            ("out", q(out)),
            ("max_train_examples", "32".to_string()),
            ("max_eval_examples", "32".to_string()),
            ("max_len", "16".to_string()),
            ("batch_size", "16".to_string()),
            ("eval_batch_size", "32".to_string()),
            ("epochs", "1".to_string()),
            ("lr", "1e-3".to_string()),
            ("inference_passes", "0".to_string()),
            ("seed", "3".to_string()),
        ]
    };

    // A small FFT teacher on the CPU; both students distil from it.
    let teacher_run = tmp.path().join("teacher");
    kdlora_train::train::<Cpu>(
        &config(&common("fft", &teacher_run)),
        false,
        &Default::default(),
        &mut NoProgress,
    )
    .unwrap();

    let student = |out: &Path| {
        let mut pairs = common("kd-lora", out);
        pairs.extend([
            ("teacher", q(&teacher_run)),
            ("lora.dropout", "0.0".to_string()),
        ]);
        config(&pairs)
    };
    let cpu_run = tmp.path().join("cpu");
    let gpu_run = tmp.path().join("wgpu");
    let cpu: RunMetrics = kdlora_train::train::<Cpu>(
        &student(&cpu_run),
        false,
        &Default::default(),
        &mut NoProgress,
    )
    .unwrap();
    let gpu: RunMetrics = kdlora_train::train::<Gpu>(
        &student(&gpu_run),
        false,
        &WgpuDevice::default(),
        &mut NoProgress,
    )
    .unwrap();
    eprintln!(
        "cpu: loss {} score {}; wgpu: loss {} score {}",
        cpu.last.train_loss, cpu.last.score, gpu.last.train_loss, gpu.last.score
    );

    let rel = (cpu.last.train_loss - gpu.last.train_loss).abs() / cpu.last.train_loss.abs();
    assert!(
        rel < 1e-4,
        "train loss cpu {} vs wgpu {}",
        cpu.last.train_loss,
        gpu.last.train_loss
    );
    assert_eq!(cpu.last.score, gpu.last.score, "dev score differs");
    // Device memory is recorded for the GPU backend only.
    assert_eq!(cpu.memory.device_reserved_bytes, None);
    let reserved = gpu
        .memory
        .device_reserved_bytes
        .expect("wgpu run records device memory");
    // At least the student's f32 weights (17.4M parameters) live on the device.
    assert!(reserved > 17_000_000 * 4, "device memory {reserved} bytes");

    // The trained adapters (LoRA A/B and the saved head) agree weight by weight.
    let a = tensors(&cpu_run.join("adapter/adapter_model.safetensors"));
    let b = tensors(&gpu_run.join("adapter/adapter_model.safetensors"));
    assert_eq!(
        a.iter().map(|t| &t.0).collect::<Vec<_>>(),
        b.iter().map(|t| &t.0).collect::<Vec<_>>()
    );
    assert!(a.iter().any(|(name, _)| name.contains("lora_B")));
    let (mut worst, mut sum, mut count) = (0.0f32, 0.0f64, 0usize);
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert_eq!(x.len(), y.len(), "{name}");
        for (u, v) in x.iter().zip(y) {
            worst = worst.max((u - v).abs());
            sum += f64::from((u - v).abs());
            count += 1;
        }
    }
    let mean = sum / count as f64;
    eprintln!("adapter weight differences: largest {worst:e}, mean {mean:e}");
    // AdamW's step is about lr per entry whatever the gradient's size, so an entry whose gradient is
    // near zero can move differently on the two backends by up to ~lr per step (2 steps, lr 1e-3);
    // on average the weights must agree far more closely than that.
    assert!(worst < 2e-3, "adapter weights differ by up to {worst}");
    assert!(mean < 1e-5, "adapter weights differ by {mean} on average");
}
