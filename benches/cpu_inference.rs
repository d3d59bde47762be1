//! CPU inference speed of HRNet-W32 at 768x768, batch 1, against the measured sgemm peak of
//! this machine's cores. Run: `cargo bench --bench cpu_inference` (env: `CEPHALO_BENCH_RUNS`,
//! `CEPHALO_BENCH_MODEL`, `CEPHALO_BENCH_SIZE`).
use std::time::Instant;

use cephalo::backend::CpuBackend;
use cephalo::graph::exec::Executor;
use cephalo::graph::plan::{DtypeSizes, Mode, PlanOptions};
use cephalo::model::ModelConfig;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// GFLOP/s of one `n x n x n` sgemm per thread, every rayon thread at once: the best of a few
/// runs, since the peak is what the cores can do when nothing else disturbs them.
fn sgemm_gflops(n: usize, threads: usize) -> f64 {
    let a = vec![1.0f32; n * n];
    let b = vec![0.5f32; n * n];
    let reps = 5;
    let times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            (0..threads).into_par_iter().for_each(|_| {
                let mut c = vec![0.0f32; n * n];
                // SAFETY: all three matrices are n x n, row-major, and distinct.
                unsafe {
                    matrixmultiply::sgemm(
                        n,
                        n,
                        n,
                        1.0,
                        a.as_ptr(),
                        n as isize,
                        1,
                        b.as_ptr(),
                        n as isize,
                        1,
                        0.0,
                        c.as_mut_ptr(),
                        n as isize,
                        1,
                    );
                }
                std::hint::black_box(&c);
            });
            t.elapsed().as_secs_f64()
        })
        .collect();
    let best = times.iter().copied().fold(f64::INFINITY, f64::min);
    2.0 * (n * n * n * threads) as f64 / best / 1e9
}

fn main() {
    let env = |k: &str| std::env::var(k).ok();
    let runs: usize = env("CEPHALO_BENCH_RUNS").and_then(|s| s.parse().ok()).unwrap_or(3);
    let model = env("CEPHALO_BENCH_MODEL").unwrap_or_else(|| "hrnet-w32".into());
    let size: usize = env("CEPHALO_BENCH_SIZE").and_then(|s| s.parse().ok()).unwrap_or(768);
    let threads = rayon::current_num_threads();

    let one = sgemm_gflops(1024, 1);
    let all = sgemm_gflops(1024, threads);
    println!("sgemm 1024^3 (matrixmultiply): {one:.1} GFLOP/s on 1 core, {all:.1} GFLOP/s on {threads} threads");

    let cfg = ModelConfig::new(&model, 1, 29, [size, size], 1).expect("valid benchmark config");
    let graph = cfg.build().expect("model builds");
    let macs = graph.macs();
    let mut ex = Executor::new(
        graph,
        PlanOptions::new(Mode::Eval, DtypeSizes::F32),
        CpuBackend::new(),
        0,
    );
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let input: Vec<f32> = (0..cfg.input_shape().len())
        .map(|_| rng.random_range(0.0..1.0))
        .collect();
    let _ = ex.predict(&input); // warm-up: page in the arena and the weights
    let times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(ex.predict(&input));
            t.elapsed().as_secs_f64()
        })
        .collect();
    let t = median(times.clone());
    let gflops = 2.0 * macs as f64 / t / 1e9;
    println!(
        "{model} {size}x{size} batch 1 inference: median {t:.3} s/image over {runs} runs {times:.3?}; \
         {:.1} GMAC -> {gflops:.1} GFLOP/s = {:.0}% of the measured {threads}-thread sgemm peak",
        macs as f64 / 1e9,
        100.0 * gflops / all
    );

    // Where the time goes: one timed forward, grouped by op kind and by convolution geometry.
    let per_node = ex.forward_timed();
    let graph = ex.graph();
    let mut by_kind: std::collections::BTreeMap<String, (f64, u64)> = Default::default();
    let mut by_conv: std::collections::BTreeMap<String, (f64, u64, usize)> = Default::default();
    for (i, node) in graph.nodes.iter().enumerate() {
        let e = by_kind.entry(node.op.kind().to_string()).or_default();
        e.0 += per_node[i];
        e.1 += graph.node_macs(i);
        if let cephalo::graph::Op::Conv { p, .. } | cephalo::graph::Op::ConvBnEval { p, .. } = &node.op {
            let key = format!(
                "conv{}x{} s{} {}->{} out {}x{}",
                p.kh, p.kw, p.stride, p.c_in, p.c_out, node.shape.h, node.shape.w
            );
            let e = by_conv.entry(key).or_default();
            e.0 += per_node[i];
            e.1 += graph.node_macs(i);
            e.2 += 1;
        }
    }
    let total: f64 = per_node.iter().sum();
    println!("timed forward {total:.3} s; by op:");
    let mut kinds: Vec<_> = by_kind.into_iter().collect();
    kinds.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    for (k, (t, macs)) in kinds {
        let rate = if macs > 0 {
            format!(" {:.1} GFLOP/s", 2.0 * macs as f64 / t / 1e9)
        } else {
            String::new()
        };
        println!("  {k:<18} {t:>7.3} s {:>5.1}%{rate}", 100.0 * t / total);
    }
    println!("slowest convolution shapes:");
    let mut convs: Vec<_> = by_conv.into_iter().collect();
    convs.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    for (k, (t, macs, n)) in convs.into_iter().take(12) {
        println!(
            "  {k:<36} x{n:<3} {t:>7.3} s {:>6.1} GFLOP/s",
            2.0 * macs as f64 / t / 1e9
        );
    }
}
