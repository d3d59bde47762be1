//! `cephalo device`: the driver, the GPUs, their memory, and the kernels built into this binary,
//! with whether each GPU can run them. Never fails for lack of a GPU: it says so and exits 0.
use std::process::ExitCode;

use serde::Serialize;

use super::kernel_image::{self, Compatibility, ImageFormat};
use super::memory::human_bytes;
use super::probe::{self, DeviceInfo, Probe};
use super::vram::{self, VramReport};

#[derive(Debug, clap::Args)]
pub struct DeviceArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    cephalo_version: &'static str,
    kernels: KernelReport,
    driver: DriverReport,
    gpus: Vec<GpuReport>,
}

#[derive(Debug, Serialize)]
struct KernelReport {
    format: ImageFormat,
    compiler: Option<&'static str>,
    sass_archs: Vec<String>,
    ptx_arch: Option<String>,
    modules: Vec<ModuleReport>,
}

#[derive(Debug, Serialize)]
struct ModuleReport {
    name: &'static str,
    bytes: usize,
    /// The code objects found in the fatbin itself (empty for NVRTC source).
    entries: Vec<kernel_image::FatbinEntry>,
    kernels: &'static [&'static str],
}

#[derive(Debug, Serialize)]
struct DriverReport {
    found: bool,
    cuda_version: Option<String>,
    version: Option<String>,
    /// Why no GPU is usable, when none is.
    problem: Option<String>,
}

#[derive(Debug, Serialize)]
struct GpuReport {
    #[serde(flatten)]
    info: DeviceInfo,
    vram: Option<VramReport>,
    compatibility: Compatibility,
    /// A sentence for people: how this build runs here, or how to rebuild.
    verdict: String,
}

pub fn run(args: &DeviceArgs) -> anyhow::Result<ExitCode> {
    let report = build_report();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn build_report() -> Report {
    let kernels = KernelReport {
        format: kernel_image::FORMAT,
        compiler: kernel_image::COMPILER,
        sass_archs: kernel_image::SASS_ARCHS.iter().map(|a| format!("sm_{a}")).collect(),
        ptx_arch: kernel_image::PTX_ARCH.map(|a| format!("compute_{a}")),
        modules: kernel_image::MODULES
            .iter()
            .map(|m| ModuleReport {
                name: m.name,
                bytes: m.fatbin.len().max(m.source.len()),
                entries: kernel_image::fatbin_entries(m.fatbin).unwrap_or_default(),
                kernels: m.kernels,
            })
            .collect(),
    };
    let (driver, gpus) = match probe::probe() {
        Probe::NoDriver => (
            DriverReport {
                found: false,
                cuda_version: None,
                version: None,
                problem: Some(format!(
                    "no NVIDIA driver ({}) found on this machine; cephalo runs on the CPU",
                    crate::gpu::probe::DRIVER_LIBRARIES
                )),
            },
            Vec::new(),
        ),
        Probe::NoDevice(why) => (
            DriverReport {
                found: true,
                cuda_version: None,
                version: vram::driver_version_string(),
                problem: Some(format!("{why}; cephalo runs on the CPU")),
            },
            Vec::new(),
        ),
        Probe::Devices {
            driver_version,
            devices,
        } => {
            let gpus = devices.into_iter().map(gpu_report).collect();
            let driver = DriverReport {
                found: true,
                cuda_version: driver_version.map(|(a, b)| format!("{a}.{b}")),
                version: vram::driver_version_string(),
                problem: None,
            };
            (driver, gpus)
        }
    };
    Report {
        cephalo_version: env!("CARGO_PKG_VERSION"),
        kernels,
        driver,
        gpus,
    }
}

fn gpu_report(info: DeviceInfo) -> GpuReport {
    let (major, minor) = info.compute_capability;
    let compatibility = kernel_image::compatibility(major, minor);
    let verdict = match compatibility {
        Compatibility::NativeSass(a) => format!("runs natively (SASS sm_{a})"),
        Compatibility::PtxJit(p) => format!(
            "runs through the driver's JIT of PTX compute_{p} (slow first start); for native code rebuild with \
             CEPHALO_CUDA_ARCHS={major}{minor}"
        ),
        Compatibility::Nvrtc => "kernels compile with NVRTC at first use (this build had no nvcc)".into(),
        Compatibility::Unsupported => format!(
            "cannot run: sm_{major}{minor} is older than sm_80, which the kernels need (tensor-core and async-copy \
             instructions)"
        ),
    };
    let vram = vram::read_nvml(info.ordinal as u32).ok();
    GpuReport {
        info,
        vram,
        compatibility,
        verdict,
    }
}

fn print_text(r: &Report) {
    println!("cephalo {}", r.cephalo_version);
    let k = &r.kernels;
    let kernel_count: usize = k.modules.iter().map(|m| m.kernels.len()).sum();
    match k.format {
        ImageFormat::Fatbin => println!(
            "kernels: fatbin from {}, SASS {}{}; {} modules, {} kernels",
            k.compiler.unwrap_or("nvcc"),
            k.sass_archs.join(" "),
            k.ptx_arch.as_deref().map(|p| format!(" + PTX {p}")).unwrap_or_default(),
            k.modules.len(),
            kernel_count
        ),
        ImageFormat::NvrtcSource => println!(
            "kernels: CUDA source for NVRTC (built without nvcc); {} modules, {} kernels",
            k.modules.len(),
            kernel_count
        ),
    }
    for m in &k.modules {
        println!(
            "  {:<14} {:>9}  {}",
            m.name,
            human_bytes(m.bytes as u64),
            m.kernels.join(" ")
        );
    }
    match &r.driver.problem {
        Some(problem) => println!("GPU: none. {problem}."),
        None => {
            println!(
                "driver: {} (CUDA {})",
                r.driver.version.as_deref().unwrap_or("version unknown"),
                r.driver.cuda_version.as_deref().unwrap_or("?")
            );
            for g in &r.gpus {
                let (major, minor) = g.info.compute_capability;
                println!(
                    "GPU {}: {} (sm_{major}{minor}, {} SMs, {})",
                    g.info.ordinal,
                    g.info.name,
                    g.info.multiprocessors,
                    human_bytes(g.info.total_memory_bytes)
                );
                if let Some(v) = &g.vram {
                    println!(
                        "  VRAM: {} used, {} free of {}",
                        human_bytes(v.used_bytes),
                        human_bytes(v.free_bytes),
                        human_bytes(v.total_bytes)
                    );
                }
                println!("  kernels: {}", g.verdict);
            }
        }
    }
}
