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
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(&s)
            .arg(&d)
            .arg(&n)
            .arg(&vec)
            .launch(gpu.grid_1d(src.len()))
    }?;
    Ok(())
}

/// `dst[i] = f32(src[i])`.
pub fn convert_f16_to_f32(gpu: &Gpu, src: DevSlice<f16>, dst: DevSliceMut<f32>) -> Result<()> {
    ensure!(
        src.len() == dst.len(),
        "convert_f16_to_f32: {} elements into {}",
        src.len(),
        dst.len()
    );
    let (s, d, n) = (src.ptr(), dst.ptr(), src.len() as i64);
    let vec = all_aligned_16(&[s, d]) as i32;
    let f = gpu.function("elementwise_convert_f16_to_f32")?;
    // SAFETY: as above; arguments (const __half*, float*, long long, int).
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(&s)
            .arg(&d)
            .arg(&n)
            .arg(&vec)
            .launch(gpu.grid_1d(src.len()))
    }?;
    Ok(())
}

/// `dst[i] = value`.
pub fn fill_f16(gpu: &Gpu, dst: DevSliceMut<f16>, value: f16) -> Result<()> {
    let (d, n, bits) = (dst.ptr(), dst.len() as i64, value.to_bits());
    let vec = all_aligned_16(&[d]) as i32;
    let f = gpu.function("elementwise_fill_f16")?;
    // SAFETY: dst covers n elements; arguments (__half*, unsigned short, long long, int).
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(&d)
            .arg(&bits)
            .arg(&n)
            .arg(&vec)
            .launch(gpu.grid_1d(dst.len()))
    }?;
    Ok(())
}

/// `dst[i] = value`.
pub fn fill_f32(gpu: &Gpu, dst: DevSliceMut<f32>, value: f32) -> Result<()> {
    let (d, n) = (dst.ptr(), dst.len() as i64);
    let vec = all_aligned_16(&[d]) as i32;
    let f = gpu.function("elementwise_fill_f32")?;
    // SAFETY: dst covers n elements; arguments (float*, float, long long, int).
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(&d)
            .arg(&value)
            .arg(&n)
            .arg(&vec)
            .launch(gpu.grid_1d(dst.len()))
    }?;
    Ok(())
}

/// `y[i] = a * x[i] + y[i]` in f32.
pub fn axpy_f32(gpu: &Gpu, a: f32, x: DevSlice<f32>, y: DevSliceMut<f32>) -> Result<()> {
    ensure!(
        x.len() == y.len(),
        "axpy_f32: x has {} elements, y {}",
        x.len(),
        y.len()
    );
    let (xp, yp, n) = (x.ptr(), y.ptr(), x.len() as i64);
    let vec = all_aligned_16(&[xp, yp]) as i32;
    let f = gpu.function("elementwise_axpy_f32")?;
    // SAFETY: both cover n elements; arguments (float, const float*, float*, long long, int).
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(&a)
            .arg(&xp)
            .arg(&yp)
            .arg(&n)
            .arg(&vec)
            .launch(gpu.grid_1d(x.len()))
    }?;
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
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(&a)
            .arg(&xp)
            .arg(&yp)
            .arg(&n)
            .arg(&vec)
            .launch(gpu.grid_1d(x.len()))
    }?;
    Ok(())
}
