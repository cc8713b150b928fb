//! `vramcap demo`: the cap and the priority unloader, shown in a few seconds on this machine's GPU or,
//! where there is none (or with `--simulated`), on the bundled simulated device, and then every line it
//! prints says so.
//!
//! Everything runs in children of its own, on a segment of its own (`VRAMCAP_SHM=vramcap-demo-<pid>`):
//! workers that are this binary again (`vramcap demo-worker ROLE`, [`worker`]) started by `vramcap-run`,
//! `vramcap unloader`, and `vramcap status`. The simulated device is the fake driver that the tests use
//! (`libvramcap_sim.so`, beside this binary or in `../lib/vramcap/`), reached through `libcuda.so.1` and
//! `libnvidia-ml.so.1` links in a temporary folder put first on the children's `LD_LIBRARY_PATH`, with
//! `FAKECUDA_SHARED` so that the children share one device.
//!
//! A [`Cleanup`] guard owns every child, the segment (and the unloader's `.unloader` file beside it) and
//! the temporary folder: it stops and reaps the children and removes the files when the demo ends,
//! however it ends (done, an error, Ctrl-C). The signal handlers only set a flag, which every wait here
//! looks at. The children run in a process group of their own, so the terminal's Ctrl-C reaches the demo
//! alone and the guard stops them in order; should the demo itself be killed, they get SIGTERM
//! (`PR_SET_PDEATHSIG`).
//!
//! Exit codes: 0 shown; 1 the demo could not be shown (not enough free memory on the GPU, a step that
//! did not happen as it should: the line says which); 2 a part of vramcap is missing (vramcap-run,
//! libvramcap.so, the simulated device); 130 interrupted.

pub mod worker;

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vramcap_core::config::size::HumanBytes;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// The label of every line on the simulated device.
pub const SIMULATED: &str = "(simulated device)";
/// The simulated device: its memory, and what a context costs there (and the library's estimate of it).
const SIM_MEMORY: &str = "8G";
const SIM_CONTEXT: &str = "300M";
/// Part 1: the cap, and the size of each allocation under it.
const CAP: u64 = GIB;
const CHUNK: u64 = 64 * MIB;
/// Part 2 needs this much free on a real GPU: chat takes half of what is free, video asks for three
/// quarters, and each one's context (up to a quarter) must fit beside.
const LEAST_FREE: u64 = 4 * GIB;
/// How long a child may take to get ready, and the unloader to answer video (its --wait, and slack).
const READY: Duration = Duration::from_secs(30);
const VIDEO_WAIT: &str = "20s";
const ANSWER: Duration = Duration::from_secs(30);
/// Prose is wrapped to this many characters (before the label).
const WIDTH: usize = 100;

/// Why the demo stopped early.
enum Stop {
    Interrupted,
    /// A step did not happen as it should (exit 1).
    Failed(String),
    /// A part of vramcap is missing (exit 2).
    Missing(String),
}

impl From<String> for Stop {
    fn from(s: String) -> Stop {
        Stop::Failed(s)
    }
}

/// Where the demo's lines go: stdout, each labelled on the simulated device.
#[derive(Clone, Copy)]
struct Screen {
    simulated: bool,
}

impl Screen {
    fn label(&self, line: &str) -> String {
        match (self.simulated, line.is_empty()) {
            (false, _) => line.to_string(),
            (true, true) => SIMULATED.to_string(),
            (true, false) => format!("{SIMULATED} {line}"),
        }
    }

    /// Prints `text`, a line at a time.
    fn say(&self, text: &str) {
        let mut out = String::new();
        for line in text.split('\n') {
            out.push_str(&self.label(line));
            out.push('\n');
        }
        super::print(&out);
    }

    /// Prints prose wrapped to [`WIDTH`], the first line after `first`, the rest indented as far.
    fn prose(&self, first: &str, text: &str) {
        let rest = " ".repeat(first.chars().count());
        self.say(&wrap(text, first, &rest));
    }

    fn error(&self, text: &str) {
        eprintln!("{}", self.label(&format!("vramcap demo: {text}")));
    }
}

/// The parts of vramcap the demo runs: this binary, vramcap-run and libvramcap.so.
struct Tools {
    vramcap: PathBuf,
    run: PathBuf,
    library: PathBuf,
    /// This binary's folder (links resolved), where the simulated device is looked for.
    dir: PathBuf,
}

impl Tools {
    /// As vramcap-run finds the library: `VRAMCAP_LIB`, else beside the binary, else `../lib/`.
    fn find() -> Result<Tools, String> {
        let vramcap =
            std::env::current_exe().map_err(|e| format!("cannot locate this executable: {e}"))?;
        let dir = vramcap.parent().unwrap_or(Path::new("/")).to_path_buf();
        let run = dir.join("vramcap-run");
        if !run.is_file() {
            return Err(format!(
                "vramcap-run is not beside {} (install both, as scripts/install.sh or the wheel does)",
                vramcap.display()
            ));
        }
        let library = super::library::find()?;
        Ok(Tools {
            vramcap,
            run,
            library,
            dir,
        })
    }

    /// The simulated device: beside this binary (`target/release/`), else `../lib/vramcap/`.
    fn simulated_device(&self) -> Result<PathBuf, String> {
        let places = [
            self.dir.clone(),
            self.dir.parent().unwrap_or(&self.dir).join("lib/vramcap"),
        ];
        places
            .iter()
            .map(|p| p.join("libvramcap_sim.so"))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                format!(
                    "the simulated device, libvramcap_sim.so, is neither beside {} nor in {} \
                     (cargo build --release builds it; scripts/install.sh and the wheel install it)",
                    self.vramcap.display(),
                    places[1].display()
                )
            })
    }
}

/// How a child is told to stop.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// A worker: its stdin closes, and it frees what it holds and exits.
    Eof,
    /// The unloader: SIGTERM.
    Signal,
}

/// One child the demo started.
struct Started {
    name: String,
    child: Child,
    /// Its stdin, for a worker: closing it stops it.
    stdin: Option<ChildStdin>,
    ending: Ending,
}

/// Everything the demo made, stopped and removed when it goes (or by [`Cleanup::finish`], which says
/// what it did).
struct Cleanup {
    children: Vec<Started>,
    segment: PathBuf,
    dir: Option<PathBuf>,
}

impl Cleanup {
    /// Stops every child still running and reaps all of them: a worker by closing its stdin, the
    /// unloader by SIGTERM; whichever is still there after 5 s is killed. Returns the lines to say.
    fn finish(&mut self) -> Vec<String> {
        let mut said = Vec::new();
        let mut children = std::mem::take(&mut self.children);
        for c in &mut children {
            c.stdin = None;
            if c.ending == Ending::Signal {
                // SAFETY: the PID is our own child's, not yet reaped, so it names no other process.
                unsafe { libc::kill(c.child.id() as i32, libc::SIGTERM) };
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut stopped = Vec::new();
        for c in children.iter_mut().rev() {
            let status = loop {
                match c.child.try_wait() {
                    Ok(Some(status)) => break Some(status),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => {
                        let _ = c.child.kill();
                        let _ = c.child.wait();
                        break None;
                    }
                }
            };
            stopped.push(match status {
                Some(_) => format!("{} (pid {})", c.name, c.child.id()),
                None => format!("{} (pid {}, killed)", c.name, c.child.id()),
            });
        }
        if !stopped.is_empty() {
            said.push(format!("stopped {}", stopped.join(", ")));
        }
        let mut removed = Vec::new();
        for path in segment_files(&self.segment) {
            if std::fs::remove_file(&path).is_ok() {
                removed.push(path.display().to_string());
            }
        }
        if let Some(dir) = self.dir.take() {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => removed.push(dir.display().to_string()),
                Err(e) => said.push(format!("cannot remove {}: {e}", dir.display())),
            }
        }
        if !removed.is_empty() {
            said.push(format!("removed {}", removed.join(", ")));
        }
        said
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The segment and what lives beside it: the unloader's `.unloader` file, and a segment being made
/// (`.new-…`) by a worker stopped half-way.
fn segment_files(segment: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (segment.parent(), segment.file_name()) else {
        return Vec::new();
    };
    let name = name.to_string_lossy().into_owned();
    let mut found = vec![segment.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.strip_prefix(&name)
                .is_some_and(|rest| rest.starts_with('.'))
            {
                found.push(e.path());
            }
        }
    }
    found
}

/// A line a child printed.
struct Line {
    from: String,
    text: String,
}

/// The device the demo runs on, as the probe saw it (its own context taken).
struct Device {
    free: u64,
    total: u64,
    name: String,
}

struct Demo {
    screen: Screen,
    tools: Tools,
    /// The children's environment, whole.
    env: Vec<(OsString, OsString)>,
    guard: Cleanup,
    stop: Arc<AtomicBool>,
    tx: Sender<Line>,
    rx: Receiver<Line>,
}

/// Our environment without anything that would change what the children do: vramcap's variables
/// (the demo sets its own), HAMi's limits and LD_PRELOAD; on the simulated device also the fake
/// driver's variables and CUDA_VISIBLE_DEVICES, which the demo's device does not follow. (On a GPU the
/// fake's variables mean nothing, unless the fake stands in for the machine's driver, as in
/// tests/demo.rs.)
fn clean_env(simulated: bool) -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            !(k.starts_with("VRAMCAP_")
                || k.starts_with("CUDA_DEVICE_MEMORY_LIMIT")
                || k == "LD_PRELOAD"
                || (simulated && (k.starts_with("FAKECUDA_") || k == "CUDA_VISIBLE_DEVICES")))
        })
        .collect()
}

fn set(env: &mut Vec<(OsString, OsString)>, key: &str, value: impl Into<OsString>) {
    env.retain(|(k, _)| k != key);
    env.push((key.into(), value.into()));
}

/// A folder of our own under the temporary directory, readable by us alone.
fn make_dir() -> Result<PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    for n in 0..100 {
        let dir = base.join(format!("vramcap-demo-{}-{n}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("cannot make a folder in {}: {e}", base.display())),
        }
    }
    Err(format!(
        "cannot make a folder in {}: vramcap-demo-{}-0 to -99 exist",
        base.display(),
        std::process::id()
    ))
}

/// A size as a flag takes it: `1GiB`, `3904MiB` (the sizes here are whole MiB).
fn arg(bytes: u64) -> String {
    if bytes.is_multiple_of(GIB) {
        format!("{}GiB", bytes / GIB)
    } else {
        format!("{}MiB", bytes / MIB)
    }
}

/// `text` in lines of at most [`WIDTH`] characters, the first indented by `first`, the rest by `rest`.
fn wrap(text: &str, first: &str, rest: &str) -> String {
    let mut lines = Vec::new();
    let mut line = first.to_string();
    let mut empty = true;
    for word in text.split_whitespace() {
        if !empty && line.chars().count() + 1 + word.chars().count() > WIDTH {
            lines.push(std::mem::replace(&mut line, rest.to_string()));
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    lines.push(line);
    lines.join("\n")
}

fn round_down(bytes: u64, to: u64) -> u64 {
    bytes / to * to
}

/// What a command line looks like on screen: programs by their names, not their paths.
fn shown(args: &[OsString]) -> String {
    args.iter()
        .map(|a| {
            let p = Path::new(a);
            match (p.is_absolute(), p.file_name()) {
                (true, Some(n)) => n.to_string_lossy().into_owned(),
                _ => a.to_string_lossy().into_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Demo {
    /// A command with the children's environment, in a process group of its own, that gets SIGTERM
    /// should the demo die.
    fn command(&self, program: &Path, args: &[OsString]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args).env_clear().envs(self.env.iter().cloned());
        cmd.process_group(0);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the forked child before exec and calls only prctl and getppid,
        // which are async-signal-safe and touch no memory of the parent's.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                if libc::getppid() != parent {
                    // The demo died before the line above: end here rather than run on alone.
                    return Err(std::io::Error::other("vramcap demo is gone"));
                }
                Ok(())
            })
        };
        cmd
    }

    fn check_stop(&self) -> Result<(), Stop> {
        if self.stop.load(Ordering::SeqCst) {
            Err(Stop::Interrupted)
        } else {
            Ok(())
        }
    }

    /// Runs `program args` to its end (at most `limit`); returns (exit status, stdout, stderr).
    fn output(
        &self,
        program: &Path,
        args: &[OsString],
        limit: Duration,
    ) -> Result<(std::process::ExitStatus, String, String), Stop> {
        let mut child = self
            .command(program, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
        let read = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                if let Some(mut p) = pipe {
                    let mut bytes = Vec::new();
                    let _ = p.read_to_end(&mut bytes);
                    text = String::from_utf8_lossy(&bytes).into_owned();
                }
                text
            })
        };
        let out = read(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let err = read(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let deadline = Instant::now() + limit;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if self.stop.load(Ordering::SeqCst) => break Err(Stop::Interrupted),
                Ok(None) if Instant::now() >= deadline => {
                    break Err(Stop::Failed(format!(
                        "{} did not finish within {} s",
                        shown(&[program.as_os_str().to_owned()]),
                        limit.as_secs()
                    )))
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => break Err(Stop::Failed(format!("cannot wait for a child: {e}"))),
            }
        };
        if status.is_err() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let status = status?;
        let out = out.join().unwrap_or_default();
        let err = err.join().unwrap_or_default();
        Ok((status, out, err))
    }

    /// Starts a child whose lines come to [`Demo::wait_for`]; the guard owns it.
    fn start(
        &mut self,
        name: &str,
        program: &Path,
        args: &[OsString],
        ending: Ending,
    ) -> Result<(), Stop> {
        // stdout and stderr into one pipe, so that the worker's lines and the library's keep their order.
        let (reader, writer) =
            std::io::pipe().map_err(|e| format!("cannot make a pipe for {name}: {e}"))?;
        let second = writer
            .try_clone()
            .map_err(|e| format!("cannot make a pipe for {name}: {e}"))?;
        let mut cmd = self.command(program, args);
        cmd.stdin(match ending {
            Ending::Eof => Stdio::piped(),
            Ending::Signal => Stdio::null(),
        })
        .stdout(writer)
        .stderr(second);
        let spawned = cmd.spawn();
        // Our ends of the writer go with the command, so the reader sees the end when the child exits.
        drop(cmd);
        let mut child =
            spawned.map_err(|e| format!("cannot start {name} ({}): {e}", program.display()))?;
        let tx = self.tx.clone();
        let from = name.to_string();
        std::thread::spawn(move || {
            for text in BufReader::new(reader).lines().map_while(Result::ok) {
                let line = Line {
                    from: from.clone(),
                    text,
                };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        self.guard.children.push(Started {
            name: name.to_string(),
            child,
            stdin,
            ending,
        });
        Ok(())
    }

    /// A worker: `vramcap-run RUN_ARGS -- vramcap demo-worker ROLE ARGS`, shown as a command line.
    fn start_worker(&mut self, name: &str, run_args: &[&str], role: &[&str]) -> Result<(), Stop> {
        let mut args: Vec<OsString> = run_args.iter().map(OsString::from).collect();
        args.push("--".into());
        args.push(self.tools.vramcap.clone().into());
        args.push("demo-worker".into());
        args.extend(role.iter().map(OsString::from));
        let mut line = vec![self.tools.run.clone().into_os_string()];
        line.extend(args.iter().cloned());
        self.screen.say(&format!("   $ {}", shown(&line)));
        let run = self.tools.run.clone();
        self.start(name, &run, &args, Ending::Eof)
    }

    fn relay(&self, line: &Line) {
        self.screen
            .say(&format!("   {:>8} | {}", line.from, line.text));
    }

    /// Relays the children's lines until one from `from` satisfies `wanted`, which it returns; fails
    /// when `from` exits first or `limit` passes. `what` names the awaited event for the error.
    fn wait_for(
        &mut self,
        from: &str,
        what: &str,
        wanted: impl Fn(&str) -> bool,
        limit: Duration,
    ) -> Result<String, Stop> {
        let deadline = Instant::now() + limit;
        let mut exited_at: Option<Instant> = None;
        loop {
            self.check_stop()?;
            if let Ok(line) = self.rx.recv_timeout(Duration::from_millis(20)) {
                self.relay(&line);
                if line.from == from && wanted(&line.text) {
                    return Ok(line.text);
                }
            }
            match exited_at {
                // Its last lines may still be on their way when it exits: a moment for them.
                Some(at) if at.elapsed() > Duration::from_millis(300) => {
                    return Err(Stop::Failed(format!(
                        "{from} exited before {what}; its lines are above"
                    )));
                }
                Some(_) => {}
                None => {
                    let child = self.guard.children.iter_mut().find(|c| c.name == from);
                    if let Some(Ok(Some(status))) = child.map(|c| c.child.try_wait()) {
                        self.screen.say(&format!("   {from:>8} | ({status})"));
                        exited_at = Some(Instant::now());
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(Stop::Failed(format!(
                    "{from}: not {what} within {} s; its lines are above",
                    limit.as_secs()
                )));
            }
        }
    }

    /// Relays what the children print for `settle` more.
    fn drain(&mut self, settle: Duration) -> Result<(), Stop> {
        let end = Instant::now() + settle;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            self.check_stop()?;
            if let Ok(line) = self.rx.recv_timeout(left.min(Duration::from_millis(20))) {
                self.relay(&line);
            }
        }
        Ok(())
    }

    /// Closes a worker's stdin, which makes it free its memory and exit, and reaps it.
    fn stop_worker(&mut self, name: &str) -> Result<(), Stop> {
        let Some(i) = self.guard.children.iter().position(|c| c.name == name) else {
            return Ok(());
        };
        self.guard.children[i].stdin = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.check_stop()?;
            match self.guard.children[i].child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    self.drain(Duration::from_millis(10))?;
                }
                _ => return Err(Stop::Failed(format!("{name} does not stop"))),
            }
        }
        let done = self.guard.children.remove(i);
        drop(done);
        self.drain(Duration::from_millis(50))
    }

    /// `vramcap status` on the demo's segment, printed with `title`.
    fn status(&mut self, title: &str) -> Result<(), Stop> {
        // The workers publish their figures within a 10 ms tick.
        self.drain(Duration::from_millis(150))?;
        let vramcap = self.tools.vramcap.clone();
        let (status, out, err) =
            self.output(&vramcap, &["status".into()], Duration::from_secs(20))?;
        if !status.success() {
            return Err(Stop::Failed(format!(
                "vramcap status failed ({status}): {}",
                err.trim()
            )));
        }
        self.screen.say(&format!("   {title}"));
        for line in out.trim_end().lines() {
            match line.trim_end() {
                "" => self.screen.say(""),
                line => self.screen.say(&format!("     {line}")),
            }
        }
        Ok(())
    }

    /// Device 0's memory, from `vramcap demo-worker probe` in the children's environment, without
    /// libvramcap.so; `Err` says why there is none.
    fn probe(&self) -> Result<Result<Device, String>, Stop> {
        let vramcap = self.tools.vramcap.clone();
        let (status, out, err) = self.output(
            &vramcap,
            &["demo-worker".into(), "probe".into()],
            Duration::from_secs(60),
        )?;
        if !status.success() {
            let why = err
                .lines()
                .map(|l| l.trim_start_matches("vramcap demo-worker: "))
                .collect::<Vec<_>>()
                .join("; ");
            return Ok(Err(if why.is_empty() {
                format!("the probe failed ({status})")
            } else {
                why
            }));
        }
        let field = |key: &str| {
            out.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse::<u64>().ok())
        };
        let name = out
            .split_once("name=")
            .map(|(_, n)| n.trim().to_string())
            .unwrap_or_default();
        match (field("free"), field("total")) {
            (Some(free), Some(total)) => Ok(Ok(Device { free, total, name })),
            _ => Ok(Err(format!("the probe printed {:?}", out.trim()))),
        }
    }
}

/// `vramcap demo [--simulated]`.
pub fn run(simulated: bool) -> ExitCode {
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("vramcap demo: cannot handle signal {signal}: {e}");
            return ExitCode::from(1);
        }
    }
    let tools = match Tools::find() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("vramcap demo: {e}");
            return ExitCode::from(2);
        }
    };
    let segment_name = format!("vramcap-demo-{}", std::process::id());
    let (tx, rx) = channel();
    let mut demo = Demo {
        screen: Screen { simulated },
        env: clean_env(false),
        tools,
        guard: Cleanup {
            children: Vec::new(),
            segment: Path::new("/dev/shm").join(&segment_name),
            dir: None,
        },
        stop,
        tx,
        rx,
    };
    let outcome = show(&mut demo, simulated, &segment_name);
    let cleaned = demo.guard.finish();
    let screen = demo.screen;
    let code = match &outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Stop::Interrupted) => {
            screen.say("");
            screen.say("Interrupted: stopping everything the demo started.");
            ExitCode::from(130)
        }
        Err(Stop::Failed(e)) => {
            screen.error(e);
            ExitCode::from(1)
        }
        Err(Stop::Missing(e)) => {
            screen.error(e);
            ExitCode::from(2)
        }
    };
    if !cleaned.is_empty() {
        screen.say("");
        screen.prose("", &format!("Cleaned up: {}.", cleaned.join("; ")));
    }
    if outcome.is_ok() {
        screen.say(&format!(
            "Done in {:.1} s.",
            started.elapsed().as_secs_f64()
        ));
    }
    code
}

/// The demo proper; the guard in `demo` is left for the caller to finish.
fn show(demo: &mut Demo, simulated: bool, segment_name: &str) -> Result<(), Stop> {
    // A GPU, unless asked for the simulated device or there is none.
    let mut real = Err("--simulated asks for the simulated device".to_string());
    if !simulated {
        demo.env = clean_env(false);
        real = demo.probe()?;
    }
    let why_simulated = match real {
        Ok(d) => {
            demo.screen = Screen { simulated: false };
            return on(demo, d, false, segment_name);
        }
        Err(why) => why,
    };
    demo.screen = Screen { simulated: true };
    let device = match demo.tools.simulated_device() {
        Ok(d) => d,
        Err(e) => {
            return Err(Stop::Missing(if simulated {
                e
            } else {
                format!("there is no GPU here ({why_simulated}), and {e}")
            }))
        }
    };
    let dir = make_dir()?;
    demo.guard.dir = Some(dir.clone());
    for name in ["libcuda.so.1", "libnvidia-ml.so.1"] {
        std::os::unix::fs::symlink(&device, dir.join(name))
            .map_err(|e| format!("cannot link {}: {e}", dir.join(name).display()))?;
    }
    let shared = dir.join("device");
    std::fs::create_dir(&shared).map_err(|e| format!("cannot make {}: {e}", shared.display()))?;
    let mut env = clean_env(true);
    let mut path = OsString::from(&dir);
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH").filter(|v| !v.is_empty()) {
        path.push(":");
        path.push(old);
    }
    set(&mut env, "LD_LIBRARY_PATH", path);
    set(&mut env, "VRAMCAP_REAL_LIBCUDA", dir.join("libcuda.so.1"));
    set(&mut env, "FAKECUDA_SHARED", &shared);
    set(&mut env, "FAKECUDA_MEM", SIM_MEMORY);
    set(&mut env, "FAKECUDA_CONTEXT_BYTES", SIM_CONTEXT);
    set(&mut env, "VRAMCAP_CONTEXT_BYTES", SIM_CONTEXT);
    demo.env = env;
    let d = match demo.probe()? {
        Ok(d) => d,
        Err(why) => {
            return Err(Stop::Failed(format!(
                "the simulated device ({}) does not answer: {why}",
                device.display()
            )))
        }
    };
    demo.screen.prose(
        "",
        &format!(
            "vramcap demo on a simulated GPU of {}, the fake driver vramcap's tests use ({}): {}.",
            HumanBytes(d.total),
            device.display(),
            if simulated {
                "--simulated asked for it".to_string()
            } else {
                format!("there is no GPU here ({why_simulated})")
            }
        ),
    );
    on(demo, d, true, segment_name)
}

/// The two parts, on `d`.
fn on(demo: &mut Demo, d: Device, simulated: bool, segment_name: &str) -> Result<(), Stop> {
    let screen = demo.screen;
    let free = d.free;
    // Part 2's sizes: chat holds half of what is free, video asks for three quarters.
    let hold = round_down(free / 2, CHUNK);
    let want = round_down(free * 3 / 4, CHUNK);
    let chunk = round_down(hold / 256, CHUNK).max(CHUNK);
    if !simulated {
        let name = if d.name.is_empty() {
            "GPU 0".to_string()
        } else {
            format!("GPU 0 ({})", d.name)
        };
        if free < LEAST_FREE {
            return Err(Stop::Failed(format!(
                "{name} has {} free of {}; the demo needs {} free, since it fills most of it for a \
                 moment. Free some, or see it on the simulated device: vramcap demo --simulated",
                HumanBytes(free),
                HumanBytes(d.total),
                HumanBytes(LEAST_FREE)
            )));
        }
        screen.prose(
            "",
            &format!(
                "vramcap demo on {name}, {} free of {}. It briefly fills most of the GPU's free \
                 memory (about {}), and gives it all back at the end.",
                HumanBytes(free),
                HumanBytes(d.total),
                HumanBytes(want)
            ),
        );
    }
    set(&mut demo.env, "VRAMCAP_SHM", segment_name);
    set(&mut demo.env, "VRAMCAP_LIB", &demo.tools.library);
    set(&mut demo.env, "VRAMCAP_LOG", "info");
    screen.prose(
        "",
        &format!(
            "Its workers and its unloader use a segment of their own, {}: nothing of yours is \
             touched.",
            demo.guard.segment.display()
        ),
    );

    // Part 1: the cap.
    screen.say("");
    screen.prose(
        "1. ",
        &format!(
            "The cap. A worker capped at {} allocates {} at a time until vramcap refuses (its CUDA \
             context counts too):",
            HumanBytes(CAP),
            HumanBytes(CHUNK)
        ),
    );
    demo.start_worker(
        "capped",
        &["--limit", &arg(CAP), "--name", "capped"],
        &["fill", "--bytes", &arg(CHUNK)],
    )?;
    let summary = demo.wait_for(
        "capped",
        "refused at its cap",
        |l| l.contains(" succeeded ("),
        READY,
    )?;
    demo.wait_for(
        "capped",
        "holding its memory",
        |l| l.starts_with("holding "),
        READY,
    )?;
    if !summary.contains("CUDA_ERROR_OUT_OF_MEMORY (2)") {
        return Err(Stop::Failed(format!(
            "the cap did not refuse with CUDA_ERROR_OUT_OF_MEMORY: {summary}"
        )));
    }
    demo.status("vramcap status, at the cap (its refusal counted):")?;
    demo.stop_worker("capped")?;

    // Part 2: the priority unloader.
    screen.say("");
    screen.prose(
        "2. ",
        &format!(
            "The priority unloader. chat (priority 1) holds {} and unloads on SIGUSR1; video \
             (priority 5) then asks for {}, more than is free, and waits up to {VIDEO_WAIT}: the \
             unloader asks chat to unload, and video gets its memory.",
            HumanBytes(hold),
            HumanBytes(want)
        ),
    );
    let unloader_args: Vec<OsString> = ["unloader", "--poll", "20ms", "--hook-timeout", "10s"]
        .iter()
        .map(OsString::from)
        .collect();
    let mut line = vec![demo.tools.vramcap.clone().into_os_string()];
    line.extend(unloader_args.iter().cloned());
    screen.say(&format!("   $ {}", shown(&line)));
    let vramcap = demo.tools.vramcap.clone();
    demo.start("unloader", &vramcap, &unloader_args, Ending::Signal)?;
    demo.wait_for("unloader", "watching", |l| l.contains("watching"), READY)?;
    demo.start_worker(
        "chat",
        &[
            "--name",
            "chat",
            "--priority",
            "1",
            "--limit",
            &arg(hold + 2 * GIB),
            "--unload-signal",
            "USR1",
        ],
        &["hold", "--bytes", &arg(hold), "--chunk", &arg(chunk)],
    )?;
    demo.wait_for(
        "chat",
        "holding its memory",
        |l| l.starts_with("holding "),
        READY,
    )?;
    demo.status("vramcap status, before video asks:")?;
    demo.start_worker(
        "video",
        &[
            "--name",
            "video",
            "--priority",
            "5",
            "--limit",
            &arg(want + 2 * GIB),
            "--wait",
            VIDEO_WAIT,
        ],
        &["want", "--bytes", &arg(want)],
    )?;
    let got = demo.wait_for(
        "video",
        "answered",
        |l| l.starts_with("got ") || l.contains("was refused"),
        ANSWER,
    )?;
    if !got.starts_with("got ") {
        return Err(Stop::Failed(format!("video did not get its memory: {got}")));
    }
    // The unloader's last lines (what chat freed, its answer) may follow video's.
    demo.drain(Duration::from_millis(100))?;
    demo.status("vramcap status, after:")?;
    screen.say("");
    screen.prose(
        "",
        "So: the cap refused the allocation that would cross it, with the CUDA error any framework \
         turns into its own out-of-memory error; and when video needed memory that chat held, the \
         unloader asked chat, the lower priority, to give it back, and video's allocation succeeded.",
    );
    Ok(())
}
