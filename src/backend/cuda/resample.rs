//! Launch wrappers of `kernels/resample.cu`; CPU twins in `backend/cpu/resample.rs`.
use anyhow::{ensure, Result};
use half::f16;

use super::as_i32;
use crate::backend::upsample_shape;
use crate::backend::{Shape4, UpsampleMode};
use crate::gpu::memory::all_aligned_16;
use crate::gpu::{DevSlice, DevSliceMut, Gpu};

/// The kernel's `mode` argument (`MODE_NEAREST` / `MODE_BILINEAR`).
fn mode_arg(mode: UpsampleMode) -> i32 {
    match mode {
        UpsampleMode::Nearest => 0,
        UpsampleMode::Bilinear => 1,
    }
}

/// The integer factor between `xs` and `ys`, or why there is none.
fn factor(what: &str, xs: Shape4, ys: Shape4) -> Result<usize> {
    ensure!(!xs.is_empty(), "{what}: empty input {xs}");
    let factor = ys.h / xs.h;
    ensure!(
        factor >= 1 && ys == upsample_shape(xs, factor),
        "{what}: {ys} is not {xs} upsampled by an integer factor"
    );
    Ok(factor)
}

/// Arguments shared by both kernels: `(n, h, w, c, factor, mode)` of the small side.
fn geometry(xs: Shape4, factor: usize, mode: UpsampleMode) -> Result<[i32; 6]> {
    Ok([
        as_i32("batch", xs.n)?,
        as_i32("height", xs.h)?,
        as_i32("width", xs.w)?,
        as_i32("channels", xs.c)?,
        as_i32("factor", factor)?,
        mode_arg(mode),
    ])
}

/// `y = upsample(x)` by the integer factor implied by the shapes (`ys = xs * factor`).
pub fn upsample_fwd(
    gpu: &Gpu,
    x: DevSlice<f16>,
    xs: Shape4,
    mode: UpsampleMode,
    y: DevSliceMut<f16>,
    ys: Shape4,
) -> Result<()> {
    let factor = factor("upsample_fwd", xs, ys)?;
    ensure!(
        x.len() == xs.len() && y.len() == ys.len(),
        "upsample_fwd: {} and {} elements for {xs} -> {ys}",
        x.len(),
        y.len()
    );
    let [n, h, w, c, f, m] = geometry(xs, factor, mode)?;
    let (xp, yp) = (x.ptr(), y.ptr());
    let vec = xs.c.is_multiple_of(8) && all_aligned_16(&[xp, yp]);
    let items = ys.len() / if vec { 8 } else { 1 };
    let vec = vec as i32;
    let func = gpu.function("resample_upsample_fwd_f16")?;
    // SAFETY: x covers xs, y covers ys (checked); arguments (const __half*, __half*, int n, int h,
    // int w, int c, int factor, int mode, int vec).
    unsafe { launch!(gpu, func, gpu.grid_1d(items); xp, yp, n, h, w, c, f, m, vec) }?;
    Ok(())
}

/// `dx (+)= upsample^T(dy)`, as a gather: deterministic, no atomics.
pub fn upsample_bwd(
    gpu: &Gpu,
    dy: DevSlice<f16>,
    ys: Shape4,
    mode: UpsampleMode,
    dx: DevSliceMut<f16>,
    xs: Shape4,
    accumulate: bool,
) -> Result<()> {
    let factor = factor("upsample_bwd", xs, ys)?;
    ensure!(
        dx.len() == xs.len() && dy.len() == ys.len(),
        "upsample_bwd: {} and {} elements for {ys} -> {xs}",
        dy.len(),
        dx.len()
    );
    let [n, h, w, c, f, m] = geometry(xs, factor, mode)?;
    let (dyp, dxp, acc) = (dy.ptr(), dx.ptr(), accumulate as i32);
    let vec = xs.c.is_multiple_of(8) && all_aligned_16(&[dyp, dxp]);
    let items = xs.len() / if vec { 8 } else { 1 };
    let vec = vec as i32;
    let func = gpu.function("resample_upsample_bwd_f16")?;
    // SAFETY: dy covers ys, dx covers xs (checked); arguments (const __half*, __half*, int n,
    // int h, int w, int c, int factor, int mode, int accumulate, int vec).
    unsafe { launch!(gpu, func, gpu.grid_1d(items); dyp, dxp, n, h, w, c, f, m, acc, vec) }?;
    Ok(())
}
