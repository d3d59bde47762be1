//! Evaluation: the metrics every cephalometric paper reports, and reports built from them.
pub mod command;
pub mod inference;
pub mod metrics;
