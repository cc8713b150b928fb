//! `vramcap-run [--limit SIZE] [--name NAME] [--priority N] [--protect]
//!  [--unload-url URL | --unload-signal SIG | --unload-cmd CMD] [--on-pressure suspend] [--wait DURATION]
//!  -- CMD ARGS…`
//!
//! Validates every `VRAMCAP_*` variable the command will get (those it sets and those it inherits, and
//! HAMi's `CUDA_DEVICE_MEMORY_LIMIT*`) with the library's own parser, so a value the library would refuse
//! exits 2 here, naming the flag or the variable and the value, before anything runs. Then it puts
//! libvramcap.so in front of `LD_PRELOAD`, sets the variables and execs the command, so its signals and
//! exit code are the command's own.

// Shared with `vramcap demo`, which finds the library as this binary does.
#[path = "vramcap/library.rs"]
mod library;

use clap::Parser;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};
use vramcap_core::config;

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

/// The environment the command will get: ours, with the variables the flags set or remove.
struct ChildEnv {
    vars: BTreeMap<OsString, OsString>,
    /// The variables a flag set, and the flag (an error names what the user typed).
    from_flags: Vec<(&'static str, &'static str)>,
}

impl ChildEnv {
    fn new(args: &Args) -> ChildEnv {
        let mut env = ChildEnv {
            vars: std::env::vars_os().collect(),
            from_flags: Vec::new(),
        };
        let given = [
            (config::ENV_LIMIT, "--limit", args.limit.clone()),
            (config::ENV_NAME, "--name", args.name.clone()),
            (
                config::ENV_PRIORITY,
                "--priority",
                args.priority.map(|p| p.to_string()),
            ),
            (
                config::ENV_PROTECT,
                "--protect",
                args.protect.then(|| "1".to_string()),
            ),
            (config::ENV_WAIT, "--wait", args.wait.clone()),
            (
                config::ENV_ON_PRESSURE,
                "--on-pressure",
                args.on_pressure.clone(),
            ),
        ];
        for (var, flag, value) in given {
            if let Some(v) = value {
                env.set(var, flag, v);
            }
        }
        // One way to unload: the one given here replaces any inherited.
        let hooks = [
            (config::ENV_UNLOAD_URL, "--unload-url", &args.unload_url),
            (
                config::ENV_UNLOAD_SIGNAL,
                "--unload-signal",
                &args.unload_signal,
            ),
            (config::ENV_UNLOAD_CMD, "--unload-cmd", &args.unload_cmd),
        ];
        // And one way to reload, the same way.
        let reloads = [
            (config::ENV_RELOAD_URL, "--reload-url", &args.reload_url),
            (
                config::ENV_RELOAD_SIGNAL,
                "--reload-signal",
                &args.reload_signal,
            ),
            (config::ENV_RELOAD_CMD, "--reload-cmd", &args.reload_cmd),
        ];
        for group in [hooks, reloads] {
            if group.iter().any(|(_, _, v)| v.is_some()) {
                for (var, flag, value) in group {
                    match value {
                        Some(v) => env.set(var, flag, v.clone()),
                        None => {
                            env.vars.remove(&OsString::from(var));
                        }
                    }
                }
            }
        }
        env
    }

    fn set(&mut self, var: &'static str, flag: &'static str, value: String) {
        self.vars.insert(var.into(), value.into());
        self.from_flags.push((var, flag));
    }

    fn get(&self, var: &str) -> Option<String> {
        self.vars
            .get(&OsString::from(var))
            .map(|v| v.to_string_lossy().into_owned())
    }

    /// The names of the variables, as text where they are.
    fn names(&self) -> impl Iterator<Item = String> + '_ {
        self.vars
            .keys()
            .filter_map(|k| k.to_str().map(String::from))
    }

    /// Every `VRAMCAP_*` variable (and HAMi's aliases) the command gets, read by the library's own
    /// parser, so that what passes here passes there: the error names the flag or the variable, and
    /// the value.
    fn validate(&self) -> Result<config::Config, String> {
        for name in self.names() {
            if let Some(meant) = config::misspelt_var(&name) {
                return Err(format!(
                    "{name}={:?} is not a vramcap variable (did you mean {meant}?)",
                    self.get(&name).unwrap_or_default()
                ));
            }
        }
        let hami: Vec<String> = self
            .names()
            .filter(|n| n.starts_with(config::ENV_HAMI_LIMIT_PREFIX))
            .collect();
        let parsed = config::Config::from_lookup_names(|var| self.get(var), &hami).map_err(
            |e| match self.from_flags.iter().find(|(var, _)| *var == e.var) {
                Some((_, flag)) => format!("{flag} {:?} is invalid: {}", e.value, e.reason),
                None => e.to_string(),
            },
        )?;
        vramcap_core::shm::segment_mode().map_err(|e| e.to_string())?;
        if let Some(v) = self.get(config::ENV_LIMIT) {
            check_devices(config::ENV_LIMIT, &v, &parsed.limit)?;
            if self.get(config::ENV_HAMI_LIMIT).is_some() || !hami.is_empty() {
                eprintln!(
                    "vramcap-run: {} is set, so {} and {}<i> are ignored",
                    config::ENV_LIMIT,
                    config::ENV_HAMI_LIMIT,
                    config::ENV_HAMI_LIMIT_PREFIX
                );
            }
        }
        Ok(parsed)
    }
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let env = ChildEnv::new(&args);
    if let Err(line) = env.validate() {
        return fail(2, line);
    }
    let library = match library::find() {
        Ok(p) => p,
        Err(e) => return fail(2, e),
    };
    let mut preload = OsString::from(library);
    if let Some(existing) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(":");
        preload.push(existing);
    }
    let Some((program, rest)) = args.command.split_first() else {
        return fail(2, "no command given (vramcap-run [OPTIONS] -- CMD ARGS…)");
    };
    let mut command = Command::new(program);
    command
        .args(rest)
        .env_clear()
        .envs(&env.vars)
        .env("LD_PRELOAD", preload);
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
