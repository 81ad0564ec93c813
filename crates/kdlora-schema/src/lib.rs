#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod method;
mod run_metrics;

pub use method::{Method, UnknownMethod};
pub use run_metrics::{
    EpochRecord, HubSource, InferenceTiming, LoraParams, MajorityBaseline, Memory, ParamCounts,
    RunMetrics, Throughput,
};
