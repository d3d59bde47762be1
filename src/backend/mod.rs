//! Compute backends. Every op exists three times under the same name: the CUDA kernel in
//! `kernels/<family>.cu`, its launch wrapper in `backend/cuda/<family>.rs`, and the f32 CPU twin in
//! `backend/cpu/<family>.rs`, which is the reference the kernel is tested against.
pub mod cpu;
pub mod cuda;
