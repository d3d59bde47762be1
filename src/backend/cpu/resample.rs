//! CPU twins of `kernels/resample.cu`: nearest and bilinear upsampling by an integer factor,
//! forward and backward.
//!
//! Both modes are separable: each output row (and column) is a weighted sum of at most two input
//! rows (columns). The weights live in per-axis tap tables; backward uses the transposed tables,
//! so every input pixel *gathers* its gradient and parallel rows never write the same memory.
use rayon::prelude::*;

use super::simd::{for_each_isa, on_isa};
use super::Real;
use crate::backend::{upsample_shape, Shape4, UpsampleMode};

/// For each destination index, the (source index, weight) pairs it sums. Weights are computed
/// in f32 with the kernel's operations, so the GPU matches this twin bit for bit at any factor
/// (HRNet's factors 2, 4 and 8 give exact weights either way; a factor of 3 does not).
type Taps = Vec<Vec<(usize, f32)>>;

/// Forward taps of one axis: `n_in` inputs upsampled by `factor`.
fn forward_taps(n_in: usize, factor: usize, mode: UpsampleMode) -> Taps {
    (0..n_in * factor)
        .map(|o| match mode {
            UpsampleMode::Nearest => vec![(o / factor, 1.0)],
            UpsampleMode::Bilinear => {
                // Half-pixel centres (align_corners = false), clamped at the low border.
                let src = ((o as f32 + 0.5) / factor as f32 - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(n_in - 1);
                let i1 = (i0 + 1).min(n_in - 1);
                let l1 = src - i0 as f32;
                if i1 == i0 {
                    vec![(i0, 1.0)]
                } else {
                    vec![(i0, 1.0 - l1), (i1, l1)]
                }
            }
        })
        .collect()
}

/// The transpose of `taps`: for each source index, the (destination, weight) pairs reading it.
fn transpose(taps: &Taps, n_src: usize) -> Taps {
    let mut t = vec![Vec::new(); n_src];
    for (o, list) in taps.iter().enumerate() {
        for &(i, w) in list {
            t[i].push((o, w));
        }
    }
    t
}

/// One destination row of [`separable`]: `drow[j, :] += sum over the row taps `(a, wa)` and
/// column taps `(b, wb)` of `wa * wb * src[n, a, b, :]`, one fused multiply-add per term.
#[inline(always)]
fn separable_row<T: Real>(src: &[T], ss: Shape4, n: usize, row_taps: &[(usize, f32)], cols: &Taps, drow: &mut [T]) {
    let c = ss.c;
    for (j, dpix) in drow.chunks_exact_mut(c).enumerate() {
        for &(a, wa) in row_taps {
            for &(b, wb) in &cols[j] {
                let w = T::from_f64((wa * wb) as f64);
                let s = &src[((n * ss.h + a) * ss.w + b) * c..][..c];
                dpix.iter_mut().zip(s).for_each(|(d, &v)| *d = w.mul_add(v, *d));
            }
        }
    }
}
for_each_isa!(separable_row_isa: separable_row<>(
    src: &[T],
    ss: Shape4,
    n: usize,
    row_taps: &[(usize, f32)],
    cols: &Taps,
    drow: &mut [T],
));

/// `dst[n, i, j, :] (+)= sum_{(a, wa) in rows[i]} sum_{(b, wb) in cols[j]} wa * wb * src[n, a, b, :]`.
fn separable<T: Real>(src: &[T], ss: Shape4, rows: &Taps, cols: &Taps, dst: &mut [T], ds: Shape4, accumulate: bool) {
    dst.par_chunks_mut(ds.w * ss.c).enumerate().for_each(|(nr, drow)| {
        let (n, i) = (nr / ds.h, nr % ds.h);
        if !accumulate {
            drow.fill(T::ZERO);
        }
        on_isa!(separable_row_isa::<T>(src, ss, n, &rows[i], cols, drow));
    });
}

/// The factor between the small tensor `xs` and the large `ys` of an upsampling (`what`), after
/// checking that the shapes differ by it and that both tensors have their shapes' lengths.
fn check_upsample<T>(what: &str, (small, xs): (&[T], Shape4), (large, ys): (&[T], Shape4)) -> usize {
    let factor = ys.h / xs.h;
    assert_eq!(
        ys,
        upsample_shape(xs, factor),
        "upsample: shapes must differ by an integer factor"
    );
    assert!(
        small.len() == xs.len() && large.len() == ys.len(),
        "{what}: length mismatch"
    );
    factor
}

/// `y = upsample(x)` by the integer `factor` implied by the shapes (`ys = xs * factor`).
pub fn upsample_fwd<T: Real>(x: &[T], xs: Shape4, mode: UpsampleMode, y: &mut [T], ys: Shape4) {
    let factor = check_upsample("upsample_fwd", (x, xs), (y, ys));
    let rows = forward_taps(xs.h, factor, mode);
    let cols = forward_taps(xs.w, factor, mode);
    separable(x, xs, &rows, &cols, y, ys, false);
}

/// The upsampling of one tensor by a fixed factor, added onto output rows one at a time: for ops
/// that fuse an upsampling into a pass over their output ([`super::conv::conv1x1_concat_affine_fwd`]).
pub struct UpsampleRows {
    xs: Shape4,
    rows: Taps,
    cols: Taps,
}

impl UpsampleRows {
    /// Upsampling `xs` by `factor` in `mode`.
    pub fn new(xs: Shape4, factor: usize, mode: UpsampleMode) -> Self {
        Self {
            xs,
            rows: forward_taps(xs.h, factor, mode),
            cols: forward_taps(xs.w, factor, mode),
        }
    }

    /// `drow += upsample(x)[n, i, :, :]` (`drow` holds one output row, `x` is NHWC `xs`).
    pub fn add_row<T: Real>(&self, x: &[T], n: usize, i: usize, drow: &mut [T]) {
        assert_eq!(x.len(), self.xs.len(), "upsample: x length");
        on_isa!(separable_row_isa::<T>(x, self.xs, n, &self.rows[i], &self.cols, drow));
    }
}

/// `dx (+)= upsample^T(dy)`.
pub fn upsample_bwd<T: Real>(dy: &[T], ys: Shape4, mode: UpsampleMode, dx: &mut [T], xs: Shape4, accumulate: bool) {
    let factor = check_upsample("upsample_bwd", (dx, xs), (dy, ys));
    let rows = transpose(&forward_taps(xs.h, factor, mode), xs.h);
    let cols = transpose(&forward_taps(xs.w, factor, mode), xs.w);
    separable(dy, ys, &rows, &cols, dx, xs, accumulate);
}
