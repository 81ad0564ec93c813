//! Adapter forward + backward: the fused `LoraOps` path against the reference ops, on every device
//! available here (NdArray always; wgpu when a Vulkan driver works; CUDA when a driver is present).
//!
//! Size: `KDLORA_BENCH_ADAPTER="tokens,hidden,rank"` (default `1024,256,8`, modest for a 2-core CPU
//! and lavapipe); the GPU target is `16384,768,8`. Besides criterion's statistics, each device
//! prints the median times and the ratio reference / fused (> 1 means the fused path is faster).

use std::hint::black_box;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{
    Distribution, Tensor, TensorData,
    backend::{AutodiffBackend, Backend},
};
use criterion::{Criterion, criterion_group, criterion_main};
use kdlora_kernels::{LoraOps, lora_delta_add, set_fused_enabled};

struct Size {
    tokens: usize,
    hidden: usize,
    rank: usize,
}

fn size() -> Size {
    let default = Size {
        tokens: 1024,
        hidden: 256,
        rank: 8,
    };
    let Ok(spec) = std::env::var("KDLORA_BENCH_ADAPTER") else {
        return default;
    };
    let v: Vec<usize> = spec
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    match v[..] {
        [tokens, hidden, rank] if tokens > 0 && hidden > 0 && rank > 0 => Size {
            tokens,
            hidden,
            rank,
        },
        _ => {
            eprintln!(
                "KDLORA_BENCH_ADAPTER={spec:?} is not 'tokens,hidden,rank'; using the default"
            );
            default
        }
    }
}

struct Inputs {
    x: TensorData,
    base: TensorData,
    a: TensorData,
    b: TensorData,
    w: TensorData,
}

fn inputs(s: &Size) -> Inputs {
    let dev = Default::default();
    let u = Distribution::Uniform(-1.0, 1.0);
    let d = |shape: [usize; 2]| Tensor::<NdArray<f32>, 2>::random(shape, u, &dev).into_data();
    Inputs {
        x: d([s.tokens, s.hidden]),
        base: d([s.tokens, s.hidden]),
        a: d([s.rank, s.hidden]),
        b: d([s.hidden, s.rank]),
        w: d([s.tokens, s.hidden]),
    }
}

/// One training-style step: forward, backward, all four gradients, synchronised with the device.
fn step<B: AutodiffBackend + LoraOps>(inp: &Inputs, dev: &B::Device, fused: bool) {
    set_fused_enabled(fused);
    let t = |d: &TensorData| Tensor::<B, 2>::from_data(d.clone(), dev).require_grad();
    let (x, base, a, b) = (t(&inp.x), t(&inp.base), t(&inp.a), t(&inp.b));
    let w = Tensor::<B, 2>::from_data(inp.w.clone(), dev);
    let y = lora_delta_add(x.clone(), base.clone(), a.clone(), b.clone(), 2.0);
    let grads = (y * w).sum().backward();
    black_box((
        x.grad(&grads),
        base.grad(&grads),
        a.grad(&grads),
        b.grad(&grads),
    ));
    B::sync(dev).expect("device sync");
}

/// Forward only, on the inner (non-autodiff) backend as at inference.
fn forward<B: AutodiffBackend + LoraOps>(inp: &Inputs, dev: &B::Device, fused: bool)
where
    B::InnerBackend: LoraOps,
{
    set_fused_enabled(fused);
    let t = |d: &TensorData| Tensor::<B::InnerBackend, 2>::from_data(d.clone(), dev);
    let y = lora_delta_add(t(&inp.x), t(&inp.base), t(&inp.a), t(&inp.b), 2.0);
    black_box(y);
    <B::InnerBackend as Backend>::sync(dev).expect("device sync");
}

fn median_secs(mut run: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..7)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn report(label: &str, fused: f64, reference: f64) {
    println!(
        "{label}: fused {:.3} ms, reference {:.3} ms, ratio reference/fused {:.2}x",
        fused * 1e3,
        reference * 1e3,
        reference / fused
    );
}

fn bench_device<B: AutodiffBackend + LoraOps>(c: &mut Criterion, name: &str, dev: B::Device)
where
    B::InnerBackend: LoraOps,
{
    let s = size();
    let inp = inputs(&s);
    // Warm-up: the first GPU launches compile (and autotune) kernels.
    for fused in [true, false] {
        step::<B>(&inp, &dev, fused);
        forward::<B>(&inp, &dev, fused);
    }

    let shape = format!("t{}_h{}_r{}", s.tokens, s.hidden, s.rank);
    let label = format!("adapter_fwd_bwd/{name}/{shape}");
    let mut group = c.benchmark_group(label.clone());
    group.bench_function("fused", |bch| bch.iter(|| step::<B>(&inp, &dev, true)));
    group.bench_function("reference", |bch| bch.iter(|| step::<B>(&inp, &dev, false)));
    group.finish();
    let fwd_label = format!("adapter_fwd/{name}/{shape}");
    let mut group = c.benchmark_group(fwd_label.clone());
    group.bench_function("fused", |bch| bch.iter(|| forward::<B>(&inp, &dev, true)));
    group.bench_function("reference", |bch| {
        bch.iter(|| forward::<B>(&inp, &dev, false))
    });
    group.finish();

    report(
        &label,
        median_secs(|| step::<B>(&inp, &dev, true)),
        median_secs(|| step::<B>(&inp, &dev, false)),
    );
    report(
        &fwd_label,
        median_secs(|| forward::<B>(&inp, &dev, true)),
        median_secs(|| forward::<B>(&inp, &dev, false)),
    );
    set_fused_enabled(true);
}

/// Runs `probe` and reports whether it panicked (device creation panics when no driver exists); the
/// panic message and backtrace of a failed probe are silenced.
fn works(probe: impl FnOnce()) -> bool {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let ok = catch_unwind(AssertUnwindSafe(probe)).is_ok();
    std::panic::set_hook(hook);
    ok
}

fn benches(c: &mut Criterion) {
    bench_device::<Autodiff<NdArray<f32>>>(c, "ndarray", Default::default());

    let wgpu = burn::backend::wgpu::WgpuDevice::default();
    if works(|| {
        let _ = Tensor::<burn::backend::Wgpu, 1>::ones([2], &wgpu).into_data();
    }) {
        bench_device::<Autodiff<burn::backend::Wgpu>>(c, "wgpu", wgpu);
    } else {
        eprintln!("wgpu: no usable device, skipped");
    }

    let cuda = burn::backend::cuda::CudaDevice::default();
    if works(|| {
        let _ = Tensor::<burn::backend::Cuda, 1>::ones([2], &cuda).into_data();
    }) {
        bench_device::<Autodiff<burn::backend::Cuda>>(c, "cuda", cuda);
    } else {
        eprintln!("cuda: no usable device, skipped");
    }
}

criterion_group! {
    name = adapter;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = benches
}
criterion_main!(adapter);
