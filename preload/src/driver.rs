//! Driver calls the hooks make for their own bookkeeping: which device is current, what a pool holds, how
//! large an array really is. Resolved once from the real driver; none of them is a hooked entry point, so
//! none of them is counted.

use crate::cuda::*;
use crate::entry_points::{cuDeviceTotalMem_v2, cuMemGetInfo_v2};
use crate::state::{self, Devices};
use std::ffi::{c_void, CStr};
use std::sync::atomic::Ordering;
use std::sync::OnceLock;

type GetCount = unsafe extern "C" fn(*mut i32) -> CUresult;
type GetUuid = unsafe extern "C" fn(*mut [u8; 16], CUdevice) -> CUresult;
type TotalMem = unsafe extern "C" fn(*mut usize, CUdevice) -> CUresult;
type CtxGetDevice = unsafe extern "C" fn(*mut CUdevice) -> CUresult;
type StreamGetDevice = unsafe extern "C" fn(CUstream, *mut CUdevice) -> CUresult;
type GetMemPool = unsafe extern "C" fn(*mut CUmemoryPool, CUdevice) -> CUresult;
type PoolGetAttribute = unsafe extern "C" fn(CUmemoryPool, i32, *mut c_void) -> CUresult;
type ArrayRequirements =
    unsafe extern "C" fn(*mut CUDA_ARRAY_MEMORY_REQUIREMENTS, *mut c_void, CUdevice) -> CUresult;
type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> CUresult;

struct Fns {
    get_count: Option<GetCount>,
    get_uuid: Option<GetUuid>,
    ctx_get_device: Option<CtxGetDevice>,
    stream_get_device: Option<StreamGetDevice>,
    get_mem_pool: Option<GetMemPool>,
    pool_get_attribute: Option<PoolGetAttribute>,
    array_requirements: Option<ArrayRequirements>,
    mipmapped_requirements: Option<ArrayRequirements>,
}

fn resolve<T: Copy>(name: &CStr) -> Option<T> {
    let p = state::driver_fn(name);
    assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<*mut c_void>());
    // SAFETY: T is always the function-pointer type matching the C prototype of `name` (see the fields).
    (!p.is_null()).then(|| unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) })
}

fn fns() -> &'static Fns {
    static FNS: OnceLock<Fns> = OnceLock::new();
    FNS.get_or_init(|| Fns {
        get_count: resolve(c"cuDeviceGetCount"),
        get_uuid: resolve(c"cuDeviceGetUuid_v2").or_else(|| resolve(c"cuDeviceGetUuid")),
        ctx_get_device: resolve(c"cuCtxGetDevice"),
        stream_get_device: resolve(c"cuStreamGetDevice"),
        get_mem_pool: resolve(c"cuDeviceGetMemPool"),
        pool_get_attribute: resolve(c"cuMemPoolGetAttribute"),
        array_requirements: resolve(c"cuArrayGetMemoryRequirements"),
        mipmapped_requirements: resolve(c"cuMipmappedArrayGetMemoryRequirements"),
    })
}

fn ok(r: CUresult) -> Option<()> {
    (r == CUDA_SUCCESS).then_some(())
}

/// The device's physical memory, from the real `cuDeviceTotalMem_v2`.
pub fn physical_total(dev: CUdevice) -> Option<u64> {
    let p = cuDeviceTotalMem_v2::REAL.load(Ordering::Acquire);
    if p.is_null() {
        return None;
    }
    // SAFETY: the slot holds the driver's cuDeviceTotalMem_v2.
    let f = unsafe { std::mem::transmute::<*mut c_void, TotalMem>(p) };
    let mut bytes = 0usize;
    // SAFETY: writes one size_t into `bytes`.
    ok(unsafe { f(&mut bytes, dev) })?;
    Some(bytes as u64)
}

/// The driver's own (free, total) for the current context.
pub fn real_mem_info() -> Option<(u64, u64)> {
    let p = cuMemGetInfo_v2::REAL.load(Ordering::Acquire);
    if p.is_null() {
        return None;
    }
    // SAFETY: the slot holds the driver's cuMemGetInfo_v2.
    let f = unsafe { std::mem::transmute::<*mut c_void, MemGetInfo>(p) };
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: writes two size_t values we own.
    ok(unsafe { f(&mut free, &mut total) })?;
    Some((free as u64, total as u64))
}

/// Every device this process sees; `None` until the driver is initialised.
pub fn discover_devices() -> Option<Devices> {
    let f = fns();
    let mut count = 0;
    // SAFETY: writes one int.
    ok(unsafe { f.get_count?(&mut count) })?;
    let mut uuids = Vec::new();
    let mut raw_uuids = Vec::new();
    let mut totals = Vec::new();
    for dev in 0..count {
        let mut raw = [0u8; 16];
        // SAFETY: writes the 16-byte CUuuid we own.
        ok(unsafe { f.get_uuid?(&mut raw, dev) })?;
        uuids.push(core_lib::config::format_uuid(&raw));
        raw_uuids.push(raw);
        totals.push(physical_total(dev)?);
    }
    Some(Devices {
        uuids,
        raw_uuids,
        totals,
    })
}

/// The device of the calling thread's current context. A process that sees one device needs no driver
/// call for it: any context it has is on device 0. (With none current, callers that allocate get the
/// driver's own refusal, and what they reserved goes back.)
pub fn current_device() -> Option<CUdevice> {
    if crate::state::devices().is_some_and(|d| d.uuids.len() == 1) {
        return Some(0);
    }
    let mut dev = -1;
    // SAFETY: writes one int.
    ok(unsafe { fns().ctx_get_device?(&mut dev) })?;
    Some(dev)
}

/// The device a stream's work runs on (its context's), falling back to the current context's.
pub fn stream_device(stream: CUstream) -> Option<CUdevice> {
    if let Some(f) = fns().stream_get_device {
        let mut dev = -1;
        // SAFETY: writes one int; the stream is the caller's.
        if unsafe { f(stream, &mut dev) } == CUDA_SUCCESS {
            return Some(dev);
        }
    }
    current_device()
}

/// The pool `cuMemAllocAsync` draws from on this device.
pub fn current_pool(dev: CUdevice) -> Option<CUmemoryPool> {
    let mut pool = std::ptr::null_mut();
    // SAFETY: writes one handle.
    ok(unsafe { fns().get_mem_pool?(&mut pool, dev) })?;
    Some(pool)
}

/// The device whose current (by default, its default) pool is `pool`, if any: a pool we did not see
/// created still belongs to a device, which need not be the stream's.
pub fn pool_device(pool: CUmemoryPool) -> Option<CUdevice> {
    let mut count = 0;
    // SAFETY: writes one int.
    ok(unsafe { fns().get_count?(&mut count) })?;
    (0..count).find(|&d| current_pool(d) == Some(pool))
}

/// A pool's (reserved, used) bytes.
pub fn pool_usage(pool: CUmemoryPool) -> Option<(u64, u64)> {
    let f = fns().pool_get_attribute?;
    let (mut reserved, mut used) = (0u64, 0u64);
    // SAFETY: both attributes are cuuint64_t values written into our u64s.
    ok(unsafe {
        f(
            pool,
            CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT,
            (&mut reserved as *mut u64).cast(),
        )
    })?;
    // SAFETY: as above.
    ok(unsafe {
        f(
            pool,
            CU_MEMPOOL_ATTR_USED_MEM_CURRENT,
            (&mut used as *mut u64).cast(),
        )
    })?;
    Some((reserved, used))
}

/// What an array really occupies on `dev`.
pub fn array_size(array: *mut c_void, dev: CUdevice, mipmapped: bool) -> Option<u64> {
    let f = if mipmapped {
        fns().mipmapped_requirements?
    } else {
        fns().array_requirements?
    };
    let mut req = CUDA_ARRAY_MEMORY_REQUIREMENTS::default();
    // SAFETY: writes the requirements struct we own; the array is the one the driver just created.
    ok(unsafe { f(&mut req, array, dev) })?;
    Some(req.size as u64)
}
