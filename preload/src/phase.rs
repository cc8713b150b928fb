//! The library's start-up phase and its configuration: the state every layer reads, held at the bottom so
//! that reading it never calls up. [`crate::startup`] moves the phase; everything else only reads it.
//!
//! # Phases
//! The library moves through these phases, held in one atomic; only `startup::start` changes it, under
//! [`start_lock`] (and the device table may refuse, see [`refuse`]):
//! - `Fresh`: nothing done yet. Set at load. Every shim calls `startup::start` before its hook runs
//!   (never `dlsym`, which only uses the static entry table), so no hook sees this phase.
//! - `Ready`: the configuration is valid and the driver's entry points are resolved. Hooks count and cap.
//! - `Refusing`: a variable was malformed. The error was printed once, and hooks **fail closed**: `cuInit`,
//!   context creation and every allocation return an error, so the program can take no device memory
//!   uncapped. Calls we do not wrap still reach the driver.

use crate::cuda::{CUresult, CUDA_ERROR_INVALID_VALUE};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use vramcap_core::config::Config;
use vramcap_core::lock::{Guard, Lock};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Fresh = 0,
    Ready = 1,
    Refusing = 2,
}

static PHASE: AtomicU8 = AtomicU8::new(Phase::Fresh as u8);
/// Held by the start and by the set-up of the device table, so that each runs once.
static START: Lock<()> = Lock::new(());
static CONFIG: OnceLock<Config> = OnceLock::new();

/// The error code of a refused call while the configuration is invalid.
pub const REFUSED_BY_CONFIG: CUresult = CUDA_ERROR_INVALID_VALUE;

pub fn current() -> Phase {
    match PHASE.load(Ordering::Acquire) {
        0 => Phase::Fresh,
        1 => Phase::Ready,
        _ => Phase::Refusing,
    }
}

/// Whether hooks must fail closed because the configuration is invalid.
pub fn refusing() -> bool {
    current() == Phase::Refusing
}

/// The configuration, once read and found valid.
pub fn config() -> Option<&'static Config> {
    CONFIG.get()
}

/// The lock under which the phase moves and the device table is set up.
pub fn start_lock() -> Guard<'static, ()> {
    START.lock()
}

/// The end of the start: the phase reached, with the configuration if it was valid. Called once, under
/// [`start_lock`].
pub fn started(next: Phase, config: Option<Config>) {
    if let Some(config) = config {
        let _ = CONFIG.set(config);
    }
    PHASE.store(next as u8, Ordering::Release);
}

/// The devices disproved the configuration (a limit for a device not seen): fail closed from now on.
pub fn refuse() {
    PHASE.store(Phase::Refusing as u8, Ordering::Release);
}

/// In a forked child: a start under way on another thread is not (the configuration and devices, once
/// set, stay).
///
/// # Safety
/// Only from the fork child handler (`crate::fork`): one thread, no guard of these locks held.
pub unsafe fn reset_after_fork() {
    // SAFETY: the caller's guarantee.
    unsafe { START.reset_after_fork(()) };
}
