//! Integration tests of the `kdlora` binary, run as a subprocess. One binary for the crate (each
//! test binary links all of Burn, so fewer binaries build faster and take less disk), one module
//! per topic.

mod bad_input;
mod bench;
mod common;
mod deberta_logits;
mod kill_resume;
mod logits;
mod lora_cli;
mod run_verbs;
mod student;
mod train_logs;
