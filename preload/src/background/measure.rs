//! Measures what a context and everything else outside our counted allocations really costs, from the
//! per-process figure the driver reports through NVML (the figure nvidia-smi shows), so that figure stays
//! under the cap.
//!
//! A reading sets the ledger's context share to what NVML's `usedGpuMemory` for this PID holds beyond our
//! counted allocations: the context itself, module images, library workspaces, and whatever packing the
//! charge model could not see. Readings come from two places:
//! - a background thread, started with the first context, every 200 ms while our count moves and every
//!   second otherwise (a reading NVML did not answer is taken again at the next tick, a few times);
//! - the cap check itself, synchronously, when an allocation would leave less than [`NEAR_CAP`] of
//!   headroom (at most once per [`FRESH`]), because a framework can load hundreds of MiB of kernels
//!   between two background readings.
//!
//! Reading per process needs no lock shared with other processes, so start-up is never serialised. Where
//! NVML is absent or does not list our PID (another PID namespace), the estimate charged at context
//! creation stays, and a line at `info` level says so.
//!
//! A reading is taken only while no allocating or freeing driver call of this process is in flight:
//! otherwise the driver and our count could disagree for a moment, and the difference would be mistaken
//! for context memory. Every such hook marks its bookkeeping and driver call in flight
//! ([`in_flight::enter`]); a reading waits for a quiet point ([`in_flight::quiet`]). The background
//! thread only takes one when it comes at once, so it never delays the program; the cap check near the
//! cap waits for it, because
//! a process that allocates from many threads may never pause by itself. Pools are re-read first, since
//! they trim themselves at points we do not see.

use super::nvml::nvml;
use crate::devices;
use crate::in_flight;
use crate::ledger::LEDGER;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use vramcap_core::accounting::{figures::DeviceFigures, ledger::MAX_DEVICES};
use vramcap_core::lock::Lock;
use vramcap_core::log::monotonic_ns;
use vramcap_core::vlog;

/// Below this much headroom, the cap check reads NVML before it lets an allocation through.
pub const NEAR_CAP: u64 = 512 << 20;
/// Allocations at least this large near the cap always get a fresh reading first.
const ALWAYS_READ: u64 = 16 << 20;
/// How old a reading may be and still count as fresh for the cap check.
const FRESH: u64 = 20_000_000;
/// Even with no change in our count, the driver can take memory on its own (a module loaded at the first
/// launch of its kernels: 138 MiB seen on an H200 right after a program's first allocations): read again
/// after this long.
const IDLE_PERIOD: u64 = 1_000_000_000;

static WATCHED: [AtomicBool; MAX_DEVICES] = [const { AtomicBool::new(false) }; MAX_DEVICES];
static LAST_READING_NS: [AtomicU64; MAX_DEVICES] = [const { AtomicU64::new(0) }; MAX_DEVICES];
/// Our count at the last reading, so an idle process is not read again and again.
static LAST_COUNTED: [AtomicU64; MAX_DEVICES] = [const { AtomicU64::new(u64::MAX) }; MAX_DEVICES];
/// Readings in a row that NVML did not answer, and how many are retried at once.
static MISSED: [AtomicU32; MAX_DEVICES] = [const { AtomicU32::new(0) }; MAX_DEVICES];
const RETRIES: u32 = 25;

#[derive(Clone, Copy, Default)]
struct Readings {
    /// NVML's handle for the device, once found.
    handle: usize,
}

static READINGS: Lock<[Readings; MAX_DEVICES]> = Lock::new([Readings { handle: 0 }; MAX_DEVICES]);

/// Reads `dev` from now on (its first context was made).
pub fn watch(dev: i32) -> bool {
    let Some(flag) = usize::try_from(dev).ok().and_then(|d| WATCHED.get(d)) else {
        return false;
    };
    flag.store(true, Ordering::Relaxed);
    true
}

pub fn unwatch(dev: i32) {
    if let Some(flag) = usize::try_from(dev).ok().and_then(|d| WATCHED.get(d)) {
        flag.store(false, Ordering::Relaxed);
    }
    if let Ok(d) = usize::try_from(dev) {
        if let Some(r) = READINGS.lock().get_mut(d) {
            *r = Readings::default();
        }
    }
}

fn counted(u: DeviceFigures) -> u64 {
    u.charged.saturating_sub(u.context)
}

/// Takes one reading for `dev` and applies it; `wait` says whether to wait for in-flight operations (the
/// caller must hold none). Returns whether NVML answered for this process.
pub fn measure(dev: i32, wait: bool) -> bool {
    let (Ok(i), Some(ledger)) = (usize::try_from(dev), LEDGER.device(dev)) else {
        return false;
    };
    if !WATCHED[i].load(Ordering::Relaxed) {
        return false;
    }
    let Some(nvml) = nvml() else { return false };
    let Some(uuid) = devices::get().and_then(|d| d.uuids.get(i).cloned()) else {
        return false;
    };
    // The device's handle before the quiet point: its first lookup can be slow, and nothing waits on it.
    let handle = {
        let mut readings = READINGS.lock();
        let r = &mut readings[i];
        if r.handle == 0 {
            r.handle = nvml.device(&uuid).unwrap_or(0);
        }
        r.handle
    };
    if handle == 0 {
        return false;
    }
    // The quiet point first, and only then our own lock: hooks that hold an operation may take READINGS.
    let Some(_quiet) = in_flight::quiet(wait) else {
        return true;
    };
    let readings = READINGS.lock();
    let r = &readings[i];
    crate::registry::pools::refresh(dev);
    crate::registry::graphs::refresh(dev);
    let before = counted(ledger.snapshot());
    let used = nvml.used_by(r.handle, std::process::id());
    LAST_READING_NS[i].store(monotonic_ns(), Ordering::Relaxed);
    // A reading NVML could not answer (a process it does not list yet, before its first launch) is taken
    // again at the next tick, a few times, before our count must move again to be read.
    let missed = MISSED[i].load(Ordering::Relaxed);
    if used.is_some() || missed >= RETRIES {
        LAST_COUNTED[i].store(before, Ordering::Relaxed);
    }
    let Some(used) = used else {
        MISSED[i].store(missed.saturating_add(1), Ordering::Relaxed);
        return false;
    };
    MISSED[i].store(0, Ordering::Relaxed);
    if !WATCHED[i].load(Ordering::Relaxed) {
        return true;
    }
    let measured = beside(dev, used, before);
    vlog!(Debug, "device {dev}: NVML shows {used} bytes for this process, {before} counted: {measured} beside");
    ledger.set_context(measured);
    true
}

/// The context's share: what NVML shows beyond our counts. A malloc heap that was set but may not be
/// taken yet (see `registry::limits`) is in our counts before it is in NVML's figure: it is taken once
/// the figure beside the rest has grown by it from the share when it was set, and until then the share
/// is read without it.
fn beside(dev: i32, used: u64, counted: u64) -> u64 {
    let Some((heap, floor)) = crate::registry::limits::pending_heap(dev) else {
        return used.saturating_sub(counted);
    };
    let without_heap = used.saturating_sub(counted.saturating_sub(heap));
    if without_heap >= floor.saturating_add(heap) {
        crate::registry::limits::heap_taken(dev);
        without_heap - heap
    } else {
        without_heap
    }
}

/// Called by an allocating hook, before its own operation starts, when an allocation of `bytes` would
/// leave less than [`NEAR_CAP`] of headroom. A reading older than [`FRESH`] is renewed; so is any reading
/// before an allocation of [`ALWAYS_READ`] or more, because a framework can load a module of tens of MiB
/// between two large allocations a millisecond apart (PyTorch's first launch of a kernel, seen on an
/// H100), and such allocations are few.
pub fn measure_if_stale(dev: i32, bytes: u64) {
    let Some(last) = usize::try_from(dev)
        .ok()
        .and_then(|d| LAST_READING_NS.get(d))
    else {
        return;
    };
    if bytes >= ALWAYS_READ || monotonic_ns().saturating_sub(last.load(Ordering::Relaxed)) > FRESH {
        measure(dev, true);
    }
}

/// Whether the background thread should read `dev` now: our count moved since the last reading, or the
/// last one is older than [`IDLE_PERIOD`]. A process that allocates nothing is left alone.
fn due(dev: usize) -> bool {
    let Some(ledger) = LEDGER.device(dev as i32) else {
        return false;
    };
    counted(ledger.snapshot()) != LAST_COUNTED[dev].load(Ordering::Relaxed)
        || monotonic_ns().saturating_sub(LAST_READING_NS[dev].load(Ordering::Relaxed)) > IDLE_PERIOD
}

/// The background thread's reading: every watched device that is [`due`]; `misses` counts readings NVML
/// did not answer, and the 25th says so once.
pub fn read_due(pid: i32, misses: &mut u32) {
    for (dev, watched) in WATCHED.iter().enumerate() {
        if watched.load(Ordering::Relaxed) && due(dev) && !measure(dev as i32, false) {
            *misses += 1;
            if *misses == 25 && nvml().is_some() {
                vlog!(
                    Info,
                    "NVML does not list PID {pid}; context memory stays at the estimate"
                );
            }
        }
    }
}

/// In a forked child: no reading is under way, and no device is watched yet.
///
/// # Safety
/// Only from the fork child handler (`crate::fork`): one thread, no guard of these locks held.
pub unsafe fn reset_after_fork() {
    // SAFETY: the caller's guarantee.
    unsafe { READINGS.reset_after_fork([Readings::default(); MAX_DEVICES]) };
    for dev in 0..MAX_DEVICES {
        WATCHED[dev].store(false, Ordering::Relaxed);
        LAST_READING_NS[dev].store(0, Ordering::Relaxed);
        LAST_COUNTED[dev].store(u64::MAX, Ordering::Relaxed);
        MISSED[dev].store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::unused_device;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_contexts_share_is_what_nvml_shows_beyond_our_counts() {
        let dev = unused_device();
        assert_eq!(beside(dev, 812 * MIB, 512 * MIB), 300 * MIB);
        assert_eq!(beside(dev, 100 * MIB, 512 * MIB), 0, "never negative");
    }

    #[test]
    fn a_pending_heap_is_left_out_until_nvml_shows_it_taken() {
        let dev = unused_device();
        {
            let mut limits = crate::registry::limits::lock();
            let d = limits.device(dev).unwrap();
            d.heap_charge = 1024 * MIB;
            d.heap_pending = true;
            d.context_floor = 300 * MIB;
        }
        // Counted: 512 MiB of allocations and the 1 GiB heap. Before the first launch NVML shows the
        // context and the allocations only.
        let counted = 1536 * MIB;
        assert_eq!(beside(dev, 812 * MIB, counted), 300 * MIB);
        assert!(crate::registry::limits::pending_heap(dev).is_some());
        // The launch took 1026 MiB for the 1 GiB heap (measured on an H200).
        assert_eq!(beside(dev, 1838 * MIB, counted), 302 * MIB);
        assert_eq!(crate::registry::limits::pending_heap(dev), None);
        assert_eq!(beside(dev, 1838 * MIB, counted), 302 * MIB, "and stays so");
    }
}
