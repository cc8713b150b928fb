//! The cap check shared by every allocating hook: reserve on the device's ledger, refresh what pools really
//! hold when the cap seems reached, and answer `CUDA_ERROR_OUT_OF_MEMORY` with a rate-limited line.

use crate::background::measure::NEAR_CAP;
use crate::cuda::*;
use crate::devices;
use crate::in_flight::{self, InFlight};
use crate::phase;
use vramcap_core::accounting::charge::Charge;
use vramcap_core::accounting::ledger::{DeviceLedger, Refusal, Reservation, MAX_DEVICES};
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
        if far_from_cap(&r, charge, requested) {
            return Ok((op, r));
        }
    }
    drop(op);
    prepare(dev, requested);
    let op = in_flight::enter();
    reserve(&op, dev, charge).map(|r| (op, r))
}

/// Whether the cap left at least [`NEAR_CAP`] beside `requested` before the reservation `r` of `charge`
/// was taken (or there is no cap): then no reading is needed first.
fn far_from_cap(r: &Reservation, charge: Charge, requested: u64) -> bool {
    let room_before = r
        .headroom_after()
        .map(|h| h.saturating_add(charge.worst_case()));
    room_before.is_none_or(|room| room >= requested.saturating_add(NEAR_CAP))
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
    reserve_on(ledger, op, dev, charge).map_err(Refused::Cap)
}

/// Reserves `charge` on `dev`'s ledger, once more after re-reading pools and graphs if the cap seems
/// reached.
fn reserve_on(
    ledger: &'static DeviceLedger,
    op: &InFlight,
    dev: CUdevice,
    charge: Charge,
) -> Result<Reservation<'static>, Refusal> {
    match ledger.reserve_on(op.stripe(), charge) {
        Ok(r) => Ok(r),
        Err(_) => {
            // Pools and graphs may have given memory back to the device since we last looked.
            crate::registry::pools::refresh(dev);
            crate::registry::graphs::refresh(dev);
            ledger.reserve_on(op.stripe(), charge)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{unused_device, LEDGER};

    const MIB: u64 = 1 << 20;

    #[test]
    fn without_the_device_table_nothing_is_reserved() {
        // No driver, so no device table: no cap to check against, so no reservation (fail closed).
        let r = admit(0, Charge::Pages(2 * MIB), 2 * MIB);
        assert_eq!(r.err(), Some(CUDA_ERROR_NOT_INITIALIZED));
        let op = in_flight::enter();
        assert_eq!(
            reserve(&op, 0, Charge::Packed(4096)).err(),
            Some(CUDA_ERROR_NOT_INITIALIZED)
        );
        drop(op);
        assert_eq!(
            reserve_context(0, 512 * MIB),
            Err(CUDA_ERROR_NOT_INITIALIZED)
        );
    }

    #[test]
    fn eleven_64_mib_blocks_fit_a_1_gib_cap_beside_a_300_mib_context() {
        // The figures of tests/interposer.rs `cap_holds_on_every_path`.
        let dev = unused_device();
        let ledger = LEDGER.device(dev).unwrap();
        ledger.set_cap(1024 * MIB);
        ledger.reserve_context(300 * MIB).unwrap();
        let op = in_flight::enter();
        let mut fitted = 0;
        let refusal = loop {
            match reserve_on(ledger, &op, dev, Charge::for_request(64 * MIB)) {
                Ok(r) => {
                    r.commit(64 * MIB);
                    fitted += 1;
                }
                Err(refusal) => break refusal,
            }
        };
        assert_eq!(fitted, 11);
        assert_eq!(
            refusal,
            Refusal {
                bytes: 64 * MIB,
                in_use: 1004 * MIB,
                cap: 1024 * MIB
            }
        );
        assert_eq!(
            ledger.snapshot().refusals,
            0,
            "counted by the caller that gives up"
        );
    }

    #[test]
    fn an_allocation_is_near_the_cap_when_it_would_leave_less_than_512_mib() {
        let op = in_flight::enter();
        let dev = unused_device();
        let uncapped = LEDGER.device(dev).unwrap();
        let r = reserve_on(uncapped, &op, dev, Charge::Pages(64 * MIB)).unwrap();
        assert!(far_from_cap(&r, Charge::Pages(64 * MIB), 64 * MIB));
        // 300 MiB of context, then 64 MiB: the cap leaves exactly 512 MiB beside it, or 2 MiB less.
        for (cap, far) in [(876 * MIB, true), (874 * MIB, false)] {
            let dev = unused_device();
            let ledger = LEDGER.device(dev).unwrap();
            ledger.set_cap(cap);
            ledger.reserve_context(300 * MIB).unwrap();
            let r = reserve_on(ledger, &op, dev, Charge::Pages(64 * MIB)).unwrap();
            assert_eq!(
                far_from_cap(&r, Charge::Pages(64 * MIB), 64 * MIB),
                far,
                "cap {} MiB",
                cap >> 20
            );
        }
    }

    #[test]
    fn a_refusal_after_the_fact_is_counted_with_its_size() {
        let dev = unused_device();
        let ledger = LEDGER.device(dev).unwrap();
        ledger.set_cap(1024 * MIB);
        assert_eq!(refuse(dev, 96 * MIB), CUDA_ERROR_OUT_OF_MEMORY);
        assert_eq!(refuse(dev, 64 * MIB), CUDA_ERROR_OUT_OF_MEMORY);
        let usage = ledger.snapshot();
        assert_eq!((usage.refusals, usage.last_refused_bytes), (2, 64 * MIB));
    }

    #[test]
    fn a_refusal_on_a_device_outside_the_ledger_is_still_out_of_memory() {
        for dev in [-1, MAX_DEVICES as CUdevice] {
            assert_eq!(refuse(dev, MIB), CUDA_ERROR_OUT_OF_MEMORY, "device {dev}");
        }
    }
}
