//! Two-stage inference: the global model's predictions centre one patch per landmark, cut from
//! the original image; the refiner's heatmap of each patch (its own landmark's channel) gives the
//! refined point, mapped back to original pixels through the patch's exact map. Shared by
//! `eval`, `predict` and the refiner's validation during training.
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Result};

use super::source::{fold_patches, Centres, PatchSource};
use super::PatchSpec;
use crate::checkpoint::{self, Meta};
use crate::data::geometry::ImageSize;
use crate::data::loader::Loader;
use crate::data::Sample;
use crate::device::Device;
use crate::eval::command::{load_model, LoadedModel};
use crate::eval::inference::{inference_loader_config, PredictedImage};

/// Refuses a refiner where a global model is expected (`flag` names where it was given).
pub fn require_global(meta: &Meta, path: &Path, flag: &str) -> Result<()> {
    if meta.refiner.is_some() {
        bail!(
            "{flag} {}: this is a refiner (trained with --stage refine on patches), not a global model: give the \
             global checkpoint as {flag} and this one as --refiner",
            path.display()
        );
    }
    Ok(())
}

/// The refiner's patch settings, once it is known to suit the global model: a refinement-stage
/// checkpoint, with the same landmarks (in the same order) and input channels.
pub fn check_pair(global: &Meta, global_path: &Path, refiner: &Meta, refiner_path: &Path) -> Result<PatchSpec> {
    let Some(spec) = refiner.refiner else {
        bail!(
            "--refiner {}: this is a global model (trained without --stage refine), not a refiner: give it as \
             --checkpoint, and a checkpoint of `cephalo train --stage refine` as --refiner",
            refiner_path.display()
        );
    };
    if refiner.landmarks != global.landmarks {
        bail!(
            "--refiner {} refines landmarks [{}] but the global model {} predicts [{}]: use a refiner trained on the \
             same landmark set",
            refiner_path.display(),
            refiner.landmarks.join(" "),
            global_path.display(),
            global.landmarks.join(" ")
        );
    }
    if refiner.model.in_channels != global.model.in_channels {
        bail!(
            "--refiner {} reads {}-channel images but the global model {} reads {}: use a refiner trained on the \
             same kind of images",
            refiner_path.display(),
            refiner.model.in_channels,
            global_path.display(),
            global.model.in_channels
        );
    }
    Ok(spec)
}

/// A refiner loaded for inference, `images_per_pass` images' patches per forward pass.
pub struct Refiner {
    pub spec: PatchSpec,
    pub model: LoadedModel,
    images_per_pass: usize,
}

impl Refiner {
    /// Loads `path` as the refiner of the global model whose metadata is `global`.
    pub fn load(
        path: &Path,
        global: &Meta,
        global_path: &Path,
        images_per_pass: usize,
        device: Device,
    ) -> Result<Refiner> {
        // The metadata is checked before the network is built: a global model given here would
        // otherwise plan a pass of K images at its full input size first.
        let meta = checkpoint::load(path)?.meta;
        let spec = check_pair(global, global_path, &meta, path)?;
        let images_per_pass = images_per_pass.max(1);
        let model = load_model(path, images_per_pass * meta.landmarks.len(), device)?;
        Ok(Refiner {
            spec,
            model,
            images_per_pass,
        })
    }

    /// Refined landmarks of `samples` (original pixels), centred on `global` (one prediction per
    /// sample, indexed like `samples`). Ground truth is not needed.
    pub fn refine(
        &mut self,
        samples: &[Sample],
        global: &[PredictedImage],
        workers: usize,
    ) -> Result<Vec<PredictedImage>> {
        let k = self.model.meta.landmarks.len();
        let mut centres = vec![Vec::new(); samples.len()];
        for p in global {
            centres[p.index] = p.points.clone();
        }
        let source = PatchSource::new(samples.to_vec(), k, self.spec, Centres::Given(centres), None, false)?;
        let patch = ImageSize {
            height: self.spec.size,
            width: self.spec.size,
        };
        // One batch holds whole images' patches: K per image.
        let cfg = inference_loader_config(&self.model.meta, patch, self.images_per_pass * k, workers);
        let loader = Loader::with_source(samples.to_vec(), cfg, Arc::new(source))?;
        let patches = self
            .model
            .exec
            .predict_loader(&loader, self.model.meta.heatmap_sigma as f64)?;
        Ok(fold_patches(&patches, k))
    }
}

/// The global model's predictions for `samples` (letterboxed whole images, as `eval` runs it).
pub fn global_predictions(
    model: &mut LoadedModel,
    samples: &[Sample],
    batch_size: usize,
    workers: usize,
) -> Result<Vec<PredictedImage>> {
    let size = ImageSize {
        height: model.meta.model.image_size[0],
        width: model.meta.model.image_size[1],
    };
    let cfg = inference_loader_config(&model.meta, size, batch_size, workers);
    let loader = Loader::new(samples.to_vec(), cfg)?;
    model.exec.predict_loader(&loader, model.meta.heatmap_sigma as f64)
}

/// A sample for an image without ground truth (`predict`): what the patch cutter needs.
pub fn unannotated_sample(path: &Path, image: &image::GrayImage, pixel_size_mm: f64) -> Sample {
    Sample {
        id: path.file_stem().and_then(|s| s.to_str()).unwrap_or("image").to_string(),
        image_path: path.to_path_buf(),
        landmarks: Vec::new(),
        pixel_size_mm,
        width: image.width(),
        height: image.height(),
        machine: None,
        cvm_stage: None,
    }
}
