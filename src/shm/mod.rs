//! The shared-memory segment where every capped process publishes what it holds, for `vramcap status`,
//! `vramcap watch`, the unloader and C readers (`include/vramcap.h`).
//!
//! - [`layout`]: the `#[repr(C)]` header and slots, pinned by compile-time size and offset checks;
//! - [`segment`]: opening with ownership and mode checks, slot claim and reclaim, the seqlock.

pub mod layout;
pub mod segment;

pub use layout::*;
pub use segment::{
    printable, process_alive, segment_mode, segment_path, text, Identity, Segment, ShmError,
};

/// Every live slot of a segment whose owner is alive, with its index.
pub fn live_slots(seg: &Segment) -> Vec<(usize, VramcapSlot)> {
    // Live: the PID exists and has not exited (a zombie holds nothing), and it is still the process
    // that claimed the slot (a reused PID is not). The cheap existence check first, `/proc` once after,
    // from our PID namespace or from the host's (a worker in a container records both).
    let mut known = std::collections::HashMap::new();
    let mut alive = |pid: u32| *known.entry(pid).or_insert_with(|| segment::pid_exists(pid));
    (0..seg.slot_count())
        .filter_map(|i| seg.read_with(i, &mut alive).map(|s| (i, s)))
        .filter(|(_, s)| {
            segment::process_alive(s.pid, s.start_time)
                || (s.host_pid != 0 && segment::process_alive(s.host_pid, s.start_time))
        })
        .collect()
}
