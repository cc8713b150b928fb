//! The shared segment: `vramcap status` against live capped processes on the fake driver, the C reader
//! built from the generated header, crash recovery, and refusal of segments that are not ours.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn status_json(shm: &Path) -> serde_json::Value {
    let out = vramcap(shm, &["status", "--json", "--no-nvml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn process(status: &serde_json::Value, pid: u32) -> Option<&serde_json::Value> {
    status["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
}

fn c_reader() -> std::path::PathBuf {
    let e = env();
    let exe = e.dir.join("shm_reader");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ok = Command::new("cc")
        .args(["-O1", "-Wall", "-o"])
        .arg(&exe)
        .arg(root.join("tests/clients/shm_reader.c"))
        .arg("-I")
        .arg(root.join("include"))
        .status()
        .unwrap();
    assert!(ok.success());
    exe
}

#[test]
fn status_lists_every_capped_process_with_exact_figures() {
    let shm = shm_path("status");
    let s = shm.to_str().unwrap();
    let holders: Vec<Holder> = [
        ("image", "1GiB", "link"),
        ("chat", "768MiB", "dlsym"),
        ("video", "512MiB", "gpa"),
    ]
    .iter()
    .map(|(name, limit, path)| {
        hold(
            path,
            &[
                ("VRAMCAP_SHM", s),
                ("VRAMCAP_LIMIT", limit),
                ("VRAMCAP_NAME", name),
            ],
        )
    })
    .collect();
    let status = status_json(&shm);
    assert_eq!(
        status["processes"].as_array().unwrap().len(),
        3,
        "{status:#}"
    );
    for (h, (name, cap)) in
        holders
            .iter()
            .zip([("image", GIB), ("chat", 768 * MIB), ("video", 512 * MIB)])
    {
        let p = process(&status, h.pid()).unwrap_or_else(|| panic!("{name} missing: {status:#}"));
        assert_eq!(p["name"], name);
        let d = &p["devices"][0];
        let charged = h.get("info_total") - h.get("info_free");
        assert_eq!(
            d["charged_bytes"], charged,
            "{name}: the library's own figure"
        );
        assert_eq!(d["cap_bytes"], cap, "{name}");
        assert_eq!(d["context_bytes"], CONTEXT, "{name}");
        assert!(d["refusals"].as_u64().unwrap() >= 1, "{name}");
        assert_eq!(d["uuid"], "GPU-fa4e0000-0000-0000-0000-000000000000");
    }
    let totals = &status["totals"][0];
    assert_eq!(totals["processes"], 3);
    assert_eq!(totals["caps_bytes"], GIB + 768 * MIB + 512 * MIB);

    // The C reader, built from the generated header, sees the same figures.
    let out = Command::new(c_reader()).arg(&shm).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for h in &holders {
        let p = process(&status, h.pid()).unwrap();
        let line = format!(
            "{} {} {} {}",
            h.pid(),
            p["devices"][0]["charged_bytes"],
            p["devices"][0]["cap_bytes"],
            p["name"].as_str().unwrap()
        );
        assert!(
            text.lines().any(|l| l == line),
            "C reader: {text}\nexpected {line}"
        );
    }

    // The human table names them, with totals.
    let table =
        String::from_utf8_lossy(&vramcap(&shm, &["status", "--no-nvml"]).stdout).into_owned();
    for name in ["image", "chat", "video"] {
        assert!(table.contains(name), "{table}");
    }
    assert!(table.contains("3 processes hold"), "{table}");

    // A process killed without exiting disappears at the next read; the others release at exit.
    let mut holders = holders;
    let mut killed = holders.remove(1);
    let pid = killed.pid();
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let status = status_json(&shm);
    assert!(process(&status, pid).is_none(), "{status:#}");
    assert_eq!(status["processes"].as_array().unwrap().len(), 2);
    for h in holders {
        h.release();
    }
    assert_eq!(status_json(&shm)["processes"].as_array().unwrap().len(), 0);
    let _ = std::fs::remove_file(&shm);
}

#[test]
fn segment_is_private_by_default_and_group_readable_when_asked() {
    let shm = shm_path("mode");
    let r = client(
        "link",
        &["info"],
        &[
            ("VRAMCAP_SHM", shm.to_str().unwrap()),
            ("VRAMCAP_LIMIT", "1GiB"),
        ],
    );
    assert_eq!(r.int("info"), 0);
    assert_eq!(
        std::fs::metadata(&shm).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let _ = std::fs::remove_file(&shm);
    let vars = [
        ("VRAMCAP_SHM", shm.to_str().unwrap()),
        ("VRAMCAP_SHM_MODE", "0660"),
    ];
    client("link", &["info"], &vars);
    assert_eq!(
        std::fs::metadata(&shm).unwrap().permissions().mode() & 0o777,
        0o660
    );
    let _ = std::fs::remove_file(&shm);
}

#[test]
fn segments_that_are_not_ours_are_refused_and_capping_goes_on() {
    let make_valid = |p: &Path| {
        client(
            "link",
            &["info"],
            &[
                ("VRAMCAP_SHM", p.to_str().unwrap()),
                ("VRAMCAP_LIMIT", "1GiB"),
            ],
        );
        assert!(p.exists());
    };
    let corrupt = shm_path("corrupt");
    std::fs::write(&corrupt, vec![0x5au8; 2 << 20]).unwrap();
    std::fs::set_permissions(&corrupt, std::fs::Permissions::from_mode(0o600)).unwrap();
    let version = shm_path("version");
    make_valid(&version);
    let mut bytes = std::fs::read(&version).unwrap();
    bytes[8..12].copy_from_slice(&99u32.to_le_bytes());
    std::fs::write(&version, bytes).unwrap();
    let truncated = shm_path("truncated");
    make_valid(&truncated);
    let head = std::fs::read(&truncated).unwrap()[..100].to_vec();
    std::fs::write(&truncated, head).unwrap();
    let planted = shm_path("planted");
    make_valid(&planted);
    std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
    let link = shm_path("link");
    std::os::unix::fs::symlink(&version, &link).unwrap();
    let cases = [
        (&corrupt, "is not a vramcap segment"),
        (&version, "layout version 99"),
        (&planted, "belongs to uid 65534"),
        (&link, "Too many levels of symbolic links"),
    ];
    for (path, why) in cases {
        let r = client(
            "link",
            &["cap"],
            &[
                ("VRAMCAP_SHM", path.to_str().unwrap()),
                ("VRAMCAP_LIMIT", "1GiB"),
            ],
        );
        assert_eq!(r.get("allocated"), 11, "{why}: still capped: {}", r.stdout);
        assert_eq!(r.int("refused_code"), 2, "{why}");
        let lines: Vec<&str> = r
            .stderr
            .lines()
            .filter(|l| l.contains("shared segment not used"))
            .collect();
        assert_eq!(lines.len(), 1, "{why}: one clear line: {}", r.stderr);
        assert!(lines[0].contains(why), "{why}: {}", lines[0]);
        let out = vramcap(path, &["status", "--no-nvml"]);
        if path == &planted {
            // Root reads any user's segment (and its unloader acts on that user's processes alone);
            // `segment_trust` checks that a non-root reader refuses another owner's.
            assert_eq!(out.status.code(), Some(0), "{why}: root reads it");
            continue;
        }
        assert_eq!(out.status.code(), Some(2), "{why}: status refuses it too");
        assert!(String::from_utf8_lossy(&out.stderr).contains(why), "{why}");
    }
    // A truncated segment of ours: readers refuse it with one line; the next worker replaces it (as it
    // does a half-made one) and is listed there.
    let out = vramcap(&truncated, &["status", "--no-nvml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("truncated"));
    let r = client(
        "link",
        &["cap"],
        &[
            ("VRAMCAP_SHM", truncated.to_str().unwrap()),
            ("VRAMCAP_LIMIT", "1GiB"),
        ],
    );
    assert_eq!(r.get("allocated"), 11, "still capped: {}", r.stdout);
    assert!(
        !r.stderr.contains("shared segment not used"),
        "{}",
        r.stderr
    );
    let out = vramcap(&truncated, &["status", "--no-nvml"]);
    assert_eq!(out.status.code(), Some(0), "replaced whole");
    for p in [corrupt, version, truncated, planted, link] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn status_without_a_segment_says_so_and_exits_0() {
    let shm = shm_path("absent");
    let out = vramcap(&shm, &["status", "--no-nvml"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no capped process has started"));
    assert!(!shm.exists(), "status made no segment");
}

#[test]
fn a_forked_child_that_uses_cuda_takes_its_own_slot() {
    let shm = shm_path("fork");
    let s = shm.to_str().unwrap();
    let parent = hold_scenario(
        "link",
        "fork",
        &[
            ("VRAMCAP_SHM", s),
            ("VRAMCAP_LIMIT", "1GiB"),
            ("VRAMCAP_NAME", "parent"),
        ],
    );
    let child = parent.get("child_pid") as u32;
    let status = status_json(&shm);
    assert!(process(&status, parent.pid()).is_some(), "{status:#}");
    let c = process(&status, child).unwrap_or_else(|| panic!("child {child} missing: {status:#}"));
    assert_ne!(c["slot"], process(&status, parent.pid()).unwrap()["slot"]);
    parent.release();
    let _ = std::fs::remove_file(&shm);
}

#[test]
fn watch_draws_the_table_and_quits_on_q() {
    use std::io::Write;
    let shm = shm_path("watch");
    let h = hold(
        "link",
        &[
            ("VRAMCAP_SHM", shm.to_str().unwrap()),
            ("VRAMCAP_LIMIT", "1GiB"),
            ("VRAMCAP_NAME", "watched"),
        ],
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_vramcap"))
        .args(["watch", "--interval", "0.2"])
        .env("VRAMCAP_SHM", &shm)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    child.stdin.as_mut().unwrap().write_all(b"q").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("watched") && text.contains("(q to quit)"),
        "{text}"
    );
    h.release();
    let _ = std::fs::remove_file(&shm);
}
