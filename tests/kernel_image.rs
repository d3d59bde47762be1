//! The kernel image this build embeds: checked on every machine, GPU or not. When the build had
//! nvcc (CI sets CEPHALO_REQUIRE_NVCC=1), every kernel file must be a fatbin holding SASS for
//! each requested architecture plus PTX, and every entry point must be in every SASS object.
use cephalo::gpu::kernel_image::{self, EntryKind, ImageFormat};

#[test]
fn every_kernel_file_is_embedded_with_its_entry_points() {
    let on_disk: Vec<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/kernels"))
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "cu").then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    for name in &on_disk {
        let module = kernel_image::MODULES
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name}.cu missing"));
        assert!(
            !module.kernels.is_empty(),
            "{name}.cu declares no extern \"C\" __global__ entry point"
        );
        let source = std::fs::read_to_string(format!("{}/kernels/{name}.cu", env!("CARGO_MANIFEST_DIR"))).unwrap();
        for k in module.kernels {
            assert!(
                k.starts_with(&format!("{name}_")),
                "kernel {k} in {name}.cu must be named {name}_<op>"
            );
            assert!(source.contains(k));
        }
    }
    assert_eq!(on_disk.len(), kernel_image::MODULES.len());
}

#[test]
fn fatbins_hold_sass_for_every_requested_arch_plus_ptx() {
    if kernel_image::FORMAT == ImageFormat::NvrtcSource {
        assert!(
            std::env::var("CEPHALO_REQUIRE_NVCC").is_err(),
            "CEPHALO_REQUIRE_NVCC is set, yet the kernels were embedded as NVRTC source"
        );
        eprintln!("built without nvcc: kernels are NVRTC source, nothing to parse");
        return;
    }
    if std::env::var("CEPHALO_CUDA_ARCHS").is_err() {
        assert_eq!(kernel_image::SASS_ARCHS, &[80, 86, 89, 90]);
    }
    for m in kernel_image::MODULES {
        let entries = kernel_image::fatbin_entries(m.fatbin).unwrap_or_else(|| panic!("{} is not a fatbin", m.name));
        let mut sass: Vec<u32> = entries
            .iter()
            .filter(|e| e.kind == EntryKind::Sass)
            .map(|e| e.arch)
            .collect();
        sass.sort_unstable();
        assert_eq!(sass, kernel_image::SASS_ARCHS, "SASS architectures in {}", m.name);
        let ptx: Vec<u32> = entries
            .iter()
            .filter(|e| e.kind == EntryKind::Ptx)
            .map(|e| e.arch)
            .collect();
        assert_eq!(ptx, vec![kernel_image::PTX_ARCH.unwrap()], "PTX in {}", m.name);
        // nvcc stores the PTX compressed, so only the SASS objects are searched for names.
        for e in entries.iter().filter(|e| e.kind == EntryKind::Sass) {
            let payload = &m.fatbin[e.payload.0..e.payload.1];
            for k in m.kernels {
                let found = payload.windows(k.len()).any(|w| w == k.as_bytes());
                assert!(found, "{k} not in the {:?} sm_{} object of {}", e.kind, e.arch, m.name);
            }
        }
    }
}

#[test]
fn compatibility_follows_cuda_binary_rules() {
    use kernel_image::{compatibility, Compatibility};
    assert_eq!(compatibility(7, 5), Compatibility::Unsupported);
    if kernel_image::FORMAT == ImageFormat::Fatbin && std::env::var("CEPHALO_CUDA_ARCHS").is_err() {
        assert_eq!(compatibility(8, 6), Compatibility::NativeSass(86));
        assert_eq!(compatibility(8, 7), Compatibility::NativeSass(86)); // sm_86 SASS runs on sm_87
        assert_eq!(compatibility(9, 0), Compatibility::NativeSass(90));
        assert_eq!(compatibility(12, 0), Compatibility::PtxJit(80)); // Blackwell: JIT from PTX
    }
}

#[test]
fn a_truncated_or_foreign_blob_is_not_taken_for_a_fatbin() {
    assert!(kernel_image::fatbin_entries(b"\x7fELF not a fatbin").is_none());
    if let Some(m) = kernel_image::MODULES.iter().find(|m| !m.fatbin.is_empty()) {
        assert!(kernel_image::fatbin_entries(&m.fatbin[..m.fatbin.len() / 2]).is_none());
    }
}
