//! Prediction on new images: landmarks, confidences, cephalometric analysis, overlays.
pub mod analysis;
pub mod command;
pub mod overlay;
