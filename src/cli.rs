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
    /// Check a dataset, or generate phantom radiographs.
    Data(crate::data::cli::DataArgs),
    /// Write a downscaled copy of a dataset in the landmark CSV format.
    Prepare(crate::data::prepare::PrepareArgs),
    /// Train a landmark detector (`--demo` trains on generated phantoms in minutes).
    Train(Box<crate::train::args::TrainArgs>),
    /// Accuracy of a checkpoint on a dataset split: MRE, SD, SDR, per landmark and machine.
    Eval(crate::eval::command::EvalArgs),
    /// Landmarks, cephalometric analysis and overlays for new images (no ground truth needed).
    Predict(crate::predict::command::PredictArgs),
    /// Write a checkpoint as an ONNX model (onnxruntime, OpenCV, TensorRT), with its decoding metadata.
    Export(crate::export::ExportArgs),
    /// Inspect the networks: `cephalo model summary --model hrnet --image-size 768 768`.
    Model(crate::model::summary::ModelArgs),
    /// Time a training step (or inference) on the GPU and report its memory.
    Bench(crate::bench::BenchArgs),
}

/// Runs one parsed command line; the exit code says whether the command found problems.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Device(args) => crate::gpu::report::run(&args),
        Command::Data(args) => crate::data::cli::run(&args),
        Command::Prepare(args) => crate::data::prepare::run(&args),
        Command::Model(args) => crate::model::summary::run(&args),
        Command::Train(args) => crate::train::trainer::run(&args),
        Command::Eval(args) => crate::eval::command::run(&args),
        Command::Predict(args) => crate::predict::command::run(&args),
        Command::Bench(args) => crate::bench::run(&args),
        Command::Export(args) => crate::export::run(&args),
    }
}

/// Parses a count that must be at least 1 (`--batch-size`, `--epochs`), so 0 is refused with the
/// flag named instead of failing later or looping over nothing.
pub fn positive_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e}: expected a whole number of 1 or more")),
    }
}
