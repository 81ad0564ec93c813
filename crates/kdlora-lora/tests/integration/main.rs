//! Integration tests of LoRA injection, merging, gradients and PEFT files. One binary for the crate
//! (each test binary links all of Burn, so fewer binaries build faster and take less disk), one
//! module per topic.

mod common;
mod gradients;
mod inject_merge;
mod peft_files;
