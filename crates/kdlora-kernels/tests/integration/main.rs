//! Integration tests of the adapter kernels, the CPU hot-path ops and their gradients. One binary
//! for the crate (each test binary links all of Burn, so fewer binaries build faster and take less
//! disk), one module per topic.

mod common;
mod hotpath;
mod matmul;
mod reference;
mod wgpu;
