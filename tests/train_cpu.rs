//! End-to-end CPU training on generated phantoms: the loss and the validation MRE fall, and a
//! run interrupted and resumed ends bit for bit where an uninterrupted run ends.
use std::path::Path;

mod cli_support;

use cli_support::csv_column;

/// 64x64 on the CPU, flags spelt with underscores.
const UNDERSCORED: cli_support::Train = cli_support::Train {
    underscores: true,
    ..cli_support::CPU_64
};

/// The training run of these tests: [`UNDERSCORED`], batch 4, seed 7.
fn train(dir: &Path, data: &Path, extra: &[&str]) -> std::process::ExitCode {
    UNDERSCORED.run_seeded(dir, data, extra)
}

#[test]
fn training_on_phantoms_lowers_loss_and_validation_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = cli_support::phantoms(dir.path(), 40, 3, 128);
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
    let data = cli_support::phantoms(data_dir.path(), 16, 5, 96);
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
    // The files themselves are byte-identical (sorted metadata keys), so sha256 can check it.
    let straight_bytes = std::fs::read(straight.path().join("ck/checkpoint_last.safetensors")).unwrap();
    assert!(
        std::fs::read(&last).unwrap() == straight_bytes,
        "checkpoint bytes differ"
    );
    let straight_log = straight.path().join("logs/train_log.csv");
    assert_eq!(
        csv_column(&split.path().join("logs/train_log.csv"), "epoch"),
        [1.0, 2.0]
    );

    // Interrupted (as by Ctrl-C) in the middle of epoch 2, and at its very end: the resumed logs
    // read as one run, with each epoch's loss over all its batches.
    for step in ["3", "4"] {
        let cut = tempfile::tempdir().unwrap();
        let mut interrupted = args.to_vec();
        interrupted.extend(["--interrupt-after-step", step]);
        assert_eq!(
            train(cut.path(), &data, &interrupted),
            std::process::ExitCode::from(130)
        );
        let last = cut.path().join("ck/checkpoint_last.safetensors");
        train(cut.path(), &data, &["--resume", last.to_str().unwrap()]);
        let log = cut.path().join("logs/train_log.csv");
        assert_eq!(csv_column(&log, "epoch"), [1.0, 2.0], "interrupted at step {step}");
        assert_eq!(
            csv_column(&log, "train_loss"),
            csv_column(&straight_log, "train_loss"),
            "interrupted at step {step}"
        );
        assert!(csv_column(&log, "images_per_s").iter().all(|&v| v > 0.0));
        assert!(
            std::fs::read(&last).unwrap() == straight_bytes,
            "interrupted at step {step}"
        );
        assert_eq!(
            event_steps(&cut.path().join("logs")),
            event_steps(&straight.path().join("logs"))
        );
    }
}

/// (step, first tag) of every scalar event in a log folder's TensorBoard files, sorted
/// (duplicates kept).
fn event_steps(dir: &Path) -> Vec<(u64, String)> {
    // Protobuf fields as (number, varint value or bytes); enough for what the writer emits.
    fn fields(mut b: &[u8]) -> Vec<(u64, u64, &[u8])> {
        let varint = |b: &mut &[u8]| {
            let (mut v, mut shift) = (0u64, 0);
            loop {
                let byte = b[0];
                *b = &b[1..];
                v |= ((byte & 0x7f) as u64) << shift;
                shift += 7;
                if byte & 0x80 == 0 {
                    return v;
                }
            }
        };
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b);
            let (value, bytes): (u64, &[u8]) = match key & 7 {
                0 => (varint(&mut b), &[]),
                1 => {
                    b = &b[8..];
                    (0, &[])
                }
                5 => {
                    b = &b[4..];
                    (0, &[])
                }
                _ => {
                    let len = varint(&mut b) as usize;
                    let (head, rest) = b.split_at(len);
                    b = rest;
                    (0, head)
                }
            };
            out.push((key >> 3, value, bytes));
        }
        out
    }
    let mut steps = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if !entry.file_name().to_string_lossy().starts_with("events.out.tfevents.") {
            continue;
        }
        let bytes = std::fs::read(entry.path()).unwrap();
        let mut at = 0;
        while at + 12 <= bytes.len() {
            let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            let event = fields(&bytes[at + 12..at + 12 + len]);
            let step = event.iter().find(|f| f.0 == 2).map(|f| f.1);
            let summary = event.iter().find(|f| f.0 == 5).map(|f| f.2);
            if let (Some(step), Some(summary)) = (step, summary) {
                let value = fields(summary)[0].2;
                let tag = fields(value).iter().find(|f| f.0 == 1).map(|f| f.2.to_vec()).unwrap();
                steps.push((step, String::from_utf8(tag).unwrap()));
            }
            at += 16 + len;
        }
    }
    steps.sort_unstable();
    steps
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
}

#[test]
fn a_failed_write_between_the_two_checkpoints_never_leaves_a_stale_best() {
    let dir = tempfile::tempdir().unwrap();
    let data = cli_support::phantoms(dir.path(), 16, 5, 96);
    // Without a valid split checkpoint_best follows the training loss, which falls from the
    // warmup epoch to the next: the premise that epoch 2 sets a new best holds by design.
    std::fs::remove_file(data.join("valid.csv")).unwrap();
    let ck = dir.path().join("ck");
    let (last, best) = (
        ck.join("checkpoint_last.safetensors"),
        ck.join("checkpoint_best.safetensors"),
    );
    let args = ["--epochs", "3", "--lr", "1e-3", "--warmup-epochs", "1", "--no-augment"];
    let mut first = args.to_vec();
    first.extend(["--stop-after", "1"]);
    train(dir.path(), &data, &first);
    let after_one = dir.path().join("after-epoch-1.safetensors");
    copy(&last, &after_one);
    let resume = ["--resume", after_one.to_str().unwrap()];
    let train_err = |extra: &[&str]| {
        let err = UNDERSCORED.run(dir.path(), &data, extra);
        format!("{:#}", err.expect_err("the injected failure stops training"))
    };
    let log = dir.path().join("logs/train_log.csv");

    // The write of checkpoint_best fails (a directory stands in its way): checkpoint_last must
    // not already record the new best. It is written second, so it stays at epoch 1.
    let best_one = dir.path().join("best-epoch-1.safetensors");
    std::fs::rename(&best, &best_one).unwrap();
    std::fs::create_dir(&best).unwrap();
    let err = train_err(&resume);
    assert!(err.contains("checkpoint_best"), "{err}");
    let loss = csv_column(&log, "train_loss");
    assert!(loss[1] < loss[0], "premise: epoch 2 improves on epoch 1 ({loss:?})");
    assert!(
        std::fs::read(&last).unwrap() == std::fs::read(&after_one).unwrap(),
        "checkpoint_last moved on"
    );
    std::fs::remove_dir(&best).unwrap();
    std::fs::rename(&best_one, &best).unwrap();

    // Now checkpoint_last's write fails (as a kill right after checkpoint_best would leave it):
    // checkpoint_best holds the new best, checkpoint_last stays one epoch behind.
    std::fs::remove_file(&last).unwrap();
    std::fs::create_dir(&last).unwrap();
    let err = train_err(&resume);
    assert!(err.contains("checkpoint_last"), "{err}");
    let best_ck = cephalo::checkpoint::load(&best).unwrap();
    assert_eq!(best_ck.meta.epoch, 2);
    let loss = csv_column(&log, "train_loss");
    assert_eq!(
        csv_column(&log, "epoch"),
        [1.0, 2.0],
        "the rerun epoch replaces its first record"
    );
    assert!((best_ck.meta.best_metric.unwrap() - loss[1]).abs() < 1e-5);
    std::fs::remove_dir(&last).unwrap();
    copy(&after_one, &last);

    // Resumed from epoch 1 once more, to the end: one run's logs and the best of all epochs.
    train(dir.path(), &data, &["--resume", last.to_str().unwrap()]);
    assert_eq!(csv_column(&log, "epoch"), [1.0, 2.0, 3.0]);
    let loss = csv_column(&log, "train_loss");
    let best_seen = loss.iter().cloned().fold(f64::INFINITY, f64::min);
    let best_ck = cephalo::checkpoint::load(&best).unwrap();
    assert!(
        (best_ck.meta.best_metric.unwrap() - best_seen).abs() < 1e-5,
        "{loss:?} vs {:?}",
        best_ck.meta.best_metric
    );
    let steps = event_steps(&dir.path().join("logs"));
    let mut unique = steps.clone();
    unique.dedup();
    assert_eq!(steps, unique, "a step logged twice in TensorBoard");
    assert_eq!(steps.iter().filter(|s| s.1 == "train/loss").count(), 6, "{steps:?}");
    let leftovers: Vec<_> = std::fs::read_dir(&ck)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".cephalo-tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn short_runs_and_resumes_need_no_repeated_flags() {
    let dir = tempfile::tempdir().unwrap();
    let data = cli_support::phantoms(dir.path(), 12, 2, 96);
    let ck = dir.path().join("ck");
    let base = |extra: &[&str]| cli_support::CPU_64.run(dir.path(), &data, extra);
    // Two epochs with the default warmup (5 epochs): the warmup shortens instead of failing.
    base(&["--epochs", "2", "--batch-size", "2", "--stop-after", "1"]).expect("a short run just works");
    // The resume takes the checkpoint's batch size (2), not the default (4).
    let last = ck.join("checkpoint_last.safetensors");
    base(&["--resume", last.to_str().unwrap()]).expect("resume without repeating --batch-size");
    let done = std::fs::read(&last).unwrap();
    assert_eq!(cephalo::checkpoint::load(&last).unwrap().meta.epoch, 2);
    assert_eq!(cephalo::checkpoint::load(&last).unwrap().meta.model.batch_size, 2);
    // Resuming a finished run trains nothing and succeeds.
    assert_eq!(
        base(&["--resume", last.to_str().unwrap()]).unwrap(),
        std::process::ExitCode::SUCCESS
    );
    assert!(std::fs::read(&last).unwrap() == done);

    // Counts of 0 and negative rates are refused with the flag's own message.
    let eval = ["eval", "--checkpoint", "x", "--dataset-path", "d", "--batch-size", "0"];
    let predict = ["predict", "--checkpoint", "x", "--batch-size", "0", "image.png"];
    let zero_counts = [
        ("train --epochs 0", "--epochs", base(&["--epochs", "0"])),
        ("train --batch-size 0", "--batch-size", base(&["--batch-size", "0"])),
        ("eval --batch-size 0", "--batch-size", cli_support::run(&eval)),
        ("predict --batch-size 0", "--batch-size", cli_support::run(&predict)),
    ];
    for (what, flag, result) in zero_counts {
        let err = result.unwrap_err().to_string();
        assert!(err.contains(flag) && err.contains("at least 1"), "{what}: {err}");
    }
    let err = format!("{:#}", base(&["--lr", "-1", "--epochs", "1"]).unwrap_err());
    assert!(err.contains("--lr must be a positive number, got -1"), "{err}");
}

/// `--in-channels 3`: the grey value goes into all three input channels on every path that feeds
/// the network (the training loader, evaluation, prediction), the checkpoint records the stem's
/// three channels, and a resumed run cannot change them.
#[test]
fn three_input_channels_train_evaluate_and_predict() {
    let dir = tempfile::tempdir().unwrap();
    let data = cli_support::phantoms(dir.path(), 12, 9, 96);
    train(
        dir.path(),
        &data,
        &["--epochs", "1", "--warmup-epochs", "0", "--in-channels", "3"],
    );
    let ck = dir.path().join("ck/checkpoint_last.safetensors");
    let loaded = cephalo::checkpoint::load(&ck).unwrap();
    assert_eq!(loaded.meta.model.in_channels, 3);
    let stem = &loaded.tensors["stem.conv1.weight"];
    assert_eq!(
        stem.shape.last(),
        Some(&3),
        "KRSC stem weights read 3 channels: {:?}",
        stem.shape
    );

    let report = dir.path().join("report.json");
    let json = cli_support::eval_report(&ck, &data, &report, &["--split", "test", "--device", "cpu"]);
    assert!(json["metrics"]["overall"]["mre_mm"].as_f64().unwrap().is_finite());

    let out = dir.path().join("predicted");
    let images = data.join("images");
    let args = [images.to_str().unwrap(), "--pixel-size", "0.1", "--device", "cpu"];
    let code = cli_support::predict(&ck, &out, &args).unwrap();
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    assert!(out.join("phantom_0000.json").is_file());

    let resume = ["--resume", ck.to_str().unwrap(), "--in-channels", "1"];
    let err = cli_support::CPU_64
        .run(dir.path(), &data, &resume)
        .expect_err("a resumed run keeps its channels");
    assert!(format!("{err:#}").contains("--in-channels 1"), "{err:#}");
}
