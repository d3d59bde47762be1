//! Finds the NVIDIA driver and GPUs without ever panicking: cudarc loads libcuda lazily and would
//! panic on first use where it is missing, so its presence is checked before any driver call.
use cudarc::driver::{sys, CudaContext};
use serde::Serialize;

/// One GPU as the driver reports it.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (u32, u32),
    pub total_memory_bytes: u64,
    pub multiprocessors: u32,
}

/// The driver libraries cephalo loads, as named on this platform (for messages: a Windows user
/// looks for nvcuda.dll, not libcuda).
#[cfg(windows)]
pub const DRIVER_LIBRARIES: &str = "nvcuda.dll, and nvml.dll for memory readings";
#[cfg(not(windows))]
pub const DRIVER_LIBRARIES: &str = "libcuda.so, and libnvidia-ml.so for memory readings";

/// What this machine offers.
#[derive(Debug, Clone)]
pub enum Probe {
    /// libcuda could not be loaded: no NVIDIA driver installed.
    NoDriver,
    /// The driver loaded but reports no usable GPU (or failed to initialise: the reason).
    NoDevice(String),
    Devices {
        driver_version: Option<(u32, u32)>,
        devices: Vec<DeviceInfo>,
    },
}

pub fn probe() -> Probe {
    // SAFETY: only tries to dlopen libcuda; calls nothing in it.
    if !unsafe { sys::is_culib_present() } {
        return Probe::NoDriver;
    }
    let count = match CudaContext::device_count() {
        Ok(n) if n > 0 => n as usize,
        Ok(_) => return Probe::NoDevice("the driver reports 0 CUDA devices".into()),
        Err(e) => return Probe::NoDevice(format!("the driver failed to initialise: {e}")),
    };
    let driver_version = driver_version();
    let devices = (0..count).filter_map(|i| device_info(i).ok()).collect();
    Probe::Devices {
        driver_version,
        devices,
    }
}

/// The driver's CUDA version, e.g. (13, 0).
fn driver_version() -> Option<(u32, u32)> {
    let mut v: i32 = 0;
    // SAFETY: libcuda is loaded (checked by the caller) and `v` is a valid out-pointer.
    let status = unsafe { sys::cuDriverGetVersion(&mut v) };
    (status == sys::CUresult::CUDA_SUCCESS).then_some(((v / 1000) as u32, ((v % 1000) / 10) as u32))
}

/// Reads one device's properties through a (primary, shared) context.
pub fn device_info(ordinal: usize) -> Result<DeviceInfo, cudarc::driver::DriverError> {
    let ctx = CudaContext::new(ordinal)?;
    let (major, minor) = ctx.compute_capability()?;
    let sms = ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
    Ok(DeviceInfo {
        ordinal,
        name: ctx.name()?,
        compute_capability: (major as u32, minor as u32),
        total_memory_bytes: ctx.total_mem()? as u64,
        multiprocessors: sms as u32,
    })
}
