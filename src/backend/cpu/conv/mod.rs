//! CPU twins of `kernels/conv.cu`: conv2d forward, input gradient (dgrad), weight gradient
//! (wgrad), bias gradient, and the transposed convolution built from them.
//!
//! Every convolution is an implicit GEMM on bounded tiles: a tile of output pixels gathers its
//! patch rows (`kh*kw*c_in` values each, zeros where the kernel hangs over the border) into a
//! small buffer of at most `TILE_FLOATS` floats that stays in cache, and one
//! `matrixmultiply::sgemm` multiplies it by the KRSC weight matrix. Tiles run in parallel with
//! rayon; the whole-image im2col matrix is never built. 1x1 stride-1 convolutions skip the
//! gather: NHWC activations already are the `[pixels x c]` matrix.
//!
//! The input gradient is computed as a *gather* (each input pixel collects the output gradients
//! of the taps that read it), so tiles write disjoint rows and need no atomics or locks.
use rayon::prelude::*;

use super::Real;
use crate::backend::{ConvParams, Shape4};

/// Upper bound on one tile's patch buffer (1 MiB of f32). Larger tiles amortise sgemm's packing
/// of the weights and its call overhead; measured on HRNet's 3x3 convolutions, 1 MiB ran 64- to
/// 256-channel layers 15-40% faster than 256 KiB, and 2 MiB gained nothing more.
const TILE_FLOATS: usize = 256 * 1024;

/// Pixels per tile for rows of `cols` floats, out of `pixels` in all: bounded by the
/// buffer size and small enough that every thread gets at least two tiles.
fn tile_pixels(cols: usize, pixels: usize) -> usize {
    let by_buffer = (TILE_FLOATS / cols.max(1)).clamp(8, 2048);
    let by_threads = pixels.div_ceil(2 * rayon::current_num_threads()).max(8);
    by_buffer.min(by_threads)
}

/// `c[m x n] = alpha * a[m x k] * b[k x n] + beta * c`, all given by row and column strides.
#[allow(clippy::too_many_arguments)]
fn gemm<T: Real>(
    m: usize,
    k: usize,
    n: usize,
    a: &[T],
    (rsa, csa): (usize, usize),
    b: &[T],
    (rsb, csb): (usize, usize),
    beta: T,
    c: &mut [T],
    rsc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    // The bounds below make the raw-pointer call sound: every element sgemm touches is inside
    // the slices it was given.
    assert!(
        k == 0 || (m - 1) * rsa + (k - 1) * csa < a.len(),
        "gemm: a out of bounds"
    );
    assert!(
        k == 0 || (k - 1) * rsb + (n - 1) * csb < b.len(),
        "gemm: b out of bounds"
    );
    assert!((m - 1) * rsc + n - 1 < c.len(), "gemm: c out of bounds");
    // SAFETY: bounds checked above; `c` is exclusively borrowed, `a` and `b` are shared.
    unsafe {
        T::gemm(
            m,
            k,
            n,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            beta,
            c.as_mut_ptr(),
            rsc as isize,
            1,
        );
    }
}

/// Gathers the patch rows of output pixels `p0..p0+m` into `col` (`m x kh*kw*c_in`).
fn im2col_tile<T: Real>(x: &[T], xs: Shape4, p: &ConvParams, ys: Shape4, p0: usize, m: usize, col: &mut Vec<T>) {
    let c = xs.c;
    let cols = p.patch_len();
    col.clear();
    col.resize(m * cols, T::ZERO);
    for (row, dst) in col.chunks_exact_mut(cols).enumerate() {
        let pix = p0 + row;
        let (n, oh, ow) = (pix / (ys.h * ys.w), (pix / ys.w) % ys.h, pix % ys.w);
        for r in 0..p.kh {
            let ih = (oh * p.stride + r) as isize - p.pad as isize;
            if ih < 0 || ih >= xs.h as isize {
                continue; // stays zero
            }
            for s in 0..p.kw {
                let iw = (ow * p.stride + s) as isize - p.pad as isize;
                if iw < 0 || iw >= xs.w as isize {
                    continue;
                }
                let src = ((n * xs.h + ih as usize) * xs.w + iw as usize) * c;
                let at = (r * p.kw + s) * c;
                dst[at..at + c].copy_from_slice(&x[src..src + c]);
            }
        }
    }
}

fn is_pointwise(p: &ConvParams) -> bool {
    p.kh == 1 && p.kw == 1 && p.stride == 1 && p.pad == 0
}

/// Forward convolution into `y` (shape `p.out_shape(xs)`), overwriting it, or adding to it when
/// `accumulate`; `bias` (c_out values) is added when given.
/// Per-channel `y = max?(y * scale + shift (+ residual))` applied to each output tile while it
/// is in cache; `residual`, when given, has the output's shape (the inference block join).
#[derive(Clone, Copy)]
pub struct Affine<'a, T> {
    pub scale: &'a [T],
    pub shift: &'a [T],
    pub residual: Option<&'a [T]>,
    pub relu: bool,
}

#[allow(clippy::too_many_arguments)]
fn conv_fwd_into<T: Real>(
    x: &[T],
    xs: Shape4,
    w: &[T],
    p: &ConvParams,
    bias: Option<&[T]>,
    y: &mut [T],
    accumulate: bool,
    epilogue: Option<Affine<'_, T>>,
) {
    let ys = p.out_shape(xs);
    assert_eq!(x.len(), xs.len(), "conv2d_fwd: x length");
    assert_eq!(w.len(), p.weight_len(), "conv2d_fwd: weight length");
    assert_eq!(y.len(), ys.len(), "conv2d_fwd: y length");
    let (k, cols) = (p.c_out, p.patch_len());
    // Bound the output tile too: a 1x1 conv to many channels has short patch rows but long outputs.
    let tp = tile_pixels(cols.max(k), ys.pixels());
    let pointwise = is_pointwise(p);
    y.par_chunks_mut(tp * k)
        .enumerate()
        .for_each_init(Vec::new, |col, (t, ytile)| {
            let p0 = t * tp;
            let m = ytile.len() / k;
            let mut beta = if accumulate { T::ONE } else { T::ZERO };
            if let Some(b) = bias {
                for row in ytile.chunks_exact_mut(k) {
                    if accumulate {
                        row.iter_mut().zip(b).for_each(|(v, &bi)| *v = *v + bi);
                    } else {
                        row.copy_from_slice(b);
                    }
                }
                beta = T::ONE;
            }
            let a: &[T] = if pointwise {
                &x[p0 * cols..(p0 + m) * cols]
            } else {
                im2col_tile(x, xs, p, ys, p0, m, col);
                col
            };
            // y_tile[m x k] = patches[m x cols] * W^T, W row-major [k x cols].
            gemm(m, cols, k, a, (cols, 1), w, (1, cols), beta, ytile, k);
            if let Some(e) = epilogue {
                for (r, row) in ytile.chunks_exact_mut(k).enumerate() {
                    let res = e.residual.map(|res| &res[(p0 + r) * k..(p0 + r + 1) * k]);
                    for (ch, ((v, &s), &b)) in row.iter_mut().zip(e.scale).zip(e.shift).enumerate() {
                        let o = v.mul_add(s, b);
                        let o = res.map_or(o, |res| o + res[ch]);
                        *v = if e.relu { o.max(T::ZERO) } else { o };
                    }
                }
            }
        });
}

/// Inference fusion of a convolution and the eval-mode batch norm (+ ReLU) after it:
/// `y = act((conv2d(x, w) + bias) * scale + shift)` with the BN folded into `affine` (see
/// [`batchnorm::bn_eval_affine`](super::batchnorm::bn_eval_affine)), and with a residual the
/// block join after it too: `y = relu(... + residual)`. Same result as the ops one after the
/// other, up to rounding, without writing the conv output to memory.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_affine_fwd<T: Real>(
    x: &[T],
    xs: Shape4,
    w: &[T],
    p: &ConvParams,
    bias: Option<&[T]>,
    affine: Affine<'_, T>,
    y: &mut [T],
) {
    assert!(
        affine.scale.len() == p.c_out && affine.shift.len() == p.c_out,
        "conv2d_affine_fwd: affine length"
    );
    if let Some(r) = affine.residual {
        assert_eq!(r.len(), y.len(), "conv2d_affine_fwd: residual length");
    }
    conv_fwd_into(x, xs, w, p, bias, y, false, Some(affine));
}

/// `y = conv2d(x, w) + bias`. `x` is NHWC `xs`, `w` is KRSC, `y` is NHWC `p.out_shape(xs)`.
pub fn conv2d_fwd<T: Real>(x: &[T], xs: Shape4, w: &[T], p: &ConvParams, bias: Option<&[T]>, y: &mut [T]) {
    conv_fwd_into(x, xs, w, p, bias, y, false, None);
}

/// Input gradient: `dx (+)= conv2d_dgrad(dy, w)`, where `dy` has shape `p.out_shape(xs)`.
pub fn conv2d_dgrad<T: Real>(dy: &[T], w: &[T], p: &ConvParams, dx: &mut [T], xs: Shape4, accumulate: bool) {
    let ys = p.out_shape(xs);
    assert_eq!(dy.len(), ys.len(), "conv2d_dgrad: dy length");
    assert_eq!(w.len(), p.weight_len(), "conv2d_dgrad: weight length");
    assert_eq!(dx.len(), xs.len(), "conv2d_dgrad: dx length");
    let (k, c) = (p.c_out, p.c_in);
    let beta = if accumulate { T::ONE } else { T::ZERO };
    if is_pointwise(p) {
        // dx[pixels x c] = dy[pixels x k] * W[k x c]
        let tp = tile_pixels(k.max(c), xs.pixels());
        dx.par_chunks_mut(tp * c)
            .zip(dy.par_chunks(tp * k))
            .for_each(|(dxt, dyt)| {
                gemm(dxt.len() / c, k, c, dyt, (k, 1), w, (c, 1), beta, dxt, c);
            });
        return;
    }
    // Weights regrouped as [(r, s, k) x c] so a gathered row of output gradients multiplies it.
    let taps = p.kh * p.kw;
    let mut wt = vec![T::ZERO; p.weight_len()];
    for ki in 0..k {
        for t in 0..taps {
            let src = (ki * taps + t) * c;
            let dst = (t * k + ki) * c;
            wt[dst..dst + c].copy_from_slice(&w[src..src + c]);
        }
    }
    let cols = taps * k;
    let tp = tile_pixels(cols, xs.pixels());
    dx.par_chunks_mut(tp * c)
        .enumerate()
        .for_each_init(Vec::new, |col: &mut Vec<T>, (t, dxt)| {
            let p0 = t * tp;
            let m = dxt.len() / c;
            col.clear();
            col.resize(m * cols, T::ZERO);
            for (row, dst) in col.chunks_exact_mut(cols).enumerate() {
                let pix = p0 + row;
                let (n, ih, iw) = (pix / (xs.h * xs.w), (pix / xs.w) % xs.h, pix % xs.w);
                for r in 0..p.kh {
                    // Output row oh reads input row oh*stride + r - pad == ih.
                    let num = ih as isize + p.pad as isize - r as isize;
                    if num < 0 || num % p.stride as isize != 0 {
                        continue;
                    }
                    let oh = num as usize / p.stride;
                    if oh >= ys.h {
                        continue;
                    }
                    for s in 0..p.kw {
                        let num = iw as isize + p.pad as isize - s as isize;
                        if num < 0 || num % p.stride as isize != 0 {
                            continue;
                        }
                        let ow = num as usize / p.stride;
                        if ow >= ys.w {
                            continue;
                        }
                        let src = ((n * ys.h + oh) * ys.w + ow) * k;
                        let at = (r * p.kw + s) * k;
                        dst[at..at + k].copy_from_slice(&dy[src..src + k]);
                    }
                }
            }
            gemm(m, cols, c, col, (cols, 1), &wt, (c, 1), beta, dxt, c);
        });
}

/// Weight gradient `dw = sum over pixels of dy^T * patches` (overwrites `dw`, KRSC).
pub fn conv2d_wgrad<T: Real>(x: &[T], xs: Shape4, dy: &[T], p: &ConvParams, dw: &mut [T]) {
    let ys = p.out_shape(xs);
    assert_eq!(x.len(), xs.len(), "conv2d_wgrad: x length");
    assert_eq!(dy.len(), ys.len(), "conv2d_wgrad: dy length");
    assert_eq!(dw.len(), p.weight_len(), "conv2d_wgrad: dw length");
    let (k, cols) = (p.c_out, p.patch_len());
    let pixels = ys.pixels();
    let tp = tile_pixels(cols, pixels);
    let tiles = pixels.div_ceil(tp);
    let pointwise = is_pointwise(p);
    // Each rayon job sums its tiles into a private accumulator; the accumulators are added at
    // the end. Work is split into at most a few chunks per thread so the accumulators stay few.
    let chunks = (rayon::current_num_threads() * 2).min(tiles).max(1);
    let per_chunk = tiles.div_ceil(chunks);
    let total = (0..chunks)
        .into_par_iter()
        .map(|ch| {
            let mut acc = vec![T::ZERO; dw.len()];
            let mut col = Vec::new();
            for t in ch * per_chunk..((ch + 1) * per_chunk).min(tiles) {
                let p0 = t * tp;
                let m = tp.min(pixels - p0);
                let a: &[T] = if pointwise {
                    &x[p0 * cols..(p0 + m) * cols]
                } else {
                    im2col_tile(x, xs, p, ys, p0, m, &mut col);
                    &col
                };
                // acc[k x cols] += dy_tile^T [k x m] * patches [m x cols]
                gemm(
                    k,
                    m,
                    cols,
                    &dy[p0 * k..(p0 + m) * k],
                    (1, k),
                    a,
                    (cols, 1),
                    T::ONE,
                    &mut acc,
                    cols,
                );
            }
            acc
        })
        .reduce_with(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(x, &y)| *x = *x + y);
            a
        });
    match total {
        Some(t) => dw.copy_from_slice(&t),
        None => dw.fill(T::ZERO),
    }
}

/// Bias gradient: `db[k] = sum over pixels of dy[.., k]` (overwrites `db`).
pub fn conv2d_bias_grad<T: Real>(dy: &[T], ys: Shape4, db: &mut [T]) {
    assert_eq!(dy.len(), ys.len(), "conv2d_bias_grad: dy length");
    assert_eq!(db.len(), ys.c, "conv2d_bias_grad: db length");
    let k = ys.c;
    let sums = dy
        .par_chunks(k * 256)
        .map(|chunk| {
            let mut s = vec![0.0f64; k];
            for row in chunk.chunks_exact(k) {
                s.iter_mut().zip(row).for_each(|(a, &v)| *a += v.to_f64());
            }
            s
        })
        .reduce(
            || vec![0.0f64; k],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        );
    db.iter_mut().zip(&sums).for_each(|(d, &s)| *d = T::from_f64(s));
}

/// Transposed convolution `y = conv_transpose2d(x, w)`; `w` is `[c_in][kh][kw][c_out]`, `y` has
/// shape `p.transposed_out_shape(xs)`. It is the input gradient of the adjoint convolution.
pub fn conv_transpose2d_fwd<T: Real>(x: &[T], xs: Shape4, w: &[T], p: &ConvParams, y: &mut [T]) {
    let ys = p.transposed_out_shape(xs);
    conv2d_dgrad(x, w, &p.adjoint(), y, ys, false);
}

/// Input gradient of the transposed convolution: the adjoint convolution's forward.
pub fn conv_transpose2d_dgrad<T: Real>(dy: &[T], w: &[T], p: &ConvParams, dx: &mut [T], xs: Shape4, accumulate: bool) {
    let ys = p.transposed_out_shape(xs);
    conv_fwd_into(dy, ys, w, &p.adjoint(), None, dx, accumulate, None);
}

/// Weight gradient of the transposed convolution (overwrites `dw`, `[c_in][kh][kw][c_out]`).
pub fn conv_transpose2d_wgrad<T: Real>(x: &[T], xs: Shape4, dy: &[T], p: &ConvParams, dw: &mut [T]) {
    let ys = p.transposed_out_shape(xs);
    // In the adjoint convolution dy is the input and x the output gradient.
    conv2d_wgrad(dy, ys, x, &p.adjoint(), dw);
}
