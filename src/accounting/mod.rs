//! Accounting: what an allocation really costs and the per-device counts it is held against.
//!
//! - [`charge`]: what the driver really takes for an allocation (2 MiB pages, packed small ones);
//! - [`pages`]: which shared pages hold live small allocations;
//! - [`striped`]: counters that many threads bump without sharing a cache line;
//! - [`ledger`]: per-device counts with the atomic reserve-then-commit cap check;
//! - [`figures`]: what a ledger shows of one device, the one spelling of the per-device figures.

pub mod charge;
pub mod figures;
pub mod ledger;
pub mod pages;
pub mod striped;
