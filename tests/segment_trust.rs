//! The segment is anyone's input (issue 13, first findings): what a stranger can put at the segment's
//! path or in a slot must never hang a reader, write a request for it, or reach a terminal raw.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_fifo_at_the_segment_path_hangs_no_reader() {
    let shm = shm_path("fifo");
    let c = std::ffi::CString::new(shm.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for args in [&["status"][..], &["status", "--json"], &["unload", "chat"]] {
        let (code, _, err, took) = vramcap_within(&shm, args, &[], Duration::from_secs(5));
        assert!(took < Duration::from_secs(5), "{args:?} hung on a FIFO");
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    let _ = std::fs::remove_file(&shm);
}

#[test]
fn a_group_members_reader_trusts_another_owners_segment_only_where_the_mode_says_so() {
    use std::os::unix::process::CommandExt;
    // Made by root's worker under VRAMCAP_SHM_MODE=0660, in group nogroup: a reader of that group (uid
    // 65534) must not trust it unless it asks for the group mode itself.
    let shm = shm_path("foreign");
    let holder = hold(
        "dlsym",
        &[
            ("VRAMCAP_LIMIT", "1GiB"),
            ("VRAMCAP_SHM", shm.to_str().unwrap()),
            ("VRAMCAP_SHM_MODE", "0660"),
        ],
    );
    let c = std::ffi::CString::new(shm.to_str().unwrap()).unwrap();
    assert_eq!(
        // SAFETY: a NUL-terminated path; chown touches no memory of ours. The tests run as root.
        unsafe { libc::chown(c.as_ptr(), 0, 65534) },
        0,
        "the tests run as root"
    );
    let reader = |mode: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vramcap"));
        cmd.args(["status", "--no-nvml"])
            .env("VRAMCAP_SHM", &shm)
            .env_remove("VRAMCAP_SHM_MODE")
            .uid(65534)
            .gid(65534);
        if let Some(m) = mode {
            cmd.env("VRAMCAP_SHM_MODE", m);
        }
        cmd.output().unwrap()
    };
    let out = reader(None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "refused: {err}");
    assert!(err.contains("belongs to uid 0"), "{err}");
    let out = reader(Some("0660"));
    assert_eq!(
        out.status.code(),
        Some(0),
        "the group mode was asked for: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&holder.pid().to_string()));
    holder.release();
    let _ = std::fs::remove_file(&shm);
}

#[test]
fn names_reach_the_terminal_escaped() {
    let shm = shm_path("escape");
    let holder = hold(
        "dlsym",
        &[
            ("VRAMCAP_LIMIT", "1GiB"),
            ("VRAMCAP_SHM", shm.to_str().unwrap()),
            ("VRAMCAP_NAME", "\u{1b}[31mred\u{7}\u{202e}"),
        ],
    );
    let (code, out, err, _) =
        vramcap_within(&shm, &["status", "--no-nvml"], &[], Duration::from_secs(5));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        !out.contains('\u{1b}') && !out.contains('\u{7}') && !out.contains('\u{202e}'),
        "{out:?}"
    );
    assert!(out.contains("\\u{1b}[31mred\\u{7}\\u{202e}"), "{out}");
    holder.release();
    let _ = std::fs::remove_file(&shm);
}

#[test]
fn a_bad_watch_interval_is_an_error_not_a_panic() {
    let shm = shm_path("interval");
    for bad in ["NaN", "inf", "-1", "0", "0.01", "1e9", "soon"] {
        let (code, _, err, _) = vramcap_within(
            &shm,
            &["watch", &format!("--interval={bad}")],
            &[],
            Duration::from_secs(5),
        );
        assert_eq!(code, Some(2), "{bad}: {err}");
        assert!(!err.contains("panicked"), "{bad}: {err}");
        assert!(err.contains("--interval"), "names the flag: {err}");
    }
}

#[test]
fn an_unload_url_cannot_write_the_request() {
    let out = Command::new(env!("CARGO_BIN_EXE_vramcap-run"))
        .args([
            "--unload-url",
            "http://127.0.0.1:8001/unload\r\nX-Injected: 1\r\n\r\nGET /admin",
            "--",
            "true",
        ])
        .env("VRAMCAP_LIB", &env().preload)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.lines().count(),
        1,
        "one line, no raw line break: {err:?}"
    );
    // And the library refuses it too, whoever set the variable.
    let r = client(
        "link",
        &["info"],
        &[(
            "VRAMCAP_UNLOAD_URL",
            "http://127.0.0.1:8001/x\r\nX-Injected: 1",
        )],
    );
    assert_eq!(r.int("init"), 1, "cuInit refused: {}", r.stdout);
}

#[test]
fn a_half_made_segment_is_replaced_and_capping_goes_on_listed() {
    // What a creator killed between its open and its header leaves: our own empty file, and one of
    // the full size with no header.
    for size in [0u64, 4 << 20] {
        let shm = shm_path(&format!("half-{size}"));
        let f = std::fs::File::create(&shm).unwrap();
        f.set_len(size).unwrap();
        drop(f);
        std::fs::set_permissions(&shm, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let start = Instant::now();
        let holder = hold(
            "dlsym",
            &[
                ("VRAMCAP_LIMIT", "1GiB"),
                ("VRAMCAP_SHM", shm.to_str().unwrap()),
            ],
        );
        let (code, out, err, _) =
            vramcap_within(&shm, &["status", "--no-nvml"], &[], Duration::from_secs(5));
        assert_eq!(code, Some(0), "{size}: {err}");
        assert!(
            out.contains(&holder.pid().to_string()),
            "{size}: the worker is listed: {out}"
        );
        assert!(start.elapsed() < Duration::from_secs(5));
        let stderr = holder.release();
        assert!(
            !stderr.contains("shared segment not used"),
            "{size}: {stderr}"
        );
        let _ = std::fs::remove_file(&shm);
    }
}

#[test]
fn an_exec_replaces_the_slot_of_the_image_it_replaced() {
    let shm = shm_path("exec");
    let holder = hold_scenario(
        "dlsym",
        "exec_cap",
        &[
            ("VRAMCAP_LIMIT", "1GiB"),
            ("VRAMCAP_SHM", shm.to_str().unwrap()),
        ],
    );
    let (code, out, err, _) = vramcap_within(
        &shm,
        &["status", "--json", "--no-nvml"],
        &[],
        Duration::from_secs(5),
    );
    assert_eq!(code, Some(0), "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = json["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["pid"] == holder.pid())
        .count();
    assert_eq!(rows, 1, "one row for one process: {json}");
    holder.release();
    let _ = std::fs::remove_file(&shm);
}

#[test]
fn every_user_has_a_default_segment_of_their_own() {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let e = env();
    // Root's default segment is the machine's: removed at the end only if this test made it.
    let roots = std::path::Path::new("/dev/shm/vramcap-0");
    let roots_was_there = roots.exists();
    // Root's worker makes root's default segment first.
    let root = {
        let mut cmd = Command::new(&e.client);
        cmd.args(["dlsym", "info"])
            .env("LD_LIBRARY_PATH", &e.dir)
            .env("LD_PRELOAD", &e.preload)
            .env_remove("VRAMCAP_SHM");
        cmd.output().unwrap()
    };
    assert!(root.status.success());
    // Then a worker of user 65534, with no VRAMCAP_SHM either, holds its memory.
    let hold = e.dir.join(format!("hold-user-{}", std::process::id()));
    let _ = std::fs::remove_file(&hold);
    let mut worker = Command::new(&e.client)
        .args(["dlsym", "cap"])
        .env("LD_LIBRARY_PATH", &e.dir)
        .env("LD_PRELOAD", &e.preload)
        .env("VRAMCAP_LIMIT", "1GiB")
        .env("VRAMCAP_E2E_HOLD", &hold)
        .env_remove("VRAMCAP_SHM")
        .uid(65534)
        .gid(65534)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let worker_pid = worker.id();
    let stdout = worker.stdout.take().unwrap();
    for line in std::io::BufReader::new(stdout).lines() {
        if line.unwrap().starts_with("HOLD") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let out = Command::new(env!("CARGO_BIN_EXE_vramcap"))
        .args(["status", "--no-nvml"])
        .env_remove("VRAMCAP_SHM")
        .env_remove("VRAMCAP_SHM_MODE")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    std::fs::write(&hold, b"").unwrap();
    let worker_out = worker.wait_with_output().unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && listed.contains(&worker_pid.to_string()),
        "the user sees their worker: {listed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&worker_out.stderr).contains("shared segment not used"),
        "{}",
        String::from_utf8_lossy(&worker_out.stderr)
    );
    let _ = std::fs::remove_file("/dev/shm/vramcap-65534");
    if !roots_was_there {
        let _ = std::fs::remove_file(roots);
    }
    let _ = std::fs::remove_file(&hold);
}

#[test]
fn totals_of_forged_figures_saturate() {
    use vramcap_core::shm::{Identity, Segment, VramcapDevice};
    let shm = shm_path("totals");
    let seg = Segment::open_or_create(&shm, 0o600).unwrap();
    // Two slots of this (live) process whose figures add up past u64::MAX.
    let me = Identity::of_this_process(Some("forged"), 0);
    let uuid = [7u8; 16];
    for start in [me.start_time, 0] {
        let who = Identity {
            start_time: start,
            ..me.clone()
        };
        let slot = seg.claim(&who).unwrap();
        seg.write_devices(
            slot,
            &[VramcapDevice {
                uuid,
                charged: u64::MAX - 1,
                cap: u64::MAX - 1,
                ..VramcapDevice::default()
            }],
        );
    }
    let (code, out, err, _) = vramcap_within(
        &shm,
        &["status", "--json", "--no-nvml"],
        &[],
        Duration::from_secs(5),
    );
    assert_eq!(code, Some(0), "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let t = &json["totals"][0];
    assert_eq!(t["charged_bytes"], u64::MAX, "{json}");
    assert_eq!(t["caps_bytes"], u64::MAX, "{json}");
    let (code, _, err, _) =
        vramcap_within(&shm, &["status", "--no-nvml"], &[], Duration::from_secs(5));
    assert_eq!(code, Some(0), "the table renders too: {err}");
    drop(seg);
    let _ = std::fs::remove_file(&shm);
}

#[test]
fn another_users_half_made_segment_is_never_replaced() {
    // An empty file at the path that belongs to uid 65534: half-made or planted, it is not ours to
    // replace; root's worker leaves it and caps on its own.
    let shm = shm_path("half-theirs");
    std::fs::File::create(&shm).unwrap();
    std::os::unix::fs::chown(&shm, Some(65534), Some(65534)).unwrap();
    let r = client(
        "dlsym",
        &["cap"],
        &[
            ("VRAMCAP_LIMIT", "1GiB"),
            ("VRAMCAP_SHM", shm.to_str().unwrap()),
        ],
    );
    assert_eq!(r.get("allocated"), 11, "still capped: {}", r.stdout);
    assert!(
        r.stderr.contains("shared segment not used") && r.stderr.contains("belongs to uid 65534"),
        "{}",
        r.stderr
    );
    let meta = std::fs::metadata(&shm).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        65534,
        "left as it was"
    );
    assert_eq!(meta.len(), 0);
    let _ = std::fs::remove_file(&shm);
}

/// What someone who may write the segment's file can do to it, and how to undo it.
fn mutate(shm: &std::path::Path, how: &str) {
    use std::os::unix::fs::PermissionsExt;
    let len = vramcap_core::shm::segment::segment_len() as u64;
    let set_len = |n: u64| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(shm)
            .unwrap()
            .set_len(n)
            .unwrap()
    };
    let replace_with = |make: &dyn Fn(&std::path::Path)| {
        let _ = std::fs::remove_file(shm);
        make(shm);
    };
    match how {
        "truncate to 0" => set_len(0),
        "truncate to 1" => set_len(1),
        "truncate into the header" => set_len(40),
        "truncate after the header" => set_len(64),
        "truncate to half" => set_len(len / 2),
        "truncate by one byte" => set_len(len - 1),
        "grow" => set_len(len * 2),
        "garbage over it" => std::fs::write(shm, vec![0xa5u8; len as usize]).unwrap(),
        "replaced by garbage" => {
            let tmp = shm.with_extension("garbage");
            std::fs::write(&tmp, vec![0x5au8; len as usize]).unwrap();
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::fs::rename(&tmp, shm).unwrap();
        }
        "deleted" => std::fs::remove_file(shm).unwrap(),
        "symlink" => replace_with(&|p| std::os::unix::fs::symlink("/etc/passwd", p).unwrap()),
        "FIFO" => replace_with(&|p| {
            let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
            // SAFETY: a NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        }),
        "directory" => replace_with(&|p| std::fs::create_dir(p).unwrap()),
        "another owner" => std::os::unix::fs::chown(shm, Some(65534), Some(65534)).unwrap(),
        other => panic!("no mutation {other}"),
    }
}

fn clear(shm: &std::path::Path) {
    let _ = std::fs::remove_dir(shm);
    let _ = std::fs::remove_file(shm);
}

#[test]
fn no_state_of_the_segment_file_faults_a_worker_or_a_reader() {
    use std::io::Read;
    let shm = shm_path("mutations");
    let e = env();
    let hold = e.dir.join(format!("churn-{}", std::process::id()));
    let _ = std::fs::remove_file(&hold);
    let mut worker = Command::new(&e.client)
        .args(["dlsym", "churn"])
        .env("LD_LIBRARY_PATH", &e.dir)
        .env("LD_PRELOAD", &e.preload)
        .env("VRAMCAP_CONTEXT_BYTES", CONTEXT.to_string())
        .env("FAKECUDA_CONTEXT_BYTES", CONTEXT.to_string())
        .env("VRAMCAP_E2E_HOLD", &hold)
        .env("VRAMCAP_LIMIT", "1GiB")
        .env("VRAMCAP_SHM", &shm)
        .env("VRAMCAP_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = worker.id();
    let listed = |within: Duration| {
        let start = Instant::now();
        loop {
            let (code, out, _, _) = vramcap_within(
                &shm,
                &["status", "--json", "--no-nvml"],
                &[],
                Duration::from_secs(5),
            );
            let json: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            let here = json["processes"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["pid"] == pid));
            if code == Some(0) && here {
                return true;
            }
            if start.elapsed() > within {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(listed(Duration::from_secs(5)), "the worker is listed");
    let cases = [
        "truncate to 0",
        "truncate to 1",
        "truncate into the header",
        "truncate after the header",
        "truncate to half",
        "truncate by one byte",
        "grow",
        "garbage over it",
        "replaced by garbage",
        "deleted",
        "symlink",
        "FIFO",
        "directory",
        "another owner",
    ];
    for how in cases {
        mutate(&shm, how);
        for args in [
            &["status", "--no-nvml"][..],
            &["status", "--json", "--no-nvml"],
            &["unload", "nobody", "--hook-timeout", "1s", "--no-nvml"],
        ] {
            let (code, _, err, took) = vramcap_within(&shm, args, &[], Duration::from_secs(5));
            assert!(took < Duration::from_secs(5), "{how}: {args:?} hung");
            let code = code.unwrap_or_else(|| panic!("{how}: {args:?} died of a signal: {err}"));
            if code != 0 {
                assert_eq!(err.lines().count(), 1, "{how}: {args:?}: one line: {err}");
            }
        }
        std::thread::sleep(Duration::from_millis(1200));
        assert!(
            worker.try_wait().unwrap().is_none(),
            "{how}: the worker still runs"
        );
        // Whatever is at the path goes; the worker makes a new segment and lists itself there.
        clear(&shm);
        assert!(listed(Duration::from_secs(5)), "{how}: listed again");
    }
    std::fs::write(&hold, b"").unwrap();
    let status = worker.wait().unwrap();
    let mut out = String::new();
    worker
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    worker
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        status.success(),
        "the worker exits cleanly: {status:?}\n{out}\n{err}"
    );
    let value = |key: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}: {out}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert!(value("rounds") > 1000, "{out}");
    assert_eq!(
        value("failed_rounds"),
        0,
        "every allocation within the cap worked: {out}"
    );
    assert_eq!(value("allocated"), 11, "still capped at 1 GiB: {out}");
    assert_eq!(value("refused_code"), 2, "{out}");
    let _ = std::fs::remove_file(&hold);
    clear(&shm);
}

#[test]
fn a_command_a_group_member_writes_into_another_users_slot_is_never_run() {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    use vramcap_core::shm::{
        vramcap_check, VramcapHeader, VramcapSlot, VRAMCAP_REQUEST_PART, VRAMCAP_UNLOAD_CMD,
        VRAMCAP_UNLOAD_LEN,
    };
    // Root's worker, with a signal hook, in a segment its group (nogroup) may write: a member of that
    // group (uid 65534) rewrites the worker's hook into a command, with a matching check sum, as the
    // file's mode lets it. The unloader, run as root, must not run it as root.
    let shm = shm_path("forged-cmd");
    let holder = hold(
        "dlsym",
        &[
            ("VRAMCAP_LIMIT", "1GiB"),
            ("VRAMCAP_SHM", shm.to_str().unwrap()),
            ("VRAMCAP_SHM_MODE", "0660"),
            ("VRAMCAP_NAME", "chat"),
            ("VRAMCAP_UNLOAD_SIGNAL", "USR1"),
        ],
    );
    let c = std::ffi::CString::new(shm.to_str().unwrap()).unwrap();
    assert_eq!(
        // SAFETY: a NUL-terminated path; chown touches no memory of ours. The tests run as root.
        unsafe { libc::chown(c.as_ptr(), 0, 65534) },
        0,
        "the tests run as root"
    );
    // The worker's slot, found by its PID, and its owner part as the member would forge it.
    let bytes = std::fs::read(&*shm).unwrap();
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    let header_size = u32_at(std::mem::offset_of!(VramcapHeader, header_size)) as usize;
    let slot_size = u32_at(std::mem::offset_of!(VramcapHeader, slot_size)) as usize;
    let slot = (header_size..bytes.len())
        .step_by(slot_size)
        .find(|&o| u32_at(o + std::mem::offset_of!(VramcapSlot, pid)) == holder.pid())
        .expect("the worker's slot");
    let mut part = bytes[slot..slot + VRAMCAP_REQUEST_PART].to_vec();
    let marker = env().dir.join(format!("forged-ran-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let kind = std::mem::offset_of!(VramcapSlot, unload_kind);
    part[kind..kind + 4].copy_from_slice(&VRAMCAP_UNLOAD_CMD.to_le_bytes());
    let hook = std::mem::offset_of!(VramcapSlot, unload);
    let cmd = format!("touch {}", marker.display());
    part[hook..hook + VRAMCAP_UNLOAD_LEN].fill(0);
    part[hook..hook + cmd.len()].copy_from_slice(cmd.as_bytes());
    let check = vramcap_check(&part);
    part[..8].copy_from_slice(&check.to_le_bytes());
    // The member writes it in place (dd as uid 65534, gid 65534): the mode allows it.
    let mut dd = Command::new("dd")
        .arg(format!("of={}", shm.display()))
        .args([
            "bs=1",
            &format!("seek={slot}"),
            "conv=notrunc",
            "status=none",
        ])
        .uid(65534)
        .gid(65534)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    dd.stdin.take().unwrap().write_all(&part).unwrap();
    assert!(
        dd.wait().unwrap().success(),
        "a group member may write the segment"
    );
    let status = Command::new(env!("CARGO_BIN_EXE_vramcap"))
        .args(["status", "--json", "--no-nvml"])
        .env("VRAMCAP_SHM", &*shm)
        .env("VRAMCAP_SHM_MODE", "0660")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("\"chat\""),
        "the forged slot still checks out and is the worker's: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_vramcap"))
        .args(["unload", "chat", "--hook-timeout", "1s", "--no-nvml"])
        .env("VRAMCAP_SHM", &*shm)
        .env("VRAMCAP_SHM_MODE", "0660")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("the group may write"),
        "the forged command was seen and refused: {err}"
    );
    assert!(!marker.exists(), "the forged command never ran");
    holder.release();
    let _ = std::fs::remove_file(&shm);
}

#[test]
fn a_slot_whose_lock_was_lost_is_not_written_over_its_new_holder() {
    use vramcap_core::shm::{live_slots, text, Identity, Segment, VramcapDevice};
    // This process claims a slot, then loses its lock as POSIX lets it: closing any descriptor of the
    // file drops every lock the process holds on it. A worker claims the freed slot. A later write of
    // this process to the slot it still thinks its own must take the lock again, and so write nothing.
    let shm = shm_path("relock");
    drop(Segment::open_or_create(&shm, 0o600).unwrap());
    let seg = Segment::open_existing_rw(&shm).unwrap();
    let slot = seg
        .claim(&Identity::of_this_process(Some("stale"), 0))
        .unwrap();
    drop(std::fs::File::open(&*shm).unwrap());
    let holder = hold(
        "dlsym",
        &[
            ("VRAMCAP_LIMIT", "1GiB"),
            ("VRAMCAP_SHM", shm.to_str().unwrap()),
            ("VRAMCAP_NAME", "chat"),
        ],
    );
    // Read through a segment of its own: this one still counts the lost slot among its own.
    let reader = Segment::open_existing(&shm).unwrap();
    let theirs = || {
        live_slots(&reader)
            .into_iter()
            .find(|(_, s)| s.pid == holder.pid())
            .map(|(i, s)| (i, text(&s.name)))
    };
    assert_eq!(
        theirs(),
        Some((slot, "chat".to_string())),
        "the worker took the slot this process lost"
    );
    seg.write_devices(
        slot,
        &[VramcapDevice {
            charged: 1,
            ..VramcapDevice::default()
        }],
    );
    assert_eq!(
        theirs(),
        Some((slot, "chat".to_string())),
        "the stale write left the worker's slot alone"
    );
    holder.release();
}
