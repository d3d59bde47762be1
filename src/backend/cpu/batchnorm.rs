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
//!
//! # Loops a whole number of vectors long
//! The inner loops run over [`period`] values: the fewest whole rows that fill whole vectors
//! (64 values, or `c` when that is a multiple of 64), with the per-channel parameters repeated
//! to that length. A loop over one row of 8 or 16 channels is shorter than the vectorised loop's
//! step and ran scalar; over a period every op is a full-vector op. The channel sums keep one
//! running sum per position of the period (the rows of each residue modulo `period / c` apart)
//! and fold them per channel at the end of the job, in a fixed order.
use rayon::prelude::*;

use super::simd::{for_each_isa, on_isa};
use super::Real;
use crate::backend::{AddReluJoin, BnGrads, BnParams, BnRunning, BnWeights, GradOut, Shape4};

/// Rows (pixels) per parallel job: about 16 Ki values, at least 256 rows, a whole number of
/// periods. The channel sums are summed per job and the jobs' sums added in order, so this (a
/// function of the shape only) fixes the order of summation: the results do not depend on the
/// thread count.
fn rows_per_job(c: usize) -> usize {
    let rows_per_period = period(c) / c.max(1);
    (16 * 1024 / c.max(1)).max(256).next_multiple_of(rows_per_period)
}

/// Values per pass of the inner loops: the least common multiple of `c` and 64 (four 512-bit
/// vectors of f32, the vectorised loop's step), so that a pass is whole rows and whole vectors.
fn period(c: usize) -> usize {
    let c = c.max(1);
    let (mut a, mut b) = (c, 64);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    c / a * 64
}

/// `v` (one value per channel) repeated to `len` values, `len` a multiple of its length.
fn repeated<T: Copy>(v: &[T], len: usize) -> Vec<T> {
    v.iter().copied().cycle().take(len).collect()
}

/// The running sums of one job, one per position of the period, folded per channel: channel
/// `ch` is the sum of positions `ch, ch + c, ch + 2c, ...` in that order.
fn fold(acc: &[f64], c: usize) -> Vec<f64> {
    let mut s = acc[..c].to_vec();
    for part in acc[c..].chunks_exact(c) {
        s.iter_mut().zip(part).for_each(|(a, v)| *a += v);
    }
    s
}

/// `acc[i] += x[.., i]`, or `(x[.., i] - mean[i])^2` when `mean` is given, in f64, over the
/// periods of `x` (`acc` and `mean` are one period long; the last period may be short).
#[inline(always)]
fn sum_rows<T: Real>(x: &[T], mean: Option<&[f64]>, acc: &mut [f64]) {
    let p = acc.len();
    match mean {
        None => {
            for part in x.chunks(p) {
                for (a, &v) in acc.iter_mut().zip(part) {
                    *a += v.to_f64();
                }
            }
        }
        Some(mu) => {
            for part in x.chunks(p) {
                for ((a, &v), &m) in acc.iter_mut().zip(part).zip(mu) {
                    let d = v.to_f64() - m;
                    *a += d * d;
                }
            }
        }
    }
}
for_each_isa!(sum_rows_isa: sum_rows<>(x: &[T], mean: Option<&[f64]>, acc: &mut [f64]));

/// Per-channel f64 sums of `x` (or of squared deviations from `mean`), job by job in order.
fn channel_sums<T: Real>(x: &[T], c: usize, mean: Option<&[f64]>) -> Vec<f64> {
    let p = period(c);
    let mean = mean.map(|m| repeated(m, p));
    let partials: Vec<Vec<f64>> = x
        .par_chunks(c * rows_per_job(c))
        .map(|chunk| {
            let mut acc = vec![0.0f64; p];
            on_isa!(sum_rows_isa::<T>(chunk, mean.as_deref(), &mut acc));
            fold(&acc, c)
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
fn apply_rows<T: Real>(x: &[T], scale: &[T], shift: &[T], residual: Option<&[T]>, relu: bool, y: &mut [T]) {
    let (act, p) = (|v: T| if relu { v.max(T::ZERO) } else { v }, scale.len());
    match residual {
        None => {
            for (yr, xr) in y.chunks_mut(p).zip(x.chunks(p)) {
                for (((yv, &xv), &sc), &sh) in yr.iter_mut().zip(xr).zip(scale).zip(shift) {
                    *yv = act(xv.mul_add(sc, sh));
                }
            }
        }
        Some(r) => {
            for ((yr, xr), rr) in y.chunks_mut(p).zip(x.chunks(p)).zip(r.chunks(p)) {
                for ((((yv, &xv), &sc), &sh), &rv) in yr.iter_mut().zip(xr).zip(scale).zip(shift).zip(rr) {
                    *yv = act(xv.mul_add(sc, sh) + rv);
                }
            }
        }
    }
}
for_each_isa!(apply_rows_isa: apply_rows<>(
    x: &[T],
    scale: &[T],
    shift: &[T],
    residual: Option<&[T]>,
    relu: bool,
    y: &mut [T],
));

/// `y = act(gamma * (x - mean) * invstd + beta (+ residual))` where `saved = [mean; invstd]`.
fn apply<T: Real>(x: &[T], bn: BnWeights<&[T]>, saved: &[T], residual: Option<&[T]>, relu: bool, y: &mut [T]) {
    let c = bn.gamma.len();
    let (mean, invstd) = saved.split_at(c);
    // Folded into one multiply-add per element: y = x * scale + shift.
    let scale: Vec<T> = (0..c).map(|i| bn.gamma[i] * invstd[i]).collect();
    let shift: Vec<T> = (0..c).map(|i| bn.beta[i] - mean[i] * scale[i]).collect();
    let (scale, shift) = (repeated(&scale, period(c)), repeated(&shift, period(c)));
    let len = c * rows_per_job(c);
    y.par_chunks_mut(len).enumerate().for_each(|(j, yc)| {
        let xc = &x[j * len..j * len + yc.len()];
        let rc = residual.map(|r| &r[j * len..j * len + yc.len()]);
        on_isa!(apply_rows_isa::<T>(xc, &scale, &shift, rc, relu, yc));
    });
}

fn check<T: Real>(x: &[T], xs: Shape4, bn: &BnWeights<&[T]>, y: &[T]) {
    assert_eq!(x.len(), xs.len(), "batchnorm: x length");
    assert_eq!(y.len(), xs.len(), "batchnorm: y length");
    assert_eq!(bn.gamma.len(), xs.c, "batchnorm: gamma length");
    assert_eq!(bn.beta.len(), xs.c, "batchnorm: beta length");
}

/// Training forward. Writes `y`, `saved = [mean; invstd]` and updates the running statistics.
pub fn bn_fwd_train<T: Real>(
    x: &[T],
    xs: Shape4,
    bn: BnWeights<&[T]>,
    relu: bool,
    y: &mut [T],
    saved: &mut [T],
    running: BnRunning<&mut [T]>,
) {
    check(x, xs, &bn, y);
    bn_batch_stats(x, xs, bn.params, saved, running);
    apply(x, bn, saved, None, relu, y);
}

/// The statistics half of [`bn_fwd_train`]: `saved = [mean; invstd]` of the batch and the
/// running-statistics update. (The GPU computes them in the epilogue of the convolution that
/// writes `x`: `conv::conv2d_fwd_bn_stats`.)
pub fn bn_batch_stats<T: Real>(x: &[T], xs: Shape4, bp: BnParams, saved: &mut [T], running: BnRunning<&mut [T]>) {
    let BnRunning {
        mean: running_mean,
        var: running_var,
    } = running;
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
pub fn bn_apply_saved<T: Real>(x: &[T], xs: Shape4, bn: BnWeights<&[T]>, saved: &[T], relu: bool, y: &mut [T]) {
    check(x, xs, &bn, y);
    assert_eq!(saved.len(), 2 * xs.c, "batchnorm: saved length");
    apply(x, bn, saved, None, relu, y);
}

/// The block join `y = max(bn(x) + residual, 0)` from saved statistics, in one pass: the same
/// values as the batch norm's output in f32 followed by `add_relu_fwd`.
pub fn bn_add_relu_apply_saved<T: Real>(
    x: &[T],
    xs: Shape4,
    bn: BnWeights<&[T]>,
    saved: &[T],
    residual: &[T],
    y: &mut [T],
) {
    check(x, xs, &bn, y);
    assert_eq!(saved.len(), 2 * xs.c, "batchnorm: saved length");
    assert_eq!(residual.len(), xs.len(), "batchnorm: residual length");
    apply(x, bn, saved, Some(residual), true, y);
}

/// Eval forward with the running statistics.
pub fn bn_fwd_eval<T: Real>(
    x: &[T],
    xs: Shape4,
    bn: BnWeights<&[T]>,
    running: BnRunning<&[T]>,
    relu: bool,
    y: &mut [T],
) {
    check(x, xs, &bn, y);
    let mut saved = running.mean.to_vec();
    saved.extend(eval_invstd(running.var, bn.params));
    apply(x, bn, &saved, None, relu, y);
}

fn eval_invstd<T: Real>(running_var: &[T], bp: BnParams) -> impl Iterator<Item = T> + '_ {
    running_var
        .iter()
        .map(move |&v| T::ONE / (v + T::from_f64(bp.eps as f64)).sqrt())
}

/// The eval-mode batch norm as a per-channel affine map `y = x * scale + shift`, for fusing
/// into the convolution before it.
pub fn bn_eval_affine<T: Real>(bn: BnWeights<&[T]>, running: BnRunning<&[T]>) -> (Vec<T>, Vec<T>) {
    let scale: Vec<T> = eval_invstd(running.var, bn.params)
        .zip(bn.gamma)
        .map(|(s, &g)| g * s)
        .collect();
    let shift = bn
        .beta
        .iter()
        .zip(running.mean)
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

/// [`BwdInputs`]' per-channel values repeated to one [`period`].
struct PeriodParams<T> {
    mean: Vec<T>,
    invstd: Vec<T>,
    gamma: Vec<T>,
    beta: Vec<T>,
}

impl<T: Real> PeriodParams<T> {
    fn of(inp: &BwdInputs<'_, T>) -> Self {
        let p = period(inp.c);
        Self {
            mean: repeated(inp.mean, p),
            invstd: repeated(inp.invstd, p),
            gamma: repeated(inp.gamma, p),
            beta: repeated(inp.beta, p),
        }
    }

    /// The first `n` positions of each, as slices of one length (so that a loop indexing them
    /// needs no bounds checks and vectorizes).
    #[inline(always)]
    fn first(&self, n: usize) -> [&[T]; 4] {
        [&self.mean[..n], &self.invstd[..n], &self.gamma[..n], &self.beta[..n]]
    }
}

/// One element's gradient at the batch norm's output and its `xhat = (x - mean) * invstd`
/// (`bn = [mean, invstd, gamma, beta]` of its channel): `dy`, zeroed where the following join's
/// output `join_y` is not positive, or where the batch norm's own ReLU (`relu`) did not pass.
/// Both backward passes use it, so they agree by construction.
#[inline(always)]
fn masked_grad<T: Real>(dy: T, x: T, join_y: Option<T>, relu: bool, bn: [T; 4]) -> (T, T) {
    let [mean, invstd, gamma, beta] = bn;
    let xhat = (x - mean) * invstd;
    let joined = join_y.is_none_or(|y| y > T::ZERO);
    let kept = !relu || relu_passes(gamma.mul_add(xhat, beta));
    (if joined && kept { dy } else { T::ZERO }, xhat)
}

/// One job's rows of the backward's operands: the output gradient, the input, and the following
/// join's output when there is one.
struct BwdRows<'a, T> {
    dy: &'a [T],
    x: &'a [T],
    join: Option<&'a [T]>,
}

/// The backward's first pass over some rows: `s0 += g`, `s1 += g * xhat` (f64, one running sum
/// per position of the period), and the join's gradient to its residual `dres (+)= dy * [y > 0]`
/// when asked for.
#[inline(always)]
fn bwd_sum_rows<T: Real>(
    pp: &PeriodParams<T>,
    relu: bool,
    rows: &BwdRows<'_, T>,
    dres: Option<GradOut<&mut [T]>>,
    s: (&mut [f64], &mut [f64]),
) {
    let (s0, s1) = s;
    let p = s0.len();
    let (s0, s1) = (&mut s0[..p], &mut s1[..p]);
    // Without a join its rows are read as dy's and ignored, so the loop has no branch on it.
    let (join, use_join) = (rows.join.unwrap_or(rows.dy), rows.join.is_some());
    for ((dyr, xr), jr) in rows.dy.chunks(p).zip(rows.x.chunks(p)).zip(join.chunks(p)) {
        let n = xr.len();
        let [mean, invstd, gamma, beta] = pp.first(n);
        let (dyr, jr, s0, s1) = (&dyr[..n], &jr[..n], &mut s0[..n], &mut s1[..n]);
        for i in 0..n {
            let bn = [mean[i], invstd[i], gamma[i], beta[i]];
            let (g, xhat) = masked_grad(dyr[i], xr[i], use_join.then(|| jr[i]), relu, bn);
            s0[i] += g.to_f64();
            s1[i] += (g * xhat).to_f64();
        }
    }
    if let (Some(d), Some(j)) = (dres, rows.join) {
        for ((dv, &g), &y) in d.data.iter_mut().zip(rows.dy).zip(j) {
            let v = if y > T::ZERO { g } else { T::ZERO };
            *dv = if d.accumulate { *dv + v } else { v };
        }
    }
}
for_each_isa!(bwd_sum_rows_isa: bwd_sum_rows<>(
    pp: &PeriodParams<T>,
    relu: bool,
    rows: &BwdRows<'_, T>,
    dres: Option<GradOut<&mut [T]>>,
    s: (&mut [f64], &mut [f64]),
));

/// The second pass's per-channel coefficients, repeated to one period:
/// `dx = k1 * (g - mean_g - xhat * mean_gx)`.
struct DxCoefficients<T> {
    k1: Vec<T>,
    mean_g: Vec<T>,
    mean_gx: Vec<T>,
}

/// The backward's second pass: `dx (+)= k1 * (g - mean_g - xhat * mean_gx)`.
#[inline(always)]
fn bwd_dx_rows<T: Real>(
    pp: &PeriodParams<T>,
    relu: bool,
    rows: &BwdRows<'_, T>,
    coef: &DxCoefficients<T>,
    dx: GradOut<&mut [T]>,
) {
    let GradOut { data: dx, accumulate } = dx;
    let p = coef.k1.len();
    let (k1, mean_g, mean_gx) = (&coef.k1[..p], &coef.mean_g[..p], &coef.mean_gx[..p]);
    let (join, use_join) = (rows.join.unwrap_or(rows.dy), rows.join.is_some());
    let parts = rows.dy.chunks(p).zip(rows.x.chunks(p)).zip(join.chunks(p));
    for (((dyr, xr), jr), dxr) in parts.zip(dx.chunks_mut(p)) {
        let n = xr.len();
        let [mean, invstd, gamma, beta] = pp.first(n);
        let (k1, mean_g, mean_gx) = (&k1[..n], &mean_g[..n], &mean_gx[..n]);
        let (dyr, jr, dxr) = (&dyr[..n], &jr[..n], &mut dxr[..n]);
        for i in 0..n {
            let bn = [mean[i], invstd[i], gamma[i], beta[i]];
            let (g, xhat) = masked_grad(dyr[i], xr[i], use_join.then(|| jr[i]), relu, bn);
            let v = k1[i] * (g - mean_g[i] - xhat * mean_gx[i]);
            dxr[i] = if accumulate { dxr[i] + v } else { v };
        }
    }
}

for_each_isa!(bwd_dx_rows_isa: bwd_dx_rows<>(
    pp: &PeriodParams<T>,
    relu: bool,
    rows: &BwdRows<'_, T>,
    coef: &DxCoefficients<T>,
    dx: GradOut<&mut [T]>,
));

/// Both passes of the backward (see [`bn_bwd`]); `dres` only with `join`.
fn bwd<T: Real>(
    inp: BwdInputs<'_, T>,
    dy: &[T],
    x: &[T],
    dres: Option<GradOut<&mut [T]>>,
    dx: GradOut<&mut [T]>,
    grads: BnGrads<&mut [T]>,
) {
    let (c, p) = (inp.c, period(inp.c));
    let m = x.len() / c;
    let len = c * rows_per_job(c);
    let jobs = x.len().div_ceil(len);
    let span = |j: usize| j * len..((j + 1) * len).min(x.len());
    let rows_of = |j: usize| {
        let r = span(j);
        BwdRows {
            dy: &dy[r.clone()],
            x: &x[r.clone()],
            join: inp.join.map(|y| &y[r]),
        }
    };
    let pp = PeriodParams::of(&inp);
    // The residual's gradient in the first pass's jobs (each job writes its own rows).
    let dres_chunks: Vec<Option<GradOut<&mut [T]>>> = match dres {
        Some(d) => d
            .data
            .chunks_mut(len)
            .map(|data| Some(GradOut::new(data, d.accumulate)))
            .collect(),
        None => (0..jobs).map(|_| None).collect(),
    };
    let partials: Vec<Vec<f64>> = dres_chunks
        .into_par_iter()
        .enumerate()
        .map(|(j, dchunk)| {
            let (mut s0, mut s1) = (vec![0.0f64; p], vec![0.0f64; p]);
            on_isa!(bwd_sum_rows_isa::<T>(
                &pp,
                inp.relu,
                &rows_of(j),
                dchunk,
                (&mut s0, &mut s1)
            ));
            let mut sums = fold(&s0, c);
            sums.extend(fold(&s1, c));
            sums
        })
        .collect();
    let sums = add_in_order(partials, 2 * c);
    let (sum_g, sum_gx) = sums.split_at(c);
    let BnGrads { dgamma, dbeta } = grads;
    for ch in 0..c {
        dbeta[ch] = T::from_f64(sum_g[ch]);
        dgamma[ch] = T::from_f64(sum_gx[ch]);
    }
    let k1: Vec<T> = (0..c).map(|ch| inp.gamma[ch] * inp.invstd[ch]).collect();
    let mean_g: Vec<T> = sum_g.iter().map(|s| T::from_f64(s / m as f64)).collect();
    let mean_gx: Vec<T> = sum_gx.iter().map(|s| T::from_f64(s / m as f64)).collect();
    let coef = DxCoefficients {
        k1: repeated(&k1, p),
        mean_g: repeated(&mean_g, p),
        mean_gx: repeated(&mean_gx, p),
    };
    dx.data.par_chunks_mut(len).enumerate().for_each(|(j, dxc)| {
        let out = GradOut::new(dxc, dx.accumulate);
        on_isa!(bwd_dx_rows_isa::<T>(&pp, inp.relu, &rows_of(j), &coef, out));
    });
}

/// The training forward a backward differentiates: its input `x` of shape `xs`, the layer's
/// gamma and beta, and the `saved = [mean; invstd]` it wrote (as `cuda::batchnorm::BnForward`).
#[derive(Clone, Copy, Debug)]
pub struct BnForward<'a, T> {
    pub x: &'a [T],
    pub xs: Shape4,
    pub bn: BnWeights<&'a [T]>,
    pub saved: &'a [T],
}

impl<'a, T: Real> BnForward<'a, T> {
    pub fn new(x: &'a [T], xs: Shape4, bn: BnWeights<&'a [T]>, saved: &'a [T]) -> Self {
        Self { x, xs, bn, saved }
    }

    /// The backward's inputs, after checking the lengths against `dy` and `dx`.
    fn inputs(&self, dy: &[T], dx: &[T], relu: bool, join: Option<&'a [T]>) -> BwdInputs<'a, T> {
        check(self.x, self.xs, &self.bn, dy);
        assert_eq!(dx.len(), self.xs.len(), "batchnorm: dx length");
        assert_eq!(self.saved.len(), 2 * self.xs.c, "batchnorm: saved length");
        let (mean, invstd) = self.saved.split_at(self.xs.c);
        BwdInputs {
            c: self.xs.c,
            mean,
            invstd,
            gamma: self.bn.gamma,
            beta: self.bn.beta,
            relu,
            join,
        }
    }
}

/// Backward of the training forward: `dx (+)=`, `dgamma =`, `dbeta =`.
///
/// With `xhat = (x - mean) * invstd` and `g = dy` masked by the ReLU (recomputed from `x`):
/// `dbeta = sum g`, `dgamma = sum g * xhat`,
/// `dx = gamma * invstd * (g - dbeta / m - xhat * dgamma / m)`.
pub fn bn_bwd<T: Real>(dy: &[T], fwd: BnForward<'_, T>, relu: bool, dx: GradOut<&mut [T]>, grads: BnGrads<&mut [T]>) {
    bwd(fwd.inputs(dy, dx.data, relu, None), dy, fwd.x, None, dx, grads);
}

/// Backward of the block join `y = max(bn(x) + residual, 0)`: the join's mask `[y > 0]` applied
/// to `dy` gives the gradient of both the batch norm's output and the residual
/// (`join.d_residual`, when given), then [`bn_bwd`]'s passes run on it, all without a temporary.
pub fn bn_add_relu_bwd<T: Real>(
    dy: &[T],
    fwd: BnForward<'_, T>,
    join: AddReluJoin<&[T], GradOut<&mut [T]>>,
    dx: GradOut<&mut [T]>,
    grads: BnGrads<&mut [T]>,
) {
    let xs = fwd.xs;
    assert_eq!(join.y.len(), xs.len(), "batchnorm: y length");
    if let Some(d) = &join.d_residual {
        assert_eq!(d.data.len(), xs.len(), "batchnorm: residual gradient length");
    }
    let inp = fwd.inputs(dy, dx.data, false, Some(join.y));
    bwd(inp, dy, fwd.x, join.d_residual, dx, grads);
}
