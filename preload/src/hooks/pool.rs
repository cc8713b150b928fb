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

use super::{Backing, PtrRecord, PTRS};
use crate::cuda::*;
use crate::driver;
use crate::enforce::{self, read_out};
use crate::state::LEDGER;
use core_lib::charge::{round_up_pages, Charge};
use parking_lot::Mutex;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};

/// How much a pool grows at a time. On an H100 with driver 580 a pool grew by 32 MiB for 1 MiB, by 64 MiB
/// for 33 MiB and by 128 MiB for 130 MiB: whole 32 MiB steps. Raised if a pool is seen to grow by more.
static POOL_STEP: AtomicU64 = AtomicU64::new(32 << 20);

#[derive(Debug, Clone, Copy)]
struct PoolCharge {
    pool: usize,
    dev: CUdevice,
    /// What the device ledger holds for this pool: its reserved bytes when last read.
    charged: u64,
}

static POOLS: Mutex<Vec<PoolCharge>> = Mutex::new(Vec::new());

fn find(pools: &mut Vec<PoolCharge>, pool: usize, dev: CUdevice) -> &mut PoolCharge {
    let i = match pools.iter().position(|p| p.pool == pool) {
        Some(i) => i,
        None => {
            pools.push(PoolCharge {
                pool,
                dev,
                charged: 0,
            });
            pools.len() - 1
        }
    };
    &mut pools[i]
}

/// Brings the charge of one pool to what the driver says it reserves now.
fn resync(entry: &mut PoolCharge) {
    let Some((reserved, _)) = driver::pool_usage(entry.pool as CUmemoryPool) else {
        return;
    };
    let Some(ledger) = LEDGER.device(entry.dev) else {
        return;
    };
    if reserved > entry.charged {
        ledger.force(reserved - entry.charged);
    } else {
        ledger.give_back(entry.charged - reserved);
    }
    entry.charged = reserved;
}

/// Re-reads one pool (after a free or a trim).
pub fn sync(pool: usize) {
    let mut pools = POOLS.lock();
    if let Some(entry) = pools.iter_mut().find(|p| p.pool == pool) {
        resync(entry);
    }
}

/// Re-reads every pool of `dev`: called when the cap seems reached, since pools trim themselves at
/// synchronisation points we do not see.
pub fn refresh(dev: CUdevice) {
    // try_lock: the pool hooks call the cap check while holding the lock, and refresh themselves first.
    if let Some(mut pools) = POOLS.try_lock() {
        resync_device(&mut pools, dev);
    }
}

fn resync_device(pools: &mut [PoolCharge], dev: CUdevice) {
    for entry in pools.iter_mut().filter(|p| p.dev == dev) {
        resync(entry);
    }
}

/// Forgets the pools of a device whose last context is gone.
pub fn forget_device(dev: CUdevice) {
    POOLS.lock().retain(|p| p.dev != dev);
}

/// One attempt at a pool allocation of `bytes` on `dev`, retried once if the device itself is full.
fn pooled_alloc(
    dptr: *mut CUdeviceptr,
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
    dptr: *mut CUdeviceptr,
    bytes: usize,
    dev: CUdevice,
    pool: CUmemoryPool,
    call: impl FnOnce() -> CUresult,
) -> Result<CUresult, CUresult> {
    enforce::prepare(dev, bytes as u64);
    let op = crate::overhead::in_flight();
    let mut pools = POOLS.lock();
    resync_device(&mut pools, dev);
    let entry = find(&mut pools, pool as usize, dev);
    resync(entry);
    let (reserved, used) = driver::pool_usage(pool).unwrap_or((entry.charged, entry.charged));
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
    let grew = driver::pool_usage(pool).map_or(0, |(now, _)| now.saturating_sub(reserved));
    if grew > need {
        POOL_STEP.fetch_max(grew, Ordering::Relaxed);
        if let (Some(ledger), Some(ptr)) = (LEDGER.device(dev), read_out(dptr)) {
            let over = ledger.cap().is_some_and(|cap| {
                ledger
                    .snapshot()
                    .charged
                    .saturating_sub(need)
                    .saturating_add(grew)
                    > cap
            });
            if over {
                undo(ptr, pool, reserved);
                resync(entry);
                drop(reservation);
                return Err(enforce::refuse(dev, grew));
            }
        }
    }
    // The pool's real growth replaces the reservation: charge what the pool reserves now, then give the
    // reservation back (in that order, so the count never dips below the truth).
    resync(entry);
    drop(reservation);
    if let Some(ledger) = LEDGER.device(dev) {
        ledger.count_allocation(bytes as u64);
    }
    if let Some(ptr) = read_out(dptr) {
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

type FreeAsyncFn = unsafe extern "C" fn(CUdeviceptr, CUstream) -> CUresult;
type TrimFn = unsafe extern "C" fn(CUmemoryPool, usize) -> CUresult;
type SyncFn = unsafe extern "C" fn(CUstream) -> CUresult;

/// Gives back an allocation that made its pool grow past the cap: free it, wait for the free on the
/// legacy stream, and trim the pool to what it reserved before.
fn undo(ptr: CUdeviceptr, pool: CUmemoryPool, reserved_before: u64) {
    use crate::entry_points::{cuMemFreeAsync, cuMemPoolTrimTo};
    let free = cuMemFreeAsync::REAL.load(Ordering::Acquire);
    let trim = cuMemPoolTrimTo::REAL.load(Ordering::Acquire);
    let sync = crate::state::driver_fn(c"cuStreamSynchronize");
    if free.is_null() || trim.is_null() || sync.is_null() {
        return;
    }
    // SAFETY: each pointer is the driver's function of that name with the matching prototype; ptr was
    // just allocated by the caller's call and is freed exactly once, on the legacy stream, then waited for.
    unsafe {
        std::mem::transmute::<*mut c_void, FreeAsyncFn>(free)(ptr, std::ptr::null_mut());
        std::mem::transmute::<*mut c_void, SyncFn>(sync)(std::ptr::null_mut());
        std::mem::transmute::<*mut c_void, TrimFn>(trim)(pool, reserved_before as usize);
    }
}

type AllocAsync = unsafe extern "C" fn(*mut CUdeviceptr, usize, CUstream) -> CUresult;
type AllocFromPool =
    unsafe extern "C" fn(*mut CUdeviceptr, usize, CUmemoryPool, CUstream) -> CUresult;
type FreeAsync = unsafe extern "C" fn(CUdeviceptr, CUstream) -> CUresult;

pub fn alloc_async(
    real: AllocAsync,
    dptr: *mut CUdeviceptr,
    bytes: usize,
    stream: CUstream,
) -> CUresult {
    // SAFETY: the caller's own call, passed on.
    let pass = || unsafe { real(dptr, bytes, stream) };
    if crate::state::refusing() {
        return crate::state::REFUSED_BY_CONFIG;
    }
    let Some(dev) = driver::stream_device(stream) else {
        return pass();
    };
    let Some(pool) = driver::current_pool(dev) else {
        return pass();
    };
    pooled_alloc(dptr, bytes, dev, pool, pass)
}

pub fn alloc_from_pool_async(
    real: AllocFromPool,
    dptr: *mut CUdeviceptr,
    bytes: usize,
    pool: CUmemoryPool,
    stream: CUstream,
) -> CUresult {
    // SAFETY: the caller's own call, passed on.
    let pass = || unsafe { real(dptr, bytes, pool, stream) };
    if crate::state::refusing() {
        return crate::state::REFUSED_BY_CONFIG;
    }
    let known = POOLS
        .lock()
        .iter()
        .find(|p| p.pool == pool as usize)
        .map(|p| p.dev);
    let dev = known
        .or_else(|| driver::pool_device(pool))
        .or_else(|| driver::stream_device(stream));
    let Some(dev) = dev else {
        return pass();
    };
    pooled_alloc(dptr, bytes, dev, pool, pass)
}

pub fn free_async(real: FreeAsync, ptr: CUdeviceptr, stream: CUstream) -> CUresult {
    // SAFETY: the caller's own call, passed on.
    super::alloc::charged_free(ptr, || unsafe { real(ptr, stream) })
}

type PoolCreate = unsafe extern "C" fn(*mut CUmemoryPool, *const CUmemPoolProps) -> CUresult;

pub fn pool_create(
    real: PoolCreate,
    pool: *mut CUmemoryPool,
    props: *const CUmemPoolProps,
) -> CUresult {
    // SAFETY: the caller's own call, passed on.
    let r = unsafe { real(pool, props) };
    if r == CUDA_SUCCESS {
        if let (Some(p), Some(props)) = (read_out(pool), read_out(props)) {
            if props.location.type_ == CU_MEM_LOCATION_TYPE_DEVICE {
                let mut pools = POOLS.lock();
                find(&mut pools, p as usize, props.location.id);
            }
        }
    }
    r
}

pub fn pool_destroy(
    real: unsafe extern "C" fn(CUmemoryPool) -> CUresult,
    pool: CUmemoryPool,
) -> CUresult {
    let _op = crate::overhead::in_flight();
    // SAFETY: the caller's own call, passed on.
    let r = unsafe { real(pool) };
    if r == CUDA_SUCCESS {
        let mut pools = POOLS.lock();
        if let Some(i) = pools.iter().position(|p| p.pool == pool as usize) {
            let gone = pools.swap_remove(i);
            if let Some(ledger) = LEDGER.device(gone.dev) {
                ledger.give_back(gone.charged);
            }
        }
    }
    r
}

pub fn pool_trim(
    real: unsafe extern "C" fn(CUmemoryPool, usize) -> CUresult,
    pool: CUmemoryPool,
    keep: usize,
) -> CUresult {
    let _op = crate::overhead::in_flight();
    // SAFETY: the caller's own call, passed on.
    let r = unsafe { real(pool, keep) };
    if r == CUDA_SUCCESS {
        sync(pool as usize);
    }
    r
}
