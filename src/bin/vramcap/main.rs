//! `vramcap`: see what capped processes hold, settle memory conflicts by priority, check configuration.
//!
//! Exit codes (the README lists them per command): 0 done; 1 no segment yet, for a command that needs a
//! worker (`reclaim`, `unload`, `suspend`, `resume`); 2 bad input (an argument, a refused segment, no
//! such worker or device); 3 the action was refused or failed, or not enough memory could be freed.
//! `status`, `watch`, `cleanup` and `exporter` without a segment show the empty view and exit 0. Nothing
//! here panics on an argument: every value is checked, and a closed stdout ends the output quietly.

/// Writes to stdout; a closed pipe (`| head`) ends the output, never in a panic.
fn print(text: &str) {
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
}

macro_rules! say {
    ($($arg:tt)*) => { crate::print(&format!("{}\n", format_args!($($arg)*))) };
}

mod check_limit;
mod cli;
mod demo;
mod exporter;
mod library;
mod watch;

use clap::Parser;
use cli::{Cli, Cmd, Format, HookArgs, ViewArgs};
use std::process::ExitCode;
use vramcap_core::config::size::{parse_size, Size};
use vramcap_core::shm::{segment_path, Segment, ShmError};
use vramcap_core::status::{self, NvmlSource};
use vramcap_core::unloader::commands::{self, Move, Unloading};
use vramcap_core::unloader::{self, Unloader};

/// The segment at `path`, `None` where none exists yet.
fn open_if_any(path: &std::path::Path, writable: bool) -> Result<Option<Segment>, ShmError> {
    let opened = if writable {
        Segment::open_existing_rw(path)
    } else {
        Segment::open_existing(path)
    };
    match opened {
        Ok(seg) => Ok(Some(seg)),
        Err(ShmError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The segment, `None` where none exists yet; a segment that is refused is an error (exit 2).
fn segment_if_any(writable: bool) -> Result<(Option<Segment>, String), ExitCode> {
    let path = segment_path();
    let seg = open_if_any(&path, writable).map_err(bad_input)?;
    Ok((seg, path.display().to_string()))
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
                Err(e) => bad_input(e),
            }
        }
        Cmd::Watch { interval, view } => {
            let (mut seg, path) = match segment_if_any(false) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let nvml = NvmlSource::open(!view.no_nvml);
            if let Err(e) = show(&view, &status::collect_from(None, &path, &nvml)) {
                return bad_input(e);
            }
            let mut problem = None;
            let frame = || {
                if seg.is_none() {
                    // A worker may start while we watch.
                    match open_if_any(std::path::Path::new(&path), false) {
                        Ok(s) => seg = s,
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
        } => unloader_daemon(&hooks, &poll, all_users).unwrap_or_else(|c| c),
        Cmd::Reclaim {
            device,
            bytes,
            for_name,
            dry_run,
            hooks,
        } => reclaim(&device, &bytes, for_name.as_deref(), dry_run, &hooks).unwrap_or_else(|c| c),
        Cmd::Unload { name, hooks } => unload(Some(&name), &hooks).unwrap_or_else(|c| c),
        Cmd::Cleanup { hooks } => unload(None, &hooks).unwrap_or_else(|c| c),
        Cmd::Suspend { name, hooks } => {
            suspend_or_resume(&name, Move::Suspend, &hooks).unwrap_or_else(|c| c)
        }
        Cmd::Resume { name, hooks } => {
            suspend_or_resume(&name, Move::Resume, &hooks).unwrap_or_else(|c| c)
        }
        Cmd::Demo { simulated } => demo::run(simulated),
        Cmd::CheckLimit { spec, force } => check_limit::check_limit(spec.as_deref(), force),
    }
}

/// `vramcap unloader`: the daemon, on this user's segment or, as root with --all-users, on every
/// user's; it serves requests until SIGTERM or SIGINT.
fn unloader_daemon(hooks: &HookArgs, poll: &str, all_users: bool) -> Result<ExitCode, ExitCode> {
    let opts = hooks.options(poll)?;
    // SAFETY: geteuid has no preconditions.
    if all_users && unsafe { libc::geteuid() } != 0 {
        eprintln!("vramcap unloader: --all-users needs root (it reads every user's segment)");
        return Err(ExitCode::from(2));
    }
    let mut u = if all_users {
        Unloader::daemon(unloader::Finder::AllUsers, opts)
    } else {
        let path = segment_path();
        let mut u = Unloader::daemon(unloader::Finder::One(path.clone()), opts);
        // One unloader per segment: a second one says who serves it and exits.
        if let Err(e) = u.serve(&path) {
            eprintln!("vramcap unloader: {e}");
            return Err(ExitCode::from(1));
        }
        u
    };
    u.run();
    Ok(ExitCode::SUCCESS)
}

/// Says why a command did not act, on stderr: bad input, exit 2.
fn bad_input(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("vramcap: {e}");
    ExitCode::from(2)
}

/// `vramcap reclaim`: exit 0 if the device has the room asked for (or would, with --dry-run), 3 if not.
fn reclaim(
    device: &str,
    bytes: &str,
    for_name: Option<&str>,
    dry_run: bool,
    hooks: &HookArgs,
) -> Result<ExitCode, ExitCode> {
    let opts = hooks.options("50ms")?;
    let bytes = match parse_size(bytes) {
        Ok(Size::Bytes(b)) => b,
        Ok(Size::Percent(_)) | Err(_) => {
            return Err(bad_input(format_args!(
                "--bytes {bytes:?} is invalid: expected a size such as 6GiB"
            )))
        }
    };
    let u = unloader_for_worker(opts, true)?;
    let done = commands::resolve_device(device, &u)
        .and_then(|device| commands::reclaim(&u, &device, bytes, for_name, dry_run))
        .map_err(bad_input)?;
    say!("{done}");
    Ok(if done.enough {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// `vramcap unload NAME` (one name) and `vramcap cleanup` (every unprotected worker with a hook).
fn unload(name: Option<&str>, hooks: &HookArgs) -> Result<ExitCode, ExitCode> {
    let opts = hooks.options("50ms")?;
    let u = match (name, open_unloader(opts, false)?) {
        (_, (Some(u), _)) => u,
        (None, (None, path)) => {
            say!("no workers ({})", no_segment_yet(&path));
            return Ok(ExitCode::SUCCESS);
        }
        (Some(n), (None, path)) => {
            eprintln!("vramcap: no worker named {n:?}: {}", no_segment_yet(&path));
            return Err(ExitCode::from(1));
        }
    };
    let each = |asked: Result<commands::Asked, String>| match asked {
        Ok(asked) => say!("{asked}"),
        Err(e) => eprintln!("vramcap: {e}"),
    };
    Ok(match commands::unload(&u, name, each).map_err(bad_input)? {
        Unloading::NobodyToAsk { running } => {
            say!("no workers to ask ({running} running, none of them unprotected with a way to unload)");
            ExitCode::SUCCESS
        }
        Unloading::Asked(tally) if tally.failed > 0 => ExitCode::from(3),
        Unloading::Asked(_) => ExitCode::SUCCESS,
    })
}

/// `vramcap suspend NAME` / `vramcap resume NAME`: exit 0 when done, 2 for no such worker, 3 when refused
/// or failed (the reason on stderr).
fn suspend_or_resume(name: &str, how: Move, hooks: &HookArgs) -> Result<ExitCode, ExitCode> {
    let opts = hooks.options("50ms")?;
    // Suspending and resuming look at no device's free memory: NVML stays closed.
    let u = unloader_for_worker(
        unloader::Options {
            nvml: false,
            ..opts
        },
        true,
    )?;
    let each = |moved: Result<commands::Moved, commands::NotMoved>| match moved {
        Ok(moved) => say!("{moved}"),
        Err(e) => eprintln!("vramcap: {e}"),
    };
    let tally = commands::suspend_or_resume(&u, name, how, each).map_err(bad_input)?;
    Ok(if tally.failed > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}
