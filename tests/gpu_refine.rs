//! The refinement stage on the GPU: a refiner trains in fp16 on patches (the global trainer's
//! engine, unchanged), and its two-stage evaluation on the GPU agrees with the CPU's on the same
//! checkpoints.
use std::path::Path;

mod cli_support;

use cli_support::{csv_column, eval, read_json, trained_checkpoint};

fn refined_mre(report: &Path) -> (f64, f64) {
    let json = read_json(report);
    (
        json["metrics"]["overall"]["mre_mm"].as_f64().unwrap(),
        json["refined"]["metrics"]["overall"]["mre_mm"].as_f64().unwrap(),
    )
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_refiner_trains_and_its_evaluation_matches_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let (data, global) = trained_checkpoint(dir.path(), 40, 11);
    let (ck, logs) = (dir.path().join("refiner"), dir.path().join("refiner-logs"));
    cli_support::train_refiner(
        dir.path(),
        &data,
        &global,
        &[
            "--patch-jitter-mm",
            "3",
            "--batch-size",
            "16",
            "--epochs",
            "3",
            "--device",
            "cuda",
        ],
    )
    .unwrap();
    let loss = csv_column(&logs.join("train_log.csv"), "train_loss");
    assert!(
        loss[2] < loss[0],
        "the refiner's training loss should fall on the GPU: {loss:?}"
    );

    let refiner = ck.join("checkpoint_last.safetensors");
    let mut mre = Vec::new();
    for device in ["cuda", "cpu"] {
        let report = dir.path().join(format!("{device}.json"));
        let args = [
            "--refiner",
            refiner.to_str().unwrap(),
            "--device",
            device,
            "--report",
            report.to_str().unwrap(),
        ];
        eval(&global, &data, &args).unwrap();
        mre.push(refined_mre(&report));
    }
    let ((g_gpu, r_gpu), (g_cpu, r_cpu)) = (mre[0], mre[1]);
    // fp16 inference against f32: a few hundredths of a millimetre on 0.6 mm phantom pixels.
    assert!((g_gpu - g_cpu).abs() < 0.1, "global MRE GPU {g_gpu} vs CPU {g_cpu}");
    assert!((r_gpu - r_cpu).abs() < 0.1, "refined MRE GPU {r_gpu} vs CPU {r_cpu}");
}
