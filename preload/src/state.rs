//! Start-up of the library, and the process-wide state the hooks share.
//!
//! # Phases
//! The library moves through these phases, held in one atomic; only [`start`] changes it, under a mutex:
//! - `Fresh`: nothing done yet. Set at load. The first hook that needs a real pointer calls [`start`]
//!   (never `dlsym`, which only uses the static entry table).
//! - `Ready`: the configuration is valid and the driver's entry points are resolved. Hooks count and cap.
//! - `Refusing`: a variable was malformed. The error was printed once, and hooks **fail closed**: `cuInit`,
//!   context creation and every allocation return an error, so the program can take no device memory
//!   uncapped. Calls we do not wrap still reach the driver.
//!
//! Devices (UUIDs, physical sizes, caps) are set up separately, the first time a hook needs them after the
//! driver has been initialised, because percentages and UUID keys need the driver to answer.

use crate::cuda::*;
use crate::entry_points::ENTRIES;
use crate::real::{self, Lib};
use core_lib::config::Config;
use core_lib::ledger::{DeviceLedger, Ledger, MAX_DEVICES, UNCAPPED};
use core_lib::lock::Lock;
use core_lib::vlog;
use std::ffi::c_void;
use std::sync::atomic::{AtomicPtr, AtomicU8, Ordering};
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Fresh = 0,
    Ready = 1,
    Refusing = 2,
}

static PHASE: AtomicU8 = AtomicU8::new(Phase::Fresh as u8);
static START: Lock<()> = Lock::new(());
static CONFIG: OnceLock<Config> = OnceLock::new();
static DEVICES: OnceLock<Devices> = OnceLock::new();

/// Every device's counts for this process.
pub static LEDGER: Ledger = Ledger::new();

pub fn phase() -> Phase {
    match PHASE.load(Ordering::Acquire) {
        0 => Phase::Fresh,
        1 => Phase::Ready,
        _ => Phase::Refusing,
    }
}

/// Whether hooks must fail closed because the configuration is invalid.
pub fn refusing() -> bool {
    phase() == Phase::Refusing
}

/// The error code of a refused call while the configuration is invalid.
pub const REFUSED_BY_CONFIG: CUresult = CUDA_ERROR_INVALID_VALUE;

/// Reads the configuration and resolves the driver, once.
pub fn start() -> Phase {
    let p = phase();
    if p != Phase::Fresh {
        return p;
    }
    let _guard = START.lock();
    if phase() != Phase::Fresh {
        return phase();
    }
    let next = match Config::from_env() {
        Ok(config) => {
            core_lib::log::set_level(config.log);
            resolve_driver(config.real_libcuda.as_deref());
            crate::overhead::use_membarrier();
            crate::fork::install();
            let _ = CONFIG.set(config);
            Phase::Ready
        }
        Err(e) => {
            vlog!(
                Error,
                "{e}; refusing CUDA initialisation so that nothing runs uncapped"
            );
            resolve_driver(None);
            Phase::Refusing
        }
    };
    PHASE.store(next as u8, Ordering::Release);
    next
}

fn resolve_driver(path: Option<&str>) {
    match real::open_driver(path) {
        Ok(handle) => {
            for entry in ENTRIES.iter().filter(|e| e.lib == Lib::Cuda) {
                entry
                    .real
                    .store(real::lookup(handle, entry.name), Ordering::Release);
            }
        }
        Err(e) => vlog!(Error, "cannot load the CUDA driver: {e}"),
    }
}

pub fn config() -> Option<&'static Config> {
    CONFIG.get()
}

/// The real function behind a slot, resolving the library on first use. `None` if the driver lacks it.
pub fn real_pointer(slot: &AtomicPtr<c_void>, lib: Lib, name: &str) -> Option<*mut c_void> {
    let p = slot.load(Ordering::Acquire);
    if !p.is_null() {
        return Some(p);
    }
    start();
    let mut p = slot.load(Ordering::Acquire);
    if p.is_null() && lib == Lib::Nvml {
        let handle = real::nvml_handle();
        if !handle.is_null() {
            let entry = ENTRIES
                .iter()
                .find(|e| e.name.to_bytes() == name.as_bytes())?;
            p = real::lookup(handle, entry.name);
            slot.store(p, Ordering::Release);
        }
    }
    (!p.is_null()).then_some(p)
}

/// What a shim returns when the driver lacks the function.
pub fn missing(lib: Lib) -> i32 {
    match lib {
        Lib::Cuda => CUDA_ERROR_NOT_FOUND,
        Lib::Nvml => NVML_ERROR_FUNCTION_NOT_FOUND,
    }
}

/// A real driver function we call for our own bookkeeping (not a hooked one).
pub fn driver_fn(name: &std::ffi::CStr) -> *mut c_void {
    let handle = real::handle(Lib::Cuda);
    if handle.is_null() {
        return std::ptr::null_mut();
    }
    real::lookup(handle, name)
}

/// The devices this process sees, with their caps applied to [`LEDGER`].
pub struct Devices {
    pub uuids: Vec<String>,
    pub raw_uuids: Vec<[u8; 16]>,
    pub totals: Vec<u64>,
}

impl Devices {
    pub fn ordinal_of_uuid(&self, uuid: &str) -> Option<i32> {
        self.uuids
            .iter()
            .position(|u| u.eq_ignore_ascii_case(uuid))
            .map(|i| i as i32)
    }
}

/// The devices, set up on first call once the driver is initialised.
pub fn devices() -> Option<&'static Devices> {
    if let Some(d) = DEVICES.get() {
        return Some(d);
    }
    let _guard = START.lock();
    if let Some(d) = DEVICES.get() {
        return Some(d);
    }
    let d = crate::driver::discover_devices()?;
    let config = config()?;
    for (ordinal, uuid) in d.uuids.iter().enumerate() {
        let Some(ledger) = LEDGER.device(ordinal as i32) else {
            break;
        };
        let cap = config
            .limit
            .for_device(ordinal as u32, uuid)
            .map(|size| size.resolve(d.totals[ordinal]))
            .unwrap_or(UNCAPPED);
        ledger.set_cap(cap);
        if cap != UNCAPPED {
            vlog!(
                Info,
                "device {ordinal} ({uuid}): cap {}",
                core_lib::size::human(cap)
            );
        }
    }
    if d.uuids.len() > MAX_DEVICES {
        vlog!(Warn, "only the first {MAX_DEVICES} devices are counted");
    }
    check_absent_keys(config, &d);
    Some(DEVICES.get_or_init(|| d))
}

/// A per-device limit that names a device this process does not see leaves that device's memory
/// uncapped wherever it went: a configuration error, unless `VRAMCAP_ALLOW_ABSENT_DEVICES` allows it.
/// Called with the start lock held, once the driver answers.
fn check_absent_keys(config: &Config, d: &Devices) {
    let absent = config.limit.absent_keys(&d.uuids);
    if absent.is_empty() {
        return;
    }
    let value = std::env::var(core_lib::config::ENV_LIMIT).unwrap_or_default();
    let line = core_lib::config::absent_devices_error(
        core_lib::config::ENV_LIMIT,
        &value,
        &absent,
        &d.uuids,
    );
    if config.allow_absent_devices {
        vlog!(Warn, "{line} (allowed)");
    } else {
        vlog!(
            Error,
            "{line}; refusing CUDA initialisation so that nothing runs uncapped"
        );
        PHASE.store(Phase::Refusing as u8, Ordering::Release);
    }
}

/// The ledger of a device, after making sure caps are applied.
pub fn ledger(dev: CUdevice) -> Option<&'static DeviceLedger> {
    devices()?;
    LEDGER.device(dev)
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
