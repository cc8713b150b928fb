//! Context limits, device attributes and kernel launches, as measured on an H200 with driver 580
//! (`docs/probe-graph-limits-h200.txt`).
//!
//! Two limits take device memory, each in its own way:
//! - the stack, EAGERLY: setting CU_LIMIT_STACK_SIZE to v takes (v - current) bytes for every thread the
//!   device can hold (SMs x 2048) at once, and lowering it gives the difference back; the context's cost
//!   already holds the default 1024 bytes. A kernel needing more local memory than the limit grows it on
//!   its own at launch (`fakecuda_local_kernel`).
//! - the malloc heap, LAZILY: setting it takes nothing; the first launch of a kernel that calls malloc
//!   (`fakecuda_malloc_kernel`) takes the heap rounded up to 2 MiB, plus 2 MiB, and from then on the heap
//!   cannot be set (CUDA_ERROR_INVALID_VALUE).
//!
//! The printf FIFO, the pending launch count and the persisting L2 size take nothing.

use crate::capture::{self, Work};
use crate::config::sms;
use crate::devices::dev_ok;
use crate::graph::Kind;
use crate::memory::PAGE;
use crate::results::{CUresult, INVALID_CONTEXT, INVALID_DEVICE, INVALID_VALUE, OK};
use crate::state::{call, out, Fake};
use std::collections::HashMap;
use std::ffi::{c_int, c_uint, c_void};

const UNSUPPORTED_LIMIT: CUresult = 215;

const LIMIT_STACK_SIZE: c_int = 0;
const LIMIT_PRINTF_FIFO_SIZE: c_int = 1;
const LIMIT_MALLOC_HEAP_SIZE: c_int = 2;
const LIMIT_DEV_RUNTIME_SYNC_DEPTH: c_int = 3;
const LIMIT_DEV_RUNTIME_PENDING_LAUNCH_COUNT: c_int = 4;
const LIMIT_MAX_L2_FETCH_GRANULARITY: c_int = 5;
const LIMIT_PERSISTING_L2_CACHE_SIZE: c_int = 6;

const DEFAULT_STACK: u64 = 1024;

/// Resident threads per SM; the SM count is `FAKECUDA_SMS` (config.rs: default 132, an H100/H200 SXM).
const THREADS_PER_SM: u64 = 2048;

/// The fake kernel that calls malloc (`fakecuda_malloc_kernel`), and the tag of the fake kernels with
/// local memory (`fakecuda_local_kernel`: the tag, and the bytes per thread in the low 48 bits).
const MALLOC_KERNEL: usize = 0xfeed_0001;
const LOCAL_TAG: usize = 0xfeed << 48;
const LOCAL_MASK: usize = 0xffff << 48;

/// One device's limits (the device of the current context when they are set).
#[derive(Clone, Copy)]
struct DevLimits {
    stack: u64,
    printf: u64,
    heap: u64,
    /// Whether a kernel that calls malloc has run, which took the heap.
    heap_taken: bool,
    pending: u64,
    l2_fetch: u64,
    persisting: u64,
}

impl Default for DevLimits {
    fn default() -> Self {
        DevLimits {
            stack: DEFAULT_STACK,
            printf: 8_650_752,
            heap: 8 << 20,
            heap_taken: false,
            pending: 2048,
            l2_fetch: 64,
            persisting: 0,
        }
    }
}

#[derive(Default)]
pub(crate) struct Limits {
    devs: HashMap<usize, DevLimits>,
}

fn lim(s: &mut Fake, dev: usize) -> &mut DevLimits {
    s.limits.devs.entry(dev).or_default()
}

/// A device whose last context went: its limits are back to the defaults (the memory went with it).
pub(crate) fn reset_device(s: &mut Fake, dev: usize) {
    s.limits.devs.remove(&dev);
}

/// What a stack of `v` bytes per thread takes beyond what the context's cost holds.
fn stack_bytes(v: u64) -> u64 {
    v.saturating_sub(DEFAULT_STACK) * sms() * THREADS_PER_SM
}

/// Sets the stack, taking or giving back the difference at once; a device that cannot give it leaves the
/// limit as it was (CUDA_ERROR_OUT_OF_MEMORY).
fn set_stack(s: &mut Fake, dev: usize, v: u64) -> CUresult {
    let (was, will) = (stack_bytes(lim(s, dev).stack), stack_bytes(v));
    if will > was {
        if let Err(e) = s.take(dev, will - was) {
            return e;
        }
    } else {
        s.give(dev, was - will);
    }
    lim(s, dev).stack = v;
    OK
}

/// What launching `func` on `dev` takes: the heap, at the first kernel that calls malloc; a larger stack,
/// for a kernel with more local memory than the limit. Plain kernels take nothing.
pub(crate) fn kernel_effect(s: &mut Fake, dev: usize, func: usize) -> CUresult {
    if func == MALLOC_KERNEL {
        let l = *lim(s, dev);
        if !l.heap_taken {
            if let Err(e) = s.take(dev, l.heap.div_ceil(PAGE) * PAGE + PAGE) {
                return e;
            }
            lim(s, dev).heap_taken = true;
        }
    } else if func & LOCAL_MASK == LOCAL_TAG {
        let bytes = (func & !LOCAL_MASK) as u64;
        if bytes > lim(s, dev).stack {
            return set_stack(s, dev, bytes);
        }
    }
    OK
}

fn is_fake_kernel(func: usize) -> bool {
    func == MALLOC_KERNEL || func & LOCAL_MASK == LOCAL_TAG
}

// ---- test hooks ----

/// A kernel that calls malloc: its first launch takes the heap.
#[no_mangle]
pub extern "C" fn fakecuda_malloc_kernel() -> usize {
    MALLOC_KERNEL
}

/// A kernel with `bytes` of local memory per thread: launching it grows the stack to that if the limit
/// is lower, as the driver does on its own.
#[no_mangle]
pub extern "C" fn fakecuda_local_kernel(bytes: u64) -> usize {
    LOCAL_TAG | (bytes as usize & !LOCAL_MASK)
}

// ---- limits ----

/// An unsafe call during capture; the memory-taking limits take or wait as described above.
#[no_mangle]
pub extern "C" fn cuCtxSetLimit(limit: c_int, value: usize) -> CUresult {
    call("cuCtxSetLimit", |s| {
        if let Some(e) = capture::prohibited(s, None) {
            return e;
        }
        let Some(dev) = s.current_dev() else {
            return INVALID_CONTEXT;
        };
        let v = value as u64;
        let l = lim(s, dev);
        match limit {
            LIMIT_STACK_SIZE => return set_stack(s, dev, v),
            LIMIT_PRINTF_FIFO_SIZE => l.printf = v,
            LIMIT_MALLOC_HEAP_SIZE if l.heap_taken => return INVALID_VALUE,
            LIMIT_MALLOC_HEAP_SIZE => l.heap = v,
            LIMIT_DEV_RUNTIME_SYNC_DEPTH => return UNSUPPORTED_LIMIT,
            LIMIT_DEV_RUNTIME_PENDING_LAUNCH_COUNT => l.pending = v,
            LIMIT_MAX_L2_FETCH_GRANULARITY => l.l2_fetch = v,
            LIMIT_PERSISTING_L2_CACHE_SIZE => l.persisting = v,
            _ => return INVALID_VALUE,
        }
        OK
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetLimit(value: *mut usize, limit: c_int) -> CUresult {
    call("cuCtxGetLimit", |s| {
        let Some(dev) = s.current_dev() else {
            return INVALID_CONTEXT;
        };
        let l = *lim(s, dev);
        let v = match limit {
            LIMIT_STACK_SIZE => l.stack,
            LIMIT_PRINTF_FIFO_SIZE => l.printf,
            LIMIT_MALLOC_HEAP_SIZE => l.heap,
            LIMIT_DEV_RUNTIME_SYNC_DEPTH => return UNSUPPORTED_LIMIT,
            LIMIT_DEV_RUNTIME_PENDING_LAUNCH_COUNT => l.pending,
            LIMIT_MAX_L2_FETCH_GRANULARITY => l.l2_fetch,
            LIMIT_PERSISTING_L2_CACHE_SIZE => l.persisting,
            _ => return INVALID_VALUE,
        };
        // SAFETY: `value` is the caller's out-parameter, a size_t (the caller's contract).
        unsafe { out(value, v as usize) }
    })
}

// ---- device attributes ----

/// The fake device's geometry (an H100/H200 SXM's figures) for the attributes programs commonly ask.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetAttribute(
    pi: *mut c_int,
    attrib: c_int,
    dev: c_int,
) -> CUresult {
    call("cuDeviceGetAttribute", |s| {
        let Some(d) = dev_ok(s, dev) else {
            return INVALID_DEVICE;
        };
        let v: i64 = match attrib {
            1 => 1024,                   // MAX_THREADS_PER_BLOCK
            2 | 3 => 1024,               // MAX_BLOCK_DIM_X, _Y
            4 => 64,                     // MAX_BLOCK_DIM_Z
            5 => 2_147_483_647,          // MAX_GRID_DIM_X
            6 | 7 => 65_535,             // MAX_GRID_DIM_Y, _Z
            8 => 49_152,                 // MAX_SHARED_MEMORY_PER_BLOCK
            9 => 65_536,                 // TOTAL_CONSTANT_MEMORY
            10 => 32,                    // WARP_SIZE
            12 | 82 => 65_536,           // MAX_REGISTERS_PER_BLOCK, _PER_MULTIPROCESSOR
            13 => 1_980_000,             // CLOCK_RATE (kHz)
            16 => sms() as i64,          // MULTIPROCESSOR_COUNT
            18 => 0,                     // INTEGRATED
            19 | 31 | 32 => 1,           // CAN_MAP_HOST_MEMORY, CONCURRENT_KERNELS, ECC_ENABLED
            20 => 0,                     // COMPUTE_MODE (default)
            33 => 0x18 + d as i64,       // PCI_BUS_ID
            34 | 50 => 0,                // PCI_DEVICE_ID, PCI_DOMAIN_ID
            36 => 2_619_000,             // MEMORY_CLOCK_RATE (kHz)
            37 => 5120,                  // GLOBAL_MEMORY_BUS_WIDTH
            38 => 52_428_800,            // L2_CACHE_SIZE
            39 => THREADS_PER_SM as i64, // MAX_THREADS_PER_MULTIPROCESSOR
            40 => 3,                     // ASYNC_ENGINE_COUNT
            41 => 1,                     // UNIFIED_ADDRESSING
            83 | 89 => 1,                // MANAGED_MEMORY, CONCURRENT_MANAGED_ACCESS
            75 => 9,                     // COMPUTE_CAPABILITY_MAJOR
            76 => 0,                     // COMPUTE_CAPABILITY_MINOR
            81 => 233_472,               // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
            97 => 232_448,               // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
            102 => 1,                    // VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED
            115 => 1,                    // MEMORY_POOLS_SUPPORTED
            106 => 32,                   // MAX_BLOCKS_PER_MULTIPROCESSOR
            108 => 34_603_008,           // MAX_PERSISTING_L2_CACHE_SIZE
            109 => 134_213_632,          // MAX_ACCESS_POLICY_WINDOW_SIZE
            _ => return INVALID_VALUE,
        };
        // SAFETY: `pi` is the caller's out-parameter, an int (the caller's contract).
        unsafe { out(pi, v as c_int) }
    })
}

// ---- kernel launches ----

/// A launch on a capturing stream is captured as a kernel node; elsewhere a plain kernel does nothing
/// the fake can see, and a fake kernel of the test hooks takes what it takes, or fails the launch with
/// CUDA_ERROR_OUT_OF_MEMORY.
fn launch_kernel(name: &str, f: *mut c_void, h: *mut c_void, ptsz: bool) -> CUresult {
    let st = capture::stream(h, ptsz);
    let func = f as usize;
    call(name, |s| match capture::enqueue(s, st, false) {
        Err(e) => e,
        Ok(Work::Captured) => {
            let dev = capture::capture_dev(s, st).unwrap_or(0);
            capture::capture_node(s, st, Kind::Kernel { func, dev });
            OK
        }
        Ok(Work::Run) if !is_fake_kernel(func) => OK,
        Ok(Work::Run) => match capture::stream_dev(s, st) {
            Some(dev) => kernel_effect(s, dev, func),
            None => INVALID_CONTEXT,
        },
    })
}

#[no_mangle]
pub extern "C" fn cuLaunchKernel(
    f: *mut c_void,
    _gx: c_uint,
    _gy: c_uint,
    _gz: c_uint,
    _bx: c_uint,
    _by: c_uint,
    _bz: c_uint,
    _shared: c_uint,
    stream: *mut c_void,
    _params: *mut *mut c_void,
    _extra: *mut *mut c_void,
) -> CUresult {
    launch_kernel("cuLaunchKernel", f, stream, false)
}

#[no_mangle]
pub extern "C" fn cuLaunchKernel_ptsz(
    f: *mut c_void,
    _gx: c_uint,
    _gy: c_uint,
    _gz: c_uint,
    _bx: c_uint,
    _by: c_uint,
    _bz: c_uint,
    _shared: c_uint,
    stream: *mut c_void,
    _params: *mut *mut c_void,
    _extra: *mut *mut c_void,
) -> CUresult {
    launch_kernel("cuLaunchKernel_ptsz", f, stream, true)
}
