//! The `cephalo data ...` commands.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::{check::check_dataset, phantom, Annotator, DatasetOptions};

#[derive(Debug, clap::Args)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Validate every sample of a dataset and summarise it; exit status 1 if anything is wrong.
    Check(CheckArgs),
    /// Generate procedural skull-like radiographs with landmarks (landmark CSV format).
    Phantom(PhantomArgs),
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The dataset folder (aariz, isbi or csv layout, detected).
    #[arg(long)]
    pub dataset_path: PathBuf,
    /// Ground truth when a dataset has two annotators.
    #[arg(long, value_enum, default_value_t = Annotator::Mean)]
    pub annotator: Annotator,
}

#[derive(Debug, clap::Args)]
pub struct PhantomArgs {
    /// Output folder (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of images (70 % train, 15 % valid, 15 % test).
    #[arg(long, default_value_t = 100)]
    pub count: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image width in pixels.
    #[arg(long, default_value_t = 256)]
    pub width: usize,
    /// Image height in pixels.
    #[arg(long, default_value_t = 320)]
    pub height: usize,
}

pub fn run(args: &DataArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        DataCommand::Check(a) => {
            let opts = DatasetOptions { annotator: a.annotator };
            let report = check_dataset(&a.dataset_path, &opts, true)?;
            print!("{}", report.render(&a.dataset_path));
            Ok(if report.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        DataCommand::Phantom(a) => {
            phantom::write_dataset(&a.out, a.count, a.seed, a.width, a.height)?;
            println!("wrote {} phantom image(s) to {}", a.count, a.out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
