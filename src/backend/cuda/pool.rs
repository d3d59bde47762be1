//! Launch wrappers of `kernels/pool.cu`; CPU twins in `backend/cpu/pool.rs`.
use anyhow::{ensure, Result};
use cudarc::driver::PushKernelArg;
use half::f16;

use super::as_i32;
use crate::backend::{PoolParams, Shape4};
use crate::gpu::memory::all_aligned_16;
use crate::gpu::{DevSlice, DevSliceMut, Gpu};

/// The kernels' geometry arguments `(n, h, w, c, oh, ow, k, stride, pad)`.
fn geometry(what: &str, xs: Shape4, p: &PoolParams) -> Result<[i32; 9]> {
    ensure!(!xs.is_empty(), "{what}: empty input {xs}");
    // Every window must hold a real pixel, or it would have no maximum.
    ensure!(
        p.k >= 1 && p.stride >= 1 && p.pad < p.k && xs.h + 2 * p.pad >= p.k && xs.w + 2 * p.pad >= p.k,
        "{what}: pooling {p:?} does not fit {xs}"
    );
    let ys = p.out_shape(xs);
    Ok([
        as_i32("batch", xs.n)?,
        as_i32("height", xs.h)?,
        as_i32("width", xs.w)?,
        as_i32("channels", xs.c)?,
        as_i32("output height", ys.h)?,
        as_i32("output width", ys.w)?,
        as_i32("window", p.k)?,
        as_i32("stride", p.stride)?,
        as_i32("padding", p.pad)?,
    ])
}

/// `y = maxpool(x)`, `y` of shape `p.out_shape(xs)`.
pub fn maxpool_fwd(gpu: &Gpu, x: DevSlice<f16>, xs: Shape4, p: &PoolParams, y: DevSliceMut<f16>) -> Result<()> {
    let g = geometry("maxpool_fwd", xs, p)?;
    let ys = p.out_shape(xs);
    ensure!(
        x.len() == xs.len() && y.len() == ys.len(),
        "maxpool_fwd: {} and {} elements for {xs} -> {ys}",
        x.len(),
        y.len()
    );
    let (xp, yp) = (x.ptr(), y.ptr());
    let vec = xs.c.is_multiple_of(8) && all_aligned_16(&[xp, yp]);
    let items = ys.len() / if vec { 8 } else { 1 };
    let vec = vec as i32;
    let f = gpu.function("pool_maxpool_fwd_f16")?;
    let mut launch = gpu.stream().launch_builder(&f);
    launch.arg(&xp).arg(&yp);
    for v in &g {
        launch.arg(v);
    }
    launch.arg(&vec);
    // SAFETY: x covers xs and y covers ys (checked), and the window always holds a pixel;
    // arguments (const __half*, __half*, int n, int h, int w, int c, int oh, int ow, int k,
    // int stride, int pad, int vec).
    unsafe { launch.launch(gpu.grid_1d(items)) }?;
    Ok(())
}

/// `dx (+)= dy routed to each window's maximum`, as a gather: deterministic, no atomics.
pub fn maxpool_bwd(
    gpu: &Gpu,
    x: DevSlice<f16>,
    xs: Shape4,
    dy: DevSlice<f16>,
    p: &PoolParams,
    dx: DevSliceMut<f16>,
    accumulate: bool,
) -> Result<()> {
    let g = geometry("maxpool_bwd", xs, p)?;
    let ys = p.out_shape(xs);
    ensure!(
        x.len() == xs.len() && dx.len() == xs.len() && dy.len() == ys.len(),
        "maxpool_bwd: {}, {} and {} elements for {xs} -> {ys}",
        x.len(),
        dy.len(),
        dx.len()
    );
    let (xp, dyp, dxp, acc) = (x.ptr(), dy.ptr(), dx.ptr(), accumulate as i32);
    let vec = xs.c.is_multiple_of(8) && all_aligned_16(&[xp, dyp, dxp]);
    let items = xs.len() / if vec { 8 } else { 1 };
    let vec = vec as i32;
    let f = gpu.function("pool_maxpool_bwd_f16")?;
    let mut launch = gpu.stream().launch_builder(&f);
    launch.arg(&xp).arg(&dyp).arg(&dxp);
    for v in &g {
        launch.arg(v);
    }
    launch.arg(&acc).arg(&vec);
    // SAFETY: x and dx cover xs, dy covers ys (checked); arguments (const __half*, const __half*,
    // __half*, int n, int h, int w, int c, int oh, int ow, int k, int stride, int pad,
    // int accumulate, int vec).
    unsafe { launch.launch(gpu.grid_1d(items)) }?;
    Ok(())
}
