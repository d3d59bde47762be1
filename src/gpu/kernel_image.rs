//! The kernels embedded in this build, as written by build.rs: one module per `kernels/*.cu`,
//! either an nvcc fatbin or (when the build had no nvcc) the source for NVRTC.

/// How the kernels travel in this binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageFormat {
    /// SASS for [`SASS_ARCHS`] plus PTX for [`PTX_ARCH`], compiled by nvcc at build time.
    Fatbin,
    /// CUDA C++ source, compiled by NVRTC for the GPU found at first use.
    NvrtcSource,
}

/// One kernel file.
#[derive(Debug)]
pub struct KernelModule {
    /// The file stem: `elementwise` for `kernels/elementwise.cu`.
    pub name: &'static str,
    /// The fatbin, empty in an NVRTC build.
    pub fatbin: &'static [u8],
    /// Self-contained source (local headers inlined), empty in a fatbin build.
    pub source: &'static str,
    /// The `extern "C" __global__` entry points the file defines.
    pub kernels: &'static [&'static str],
}

include!(concat!(env!("OUT_DIR"), "/kernel_image.rs"));

/// The module that defines kernel `name`.
pub fn module_of(name: &str) -> Option<&'static KernelModule> {
    MODULES.iter().find(|m| m.kernels.contains(&name))
}

/// How a GPU of compute capability `major.minor` can run this image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Compatibility {
    /// The fatbin has SASS the GPU runs directly.
    NativeSass(u32),
    /// The driver JIT-compiles the embedded PTX at first use (slower start, same results).
    PtxJit(u32),
    /// The source is compiled with NVRTC at first use.
    Nvrtc,
    /// Nothing in this build runs on that GPU.
    Unsupported,
}

/// SASS for sm_XY runs on sm_XZ with Z >= Y (same major); PTX for compute_XY JITs on anything
/// newer or equal. Below sm_80 the kernels' Ampere instructions are missing.
pub fn compatibility(major: u32, minor: u32) -> Compatibility {
    let cc = major * 10 + minor;
    if cc < 80 {
        return Compatibility::Unsupported;
    }
    match FORMAT {
        ImageFormat::NvrtcSource => Compatibility::Nvrtc,
        ImageFormat::Fatbin => {
            let sass = SASS_ARCHS.iter().copied().filter(|a| a / 10 == major && *a <= cc).max();
            match (sass, PTX_ARCH) {
                (Some(a), _) => Compatibility::NativeSass(a),
                (None, Some(p)) if p <= cc => Compatibility::PtxJit(p),
                _ => Compatibility::Unsupported,
            }
        }
    }
}

/// Every kernel name in the image, sorted.
pub fn all_kernels() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = MODULES.iter().flat_map(|m| m.kernels.iter().copied()).collect();
    names.sort_unstable();
    names
}

/// What one entry of a fatbin holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Ptx,
    Sass,
}

/// One code object inside a fatbin, and the byte range of its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct FatbinEntry {
    pub kind: EntryKind,
    pub arch: u32,
    #[serde(skip)]
    pub payload: (usize, usize),
}

/// Lists the code objects of a fatbin, so reports show what the binary really holds rather than
/// what the build asked for. The container is undocumented; the layout below is what nvcc 13.0
/// writes (a test parses this build's own fatbins with it):
/// - header (16 bytes): magic 0xBA55ED50 (u32), version (u16), header size (u16), payload size (u64);
/// - per entry: kind (u16: 1 PTX, 2 ELF/SASS), flags (u16), entry header size (u32),
///   payload size (u64), ..., architecture (u32 at byte 28), then the payload.
///
/// Returns `None` if the bytes are not a fatbin of that shape.
pub fn fatbin_entries(bytes: &[u8]) -> Option<Vec<FatbinEntry>> {
    const MAGIC: u32 = 0xBA55_ED50;
    let u16_at = |o: usize| Some(u16::from_le_bytes(bytes.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(bytes.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(bytes.get(o..o + 8)?.try_into().ok()?));
    if u32_at(0)? != MAGIC {
        return None;
    }
    let header = u16_at(6)? as usize;
    let end = header.checked_add(usize::try_from(u64_at(8)?).ok()?)?;
    if end > bytes.len() {
        return None;
    }
    let mut entries = Vec::new();
    let mut at = header;
    while at < end {
        let kind = match u16_at(at)? {
            1 => EntryKind::Ptx,
            2 => EntryKind::Sass,
            _ => return None,
        };
        let entry_header = u32_at(at + 4)? as usize;
        let size = usize::try_from(u64_at(at + 8)?).ok()?;
        let arch = u32_at(at + 28)?;
        let start = at.checked_add(entry_header)?;
        let stop = start.checked_add(size)?;
        if stop > end || entry_header < 32 {
            return None;
        }
        entries.push(FatbinEntry {
            kind,
            arch,
            payload: (start, stop),
        });
        at = stop;
    }
    Some(entries)
}
