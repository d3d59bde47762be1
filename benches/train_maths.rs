//! CPU throughput of the training maths at the users' sizes: the losses on a 768x768 batch of 4
//! (29 heatmaps of 192x192) and the optimizer on HRNet-W18's ~9.6 M parameters.
//! Run: `cargo bench --bench train_maths`. Prints the median of 7 timed runs after 2 warm-ups.
use std::time::Instant;

use cephalo::backend::cpu::loss::{awing_fwd_bwd, mse_fwd_bwd};
use cephalo::backend::cpu::optim::{adamw_step, unscale_and_check};
use cephalo::backend::{AWingParams, HeatmapBatch, HeatmapShape, LossWeighting, WeightMap};
use cephalo::backend::{AdamWParams, AdamWState};
use half::f16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn median_ms(mut run: impl FnMut()) -> f64 {
    for _ in 0..2 {
        run();
    }
    let mut times: Vec<f64> = (0..7)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[3]
}

fn report(name: &str, elements: usize, bytes_per_element: usize, ms: f64) {
    let per_s = elements as f64 / (ms * 1e-3);
    let gb_s = per_s * bytes_per_element as f64 / 1e9;
    println!(
        "{name:<34} {elements:>9} elements  {ms:>8.2} ms  {:>7.1} M elem/s  {gb_s:>5.2} GB/s",
        per_s / 1e6
    );
}

fn main() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let shape = HeatmapShape::new(4, 192, 192, 29);
    let n = shape.len();
    let target: Vec<f32> = (0..n)
        .map(|_| if rng.random_bool(0.02) { rng.random() } else { 0.0 })
        .collect();
    let pred: Vec<f32> = target.iter().map(|t| t + rng.random_range(-0.1f32..0.1)).collect();
    let weights = [1.0f32; 29];
    let mut grad = vec![0.0f32; n];
    println!("threads: {}", rayon::current_num_threads());
    let batch = HeatmapBatch {
        pred: &pred[..],
        target: &target[..],
        shape,
    };
    let weighting = |weight_map| LossWeighting {
        channel_weights: &weights[..],
        weight_map,
    };
    // pred + target read, grad written: 12 bytes per element (the 3x3 window hits the cache).
    for (name, map) in [
        ("awing_fwd_bwd (weight map)", Some(WeightMap::default())),
        ("awing_fwd_bwd (no map)", None),
    ] {
        let ms = median_ms(|| {
            awing_fwd_bwd(batch, weighting(map), AWingParams::default(), 65536.0, &mut grad);
        });
        report(name, n, 12, ms);
    }
    let ms = median_ms(|| {
        mse_fwd_bwd(batch, weighting(None), 65536.0, &mut grad);
    });
    report("mse_fwd_bwd (no map)", n, 12, ms);

    let p = 9_600_000;
    let mut g32: Vec<f32> = (0..p).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let ms = median_ms(|| {
        unscale_and_check(&mut g32, 1.0);
    });
    report("unscale_and_check", p, 8, ms);
    let mut w: Vec<f32> = (0..p).map(|_| rng.random_range(-0.1f32..0.1)).collect();
    let (mut m, mut v) = (vec![0.0f32; p], vec![0.0f32; p]);
    let mut half = vec![f16::ZERO; p];
    let hp = AdamWParams::default();
    let mut t = 0;
    let ms = median_ms(|| {
        t += 1;
        adamw_step(
            AdamWState::new(&mut w, &mut m, &mut v, Some(&mut half)),
            &g32,
            &hp,
            t,
            true,
            1.0,
        );
    });
    // master, m, v read and written, grad read, fp16 copy written.
    report("adamw_step (+fp16 copy)", p, 30, ms);
}
