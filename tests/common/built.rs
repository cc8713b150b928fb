//! The libraries `cargo build` leaves in target/<profile>/ (libvramcap.so, libvramcap_sim.so), found by
//! the tests and benches, never built by them: cargo cannot build another package's cdylib for a test, and
//! a nested cargo would fight the outer one over the target dir's lock. Shared with benches/hook.rs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// target/<profile>/: where cargo put this package's binaries and `cargo build` puts the libraries.
pub fn profile_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_vramcap"))
        .parent()
        .expect("a binary's folder")
        .to_path_buf()
}

/// The command that builds the libraries into `dir` (target/debug/, target/release/, target/NAME/).
fn build_command(dir: &Path) -> String {
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("release") => "cargo build --release".into(),
        Some(name) if name != "debug" => format!("cargo build --profile {name}"),
        _ => "cargo build".into(),
    }
}

/// `name` in target/<profile>/, no older than any file it was built from. Panics otherwise, naming the
/// file and the command that fixes it, so a missing or stale library is never tested.
pub fn library(name: &str) -> PathBuf {
    let dir = profile_dir();
    let lib = dir.join(name);
    let build = build_command(&dir);
    let built = modified(&lib).unwrap_or_else(|| {
        panic!(
            "{} is missing: the tests and benches use it but do not build it; run `{build}` first",
            lib.display()
        )
    });
    // Cargo's dep-info beside the library lists the sources it was built from: exactly the files for
    // which `cargo build` rebuilds it (a module that a feature leaves out is not among them).
    let dep_info = lib.with_extension("d");
    let text = std::fs::read_to_string(&dep_info).unwrap_or_else(|e| {
        panic!(
            "{} ({e}) should lie beside {}: run `{build}`",
            dep_info.display(),
            lib.display()
        )
    });
    let sources = sources(&text);
    assert!(
        !sources.is_empty(),
        "{} names no sources: run `{build}`",
        dep_info.display()
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for source in sources {
        let source = root.join(source);
        match modified(&source) {
            Some(t) if t <= built => {}
            Some(_) => panic!(
                "{} is stale: {} is newer; run `{build}` first",
                lib.display(),
                source.display()
            ),
            None => panic!(
                "{} is stale: it was built from {}, which is gone; run `{build}` first",
                lib.display(),
                source.display()
            ),
        }
    }
    lib
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The prerequisites of a dep-info file's first rule (`TARGET: SRC SRC…`; `\ ` is a space in a name).
fn sources(text: &str) -> Vec<PathBuf> {
    let rule = text.lines().next().unwrap_or_default();
    let Some((_, deps)) = rule.split_once(": ") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut word = String::new();
    let mut chars = deps.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    out.push(PathBuf::from(std::mem::take(&mut word)));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        out.push(PathBuf::from(word));
    }
    out
}
