//! The operator's surfaces (issue 14, parts 6 and 8): the status table, CSV and `--query`, the versioned
//! JSON, `watch` into a pipe, commands before any worker started, the one-shot commands' lines,
//! `reclaim --device` without NVML, `check-limit`, and no panic on any argument.

mod common;
use common::card::Card;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `vramcap ARGS` on segment `shm` with `vars`, stdin closed, killed after `limit`.
fn vramcap_with(
    shm: &Path,
    args: &[&str],
    vars: &[(&str, &str)],
    limit: Duration,
) -> (Option<i32>, String, String) {
    let (code, out, err, _) = vramcap_within(shm, args, vars, limit);
    (code, out, err)
}

fn json_of(shm: &Path) -> serde_json::Value {
    let (code, out, err) = vramcap_with(
        shm,
        &["status", "--json", "--no-nvml"],
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(0), "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The character column where `needle` starts on the first line holding `row`.
fn column_of(table: &str, row: &str, needle: &str) -> usize {
    let line = table
        .lines()
        .find(|l| l.contains(row))
        .unwrap_or_else(|| panic!("no row {row}:\n{table}"));
    let at = line
        .find(needle)
        .unwrap_or_else(|| panic!("no {needle} in {line}"));
    line[..at].chars().count()
}

#[test]
fn the_table_lines_up_with_protected_workers_and_long_names() {
    let shm = shm_path("aligned");
    let s = shm.to_str().unwrap();
    let long = "a worker whose name is far longer than any column should be";
    let plain = hold(
        "dlsym",
        &[
            ("VRAMCAP_SHM", s),
            ("VRAMCAP_LIMIT", "1GiB"),
            ("VRAMCAP_NAME", "chat"),
        ],
    );
    let protected = hold(
        "dlsym",
        &[
            ("VRAMCAP_SHM", s),
            ("VRAMCAP_LIMIT", "768MiB"),
            ("VRAMCAP_NAME", long),
            ("VRAMCAP_PROTECT", "1"),
        ],
    );
    let (code, table, err) =
        vramcap_with(&shm, &["status", "--no-nvml"], &[], Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    let (a, b) = (plain.pid().to_string(), protected.pid().to_string());
    // PIDs right-aligned: they end in one column, whatever the name and the protected flag before them.
    let end = |pid: &str| column_of(&table, pid, pid) + pid.len();
    assert_eq!(end(&a), end(&b), "{table}");
    let header = table.lines().next().unwrap();
    assert!(
        header.contains("PROTECTED") && header.contains("GPU"),
        "{header}"
    );
    assert_eq!(
        column_of(&table, &a, "no"),
        column_of(&table, &b, "yes"),
        "protected in a column of its own: {table}"
    );
    assert!(!table.contains(long), "the long name is cut: {table}");
    assert!(table.contains("a worker whose name is far lo…"), "{table}");
    // Every row has the same number of cells where they are separated by two spaces.
    let cells = |pid: &str| {
        table
            .lines()
            .find(|l| l.contains(pid))
            .unwrap()
            .split("  ")
            .filter(|c| !c.trim().is_empty())
            .count()
    };
    assert_eq!(cells(&a), cells(&b), "{table}");
    // The JSON keeps the name whole.
    let json = json_of(&shm);
    assert!(json["processes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == long && p["protected"] == true));
    plain.release();
    protected.release();
}

#[test]
fn csv_and_query_give_the_segments_figures() {
    let shm = shm_path("csv");
    let h = hold(
        "dlsym",
        &[
            ("VRAMCAP_SHM", shm.to_str().unwrap()),
            ("VRAMCAP_LIMIT", "1GiB"),
            ("VRAMCAP_NAME", "with, comma"),
        ],
    );
    let (code, csv, err) = vramcap_with(
        &shm,
        &[
            "status",
            "--no-nvml",
            "--format",
            "csv",
            "--query",
            "pid,name,gpu,charged,cap,context",
        ],
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "pid,name,gpu,charged,cap,context");
    let charged = h.get("info_total") - h.get("info_free");
    assert_eq!(
        lines[1],
        format!(
            "{},\"with, comma\",GPU-fa4e0000-0000-0000-0000-000000000000,{charged},{GIB},{CONTEXT}",
            h.pid()
        ),
        "{csv}"
    );
    // The same fields as a table, in the order asked.
    let (_, table, _) = vramcap_with(
        &shm,
        &["status", "--no-nvml", "--query", "cap,pid"],
        &[],
        Duration::from_secs(10),
    );
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["CAP", "PID"], "{table}");
    assert!(table.contains("1.00 GiB"), "{table}");
    // An unknown field or a query of the JSON is a usage error, not a panic.
    for args in [
        &["status", "--query", "pid,bogus"][..],
        &["status", "--json", "--query", "pid"],
        &["status", "--format", "yaml"],
    ] {
        let (code, _, err) = vramcap_with(&shm, args, &[], Duration::from_secs(10));
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    h.release();
}

#[test]
fn the_json_is_versioned_with_units_in_its_keys_and_nulls_for_nothing() {
    let shm = shm_path("json");
    let h = hold(
        "dlsym",
        &[
            ("VRAMCAP_SHM", shm.to_str().unwrap()),
            ("VRAMCAP_NAME", "free"),
            ("FAKECUDA_MEM", "1G"),
        ],
    );
    let json = json_of(&shm);
    assert_eq!(json["schema_version"], 1, "{json}");
    assert_eq!(json["segment_exists"], true);
    let p = json["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == h.pid())
        .unwrap();
    let d = &p["devices"][0];
    assert!(
        d["cap_bytes"].is_null(),
        "no cap is null, not u64::MAX: {d}"
    );
    assert!(d["charged_bytes"].as_u64().unwrap() >= CONTEXT, "{d}");
    assert!(
        p["host_pid"].is_null() && p["suspended_bytes"].is_null(),
        "{p}"
    );
    assert_eq!(
        d["last_refused_bytes"].is_null(),
        d["refusals"] == 0,
        "null until a refusal: {d}"
    );
    for old in ["charged", "cap", "peak", "context"] {
        assert!(d.get(old).is_none(), "{old} has its unit now: {d}");
    }
    // `--json` and `--format json` are one document.
    let (_, other, _) = vramcap_with(
        &shm,
        &["status", "--format", "json", "--no-nvml"],
        &[],
        Duration::from_secs(10),
    );
    let other: serde_json::Value = serde_json::from_str(&other).unwrap();
    assert_eq!(other["processes"], json["processes"]);
    h.release();
}

#[test]
fn before_any_worker_status_watch_and_cleanup_show_the_empty_view_and_exit_0() {
    let shm = shm_path("none-yet");
    let (code, out, err) =
        vramcap_with(&shm, &["status", "--no-nvml"], &[], Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("no capped process has started"), "{out}");
    let (code, out, err) = vramcap_with(
        &shm,
        &["status", "--json", "--no-nvml"],
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(0), "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("a valid document");
    assert_eq!(json["segment_exists"], false);
    assert_eq!(json["processes"].as_array().map(Vec::len), Some(0));
    assert_eq!(json["totals"].as_array().map(Vec::len), Some(0));
    let (code, out, err) = vramcap_with(&shm, &["cleanup"], &[], Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("no workers"), "{out}");
    let (code, out, _) = vramcap_with(
        &shm,
        &["watch", "--interval", "100ms", "--no-nvml"],
        &[],
        Duration::from_millis(700),
    );
    assert_eq!(code, None, "still watching when stopped");
    assert!(out.contains("no capped process has started"), "{out}");
    // Commands that need a worker say there is none, with exit 1.
    let (code, _, err) = vramcap_with(&shm, &["unload", "chat"], &[], Duration::from_secs(10));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no worker named \"chat\""), "{err}");
    assert!(!shm.exists(), "no command made the segment");
}

#[test]
fn watch_into_a_pipe_with_stdin_closed_prints_plain_frames_and_does_not_spin() {
    let shm = shm_path("watch-pipe");
    let h = hold(
        "dlsym",
        &[
            ("VRAMCAP_SHM", shm.to_str().unwrap()),
            ("VRAMCAP_LIMIT", "1GiB"),
            ("VRAMCAP_NAME", "watched"),
        ],
    );
    // `--interval 500ms`: the duration syntax of every other flag. For 1.3 s: frames at 0, 0.5 and 1 s.
    let (code, out, err) = vramcap_with(
        &shm,
        &["watch", "--interval", "500ms", "--no-nvml"],
        &[],
        Duration::from_millis(1300),
    );
    assert_eq!(code, None, "{err}");
    let frames = out.matches("watched").count();
    assert!(
        (2..=4).contains(&frames),
        "{frames} frames in 1.3 s:\n{out}"
    );
    assert!(
        !out.contains('\u{1b}'),
        "no escape code into a pipe: {out:?}"
    );
    assert!(
        !out.contains("(q to quit)"),
        "stdin is closed: no key can quit: {out}"
    );
    h.release();
}

#[test]
fn watch_ends_when_its_reader_goes_away() {
    let shm = shm_path("watch-gone");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vramcap"))
        .args(["watch", "--interval", "100ms", "--no-nvml"])
        .env("VRAMCAP_SHM", &shm)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(start.elapsed() < Duration::from_secs(5), "watch ran on");
    assert_eq!(out.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[test]
fn no_argument_makes_vramcap_panic() {
    let shm = shm_path("args");
    let cases: &[&[&str]] = &[
        &[],
        &["--help"],
        &["--version"],
        &["nonsense"],
        &["status", "--format"],
        &["status", "--query", ""],
        &["status", "--query", ",,,"],
        &["status", "--query", "pid,\u{1b}[31m"],
        &["watch", "--interval", "NaN"],
        &["watch", "--interval", "1e400"],
        &["watch", "--interval", "99999999999999999999h"],
        &["watch", "--interval", "-1s"],
        &["reclaim", "--device", "", "--bytes", "1G"],
        &["reclaim", "--device", "GPU-", "--bytes", "1G"],
        &["reclaim", "--device", "99999999999", "--bytes", "1G"],
        &["reclaim", "--device", "0", "--bytes", "NaN"],
        &[
            "reclaim",
            "--device",
            "0",
            "--bytes",
            "18446744073709551616",
        ],
        &[
            "reclaim",
            "--device",
            "0",
            "--bytes",
            "1G",
            "--hook-timeout",
            "1e308",
        ],
        &["unload", "x", "--hook-timeout", "NaN"],
        &["unload", "x", "--min-host-free", "-1"],
        &["suspend", "x", "--min-host-free", "99999999999999999999T"],
        &["check-limit", ""],
        &["check-limit", "0=,=1"],
        &["check-limit", "1e400%"],
        &["check-limit", "NaN%"],
        &["check-limit", "99999999999999999999999999999999999999999"],
        &["check-limit", "0.0000000000000000000000000001%"],
        &["exporter", "--listen", "not an address"],
        &["exporter", "--listen", "127.0.0.1:99999"],
        &["unloader", "--poll", "NaN"],
        &["demo", "--simulated", "--nope"],
        &["demo-worker"],
        &["demo-worker", "nope"],
        &["demo-worker", "hold", "--bytes", "0"],
        &["demo-worker", "fill", "--bytes", "NaN"],
        &["demo-worker", "want", "--chunk", "99999999999999999999T"],
    ];
    for args in cases {
        let (code, _, err) = vramcap_with(&shm, args, &[], Duration::from_secs(10));
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            matches!(code, Some(0..=3)),
            "{args:?}: exit {code:?}: {err}"
        );
    }
    // A reader that closed its end (`| head -0`) is no panic either.
    for args in [
        &["--help"][..],
        &["check-limit", "10GiB"],
        &["status", "--no-nvml"],
        &["fields"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vramcap"))
            .args(args)
            .env("VRAMCAP_SHM", &shm)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn check_limit_refuses_caps_smaller_than_a_context_and_prints_no_debug_forms() {
    let shm = shm_path("check-limit");
    let check = |args: &[&str], vars: &[(&str, &str)]| {
        let mut all = vec!["check-limit"];
        all.extend_from_slice(args);
        vramcap_with(&shm, &all, vars, Duration::from_secs(10))
    };
    let (code, out, err) = check(&["1.5"], &[]);
    assert_eq!(code, Some(2), "1 byte is no cap: {out}{err}");
    assert!(
        err.contains("VRAMCAP_LIMIT=\"1.5\"")
            && err.contains("less than a CUDA context (512.00 MiB"),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    let (code, _, err) = check(&["1.5", "--force"], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("warning"), "{err}");
    // The context is VRAMCAP_CONTEXT_BYTES where set.
    let (code, _, err) = check(&["100MiB"], &[("VRAMCAP_CONTEXT_BYTES", "64MiB")]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, _) = check(&["100MiB"], &[]);
    assert_eq!(code, Some(2));
    let uuid = "GPU-fa4e0000-0000-0000-0000-000000000000";
    let (code, out, err) = check(&[&format!("0=10GiB,{uuid}=2GiB")], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.contains("Ordinal(") && !out.contains("Uuid("), "{out}");
    assert!(
        out.contains("device 0: 10.00 GiB (10737418240 bytes)"),
        "{out}"
    );
    assert!(
        out.contains(&format!("device {}: 2.00 GiB", uuid.to_ascii_lowercase())),
        "{out}"
    );
    // Without SPEC: the environment's limit, HAMi's aliases included.
    let (code, out, err) = check(
        &[],
        &[
            ("CUDA_DEVICE_MEMORY_LIMIT", "4g"),
            ("CUDA_DEVICE_MEMORY_LIMIT_1", "3000m"),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("device 1: 2.93 GiB (3145728000 bytes)"),
        "{out}"
    );
    assert!(out.contains("every other device: 4.00 GiB"), "{out}");
    let (code, out, _) = check(&[], &[]);
    assert_eq!(code, Some(0));
    assert!(out.contains("no limit is set"), "{out}");
}

#[test]
fn hami_limits_cap_a_process_and_vramcap_limit_wins() {
    // 64 MiB blocks under a 300 MiB context: 11 fit under 1 GiB, 27 under 2 GiB.
    for vars in [
        &[("CUDA_DEVICE_MEMORY_LIMIT", "1g")][..],
        &[("CUDA_DEVICE_MEMORY_LIMIT_0", "1024m")],
        &[
            ("CUDA_DEVICE_MEMORY_LIMIT", "4g"),
            ("CUDA_DEVICE_MEMORY_LIMIT_0", "1g"),
        ],
    ] {
        let r = client("dlsym", &["cap"], vars);
        assert_eq!(r.get("allocated"), 11, "{vars:?}: {}{}", r.stdout, r.stderr);
        assert_eq!(r.int("refused_code"), 2, "{vars:?}");
    }
    let r = client(
        "dlsym",
        &["cap"],
        &[
            ("VRAMCAP_LIMIT", "2GiB"),
            ("CUDA_DEVICE_MEMORY_LIMIT", "1g"),
        ],
    );
    assert_eq!(r.get("allocated"), 27, "VRAMCAP_LIMIT wins: {}", r.stdout);
    let r = client(
        "dlsym",
        &["config"],
        &[("CUDA_DEVICE_MEMORY_LIMIT_0", "lots")],
    );
    assert_eq!(r.int("init"), 1, "a bad alias refuses cuInit: {}", r.stdout);
    assert!(
        r.stderr
            .contains("CUDA_DEVICE_MEMORY_LIMIT_0=\"lots\" is invalid"),
        "{}",
        r.stderr
    );
}

// ---- one-shot commands on a shared fake device, workers started with vramcap-run ----

/// One shared device of 2 GiB whose contexts cost 300 MiB.
fn card(name: &str) -> Card {
    Card::new(name, "2G", "300M")
}

/// `vramcap ARGS` on `card`, with or without the fake's NVML: its exit code, stdout and stderr.
fn one_shot(card: &Card, args: &[&str], nvml: bool) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vramcap"));
    cmd.args(args);
    card.vars(&mut cmd);
    if !nvml {
        cmd.env_remove("LD_LIBRARY_PATH");
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// No duration printed with more than one decimal (`71.105259ms`), and no line twice.
fn plain(lines: &str) {
    for word in lines.split_whitespace() {
        let digits =
            word.trim_end_matches(|c: char| c.is_ascii_alphabetic() || c == ';' || c == ',');
        if let Some((_, frac)) = digits.split_once('.') {
            assert!(frac.len() <= 2, "{word:?} is not rounded: {lines}");
        }
    }
    let mut seen = std::collections::HashSet::new();
    for line in lines.lines() {
        assert!(seen.insert(line), "{line:?} twice: {lines}");
    }
}

#[test]
fn one_shot_commands_print_one_plain_line_per_action_with_the_real_figures() {
    let card = card("lines");
    let chat = card.signalled("chat", "1", 700);
    let _video = card.signalled("video", "2", 320);
    // chat holds 1000 MiB: 700 of allocations and its 300 MiB context, which unloading cannot free.
    let (code, out, err) = one_shot(&card, &["unload", "chat", "--hook-timeout", "5s"], true);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.lines().count(), 1, "one line for one worker: {out}");
    let pid = chat.child.id();
    assert!(
        out.starts_with(&format!(
            "chat (pid {pid}, priority 1): freed 700.00 MiB in "
        )),
        "{out}"
    );
    assert!(
        out.contains("holds 300.00 MiB now, its CUDA context"),
        "what it still holds, and why: {out}"
    );
    plain(&out);
    // Dry run: one line per worker it would ask, then the verdict. 1128 MiB are free of 2 GiB: 1400 MiB
    // needs video's 320 (chat holds nothing beyond its context now).
    let (code, out, err) = one_shot(
        &card,
        &[
            "reclaim",
            "--device",
            "0",
            "--bytes",
            "1400MiB",
            "--dry-run",
        ],
        true,
    );
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("would ask video") && lines[0].contains("holds 320.00 MiB on GPU 0"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("enough: would free 320.00 MiB"),
        "{out}"
    );
    plain(&out);
    // Without NVML nothing says what is free: the bytes asked for are freed.
    let (code, out, err) = one_shot(
        &card,
        &["reclaim", "--device", "0", "--bytes", "300MiB", "--no-nvml"],
        true,
    );
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("video (pid") && lines[0].contains("freed 320.00 MiB"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("enough: freed 320.00 MiB on GPU 0 in "),
        "{out}"
    );
    plain(&out);
}

#[test]
fn reclaim_by_device_index_without_nvml_says_what_is_missing_and_by_uuid_works() {
    let card = card("no-nvml");
    let _chat = card.signalled("chat", "1", 200);
    // --no-nvml with NVML present: the index is still NVML's to tell.
    let (code, out, err) = one_shot(
        &card,
        &[
            "reclaim",
            "--device",
            "0",
            "--bytes",
            "100MiB",
            "--no-nvml",
            "--dry-run",
        ],
        true,
    );
    assert_eq!(code, Some(0), "{out}{err}");
    // No NVML at all: one line that names what is missing and what to give instead.
    let (code, _, err) = one_shot(
        &card,
        &["reclaim", "--device", "0", "--bytes", "100MiB", "--dry-run"],
        false,
    );
    assert_eq!(code, Some(2), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("vramcap: --device"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains("NVML (libnvidia-ml.so.1)") && line.contains("give its UUID"),
        "{line}"
    );
    // The UUID, or a prefix of it that names one device, needs no NVML.
    for device in ["GPU-fa4e0000-0000-0000-0000-000000000000", "GPU-fa4e0000"] {
        let (code, out, err) = one_shot(
            &card,
            &[
                "reclaim",
                "--device",
                device,
                "--bytes",
                "100MiB",
                "--dry-run",
            ],
            false,
        );
        assert_eq!(code, Some(0), "{device}: {out}{err}");
        assert!(out.contains("would ask chat"), "{out}");
    }
}
