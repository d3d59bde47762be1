//! GPU tests of `kernels/heatmap.cu` against its CPU twin `backend/cpu/heatmap.rs`. Ignored without
//! a GPU; on a GPU machine run them with `--ignored` (a missing GPU then fails).
//!
//! Fresh random landmarks every run (the seed is printed): inside the map, near and beyond every
//! border (windows clipped or empty), missing (NaN), at exact pixel centres; odd map sizes, batch 1
//! and 4, the users' 4x192x192x29. The output is poisoned (NaN) before each launch, so an element
//! the kernel fails to write shows. The twin runs the same double-precision steps, so the two agree
//! to the bit but for exp's last bit in double, which may round differently to float: at most one
//! float ulp, and only where the value is not 0.
mod gpu_ops_support;

use cephalo::backend::HeatmapShape;
use cephalo::backend::{cpu, cuda};
use cephalo::gpu::Gpu;
use gpu_ops_support::heatmap_shape as shape;
use gpu_ops_support::*;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

const SHAPES: [HeatmapShape; 5] = [
    shape(1, 7, 9, 5),
    shape(4, 13, 11, 3),
    shape(1, 1, 1, 1),
    shape(4, 33, 17, 19),
    shape(4, 192, 192, 29),
];

/// Landmarks of every kind the loader can hand over, in heatmap pixels.
fn random_points(rng: &mut ChaCha8Rng, s: HeatmapShape) -> Vec<[f64; 2]> {
    let (w, h) = (s.w as f64, s.h as f64);
    (0..s.n * s.k)
        .map(|_| match rng.random_range(0..10) {
            0 => [f64::NAN, f64::NAN],
            1 => [rng.random_range(-12.0..w + 12.0), f64::NAN],
            // Beyond a border by up to 4 sigma: clipped or empty windows.
            2 => [rng.random_range(-12.0..0.0), rng.random_range(0.0..h)],
            3 => [rng.random_range(0.0..w), rng.random_range(h - 1.0..h + 12.0)],
            // Exact pixel centres: the peak is exactly 1.
            4 => [rng.random_range(0..s.w) as f64, rng.random_range(0..s.h) as f64],
            _ => [rng.random_range(-0.5..w - 0.5), rng.random_range(-0.5..h - 0.5)],
        })
        .collect()
}

/// The GPU's targets for `points`, written into a poisoned buffer.
fn gpu_encode(gpu: &Gpu, points: &[[f64; 2]], s: HeatmapShape, sigma: f64) -> Vec<f32> {
    let coords: Vec<f64> = points.iter().flatten().copied().collect();
    let d_points = upload(gpu, &coords);
    let mut out = poisoned_f32(gpu, s.len());
    cuda::heatmap::encode(gpu, d_points.slice(), s, sigma, out.slice_mut()).unwrap();
    out.to_host(gpu).unwrap()
}

fn cpu_encode(points: &[[f64; 2]], s: HeatmapShape, sigma: f64) -> Vec<f32> {
    let mut out = vec![f32::NAN; s.len()];
    cpu::heatmap::encode(points, s, sigma, &mut out);
    out
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn encode_matches_the_cpu_twin() {
    let gpu = gpu();
    let mut rng = rng();
    for s in SHAPES {
        for sigma in [1.0, 2.0, rng.random_range(0.7..4.0)] {
            let points = random_points(&mut rng, s);
            let got = gpu_encode(&gpu, &points, s, sigma);
            let want = cpu_encode(&points, s, sigma);
            let mut nonzero = 0;
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                let ulps = (g.to_bits() as i64 - w.to_bits() as i64).abs();
                assert!(
                    g == w || (w != 0.0 && ulps <= 1),
                    "{s:?} sigma {sigma}: element {i} (landmark {}) is {g} on the GPU, {w} on the CPU",
                    i % s.k
                );
                nonzero += usize::from(w != 0.0);
            }
            // The test drew Gaussians, not only empty maps.
            assert!(nonzero > 0 || s.len() == 1, "{s:?}: every target is 0");
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn encode_is_bitwise_reproducible() {
    let gpu = gpu();
    let mut rng = rng();
    let s = shape(4, 192, 192, 29);
    let points = random_points(&mut rng, s);
    let a = gpu_encode(&gpu, &points, s, 2.0);
    let b = gpu_encode(&gpu, &points, s, 2.0);
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn wrong_sizes_are_errors_not_launches() {
    let gpu = gpu();
    let s = shape(2, 5, 4, 3);
    let points = upload(&gpu, &[1.0f64; 2 * 2 * 3]);
    let short_points = upload(&gpu, &[1.0f64; 2 * 2 * 3 - 1]);
    let mut out = poisoned_f32(&gpu, s.len());
    let mut short_out = poisoned_f32(&gpu, s.len() - 1);
    let err = cuda::heatmap::encode(&gpu, short_points.slice(), s, 2.0, out.slice_mut()).unwrap_err();
    assert!(err.to_string().contains("coordinates"), "{err}");
    let err = cuda::heatmap::encode(&gpu, points.slice(), s, 2.0, short_out.slice_mut()).unwrap_err();
    assert!(err.to_string().contains("output"), "{err}");
    let err = cuda::heatmap::encode(&gpu, points.slice(), s, 0.0, out.slice_mut()).unwrap_err();
    assert!(err.to_string().contains("sigma"), "{err}");
    // Nothing was launched: the output is still poisoned.
    assert!(out.to_host(&gpu).unwrap().iter().all(|v| v.is_nan()));
}
