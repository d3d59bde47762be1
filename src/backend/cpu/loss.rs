//! CPU twins of `kernels/loss.cu`: heatmap losses that return the loss value and write the
//! gradient in one pass.
//!
//! Layout is NHWC with the landmark channel last (`K`), as on the GPU. The loss is the mean over
//! all `N*K*H*W` elements of `channel_weight[k] * (W*M + 1) * l(p, y)`, where `M` is the optional
//! Adaptive Wing weight map (docs/maths.md#weight-map). The gradient written is `d loss / d pred`
//! times `grad_scale`: on the GPU it is cast to fp16 right after, and per-element gradients of a
//! mean over millions of elements sit below fp16's normal range unless they are scaled first.
//!
//! Summation is deterministic: every image row is summed sequentially in f64, and the row sums are
//! added in row order, so the value does not depend on the number of threads.
use rayon::prelude::*;

use crate::backend::{AWingParams, HeatmapBatch, HeatmapShape, LossWeighting, WeightMap};

/// Per-pixel weight `W*M + 1` at (image `n`, row `y`, column `x`, channel `c`): `M` is 1 when the
/// maximum of the target over the 3x3 neighbourhood inside the heatmap exceeds the threshold.
/// (Clipping the window at the border equals scipy's `grey_dilation` with its default reflect
/// mode, whose out-of-range neighbour of an edge pixel is the pixel itself.)
fn map_weight(target: &[f32], s: HeatmapShape, map: WeightMap, (n, y, x, c): (usize, usize, usize, usize)) -> f32 {
    let mut max = f32::NEG_INFINITY;
    for yy in y.saturating_sub(1)..=(y + 1).min(s.h - 1) {
        for xx in x.saturating_sub(1)..=(x + 1).min(s.w - 1) {
            max = max.max(target[((n * s.h + yy) * s.w + xx) * s.k + c]);
        }
    }
    if max > map.threshold {
        map.w + 1.0
    } else {
        1.0
    }
}

/// Shared body of both losses: `pixel(p, y) -> (loss, dloss/dp)` evaluated on every element.
fn weighted_mean_fwd_bwd(
    batch: HeatmapBatch<&[f32], &[f32]>,
    weighting: LossWeighting<&[f32]>,
    grad_scale: f32,
    grad: &mut [f32],
    pixel: impl Fn(f32, f32) -> (f32, f32) + Sync,
) -> f64 {
    let HeatmapBatch { pred, target, shape } = batch;
    let LossWeighting {
        channel_weights,
        weight_map,
    } = weighting;
    let len = shape.len();
    assert_eq!(
        pred.len(),
        len,
        "loss: pred has {} elements, shape {shape:?}",
        pred.len()
    );
    assert_eq!(
        target.len(),
        len,
        "loss: target has {} elements, shape {shape:?}",
        target.len()
    );
    assert_eq!(
        grad.len(),
        len,
        "loss: grad has {} elements, shape {shape:?}",
        grad.len()
    );
    assert_eq!(
        channel_weights.len(),
        shape.k,
        "loss: need one weight per landmark channel"
    );
    if len == 0 {
        return 0.0;
    }
    // The kernel computes this factor the same way: in f64, then rounded once to f32.
    let grad_mul = (grad_scale as f64 / len as f64) as f32;
    let row_len = shape.w * shape.k;
    let row_sums: Vec<f64> = grad
        .par_chunks_mut(row_len)
        .enumerate()
        .map(|(row, grad_row)| {
            let (n, y) = (row / shape.h, row % shape.h);
            let base = row * row_len;
            let mut sum = 0.0f64;
            for (i, g) in grad_row.iter_mut().enumerate() {
                let (x, c) = (i / shape.k, i % shape.k);
                let (l, dl) = pixel(pred[base + i], target[base + i]);
                let map_w = weight_map.map_or(1.0, |m| map_weight(target, shape, m, (n, y, x, c)));
                let weight = channel_weights[c] * map_w;
                sum += (weight * l) as f64;
                *g = dl * weight * grad_mul;
            }
            sum
        })
        .collect();
    row_sums.iter().sum::<f64>() / len as f64
}

/// Adaptive Wing loss (docs/maths.md#adaptive-wing-loss) of `batch`, weighted per landmark
/// channel and optionally by the weight map (`weighting`); returns the mean loss and writes
/// `grad = d loss / d pred * grad_scale`.
pub fn awing_fwd_bwd(
    batch: HeatmapBatch<&[f32], &[f32]>,
    weighting: LossWeighting<&[f32]>,
    params: AWingParams,
    grad_scale: f32,
    grad: &mut [f32],
) -> f64 {
    weighted_mean_fwd_bwd(batch, weighting, grad_scale, grad, |p, y| params.loss_and_grad(p, y))
}

/// Heatmap mean squared error ("heatmap" in the users' scripts), with the same weighting and
/// gradient convention as [`awing_fwd_bwd`].
pub fn mse_fwd_bwd(
    batch: HeatmapBatch<&[f32], &[f32]>,
    weighting: LossWeighting<&[f32]>,
    grad_scale: f32,
    grad: &mut [f32],
) -> f64 {
    weighted_mean_fwd_bwd(batch, weighting, grad_scale, grad, |p, y| {
        let d = p - y;
        (d * d, 2.0 * d)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of docs/maths.md#adaptive-wing-loss have 6 decimals; f32 evaluation (and 0.9999
    /// not being representable in f32, which moves d = 1 - p by 1.7e-4 relative) stays within this.
    fn close(got: f32, want: f64) -> bool {
        (got as f64 - want).abs() <= 1e-6 + 3e-5 * want.abs()
    }

    #[test]
    fn awing_matches_reference_vectors() {
        let p = AWingParams::default();
        let vectors = [
            (0.1, 0.0, 0.110767, 2.316921),
            (0.6, 0.0, 4.047377, 11.121422),
            (0.9, 1.0, 1.070100, -11.332484),
            (0.3, 1.0, 7.320028, -9.797850),
            (0.9999, 1.0, 0.000557, -6.130597),
            (0.45, 0.3, 0.452948, 5.348385),
            (0.2, 0.7, 4.498301, -10.772143),
        ];
        for (pred, y, loss, grad) in vectors {
            let (l, g) = p.loss_and_grad(pred, y);
            assert!(close(l, loss), "loss({pred}, {y}) = {l}, want {loss}");
            assert!(close(g, grad), "grad({pred}, {y}) = {g}, want {grad}");
        }
    }

    #[test]
    fn awing_linear_coefficients_match_reference() {
        let p = AWingParams::default();
        let table = [
            (0.0, 11.121422, 2.625476),
            (0.2, 11.242290, 2.297598),
            (0.5, 11.112673, 1.565127),
            (1.0, 9.797850, -0.461533),
        ];
        for (y, a, c) in table {
            let (got_a, got_c) = p.linear_coeffs(y);
            assert!(close(got_a, a), "A({y}) = {got_a}, want {a}");
            assert!(close(got_c, c), "C({y}) = {got_c}, want {c}");
        }
    }

    #[test]
    fn awing_is_zero_with_zero_gradient_on_target() {
        let p = AWingParams::default();
        for y in [0.0, 0.3, 1.0] {
            assert_eq!(p.loss_and_grad(y, y), (0.0, 0.0));
        }
    }

    #[test]
    fn awing_loss_and_gradient_are_continuous_at_theta() {
        // The widely copied port that divides by omega instead of eps jumps here by more than 1.
        for params in [
            AWingParams::default(),
            AWingParams {
                eps: 2.0,
                theta: 0.4,
                ..AWingParams::default()
            },
        ] {
            for y in [0.0f32, 0.2, 0.5, 0.8, 1.0] {
                let delta = 1e-3f32;
                let below = params.loss_and_grad(y + params.theta - delta, y);
                let above = params.loss_and_grad(y + params.theta + delta, y);
                // Across 2*delta the loss can move by at most about slope * 2 * delta.
                let slope = params.linear_coeffs(y).0;
                assert!(
                    (above.0 - below.0).abs() <= 2.0 * delta * slope * 1.05,
                    "loss jumps at theta for y = {y}: {below:?} -> {above:?}"
                );
                assert!(
                    (above.1 - below.1).abs() <= 2e-2 * slope,
                    "gradient jumps at theta for y = {y}: {below:?} -> {above:?}"
                );
            }
        }
    }

    #[test]
    fn mse_value_and_gradient_by_hand() {
        let shape = HeatmapShape { n: 1, h: 1, w: 2, k: 1 };
        let mut grad = [0.0f32; 2];
        let loss = mse_fwd_bwd(
            HeatmapBatch {
                pred: &[0.5, 0.0],
                target: &[0.0, 1.0],
                shape,
            },
            LossWeighting {
                channel_weights: &[2.0],
                weight_map: None,
            },
            4.0,
            &mut grad,
        );
        // mean of 2 * (0.25, 1) = 1.25; grad = 2 * 2 * d / 2 * 4.
        assert!((loss - 1.25).abs() < 1e-12);
        assert_eq!(grad, [4.0, -8.0]);
    }
}
