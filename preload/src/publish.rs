//! Publishes this process's figures in the shared segment (`core_lib::shm`) for `vramcap status`, the
//! unloader and C readers.
//!
//! The slot is claimed at the first successful `cuInit` (a forked child that uses CUDA claims its own),
//! released at exit, and rewritten by the background thread whenever the figures moved (checked every
//! 10 ms), so a reader is at most one tick behind the ledger. The segment is optional: if it cannot be
//! opened or is refused (another owner, another layout), one line says why and the library keeps capping
//! on its own.

use crate::state::{self, LEDGER};
use core_lib::ledger::DeviceUsage;
use core_lib::lock::Lock;
use core_lib::shm::{
    segment_mode, segment_path, Identity, Segment, VramcapDevice, VRAMCAP_SLOT_DEVICES,
};
use core_lib::vlog;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::OnceLock;

static SEGMENT: OnceLock<Option<Segment>> = OnceLock::new();
static SLOT: AtomicUsize = AtomicUsize::new(usize::MAX);
/// The PID that holds SLOT (a forked child must claim its own).
static SLOT_PID: AtomicU32 = AtomicU32::new(0);
/// What was last published, to skip rewriting unchanged figures.
static LAST: Lock<Vec<DeviceUsage>> = Lock::new(Vec::new());

fn segment() -> Option<&'static Segment> {
    SEGMENT
        .get_or_init(|| {
            let opened =
                segment_mode().and_then(|mode| Segment::open_or_create(&segment_path(), mode));
            match opened {
                Ok(seg) => Some(seg),
                Err(e) => {
                    vlog!(
                        Warn,
                        "shared segment not used: {e}; capping continues without it"
                    );
                    None
                }
            }
        })
        .as_ref()
}

/// Set at exit, before the slot is released: the background thread (which runs on while exit handlers
/// do) must never write figures into a slot that a new owner may already hold.
static STOPPED: AtomicBool = AtomicBool::new(false);

extern "C" fn release_at_exit() {
    let pid = std::process::id();
    if SLOT_PID.load(Ordering::Acquire) == pid {
        if let Some(seg) = SEGMENT.get().and_then(Option::as_ref) {
            // A publication under way holds LAST: wait for it, then let none start.
            let _last = LAST.lock();
            STOPPED.store(true, Ordering::Release);
            seg.release(SLOT.load(Ordering::Acquire), pid);
        }
    }
}

/// Claims this process's slot (once per process) and starts the background thread that keeps it current.
pub fn join() {
    let pid = std::process::id();
    if SLOT_PID.load(Ordering::Acquire) == pid {
        return;
    }
    let Some(seg) = segment() else { return };
    let config = state::config();
    let mut who = Identity::of_this_process(
        config.and_then(|c| c.name.as_deref()),
        config.map_or(0, |c| c.priority),
    );
    if let Some(c) = config {
        who = who.declaring(c.protect, c.suspendable, &c.unload);
    }
    match seg.claim(&who) {
        Some(slot) => {
            SLOT.store(slot, Ordering::Release);
            if SLOT_PID.swap(pid, Ordering::AcqRel) == 0 {
                // SAFETY: registers a plain extern "C" function with no arguments.
                unsafe { libc::atexit(release_at_exit) };
            }
            LAST.lock().clear();
            publish();
            crate::overhead::ensure_thread();
        }
        None => vlog!(
            Warn,
            "every slot of the shared segment is held; this process is not listed"
        ),
    }
}

/// Rewrites the slot if the figures moved since the last time.
pub fn publish() {
    if SLOT_PID.load(Ordering::Acquire) != std::process::id() {
        return;
    }
    let (Some(seg), Some(devices)) = (segment(), state::devices()) else {
        return;
    };
    let usage: Vec<DeviceUsage> = (0..devices.uuids.len().min(VRAMCAP_SLOT_DEVICES))
        .map(|d| {
            LEDGER
                .device(d as i32)
                .map(|l| l.snapshot())
                .unwrap_or_default()
        })
        .collect();
    let mut last = LAST.lock();
    if *last == usage || STOPPED.load(Ordering::Acquire) {
        return;
    }
    let entries: Vec<VramcapDevice> = usage
        .iter()
        .zip(&devices.raw_uuids)
        .map(|(u, uuid)| VramcapDevice {
            uuid: *uuid,
            charged: u.charged,
            requested: u.requested,
            cap: u.cap.unwrap_or(u64::MAX),
            peak: u.peak,
            context: u.context,
            allocations: u.allocations,
            refusals: u.refusals,
            last_refused_bytes: u.last_refused_bytes,
            last_refused_unix_ms: u.last_refused_unix_ms,
            reserved: 0,
        })
        .collect();
    seg.write_devices(SLOT.load(Ordering::Acquire), &entries);
    *last = usage;
}

/// Serialises this process's requests: the slot holds one, so threads that meet a full device at once
/// must add up into it rather than overwrite each other.
static POSTING: Lock<()> = Lock::new(());

/// Posts a request for `bytes` on the device `uuid` for the unloader; returns its sequence number, or
/// `None` if this process has no slot. While an earlier request for the same device is unanswered, the
/// new one asks for both (the sum), so one answer serves every waiting thread (see [`answer_to`]).
pub fn post_request(uuid: [u8; 16], bytes: u64) -> Option<u32> {
    if SLOT_PID.load(Ordering::Acquire) != std::process::id() {
        return None;
    }
    let seg = segment()?;
    let slot = SLOT.load(Ordering::Acquire);
    let _posting = POSTING.lock();
    let total = match seg.pending_request(slot) {
        Some(pending) if pending.uuid == uuid => pending.bytes.saturating_add(bytes),
        _ => bytes,
    };
    Some(seg.post_request(slot, uuid, total))
}

/// The unloader's answer to request `seq`, or to a later one that covered it, once given.
pub fn answer_to(seq: u32) -> Option<u32> {
    segment()?.answer_since(SLOT.load(Ordering::Acquire), seq)
}

/// In a forked child: what the parent published is not ours (its slot follows the PID).
///
/// # Safety
/// Only from the fork child handler (`crate::fork`): one thread, no guard of these locks held.
pub unsafe fn reset_after_fork() {
    // SAFETY: the caller's guarantee.
    unsafe {
        LAST.reset_after_fork(Vec::new());
        POSTING.reset_after_fork(());
    }
}
