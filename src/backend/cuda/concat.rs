//! Launch wrappers of `kernels/concat.cu`; CPU twins in `backend/cpu/concat.rs`.
//!
//! One launch per input: each is a strided copy of one channel range, which keeps the kernel free
//! of a pointer table (inputs are few: 2 to 4 in HRNet).
use anyhow::{ensure, Result};
use half::f16;

use super::as_i32;
use crate::gpu::memory::all_aligned_16;
use crate::gpu::{DevSlice, DevSliceMut, Gpu};

/// Where a channel range lies: in the NHWC tensor at device address `ptr` with `c` channels per
/// pixel, from channel `at` on.
#[derive(Clone, Copy)]
struct Channels {
    ptr: u64,
    c: usize,
    at: usize,
}

/// One channel range copy: `dst[p, dst.at..+width] (+)= src[p, src.at..+width]` for every pixel.
fn copy_channels(gpu: &Gpu, src: Channels, dst: Channels, width: usize, pixels: usize, accumulate: bool) -> Result<()> {
    let vec = [width, src.c, src.at, dst.c, dst.at].iter().all(|v| v % 8 == 0) && all_aligned_16(&[src.ptr, dst.ptr]);
    let items = pixels * width / if vec { 8 } else { 1 };
    let (sc, sa, dc, da, w) = (
        as_i32("channels", src.c)?,
        as_i32("channel offset", src.at)?,
        as_i32("channels", dst.c)?,
        as_i32("channel offset", dst.at)?,
        as_i32("width", width)?,
    );
    let (sp, dp) = (src.ptr, dst.ptr);
    let (p, acc, vec) = (pixels as i64, accumulate as i32, vec as i32);
    let f = gpu.function("concat_copy_channels_f16")?;
    // SAFETY: the callers check that src holds pixels*src.c and dst pixels*dst.c halves and that
    // the ranges fit the strides; arguments (const __half*, int, int, __half*, int, int, int,
    // long long, int, int).
    unsafe { launch!(gpu, f, gpu.grid_1d(items); sp, sc, sa, dp, dc, da, w, p, acc, vec) }?;
    Ok(())
}

/// Checks that there are as many `parts` (a count and what they are) as `widths` and that the
/// concatenated tensor (its length and name) holds whole pixels of their channels; returns the
/// channels and pixels of the concatenated tensor.
fn layout(what: &str, parts: (usize, &str), widths: &[usize], whole: (usize, &str)) -> Result<(usize, usize)> {
    ensure!(
        parts.0 == widths.len(),
        "{what}: {} {}, {} widths",
        parts.0,
        parts.1,
        widths.len()
    );
    let c: usize = widths.iter().sum();
    ensure!(
        c > 0 && whole.0.is_multiple_of(c),
        "{what}: {} of {} elements for {c} channels",
        whole.1,
        whole.0
    );
    Ok((c, whole.0 / c))
}

/// `y[p, :] = [x0[p, :], x1[p, :], ...]`; `widths[i]` is the channel count of `xs[i]`.
pub fn concat_fwd(gpu: &Gpu, xs: &[DevSlice<f16>], widths: &[usize], y: DevSliceMut<f16>) -> Result<()> {
    let (c, pixels) = layout("concat_fwd", (xs.len(), "inputs"), widths, (y.len(), "output"))?;
    let mut at = 0;
    for (i, (x, &w)) in xs.iter().zip(widths).enumerate() {
        ensure!(
            x.len() == pixels * w,
            "concat_fwd: input {i} has {} elements, want {pixels} x {w}",
            x.len()
        );
        if w > 0 {
            let src = Channels {
                ptr: x.ptr(),
                c: w,
                at: 0,
            };
            let dst = Channels { ptr: y.ptr(), c, at };
            copy_channels(gpu, src, dst, w, pixels, false)?;
        }
        at += w;
    }
    Ok(())
}

/// `dx_i (+)= dy[:, channels of input i]`, for each input that wants a gradient.
pub fn concat_bwd(
    gpu: &Gpu,
    dy: DevSlice<f16>,
    widths: &[usize],
    dxs: &mut [Option<(DevSliceMut<f16>, bool)>],
) -> Result<()> {
    let (c, pixels) = layout("concat_bwd", (dxs.len(), "gradients"), widths, (dy.len(), "dy"))?;
    let mut at = 0;
    for (i, (dx, &w)) in dxs.iter_mut().zip(widths).enumerate() {
        if let Some((dx, accumulate)) = dx {
            ensure!(
                dx.len() == pixels * w,
                "concat_bwd: gradient {i} has {} elements, want {pixels} x {w}",
                dx.len()
            );
            if w > 0 {
                let src = Channels { ptr: dy.ptr(), c, at };
                let dst = Channels {
                    ptr: dx.ptr(),
                    c: w,
                    at: 0,
                };
                copy_channels(gpu, src, dst, w, pixels, *accumulate)?;
            }
        }
        at += w;
    }
    Ok(())
}
