//! `vramcap`: see what capped processes hold, and check configuration.

mod watch;

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use std::time::Duration;
use vramcap::config::{parse_limit, Limit};
use vramcap::shm::{segment_path, Segment, ShmError};
use vramcap::size::{human, Size};
use vramcap::status;

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
    /// What every capped process holds, per device, beside NVML's own figures.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Do not ask NVML.
        #[arg(long)]
        no_nvml: bool,
    },
    /// The status table, refreshed live; q or Ctrl-C quits.
    Watch {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// Check a VRAMCAP_LIMIT value and show how it reads.
    CheckLimit {
        /// The value, e.g. 10GiB or 0=10GiB,1=25%.
        spec: String,
    },
}

fn describe(size: Size) -> String {
    match size {
        Size::Bytes(b) => format!("{} ({b} bytes)", human(b)),
        Size::Percent(p) => format!("{p}% of the device's memory"),
    }
}

/// Exit codes: 0 fine, 1 no segment (no capped process has started), 2 a segment refused or bad input.
fn open_segment() -> Result<(Segment, String), ExitCode> {
    let path = segment_path();
    match Segment::open_existing(&path) {
        Ok(seg) => Ok((seg, path.display().to_string())),
        Err(ShmError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "vramcap: no segment at {} (no capped process has started; VRAMCAP_SHM names another)",
                path.display()
            );
            Err(ExitCode::from(1))
        }
        Err(e) => {
            eprintln!("vramcap: {e}");
            Err(ExitCode::from(2))
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Status { json, no_nvml } => {
            let (seg, path) = match open_segment() {
                Ok(s) => s,
                Err(code) => return code,
            };
            let status = status::collect(&seg, &path, !no_nvml);
            let text = if json {
                match serde_json::to_string_pretty(&status) {
                    Ok(text) => text + "\n",
                    Err(e) => {
                        eprintln!("vramcap: {e}");
                        return ExitCode::from(2);
                    }
                }
            } else {
                status::render(&status)
            };
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
            ExitCode::SUCCESS
        }
        Cmd::Watch { interval } => {
            let (seg, path) = match open_segment() {
                Ok(s) => s,
                Err(code) => return code,
            };
            let every = Duration::from_secs_f64(interval.clamp(0.1, 3600.0));
            watch::run(
                || status::render(&status::collect(&seg, &path, true)),
                every,
            );
            ExitCode::SUCCESS
        }
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
