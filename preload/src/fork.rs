//! `fork` in a capped process with busy threads. The child starts with one thread, the one that forked:
//! whatever the others held (a lock, an operation in flight, a half-made record) stays so in the child
//! for ever, which made every forked child of a busy process hang at its first allocation. So, in the
//! child, right after the fork, every lock of ours is repaired (see `vramcap_core::lock`) and everything they
//! or the lock-free maps guarded starts empty, without being read: the child holds no device memory of
//! the parent's. Its ledger, pointer and handle records, pools, graphs, limits, contexts and captures are
//! empty (its caps stay), the per-thread stripes are its thread's alone, and no operation or reading is in
//! flight. A child that uses CUDA creates its own context, charged from scratch; its slot in the segment
//! and its background thread follow its PID.

use crate::hooks;
use crate::ledger::LEDGER;
use std::sync::atomic::{AtomicBool, Ordering};
use vramcap_core::accounting::ledger::MAX_DEVICES;

/// Registers the handler, once.
pub fn install() {
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    if !INSTALLED.swap(true, Ordering::AcqRel) {
        // SAFETY: registers a plain extern "C" function with no arguments, run in the child.
        unsafe { libc::pthread_atfork(None, None, Some(child)) };
    }
}

extern "C" fn child() {
    // SAFETY: this is the fork child handler: the child has one thread (this one), which holds no guard
    // of ours (fork is never called from inside a hook).
    unsafe {
        crate::phase::reset_after_fork();
        crate::in_flight::reset_after_fork();
        crate::background::measure::reset_after_fork();
        crate::registry::pointers::PTRS.reset_after_fork();
        crate::registry::pointers::PAGES.reset_after_fork();
        hooks::vmm::reset_after_fork();
        hooks::array::reset_after_fork();
        crate::registry::pools::reset_after_fork();
        hooks::context::reset_after_fork();
        hooks::info::reset_after_fork();
        crate::background::publish::reset_after_fork();
        crate::registry::graphs::reset_after_fork();
        crate::registry::limits::reset_after_fork();
    }
    vramcap_core::accounting::striped::reset_after_fork();
    crate::driver::forget_captures();
    for dev in 0..MAX_DEVICES as i32 {
        if let Some(ledger) = LEDGER.device(dev) {
            ledger.reset_after_fork();
        }
    }
}
