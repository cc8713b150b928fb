//! Stream-ordered allocation: `cuMemAllocAsync`, `cuMemAllocFromPoolAsync`, `cuMemFreeAsync` (and their
//! `_ptsz` variants), and the pools behind them.
//! <https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__MALLOC__ASYNC.html>
//!
//! Memory freed into a pool stays reserved by the pool (PyTorch sets the release threshold to the maximum),
//! so the device really holds the pool's *reserved* bytes, not the live allocations. We therefore charge
//! each pool at `CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT`, read from the driver around every call on it, and
//! reserve ahead of an allocation only what the pool's free reserve cannot cover. One lock covers a pool's
//! read-reserve-allocate-read sequence, so two threads cannot both count on the same free reserve.

use super::{Backing, PtrRecord, PTRS};
use crate::cuda::*;
use crate::driver;
use crate::enforce::{self, read_out};
use crate::state::LEDGER;
use core_lib::charge::{round_up_pages, Charge};
use parking_lot::Mutex;

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
            pools.push(PoolCharge { pool, dev, charged: 0 });
            pools.len() - 1
        }
    };
    &mut pools[i]
}

/// Brings the charge of one pool to what the driver says it reserves now.
fn resync(entry: &mut PoolCharge) {
    let Some((reserved, _)) = driver::pool_usage(entry.pool as CUmemoryPool) else { return };
    let Some(ledger) = LEDGER.device(entry.dev) else { return };
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

fn pooled_alloc(
    dptr: *mut CUdeviceptr,
    bytes: usize,
    dev: CUdevice,
    pool: CUmemoryPool,
    call: impl FnOnce() -> CUresult,
) -> CUresult {
    let mut pools = POOLS.lock();
    resync_device(&mut pools, dev);
    let entry = find(&mut pools, pool as usize, dev);
    resync(entry);
    let (reserved, used) = driver::pool_usage(pool).unwrap_or((entry.charged, entry.charged));
    let need = round_up_pages(bytes as u64).saturating_sub(reserved.saturating_sub(used));
    let reservation = match enforce::reserve(dev, Charge::Pages(need)) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let r = call();
    if r != CUDA_SUCCESS {
        return r;
    }
    // The pool's real growth replaces the reservation: charge what the pool reserves now, then give the
    // reservation back (in that order, so the count never dips below the truth), and record the
    // requested bytes with an empty charge.
    resync(entry);
    drop(reservation);
    if let Some(ledger) = LEDGER.device(dev) {
        let _ = ledger.reserve_uncapped(Charge::Pages(0)).commit(bytes as u64);
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
    r
}

type AllocAsync = unsafe extern "C" fn(*mut CUdeviceptr, usize, CUstream) -> CUresult;
type AllocFromPool = unsafe extern "C" fn(*mut CUdeviceptr, usize, CUmemoryPool, CUstream) -> CUresult;
type FreeAsync = unsafe extern "C" fn(CUdeviceptr, CUstream) -> CUresult;

pub fn alloc_async(real: AllocAsync, dptr: *mut CUdeviceptr, bytes: usize, stream: CUstream) -> CUresult {
    // SAFETY (both closures below): the caller's own call, passed on.
    let pass = || unsafe { real(dptr, bytes, stream) };
    if crate::state::refusing() {
        return crate::state::REFUSED_BY_CONFIG;
    }
    let Some(dev) = driver::stream_device(stream) else { return pass() };
    let Some(pool) = driver::current_pool(dev) else { return pass() };
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
    let known = POOLS.lock().iter().find(|p| p.pool == pool as usize).map(|p| p.dev);
    let Some(dev) = known.or_else(|| driver::stream_device(stream)) else { return pass() };
    pooled_alloc(dptr, bytes, dev, pool, pass)
}

pub fn free_async(real: FreeAsync, ptr: CUdeviceptr, stream: CUstream) -> CUresult {
    // SAFETY: the caller's own call, passed on.
    super::alloc::charged_free(ptr, || unsafe { real(ptr, stream) })
}

type PoolCreate = unsafe extern "C" fn(*mut CUmemoryPool, *const CUmemPoolProps) -> CUresult;

pub fn pool_create(real: PoolCreate, pool: *mut CUmemoryPool, props: *const CUmemPoolProps) -> CUresult {
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

pub fn pool_destroy(real: unsafe extern "C" fn(CUmemoryPool) -> CUresult, pool: CUmemoryPool) -> CUresult {
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
    // SAFETY: the caller's own call, passed on.
    let r = unsafe { real(pool, keep) };
    if r == CUDA_SUCCESS {
        sync(pool as usize);
    }
    r
}
