//! The one table of wrapped entry points.
//!
//! Each line declares one hooked function: its library, its C signature, the hook that implements it, and
//! every exported ABI variant that shares that signature (`_v2`, `_ptsz`…). From that line the macro makes,
//! per variant:
//! - the exported shim `cuMemAllocAsync_ptsz` (what `-lcuda` programs bind to);
//! - a module of the same name holding `REAL`, the cached pointer to the driver's function;
//! - an [`Entry`] in [`ENTRIES`], which answers `dlsym` (by name) and `cuGetProcAddress` (by the real
//!   pointer the driver hands out, so the variant is always the one the driver chose).
//!
//! Anything not listed here is never wrapped: `dlsym` and `cuGetProcAddress` return the driver's own
//! pointer, so launches and copies cost nothing extra. A line may end in `takes` (the function takes device
//! memory: if its hook fails inside before calling the driver, the call is refused with out-of-memory
//! rather than let through uncounted) and in `unless CONDITION`: while the condition holds, the shim calls
//! the driver at once, before the re-entry guard (for the hot graph launch, whose hook has nothing to do
//! for graphs without allocation nodes).

use crate::args::Out;
use crate::cuda::*;
use crate::hooks;
use crate::real::{self, Lib};
use std::ffi::{c_char, c_uint, c_void, CStr};
use std::sync::atomic::{AtomicPtr, Ordering};

/// One exported variant of a wrapped entry point.
pub struct Entry {
    /// The exported symbol, e.g. `cuMemAlloc_v2`.
    pub name: &'static CStr,
    pub lib: Lib,
    /// Our shim's address (a function, because casting a function to a pointer is not const).
    pub wrapper: fn() -> *mut c_void,
    /// The driver's function, once resolved.
    pub real: &'static AtomicPtr<c_void>,
}

impl Entry {
    pub fn real(&self) -> *mut c_void {
        self.real.load(Ordering::Acquire)
    }
}

macro_rules! entry_points {
    // One exported variant: its REAL slot and its shim.
    // The condition of a line's `unless`: none is `false`.
    (@cond ()) => { false };
    (@cond ($($cond:tt)+)) => { $($cond)+ };
    // The answer of a line's shim when its hook panics before calling the driver: `takes` lines (they
    // take device memory) refuse with out-of-memory, others go to the driver.
    (@fail ()) => { None };
    (@fail (takes)) => { Some(CUDA_ERROR_OUT_OF_MEMORY) };
    // One line: a shim for each of its variants.
    (@line $lib:ident $params:tt $ret:ty => $hook:path, [$($variant:ident),+] $fail:tt $cond:tt) => {
        $(
            entry_points!(@shim $lib $variant $params $ret => $hook, $fail $cond);
        )+
    };
    (@shim $lib:ident $variant:ident ($($arg:ident: $ty:ty),*) $ret:ty => $hook:path, $fail:tt $cond:tt) => {
        #[allow(non_snake_case)]
        pub mod $variant {
            #[allow(unused_imports)]
            use super::*;
            pub static REAL: std::sync::atomic::AtomicPtr<std::ffi::c_void> =
                std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());
            /// The exported symbol.
            pub const NAME: &std::ffi::CStr =
                match std::ffi::CStr::from_bytes_with_nul(concat!(stringify!($variant), "\0").as_bytes()) {
                    Ok(s) => s,
                    Err(_) => panic!("entry point names have no interior NUL"),
                };
            /// The driver's function, typed.
            pub type Real = unsafe extern "C" fn($($ty),*) -> $ret;
            /// The driver's function, typed (see [`real_pointer`]); `None` if the driver lacks it.
            #[inline(always)]
            pub fn real() -> Option<Real> {
                let p = real_pointer(&REAL, Lib::$lib, NAME)?;
                // SAFETY: p was returned by the driver's dlsym for exactly this symbol, whose C prototype
                // is the signature declared on this line of the table.
                Some(unsafe { std::mem::transmute::<*mut std::ffi::c_void, Real>(p) })
            }
        }

        #[allow(non_snake_case, clippy::missing_safety_doc)]
        #[cfg_attr(not(test), no_mangle)]
        pub unsafe extern "C" fn $variant($($arg: $ty),*) -> $ret {
            let Some(real) = $variant::real() else {
                return missing(Lib::$lib);
            };
            if entry_points!(@cond $cond) {
                // SAFETY: the caller's arguments, passed on unchanged to the function they meant to call.
                return unsafe { real($($arg),*) };
            }
            crate::guard::run(
                stringify!($variant),
                entry_points!(@fail $fail),
                |pass| {
                    // SAFETY: each argument is what the caller passed to this driver function, whose
                    // contract makes a pointer null or valid for the type it names during the call
                    // (see `crate::args`); the hook runs within the call.
                    let ($($arg,)*) = unsafe { ($(crate::args::Arg::safe($arg),)*) };
                    $hook(pass, $($arg),*)
                },
                // SAFETY: the caller's arguments, passed on unchanged to the function they meant to call.
                || unsafe { real($($arg),*) },
            )
        }
    };
    ($(
        $lib:ident fn $params:tt -> $ret:ty => $hook:path, [$($variant:ident),+ $(,)?] $($takes:ident)? $(unless $pass:expr)?;
    )*) => {
        $(
            entry_points!(@line $lib $params $ret => $hook, [$($variant),+] ($($takes)?) ($($pass)?));
        )*

        /// Every wrapped variant, in declaration order.
        pub static ENTRIES: &[Entry] = &[
            $($(
                Entry {
                    name: $variant::NAME,
                    lib: Lib::$lib,
                    wrapper: || $variant as *mut c_void,
                    real: &$variant::REAL,
                },
            )+)*
        ];
    };
}

entry_points! {
    // Initialisation and entry-point lookup.
    Cuda fn (flags: c_uint) -> CUresult => hooks::init::cu_init, [cuInit];
    Cuda fn (symbol: *const c_char, pfn: *mut *mut c_void, version: i32, flags: u64) -> CUresult
        => get_proc_address, [cuGetProcAddress];
    Cuda fn (symbol: *const c_char, pfn: *mut *mut c_void, version: i32, flags: u64, status: *mut i32) -> CUresult
        => get_proc_address_v2, [cuGetProcAddress_v2];

    // Contexts: their own memory counts against the cap.
    Cuda fn (ctx: *mut CUcontext, dev: CUdevice) -> CUresult
        => hooks::context::primary_retain, [cuDevicePrimaryCtxRetain] takes;
    Cuda fn (dev: CUdevice) -> CUresult
        => hooks::context::primary_release, [cuDevicePrimaryCtxRelease_v2, cuDevicePrimaryCtxRelease];
    Cuda fn (dev: CUdevice) -> CUresult
        => hooks::context::primary_reset, [cuDevicePrimaryCtxReset_v2, cuDevicePrimaryCtxReset];
    Cuda fn (ctx: *mut CUcontext, flags: c_uint, dev: CUdevice) -> CUresult
        => hooks::context::ctx_create, [cuCtxCreate_v2, cuCtxCreate] takes;
    Cuda fn (ctx: *mut CUcontext, params: *mut c_void, nparams: i32, flags: c_uint, dev: CUdevice) -> CUresult
        => hooks::context::ctx_create_v3, [cuCtxCreate_v3] takes;
    Cuda fn (ctx: *mut CUcontext, params: *mut c_void, flags: c_uint, dev: CUdevice) -> CUresult
        => hooks::context::ctx_create_v4, [cuCtxCreate_v4] takes;
    Cuda fn (ctx: CUcontext) -> CUresult => hooks::context::ctx_destroy, [cuCtxDestroy_v2, cuCtxDestroy];

    // Linear device memory.
    Cuda fn (dptr: *mut CUdeviceptr, bytes: usize) -> CUresult => hooks::alloc::mem_alloc, [cuMemAlloc_v2] takes;
    Cuda fn (dptr: *mut CUdeviceptr, pitch: *mut usize, width: usize, height: usize, elem: c_uint) -> CUresult
        => hooks::alloc::mem_alloc_pitch, [cuMemAllocPitch_v2] takes;
    Cuda fn (dptr: *mut CUdeviceptr, bytes: usize, flags: c_uint) -> CUresult
        => hooks::alloc::mem_alloc_managed, [cuMemAllocManaged] takes;
    Cuda fn (dptr: CUdeviceptr) -> CUresult => hooks::alloc::mem_free, [cuMemFree_v2];
    // The 32-bit ABI of CUDA 3.1 and before cannot be counted safely; it is refused, never let through.
    Cuda fn (dptr: *mut u32, bytes: c_uint) -> CUresult => hooks::alloc::legacy_alloc, [cuMemAlloc];
    Cuda fn (dptr: *mut u32, pitch: *mut c_uint, width: c_uint, height: c_uint, elem: c_uint) -> CUresult
        => hooks::alloc::legacy_alloc_pitch, [cuMemAllocPitch];

    // Stream-ordered allocation and pools. The `_ptsz` variants have hooks of their own: there the null
    // stream is the thread's per-thread stream, which can capture.
    Cuda fn (dptr: *mut CUdeviceptr, bytes: usize, stream: CUstream) -> CUresult
        => hooks::pool::alloc_async, [cuMemAllocAsync] takes;
    Cuda fn (dptr: *mut CUdeviceptr, bytes: usize, stream: CUstream) -> CUresult
        => hooks::pool::alloc_async_ptsz, [cuMemAllocAsync_ptsz] takes;
    Cuda fn (dptr: *mut CUdeviceptr, bytes: usize, pool: CUmemoryPool, stream: CUstream) -> CUresult
        => hooks::pool::alloc_from_pool_async, [cuMemAllocFromPoolAsync] takes;
    Cuda fn (dptr: *mut CUdeviceptr, bytes: usize, pool: CUmemoryPool, stream: CUstream) -> CUresult
        => hooks::pool::alloc_from_pool_async_ptsz, [cuMemAllocFromPoolAsync_ptsz] takes;
    Cuda fn (dptr: CUdeviceptr, stream: CUstream) -> CUresult
        => hooks::pool::free_async, [cuMemFreeAsync];
    Cuda fn (dptr: CUdeviceptr, stream: CUstream) -> CUresult
        => hooks::pool::free_async_ptsz, [cuMemFreeAsync_ptsz];
    Cuda fn (pool: *mut CUmemoryPool, props: *const CUmemPoolProps) -> CUresult
        => hooks::pool::pool_create, [cuMemPoolCreate];
    Cuda fn (pool: CUmemoryPool) -> CUresult => hooks::pool::pool_destroy, [cuMemPoolDestroy];
    Cuda fn (pool: CUmemoryPool, keep: usize) -> CUresult => hooks::pool::pool_trim, [cuMemPoolTrimTo];

    // Virtual memory management: physical memory is charged at cuMemCreate and given back when the last
    // reference and the last mapping are gone.
    Cuda fn (handle: *mut CUmemGenericAllocationHandle, size: usize, prop: *const CUmemAllocationProp, flags: u64) -> CUresult
        => hooks::vmm::mem_create, [cuMemCreate] takes;
    Cuda fn (handle: CUmemGenericAllocationHandle) -> CUresult => hooks::vmm::mem_release, [cuMemRelease];
    Cuda fn (ptr: CUdeviceptr, size: usize, offset: usize, handle: CUmemGenericAllocationHandle, flags: u64) -> CUresult
        => hooks::vmm::mem_map, [cuMemMap];
    Cuda fn (ptr: CUdeviceptr, size: usize) -> CUresult => hooks::vmm::mem_unmap, [cuMemUnmap];
    Cuda fn (handle: *mut CUmemGenericAllocationHandle, addr: *mut c_void) -> CUresult
        => hooks::vmm::retain_handle, [cuMemRetainAllocationHandle];

    // Arrays, at the size the driver reports for them.
    Cuda fn (array: *mut CUarray, desc: *const CUDA_ARRAY_DESCRIPTOR) -> CUresult
        => hooks::array::array_create, [cuArrayCreate_v2] takes;
    Cuda fn (array: *mut CUarray, desc: *const CUDA_ARRAY3D_DESCRIPTOR) -> CUresult
        => hooks::array::array3d_create, [cuArray3DCreate_v2] takes;
    Cuda fn (array: *mut CUmipmappedArray, desc: *const CUDA_ARRAY3D_DESCRIPTOR, levels: c_uint) -> CUresult
        => hooks::array::mipmapped_create, [cuMipmappedArrayCreate] takes;
    Cuda fn (array: CUarray) -> CUresult => hooks::array::array_destroy, [cuArrayDestroy];
    Cuda fn (array: CUmipmappedArray) -> CUresult => hooks::array::mipmapped_destroy, [cuMipmappedArrayDestroy];

    // Stream capture: counted, so that our own queries never invalidate a capture (see `driver`).
    Cuda fn (stream: CUstream) -> CUresult
        => hooks::capture::begin_v1, [cuStreamBeginCapture, cuStreamBeginCapture_ptsz];
    Cuda fn (stream: CUstream, mode: i32) -> CUresult
        => hooks::capture::begin, [cuStreamBeginCapture_v2, cuStreamBeginCapture_v2_ptsz];
    Cuda fn (stream: CUstream, graph: CUgraph, deps: *const CUgraphNode, data: *const c_void, n: usize, mode: i32) -> CUresult
        => hooks::capture::begin_to_graph, [cuStreamBeginCaptureToGraph, cuStreamBeginCaptureToGraph_ptsz];
    Cuda fn (stream: CUstream, graph: *mut CUgraph) -> CUresult => hooks::capture::end, [cuStreamEndCapture];
    Cuda fn (stream: CUstream, graph: *mut CUgraph) -> CUresult
        => hooks::capture::end_ptsz, [cuStreamEndCapture_ptsz];

    // Graphs: memory nodes are charged at what the graph allocator really holds, and a launch or upload
    // that would cross the cap is refused before the driver maps anything.
    Cuda fn (exec: *mut CUgraphExec, graph: CUgraph, err: *mut CUgraphNode, log: *mut c_char, size: usize) -> CUresult
        => hooks::graph::instantiate_v1, [cuGraphInstantiate, cuGraphInstantiate_v2];
    Cuda fn (exec: *mut CUgraphExec, graph: CUgraph, flags: u64) -> CUresult
        => hooks::graph::instantiate_with_flags, [cuGraphInstantiateWithFlags];
    Cuda fn (exec: *mut CUgraphExec, graph: CUgraph, params: *mut CUDA_GRAPH_INSTANTIATE_PARAMS) -> CUresult
        => hooks::graph::instantiate_with_params, [cuGraphInstantiateWithParams, cuGraphInstantiateWithParams_ptsz];
    Cuda fn (exec: CUgraphExec, stream: CUstream) -> CUresult
        => hooks::graph::launch, [cuGraphLaunch, cuGraphLaunch_ptsz] takes unless !crate::registry::graphs::any();
    Cuda fn (exec: CUgraphExec, stream: CUstream) -> CUresult
        => hooks::graph::upload, [cuGraphUpload, cuGraphUpload_ptsz] takes;
    Cuda fn (exec: CUgraphExec) -> CUresult => hooks::graph::exec_destroy, [cuGraphExecDestroy];
    Cuda fn (dev: CUdevice) -> CUresult => hooks::graph::trim, [cuDeviceGraphMemTrim];

    // Context limits that reserve device memory.
    Cuda fn (limit: i32, value: usize) -> CUresult => hooks::limits::set_limit, [cuCtxSetLimit] takes;

    // Memory information shows the cap.
    Cuda fn (free: *mut usize, total: *mut usize) -> CUresult => hooks::info::mem_get_info, [cuMemGetInfo_v2];
    Cuda fn (bytes: *mut usize, dev: CUdevice) -> CUresult => hooks::info::device_total_mem, [cuDeviceTotalMem_v2];
    Nvml fn (device: nvmlDevice_t, memory: *mut nvmlMemory_t) -> nvmlReturn_t
        => hooks::info::nvml_memory_info, [nvmlDeviceGetMemoryInfo];
    Nvml fn (device: nvmlDevice_t, memory: *mut nvmlMemory_v2_t) -> nvmlReturn_t
        => hooks::info::nvml_memory_info, [nvmlDeviceGetMemoryInfo_v2];
}

/// The real function behind a slot, once the library has started (see [`crate::startup`]); NVML's
/// functions are resolved on first use. `None` if the driver lacks it.
fn real_pointer(slot: &AtomicPtr<c_void>, lib: Lib, name: &CStr) -> Option<*mut c_void> {
    crate::startup::start(resolve_driver);
    let mut p = slot.load(Ordering::Acquire);
    if p.is_null() && lib == Lib::Nvml {
        let handle = real::nvml_handle();
        if !handle.is_null() {
            p = real::lookup(handle, name);
            slot.store(p, Ordering::Release);
        }
    }
    (!p.is_null()).then_some(p)
}

/// Fills the driver's slots of the table from the driver's handle, at start-up.
fn resolve_driver(handle: *mut c_void) {
    for entry in ENTRIES.iter().filter(|e| e.lib == Lib::Cuda) {
        entry
            .real
            .store(real::lookup(handle, entry.name), Ordering::Release);
    }
}

/// What a shim returns when the driver lacks the function.
fn missing(lib: Lib) -> i32 {
    match lib {
        Lib::Cuda => CUDA_ERROR_NOT_FOUND,
        Lib::Nvml => NVML_ERROR_FUNCTION_NOT_FOUND,
    }
}

/// Our wrapper for a real driver pointer, if that pointer is one of the variants we wrap.
pub fn wrapper_for_real(real: *mut c_void) -> Option<*mut c_void> {
    if real.is_null() {
        return None;
    }
    ENTRIES
        .iter()
        .find(|e| e.real() == real)
        .map(|e| (e.wrapper)())
}

// ---- cuGetProcAddress ----
//
// `cuGetProcAddress` and `cuGetProcAddress_v2`: the driver chooses the ABI variant for (name, version,
// flags); we hand out our wrapper for exactly that variant, found by the real pointer the driver returned,
// and the driver's own pointer for anything we do not wrap. Their hooks live here, beside the table they
// answer from. <https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__DRIVER__ENTRY__POINT.html>

fn get_proc_address(
    pass: impl Fn() -> CUresult,
    _symbol: *const c_char,
    pfn: Out<*mut c_void>,
    _version: i32,
    _flags: u64,
) -> CUresult {
    let r = pass();
    if r == CUDA_SUCCESS {
        if let Some(wrapper) = pfn.get().and_then(wrapper_for_real) {
            pfn.set(wrapper);
        }
    }
    r
}

/// As [`get_proc_address`]: the status the driver writes is left as it is.
fn get_proc_address_v2(
    pass: impl Fn() -> CUresult,
    symbol: *const c_char,
    pfn: Out<*mut c_void>,
    version: i32,
    flags: u64,
    _status: Out<i32>,
) -> CUresult {
    get_proc_address(pass, symbol, pfn, version, flags)
}
