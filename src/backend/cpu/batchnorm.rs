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

use super::simd::{for_each_isa, on_isa};
use super::Real;
use crate::backend::{BnParams, Shape4};

/// Rows (pixels) per parallel job: about 16 Ki values, at least 256 rows. The channel sums are
/// summed per job and the jobs' sums added in order, so this (a function of the shape only)
/// fixes the order of summation: the results do not depend on the thread count.
fn rows_per_job(c: usize) -> usize {
    (16 * 1024 / c.max(1)).max(256)
}

/// `s[i] += x[.., i]`, or `(x[.., i] - mean[i])^2` when `mean` is given, in f64, over the rows
/// of `x`.
#[inline(always)]
fn sum_rows<T: Real>(x: &[T], c: usize, mean: Option<&[f64]>, s: &mut [f64]) {
    match mean {
        None => {
            for row in x.chunks_exact(c) {
                for (a, &v) in s.iter_mut().zip(row) {
                    *a += v.to_f64();
                }
            }
        }
        Some(mu) => {
            for row in x.chunks_exact(c) {
                for ((a, &v), &m) in s.iter_mut().zip(row).zip(mu) {
                    let d = v.to_f64() - m;
                    *a += d * d;
                }
            }
        }
    }
}
for_each_isa!(sum_rows_isa: sum_rows<>(x: &[T], c: usize, mean: Option<&[f64]>, s: &mut [f64]));

/// Per-channel f64 sums of `x` (or of squared deviations from `mean`), job by job in order.
fn channel_sums<T: Real>(x: &[T], c: usize, mean: Option<&[f64]>) -> Vec<f64> {
    let partials: Vec<Vec<f64>> = x
        .par_chunks(c * rows_per_job(c))
        .map(|chunk| {
            let mut s = vec![0.0f64; c];
            on_isa!(sum_rows_isa::<T>(chunk, c, mean, &mut s));
            s
        })
        .collect();
    add_in_order(partials, c)
}

/// The jobs' partial sums added in job order.
fn add_in_order(partials: Vec<Vec<f64>>, len: usize) -> Vec<f64> {
    let mut total = vec![0.0f64; len];
    for p in partials {
        for (t, v) in total.iter_mut().zip(&p) {
            *t += v;
        }
    }
    total
}

/// `y = act(x * scale + shift (+ residual))` over rows of `c` channels; `act` is the ReLU when
/// `relu` (always after the residual, as in the block join `max(bn(x) + r, 0)`).
#[inline(always)]
fn apply_rows<T: Real>(x: &[T], c: usize, scale: &[T], shift: &[T], residual: Option<&[T]>, relu: bool, y: &mut [T]) {
    let act = |v: T| if relu { v.max(T::ZERO) } else { v };
    match residual {
        None => {
            for (yr, xr) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
                for (((yv, &xv), &sc), &sh) in yr.iter_mut().zip(xr).zip(scale).zip(shift) {
                    *yv = act(xv.mul_add(sc, sh));
                }
            }
        }
        Some(r) => {
            for ((yr, xr), rr) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)).zip(r.chunks_exact(c)) {
                for ((((yv, &xv), &sc), &sh), &rv) in yr.iter_mut().zip(xr).zip(scale).zip(shift).zip(rr) {
                    *yv = act(xv.mul_add(sc, sh) + rv);
                }
            }
        }
    }
}
for_each_isa!(apply_rows_isa: apply_rows<>(
    x: &[T],
    c: usize,
    scale: &[T],
    shift: &[T],
    residual: Option<&[T]>,
    relu: bool,
    y: &mut [T],
));

/// `y = act(gamma * (x - mean) * invstd + beta (+ residual))` where `saved = [mean; invstd]`.
#[allow(clippy::too_many_arguments)]
fn apply<T: Real>(
    x: &[T],
    c: usize,
    gamma: &[T],
    beta: &[T],
    saved: &[T],
    residual: Option<&[T]>,
    relu: bool,
    y: &mut [T],
) {
    let (mean, invstd) = saved.split_at(c);
    // Folded into one multiply-add per element: y = x * scale + shift.
    let scale: Vec<T> = (0..c).map(|i| gamma[i] * invstd[i]).collect();
    let shift: Vec<T> = (0..c).map(|i| beta[i] - mean[i] * scale[i]).collect();
    let len = c * rows_per_job(c);
    y.par_chunks_mut(len).enumerate().for_each(|(j, yc)| {
        let xc = &x[j * len..j * len + yc.len()];
        let rc = residual.map(|r| &r[j * len..j * len + yc.len()]);
        on_isa!(apply_rows_isa::<T>(xc, c, &scale, &shift, rc, relu, yc));
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
    apply(x, xs.c, gamma, beta, saved, None, relu, y);
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
    let sums = channel_sums(x, c, None);
    let mean: Vec<f64> = sums.iter().map(|s| s / m as f64).collect();
    // Two passes (mean, then squared deviations) keep the variance accurate.
    let sq = channel_sums(x, c, Some(&mean));
    for i in 0..c {
        let var = sq[i] / m as f64;
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
    apply(x, xs.c, gamma, beta, saved, None, relu, y);
}

/// The block join `y = max(bn(x) + residual, 0)` from saved statistics, in one pass: the same
/// values as the batch norm's output in f32 followed by `add_relu_fwd`.
pub fn bn_add_relu_apply_saved<T: Real>(
    x: &[T],
    xs: Shape4,
    gamma: &[T],
    beta: &[T],
    saved: &[T],
    residual: &[T],
    y: &mut [T],
) {
    check(x, xs, gamma, beta, y);
    assert_eq!(saved.len(), 2 * xs.c, "batchnorm: saved length");
    assert_eq!(residual.len(), xs.len(), "batchnorm: residual length");
    apply(x, xs.c, gamma, beta, saved, Some(residual), true, y);
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
    apply(x, c, gamma, beta, &saved, None, relu, y);
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

/// What the backward reads besides `dy` and `x`: the forward's parameters and statistics.
#[derive(Clone, Copy)]
struct BwdInputs<'a, T> {
    c: usize,
    mean: &'a [T],
    invstd: &'a [T],
    gamma: &'a [T],
    beta: &'a [T],
    /// The batch norm's own ReLU (recomputed from `x`).
    relu: bool,
    /// The output of a following block join `max(bn + r, 0)`, whose mask applies to `dy` first.
    join: Option<&'a [T]>,
}

/// Whether the ReLU passes the gradient at pre-activation `v`: `v > 0`, and NaN too (as the
/// forward's `max` keeps a NaN, its gradient is not silently zeroed).
#[inline(always)]
fn relu_passes<T: Real>(v: T) -> bool {
    matches!(v.partial_cmp(&T::ZERO), Some(std::cmp::Ordering::Greater) | None)
}

/// One element's gradient at the batch norm's output and its `xhat = (x - mean) * invstd`: `dy`,
/// zeroed where the following join's output `join_y` is not positive, or where the batch norm's
/// own ReLU (`relu`) did not pass. Both backward passes use it, so they agree by construction.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn masked_grad<T: Real>(dy: T, x: T, join_y: Option<T>, relu: bool, mean: T, invstd: T, gamma: T, beta: T) -> (T, T) {
    let xhat = (x - mean) * invstd;
    let joined = join_y.is_none_or(|y| y > T::ZERO);
    let kept = !relu || relu_passes(gamma.mul_add(xhat, beta));
    (if joined && kept { dy } else { T::ZERO }, xhat)
}

/// The backward's first pass over some rows: `s0 += g`, `s1 += g * xhat` (f64), and the join's
/// gradient to its residual `dres (+)= dy * [y > 0]` when asked for.
#[inline(always)]
fn bwd_sum_rows<T: Real>(
    inp: &BwdInputs<'_, T>,
    dy: &[T],
    x: &[T],
    join: Option<&[T]>,
    dres: Option<(&mut [T], bool)>,
    s0: &mut [f64],
    s1: &mut [f64],
) {
    let c = inp.c;
    // Everything sliced to `c` and the masks as plain selects, so that the loop vectorizes.
    let (mean, invstd, gamma, beta) = (&inp.mean[..c], &inp.invstd[..c], &inp.gamma[..c], &inp.beta[..c]);
    let (s0, s1) = (&mut s0[..c], &mut s1[..c]);
    let (relu, use_join) = (inp.relu, join.is_some());
    for r in 0..x.len() / c {
        let (dyr, xr) = (&dy[r * c..][..c], &x[r * c..][..c]);
        let jr = &join.unwrap_or(dy)[r * c..][..c];
        for ch in 0..c {
            let (g, xhat) = masked_grad(
                dyr[ch],
                xr[ch],
                use_join.then(|| jr[ch]),
                relu,
                mean[ch],
                invstd[ch],
                gamma[ch],
                beta[ch],
            );
            s0[ch] += g.to_f64();
            s1[ch] += (g * xhat).to_f64();
        }
    }
    if let (Some((d, accumulate)), Some(j)) = (dres, join) {
        for ((dv, &g), &y) in d.iter_mut().zip(dy).zip(j) {
            let v = if y > T::ZERO { g } else { T::ZERO };
            *dv = if accumulate { *dv + v } else { v };
        }
    }
}
for_each_isa!(bwd_sum_rows_isa: bwd_sum_rows<>(
    inp: &BwdInputs<'_, T>,
    dy: &[T],
    x: &[T],
    join: Option<&[T]>,
    dres: Option<(&mut [T], bool)>,
    s0: &mut [f64],
    s1: &mut [f64],
));

/// The backward's second pass: `dx (+)= k1 * (g - mean_g - xhat * mean_gx)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn bwd_dx_rows<T: Real>(
    inp: &BwdInputs<'_, T>,
    dy: &[T],
    x: &[T],
    join: Option<&[T]>,
    k1: &[T],
    mean_g: &[T],
    mean_gx: &[T],
    dx: &mut [T],
    accumulate: bool,
) {
    let c = inp.c;
    let (mean, invstd, gamma, beta) = (&inp.mean[..c], &inp.invstd[..c], &inp.gamma[..c], &inp.beta[..c]);
    let (k1, mean_g, mean_gx) = (&k1[..c], &mean_g[..c], &mean_gx[..c]);
    let (relu, use_join) = (inp.relu, join.is_some());
    for r in 0..x.len() / c {
        let (dyr, xr) = (&dy[r * c..][..c], &x[r * c..][..c]);
        let jr = &join.unwrap_or(dy)[r * c..][..c];
        let dxr = &mut dx[r * c..][..c];
        for ch in 0..c {
            let (g, xhat) = masked_grad(
                dyr[ch],
                xr[ch],
                use_join.then(|| jr[ch]),
                relu,
                mean[ch],
                invstd[ch],
                gamma[ch],
                beta[ch],
            );
            let v = k1[ch] * (g - mean_g[ch] - xhat * mean_gx[ch]);
            dxr[ch] = if accumulate { dxr[ch] + v } else { v };
        }
    }
}

for_each_isa!(bwd_dx_rows_isa: bwd_dx_rows<>(
    inp: &BwdInputs<'_, T>,
    dy: &[T],
    x: &[T],
    join: Option<&[T]>,
    k1: &[T],
    mean_g: &[T],
    mean_gx: &[T],
    dx: &mut [T],
    accumulate: bool,
));

/// Both passes of the backward (see [`bn_bwd`]); `dres` only with `join`.
#[allow(clippy::too_many_arguments)]
fn bwd<T: Real>(
    inp: BwdInputs<'_, T>,
    dy: &[T],
    x: &[T],
    dres: Option<(&mut [T], bool)>,
    dx: &mut [T],
    accumulate: bool,
    dgamma: &mut [T],
    dbeta: &mut [T],
) {
    let c = inp.c;
    let m = x.len() / c;
    let len = c * rows_per_job(c);
    let jobs = x.len().div_ceil(len);
    let span = |j: usize| j * len..((j + 1) * len).min(x.len());
    let (accumulate_res, dres_chunks): (bool, Vec<Option<&mut [T]>>) = match dres {
        Some((d, a)) => (a, d.chunks_mut(len).map(Some).collect()),
        None => (false, (0..jobs).map(|_| None).collect()),
    };
    let partials: Vec<Vec<f64>> = dres_chunks
        .into_par_iter()
        .enumerate()
        .map(|(j, dchunk)| {
            let mut s = vec![0.0f64; 2 * c];
            let (s0, s1) = s.split_at_mut(c);
            let r = span(j);
            let join = inp.join.map(|y| &y[r.clone()]);
            let dres = dchunk.map(|d| (d, accumulate_res));
            on_isa!(bwd_sum_rows_isa::<T>(&inp, &dy[r.clone()], &x[r], join, dres, s0, s1));
            s
        })
        .collect();
    let sums = add_in_order(partials, 2 * c);
    let (sum_g, sum_gx) = sums.split_at(c);
    for ch in 0..c {
        dbeta[ch] = T::from_f64(sum_g[ch]);
        dgamma[ch] = T::from_f64(sum_gx[ch]);
    }
    let mean_g: Vec<T> = sum_g.iter().map(|s| T::from_f64(s / m as f64)).collect();
    let mean_gx: Vec<T> = sum_gx.iter().map(|s| T::from_f64(s / m as f64)).collect();
    let k1: Vec<T> = (0..c).map(|ch| inp.gamma[ch] * inp.invstd[ch]).collect();
    dx.par_chunks_mut(len).enumerate().for_each(|(j, dxc)| {
        let r = span(j);
        let join = inp.join.map(|y| &y[r.clone()]);
        on_isa!(bwd_dx_rows_isa::<T>(
            &inp,
            &dy[r.clone()],
            &x[r],
            join,
            &k1,
            &mean_g,
            &mean_gx,
            dxc,
            accumulate
        ));
    });
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
    let (mean, invstd) = saved.split_at(xs.c);
    let inp = BwdInputs {
        c: xs.c,
        mean,
        invstd,
        gamma,
        beta,
        relu,
        join: None,
    };
    bwd(inp, dy, x, None, dx, accumulate, dgamma, dbeta);
}

/// Backward of the block join `y = max(bn(x) + residual, 0)`: the join's mask `[y > 0]` applied
/// to `dy` gives the gradient of both the batch norm's output and the residual (`dres (+)=`,
/// when given), then [`bn_bwd`]'s passes run on it, all without a temporary.
#[allow(clippy::too_many_arguments)]
pub fn bn_add_relu_bwd<T: Real>(
    dy: &[T],
    x: &[T],
    y: &[T],
    xs: Shape4,
    gamma: &[T],
    beta: &[T],
    saved: &[T],
    dres: Option<(&mut [T], bool)>,
    dx: &mut [T],
    accumulate: bool,
    dgamma: &mut [T],
    dbeta: &mut [T],
) {
    check(x, xs, gamma, beta, dy);
    assert_eq!(y.len(), xs.len(), "batchnorm: y length");
    assert_eq!(dx.len(), xs.len(), "batchnorm: dx length");
    if let Some((d, _)) = &dres {
        assert_eq!(d.len(), xs.len(), "batchnorm: residual gradient length");
    }
    let (mean, invstd) = saved.split_at(xs.c);
    let inp = BwdInputs {
        c: xs.c,
        mean,
        invstd,
        gamma,
        beta,
        relu: false,
        join: Some(y),
    };
    bwd(inp, dy, x, dres, dx, accumulate, dgamma, dbeta);
}
