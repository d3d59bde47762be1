//! Tensor-core convolution timings on the shapes that matter: every DISTINCT convolution of
//! HRNet-W32 and ResNet-50 at 768x768, batch 4, one grayscale channel, 29 landmarks (the graph's
//! conv nodes, deduplicated by input shape and parameters, with their count per step), forward and
//! input gradient, timed with CUDA events (3 warm-up runs, median of 20).
//!
//! Per shape: count, GFLOP (2 x MACs of one call), median ms and TFLOP/s of each pass, and the
//! forward with the BN-statistics epilogue and its merge (`conv2d_fwd_bn_stats`, what training
//! runs for a convolution followed by a batch norm; its cost over `fwd ms` is the epilogue's); then the
//! totals of one step weighted by count (the first convolution's input gradient is not part of a
//! step: the image needs none). One JSON line per shape (`{"kind":"conv",...}`) lets the lead join
//! the table with a cuDNN one keyed by (n, h, w, c_in, c_out, kh, kw, stride, pad).
//!
//! `CONV_BENCH_TILES=1` also times every tile configuration of each shape (both vec tables, or the
//! general loader's), to tune `pick_tile`; `CONV_BENCH_ONLY=<text>` keeps the shapes
//! whose description contains the text, and `CONV_BENCH_ONCE=1` runs each pass once, untimed
//! warm-up aside (for a profiler). Run: `cargo bench --bench gpu_conv`. Without a GPU it says so
//! and exits 0.
#[path = "../tests/gpu_ops_support/mod.rs"]
mod gpu_ops_support;
#[path = "gpu_support/mod.rs"]
mod gpu_support;

use anyhow::Result;
use cephalo::backend::cuda::conv::{
    self, ConvDgrad, ConvEpilogue, ConvFwd, GemmShape, GpuShape, Pass, Tile, TILES_BIG_SMEM, TILES_GENERAL,
    TILES_SMALL_SMEM,
};
use cephalo::backend::{BnParams, ConvParams, GradOut, Shape4};
use cephalo::gpu::timer::measure;
use cephalo::gpu::{DeviceBuffer, Gpu};
use cephalo::graph::Op;
use cephalo::model::ModelConfig;
use gpu_ops_support::stats_targets;
use half::f16;

const WARMUP: usize = 3;
const RUNS: usize = 20;

/// Warm-up and timed runs: the defaults, or one of each under `CONV_BENCH_ONCE`.
fn runs() -> (usize, usize) {
    if std::env::var_os("CONV_BENCH_ONCE").is_some() {
        (0, 1)
    } else {
        (WARMUP, RUNS)
    }
}

/// One distinct convolution of a network.
struct Conv {
    transposed: bool,
    xs: Shape4,
    p: ConvParams,
    count: usize,
    /// Instances whose input gradient a training step computes (those not reading the image).
    dgrad_count: usize,
}

impl Conv {
    fn flops(&self) -> f64 {
        let macs = if self.transposed {
            (self.xs.pixels() * self.p.weight_len()) as f64
        } else {
            self.p.macs(self.xs) as f64
        };
        2.0 * macs
    }
}

fn distinct_convs(model: &str) -> Result<Vec<Conv>> {
    let g = ModelConfig::new(model, 1, 29, [768, 768], 4)?.build()?;
    let mut out: Vec<Conv> = Vec::new();
    for node in &g.nodes {
        let (transposed, p) = match &node.op {
            Op::Conv { p, .. } => (false, *p),
            Op::ConvTranspose { p, .. } => (true, *p),
            _ => continue,
        };
        let xs = g.shape(node.inputs[0]);
        let reads_image = node.inputs[0] == g.input;
        match out
            .iter_mut()
            .find(|c| c.transposed == transposed && c.xs == xs && c.p == p)
        {
            Some(c) => {
                c.count += 1;
                c.dgrad_count += !reads_image as usize;
            }
            None => out.push(Conv {
                transposed,
                xs,
                p,
                count: 1,
                dgrad_count: !reads_image as usize,
            }),
        }
    }
    Ok(out)
}

/// fp16 values in [-1, 1) that are never all zero.
fn filled(gpu: &Gpu, n: usize, salt: u64) -> Result<DeviceBuffer<f16>> {
    let host: Vec<f16> = (0..n)
        .map(|i| f16::from_f32((((i as u64 + salt).wrapping_mul(2_654_435_761)) % 2001) as f32 / 1000.0 - 1.0))
        .collect();
    DeviceBuffer::from_host(gpu, &host)
}

/// Buffers of one convolution, and its two passes as closures over an optional forced tile.
struct Bufs {
    x: DeviceBuffer<f16>,
    w: DeviceBuffer<f16>,
    y: DeviceBuffer<f16>,
    ws: DeviceBuffer<f16>,
    /// BN-statistics partials, `[mean; invstd]` and running statistics for `fwd_bn_stats`.
    partials: DeviceBuffer<f32>,
    saved: DeviceBuffer<f32>,
    running_mean: DeviceBuffer<f32>,
    running_var: DeviceBuffer<f32>,
}

impl Bufs {
    fn new(gpu: &Gpu, c: &Conv) -> Result<Bufs> {
        let ys = out_shape(c);
        let ws_len = if c.transposed {
            conv::conv2d_dgrad_workspace_len(&c.p.adjoint())
        } else {
            conv::conv2d_dgrad_workspace_len(&c.p)
        };
        Ok(Bufs {
            x: filled(gpu, c.xs.len(), 1)?,
            w: filled(gpu, c.p.weight_len(), 2)?,
            y: filled(gpu, ys.len(), 3)?,
            ws: DeviceBuffer::zeros(gpu, ws_len.max(1))?,
            partials: DeviceBuffer::zeros(gpu, conv::conv2d_bn_stats_workspace_len(ys))?,
            saved: DeviceBuffer::zeros(gpu, 2 * ys.c)?,
            running_mean: DeviceBuffer::zeros(gpu, ys.c)?,
            running_var: DeviceBuffer::from_host(gpu, &vec![1.0f32; ys.c])?,
        })
    }

    /// The forward with the BN-statistics epilogue and the merge of its partials (ordinary
    /// convolutions only).
    fn fwd_bn_stats(&mut self, gpu: &Gpu, c: &Conv) -> Result<()> {
        let targets = stats_targets(
            &mut self.saved,
            (&mut self.running_mean, &mut self.running_var),
            &mut self.partials,
        );
        let fwd = ConvFwd {
            x: self.x.slice(),
            xs: c.xs,
            w: self.w.slice(),
            p: &c.p,
        };
        conv::conv2d_fwd_bn_stats(gpu, fwd, None, self.y.slice_mut(), BnParams::default(), targets)
    }

    /// The forward pass (`tile` only for ordinary convolutions).
    fn fwd(&mut self, gpu: &Gpu, c: &Conv, tile: Option<Tile>) -> Result<()> {
        let fwd = ConvFwd {
            x: self.x.slice(),
            xs: c.xs,
            w: self.w.slice(),
            p: &c.p,
        };
        if c.transposed {
            return conv::conv_transpose2d_fwd(gpu, fwd, self.y.slice_mut(), self.ws.slice_mut());
        }
        let e = &ConvEpilogue::NONE;
        match tile {
            Some(t) => conv::conv2d_fwd_tiled(gpu, fwd, e, self.y.slice_mut(), t),
            None => conv::conv2d_fwd(gpu, fwd, e, self.y.slice_mut()),
        }
    }

    /// The input gradient (dy read from `y`, written into `x`), overwriting.
    fn dgrad(&mut self, gpu: &Gpu, c: &Conv, tile: Option<Tile>) -> Result<()> {
        let d = ConvDgrad {
            dy: self.y.slice(),
            w: self.w.slice(),
            p: &c.p,
            xs: c.xs,
        };
        let dx = GradOut {
            data: self.x.slice_mut(),
            accumulate: false,
        };
        let ws = self.ws.slice_mut();
        if c.transposed {
            return conv::conv_transpose2d_dgrad(gpu, d, dx);
        }
        match tile {
            Some(t) => conv::conv2d_dgrad_tiled(gpu, d, dx, ws, t),
            None => conv::conv2d_dgrad(gpu, d, dx, ws),
        }
    }
}

fn out_shape(c: &Conv) -> Shape4 {
    if c.transposed {
        c.p.transposed_out_shape(c.xs)
    } else {
        c.p.out_shape(c.xs)
    }
}

fn describe(c: &Conv) -> String {
    let p = &c.p;
    format!(
        "{}{}x{}x{}x{} {}->{} {}x{}/{} p{}",
        if c.transposed { "T " } else { "" },
        c.xs.n,
        c.xs.h,
        c.xs.w,
        c.xs.c,
        p.c_in,
        p.c_out,
        p.kh,
        p.kw,
        p.stride,
        p.pad
    )
}

/// Times every tile configuration of one pass: "label:ms" pairs.
fn sweep(gpu: &Gpu, b: &mut Bufs, c: &Conv, g: &GemmShape, pass: Pass) -> Result<String> {
    let tiles: Vec<Tile> = if g.vec_ok() {
        let mut v = TILES_BIG_SMEM.to_vec();
        v.extend(TILES_SMALL_SMEM.iter().filter(|t| !TILES_BIG_SMEM.contains(t)));
        v
    } else {
        TILES_GENERAL.to_vec()
    };
    let (warmup, runs) = runs();
    let mut all = Vec::new();
    for t in tiles {
        let ms = measure(gpu, warmup, runs, || match pass {
            Pass::Fwd => b.fwd(gpu, c, Some(t)),
            Pass::Dgrad => b.dgrad(gpu, c, Some(t)),
        })?
        .median_ms;
        all.push(format!("{}:{ms:.4}", t.label()));
    }
    Ok(all.join(" "))
}

fn main() -> Result<()> {
    let Some(gpu) = gpu_support::open("gpu_conv") else {
        return Ok(());
    };
    let sweep_tiles = std::env::var_os("CONV_BENCH_TILES").is_some();
    let only = std::env::var("CONV_BENCH_ONLY").unwrap_or_default();
    let (warmup, runs) = runs();
    let shape = GpuShape::of(&gpu);
    println!(
        "device: {} ({} SMs, {} KiB shared memory per SM)",
        gpu.info().name,
        shape.sms,
        shape.smem_per_sm / 1024
    );
    for model in ["hrnet-w32", "resnet50"] {
        println!("\n{model}, 768x768, batch 4");
        println!(
            "{:<36} {:>5} {:>8} {:>9} {:>8} {:>9} {:>8} {:>12}   tiles (fwd / dgrad)",
            "shape", "count", "GFLOP", "fwd ms", "TFLOP/s", "dgrad ms", "TFLOP/s", "+bn-stats ms"
        );
        let (mut total_flop, mut total_fwd, mut total_dgrad_flop, mut total_dgrad) = (0.0, 0.0, 0.0, 0.0);
        for c in distinct_convs(model)? {
            if !describe(&c).contains(&only) {
                continue;
            }
            let mut b = Bufs::new(&gpu, &c)?;
            let fwd_ms = measure(&gpu, warmup, runs, || b.fwd(&gpu, &c, None))?.median_ms;
            let dgrad_ms = measure(&gpu, warmup, runs, || b.dgrad(&gpu, &c, None))?.median_ms;
            let stats_ms = if c.transposed {
                None
            } else {
                Some(measure(&gpu, warmup, runs, || b.fwd_bn_stats(&gpu, &c))?.median_ms)
            };
            let gflop = c.flops() / 1e9;
            // The tiles pick_tile gives: a transposed convolution's forward is its adjoint's dgrad
            // GEMM and vice versa.
            let (gf, gd) = if c.transposed {
                let ys = out_shape(&c);
                (GemmShape::dgrad(ys, &c.p.adjoint()), GemmShape::fwd(ys, &c.p.adjoint()))
            } else {
                (GemmShape::fwd(c.xs, &c.p), GemmShape::dgrad(c.xs, &c.p))
            };
            let tf = conv::pick_tile(&gf, gf.vec_ok(), &shape);
            let td = conv::pick_tile(&gd, gd.vec_ok(), &shape);
            println!(
                "{:<36} {:>5} {:>8.2} {:>9.4} {:>8.1} {:>9.4} {:>8.1} {:>12}   {} / {}",
                describe(&c),
                c.count,
                gflop,
                fwd_ms,
                gflop / fwd_ms,
                dgrad_ms,
                gflop / dgrad_ms,
                stats_ms.map_or("-".to_string(), |ms| format!("{ms:.4}")),
                tf.label(),
                td.label()
            );
            if sweep_tiles && !c.transposed {
                println!("    fwd   {}", sweep(&gpu, &mut b, &c, &gf, Pass::Fwd)?);
                println!("    dgrad {}", sweep(&gpu, &mut b, &c, &gd, Pass::Dgrad)?);
            }
            let Shape4 { n, h, w, .. } = c.xs;
            let ConvParams {
                c_in,
                c_out,
                kh,
                kw,
                stride,
                pad,
            } = c.p;
            let dgrad_json = if c.dgrad_count > 0 {
                format!("{dgrad_ms:.5}")
            } else {
                "null".into()
            };
            let stats_json = stats_ms.map_or("null".to_string(), |ms| format!("{ms:.5}"));
            println!(
                "{{\"kind\":\"{}\",\"model\":\"{model}\",\"count\":{},\"n\":{n},\"h\":{h},\"w\":{w},\"c_in\":{c_in},\
                 \"c_out\":{c_out},\"kh\":{kh},\"kw\":{kw},\"stride\":{stride},\"pad\":{pad},\"fwd_ms\":{fwd_ms:.5},\
                 \"dgrad_ms\":{dgrad_json},\"fwd_bn_stats_ms\":{stats_json}}}",
                if c.transposed { "conv_transpose" } else { "conv" },
                c.count,
            );
            total_flop += c.count as f64 * c.flops();
            total_fwd += c.count as f64 * fwd_ms;
            total_dgrad_flop += c.dgrad_count as f64 * c.flops();
            total_dgrad += c.dgrad_count as f64 * dgrad_ms;
        }
        println!(
            "{model} step total: fwd {:.1} GFLOP in {:.3} ms ({:.1} TFLOP/s), dgrad {:.1} GFLOP in {:.3} ms ({:.1} TFLOP/s)",
            total_flop / 1e9,
            total_fwd,
            total_flop / 1e9 / total_fwd,
            total_dgrad_flop / 1e9,
            total_dgrad,
            total_dgrad_flop / 1e9 / total_dgrad
        );
    }
    Ok(())
}
