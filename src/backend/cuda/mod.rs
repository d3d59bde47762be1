//! Launch wrappers of `kernels/*.cu`, one file per kernel family, each function named and shaped
//! like its CPU twin in `backend/cpu/`, with `&Gpu` first, fp16 device views for activations and
//! f32 device views for batch-norm parameters and statistics.
pub mod batchnorm;
pub mod concat;
pub mod elementwise;
pub mod loss;
pub mod optim;
pub mod pool;
pub mod resample;

use anyhow::{ensure, Context as _, Result};
use cudarc::driver::{DeviceRepr, LaunchConfig};

use crate::gpu::{DevSlice, DevSliceMut, Gpu};

/// A grid-stride 1-D launch over `items` work items with `shared_floats` f32 of dynamic shared
/// memory per block (for per-channel constants staged once per block).
pub(crate) fn grid_1d_shared(gpu: &Gpu, items: usize, shared_floats: usize) -> Result<LaunchConfig> {
    // The default dynamic shared-memory limit, without opting in per kernel.
    const MAX_SHARED_BYTES: usize = 48 * 1024;
    let bytes = shared_floats * size_of::<f32>();
    ensure!(
        bytes <= MAX_SHARED_BYTES,
        "{shared_floats} per-channel constants need {bytes} bytes of shared memory, over the {MAX_SHARED_BYTES} a \
         block gets: too many channels for this kernel"
    );
    let mut cfg = gpu.grid_1d(items);
    cfg.shared_mem_bytes = bytes as u32;
    Ok(cfg)
}

/// Converts a size to the `int` a kernel takes, refusing sizes that would wrap.
pub(crate) fn as_i32(what: &str, v: usize) -> Result<i32> {
    ensure!(
        v <= i32::MAX as usize,
        "{what} = {v} does not fit a kernel's 32-bit argument"
    );
    Ok(v as i32)
}

/// Sets every byte of `dst` to zero, ordered on the GPU's stream like a kernel launch (no wait).
pub(crate) fn zero_async<T>(gpu: &Gpu, dst: &mut DevSliceMut<T>) -> Result<()> {
    let bytes = dst.len() * size_of::<T>();
    // SAFETY: the view covers `bytes` bytes of live device memory, allocated in the GPU's context
    // and used on its one stream; zero bits are a valid value of the i32/f64 it is used for.
    unsafe { cudarc::driver::result::memset_d8_async(dst.ptr(), 0, bytes, gpu.stream().cu_stream()) }
        .context("zeroing device memory")
}

/// Copies the one element of `src` to the host, waiting for the stream (and so for every kernel
/// queued before): the only synchronising call of a step that keeps its scalars on the device.
pub(crate) fn read_scalar<T: DeviceRepr + Default + Copy>(gpu: &Gpu, what: &str, src: DevSlice<T>) -> Result<T> {
    ensure!(src.len() == 1, "{what}: a view of {} elements, want 1", src.len());
    let mut host = [T::default()];
    // SAFETY: src covers one live T on the device; `host` outlives the copy because the stream is
    // synchronised below before it is read or dropped (also on the error path of the copy, which
    // queued nothing).
    unsafe { cudarc::driver::result::memcpy_dtoh_async(&mut host, src.ptr(), gpu.stream().cu_stream()) }
        .with_context(|| format!("{what}: copying from the GPU"))?;
    gpu.synchronize()?;
    Ok(host[0])
}

#[cfg(test)]
mod tests {
    use crate::gpu::kernel_image;

    /// Every kernel a wrapper launches by name exists in this build's kernel image, so a typo in a
    /// name fails here, on machines without a GPU, rather than at the first launch on one.
    #[test]
    fn every_launched_kernel_is_in_the_kernel_image() {
        let wrappers = [
            include_str!("batchnorm.rs"),
            include_str!("concat.rs"),
            include_str!("elementwise.rs"),
            include_str!("loss.rs"),
            include_str!("optim.rs"),
            include_str!("pool.rs"),
            include_str!("resample.rs"),
        ];
        let mut names = Vec::new();
        for source in wrappers {
            for quoted in source.split('"').skip(1).step_by(2) {
                let is_kernel = [
                    "batchnorm_",
                    "concat_",
                    "elementwise_",
                    "loss_",
                    "optim_",
                    "pool_",
                    "resample_",
                ]
                .iter()
                .any(|family| quoted.starts_with(family))
                    && quoted.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
                if is_kernel {
                    names.push(quoted);
                }
            }
        }
        assert!(names.len() >= 20, "found only {names:?}");
        for name in names {
            assert!(
                kernel_image::module_of(name).is_some(),
                "{name} is launched but not in kernels/*.cu"
            );
        }
    }
}
