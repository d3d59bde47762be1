//! CPU twins of `kernels/batchnorm.cu`: batch normalisation over `N*H*W` per channel, with an
//! optional fused ReLU (the GPU fuses it into the same pass).
//!
//! Semantics are PyTorch's (eps 1e-5, momentum 0.1 by default, see [`BnParams`]):
//! * training: `mean` and the *biased* variance of the batch normalise,
//!   `y = gamma * (x - mean) * invstd + beta` with `invstd = 1 / sqrt(var + eps)`; the running
//!   statistics become `(1 - momentum) * running + momentum * batch`, using the *unbiased*
//!   variance `var * m / (m - 1)` for `running_var`;
//! * eval: the running statistics normalise.
//!
//! Training saves `[mean (c); invstd (c)]` for backward. Backward needs only `x` and those, so the
//! output (and its ReLU mask) is recomputed, never stored. Channel sums accumulate in f64.
use rayon::prelude::*;

use super::Real;
use crate::backend::{BnParams, Shape4};

/// Rows (pixels) per parallel job when summing.
const ROWS_PER_JOB: usize = 512;

/// Per-channel sums of `f(row)` over all pixels, in f64, in parallel.
fn channel_sums<const K: usize>(rows: usize, c: usize, f: impl Fn(usize, &mut [[f64; K]]) + Sync) -> Vec<[f64; K]> {
    (0..rows.div_ceil(ROWS_PER_JOB))
        .into_par_iter()
        .map(|j| {
            let mut acc = vec![[0.0f64; K]; c];
            for row in j * ROWS_PER_JOB..((j + 1) * ROWS_PER_JOB).min(rows) {
                f(row, &mut acc);
            }
            acc
        })
        .reduce(
            || vec![[0.0f64; K]; c],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    for i in 0..K {
                        x[i] += y[i];
                    }
                }
                a
            },
        )
}

/// `y = act(gamma * (x - mean) * invstd + beta)` where `saved = [mean; invstd]`.
fn apply<T: Real>(x: &[T], c: usize, gamma: &[T], beta: &[T], saved: &[T], relu: bool, y: &mut [T]) {
    let (mean, invstd) = saved.split_at(c);
    // Folded into one multiply-add per element: y = x * scale + shift.
    let scale: Vec<T> = (0..c).map(|i| gamma[i] * invstd[i]).collect();
    let shift: Vec<T> = (0..c).map(|i| beta[i] - mean[i] * scale[i]).collect();
    y.par_chunks_mut(c * ROWS_PER_JOB)
        .zip(x.par_chunks(c * ROWS_PER_JOB))
        .for_each(|(yc, xc)| {
            for (yr, xr) in yc.chunks_exact_mut(c).zip(xc.chunks_exact(c)) {
                for i in 0..c {
                    let v = xr[i].mul_add(scale[i], shift[i]);
                    yr[i] = if relu { v.max(T::ZERO) } else { v };
                }
            }
        });
}

fn check<T: Real>(x: &[T], xs: Shape4, gamma: &[T], beta: &[T], y: &[T]) {
    assert_eq!(x.len(), xs.len(), "batchnorm: x length");
    assert_eq!(y.len(), xs.len(), "batchnorm: y length");
    assert_eq!(gamma.len(), xs.c, "batchnorm: gamma length");
    assert_eq!(beta.len(), xs.c, "batchnorm: beta length");
}

/// Training forward. Writes `y`, `saved = [mean; invstd]` and updates the running statistics.
#[allow(clippy::too_many_arguments)]
pub fn bn_fwd_train<T: Real>(
    x: &[T],
    xs: Shape4,
    gamma: &[T],
    beta: &[T],
    bp: BnParams,
    relu: bool,
    y: &mut [T],
    saved: &mut [T],
    running_mean: &mut [T],
    running_var: &mut [T],
) {
    check(x, xs, gamma, beta, y);
    bn_batch_stats(x, xs, bp, saved, running_mean, running_var);
    apply(x, xs.c, gamma, beta, saved, relu, y);
}

/// The statistics half of [`bn_fwd_train`]: `saved = [mean; invstd]` of the batch and the
/// running-statistics update. (The GPU computes them in the epilogue of the convolution that
/// writes `x`: `conv::conv2d_fwd_bn_stats`.)
pub fn bn_batch_stats<T: Real>(
    x: &[T],
    xs: Shape4,
    bp: BnParams,
    saved: &mut [T],
    running_mean: &mut [T],
    running_var: &mut [T],
) {
    let (c, m) = (xs.c, xs.pixels());
    assert_eq!(x.len(), xs.len(), "batchnorm: x length");
    assert_eq!(saved.len(), 2 * c, "batchnorm: saved length");
    assert_eq!(running_mean.len(), c, "batchnorm: running mean length");
    assert_eq!(running_var.len(), c, "batchnorm: running variance length");
    let sums = channel_sums::<1>(m, c, |row, acc| {
        for (a, &v) in acc.iter_mut().zip(&x[row * c..(row + 1) * c]) {
            a[0] += v.to_f64();
        }
    });
    let mean: Vec<f64> = sums.iter().map(|s| s[0] / m as f64).collect();
    // Two passes (mean, then squared deviations) keep the variance accurate.
    let sq = channel_sums::<1>(m, c, |row, acc| {
        for ((a, &v), mu) in acc.iter_mut().zip(&x[row * c..(row + 1) * c]).zip(&mean) {
            let d = v.to_f64() - mu;
            a[0] += d * d;
        }
    });
    for i in 0..c {
        let var = sq[i][0] / m as f64;
        saved[i] = T::from_f64(mean[i]);
        saved[c + i] = T::from_f64(1.0 / (var + bp.eps as f64).sqrt());
        let unbiased = if m > 1 { var * m as f64 / (m - 1) as f64 } else { var };
        let mo = bp.momentum as f64;
        running_mean[i] = T::from_f64((1.0 - mo) * running_mean[i].to_f64() + mo * mean[i]);
        running_var[i] = T::from_f64((1.0 - mo) * running_var[i].to_f64() + mo * unbiased);
    }
}

/// Recomputes the training output from saved statistics (used by backward instead of storing it).
pub fn bn_apply_saved<T: Real>(x: &[T], xs: Shape4, gamma: &[T], beta: &[T], saved: &[T], relu: bool, y: &mut [T]) {
    check(x, xs, gamma, beta, y);
    assert_eq!(saved.len(), 2 * xs.c, "batchnorm: saved length");
    apply(x, xs.c, gamma, beta, saved, relu, y);
}

/// Eval forward with the running statistics.
#[allow(clippy::too_many_arguments)]
pub fn bn_fwd_eval<T: Real>(
    x: &[T],
    xs: Shape4,
    gamma: &[T],
    beta: &[T],
    running_mean: &[T],
    running_var: &[T],
    bp: BnParams,
    relu: bool,
    y: &mut [T],
) {
    check(x, xs, gamma, beta, y);
    let c = xs.c;
    let mut saved = running_mean.to_vec();
    saved.extend(eval_invstd(running_var, bp));
    apply(x, c, gamma, beta, &saved, relu, y);
}

fn eval_invstd<T: Real>(running_var: &[T], bp: BnParams) -> impl Iterator<Item = T> + '_ {
    running_var
        .iter()
        .map(move |&v| T::ONE / (v + T::from_f64(bp.eps as f64)).sqrt())
}

/// The eval-mode batch norm as a per-channel affine map `y = x * scale + shift`, for fusing
/// into the convolution before it.
pub fn bn_eval_affine<T: Real>(
    gamma: &[T],
    beta: &[T],
    running_mean: &[T],
    running_var: &[T],
    bp: BnParams,
) -> (Vec<T>, Vec<T>) {
    let scale: Vec<T> = eval_invstd(running_var, bp).zip(gamma).map(|(s, &g)| g * s).collect();
    let shift = beta
        .iter()
        .zip(running_mean)
        .zip(&scale)
        .map(|((&b, &m), &s)| b - m * s)
        .collect();
    (scale, shift)
}

/// Backward of the training forward: `dx (+)=`, `dgamma =`, `dbeta =`.
///
/// With `xhat = (x - mean) * invstd` and `g = dy` masked by the ReLU (recomputed from `x`):
/// `dbeta = sum g`, `dgamma = sum g * xhat`,
/// `dx = gamma * invstd * (g - dbeta / m - xhat * dgamma / m)`.
#[allow(clippy::too_many_arguments)]
pub fn bn_bwd<T: Real>(
    dy: &[T],
    x: &[T],
    xs: Shape4,
    gamma: &[T],
    beta: &[T],
    saved: &[T],
    relu: bool,
    dx: &mut [T],
    accumulate: bool,
    dgamma: &mut [T],
    dbeta: &mut [T],
) {
    check(x, xs, gamma, beta, dy);
    assert_eq!(dx.len(), xs.len(), "batchnorm: dx length");
    let (c, m) = (xs.c, xs.pixels());
    let (mean, invstd) = saved.split_at(c);
    let grad_at = |row: usize, i: usize| -> (T, T) {
        let xhat = (x[row * c + i] - mean[i]) * invstd[i];
        let g = dy[row * c + i];
        let masked = if relu && gamma[i].mul_add(xhat, beta[i]) <= T::ZERO {
            T::ZERO
        } else {
            g
        };
        (masked, xhat)
    };
    let sums = channel_sums::<2>(m, c, |row, acc| {
        for (i, a) in acc.iter_mut().enumerate() {
            let (g, xhat) = grad_at(row, i);
            a[0] += g.to_f64();
            a[1] += (g * xhat).to_f64();
        }
    });
    for i in 0..c {
        dbeta[i] = T::from_f64(sums[i][0]);
        dgamma[i] = T::from_f64(sums[i][1]);
    }
    let mean_g: Vec<T> = sums.iter().map(|s| T::from_f64(s[0] / m as f64)).collect();
    let mean_gx: Vec<T> = sums.iter().map(|s| T::from_f64(s[1] / m as f64)).collect();
    dx.par_chunks_mut(c * ROWS_PER_JOB).enumerate().for_each(|(j, dxc)| {
        for (r, dxr) in dxc.chunks_exact_mut(c).enumerate() {
            let row = j * ROWS_PER_JOB + r;
            for i in 0..c {
                let (g, xhat) = grad_at(row, i);
                let v = gamma[i] * invstd[i] * (g - mean_g[i] - xhat * mean_gx[i]);
                dxr[i] = if accumulate { dxr[i] + v } else { v };
            }
        }
    });
}
