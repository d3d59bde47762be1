//! `cephalo`: cephalometric landmark detection, trained and run with hand-written CUDA kernels
//! (and an f32 CPU twin of every kernel).
pub mod backend;
pub mod checkpoint;
pub mod cli;
pub mod eval;
pub mod gpu;
pub mod train;
pub mod graph;
pub mod model;
