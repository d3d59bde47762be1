//! CPU twins of `kernels/elementwise.cu`: precision conversion, fill, the scaled add (the
//! bandwidth benchmark's kernel), ReLU and the residual add.
//!
//! fp16 values are rounded exactly as the GPU does (`__float2half_rn`: round to nearest, ties to
//! even), so the conversions match the kernels bit for bit.
use half::f16;
use rayon::prelude::*;

use super::Real;

/// Below this many elements rayon's scheduling costs more than it saves.
const PAR_MIN: usize = 1 << 16;

/// `dst[i] = f16(src[i])`, round to nearest even; values beyond fp16's range become ±inf.
pub fn convert_f32_to_f16(src: &[f32], dst: &mut [f16]) {
    assert_eq!(src.len(), dst.len(), "convert_f32_to_f16: length mismatch");
    let body = |(d, s): (&mut f16, &f32)| *d = f16::from_f32(*s);
    if src.len() >= PAR_MIN {
        dst.par_iter_mut().zip(src.par_iter()).for_each(body);
    } else {
        dst.iter_mut().zip(src.iter()).for_each(body);
    }
}

/// `dst[i] = value`.
pub fn fill<T: Copy + Send + Sync>(dst: &mut [T], value: T) {
    if dst.len() >= PAR_MIN {
        dst.par_iter_mut().for_each(|d| *d = value);
    } else {
        dst.fill(value);
    }
}

/// `y[i] = f16(a * f32(x[i]) + f32(y[i]))`: fp16 storage, one fused multiply-add in f32, one
/// rounding, as the kernel computes it.
pub fn axpy_f16(a: f32, x: &[f16], y: &mut [f16]) {
    assert_eq!(x.len(), y.len(), "axpy_f16: length mismatch");
    let body = |(yi, xi): (&mut f16, &f16)| *yi = f16::from_f32(a.mul_add(xi.to_f32(), yi.to_f32()));
    if x.len() >= PAR_MIN {
        y.par_iter_mut().zip(x.par_iter()).for_each(body);
    } else {
        y.iter_mut().zip(x.iter()).for_each(body);
    }
}

/// Writes `v` into `d`, or adds it when `accumulate` (gradient targets read by several nodes).
#[inline]
fn store<T: Real>(d: &mut T, v: T, accumulate: bool) {
    *d = if accumulate { *d + v } else { v };
}

/// Runs `body(i, out)` over chunks of `out`, in parallel when it is large.
fn for_chunks<T: Real>(out: &mut [T], body: impl Fn(usize, &mut [T]) + Send + Sync) {
    const CHUNK: usize = 1 << 14;
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(j, o)| body(j * CHUNK, o));
    } else {
        body(0, out);
    }
}

/// `y = max(x, 0)`.
pub fn relu_fwd<T: Real>(x: &[T], y: &mut [T]) {
    assert_eq!(x.len(), y.len(), "relu_fwd: length mismatch");
    for_chunks(y, |o, yc| {
        yc.iter_mut().zip(&x[o..]).for_each(|(y, &x)| *y = x.max(T::ZERO))
    });
}

/// `dx (+)= dy * [y > 0]`, from the ReLU output `y` (positive exactly where the input was).
pub fn relu_bwd<T: Real>(y: &[T], dy: &[T], dx: &mut [T], accumulate: bool) {
    assert!(y.len() == dx.len() && dy.len() == dx.len(), "relu_bwd: length mismatch");
    for_chunks(dx, |o, dc| {
        for (i, d) in dc.iter_mut().enumerate() {
            let g = if y[o + i] > T::ZERO { dy[o + i] } else { T::ZERO };
            store(d, g, accumulate);
        }
    });
}

/// `y = a + b`.
pub fn add_fwd<T: Real>(a: &[T], b: &[T], y: &mut [T]) {
    assert!(a.len() == y.len() && b.len() == y.len(), "add_fwd: length mismatch");
    for_chunks(y, |o, yc| {
        for (i, v) in yc.iter_mut().enumerate() {
            *v = a[o + i] + b[o + i];
        }
    });
}

/// Backward of `a + b` for one operand: `dx (+)= dy`.
pub fn add_bwd<T: Real>(dy: &[T], dx: &mut [T], accumulate: bool) {
    assert_eq!(dy.len(), dx.len(), "add_bwd: length mismatch");
    for_chunks(dx, |o, dc| {
        dc.iter_mut().zip(&dy[o..]).for_each(|(d, &g)| store(d, g, accumulate))
    });
}

/// `y = max(a + b, 0)`: the residual join of ResNet blocks and HRNet fuse layers.
pub fn add_relu_fwd<T: Real>(a: &[T], b: &[T], y: &mut [T]) {
    assert!(
        a.len() == y.len() && b.len() == y.len(),
        "add_relu_fwd: length mismatch"
    );
    for_chunks(y, |o, yc| {
        for (i, v) in yc.iter_mut().enumerate() {
            *v = (a[o + i] + b[o + i]).max(T::ZERO);
        }
    });
}

/// Backward of `max(a + b, 0)` for one operand: `dx (+)= dy * [y > 0]` (same as [`relu_bwd`]).
pub fn add_relu_bwd<T: Real>(y: &[T], dy: &[T], dx: &mut [T], accumulate: bool) {
    relu_bwd(y, dy, dx, accumulate);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_rounds_to_nearest_even_and_saturates_to_inf() {
        let src = [1.0f32, 65504.0, 70000.0, -1e-8, 1.0 + 1.0 / 2048.0, 1.0 + 3.0 / 2048.0];
        let mut dst = [f16::ZERO; 6];
        convert_f32_to_f16(&src, &mut dst);
        assert_eq!(dst[0], f16::ONE);
        assert_eq!(dst[1], f16::MAX);
        assert!(dst[2].is_infinite());
        assert_eq!(dst[3].to_f32(), -0.0);
        // 1 + 2^-11 lies halfway between 1 and 1 + 2^-10: ties go to the even mantissa (1).
        assert_eq!(dst[4], f16::ONE);
        // 1 + 3*2^-11 lies halfway between 1 + 2^-10 and 1 + 2^-9: the even one is 1 + 2^-9.
        assert_eq!(dst[5].to_f32(), 1.0 + 2.0 / 1024.0);
    }

    #[test]
    fn axpy_matches_scalar_formula() {
        let n = PAR_MIN + 3; // exercises the parallel path and a ragged tail
        let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let y0: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
        let xh: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
        let mut yh: Vec<f16> = y0.iter().map(|&v| f16::from_f32(v)).collect();
        let yh0 = yh.clone();
        axpy_f16(0.25, &xh, &mut yh);
        for i in 0..n {
            let want = f16::from_f32(0.25f32.mul_add(xh[i].to_f32(), yh0[i].to_f32()));
            assert_eq!(yh[i], want);
        }
    }

    #[test]
    fn fill_sets_every_element() {
        let mut v = vec![0u8; PAR_MIN + 1];
        fill(&mut v, 7);
        assert!(v.iter().all(|&b| b == 7));
    }
}
