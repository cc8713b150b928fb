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
                let charge = actual();
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
        }
        Ok(r)
    })
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
    let estimate = (width as u64).div_ceil(PITCH_ESTIMATE_ALIGN) * PITCH_ESTIMATE_ALIGN * rows;
    if estimate == 0 {
        return pass();
    }
    charged_alloc(
        dptr,
        width as u64 * rows,
        Charge::for_request(estimate),
        &pass,
        || Charge::for_request(pitch.get().map_or(estimate, |p| p as u64 * rows)),
    )
}

pub fn mem_alloc_managed(
    pass: impl Fn() -> CUresult,
    dptr: Out<CUdeviceptr>,
    bytes: usize,
    _flags: c_uint,
) -> CUresult {
    if bytes == 0 {
        return pass();
    }
    // All of it can become resident on the device, so all of it is charged.
    let charge = Charge::for_request(bytes as u64);
    charged_alloc(dptr, bytes as u64, charge, &pass, || charge)
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
