//! Stream-ordered allocation: each device's default pool and created pools, which grow by
//! `FAKECUDA_POOL_STEP` and keep freed memory reserved until a synchronisation (or cuMemPoolTrimTo)
//! trims them to their release threshold; cuMemAllocAsync and cuMemFreeAsync, which a capturing stream
//! turns into graph nodes instead (capture.rs decides); the pool attributes vramcap reads.

use crate::devices::dev_ok;
use crate::memory::{Alloc, Backing, PAGE};
use crate::results::{CUresult, INVALID_CONTEXT, INVALID_DEVICE, INVALID_VALUE, OK};
use crate::state::{call, out, Fake};
use std::collections::HashMap;
use std::ffi::c_void;

/// A pool: the device its memory is on, what it has taken from the device (RESERVED_MEM_CURRENT), what
/// of that is allocated (USED_MEM_CURRENT), and what it keeps at a trim (RELEASE_THRESHOLD).
pub(crate) struct Pool {
    pub(crate) dev: usize,
    pub(crate) reserved: u64,
    pub(crate) used: u64,
    pub(crate) threshold: u64,
}

fn default_pool(dev: usize) -> usize {
    0x4000 + dev
}

/// The default pool of each of `devices` devices, empty.
pub(crate) fn default_pools(devices: usize) -> HashMap<usize, Pool> {
    let mut pools = HashMap::new();
    for dev in 0..devices {
        pools.insert(
            default_pool(dev),
            Pool {
                dev,
                reserved: 0,
                used: 0,
                threshold: 0,
            },
        );
    }
    pools
}

impl Fake {
    /// The device a pool's memory lives on.
    pub(crate) fn pool_dev(&self, pool: usize) -> Option<usize> {
        self.pools.get(&pool).map(|p| p.dev)
    }

    fn pool_alloc(&mut self, pool: usize, size: u64) -> Result<u64, CUresult> {
        let need = size.div_ceil(PAGE) * PAGE;
        let (dev, grow) = {
            let p = self.pools.get(&pool).ok_or(INVALID_VALUE)?;
            (
                p.dev,
                need.saturating_sub(p.reserved - p.used)
                    .div_ceil(self.pool_step)
                    * self.pool_step,
            )
        };
        self.take(dev, grow)?;
        let p = self.pools.get_mut(&pool).ok_or(INVALID_VALUE)?;
        p.reserved += grow;
        p.used += need;
        let va = self.va(size);
        self.allocs.insert(
            va,
            Alloc {
                dev,
                kind: Backing::Pool(pool),
                size,
            },
        );
        Ok(va)
    }

    /// Pools give memory above their release threshold back at synchronisation.
    pub(crate) fn trim_pools(&mut self, keep: Option<(usize, u64)>) {
        let mut back = Vec::new();
        for (id, p) in self.pools.iter_mut() {
            let floor = match keep {
                Some((pool, k)) if pool == *id => k,
                Some(_) => continue,
                None => p.threshold,
            };
            let target = p.used.max(floor);
            if p.reserved > target {
                back.push((p.dev, p.reserved - target));
                p.reserved = target;
            }
        }
        for (dev, bytes) in back {
            self.give(dev, bytes);
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetMemPool(pool: *mut usize, dev: i32) -> CUresult {
    call("cuDeviceGetMemPool", |s| match dev_ok(s, dev) {
        // SAFETY: `pool` is the caller's out-parameter (the caller's contract).
        Some(d) => unsafe { out(pool, default_pool(d)) },
        None => INVALID_DEVICE,
    })
}

/// Stream-ordered allocation. On a capturing stream it allocates nothing and adds a graph node instead
/// (capture.rs decides); elsewhere it is one of the calls a capture prohibits.
///
/// # Safety
/// `dptr` is null or valid for a write: the caller's out-parameter.
unsafe fn alloc_async(
    name: &str,
    dptr: *mut u64,
    size: usize,
    pool: Option<usize>,
    stream: crate::capture::Stream,
) -> CUresult {
    call(name, |s| {
        // SAFETY: `dptr` is null or writable (this function's contract).
        if let Some(r) = unsafe { crate::capture::alloc_async(s, stream, dptr, size as u64, pool) }
        {
            return r;
        }
        let pool = match pool {
            Some(p) => p,
            None => match s.current_dev() {
                Some(d) => default_pool(d),
                None => return INVALID_CONTEXT,
            },
        };
        if size == 0 || dptr.is_null() {
            return INVALID_VALUE;
        }
        match s.pool_alloc(pool, size as u64) {
            // SAFETY: `dptr` is null or writable (this function's contract).
            Ok(va) => unsafe { out(dptr, va) },
            Err(e) => e,
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocAsync(dptr: *mut u64, size: usize, st: *mut c_void) -> CUresult {
    let st = crate::capture::stream(st, false);
    // SAFETY: `dptr` is the caller's out-parameter (the caller's contract).
    unsafe { alloc_async("cuMemAllocAsync", dptr, size, None, st) }
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocAsync_ptsz(
    dptr: *mut u64,
    size: usize,
    st: *mut c_void,
) -> CUresult {
    let st = crate::capture::stream(st, true);
    // SAFETY: `dptr` is the caller's out-parameter (the caller's contract).
    unsafe { alloc_async("cuMemAllocAsync_ptsz", dptr, size, None, st) }
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocFromPoolAsync(
    dptr: *mut u64,
    size: usize,
    pool: usize,
    st: *mut c_void,
) -> CUresult {
    let st = crate::capture::stream(st, false);
    // SAFETY: `dptr` is the caller's out-parameter (the caller's contract).
    unsafe { alloc_async("cuMemAllocFromPoolAsync", dptr, size, Some(pool), st) }
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocFromPoolAsync_ptsz(
    dptr: *mut u64,
    size: usize,
    pool: usize,
    st: *mut c_void,
) -> CUresult {
    let st = crate::capture::stream(st, true);
    // SAFETY: `dptr` is the caller's out-parameter (the caller's contract).
    unsafe { alloc_async("cuMemAllocFromPoolAsync_ptsz", dptr, size, Some(pool), st) }
}

fn free_async(name: &str, ptr: u64, stream: crate::capture::Stream) -> CUresult {
    call(name, |s| {
        if let Some(r) = crate::capture::free_async(s, stream, ptr) {
            return r;
        }
        s.free(ptr)
    })
}

#[no_mangle]
pub extern "C" fn cuMemFreeAsync(ptr: u64, st: *mut c_void) -> CUresult {
    free_async("cuMemFreeAsync", ptr, crate::capture::stream(st, false))
}

#[no_mangle]
pub extern "C" fn cuMemFreeAsync_ptsz(ptr: u64, st: *mut c_void) -> CUresult {
    free_async("cuMemFreeAsync_ptsz", ptr, crate::capture::stream(st, true))
}

#[repr(C)]
pub struct PoolProps {
    alloc_type: i32,
    handle_types: i32,
    location_type: i32,
    location_id: i32,
    rest: [u8; 72],
}

#[no_mangle]
pub unsafe extern "C" fn cuMemPoolCreate(pool: *mut usize, props: *const PoolProps) -> CUresult {
    call("cuMemPoolCreate", |s| {
        if let Some(e) = crate::capture::prohibited(s, None) {
            return e;
        }
        // SAFETY: `props` is null or the caller's CUmemPoolProps, readable (the caller's contract);
        // `as_ref` makes a null None.
        let Some(props) = (unsafe { props.as_ref() }) else {
            return INVALID_VALUE;
        };
        let Some(dev) = dev_ok(s, props.location_id) else {
            return INVALID_DEVICE;
        };
        let id = s.next_pool;
        s.next_pool += 1;
        s.pools.insert(
            id,
            Pool {
                dev,
                reserved: 0,
                used: 0,
                threshold: 0,
            },
        );
        // SAFETY: `pool` is the caller's out-parameter (the caller's contract).
        unsafe { out(pool, id) }
    })
}

#[no_mangle]
pub extern "C" fn cuMemPoolDestroy(pool: usize) -> CUresult {
    call("cuMemPoolDestroy", |s| {
        if let Some(e) = crate::capture::prohibited(s, None) {
            return e;
        }
        match s.pools.remove(&pool) {
            Some(p) => {
                s.give(p.dev, p.reserved);
                OK
            }
            None => INVALID_VALUE,
        }
    })
}

#[no_mangle]
pub extern "C" fn cuMemPoolTrimTo(pool: usize, keep: usize) -> CUresult {
    call("cuMemPoolTrimTo", |s| {
        if let Some(e) = crate::capture::prohibited(s, None) {
            return e;
        }
        s.trim_pools(Some((pool, keep as u64)));
        OK
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemPoolGetAttribute(
    pool: usize,
    attr: i32,
    value: *mut u64,
) -> CUresult {
    call("cuMemPoolGetAttribute", |s| {
        if let Some(e) = crate::capture::prohibited(s, None) {
            return e;
        }
        let Some(p) = s.pools.get(&pool) else {
            return INVALID_VALUE;
        };
        let v = match attr {
            4 => p.threshold,
            5 => p.reserved,
            7 => p.used,
            _ => return INVALID_VALUE,
        };
        // SAFETY: `value` is the caller's out-parameter, a cuuint64_t for the attributes answered here
        // (the caller's contract).
        unsafe { out(value, v) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemPoolSetAttribute(
    pool: usize,
    attr: i32,
    value: *const u64,
) -> CUresult {
    call("cuMemPoolSetAttribute", |s| {
        if let Some(e) = crate::capture::prohibited(s, None) {
            return e;
        }
        // Only the release threshold can be set. It is checked first: other attributes' values are ints,
        // not to be read as a u64 (either way the answer is INVALID_VALUE).
        if attr != 4 {
            return INVALID_VALUE;
        }
        // SAFETY: `value` is null or the caller's value of RELEASE_THRESHOLD, a cuuint64_t (the caller's
        // contract); `as_ref` makes a null None.
        let (Some(p), Some(v)) = (s.pools.get_mut(&pool), unsafe { value.as_ref() }) else {
            return INVALID_VALUE;
        };
        p.threshold = *v;
        OK
    })
}
