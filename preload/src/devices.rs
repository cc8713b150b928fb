//! The devices this process sees, set up the first time a hook needs them after the driver has been
//! initialised (percentages and UUID keys need the driver to answer), with their caps applied to the
//! [`LEDGER`]; and the questions that need that table: which device a call is on.
//!
//! A registry: it calls the driver, the phase and the ledger, never up.

use crate::cuda::*;
use crate::driver::{self, Devices, Stream};
use crate::ledger::LEDGER;
use crate::phase;
use std::sync::OnceLock;
use vramcap_core::accounting::ledger::{DeviceLedger, MAX_DEVICES, UNCAPPED};
use vramcap_core::config::Config;
use vramcap_core::vlog;

static DEVICES: OnceLock<Devices> = OnceLock::new();

/// The devices, set up on first call once the driver is initialised.
pub fn get() -> Option<&'static Devices> {
    if let Some(d) = DEVICES.get() {
        return Some(d);
    }
    let _guard = phase::start_lock();
    if let Some(d) = DEVICES.get() {
        return Some(d);
    }
    let d = driver::discover_devices()?;
    let config = phase::config()?;
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
                vramcap_core::config::size::human(cap)
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
    let value = std::env::var(vramcap_core::config::ENV_LIMIT).unwrap_or_default();
    let line = vramcap_core::config::absent_devices_error(
        vramcap_core::config::ENV_LIMIT,
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
        phase::refuse();
    }
}

/// The ledger of a device, after making sure caps are applied.
pub fn ledger(dev: CUdevice) -> Option<&'static DeviceLedger> {
    get()?;
    LEDGER.device(dev)
}

/// The device of the calling thread's current context. A process that sees one device needs no driver
/// call for it: any context it has is on device 0. (With none current, callers that allocate get the
/// driver's own refusal, and what they reserved goes back.)
pub fn current() -> driver::Result<CUdevice> {
    if get().is_some_and(|d| d.uuids.len() == 1) {
        return Ok(0);
    }
    driver::ctx_device()
}

/// The device a stream's work runs on, falling back to the current context's. Never asked of a
/// capturing stream: check [`Stream::capturing`] first.
pub fn of_stream(stream: Stream) -> driver::Result<CUdevice> {
    if let Some(dev) = driver::stream_device(stream) {
        return Ok(dev);
    }
    current()
}
