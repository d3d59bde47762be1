//! The threaded batch loader.
//!
//! Determinism: an epoch's order is a shuffle seeded by (seed, epoch), and each sample's
//! augmentation by (seed, epoch, sample index); so batch b of epoch e is the same bytes whatever
//! the worker count, and training can resume at any epoch. Workers build whole batches; at most
//! `prefetch` batches are in flight (queued, being built, or built and waiting), which bounds
//! memory; the consumer gets them back in order.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::Context;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::augment::{transform_sample, AugmentConfig};
use super::geometry::{Affine, ImageSize};
use super::heatmap::image_to_heatmap;
use super::image_io::load_gray;
use super::Sample;
use crate::backend::HeatmapShape;

/// Network input = (pixel / 255 - IMAGE_MEAN) / IMAGE_STD: fixed constants (not dataset
/// statistics) so a checkpoint means the same thing on every dataset; they map [0, 1] to
/// [-2, 2], and radiographs' mean grey is near 0.5.
pub const IMAGE_MEAN: f32 = 0.5;
pub const IMAGE_STD: f32 = 0.25;

/// Writes the network input for one warped image (values in [0, 1]) into `dst`: the one place
/// the normalisation is applied, for training, evaluation and prediction alike. `dst` holds
/// `channels` values per pixel (NHWC; 3 for a network with an RGB stem), each the same grey value.
pub fn normalize_into(dst: &mut [f32], plane: &[f32]) {
    assert!(
        !plane.is_empty() && dst.len().is_multiple_of(plane.len()),
        "normalize_into: {} input values for {} pixels",
        dst.len(),
        plane.len()
    );
    let channels = dst.len() / plane.len();
    for (d, &v) in dst.chunks_exact_mut(channels).zip(plane) {
        d.fill((v - IMAGE_MEAN) / IMAGE_STD);
    }
}

/// Workers by default: all cores but one, which is left to the training loop.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .saturating_sub(1)
        .max(1)
}

#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub image_size: ImageSize,
    /// Values per input pixel: 1, or 3 for a network with an RGB stem (the grey value in each).
    pub channels: usize,
    /// Network input pixels per heatmap pixel.
    pub stride: usize,
    /// Target Gaussian sigma in heatmap pixels.
    pub sigma: f64,
    pub batch_size: usize,
    /// `None`: plain letterbox (evaluation).
    pub augment: Option<AugmentConfig>,
    pub seed: u64,
    /// Worker threads; 0 builds batches in the calling thread.
    pub workers: usize,
    /// Batches in flight at most (at least 1).
    pub prefetch: usize,
    pub shuffle: bool,
    pub drop_last: bool,
}

impl LoaderConfig {
    /// Training defaults: stride 4, sigma 2, batch 4, augmentation on, shuffled, default workers.
    pub fn new(image_size: ImageSize) -> Self {
        let workers = default_workers();
        LoaderConfig {
            image_size,
            channels: 1,
            stride: 4,
            sigma: 2.0,
            batch_size: 4,
            augment: Some(AugmentConfig::default()),
            seed: 0,
            workers,
            prefetch: 2 * workers,
            shuffle: true,
            drop_last: true,
        }
    }

    pub fn heatmap_size(&self) -> (usize, usize) {
        (
            self.image_size.height / self.stride,
            self.image_size.width / self.stride,
        )
    }
}

/// One batch, ready for upload.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `n * H * W * C` floats, NHWC (`C` the config's `channels`), normalised with [`IMAGE_MEAN`]
    /// and [`IMAGE_STD`].
    pub images: Vec<f32>,
    /// Per sample and landmark, image-major (`n * K` pairs): the landmark in heatmap pixels, the
    /// centre of its target Gaussian. The engines draw the targets themselves with
    /// `backend::{cpu,cuda}::heatmap::encode` ([`Batch::target_shape`], [`Batch::sigma`]), so a
    /// batch carries no `n * h * w * K` target floats and the GPU step uploads only these.
    pub heatmap_points: Vec<[f64; 2]>,
    /// Target heatmap rows and columns: the network input over the stride.
    pub heatmap_size: [usize; 2],
    /// Target Gaussian sigma in heatmap pixels.
    pub sigma: f64,
    /// Per sample, its landmarks in network pixels.
    pub points: Vec<Vec<[f64; 2]>>,
    /// Per sample, the map network pixels -> original pixels.
    pub affines: Vec<Affine>,
    /// Per sample, its index in the loader's sample list.
    pub indices: Vec<usize>,
}

impl Batch {
    /// An empty batch for the samples `indices`, with room for `per_image` input values and
    /// `points_per_sample` landmarks per sample, its targets shaped as `cfg` says; the builders
    /// fill it slot by slot.
    pub fn for_filling(cfg: &LoaderConfig, indices: Vec<usize>, per_image: usize, points_per_sample: usize) -> Self {
        let (hh, hw) = cfg.heatmap_size();
        let n = indices.len();
        Batch {
            images: vec![0.0; n * per_image],
            heatmap_points: Vec::with_capacity(n * points_per_sample),
            heatmap_size: [hh, hw],
            sigma: cfg.sigma,
            points: Vec::with_capacity(n),
            affines: Vec::with_capacity(n),
            indices,
        }
    }

    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The shape of this batch's target heatmaps: `len()` images of `K` channels.
    pub fn target_shape(&self) -> HeatmapShape {
        let n = self.len();
        HeatmapShape::new(
            n,
            self.heatmap_size[0],
            self.heatmap_size[1],
            self.heatmap_points.len().checked_div(n).unwrap_or(0),
        )
    }

    /// The target heatmaps drawn on the CPU (`target_shape().len()` floats, NHWC, landmark last).
    pub fn encode_targets(&self) -> Vec<f32> {
        let shape = self.target_shape();
        let mut out = vec![0.0; shape.len()];
        crate::backend::cpu::heatmap::encode(&self.heatmap_points, shape, self.sigma, &mut out);
        out
    }
}

/// What a loader's items are and how a batch of them is built, when they are not whole images:
/// the refinement stage's patches around landmarks (`refine::source::PatchSource`). The loader
/// keeps the order, the seeds, the threads and the prefetching; the source only builds.
pub trait BatchSource: Send + Sync + std::fmt::Debug {
    /// Items in one epoch.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The batch of items `indices` (positions in `0..len()`) of `epoch`; item `i`'s randomness
    /// comes from [`item_seed`]`(cfg.seed, epoch, i)`, as for images.
    fn build(&self, cfg: &LoaderConfig, epoch: usize, indices: Vec<usize>) -> anyhow::Result<Batch>;
}

#[derive(Debug)]
struct Shared {
    samples: Vec<Sample>,
    cfg: LoaderConfig,
    landmarks: usize,
    /// `None`: the items are the samples' whole images.
    source: Option<Arc<dyn BatchSource>>,
}

#[derive(Debug)]
pub struct Loader {
    shared: Arc<Shared>,
}

/// A 64-bit mix (splitmix64 finaliser), to derive independent seeds from (seed, epoch, index).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn derive_seed(seed: u64, epoch: u64, index: u64) -> u64 {
    mix(mix(mix(seed) ^ epoch) ^ index)
}

/// The seed of item `index`'s augmentation in `epoch`, for [`BatchSource`]s.
pub fn item_seed(seed: u64, epoch: usize, index: usize) -> u64 {
    derive_seed(seed, epoch as u64, index as u64)
}

impl Loader {
    pub fn new(samples: Vec<Sample>, cfg: LoaderConfig) -> anyhow::Result<Loader> {
        Self::build_loader(samples, cfg, None)
    }

    /// A loader over `source`'s items (which are cut from `samples`' images).
    pub fn with_source(
        samples: Vec<Sample>,
        cfg: LoaderConfig,
        source: Arc<dyn BatchSource>,
    ) -> anyhow::Result<Loader> {
        Self::build_loader(samples, cfg, Some(source))
    }

    fn build_loader(
        samples: Vec<Sample>,
        cfg: LoaderConfig,
        source: Option<Arc<dyn BatchSource>>,
    ) -> anyhow::Result<Loader> {
        anyhow::ensure!(!samples.is_empty(), "the loader got no samples");
        let items = source.as_ref().map_or(samples.len(), |s| s.len());
        anyhow::ensure!(cfg.batch_size > 0, "batch size must be at least 1");
        anyhow::ensure!(cfg.stride > 0, "stride must be at least 1");
        anyhow::ensure!(cfg.sigma > 0.0, "sigma must be positive");
        let ImageSize { height, width } = cfg.image_size;
        anyhow::ensure!(
            height >= cfg.stride && width >= cfg.stride && height % cfg.stride == 0 && width % cfg.stride == 0,
            "image size {height}x{width} must be a multiple of the stride {}",
            cfg.stride
        );
        anyhow::ensure!(
            !cfg.drop_last || items >= cfg.batch_size,
            "batch size {} is larger than the {items} samples, so every batch would be dropped",
            cfg.batch_size,
        );
        let landmarks = samples[0].landmarks.len();
        if let Some(bad) = samples.iter().find(|s| s.landmarks.len() != landmarks) {
            anyhow::bail!(
                "{}: {} landmarks where the others have {landmarks}",
                bad.image_path.display(),
                bad.landmarks.len()
            );
        }
        Ok(Loader {
            shared: Arc::new(Shared {
                samples,
                cfg,
                landmarks,
                source,
            }),
        })
    }

    pub fn samples(&self) -> &[Sample] {
        &self.shared.samples
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.shared.cfg
    }

    /// Items per epoch: the images, or the source's items.
    pub fn items(&self) -> usize {
        self.shared.items()
    }

    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.shared.items(), self.shared.cfg.batch_size);
        if self.shared.cfg.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The sample order of an epoch.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        self.shared.order(epoch)
    }

    /// Builds batch `b` of `epoch` in the calling thread (the same bytes the iterator gives).
    pub fn batch(&self, epoch: usize, b: usize) -> anyhow::Result<Batch> {
        let order = self.shared.order(epoch);
        self.shared.build(epoch, &order, b)
    }

    /// The batches of one epoch, built by the worker threads, in order.
    pub fn epoch(&self, epoch: usize) -> EpochIter {
        let total = self.batches_per_epoch();
        let order = Arc::new(self.shared.order(epoch));
        let mut iter = EpochIter {
            shared: self.shared.clone(),
            epoch,
            order: order.clone(),
            next: 0,
            total,
            queued: 0,
            pending: BTreeMap::new(),
            jobs: None,
            results: None,
            workers: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let workers = self.shared.cfg.workers;
        if workers == 0 {
            return iter;
        }
        let (job_tx, job_rx) = channel::<usize>();
        let (res_tx, res_rx) = channel::<(usize, anyhow::Result<Batch>)>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        for _ in 0..workers {
            let (shared, order, job_rx, res_tx) = (self.shared.clone(), order.clone(), job_rx.clone(), res_tx.clone());
            let stop = iter.stop.clone();
            iter.workers.push(std::thread::spawn(move || loop {
                let job = match job_rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                let Ok(b) = job else { return };
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                // A panic would leave the consumer waiting for this batch forever: turn it into
                // the batch's error instead.
                let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shared.build(epoch, &order, b)))
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a loader worker panicked while building batch {b}")));
                if res_tx.send((b, built)).is_err() {
                    return;
                }
            }));
        }
        iter.jobs = Some(job_tx);
        iter.results = Some(res_rx);
        let ahead = self.shared.cfg.prefetch.max(1).min(total);
        for _ in 0..ahead {
            iter.queue_next();
        }
        iter
    }
}

impl Shared {
    fn items(&self) -> usize {
        self.source.as_ref().map_or(self.samples.len(), |s| s.len())
    }

    fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.items()).collect();
        if self.cfg.shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(self.cfg.seed, epoch as u64, u64::MAX));
            order.shuffle(&mut rng);
        }
        order
    }

    fn build(&self, epoch: usize, order: &[usize], b: usize) -> anyhow::Result<Batch> {
        let cfg = &self.cfg;
        let start = b * cfg.batch_size;
        let indices: Vec<usize> = order[start..(start + cfg.batch_size).min(order.len())].to_vec();
        if let Some(source) = &self.source {
            return source.build(cfg, epoch, indices);
        }
        let ImageSize { height, width } = cfg.image_size;
        let per_image = height * width * cfg.channels;
        let mut batch = Batch::for_filling(cfg, indices, per_image, self.landmarks);
        for (slot, &index) in batch.indices.iter().enumerate() {
            let sample = &self.samples[index];
            let image = load_gray(&sample.image_path)?;
            let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(cfg.seed, epoch as u64, index as u64));
            let t = transform_sample(
                &image,
                &sample.landmarks,
                cfg.image_size,
                cfg.augment.as_ref().map(|a| (a, &mut rng)),
            );
            let dst = &mut batch.images[slot * per_image..(slot + 1) * per_image];
            normalize_into(dst, &t.image.data);
            batch
                .heatmap_points
                .extend(t.points.iter().map(|&p| image_to_heatmap(p, cfg.stride)));
            batch.points.push(t.points);
            batch.affines.push(t.original_to_net.inverse());
        }
        Ok(batch)
    }
}

/// The batches of one epoch in order; dropping it stops the workers.
pub struct EpochIter {
    shared: Arc<Shared>,
    epoch: usize,
    order: Arc<Vec<usize>>,
    next: usize,
    total: usize,
    queued: usize,
    pending: BTreeMap<usize, anyhow::Result<Batch>>,
    jobs: Option<Sender<usize>>,
    results: Option<Receiver<(usize, anyhow::Result<Batch>)>>,
    workers: Vec<JoinHandle<()>>,
    /// Set on drop, so workers skip the batches still queued.
    stop: Arc<AtomicBool>,
}

impl EpochIter {
    /// "batch 3 of epoch 1": counted from 1, as the progress lines count.
    fn batch_name(&self, b: usize) -> String {
        format!("loading batch {} of epoch {}", b + 1, self.epoch + 1)
    }

    fn queue_next(&mut self) {
        if self.queued < self.total {
            if let Some(jobs) = &self.jobs {
                // A send fails only when every worker has exited, which `next` reports.
                let _ = jobs.send(self.queued);
            }
            self.queued += 1;
        }
    }

    /// The next batch if a worker has already built it, without waiting; `None` when it is not
    /// ready yet, at the end of the epoch, and for a loader without workers (whose batches are built
    /// on demand). A batch returned here is the one [`Iterator::next`] would have returned: the
    /// iterator moves past it. Lets training hand the following batch to the GPU engine while the
    /// current step runs, without ever blocking on the loader.
    pub fn next_if_ready(&mut self) -> Option<anyhow::Result<Batch>> {
        if self.next >= self.total {
            return None;
        }
        let results = self.results.as_ref()?;
        let b = self.next;
        while !self.pending.contains_key(&b) {
            // Empty: not built yet. Disconnected: `next` reports the stopped workers.
            let (i, r) = results.try_recv().ok()?;
            self.pending.insert(i, r);
        }
        let result = self.pending.remove(&b).expect("checked above");
        self.next += 1;
        self.queue_next();
        Some(result.with_context(|| self.batch_name(b)))
    }
}

impl Iterator for EpochIter {
    type Item = anyhow::Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.total {
            return None;
        }
        let b = self.next;
        self.next += 1;
        let Some(results) = &self.results else {
            return Some(
                self.shared
                    .build(self.epoch, &self.order, b)
                    .with_context(|| self.batch_name(b)),
            );
        };
        let result = loop {
            if let Some(r) = self.pending.remove(&b) {
                break r;
            }
            match results.recv() {
                Ok((i, r)) => {
                    self.pending.insert(i, r);
                }
                Err(_) => break Err(anyhow::anyhow!("loader worker threads stopped unexpectedly")),
            }
        };
        self.queue_next();
        Some(result.with_context(|| self.batch_name(b)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.total - self.next;
        (left, Some(left))
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.jobs = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}
