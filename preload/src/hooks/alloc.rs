//! Linear device memory: `cuMemAlloc_v2`, `cuMemAllocPitch_v2`, `cuMemAllocManaged`, `cuMemFree_v2`.
//! <https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__MEM.html>
//!
//! Each allocation is reserved at the driver's real cost ([`Charge::for_request`]) before the driver is
//! called. A record is removed *before* the real free, so an address the driver reuses at once is never
//! confused with the old one; if the free fails the record goes back.

use crate::args::Out;
use crate::cuda::*;
use crate::devices;
use crate::enforce;
use crate::registry::pointers::{Backing, PtrRecord, PAGES, PTRS};
use std::ffi::c_uint;
use std::sync::atomic::{AtomicBool, Ordering};
use vramcap_core::accounting::charge::Charge;
use vramcap_core::accounting::ledger::Reservation;
use vramcap_core::vlog;

/// The usual shape of an allocating hook: reserve `charge` on the current device, call the driver, commit
/// what it really took (`actual`, from the driver's answer) and record the pointer. If the cap allowed it
/// but the device itself is full, the unloader is asked (see `pressure`) and the call retried once.
fn charged_alloc(
    dptr: Out<CUdeviceptr>,
    requested: u64,
    estimate: Charge,
    call: impl Fn() -> CUresult,
    actual: impl Fn() -> Charge,
) -> CUresult {
    if crate::phase::refusing() {
        return crate::phase::REFUSED_BY_CONFIG;
    }
    // Without the device there is nothing to charge against, so nothing reaches the driver: the query's
    // error (no current context) is what the driver would have answered.
    let dev = match devices::current() {
        Ok(dev) => dev,
        Err(code) => return code,
    };
    crate::pressure::retry_once(dev, estimate.worst_case(), || {
        let (_op, reservation) = enforce::admit(dev, estimate, requested)?;
        let r = call();
        if r == CUDA_SUCCESS {
            if let Some(ptr) = dptr.get() {
                record(dev, ptr, reservation, actual(), requested);
            }
        }
        Ok(r)
    })
}

/// The driver placed an allocation charged `charge` at `ptr`: commits what it really costs and
/// records it.
fn record(
    dev: CUdevice,
    ptr: CUdeviceptr,
    reservation: Reservation<'static>,
    charge: Charge,
    requested: u64,
) {
    // A packed allocation costs the pages it put in use, now that we know where it went.
    let cost = match charge {
        Charge::Packed(bytes) => Charge::Pages(PAGES.touch(dev, ptr, bytes)),
        pages => pages,
    };
    reservation.commit_as(cost, requested);
    PTRS.insert(
        ptr,
        PtrRecord {
            dev,
            backing: Backing::Own(charge),
            requested,
        },
    );
}

pub fn mem_alloc(pass: impl Fn() -> CUresult, dptr: Out<CUdeviceptr>, bytes: usize) -> CUresult {
    if bytes == 0 {
        return pass();
    }
    let charge = Charge::for_request(bytes as u64);
    charged_alloc(dptr, bytes as u64, charge, &pass, || charge)
}

/// Pitch alignment we assume before the driver tells us the pitch (the H100 reports 512 at most).
const PITCH_ESTIMATE_ALIGN: u64 = 512;

pub fn mem_alloc_pitch(
    pass: impl Fn() -> CUresult,
    dptr: Out<CUdeviceptr>,
    pitch: Out<usize>,
    width: usize,
    height: usize,
    _elem: c_uint,
) -> CUresult {
    let rows = height as u64;
    // Sizes no device holds saturate and are refused as too large, rather than wrap to a small charge or
    // panic (an internal error).
    let estimate = (width as u64)
        .div_ceil(PITCH_ESTIMATE_ALIGN)
        .saturating_mul(PITCH_ESTIMATE_ALIGN)
        .saturating_mul(rows);
    if estimate == 0 {
        return pass();
    }
    charged_alloc(
        dptr,
        (width as u64).saturating_mul(rows),
        Charge::for_request(estimate),
        &pass,
        || {
            Charge::for_request(
                pitch
                    .get()
                    .map_or(estimate, |p| (p as u64).saturating_mul(rows)),
            )
        },
    )
}

pub fn mem_alloc_managed(
    pass: impl Fn() -> CUresult,
    dptr: Out<CUdeviceptr>,
    bytes: usize,
    _flags: c_uint,
) -> CUresult {
    // All of it can become resident on the device, so it is charged as device memory.
    mem_alloc(pass, dptr, bytes)
}

/// Gives back what a freed pointer was charged.
pub fn release(ptr: CUdeviceptr, record: PtrRecord) {
    let Some(ledger) = crate::ledger::LEDGER.device(record.dev) else {
        return;
    };
    match record.backing {
        Backing::Own(Charge::Packed(bytes)) => {
            let freed = PAGES.untouch(record.dev, ptr, bytes);
            ledger.release(Charge::Pages(freed), record.requested);
        }
        Backing::Own(charge) => ledger.release(charge, record.requested),
        Backing::Pool(pool) => {
            ledger.release(Charge::Pages(0), record.requested);
            crate::registry::pools::sync(pool);
        }
    }
}

/// Frees through `call`, keeping the record of `ptr` consistent with the driver's answer.
pub fn charged_free(ptr: CUdeviceptr, call: impl FnOnce() -> CUresult) -> CUresult {
    let _op = crate::in_flight::enter();
    let record = PTRS.remove(ptr);
    let r = call();
    match (record, r == CUDA_SUCCESS) {
        (Some(rec), true) => release(ptr, rec),
        (Some(rec), false) => {
            PTRS.insert(ptr, rec);
        }
        // A pointer we never saw (a graph's allocation, say): the driver's answer is the caller's answer.
        (None, ok) => {
            if ok {
                crate::registry::graphs::freed(ptr);
            }
        }
    }
    r
}

pub fn mem_free(pass: impl Fn() -> CUresult, ptr: CUdeviceptr) -> CUresult {
    charged_free(ptr, &pass)
}

static LEGACY_WARNED: AtomicBool = AtomicBool::new(false);

fn refuse_legacy(name: &str) -> CUresult {
    if !LEGACY_WARNED.swap(true, Ordering::Relaxed) {
        vlog!(
            Error,
            "{name} (the 32-bit ABI of CUDA 3.1) is refused under vramcap: it cannot be counted"
        );
    }
    CUDA_ERROR_NOT_SUPPORTED
}

pub fn legacy_alloc(_pass: impl Fn() -> CUresult, _: Out<u32>, _: c_uint) -> CUresult {
    refuse_legacy("cuMemAlloc")
}

pub fn legacy_alloc_pitch(
    _pass: impl Fn() -> CUresult,
    _: Out<u32>,
    _: Out<c_uint>,
    _: c_uint,
    _: c_uint,
    _: c_uint,
) -> CUresult {
    refuse_legacy("cuMemAllocPitch")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Arg;
    use crate::guard::counting;
    use crate::ledger::{unused_device, LEDGER};
    use std::cell::Cell;

    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;

    /// Addresses of their own for a test's device (the pointer registry is keyed by address alone).
    fn base(dev: CUdevice) -> CUdeviceptr {
        (dev as u64 + 1) << 40
    }

    /// What `charged_alloc` does once the driver placed `bytes` at `ptr`.
    fn allocate(dev: CUdevice, ptr: CUdeviceptr, bytes: u64) {
        let charge = Charge::for_request(bytes);
        let r = LEDGER.device(dev).unwrap().reserve(charge).unwrap();
        record(dev, ptr, r, charge, bytes);
    }

    /// Frees `ptr` through a driver that answers `answer`; returns (the answer, the driver's calls).
    fn free(ptr: CUdeviceptr, answer: CUresult) -> (CUresult, u32) {
        let calls = Cell::new(0);
        let r = charged_free(ptr, counting(&calls, answer));
        (r, calls.get())
    }

    fn held(dev: CUdevice) -> (u64, u64, u64) {
        let u = LEDGER.device(dev).unwrap().snapshot();
        (u.charged, u.requested, u.allocations)
    }

    #[test]
    fn small_allocations_share_a_page_until_the_last_one_is_freed() {
        // tests/interposer.rs `charges_the_drivers_rounding`: a lone small allocation takes a page, and
        // fragmented pages stay charged.
        let dev = unused_device();
        let a = base(dev);
        allocate(dev, a, 64 * KIB);
        allocate(dev, a + 64 * KIB, 64 * KIB);
        assert_eq!(held(dev), (2 * MIB, 128 * KIB, 2));
        assert_eq!(free(a, CUDA_SUCCESS), (CUDA_SUCCESS, 1));
        assert_eq!(held(dev), (2 * MIB, 64 * KIB, 1));
        free(a + 64 * KIB, CUDA_SUCCESS);
        assert_eq!(held(dev), (0, 0, 0));
    }

    #[test]
    fn a_small_allocation_across_a_page_boundary_costs_both_pages() {
        let dev = unused_device();
        let ptr = base(dev) + 2 * MIB - 32 * KIB;
        allocate(dev, ptr, 64 * KIB);
        assert_eq!(held(dev), (4 * MIB, 64 * KIB, 1));
        free(ptr, CUDA_SUCCESS);
        assert_eq!(held(dev), (0, 0, 0));
    }

    #[test]
    fn a_failed_free_keeps_the_record_and_its_charge() {
        let dev = unused_device();
        let ptr = base(dev);
        allocate(dev, ptr, 3 * MIB);
        let record = PTRS.get(ptr).unwrap();
        assert_eq!(record.backing, Backing::Own(Charge::Pages(4 * MIB)));
        assert_eq!(
            free(ptr, CUDA_ERROR_INVALID_VALUE),
            (CUDA_ERROR_INVALID_VALUE, 1)
        );
        assert_eq!(PTRS.get(ptr), Some(record));
        assert_eq!(held(dev), (4 * MIB, 3 * MIB, 1));
        free(ptr, CUDA_SUCCESS);
        assert_eq!(held(dev), (0, 0, 0));
        assert_eq!(PTRS.get(ptr), None);
    }

    #[test]
    fn a_free_of_an_unknown_pointer_gets_the_drivers_answer_and_gives_nothing_back() {
        let dev = unused_device();
        allocate(dev, base(dev), 4 * MIB);
        for answer in [CUDA_SUCCESS, CUDA_ERROR_INVALID_VALUE] {
            assert_eq!(free(base(dev) + 64 * MIB, answer), (answer, 1));
        }
        assert_eq!(held(dev), (4 * MIB, 4 * MIB, 1));
        free(base(dev), CUDA_SUCCESS);
        assert_eq!(
            free(base(dev), CUDA_SUCCESS),
            (CUDA_SUCCESS, 1),
            "freed twice"
        );
        assert_eq!(held(dev), (0, 0, 0), "and counted once");
    }

    #[test]
    fn a_freed_pool_allocation_leaves_the_pools_reserve_charged() {
        let dev = unused_device();
        let ptr = base(dev);
        // As `hooks::pool` charges it: the pool grew 32 MiB for 1 MiB.
        let r = LEDGER.device(dev).unwrap().reserve(Charge::Pages(32 * MIB));
        r.unwrap().commit_as(Charge::Pages(32 * MIB), MIB);
        let record = PtrRecord {
            dev,
            backing: Backing::Pool(0x5e00),
            requested: MIB,
        };
        PTRS.insert(ptr, record);
        free(ptr, CUDA_SUCCESS);
        assert_eq!(held(dev), (32 * MIB, 0, 0));
    }

    #[test]
    fn an_allocation_without_a_current_device_never_reaches_the_driver() {
        // No driver: the current context's device cannot be told.
        let calls = Cell::new(0);
        let pass = counting(&calls, CUDA_SUCCESS);
        let ptr = Cell::new(0u64);
        // SAFETY: the cell lives for the whole test.
        let dptr = unsafe { ptr.as_ptr().safe() };
        assert_eq!(mem_alloc(pass, dptr, 64 << 20), CUDA_ERROR_NOT_FOUND);
        assert_eq!(mem_alloc_managed(pass, dptr, 4096, 1), CUDA_ERROR_NOT_FOUND);
        assert_eq!(calls.get(), 0);
        assert_eq!(mem_alloc(pass, dptr, 0), CUDA_SUCCESS, "nothing to charge");
        assert_eq!(calls.get(), 1);
        // SAFETY: null: the hook never writes it.
        let legacy = unsafe { std::ptr::null_mut::<u32>().safe() };
        assert_eq!(legacy_alloc(pass, legacy, 4096), CUDA_ERROR_NOT_SUPPORTED);
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn a_pitched_allocation_no_device_holds_is_refused_without_a_panic() {
        // width x rows overflows 64 bits: before, the estimate's multiplication panicked (in debug builds),
        // and the guard would have passed the call to the driver uncounted.
        let calls = Cell::new(0);
        let pass = counting(&calls, CUDA_SUCCESS);
        for (width, height) in [
            (usize::MAX, 2),
            (usize::MAX / 2, 1 << 20),
            (1 << 40, 1 << 40),
        ] {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // SAFETY: null out-parameters, which `Out` reads as None and never writes.
                let (dptr, pitch) = unsafe {
                    (
                        std::ptr::null_mut::<CUdeviceptr>().safe(),
                        std::ptr::null_mut::<usize>().safe(),
                    )
                };
                mem_alloc_pitch(pass, dptr, pitch, width, height, 4)
            }));
            let r = r.unwrap_or_else(|_| panic!("{width} x {height}: the hook panicked"));
            assert_ne!(r, CUDA_SUCCESS, "{width} x {height}");
        }
        assert_eq!(calls.get(), 0, "never passed to the driver");
    }
}
