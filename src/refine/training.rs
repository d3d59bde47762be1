//! What `cephalo train --stage refine` adds to the trainer: the patch loaders, and the global
//! model's validation predictions as the validation patches' centres. Everything else (loss,
//! landmark weights, AdamW, schedule, checkpoints, resume, logs) is the trainer's own.
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};

use super::args::{RefineArgs, Stage};
use super::infer::{global_predictions, require_global};
use super::source::{fold_patches, Centres, PatchSource};
use super::PatchSpec;
use crate::data::loader::{Loader, LoaderConfig};
use crate::data::Sample;
use crate::device::Device;
use crate::eval::command::load_model;
use crate::eval::inference::PredictedImage;
use crate::eval::metrics::{radial_errors_mm, ErrorStats};

/// A refiner's training run: its patches and where its validation patches are centred.
#[derive(Debug, Clone)]
pub struct RefineTraining {
    pub spec: PatchSpec,
    landmarks: usize,
    /// The global model's predictions on the valid split, per sample and landmark.
    valid_centres: Option<Vec<Vec<[f64; 2]>>>,
}

impl RefineTraining {
    /// `None` for a global run. `resumed` is the patch spec (if any) and path of a resumed
    /// checkpoint: it decides the stage, so that a resumed run continues as what it was.
    pub fn from_args(
        args: &RefineArgs,
        resumed: Option<(Option<PatchSpec>, &Path)>,
        train: &[Sample],
        valid: Option<&[Sample]>,
        symbols: &[String],
        device: Device,
        workers: usize,
    ) -> Result<Option<RefineTraining>> {
        let stored = resumed.and_then(|(spec, path)| Some((spec?, path)));
        let spec = match (stored, args.stage) {
            (Some((spec, _)), _) => spec,
            (None, Stage::Refine) if resumed.is_some() => bail!(
                "--stage refine: the checkpoint given to --resume is a global model; a refiner starts from scratch \
                 (drop --resume) or from a refiner's checkpoint"
            ),
            (None, Stage::Refine) => args.spec(median_pixel_mm(train))?,
            (None, Stage::Global) => {
                if args.patch_flags_given() {
                    bail!(
                        "--patch-size, --patch-mm, --patch-jitter-mm and --global train a refiner: add --stage refine"
                    );
                }
                return Ok(None);
            }
        };
        if let (Some((_, path)), Stage::Global) = (stored, args.stage) {
            eprintln!("note: {} is a refiner: continuing it as one", path.display());
        }
        let valid_centres = match (&args.global, valid) {
            (Some(path), Some(valid)) => Some(global_centres(path, valid, symbols, &spec, device, workers)?),
            (Some(_), None) => {
                eprintln!("note: no valid split, so --global is not used");
                None
            }
            (None, _) => None,
        };
        Ok(Some(RefineTraining {
            spec,
            landmarks: symbols.len(),
            valid_centres,
        }))
    }

    /// Training patches: every landmark of every image each epoch, centred on the jittered truth,
    /// with the loader's augmentation; the decoded images stay in memory for the run.
    pub fn train_loader(&self, samples: Vec<Sample>, cfg: LoaderConfig) -> Result<Loader> {
        let source = PatchSource::new(
            samples.clone(),
            self.landmarks,
            self.spec,
            Centres::Jittered,
            cfg.augment.clone(),
            true,
        )?;
        Loader::with_source(samples, cfg, Arc::new(source))
    }

    /// Validation patches: centred on the global model's predictions when one was given, else on
    /// the truth plus a jitter drawn once.
    pub fn valid_loader(&self, samples: Vec<Sample>, cfg: LoaderConfig) -> Result<Loader> {
        let centres = match &self.valid_centres {
            Some(c) => Centres::Given(c.clone()),
            None => Centres::Jittered,
        };
        let source = PatchSource::new(samples.clone(), self.landmarks, self.spec, centres, None, true)?;
        Loader::with_source(samples, cfg, Arc::new(source))
    }

    /// Per-image landmarks from the validation loader's per-patch predictions.
    pub fn fold(&self, patches: &[PredictedImage]) -> Vec<PredictedImage> {
        fold_patches(patches, self.landmarks)
    }

    pub fn describe(&self) -> String {
        format!(
            "refiner on {0}x{0} patches at {1} mm per pixel ({2:.1} mm wide), centres jittered by up to {3} mm; \
             validation patches centred on {4}",
            self.spec.size,
            self.spec.mm,
            2.0 * self.spec.half_width_mm(),
            self.spec.jitter_mm,
            if self.valid_centres.is_some() {
                "the global model's predictions"
            } else {
                "the truth plus a fixed jitter (no --global)"
            }
        )
    }
}

/// The median pixel size of the training images.
fn median_pixel_mm(samples: &[Sample]) -> f64 {
    let mut sizes: Vec<f64> = samples.iter().map(|s| s.pixel_size_mm).collect();
    sizes.sort_by(f64::total_cmp);
    sizes.get(sizes.len() / 2).copied().unwrap_or(0.1)
}

/// Runs the global model of `path` on the valid split, reports how its errors compare with the
/// jitter and the patch, and returns its predictions.
fn global_centres(
    path: &Path,
    valid: &[Sample],
    symbols: &[String],
    spec: &PatchSpec,
    device: Device,
    workers: usize,
) -> Result<Vec<Vec<[f64; 2]>>> {
    let mut global = load_model(path, 4, device).with_context(|| format!("--global {}", path.display()))?;
    require_global(&global.meta, path, "--global")?;
    if global.meta.landmarks != symbols {
        bail!(
            "--global {} predicts landmarks [{}] but the dataset has [{}]",
            path.display(),
            global.meta.landmarks.join(" "),
            symbols.join(" ")
        );
    }
    let predictions = global_predictions(&mut global, valid, 4, workers)?;
    let mut errors: Vec<f64> = predictions
        .iter()
        .flat_map(|p| {
            let s = &valid[p.index];
            radial_errors_mm(&p.points, &s.landmarks, s.pixel_size_mm)
        })
        .collect();
    errors.sort_by(f64::total_cmp);
    if errors.is_empty() {
        bail!(
            "--global {}: the valid split has no landmarks to measure",
            path.display()
        );
    }
    let stats = ErrorStats::from_errors(&errors);
    let quantile = |q: f64| errors[((errors.len() - 1) as f64 * q).round() as usize];
    let within = |r: f64| 100.0 * errors.iter().filter(|&&e| e <= r).count() as f64 / errors.len() as f64;
    eprintln!(
        "global model {} on the valid split: MRE {:.3} mm, errors' median {:.2}, 90 % {:.2}, 95 % {:.2}, 99 % {:.2}, \
         max {:.2} mm; {:.1} % within the jitter ({} mm), {:.1} % within the patch's half-width ({:.1} mm)",
        path.display(),
        stats.mre_mm,
        quantile(0.5),
        quantile(0.9),
        quantile(0.95),
        quantile(0.99),
        quantile(1.0),
        within(spec.jitter_mm),
        spec.jitter_mm,
        within(spec.half_width_mm()),
        spec.half_width_mm()
    );
    let mut centres = vec![Vec::new(); valid.len()];
    for p in predictions {
        centres[p.index] = p.points;
    }
    Ok(centres)
}
