//! Shared set-up for the integration tests: finds libvramcap.so and the fake driver that `cargo build`
//! built (built.rs), lays the fake out as `libcuda.so.1` / `libnvidia-ml.so.1`, compiles the C clients,
//! and runs them under `LD_PRELOAD`.
#![allow(dead_code)]

mod built;
pub mod card;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
/// What a context costs in the fake driver, and the estimate the tests give the library for it.
pub const CONTEXT: u64 = 300 * MIB;

pub struct Env {
    pub dir: PathBuf,
    pub preload: PathBuf,
    pub client: PathBuf,
    pub nextlib: PathBuf,
    pub table: PathBuf,
}

fn check(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        // VRAMCAP_TEST_PRELOAD runs the suite against another build of the library (an older one, to
        // show that a test fails there): that one is not checked against the sources.
        let preload = std::env::var_os("VRAMCAP_TEST_PRELOAD")
            .map(PathBuf::from)
            .unwrap_or_else(|| built::library("libvramcap.so"));
        let sim = built::library("libvramcap_sim.so");
        let dir = built::profile_dir().parent().unwrap().join("vramcap-tests");
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["libcuda.so.1", "libcuda.so", "libnvidia-ml.so.1"] {
            let link = dir.join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&sim, &link).unwrap();
        }
        let clients = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
        let client = dir.join("client");
        check(
            Command::new("cc")
                .args(["-O1", "-Wall", "-o"])
                .arg(&client)
                .arg(clients.join("client.c"))
                .arg("-L")
                .arg(&dir)
                .args(["-lcuda", "-ldl", "-lpthread"]),
        );
        for (name, libs) in [
            ("alias", &["-ldl"][..]),
            ("fork_busy", &["-lcuda", "-lpthread"][..]),
        ] {
            check(
                Command::new("cc")
                    .args(["-O1", "-Wall", "-o"])
                    .arg(dir.join(name))
                    .arg(clients.join(format!("{name}.c")))
                    .arg("-L")
                    .arg(&dir)
                    .args(libs),
            );
        }
        let nextlib = dir.join("libnext.so");
        check(
            Command::new("cc")
                .args(["-O1", "-shared", "-fPIC", "-o"])
                .arg(&nextlib)
                .arg(clients.join("nextlib.c"))
                .arg("-ldl"),
        );
        Env {
            preload,
            table: Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fake-driver/proc-address-table.txt"),
            client,
            nextlib,
            dir,
        }
    })
}

/// What a client printed.
pub struct Run {
    pub values: HashMap<String, String>,
    pub stdout: String,
    pub stderr: String,
    pub code: Option<i32>,
}

impl Run {
    pub fn get(&self, key: &str) -> u64 {
        let v = self.values.get(key).unwrap_or_else(|| {
            panic!(
                "client printed no {key} (exit {:?}):\n{}\nstderr:\n{}",
                self.code, self.stdout, self.stderr
            )
        });
        v.split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v} is not a number"))
    }

    pub fn int(&self, key: &str) -> i64 {
        let v = self
            .values
            .get(key)
            .unwrap_or_else(|| panic!("client printed no {key}:\n{}", self.stdout));
        v.split_whitespace().next().unwrap().parse().unwrap()
    }
}

/// Runs the client under libvramcap.so with the fake driver. `vars` are added to a clean CUDA environment.
pub fn client(path: &str, args: &[&str], vars: &[(&str, &str)]) -> Run {
    client_with_preload(path, args, vars, None)
}

pub fn client_with_preload(
    path: &str,
    args: &[&str],
    vars: &[(&str, &str)],
    preload: Option<String>,
) -> Run {
    let mut all = vec![path];
    all.extend_from_slice(args);
    program(&env().client, &all, vars, preload)
}

/// Runs `program` under libvramcap.so (or `preload`) with the fake driver: `vars` are added to a clean
/// CUDA environment, and a segment of this test process's own.
pub fn program(
    program: &Path,
    args: &[&str],
    vars: &[(&str, &str)],
    preload: Option<String>,
) -> Run {
    let e = env();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("LD_LIBRARY_PATH", &e.dir)
        .env(
            "LD_PRELOAD",
            preload.unwrap_or_else(|| e.preload.display().to_string()),
        )
        .env("VRAMCAP_CONTEXT_BYTES", CONTEXT.to_string())
        .env("FAKECUDA_CONTEXT_BYTES", CONTEXT.to_string())
        .env_remove("VRAMCAP_LIMIT")
        .env_remove("VRAMCAP_LOG")
        .env_remove("VRAMCAP_REAL_LIBCUDA");
    // A segment of the run's own, gone when it is done, unless the test names one.
    let _segment = own_segment();
    cmd.env("VRAMCAP_SHM", &_segment);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run client");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let values = stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Run {
        values,
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code(),
    }
}

pub const PATHS: [&str; 3] = ["link", "dlsym", "gpa"];

/// A client that fills its cap and holds its memory until released.
pub struct Holder {
    pub child: std::process::Child,
    pub values: HashMap<String, String>,
    hold: PathBuf,
    /// The segment it publishes in where the test named none.
    _segment: ShmPath,
}

impl Holder {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn get(&self, key: &str) -> u64 {
        self.values[key]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Lets the client free everything and exit; returns its stderr.
    pub fn release(self) -> String {
        std::fs::write(&self.hold, b"").unwrap();
        let out = self.child.wait_with_output().unwrap();
        let _ = std::fs::remove_file(&self.hold);
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// Starts `client PATH cap` under libvramcap.so with `vars`, and waits until it holds its memory.
pub fn hold(path: &str, vars: &[(&str, &str)]) -> Holder {
    hold_scenario(path, "cap", vars)
}

/// Starts `client PATH SCENARIO` and waits for its HOLD line.
pub fn hold_scenario(path: &str, scenario: &str, vars: &[(&str, &str)]) -> Holder {
    use std::io::BufRead;
    let e = env();
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let hold = e.dir.join(format!(
        "hold-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&hold);
    let mut cmd = Command::new(&e.client);
    cmd.args([path, scenario])
        .env("LD_LIBRARY_PATH", &e.dir)
        .env("LD_PRELOAD", &e.preload)
        .env("VRAMCAP_CONTEXT_BYTES", CONTEXT.to_string())
        .env("FAKECUDA_CONTEXT_BYTES", CONTEXT.to_string())
        .env("VRAMCAP_E2E_HOLD", &hold)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let segment = own_segment();
    cmd.env("VRAMCAP_SHM", &segment);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn client");
    let stdout = child.stdout.take().unwrap();
    let mut values = HashMap::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if line.starts_with("HOLD") {
            break;
        }
        if let Some((k, v)) = line.split_once('=') {
            values.insert(k.to_string(), v.to_string());
        }
    }
    // The background thread publishes within a 10 ms tick.
    std::thread::sleep(std::time::Duration::from_millis(100));
    Holder {
        child,
        values,
        hold,
        _segment: segment,
    }
}

/// `vramcap ARGS` with VRAMCAP_SHM set.
pub fn vramcap(shm: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vramcap"))
        .args(args)
        .env("VRAMCAP_SHM", shm)
        .output()
        .expect("run vramcap")
}

/// `vramcap ARGS` with the segment at `shm`, `vars` added to an environment without the caller's
/// `VRAMCAP_*` settings, stdin closed, killed after `limit` (a hang fails the test, not the suite): the
/// exit code (`None` when killed), stdout, stderr and how long it ran.
pub fn vramcap_within(
    shm: &Path,
    args: &[&str],
    vars: &[(&str, &str)],
    limit: std::time::Duration,
) -> (Option<i32>, String, String, std::time::Duration) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vramcap"));
    cmd.args(args)
        .env("VRAMCAP_SHM", shm)
        .env_remove("VRAMCAP_SHM_MODE")
        .env_remove("VRAMCAP_CONTEXT_BYTES")
        .env_remove("VRAMCAP_LIMIT")
        .env_remove("CUDA_DEVICE_MEMORY_LIMIT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let start = std::time::Instant::now();
    let mut child = cmd.spawn().unwrap();
    while child.try_wait().unwrap().is_none() && start.elapsed() < limit {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let took = start.elapsed();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        took,
    )
}

/// A segment path of one test's own, removed (with the unloader's lock file beside it) when the guard
/// goes, however the test ends: a run of the suite leaves nothing in /dev/shm.
#[derive(Debug, PartialEq, Eq)]
pub struct ShmPath(PathBuf);

impl ShmPath {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl std::ops::Deref for ShmPath {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for ShmPath {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for ShmPath {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for ShmPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_file(format!("{}.unloader", self.0.display()));
    }
}

/// A fresh segment path for one test, removed when the guard goes.
pub fn shm_path(name: &str) -> ShmPath {
    let p = PathBuf::from(format!(
        "/dev/shm/vramcap-test-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&p);
    ShmPath(p)
}

/// A segment of its own for one run that names none.
fn own_segment() -> ShmPath {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    shm_path(&format!(
        "run-{}",
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ))
}
