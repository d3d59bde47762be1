//! Launch wrapper of `kernels/heatmap.cu`; CPU twin in `backend/cpu/heatmap.rs`.
//!
//! The training step uploads each batch's landmark positions (n*k pairs of f64) and makes the
//! target heatmaps here, on the stream, instead of uploading n*h*w*k floats from the host.
use anyhow::{ensure, Result};

use super::as_i32;
use crate::backend::HeatmapShape;
use crate::gpu::{DevSlice, DevSliceMut, Gpu};

/// Writes `out` (`shape.len()` floats, NHWC, landmark last) with a Gaussian of peak 1 and `sigma`
/// heatmap pixels per image and landmark, centred at `points` (`2 * n * k` doubles: the (x, y)
/// pairs in heatmap pixels, image-major), truncated at 3 sigma; a non-finite pair gives an
/// all-zero channel. Queued on the GPU's stream without waiting.
pub fn encode(gpu: &Gpu, points: DevSlice<f64>, shape: HeatmapShape, sigma: f64, out: DevSliceMut<f32>) -> Result<()> {
    let HeatmapShape { n, h, w, k } = shape;
    ensure!(
        points.len() == 2 * n * k,
        "heatmap encode: {} coordinates for {n} images of {k} landmarks (want {})",
        points.len(),
        2 * n * k
    );
    ensure!(
        out.len() == shape.len(),
        "heatmap encode: output of {} floats for {shape:?}",
        out.len()
    );
    ensure!(
        sigma.is_finite() && sigma > 0.0,
        "heatmap encode: sigma {sigma} must be positive"
    );
    if shape.is_empty() {
        return Ok(());
    }
    let (n, h, w, k) = (as_i32("n", n)?, as_i32("h", h)?, as_i32("w", w)?, as_i32("k", k)?);
    let (pp, op) = (points.ptr(), out.ptr());
    let f = gpu.function("heatmap_encode_f32")?;
    // SAFETY: points holds 2*n*k doubles and out n*h*w*k floats (both checked); arguments
    // (const double* points, int n, int h, int w, int k, double sigma, float* out); the kernel's
    // grid-stride loop takes any 1-D grid.
    unsafe { launch!(gpu, f, gpu.grid_1d(shape.len()); pp, n, h, w, k, sigma, op) }?;
    Ok(())
}
