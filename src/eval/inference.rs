//! Batched inference over a loader: the network's heatmaps decoded with DARK and mapped back to
//! original-image pixels. Shared by validation during training, `eval` and `predict`, so all
//! three decode and un-warp landmarks the same way.
use anyhow::Result;

use crate::backend::Backend;
use crate::checkpoint::Meta;
use crate::data::geometry::ImageSize;
use crate::data::heatmap::{decode_dark, heatmap_to_image};
use crate::data::loader::{Loader, LoaderConfig};
use crate::data::Sample;
use crate::eval::metrics::{ImageResult, MetricsReport};
use crate::graph::exec::Executor;

/// The loader settings to run the checkpoint `meta` over a dataset: its input channels, stride
/// and sigma, `image_size` (the network's, or a refiner's patch), every sample once in order, no
/// augmentation; `batch_size` images per batch, `workers` loader threads.
pub fn inference_loader_config(meta: &Meta, image_size: ImageSize, batch_size: usize, workers: usize) -> LoaderConfig {
    LoaderConfig {
        channels: meta.model.in_channels,
        stride: meta.heatmap_stride,
        sigma: meta.heatmap_sigma as f64,
        batch_size: batch_size.max(1),
        augment: None,
        shuffle: false,
        drop_last: false,
        workers,
        prefetch: 2 * workers.max(1),
        ..LoaderConfig::new(image_size)
    }
}

/// One image's predicted landmarks.
#[derive(Debug, Clone)]
pub struct PredictedImage {
    /// Index of the sample in the loader's sample list.
    pub index: usize,
    /// Original-image pixels, in the landmark set's order.
    pub points: Vec<[f64; 2]>,
    /// The heatmap peak of each landmark: low values flag doubtful points.
    pub confidence: Vec<f32>,
}

/// Runs `exec` (an eval-mode executor whose batch size is the loader's) over every batch of the
/// loader's epoch 0, in sample order. A final short batch is padded by repeating its last image;
/// the padding's outputs are discarded.
pub fn predict_loader<B: Backend>(exec: &mut Executor<B>, loader: &Loader, sigma: f64) -> Result<Vec<PredictedImage>> {
    let out_shape = exec.graph().output_shape();
    let in_shape = exec.graph().input_shape();
    let (h, w, k) = (out_shape.h, out_shape.w, out_shape.c);
    let stride = in_shape.h / out_shape.h;
    let per_image_in = in_shape.h * in_shape.w * in_shape.c;
    let per_image_out = h * w * k;
    let mut results = Vec::with_capacity(loader.samples().len());
    for batch in loader.epoch(0) {
        let batch = batch?;
        let mut images = batch.images;
        let n = batch.indices.len();
        anyhow::ensure!(
            n <= in_shape.n,
            "loader batch of {n} exceeds the network's batch of {}",
            in_shape.n
        );
        // Pad by repeating the last image: any valid input works, and it keeps BN-free eval exact.
        let last = images[(n - 1) * per_image_in..n * per_image_in].to_vec();
        for _ in n..in_shape.n {
            images.extend_from_slice(&last);
        }
        let heatmaps = exec.predict(&images);
        for (i, (&index, affine)) in batch.indices.iter().zip(&batch.affines).enumerate() {
            let maps = &heatmaps[i * per_image_out..(i + 1) * per_image_out];
            let peaks = decode_dark(maps, h, w, k, sigma);
            let points = peaks
                .iter()
                .map(|p| affine.apply(heatmap_to_image(p.point, stride)))
                .collect();
            let confidence = peaks.iter().map(|p| p.value).collect();
            results.push(PredictedImage {
                index,
                points,
                confidence,
            });
        }
    }
    results.sort_by_key(|r| r.index);
    Ok(results)
}

/// Metrics of `predictions` (from [`predict_loader`]) against the loader's ground truth.
pub fn metrics_of(samples: &[Sample], predictions: &[PredictedImage], symbols: &[String]) -> MetricsReport {
    let images: Vec<ImageResult> = predictions
        .iter()
        .map(|p| {
            let s = &samples[p.index];
            ImageResult {
                predicted: &p.points,
                truth: &s.landmarks,
                pixel_size_mm: s.pixel_size_mm,
                machine: s.machine.as_deref(),
            }
        })
        .collect();
    MetricsReport::compute(symbols, &images)
}
