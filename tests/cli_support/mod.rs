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

/// Draws `count` phantoms (96x96) into `dir/phantoms` and trains hrnet-w8 at 64x64 for one epoch;
/// returns the dataset folder and `checkpoint_last`.
pub fn trained_checkpoint(dir: &Path, count: usize, seed: u64) -> (PathBuf, PathBuf) {
    let data = dir.join("phantoms");
    cephalo::data::phantom::write_dataset(&data, count, seed, 96, 96).unwrap();
    let (ck, logs) = (dir.join("ck"), dir.join("logs"));
    run(&[
        "train",
        "--dataset-path",
        data.to_str().unwrap(),
        "--model",
        "hrnet-w8",
        "--image-size",
        "64",
        "64",
        "--epochs",
        "1",
        "--warmup-epochs",
        "0",
        "--device",
        "cpu",
        "--workers",
        "1",
        "--checkpoint-dir",
        ck.to_str().unwrap(),
        "--log-dir",
        logs.to_str().unwrap(),
    ])
    .unwrap();
    (data, ck.join("checkpoint_last.safetensors"))
}
