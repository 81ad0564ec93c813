//! `matmul`, `linear` and `swap_middle_dims` on both CPU backends (`Flex`, where they are kdlora's own
//! `gemm` calls and copies, and `NdArray`, where they are Burn's ops): forward values against f64
//! products, gradients against the closed forms `dA = G B^T`, `dB = A^T G` (summed over the batch for
//! a shared right operand), and against Burn's own ops and `nn::Linear`.

mod flex {
    type Cpu = burn::backend::Flex;
    include!("matmul/cases.rs");
}

mod ndarray {
    type Cpu = burn::backend::NdArray<f32>;
    include!("matmul/cases.rs");
}
