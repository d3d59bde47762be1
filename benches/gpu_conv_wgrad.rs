//! Weight-gradient time of every distinct convolution of HRNet-W32 and ResNet-50 at 768 x 768,
//! batch 4, one input channel (the users' cephalograms), timed with CUDA events (3 warm-up runs,
//! median of 15), through `backend/cuda/conv_wgrad.rs` with its default plan.
//!
//! FLOP = 2 x multiply-accumulates of the GEMM (c_out x kh*kw*c_in x output pixels), the same as
//! the forward convolution's. Totals weight each shape by how often the network uses it. One JSON
//! line per shape follows the table. `CEPHALO_WGRAD_SWEEP=1` also times every tile with a range of
//! split counts and prints the best plan per shape next to the default (to tune the chooser).
//! Run: `cargo bench --bench gpu_conv_wgrad`. Without a GPU it says so and exits 0.
#[path = "gpu_support/mod.rs"]
mod gpu_support;

use std::collections::BTreeMap;

use anyhow::Result;
use cephalo::backend::cuda::conv_wgrad::{self, ConvWgrad, Tile, WgradPlan};
use cephalo::backend::{ConvParams, Shape4};
use cephalo::gpu::timer::measure;
use cephalo::gpu::{DeviceBuffer, Gpu};
use cephalo::graph::Op;
use cephalo::model::ModelConfig;
use half::f16;

const WARMUP: usize = 3;
const RUNS: usize = 15;

/// A distinct weight gradient: the convolution it runs (for a transposed convolution, its adjoint
/// on the output-gradient's shape) and how it is reported.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    transposed: bool,
    // Reported geometry: the layer's own input shape and parameters.
    n: usize,
    h: usize,
    w: usize,
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

impl Key {
    fn params(&self) -> ConvParams {
        ConvParams::square(self.c_in, self.c_out, self.k, self.stride, self.pad)
    }

    fn xs(&self) -> Shape4 {
        Shape4::new(self.n, self.h, self.w, self.c_in)
    }

    /// The convolution whose weight gradient the kernel computes, and its input shape.
    fn gemm_conv(&self) -> (Shape4, ConvParams) {
        let p = self.params();
        if self.transposed {
            (p.transposed_out_shape(self.xs()), p.adjoint())
        } else {
            (self.xs(), p)
        }
    }

    fn flop(&self) -> f64 {
        let (xs, p) = self.gemm_conv();
        2.0 * p.macs(xs) as f64
    }
}

fn distinct_convs(model: &str) -> Result<BTreeMap<Key, usize>> {
    let g = ModelConfig::new(model, 1, 29, [768, 768], 4)?.build()?;
    let mut counts = BTreeMap::new();
    for node in &g.nodes {
        let (p, transposed) = match &node.op {
            Op::Conv { p, .. } => (*p, false),
            Op::ConvTranspose { p, .. } => (*p, true),
            _ => continue,
        };
        assert_eq!(p.kh, p.kw, "square kernels only in these networks");
        let xs = g.shape(node.inputs[0]);
        let key = Key {
            transposed,
            n: xs.n,
            h: xs.h,
            w: xs.w,
            c_in: p.c_in,
            c_out: p.c_out,
            k: p.kh,
            stride: p.stride,
            pad: p.pad,
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    Ok(counts)
}

/// `n` fp16 values in [-1, 1), never all zero.
fn values(gpu: &Gpu, n: usize, salt: u64) -> Result<DeviceBuffer<f16>> {
    let host: Vec<f16> = (0..n as u64)
        .map(|i| f16::from_f32(((i.wrapping_add(salt)).wrapping_mul(2_654_435_761) % 2001) as f32 / 1000.0 - 1.0))
        .collect();
    DeviceBuffer::from_host(gpu, &host)
}

fn main() -> Result<()> {
    let Some(gpu) = gpu_support::open("gpu_conv_wgrad") else {
        return Ok(());
    };
    let sweep = std::env::var("CEPHALO_WGRAD_SWEEP").is_ok_and(|v| v == "1");
    gpu_support::print_device(&gpu);
    let mut json = Vec::new();
    for model in ["hrnet-w32", "resnet50"] {
        println!("\n{model}, 768x768, batch 4, 1 input channel: weight gradients");
        println!(
            "{:<5} {:<18} {:>5} {:>5} {:>9} {:>9} {:>9} {:>8}  plan",
            "kind", "input", "c_out", "count", "GFLOP", "ms", "TFLOP/s", "tot ms"
        );
        let (mut total_flop, mut total_ms) = (0.0f64, 0.0f64);
        for (key, count) in distinct_convs(model)? {
            let (xs, p) = key.gemm_conv();
            let ys = p.out_shape(xs);
            let x = values(&gpu, xs.len(), 1)?;
            let dy = values(&gpu, ys.len(), 7)?;
            let mut dw = DeviceBuffer::<f32>::zeros(&gpu, p.weight_len())?;
            let plan = WgradPlan::new(xs, &p);
            let ws_len = conv_wgrad::conv2d_wgrad_workspace_len(xs, &p).max(1);
            let ws_cap = if sweep { ws_len.max(8 << 20) } else { ws_len };
            let mut ws = DeviceBuffer::<f32>::zeros(&gpu, ws_cap)?;
            let mut time = |plan: WgradPlan| -> Result<f64> {
                let t = measure(&gpu, WARMUP, RUNS, || {
                    let c = ConvWgrad {
                        x: x.slice(),
                        xs,
                        dy: dy.slice(),
                        p: &p,
                    };
                    conv_wgrad::conv2d_wgrad_planned(&gpu, c, plan, dw.slice_mut(), None, ws.slice_mut())
                })?;
                Ok(t.median_ms)
            };
            let ms = time(plan)?;
            let flop = key.flop();
            total_flop += flop * count as f64;
            total_ms += ms * count as f64;
            let shape = format!("{}x{}x{}x{} k{}s{}", key.n, key.h, key.w, key.c_in, key.k, key.stride);
            println!(
                "{:<5} {:<18} {:>5} {:>5} {:>9.3} {:>9.4} {:>9.1} {:>8.3}  {:?} x{} ({} CTAs)",
                if key.transposed { "convT" } else { "conv" },
                shape,
                key.c_out,
                count,
                flop / 1e9,
                ms,
                flop / (ms * 1e9),
                ms * count as f64,
                plan.tile,
                plan.splits,
                plan.ctas(&p)
            );
            if sweep {
                let base = plan.splits.max(1);
                let mut best = (ms, plan);
                for tile in Tile::ALL {
                    for splits in [base / 4, base / 2, base, base * 2, base * 4, 1] {
                        let cand = WgradPlan::with(xs, &p, tile, splits.max(1));
                        if cand.partial_len(&p) > ws_cap {
                            continue;
                        }
                        let t = time(cand)?;
                        if t < best.0 {
                            best = (t, cand);
                        }
                    }
                }
                println!(
                    "      sweep best {:.4} ms ({:.1} TFLOP/s): {:?} x{} ({} CTAs)",
                    best.0,
                    flop / (best.0 * 1e9),
                    best.1.tile,
                    best.1.splits,
                    best.1.ctas(&p)
                );
            }
            json.push(format!(
                "{{\"kind\":\"{}\",\"model\":\"{model}\",\"count\":{count},\"n\":{},\"h\":{},\"w\":{},\"c_in\":{},\"c_out\":{},\"kh\":{},\"kw\":{},\"stride\":{},\"pad\":{},\"wgrad_ms\":{ms:.5}}}",
                if key.transposed { "conv_transpose" } else { "conv" },
                key.n,
                key.h,
                key.w,
                key.c_in,
                key.c_out,
                key.k,
                key.k,
                key.stride,
                key.pad
            ));
        }
        println!(
            "{model} total (weighted by count): {:.1} GFLOP in {:.3} ms = {:.1} TFLOP/s",
            total_flop / 1e9,
            total_ms,
            total_flop / (total_ms * 1e9)
        );
    }
    println!();
    for line in json {
        println!("{line}");
    }
    Ok(())
}
