//! Shared by the command-level tests: run `cephalo` commands in-process (the shared binary path
//! may be rebuilt by a concurrent build) and train a tiny checkpoint on phantoms.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cephalo::cli::Cli;
use clap::Parser;

/// Runs `cephalo ARGS...` as the binary would, returning its exit code or error.
pub fn run(argv: &[&str]) -> anyhow::Result<ExitCode> {
    let cli = Cli::try_parse_from(std::iter::once("cephalo").chain(argv.iter().copied()))?;
    cephalo::cli::run(cli)
}

/// A `cephalo train` on phantoms: its model, image size, device and loader workers, and
/// whether it spells `--dataset_path` and `--image_size` with underscores (the aliases the
/// original scripts used) or with hyphens.
#[derive(Clone, Copy)]
pub struct Train<'a> {
    pub underscores: bool,
    pub model: &'a str,
    pub size: &'a str,
    pub device: &'a str,
    pub workers: &'a str,
}

/// hrnet-w8 at 64x64 on the CPU with one loader worker, hyphenated flags.
pub const CPU_64: Train = Train {
    underscores: false,
    model: "hrnet-w8",
    size: "64",
    device: "cpu",
    workers: "1",
};

impl Train<'_> {
    /// Trains on `data` with checkpoints in `dir/ck` and logs in `dir/logs`, then the flags `extra`.
    pub fn run(&self, dir: &Path, data: &Path, extra: &[&str]) -> anyhow::Result<ExitCode> {
        let (ck, logs) = (dir.join("ck"), dir.join("logs"));
        let (dataset_flag, size_flag) = match self.underscores {
            true => ("--dataset_path", "--image_size"),
            false => ("--dataset-path", "--image-size"),
        };
        let mut argv = vec![
            "train",
            dataset_flag,
            data.to_str().unwrap(),
            "--model",
            self.model,
            size_flag,
            self.size,
            self.size,
            "--device",
            self.device,
            "--workers",
            self.workers,
        ];
        argv.extend(output_dirs(&ck, &logs));
        argv.extend_from_slice(extra);
        run(&argv)
    }

    /// [`Train::run`] at batch 4 with seed 7 (`--batch_size`: for the underscore spellings), as
    /// the end-to-end training tests run; panics unless training runs.
    pub fn run_seeded(&self, dir: &Path, data: &Path, extra: &[&str]) -> ExitCode {
        let args = [&["--batch_size", "4", "--seed", "7"], extra].concat();
        self.run(dir, data, &args).expect("training runs")
    }
}

/// The flags that send a training run's checkpoints to `ck` and its logs to `logs`.
fn output_dirs<'a>(ck: &'a Path, logs: &'a Path) -> [&'a str; 4] {
    [
        "--checkpoint-dir",
        ck.to_str().unwrap(),
        "--log-dir",
        logs.to_str().unwrap(),
    ]
}

/// Draws `count` phantoms of `size` x `size` pixels from `seed` into `dir/phantoms`; returns that
/// folder.
pub fn phantoms(dir: &Path, count: usize, seed: u64, size: usize) -> PathBuf {
    let data = dir.join("phantoms");
    cephalo::data::phantom::write_dataset(&data, count, seed, size, size).unwrap();
    data
}

/// Draws `count` phantoms (96x96) into `dir/phantoms` and trains hrnet-w8 at 64x64 for one epoch;
/// returns the dataset folder and `checkpoint_last`.
pub fn trained_checkpoint(dir: &Path, count: usize, seed: u64) -> (PathBuf, PathBuf) {
    let data = phantoms(dir, count, seed, 96);
    CPU_64
        .run(dir, &data, &["--epochs", "1", "--warmup-epochs", "0"])
        .unwrap();
    (data, dir.join("ck/checkpoint_last.safetensors"))
}

/// The values of one column of a CSV log.
pub fn csv_column(path: &Path, column: &str) -> Vec<f64> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let i = r.headers().unwrap().iter().position(|h| h == column).unwrap();
    r.records().map(|rec| rec.unwrap()[i].parse().unwrap()).collect()
}

/// Runs `cephalo eval --checkpoint CHECKPOINT --dataset-path DATA`, then the flags `extra`.
pub fn eval(checkpoint: &Path, data: &Path, extra: &[&str]) -> anyhow::Result<ExitCode> {
    on_checkpoint("eval", checkpoint, ("--dataset-path", data), extra)
}

/// Runs `cephalo eval --checkpoint CHECKPOINT --dataset-path DATA --report REPORT`, then the flags
/// `extra`; panics unless it succeeds, and returns the report, parsed.
pub fn eval_report(checkpoint: &Path, data: &Path, report: &Path, extra: &[&str]) -> serde_json::Value {
    let args = [&["--report", report.to_str().unwrap()], extra].concat();
    eval(checkpoint, data, &args).expect("eval runs");
    read_json(report)
}

/// Runs `cephalo predict --checkpoint CHECKPOINT --out OUT`, then `extra` (the images and flags).
pub fn predict(checkpoint: &Path, out: &Path, extra: &[&str]) -> anyhow::Result<ExitCode> {
    on_checkpoint("predict", checkpoint, ("--out", out), extra)
}

/// Runs `cephalo COMMAND --checkpoint CHECKPOINT FLAG PATH`, then `extra`.
fn on_checkpoint(
    command: &str,
    checkpoint: &Path,
    (flag, path): (&str, &Path),
    extra: &[&str],
) -> anyhow::Result<ExitCode> {
    let mut argv = vec![command, "--checkpoint", checkpoint.to_str().unwrap()];
    argv.extend([flag, path.to_str().unwrap()]);
    argv.extend_from_slice(extra);
    run(&argv)
}

/// Runs `cephalo train --stage refine` of hrnet-w8 on 32-pixel patches of 0.6 mm around the
/// predictions of `global` on `data`, at lr 2e-3 without warmup, with checkpoints in
/// `dir/refiner` and logs in `dir/refiner-logs`; then the flags `extra`.
pub fn train_refiner(dir: &Path, data: &Path, global: &Path, extra: &[&str]) -> anyhow::Result<ExitCode> {
    let (ck, logs) = (dir.join("refiner"), dir.join("refiner-logs"));
    let argv = [
        "train",
        "--stage",
        "refine",
        "--dataset-path",
        data.to_str().unwrap(),
        "--global",
        global.to_str().unwrap(),
        "--model",
        "hrnet-w8",
        "--patch-size",
        "32",
        "--patch-mm",
        "0.6",
        "--lr",
        "2e-3",
        "--warmup-epochs",
        "0",
    ];
    run(&[&argv[..], &output_dirs(&ck, &logs), extra].concat())
}

/// A JSON file (an `eval --report`, a prediction), parsed.
pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}
