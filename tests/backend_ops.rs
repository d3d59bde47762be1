//! Every CPU op against an independent naive f64 implementation (forward), and every backward
//! against central finite differences of that naive forward in f64.
//!
//! The scalar checked is `L = sum(y * r)` for a random `r`: its gradient with respect to the
//! inputs is exactly what backward computes from `dy = r`.
use cephalo::backend::cpu::batchnorm::BnForward;
use cephalo::backend::cpu::{batchnorm, concat, conv, elementwise, pool, resample};
use cephalo::backend::{
    BnGrads, BnParams, BnRunning, BnWeights, ConvParams, GradOut, PoolParams, Shape4, UpsampleMode,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn random(r: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
}

/// Random operands of a convolution test, drawn in this order: the input (`xs`), the weights
/// (of `p`) and the output gradient (`ys`).
fn conv_operands(r: &mut ChaCha8Rng, xs: Shape4, p: &ConvParams, ys: Shape4) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    (random(r, xs.len()), random(r, p.weight_len()), random(r, ys.len()))
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// `max |a - b| / max(max |b|, 1e-3)`.
fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let scale = b.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    a.iter().zip(b).map(|(&x, &y)| (x as f64 - y).abs()).fold(0.0, f64::max) / scale
}

fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    let e = rel_err(got, want);
    assert!(e < tol, "{what}: relative error {e:.3e} >= {tol:.0e}");
}

/// Central differences of `loss` at `x` in f64.
fn fd_grad(x: &[f64], loss: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let h = 1e-5;
    let mut v = x.to_vec();
    (0..x.len())
        .map(|i| {
            v[i] = x[i] + h;
            let up = loss(&v);
            v[i] = x[i] - h;
            let down = loss(&v);
            v[i] = x[i];
            (up - down) / (2.0 * h)
        })
        .collect()
}

fn dot(a: &[f64], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, &y)| x * y as f64).sum()
}

fn idx(s: Shape4, n: usize, h: usize, w: usize, c: usize) -> usize {
    ((n * s.h + h) * s.w + w) * s.c + c
}

// ---------- naive references (f64, straight from the definitions) ----------

/// The taps `(r, s)` of a `kh` x `kw` window anchored at `(a, b)` with the given stride and
/// padding that land inside an `h` x `w` image, with the pixel each lands on: `(r, s, i, j)`, `r`
/// then `s` ascending.
fn taps(
    (kh, kw, stride, pad): (usize, usize, usize, usize),
    (a, b): (usize, usize),
    (h, w): (usize, usize),
) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    (0..kh)
        .flat_map(move |r| (0..kw).map(move |s| (r, s)))
        .filter_map(move |(r, s)| {
            let i = (a * stride + r).checked_sub(pad)?;
            let j = (b * stride + s).checked_sub(pad)?;
            (i < h && j < w).then_some((r, s, i, j))
        })
}

fn conv_naive(x: &[f64], xs: Shape4, w: &[f64], p: &ConvParams, bias: Option<&[f64]>) -> Vec<f64> {
    let ys = p.out_shape(xs);
    let mut y = vec![0.0; ys.len()];
    for n in 0..ys.n {
        for oh in 0..ys.h {
            for ow in 0..ys.w {
                for k in 0..p.c_out {
                    let mut acc = bias.map_or(0.0, |b| b[k]);
                    for (r, s, ih, iw) in taps((p.kh, p.kw, p.stride, p.pad), (oh, ow), (xs.h, xs.w)) {
                        for c in 0..p.c_in {
                            acc += x[idx(xs, n, ih, iw, c)] * w[((k * p.kh + r) * p.kw + s) * p.c_in + c];
                        }
                    }
                    y[idx(ys, n, oh, ow, k)] = acc;
                }
            }
        }
    }
    y
}

/// Transposed convolution by its scatter definition; `w` is `[c_in][kh][kw][c_out]`.
fn conv_t_naive(x: &[f64], xs: Shape4, w: &[f64], p: &ConvParams) -> Vec<f64> {
    let ys = p.transposed_out_shape(xs);
    let mut y = vec![0.0; ys.len()];
    for n in 0..xs.n {
        for ih in 0..xs.h {
            for iw in 0..xs.w {
                for (r, s, oh, ow) in taps((p.kh, p.kw, p.stride, p.pad), (ih, iw), (ys.h, ys.w)) {
                    for ci in 0..p.c_in {
                        for co in 0..p.c_out {
                            y[idx(ys, n, oh, ow, co)] +=
                                x[idx(xs, n, ih, iw, ci)] * w[((ci * p.kh + r) * p.kw + s) * p.c_out + co];
                        }
                    }
                }
            }
        }
    }
    y
}

fn bn_train_naive(x: &[f64], xs: Shape4, gamma: &[f64], beta: &[f64], relu: bool) -> Vec<f64> {
    let m = xs.pixels() as f64;
    let mut y = vec![0.0; x.len()];
    for c in 0..xs.c {
        let vals: Vec<f64> = (0..xs.pixels()).map(|p| x[p * xs.c + c]).collect();
        let mean = vals.iter().sum::<f64>() / m;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / m;
        for (p, v) in vals.iter().enumerate() {
            let o = gamma[c] * (v - mean) / (var + 1e-5).sqrt() + beta[c];
            y[p * xs.c + c] = if relu { o.max(0.0) } else { o };
        }
    }
    y
}

fn upsample_naive(x: &[f64], xs: Shape4, f: usize, mode: UpsampleMode) -> Vec<f64> {
    let ys = Shape4 {
        h: xs.h * f,
        w: xs.w * f,
        ..xs
    };
    let mut y = vec![0.0; ys.len()];
    // PyTorch's source coordinate for align_corners=False, clamped below at 0.
    let src = |o: usize, n_in: usize| -> (usize, usize, f64) {
        let s = ((o as f64 + 0.5) / f as f64 - 0.5).max(0.0);
        let i0 = (s.floor() as usize).min(n_in - 1);
        (i0, (i0 + 1).min(n_in - 1), s - i0 as f64)
    };
    for n in 0..ys.n {
        for oh in 0..ys.h {
            for ow in 0..ys.w {
                for c in 0..ys.c {
                    y[idx(ys, n, oh, ow, c)] = match mode {
                        UpsampleMode::Nearest => x[idx(xs, n, oh / f, ow / f, c)],
                        UpsampleMode::Bilinear => {
                            let (h0, h1, lh) = src(oh, xs.h);
                            let (w0, w1, lw) = src(ow, xs.w);
                            let g = |h, w| x[idx(xs, n, h, w, c)];
                            (1.0 - lh) * ((1.0 - lw) * g(h0, w0) + lw * g(h0, w1))
                                + lh * ((1.0 - lw) * g(h1, w0) + lw * g(h1, w1))
                        }
                    };
                }
            }
        }
    }
    y
}

fn maxpool_naive(x: &[f64], xs: Shape4, p: &PoolParams) -> Vec<f64> {
    let ys = p.out_shape(xs);
    let mut y = vec![f64::NEG_INFINITY; ys.len()];
    for n in 0..ys.n {
        for oh in 0..ys.h {
            for ow in 0..ys.w {
                for c in 0..ys.c {
                    for (_, _, ih, iw) in taps((p.k, p.k, p.stride, p.pad), (oh, ow), (xs.h, xs.w)) {
                        let v = x[idx(xs, n, ih, iw, c)];
                        let o = &mut y[idx(ys, n, oh, ow, c)];
                        *o = o.max(v);
                    }
                }
            }
        }
    }
    y
}

// ---------- convolution ----------

/// Random geometries: odd sizes, strides 1 and 2 on odd inputs, 1x1, 7x7.
fn conv_cases() -> Vec<(Shape4, ConvParams)> {
    vec![
        (Shape4::new(2, 5, 7, 3), ConvParams::square(3, 4, 3, 1, 1)),
        (Shape4::new(1, 7, 9, 5), ConvParams::square(5, 6, 3, 2, 1)),
        (Shape4::new(2, 6, 5, 8), ConvParams::square(8, 3, 1, 1, 0)),
        (Shape4::new(1, 7, 7, 4), ConvParams::square(4, 5, 1, 2, 0)),
        (Shape4::new(1, 11, 9, 2), ConvParams::square(2, 3, 7, 2, 3)),
        (
            Shape4::new(1, 6, 6, 3),
            ConvParams {
                c_in: 3,
                c_out: 2,
                kh: 3,
                kw: 1,
                stride: 1,
                pad: 0,
            },
        ),
    ]
}

/// A random square convolution: kernel 1 to 5, channels and stride from the ranges, padding up
/// to `max_pad(k)`, 1 or 2 images a little larger than the kernel.
fn random_conv_case(
    r: &mut ChaCha8Rng,
    channels: std::ops::Range<usize>,
    strides: std::ops::Range<usize>,
    max_pad: impl Fn(usize) -> usize,
) -> (Shape4, ConvParams) {
    let k = [1, 2, 3, 4, 5][r.random_range(0..5)];
    let (c_in, c_out) = (r.random_range(channels.clone()), r.random_range(channels));
    let stride = r.random_range(strides);
    let pad = r.random_range(0..=max_pad(k));
    let xs = Shape4::new(
        r.random_range(1..3),
        r.random_range(k..k + 9),
        r.random_range(k..k + 9),
        c_in,
    );
    (xs, ConvParams::square(c_in, c_out, k, stride, pad))
}

#[test]
fn conv2d_forward_matches_naive_on_random_geometries() {
    let mut r = rng(1);
    let mut cases = conv_cases();
    // A 24x24 branch as in HRNet's 1/32 resolution at 768, and many random small ones.
    cases.push((Shape4::new(1, 24, 24, 16), ConvParams::square(16, 8, 3, 1, 1)));
    for _ in 0..20 {
        cases.push(random_conv_case(&mut r, 1..9, 1..3, |k| k / 2));
    }
    for (xs, p) in cases {
        let x = random(&mut r, xs.len());
        let w = random(&mut r, p.weight_len());
        let b = random(&mut r, p.c_out);
        let mut y = vec![f32::NAN; p.out_shape(xs).len()]; // poisoned: every element must be written
        conv::conv2d_fwd(&x, xs, &w, &p, Some(&b), &mut y);
        let want = conv_naive(&f64s(&x), xs, &f64s(&w), &p, Some(&f64s(&b)));
        assert_close(&format!("conv {xs} {p:?}"), &y, &want, 1e-5);
        conv::conv2d_fwd(&x, xs, &w, &p, None, &mut y);
        assert_close(
            "conv without bias",
            &y,
            &conv_naive(&f64s(&x), xs, &f64s(&w), &p, None),
            1e-5,
        );
    }
}

#[test]
fn large_tiled_conv_matches_naive() {
    // More pixels than one tile holds, so several tiles run in parallel.
    let mut r = rng(2);
    let xs = Shape4::new(1, 40, 37, 12);
    let p = ConvParams::square(12, 10, 3, 1, 1);
    let (x, w) = (random(&mut r, xs.len()), random(&mut r, p.weight_len()));
    let mut y = vec![f32::NAN; p.out_shape(xs).len()];
    conv::conv2d_fwd(&x, xs, &w, &p, None, &mut y);
    assert_close("tiled conv", &y, &conv_naive(&f64s(&x), xs, &f64s(&w), &p, None), 1e-5);
}

/// The inference forward's Winograd F(2x2, 3x3) path (docs/maths.md#winograd-convolution),
/// relative to the largest output. Observed: at most 4e-7, where the direct f32 sum is off by up
/// to 1e-6 (f32's unit roundoff is 6e-8); a wrong sign or coefficient in a transform is off by
/// order 1.
const WINOGRAD_TOLERANCE: f64 = 2e-6;

#[test]
fn winograd_inference_forward_matches_naive() {
    // (n, h, w, c_in, c_out): border tiles cut in both directions, c_in below, at and above 16
    // and not a multiple of 4, c_out taking 8- and 16-lane blocks with padding lanes.
    let cases = [
        (1, 8, 8, 8, 8),
        (2, 7, 5, 19, 24),
        (1, 6, 9, 32, 32),
        (1, 5, 4, 64, 19),
        (3, 3, 3, 21, 17),
        (1, 13, 11, 130, 40),
    ];
    let mut r = rng(11);
    for (n, h, w, c_in, c_out) in cases {
        let (xs, p) = (Shape4::new(n, h, w, c_in), ConvParams::square(c_in, c_out, 3, 1, 1));
        assert!(conv::winograd_suits(&p));
        let (x, wt, residual) = conv_operands(&mut r, xs, &p, p.out_shape(xs));
        let (bias, scale, shift) = (random(&mut r, c_out), random(&mut r, c_out), random(&mut r, c_out));
        let plain = conv_naive(&f64s(&x), xs, &f64s(&wt), &p, None);
        let mut got = vec![f32::NAN; plain.len()]; // poisoned: every element must be written
        conv::conv2d_fwd_winograd(&x, xs, &wt, &p, &mut got);
        assert_close(&format!("Winograd {xs} {p:?}"), &got, &plain, WINOGRAD_TOLERANCE);

        // Through conv2d_affine_fwd: bias, folded batch norm, residual and ReLU after the sum.
        for (with_residual, relu) in [(false, false), (false, true), (true, true)] {
            let want: Vec<f64> = plain
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let k = i % c_out;
                    let y = (v + bias[k] as f64) * scale[k] as f64 + shift[k] as f64;
                    let y = if with_residual { y + residual[i] as f64 } else { y };
                    if relu {
                        y.max(0.0)
                    } else {
                        y
                    }
                })
                .collect();
            let affine = conv::Affine {
                scale: &scale,
                shift: &shift,
                residual: with_residual.then_some(residual.as_slice()),
                relu,
            };
            got.fill(f32::NAN);
            conv::conv2d_affine_fwd(&x, xs, &wt, &p, Some(&bias), affine, &mut got);
            let what = format!("Winograd {xs} {p:?} + affine, residual {with_residual}, relu {relu}");
            assert_close(&what, &got, &want, WINOGRAD_TOLERANCE);
        }
    }

    // In f64 (the baseline tile) only the transforms' own rounding is left: far below f32's.
    let (xs, p) = (Shape4::new(2, 7, 6, 24), ConvParams::square(24, 19, 3, 1, 1));
    let (x, wt) = (f64s(&random(&mut r, xs.len())), f64s(&random(&mut r, p.weight_len())));
    let want = conv_naive(&x, xs, &wt, &p, None);
    let mut got = vec![f64::NAN; want.len()];
    conv::conv2d_fwd_winograd(&x, xs, &wt, &p, &mut got);
    let worst = got.iter().zip(&want).fold(0.0f64, |m, (g, w)| m.max((g - w).abs()));
    assert!(worst < 1e-12, "f64 Winograd differs from the definition by {worst:.2e}");
}

#[test]
fn concatenated_1x1_convolution_without_the_concatenation_matches_naive() {
    // HRNet's head: a full-size input and smaller ones upsampled by 2 and 4 (bilinear), batch 2,
    // channel counts off the vector width; enough rows for several bands of the output (bands
    // of 256 KiB: 25 rows of 64 x 40 values), one of them across the two images.
    let mut r = rng(14);
    let parts = [
        Shape4::new(2, 48, 64, 5),
        Shape4::new(2, 24, 32, 9),
        Shape4::new(2, 12, 16, 18),
    ];
    let c_in: usize = parts.iter().map(|s| s.c).sum();
    for (c_out, relu) in [(40, true), (19, false)] {
        let p = ConvParams::square(c_in, c_out, 1, 1, 0);
        let xs: Vec<Vec<f32>> = parts.iter().map(|s| random(&mut r, s.len())).collect();
        let w = random(&mut r, p.weight_len());
        let (bias, scale, shift) = (random(&mut r, c_out), random(&mut r, c_out), random(&mut r, c_out));
        // The definition: upsample, concatenate along the channels, convolve, affine (+ ReLU).
        let ups: Vec<(Vec<f64>, usize)> = parts
            .iter()
            .zip(&xs)
            .map(|(s, x)| {
                (
                    upsample_naive(&f64s(x), *s, parts[0].h / s.h, UpsampleMode::Bilinear),
                    s.c,
                )
            })
            .collect();
        let cs = Shape4 { c: c_in, ..parts[0] };
        let mut cat = Vec::with_capacity(cs.len());
        for px in 0..cs.pixels() {
            for (u, c) in &ups {
                cat.extend_from_slice(&u[px * c..(px + 1) * c]);
            }
        }
        let want: Vec<f64> = conv_naive(&cat, cs, &f64s(&w), &p, Some(&f64s(&bias)))
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let y = v * scale[i % c_out] as f64 + shift[i % c_out] as f64;
                if relu {
                    y.max(0.0)
                } else {
                    y
                }
            })
            .collect();
        let inputs: Vec<(&[f32], Shape4)> = xs.iter().map(Vec::as_slice).zip(parts).collect();
        let affine = conv::Affine {
            scale: &scale,
            shift: &shift,
            residual: None,
            relu,
        };
        let mut got = vec![f32::NAN; want.len()];
        conv::conv1x1_concat_affine_fwd(&inputs, (&w, &p), Some(&bias), affine, &mut got);
        assert_close(
            &format!("split 1x1 convolution -> {c_out}, relu {relu}"),
            &got,
            &want,
            1e-5,
        );
    }
}

#[test]
fn conv2d_backward_matches_finite_differences() {
    let mut r = rng(3);
    for (xs, p) in conv_cases() {
        let ys = p.out_shape(xs);
        let (x, w, b) = (
            random(&mut r, xs.len()),
            random(&mut r, p.weight_len()),
            random(&mut r, p.c_out),
        );
        let dy = random(&mut r, ys.len());
        let (x64, w64, b64) = (f64s(&x), f64s(&w), f64s(&b));
        let what = format!("conv {xs} {p:?}");

        let mut dx = vec![f32::NAN; xs.len()];
        conv::conv2d_dgrad(&dy, &w, &p, &mut dx, xs, false);
        let want = fd_grad(&x64, |x| dot(&conv_naive(x, xs, &w64, &p, Some(&b64)), &dy));
        assert_close(&format!("{what} dgrad"), &dx, &want, 1e-4);
        // Accumulating adds the same gradient again.
        conv::conv2d_dgrad(&dy, &w, &p, &mut dx, xs, true);
        let twice: Vec<f64> = want.iter().map(|v| 2.0 * v).collect();
        assert_close(&format!("{what} dgrad accumulate"), &dx, &twice, 1e-4);

        let mut dw = vec![f32::NAN; p.weight_len()];
        conv::conv2d_wgrad(&x, xs, &dy, &p, &mut dw);
        let want = fd_grad(&w64, |w| dot(&conv_naive(&x64, xs, w, &p, Some(&b64)), &dy));
        assert_close(&format!("{what} wgrad"), &dw, &want, 1e-4);

        let mut db = vec![f32::NAN; p.c_out];
        conv::conv2d_bias_grad(&dy, ys, &mut db);
        let want = fd_grad(&b64, |b| dot(&conv_naive(&x64, xs, &w64, &p, Some(b)), &dy));
        assert_close(&format!("{what} bias grad"), &db, &want, 1e-4);
    }
}

/// Input and weight gradients of [`conv_naive`] by their definitions: every product of the
/// forward sends `dy[n, oh, ow, k]` back to the input value and weight it multiplied.
fn conv_grads_naive(x: &[f64], xs: Shape4, w: &[f64], p: &ConvParams, dy: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let ys = p.out_shape(xs);
    let (mut dx, mut dw) = (vec![0.0; xs.len()], vec![0.0; p.weight_len()]);
    for n in 0..ys.n {
        for oh in 0..ys.h {
            for ow in 0..ys.w {
                for k in 0..p.c_out {
                    let g = dy[idx(ys, n, oh, ow, k)];
                    for (r, s, ih, iw) in taps((p.kh, p.kw, p.stride, p.pad), (oh, ow), (xs.h, xs.w)) {
                        for c in 0..p.c_in {
                            let (xi, wi) = (idx(xs, n, ih, iw, c), ((k * p.kh + r) * p.kw + s) * p.c_in + c);
                            dx[xi] += g * w[wi];
                            dw[wi] += g * x[xi];
                        }
                    }
                }
            }
        }
    }
    (dx, dw)
}

#[test]
fn conv2d_backward_matches_naive_on_random_geometries() {
    let mut r = rng(5);
    let mut cases = conv_cases();
    // Wide enough for several 16-lane blocks and several weight-gradient pixel chunks.
    cases.push((Shape4::new(2, 40, 36, 24), ConvParams::square(24, 40, 3, 1, 1)));
    cases.push((Shape4::new(1, 33, 31, 18), ConvParams::square(18, 32, 3, 2, 1)));
    for _ in 0..30 {
        cases.push(random_conv_case(&mut r, 1..20, 1..4, |k| k - 1));
    }
    for (xs, p) in cases {
        let ys = p.out_shape(xs);
        let (x, w, dy) = conv_operands(&mut r, xs, &p, ys);
        let (want_dx, want_dw) = conv_grads_naive(&f64s(&x), xs, &f64s(&w), &p, &f64s(&dy));
        let what = format!("conv {xs} {p:?}");
        let mut dx = vec![f32::NAN; xs.len()]; // poisoned: every element must be written
        conv::conv2d_dgrad(&dy, &w, &p, &mut dx, xs, false);
        assert_close(&format!("{what} dgrad"), &dx, &want_dx, 1e-5);
        let mut dw = vec![f32::NAN; p.weight_len()];
        conv::conv2d_wgrad(&x, xs, &dy, &p, &mut dw);
        assert_close(&format!("{what} wgrad"), &dw, &want_dw, 1e-5);
    }
}

#[test]
fn transposed_conv_forward_and_backward() {
    let mut r = rng(4);
    let cases = [
        (Shape4::new(2, 3, 5, 4), ConvParams::square(4, 3, 4, 2, 1)), // the SimpleBaseline deconv
        (Shape4::new(1, 4, 3, 2), ConvParams::square(2, 5, 3, 2, 1)),
        (Shape4::new(1, 5, 5, 3), ConvParams::square(3, 2, 3, 1, 1)),
    ];
    for (xs, p) in cases {
        let ys = p.transposed_out_shape(xs);
        let (x, w, dy) = conv_operands(&mut r, xs, &p, ys);
        let (x64, w64) = (f64s(&x), f64s(&w));
        let what = format!("conv_transpose {xs} {p:?}");
        let mut y = vec![f32::NAN; ys.len()];
        conv::conv_transpose2d_fwd(&x, xs, &w, &p, &mut y);
        assert_close(&what, &y, &conv_t_naive(&x64, xs, &w64, &p), 1e-5);

        let mut dx = vec![f32::NAN; xs.len()];
        conv::conv_transpose2d_dgrad(&dy, &w, &p, &mut dx, xs, false);
        let want = fd_grad(&x64, |x| dot(&conv_t_naive(x, xs, &w64, &p), &dy));
        assert_close(&format!("{what} dgrad"), &dx, &want, 1e-4);

        let mut dw = vec![f32::NAN; p.weight_len()];
        conv::conv_transpose2d_wgrad(&x, xs, &dy, &p, &mut dw);
        let want = fd_grad(&w64, |w| dot(&conv_t_naive(&x64, xs, w, &p), &dy));
        assert_close(&format!("{what} wgrad"), &dw, &want, 1e-4);
    }
}

// ---------- batch norm ----------

#[test]
fn batchnorm_train_forward_backward_and_running_stats() {
    let mut r = rng(5);
    for (xs, relu) in [
        (Shape4::new(2, 3, 5, 4), false),
        (Shape4::new(3, 5, 3, 3), true),
        (Shape4::new(1, 24, 24, 2), true),
    ] {
        let c = xs.c;
        let x: Vec<f32> = random(&mut r, xs.len()).iter().map(|v| 3.0 * v + 0.5).collect();
        let gamma: Vec<f32> = random(&mut r, c).iter().map(|v| v + 1.5).collect();
        let beta = random(&mut r, c);
        let (x64, g64, b64) = (f64s(&x), f64s(&gamma), f64s(&beta));
        let bp = BnParams::default();
        let mut y = vec![f32::NAN; xs.len()];
        let mut saved = vec![f32::NAN; 2 * c];
        let (mut rm, mut rv) = (vec![0.5f32; c], vec![2.0f32; c]);
        let bn = BnWeights::new(gamma.as_slice(), beta.as_slice(), bp);
        let running = BnRunning::new(rm.as_mut_slice(), rv.as_mut_slice());
        batchnorm::bn_fwd_train(&x, xs, bn, relu, &mut y, &mut saved, running);
        let want = bn_train_naive(&x64, xs, &g64, &b64, relu);
        assert_close("bn train forward", &y, &want, 1e-5);

        // Running statistics: momentum 0.1 towards the batch mean and the unbiased variance.
        let m = xs.pixels() as f64;
        for ch in 0..c {
            let vals: Vec<f64> = (0..xs.pixels()).map(|p| x64[p * c + ch]).collect();
            let mean = vals.iter().sum::<f64>() / m;
            let var_unbiased = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (m - 1.0);
            assert!((rm[ch] as f64 - (0.9 * 0.5 + 0.1 * mean)).abs() < 1e-5);
            assert!((rv[ch] as f64 - (0.9 * 2.0 + 0.1 * var_unbiased)).abs() < 1e-4);
        }

        // Recomputing from the saved statistics reproduces the output exactly.
        let mut y2 = vec![f32::NAN; xs.len()];
        batchnorm::bn_apply_saved(&x, xs, bn, &saved, relu, &mut y2);
        assert_eq!(y, y2);

        let dy = random(&mut r, xs.len());
        let (mut dx, mut dg, mut db) = (vec![f32::NAN; xs.len()], vec![f32::NAN; c], vec![f32::NAN; c]);
        let fwd = BnForward {
            x: &x,
            xs,
            bn,
            saved: &saved,
        };
        let out = GradOut::new(dx.as_mut_slice(), false);
        let grads = BnGrads::new(dg.as_mut_slice(), db.as_mut_slice());
        batchnorm::bn_bwd(&dy, fwd, relu, out, grads);
        let want = fd_grad(&x64, |x| dot(&bn_train_naive(x, xs, &g64, &b64, relu), &dy));
        assert_close("bn dx", &dx, &want, 1e-4);
        let want = fd_grad(&g64, |g| dot(&bn_train_naive(&x64, xs, g, &b64, relu), &dy));
        assert_close("bn dgamma", &dg, &want, 1e-4);
        let want = fd_grad(&b64, |b| dot(&bn_train_naive(&x64, xs, &g64, b, relu), &dy));
        assert_close("bn dbeta", &db, &want, 1e-4);
    }
}

#[test]
fn batchnorm_eval_uses_running_statistics() {
    let mut r = rng(6);
    let xs = Shape4::new(2, 3, 3, 3);
    let x = random(&mut r, xs.len());
    let (gamma, beta) = ([1.5f32, -0.5, 2.0], [0.1f32, 0.2, -0.3]);
    let (rm, rv) = ([0.2f32, -0.1, 0.0], [0.5f32, 2.0, 1.0]);
    let mut y = vec![f32::NAN; xs.len()];
    let bn = BnWeights::new(gamma.as_slice(), beta.as_slice(), BnParams::default());
    let running = BnRunning::new(rm.as_slice(), rv.as_slice());
    batchnorm::bn_fwd_eval(&x, xs, bn, running, true, &mut y);
    let want: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = i % 3;
            let o = gamma[c] as f64 * (v as f64 - rm[c] as f64) / (rv[c] as f64 + 1e-5).sqrt() + beta[c] as f64;
            o.max(0.0)
        })
        .collect();
    assert_close("bn eval", &y, &want, 1e-6);
}

// ---------- elementwise ----------

#[test]
fn relu_add_and_add_relu_with_backward() {
    let mut r = rng(7);
    let n = 70_001; // beyond the parallel threshold, with a ragged tail
    let (a, b, dy) = (random(&mut r, n), random(&mut r, n), random(&mut r, n));
    let mut y = vec![f32::NAN; n];
    elementwise::relu_fwd(&a, &mut y);
    assert!(y.iter().zip(&a).all(|(&y, &a)| y == a.max(0.0)));
    let mut dx = vec![f32::NAN; n];
    elementwise::relu_bwd(&y, &dy, &mut dx, false);
    assert!((0..n).all(|i| dx[i] == if a[i] > 0.0 { dy[i] } else { 0.0 }));

    elementwise::add_fwd(&a, &b, &mut y);
    assert!((0..n).all(|i| y[i] == a[i] + b[i]));
    let mut da = vec![1.0f32; n];
    elementwise::add_bwd(&dy, &mut da, true);
    assert!((0..n).all(|i| da[i] == 1.0 + dy[i]));

    elementwise::add_relu_fwd(&a, &b, &mut y);
    assert!((0..n).all(|i| y[i] == (a[i] + b[i]).max(0.0)));
    elementwise::add_relu_bwd(&y, &dy, &mut da, false);
    assert!((0..n).all(|i| da[i] == if a[i] + b[i] > 0.0 { dy[i] } else { 0.0 }));

    // Finite differences on a small add_relu, f64.
    let (a, b) = (random(&mut r, 50), random(&mut r, 50));
    let dy = random(&mut r, 50);
    let mut y = vec![0.0; 50];
    elementwise::add_relu_fwd(&a, &b, &mut y);
    let mut da = vec![f32::NAN; 50];
    elementwise::add_relu_bwd(&y, &dy, &mut da, false);
    let b64 = f64s(&b);
    let want = fd_grad(&f64s(&a), |a| {
        let y: Vec<f64> = a.iter().zip(&b64).map(|(x, y)| (x + y).max(0.0)).collect();
        dot(&y, &dy)
    });
    assert_close("add_relu da", &da, &want, 1e-6);
}

// ---------- resample ----------

#[test]
fn upsample_forward_and_backward_both_modes() {
    let mut r = rng(8);
    for mode in [UpsampleMode::Nearest, UpsampleMode::Bilinear] {
        for (xs, f) in [
            (Shape4::new(2, 3, 5, 3), 2),
            (Shape4::new(1, 3, 3, 2), 4),
            (Shape4::new(1, 2, 3, 1), 8),
        ] {
            let ys = Shape4 {
                h: xs.h * f,
                w: xs.w * f,
                ..xs
            };
            let x = random(&mut r, xs.len());
            let mut y = vec![f32::NAN; ys.len()];
            resample::upsample_fwd(&x, xs, mode, &mut y, ys);
            let what = format!("upsample {mode:?} {xs} x{f}");
            assert_close(&what, &y, &upsample_naive(&f64s(&x), xs, f, mode), 1e-6);
            let dy = random(&mut r, ys.len());
            let mut dx = vec![f32::NAN; xs.len()];
            resample::upsample_bwd(&dy, ys, mode, &mut dx, xs, false);
            let want = fd_grad(&f64s(&x), |x| dot(&upsample_naive(x, xs, f, mode), &dy));
            assert_close(&format!("{what} backward"), &dx, &want, 1e-5);
        }
    }
}

// ---------- concat ----------

#[test]
fn concat_forward_and_backward() {
    let mut r = rng(9);
    let pixels = 2 * 3 * 5;
    let widths = [3usize, 1, 4];
    let xs: Vec<Vec<f32>> = widths.iter().map(|&w| random(&mut r, pixels * w)).collect();
    let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
    let mut y = vec![f32::NAN; pixels * 8];
    concat::concat_fwd(&refs, &widths, &mut y);
    for p in 0..pixels {
        let want: Vec<f32> = (0..3)
            .flat_map(|i| xs[i][p * widths[i]..(p + 1) * widths[i]].to_vec())
            .collect();
        assert_eq!(&y[p * 8..(p + 1) * 8], &want[..]);
    }
    // Backward slices the gradient back; the second input accumulates onto ones.
    let dy = random(&mut r, pixels * 8);
    let (mut d0, mut d1, mut d2) = (
        vec![f32::NAN; pixels * 3],
        vec![1.0f32; pixels],
        vec![f32::NAN; pixels * 4],
    );
    concat::concat_bwd(
        &dy,
        &widths,
        &mut [Some((&mut d0, false)), Some((&mut d1, true)), Some((&mut d2, false))],
    );
    for p in 0..pixels {
        assert_eq!(&d0[p * 3..p * 3 + 3], &dy[p * 8..p * 8 + 3]);
        assert_eq!(d1[p], 1.0 + dy[p * 8 + 3]);
        assert_eq!(&d2[p * 4..p * 4 + 4], &dy[p * 8 + 4..p * 8 + 8]);
    }
}

// ---------- pool ----------

#[test]
fn maxpool_forward_and_backward() {
    let mut r = rng(10);
    for (xs, p) in [
        (Shape4::new(2, 7, 9, 3), PoolParams::new(3, 2, 1)),
        (Shape4::new(1, 6, 6, 2), PoolParams::new(2, 2, 0)),
    ] {
        let ys = p.out_shape(xs);
        let x = random(&mut r, xs.len());
        let mut y = vec![f32::NAN; ys.len()];
        pool::maxpool_fwd(&x, xs, &p, &mut y);
        assert_close("maxpool", &y, &maxpool_naive(&f64s(&x), xs, &p), 1e-12);
        let dy = random(&mut r, ys.len());
        let mut dx = vec![f32::NAN; xs.len()];
        pool::maxpool_bwd(&x, xs, &dy, &p, &mut dx, false);
        let want = fd_grad(&f64s(&x), |x| dot(&maxpool_naive(x, xs, &p), &dy));
        assert_close("maxpool backward", &dx, &want, 1e-6);
    }
}
