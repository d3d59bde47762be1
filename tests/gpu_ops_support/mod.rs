//! Helpers shared by the GPU op tests (`tests/gpu_*.rs`): the GPU, fresh seeded randomness, fp16
//! uploads whose exact f32 values feed the CPU twin, poisoned outputs and error measures. The GPU
//! benches include it too (`#[path]`), for the argument structs they build alike.
#![allow(dead_code)] // each test binary uses its own subset

use cephalo::backend::cuda::batchnorm::{DevBnGrads, StatsTargets};
use cephalo::backend::{BnGrads, BnRunning, GradOut, HeatmapShape, Shape4};
use cephalo::gpu::{DevSliceMut, DeviceBuffer, Gpu};
use half::f16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Activation shapes every op test covers: batch 1 and 4, channels 18, 32, 36, 64, 256, plus 29
/// (odd, scalar path only) and odd spatial sizes.
pub const SHAPES: [Shape4; 7] = [
    Shape4::new(1, 7, 9, 18),
    Shape4::new(4, 13, 17, 32),
    Shape4::new(1, 5, 3, 36),
    Shape4::new(4, 6, 11, 64),
    Shape4::new(1, 9, 7, 256),
    Shape4::new(4, 3, 5, 29),
    Shape4::new(1, 1, 1, 8),
];

/// `n` heatmaps of `h` x `w` with `k` channels.
pub const fn heatmap_shape(n: usize, h: usize, w: usize, k: usize) -> HeatmapShape {
    HeatmapShape { n, h, w, k }
}

pub fn gpu() -> Gpu {
    Gpu::open(0).expect("GPU tests need a CUDA GPU (run on a GPU machine, or leave them ignored)")
}

/// A generator with a fresh seed, printed so a failure can be replayed.
pub fn rng() -> ChaCha8Rng {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed}");
    ChaCha8Rng::seed_from_u64(seed)
}

/// A NaN pattern that no kernel output can equal, written to outputs before each launch.
pub const POISON_F16: f16 = f16::from_bits(0x7e01);

/// `n` fp16 values uniform in `[lo, hi)`.
pub fn random_f16(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f16> {
    (0..n).map(|_| f16::from_f32(rng.random_range(lo..hi))).collect()
}

pub fn random_f32(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// The exact f32 values of fp16 data: what the CPU twin gets as input.
pub fn to_f32(v: &[f16]) -> Vec<f32> {
    v.iter().map(|h| h.to_f32()).collect()
}

pub fn to_f16(v: &[f32]) -> Vec<f16> {
    v.iter().map(|&x| f16::from_f32(x)).collect()
}

pub fn upload<T: cudarc::driver::DeviceRepr>(gpu: &Gpu, host: &[T]) -> DeviceBuffer<T> {
    DeviceBuffer::from_host(gpu, host).unwrap()
}

/// A device buffer of `n` poisoned fp16 values.
pub fn poisoned_f16(gpu: &Gpu, n: usize) -> DeviceBuffer<f16> {
    upload(gpu, &vec![POISON_F16; n])
}

pub fn poisoned_f32(gpu: &Gpu, n: usize) -> DeviceBuffer<f32> {
    upload(gpu, &vec![f32::NAN; n])
}

pub fn download_f32(gpu: &Gpu, b: &DeviceBuffer<f16>) -> Vec<f32> {
    to_f32(&b.to_host(gpu).unwrap())
}

/// `||got - want|| / ||want||`, the measure of
/// docs/architecture.md#precision-and-tolerances; panics on any NaN in `got`.
pub fn rel_err(what: &str, got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!("{what}: non-finite {} at {i} (poisoned output not written?)", got[i]);
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        num += (g as f64 - w as f64).powi(2);
        den += (w as f64).powi(2);
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// Asserts the tolerance of docs/architecture.md#precision-and-tolerances (1e-2 for fp16 results,
/// 1e-5 for fp32 ones), or the one given.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    let e = rel_err(what, got, want);
    assert!(e < tol, "{what}: relative error {e:.3e} over {tol:.0e}");
}

/// Asserts `got` (fp16 from the GPU) equals the CPU's f32 result rounded to fp16: for ops whose
/// GPU arithmetic is the CPU's operation for operation. Equal as numbers, so +0 and -0 match
/// (`max(-0, 0)` may give either) and a NaN (a poisoned element left unwritten) never does.
pub fn assert_bitwise(what: &str, got: &[f16], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, &w)) in got.iter().zip(want).enumerate() {
        let w = f16::from_f32(w);
        assert!(
            *g == w,
            "{what}: element {i} is {g} ({:#06x}), the CPU twin gives {w} ({:#06x})",
            g.to_bits(),
            w.to_bits()
        );
    }
}

pub fn same_bits(a: &[f16], b: &[f16]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Where a training batch norm writes its statistics, over whole buffers: `saved` (mean, then
/// invstd), the running mean and variance (updated in place) and the reduction workspace.
pub fn stats_targets<'a>(
    saved: &'a mut DeviceBuffer<f32>,
    (mean, var): (&'a mut DeviceBuffer<f32>, &'a mut DeviceBuffer<f32>),
    workspace: &'a mut DeviceBuffer<f32>,
) -> StatsTargets<'a> {
    StatsTargets {
        saved: saved.slice_mut(),
        running: BnRunning {
            mean: mean.slice_mut(),
            var: var.slice_mut(),
        },
        workspace: workspace.slice_mut(),
    }
}

/// Where a backward writes: `dx` (overwritten, or accumulated into) and dgamma and dbeta.
pub fn bwd_outputs<'a>(
    dx: &'a mut DeviceBuffer<f16>,
    accumulate: bool,
    dgamma: &'a mut DeviceBuffer<f32>,
    dbeta: &'a mut DeviceBuffer<f32>,
) -> (GradOut<DevSliceMut<'a, f16>>, DevBnGrads<'a>) {
    let dx = GradOut {
        data: dx.slice_mut(),
        accumulate,
    };
    let grads = BnGrads {
        dgamma: dgamma.slice_mut(),
        dbeta: dbeta.slice_mut(),
    };
    (dx, grads)
}
