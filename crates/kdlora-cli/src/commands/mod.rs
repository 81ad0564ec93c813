//! One module per CLI verb.
pub mod bench;
pub mod data;
pub mod eval;
pub mod logits;
pub mod merge;
pub mod predict;
pub mod score;
pub mod train;
