//! The CPU convolutions shape by shape, against the cores' measured FMA peak: every distinct
//! convolution of a network, forward, input gradient and weight gradient, median of a few runs.
//!
//! Run: `cargo bench --bench cpu_conv` (env: `CEPHALO_BENCH_MODEL` [hrnet-w8],
//! `CEPHALO_BENCH_SIZE` [`256x224`], `CEPHALO_BENCH_BATCH` [4], `CEPHALO_BENCH_RUNS` [5],
//! `CEPHALO_BENCH_OPS` [`fwd,dgrad,wgrad,winograd`: the last is the inference forward of the 3x3
//! stride-1 shapes by Winograd, its GF/s counted as the direct sum's work], `CEPHALO_BENCH_SHAPE` (only the shapes whose row name
//! contains it, e.g. `1x1 s1 64->64`), `CEPHALO_CPU_ISA` to force an instruction set).
#[path = "cpu_support/mod.rs"]
mod cpu_support;

use std::time::Instant;

use cephalo::backend::cpu::{conv, simd};
use cephalo::backend::{ConvParams, Shape4};
use cephalo::model::conv_shapes::{conv_shapes, ConvKind};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use cpu_support::{env, time_ms, Settings};

/// GFLOP/s of independent fused multiply-add chains on every thread at once: the cores' peak
/// for the instruction set the kernels use (best of a few runs).
fn fma_peak_gflops(threads: usize) -> f64 {
    let isa = simd::isa();
    let iters = 20_000_000usize;

    (0..5)
        .map(|_| {
            let t = Instant::now();
            let flops: usize = (0..threads)
                .into_par_iter()
                .map(|i| peak_loop(isa, iters, i as f32))
                .sum();
            flops as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

/// Runs `iters` rounds of 12 independent FMA chains of full vectors (16 lanes with AVX-512, 8
/// with AVX2, 1 otherwise): (flops done). Written with intrinsics so that the chains certainly
/// stay in registers.
fn peak_loop(isa: simd::Isa, iters: usize, seed: f32) -> usize {
    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::*;
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512(iters: usize, seed: f32) -> f32 {
        let (a, b) = (
            _mm512_set1_ps(std::hint::black_box(0.999)),
            _mm512_set1_ps(std::hint::black_box(1e-3)),
        );
        let mut acc = [_mm512_set1_ps(seed); 12];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        acc.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2(iters: usize, seed: f32) -> f32 {
        let (a, b) = (
            _mm256_set1_ps(std::hint::black_box(0.999)),
            _mm256_set1_ps(std::hint::black_box(1e-3)),
        );
        let mut acc = [_mm256_set1_ps(seed); 12];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        let mut lanes = [0.0f32; 8];
        acc.iter()
            .map(|&v| {
                _mm256_storeu_ps(lanes.as_mut_ptr(), v);
                lanes.iter().sum::<f32>()
            })
            .sum()
    }
    fn scalar(iters: usize, seed: f32) -> f32 {
        let (a, b) = (std::hint::black_box(0.999f32), std::hint::black_box(1e-3f32));
        let mut acc = [seed; 12];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = v.mul_add(a, b);
            }
        }
        acc.iter().sum()
    }
    let (r, lanes) = match isa {
        // SAFETY: simd::isa() only returns what this CPU supports.
        #[cfg(target_arch = "x86_64")]
        simd::Isa::Avx512 => (unsafe { avx512(iters, seed) }, 16),
        #[cfg(target_arch = "x86_64")]
        simd::Isa::Avx2 => (unsafe { avx2(iters, seed) }, 8),
        _ => (scalar(iters / 16, seed), 1),
    };
    std::hint::black_box(r);
    let iters = if lanes == 1 { iters / 16 } else { iters };
    iters * 12 * lanes * 2
}

fn main() {
    // On a worker of rayon's pool, as the executor runs every op (`cpu::in_pool`).
    cephalo::backend::cpu::in_pool(run);
}

fn run() {
    let settings = Settings::from_env(5);
    let runs = settings.runs;
    let ops = env("CEPHALO_BENCH_OPS").unwrap_or_else(|| "fwd,dgrad,wgrad,winograd".into());
    let only = env("CEPHALO_BENCH_SHAPE");
    let threads = rayon::current_num_threads();
    let peak = fma_peak_gflops(threads);
    println!(
        "{}, {} kernels, {threads} threads: FMA peak {peak:.1} GFLOP/s",
        settings.describe(),
        simd::isa().name()
    );

    let cfg = settings.model_config();
    let graph = cfg.build().expect("model builds");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut random = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
    println!(
        "{:<34} {:>4} {:>9} {:>7} {:>9} {:>7} {:>9} {:>7} {:>9} {:>7}",
        "shape", "x", "fwd ms", "GF/s", "dgrad ms", "GF/s", "wgrad ms", "GF/s", "wino ms", "GF/s"
    );
    let mut totals = [0.0f64; 4];
    let mut total_flops = [0.0f64; 4];
    for s in conv_shapes(&graph) {
        let name = format!(
            "{}x{} s{} {}->{} out {}x{}",
            s.kh, s.kw, s.stride, s.c_in, s.c_out, s.out_h, s.out_w
        );
        if s.kind != ConvKind::Conv || only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        let xs = Shape4::new(s.n, s.h, s.w, s.c_in);
        let p = ConvParams {
            c_in: s.c_in,
            c_out: s.c_out,
            kh: s.kh,
            kw: s.kw,
            stride: s.stride,
            pad: s.pad,
        };
        let ys = p.out_shape(xs);
        let (x, wt, dy) = (random(xs.len()), random(p.weight_len()), random(ys.len()));
        let (mut y, mut dx, mut dw) = (vec![0.0; ys.len()], vec![0.0; xs.len()], vec![0.0; p.weight_len()]);
        let time = |f: &mut dyn FnMut()| time_ms(runs, f);
        let flops = 2.0 * s.macs as f64;
        let mut cols = Vec::new();
        for (i, op) in ["fwd", "dgrad", "wgrad", "winograd"].iter().enumerate() {
            let skip = (*op == "dgrad" && s.reads_input) || (*op == "winograd" && !conv::winograd_suits(&p));
            if !ops.split(',').any(|o| o == *op) || skip {
                cols.push(format!("{:>9} {:>7}", "-", "-"));
                continue;
            }
            let ms = match i {
                0 => time(&mut || conv::conv2d_fwd(&x, xs, &wt, &p, None, &mut y)),
                1 => time(&mut || conv::conv2d_dgrad(&dy, &wt, &p, &mut dx, xs, false)),
                2 => time(&mut || conv::conv2d_wgrad(&x, xs, &dy, &p, &mut dw)),
                _ => time(&mut || conv::conv2d_fwd_winograd(&x, xs, &wt, &p, &mut y)),
            };
            totals[i] += ms * s.count as f64;
            total_flops[i] += flops * s.count as f64;
            cols.push(format!("{ms:>9.3} {:>7.1}", flops / ms / 1e6));
        }
        println!("{name:<34} {:>4} {}", s.count, cols.join(" "));
    }
    let rate = |i: usize| total_flops[i] / totals[i].max(1e-9) / 1e6;
    println!(
        "all (weighted by count): fwd {:.1} ms {:.1} GF/s ({:.0}% of peak), dgrad {:.1} ms {:.1} GF/s, wgrad {:.1} ms \
         {:.1} GF/s, Winograd forward of the 3x3 stride-1 shapes {:.1} ms",
        totals[0],
        rate(0),
        100.0 * rate(0) / peak,
        totals[1],
        rate(1),
        totals[2],
        rate(2),
        totals[3]
    );
}
