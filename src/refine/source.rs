//! The loader's items for the refinement stage: one patch per (image, landmark), image-major
//! (item `i` is landmark `i % K` of image `i / K`), so a batch of `n K` items in order holds the
//! K patches of `n` whole images.
//!
//! Each item draws, from its own seed (the loader's per-item seed): the patch centre's offset
//! from the truth (uniform in a disc of `jitter_mm`, when centres are not given), then the
//! rotation and scale of the augmentation, which are composed into the one patch -> original
//! map, then the intensity changes. The heatmap targets are the truth of every landmark in patch
//! coordinates (see the module docs of [`crate::refine`]).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{ensure, Context as _, Result};
use image::GrayImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::patch::{clamp_to_image, cut_patch, patch_to_original};
use super::PatchSpec;
use crate::data::augment::{photometric, symmetric, AugmentConfig};
use crate::data::geometry::Affine;
use crate::data::heatmap::image_to_heatmap;
use crate::data::image_io::load_gray;
use crate::data::loader::{item_seed, normalize_into, Batch, BatchSource, LoaderConfig};
use crate::data::Sample;
use crate::eval::inference::PredictedImage;

/// Where the patches are centred.
#[derive(Debug, Clone)]
pub enum Centres {
    /// On the truth moved by a random offset, uniform in a disc of the spec's `jitter_mm`:
    /// training, and validation when no global model is given (then drawn once: validation
    /// always reads epoch 0).
    Jittered,
    /// On given points, per sample and landmark, in original pixels: the global model's
    /// predictions.
    Given(Vec<Vec<[f64; 2]>>),
}

#[derive(Debug)]
pub struct PatchSource {
    samples: Vec<Sample>,
    landmarks: usize,
    spec: PatchSpec,
    centres: Centres,
    augment: Option<AugmentConfig>,
    /// Decoded images kept for the whole run (training: every epoch reads every image K times);
    /// `None` decodes each image once per batch instead (one pass over a test split).
    cache: Option<Vec<Mutex<Option<Arc<GrayImage>>>>>,
}

impl PatchSource {
    /// `landmarks` patches per sample. With `cache`, each image is decoded once for the run.
    pub fn new(
        samples: Vec<Sample>,
        landmarks: usize,
        spec: PatchSpec,
        centres: Centres,
        augment: Option<AugmentConfig>,
        cache: bool,
    ) -> Result<PatchSource> {
        ensure!(landmarks > 0, "patches need at least one landmark");
        if let Centres::Given(c) = &centres {
            ensure!(
                c.len() == samples.len() && c.iter().all(|p| p.len() == landmarks),
                "patch centres for {} images of {landmarks} landmarks expected",
                samples.len()
            );
        }
        let cache = cache.then(|| samples.iter().map(|_| Mutex::new(None)).collect());
        Ok(PatchSource {
            samples,
            landmarks,
            spec,
            centres,
            augment,
            cache,
        })
    }

    fn image(&self, index: usize, batch_local: &mut HashMap<usize, Arc<GrayImage>>) -> Result<Arc<GrayImage>> {
        let path = &self.samples[index].image_path;
        let load = || load_gray(path).map(Arc::new);
        match &self.cache {
            Some(cache) => {
                let mut slot = cache[index]
                    .lock()
                    .map_err(|_| anyhow::anyhow!("a loader thread panicked while decoding {}", path.display()))?;
                if slot.is_none() {
                    *slot = Some(load()?);
                }
                Ok(slot.clone().expect("filled above"))
            }
            None => {
                if let Some(image) = batch_local.get(&index) {
                    return Ok(image.clone());
                }
                let image = load()?;
                batch_local.insert(index, image.clone());
                Ok(image)
            }
        }
    }
}

/// A point uniform in the disc of `radius` around `p`.
fn jitter<R: Rng>(rng: &mut R, p: [f64; 2], radius: f64) -> [f64; 2] {
    let r = radius * rng.random::<f64>().sqrt();
    let angle = rng.random::<f64>() * std::f64::consts::TAU;
    [p[0] + r * angle.cos(), p[1] + r * angle.sin()]
}

impl BatchSource for PatchSource {
    fn len(&self) -> usize {
        self.samples.len() * self.landmarks
    }

    fn build(&self, cfg: &LoaderConfig, epoch: usize, indices: Vec<usize>) -> Result<Batch> {
        let size = self.spec.size;
        ensure!(
            cfg.image_size.height == size && cfg.image_size.width == size,
            "the loader makes {}x{} inputs, the patches are {size}x{size}",
            cfg.image_size.height,
            cfg.image_size.width
        );
        let (n, k) = (indices.len(), self.landmarks);
        let truth_count = self.samples.first().map_or(0, |s| s.landmarks.len());
        let per_patch = size * size * cfg.channels;
        let mut batch = Batch::for_filling(cfg, indices, per_patch, truth_count);
        let mut decoded = HashMap::new();
        for slot in 0..n {
            let item = batch.indices[slot];
            let (s, landmark) = (item / k, item % k);
            let sample = &self.samples[s];
            let image = self
                .image(s, &mut decoded)
                .with_context(|| format!("cutting patches from {}", sample.image_path.display()))?;
            let mut rng = ChaCha8Rng::seed_from_u64(item_seed(cfg.seed, epoch, item));
            let centre = match &self.centres {
                Centres::Given(c) => c[s][landmark],
                Centres::Jittered => {
                    let truth = *sample
                        .landmarks
                        .get(landmark)
                        .context("jittered patch centres need the ground truth")?;
                    jitter(&mut rng, truth, self.spec.jitter_mm / sample.pixel_size_mm)
                }
            };
            let (rotation, scale) = match &self.augment {
                Some(a) => (
                    symmetric(&mut rng, a.rotation_deg).to_radians(),
                    1.0 + symmetric(&mut rng, a.scale),
                ),
                None => (0.0, 1.0),
            };
            let map: Affine = patch_to_original(
                clamp_to_image(centre, image.width(), image.height()),
                self.spec.spacing(sample.pixel_size_mm) * scale,
                size,
                rotation,
            );
            let mut plane = cut_patch(&image, &map, size);
            if let Some(a) = &self.augment {
                photometric(&mut rng, a, &mut plane);
            }
            normalize_into(&mut batch.images[slot * per_patch..(slot + 1) * per_patch], &plane.data);
            let to_patch = map.inverse();
            let points: Vec<[f64; 2]> = sample.landmarks.iter().map(|&p| to_patch.apply(p)).collect();
            batch
                .heatmap_points
                .extend(points.iter().map(|&p| image_to_heatmap(p, cfg.stride)));
            batch.points.push(points);
            batch.affines.push(map);
        }
        Ok(batch)
    }
}

/// Turns per-patch predictions (item `i` = landmark `i % k` of image `i / k`, each decoding all
/// K channels) into per-image ones: landmark k of an image is channel k of its k-th patch.
pub fn fold_patches(patches: &[PredictedImage], k: usize) -> Vec<PredictedImage> {
    let mut by_item: Vec<Option<&PredictedImage>> = vec![None; patches.iter().map(|p| p.index + 1).max().unwrap_or(0)];
    for p in patches {
        by_item[p.index] = Some(p);
    }
    by_item
        .chunks(k)
        .enumerate()
        .filter(|(_, items)| items.len() == k && items.iter().all(Option::is_some))
        .map(|(image, items)| {
            let items: Vec<&PredictedImage> = items.iter().map(|p| p.expect("checked")).collect();
            PredictedImage {
                index: image,
                points: items.iter().enumerate().map(|(c, p)| p.points[c]).collect(),
                confidence: items.iter().enumerate().map(|(c, p)| p.confidence[c]).collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::geometry::ImageSize;
    use crate::data::loader::Loader;

    fn spec() -> PatchSpec {
        PatchSpec {
            size: 32,
            mm: 0.2,
            jitter_mm: 1.0,
            train_pixel_mm: 0.1,
        }
    }

    fn samples(dir: &std::path::Path) -> Vec<Sample> {
        (0..2)
            .map(|i| {
                let path = dir.join(format!("{i}.png"));
                GrayImage::from_fn(200, 160, |x, y| image::Luma([((x * 3 + y + i * 40) % 256) as u8]))
                    .save(&path)
                    .unwrap();
                Sample {
                    id: i.to_string(),
                    image_path: path,
                    landmarks: vec![[50.0, 40.0], [150.0 + i as f64, 120.0], [100.0, 80.0]],
                    pixel_size_mm: 0.1,
                    width: 200,
                    height: 160,
                    machine: None,
                    cvm_stage: None,
                }
            })
            .collect()
    }

    fn config(augment: bool) -> LoaderConfig {
        let mut cfg = LoaderConfig::new(ImageSize { height: 32, width: 32 });
        cfg.batch_size = 3;
        cfg.workers = 0;
        if !augment {
            cfg.augment = None;
        }
        cfg
    }

    #[test]
    fn each_patch_holds_its_own_landmark_within_the_jitter() {
        let dir = tempfile::tempdir().unwrap();
        let samples = samples(dir.path());
        let cfg = config(true);
        let source =
            PatchSource::new(samples.clone(), 3, spec(), Centres::Jittered, cfg.augment.clone(), true).unwrap();
        let loader = Loader::with_source(samples.clone(), cfg, Arc::new(source)).unwrap();
        assert_eq!(loader.items(), 6);
        for batch in loader.epoch(1) {
            let batch = batch.unwrap();
            for (slot, &item) in batch.indices.iter().enumerate() {
                let own = batch.points[slot][item % 3];
                // Jitter 1 mm = 10 px = 5 patch px (times the scale augmentation) from the middle.
                let off = (own[0] - 15.5).hypot(own[1] - 15.5);
                assert!(off <= 5.0 * 1.1 + 1e-9, "item {item}: own landmark at {own:?}");
                // The map back to the film lands on the truth.
                let back = batch.affines[slot].apply(own);
                let truth = samples[item / 3].landmarks[item % 3];
                assert!((back[0] - truth[0]).abs() < 1e-9 && (back[1] - truth[1]).abs() < 1e-9);
                assert_eq!(batch.heatmap_points[slot * 3 + item % 3], image_to_heatmap(own, 4));
            }
        }
        // The same epoch gives the same bytes.
        assert_eq!(loader.batch(1, 0).unwrap(), loader.batch(1, 0).unwrap());
    }

    #[test]
    fn given_centres_are_the_patch_middles_and_fold_back_per_image() {
        let dir = tempfile::tempdir().unwrap();
        let samples = samples(dir.path());
        let centres: Vec<Vec<[f64; 2]>> = samples
            .iter()
            .map(|s| s.landmarks.iter().map(|p| [p[0] + 3.0, p[1] - 2.0]).collect())
            .collect();
        let source =
            PatchSource::new(samples.clone(), 3, spec(), Centres::Given(centres.clone()), None, false).unwrap();
        let loader = Loader::with_source(samples, config(false), Arc::new(source)).unwrap();
        let mut patches = Vec::new();
        for batch in loader.epoch(0) {
            let batch = batch.unwrap();
            for (slot, &item) in batch.indices.iter().enumerate() {
                let middle = batch.affines[slot].apply([15.5, 15.5]);
                let centre = centres[item / 3][item % 3];
                assert!((middle[0] - centre[0]).abs() < 1e-9 && (middle[1] - centre[1]).abs() < 1e-9);
                patches.push(PredictedImage {
                    index: item,
                    points: (0..3).map(|c| [item as f64, c as f64]).collect(),
                    confidence: vec![0.5; 3],
                });
            }
        }
        let folded = fold_patches(&patches, 3);
        assert_eq!(folded.len(), 2);
        assert_eq!(folded[1].index, 1);
        assert_eq!(folded[1].points, vec![[3.0, 0.0], [4.0, 1.0], [5.0, 2.0]]);
    }
}
