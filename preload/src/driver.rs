//! Driver calls the hooks make for their own bookkeeping: which device is current, what a pool or the
//! graph allocator holds, how large an array really is, what a graph allocates, the context's limits.
//! They are declared once in the [`called`] table, resolved once from the real driver and typed; none of
//! them is a hooked entry point, so none of them is counted. Queries keep the driver's error code.
//!
//! **Stream capture.** While a stream captures in the default (global) mode, the driver refuses
//! "potentially unsafe" calls from any thread and invalidates the capture. Measured on an H200 with driver
//! 580 (`docs/probe-graph-limits-h200.txt`): `cuMemPoolGetAttribute`, `cuCtxSetLimit`,
//! `cuStreamSynchronize`, `cuMemAlloc` and `cuMemPoolTrimTo` are unsafe, but not once the calling thread
//! has switched its capture interaction mode to relaxed; `cuStreamGetDevice` on a capturing stream and
//! `cuCtxSynchronize` invalidate in every mode; `cuCtxGetDevice`, `cuDeviceGetMemPool`,
//! `cuDeviceGetGraphMemAttribute`, `cuMemGetInfo`, `cuCtxGetLimit`, `cuStreamIsCapturing` and graph
//! queries are always safe. So this module counts the captures under way in the process ([`capture_began`],
//! [`capture_ended`], called by the capture hooks), and while any is, [`relaxed`] runs our unsafe queries
//! with the calling thread in relaxed mode; the background thread is relaxed for good
//! ([`relax_this_thread`]). Nothing of ours ever asks for a capturing stream's device.

use crate::called::called_table;
use crate::cuda::*;
use crate::real::Lib;
use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// What a failed query answered: the driver's code, or `CUDA_ERROR_NOT_FOUND` where the driver lacks the
/// function.
pub type Result<T> = std::result::Result<T, CUresult>;

fn check(r: CUresult) -> Result<()> {
    if r == CUDA_SUCCESS {
        Ok(())
    } else {
        Err(r)
    }
}

called_table! {
    /// The driver functions vramcap calls but does not wrap, typed by their C prototypes.
    pub struct Called in Lib::Cuda => CUresult {
        get_count: "cuDeviceGetCount" fn(*mut i32);
        get_uuid: "cuDeviceGetUuid_v2" fn(*mut [u8; 16], CUdevice);
        get_uuid_v1: "cuDeviceGetUuid" fn(*mut [u8; 16], CUdevice);
        ctx_get_device: "cuCtxGetDevice" fn(*mut CUdevice);
        stream_get_device: "cuStreamGetDevice" fn(CUstream, *mut CUdevice);
        stream_is_capturing: "cuStreamIsCapturing" fn(CUstream, *mut i32);
        stream_synchronize: "cuStreamSynchronize" fn(CUstream);
        exchange_capture_mode: "cuThreadExchangeStreamCaptureMode" fn(*mut i32);
        get_mem_pool: "cuDeviceGetMemPool" fn(*mut CUmemoryPool, CUdevice);
        pool_get_attribute: "cuMemPoolGetAttribute" fn(CUmemoryPool, i32, *mut c_void);
        array_requirements: "cuArrayGetMemoryRequirements"
            fn(*mut CUDA_ARRAY_MEMORY_REQUIREMENTS, *mut c_void, CUdevice);
        mipmapped_requirements: "cuMipmappedArrayGetMemoryRequirements"
            fn(*mut CUDA_ARRAY_MEMORY_REQUIREMENTS, *mut c_void, CUdevice);
        graph_mem_attribute: "cuDeviceGetGraphMemAttribute" fn(CUdevice, i32, *mut c_void);
        graph_get_nodes: "cuGraphGetNodes" fn(CUgraph, *mut CUgraphNode, *mut usize);
        graph_node_type: "cuGraphNodeGetType" fn(CUgraphNode, *mut i32);
        graph_alloc_params: "cuGraphMemAllocNodeGetParams" fn(CUgraphNode, *mut CUDA_MEM_ALLOC_NODE_PARAMS);
        graph_free_params: "cuGraphMemFreeNodeGetParams" fn(CUgraphNode, *mut CUdeviceptr);
        graph_child: "cuGraphChildGraphNodeGetGraph" fn(CUgraphNode, *mut CUgraph);
        ctx_get_limit: "cuCtxGetLimit" fn(*mut usize, i32);
        device_attribute: "cuDeviceGetAttribute" fn(*mut i32, i32, CUdevice);
        // Wrapped entry points that our own bookkeeping calls unwrapped: the driver's functions of these
        // names, resolved from the same handle as the entry table's slots.
        device_total_mem: "cuDeviceTotalMem_v2" fn(*mut usize, CUdevice);
        mem_get_info: "cuMemGetInfo_v2" fn(*mut usize, *mut usize);
        mem_free_async: "cuMemFreeAsync" fn(CUdeviceptr, CUstream);
        pool_trim_to: "cuMemPoolTrimTo" fn(CUmemoryPool, usize);
    }
}

/// The [`called`] table, resolved on first use (after the driver is open).
pub fn called() -> &'static Called {
    static CALLED: OnceLock<Called> = OnceLock::new();
    CALLED.get_or_init(Called::resolve)
}

/// Calls `f` if the driver has it.
fn call<F: Copy>(f: Option<F>, run: impl FnOnce(F) -> CUresult) -> Result<()> {
    check(run(f.ok_or(CUDA_ERROR_NOT_FOUND)?))
}

// ---- capture ----

/// Captures begun through our hooks and not yet ended, in this process.
static CAPTURES: AtomicUsize = AtomicUsize::new(0);

pub fn capture_began() {
    CAPTURES.fetch_add(1, Ordering::SeqCst);
}

pub fn capture_ended() {
    let _ = CAPTURES.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
}

/// Forgets every capture (a forked child has none).
pub fn forget_captures() {
    CAPTURES.store(0, Ordering::SeqCst);
}

/// Whether any stream of this process may be capturing.
pub fn capturing_anywhere() -> bool {
    CAPTURES.load(Ordering::SeqCst) != 0
}

/// Runs `f` with the calling thread's capture interaction mode relaxed while any capture is under way,
/// so that a query of ours never invalidates the program's capture (see the module doc).
pub fn relaxed<R>(f: impl FnOnce() -> R) -> R {
    let Some(exchange) = called()
        .exchange_capture_mode
        .filter(|_| capturing_anywhere())
    else {
        return f();
    };
    let mut mode = CU_STREAM_CAPTURE_MODE_RELAXED;
    // SAFETY: swaps one int with the thread's mode; the old mode comes back in `mode`.
    let swapped = unsafe { exchange(&mut mode) } == CUDA_SUCCESS;
    let r = f();
    if swapped {
        // SAFETY: as above, putting the thread's own mode back.
        unsafe { exchange(&mut mode) };
    }
    r
}

/// Puts the calling thread (our background thread) in relaxed capture mode for good.
pub fn relax_this_thread() {
    if let Some(exchange) = called().exchange_capture_mode {
        let mut mode = CU_STREAM_CAPTURE_MODE_RELAXED;
        // SAFETY: swaps one int with the thread's mode.
        unsafe { exchange(&mut mode) };
    }
}

/// The stream a hook was called with, as the driver reads it: in a `_ptsz` variant the null stream is
/// the calling thread's per-thread stream.
#[derive(Debug, Clone, Copy)]
pub struct Stream {
    pub handle: CUstream,
    pub per_thread: bool,
}

impl Stream {
    pub fn of(handle: CUstream, per_thread: bool) -> Stream {
        Stream { handle, per_thread }
    }

    /// The handle the driver reads: in a `_ptsz` variant, null is the per-thread stream.
    fn resolved(self) -> CUstream {
        match (self.handle as usize, self.per_thread) {
            (0, true) => CU_STREAM_PER_THREAD as CUstream,
            _ => self.handle,
        }
    }

    /// Whether the stream is capturing now. The legacy stream never captures (and asking about it while
    /// another stream captures would itself invalidate that capture), so it is not asked about.
    pub fn capturing(self) -> Result<bool> {
        let handle = self.resolved();
        if matches!(handle as usize, 0 | CU_STREAM_LEGACY) {
            return Ok(false);
        }
        if !capturing_anywhere() {
            return Ok(false);
        }
        let mut status = CU_STREAM_CAPTURE_STATUS_NONE;
        // SAFETY: writes one int; the stream is the caller's. Capture-safe (see the module doc).
        call(called().stream_is_capturing, |f| unsafe {
            f(handle, &mut status)
        })?;
        Ok(status != CU_STREAM_CAPTURE_STATUS_NONE)
    }

    /// Waits for the stream's work (used to undo an allocation), in relaxed mode if anything captures.
    pub fn synchronize(self) -> Result<()> {
        relaxed(|| {
            // SAFETY: the stream is the caller's (or the legacy one).
            call(called().stream_synchronize, |f| unsafe { f(self.handle) })
        })
    }
}

// ---- devices ----

/// The device's physical memory, from the real `cuDeviceTotalMem_v2`.
pub fn physical_total(dev: CUdevice) -> Option<u64> {
    let f = called().device_total_mem?;
    let mut bytes = 0usize;
    // SAFETY: writes one size_t into `bytes`.
    check(unsafe { f(&mut bytes, dev) }).ok()?;
    Some(bytes as u64)
}

/// The driver's own (free, total) for the current context.
pub fn real_mem_info() -> Option<(u64, u64)> {
    let f = called().mem_get_info?;
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: writes two size_t values we own.
    check(unsafe { f(&mut free, &mut total) }).ok()?;
    Some((free as u64, total as u64))
}

/// The devices the driver reports, in ordinal order (set up with their caps by `crate::devices`).
pub struct Devices {
    pub uuids: Vec<String>,
    pub raw_uuids: Vec<[u8; 16]>,
    pub totals: Vec<u64>,
}

impl Devices {
    pub fn ordinal_of_uuid(&self, uuid: &str) -> Option<i32> {
        self.uuids
            .iter()
            .position(|u| u.eq_ignore_ascii_case(uuid))
            .map(|i| i as i32)
    }
}

/// Every device this process sees; `None` until the driver is initialised.
pub fn discover_devices() -> Option<Devices> {
    let f = called();
    let mut count = 0;
    // SAFETY: writes one int.
    call(f.get_count, |g| unsafe { g(&mut count) }).ok()?;
    let mut uuids = Vec::new();
    let mut raw_uuids = Vec::new();
    let mut totals = Vec::new();
    let get_uuid = f.get_uuid.or(f.get_uuid_v1)?;
    for dev in 0..count {
        let mut raw = [0u8; 16];
        // SAFETY: writes the 16-byte CUuuid we own.
        check(unsafe { get_uuid(&mut raw, dev) }).ok()?;
        uuids.push(vramcap_core::config::format_uuid(&raw));
        raw_uuids.push(raw);
        totals.push(physical_total(dev)?);
    }
    Some(Devices {
        uuids,
        raw_uuids,
        totals,
    })
}

/// The device of the calling thread's current context, asked of the driver (`crate::devices::current`
/// asks nothing where the process sees one device).
pub fn ctx_device() -> Result<CUdevice> {
    let mut dev = -1;
    // SAFETY: writes one int.
    call(called().ctx_get_device, |f| unsafe { f(&mut dev) })?;
    Ok(dev)
}

/// The device a stream's work runs on, if the driver says (`crate::devices::of_stream` falls back to the
/// current context's). Never asked of a capturing stream.
pub fn stream_device(stream: Stream) -> Option<CUdevice> {
    let handle = stream.resolved();
    let f = called().stream_get_device?;
    let mut dev = -1;
    // SAFETY: writes one int; the stream is the caller's.
    (unsafe { f(handle, &mut dev) } == CUDA_SUCCESS).then_some(dev)
}

/// One attribute of a device.
pub fn device_attribute(dev: CUdevice, attribute: i32) -> Result<i32> {
    let mut value = 0;
    // SAFETY: writes one int.
    call(called().device_attribute, |f| unsafe {
        f(&mut value, attribute, dev)
    })?;
    Ok(value)
}

/// A limit of the current context.
pub fn ctx_limit(limit: i32) -> Result<u64> {
    let mut value = 0usize;
    // SAFETY: writes one size_t.
    call(called().ctx_get_limit, |f| unsafe { f(&mut value, limit) })?;
    Ok(value as u64)
}

// ---- pools ----

/// The pool `cuMemAllocAsync` draws from on this device.
pub fn current_pool(dev: CUdevice) -> Result<CUmemoryPool> {
    let mut pool = std::ptr::null_mut();
    // SAFETY: writes one handle.
    call(called().get_mem_pool, |f| unsafe { f(&mut pool, dev) })?;
    Ok(pool)
}

/// The device whose current (by default, its default) pool is `pool`, if any: a pool we did not see
/// created still belongs to a device, which need not be the stream's.
pub fn pool_device(pool: CUmemoryPool) -> Option<CUdevice> {
    let mut count = 0;
    // SAFETY: writes one int.
    call(called().get_count, |f| unsafe { f(&mut count) }).ok()?;
    (0..count).find(|&d| current_pool(d).ok() == Some(pool))
}

/// A pool's (reserved, used) bytes, read in relaxed mode while anything captures.
pub(crate) fn pool_usage(pool: CUmemoryPool) -> Result<(u64, u64)> {
    let f = called().pool_get_attribute;
    let (mut reserved, mut used) = (0u64, 0u64);
    relaxed(|| {
        // SAFETY: both attributes are cuuint64_t values written into our u64s.
        call(f, |g| unsafe {
            g(
                pool,
                CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT,
                (&mut reserved as *mut u64).cast(),
            )
        })?;
        // SAFETY: as above.
        call(f, |g| unsafe {
            g(
                pool,
                CU_MEMPOOL_ATTR_USED_MEM_CURRENT,
                (&mut used as *mut u64).cast(),
            )
        })
    })?;
    Ok((reserved, used))
}

/// Gives back an allocation that made its pool grow past the cap: free it, wait for the free on the
/// legacy stream, and trim the pool to what it reserved before (relaxed while anything captures).
pub(crate) fn undo_pool_allocation(ptr: CUdeviceptr, pool: CUmemoryPool, reserved_before: u64) {
    let (Some(free), Some(trim)) = (called().mem_free_async, called().pool_trim_to) else {
        return;
    };
    relaxed(|| {
        // SAFETY: the driver's own functions of these prototypes; ptr was just allocated by the caller's
        // call and is freed exactly once, on the legacy stream, then waited for.
        unsafe { free(ptr, std::ptr::null_mut()) };
        let _ = Stream::of(std::ptr::null_mut(), false).synchronize();
        // SAFETY: as above.
        unsafe { trim(pool, reserved_before as usize) };
    });
}

// ---- arrays ----

/// What an array really occupies on `dev`.
pub(crate) fn array_size(array: *mut c_void, dev: CUdevice, mipmapped: bool) -> Result<u64> {
    let f = if mipmapped {
        called().mipmapped_requirements
    } else {
        called().array_requirements
    };
    let mut req = CUDA_ARRAY_MEMORY_REQUIREMENTS::default();
    // SAFETY: writes the requirements struct we own; the array is the one the driver just created.
    call(f, |g| unsafe { g(&mut req, array, dev) })?;
    Ok(req.size as u64)
}

// ---- graphs ----

/// What the graph allocator holds on `dev` (`CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT`): capture-safe.
pub fn graph_reserved(dev: CUdevice) -> Result<u64> {
    let mut value = 0u64;
    // SAFETY: the attribute is a cuuint64_t written into our u64.
    call(called().graph_mem_attribute, |f| unsafe {
        f(
            dev,
            CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT,
            (&mut value as *mut u64).cast(),
        )
    })?;
    Ok(value)
}

/// How the graph allocator rounds each allocation: 32 MiB steps (measured on an H200 with driver 580:
/// 1 B to 32 MiB took 32 MiB, 33 MiB took 64, 100 MiB took 128, 1000 MiB took 1024).
pub const GRAPH_STEP: u64 = 32 << 20;

/// One allocation node of a graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocNode {
    pub dev: CUdevice,
    /// What the graph allocator takes for it (rounded to [`GRAPH_STEP`]).
    pub bytes: u64,
    pub va: CUdeviceptr,
}

/// The memory nodes of a graph and of the graphs nested in it.
#[derive(Debug, Default, Clone)]
pub struct GraphMemory {
    pub allocs: Vec<AllocNode>,
    /// Addresses that free nodes of the graph give back.
    pub freed: Vec<CUdeviceptr>,
}

impl GraphMemory {
    /// Allocations that outlive the graph: no free node of the same graph gives them back.
    pub fn outliving(&self) -> impl Iterator<Item = &AllocNode> {
        self.allocs.iter().filter(|a| !self.freed.contains(&a.va))
    }
}

/// Reads every memory node of `graph` (child graphs included; conditional bodies may hold no memory
/// nodes). Host-located allocations cost no device memory and are left out.
pub fn graph_memory(graph: CUgraph) -> Result<GraphMemory> {
    let mut memory = GraphMemory::default();
    walk(graph, &mut memory, 0)?;
    Ok(memory)
}

fn walk(graph: CUgraph, memory: &mut GraphMemory, depth: u32) -> Result<()> {
    if depth > 32 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let f = called();
    let mut count = 0usize;
    // SAFETY: with a null array, writes the node count.
    call(f.graph_get_nodes, |g| unsafe {
        g(graph, std::ptr::null_mut(), &mut count)
    })?;
    let mut nodes = vec![std::ptr::null_mut(); count];
    // SAFETY: `nodes` holds `count` entries for the driver to fill; count comes back as written.
    call(f.graph_get_nodes, |g| unsafe {
        g(graph, nodes.as_mut_ptr(), &mut count)
    })?;
    for &node in nodes.iter().take(count) {
        let mut kind = -1;
        // SAFETY: writes one int for a node of this graph.
        call(f.graph_node_type, |g| unsafe { g(node, &mut kind) })?;
        match kind {
            CU_GRAPH_NODE_TYPE_MEM_ALLOC => {
                // SAFETY: all-zero bytes are a valid value of this plain C struct.
                let mut params: CUDA_MEM_ALLOC_NODE_PARAMS = unsafe { std::mem::zeroed() };
                // SAFETY: writes the node's parameters into our struct.
                call(f.graph_alloc_params, |g| unsafe { g(node, &mut params) })?;
                let location = params.poolProps.location;
                if location.type_ == CU_MEM_LOCATION_TYPE_DEVICE {
                    memory.allocs.push(AllocNode {
                        dev: location.id,
                        bytes: (params.bytesize as u64)
                            .max(1)
                            .div_ceil(GRAPH_STEP)
                            .saturating_mul(GRAPH_STEP),
                        va: params.dptr,
                    });
                }
            }
            CU_GRAPH_NODE_TYPE_MEM_FREE => {
                let mut va = 0;
                // SAFETY: writes one address.
                call(f.graph_free_params, |g| unsafe { g(node, &mut va) })?;
                memory.freed.push(va);
            }
            CU_GRAPH_NODE_TYPE_GRAPH => {
                let mut child = std::ptr::null_mut();
                // SAFETY: writes the child graph's handle (owned by the node).
                call(f.graph_child, |g| unsafe { g(node, &mut child) })?;
                walk(child, memory, depth + 1)?;
            }
            _ => {}
        }
    }
    Ok(())
}
