//! Video memory readings through NVML (what nvidia-smi shows), with the driver's own
//! cuMemGetInfo as the fallback where NVML is unavailable.
use anyhow::{anyhow, Result};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct VramReport {
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    /// This process's use, where the driver reports per-process figures (not under WSL, nor in
    /// some containers).
    pub process_bytes: Option<u64>,
    /// "nvml" or "cuda".
    pub source: &'static str,
}

/// Reads GPU `ordinal`'s memory through NVML.
pub fn read_nvml(ordinal: u32) -> Result<VramReport> {
    let nvml = Nvml::init().map_err(|e| anyhow!("NVML unavailable: {e}"))?;
    let device = nvml
        .device_by_index(ordinal)
        .map_err(|e| anyhow!("NVML device {ordinal}: {e}"))?;
    let mem = device.memory_info().map_err(|e| anyhow!("NVML memory info: {e}"))?;
    let me = std::process::id();
    let process_bytes = device.running_compute_processes().ok().and_then(|procs| {
        procs
            .into_iter()
            .find(|p| p.pid == me)
            .and_then(|p| match p.used_gpu_memory {
                UsedGpuMemory::Used(b) => Some(b),
                UsedGpuMemory::Unavailable => None,
            })
    });
    Ok(VramReport {
        total_bytes: mem.total,
        used_bytes: mem.used,
        free_bytes: mem.free,
        process_bytes,
        source: "nvml",
    })
}

/// NVML first, then the CUDA driver (for the current context's device).
pub fn read(gpu: &super::Gpu) -> Result<VramReport> {
    read_nvml(gpu.info().ordinal as u32).or_else(|_| {
        let (free, total) = gpu.context().mem_get_info()?;
        Ok(VramReport {
            total_bytes: total as u64,
            used_bytes: (total - free) as u64,
            free_bytes: free as u64,
            process_bytes: None,
            source: "cuda",
        })
    })
}

/// The driver version string NVML reports (e.g. "580.65.06").
pub fn driver_version_string() -> Option<String> {
    Nvml::init().ok()?.sys_driver_version().ok()
}
