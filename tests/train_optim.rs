//! The optimizer twins against an f64 AdamW written from docs/maths.md#adamw, and one whole
//! mixed-precision step loop: scaled loss gradient → fp16 → unscale + check → loss scaler → AdamW
//! writing the fp16 weight copy the next forward reads.
use cephalo::backend::cpu::loss::awing_fwd_bwd;
use cephalo::backend::cpu::optim::{adamw_step, unscale_and_check};
use cephalo::backend::{AWingParams, HeatmapBatch, HeatmapShape, LossWeighting, WeightMap};
use cephalo::backend::{AdamWParams, AdamWState};
use cephalo::train::loss_scaler::{DynamicLossScaler, StepOutcome};
use half::f16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

#[test]
fn adamw_matches_f64_reference_over_several_steps() {
    let n = 40_000; // several parallel chunks
    let hp = AdamWParams {
        lr: 1e-2,
        weight_decay: 0.05,
        ..AdamWParams::default()
    };
    for decay in [true, false] {
        let mut w = random(n, 1, 1.0);
        let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
        let mut half = vec![f16::NAN; n];
        let mut w64: Vec<f64> = w.iter().map(|&x| x as f64).collect();
        let (mut m64, mut v64) = (vec![0.0f64; n], vec![0.0f64; n]);
        let (b1, b2, eps, lr) = (hp.beta1 as f64, hp.beta2 as f64, hp.eps as f64, hp.lr as f64);
        let wd = if decay { hp.weight_decay as f64 } else { 0.0 };
        for t in 1..=5u64 {
            let g = random(n, 10 + t, 0.1);
            adamw_step(
                AdamWState::new(&mut w, &mut m, &mut v, Some(&mut half)),
                &g,
                &hp,
                t,
                decay,
                0.5,
            );
            for i in 0..n {
                let g = g[i] as f64 * 0.5;
                m64[i] = b1 * m64[i] + (1.0 - b1) * g;
                v64[i] = b2 * v64[i] + (1.0 - b2) * g * g;
                let m_hat = m64[i] / (1.0 - b1.powi(t as i32));
                let v_hat = v64[i] / (1.0 - b2.powi(t as i32));
                w64[i] -= lr * (m_hat / (v_hat.sqrt() + eps) + wd * w64[i]);
            }
        }
        for i in 0..n {
            assert!(
                (w[i] as f64 - w64[i]).abs() <= 1e-6 + 1e-5 * w64[i].abs(),
                "w[{i}] {} vs {}",
                w[i],
                w64[i]
            );
            assert!((m[i] as f64 - m64[i]).abs() <= 1e-5 * m64[i].abs() + 1e-9);
            assert_eq!(
                half[i],
                f16::from_f32(w[i]),
                "the fp16 copy is the rounded master weight"
            );
        }
    }
}

#[test]
fn weight_decay_only_where_asked() {
    // Zero gradients leave only the decoupled decay: w *= 1 - lr*wd, or nothing at all.
    let hp = AdamWParams::default();
    let w0 = random(1000, 2, 1.0);
    let zeros = vec![0.0f32; w0.len()];
    for decay in [true, false] {
        let mut w = w0.clone();
        let (mut m, mut v) = (zeros.clone(), zeros.clone());
        adamw_step(
            AdamWState::new(&mut w, &mut m, &mut v, None),
            &zeros,
            &hp,
            1,
            decay,
            1.0,
        );
        for (a, b) in w.iter().zip(&w0) {
            let want = if decay { b - hp.lr * (hp.weight_decay * b) } else { *b };
            assert!((a - want).abs() <= 1e-7 * b.abs(), "{a} vs {want}");
        }
    }
}

/// A "network" whose output is its parameters, trained towards Gaussian heatmaps exactly as the
/// GPU trainer will: forward reads the fp16 weight copy, the loss gradient is scaled before its
/// fp16 cast, then unscaled and checked in fp32, and AdamW updates the fp32 master weights.
#[test]
fn mixed_precision_steps_lower_the_loss_and_skip_overflows() {
    let shape = HeatmapShape::new(1, 8, 8, 2);
    let mut target = vec![0.0f32; shape.len()];
    for y in 0..8 {
        for x in 0..8 {
            for c in 0..2 {
                let (cy, cx) = (2.3 + 3.0 * c as f32, 4.6 - 1.5 * c as f32);
                let r2 = (y as f32 - cy).powi(2) + (x as f32 - cx).powi(2);
                target[(y * 8 + x) * 2 + c] = (-r2 / 8.0).exp();
            }
        }
    }
    let mut master = random(shape.len(), 4, 0.05);
    let mut half: Vec<f16> = master.iter().map(|&w| f16::from_f32(w)).collect();
    let (mut m, mut v) = (vec![0.0f32; shape.len()], vec![0.0f32; shape.len()]);
    let hp = AdamWParams {
        lr: 2e-2,
        weight_decay: 0.0,
        ..AdamWParams::default()
    };
    let mut scaler = DynamicLossScaler::new(65536.0, 10, 1.0);
    let mut t = 0u64;
    let mut losses = Vec::new();
    let mut skipped = 0;
    let mut grad32 = vec![0.0f32; shape.len()];
    let mut unscaled = vec![0.0f32; shape.len()];
    for step in 0..150 {
        let pred: Vec<f32> = half.iter().map(|h| h.to_f32()).collect();
        let loss = awing_fwd_bwd(
            HeatmapBatch {
                pred: &pred,
                target: &target,
                shape,
            },
            LossWeighting {
                channel_weights: &[1.0, 2.5],
                weight_map: Some(WeightMap::default()),
            },
            AWingParams::default(),
            scaler.scale(),
            &mut grad32,
        );
        losses.push(loss);
        // The backward pass's gradients are fp16; the optimizer unscales them in f32.
        unscaled
            .iter_mut()
            .zip(&grad32)
            .for_each(|(u, &g)| *u = f16::from_f32(g).to_f32());
        let finite = unscale_and_check(&mut unscaled, scaler.inv_scale());
        match scaler.update(finite).unwrap() {
            StepOutcome::Apply { .. } => {
                t += 1;
                adamw_step(
                    AdamWState::new(&mut master, &mut m, &mut v, Some(&mut half)),
                    &unscaled,
                    &hp,
                    t,
                    true,
                    1.0,
                );
            }
            StepOutcome::Skip { old_scale, new_scale } => {
                assert_eq!(new_scale, old_scale / 2.0);
                skipped += 1;
            }
        }
        if step == 0 {
            // Near the peaks the gradient is about A * 2.5 * 11 / 128 ≈ 2: scaled by 2^16 it
            // overflows fp16, so the first steps are skipped until the scale fits.
            assert!(!finite);
        }
    }
    assert!(skipped >= 1, "the initial scale must overflow at least once");
    assert!(skipped < 20, "and the scaler must recover: {skipped} skips");
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(last < 0.1 * first, "loss {first} -> {last}");
}
