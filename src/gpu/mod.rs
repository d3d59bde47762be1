//! The CUDA driver's lifecycle and the only code that touches NVML: device probe, context and
//! stream, kernel module loading, device memory, CUDA-event timers, CUDA-graph capture, NVTX ranges
//! and VRAM readings. Outside this module cudarc is used only to launch and order work on the
//! stream opened here: the launch wrappers in `backend/cuda/` (launch configurations, kernel
//! arguments, shared-memory limits, asynchronous memset and copies, the op profiler's events) and
//! `train::cuda_engine`, which keeps the CUDA graphs it replays
//! (docs/architecture.md#the-gpu-module).
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
pub use memory::{Arena, DevSlice, DevSliceMut, DeviceBuffer};
pub use probe::{probe, DeviceInfo, Probe};
pub use timer::GpuTimer;
