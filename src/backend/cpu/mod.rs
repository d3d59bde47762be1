//! The f32 CPU reference backend: clear code, parallel with rayon, NHWC like the GPU.
pub mod elementwise;
pub mod loss;
pub mod optim;
