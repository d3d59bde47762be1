//! scripts/gpu-accuracy.sh (the GPU bundle's `--accuracy` run) end to end with the CPU binary at
//! tiny sizes: the script only runs where a GPU is lent, so this keeps it from rotting between
//! leases. Phantoms stand in for the ISBI copy; the networks are hrnet-w8 at 64x64 and 32x32.
#![cfg(unix)]
use std::path::Path;
use std::process::Command;

mod cli_support;

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gpu-accuracy.sh")
}

#[test]
fn accuracy_script_trains_both_stages_and_reports_both_splits() {
    let dir = tempfile::tempdir().unwrap();
    let data = cli_support::phantoms(dir.path(), 16, 7, 96);
    let out = dir.path().join("out");
    let status = Command::new("bash")
        .arg(script())
        .env("CEPHALO", env!("CARGO_BIN_EXE_cephalo"))
        .env("DATA", &data)
        .env("OUT", &out)
        .env("DEVICE", "cpu")
        .env("LIMIT_S", "300")
        .env("WORKERS", "1")
        .envs([
            ("MODEL", "hrnet-w8"),
            ("IMAGE_H", "64"),
            ("IMAGE_W", "64"),
            ("BATCH", "2"),
        ])
        .envs([("GLOBAL_MAX_EPOCHS", "1"), ("REFINE_MAX_EPOCHS", "2")])
        .envs([
            ("PATCH_SIZE", "32"),
            ("PATCH_MM", "0.6"),
            ("JITTER_MM", "3"),
            ("REFINE_BATCH", "8"),
        ])
        .status()
        .expect("bash runs");
    assert!(status.success(), "the script failed: {status}");

    // Both stages left their checkpoints and logs; the epochs were chosen within the caps.
    for ck in ["global", "refine"] {
        assert!(
            out.join(ck).join("checkpoints/checkpoint_best.safetensors").is_file(),
            "{ck}"
        );
    }
    let refine_log = std::fs::read_to_string(out.join("refine/logs/train_log.csv")).unwrap();
    assert_eq!(
        refine_log.lines().count(),
        1 + 2,
        "a header and the 2 refiner epochs:\n{refine_log}"
    );

    // The summary holds both stages on both splits, the figures those of cephalo eval's reports.
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    for split in ["valid", "test"] {
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(format!("eval-{split}.json"))).unwrap()).unwrap();
        let global = report["metrics"]["overall"]["mre_mm"].as_f64().unwrap();
        let refined = report["refined"]["metrics"]["overall"]["mre_mm"].as_f64().unwrap();
        for (stage, mre) in [("global", global), ("refined", refined)] {
            assert!(mre.is_finite() && mre > 0.0, "{split} {stage}: {mre}");
            let row = format!("| {split} | {stage} | {mre:.3} |");
            assert!(summary.contains(&row), "summary lacks {row}:\n{summary}");
        }
    }
}

#[test]
fn accuracy_script_names_a_missing_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-data");
    let output = Command::new("bash")
        .arg(script())
        .env("CEPHALO", env!("CARGO_BIN_EXE_cephalo"))
        .env("DATA", &missing)
        .env("OUT", dir.path().join("out"))
        .output()
        .expect("bash runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no dataset at") && stderr.contains("no-such-data"),
        "{stderr}"
    );
}
