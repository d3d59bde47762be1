//! The commands and their flags. Each command's arguments live beside the code that runs it;
//! this file only lists the commands and dispatches.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cephalo",
    version,
    about = "Train, evaluate and run cephalometric landmark detectors on one NVIDIA GPU",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the GPUs, driver, VRAM and the kernels built into this binary.
    Device(crate::gpu::report::DeviceArgs),
    /// Inspect the networks: `cephalo model summary --model hrnet --image-size 768 768`.
    Model(crate::model::summary::ModelArgs),
}

/// Runs one parsed command line; the exit code says whether the command found problems.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Device(args) => crate::gpu::report::run(&args),
        Command::Model(args) => crate::model::summary::run(&args),
    }
}
