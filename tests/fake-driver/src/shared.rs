//! The shared-device directory, `FAKECUDA_SHARED=DIR`: one device shared by several processes. Each
//! process writes what it holds per device into `DIR/<pid>` (a little-endian u64 per device); a process
//! sees the others' files (of live PIDs) when it allocates and in NVML's free memory, so a device can be
//! full because of other processes, as a real one can. `DIR/<pid>.state` holds the process's checkpoint
//! state (one byte), which the checkpoint API (checkpoint.rs) moves and every process reads.

use crate::config::shared_dir;
use std::os::unix::fs::FileExt;

fn alive(pid: i32) -> bool {
    // SAFETY: kill takes no pointers, and signal 0 sends nothing: it only asks whether `pid` exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

pub(crate) fn publish(dev: usize, used: u64) {
    let Some(dir) = shared_dir() else { return };
    let path = dir.join(std::process::id().to_string());
    if let Ok(f) = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)
    {
        let _ = f.write_all_at(&used.to_le_bytes(), dev as u64 * 8);
    }
}

pub(crate) fn used_by_others(dev: usize) -> u64 {
    let me = std::process::id() as i32;
    used_by_others_than(me, dev)
}

fn used_by(pid: i32, dev: usize) -> Option<u64> {
    let f = std::fs::File::open(shared_dir()?.join(pid.to_string())).ok()?;
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, dev as u64 * 8).ok()?;
    Some(u64::from_le_bytes(b))
}

/// What every live process but `pid` holds on `dev`; a checkpointed process holds nothing.
fn used_by_others_than(pid: i32, dev: usize) -> u64 {
    let Some(dir) = shared_dir() else { return 0 };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| {
            let other: i32 = e.file_name().into_string().ok()?.parse().ok()?;
            if other == pid || !alive(other) || state(other) == CHECKPOINTED {
                return None;
            }
            used_by(other, dev)
        })
        .sum()
}

// ---- the checkpoint API's process states, one file per PID ----

pub(crate) const RUNNING: i32 = 0;
pub(crate) const LOCKED: i32 = 1;
pub(crate) const CHECKPOINTED: i32 = 2;

pub(crate) fn state(pid: i32) -> i32 {
    shared_dir()
        .and_then(|d| std::fs::read(d.join(format!("{pid}.state"))).ok())
        .and_then(|b| b.first().copied())
        .map_or(RUNNING, i32::from)
}

pub(crate) fn set_state(pid: i32, state: i32) {
    if let Some(d) = shared_dir() {
        let _ = std::fs::write(d.join(format!("{pid}.state")), [state as u8]);
    }
}

/// Whether `pid` is a live CUDA process on this shared device.
pub(crate) fn known(pid: i32) -> bool {
    shared_dir().is_some_and(|d| d.join(pid.to_string()).exists()) && alive(pid)
}

/// Whether the memory `pid` held fits its devices again, beside everyone else's.
pub(crate) fn fits(pid: i32, devices: usize, total: u64) -> bool {
    (0..devices).all(|dev| {
        let mine = used_by(pid, dev).unwrap_or(0);
        mine == 0 || used_by_others_than(pid, dev) + mine <= total
    })
}
