//! The cap check shared by every allocating hook: reserve on the device's ledger, refresh what pools really
//! hold when the cap seems reached, and answer `CUDA_ERROR_OUT_OF_MEMORY` with a rate-limited line.

use crate::background::measure::NEAR_CAP;
use crate::cuda::*;
use crate::devices;
use crate::in_flight::{self, InFlight};
use crate::phase;
use vramcap_core::accounting::charge::Charge;
use vramcap_core::accounting::ledger::{Refusal, Reservation, MAX_DEVICES};
use vramcap_core::config::size::HumanBytes;
use vramcap_core::log::{monotonic_ns, RateLimit};
use vramcap_core::vlog;

static REFUSAL_LINES: [RateLimit; MAX_DEVICES] = [const { RateLimit::new() }; MAX_DEVICES];

/// Starts an allocating operation of `requested` bytes on `dev`: marks it in flight and reserves `charge`.
/// Near the cap, what the driver holds outside our counts must be current first (see `background::measure`), which
/// needs no operation in flight; far from it (the common case), the device's counter is touched once.
pub fn admit(
    dev: CUdevice,
    charge: Charge,
    requested: u64,
) -> Result<(InFlight, Reservation<'static>), CUresult> {
    let op = in_flight::enter();
    if let Ok(r) = try_reserve(&op, dev, charge) {
        let room_before = r
            .headroom_after()
            .map(|h| h.saturating_add(charge.worst_case()));
        if room_before.is_none_or(|room| room >= requested.saturating_add(NEAR_CAP)) {
            return Ok((op, r));
        }
    }
    drop(op);
    prepare(dev, requested);
    let op = in_flight::enter();
    reserve(&op, dev, charge).map(|r| (op, r))
}

/// Called by an allocating hook before its operation starts (before [`in_flight::enter`]): near the
/// cap, what the driver holds outside our counts must be current (see `background::measure`).
pub fn prepare(dev: CUdevice, bytes: u64) {
    let Some(ledger) = devices::ledger(dev) else {
        return;
    };
    if let Some(headroom) = ledger.headroom() {
        if headroom < bytes.saturating_add(NEAR_CAP) {
            crate::background::measure::measure_if_stale(dev, bytes);
        }
    }
}

/// Reserves `charge` on `dev` for the operation `op`, or says which error the hook must return instead of
/// calling the driver. A refusal is counted and reported here, once per call.
pub fn reserve(
    op: &InFlight,
    dev: CUdevice,
    charge: Charge,
) -> Result<Reservation<'static>, CUresult> {
    try_reserve(op, dev, charge).map_err(|refused| match refused {
        Refused::Cap(refusal) => report(dev, refusal),
        Refused::Code(code) => code,
    })
}

enum Refused {
    /// The cap: counted and reported by the caller that gives up.
    Cap(Refusal),
    /// Any other reason, with the code to return.
    Code(CUresult),
}

/// [`reserve`] without counting or reporting a refusal, for a caller that may try again.
fn try_reserve(
    op: &InFlight,
    dev: CUdevice,
    charge: Charge,
) -> Result<Reservation<'static>, Refused> {
    if phase::refusing() {
        return Err(Refused::Code(phase::REFUSED_BY_CONFIG));
    }
    // Fail closed: without the device table there is no cap to check against.
    let ledger = devices::ledger(dev).ok_or(Refused::Code(CUDA_ERROR_NOT_INITIALIZED))?;
    match ledger.reserve_on(op.stripe(), charge) {
        Ok(r) => Ok(r),
        Err(_) => {
            // Pools and graphs may have given memory back to the device since we last looked.
            crate::registry::pools::refresh(dev);
            crate::registry::graphs::refresh(dev);
            ledger.reserve_on(op.stripe(), charge).map_err(Refused::Cap)
        }
    }
}

/// Refuses an allocation of `bytes` on `dev` after the fact (the driver's answer was undone).
pub fn refuse(dev: CUdevice, bytes: u64) -> CUresult {
    match crate::ledger::LEDGER.device(dev) {
        Some(ledger) => {
            let usage = ledger.snapshot();
            report(
                dev,
                Refusal {
                    bytes,
                    in_use: usage.charged,
                    cap: usage.cap.unwrap_or(u64::MAX),
                },
            )
        }
        None => CUDA_ERROR_OUT_OF_MEMORY,
    }
}

/// Reserves an estimate of a context's own memory on `dev`.
pub fn reserve_context(dev: CUdevice, bytes: u64) -> Result<(), CUresult> {
    if phase::refusing() {
        return Err(phase::REFUSED_BY_CONFIG);
    }
    let ledger = devices::ledger(dev).ok_or(CUDA_ERROR_NOT_INITIALIZED)?;
    ledger
        .reserve_context(bytes)
        .map_err(|refusal| report(dev, refusal))
}

/// Counts one refused call on `dev` and says so (at most a line a second): the hook's answer.
fn report(dev: CUdevice, refusal: Refusal) -> CUresult {
    if let Some(ledger) = crate::ledger::LEDGER.device(dev) {
        ledger.note_refusal(&refusal);
    }
    let Some(limit) = REFUSAL_LINES.get(dev as usize) else {
        return CUDA_ERROR_OUT_OF_MEMORY;
    };
    if let Some(held_back) = limit.allow(monotonic_ns(), 1_000_000_000) {
        let uuid = devices::get()
            .and_then(|d| d.uuids.get(dev as usize).cloned())
            .unwrap_or_default();
        let more = if held_back > 0 {
            format!(" ({held_back} more refusals since the last line)")
        } else {
            String::new()
        };
        vlog!(
            Warn,
            "device {dev} ({uuid}): refused {} with {} of the {} cap in use{more}",
            HumanBytes(refusal.bytes),
            HumanBytes(refusal.in_use),
            HumanBytes(refusal.cap)
        );
    }
    CUDA_ERROR_OUT_OF_MEMORY
}
