//! `cephalo bench`: `--device cpu` measures the CPU backend; on a machine without a GPU the default
//! `--device cuda` refuses with a clear error instead of measuring the wrong thing; the flags parse
//! in every spelling they accept (the users' underscores, `--profile` for `--profile-ops`,
//! `--inference` for `--mode infer`).
mod cli_support;

/// `--device cpu` measures the CPU backend in both modes and writes the same JSON fields as on
/// the GPU (a tiny network so that it stays quick).
#[test]
fn bench_measures_the_cpu_in_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    for mode in ["train", "infer"] {
        let json = dir.path().join(format!("{mode}.json"));
        cli_support::run(&[
            "bench",
            "--device",
            "cpu",
            "--mode",
            mode,
            "--model",
            "hrnet-w8",
            "--image-size",
            "64",
            "64",
            "--batch-size",
            "2",
            "--warmup",
            "1",
            "--steps",
            "2",
            "--json",
            json.to_str().unwrap(),
        ])
        .unwrap_or_else(|e| panic!("bench --device cpu --mode {mode}: {e:#}"));
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(report["device"], "cpu", "{report}");
        assert_eq!(report["steps"], 2, "{report}");
        let median = report["step_ms"]["median_ms"]
            .as_f64()
            .unwrap_or_else(|| panic!("no step_ms.median_ms: {report}"));
        assert!(median > 0.0 && median.is_finite(), "{report}");
        assert!(report["images_per_s"].as_f64().unwrap() > 0.0, "{report}");
        assert!(
            report["device_used_bytes"].is_null(),
            "no device memory on the CPU: {report}"
        );
    }
}

/// On a machine without a GPU (CI) the default `--device cuda` says so and how to time the CPU
/// instead (it never falls back to the CPU silently).
#[test]
fn bench_without_a_gpu_says_it_needs_one() {
    if matches!(cephalo::gpu::probe(), cephalo::gpu::Probe::Devices { .. }) {
        return; // a GPU machine: nothing to check here
    }
    let err = cli_support::run(&["bench"]).unwrap_err().to_string();
    assert!(
        err.contains("measures a CUDA GPU") && err.contains("--device cpu"),
        "{err}"
    );
}

#[test]
fn bench_flags_parse_in_every_spelling() {
    use cephalo::cli::Cli;
    use clap::Parser;
    for line in [
        "cephalo bench --model resnet50 --batch_size 8 --profile",
        "cephalo bench --inference --image-size 512 512 --steps 5",
        "cephalo bench --mode infer --profile-ops --json out.json",
    ] {
        Cli::try_parse_from(line.split_whitespace()).unwrap_or_else(|e| panic!("{line}: {e}"));
    }
    assert!(Cli::try_parse_from(["cephalo", "bench", "--inference", "--mode", "train"]).is_err());
    assert!(Cli::try_parse_from(["cephalo", "bench", "--steps", "many"]).is_err());
}
