//! Bandwidth of every non-convolution kernel at HRNet-W32 sizes (768 x 768 input, batch 4: the
//! branch-1 activation is 4 x 192 x 192 x 32), against the device's own copy bandwidth, all timed
//! with CUDA events (5 warm-up runs, median of 50).
//!
//! "Bytes" is what the op must move at minimum: every input read once and every output written
//! once (accumulating gradients also read their old value). GB/s = bytes / median time; the
//! target is 70 % of the copy's GB/s. Run: `cargo bench --bench gpu_ops`.
//! Without a GPU it says so and exits 0.
#[path = "../tests/gpu_ops_support/mod.rs"]
mod gpu_ops_support;
#[path = "gpu_support/mod.rs"]
mod gpu_support;

use anyhow::Result;
use cephalo::backend::cuda::batchnorm::BnForward;
use cephalo::backend::cuda::{self, batchnorm::bn_workspace_len};
use cephalo::backend::upsample_shape;
use cephalo::backend::{AddReluJoin, BnParams, BnWeights, GradOut, PoolParams, Shape4, UpsampleMode};
use cephalo::gpu::timer::{measure, Timing};
use cephalo::gpu::{DeviceBuffer, Gpu};
use gpu_ops_support::{bwd_outputs, stats_targets};
use half::f16;

const WARMUP: usize = 5;
const RUNS: usize = 50;

/// A device buffer of `n` fp16 values in [-1, 1) (never all zeros: ReLU masks and maxima vary).
fn activations(gpu: &Gpu, n: usize) -> Result<DeviceBuffer<f16>> {
    let host: Vec<f16> = (0..n)
        .map(|i| f16::from_f32(((i as u64).wrapping_mul(2_654_435_761) % 2001) as f32 / 1000.0 - 1.0))
        .collect();
    DeviceBuffer::from_host(gpu, &host)
}

fn f32s(gpu: &Gpu, n: usize, v: f32) -> Result<DeviceBuffer<f32>> {
    DeviceBuffer::from_host(gpu, &vec![v; n])
}

struct Table {
    copy_gbs: f64,
}

impl Table {
    fn row(&self, op: &str, shape: &str, bytes: usize, t: Timing) {
        let gbs = bytes as f64 / (t.median_ms * 1e6);
        println!(
            "{op:<28} {shape:<22} {:>10.1} {:>10.4} {:>9.1} {:>7.0}%",
            bytes as f64 / 1e6,
            t.median_ms,
            gbs,
            100.0 * gbs / self.copy_gbs
        );
    }
}

fn main() -> Result<()> {
    let Some(gpu) = gpu_support::open("gpu_ops") else {
        return Ok(());
    };
    gpu_support::print_device(&gpu);

    // The copy reference: 256 MiB device to device, far beyond every cache.
    let n_copy = 128 << 20;
    let src = DeviceBuffer::<f16>::zeros(&gpu, n_copy)?;
    let mut dst = DeviceBuffer::<f16>::zeros(&gpu, n_copy)?;
    let copy = measure(&gpu, WARMUP, RUNS, || {
        gpu.stream().memcpy_dtod(src.cuda_slice(), dst.cuda_slice_mut())?;
        Ok(())
    })?;
    let table = Table {
        copy_gbs: (2 * n_copy * 2) as f64 / (copy.median_ms * 1e6),
    };
    drop((src, dst));
    println!(
        "{:<28} {:<22} {:>10} {:>10} {:>9} {:>8}",
        "op", "shape", "MB moved", "median ms", "GB/s", "of copy"
    );
    table.row("memcpy dtod", "256 MiB", 2 * n_copy * 2, copy);

    for xs in [
        Shape4::new(4, 192, 192, 32),
        Shape4::new(4, 96, 96, 64),
        Shape4::new(4, 192, 192, 18),
    ] {
        let (n, c, shape) = (xs.len(), xs.c, xs.to_string());
        let (a, b) = (activations(&gpu, n)?, activations(&gpu, n)?);
        let mut out = DeviceBuffer::<f16>::zeros(&gpu, n)?;
        let mut out2 = DeviceBuffer::<f16>::zeros(&gpu, n)?;
        let h = 2 * n; // bytes of one fp16 tensor

        let t = measure(&gpu, WARMUP, RUNS, || {
            cuda::elementwise::relu_fwd(&gpu, a.slice(), out.slice_mut())
        })?;
        table.row("relu_fwd", &shape, 2 * h, t);
        let t = measure(&gpu, WARMUP, RUNS, || {
            cuda::elementwise::relu_bwd(&gpu, a.slice(), b.slice(), out.slice_mut(), false)
        })?;
        table.row("relu_bwd", &shape, 3 * h, t);
        let t = measure(&gpu, WARMUP, RUNS, || {
            cuda::elementwise::add_fwd(&gpu, a.slice(), b.slice(), out.slice_mut())
        })?;
        table.row("add_fwd", &shape, 3 * h, t);
        let t = measure(&gpu, WARMUP, RUNS, || {
            cuda::elementwise::add_relu_fwd(&gpu, a.slice(), b.slice(), out.slice_mut())
        })?;
        table.row("add_relu_fwd", &shape, 3 * h, t);
        let t = measure(&gpu, WARMUP, RUNS, || {
            cuda::elementwise::add_bwd(&gpu, a.slice(), out.slice_mut(), true)
        })?;
        table.row("add_bwd (accumulate)", &shape, 3 * h, t);

        let (gamma, beta) = (f32s(&gpu, c, 1.0)?, f32s(&gpu, c, 0.1)?);
        let (mut rm, mut rv) = (f32s(&gpu, c, 0.0)?, f32s(&gpu, c, 1.0)?);
        let (mut saved, mut ws) = (f32s(&gpu, 2 * c, 0.0)?, f32s(&gpu, bn_workspace_len(xs), 0.0)?);
        let (mut dg, mut db) = (f32s(&gpu, c, 0.0)?, f32s(&gpu, c, 0.0)?);
        let weights = || BnWeights {
            gamma: gamma.slice(),
            beta: beta.slice(),
            params: BnParams::default(),
        };
        let t = measure(&gpu, WARMUP, RUNS, || {
            let targets = stats_targets(&mut saved, (&mut rm, &mut rv), &mut ws);
            cuda::batchnorm::bn_fwd_train(&gpu, a.slice(), xs, weights(), true, out.slice_mut(), targets)
        })?;
        // Statistics read x once, the normalisation reads x and writes y.
        table.row("bn_fwd_train+relu (2 pass)", &shape, 3 * h, t);
        let t = measure(&gpu, WARMUP, RUNS, || {
            cuda::batchnorm::bn_apply_saved(&gpu, a.slice(), xs, weights(), saved.slice(), true, out.slice_mut())
        })?;
        table.row("bn_apply_saved+relu", &shape, 2 * h, t);
        let t = measure(&gpu, WARMUP, RUNS, || {
            cuda::batchnorm::bn_add_relu_apply_saved(
                &gpu,
                a.slice(),
                xs,
                weights(),
                saved.slice(),
                b.slice(),
                out.slice_mut(),
            )
        })?;
        table.row("bn_add_relu_apply_saved", &shape, 3 * h, t);
        let forward = || BnForward {
            x: a.slice(),
            xs,
            bn: weights(),
            saved: saved.slice(),
        };
        let t = measure(&gpu, WARMUP, RUNS, || {
            let (dx, grads) = bwd_outputs(&mut out, false, &mut dg, &mut db);
            cuda::batchnorm::bn_bwd(&gpu, b.slice(), forward(), true, dx, grads, ws.slice_mut())
        })?;
        // Reduction reads dy and x; the dx pass reads them again and writes dx.
        table.row("bn_bwd+relu (2 pass)", &shape, 5 * h, t);
        let t = measure(&gpu, WARMUP, RUNS, || {
            let join = AddReluJoin {
                y: a.slice(),
                d_residual: Some(GradOut {
                    data: out2.slice_mut(),
                    accumulate: false,
                }),
            };
            let (dx, grads) = bwd_outputs(&mut out, false, &mut dg, &mut db);
            cuda::batchnorm::bn_add_relu_bwd(&gpu, b.slice(), forward(), join, dx, grads, ws.slice_mut())
        })?;
        // Reduction reads dy, x, y and writes d_residual; the dx pass reads dy, x, y, writes dx.
        table.row("bn_add_relu_bwd (2 pass)", &shape, 8 * h, t);
    }

    // Upsampling into HRNet-W32's branch-1 resolution from branches 2 and 4.
    for (xs, factor) in [(Shape4::new(4, 96, 96, 64), 2), (Shape4::new(4, 24, 24, 256), 8)] {
        let ys = upsample_shape(xs, factor);
        let shape = format!("{xs} x{factor}");
        let x = activations(&gpu, xs.len())?;
        let dy = activations(&gpu, ys.len())?;
        let mut y = DeviceBuffer::<f16>::zeros(&gpu, ys.len())?;
        let mut dx = DeviceBuffer::<f16>::zeros(&gpu, xs.len())?;
        let bytes = 2 * (xs.len() + ys.len());
        for mode in [UpsampleMode::Nearest, UpsampleMode::Bilinear] {
            let t = measure(&gpu, WARMUP, RUNS, || {
                cuda::resample::upsample_fwd(&gpu, x.slice(), xs, mode, y.slice_mut(), ys)
            })?;
            table.row(&format!("upsample_fwd {mode:?}"), &shape, bytes, t);
            let t = measure(&gpu, WARMUP, RUNS, || {
                cuda::resample::upsample_bwd(&gpu, dy.slice(), ys, mode, dx.slice_mut(), xs, false)
            })?;
            table.row(&format!("upsample_bwd {mode:?}"), &shape, bytes, t);
        }
    }

    // HRNet-W32's head concat: four branches, all upsampled to 192 x 192.
    let widths = [32usize, 64, 128, 256];
    let pixels = 4 * 192 * 192;
    let inputs: Vec<_> = widths
        .iter()
        .map(|&w| activations(&gpu, pixels * w))
        .collect::<Result<_>>()?;
    let total: usize = widths.iter().sum();
    let mut y = DeviceBuffer::<f16>::zeros(&gpu, pixels * total)?;
    let views: Vec<_> = inputs.iter().map(|b| b.slice()).collect();
    let shape = "4x192x192x(32+64+128+256)";
    let t = measure(&gpu, WARMUP, RUNS, || {
        cuda::concat::concat_fwd(&gpu, &views, &widths, y.slice_mut())
    })?;
    table.row("concat_fwd", shape, 2 * 2 * pixels * total, t);
    drop(views);
    let mut grads: Vec<_> = inputs;
    let t = measure(&gpu, WARMUP, RUNS, || {
        let mut targets: Vec<_> = grads.iter_mut().map(|g| Some((g.slice_mut(), false))).collect();
        cuda::concat::concat_bwd(&gpu, y.slice(), &widths, &mut targets)
    })?;
    table.row("concat_bwd", shape, 2 * 2 * pixels * total, t);
    drop((grads, y));

    // ResNet's stem pool on a 768 x 768 input: 4 x 384 x 384 x 64 -> 4 x 192 x 192 x 64.
    let xs = Shape4::new(4, 384, 384, 64);
    let p = PoolParams::new(3, 2, 1);
    let ys = p.out_shape(xs);
    let x = activations(&gpu, xs.len())?;
    let dy = activations(&gpu, ys.len())?;
    let mut y = DeviceBuffer::<f16>::zeros(&gpu, ys.len())?;
    let mut dx = DeviceBuffer::<f16>::zeros(&gpu, xs.len())?;
    let t = measure(&gpu, WARMUP, RUNS, || {
        cuda::pool::maxpool_fwd(&gpu, x.slice(), xs, &p, y.slice_mut())
    })?;
    table.row("maxpool_fwd 3/2/1", &xs.to_string(), 2 * (xs.len() + ys.len()), t);
    let t = measure(&gpu, WARMUP, RUNS, || {
        cuda::pool::maxpool_bwd(&gpu, x.slice(), xs, dy.slice(), &p, dx.slice_mut(), false)
    })?;
    table.row("maxpool_bwd 3/2/1", &xs.to_string(), 2 * (2 * xs.len() + ys.len()), t);
    Ok(())
}
