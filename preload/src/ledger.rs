//! This process's ledger: every device's counts (`vramcap_core::accounting::ledger`). The bottom of the crate: every
//! layer charges or reads it, and it calls nothing of ours.

use vramcap_core::accounting::ledger::Ledger;

/// Every device's counts for this process.
pub static LEDGER: Ledger = Ledger::new();

/// Device ordinals for unit tests, one set per test: the test binary is one process, so [`LEDGER`] and
/// every per-device registry are shared by tests running at once.
#[cfg(test)]
pub(crate) fn unused_device() -> i32 {
    use std::sync::atomic::{AtomicI32, Ordering};
    static NEXT: AtomicI32 = AtomicI32::new(0);
    let dev = NEXT.fetch_add(1, Ordering::Relaxed);
    assert!(
        dev < vramcap_core::accounting::ledger::MAX_DEVICES as i32,
        "more unit-test devices than the ledger has"
    );
    dev
}
