//! Training: the trainer loop and what it needs (schedule, loss scaling, logs).
pub mod tensorboard;
