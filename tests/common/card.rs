//! One small fake device shared by several processes (`FAKECUDA_SHARED`), its workers started with
//! vramcap-run, and the processes' output read line by line.

use super::{env, shm_path, ShmPath};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

pub struct Card {
    pub shm: ShmPath,
    pub shared: PathBuf,
    vars: Vec<(String, String)>,
}

impl Card {
    /// A device of `mem` whose every context costs `context` (as the fake reads them: "1G", "300M").
    pub fn new(name: &str, mem: &str, context: &str) -> Card {
        let shared = env()
            .dir
            .join(format!("card-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&shared);
        std::fs::create_dir_all(&shared).unwrap();
        let vars = [
            ("FAKECUDA_MEM", mem),
            ("FAKECUDA_CONTEXT_BYTES", context),
            ("VRAMCAP_CONTEXT_BYTES", context),
        ];
        Card {
            shm: shm_path(&format!("card-{name}")),
            shared,
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Sets `key` for every command run on the card.
    pub fn with(mut self, key: &str, value: &str) -> Card {
        self.vars.push((key.into(), value.into()));
        self
    }

    /// The card's environment, the fake's NVML included (on LD_LIBRARY_PATH).
    pub fn vars(&self, cmd: &mut Command) {
        cmd.env("LD_LIBRARY_PATH", &env().dir)
            .env("VRAMCAP_LIB", &env().preload)
            .env("VRAMCAP_SHM", &self.shm)
            .env("FAKECUDA_SHARED", &self.shared)
            .env_remove("VRAMCAP_LIMIT")
            .env_remove("LD_PRELOAD");
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
    }

    /// `vramcap-run FLAGS -- client dlsym SCENARIO ARGS`, its stdout and stderr lines on a channel.
    pub fn start(&self, flags: &[&str], scenario: &[&str], extra: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vramcap-run"));
        cmd.args(flags)
            .arg("--")
            .arg(&env().client)
            .arg("dlsym")
            .args(scenario);
        self.vars(&mut cmd);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        Proc::spawn(cmd)
    }

    /// A worker of `priority` holding `mib` that unloads on SIGUSR1.
    pub fn signalled(&self, name: &str, priority: &str, mib: u64) -> Proc {
        self.worker(
            name,
            &["--priority", priority, "--unload-signal", "USR1"],
            mib,
            &[],
        )
    }

    /// Starts a worker holding `mib` and waits until it holds it and is listed.
    pub fn worker(&self, name: &str, flags: &[&str], mib: u64, extra: &[(&str, &str)]) -> Proc {
        let mut all = vec!["--name", name];
        all.extend_from_slice(flags);
        let mut p = self.start(&all, &["worker", &mib.to_string()], extra);
        p.wait_for("READY", Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{name} never got ready:\n{}", p.seen.join("\n")));
        // The background thread publishes within a tick; NVML readings settle the context share.
        std::thread::sleep(Duration::from_millis(300));
        p
    }

    pub fn vramcap(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vramcap"));
        cmd.args(args);
        self.vars(&mut cmd);
        cmd.output().unwrap()
    }
}

impl Drop for Card {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.shared);
    }
}

/// A child whose stdout and stderr lines arrive on a channel; killed when it goes.
pub struct Proc {
    pub child: Child,
    pub lines: Receiver<String>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let (tx, rx) = channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Proc {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `text`; returns it.
    pub fn wait_for(&mut self, text: &str, timeout: Duration) -> Option<String> {
        if let Some(l) = self.seen.iter().find(|l| l.contains(text)) {
            return Some(l.clone());
        }
        let end = Instant::now() + timeout;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return Some(line);
                    }
                }
                Err(_) => break,
            }
        }
        None
    }

    /// Everything printed so far (waiting `settle` for more).
    pub fn drain(&mut self, settle: Duration) -> String {
        while let Ok(line) = self.lines.recv_timeout(settle) {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }

    pub fn value(&mut self, key: &str, timeout: Duration) -> i64 {
        let line = self
            .wait_for(&format!("{key}="), timeout)
            .unwrap_or_else(|| panic!("no {key}:\n{}", self.seen.join("\n")));
        line.split_once('=').unwrap().1.trim().parse().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
