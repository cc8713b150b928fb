//! `vramcap`'s arguments: the clap definitions, and the checks of values clap leaves as text.
//! `tools/gen-docs` reads this file for the man pages and completions: it keeps the items that derive a
//! clap trait and what they name, so those may name only what this file defines or imports from `std`,
//! `clap` and `vramcap_core`.

use clap::{Parser, Subcommand, ValueEnum};
use std::process::ExitCode;
use std::time::Duration;
use vramcap_core::config::parse_duration;
use vramcap_core::config::size::{parse_size, Size};
use vramcap_core::status;
use vramcap_core::unloader;

#[derive(Parser, Debug)]
#[command(
    name = "vramcap",
    version,
    about = "Hard per-process VRAM caps for shared GPUs"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// An aligned table, sizes in binary units.
    Table,
    /// Comma-separated values, sizes in bytes.
    Csv,
    /// The versioned JSON document (README: "status --json").
    Json,
}

/// How `status` and `watch` show the view.
#[derive(clap::Args, Debug)]
pub(crate) struct ViewArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// The same as --format json.
    #[arg(long, conflicts_with = "format")]
    json: bool,
    /// The fields of the table or CSV, comma-separated, e.g. pid,name,gpu,charged,cap (see `vramcap
    /// fields`).
    #[arg(long, value_name = "FIELDS", value_parser = query_fields)]
    pub(crate) query: Option<Query>,
    /// Do not ask NVML.
    #[arg(long)]
    pub(crate) no_nvml: bool,
}

impl ViewArgs {
    pub(crate) fn format(&self) -> Format {
        if self.json {
            Format::Json
        } else {
            self.format
        }
    }
}

#[derive(Subcommand, Debug)]
pub(crate) enum Cmd {
    /// What every capped process holds, per device, beside NVML's own figures.
    Status {
        #[command(flatten)]
        view: ViewArgs,
    },
    /// The status table, refreshed live; q or Ctrl-C quits. Into a pipe or a file: one plain frame per
    /// interval.
    Watch {
        /// Time between refreshes: a duration (500ms, 2s, 1m) or seconds (0.5), from 100ms to 1h.
        #[arg(long, default_value = "1s", value_parser = parse_interval)]
        interval: Duration,
        #[command(flatten)]
        view: ViewArgs,
    },
    /// The fields that --query can name.
    Fields,
    /// Serve Prometheus metrics (text exposition format) at http://LISTEN/metrics, in the foreground.
    Exporter {
        /// The address to listen on (port 0: any free port, printed on stderr).
        #[arg(long, default_value = "127.0.0.1:9400")]
        listen: String,
        /// Do not ask NVML (no per-device free and total memory).
        #[arg(long)]
        no_nvml: bool,
    },
    /// The priority unloader, in the foreground: serves the requests of workers whose device is full by
    /// asking lower-priority workers to unload. Stops on SIGTERM or Ctrl-C.
    Unloader {
        #[command(flatten)]
        hooks: HookArgs,
        /// How often to look for requests (e.g. 50ms).
        #[arg(long, default_value = "50ms")]
        poll: String,
        /// Serve every user's default segment (/dev/shm/vramcap-<uid>) at once, with one priority order
        /// across them (root only: each user's workers are acted on as that user).
        #[arg(long)]
        all_users: bool,
    },
    /// Free memory on a device now, as the unloader would for a request.
    Reclaim {
        /// NVML index (nvidia-smi's), or the device's UUID (GPU-…, or a prefix of it that names one
        /// device).
        #[arg(long)]
        device: String,
        /// How much must be free, e.g. 6GiB.
        #[arg(long)]
        bytes: String,
        /// Free it for this worker (only workers of lower priority are asked); default: any unprotected one.
        #[arg(long = "for", value_name = "NAME")]
        for_name: Option<String>,
        /// Show whom it would ask, and ask nobody.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        hooks: HookArgs,
    },
    /// Ask the named worker to unload.
    Unload {
        name: String,
        #[command(flatten)]
        hooks: HookArgs,
    },
    /// Ask every unprotected worker to unload.
    Cleanup {
        #[command(flatten)]
        hooks: HookArgs,
    },
    /// Move the named worker's device memory to host memory (the driver's checkpoint API), without its
    /// help; --hook-timeout bounds the wait for its CUDA calls to pause.
    Suspend {
        name: String,
        #[command(flatten)]
        hooks: HookArgs,
    },
    /// Bring a suspended worker back onto its device.
    Resume {
        name: String,
        #[command(flatten)]
        hooks: HookArgs,
    },
    /// Show the cap and the priority unloader in a few seconds, on this GPU or a simulated one.
    ///
    /// It runs on this machine's GPU where there is one (and briefly fills most of its free memory;
    /// it needs 4 GiB free), else on the simulated device that vramcap ships (a fake driver), and then
    /// labels every line "(simulated device)". It starts its own workers and unloader on a segment of
    /// its own, prints `vramcap status` before and after, and stops and removes everything it started
    /// when it ends, also on Ctrl-C or an error.
    Demo {
        /// Use the simulated device even where there is a GPU.
        #[arg(long)]
        simulated: bool,
    },
    /// Check a limit and show how it reads: SPEC (a VRAMCAP_LIMIT value, e.g. 10GiB or 0=10GiB,1=25%), or
    /// without it the limit this environment gives (VRAMCAP_LIMIT, else HAMi's CUDA_DEVICE_MEMORY_LIMIT*).
    CheckLimit {
        spec: Option<String>,
        /// Accept a cap smaller than a CUDA context (VRAMCAP_CONTEXT_BYTES, default 512MiB).
        #[arg(long)]
        force: bool,
    },
}

#[derive(clap::Args, Debug)]
pub(crate) struct HookArgs {
    /// How long a hook may take (its HTTP answer, its command) and how long to wait for memory to fall.
    #[arg(long, default_value = "30s")]
    hook_timeout: String,
    /// Allow unload URLs that are not loopback addresses.
    #[arg(long)]
    allow_remote: bool,
    /// Do not ask NVML for free memory (free exactly what was asked for).
    #[arg(long)]
    no_nvml: bool,
    /// Host memory to leave free when suspending a worker (its device memory moves to host memory).
    #[arg(long, default_value = "1GiB")]
    min_host_free: String,
}

impl HookArgs {
    pub(crate) fn options(&self, poll: &str) -> Result<unloader::Options, ExitCode> {
        let duration = |flag: &str, v: &str| {
            parse_duration(v).map_err(|reason| {
                eprintln!("vramcap: {flag} {v:?} is invalid: {reason}");
                ExitCode::from(2)
            })
        };
        let min_host_free = match parse_size(&self.min_host_free) {
            _ if self.min_host_free.trim() == "0" => 0,
            Ok(Size::Bytes(b)) => b,
            _ => {
                eprintln!(
                    "vramcap: --min-host-free {:?} is invalid: expected a size such as 1GiB",
                    self.min_host_free
                );
                return Err(ExitCode::from(2));
            }
        };
        Ok(unloader::Options {
            poll: duration("--poll", poll)?.max(Duration::from_millis(1)),
            hook_timeout: duration("--hook-timeout", &self.hook_timeout)?,
            allow_remote: self.allow_remote,
            nvml: !self.no_nvml,
            min_host_free,
        })
    }
}

/// `--interval`: a duration (`500ms`, `2s`) or plain seconds (`0.5`), from 100 ms to an hour.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err(format!("{text:?} is not between 100ms and 1h"));
    }
    Ok(d)
}

/// The fields `--query` named.
#[derive(Clone, Debug)]
pub(crate) struct Query(pub(crate) Vec<&'static status::Field>);

fn query_fields(text: &str) -> Result<Query, String> {
    status::parse_query(text).map(Query)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_take_durations_and_refuse_the_rest() {
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("2m"), Ok(Duration::from_secs(120)));
        for bad in ["NaN", "inf", "-1", "0", "50ms", "2h", "soon", "1e9", ""] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }
}
