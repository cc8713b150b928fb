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

pub use identity::{printable, process_alive, text, Identity};
pub use layout::*;
pub use segment::{segment_mode, segment_path, Segment, ShmError};
pub use slots::Request;

/// Every slot held by the process it names, which is still alive: not a zombie (it holds nothing), and
/// still the process that claimed (same start time), from our PID namespace or the host's (a worker in
/// a container records both).
pub fn live_slots(seg: &Segment) -> Vec<(usize, VramcapSlot)> {
    seg.live()
        .into_iter()
        .filter(|(_, s)| {
            process_alive(s.pid, s.start_time)
                || (s.host_pid != 0 && process_alive(s.host_pid, s.start_time))
        })
        .collect()
}
