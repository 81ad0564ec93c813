//! Integration tests of distillation losses, hidden-state distillation and the teacher-logit store.
//! One binary for the crate (each test binary links all of Burn, so fewer binaries build faster and
//! take less disk), one module per topic.

mod hidden;
mod losses;
mod store;
