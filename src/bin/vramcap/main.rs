//! `vramcap`: see what capped processes hold, settle memory conflicts by priority, check configuration.
//!
//! Exit codes (the README lists them per command): 0 done; 1 no segment yet, for a command that needs a
//! worker (`reclaim`, `unload`, `suspend`, `resume`); 2 bad input (an argument, a refused segment, no
//! such worker or device); 3 the action was refused or failed, or not enough memory could be freed.
//! `status`, `watch`, `cleanup` and `exporter` without a segment show the empty view and exit 0. Nothing
//! here panics on an argument: every value is checked, and a closed stdout ends the output quietly.

mod demo;
mod exporter;
mod watch;

use clap::{Parser, Subcommand, ValueEnum};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vramcap_core::config::size::{human, parse_size, HumanBytes, Size};
use vramcap_core::config::{self, canonical_uuid, parse_duration, parse_limit};
use vramcap_core::shm::{segment_path, Segment, ShmError};
use vramcap_core::status::{self, NvmlSource};
use vramcap_core::unloader::{self, Seen, Unloader};

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

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// An aligned table, sizes in binary units.
    Table,
    /// Comma-separated values, sizes in bytes.
    Csv,
    /// The versioned JSON document (README: "status --json").
    Json,
}

/// How `status` and `watch` show the view.
#[derive(clap::Args, Debug)]
struct ViewArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// The same as --format json.
    #[arg(long, conflicts_with = "format")]
    json: bool,
    /// The fields of the table or CSV, comma-separated, e.g. pid,name,gpu,charged,cap (see `vramcap
    /// fields`).
    #[arg(long, value_name = "FIELDS", value_parser = query_fields)]
    query: Option<Query>,
    /// Do not ask NVML.
    #[arg(long)]
    no_nvml: bool,
}

impl ViewArgs {
    fn format(&self) -> Format {
        if self.json {
            Format::Json
        } else {
            self.format
        }
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
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

/// Writes to stdout; a closed pipe (`| head`) ends the output, never in a panic.
fn print(text: &str) {
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
}

macro_rules! say {
    ($($arg:tt)*) => { print(&format!("{}\n", format_args!($($arg)*))) };
}

/// A duration for people: `71 ms`, `1.4 s`, `12 s`.
fn took(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 10_000 {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{:.0} s", d.as_secs_f64())
    }
}

fn describe(size: Size) -> String {
    match size {
        Size::Bytes(b) => format!("{} ({b} bytes)", human(b)),
        Size::Percent(p) => format!("{p}% of the device's memory"),
    }
}

/// The segment, `None` where none exists yet; a segment that is refused is an error (exit 2).
fn segment_if_any(writable: bool) -> Result<(Option<Segment>, String), ExitCode> {
    let path = segment_path();
    let opened = if writable {
        Segment::open_existing_rw(&path)
    } else {
        Segment::open_existing(&path)
    };
    let shown = path.display().to_string();
    match opened {
        Ok(seg) => Ok((Some(seg), shown)),
        Err(ShmError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok((None, shown))
        }
        Err(e) => {
            eprintln!("vramcap: {e}");
            Err(ExitCode::from(2))
        }
    }
}

fn no_segment_yet(path: &str) -> String {
    format!("no capped process has started: no segment at {path} yet (VRAMCAP_SHM names another)")
}

/// The unloader for a one-off command, on the segment opened `writable`; `None` where there is no
/// segment yet.
fn open_unloader(
    opts: unloader::Options,
    writable: bool,
) -> Result<(Option<Unloader>, String), ExitCode> {
    let (seg, path) = segment_if_any(writable)?;
    let u = seg.map(|seg| Unloader::new(seg, std::path::Path::new(&path), opts));
    Ok((u, path))
}

/// The unloader for a command that needs a worker: no segment is exit 1.
fn unloader_for_worker(opts: unloader::Options, writable: bool) -> Result<Unloader, ExitCode> {
    match open_unloader(opts, writable)? {
        (Some(u), _) => Ok(u),
        (None, path) => {
            eprintln!("vramcap: {}", no_segment_yet(&path));
            Err(ExitCode::from(1))
        }
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
struct Query(Vec<&'static status::Field>);

fn query_fields(text: &str) -> Result<Query, String> {
    status::parse_query(text).map(Query)
}

/// The view in the format asked for.
fn show(view: &ViewArgs, s: &status::Status) -> Result<String, String> {
    Ok(match (view.format(), &view.query) {
        (Format::Json, Some(_)) => {
            return Err(
                "--query selects the fields of --format table or csv; the JSON document has every field"
                    .into(),
            )
        }
        (Format::Json, None) => {
            serde_json::to_string_pretty(s).map_err(|e| e.to_string())? + "\n"
        }
        (Format::Csv, fields) => {
            let default: Vec<&status::Field> = status::DEFAULT_FIELDS
                .iter()
                .filter_map(|n| status::FIELDS.iter().find(|f| f.name == *n))
                .collect();
            status::render_csv(s, fields.as_ref().map_or(&default, |q| &q.0))
        }
        (Format::Table, Some(fields)) => status::render_table(s, &fields.0),
        (Format::Table, None) => status::render(s),
    })
}

fn main() -> ExitCode {
    // `vramcap demo`'s workers: this binary again, with a parser of their own, so that the command,
    // an internal one, is in no --help, man page or completion.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == demo::worker::COMMAND)
    {
        return demo::worker::main();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Usage errors exit 2, --help and --version 0; a closed stdout is no panic.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match cli.command {
        Cmd::Status { view } => {
            let (seg, path) = match segment_if_any(false) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let s = status::collect_from(seg.as_ref(), &path, &NvmlSource::open(!view.no_nvml));
            match show(&view, &s) {
                Ok(text) => {
                    print(&text);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vramcap: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Watch { interval, view } => {
            let (mut seg, path) = match segment_if_any(false) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let nvml = NvmlSource::open(!view.no_nvml);
            if let Err(e) = show(&view, &status::collect_from(None, &path, &nvml)) {
                eprintln!("vramcap: {e}");
                return ExitCode::from(2);
            }
            let mut problem = None;
            let frame = || {
                if seg.is_none() {
                    // A worker may start while we watch.
                    match Segment::open_existing(std::path::Path::new(&path)) {
                        Ok(s) => seg = Some(s),
                        Err(ShmError::Io { source, .. })
                            if source.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => problem = Some(e.to_string()),
                    }
                }
                let s = status::collect_from(seg.as_ref(), &path, &nvml);
                let mut text = show(&view, &s).unwrap_or_else(|e| e);
                if let Some(p) = problem.take() {
                    text.push_str(&format!("vramcap: {p}\n"));
                }
                text
            };
            watch::run(frame, interval);
            ExitCode::SUCCESS
        }
        Cmd::Fields => {
            for f in status::FIELDS {
                say!("{:<16} {}", f.name, f.about);
            }
            say!("\nDefault: {}", status::DEFAULT_FIELDS.join(","));
            ExitCode::SUCCESS
        }
        Cmd::Exporter { listen, no_nvml } => exporter::serve(&listen, !no_nvml),
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
        Cmd::Demo { simulated } => demo::run(simulated),
        Cmd::CheckLimit { spec, force } => check_limit(spec.as_deref(), force),
    }
}

/// `vramcap check-limit [SPEC] [--force]`: 0 when the limit reads well, 2 when it does not, or when a
/// cap is smaller than a CUDA context (which would refuse every allocation) and `--force` is not given.
fn check_limit(spec: Option<&str>, force: bool) -> ExitCode {
    let (limit, source) = match spec {
        Some(spec) => match parse_limit(spec) {
            Ok(limit) => (limit, format!("{}={spec:?}", config::ENV_LIMIT)),
            Err(reason) => {
                eprintln!(
                    "vramcap: {}={spec:?} is invalid: {reason}",
                    config::ENV_LIMIT
                );
                return ExitCode::from(2);
            }
        },
        None => {
            let lookup = |var: &str| std::env::var(var).ok();
            match config::limit_from(&lookup, &config::hami_names_in_env()) {
                Ok((limit, Some(source))) => (limit, source.to_string()),
                Ok((_, None)) => {
                    say!(
                        "no limit is set ({} or {}): memory is counted, not capped",
                        config::ENV_LIMIT,
                        config::ENV_HAMI_LIMIT
                    );
                    return ExitCode::SUCCESS;
                }
                Err(e) => {
                    eprintln!("vramcap: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    let context =
        match config::context_bytes(std::env::var(config::ENV_CONTEXT_BYTES).ok().as_deref()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("vramcap: {e}");
                return ExitCode::from(2);
            }
        };
    // A share of the device is checked against each device NVML lists (if it answers).
    let nvml = NvmlSource::open(true);
    let totals: Vec<u64> = status::collect_from(None, "", &nvml)
        .devices
        .iter()
        .map(|d| d.total_bytes)
        .collect();
    let mut small = Vec::new();
    for (what, size) in limit.describe() {
        say!("{what}: {}", describe(size));
        let resolved: Vec<u64> = match size {
            Size::Bytes(b) => vec![b],
            Size::Percent(_) => totals.iter().map(|t| size.resolve(*t)).collect(),
        };
        if let Some(b) = resolved.into_iter().filter(|b| *b < context).min() {
            small.push(format!("{what}: {}", human(b)));
        }
    }
    if small.is_empty() {
        return ExitCode::SUCCESS;
    }
    let line = format!(
        "{source}: {} less than a CUDA context ({}, {}), so every allocation would be refused",
        if small.len() == 1 {
            format!("{} is", small[0])
        } else {
            format!("{} are", small.join("; "))
        },
        human(context),
        config::ENV_CONTEXT_BYTES
    );
    if force {
        eprintln!("vramcap: warning: {line} (accepted: --force)");
        ExitCode::SUCCESS
    } else {
        eprintln!("vramcap: {line}; --force accepts it anyway");
        ExitCode::from(2)
    }
}

/// What a worker holds now on `uuid` (every device where `None`): (charged, context), `None` if gone.
fn holds_now(u: &Unloader, w: &Seen, uuid: Option<&str>) -> Option<(u64, u64)> {
    let now = u
        .workers()
        .into_iter()
        .find(|n| n.slot == w.slot && n.pid == w.pid)?;
    let pick = |m: &BTreeMap<String, u64>| -> u64 {
        m.iter()
            .filter(|(k, _)| uuid.is_none_or(|u| u == k.as_str()))
            .map(|(_, v)| *v)
            .fold(0, u64::saturating_add)
    };
    let charged = pick(&now.charged);
    let held = pick(&now.held);
    Some((charged, charged.saturating_sub(held)))
}

fn charged_of(w: &Seen, uuid: Option<&str>) -> u64 {
    w.charged
        .iter()
        .filter(|(k, _)| uuid.is_none_or(|u| u == k.as_str()))
        .map(|(_, v)| *v)
        .fold(0, u64::saturating_add)
}

/// One line on what asking `w` did: what it gave back (from its figures before and now), what it still
/// holds, and how much of that is its CUDA context (which only its exit gives back).
fn after_asking(
    u: &Unloader,
    w: &Seen,
    uuid: Option<&str>,
    elapsed: Option<Duration>,
) -> (u64, String) {
    let before = charged_of(w, uuid);
    let when = elapsed.map_or(String::new(), |d| format!(" in {}", took(d)));
    let now = u
        .workers()
        .into_iter()
        .find(|n| n.slot == w.slot && n.pid == w.pid);
    match (now, holds_now(u, w, uuid)) {
        (Some(n), _) if n.suspended.is_some() && w.suspended.is_none() => (
            before,
            format!(
                "{}: suspended{when}: {} moved to host memory",
                w.describe(),
                HumanBytes(n.suspended.map_or(before, |(_, b)| b))
            ),
        ),
        (Some(_), Some((charged, context))) => {
            let freed = before.saturating_sub(charged);
            let holds = if charged == 0 {
                "holds nothing now".to_string()
            } else if charged <= context {
                format!("holds {} now, its CUDA context", HumanBytes(charged))
            } else {
                format!(
                    "holds {} now, {} of it its CUDA context",
                    HumanBytes(charged),
                    HumanBytes(context)
                )
            };
            (
                freed,
                format!(
                    "{}: freed {}{when}; {holds}",
                    w.describe(),
                    HumanBytes(freed)
                ),
            )
        }
        _ => (
            before,
            format!(
                "{}: exited{when}, giving back all {}",
                w.describe(),
                HumanBytes(before)
            ),
        ),
    }
}

/// `--device`: an NVML index, a UUID, or a UUID prefix that names one device of the segment or NVML.
fn resolve_device(device: &str, u: &Unloader) -> Result<String, String> {
    let d = device.trim().trim_end_matches('…');
    if d.len() > 4 && d[..4].eq_ignore_ascii_case("gpu-") {
        let wanted = canonical_uuid(d);
        if wanted.len() == 40 {
            return Ok(wanted);
        }
        let nvml = NvmlSource::open(true);
        let mut known: Vec<String> = u
            .workers()
            .iter()
            .flat_map(|w| w.held.keys().cloned())
            .chain(
                status::collect_from(None, "", &nvml)
                    .devices
                    .into_iter()
                    .map(|d| d.uuid),
            )
            .filter(|u| u.starts_with(&wanted))
            .collect();
        known.sort();
        known.dedup();
        return match known.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(format!(
                "--device {device:?} names no device that a worker uses or NVML lists"
            )),
            many => Err(format!(
                "--device {device:?} names {} devices ({}); give more of the UUID",
                many.len(),
                many.join(", ")
            )),
        };
    }
    let index: u32 = d.parse().map_err(|_| {
        format!("--device {device:?} is neither an NVML index (0, 1, …) nor a GPU UUID (GPU-…)")
    })?;
    // The unloader's NVML, where it opened one (not with --no-nvml); else NVML just for the index.
    if let Some(uuid) = u.uuid_of(index) {
        return Ok(uuid);
    }
    NvmlSource::open(true).uuid_of(index).map_err(|why| {
        format!(
            "--device {device:?}: device indexes are NVML's, and NVML (libnvidia-ml.so.1) cannot tell \
             which device is {index}: {why}; give its UUID instead (GPU-…, as `vramcap status` shows it)"
        )
    })
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
    let u = match unloader_for_worker(opts, true) {
        Ok(u) => u,
        Err(code) => return code,
    };
    let uuid = match resolve_device(device, &u) {
        Ok(uuid) => uuid,
        Err(e) => {
            eprintln!("vramcap: {e}");
            return ExitCode::from(2);
        }
    };
    // The device as the lines name it: as given where it was an index.
    let gpu = match device.trim().parse::<u32>() {
        Ok(i) => format!("GPU {i}"),
        Err(_) => uuid.clone(),
    };
    let before = u.workers();
    let (priority, requester) = match for_name {
        None => (i32::MAX, None),
        Some(name) => match before.iter().find(|w| w.name == name) {
            Some(w) => (w.priority, Some((w.source, w.slot))),
            None => {
                eprintln!("vramcap: --for {name:?}: no such worker");
                return ExitCode::from(2);
            }
        },
    };
    let start = Instant::now();
    let outcome = u.reclaim(&uuid, bytes, priority, requester, dry_run);
    let elapsed = start.elapsed();
    let asked: Vec<&Seen> = outcome
        .asked
        .iter()
        .filter_map(|who| before.iter().find(|w| &w.describe() == who))
        .collect();
    let verdict = if outcome.enough {
        "enough"
    } else {
        "not enough"
    };
    if outcome.asked.is_empty() && outcome.enough {
        say!(
            "enough: {gpu} has the {} asked for free already; nobody asked",
            HumanBytes(bytes)
        );
    } else if dry_run {
        for w in &asked {
            say!(
                "would ask {}: it holds {} on {gpu} beyond its context",
                w.describe(),
                HumanBytes(w.held.get(&uuid).copied().unwrap_or(0))
            );
        }
        say!(
            "{verdict}: would free {} of the {} asked for, by asking {} worker(s)",
            HumanBytes(outcome.freed),
            HumanBytes(bytes),
            asked.len()
        );
    } else {
        let mut freed = 0u64;
        for w in &asked {
            let (f, line) = after_asking(&u, w, Some(&uuid), None);
            freed = freed.saturating_add(f);
            say!("{line}");
        }
        say!(
            "{verdict}: freed {} on {gpu} in {} for the {} asked for",
            HumanBytes(freed),
            took(elapsed),
            HumanBytes(bytes)
        );
    }
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
    let u = match (name, open_unloader(opts, false)) {
        (_, Err(code)) => return code,
        (_, Ok((Some(u), _))) => u,
        (None, Ok((None, path))) => {
            say!("no workers ({})", no_segment_yet(&path));
            return ExitCode::SUCCESS;
        }
        (Some(n), Ok((None, path))) => {
            eprintln!("vramcap: no worker named {n:?}: {}", no_segment_yet(&path));
            return ExitCode::from(1);
        }
    };
    let all = u.workers();
    let chosen: Vec<&Seen> = all
        .iter()
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
            eprintln!("vramcap: {} is protected; not asking it", w.describe());
            return ExitCode::from(2);
        }
    } else if chosen.is_empty() {
        say!(
            "no workers to ask ({} running, none of them unprotected with a way to unload)",
            all.len()
        );
        return ExitCode::SUCCESS;
    }
    let mut failed = false;
    for w in chosen {
        let start = Instant::now();
        match u.unload_one(w) {
            Ok(_) => say!("{}", after_asking(&u, w, None, Some(start.elapsed())).1),
            Err(e) => {
                eprintln!("vramcap: {e}");
                failed = true;
            }
        }
    }
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
    let u = match unloader_for_worker(
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
        let start = Instant::now();
        let done = if suspend {
            u.suspend_one(w).map(|b| {
                say!(
                    "{}: suspended in {}: {} moved to host memory",
                    w.describe(),
                    took(start.elapsed()),
                    HumanBytes(b)
                )
            })
        } else if w.suspended.is_none() {
            eprintln!("vramcap: {} is not suspended", w.describe());
            failed = true;
            continue;
        } else {
            u.resume_one(w).map(|()| {
                say!(
                    "{}: resumed in {}: {} back on the device",
                    w.describe(),
                    took(start.elapsed()),
                    HumanBytes(w.suspended.map_or(0, |(_, b)| b))
                )
            })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_rounded_for_people() {
        assert_eq!(took(Duration::from_nanos(71_105_259)), "71 ms");
        assert_eq!(took(Duration::from_millis(1449)), "1.4 s");
        assert_eq!(took(Duration::from_millis(12_600)), "13 s");
    }

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
