//! `vramcap`: inspect and check vramcap configuration.

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use vramcap::config::{parse_limit, Limit};
use vramcap::size::human;

#[derive(Parser, Debug)]
#[command(
    name = "vramcap",
    version,
    about = "Hard per-process VRAM caps for shared GPUs"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Check a VRAMCAP_LIMIT value and show how it reads.
    CheckLimit {
        /// The value, e.g. 10GiB or 0=10GiB,1=25%.
        spec: String,
    },
}

fn describe(size: vramcap::size::Size) -> String {
    match size {
        vramcap::size::Size::Bytes(b) => format!("{} ({b} bytes)", human(b)),
        vramcap::size::Size::Percent(p) => format!("{p}% of the device's memory"),
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::CheckLimit { spec } => match parse_limit(&spec) {
            Ok(Limit::All(size)) => {
                println!("every device: {}", describe(size));
                ExitCode::SUCCESS
            }
            Ok(Limit::PerDevice(entries)) => {
                for (key, size) in entries {
                    println!("{key:?}: {}", describe(size));
                }
                ExitCode::SUCCESS
            }
            Ok(Limit::Unset) => ExitCode::SUCCESS,
            Err(reason) => {
                eprintln!("vramcap: VRAMCAP_LIMIT={spec:?} is invalid: {reason}");
                ExitCode::from(2)
            }
        },
    }
}
