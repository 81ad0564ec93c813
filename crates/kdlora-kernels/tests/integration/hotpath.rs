//! The encoder hot-path ops of `LoraOps` on both CPU backends (`Flex`, `NdArray`): exact GELU (forward
//! and gradient) against closed forms, f64 `erf` and central finite differences; softmax against f64
//! rows and finite differences; dropout masks (values, keep rate, seeding, gradients). The cases in
//! `hotpath/cases.rs` run once per backend; the f64 checks of the plain-ops defaults are in
//! `tests/hotpath_f64.rs`, a binary of its own.

mod closed_form;

mod flex {
    type Cpu = burn::backend::Flex;
    include!("hotpath/cases.rs");
}

mod ndarray {
    type Cpu = burn::backend::NdArray<f32>;
    include!("hotpath/cases.rs");
}
