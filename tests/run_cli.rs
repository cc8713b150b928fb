//! `vramcap-run`: validation, LD_PRELOAD handling and exec semantics.

mod common;
use common::*;
use std::process::Command;

fn run(args: &[&str], vars: &[(&str, &str)]) -> std::process::Output {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    // A segment of the run's own (not the user's default), gone when it is done.
    let shm = shm_path(&format!(
        "cli-{}",
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vramcap-run"));
    cmd.args(args)
        .env("VRAMCAP_SHM", &shm)
        .env("VRAMCAP_LIB", &env().preload)
        .env_remove("VRAMCAP_LIMIT")
        .env_remove("LD_PRELOAD");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().expect("run vramcap-run")
}

#[test]
fn bad_limit_is_a_clear_error_with_exit_2() {
    let out = run(&["--limit", "12 parsecs", "--", "true"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--limit \"12 parsecs\" is invalid: unknown unit"),
        "{err}"
    );
    let out = run(&["--", "true"], &[("VRAMCAP_LIMIT", "lots")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("VRAMCAP_LIMIT=\"lots\" is invalid"));
}

#[test]
fn missing_command_exits_127() {
    let out = run(&["--limit", "1GiB", "--", "/no/such/program"], &[]);
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot run /no/such/program"));
}

#[test]
fn missing_library_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_vramcap-run"))
        .args(["--", "true"])
        .env("VRAMCAP_LIB", "/no/such/libvramcap.so")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("VRAMCAP_LIB=\"/no/such/libvramcap.so\" is not a file"));
}

#[test]
fn sets_the_environment_prepends_preload_and_keeps_the_exit_code() {
    let script = "echo \"$LD_PRELOAD|$VRAMCAP_LIMIT|$VRAMCAP_NAME|$VRAMCAP_PRIORITY\"; exit 7";
    let out = run(
        &[
            "--limit",
            "0=10GiB",
            "--name",
            "chat",
            "--priority",
            "-3",
            "--",
            "sh",
            "-c",
            script,
        ],
        &[("LD_PRELOAD", "/opt/other.so")],
    );
    assert_eq!(out.status.code(), Some(7), "the command's own exit code");
    let line = String::from_utf8_lossy(&out.stdout);
    let expected = format!("{}:/opt/other.so|0=10GiB|chat|-3", env().preload.display());
    assert_eq!(line.trim(), expected);
}

#[test]
fn caps_a_real_client() {
    let e = env();
    let out = run(
        &[
            "--limit",
            "1GiB",
            "--",
            e.client.to_str().unwrap(),
            "link",
            "cap",
        ],
        &[
            ("LD_LIBRARY_PATH", e.dir.to_str().unwrap()),
            ("VRAMCAP_CONTEXT_BYTES", "300MiB"),
            ("FAKECUDA_CONTEXT_BYTES", "300M"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("allocated=11\n"), "{stdout}");
    assert!(stdout.contains("refused_code=2\n"), "{stdout}");
}

#[test]
fn a_limit_for_a_device_the_command_will_not_see_exits_2() {
    let e = env();
    let fake_nvml = e.dir.display().to_string();
    // NVML (the fake, one device) tells the machine's devices; CUDA_VISIBLE_DEVICES tells them without it.
    for vars in [
        vec![("LD_LIBRARY_PATH", fake_nvml.as_str())],
        vec![("CUDA_VISIBLE_DEVICES", "0")],
    ] {
        let out = run(&["--limit", "5=1G", "--", "true"], &vars);
        assert_eq!(out.status.code(), Some(2), "{vars:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("VRAMCAP_LIMIT=\"5=1G\" names device 5, which this process does not see"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    let out = run(
        &[
            "--limit",
            "GPU-fa4e0000-0000-0000-0000-0000000000ff=1G",
            "--",
            "true",
        ],
        &[("LD_LIBRARY_PATH", fake_nvml.as_str())],
    );
    assert_eq!(out.status.code(), Some(2), "a UUID NVML does not list");
    // Seen devices pass, and so does the documented opt-out.
    let out = run(
        &[
            "--limit",
            "0=1G,GPU-fa4e0000-0000-0000-0000-000000000000=1G",
            "--",
            "true",
        ],
        &[("LD_LIBRARY_PATH", fake_nvml.as_str())],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        &["--limit", "5=1G", "--", "true"],
        &[
            ("CUDA_VISIBLE_DEVICES", "0"),
            ("VRAMCAP_ALLOW_ABSENT_DEVICES", "1"),
        ],
    );
    assert_eq!(out.status.code(), Some(0));
}
