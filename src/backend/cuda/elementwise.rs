//! Launch wrappers of `kernels/elementwise.cu`; CPU twins in `backend/cpu/elementwise.rs`.
use anyhow::{ensure, Result};
use cudarc::driver::PushKernelArg;
use half::f16;

use crate::gpu::memory::all_aligned_16;
use crate::gpu::{DevSlice, DevSliceMut, Gpu};

/// `dst[i] = f16(src[i])`, round to nearest even.
pub fn convert_f32_to_f16(gpu: &Gpu, src: DevSlice<f32>, dst: DevSliceMut<f16>) -> Result<()> {
    ensure!(
        src.len() == dst.len(),
        "convert_f32_to_f16: {} elements into {}",
        src.len(),
        dst.len()
    );
    let (s, d, n) = (src.ptr(), dst.ptr(), src.len() as i64);
    let vec = all_aligned_16(&[s, d]) as i32;
    let f = gpu.function("elementwise_convert_f32_to_f16")?;
    // SAFETY: both views cover n elements of live device memory, and the kernel's argument list
    // is (const float*, __half*, long long, int).
    unsafe { launch!(gpu, f, gpu.grid_1d(src.len()); s, d, n, vec) }?;
    Ok(())
}

/// `dst[i] = value`.
pub fn fill_f16(gpu: &Gpu, dst: DevSliceMut<f16>, value: f16) -> Result<()> {
    let (d, n, bits) = (dst.ptr(), dst.len() as i64, value.to_bits());
    let vec = all_aligned_16(&[d]) as i32;
    let f = gpu.function("elementwise_fill_f16")?;
    // SAFETY: dst covers n elements; arguments (__half*, unsigned short, long long, int).
    unsafe { launch!(gpu, f, gpu.grid_1d(dst.len()); d, bits, n, vec) }?;
    Ok(())
}

/// `y[i] = f16(a * x[i] + y[i])`, fp32 arithmetic.
pub fn axpy_f16(gpu: &Gpu, a: f32, x: DevSlice<f16>, y: DevSliceMut<f16>) -> Result<()> {
    ensure!(
        x.len() == y.len(),
        "axpy_f16: x has {} elements, y {}",
        x.len(),
        y.len()
    );
    let (xp, yp, n) = (x.ptr(), y.ptr(), x.len() as i64);
    let vec = all_aligned_16(&[xp, yp]) as i32;
    let f = gpu.function("elementwise_axpy_f16")?;
    // SAFETY: both cover n elements; arguments (float, const __half*, __half*, long long, int).
    unsafe { launch!(gpu, f, gpu.grid_1d(x.len()); a, xp, yp, n, vec) }?;
    Ok(())
}

/// Launches one of the `map_f16` kernels: `(a, [b,] out, n, [accumulate,] vec)`.
fn launch_map(
    gpu: &Gpu,
    name: &'static str,
    a: DevSlice<f16>,
    b: Option<DevSlice<f16>>,
    out: DevSliceMut<f16>,
    accumulate: Option<bool>,
) -> Result<()> {
    let n = out.len();
    ensure!(a.len() == n, "{name}: input has {} elements, output {n}", a.len());
    if let Some(b) = &b {
        ensure!(
            b.len() == n,
            "{name}: second input has {} elements, output {n}",
            b.len()
        );
    }
    let (ap, op, n64) = (a.ptr(), out.ptr(), n as i64);
    let bp = b.map(|b| b.ptr());
    let vec = all_aligned_16(&[ap, op, bp.unwrap_or(0)]) as i32;
    let acc = accumulate.map(|a| a as i32);
    let f = gpu.function(name)?;
    let mut launch = gpu.stream().launch_builder(&f);
    launch.arg(&ap);
    if let Some(bp) = &bp {
        launch.arg(bp);
    }
    launch.arg(&op).arg(&n64);
    if let Some(acc) = &acc {
        launch.arg(acc);
    }
    launch.arg(&vec);
    // SAFETY: every view covers n halves (checked), and the argument list built above is the
    // kernel's: (const __half* a, [const __half* b,] __half* out, long long n, [int accumulate,]
    // int vec), with b present exactly for the binary kernels and accumulate for the backward ones.
    unsafe { launch.launch(gpu.grid_1d(n)) }?;
    Ok(())
}

/// `y = max(x, 0)`.
pub fn relu_fwd(gpu: &Gpu, x: DevSlice<f16>, y: DevSliceMut<f16>) -> Result<()> {
    launch_map(gpu, "elementwise_relu_fwd_f16", x, None, y, None)
}

/// `dx (+)= dy * [y > 0]`, from the ReLU output `y`.
pub fn relu_bwd(gpu: &Gpu, y: DevSlice<f16>, dy: DevSlice<f16>, dx: DevSliceMut<f16>, accumulate: bool) -> Result<()> {
    launch_map(gpu, "elementwise_relu_bwd_f16", y, Some(dy), dx, Some(accumulate))
}

/// `y = a + b`.
pub fn add_fwd(gpu: &Gpu, a: DevSlice<f16>, b: DevSlice<f16>, y: DevSliceMut<f16>) -> Result<()> {
    launch_map(gpu, "elementwise_add_fwd_f16", a, Some(b), y, None)
}

/// Backward of `a + b` for one operand: `dx (+)= dy`.
pub fn add_bwd(gpu: &Gpu, dy: DevSlice<f16>, dx: DevSliceMut<f16>, accumulate: bool) -> Result<()> {
    launch_map(gpu, "elementwise_add_bwd_f16", dy, None, dx, Some(accumulate))
}

/// `y = max(a + b, 0)`: the residual join of ResNet blocks and HRNet fuse layers.
pub fn add_relu_fwd(gpu: &Gpu, a: DevSlice<f16>, b: DevSlice<f16>, y: DevSliceMut<f16>) -> Result<()> {
    launch_map(gpu, "elementwise_add_relu_fwd_f16", a, Some(b), y, None)
}

/// Backward of `max(a + b, 0)` for one operand: `dx (+)= dy * [y > 0]` (same as [`relu_bwd`]).
pub fn add_relu_bwd(
    gpu: &Gpu,
    y: DevSlice<f16>,
    dy: DevSlice<f16>,
    dx: DevSliceMut<f16>,
    accumulate: bool,
) -> Result<()> {
    relu_bwd(gpu, y, dy, dx, accumulate)
}
