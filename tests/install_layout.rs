//! Where `vramcap-run` finds libvramcap.so without `VRAMCAP_LIB`: beside itself (`target/release/`), else
//! in `../lib/` (`PREFIX/bin` and `PREFIX/lib`, as `scripts/install.sh` and the wheel lay it out).

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh PREFIX with `bin/vramcap-run` (a copy of the built one) and, where asked, the library in
/// `lib/` and beside the binary.
fn prefix(name: &str, in_lib: bool, beside: bool) -> PathBuf {
    let root = env()
        .dir
        .join(format!("prefix-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("lib")).unwrap();
    std::fs::copy(
        env!("CARGO_BIN_EXE_vramcap-run"),
        root.join("bin/vramcap-run"),
    )
    .unwrap();
    if in_lib {
        std::fs::copy(&env().preload, root.join("lib/libvramcap.so")).unwrap();
    }
    if beside {
        std::fs::copy(&env().preload, root.join("bin/libvramcap.so")).unwrap();
    }
    root
}

/// `EXE -- sh -c 'echo $LD_PRELOAD'`, with no VRAMCAP_LIB and no LD_PRELOAD inherited.
fn preload_of(exe: &Path) -> std::process::Output {
    Command::new(exe)
        .args(["--", "sh", "-c", "echo \"$LD_PRELOAD\""])
        .env_remove("VRAMCAP_LIB")
        .env_remove("VRAMCAP_LIMIT")
        .env_remove("LD_PRELOAD")
        .output()
        .expect("run vramcap-run")
}

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn finds_the_library_in_lib_beside_bin() {
    let root = prefix("lib", true, false);
    let out = preload_of(&root.join("bin/vramcap-run"));
    assert_eq!(
        stdout(&out),
        root.join("lib/libvramcap.so").display().to_string()
    );
}

#[test]
fn the_library_beside_the_binary_comes_first() {
    let root = prefix("both", true, true);
    let out = preload_of(&root.join("bin/vramcap-run"));
    assert_eq!(
        stdout(&out),
        root.join("bin/libvramcap.so").display().to_string()
    );
}

#[test]
fn a_link_on_path_finds_the_library_of_the_real_install() {
    let root = prefix("link", true, false);
    let links = root.join("links");
    std::fs::create_dir_all(&links).unwrap();
    std::os::unix::fs::symlink(root.join("bin/vramcap-run"), links.join("vramcap-run")).unwrap();
    let out = preload_of(&links.join("vramcap-run"));
    assert_eq!(
        stdout(&out),
        root.join("lib/libvramcap.so").display().to_string()
    );
}

#[test]
fn no_library_names_both_places() {
    let root = prefix("none", false, false);
    let out = preload_of(&root.join("bin/vramcap-run"));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "libvramcap.so is neither beside {} nor in {} (set VRAMCAP_LIB to its path)",
            root.join("bin/vramcap-run").display(),
            root.join("lib").display()
        )),
        "{err}"
    );
}
