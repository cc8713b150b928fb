//! The in-flight lock: every allocating or freeing hook marks its bookkeeping and driver call as in
//! flight ([`enter`]), and a measurement of what the driver holds outside our counts waits for a quiet
//! point ([`quiet`]), when none is, because otherwise the driver and our count could disagree for a
//! moment and the difference would be mistaken for context memory (see `crate::background::measure`).
//!
//! At the bottom with the ledger: it calls nothing of ours but the per-thread stripe.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use vramcap_core::accounting::striped::{stripe, Padded, Stripe, STRIPES};
use vramcap_core::lock::Lock;
use vramcap_core::vlog;

/// Read-held by every allocating or freeing hook while its bookkeeping and driver call are in flight;
/// write-held by a reading. A big-reader lock: a reader touches only its thread's stripe (and reads the
/// writer flag), so hooks on many threads do not share a cache line; the rare writer sets the flag and
/// waits for every stripe to drain.
///
/// Reader and writer each store a flag and then read the other's (Dekker), which needs a full fence on
/// both sides. The reader's side runs on every allocation, so where the kernel offers it, the writer pays
/// for both: `membarrier(PRIVATE_EXPEDITED)` makes every running thread of the process execute a full fence,
/// so a reader on a stripe it owns gets by with a plain store and a compiler fence (the asymmetric fence
/// of liburcu and folly). Without membarrier, or on a shared stripe, readers use locked read-modify-writes.
struct OpsLock {
    readers: [Padded<AtomicU64>; STRIPES],
    writer: AtomicBool,
    writers: Lock<()>,
    /// Set once, at start-up, when membarrier is registered.
    asymmetric: AtomicBool,
}

static OPS: OpsLock = OpsLock {
    readers: [const { Padded(AtomicU64::new(0)) }; STRIPES],
    writer: AtomicBool::new(false),
    writers: Lock::new(()),
    asymmetric: AtomicBool::new(false),
};

const MEMBARRIER_CMD_QUERY: libc::c_int = 0;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

fn membarrier(cmd: libc::c_int) -> libc::c_long {
    // SAFETY: membarrier(2) takes (cmd, flags, cpu_id) and touches no memory of ours.
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) }
}

/// Turns the asymmetric fence on if the kernel has it. Called once at start-up, before any hook can
/// hold the lock (so no reader is mid-way while the mode changes).
pub fn use_membarrier() {
    let offered = membarrier(MEMBARRIER_CMD_QUERY);
    let wanted = (MEMBARRIER_CMD_PRIVATE_EXPEDITED | MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED)
        as libc::c_long;
    if offered >= 0
        && offered & wanted == wanted
        && membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0
    {
        OPS.asymmetric.store(true, Ordering::SeqCst);
    } else {
        vlog!(
            Debug,
            "membarrier unavailable; allocation hooks use locked fences"
        );
    }
}

/// In a forked child: the operations in flight were other threads', which do not exist here, and so was
/// any quiet point under way. The membarrier registration belongs to the address space, so the child
/// registers again or goes back to locked fences.
///
/// # Safety
/// Only from the fork child handler (`crate::fork`): one thread, no guard of these locks held.
pub unsafe fn reset_after_fork() {
    // SAFETY: the caller's guarantee.
    unsafe { OPS.writers.reset_after_fork(()) };
    for r in &OPS.readers {
        r.store(0, Ordering::SeqCst);
    }
    OPS.writer.store(false, Ordering::SeqCst);
    if OPS.asymmetric.load(Ordering::SeqCst)
        && membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) != 0
    {
        OPS.asymmetric.store(false, Ordering::SeqCst);
    }
}

/// An allocating or freeing operation in flight (see [`enter`]), on its thread's stripe.
pub struct InFlight(Stripe);

impl InFlight {
    /// The stripe of the thread running the operation, for the ledger's figures.
    pub fn stripe(&self) -> Stripe {
        self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let r = &OPS.readers[self.0.index()];
        if light(self.0) {
            r.store(r.load(Ordering::Relaxed) - 1, Ordering::Release);
        } else {
            r.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Whether a reader on stripe `s` may use the plain store (see [`OpsLock`]).
fn light(s: Stripe) -> bool {
    s.owned() && OPS.asymmetric.load(Ordering::Relaxed)
}

/// Marks an allocating or freeing driver call (with its bookkeeping) as in flight while it lives.
pub fn enter() -> InFlight {
    let s = stripe();
    let r = &OPS.readers[s.index()];
    loop {
        if light(s) {
            r.store(r.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
        } else {
            r.fetch_add(1, Ordering::SeqCst);
        }
        if !OPS.writer.load(Ordering::SeqCst) {
            return InFlight(s);
        }
        drop(InFlight(s));
        while OPS.writer.load(Ordering::Relaxed) {
            std::thread::yield_now();
        }
    }
}

/// Held while a reading is taken: no operation is in flight, none can start.
pub struct Quiet<'a>(#[allow(dead_code)] vramcap_core::lock::Guard<'a, ()>);

impl Drop for Quiet<'_> {
    fn drop(&mut self) {
        OPS.writer.store(false, Ordering::SeqCst);
    }
}

/// Stops new operations and waits for those in flight; without `wait`, gives up at once if any is.
pub fn quiet(wait: bool) -> Option<Quiet<'static>> {
    let exclusive = if wait {
        OPS.writers.lock()
    } else {
        OPS.writers.try_lock()?
    };
    OPS.writer.store(true, Ordering::SeqCst);
    if OPS.asymmetric.load(Ordering::SeqCst) && membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0 {
        // Should the kernel refuse after all, readers go back to locked fences; give those already
        // past their plain store a moment for it to drain from their store buffers.
        OPS.asymmetric.store(false, Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // Every reader's flag store is now visible here, or that reader will see ours.
    let guard = Quiet(exclusive);
    while OPS.readers.iter().any(|r| r.load(Ordering::SeqCst) != 0) {
        if !wait {
            return None;
        }
        std::thread::yield_now();
    }
    Some(guard)
}
