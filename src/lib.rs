//! `cephalo`: cephalometric landmark detection, trained and run with hand-written CUDA kernels
//! (and an f32 CPU twin of every kernel).
pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod device;
pub mod eval;
pub mod export;
pub mod gpu;
pub mod graph;
pub mod model;
pub mod predict;
pub mod pretrained;
pub mod refine;
pub mod train;
