//! End-to-end CPU training on generated phantoms: the loss and the validation MRE fall, and a
//! run interrupted and resumed ends bit for bit where an uninterrupted run ends.
use std::path::Path;

mod cli_support;

fn train(dir: &Path, data: &Path, extra: &[&str]) -> std::process::ExitCode {
    let (ck, logs) = (dir.join("ck"), dir.join("logs"));
    let mut argv = vec![
        "train",
        "--dataset_path",
        data.to_str().unwrap(),
        "--model",
        "hrnet-w8",
        "--image_size",
        "64",
        "64",
        "--batch_size",
        "4",
        "--checkpoint-dir",
        ck.to_str().unwrap(),
        "--log-dir",
        logs.to_str().unwrap(),
        "--device",
        "cpu",
        "--workers",
        "1",
        "--seed",
        "7",
    ];
    argv.extend_from_slice(extra);
    cli_support::run(&argv).expect("training runs")
}

fn csv_column(path: &Path, column: &str) -> Vec<f64> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let i = r.headers().unwrap().iter().position(|h| h == column).unwrap();
    r.records().map(|rec| rec.unwrap()[i].parse().unwrap()).collect()
}

#[test]
fn training_on_phantoms_lowers_loss_and_validation_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("phantoms");
    cephalo::data::phantom::write_dataset(&data, 40, 3, 128, 128).unwrap();
    train(
        dir.path(),
        &data,
        &["--epochs", "6", "--lr", "3e-3", "--warmup-epochs", "1", "--no-augment"],
    );
    let log = dir.path().join("logs/train_log.csv");
    let loss = csv_column(&log, "train_loss");
    let mre = csv_column(&log, "val_mre_mm");
    println!("loss {loss:?}\nMRE {mre:?}");
    assert_eq!(loss.len(), 6);
    assert!(loss[5] < 0.7 * loss[0], "training loss should fall: {loss:?}");
    let best_late = mre[3..].iter().cloned().fold(f64::INFINITY, f64::min);
    assert!(best_late < 0.8 * mre[0], "validation MRE should fall: {mre:?}");
    assert!(dir.path().join("ck/checkpoint_best.safetensors").exists());
    let events: Vec<_> = std::fs::read_dir(dir.path().join("logs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("events.out.tfevents."))
        .collect();
    assert_eq!(events.len(), 1, "one TensorBoard event file");
    // Where the time went, per step and per epoch (tags are stored as plain strings).
    let bytes = std::fs::read(events[0].path()).unwrap();
    for tag in [
        "train/loader_wait_ms",
        "epoch/loader_wait_fraction",
        "epoch/step_images_per_s",
    ] {
        assert!(
            bytes.windows(tag.len()).any(|w| w == tag.as_bytes()),
            "{tag} missing from the TensorBoard log"
        );
    }
}

#[test]
fn resumed_training_is_bitwise_identical_to_an_uninterrupted_run() {
    let data_dir = tempfile::tempdir().unwrap();
    let data = data_dir.path().join("phantoms");
    cephalo::data::phantom::write_dataset(&data, 16, 5, 96, 96).unwrap();
    let args = ["--epochs", "2", "--lr", "1e-3", "--warmup-epochs", "1"];

    let straight = tempfile::tempdir().unwrap();
    train(straight.path(), &data, &args);

    let split = tempfile::tempdir().unwrap();
    let mut first_half = args.to_vec();
    first_half.extend(["--stop-after", "1"]);
    train(split.path(), &data, &first_half);
    let last = split.path().join("ck/checkpoint_last.safetensors");
    train(split.path(), &data, &["--resume", last.to_str().unwrap()]);

    let a = cephalo::checkpoint::load(&straight.path().join("ck/checkpoint_last.safetensors")).unwrap();
    let b = cephalo::checkpoint::load(&last).unwrap();
    assert_eq!(a.meta.step, b.meta.step);
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (name, t) in &a.tensors {
        let u = &b.tensors[name];
        let same = t.data.iter().zip(&u.data).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{name} differs between the straight and the resumed run");
    }
}
