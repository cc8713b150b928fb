//! `vramcap-run` checks the configuration at the door (issue 14, part 8): every `VRAMCAP_*` variable the
//! command would get, set by a flag or inherited, and HAMi's aliases, read by the library's own parser.
//! A value the library would refuse exits 2 before anything runs, naming the variable and the value.

mod common;
use common::*;
use std::process::Command;

/// `vramcap-run ARGS -- sh -c 'echo ran'` with `vars` added to a clean environment.
fn run(args: &[&str], vars: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vramcap-run"));
    cmd.args(args)
        .args(["--", "sh", "-c", "echo ran"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("VRAMCAP_LIB", &env().preload);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Values the library refuses: each makes `cuInit` fail there, and vramcap-run exit 2 here.
const REFUSED: &[(&str, &str)] = &[
    ("VRAMCAP_LOG", "loud"),
    ("VRAMCAP_LIMIT", "lots"),
    ("VRAMCAP_CONTEXT_BYTES", "25%"),
    ("VRAMCAP_NVML", "maybe"),
    ("VRAMCAP_PRIORITY", "high"),
    ("VRAMCAP_PROTECT", "please"),
    ("VRAMCAP_UNLOAD_URL", "ftp://127.0.0.1/unload"),
    ("VRAMCAP_UNLOAD_SIGNAL", "USR9"),
    ("VRAMCAP_WAIT", "soon"),
    ("VRAMCAP_ON_PRESSURE", "explode"),
    ("VRAMCAP_ALLOW_ABSENT_DEVICES", "2"),
    ("VRAMCAP_REAL_LIBCUDA", " "),
    ("CUDA_DEVICE_MEMORY_LIMIT", "lots"),
    ("CUDA_DEVICE_MEMORY_LIMIT_0", "0"),
];

#[test]
fn every_inherited_variable_the_library_refuses_exits_2_naming_it() {
    for (var, value) in REFUSED {
        let (code, out, err) = run(&[], &[(var, value)]);
        assert_eq!(code, Some(2), "{var}={value}: {err}");
        assert!(
            err.contains(&format!("{var}={value:?} is invalid")),
            "{var}={value}: names the variable and the value: {err}"
        );
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(out.is_empty(), "{var}={value}: the command never ran");
        // The library agrees: the same value refuses cuInit there.
        let r = client("link", &["config"], &[(var, value)]);
        assert_eq!(r.int("init"), 1, "{var}={value}: {}", r.stdout);
    }
}

#[test]
fn values_the_library_takes_pass_and_the_command_runs() {
    let (code, out, err) = run(
        &["--name", "ok", "--wait", "2s"],
        &[
            ("VRAMCAP_LOG", "info"),
            ("VRAMCAP_CONTEXT_BYTES", "300MiB"),
            ("VRAMCAP_NVML", "off"),
            ("VRAMCAP_SHM_MODE", "0660"),
            ("VRAMCAP_E2E_HOLD", "/nowhere"),
            ("CUDA_DEVICE_MEMORY_LIMIT", "4g"),
            ("CUDA_DEVICE_MEMORY_LIMIT_1", "3000m"),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "ran\n");
    assert!(err.is_empty(), "{err}");
}

#[test]
fn a_flag_s_bad_value_is_named_by_the_flag() {
    for (args, says) in [
        (
            &["--limit", "12 parsecs"][..],
            "--limit \"12 parsecs\" is invalid: unknown unit",
        ),
        (&["--wait", "forever"], "--wait \"forever\" is invalid"),
        (
            &["--unload-signal", "USR9"],
            "--unload-signal \"USR9\" is invalid",
        ),
    ] {
        let (code, out, err) = run(args, &[]);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(out.is_empty());
    }
    // A flag replaces what it sets: a bad inherited value under a good flag is no error.
    let (code, _, err) = run(&["--limit", "1GiB"], &[("VRAMCAP_LIMIT", "lots")]);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_misspelt_variable_is_refused_with_the_name_it_meant() {
    let (code, out, err) = run(&[], &[("VRAMCAP_LIMT", "10GiB")]);
    assert_eq!(code, Some(2), "a typo would leave the job uncapped: {err}");
    assert!(
        err.contains(
            "VRAMCAP_LIMT=\"10GiB\" is not a vramcap variable (did you mean VRAMCAP_LIMIT?)"
        ),
        "{err}"
    );
    assert!(out.is_empty());
    let (code, _, err) = run(&[], &[("VRAMCAP_SHM_MODE", "0777")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("VRAMCAP_SHM_MODE=\"0777\" is invalid"),
        "{err}"
    );
}

#[test]
fn vramcap_limit_wins_over_hami_s_aliases_and_says_so() {
    let (code, out, err) = run(
        &["--limit", "2GiB"],
        &[("CUDA_DEVICE_MEMORY_LIMIT", "not even a size")],
    );
    assert_eq!(code, Some(0), "the aliases are not read: {err}");
    assert_eq!(out, "ran\n");
    assert!(
        err.contains("VRAMCAP_LIMIT is set, so CUDA_DEVICE_MEMORY_LIMIT"),
        "{err}"
    );
}
