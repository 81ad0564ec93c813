//! `LoraOps` for `Fusion<B>` (the default `Wgpu`/`Cuda` types): every adapter op is registered in the
//! fusion stream as a custom operation whose execution calls the inner backend's `LoraOps`, i.e. the
//! CubeCL kernels. The fuser treats custom operations as opaque, so surrounding elementwise ops still
//! fuse with each other but not into the adapter kernels.

use core::marker::PhantomData;

use burn::tensor::{DType, Shape, ops::FloatTensor};
use burn_fusion::{
    Fusion, FusionBackend, FusionRuntime, FusionTensor,
    stream::{Operation, OperationStreams},
};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};

use crate::{LoraGradRequest, LoraGrads, LoraOps};

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// inputs `[x, a]`, output `[h]`
    Down,
    /// inputs `[h, b, base]`, output `[out]`
    UpAdd { scaling: f32 },
    /// inputs `[x, base, a, b]`, output `[out]`
    Forward { scaling: f32 },
    /// inputs `[x, a, b, grad_out]` plus `h` when known; outputs the wanted gradients in x, a, b order
    Backward {
        scaling: f32,
        wanted: LoraGradRequest,
        has_h: bool,
    },
}

struct LoraCustomOp<B> {
    desc: CustomOpIr,
    kind: Kind,
    // `fn() -> B` keeps the op Send + Sync whatever B is.
    _backend: PhantomData<fn() -> B>,
}

impl<B> core::fmt::Debug for LoraCustomOp<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LoraCustomOp")
            .field("desc", &self.desc)
            .field("kind", &self.kind)
            .finish()
    }
}

impl<B: FusionBackend + LoraOps> Operation<B::FusionRuntime> for LoraCustomOp<B> {
    fn execute(
        &self,
        handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
    ) {
        let mut inputs = self
            .desc
            .inputs
            .iter()
            .map(|ir| Some(handles.get_float_tensor::<B>(ir)))
            .collect::<Vec<_>>();
        let mut take = |i: usize| {
            inputs[i]
                .take()
                .expect("each custom-op input is taken once (fixed layout per kind)")
        };
        let outputs: Vec<FloatTensor<B>> = match self.kind {
            Kind::Down => vec![B::lora_down(take(0), take(1))],
            Kind::UpAdd { scaling } => vec![B::lora_up_add(take(0), take(1), take(2), scaling)],
            Kind::Forward { scaling } => {
                vec![B::lora_forward(take(0), take(1), take(2), take(3), scaling)]
            }
            Kind::Backward {
                scaling,
                wanted,
                has_h,
            } => {
                let (x, a, b, grad_out) = (take(0), take(1), take(2), take(3));
                let h = has_h.then(|| take(4));
                let g = B::lora_backward(x, a, b, h, grad_out, scaling, wanted);
                [g.x, g.a, g.b].into_iter().flatten().collect()
            }
        };
        for (ir, tensor) in self.desc.outputs.iter().zip(outputs) {
            handles.register_float_tensor::<B>(&ir.id, tensor);
        }
    }
}

fn register<B: FusionBackend + LoraOps>(
    id: &'static str,
    kind: Kind,
    inputs: Vec<FusionTensor<B::FusionRuntime>>,
    out_shapes: Vec<Shape>,
    dtype: DType,
) -> Vec<FusionTensor<B::FusionRuntime>> {
    let client = inputs[0].client.clone();
    let streams = OperationStreams::with_inputs(inputs.iter());
    let outputs: Vec<TensorIr> = out_shapes
        .into_iter()
        .map(|shape| TensorIr::uninit(client.create_empty_handle(), shape, dtype))
        .collect();
    let inputs: Vec<TensorIr> = inputs.into_iter().map(|t| t.into_ir()).collect();
    let desc = CustomOpIr::new(id, &inputs, &outputs);
    client.register(
        streams,
        OperationIr::Custom(desc.clone()),
        LoraCustomOp::<B> {
            desc,
            kind,
            _backend: PhantomData,
        },
    )
}

fn single<T>(mut v: Vec<T>) -> T {
    v.pop()
        .expect("a custom op registered with one output returns one tensor")
}

impl<B: FusionBackend + LoraOps> LoraOps for Fusion<B> {
    fn device_memory_reserved(device: &Self::Device) -> Option<u64> {
        // Queued (not yet fused and launched) operations have not allocated yet: run them first.
        <Self as burn::tensor::backend::Backend>::sync(device).ok()?;
        B::device_memory_reserved(device)
    }

    fn lora_down(x: FloatTensor<Self>, a: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = Shape::new([x.shape[0], a.shape[0]]);
        let dtype = x.dtype;
        single(register::<B>(
            "kdlora_lora_down",
            Kind::Down,
            vec![x, a],
            vec![shape],
            dtype,
        ))
    }

    fn lora_up_add(
        h: FloatTensor<Self>,
        b: FloatTensor<Self>,
        base: FloatTensor<Self>,
        scaling: f32,
    ) -> FloatTensor<Self> {
        let shape = base.shape.clone();
        let dtype = base.dtype;
        single(register::<B>(
            "kdlora_lora_up_add",
            Kind::UpAdd { scaling },
            vec![h, b, base],
            vec![shape],
            dtype,
        ))
    }

    fn lora_forward(
        x: FloatTensor<Self>,
        base_out: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        scaling: f32,
    ) -> FloatTensor<Self> {
        let shape = base_out.shape.clone();
        let dtype = base_out.dtype;
        single(register::<B>(
            "kdlora_lora_forward",
            Kind::Forward { scaling },
            vec![x, base_out, a, b],
            vec![shape],
            dtype,
        ))
    }

    fn lora_backward(
        x: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        h: Option<FloatTensor<Self>>,
        grad_out: FloatTensor<Self>,
        scaling: f32,
        wanted: LoraGradRequest,
    ) -> LoraGrads<FloatTensor<Self>> {
        if !(wanted.x || wanted.a || wanted.b) {
            return LoraGrads::none();
        }
        let dtype = x.dtype;
        let mut shapes = Vec::new();
        if wanted.x {
            shapes.push(x.shape.clone());
        }
        if wanted.a {
            shapes.push(a.shape.clone());
        }
        if wanted.b {
            shapes.push(b.shape.clone());
        }
        let has_h = h.is_some();
        let mut inputs = vec![x, a, b, grad_out];
        inputs.extend(h);
        let mut outs = register::<B>(
            "kdlora_lora_backward",
            Kind::Backward {
                scaling,
                wanted,
                has_h,
            },
            inputs,
            shapes,
            dtype,
        )
        .into_iter();
        LoraGrads {
            x: if wanted.x { outs.next() } else { None },
            a: if wanted.a { outs.next() } else { None },
            b: if wanted.b { outs.next() } else { None },
        }
    }
}
