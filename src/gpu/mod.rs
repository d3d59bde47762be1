//! The only code that touches cudarc and NVML.
pub mod report;
