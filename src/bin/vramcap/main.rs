//! `vramcap`: see what capped processes hold, settle memory conflicts by priority, check configuration.

mod checkpoint;
mod hooks;
mod unloader;
mod watch;

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use std::time::Duration;
use unloader::Unloader;
use vramcap::config::{canonical_uuid, parse_duration, parse_limit, Limit};
use vramcap::shm::{segment_path, Segment, ShmError};
use vramcap::size::{human, Size};
use vramcap::size::{parse_size, HumanBytes};
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
        /// Time between refreshes: seconds (0.5) or a duration (500ms, 2s), from 100ms to 1h.
        #[arg(long, default_value = "1s", value_parser = parse_interval)]
        interval: Duration,
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
        /// NVML index or GPU-<uuid>.
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
    /// Check a VRAMCAP_LIMIT value and show how it reads.
    CheckLimit {
        /// The value, e.g. 10GiB or 0=10GiB,1=25%.
        spec: String,
    },
}

#[derive(clap::Args, Debug)]
struct HookArgs {
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
    fn options(&self, poll: &str) -> Result<unloader::Options, ExitCode> {
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

fn describe(size: Size) -> String {
    match size {
        Size::Bytes(b) => format!("{} ({b} bytes)", human(b)),
        Size::Percent(p) => format!("{p}% of the device's memory"),
    }
}

/// The unloader for a one-off command, on the segment opened `writable`.
fn open_unloader(opts: unloader::Options, writable: bool) -> Result<Unloader, ExitCode> {
    let (seg, path) = open_segment_as(writable)?;
    Ok(Unloader::new(seg, std::path::Path::new(&path), opts))
}

/// Exit codes: 0 fine, 1 no segment (no capped process has started), 2 a segment refused or bad input.
fn open_segment() -> Result<(Segment, String), ExitCode> {
    open_segment_as(false)
}

/// The segment, writable where the command answers requests in it.
fn open_segment_as(writable: bool) -> Result<(Segment, String), ExitCode> {
    let path = segment_path();
    let opened = if writable {
        Segment::open_existing_rw(&path)
    } else {
        Segment::open_existing(&path)
    };
    match opened {
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

/// `--interval`: a duration (`500ms`) or plain seconds (`0.5`), from 100 ms to an hour.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let d = match text.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && (0.1..=3600.0).contains(&secs) => {
            Duration::from_secs_f64(secs)
        }
        Ok(_) => return Err(format!("{text:?} is not between 0.1 and 3600 seconds")),
        Err(_) => vramcap::config::parse_duration(text)?,
    };
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err(format!("{text:?} is not between 100ms and 1h"));
    }
    Ok(d)
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
            let every = interval;
            watch::run(
                || status::render(&status::collect(&seg, &path, true)),
                every,
            );
            ExitCode::SUCCESS
        }
        Cmd::Unloader {
            hooks,
            poll,
            all_users,
        } => {
            let opts = match hooks.options(&poll) {
                Ok(o) => o,
                Err(code) => return code,
            };
            // SAFETY: geteuid has no preconditions.
            if all_users && unsafe { libc::geteuid() } != 0 {
                eprintln!(
                    "vramcap unloader: --all-users needs root (it reads every user's segment)"
                );
                return ExitCode::from(2);
            }
            let mut u = if all_users {
                Unloader::daemon(unloader::Finder::AllUsers, opts)
            } else {
                let path = segment_path();
                let mut u = Unloader::daemon(unloader::Finder::One(path.clone()), opts);
                // One unloader per segment: a second one says who serves it and exits.
                if let Err(e) = u.serve(&path) {
                    eprintln!("vramcap unloader: {e}");
                    return ExitCode::from(1);
                }
                u
            };
            u.run();
            ExitCode::SUCCESS
        }
        Cmd::Reclaim {
            device,
            bytes,
            for_name,
            dry_run,
            hooks,
        } => reclaim(&device, &bytes, for_name.as_deref(), dry_run, &hooks),
        Cmd::Unload { name, hooks } => unload(Some(&name), &hooks),
        Cmd::Cleanup { hooks } => unload(None, &hooks),
        Cmd::Suspend { name, hooks } => suspend_or_resume(&name, true, &hooks),
        Cmd::Resume { name, hooks } => suspend_or_resume(&name, false, &hooks),
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

/// `vramcap reclaim`: exit 0 if the device has the room asked for (or would, with --dry-run), 3 if not.
fn reclaim(
    device: &str,
    bytes: &str,
    for_name: Option<&str>,
    dry_run: bool,
    hooks: &HookArgs,
) -> ExitCode {
    let opts = match hooks.options("50ms") {
        Ok(o) => o,
        Err(code) => return code,
    };
    let bytes = match parse_size(bytes) {
        Ok(Size::Bytes(b)) => b,
        Ok(Size::Percent(_)) | Err(_) => {
            eprintln!("vramcap: --bytes {bytes:?} is invalid: expected a size such as 6GiB");
            return ExitCode::from(2);
        }
    };
    let u = match open_unloader(opts, true) {
        Ok(u) => u,
        Err(code) => return code,
    };
    let uuid = if device.to_ascii_lowercase().starts_with("gpu-") {
        canonical_uuid(device)
    } else {
        match device.parse::<u32>().ok().and_then(|i| u.uuid_of(i)) {
            Some(u) => u,
            None => {
                eprintln!("vramcap: --device {device:?}: no such NVML device (give GPU-<uuid> without NVML)");
                return ExitCode::from(2);
            }
        }
    };
    let (priority, requester) = match for_name {
        None => (i32::MAX, None),
        Some(name) => match u.workers().into_iter().find(|w| w.name == name) {
            Some(w) => (w.priority, Some((w.source, w.slot))),
            None => {
                eprintln!("vramcap: --for {name:?}: no such worker");
                return ExitCode::from(2);
            }
        },
    };
    let outcome = u.reclaim(&uuid, bytes, priority, requester, dry_run);
    println!(
        "{}: {} {} by asking [{}]",
        if outcome.enough {
            "enough"
        } else {
            "not enough"
        },
        if dry_run { "would free" } else { "freed" },
        HumanBytes(outcome.freed),
        outcome.asked.join(", ")
    );
    if outcome.enough {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}

/// `vramcap unload NAME` (one name) and `vramcap cleanup` (every unprotected worker with a hook).
fn unload(name: Option<&str>, hooks: &HookArgs) -> ExitCode {
    let opts = match hooks.options("50ms") {
        Ok(o) => o,
        Err(code) => return code,
    };
    let u = match open_unloader(opts, false) {
        Ok(u) => u,
        Err(code) => return code,
    };
    let chosen: Vec<_> = u
        .workers()
        .into_iter()
        .filter(|w| match name {
            Some(n) => w.name == n,
            None => !w.protected && w.hook.is_some(),
        })
        .collect();
    if let Some(n) = name {
        if chosen.is_empty() {
            eprintln!("vramcap: no worker named {n:?}");
            return ExitCode::from(2);
        }
        if let Some(w) = chosen.iter().find(|w| w.protected) {
            eprintln!(
                "vramcap: {} (pid {}) is protected; not asking it",
                w.name, w.pid
            );
            return ExitCode::from(2);
        }
    }
    let mut failed = false;
    let mut freed = 0;
    for w in &chosen {
        match u.unload_one(w) {
            Ok(b) => freed += b,
            Err(e) => {
                eprintln!("vramcap: {e}");
                failed = true;
            }
        }
    }
    println!(
        "freed {} from {} worker(s)",
        HumanBytes(freed),
        chosen.len()
    );
    if failed {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}

/// `vramcap suspend NAME` / `vramcap resume NAME`: exit 0 when done, 2 for no such worker, 3 when refused
/// or failed (the reason on stderr).
fn suspend_or_resume(name: &str, suspend: bool, hooks: &HookArgs) -> ExitCode {
    let opts = match hooks.options("50ms") {
        Ok(o) => o,
        Err(code) => return code,
    };
    // Suspending and resuming look at no device's free memory: NVML stays closed.
    let u = match open_unloader(
        unloader::Options {
            nvml: false,
            ..opts
        },
        true,
    ) {
        Ok(u) => u,
        Err(code) => return code,
    };
    let chosen: Vec<_> = u.workers().into_iter().filter(|w| w.name == name).collect();
    if chosen.is_empty() {
        eprintln!("vramcap: no worker named {name:?}");
        return ExitCode::from(2);
    }
    let mut failed = false;
    for w in &chosen {
        let done = if suspend {
            u.suspend_one(w).map(|b| {
                println!(
                    "{}: suspended, {} in host memory",
                    w.describe(),
                    HumanBytes(b)
                )
            })
        } else if w.suspended.is_none() {
            Err(format!("{} is not suspended", w.describe()))
        } else {
            u.resume_one(w)
                .map(|()| println!("{}: resumed", w.describe()))
        };
        if let Err(e) = done {
            eprintln!("vramcap: {}: {e}", w.describe());
            failed = true;
        }
    }
    if failed {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}
