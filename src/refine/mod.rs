//! The refinement stage: a second network that looks at full-resolution patches cut from the
//! original image around each landmark, and moves the global model's prediction to where the
//! patch's heatmap peaks.
//!
//! Why: the global model sees the film downscaled (at 256x224 one heatmap pixel is about 3.75 mm
//! of an ISBI film), so its error cannot go much below a millimetre or two whatever it learns. A
//! patch of `size` x `size` pixels at `mm` millimetres per pixel sees the anatomy around one
//! landmark at several times that resolution, for little memory.
//!
//! Design: one network for all landmarks, with K output heatmaps like the global model. The
//! patch cut for landmark k is decoded from channel k only; in training every channel is
//! supervised with the true position of its own landmark in the patch (a Gaussian where that
//! landmark falls inside the patch, an all-zero map where it does not). So the network is told
//! which landmark a patch is for by the channel it is read from, every channel learns to say
//! "my landmark is here" or "not in this patch", and the losses, landmark weights, target
//! encoding and GPU kernels of the global trainer apply unchanged (a mask of K-1 channels would
//! need its own loss kernels and throws away the supervision of neighbouring landmarks, which
//! often share a patch: the incisor tips, the lips, the points of the chin).
//!
//! Pieces: [`patch`] (the geometry: where a patch lies in the original image, and cutting it
//! through the same exact warp as the rest of the pipeline), [`source`] (the loader's patch items
//! for training and validation), [`infer`] (two-stage inference for `eval` and `predict`),
//! [`training`] (what `cephalo train --stage refine` adds to the trainer), [`args`] (its flags).
pub mod args;
pub mod infer;
pub mod patch;
pub mod report;
pub mod source;
pub mod training;

use serde::{Deserialize, Serialize};

/// What a refiner's patches are: stored in its checkpoint, so inference cuts them exactly as
/// training did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PatchSpec {
    /// Patch side in network pixels.
    pub size: usize,
    /// Millimetres of film per patch pixel.
    pub mm: f64,
    /// Training patch centres were the truth moved by up to this many millimetres.
    pub jitter_mm: f64,
    /// The training images' pixel size (the median): the pixel size `predict` assumes for images
    /// whose pixel size it is not told.
    pub train_pixel_mm: f64,
}

impl PatchSpec {
    /// Original pixels per patch pixel for an image of `pixel_size_mm`.
    pub fn spacing(&self, pixel_size_mm: f64) -> f64 {
        self.mm / pixel_size_mm
    }

    /// Half the patch side in millimetres: how far a centre may miss and the landmark still be
    /// in the patch (along an axis).
    pub fn half_width_mm(&self) -> f64 {
        self.size as f64 * self.mm / 2.0
    }
}
