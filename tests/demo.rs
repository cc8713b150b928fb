//! `vramcap demo`: on the simulated device (asked for, or because the driver sees no device), on a
//! "GPU" (the fake driver standing in for the machine's, on LD_LIBRARY_PATH), refused for want of free
//! memory, and stopped by Ctrl-C. Each time: what it prints, its exit code, and that nothing it made is
//! left: no /dev/shm entry of its segment, nothing in its temporary directory, no process of its alive.

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LABEL: &str = "(simulated device)";

/// A temporary directory of one test's own (the demo's TMPDIR), removed when it goes.
struct Tmp(PathBuf);

impl Tmp {
    fn new(name: &str) -> Tmp {
        let dir = env()
            .dir
            .join(format!("demo-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Tmp(dir)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `vramcap demo ARGS` with TMPDIR `tmp`, libvramcap.so named, and `vars`.
fn demo(tmp: &Tmp, args: &[&str], vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vramcap"));
    cmd.arg("demo")
        .args(args)
        .env("TMPDIR", &tmp.0)
        .env("VRAMCAP_LIB", &env().preload)
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("LD_PRELOAD")
        .env_remove("CUDA_VISIBLE_DEVICES")
        .stdin(Stdio::null());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd
}

struct Shown {
    pid: u32,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

fn run(tmp: &Tmp, args: &[&str], vars: &[(&str, &str)]) -> Shown {
    let start = Instant::now();
    let child = demo(tmp, args, vars)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run vramcap demo");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    Shown {
        pid,
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: start.elapsed(),
    }
}

/// What the demo of `pid` left: /dev/shm entries of its segment, anything in `tmp`, and live processes
/// whose environment names its segment or its temporary folder.
fn leftovers(pid: u32, tmp: &Tmp) -> Vec<String> {
    let segment = format!("vramcap-demo-{pid}");
    let mut left = Vec::new();
    for e in std::fs::read_dir("/dev/shm").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name
            .strip_prefix(&segment)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        {
            left.push(format!("/dev/shm/{name}"));
        }
    }
    for e in std::fs::read_dir(&tmp.0).unwrap().flatten() {
        left.push(e.path().display().to_string());
    }
    let marks = [
        format!("VRAMCAP_SHM={segment}\0"),
        format!("{}/vramcap-demo-{pid}-", tmp.0.display()),
    ];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(other) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        let environ = String::from_utf8_lossy(&environ);
        if marks.iter().any(|m| environ.contains(m.as_str())) {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            left.push(format!(
                "process {other}: {}",
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    left
}

fn assert_clean(pid: u32, tmp: &Tmp, shown: &str) {
    let left = leftovers(pid, tmp);
    assert!(left.is_empty(), "left behind: {left:?}\n{shown}");
}

/// The checks of a whole demo's output, on either device.
fn assert_shows_the_cap_and_the_unloader(s: &Shown) {
    let all = format!("{}\n{}", s.stdout, s.stderr);
    assert_eq!(s.code, Some(0), "{all}");
    // The cap: the library's refusal and the worker's, with the driver's out-of-memory code.
    assert!(all.contains("capped | vramcap: device 0"), "{all}");
    assert!(all.contains(": refused 64.00 MiB with "), "{all}");
    assert!(
        all.contains("was refused: CUDA_ERROR_OUT_OF_MEMORY (2)"),
        "{all}"
    );
    // Status before and after, as tables.
    let before = all.find("vramcap status, before video asks:").expect(&all);
    let video = all.find("$ vramcap-run --name video").expect(&all);
    let after = all.find("vramcap status, after:").expect(&all);
    let done = all.find("So: the cap refused").expect(&all);
    assert!(before < video && video < after && after < done, "{all}");
    let (before, after) = (&all[before..video], &all[after..done]);
    let row = |table: &str, name: &str| {
        table.lines().any(|l| {
            l.split_whitespace()
                .nth(usize::from(l.starts_with(LABEL)) * 2)
                == Some(name)
        })
    };
    assert!(before.contains("NAME") && after.contains("NAME"), "{all}");
    assert!(row(before, "chat") && !row(before, "video"), "{before}");
    assert!(row(after, "chat") && row(after, "video"), "{after}");
    // The unloader asked chat, chat unloaded, video got its memory.
    assert!(all.contains("unloader | vramcap unloader ["), "{all}");
    assert!(all.contains("request from video"), "{all}");
    assert!(all.contains("asking chat"), "{all}");
    assert!(all.contains("chat | SIGUSR1: unloaded, freed "), "{all}");
    assert!(all.contains("answered video"), "{all}");
    assert!(all.contains("video | got "), "{all}");
    // Everything it started, stopped and reaped.
    assert!(all.contains("Cleaned up: stopped video (pid "), "{all}");
    assert!(!all.contains("killed)"), "nothing needed killing: {all}");
    assert!(
        s.took < Duration::from_secs(30),
        "well under a minute: {:?}\n{all}",
        s.took
    );
    println!("vramcap demo took {:?}", s.took);
}

fn assert_every_line_labelled(s: &Shown) {
    for line in s.stdout.lines().chain(s.stderr.lines()) {
        assert!(
            line.starts_with(LABEL),
            "unlabelled line {line:?}:\n{}{}",
            s.stdout,
            s.stderr
        );
    }
}

#[test]
fn on_the_simulated_device_it_shows_the_cap_and_the_unloader_and_leaves_nothing() {
    let tmp = Tmp::new("sim");
    let s = run(&tmp, &["--simulated"], &[]);
    assert_shows_the_cap_and_the_unloader(&s);
    assert_every_line_labelled(&s);
    assert!(
        s.stdout.contains("--simulated asked for it"),
        "{}",
        s.stdout
    );
    assert!(
        s.stdout.contains("libvramcap_sim.so"),
        "the bundled device is named: {}",
        s.stdout
    );
    assert_clean(s.pid, &tmp, &s.stdout);
}

#[test]
fn where_the_driver_sees_no_device_it_runs_on_the_simulated_one() {
    // The fake stands in for the machine's driver, and CUDA_VISIBLE_DEVICES="" hides its device.
    let tmp = Tmp::new("nodev");
    let dir = env().dir.display().to_string();
    let s = run(
        &tmp,
        &[],
        &[("LD_LIBRARY_PATH", &dir), ("CUDA_VISIBLE_DEVICES", "")],
    );
    assert_shows_the_cap_and_the_unloader(&s);
    assert_every_line_labelled(&s);
    assert!(
        s.stdout
            .replace(&format!("\n{LABEL} "), " ")
            .contains("there is no GPU here (the driver sees no device (cuDeviceGetCount: 0))"),
        "{}",
        s.stdout
    );
    assert_clean(s.pid, &tmp, &s.stdout);
}

#[test]
fn on_a_gpu_it_uses_the_driver_says_it_fills_the_free_memory_and_labels_nothing() {
    // The fake as the machine's driver (first on LD_LIBRARY_PATH), with an 8 GiB device that the
    // demo's processes share.
    let tmp = Tmp::new("gpu");
    let shared = Tmp::new("gpu-device");
    let dir = env().dir.display().to_string();
    let s = run(
        &tmp,
        &[],
        &[
            ("LD_LIBRARY_PATH", &dir),
            ("FAKECUDA_SHARED", &shared.0.display().to_string()),
            ("FAKECUDA_MEM", "8G"),
            ("FAKECUDA_CONTEXT_BYTES", "300M"),
        ],
    );
    assert_shows_the_cap_and_the_unloader(&s);
    assert!(!s.stdout.contains("simulated"), "{}", s.stdout);
    let joined = s.stdout.replace('\n', " ");
    assert!(
        joined.contains("vramcap demo on GPU 0, 7.71 GiB free of 8.00 GiB. It briefly fills most of the GPU's free memory (about 5.75 GiB), and gives it all back at the end."),
        "{}",
        s.stdout
    );
    assert_clean(s.pid, &tmp, &s.stdout);
}

#[test]
fn a_gpu_with_too_little_free_memory_is_refused_in_one_line() {
    let tmp = Tmp::new("small");
    let dir = env().dir.display().to_string();
    let s = run(
        &tmp,
        &[],
        &[("LD_LIBRARY_PATH", &dir), ("FAKECUDA_MEM", "3G")],
    );
    assert_eq!(s.code, Some(1), "{}{}", s.stdout, s.stderr);
    assert_eq!(s.stdout, "", "nothing is shown");
    assert_eq!(
        s.stderr.trim(),
        "vramcap demo: GPU 0 has 2.71 GiB free of 3.00 GiB; the demo needs 4.00 GiB free, since it \
         fills most of it for a moment. Free some, or see it on the simulated device: vramcap demo \
         --simulated"
    );
    assert_clean(s.pid, &tmp, &s.stderr);
}

#[test]
fn ctrl_c_stops_every_child_and_removes_everything() {
    let tmp = Tmp::new("int");
    let mut child = demo(&tmp, &["--simulated"], &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut seen = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Interrupted while chat holds its memory and the unloader runs.
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.contains("chat | holding ") {
            break;
        }
    }
    assert!(
        seen.last().is_some_and(|l| l.contains("chat | holding ")),
        "{}",
        seen.join("\n")
    );
    // SAFETY: signals our own child, not yet reaped.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    seen.extend(lines.map_while(Result::ok));
    let status = child.wait().unwrap();
    let all = seen.join("\n");
    assert_eq!(status.code(), Some(130), "{all}");
    assert!(all.contains("Interrupted: stopping everything"), "{all}");
    assert!(all.contains("Cleaned up: stopped chat (pid "), "{all}");
    assert!(all.contains("unloader (pid "), "{all}");
    assert!(!all.contains("killed)"), "{all}");
    assert!(!all.contains("Done in"), "{all}");
    assert_clean(pid, &tmp, &all);
}

#[test]
fn without_the_simulated_device_it_says_where_it_looked() {
    let tmp = Tmp::new("nosim");
    let bin = tmp.0.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for exe in [
        env!("CARGO_BIN_EXE_vramcap"),
        env!("CARGO_BIN_EXE_vramcap-run"),
    ] {
        let to = bin.join(Path::new(exe).file_name().unwrap());
        std::fs::copy(exe, to).unwrap();
    }
    let child = Command::new(bin.join("vramcap"))
        .args(["demo", "--simulated"])
        .env("VRAMCAP_LIB", &env().preload)
        .env("TMPDIR", &tmp.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "the simulated device, libvramcap_sim.so, is neither beside {} nor in {}",
            bin.join("vramcap").display(),
            tmp.0.join("lib/vramcap").display()
        )),
        "{err}"
    );
    std::fs::remove_dir_all(&bin).unwrap();
    assert_clean(pid, &tmp, &err);
}
