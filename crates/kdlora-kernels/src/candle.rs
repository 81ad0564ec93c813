//! `LoraOps` for Burn's candle backend (feature `candle`): Burn's own ops on candle tensors (the
//! trait's defaults) except for the exact GELU, which Burn's candle backend computes with candle's
//! tanh approximation.
//!
//! Why it exists at all: the design asked for candle to be measured before choosing the CPU default.
//! Burn 0.21 marks the backend deprecated, so it stays opt-in and gets no vectorised hot-path ops;
//! the measurement is in `docs/results/bench/README.md`.

// Measuring the deprecated backend is this module's purpose.
#![allow(deprecated)]

use burn::tensor::ops::FloatTensor;
use burn_candle::{Candle, FloatCandleElement, IntCandleElement};

use crate::{LoraOps, gelu_reference};

impl<F: FloatCandleElement, I: IntCandleElement> LoraOps for Candle<F, I> {
    fn exact_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        gelu_reference::<Self>(x)
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::ops::FloatTensor;
    use burn::tensor::{Distribution, Tensor, TensorPrimitive, Tolerance};
    use burn_candle::{Candle, CandleDevice};

    use crate::{LoraGradRequest, LoraOps, gelu, reference};

    type B = Candle<f32, i64>;

    fn to_candle(t: &Tensor<Flex, 2>) -> Tensor<B, 2> {
        Tensor::from_data(t.to_data(), &CandleDevice::Cpu)
    }

    fn from_primitive(t: FloatTensor<B>) -> Tensor<B, 2> {
        Tensor::from_primitive(TensorPrimitive::Float(t))
    }

    /// Against the closed form in f64. With candle's own `gelu` (tanh approximation) this fails:
    /// at x = -4 it gives -7.0e-5 for -1.27e-4.
    #[test]
    fn exact_gelu_on_candle_is_the_erf_form() {
        let xs: Vec<f32> = (-400..=400).map(|i| i as f32 / 100.0).collect();
        let x = Tensor::<B, 1>::from_floats(xs.as_slice(), &CandleDevice::Cpu);
        let got = gelu(x).into_data().to_vec::<f32>().unwrap();
        for (x, got) in xs.iter().zip(got) {
            let x = f64::from(*x);
            let want = 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
            assert!(
                (f64::from(got) - want).abs() < 1e-6,
                "gelu({x}) = {got}, want {want}"
            );
        }
    }

    /// The adapter forward and backward on candle equal the same reference ops on Flex (an
    /// independent backend).
    #[test]
    fn adapter_on_candle_matches_flex() {
        let flex = Default::default();
        let (tokens, input, out, rank) = (37, 24, 20, 4);
        let random =
            |shape: [usize; 2]| Tensor::<Flex, 2>::random(shape, Distribution::Default, &flex);
        let (x, a, b) = (
            random([tokens, input]),
            random([rank, input]),
            random([out, rank]),
        );
        let (base, grad) = (random([tokens, out]), random([tokens, out]));
        let expected =
            reference::lora_forward_reference(x.clone(), base.clone(), a.clone(), b.clone(), 2.0);
        let got = from_primitive(B::lora_forward(
            to_candle(&x).into_primitive().tensor(),
            to_candle(&base).into_primitive().tensor(),
            to_candle(&a).into_primitive().tensor(),
            to_candle(&b).into_primitive().tensor(),
            2.0,
        ));
        got.into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-4));

        let expected = reference::lora_backward_reference(
            x.clone(),
            a.clone(),
            b.clone(),
            None,
            grad.clone(),
            2.0,
            LoraGradRequest::ALL,
        );
        let got = B::lora_backward(
            to_candle(&x).into_primitive().tensor(),
            to_candle(&a).into_primitive().tensor(),
            to_candle(&b).into_primitive().tensor(),
            None,
            to_candle(&grad).into_primitive().tensor(),
            2.0,
            LoraGradRequest::ALL,
        );
        for (got, expected) in [
            (got.x, expected.x),
            (got.a, expected.a),
            (got.b, expected.b),
        ] {
            from_primitive(got.expect("requested gradient"))
                .into_data()
                .assert_approx_eq::<f32>(&expected.unwrap().into_data(), Tolerance::absolute(1e-4));
        }
    }
}
