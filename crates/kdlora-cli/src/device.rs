//! `--device cpu|ndarray|wgpu|cuda`: picks the Burn backend and runs backend-generic code on it.
//!
//! A verb puts its work in a type implementing [`BackendTask`] (or [`AutodiffTask`] for training)
//! and calls [`DeviceArg::run`] (or [`DeviceArg::run_autodiff`]); the generic code is compiled once
//! per backend.

use std::panic::{AssertUnwindSafe, catch_unwind};

use anyhow::anyhow;
use burn::backend::{Autodiff, Cuda, Flex, NdArray, Wgpu};
use kdlora_lora::{AutodiffLoraOps, LoraOps};

/// The compute device (and with it the Burn backend).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    /// CPU through Burn's Flex backend (f32): SIMD element-wise ops and AVX-512/AVX2 `gemm` matmuls
    /// on every core (docs/results/bench compares the CPU backends).
    #[default]
    Cpu,
    /// CPU through Burn's ndarray backend (f32): the previous CPU default, kept for comparison.
    Ndarray,
    /// GPU (or a software Vulkan driver) through wgpu.
    Wgpu,
    /// NVIDIA GPU through CUDA (needs the driver at run time, not at build time).
    Cuda,
    /// CPU through Burn's candle backend (f32; feature `candle`, deprecated upstream): kept to measure
    /// it against `cpu` (docs/results/bench).
    #[cfg(feature = "candle")]
    Candle,
}

/// Work that runs on any backend.
pub trait BackendTask {
    /// What the work returns.
    type Output;
    /// Runs on backend `B` with `device`.
    fn run<B: LoraOps>(self, device: B::Device) -> anyhow::Result<Self::Output>;
}

/// Work that needs gradients (training) and runs on any autodiff backend.
pub trait AutodiffTask {
    /// What the work returns.
    type Output;
    /// Runs on autodiff backend `B` with `device`.
    fn run<B: AutodiffLoraOps>(self, device: B::Device) -> anyhow::Result<Self::Output>;
}

impl DeviceArg {
    /// The name `--device` and the `device` configuration key use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Ndarray => "ndarray",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
            #[cfg(feature = "candle")]
            Self::Candle => "candle",
        }
    }

    /// Runs `task` on the backend of this device.
    #[cfg_attr(feature = "candle", allow(deprecated))] // candle: kept to measure it
    pub fn run<T: BackendTask>(self, task: T) -> anyhow::Result<T::Output> {
        match self {
            Self::Cpu => task.run::<Flex>(Default::default()),
            Self::Ndarray => task.run::<NdArray<f32>>(Default::default()),
            Self::Wgpu => on_gpu(self, || task.run::<Wgpu>(Default::default())),
            Self::Cuda => on_gpu(self, || task.run::<Cuda>(Default::default())),
            #[cfg(feature = "candle")]
            Self::Candle => task.run::<burn_candle::Candle<f32, i64>>(Default::default()),
        }
    }

    /// Runs `task` on the autodiff version of this device's backend.
    #[allow(dead_code)] // used by the training verbs
    #[cfg_attr(feature = "candle", allow(deprecated))] // candle: kept to measure it
    pub fn run_autodiff<T: AutodiffTask>(self, task: T) -> anyhow::Result<T::Output> {
        match self {
            Self::Cpu => task.run::<Autodiff<Flex>>(Default::default()),
            Self::Ndarray => task.run::<Autodiff<NdArray<f32>>>(Default::default()),
            Self::Wgpu => on_gpu(self, || task.run::<Autodiff<Wgpu>>(Default::default())),
            Self::Cuda => on_gpu(self, || task.run::<Autodiff<Cuda>>(Default::default())),
            #[cfg(feature = "candle")]
            Self::Candle => task.run::<Autodiff<burn_candle::Candle<f32, i64>>>(Default::default()),
        }
    }
}

/// GPU runtimes panic when no adapter or driver is present; report that as an error instead.
fn on_gpu<T>(device: DeviceArg, work: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        Err(anyhow!(
            "the {device:?} device failed ({message}); is a {} available? `--device cpu` always works",
            match device {
                DeviceArg::Cuda => "CUDA driver and GPU",
                _ => "GPU or Vulkan driver",
            }
        ))
    })
}
