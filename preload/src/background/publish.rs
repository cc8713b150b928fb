//! Publishes this process's figures in the shared segment (`vramcap_core::shm`) for `vramcap status`, the
//! unloader and C readers.
//!
//! The slot is claimed at the first successful `cuInit` (a forked child that uses CUDA claims its own),
//! released at exit, and rewritten by the background thread whenever the figures moved (checked every
//! 10 ms), so a reader is at most one tick behind the ledger. The segment is optional and untrusted: if
//! it cannot be opened or is refused (another owner, another layout), one line says why and the library
//! keeps capping on its own. Once a second, the thread checks that the path still names a whole segment
//! and that the slot is still ours; if the file was deleted, replaced, truncated or overwritten, the
//! process moves to the segment at the path now (making a new one if it may).

use crate::devices;
use crate::ledger::LEDGER;
use crate::phase;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use vramcap_core::accounting::figures::DeviceFigures;
use vramcap_core::lock::Lock;
use vramcap_core::log::monotonic_ns;
use vramcap_core::shm::{
    segment_mode, segment_path, Identity, Segment, VramcapDevice, VRAMCAP_SLOT_DEVICES,
};
use vramcap_core::vlog;

/// Where this process is listed.
struct Listing {
    seg: Arc<Segment>,
    slot: usize,
    /// The PID that holds the slot (a forked child must claim its own).
    pid: u32,
}

/// What this process publishes as, and where, fixed at the first `cuInit` (the environment is not read
/// again from the background thread, where it could race with the program's `setenv`).
struct Place {
    who: Identity,
    path: PathBuf,
    mode: u32,
}

static PLACE: Lock<Option<Place>> = Lock::new(None);
static LISTING: Lock<Option<Listing>> = Lock::new(None);
/// What was last published, to skip rewriting unchanged figures.
static LAST: Lock<Vec<DeviceFigures>> = Lock::new(Vec::new());
/// When the path and the slot were last checked.
static CHECKED_NS: AtomicU64 = AtomicU64::new(0);
/// A failure to list this process was said once; later ones are quieter.
static WARNED: AtomicBool = AtomicBool::new(false);
const CHECK_PERIOD_NS: u64 = 1_000_000_000;

/// Set at exit, before the slot is released: the background thread (which runs on while exit handlers
/// do) must never write figures into a slot that a new owner may already hold.
static STOPPED: AtomicBool = AtomicBool::new(false);

extern "C" fn release_at_exit() {
    let pid = std::process::id();
    // A publication under way holds LAST: wait for it, then let none start.
    let _last = LAST.lock();
    STOPPED.store(true, Ordering::Release);
    if let Some(l) = LISTING.lock().as_ref().filter(|l| l.pid == pid) {
        l.seg.release(l.slot);
    }
}

/// The segment and slot this process is listed in, if it is.
fn listing() -> Option<(Arc<Segment>, usize)> {
    let pid = std::process::id();
    LISTING
        .lock()
        .as_ref()
        .filter(|l| l.pid == pid)
        .map(|l| (Arc::clone(&l.seg), l.slot))
}

/// Opens the segment at `place` and claims a slot there.
fn list(place: &Place) -> Result<Listing, String> {
    let seg = Segment::open_or_create(&place.path, place.mode).map_err(|e| e.to_string())?;
    let slot = seg
        .claim(&place.who)
        .ok_or("every slot of the shared segment is held")?;
    Ok(Listing {
        seg: Arc::new(seg),
        slot,
        pid: std::process::id(),
    })
}

fn say_unlisted(why: &str) {
    if !WARNED.swap(true, Ordering::AcqRel) {
        vlog!(
            Warn,
            "shared segment not used: {why}; capping continues without it"
        );
    } else {
        vlog!(Debug, "still not listed in the shared segment: {why}");
    }
}

/// Claims this process's slot (once per process). Returns whether the background thread, which keeps
/// the slot current, is wanted: not if this process was listed already or no segment can be named.
pub fn join() -> bool {
    let pid = std::process::id();
    if listing().is_some() {
        return false;
    }
    let config = phase::config();
    let mut who = Identity::of_this_process(
        config.and_then(|c| c.name.as_deref()),
        config.map_or(0, |c| c.priority),
    );
    if let Some(c) = config {
        who = who
            .declaring(c.protect, c.suspendable, &c.unload)
            .reloading(&c.reload);
    }
    let place = match segment_mode() {
        Ok(mode) => Place {
            who,
            path: segment_path(),
            mode,
        },
        Err(e) => {
            say_unlisted(&e.to_string());
            return false;
        }
    };
    static AT_EXIT: AtomicBool = AtomicBool::new(false);
    match list(&place) {
        Ok(listing) => {
            debug_assert_eq!(listing.pid, pid);
            *LISTING.lock() = Some(listing);
            if !AT_EXIT.swap(true, Ordering::AcqRel) {
                // SAFETY: registers a plain extern "C" function with no arguments.
                unsafe { libc::atexit(release_at_exit) };
            }
        }
        Err(why) => say_unlisted(&why),
    }
    *PLACE.lock() = Some(place);
    CHECKED_NS.store(monotonic_ns(), Ordering::Relaxed);
    LAST.lock().clear();
    publish();
    true
}

/// Once a second: moves this process to the segment at its path if the one it is listed in is no longer
/// there or whole, or if its slot was lost; and lists it if it could not be listed before.
fn check_listing() {
    let now = monotonic_ns();
    if now.saturating_sub(CHECKED_NS.load(Ordering::Relaxed)) < CHECK_PERIOD_NS {
        return;
    }
    CHECKED_NS.store(now, Ordering::Relaxed);
    let place = PLACE.lock();
    let Some(place) = place.as_ref() else { return };
    let current = listing();
    let fine = current
        .as_ref()
        .is_some_and(|(seg, _)| seg.is_at(&place.path) && seg.still_holds());
    if fine || STOPPED.load(Ordering::Acquire) {
        return;
    }
    match list(place) {
        Ok(fresh) => {
            vlog!(
                Info,
                "listed again in the shared segment at {}",
                place.path.display()
            );
            let mut last = LAST.lock();
            if STOPPED.load(Ordering::Acquire) {
                fresh.seg.release(fresh.slot);
                return;
            }
            let old = LISTING.lock().replace(fresh);
            if let Some(old) = old.filter(|l| l.pid == std::process::id()) {
                old.seg.release(old.slot);
            }
            // Publish everything again in the new slot.
            last.clear();
        }
        Err(why) if current.is_none() => say_unlisted(&why),
        Err(why) => vlog!(
            Debug,
            "the shared segment at {} changed and cannot be used ({why}); staying where this process is listed",
            place.path.display()
        ),
    }
}

/// Rewrites the slot if the figures moved since the last time.
pub fn publish() {
    check_listing();
    let (Some((seg, slot)), Some(devices)) = (listing(), devices::get()) else {
        return;
    };
    let usage: Vec<DeviceFigures> = (0..devices.uuids.len().min(VRAMCAP_SLOT_DEVICES))
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
        .map(|(u, uuid)| VramcapDevice::new(*uuid, u))
        .collect();
    seg.write_devices(slot, &entries);
    *last = usage;
}

/// Serialises this process's requests: the slot holds one, so threads that meet a full device at once
/// must add up into it rather than overwrite each other.
static POSTING: Lock<()> = Lock::new(());

/// A posted request: where it was posted, and its sequence number.
pub struct Ticket {
    seg: Arc<Segment>,
    slot: usize,
    seq: u32,
}

/// Posts a request for `bytes` on the device `uuid` for the unloader, or `None` if this process has no
/// slot. While an earlier request for the same device is unanswered, the new one asks for both (the
/// sum), so one answer serves every waiting thread (see [`answer_to`]).
pub fn post_request(uuid: [u8; 16], bytes: u64) -> Option<Ticket> {
    let (seg, slot) = listing()?;
    let _posting = POSTING.lock();
    let total = match seg.pending_request(slot) {
        Some(pending) if pending.uuid == uuid => pending.bytes.saturating_add(bytes),
        _ => bytes,
    };
    let seq = seg.post_request(slot, uuid, total);
    (seq != 0).then_some(Ticket { seg, slot, seq })
}

/// The unloader's answer to the request, or to a later one that covered it, once given.
pub fn answer_to(ticket: &Ticket) -> Option<u32> {
    ticket.seg.answer_since(ticket.slot, ticket.seq)
}

/// In a forked child: what the parent published is not ours (its slot follows the PID, and record
/// locks are not inherited).
///
/// # Safety
/// Only from the fork child handler (`crate::fork`): one thread, no guard of these locks held.
pub unsafe fn reset_after_fork() {
    // SAFETY: the caller's guarantee.
    unsafe {
        LAST.reset_after_fork(Vec::new());
        POSTING.reset_after_fork(());
        LISTING.reset_after_fork(None);
        PLACE.reset_after_fork(None);
    }
    CHECKED_NS.store(0, Ordering::Relaxed);
}
