//! Integration tests of GLUE readers, downloads, metrics and the shared data. One binary for the
//! crate (each test binary links all of Burn, so fewer binaries build faster and take less disk),
//! one module per topic.

mod download;
mod fuzz_readers;
mod malformed;
mod metrics_fixture;
mod shared_data;
