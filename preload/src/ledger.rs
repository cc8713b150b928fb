//! This process's ledger: every device's counts (`core_lib::ledger`). The bottom of the crate: every
//! layer charges or reads it, and it calls nothing of ours.

use core_lib::ledger::Ledger;

/// Every device's counts for this process.
pub static LEDGER: Ledger = Ledger::new();
