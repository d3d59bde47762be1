//! CPU twins of `kernels/concat.cu`: concatenation along channels (NHWC: each pixel's channel
//! vector is the inputs' vectors one after another), and its backward, which slices the
//! gradient back.
use rayon::prelude::*;

use super::Real;

/// `y[p, :] = [x0[p, :], x1[p, :], ...]`; `widths[i]` is the channel count of `xs[i]`.
pub fn concat_fwd<T: Real>(xs: &[&[T]], widths: &[usize], y: &mut [T]) {
    let c: usize = widths.iter().sum();
    assert_eq!(xs.len(), widths.len(), "concat_fwd: one width per input");
    let pixels = y.len() / c;
    for (x, &w) in xs.iter().zip(widths) {
        assert_eq!(x.len(), pixels * w, "concat_fwd: input length");
    }
    y.par_chunks_mut(c).enumerate().for_each(|(p, yp)| {
        let mut at = 0;
        for (x, &w) in xs.iter().zip(widths) {
            yp[at..at + w].copy_from_slice(&x[p * w..(p + 1) * w]);
            at += w;
        }
    });
}

/// `dx_i (+)= dy[:, channels of input i]`, for each input that wants a gradient.
pub fn concat_bwd<T: Real>(dy: &[T], widths: &[usize], dxs: &mut [Option<(&mut [T], bool)>]) {
    let c: usize = widths.iter().sum();
    let pixels = dy.len() / c;
    let mut at = 0;
    for (dx, &w) in dxs.iter_mut().zip(widths) {
        if let Some((dx, accumulate)) = dx {
            assert_eq!(dx.len(), pixels * w, "concat_bwd: gradient length");
            let acc = *accumulate;
            dx.par_chunks_mut(w).enumerate().for_each(|(p, d)| {
                let g = &dy[p * c + at..p * c + at + w];
                if acc {
                    d.iter_mut().zip(g).for_each(|(d, &g)| *d = *d + g);
                } else {
                    d.copy_from_slice(g);
                }
            });
        }
        at += w;
    }
}
