//! fp16 axpy bandwidth against the device's own copy bandwidth, both timed with CUDA events
//! (warm-up, then the median of 50 runs).
//!
//! Bytes moved: axpy reads x and y and writes y (3 x 2 bytes per element); a device-to-device
//! copy reads and writes once (2 x bytes). Run: `cargo bench --bench gpu_bandwidth`.
//! Without a GPU it says so and exits 0.
#[path = "gpu_support/mod.rs"]
mod gpu_support;

use anyhow::Result;
use cephalo::backend::cuda;
use cephalo::gpu::timer::measure;
use cephalo::gpu::DeviceBuffer;
use half::f16;

fn main() -> Result<()> {
    let Some(gpu) = gpu_support::open("gpu_bandwidth") else {
        return Ok(());
    };
    gpu_support::print_device(&gpu);
    println!(
        "{:>12} {:>14} {:>12} {:>12} {:>8}",
        "elements", "kernel", "median ms", "GB/s", "of copy"
    );
    // 4 x 192 x 192 x 32 is one HRNet-W32 branch-1 activation at 768x768 batch 4; the largest
    // size is far beyond every cache.
    for n in [4 * 192 * 192 * 32, 64 << 20, 256 << 20] {
        let x = DeviceBuffer::<f16>::zeros(&gpu, n)?;
        let mut y = DeviceBuffer::<f16>::zeros(&gpu, n)?;
        cuda::elementwise::fill_f16(&gpu, y.slice_mut(), f16::ONE)?;

        let copy = measure(&gpu, 5, 50, || {
            gpu.stream().memcpy_dtod(x.cuda_slice(), y.cuda_slice_mut())?;
            Ok(())
        })?;
        let copy_gbs = (2 * n * 2) as f64 / (copy.median_ms * 1e6);
        println!(
            "{n:>12} {:>14} {:>12.4} {:>12.1} {:>8}",
            "memcpy dtod", copy.median_ms, copy_gbs, "100%"
        );

        let axpy = measure(&gpu, 5, 50, || {
            cuda::elementwise::axpy_f16(&gpu, 0.5, x.slice(), y.slice_mut())
        })?;
        let axpy_gbs = (3 * n * 2) as f64 / (axpy.median_ms * 1e6);
        println!(
            "{n:>12} {:>14} {:>12.4} {:>12.1} {:>7.0}%",
            "axpy_f16",
            axpy.median_ms,
            axpy_gbs,
            100.0 * axpy_gbs / copy_gbs
        );
    }
    Ok(())
}
