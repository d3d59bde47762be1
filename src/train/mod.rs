//! Training: the pieces of the optimisation that live on the host — the learning-rate schedule,
//! the dynamic loss scaler and the per-landmark loss weights. The per-element maths (losses,
//! unscaling, AdamW) are kernels with CPU twins in `backend::cpu::{loss, optim}`.
pub mod landmark_weights;
pub mod loss_scaler;
pub mod schedule;
