//! This process's ledger: every device's counts (`vramcap_core::accounting::ledger`). The bottom of the crate: every
//! layer charges or reads it, and it calls nothing of ours.

use vramcap_core::accounting::ledger::Ledger;

/// Every device's counts for this process.
pub static LEDGER: Ledger = Ledger::new();
