//! vramcap's core: what the preload library and the command-line tools share.
//!
//! - [`config`]: the environment contract (`VRAMCAP_LIMIT`, …) and human sizes (`config::size`);
//! - [`accounting`]: what an allocation really costs, and the per-device ledger with the atomic
//!   reserve-then-commit cap check;
//! - [`registry`]: which pointer and which handle was charged what;
//! - [`shm`]: the shared segment every capped process publishes its figures in, and its trust checks;
//! - [`process`]: what `/proc` says about a process, to verify a slot's claims;
//! - [`policy`]: whom the priority unloader asks to give memory back, in which order;
//! - `status` (with the `cli` feature): the view behind `vramcap status`, `watch` and the exporter;
//! - `unloader` (with the `cli` feature): the priority unloader: requests, asking workers, suspension,
//!   reload;
//! - [`thread_state`]: the one per-thread state (a thread's counter stripe, its hook guard);
//! - [`lock`]: a mutex that a forked child can repair; [`log`]: `vramcap:` lines on stderr.
//!
//! Nothing here talks to the driver: the hooks live in the `preload` crate, the binaries in `src/bin`.

pub mod accounting;
pub mod config;
pub mod lock;
pub mod log;
pub mod policy;
pub mod process;
pub mod registry;
pub mod shm;
#[cfg(feature = "cli")]
pub mod status;
pub mod thread_state;
#[cfg(feature = "cli")]
pub mod unloader;
