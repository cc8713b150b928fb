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
use core_lib::vlog;
use parking_lot::Mutex;
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
static START: Mutex<()> = Mutex::new(());
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
    warn_unmatched_keys(config, &d);
    Some(DEVICES.get_or_init(|| d))
}

fn warn_unmatched_keys(config: &Config, d: &Devices) {
    use core_lib::config::{DeviceKey, Limit};
    if let Limit::PerDevice(entries) = &config.limit {
        for (key, _) in entries {
            let seen = match key {
                DeviceKey::Ordinal(o) => (*o as usize) < d.uuids.len(),
                DeviceKey::Uuid(u) => d.ordinal_of_uuid(u).is_some(),
            };
            if !seen {
                vlog!(
                    Warn,
                    "VRAMCAP_LIMIT names device {key:?}, which this process does not see"
                );
            }
        }
    }
}

/// The ledger of a device, after making sure caps are applied.
pub fn ledger(dev: CUdevice) -> Option<&'static DeviceLedger> {
    devices()?;
    LEDGER.device(dev)
}
