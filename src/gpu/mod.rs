//! The only code that touches cudarc and NVML: device probe, context and stream, kernel module
//! loading, device memory, CUDA-event timers, NVTX ranges and VRAM readings.
//!
//! Everything here degrades to a clear error (never a panic) on machines without the NVIDIA
//! driver or without a GPU, so the CPU paths of the program keep working there.
pub mod capture;
pub mod context;
pub mod kernel_image;
pub mod memory;
pub mod nvtx;
pub mod probe;
pub mod report;
pub mod timer;
pub mod vram;

pub use context::Gpu;
pub use memory::{Arena, ArenaBlock, DevSlice, DevSliceMut, DeviceBuffer};
pub use probe::{probe, DeviceInfo, Probe};
pub use timer::GpuTimer;
