//! `cephalo device`: what GPUs and kernels this machine and build have.
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct DeviceArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(_args: &DeviceArgs) -> anyhow::Result<ExitCode> {
    println!("device report: not yet built");
    Ok(ExitCode::SUCCESS)
}
