//! vramcap's core: what the preload library and the command-line tools share.
//!
//! - [`size`]: human sizes (`1.5GiB`, `25%`);
//! - [`config`]: the environment contract (`VRAMCAP_LIMIT`, …);
//! - [`charge`]: what the driver really takes for an allocation;
//! - [`ledger`]: per-device counts with the atomic reserve-then-commit cap check;
//! - [`pages`]: which shared pages hold live small allocations;
//! - [`process`]: what `/proc` says about a process, to verify a slot's claims;
//! - [`policy`]: whom the priority unloader asks to give memory back, in which order;
//! - [`addr_map`]: which device pointer was charged what, lock-free, for the hot path;
//! - [`tracker`]: which handle was charged what (a locked map, for the rarer handles);
//! - [`lock`]: a mutex that a forked child can repair;
//! - [`striped`]: counters that many threads bump without sharing a cache line;
//! - [`shm`]: the shared segment every capped process publishes its figures in;
//! - [`log`]: `vramcap:` lines on stderr;
//! - `status` (with the `cli` feature): the view behind `vramcap status` and `vramcap watch`.
//!
//! Nothing here talks to the driver: the hooks live in the `preload` crate, the binaries in `src/bin`.

pub mod addr_map;
pub mod charge;
pub mod config;
pub mod ledger;
pub mod lock;
pub mod log;
pub mod pages;
pub mod policy;
pub mod process;
pub mod shm;
pub mod size;
#[cfg(feature = "cli")]
pub mod status;
pub mod striped;
pub mod tracker;
