//! Training: the pieces of the optimisation that live on the host — the loss choice and its
//! per-landmark weights, the learning-rate schedule and the dynamic loss scaler. The per-element maths (losses,
//! unscaling, AdamW) are kernels with CPU twins in `backend::cpu::{loss, optim}`.
pub mod landmark_weights;
pub mod loss;
pub mod loss_scaler;
pub mod schedule;
