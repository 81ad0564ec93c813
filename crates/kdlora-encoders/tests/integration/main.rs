//! Integration tests of encoder loading and parity with HF transformers fixtures. One binary for
//! the crate (each test binary links all of Burn, so fewer binaries build faster and take less
//! disk), one module per topic.

mod common;
mod deberta_parity;
mod loading;
mod parity;
