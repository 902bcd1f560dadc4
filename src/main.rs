use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    atsms_milter::cli::run(atsms_milter::cli::Cli::parse())
}
