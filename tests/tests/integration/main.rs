//! Integration tests of end-to-end training, PEFT parity, parameter counts and fuzzing of the
//! file loaders. One binary for the crate (each test binary links all of Burn, so fewer binaries
//! build faster and take less disk), one module per topic.

mod common;
mod fuzz;
mod param_counts;
mod peft_parity;
mod run_adapter_peft;
mod train_e2e;
mod train_learner;
mod wgpu_e2e;
