//! The background thread, and what it does: publishing this process's figures in the shared segment
//! ([`publish`]) every tick, and measuring what the driver holds outside our counts ([`measure`], from
//! [`nvml`]) every [`TICKS_PER_READING`] ticks. The cap check asks [`measure`] for a reading itself near
//! the cap. Below the cap check: it reads the registries, the device table and the ledger, never a hook.

pub mod measure;
pub mod nvml;
pub mod publish;

use crate::phase;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;
use vramcap_core::vlog;

/// The background thread's tick (publishing), and how many ticks make one NVML period (200 ms).
const TICK: Duration = Duration::from_millis(10);
const TICKS_PER_READING: u64 = 20;
/// The PID whose thread is running; a forked child starts its own.
static THREAD_PID: AtomicI32 = AtomicI32::new(0);

/// Lists this process in the shared segment (once per process, at a successful `cuInit`) and starts the
/// background thread that keeps its slot current.
pub fn join() {
    if publish::join() {
        ensure_thread();
    }
}

/// Measures `dev` from now on (its first context was made), if NVML readings are on.
pub fn watch(dev: i32) {
    if !phase::config().is_some_and(|c| c.nvml) {
        return;
    }
    if measure::watch(dev) {
        ensure_thread();
    }
}

/// Stops measuring `dev` (its last context is gone).
pub fn unwatch(dev: i32) {
    measure::unwatch(dev);
}

/// Starts this process's background thread (publishing, and NVML readings of watched devices).
pub fn ensure_thread() {
    let pid = std::process::id() as i32;
    if THREAD_PID.swap(pid, Ordering::AcqRel) != pid {
        let spawned = std::thread::Builder::new()
            .name("vramcap".into())
            .spawn(move || crate::guard::quiet(|| run(pid)));
        if let Err(e) = spawned {
            vlog!(
                Warn,
                "cannot start the background thread ({e}); context memory stays at the estimate"
            );
        }
    }
}

fn run(pid: i32) {
    // Our queries from this thread must never invalidate a program's stream capture.
    crate::driver::relax_this_thread();
    let mut misses = 0u32;
    let mut tick = 0u64;
    while std::process::id() as i32 == pid {
        publish::publish();
        if tick.is_multiple_of(TICKS_PER_READING) && phase::config().is_some_and(|c| c.nvml) {
            measure::read_due(pid, &mut misses);
        }
        tick += 1;
        std::thread::sleep(TICK);
    }
}
