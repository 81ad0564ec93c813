#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod atomic;
mod method;
pub mod model_folder;
mod run_metrics;
mod train_log;

pub use atomic::{is_temporary_name, write_atomic};
pub use method::{Method, UnknownMethod};
pub use model_folder::{TOKENIZER_COMPANION_FILES, TOKENIZER_FILE, TOKENIZER_FILES};
pub use run_metrics::{
    EpochRecord, HubSource, InferenceTiming, LoraParams, MajorityBaseline, Memory, ParamCounts,
    RunMetrics, Throughput,
};
pub use train_log::StepRecord;
