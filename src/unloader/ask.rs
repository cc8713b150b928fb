//! The ways a worker declared to be asked to unload (`vramcap-run --unload-url/--unload-signal/
//! --unload-cmd`), and asking it, each bounded in time.

use super::Options;
use crate::config::{parse_http_url, parse_signal};
use crate::shm::{VRAMCAP_UNLOAD_CMD, VRAMCAP_UNLOAD_SIGNAL, VRAMCAP_UNLOAD_URL};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerHook {
    Url(String),
    Signal(String),
    Cmd(String),
    /// A kind this build does not know (a newer vramcap-run).
    Unknown(u32),
}

impl WorkerHook {
    pub fn of(kind: u32, detail: &str) -> WorkerHook {
        match kind {
            VRAMCAP_UNLOAD_URL => WorkerHook::Url(detail.to_string()),
            VRAMCAP_UNLOAD_SIGNAL => WorkerHook::Signal(detail.to_string()),
            VRAMCAP_UNLOAD_CMD => WorkerHook::Cmd(detail.to_string()),
            k => WorkerHook::Unknown(k),
        }
    }
}

impl std::fmt::Display for WorkerHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerHook::Url(u) => write!(f, "POST {u}"),
            WorkerHook::Signal(s) => write!(f, "signal {s}"),
            WorkerHook::Cmd(c) => write!(f, "command {c:?}"),
            WorkerHook::Unknown(k) => write!(f, "unknown hook kind {k}"),
        }
    }
}

/// Asks worker `pid` through `hook`; `Ok` once the hook accepted (the memory falls later).
pub fn ask(hook: &WorkerHook, pid: u32, name: &str, opts: &Options) -> Result<(), String> {
    match hook {
        WorkerHook::Url(url) => post(url, opts.allow_remote, opts.hook_timeout),
        WorkerHook::Signal(sig) => {
            let n = parse_signal(sig)?;
            // SAFETY: sends a signal to a process verified by the caller (uid and start time).
            if unsafe { libc::kill(pid as i32, n) } == 0 {
                Ok(())
            } else {
                Err(format!("kill: {}", std::io::Error::last_os_error()))
            }
        }
        WorkerHook::Cmd(cmd) => run(cmd, pid, name, opts.hook_timeout),
        WorkerHook::Unknown(k) => Err(format!("unknown hook kind {k}")),
    }
}

/// HTTP POST with an empty body; a 2xx answer is success.
fn post(url: &str, allow_remote: bool, timeout: Duration) -> Result<(), String> {
    let (host, port, path) = parse_http_url(url)?;
    // The timeout bounds the whole hook, the name's resolution included: it runs on a thread of its
    // own, left behind if it does not answer in time.
    let deadline = Instant::now() + timeout;
    let (tx, rx) = std::sync::mpsc::channel();
    let name = host.clone();
    std::thread::spawn(move || {
        let _ = tx.send(
            (name.as_str(), port)
                .to_socket_addrs()
                .map(Iterator::collect::<Vec<_>>),
        );
    });
    let addrs: Vec<_> = match rx.recv_timeout(timeout) {
        Ok(resolved) => resolved.map_err(|e| format!("cannot resolve {host}: {e}"))?,
        Err(_) => return Err(format!("{url}: {host} did not resolve within {timeout:?}")),
    };
    let addr = *addrs
        .first()
        .ok_or_else(|| format!("{host} has no address"))?;
    if !allow_remote && !addrs.iter().all(|a| a.ip().is_loopback()) {
        return Err(format!(
            "{url} is not a loopback address (start the unloader with --allow-remote to call it)"
        ));
    }
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let mut stream =
        TcpStream::connect_timeout(&addr, left()).map_err(|e| format!("{url}: {e}"))?;
    stream.set_write_timeout(Some(left())).ok();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 0\r\nConnection: close\r\nUser-Agent: vramcap-unloader\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("{url}: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') {
        stream.set_read_timeout(Some(left())).ok();
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("{url}: no answer within {timeout:?}"))
            }
            Err(e) => return Err(format!("{url}: {e}")),
        }
        if Instant::now() >= deadline {
            return Err(format!("{url}: no answer within {timeout:?}"));
        }
    }
    let line = String::from_utf8_lossy(&head);
    let status = line.lines().next().unwrap_or("").trim().to_string();
    match status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
    {
        Some(code) if (200..300).contains(&code) => Ok(()),
        _ => Err(format!("{url} answered {status:?}")),
    }
}

/// Runs `sh -c cmd` with the worker's PID and name in its environment, in a process group of its own,
/// which is killed whole after `timeout`. As root, the command runs as the worker's user (its real uid
/// and gid from `/proc`, and that user's groups), never as root.
fn run(cmd: &str, pid: u32, name: &str, timeout: Duration) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    let as_user = if unsafe { libc::geteuid() } == 0 {
        let f = crate::process::facts(pid).ok_or_else(|| format!("pid {pid} is gone"))?;
        (f.uid != 0).then(|| (f.uid, f.gid, crate::process::groups_of(f.uid, f.gid)))
    } else {
        None
    };
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(cmd)
        .env("VRAMCAP_PID", pid.to_string())
        .env("VRAMCAP_NAME", name)
        .stdin(Stdio::null());
    // SAFETY: the closure runs in the child between fork and exec and only makes system calls
    // (setpgid, setgroups, setgid, setuid) on values computed before the fork.
    unsafe {
        command.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some((uid, gid, groups)) = &as_user {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(*gid) != 0
                    || libc::setuid(*uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })
    };
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("{cmd:?} exited with {status}")),
            Ok(None) if start.elapsed() >= timeout => {
                // SAFETY: signals the command's own process group (it called setpgid(0, 0)).
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{cmd:?} did not finish within {timeout:?}; killed"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("{cmd:?}: {e}")),
        }
    }
}
