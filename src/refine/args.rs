//! The flags `cephalo train` gains for the refinement stage.
use std::path::PathBuf;

use anyhow::{ensure, Result};

use super::PatchSpec;

/// Patch side in network pixels: the smallest the networks take (a multiple of 32 above the
/// 1/32 branch's minimum), 64 x 64 network pixels.
pub const DEFAULT_PATCH_SIZE: usize = 64;
/// Film millimetres per patch pixel: 0.3 mm makes a 64-pixel patch 19.2 mm wide (room for the
/// global model's errors, see `--patch-jitter-mm`) with 1.2 mm heatmap pixels, about three
/// times finer than the CPU recipe's global heatmap (3.75 mm).
pub const DEFAULT_PATCH_MM: f64 = 0.3;
/// Training centres' largest offset from the truth, mm: 98.4 % of the CPU recipe's global
/// model's validation errors are within 5 mm (99 % within 5.06, the largest 7.1 mm, all inside
/// the default patch's 9.6 mm half-width); `cephalo train --stage refine --global` prints this.
pub const DEFAULT_JITTER_MM: f64 = 5.0;

/// Which network `cephalo train` trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Stage {
    /// The whole-image landmark detector.
    #[default]
    Global,
    /// The second stage: full-resolution patches around each landmark of the original image.
    Refine,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RefineArgs {
    /// global: the whole-image detector; refine: the second stage, on patches cut from the
    /// original images around each landmark (train it on the original-resolution dataset).
    #[arg(long, value_enum, default_value_t)]
    pub stage: Stage,
    /// Refiner: patch side in network pixels (a multiple of 32).
    #[arg(long, default_value_t = DEFAULT_PATCH_SIZE)]
    pub patch_size: usize,
    /// Refiner: millimetres of film per patch pixel (the same anatomy on every pixel size).
    #[arg(long, default_value_t = DEFAULT_PATCH_MM)]
    pub patch_mm: f64,
    /// Refiner: training patches are centred on the truth moved by up to this many mm (uniform in
    /// a disc), to cover the global model's errors.
    #[arg(long, default_value_t = DEFAULT_JITTER_MM)]
    pub patch_jitter_mm: f64,
    /// Refiner: a global checkpoint whose predictions on the valid split centre the validation
    /// patches (validation then measures the two stages together). Without it validation patches
    /// are centred on the truth plus a fixed jitter.
    #[arg(long)]
    pub global: Option<PathBuf>,
}

impl RefineArgs {
    /// The patch settings of a new refiner, checked; `train_pixel_mm` is the training images'.
    pub fn spec(&self, train_pixel_mm: f64) -> Result<PatchSpec> {
        ensure!(
            self.patch_size >= 32 && self.patch_size.is_multiple_of(32) && self.patch_size <= 512,
            "--patch-size {}: a multiple of 32 from 32 to 512 (e.g. 64)",
            self.patch_size
        );
        ensure!(
            self.patch_mm.is_finite() && self.patch_mm > 0.0 && self.patch_mm <= 5.0,
            "--patch-mm {}: millimetres per patch pixel, more than 0 and at most 5 (e.g. 0.3)",
            self.patch_mm
        );
        let spec = PatchSpec {
            size: self.patch_size,
            mm: self.patch_mm,
            jitter_mm: self.patch_jitter_mm,
            train_pixel_mm,
        };
        // The scale augmentation can shrink the patch by 10 %: keep the landmark inside it.
        let most = 0.85 * spec.half_width_mm();
        ensure!(
            self.patch_jitter_mm.is_finite() && (0.0..=most).contains(&self.patch_jitter_mm),
            "--patch-jitter-mm {}: from 0 to {most:.1} mm, so that the landmark stays inside a {} mm patch \
             (raise --patch-size or --patch-mm for a larger jitter)",
            self.patch_jitter_mm,
            2.0 * spec.half_width_mm()
        );
        Ok(spec)
    }

    /// True when a refinement flag other than `--stage` was given for a global run.
    pub fn patch_flags_given(&self) -> bool {
        self.patch_size != DEFAULT_PATCH_SIZE
            || self.patch_mm != DEFAULT_PATCH_MM
            || self.patch_jitter_mm != DEFAULT_JITTER_MM
            || self.global.is_some()
    }
}
