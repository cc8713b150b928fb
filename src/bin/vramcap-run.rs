//! `vramcap-run [--limit SIZE] [--name NAME] [--priority N] [--protect]
//!  [--unload-url URL | --unload-signal SIG | --unload-cmd CMD] [--on-pressure suspend] [--wait DURATION]
//!  -- CMD ARGS…`
//!
//! Validates the cap exactly as the library will, puts libvramcap.so in front of `LD_PRELOAD`, sets the
//! variables and execs the command, so its signals and exit code are the command's own.

use clap::Parser;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use vramcap::config::{self, parse_limit};

#[derive(Parser, Debug)]
#[command(
    name = "vramcap-run",
    version,
    about = "Run a command under a hard VRAM cap",
    after_help = "Example: vramcap-run --limit 10GiB --name chat -- python serve.py"
)]
struct Args {
    /// Cap: 10GiB, 1.5G, 8000MB, 25%, or per device: 0=10GiB,1=20GiB or GPU-<uuid>=10GiB.
    /// Without it, the command inherits VRAMCAP_LIMIT (unset: counted, not capped).
    #[arg(long, value_name = "SIZE")]
    limit: Option<String>,
    /// Name shown by `vramcap status`.
    #[arg(long)]
    name: Option<String>,
    /// Higher keeps its memory longer when workers compete.
    #[arg(long, allow_negative_numbers = true)]
    priority: Option<i32>,
    /// Never asked to unload by the unloader.
    #[arg(long)]
    protect: bool,
    /// How the unloader asks this worker to give its memory back: an HTTP POST to this URL
    /// (loopback unless the unloader runs with --allow-remote).
    #[arg(long, value_name = "URL", group = "unload")]
    unload_url: Option<String>,
    /// … or this signal (USR1, SIGUSR2, TERM, 10).
    #[arg(long, value_name = "SIG", group = "unload")]
    unload_signal: Option<String>,
    /// … or this shell command (run with VRAMCAP_PID and VRAMCAP_NAME set).
    #[arg(long, value_name = "CMD", group = "unload")]
    unload_cmd: Option<String>,
    /// How the unloader tells this worker, after it unloaded, that its memory fits again (vLLM's
    /// `/wake_up` after `/sleep`): an HTTP POST to this URL …
    #[arg(long, value_name = "URL", group = "reload")]
    reload_url: Option<String>,
    /// … or this signal …
    #[arg(long, value_name = "SIG", group = "reload")]
    reload_signal: Option<String>,
    /// … or this shell command (run with VRAMCAP_PID and VRAMCAP_NAME set).
    #[arg(long, value_name = "CMD", group = "reload")]
    reload_cmd: Option<String>,
    /// What the unloader may do when this worker must give memory back and its hook (if any) does not
    /// free it in time: `suspend` moves its device memory to host memory through the driver's
    /// checkpoint API, and back when there is room again.
    #[arg(long, value_name = "ACTION", value_parser = ["suspend", "fail"])]
    on_pressure: Option<String>,
    /// When the device itself is full, wait this long (30s, 500ms) for the unloader before failing.
    #[arg(long, value_name = "DURATION")]
    wait: Option<String>,
    /// The command and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    command: Vec<OsString>,
}

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("vramcap-run: {message}");
    ExitCode::from(code)
}

/// libvramcap.so: `VRAMCAP_LIB`, else beside this executable.
fn find_library() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("VRAMCAP_LIB") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("VRAMCAP_LIB={:?} is not a file", path))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate this executable: {e}"))?;
    let path = exe.with_file_name("libvramcap.so");
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "libvramcap.so is not beside {} (set VRAMCAP_LIB to its path)",
            exe.display()
        ))
    }
}

/// The machine's GPU UUIDs, from NVML, where it answers.
fn machine_uuids() -> Option<Vec<String>> {
    let nvml = nvml_wrapper::Nvml::init().ok()?;
    let count = nvml.device_count().ok()?;
    (0..count)
        .map(|i| {
            nvml.device_by_index(i)
                .and_then(|d| d.uuid())
                .ok()
                .map(|u| config::canonical_uuid(&u))
        })
        .collect()
}

/// A per-device limit for a device the command will not see would leave its memory uncapped: refused
/// here where it can be told (the library refuses `cuInit` for it anyway).
fn check_devices(var: &str, text: &str, limit: &config::Limit) -> Result<(), String> {
    if !matches!(limit, config::Limit::PerDevice(_))
        || std::env::var_os(config::ENV_ALLOW_ABSENT_DEVICES).is_some_and(|v| v == "1" || v == "on")
    {
        return Ok(());
    }
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    let machine = machine_uuids();
    let absent = config::surely_absent_keys(limit, visible.as_deref(), machine.as_deref());
    if absent.is_empty() {
        return Ok(());
    }
    let seen = match (&visible, &machine) {
        (None, Some(all)) => all.clone(),
        _ => Vec::new(),
    };
    Err(config::absent_devices_error(var, text, &absent, &seen))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let limit = match (&args.limit, std::env::var(config::ENV_LIMIT)) {
        (Some(given), _) => Some(("--limit", given.clone())),
        (None, Ok(inherited)) => Some((config::ENV_LIMIT, inherited)),
        (None, Err(_)) => None,
    };
    if let Some((var, text)) = &limit {
        let parsed = match parse_limit(text) {
            Ok(parsed) => parsed,
            Err(reason) if *var == "--limit" => {
                return fail(2, format_args!("--limit {text:?} is invalid: {reason}"))
            }
            Err(reason) => return fail(2, format_args!("{var}={text:?} is invalid: {reason}")),
        };
        if let Err(line) = check_devices(config::ENV_LIMIT, text, &parsed) {
            return fail(2, line);
        }
    }
    if let Some(url) = &args.unload_url {
        if let Err(reason) = config::parse_http_url(url) {
            return fail(2, format_args!("--unload-url {url:?} is invalid: {reason}"));
        }
    }
    if let Some(sig) = &args.unload_signal {
        if let Err(reason) = config::parse_signal(sig) {
            return fail(
                2,
                format_args!("--unload-signal {sig:?} is invalid: {reason}"),
            );
        }
    }
    if let Some(url) = &args.reload_url {
        if let Err(reason) = config::parse_http_url(url) {
            return fail(2, format_args!("--reload-url {url:?} is invalid: {reason}"));
        }
    }
    if let Some(sig) = &args.reload_signal {
        if let Err(reason) = config::parse_signal(sig) {
            return fail(
                2,
                format_args!("--reload-signal {sig:?} is invalid: {reason}"),
            );
        }
    }
    if let Some(wait) = &args.wait {
        if let Err(reason) = config::parse_duration(wait) {
            return fail(2, format_args!("--wait {wait:?} is invalid: {reason}"));
        }
    }
    let library = match find_library() {
        Ok(p) => p,
        Err(e) => return fail(2, e),
    };
    let mut preload = OsString::from(library);
    if let Some(existing) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(":");
        preload.push(existing);
    }
    let (program, rest) = args.command.split_first().expect("clap requires a command");
    let mut command = Command::new(program);
    command.args(rest).env("LD_PRELOAD", preload);
    if let Some(limit) = &args.limit {
        command.env(config::ENV_LIMIT, limit);
    }
    if let Some(name) = &args.name {
        command.env(config::ENV_NAME, name);
    }
    if let Some(priority) = args.priority {
        command.env(config::ENV_PRIORITY, priority.to_string());
    }
    if args.protect {
        command.env(config::ENV_PROTECT, "1");
    }
    // One way to unload: the one given here replaces any inherited.
    let hooks = [
        (config::ENV_UNLOAD_URL, &args.unload_url),
        (config::ENV_UNLOAD_SIGNAL, &args.unload_signal),
        (config::ENV_UNLOAD_CMD, &args.unload_cmd),
    ];
    let reloads = [
        (config::ENV_RELOAD_URL, &args.reload_url),
        (config::ENV_RELOAD_SIGNAL, &args.reload_signal),
        (config::ENV_RELOAD_CMD, &args.reload_cmd),
    ];
    for group in [hooks, reloads] {
        if group.iter().any(|(_, v)| v.is_some()) {
            for (var, value) in group {
                match value {
                    Some(v) => command.env(var, v),
                    None => command.env_remove(var),
                };
            }
        }
    }
    if let Some(wait) = &args.wait {
        command.env(config::ENV_WAIT, wait);
    }
    if let Some(action) = &args.on_pressure {
        command.env(config::ENV_ON_PRESSURE, action);
    }
    // exec only returns on failure.
    let error = command.exec();
    let code = match error.kind() {
        std::io::ErrorKind::NotFound => 127,
        _ => 126,
    };
    fail(
        code,
        format_args!("cannot run {}: {error}", program.to_string_lossy()),
    )
}
