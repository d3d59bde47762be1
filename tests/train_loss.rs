//! The heatmap losses' CPU twins against an independent f64 reference written from
//! docs/maths.md#adaptive-wing-loss,
//! against finite differences of themselves, and for thread-count determinism.
use cephalo::backend::cpu::loss::{awing_fwd_bwd, mse_fwd_bwd};
use cephalo::backend::{AWingParams, HeatmapBatch, HeatmapShape, LossWeighting, WeightMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SHAPE: HeatmapShape = HeatmapShape::new(2, 9, 11, 3);
const CHANNEL_WEIGHTS: [f32; 3] = [1.0, 2.5, 1.8];

/// The batch `pred` against `target` at [`SHAPE`].
fn heatmaps<'a>(pred: &'a [f32], target: &'a [f32]) -> HeatmapBatch<&'a [f32], &'a [f32]> {
    HeatmapBatch {
        pred,
        target,
        shape: SHAPE,
    }
}

/// [`CHANNEL_WEIGHTS`], with the weight map `map` or without one.
fn weighting(map: Option<WeightMap>) -> LossWeighting<&'static [f32]> {
    LossWeighting {
        channel_weights: &CHANNEL_WEIGHTS,
        weight_map: map,
    }
}

/// Gaussian targets (peak 1 at a random sub-pixel point per image and channel, sigma 1.5) and
/// predictions = target + uniform noise in [-0.7, 0.7], which visits both AWing branches.
fn batch(seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let s = SHAPE;
    let mut target = vec![0.0f32; s.len()];
    for n in 0..s.n {
        for c in 0..s.k {
            let cy = rng.random_range(1.0..s.h as f64 - 2.0);
            let cx = rng.random_range(1.0..s.w as f64 - 2.0);
            for y in 0..s.h {
                for x in 0..s.w {
                    let r2 = (y as f64 - cy).powi(2) + (x as f64 - cx).powi(2);
                    let g = (-r2 / (2.0 * 1.5f64.powi(2))).exp();
                    target[((n * s.h + y) * s.w + x) * s.k + c] = if g < 1e-3 { 0.0 } else { g as f32 };
                }
            }
        }
    }
    let pred = target.iter().map(|&t| t + rng.random_range(-0.7f32..0.7)).collect();
    (pred, target)
}

/// AWing in f64 straight from docs/maths.md#adaptive-wing-loss.
fn awing_f64(p: f64, y: f64) -> (f64, f64) {
    let (alpha, omega, eps, theta) = (2.1f64, 14.0f64, 1.0f64, 0.5f64);
    let d = (y - p).abs();
    let a = alpha - y;
    let s = if p >= y { 1.0 } else { -1.0 };
    let big_a = omega * (1.0 / (1.0 + (theta / eps).powf(a))) * a * (theta / eps).powf(a - 1.0) / eps;
    let big_c = theta * big_a - omega * (1.0 + (theta / eps).powf(a)).ln();
    if d < theta {
        let g = if d == 0.0 {
            0.0
        } else {
            s * omega * a * (d / eps).powf(a - 1.0) / (eps * (1.0 + (d / eps).powf(a)))
        };
        (omega * (1.0 + (d / eps).powf(a)).ln(), g)
    } else {
        (big_a * d - big_c, s * big_a)
    }
}

/// The weight-map mask by explicit grey dilation of each channel image (3x3, edge-clipped).
fn mask_f64(target: &[f32], threshold: f64) -> Vec<bool> {
    let s = SHAPE;
    let at = |n: usize, y: i64, x: i64, c: usize| {
        let y = y.clamp(0, s.h as i64 - 1) as usize; // scipy's reflect mode at a 3x3 window
        let x = x.clamp(0, s.w as i64 - 1) as usize;
        target[((n * s.h + y) * s.w + x) * s.k + c] as f64
    };
    let mut mask = vec![false; s.len()];
    for n in 0..s.n {
        for y in 0..s.h as i64 {
            for x in 0..s.w as i64 {
                for c in 0..s.k {
                    let mut m = f64::MIN;
                    for dy in -1..=1 {
                        for dx in -1..=1 {
                            m = m.max(at(n, y + dy, x + dx, c));
                        }
                    }
                    mask[((n * s.h + y as usize) * s.w + x as usize) * s.k + c] = m > threshold;
                }
            }
        }
    }
    mask
}

/// Reference weighted mean loss and gradient (unscaled), all in f64.
fn reference(pred: &[f32], target: &[f32], map: bool, pixel: fn(f64, f64) -> (f64, f64)) -> (f64, Vec<f64>) {
    let mask = mask_f64(target, 0.2);
    let count = SHAPE.len() as f64;
    let mut loss = 0.0;
    let mut grad = vec![0.0; SHAPE.len()];
    for i in 0..SHAPE.len() {
        let weight = CHANNEL_WEIGHTS[i % SHAPE.k] as f64 * if map && mask[i] { 11.0 } else { 1.0 };
        let (l, g) = pixel(pred[i] as f64, target[i] as f64);
        loss += weight * l;
        grad[i] = weight * g / count;
    }
    (loss / count, grad)
}

fn assert_matches_reference(loss: f64, grad: &[f32], (ref_loss, ref_grad): (f64, Vec<f64>), grad_scale: f64) {
    assert!(
        (loss - ref_loss).abs() <= 1e-6 * ref_loss,
        "loss {loss} vs reference {ref_loss}"
    );
    let gmax = ref_grad.iter().fold(0.0f64, |m, g| m.max(g.abs()));
    for (i, (&g, &r)) in grad.iter().zip(&ref_grad).enumerate() {
        let g = g as f64 / grad_scale;
        assert!(
            (g - r).abs() <= 1e-5 * r.abs() + 1e-7 * gmax,
            "grad[{i}] {g} vs reference {r}"
        );
    }
}

#[test]
fn awing_matches_f64_reference_with_and_without_weight_map() {
    let (pred, target) = batch(1);
    let mask = mask_f64(&target, 0.2);
    let on = mask.iter().filter(|&&m| m).count();
    assert!(
        on > 20 && on < SHAPE.len() / 2,
        "the weight map must cover some but not most pixels: {on}"
    );
    let mut grad = vec![f32::NAN; SHAPE.len()];
    for (map, scale) in [(None, 1.0f32), (Some(WeightMap::default()), 1024.0)] {
        let loss = awing_fwd_bwd(
            heatmaps(&pred, &target),
            weighting(map),
            AWingParams::default(),
            scale,
            &mut grad,
        );
        let reference = reference(&pred, &target, map.is_some(), awing_f64);
        assert_matches_reference(loss, &grad, reference, scale as f64);
    }
}

#[test]
fn mse_matches_f64_reference_with_and_without_weight_map() {
    let (pred, target) = batch(2);
    let mut grad = vec![f32::NAN; SHAPE.len()];
    for (map, scale) in [(None, 1.0f32), (Some(WeightMap::default()), 65536.0)] {
        let loss = mse_fwd_bwd(heatmaps(&pred, &target), weighting(map), scale, &mut grad);
        let reference = reference(&pred, &target, map.is_some(), |p, y| ((p - y).powi(2), 2.0 * (p - y)));
        assert_matches_reference(loss, &grad, reference, scale as f64);
    }
}

#[test]
fn loss_scale_multiplies_the_gradient_exactly() {
    let (pred, target) = batch(3);
    let map = Some(WeightMap::default());
    let (mut g1, mut g2) = (vec![0.0; SHAPE.len()], vec![0.0; SHAPE.len()]);
    let awing = |scale: f32, grad: &mut [f32]| {
        awing_fwd_bwd(
            heatmaps(&pred, &target),
            weighting(map),
            AWingParams::default(),
            scale,
            grad,
        )
    };
    let l1 = awing(1.0, &mut g1);
    let l2 = awing(65536.0, &mut g2);
    assert_eq!(l1, l2, "the scale touches the gradient only");
    assert!(g1.iter().zip(&g2).all(|(a, b)| a * 65536.0 == *b));
}

/// Central differences of the full weighted loss at elements away from the kinks (d = 0 and
/// d = theta), compared with the analytic gradient.
fn finite_difference_check(
    loss_fn: impl Fn(&[f32], &mut [f32]) -> f64,
    pred: &[f32],
    target: &[f32],
    skip_near_theta: bool,
) {
    let mut grad = vec![0.0f32; pred.len()];
    loss_fn(pred, &mut grad);
    let mut scratch = vec![0.0f32; pred.len()];
    let mut checked = 0;
    for i in (0..pred.len()).step_by(7) {
        let d = (pred[i] - target[i]).abs();
        if d < 0.02 || (skip_near_theta && (d - 0.5).abs() < 0.01) {
            continue;
        }
        let h = 1e-3f32;
        let mut p = pred.to_vec();
        p[i] = pred[i] + h;
        let (up, plus) = (p[i], loss_fn(&p, &mut scratch));
        p[i] = pred[i] - h;
        let (down, minus) = (p[i], loss_fn(&p, &mut scratch));
        let fd = (plus - minus) / (up - down) as f64;
        let g = grad[i] as f64;
        assert!(
            (fd - g).abs() <= 2e-3 * g.abs() + 1e-6,
            "element {i}: analytic {g}, finite difference {fd}"
        );
        checked += 1;
    }
    assert!(checked > 40, "too few elements checked: {checked}");
}

#[test]
fn awing_gradient_matches_finite_differences() {
    let (pred, target) = batch(4);
    let map = Some(WeightMap::default());
    let f =
        |p: &[f32], g: &mut [f32]| awing_fwd_bwd(heatmaps(p, &target), weighting(map), AWingParams::default(), 1.0, g);
    finite_difference_check(f, &pred, &target, true);
}

#[test]
fn mse_gradient_matches_finite_differences() {
    let (pred, target) = batch(5);
    let map = Some(WeightMap::default());
    let f = |p: &[f32], g: &mut [f32]| mse_fwd_bwd(heatmaps(p, &target), weighting(map), 1.0, g);
    finite_difference_check(f, &pred, &target, false);
}

#[test]
fn value_and_gradient_do_not_depend_on_thread_count() {
    let (pred, target) = batch(6);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut grad = vec![0.0f32; SHAPE.len()];
            let map = Some(WeightMap::default());
            let loss = awing_fwd_bwd(
                heatmaps(&pred, &target),
                weighting(map),
                AWingParams::default(),
                8.0,
                &mut grad,
            );
            (loss.to_bits(), grad.iter().map(|g| g.to_bits()).collect::<Vec<_>>())
        })
    };
    assert_eq!(run(1), run(4));
}
