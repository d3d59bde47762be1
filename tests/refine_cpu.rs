//! The refinement stage end to end on the CPU at tiny sizes: a refiner trained on patches around
//! a tiny global model's predictions, evaluated beside it, resumed, used by predict; and the
//! mix-ups of the two kinds of checkpoint refused with errors that say which is which.
use std::path::{Path, PathBuf};

mod cli_support;

use cli_support::{csv_column, eval, eval_report, predict, run, trained_checkpoint};

/// The refiner's training on the CPU: batch 8, one loader worker, patches jittered by 3 mm unless
/// `extra` says otherwise.
fn train_refiner(dir: &Path, data: &Path, global: &Path, extra: &[&str]) -> anyhow::Result<std::process::ExitCode> {
    let mut args = vec!["--batch-size", "8", "--device", "cpu", "--workers", "1"];
    if !extra.contains(&"--patch-jitter-mm") {
        args.extend(["--patch-jitter-mm", "3"]);
    }
    args.extend_from_slice(extra);
    cli_support::train_refiner(dir, data, global, &args)
}

/// Trains a global model on `count` phantoms drawn from `seed` (as [`trained_checkpoint`]), then a
/// refiner on its predictions for one epoch; returns the dataset folder and the global and the
/// refiner's last checkpoints.
fn global_and_refiner(dir: &Path, count: usize, seed: u64) -> (PathBuf, PathBuf, PathBuf) {
    let (data, global) = trained_checkpoint(dir, count, seed);
    train_refiner(dir, &data, &global, &["--epochs", "1"]).unwrap();
    (data, global, dir.join("refiner/checkpoint_last.safetensors"))
}

fn error_of(result: anyhow::Result<std::process::ExitCode>) -> String {
    format!("{:#}", result.expect_err("the command should fail"))
}

#[test]
fn refiner_trains_evaluates_beside_the_global_model_resumes_and_predicts() {
    let dir = tempfile::tempdir().unwrap();
    let (data, global, refiner) = global_and_refiner(dir.path(), 20, 5);
    let meta = cephalo::checkpoint::load(&refiner).unwrap().meta;
    let spec = meta.refiner.expect("a refiner records its patches");
    assert_eq!((spec.size, spec.mm, spec.jitter_mm), (32, 0.6, 3.0));
    assert_eq!(meta.model.image_size, [32, 32]);

    // Validation each epoch is the refined MRE on the valid split.
    let log = dir.path().join("refiner-logs/train_log.csv");
    let mre = csv_column(&log, "val_mre_mm");
    assert_eq!(mre.len(), 1);
    assert!(mre[0].is_finite() && mre[0] > 0.0);

    // Resuming continues the refiner (one more epoch of the same run).
    train_refiner(
        dir.path(),
        &data,
        &global,
        &["--resume", refiner.to_str().unwrap(), "--stop-after", "1"],
    )
    .unwrap();

    let report = dir.path().join("report.json");
    let refiner_on_cpu = ["--refiner", refiner.to_str().unwrap(), "--device", "cpu"];
    let json = eval_report(
        &global,
        &data,
        &report,
        &[&refiner_on_cpu[..], &["--split", "test", "--workers", "1"]].concat(),
    );
    let global_mre = json["metrics"]["overall"]["mre_mm"].as_f64().unwrap();
    let refined_mre = json["refined"]["metrics"]["overall"]["mre_mm"].as_f64().unwrap();
    assert!(global_mre.is_finite() && refined_mre.is_finite());
    assert_eq!(json["refined"]["metrics"]["per_landmark"].as_array().unwrap().len(), 19);
    let first = &json["predictions"][0]["landmarks"][0];
    assert!(first["refined"].is_array() && first["refined_error_mm"].is_number());

    let out = dir.path().join("predicted");
    let image = data.join("images/phantom_0019.png");
    let args = [&refiner_on_cpu[..], &["--no-overlay", image.to_str().unwrap()]].concat();
    predict(&global, &out, &args).unwrap();
    let csv = std::fs::read_to_string(out.join("predictions.csv")).unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");
}

#[test]
fn global_and_refiner_checkpoints_are_not_taken_for_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let (data, global, refiner) = global_and_refiner(dir.path(), 12, 9);
    let eval = |checkpoint: &Path, refiner: &Path| {
        eval(
            checkpoint,
            &data,
            &["--refiner", refiner.to_str().unwrap(), "--device", "cpu"],
        )
    };
    let e = error_of(eval(&global, &global));
    assert!(e.contains("--refiner") && e.contains("is a global model"), "{e}");
    let e = error_of(eval(&refiner, &refiner));
    assert!(e.contains("--checkpoint") && e.contains("is a refiner"), "{e}");
    let e = error_of(train_refiner(dir.path(), &data, &refiner, &["--epochs", "1"]));
    assert!(e.contains("--global") && e.contains("is a refiner"), "{e}");

    // A refiner of another landmark set: the same network with its landmark names changed.
    let mut ck = cephalo::checkpoint::load(&refiner).unwrap();
    ck.meta.landmarks[0] = "X".into();
    let other = dir.path().join("other.safetensors");
    cephalo::checkpoint::save(&other, &ck).unwrap();
    let e = error_of(eval(&global, &other));
    assert!(e.contains("refines landmarks [X"), "{e}");
    // And of three-channel images.
    let mut ck = cephalo::checkpoint::load(&refiner).unwrap();
    ck.meta.model.in_channels = 3;
    cephalo::checkpoint::save(&other, &ck).unwrap();
    let e = error_of(eval(&global, &other));
    assert!(e.contains("3-channel"), "{e}");

    // Patch flags without --stage refine are a mistake, not silently ignored.
    let e = error_of(run(&[
        "train",
        "--dataset-path",
        data.to_str().unwrap(),
        "--patch-size",
        "96",
        "--device",
        "cpu",
    ]));
    assert!(e.contains("--stage refine"), "{e}");
    // A jitter that would push the landmark out of its patch.
    let e = error_of(train_refiner(dir.path(), &data, &global, &["--patch-jitter-mm", "9"]));
    assert!(e.contains("--patch-jitter-mm 9"), "{e}");
}
