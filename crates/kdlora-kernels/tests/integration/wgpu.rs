//! The kernels on wgpu, compared with the CPU reference (forward and every gradient, 1e-4 relative).
//!
//! On a machine without a GPU this runs on Mesa's software Vulkan driver (lavapipe: `apt-get install
//! mesa-vulkan-drivers libvulkan1`). Without any Vulkan driver the tests print why and return early.
//! Shapes are deliberately not multiples of the workgroup sizes (32x8, 64x4) and cover ranks 1 to 64;
//! they are kept small because lavapipe is slow and the first launch compiles every kernel.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::OnceLock;

use crate::common::{
    Cpu, Problem, assert_close, assert_outputs_close, fused_outputs, fused_switch_lock,
    reference_outputs,
};
use burn::backend::wgpu::{CubeBackend, WgpuDevice, WgpuRuntime};
use burn::backend::{Autodiff, Wgpu};
use burn::tensor::{Distribution, Tensor, TensorData};
use kdlora_kernels::{LoraOps, set_fused_enabled};

/// The plain CubeCL backend, without burn's fusion layer.
type Unfused = CubeBackend<WgpuRuntime, f32, i32, u32>;

const TOL: f32 = 1e-4;

/// `(tokens, in, out, rank)`: none a multiple of the workgroup sizes.
const SHAPES: &[(usize, usize, usize, usize)] = &[
    (37, 29, 33, 1),
    (301, 70, 65, 4),
    (1029, 97, 130, 8),
    (2501, 96, 81, 16),
    (129, 200, 150, 64),
];

fn vulkan_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let icd_dirs = [
            "/usr/share/vulkan/icd.d",
            "/etc/vulkan/icd.d",
            "/usr/local/share/vulkan/icd.d",
        ];
        let has_icd = std::env::var_os("VK_ICD_FILENAMES").is_some()
            || std::env::var_os("VK_DRIVER_FILES").is_some()
            || icd_dirs.iter().any(|d| {
                std::fs::read_dir(Path::new(d))
                    .map(|mut e| e.next().is_some())
                    .unwrap_or(false)
            });
        if !has_icd {
            eprintln!("skipping wgpu tests: no Vulkan ICD found (install mesa-vulkan-drivers)");
            return false;
        }
        // A failed probe panics (on a worker thread too); keep its backtrace out of the test output.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let probe = catch_unwind(AssertUnwindSafe(|| {
            let t = Tensor::<Unfused, 1>::from_floats([1.0, 2.0], &WgpuDevice::default());
            (t * 2.0).into_data().to_vec::<f32>().ok()
        }));
        std::panic::set_hook(hook);
        match probe {
            Ok(Some(v)) if v == [2.0, 4.0] => true,
            other => {
                eprintln!("skipping wgpu tests: creating the wgpu device failed ({other:?})");
                false
            }
        }
    })
}

fn to<B: burn::tensor::backend::Backend<Device = WgpuDevice>>(d: &TensorData) -> Tensor<B, 2> {
    Tensor::from_data(d.clone(), &WgpuDevice::default())
}

fn forward<B: LoraOps<Device = WgpuDevice>>(p: &Problem) -> TensorData {
    let y = B::lora_forward(
        to::<B>(&p.x).into_primitive().tensor(),
        to::<B>(&p.base).into_primitive().tensor(),
        to::<B>(&p.a).into_primitive().tensor(),
        to::<B>(&p.b).into_primitive().tensor(),
        p.scaling,
    );
    Tensor::<B, 2>::from_primitive(burn::tensor::TensorPrimitive::Float(y)).into_data()
}

#[test]
fn unfused_cube_backend_forward_matches_reference() {
    let _g = fused_switch_lock();
    if !vulkan_available() {
        return;
    }
    for &(t, i, o, r) in SHAPES {
        let p = Problem::random(t, i, o, r);
        let expected = reference_outputs(&p).y;
        assert_close(
            &forward::<Unfused>(&p),
            &expected,
            TOL,
            &format!("unfused {t}x{i}->{o} r{r}"),
        );
    }
}

#[test]
fn fused_wgpu_forward_and_all_gradients_match_reference() {
    let _g = fused_switch_lock();
    if !vulkan_available() {
        return;
    }
    set_fused_enabled(true);
    for &(t, i, o, r) in SHAPES {
        let p = Problem::random(t, i, o, r);
        let expected = reference_outputs(&p);
        let actual = fused_outputs::<Autodiff<Wgpu>>(&p, &WgpuDevice::default());
        assert_outputs_close(
            &actual,
            &expected,
            TOL,
            &format!("Autodiff<Wgpu> {t}x{i}->{o} r{r}"),
        );
    }
}

#[test]
fn unfused_autodiff_gradients_match_reference() {
    let _g = fused_switch_lock();
    if !vulkan_available() {
        return;
    }
    set_fused_enabled(true);
    for &(t, i, o, r) in &SHAPES[1..3] {
        let p = Problem::random(t, i, o, r);
        let expected = reference_outputs(&p);
        let actual = fused_outputs::<Autodiff<Unfused>>(&p, &WgpuDevice::default());
        assert_outputs_close(
            &actual,
            &expected,
            TOL,
            &format!("Autodiff<CubeBackend> {t}x{i}->{o} r{r}"),
        );
    }
}

#[test]
fn base_output_shared_elsewhere_is_not_overwritten() {
    // The up-projection writes into base_out in place only when nothing else holds the buffer.
    let _g = fused_switch_lock();
    if !vulkan_available() {
        return;
    }
    let p = Problem::random(45, 19, 23, 4);
    let dev = WgpuDevice::default();
    let base = Tensor::<Wgpu, 2>::from_data(p.base.clone(), &dev);
    let y = kdlora_kernels::lora_delta_add(
        Tensor::<Wgpu, 2>::from_data(p.x.clone(), &dev),
        base.clone(),
        Tensor::<Wgpu, 2>::from_data(p.a.clone(), &dev),
        Tensor::<Wgpu, 2>::from_data(p.b.clone(), &dev),
        p.scaling,
    );
    assert_close(&y.into_data(), &reference_outputs(&p).y, TOL, "forward");
    assert_close(&base.into_data(), &p.base, 0.0, "base_out unchanged");
}

#[test]
fn dropout_mask_and_switch_off_on_wgpu() {
    let _g = fused_switch_lock();
    if !vulkan_available() {
        return;
    }
    let p = Problem::random(333, 48, 40, 8);
    let mask =
        Tensor::<Cpu, 2>::random([333, 48], Distribution::Bernoulli(0.9), &Default::default())
            .into_data();
    let masked: Vec<f32> =
        p.x.to_vec::<f32>()
            .unwrap()
            .iter()
            .zip(mask.to_vec::<f32>().unwrap())
            .map(|(x, m)| x * m / 0.9)
            .collect();
    let masked = Problem {
        x: TensorData::new(masked, [333, 48]),
        ..p.clone()
    };
    set_fused_enabled(true);
    let dev = WgpuDevice::default();
    let x = Tensor::<Wgpu, 2>::from_data(p.x.clone(), &dev);
    let m = Tensor::<Wgpu, 2>::from_data(mask.clone(), &dev);
    let y = kdlora_kernels::lora_delta_add(
        x * m / 0.9,
        to::<Wgpu>(&p.base),
        to::<Wgpu>(&p.a),
        to::<Wgpu>(&p.b),
        p.scaling,
    );
    let expected = reference_outputs(&masked);
    assert_close(&y.into_data(), &expected.y, TOL, "masked forward");

    set_fused_enabled(false);
    let off = fused_outputs::<Autodiff<Wgpu>>(&masked, &dev);
    set_fused_enabled(true);
    assert_outputs_close(&off, &expected, TOL, "fused path off");
}

/// `(gelu(x) * w).sum()` and `(softmax(x) * w).sum()` on one backend: outputs and input gradients.
fn hot_path_outputs<B: LoraOps + burn::tensor::backend::AutodiffBackend>(
    x: &TensorData,
    w: &TensorData,
    device: &B::Device,
) -> [TensorData; 4] {
    let x1 = Tensor::<B, 2>::from_data(x.clone(), device).require_grad();
    let w1 = Tensor::<B, 2>::from_data(w.clone(), device);
    let y1 = kdlora_kernels::gelu(x1.clone());
    let g1 = (y1.clone() * w1.clone()).sum().backward();
    let x2 = Tensor::<B, 2>::from_data(x.clone(), device).require_grad();
    let y2 = kdlora_kernels::softmax(x2.clone());
    let g2 = (y2.clone() * w1).sum().backward();
    [
        y1.into_data(),
        x1.grad(&g1).unwrap().into_data(),
        y2.into_data(),
        x2.grad(&g2).unwrap().into_data(),
    ]
}

#[test]
fn gelu_and_softmax_nodes_on_wgpu_match_the_cpu_fast_path() {
    let _g = fused_switch_lock();
    if !vulkan_available() {
        return;
    }
    // 77 x 129: rows longer than a workgroup, neither a multiple of 32.
    let cpu = Default::default();
    let x = Tensor::<Cpu, 2>::random([77, 129], Distribution::Normal(0.0, 2.0), &cpu).into_data();
    let w = Tensor::<Cpu, 2>::random([77, 129], Distribution::Normal(0.0, 1.0), &cpu).into_data();
    let on_cpu = hot_path_outputs::<Autodiff<Cpu>>(&x, &w, &cpu);
    let on_wgpu = hot_path_outputs::<Autodiff<Wgpu>>(&x, &w, &WgpuDevice::default());
    for (what, (c, g)) in ["gelu", "gelu grad", "softmax", "softmax grad"]
        .iter()
        .zip(on_cpu.iter().zip(&on_wgpu))
    {
        assert_close(g, c, TOL, what);
    }
}
