//! The shared-memory segment where every capped process publishes what it holds, for `vramcap status`,
//! `vramcap watch`, the unloader and C readers (`include/vramcap.h`).
//!
//! - [`layout`]: the `#[repr(C)]` header and slots, pinned by compile-time size and offset checks;
//! - [`segment`]: opening with ownership and mode checks, and reading and writing without a mapping;
//! - [`slots`]: claiming a slot by a record lock, writing its parts, and reading back verified slots;
//! - [`identity`]: what a slot says about its process, and printing its text safely.

pub mod identity;
pub mod layout;
pub mod segment;
pub mod slots;

pub use identity::{printable, text, Identity};
pub use layout::*;
pub use segment::{segment_mode, segment_path, Segment, ShmError};
pub use slots::Request;

/// Every slot held by the process it names. That is the whole liveness check: the kernel drops a
/// process's record locks when it exits (before it is a zombie) or execs, so the holder is alive and is
/// the very process that claimed (a reused PID holds no lock of its predecessor's).
pub fn live_slots(seg: &Segment) -> Vec<(usize, VramcapSlot)> {
    seg.live()
}

/// A fresh path in `/dev/shm` for a unit test's segment (any file left there by an earlier run removed),
/// named for this process so that concurrent test runs never share one.
#[cfg(test)]
pub(crate) fn test_path(name: &str) -> std::path::PathBuf {
    let p = std::path::PathBuf::from(format!(
        "/dev/shm/vramcap-unit-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&p);
    p
}
