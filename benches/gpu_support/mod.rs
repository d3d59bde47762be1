//! Shared by the GPU benches (`benches/gpu_*.rs`, each `#[path]`-includes it): opening the GPU, or
//! saying why not so that the bench exits 0 on a machine without one.
use cephalo::gpu::Gpu;

/// GPU 0, or `None` after printing `BENCH: skipped (why)`.
pub fn open(bench: &str) -> Option<Gpu> {
    match Gpu::open(0) {
        Ok(gpu) => Some(gpu),
        Err(e) => {
            println!("{bench}: skipped ({e:#})");
            None
        }
    }
}

/// Prints the device line most benches start with: its name and SM count.
#[allow(dead_code)] // gpu_conv prints a longer line of its own
pub fn print_device(gpu: &Gpu) {
    println!("device: {} ({} SMs)", gpu.info().name, gpu.info().multiprocessors);
}
