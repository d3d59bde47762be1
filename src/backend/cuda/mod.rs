//! Launch wrappers of `kernels/*.cu`, one file per kernel family, each function named and shaped
//! like its CPU twin in `backend/cpu/`, with `&Gpu` first, fp16 device views for activations and
//! f32 device views for batch-norm parameters and statistics.

/// Queues kernel `f` on `gpu`'s stream with launch configuration `cfg`, pushing the arguments by
/// reference in the order given: `launch!(gpu, f, cfg; a, b, c)` is
/// `gpu.stream().launch_builder(&f).arg(&a).arg(&b).arg(&c).launch(cfg)`, and as unsafe: each
/// call's SAFETY comment gives the kernel's argument list the arguments must match.
macro_rules! launch {
    ($gpu:expr, $f:expr, $cfg:expr; $($arg:expr),+ $(,)?) => {{
        use cudarc::driver::PushKernelArg as _;
        $gpu.stream().launch_builder(&$f)$(.arg(&$arg))+.launch($cfg)
    }};
}

pub mod backend;
pub mod batchnorm;
pub mod concat;
pub mod conv;
pub mod conv_wgrad;
pub mod elementwise;
pub mod heatmap;
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

    /// The number of parameters of `extern "C" __global__ void name(...)` in `kernel_source`.
    fn kernel_arity(kernel_source: &str, name: &str) -> usize {
        let head = format!("__global__ void {name}(");
        let start = kernel_source.find(&head).unwrap_or_else(|| panic!("{name} not found")) + head.len();
        let params = &kernel_source[start..start + kernel_source[start..].find(')').unwrap()];
        params.split(',').count()
    }

    /// The number of arguments the first `launch!(gpu, f, cfg; args)` in `source` pushes.
    fn launch_args(source: &str) -> usize {
        let call = &source[source.find("launch!(").unwrap()..];
        // The arguments are plain names and fields: the first ')' after the ';' closes the call.
        let args = &call[call.find(';').unwrap() + 1..];
        let args = &args[..args.find(')').unwrap()];
        args.split(',').filter(|a| !a.trim().is_empty()).count()
    }

    /// For every `gpu.function("name")` in `wrapper_source` whose launch pushes its arguments
    /// through [`launch!`], the count of pushes equals the kernel's parameter count: a dropped or
    /// doubled argument fails here rather than corrupting a launch on a GPU. (Their order and
    /// types are in each launch's SAFETY comment and are checked by reading and the GPU tests.)
    fn assert_launch_arities(wrapper_source: &str, kernel_source: &str) -> usize {
        let mut checked = 0;
        for piece in wrapper_source.split("gpu.function(\"").skip(1) {
            let name = &piece[..piece.find('"').unwrap()];
            assert_eq!(
                launch_args(piece),
                kernel_arity(kernel_source, name),
                "{name}: arguments pushed"
            );
            checked += 1;
        }
        checked
    }

    #[test]
    fn loss_optim_and_heatmap_launches_push_every_kernel_parameter() {
        let loss = assert_launch_arities(include_str!("loss.rs"), include_str!("../../../kernels/loss.cu"));
        let optim = assert_launch_arities(include_str!("optim.rs"), include_str!("../../../kernels/optim.cu"));
        let heatmap = assert_launch_arities(include_str!("heatmap.rs"), include_str!("../../../kernels/heatmap.cu"));
        assert_eq!(heatmap, 1);
        assert_eq!((loss, optim), (3, 2));
    }

    /// The same for conv.rs: the re-layout launch by the generic count, and the one GEMM launch
    /// (its kernel name is chosen at run time) against the `CONV_PARAMS` list all GEMM entry
    /// points share.
    #[test]
    fn conv_launches_push_every_kernel_parameter() {
        let (wrapper, kernels) = (include_str!("conv.rs"), include_str!("../../../kernels/conv.cu"));
        assert_eq!(assert_launch_arities(wrapper, kernels), 1);
        let params = kernels.split("#define CONV_PARAMS").nth(1).unwrap();
        let params = &params[..params.find("#define").unwrap()];
        let gemm = wrapper.split("fn launch_gemm").nth(1).unwrap();
        assert_eq!(launch_args(gemm), params.matches(',').count() + 1);
    }

    /// Every kernel a wrapper launches by name exists in this build's kernel image, so a typo in a
    /// name fails here, on machines without a GPU, rather than at the first launch on one.
    #[test]
    fn every_launched_kernel_is_in_the_kernel_image() {
        let wrappers = [
            include_str!("batchnorm.rs"),
            include_str!("concat.rs"),
            include_str!("conv.rs"),
            include_str!("conv_wgrad.rs"),
            include_str!("elementwise.rs"),
            include_str!("heatmap.rs"),
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
                    // Not plain "concat_": the wrapper names concat_fwd/concat_bwd are passed to checks.
                    "concat_copy_",
                    // Not plain "conv_": wrapper names such as conv_transpose2d_wgrad appear in messages.
                    "conv_fwd_",
                    "conv_dgrad_",
                    "conv_wgrad_",
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
