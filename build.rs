//! Compiles every `kernels/*.cu` into a fatbin with nvcc and embeds the result in the binary.
//!
//! - nvcc is looked up in `NVCC`, `CUDA_HOME`/`CUDA_PATH`, `PATH`, then `./.cuda-toolchain/`
//!   (installed by `scripts/install-cuda-compiler.sh`).
//! - The fatbin holds SASS for every architecture in `CEPHALO_CUDA_ARCHS` (default 80,86,89,90)
//!   plus PTX for the lowest one, so newer GPUs can JIT it.
//! - Without nvcc the kernel sources are embedded instead and compiled with NVRTC at first use;
//!   `CEPHALO_REQUIRE_NVCC=1` (set by CI) turns that into a build error.
//! - A kernel is recompiled only when its source, a shared header, the compiler or the flags
//!   change: each fatbin sits next to a key file holding a hash of all of those.
//! - nvcc's own diagnostics are passed through verbatim, file and line included.
use std::collections::hash_map::DefaultHasher;
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

const DEFAULT_ARCHS: &str = "80,86,89,90";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kernel_dir = manifest_dir.join("kernels");

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", kernel_dir.display());
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "CEPHALO_CUDA_ARCHS",
        "CEPHALO_REQUIRE_NVCC",
        "CEPHALO_KERNEL_WERROR",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let (sources, headers) = list_kernel_files(&kernel_dir);
    for path in sources.iter().chain(&headers) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let archs = parse_archs();

    let nvcc = find_nvcc(&manifest_dir);
    if let Some(stamp) = toolchain_stamp(&manifest_dir) {
        // Installing the toolchain later must switch the build from NVRTC to fatbins.
        println!("cargo:rerun-if-changed={}", stamp.display());
    }
    let require_nvcc = env::var("CEPHALO_REQUIRE_NVCC").is_ok_and(|v| v == "1");

    let modules: Vec<Module> = match &nvcc {
        Some(nvcc) => {
            let version = nvcc_version(nvcc);
            let header_bytes: Vec<u8> = headers.iter().flat_map(|h| read(h)).collect();
            // nvcc runs one process per kernel file; they are independent, so run them together.
            let jobs: Vec<_> = sources
                .iter()
                .map(|src| {
                    let (nvcc, version, archs, out_dir, kernel_dir, header_bytes) = (
                        nvcc.clone(),
                        version.clone(),
                        archs.clone(),
                        out_dir.clone(),
                        kernel_dir.clone(),
                        header_bytes.clone(),
                    );
                    let src = src.clone();
                    std::thread::spawn(move || {
                        compile_fatbin(&nvcc, &version, &archs, &src, &kernel_dir, &out_dir, &header_bytes)
                    })
                })
                .collect();
            let results: Vec<Result<Module, String>> = jobs
                .into_iter()
                .map(|j| j.join().expect("nvcc job thread panicked"))
                .collect();
            let mut modules = Vec::new();
            let mut failed = false;
            for result in results {
                match result {
                    Ok(m) => modules.push(m),
                    Err(diagnostics) => {
                        eprintln!("{diagnostics}");
                        failed = true;
                    }
                }
            }
            if failed {
                eprintln!(
                    "error: nvcc could not compile the kernels above (nvcc: {})",
                    nvcc.display()
                );
                std::process::exit(1);
            }
            modules
        }
        None if require_nvcc => {
            eprintln!(
                "error: CEPHALO_REQUIRE_NVCC=1 but no nvcc was found (looked in $NVCC, $CUDA_HOME/bin, \
                 $CUDA_PATH/bin, PATH and {}/.cuda-toolchain). Run scripts/install-cuda-compiler.sh.",
                manifest_dir.display()
            );
            std::process::exit(1);
        }
        None => {
            println!(
                "cargo:warning=nvcc not found: kernels are embedded as source and compiled with NVRTC at first \
                 use. For prebuilt kernels run scripts/install-cuda-compiler.sh (or set NVCC / CUDA_HOME)."
            );
            sources
                .iter()
                .map(|src| embed_source(src, &kernel_dir, &out_dir))
                .collect()
        }
    };

    let image = render_image(&modules, nvcc.as_ref().map(|_| &archs));
    write_if_changed(&out_dir.join("kernel_image.rs"), image.as_bytes());
}

/// One kernel file as it ends up in the binary.
struct Module {
    name: String,
    /// Path of the fatbin (nvcc) or of the self-contained source (NVRTC).
    payload: PathBuf,
    kernels: Vec<String>,
    nvcc_version: Option<String>,
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| {
        eprintln!("error: cannot read {}: {e}", path.display());
        std::process::exit(1)
    })
}

fn list_kernel_files(dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut sources = Vec::new();
    let mut headers = Vec::new();
    let entries = fs::read_dir(dir).unwrap_or_else(|e| {
        eprintln!("error: cannot list {}: {e}", dir.display());
        std::process::exit(1)
    });
    for entry in entries.flatten() {
        let path = entry.path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("cu") => sources.push(path),
            Some("cuh") => headers.push(path),
            _ => {}
        }
    }
    sources.sort();
    headers.sort();
    (sources, headers)
}

/// `CEPHALO_CUDA_ARCHS`: comma-separated compute capabilities such as `86` or `sm_90`.
fn parse_archs() -> Vec<u32> {
    let raw = env::var("CEPHALO_CUDA_ARCHS").unwrap_or_else(|_| DEFAULT_ARCHS.to_string());
    let mut archs: Vec<u32> = raw
        .split(',')
        .map(|s| s.trim().trim_start_matches("sm_").trim_start_matches("compute_"))
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse().unwrap_or_else(|_| {
                eprintln!("error: CEPHALO_CUDA_ARCHS={raw:?}: {s:?} is not a compute capability like 86 or sm_86");
                std::process::exit(1)
            })
        })
        .collect();
    archs.sort_unstable();
    archs.dedup();
    if archs.is_empty() {
        eprintln!("error: CEPHALO_CUDA_ARCHS={raw:?} names no architecture");
        std::process::exit(1);
    }
    if let Some(old) = archs.iter().find(|&&a| a < 80) {
        eprintln!("error: CEPHALO_CUDA_ARCHS: sm_{old} is too old; the kernels use Ampere (sm_80+) instructions");
        std::process::exit(1);
    }
    archs
}

fn toolchain_stamp(manifest_dir: &Path) -> Option<PathBuf> {
    let stamp = manifest_dir.join(".cuda-toolchain/.installed-13.0");
    stamp.exists().then_some(stamp)
}

fn find_nvcc(manifest_dir: &Path) -> Option<PathBuf> {
    let exe = if cfg!(windows) { "nvcc.exe" } else { "nvcc" };
    if let Some(p) = env::var_os("NVCC").map(PathBuf::from) {
        if p.is_file() {
            return Some(p);
        }
        println!("cargo:warning=NVCC={} is not a file; looking elsewhere", p.display());
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = env::var_os(var) {
            let p = PathBuf::from(home).join("bin").join(exe);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    if let Some(path) = env::var_os("PATH") {
        if let Some(p) = env::split_paths(&path).map(|d| d.join(exe)).find(|p| p.is_file()) {
            return Some(p);
        }
    }
    // The wheel layout: .cuda-toolchain/site/nvidia/cu13/bin/nvcc.
    let local = manifest_dir.join(".cuda-toolchain/site/nvidia/cu13/bin").join(exe);
    local.is_file().then_some(local)
}

fn nvcc_version(nvcc: &Path) -> String {
    match Command::new(nvcc).arg("--version").output() {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            text.lines()
                .rev()
                .find(|l| l.contains("release"))
                .unwrap_or("unknown")
                .trim()
                .to_string()
        }
        Ok(out) => {
            eprintln!(
                "error: {} --version failed:\n{}",
                nvcc.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            std::process::exit(1)
        }
        Err(e) => {
            eprintln!("error: cannot run {}: {e}", nvcc.display());
            std::process::exit(1)
        }
    }
}

fn nvcc_args(archs: &[u32]) -> Vec<String> {
    let mut args = vec![
        "-fatbin".to_string(),
        "-O3".into(),
        "-std=c++17".into(),
        // Line info lets ncu and compute-sanitizer point at source lines; it does not slow kernels.
        "-lineinfo".into(),
        "--expt-relaxed-constexpr".into(),
        // A register spilled to local memory is a silent slowdown: ptxas says so (a build warning),
        // and under CEPHALO_KERNEL_WERROR=1 (CI) the build fails on it.
        "-Xptxas=-warn-spills".into(),
    ];
    if std::env::var_os("CEPHALO_KERNEL_WERROR").is_some_and(|v| v == "1") {
        args.push("-Xptxas=-Werror".into());
    }
    for a in archs {
        args.push(format!("-gencode=arch=compute_{a},code=sm_{a}"));
    }
    let lowest = archs[0];
    args.push(format!("-gencode=arch=compute_{lowest},code=compute_{lowest}"));
    args
}

fn compile_fatbin(
    nvcc: &Path,
    version: &str,
    archs: &[u32],
    src: &Path,
    kernel_dir: &Path,
    out_dir: &Path,
    header_bytes: &[u8],
) -> Result<Module, String> {
    let name = stem(src);
    let source = read(src);
    let args = nvcc_args(archs);
    let mut hasher = DefaultHasher::new();
    (&source, header_bytes, nvcc, version, &args).hash(&mut hasher);
    let key = format!("{:016x}", hasher.finish());

    let fatbin = out_dir.join(format!("{name}.fatbin"));
    let key_file = out_dir.join(format!("{name}.key"));
    let kernels = kernel_names(&String::from_utf8_lossy(&source));
    let module = Module {
        name: name.clone(),
        payload: fatbin.clone(),
        kernels,
        nvcc_version: Some(version.to_string()),
    };
    if fatbin.is_file() && fs::read_to_string(&key_file).is_ok_and(|k| k == key) {
        return Ok(module);
    }

    let output = Command::new(nvcc)
        .args(&args)
        .arg(format!("-I{}", kernel_dir.display()))
        .arg("-o")
        .arg(&fatbin)
        .arg(src)
        .output()
        .map_err(|e| format!("error: cannot run {}: {e}", nvcc.display()))?;
    let diagnostics = String::from_utf8_lossy(&output.stderr).to_string() + &String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let _ = fs::remove_file(&fatbin);
        return Err(diagnostics);
    }
    for line in diagnostics.lines().filter(|l| !l.trim().is_empty()) {
        println!("cargo:warning={line}");
    }
    fs::write(&key_file, key).map_err(|e| format!("error: cannot write {}: {e}", key_file.display()))?;
    Ok(module)
}

/// For NVRTC, which has no include path: inline `#include "local.cuh"` lines into one source.
fn embed_source(src: &Path, kernel_dir: &Path, out_dir: &Path) -> Module {
    let name = stem(src);
    let text = String::from_utf8_lossy(&read(src)).to_string();
    let mut inlined = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let local = trimmed
            .strip_prefix("#include \"")
            .and_then(|rest| rest.strip_suffix('"'))
            .map(|file| kernel_dir.join(file));
        match local {
            Some(header) => {
                let _ = writeln!(inlined, "// ---- begin {} ----", header.display());
                inlined.push_str(&String::from_utf8_lossy(&read(&header)));
                let _ = writeln!(inlined, "\n// ---- end {} ----", header.display());
            }
            None => {
                inlined.push_str(line);
                inlined.push('\n');
            }
        }
    }
    let payload = out_dir.join(format!("{name}.nvrtc.cu"));
    write_if_changed(&payload, inlined.as_bytes());
    Module {
        name,
        payload,
        kernels: kernel_names(&text),
        nvcc_version: None,
    }
}

/// The entry points of a kernel file: every `extern "C" __global__ void [__launch_bounds__(..)] NAME(`.
fn kernel_names(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (pos, _) in source.match_indices("extern \"C\" __global__") {
        let rest = source[pos + "extern \"C\" __global__".len()..].trim_start();
        let Some(rest) = rest.strip_prefix("void") else {
            continue;
        };
        let mut rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix("__launch_bounds__") {
            let Some(close) = after.find(')') else { continue };
            rest = after[close + 1..].trim_start();
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            names.push(name);
        }
    }
    names
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .and_then(|s| s.to_str())
        .expect("kernel file names are UTF-8")
        .to_string()
}

fn render_image(modules: &[Module], archs: Option<&Vec<u32>>) -> String {
    let mut out = String::from("// Generated by build.rs: the kernels embedded in this build.\n");
    match archs {
        Some(archs) => {
            let sass: Vec<String> = archs.iter().map(u32::to_string).collect();
            let _ = writeln!(out, "pub const FORMAT: ImageFormat = ImageFormat::Fatbin;");
            let _ = writeln!(out, "pub const SASS_ARCHS: &[u32] = &[{}];", sass.join(", "));
            let _ = writeln!(out, "pub const PTX_ARCH: Option<u32> = Some({});", archs[0]);
        }
        None => {
            let _ = writeln!(out, "pub const FORMAT: ImageFormat = ImageFormat::NvrtcSource;");
            let _ = writeln!(out, "pub const SASS_ARCHS: &[u32] = &[];");
            let _ = writeln!(out, "pub const PTX_ARCH: Option<u32> = None;");
        }
    }
    let version = modules.iter().find_map(|m| m.nvcc_version.clone());
    let _ = writeln!(out, "pub const COMPILER: Option<&str> = {version:?};");
    let _ = writeln!(out, "pub const MODULES: &[KernelModule] = &[");
    for m in modules {
        let payload = m.payload.display().to_string();
        let (image, source) = match archs {
            Some(_) => (format!("include_bytes!({payload:?})"), "\"\"".to_string()),
            None => ("&[]".to_string(), format!("include_str!({payload:?})")),
        };
        let _ = writeln!(
            out,
            "    KernelModule {{ name: {:?}, fatbin: {image}, source: {source}, kernels: &{:?} }},",
            m.name, m.kernels
        );
    }
    out.push_str("];\n");
    out
}

fn write_if_changed(path: &Path, bytes: &[u8]) {
    if fs::read(path).is_ok_and(|old| old == bytes) {
        return;
    }
    fs::write(path, bytes).unwrap_or_else(|e| {
        eprintln!("error: cannot write {}: {e}", path.display());
        std::process::exit(1)
    });
}
