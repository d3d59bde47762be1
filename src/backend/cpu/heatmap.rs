//! CPU twin of `kernels/heatmap.cu`: a batch's Gaussian target heatmaps from its landmark
//! positions (docs/maths.md#heatmap-targets).
//!
//! Both engines make their targets from [`Batch::heatmap_points`](crate::data::loader::Batch)
//! with this op, so the loader never fills `n*h*w*k` floats and the GPU step uploads coordinates
//! only. Each image runs the loader's reference encoder, [`encode_into`].
use rayon::prelude::*;

use crate::backend::HeatmapShape;
use crate::data::heatmap::encode_into;

/// Writes `out` (`shape.len()` floats, NHWC, landmark last): for image `i` and landmark `c` a
/// Gaussian of peak 1 and `sigma` heatmap pixels at `points[i * k + c]` (heatmap pixels),
/// truncated at 3 sigma; a non-finite point gives an all-zero channel. Every element is written.
pub fn encode(points: &[[f64; 2]], shape: HeatmapShape, sigma: f64, out: &mut [f32]) {
    let HeatmapShape { n, h, w, k } = shape;
    assert_eq!(
        points.len(),
        n * k,
        "heatmap encode: {} points for {n} images of {k} landmarks",
        points.len()
    );
    assert_eq!(
        out.len(),
        shape.len(),
        "heatmap encode: output of {} floats for {shape:?}",
        out.len()
    );
    if shape.is_empty() {
        return;
    }
    out.par_chunks_mut(h * w * k)
        .zip(points.par_chunks(k))
        .for_each(|(maps, pts)| {
            maps.fill(0.0);
            encode_into(maps, pts, h, w, sigma);
        });
}
