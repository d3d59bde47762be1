//! The inference forward's Winograd F(2x2, 3x3) path (`backend::cpu::conv`, docs/maths.md)
//! against an f64 direct convolution: odd image sizes (tiles cut by the border), channel counts
//! that are not multiples of the vector width, 8- and 16-lane output blocks, batches, and the
//! folded batch norm, residual and ReLU of `conv2d_affine_fwd`.
use cephalo::backend::cpu::conv::{self, Affine};
use cephalo::backend::{ConvParams, Shape4};
use rand::{Rng, SeedableRng};

/// `conv2d(x, w)` in f64, straight from the definition (NHWC input, KRSC weights).
fn direct_f64(x: &[f32], xs: Shape4, w: &[f32], p: &ConvParams) -> Vec<f64> {
    let ys = p.out_shape(xs);
    let mut y = vec![0.0f64; ys.len()];
    for n in 0..xs.n {
        for oh in 0..ys.h {
            for ow in 0..ys.w {
                for k in 0..p.c_out {
                    let mut acc = 0.0f64;
                    for r in 0..p.kh {
                        for s in 0..p.kw {
                            let (ih, iw) = (
                                (oh * p.stride + r).wrapping_sub(p.pad),
                                (ow * p.stride + s).wrapping_sub(p.pad),
                            );
                            if ih >= xs.h || iw >= xs.w {
                                continue;
                            }
                            for c in 0..xs.c {
                                let xv = x[((n * xs.h + ih) * xs.w + iw) * xs.c + c] as f64;
                                acc += xv * w[((k * p.kh + r) * p.kw + s) * p.c_in + c] as f64;
                            }
                        }
                    }
                    y[((n * ys.h + oh) * ys.w + ow) * p.c_out + k] = acc;
                }
            }
        }
    }
    y
}

fn random(r: &mut rand_chacha::ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
}

/// The largest |got - want| over the largest |want| (at least 1).
fn relative_error(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (&g, &w)| m.max((g as f64 - w).abs()));
    worst / scale
}

// (n, h, w, c_in, c_out): border tiles cut in both directions, c_in below, at and above 16
// and not a multiple of 4, c_out taking 8- and 16-lane blocks with padding lanes.
const CASES: [(usize, usize, usize, usize, usize); 6] = [
    (1, 8, 8, 8, 8),
    (2, 7, 5, 19, 24),
    (1, 6, 9, 32, 32),
    (1, 5, 4, 64, 19),
    (3, 3, 3, 21, 17),
    (1, 13, 11, 130, 40),
];

/// Observed: at most 4e-7 of the largest output on these cases, where the direct f32 sum is off by
/// up to 1e-6 (f32's unit roundoff is 6e-8).
/// A wrong sign or coefficient anywhere in the transforms is off by far more than 1e-3.
const TOLERANCE: f64 = 2e-6;

#[test]
fn winograd_forward_matches_the_direct_convolution() {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for (n, h, w, c_in, c_out) in CASES {
        let xs = Shape4::new(n, h, w, c_in);
        let p = ConvParams::square(c_in, c_out, 3, 1, 1);
        assert!(conv::winograd_suits(&p));
        let (x, wt) = (random(&mut r, xs.len()), random(&mut r, p.weight_len()));
        let want = direct_f64(&x, xs, &wt, &p);
        let mut got = vec![f32::NAN; want.len()];
        conv::conv2d_fwd_winograd(&x, xs, &wt, &p, &mut got);
        let err = relative_error(&got, &want);
        eprintln!("{xs} {c_in}->{c_out}: Winograd relative error {err:.2e}");
        assert!(
            err <= TOLERANCE,
            "{xs} {c_in}->{c_out}: relative error {err:.2e} > {TOLERANCE:.0e}"
        );

        // The direct f32 forward on the same data, for scale: the two paths round differently
        // but about as much.
        let mut direct = vec![0.0f32; want.len()];
        conv::conv2d_fwd(&x, xs, &wt, &p, None, &mut direct);
        eprintln!(
            "{xs} {c_in}->{c_out}: direct relative error {:.2e}",
            relative_error(&direct, &want)
        );
    }
}

#[test]
fn inference_forward_applies_bias_folded_batch_norm_residual_and_relu_after_winograd() {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(12);
    for (n, h, w, c_in, c_out) in CASES {
        let xs = Shape4::new(n, h, w, c_in);
        let p = ConvParams::square(c_in, c_out, 3, 1, 1);
        let (x, wt) = (random(&mut r, xs.len()), random(&mut r, p.weight_len()));
        let (bias, scale, shift) = (random(&mut r, c_out), random(&mut r, c_out), random(&mut r, c_out));
        let residual = random(&mut r, p.out_shape(xs).len());
        let conv = direct_f64(&x, xs, &wt, &p);
        for (with_residual, relu) in [(false, false), (false, true), (true, true)] {
            let want: Vec<f64> = conv
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let k = i % c_out;
                    let mut y = (v + bias[k] as f64) * scale[k] as f64 + shift[k] as f64;
                    if with_residual {
                        y += residual[i] as f64;
                    }
                    if relu {
                        y = y.max(0.0);
                    }
                    y
                })
                .collect();
            let affine = Affine {
                scale: &scale,
                shift: &shift,
                residual: with_residual.then_some(residual.as_slice()),
                relu,
            };
            let mut got = vec![f32::NAN; want.len()];
            conv::conv2d_affine_fwd(&x, xs, &wt, &p, Some(&bias), affine, &mut got);
            let err = relative_error(&got, &want);
            assert!(
                err <= TOLERANCE,
                "{xs} {c_in}->{c_out} residual {with_residual} relu {relu}: relative error {err:.2e}"
            );
        }
    }
}

#[test]
fn winograd_in_f64_agrees_with_the_f64_definition() {
    // The baseline tile in f64: the transforms themselves, with rounding far below f32's.
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(13);
    let (xs, p) = (Shape4::new(2, 7, 6, 24), ConvParams::square(24, 19, 3, 1, 1));
    let (x, wt) = (random(&mut r, xs.len()), random(&mut r, p.weight_len()));
    let want = direct_f64(&x, xs, &wt, &p);
    let (x64, w64): (Vec<f64>, Vec<f64>) = (
        x.iter().map(|&v| v as f64).collect(),
        wt.iter().map(|&v| v as f64).collect(),
    );
    let mut got = vec![f64::NAN; want.len()];
    conv::conv2d_fwd_winograd(&x64, xs, &w64, &p, &mut got);
    let worst = got.iter().zip(&want).fold(0.0f64, |m, (g, w)| m.max((g - w).abs()));
    assert!(worst < 1e-12, "f64 Winograd differs from the definition by {worst:.2e}");
}
