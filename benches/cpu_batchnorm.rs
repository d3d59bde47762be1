//! The CPU batch-norm ops of a training step, shape by shape, against the machine's measured
//! memory bandwidth: they do a few flops per value, so bytes moved over time is their measure.
//!
//! Every convolution output of the network is a batch norm's input (the head's last convolution
//! aside); each distinct output shape is timed once per op, median of a few runs, and weighted by
//! how many convolutions have it. Bytes count each array read or written once per pass over it
//! (the statistics read `x` twice: two passes).
//!
//! Run: `cargo bench --bench cpu_batchnorm` (env: `CEPHALO_BENCH_MODEL` [hrnet-w8],
//! `CEPHALO_BENCH_SIZE` [`256x224`], `CEPHALO_BENCH_BATCH` [4], `CEPHALO_BENCH_RUNS` [7]).
#[path = "cpu_support/mod.rs"]
mod cpu_support;

use std::collections::BTreeMap;

use cephalo::backend::cpu::batchnorm as bn;
use cephalo::backend::{AddReluJoin, BnGrads, BnParams, BnRunning, BnWeights, GradOut, Shape4};
use cephalo::model::conv_shapes::conv_shapes;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use cpu_support::{time_ms, Settings};

/// GB/s of a parallel copy of `len` floats (read + write counted): the bandwidth of whatever
/// level of the memory hierarchy that size lives in.
fn copy_gbs(len: usize, runs: usize) -> f64 {
    let src = vec![1.0f32; len];
    let mut dst = vec![0.0f32; len];
    let ms = time_ms(runs, &mut || {
        dst.par_chunks_mut(16 * 1024)
            .zip(src.par_chunks(16 * 1024))
            .for_each(|(d, s)| d.copy_from_slice(s));
        std::hint::black_box(&dst);
    });
    (8 * len) as f64 / ms / 1e6
}

fn main() {
    // On a worker of rayon's pool, as the executor runs every op (`cpu::in_pool`).
    cephalo::backend::cpu::in_pool(run);
}

fn run() {
    let settings = Settings::from_env(7);
    let runs = settings.runs;
    let threads = rayon::current_num_threads();
    println!(
        "{}, {threads} threads: parallel copy 1 MiB {:.0} GB/s, 64 MiB {:.0} GB/s",
        settings.describe(),
        copy_gbs(256 * 1024, 51),
        copy_gbs(16 * 1024 * 1024, 9)
    );

    // Distinct batch-norm input shapes (the convolutions' outputs) and how many there are.
    let cfg = settings.model_config();
    let graph = cfg.build().expect("model builds");
    let mut shapes: BTreeMap<(usize, usize, usize, usize), usize> = BTreeMap::new();
    for s in conv_shapes(&graph) {
        *shapes.entry((s.n, s.out_h, s.out_w, s.c_out)).or_default() += s.count;
    }

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut random = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
    let ops = ["stats", "apply", "bwd", "join", "join_bwd"];
    // Arrays moved per element by each op: stats reads x twice; apply reads x, writes y; bwd
    // reads dy and x twice and writes dx; the join reads x and the residual and writes y; its
    // backward reads dy, x and y twice, writes dx and the residual's gradient.
    let arrays = [2.0, 2.0, 5.0, 3.0, 8.0];
    println!(
        "{:<22} {:>4} {}",
        "shape (NHWC)",
        "x",
        ops.iter()
            .map(|o| format!("{:>9} {:>5}", format!("{o} ms"), "GB/s"))
            .collect::<String>()
    );
    let mut total = [0.0f64; 5];
    for (&(n, oh, ow, c), &count) in &shapes {
        let xs = Shape4::new(n, oh, ow, c);
        let len = xs.len();
        let (x, dy, r) = (random(len), random(len), random(len));
        let (gamma, beta) = (random(c), random(c));
        let (mut y, mut dx, mut dres) = (vec![0.0; len], vec![0.0; len], vec![0.0; len]);
        let (mut saved, mut rm, mut rv) = (vec![0.0; 2 * c], vec![0.0; c], vec![1.0; c]);
        let (mut dg, mut db) = (vec![0.0; c], vec![0.0; c]);
        let bp = BnParams::default();
        let weights = BnWeights::new(gamma.as_slice(), beta.as_slice(), bp);
        fn running<'a>(mean: &'a mut [f32], var: &'a mut [f32]) -> BnRunning<&'a mut [f32]> {
            BnRunning::new(mean, var)
        }
        fn out(data: &mut [f32]) -> GradOut<&mut [f32]> {
            GradOut::new(data, false)
        }
        fn grads<'a>(dgamma: &'a mut [f32], dbeta: &'a mut [f32]) -> BnGrads<&'a mut [f32]> {
            BnGrads::new(dgamma, dbeta)
        }
        bn::bn_batch_stats(&x, xs, bp, &mut saved, running(&mut rm, &mut rv));
        let mut cols = String::new();
        for (i, op) in ops.iter().enumerate() {
            let ms = match *op {
                "stats" => time_ms(runs, &mut || {
                    bn::bn_batch_stats(&x, xs, bp, &mut saved, running(&mut rm, &mut rv))
                }),
                "apply" => time_ms(runs, &mut || bn::bn_apply_saved(&x, xs, weights, &saved, true, &mut y)),
                "bwd" => time_ms(runs, &mut || {
                    let fwd = bn::BnForward {
                        x: &x,
                        xs,
                        bn: weights,
                        saved: &saved,
                    };
                    bn::bn_bwd(&dy, fwd, true, out(&mut dx), grads(&mut dg, &mut db))
                }),
                "join" => time_ms(runs, &mut || {
                    bn::bn_add_relu_apply_saved(&x, xs, weights, &saved, &r, &mut y)
                }),
                _ => {
                    bn::bn_add_relu_apply_saved(&x, xs, weights, &saved, &r, &mut y);
                    time_ms(runs, &mut || {
                        let fwd = bn::BnForward {
                            x: &x,
                            xs,
                            bn: weights,
                            saved: &saved,
                        };
                        let join = AddReluJoin {
                            y: y.as_slice(),
                            d_residual: Some(out(&mut dres)),
                        };
                        bn::bn_add_relu_bwd(&dy, fwd, join, out(&mut dx), grads(&mut dg, &mut db))
                    })
                }
            };
            total[i] += ms * count as f64;
            cols += &format!("{ms:>9.3} {:>5.0}", arrays[i] * 4.0 * len as f64 / ms / 1e6);
        }
        println!("{:<22} {count:>4} {cols}", format!("{n}x{oh}x{ow}x{c}"));
    }
    println!(
        "all (weighted by count), ms: {}",
        ops.iter()
            .zip(total)
            .map(|(o, t)| format!("{o} {t:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
