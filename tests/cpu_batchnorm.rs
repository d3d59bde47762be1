//! The CPU batch norm against a plain f64 evaluation of its formulas (docs/maths.md), on shapes
//! that exercise how it splits the work: channel counts that divide the 64-value period and
//! counts that do not (the period then spans several rows, and the last one of a job is short),
//! and enough rows for several parallel jobs with a short last job.
use cephalo::backend::cpu::batchnorm as bn;
use cephalo::backend::{AddReluJoin, BnGrads, BnParams, BnRunning, BnWeights, GradOut, Shape4};
use rand::{Rng, SeedableRng};

fn random(r: &mut rand_chacha::ChaCha8Rng, n: usize, scale: f32, offset: f32) -> Vec<f32> {
    (0..n).map(|_| r.random_range(-1.0f32..1.0) * scale + offset).collect()
}

/// Mean and biased variance per channel, in f64.
fn stats(x: &[f32], c: usize) -> (Vec<f64>, Vec<f64>) {
    let m = (x.len() / c) as f64;
    let mut mean = vec![0.0; c];
    for (i, &v) in x.iter().enumerate() {
        mean[i % c] += v as f64 / m;
    }
    let mut var = vec![0.0; c];
    for (i, &v) in x.iter().enumerate() {
        var[i % c] += (v as f64 - mean[i % c]).powi(2) / m;
    }
    (mean, var)
}

fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1.0f64, |a, v| a.max(v.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tol * scale,
            "{what}[{i}] = {g}, want {w} (tolerance {tol} x {scale})"
        );
    }
}

#[test]
fn forward_and_backward_match_the_formulas_for_any_channel_count() {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    // (rows as n x h x w, channels): 8 and 24 do not fill a 64-value period with one row; 3 and
    // 19 give periods of 64 and 19 rows; 64 and 128 are whole periods. Each has over 16 Ki
    // values, so more than one job, and a row count that leaves the last job short.
    for xs in [
        Shape4::new(2, 41, 53, 8),
        Shape4::new(1, 97, 61, 3),
        Shape4::new(3, 17, 29, 19),
        Shape4::new(1, 37, 43, 24),
        Shape4::new(2, 13, 23, 64),
        Shape4::new(1, 9, 31, 128),
    ] {
        let (c, m) = (xs.c, xs.pixels() as f64);
        let x = random(&mut r, xs.len(), 2.0, 0.3);
        let (gamma, beta) = (random(&mut r, c, 0.5, 1.0), random(&mut r, c, 0.5, 0.0));
        let (dy, res) = (random(&mut r, xs.len(), 1.0, 0.0), random(&mut r, xs.len(), 1.0, 0.0));
        let bp = BnParams::default();
        let (mean, var) = stats(&x, c);
        let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + bp.eps as f64).sqrt()).collect();
        let xhat = |i: usize| (x[i] as f64 - mean[i % c]) * invstd[i % c];
        let pre = |i: usize| gamma[i % c] as f64 * xhat(i) + beta[i % c] as f64;

        // Forward with ReLU, the statistics it saves and the running statistics.
        let (mut y, mut saved) = (vec![f32::NAN; xs.len()], vec![f32::NAN; 2 * c]);
        let (mut rm, mut rv) = (vec![0.0f32; c], vec![1.0f32; c]);
        let weights = BnWeights::new(gamma.as_slice(), beta.as_slice(), bp);
        let running = BnRunning::new(rm.as_mut_slice(), rv.as_mut_slice());
        bn::bn_fwd_train(&x, xs, weights, true, &mut y, &mut saved, running);
        let want: Vec<f64> = (0..xs.len()).map(|i| pre(i).max(0.0)).collect();
        assert_close(&format!("{xs} forward"), &y, &want, 1e-5);
        assert_close(&format!("{xs} saved mean"), &saved[..c], &mean, 1e-6);
        assert_close(&format!("{xs} saved invstd"), &saved[c..], &invstd, 1e-6);
        let unbiased: Vec<f64> = var.iter().map(|v| 0.9 + 0.1 * v * m / (m - 1.0)).collect();
        assert_close(&format!("{xs} running variance"), &rv, &unbiased, 1e-6);

        // Backward of batch norm + ReLU: g = dy where the pre-activation is positive.
        let backward = |g: &dyn Fn(usize) -> f64| {
            let (mut sg, mut sgx) = (vec![0.0f64; c], vec![0.0f64; c]);
            for i in 0..xs.len() {
                sg[i % c] += g(i);
                sgx[i % c] += g(i) * xhat(i);
            }
            let dx: Vec<f64> = (0..xs.len())
                .map(|i| {
                    let ch = i % c;
                    gamma[ch] as f64 * invstd[ch] * (g(i) - sg[ch] / m - xhat(i) * sgx[ch] / m)
                })
                .collect();
            (dx, sgx, sg)
        };
        let (mut dx, mut dg, mut db) = (vec![f32::NAN; xs.len()], vec![f32::NAN; c], vec![f32::NAN; c]);
        let fwd = bn::BnForward {
            x: &x,
            xs,
            bn: weights,
            saved: &saved,
        };
        fn out(data: &mut [f32], accumulate: bool) -> GradOut<&mut [f32]> {
            GradOut::new(data, accumulate)
        }
        fn grads<'a>(dgamma: &'a mut [f32], dbeta: &'a mut [f32]) -> BnGrads<&'a mut [f32]> {
            BnGrads::new(dgamma, dbeta)
        }
        bn::bn_bwd(&dy, fwd, true, out(&mut dx, false), grads(&mut dg, &mut db));
        let (want_dx, want_dg, want_db) = backward(&|i| if pre(i) > 0.0 { dy[i] as f64 } else { 0.0 });
        assert_close(&format!("{xs} dx"), &dx, &want_dx, 1e-4);
        assert_close(&format!("{xs} dgamma"), &dg, &want_dg, 1e-5);
        assert_close(&format!("{xs} dbeta"), &db, &want_db, 1e-5);

        // The block join y = max(bn(x) + r, 0): forward, then the backward that also writes
        // the residual's gradient, both accumulating onto what is there.
        let mut joined = vec![f32::NAN; xs.len()];
        bn::bn_add_relu_apply_saved(&x, xs, weights, &saved, &res, &mut joined);
        let want: Vec<f64> = (0..xs.len()).map(|i| (pre(i) + res[i] as f64).max(0.0)).collect();
        assert_close(&format!("{xs} join forward"), &joined, &want, 1e-5);
        let (mut dx, mut dres) = (vec![1.0f32; xs.len()], vec![-1.0f32; xs.len()]);
        let join = AddReluJoin {
            y: joined.as_slice(),
            d_residual: Some(out(&mut dres, true)),
        };
        bn::bn_add_relu_bwd(&dy, fwd, join, out(&mut dx, true), grads(&mut dg, &mut db));
        let g = |i: usize| if joined[i] > 0.0 { dy[i] as f64 } else { 0.0 };
        let (want_dx, want_dg, want_db) = backward(&g);
        let want_dx: Vec<f64> = want_dx.iter().map(|v| v + 1.0).collect();
        let want_dres: Vec<f64> = (0..xs.len()).map(|i| g(i) - 1.0).collect();
        assert_close(&format!("{xs} join dx"), &dx, &want_dx, 1e-4);
        assert_close(&format!("{xs} join dresidual"), &dres, &want_dres, 1e-6);
        assert_close(&format!("{xs} join dgamma"), &dg, &want_dg, 1e-5);
        assert_close(&format!("{xs} join dbeta"), &db, &want_db, 1e-5);
    }
}
