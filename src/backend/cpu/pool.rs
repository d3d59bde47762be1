//! CPU twins of `kernels/pool.cu`: max pooling forward and backward.
//!
//! Padded positions never win. Ties go to the first position in window order (row-major), in
//! forward and backward alike, so the gradient goes where the maximum came from. Backward
//! recomputes the winner from `x` instead of storing indices.
use rayon::prelude::*;

use super::Real;
use crate::backend::{PoolParams, Shape4};

/// Input position (ih, iw) of the maximum of output (n, oh, ow, ch).
fn argmax<T: Real>(x: &[T], xs: Shape4, p: &PoolParams, n: usize, oh: usize, ow: usize, ch: usize) -> (usize, usize) {
    let mut best = (T::ZERO, usize::MAX, usize::MAX);
    for r in 0..p.k {
        let ih = (oh * p.stride + r) as isize - p.pad as isize;
        if ih < 0 || ih >= xs.h as isize {
            continue;
        }
        for s in 0..p.k {
            let iw = (ow * p.stride + s) as isize - p.pad as isize;
            if iw < 0 || iw >= xs.w as isize {
                continue;
            }
            let v = x[((n * xs.h + ih as usize) * xs.w + iw as usize) * xs.c + ch];
            if v > best.0 || best.1 == usize::MAX {
                best = (v, ih as usize, iw as usize);
            }
        }
    }
    (best.1, best.2)
}

/// `y = maxpool(x)`, `y` of shape `p.out_shape(xs)`.
pub fn maxpool_fwd<T: Real>(x: &[T], xs: Shape4, p: &PoolParams, y: &mut [T]) {
    let ys = p.out_shape(xs);
    assert!(
        x.len() == xs.len() && y.len() == ys.len(),
        "maxpool_fwd: length mismatch"
    );
    y.par_chunks_mut(ys.c).enumerate().for_each(|(pix, yp)| {
        let (n, oh, ow) = (pix / (ys.h * ys.w), (pix / ys.w) % ys.h, pix % ys.w);
        for (ch, v) in yp.iter_mut().enumerate() {
            let (ih, iw) = argmax(x, xs, p, n, oh, ow, ch);
            *v = x[((n * xs.h + ih) * xs.w + iw) * xs.c + ch];
        }
    });
}

/// `dx (+)= scatter of dy to the maxima`. Windows overlap, so each image is one serial job.
pub fn maxpool_bwd<T: Real>(x: &[T], xs: Shape4, dy: &[T], p: &PoolParams, dx: &mut [T], accumulate: bool) {
    let ys = p.out_shape(xs);
    assert!(
        x.len() == xs.len() && dx.len() == xs.len() && dy.len() == ys.len(),
        "maxpool_bwd: length mismatch"
    );
    dx.par_chunks_mut(xs.h * xs.w * xs.c).enumerate().for_each(|(n, dxn)| {
        if !accumulate {
            dxn.fill(T::ZERO);
        }
        for oh in 0..ys.h {
            for ow in 0..ys.w {
                for ch in 0..xs.c {
                    let (ih, iw) = argmax(x, xs, p, n, oh, ow, ch);
                    let d = &mut dxn[(ih * xs.w + iw) * xs.c + ch];
                    *d = *d + dy[((n * ys.h + oh) * ys.w + ow) * ys.c + ch];
                }
            }
        }
    });
}
