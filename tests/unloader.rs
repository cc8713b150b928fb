//! The priority unloader against the fake driver with one small device shared by several processes
//! (`FAKECUDA_SHARED`): workers started with vramcap-run (name, priority, protection, hook), the
//! `vramcap unloader` daemon, and requesters whose allocation finds the device full.

mod common;
use common::card::{Card, Proc};
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// One shared device of 1 GiB; every context costs 16 MiB; the library logs at info.
fn small_card(name: &str) -> Card {
    Card::new(name, "1G", "16M").with("VRAMCAP_LOG", "info")
}

impl Card {
    /// Starts `vramcap unloader FLAGS` and waits until it watches.
    fn unloader(&self, flags: &[&str]) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vramcap"));
        cmd.arg("unloader").args(["--poll", "10ms"]).args(flags);
        self.vars(&mut cmd);
        let mut p = Proc::spawn(cmd);
        p.wait_for("watching", Duration::from_secs(10))
            .expect("the unloader starts");
        p
    }

    /// A requester of `priority` whose one allocation of `mib` may wait `wait` for the unloader.
    fn request(
        &self,
        name: &str,
        priority: &str,
        wait: &str,
        mib: &str,
        extra: &[(&str, &str)],
    ) -> Proc {
        self.start(
            &["--name", name, "--priority", priority, "--wait", wait],
            &["want", mib],
            extra,
        )
    }
}

fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port().to_string()
}

fn unloaded_at(p: &mut Proc, timeout: Duration) -> Option<f64> {
    let line = p.wait_for("UNLOADED", timeout)?;
    line.split("at_ms=").nth(1)?.trim().parse().ok()
}

fn position(log: &str, text: &str) -> Option<usize> {
    log.find(text)
}

#[test]
fn lower_priorities_unload_first_and_the_waiting_requester_succeeds() {
    let card = small_card("order");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/memory/unload");
    let mut image = card.worker(
        "image",
        &["--priority", "10", "--protect", "--unload-signal", "USR1"],
        200,
        &[],
    );
    let mut chat = card.worker(
        "chat",
        &["--priority", "1", "--unload-url", &url],
        300,
        &[("WORKER_PORT", &port)],
    );
    let mut video = card.signalled("video", "2", 300);
    let mut unloader = card.unloader(&["--hook-timeout", "5s"]);
    // 848 MiB held; the requester's context leaves 160 MiB: 500 MiB needs both chat and video.
    let mut burst = card.request("burst", "5", "10s", "500", &[]);
    let r = burst.value("want_r", Duration::from_secs(20));
    let status = unloader.child.try_wait();
    assert_eq!(
        r,
        0,
        "{}\n{}\n{status:?}",
        burst.drain(Duration::ZERO),
        unloader.drain(Duration::from_millis(3000))
    );
    let waited = burst.value("want_ms", Duration::from_secs(1));
    let chat_at = unloaded_at(&mut chat, Duration::from_secs(2)).expect("chat unloaded");
    let video_at = unloaded_at(&mut video, Duration::from_secs(2)).expect("video unloaded");
    assert!(
        chat_at <= video_at,
        "chat ({chat_at}) before video ({video_at})"
    );
    assert!(
        unloaded_at(&mut image, Duration::from_millis(300)).is_none(),
        "the protected worker is never asked"
    );
    let log = unloader.drain(Duration::from_millis(200));
    let asked_chat = position(&log, "asking chat").expect(&log);
    let asked_video = position(&log, "asking video").expect(&log);
    assert!(asked_chat < asked_video, "{log}");
    assert!(!log.contains("asking image"), "{log}");
    assert!(log.contains("answered burst"), "{log}");
    assert!(log.contains("memory freed, retry"), "{log}");
    println!("blocked allocation to success: {waited} ms\n{log}");
    // SIGTERM stops the daemon cleanly.
    // SAFETY: signals our own child.
    unsafe { libc::kill(unloader.child.id() as i32, libc::SIGTERM) };
    let status = unloader.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(unloader
        .wait_for("stopping", Duration::from_secs(2))
        .is_some());
}

#[test]
fn a_request_that_cannot_be_met_fails_fast_and_asks_nobody() {
    let card = small_card("cannot");
    let _image = card.worker("image", &["--priority", "10", "--protect"], 600, &[]);
    let mut chat = card.signalled("chat", "1", 300);
    let mut unloader = card.unloader(&[]);
    let mut big = card.request("big", "5", "20s", "800", &[]);
    assert_eq!(
        big.value("want_r", Duration::from_secs(20)),
        2,
        "CUDA_ERROR_OUT_OF_MEMORY"
    );
    let waited = big.value("want_ms", Duration::from_secs(1));
    assert!(
        waited < 3000,
        "answered at once, not after VRAMCAP_WAIT: {waited} ms"
    );
    assert!(unloaded_at(&mut chat, Duration::from_millis(300)).is_none());
    let log = unloader.drain(Duration::from_millis(200));
    assert!(log.contains("only 300.00 MiB of the missing"), "{log}");
    assert!(log.contains("cannot free enough"), "{log}");
    // A requester of the lowest priority cannot make anyone unload either.
    let mut low = card.request("low", "0", "20s", "200", &[]);
    assert_eq!(low.value("want_r", Duration::from_secs(20)), 2);
    assert!(unloaded_at(&mut chat, Duration::from_millis(300)).is_none());
}

#[test]
fn a_refusal_by_the_own_cap_asks_the_unloader_for_nothing_on_every_path() {
    let card = small_card("own-cap");
    let mut chat = card.signalled("chat", "1", 300);
    let mut unloader = card.unloader(&[]);
    for path in ["alloc", "async", "create"] {
        // 400 MiB would fit on the card, not under this requester's own 200 MiB cap.
        let mut p = card.start(
            &[
                "--name",
                path,
                "--priority",
                "5",
                "--wait",
                "10s",
                "--limit",
                "200MiB",
            ],
            &["want", "400", path],
            &[],
        );
        assert_eq!(
            p.value("want_r", Duration::from_secs(20)),
            2,
            "{path}: CUDA_ERROR_OUT_OF_MEMORY"
        );
        let waited = p.value("want_ms", Duration::from_secs(1));
        let log = p.drain(Duration::from_millis(100));
        assert!(
            waited < 3000,
            "{path}: refused at once, not after VRAMCAP_WAIT: {waited} ms"
        );
        assert!(!log.contains("asked the unloader"), "{path}: {log}");
        assert!(log.contains("refused "), "{path}: {log}");
    }
    assert!(unloaded_at(&mut chat, Duration::from_millis(300)).is_none());
    let log = unloader.drain(Duration::from_millis(200));
    assert!(!log.contains("request"), "{log}");
}

#[test]
fn a_hanging_hook_times_out_and_the_next_worker_is_asked() {
    let card = small_card("hang");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/memory/unload");
    let _image = card.worker("image", &["--priority", "10", "--protect"], 200, &[]);
    let _chat = card.worker(
        "chat",
        &["--priority", "1", "--unload-url", &url],
        300,
        &[("WORKER_PORT", &port), ("WORKER_HANG", "1")],
    );
    let mut video = card.signalled("video", "2", 300);
    let mut unloader = card.unloader(&["--hook-timeout", "1s"]);
    let mut burst = card.request("burst", "5", "15s", "400", &[]);
    assert_eq!(
        burst.value("want_r", Duration::from_secs(20)),
        0,
        "{}",
        burst.drain(Duration::ZERO)
    );
    let waited = burst.value("want_ms", Duration::from_secs(1));
    assert!(
        waited >= 1000,
        "the hanging hook was waited for, boundedly: {waited} ms"
    );
    assert!(unloaded_at(&mut video, Duration::from_secs(2)).is_some());
    let log = unloader.drain(Duration::from_millis(200));
    assert!(log.contains("no answer within 1s"), "{log}");
    assert!(
        position(&log, "asking chat") < position(&log, "asking video"),
        "{log}"
    );
}

#[test]
fn a_forged_slot_is_ignored() {
    use vramcap_core::shm::{Identity, Segment, VramcapDevice, VRAMCAP_UNLOAD_SIGNAL};
    let card = small_card("forged");
    let _image = card.worker("image", &["--priority", "10", "--protect"], 800, &[]);
    // A process that USR1 would kill, claimed in a slot with the wrong start time.
    let mut bystander = Command::new("sleep").arg("60").spawn().unwrap();
    let seg = Segment::open_existing_rw(Path::new(&card.shm)).unwrap();
    let uuid = vramcap_core::shm::live_slots(&seg)[0].1.devices[0].uuid;
    let pid = bystander.id();
    let real_start = vramcap_core::shm::segment::start_time_of(pid).unwrap();
    let slot = seg
        .claim(&Identity {
            pid,
            start_time: real_start + 1,
            // SAFETY: getuid has no preconditions.
            uid: unsafe { libc::getuid() },
            priority: 0,
            name: "impostor".into(),
            unload_kind: VRAMCAP_UNLOAD_SIGNAL,
            unload: "USR1".into(),
            ..Identity::default()
        })
        .unwrap();
    seg.write_devices(
        slot,
        &[VramcapDevice {
            uuid,
            charged: 400 * MIB,
            cap: u64::MAX,
            ..VramcapDevice::default()
        }],
    );
    let mut unloader = card.unloader(&[]);
    let mut want = card.request("want", "5", "10s", "300", &[]);
    assert_eq!(want.value("want_r", Duration::from_secs(20)), 2);
    let log = unloader.drain(Duration::from_millis(200));
    // A slot whose PID does not have the start time it records is not even live: nobody is asked.
    assert!(!log.contains("impostor"), "{log}");
    assert!(log.contains("can be freed by asking []"), "{log}");
    stop_unsignalled(&mut bystander, "the forged slot's PID was not signalled");
    seg.release(slot);
}

#[test]
fn operator_commands_reclaim_unload_and_cleanup() {
    let card = small_card("operator");
    let _image = card.worker(
        "image",
        &["--priority", "10", "--protect", "--unload-signal", "USR1"],
        200,
        &[],
    );
    let mut chat = card.signalled("chat", "1", 300);
    let mut video = card.signalled("video", "2", 300);
    // 176 MiB free: 600 MiB needs both, chat first.
    let out = card.vramcap(&["reclaim", "--device", "0", "--bytes", "600MiB", "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (c, v) = (
        text.find("chat").expect(&text),
        text.find("video").expect(&text),
    );
    assert!(c < v && text.contains("would free 600.00 MiB"), "{text}");
    assert!(
        unloaded_at(&mut chat, Duration::from_millis(300)).is_none(),
        "a dry run asks nobody"
    );
    let out = card.vramcap(&["reclaim", "--device", "0", "--bytes", "2GiB", "--dry-run"]);
    assert_eq!(out.status.code(), Some(3), "cannot be met");
    let out = card.vramcap(&["unload", "image"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is protected"));
    let out = card.vramcap(&["unload", "chat", "--hook-timeout", "5s"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("freed 300.00 MiB"));
    assert!(unloaded_at(&mut chat, Duration::from_secs(2)).is_some());
    let out = card.vramcap(&["cleanup", "--hook-timeout", "5s"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(unloaded_at(&mut video, Duration::from_secs(2)).is_some());
}

#[test]
fn vramcap_run_validates_worker_declarations() {
    for (args, says) in [
        (
            vec!["--unload-signal", "USR9"],
            "--unload-signal \"USR9\" is invalid",
        ),
        (
            vec!["--unload-url", "ftp://x"],
            "--unload-url \"ftp://x\" is invalid",
        ),
        (vec!["--wait", "forever"], "--wait \"forever\" is invalid"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_vramcap-run"))
            .args(&args)
            .args(["--", "true"])
            .env("VRAMCAP_LIB", &env().preload)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{args:?}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_vramcap-run"))
        .args(["--unload-signal", "USR1", "--unload-cmd", "x", "--", "true"])
        .env("VRAMCAP_LIB", &env().preload)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "one way to unload");
}

// ---- suspend and resume (the driver's checkpoint API, implemented by the fake over FAKECUDA_SHARED) ----

/// How many TICKs a worker printed, reading its output for `during` first.
fn ticks(p: &mut Proc, during: Duration) -> usize {
    let end = Instant::now() + during;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match p.lines.recv_timeout(left) {
            Ok(line) => p.seen.push(line),
            Err(_) => break,
        }
        if Instant::now() >= end {
            break;
        }
    }
    p.seen.iter().filter(|l| l.starts_with("TICK")).count()
}

fn status_text(card: &Card) -> String {
    String::from_utf8_lossy(&card.vramcap(&["status"]).stdout).into_owned()
}

#[test]
fn an_unhookable_worker_is_suspended_and_resumed_when_the_requester_leaves() {
    let card = small_card("suspend");
    let _image = card.worker("image", &["--priority", "10", "--protect"], 150, &[]);
    let mut chat = card.signalled("chat", "1", 200);
    let mut video = card.worker(
        "video",
        &["--priority", "2", "--on-pressure", "suspend"],
        300,
        &[("WORKER_TICK", "1")],
    );
    // Host memory is what CI has: keep no reserve beyond the bytes moved.
    let mut unloader = card.unloader(&["--hook-timeout", "2s", "--min-host-free", "0"]);
    // 698 MiB held; 700 MiB for burst needs chat's memory and video's.
    let hold = env()
        .dir
        .join(format!("hold-suspend-{}", std::process::id()));
    let _ = std::fs::remove_file(&hold);
    let hold_s = hold.display().to_string();
    let mut burst = card.request("burst", "5", "10s", "700", &[("VRAMCAP_E2E_HOLD", &hold_s)]);
    let r = burst.value("want_r", Duration::from_secs(20));
    assert_eq!(
        r,
        0,
        "{}\n{}",
        burst.drain(Duration::ZERO),
        unloader.drain(Duration::from_millis(500))
    );
    assert!(
        unloaded_at(&mut chat, Duration::from_secs(2)).is_some(),
        "chat (hooked) asked first"
    );
    let log = unloader.drain(Duration::from_millis(200));
    assert!(log.contains("suspended video"), "{log}");
    assert!(
        position(&log, "asking chat") < position(&log, "suspending video"),
        "{log}"
    );
    let status = status_text(&card);
    assert!(
        status.contains("video (pid") && status.contains("is suspended"),
        "{status}"
    );
    // A suspended worker's CUDA calls wait.
    let before = ticks(&mut video, Duration::from_millis(300));
    assert_eq!(
        ticks(&mut video, Duration::from_millis(300)),
        before,
        "no CUDA call gets through"
    );
    // The requester leaves: video fits again and comes back, and runs on.
    std::fs::write(&hold, b"").unwrap();
    burst.child.wait().unwrap();
    assert!(
        unloader
            .wait_for("resumed video", Duration::from_secs(10))
            .is_some(),
        "{}",
        unloader.drain(Duration::ZERO)
    );
    assert!(
        ticks(&mut video, Duration::from_millis(500)) > before,
        "video runs again"
    );
    assert!(!status_text(&card).contains("is suspended"));
    let _ = std::fs::remove_file(&hold);
}

#[test]
fn a_hook_that_frees_nothing_in_time_falls_back_to_suspend() {
    let card = small_card("fallback");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/memory/unload");
    let _image = card.worker("image", &["--priority", "10", "--protect"], 500, &[]);
    let mut chat = card.worker(
        "chat",
        &[
            "--priority",
            "1",
            "--unload-url",
            &url,
            "--on-pressure",
            "suspend",
        ],
        300,
        &[
            ("WORKER_PORT", &port),
            ("WORKER_HANG", "1"),
            ("WORKER_TICK", "1"),
        ],
    );
    let out = card.vramcap(&[
        "reclaim",
        "--device",
        "0",
        "--bytes",
        "400MiB",
        "--hook-timeout",
        "1s",
    ]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{err}{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        position(&err, "the hook failed") < position(&err, "suspended chat"),
        "{err}"
    );
    let out = card.vramcap(&["resume", "chat"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = ticks(&mut chat, Duration::ZERO);
    assert!(
        ticks(&mut chat, Duration::from_millis(400)) > before,
        "chat runs again"
    );
}

#[test]
fn suspension_is_refused_with_a_reason_and_leaves_the_worker_running() {
    use vramcap_core::shm::{Identity, Segment};
    let card = small_card("refuse");
    let _image = card.worker("image", &["--priority", "10", "--protect"], 100, &[]);
    let mut video = card.worker(
        "video",
        &["--priority", "2", "--on-pressure", "suspend"],
        100,
        &[("WORKER_TICK", "1")],
    );
    let refused = |args: &[&str], vars: &[(&str, &str)], says: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vramcap"));
        cmd.args(args);
        card.vars(&mut cmd);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    };
    refused(
        &["suspend", "video", "--min-host-free", "0"],
        &[("FAKECUDA_NO_CHECKPOINT", "1")],
        "does not support checkpointing",
    );
    refused(
        &["suspend", "video", "--min-host-free", "1000TiB"],
        &[],
        "would not fit in host memory",
    );
    refused(
        &["suspend", "video", "--min-host-free", "0"],
        &[("FAKECUDA_CHECKPOINT_FAIL", "1")],
        "unlocked again, running as before",
    );
    refused(&["suspend", "image"], &[], "protected");
    refused(&["resume", "video"], &[], "is not suspended");
    let before = ticks(&mut video, Duration::ZERO);
    assert!(
        ticks(&mut video, Duration::from_millis(400)) > before,
        "video was never held up"
    );
    // A worker in another PID namespace cannot be reached by the checkpoint API from here. (This test
    // process stands in for it: it holds the slot and has the segment open, so it passes the checks of
    // the lock and of /proc, and its slot records a host PID of its own.)
    let seg = Segment::open_existing_rw(Path::new(&card.shm)).unwrap();
    let me = Identity::of_this_process(Some("elsewhere"), 0);
    let slot = seg
        .claim(&Identity {
            host_pid: me.pid + 100_000,
            ..me
        })
        .unwrap();
    refused(
        &["suspend", "elsewhere", "--min-host-free", "0"],
        &[],
        "another PID namespace",
    );
    seg.release(slot);
}

/// Asserts that `p` still runs (nothing signalled it), then stops it.
fn stop_unsignalled(p: &mut Child, why: &str) {
    assert!(p.try_wait().unwrap().is_none(), "{why}");
    p.kill().unwrap();
    p.wait().unwrap();
}

/// Checks that `status --json` does not list `pid`.
fn assert_not_listed(card: &Card, pid: u32) {
    let out = card.vramcap(&["status", "--json", "--no-nvml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pids: Vec<u64> = json["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_u64().unwrap())
        .collect();
    assert!(!pids.is_empty(), "the real workers are listed: {json}");
    assert!(!pids.contains(&u64::from(pid)), "{json}");
}

/// Plants a slot for `pid` with its real start time, our uid and a TERM hook, holding 400 MiB on the
/// card's device: a claim the unloader must check in /proc before it acts.
fn plant(card: &Card, pid: u32, name: &str) -> (vramcap_core::shm::Segment, usize) {
    use vramcap_core::shm::{Identity, Segment, VramcapDevice, VRAMCAP_UNLOAD_SIGNAL};
    let seg = Segment::open_existing_rw(Path::new(&card.shm)).unwrap();
    let uuid = vramcap_core::shm::live_slots(&seg)[0].1.devices[0].uuid;
    let slot = seg
        .claim(&Identity {
            pid,
            start_time: vramcap_core::shm::segment::start_time_of(pid).unwrap(),
            // The slot says root (or whoever we are): only /proc can say who the process belongs to.
            // SAFETY: getuid has no preconditions.
            uid: unsafe { libc::getuid() },
            priority: 0,
            name: name.into(),
            unload_kind: VRAMCAP_UNLOAD_SIGNAL,
            unload: "TERM".into(),
            ..Identity::default()
        })
        .unwrap();
    seg.write_devices(
        slot,
        &[VramcapDevice {
            uuid,
            charged: 400 * MIB,
            cap: u64::MAX,
            ..VramcapDevice::default()
        }],
    );
    (seg, slot)
}

#[test]
fn a_slot_with_a_bystanders_real_start_time_makes_no_one_act_on_it() {
    let card = small_card("bystander");
    let _image = card.worker("image", &["--priority", "10", "--protect"], 800, &[]);
    // A process that TERM would kill and that is no worker: no libvramcap.so, no segment.
    let mut bystander = Command::new("sleep").arg("60").spawn().unwrap();
    let (seg, slot) = plant(&card, bystander.id(), "planted");
    // The slot names the bystander, but the kernel says the test holds it: it is no one's.
    assert_not_listed(&card, bystander.id());
    let out = card.vramcap(&["cleanup", "--hook-timeout", "2s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("planted"), "{err}");
    let mut unloader = card.unloader(&[]);
    let mut want = card.request("want", "5", "10s", "300", &[]);
    assert_eq!(want.value("want_r", Duration::from_secs(20)), 2);
    let log = unloader.drain(Duration::from_millis(200));
    assert!(!log.contains("planted"), "{log}");
    assert!(log.contains("can be freed by asking []"), "{log}");
    stop_unsignalled(&mut bystander, "the bystander was not signalled");
    seg.release(slot);
}

#[test]
fn as_root_a_slot_for_another_users_process_is_refused() {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "CI runs the tests as root");
    let card = small_card("other-user");
    let _image = card.worker("image", &["--priority", "10", "--protect"], 800, &[]);
    // Another user's process that maps libvramcap.so, as a worker of theirs would.
    let mut victim = Command::new("sleep")
        .arg("60")
        .env("LD_PRELOAD", &env().preload)
        .uid(65534)
        .gid(65534)
        .spawn()
        .unwrap();
    let pid = victim.id();
    for _ in 0..100 {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        if maps.contains("libvramcap") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        vramcap_core::process::maps_vramcap(pid, Path::new(&card.shm)),
        "the victim maps libvramcap.so: only its owner can make it no worker of ours"
    );
    let (seg, slot) = plant(&card, pid, "victim");
    assert_not_listed(&card, pid);
    let out = card.vramcap(&["cleanup", "--hook-timeout", "2s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("victim"), "{err}");
    stop_unsignalled(
        &mut victim,
        "root's cleanup did not signal another user's process",
    );
    seg.release(slot);
}

#[test]
fn a_request_from_a_forged_slot_is_not_served() {
    let card = small_card("forged-request");
    let mut chat = card.signalled("chat", "1", 400);
    let mut bystander = Command::new("sleep").arg("60").spawn().unwrap();
    let (seg, slot) = plant(&card, bystander.id(), "requester");
    let uuid = vramcap_core::shm::live_slots(&seg)[0].1.devices[0].uuid;
    let seq = seg.post_request(slot, uuid, 600 * MIB);
    assert_ne!(seq, 0, "posted");
    let mut unloader = card.unloader(&[]);
    std::thread::sleep(Duration::from_millis(1000));
    let log = unloader.drain(Duration::from_millis(200));
    // A request in a slot that is no one's is never looked at: no answer, nobody asked.
    assert_eq!(seg.answer_to(slot, seq), None, "{log}");
    assert!(!log.contains("requester"), "{log}");
    assert!(
        !log.contains("asking chat"),
        "no real worker was asked: {log}"
    );
    assert!(unloaded_at(&mut chat, Duration::from_millis(300)).is_none());
    bystander.kill().unwrap();
    bystander.wait().unwrap();
    seg.release(slot);
}

#[test]
fn a_killed_unreaped_worker_is_no_longer_listed() {
    let card = small_card("zombie");
    let mut chat = card.signalled("chat", "1", 400);
    let pid = chat.child.id();
    // SAFETY: signals our own child, which stays unreaped (a zombie) until we wait for it.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    for _ in 0..200 {
        if vramcap_core::process::facts(pid).is_some_and(|f| f.zombie) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = card.vramcap(&["status", "--json", "--no-nvml"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        json["processes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["pid"] != pid),
        "{json}"
    );
    let start = std::time::Instant::now();
    let out = card.vramcap(&["unload", "chat", "--hook-timeout", "10s"]);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "no wait for a zombie: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    chat.child.wait().unwrap();
}

#[test]
fn as_root_a_command_hook_runs_as_the_workers_user() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "CI runs the tests as root");
    let card = small_card("hook-user");
    let out_dir = env().dir.join(format!("hook-user-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).unwrap();
    for dir in [&out_dir, &card.shared] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let who = out_dir.join("who");
    let hook = format!("id -u > {}", who.display());
    // A worker of user 65534, in that user's own segment.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vramcap-run"));
    cmd.args(["--name", "theirs", "--unload-cmd", &hook, "--"])
        .arg(&env().client)
        .args(["dlsym", "worker", "100"]);
    card.vars(&mut cmd);
    cmd.uid(65534).gid(65534);
    let mut worker = Proc::spawn(cmd);
    worker
        .wait_for("READY", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the worker never got ready:\n{}", worker.seen.join("\n")));
    std::thread::sleep(Duration::from_millis(300));
    // Root's cleanup serves that user's segment, and runs the hook as that user.
    let out = card.vramcap(&["cleanup", "--hook-timeout", "5s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    let ran_as = std::fs::read_to_string(&who).unwrap_or_default();
    assert_eq!(
        ran_as.trim(),
        "65534",
        "the hook ran as the worker's user: {err}"
    );
    let _ = worker.child.kill();
    let _ = worker.child.wait();
    let _ = std::fs::remove_dir_all(&out_dir);
}

#[test]
fn a_second_unloader_says_who_serves_the_segment_and_exits() {
    let card = small_card("second");
    let _image = card.worker("image", &["--priority", "10", "--protect"], 200, &[]);
    let first = card.unloader(&[]);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vramcap"));
    cmd.arg("unloader");
    card.vars(&mut cmd);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "another unloader (pid {}) already serves",
            first.child.id()
        )),
        "{err}"
    );
    drop(first);
}

#[test]
fn every_thread_that_meets_a_full_device_is_answered() {
    let card = small_card("threads");
    // 1 GiB device: chat holds 800 MiB, so eight threads of 40 MiB meet a full device together.
    let mut chat = card.signalled("chat", "1", 800);
    let _unloader = card.unloader(&[]);
    let mut want = card.start(
        &["--name", "want", "--priority", "5", "--wait", "10s"],
        &["want_threads", "8", "40"],
        &[],
    );
    let ok = want.value("want_ok", Duration::from_secs(30));
    let took = want.value("want_ms", Duration::from_secs(1));
    assert_eq!(ok, 8, "every thread got its memory");
    assert!(took < 5_000, "answered, not timed out: {took} ms");
    assert!(unloaded_at(&mut chat, Duration::from_secs(2)).is_some());
}

#[test]
fn an_unloader_lock_file_of_another_user_is_refused() {
    let card = small_card("lock-theirs");
    let _image = card.worker("image", &["--priority", "10", "--protect"], 200, &[]);
    let lock = PathBuf::from(format!("{}.unloader", card.shm.display()));
    std::fs::File::create(&lock).unwrap();
    std::os::unix::fs::chown(&lock, Some(65534), Some(65534)).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vramcap"));
    cmd.arg("unloader");
    card.vars(&mut cmd);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("belongs to uid 65534"), "{err}");
}

#[test]
fn an_unloader_started_before_any_worker_waits_for_the_segment_and_follows_it() {
    let card = small_card("first");
    assert!(!card.shm.exists());
    let mut unloader = card.unloader(&[]);
    assert!(
        unloader
            .wait_for("waiting for the first worker", Duration::from_secs(5))
            .is_some(),
        "it waits rather than exits"
    );
    assert!(unloader.child.try_wait().unwrap().is_none());
    let mut chat = card.signalled("chat", "1", 800);
    let mut want = card.request("want", "5", "10s", "300", &[]);
    assert_eq!(want.value("want_r", Duration::from_secs(20)), 0);
    assert!(unloaded_at(&mut chat, Duration::from_secs(2)).is_some());
    // The segment goes; the workers make a new one, and the unloader serves that.
    std::fs::remove_file(&card.shm).unwrap();
    assert!(unloader
        .wait_for("gone or was replaced", Duration::from_secs(5))
        .is_some());
    assert!(unloader
        .wait_for("serving", Duration::from_secs(5))
        .is_some());
    let _video = card.signalled("video", "2", 500);
    let mut again = card.request("again", "5", "10s", "400", &[]);
    again.value("want_r", Duration::from_secs(20));
    let log = unloader.drain(Duration::from_millis(300));
    assert!(log.contains("request from again"), "{log}");
    assert!(log.contains("answered again"), "{log}");
}

#[test]
fn as_root_one_unloader_serves_every_users_segment() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "CI runs the tests as root");
    let card = small_card("all-users");
    std::fs::set_permissions(&card.shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let theirs = PathBuf::from("/dev/shm/vramcap-65534");
    let ours = PathBuf::from("/dev/shm/vramcap-0");
    for p in [&theirs, &ours] {
        let _ = std::fs::remove_file(p);
    }
    // Each worker in its user's default segment (no VRAMCAP_SHM).
    let default_segment = |cmd: &mut Command| {
        cmd.env_remove("VRAMCAP_SHM");
    };
    let mut chat = {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vramcap-run"));
        cmd.args([
            "--name",
            "chat",
            "--priority",
            "1",
            "--unload-signal",
            "USR1",
            "--",
        ])
        .arg(&env().client)
        .args(["dlsym", "worker", "800"]);
        card.vars(&mut cmd);
        default_segment(&mut cmd);
        cmd.uid(65534).gid(65534);
        Proc::spawn(cmd)
    };
    chat.wait_for("READY", Duration::from_secs(20))
        .expect("chat of user 65534 holds its memory");
    std::thread::sleep(Duration::from_millis(300));
    assert!(theirs.exists(), "user 65534's default segment");
    // A user's own unloader cannot serve everyone.
    let out = {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vramcap"));
        cmd.args(["unloader", "--all-users"]);
        card.vars(&mut cmd);
        cmd.uid(65534).gid(65534);
        cmd.output().unwrap()
    };
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs root"));
    let mut unloader = {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vramcap"));
        cmd.args(["unloader", "--all-users", "--poll", "10ms"]);
        card.vars(&mut cmd);
        Proc::spawn(cmd)
    };
    assert!(unloader
        .wait_for(
            "serving /dev/shm/vramcap-65534 (uid 65534)",
            Duration::from_secs(5)
        )
        .is_some());
    // Root's worker, in root's default segment, needs room that only user 65534's chat can give.
    let mut want = {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vramcap-run"));
        cmd.args(["--name", "want", "--priority", "5", "--wait", "10s", "--"])
            .arg(&env().client)
            .args(["dlsym", "want", "300"]);
        card.vars(&mut cmd);
        default_segment(&mut cmd);
        Proc::spawn(cmd)
    };
    let r = want.value("want_r", Duration::from_secs(20));
    let log = unloader.drain(Duration::from_millis(300));
    assert_eq!(r, 0, "{log}");
    assert!(log.contains("serving /dev/shm/vramcap-0 (uid 0)"), "{log}");
    assert!(log.contains("asking chat"), "{log}");
    assert!(
        unloaded_at(&mut chat, Duration::from_secs(2)).is_some(),
        "{log}"
    );
    drop(want);
    drop(chat);
    for p in [&theirs, &ours] {
        let _ = std::fs::remove_file(p);
        let _ = std::fs::remove_file(format!("{}.unloader", p.display()));
    }
}

#[test]
fn a_command_hook_in_a_segment_the_group_may_write_is_not_run() {
    let card = small_card("group-cmd");
    let marker = card.shared.join("ran");
    let cmd_hook = format!("touch {}", marker.display());
    let group = [("VRAMCAP_SHM_MODE", "0660")];
    let _chat = card.worker("chat", &["--unload-cmd", &cmd_hook], 200, &group);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vramcap"));
    cmd.args(["unload", "chat", "--hook-timeout", "1s", "--no-nvml"]);
    card.vars(&mut cmd);
    cmd.env("VRAMCAP_SHM_MODE", "0660");
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("the group may write"), "{err}");
    assert!(!marker.exists(), "the command did not run");
    // The same worker in a private segment: its command runs.
    let private = small_card("private-cmd");
    let _chat = private.worker("chat", &["--unload-cmd", &cmd_hook], 200, &[]);
    let out = private.vramcap(&["unload", "chat", "--hook-timeout", "1s", "--no-nvml"]);
    assert!(marker.exists(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn as_root_another_users_worker_in_a_segment_the_group_may_write_is_not_asked() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "CI runs the tests as root");
    // Root's segment, which its group (nogroup) may write: a worker of user 65534 joins it and holds a
    // slot of its own (its lock, its PID), so only the uid check keeps root from acting on that user's
    // process, whose hook any member of the group could have rewritten.
    let card = small_card("group-other-user");
    std::fs::set_permissions(&card.shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let group = [("VRAMCAP_SHM_MODE", "0660")];
    let _image = card.worker("image", &["--protect"], 100, &group);
    std::os::unix::fs::chown(&*card.shm, Some(0), Some(65534)).unwrap();
    let mut theirs = {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vramcap-run"));
        cmd.args(["--name", "theirs", "--unload-signal", "USR1", "--"])
            .arg(&env().client)
            .args(["dlsym", "worker", "100"]);
        card.vars(&mut cmd);
        cmd.env("VRAMCAP_SHM_MODE", "0660");
        cmd.uid(65534).gid(65534);
        Proc::spawn(cmd)
    };
    theirs
        .wait_for("READY", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("theirs never got ready:\n{}", theirs.seen.join("\n")));
    std::thread::sleep(Duration::from_millis(300));
    let status = {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vramcap"));
        cmd.args(["status", "--json", "--no-nvml"]);
        card.vars(&mut cmd);
        cmd.env("VRAMCAP_SHM_MODE", "0660");
        cmd.output().unwrap()
    };
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("\"theirs\""),
        "user 65534's worker holds a live slot in root's segment: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vramcap"));
    cmd.args(["unload", "theirs", "--hook-timeout", "1s", "--no-nvml"]);
    card.vars(&mut cmd);
    cmd.env("VRAMCAP_SHM_MODE", "0660");
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("belongs to uid 65534, not to uid 0"),
        "root served its own segment as its owner, uid 0: {err}"
    );
    assert!(
        unloaded_at(&mut theirs, Duration::from_millis(300)).is_none(),
        "user 65534's worker was not signalled: {err}"
    );
    let _ = theirs.child.kill();
    let _ = theirs.child.wait();
}

#[test]
fn an_unloaded_worker_reloads_once_its_memory_fits_again_and_not_before() {
    let card = small_card("reload");
    // The unloader first, as systemd would start it.
    let mut unloader = card.unloader(&[]);
    let _image = card.worker("image", &["--priority", "10", "--protect"], 100, &[]);
    let mut chat = card.worker(
        "chat",
        &[
            "--priority",
            "1",
            "--unload-signal",
            "USR1",
            "--reload-signal",
            "USR2",
        ],
        600,
        &[],
    );
    let hold = card.shared.join("video-done");
    let mut video = card.request(
        "video",
        "5",
        "10s",
        "600",
        &[("VRAMCAP_E2E_HOLD", hold.to_str().unwrap())],
    );
    assert_eq!(
        video.value("want_r", Duration::from_secs(20)),
        0,
        "video has its memory"
    );
    assert!(unloaded_at(&mut chat, Duration::from_secs(2)).is_some());
    // While video holds its memory, chat's 600 MiB do not fit: no reload pushes video out.
    assert!(
        chat.wait_for("RELOADED", Duration::from_millis(1500))
            .is_none(),
        "chat waits while video runs"
    );
    let chat_row = |card: &Card| {
        let status = card.vramcap(&["status", "--json", "--no-nvml"]);
        let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        json["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "chat")
            .cloned()
            .unwrap()
    };
    let unloaded = chat_row(&card);
    assert!(
        unloaded["unloaded_bytes"].as_u64().unwrap() >= 600 * MIB,
        "{unloaded}"
    );
    assert_eq!(unloaded["unloads_asked"], 1, "{unloaded}");
    let table =
        String::from_utf8_lossy(&card.vramcap(&["status", "--no-nvml"]).stdout).into_owned();
    assert!(
        table
            .lines()
            .any(|l| l.contains("chat") && l.contains("unloaded")),
        "{table}"
    );
    std::fs::write(&hold, b"").unwrap();
    // Reaped, as a real device frees an exited process's memory (the fake counts a zombie's).
    video.child.wait().unwrap();
    assert!(
        chat.wait_for("RELOADED", Duration::from_secs(5)).is_some(),
        "chat comes back by itself once video is done: {}",
        unloader.drain(Duration::from_millis(200))
    );
    let log = unloader.drain(Duration::from_millis(200));
    assert!(log.contains("to reload by signal USR2"), "{log}");
    std::thread::sleep(Duration::from_millis(100));
    let back = chat_row(&card);
    assert!(
        back["devices"][0]["charged_bytes"].as_u64().unwrap() >= 600 * MIB,
        "chat holds its memory again: {back}"
    );
    assert!(back["unloaded_bytes"].is_null(), "{back}");
    assert_eq!(back["unloads_asked"], 1, "{back}");
    assert_eq!(back["reloads_asked"], 1, "{back}");
}
