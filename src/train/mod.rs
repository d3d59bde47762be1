//! Training: the trainer loop and what it needs (schedule, loss scaling, logs).
//!
//! Host-side pieces here: the loss choice and its per-landmark weights, the learning-rate
//! schedule, the dynamic loss scaler and the TensorBoard logs. The per-element maths (losses,
//! unscaling, AdamW) are kernels with CPU twins in `backend::cpu::{loss, optim}`.
pub mod args;
pub mod cuda_engine;
pub mod engine;
pub mod landmark_weights;
pub mod loss;
pub mod loss_scaler;
pub mod schedule;
pub mod step;
pub mod tensorboard;
pub mod trainer;
