//! The `cephalo` binary: parse the command line and hand it to the library.
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cephalo::cli::Cli::parse();
    match cephalo::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            // `{:#}` prints the whole context chain: "reading X: parsing row 3: ...".
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
