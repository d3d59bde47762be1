//! One GPU, one stream, and the kernels loaded on it.
//!
//! Modules are loaded lazily (the first launch of any kernel of `kernels/foo.cu` loads `foo`) and
//! functions are cached by name, so a launch costs one hash lookup.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context as _, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, LaunchConfig};
use cudarc::nvrtc::{CompileOptions, Ptx};

use super::kernel_image::{self, Compatibility, ImageFormat};
use super::probe::{self, DeviceInfo, Probe};

/// Threads per block of the 1-D elementwise launches: a multiple of the warp size that lets
/// 8 blocks share one SM on every architecture we build for.
pub const BLOCK_1D: u32 = 256;

pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    info: DeviceInfo,
    compatibility: Compatibility,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
}

impl Gpu {
    /// Opens GPU `ordinal`, or says precisely why it cannot (no driver, no GPU, an architecture
    /// this build has no code for).
    pub fn open(ordinal: usize) -> Result<Gpu> {
        match probe::probe() {
            Probe::NoDriver => bail!(
                "no NVIDIA driver found ({} could not be loaded); use --device cpu",
                probe::DRIVER_LIBRARIES
            ),
            Probe::NoDevice(why) => bail!("no CUDA GPU available: {why}; use --device cpu"),
            Probe::Devices { devices, .. } if ordinal >= devices.len() => {
                bail!(
                    "GPU {ordinal} requested but this machine has {} (cuda:0..cuda:{})",
                    devices.len(),
                    devices.len() - 1
                )
            }
            Probe::Devices { .. } => {}
        }
        let info = probe::device_info(ordinal).with_context(|| format!("opening GPU {ordinal}"))?;
        let (major, minor) = info.compute_capability;
        let compatibility = kernel_image::compatibility(major, minor);
        if compatibility == Compatibility::Unsupported {
            bail!(
                "{} is sm_{major}{minor}, which this build has no kernels for (it has SASS for {:?}{}). Rebuild with \
                 CEPHALO_CUDA_ARCHS={major}{minor} cargo build --release (sm_80 or newer is required).",
                info.name,
                kernel_image::SASS_ARCHS,
                kernel_image::PTX_ARCH
                    .map(|p| format!(" and PTX compute_{p}"))
                    .unwrap_or_default()
            );
        }
        let ctx = CudaContext::new(ordinal).with_context(|| format!("creating a CUDA context on GPU {ordinal}"))?;
        // One stream does all the work and kernels get raw pointers, so cudarc's per-buffer event
        // tracking (meant for buffers shared between streams) is pure overhead here.
        // SAFETY: every buffer of this program is used on `stream` only.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().context("creating a CUDA stream")?;
        Ok(Gpu {
            ctx,
            stream,
            info,
            compatibility,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
        })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub fn compatibility(&self) -> Compatibility {
        self.compatibility
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Waits until every queued command finished, and surfaces any asynchronous kernel fault.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().context("waiting for the GPU")
    }

    /// The kernel `name`, loading its module on first use.
    pub fn function(&self, name: &'static str) -> Result<CudaFunction> {
        if let Some(f) = lock(&self.functions).get(name) {
            return Ok(f.clone());
        }
        let module_info = kernel_image::module_of(name)
            .ok_or_else(|| anyhow!("kernel {name} is not in this build's kernel image"))?;
        let module = self.module(module_info)?;
        let f = module
            .load_function(name)
            .with_context(|| format!("loading kernel {name}"))?;
        lock(&self.functions).insert(name, f.clone());
        Ok(f)
    }

    fn module(&self, m: &'static kernel_image::KernelModule) -> Result<Arc<CudaModule>> {
        if let Some(module) = lock(&self.modules).get(m.name) {
            return Ok(module.clone());
        }
        let ptx = match kernel_image::FORMAT {
            ImageFormat::Fatbin => Ptx::from_binary(m.fatbin.to_vec()),
            ImageFormat::NvrtcSource => self.compile_with_nvrtc(m)?,
        };
        let module = self
            .ctx
            .load_module(ptx)
            .with_context(|| format!("loading kernel module {} on {}", m.name, self.info.name))?;
        lock(&self.modules).insert(m.name, module.clone());
        Ok(module)
    }

    fn compile_with_nvrtc(&self, m: &kernel_image::KernelModule) -> Result<Ptx> {
        // SAFETY: only tries to dlopen libnvrtc.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            bail!(
                "this build carries kernel sources for NVRTC, but libnvrtc was not found. Install the CUDA \
                 runtime libraries, or rebuild with nvcc (scripts/install-cuda-compiler.sh)."
            );
        }
        let (major, minor) = self.info.compute_capability;
        // NVRTC wants a 'static arch string; the handful of possible values are leaked once each.
        let arch: &'static str = Box::leak(format!("compute_{major}{minor}").into_boxed_str());
        let opts = CompileOptions {
            arch: Some(arch),
            options: vec!["-std=c++17".into()],
            ..Default::default()
        };
        cudarc::nvrtc::compile_ptx_with_opts(m.source, opts)
            .map_err(|e| anyhow!("NVRTC could not compile kernels/{}.cu for {arch}: {e}", m.name))
    }

    /// A 1-D launch for a grid-stride loop over `n` items: enough blocks to fill every SM, never
    /// more than the work needs.
    pub fn grid_1d(&self, n: usize) -> LaunchConfig {
        let needed = n.div_ceil(BLOCK_1D as usize).max(1);
        let fill = self.info.multiprocessors as usize * (2048 / BLOCK_1D as usize);
        LaunchConfig {
            grid_dim: (needed.min(fill) as u32, 1, 1),
            block_dim: (BLOCK_1D, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// A poisoned lock only means another thread panicked mid-insert into a cache; the map is still valid.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
