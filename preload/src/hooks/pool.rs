//! Stream-ordered allocation: `cuMemAllocAsync`, `cuMemAllocFromPoolAsync`, `cuMemFreeAsync` (and their
//! `_ptsz` variants), and the pools behind them.
//! <https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__MALLOC__ASYNC.html>
//!
//! Memory freed into a pool stays reserved by the pool (PyTorch sets the release threshold to the maximum),
//! so the device really holds the pool's *reserved* bytes, not the live allocations. We therefore charge
//! each pool at `CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT`, read from the driver around every call on it, and
//! reserve ahead of an allocation what the pool's free reserve cannot cover, in the pool's growth steps.
//! One lock covers a pool's read-reserve-allocate-read sequence, so two threads cannot both count on the
//! same free reserve. Should a pool still grow past the cap, the allocation is undone (freed, the stream
//! synchronised, the pool trimmed back) and refused, so the cap holds even then.
//!
//! On a capturing stream nothing is allocated: the driver adds an allocation node to the graph being
//! captured, whose memory is charged when the graph is launched (`hooks::graph`), so these hooks pass such
//! calls on untouched and ask the driver nothing unsafe during a capture (see `driver`). Fail closed:
//! where the stream's device cannot be told, the driver's error is the answer; where the pool cannot be
//! found or read, the allocation is charged at its worst case (all of it, in whole pool steps).

use crate::args::Out;
use crate::cuda::*;
use crate::driver::{self, Stream};
use crate::enforce;
use crate::ledger::LEDGER;
use crate::registry::pointers::{Backing, PtrRecord, PTRS};
use crate::registry::pools::{self, POOL_STEP};
use crate::{devices, in_flight, phase};
use std::sync::atomic::Ordering;
use vramcap_core::accounting::charge::{round_up_pages, Charge};

/// One attempt at a pool allocation of `bytes` on `dev`, retried once if the device itself is full.
fn pooled_alloc(
    dptr: Out<CUdeviceptr>,
    bytes: usize,
    dev: CUdevice,
    pool: CUmemoryPool,
    call: impl Fn() -> CUresult,
) -> CUresult {
    crate::pressure::retry_once(dev, Charge::pages(bytes as u64).worst_case(), || {
        pooled_once(dptr, bytes, dev, pool, &call)
    })
}

fn pooled_once(
    dptr: Out<CUdeviceptr>,
    bytes: usize,
    dev: CUdevice,
    pool: CUmemoryPool,
    call: impl FnOnce() -> CUresult,
) -> Result<CUresult, CUresult> {
    enforce::prepare(dev, bytes as u64);
    let op = in_flight::enter();
    let mut pools = pools::lock();
    pools.resync_device(dev);
    let entry = pools.entry(pool as usize, dev);
    entry.resync();
    // Unreadable: no free reserve is counted on, and the whole growth stays charged (fail closed).
    let read = driver::pool_usage(pool).ok();
    let (reserved, used) = read.unwrap_or((entry.charged, entry.charged));
    let step = POOL_STEP.load(Ordering::Relaxed);
    let need = round_up_pages(bytes as u64)
        .saturating_sub(reserved.saturating_sub(used))
        .div_ceil(step)
        .saturating_mul(step);
    let reservation = enforce::reserve(&op, dev, Charge::Pages(need))?;
    let r = call();
    if r != CUDA_SUCCESS {
        return Ok(r);
    }
    let now = match driver::pool_usage(pool) {
        Ok((now, _)) if read.is_some() => now,
        _ => entry.charged.saturating_add(need),
    };
    let grew = now.saturating_sub(entry.charged);
    if grew > need {
        POOL_STEP.fetch_max(grew, Ordering::Relaxed);
        if let (Some(ledger), Some(ptr)) = (LEDGER.device(dev), dptr.get()) {
            let over = ledger
                .cap()
                .is_some_and(|cap| ledger.snapshot().charged.saturating_add(grew) > cap);
            if over {
                driver::undo_pool_allocation(ptr, pool, reserved);
                entry.resync();
                drop(reservation);
                return Err(enforce::refuse(dev, grew));
            }
        }
    }
    // The pool's real growth replaces the reservation (one charge, never both at once), and the
    // allocation is counted.
    reservation.commit_as(Charge::Pages(grew), bytes as u64);
    if now < entry.charged {
        if let Some(ledger) = LEDGER.device(dev) {
            ledger.give_back(entry.charged - now);
        }
    }
    entry.charged = now;
    if let Some(ptr) = dptr.get() {
        PTRS.insert(
            ptr,
            PtrRecord {
                dev,
                backing: Backing::Pool(pool as usize),
                requested: bytes as u64,
            },
        );
    }
    Ok(r)
}

/// `Some(answer)` for a stream-ordered allocation that is not charged here: refused while the
/// configuration is invalid, or, on a capturing stream, passed on (it becomes a graph allocation node,
/// charged when its graph is launched).
fn not_charged_here(stream: Stream, pass: impl Fn() -> CUresult) -> Option<CUresult> {
    if phase::refusing() {
        return Some(phase::REFUSED_BY_CONFIG);
    }
    match stream.capturing() {
        Ok(true) => Some(pass()),
        Ok(false) => None,
        Err(code) => Some(code),
    }
}

/// An allocation from the current pool of the stream's device.
fn from_current_pool(
    dptr: Out<CUdeviceptr>,
    bytes: usize,
    stream: Stream,
    pass: impl Fn() -> CUresult,
) -> CUresult {
    if let Some(answer) = not_charged_here(stream, &pass) {
        return answer;
    }
    let dev = match devices::of_stream(stream) {
        Ok(dev) => dev,
        Err(code) => return code,
    };
    match driver::current_pool(dev) {
        Ok(pool) => pooled_alloc(dptr, bytes, dev, pool, pass),
        Err(_) => unpooled(dptr, bytes, dev, pass),
    }
}

/// A stream-ordered allocation whose pool cannot be found: charged as memory of its own, at the most a
/// pool could grow for it, and given back when it is freed.
fn unpooled(
    dptr: Out<CUdeviceptr>,
    bytes: usize,
    dev: CUdevice,
    pass: impl Fn() -> CUresult,
) -> CUresult {
    let step = POOL_STEP.load(Ordering::Relaxed);
    let charge = Charge::Pages(
        round_up_pages(bytes as u64)
            .div_ceil(step)
            .saturating_mul(step),
    );
    crate::pressure::retry_once(dev, charge.worst_case(), || {
        let (_op, reservation) = enforce::admit(dev, charge, bytes as u64)?;
        let r = pass();
        if r == CUDA_SUCCESS {
            if let Some(ptr) = dptr.get() {
                let charge = reservation.commit(bytes as u64);
                PTRS.insert(
                    ptr,
                    PtrRecord {
                        dev,
                        backing: Backing::Own(charge),
                        requested: bytes as u64,
                    },
                );
            }
        }
        Ok(r)
    })
}

pub fn alloc_async(
    pass: impl Fn() -> CUresult,
    dptr: Out<CUdeviceptr>,
    bytes: usize,
    stream: CUstream,
) -> CUresult {
    from_current_pool(dptr, bytes, Stream::of(stream, false), pass)
}

pub fn alloc_async_ptsz(
    pass: impl Fn() -> CUresult,
    dptr: Out<CUdeviceptr>,
    bytes: usize,
    stream: CUstream,
) -> CUresult {
    from_current_pool(dptr, bytes, Stream::of(stream, true), pass)
}

/// An allocation from a pool the caller names.
fn from_pool(
    dptr: Out<CUdeviceptr>,
    bytes: usize,
    pool: CUmemoryPool,
    stream: Stream,
    pass: impl Fn() -> CUresult,
) -> CUresult {
    if let Some(answer) = not_charged_here(stream, &pass) {
        return answer;
    }
    let known = pools::lock().device_of(pool as usize);
    let dev = match known.or_else(|| driver::pool_device(pool)) {
        Some(dev) => dev,
        None => match devices::of_stream(stream) {
            Ok(dev) => dev,
            Err(code) => return code,
        },
    };
    pooled_alloc(dptr, bytes, dev, pool, pass)
}

pub fn alloc_from_pool_async(
    pass: impl Fn() -> CUresult,
    dptr: Out<CUdeviceptr>,
    bytes: usize,
    pool: CUmemoryPool,
    stream: CUstream,
) -> CUresult {
    from_pool(dptr, bytes, pool, Stream::of(stream, false), pass)
}

pub fn alloc_from_pool_async_ptsz(
    pass: impl Fn() -> CUresult,
    dptr: Out<CUdeviceptr>,
    bytes: usize,
    pool: CUmemoryPool,
    stream: CUstream,
) -> CUresult {
    from_pool(dptr, bytes, pool, Stream::of(stream, true), pass)
}

/// A stream-ordered free: on a capturing stream it is a free node of the graph (its memory is given back
/// when the graph runs, and stays charged until then); otherwise as `cuMemFree`.
fn free_on(ptr: CUdeviceptr, stream: Stream, pass: impl FnOnce() -> CUresult) -> CUresult {
    if matches!(stream.capturing(), Ok(true)) {
        return pass();
    }
    super::alloc::charged_free(ptr, pass)
}

pub fn free_async(pass: impl Fn() -> CUresult, ptr: CUdeviceptr, stream: CUstream) -> CUresult {
    free_on(ptr, Stream::of(stream, false), &pass)
}

pub fn free_async_ptsz(
    pass: impl Fn() -> CUresult,
    ptr: CUdeviceptr,
    stream: CUstream,
) -> CUresult {
    free_on(ptr, Stream::of(stream, true), &pass)
}

pub fn pool_create(
    pass: impl Fn() -> CUresult,
    pool: Out<CUmemoryPool>,
    props: Option<&CUmemPoolProps>,
) -> CUresult {
    let r = pass();
    if r == CUDA_SUCCESS {
        if let (Some(p), Some(props)) = (pool.get(), props.copied()) {
            if props.location.type_ == CU_MEM_LOCATION_TYPE_DEVICE {
                pools::lock().entry(p as usize, props.location.id);
            }
        }
    }
    r
}

pub fn pool_destroy(pass: impl Fn() -> CUresult, pool: CUmemoryPool) -> CUresult {
    let _op = in_flight::enter();
    let r = pass();
    if r == CUDA_SUCCESS {
        pools::lock().destroyed(pool as usize);
    }
    r
}

pub fn pool_trim(pass: impl Fn() -> CUresult, pool: CUmemoryPool, _keep: usize) -> CUresult {
    let _op = in_flight::enter();
    let r = pass();
    if r == CUDA_SUCCESS {
        pools::sync(pool as usize);
    }
    r
}
