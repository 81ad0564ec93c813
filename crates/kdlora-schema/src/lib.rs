#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod atomic;
mod method;
mod run_metrics;
mod train_log;

pub use atomic::{is_temporary_name, write_atomic};
pub use method::{Method, UnknownMethod};
pub use run_metrics::{
    EpochRecord, HubSource, InferenceTiming, LoraParams, MajorityBaseline, Memory, ParamCounts,
    RunMetrics, Throughput,
};
pub use train_log::StepRecord;
