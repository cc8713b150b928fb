//! `vramcap-gen-docs SHARE`: writes the man pages and shell completions of `vramcap` and `vramcap-run`
//! under SHARE (a `PREFIX/share`), laid out where man and the shells look:
//!
//! - `man/man1/vramcap.1`, `vramcap-<subcommand>.1`, `vramcap-run.1`;
//! - `bash-completion/completions/{vramcap,vramcap-run}`;
//! - `zsh/site-functions/{_vramcap,_vramcap-run}`;
//! - `fish/vendor_completions.d/{vramcap,vramcap-run}.fish`.
//!
//! The commands are the binaries' own clap definitions, taken out of their sources by `build.rs`.
//! `scripts/install.sh` and `scripts/build-wheel.sh` run it.

use clap_complete::Shell;
use std::path::{Path, PathBuf};

#[allow(dead_code, unused_imports, clippy::all)]
mod vramcap_cli {
    include!(concat!(env!("OUT_DIR"), "/vramcap_cli.rs"));
}

#[allow(dead_code, unused_imports, clippy::all)]
mod vramcap_run_cli {
    include!(concat!(env!("OUT_DIR"), "/vramcap_run_cli.rs"));
}

/// The two commands, with the root package's version (the one the binaries print).
pub fn commands() -> [clap::Command; 2] {
    [vramcap_cli::command(), vramcap_run_cli::command()].map(|c| c.version(env!("VRAMCAP_VERSION")))
}

/// Where each shell looks for a command's completion under SHARE, and the file's name.
fn completion_path(share: &Path, shell: Shell, name: &str) -> PathBuf {
    match shell {
        Shell::Bash => share.join("bash-completion/completions").join(name),
        Shell::Zsh => share.join("zsh/site-functions").join(format!("_{name}")),
        Shell::Fish => share
            .join("fish/vendor_completions.d")
            .join(format!("{name}.fish")),
        other => unreachable!("no place for {other} completions"),
    }
}

/// Writes everything under `share`; returns the files written.
pub fn generate(share: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let man = share.join("man/man1");
    std::fs::create_dir_all(&man)?;
    for cmd in commands() {
        let name = cmd.get_name().to_string();
        clap_mangen::generate_to(cmd.clone(), &man)?;
        written.push(man.join(format!("{name}.1")));
        for sub in cmd.get_subcommands() {
            written.push(man.join(format!("{name}-{}.1", sub.get_name())));
        }
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let path = completion_path(share, shell, &name);
            std::fs::create_dir_all(path.parent().expect("a folder"))?;
            let mut file = std::fs::File::create(&path)?;
            clap_complete::generate(shell, &mut cmd.clone(), &name, &mut file);
            written.push(path);
        }
    }
    Ok(written)
}

fn main() -> std::process::ExitCode {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let [share] = args.as_slice() else {
        eprintln!("usage: vramcap-gen-docs SHARE   (for example PREFIX/share)");
        return std::process::ExitCode::from(2);
    };
    match generate(Path::new(share)) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vramcap-gen-docs: {}: {e}", Path::new(share).display());
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commands_are_the_binaries_own() {
        let [vramcap, run] = commands();
        vramcap.clone().debug_assert();
        run.clone().debug_assert();
        assert_eq!(vramcap.get_name(), "vramcap");
        assert_eq!(run.get_name(), "vramcap-run");
        let subs: Vec<_> = vramcap.get_subcommands().map(|s| s.get_name()).collect();
        for expected in ["status", "watch", "unloader", "unload", "check-limit"] {
            assert!(subs.contains(&expected), "{expected} not in {subs:?}");
        }
        let flags: Vec<_> = run.get_arguments().filter_map(|a| a.get_long()).collect();
        for expected in ["limit", "name", "priority", "unload-url", "wait"] {
            assert!(flags.contains(&expected), "--{expected} not in {flags:?}");
        }
        assert_eq!(
            run.get_version(),
            Some(env!("VRAMCAP_VERSION")),
            "the root package's version"
        );
    }

    #[test]
    fn writes_pages_and_completions_where_man_and_the_shells_look() {
        let share = std::env::temp_dir().join(format!("vramcap-gen-docs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&share);
        let files = generate(&share).unwrap();
        for f in &files {
            assert!(
                std::fs::metadata(f).unwrap().len() > 0,
                "{} is empty",
                f.display()
            );
        }
        let read = |p: &str| std::fs::read_to_string(share.join(p)).unwrap();
        let page = read("man/man1/vramcap-run.1");
        assert!(page.starts_with(".ie \\n(.g .ds Aq"), "roff: {page:.80}");
        assert!(page.contains("\\-\\-limit"), "{page}");
        assert!(page.contains(env!("VRAMCAP_VERSION")), "{page}");
        assert!(read("man/man1/vramcap-status.1").contains("\\-\\-json"));
        assert!(read("man/man1/vramcap-demo.1").contains("\\-\\-simulated"));
        // The demo's workers (`vramcap demo-worker`) are internal: no page, no completion.
        assert!(!read("bash-completion/completions/vramcap").contains("demo-worker"));
        assert!(read("bash-completion/completions/vramcap").contains("check-limit"));
        assert!(read("zsh/site-functions/_vramcap-run").contains("#compdef vramcap-run"));
        assert!(read("fish/vendor_completions.d/vramcap.fish").contains("complete -c vramcap"));
        std::fs::remove_dir_all(&share).unwrap();
    }
}
