//! Streams and stream capture.
//!
//! A capture belongs to a stream, was begun by one thread, in one mode. While it is open the driver
//! prohibits "potentially unsafe" calls (allocation, pool and limit changes, synchronisation) by the rules
//! that `cuThreadExchangeStreamCaptureMode` documents, measured on an H200 with driver 580
//! (`docs/probe-graph-limits-h200.txt`): a prohibited call returns CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
//! does nothing else, and invalidates the captures that prohibited it, whose `cuStreamEndCapture` then
//! fails with CUDA_ERROR_STREAM_CAPTURE_INVALIDATED and no graph. This is what vramcap must never cause by
//! calls of its own inside a hook. Stream-ordered work on a capturing stream is recorded as graph nodes
//! (graph.rs) instead of running: a captured cuMemAllocAsync allocates nothing.

use crate::config::bench_mode;
use crate::graph::Kind;
use crate::results::{CUresult, ILLEGAL_STATE, INVALID_CONTEXT, INVALID_VALUE, OK};
use crate::state::{call, out, Fake};
use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{c_int, c_uint, c_void};
use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) const CAPTURE_UNSUPPORTED: CUresult = 900;
pub(crate) const CAPTURE_INVALIDATED: CUresult = 901;
const CAPTURE_IMPLICIT: CUresult = 906;
const CAPTURE_WRONG_THREAD: CUresult = 908;
const INVALID_HANDLE: CUresult = 400;

const MODE_GLOBAL: i32 = 0;
const MODE_RELAXED: i32 = 2;

const STATUS_NONE: i32 = 0;
const STATUS_ACTIVE: i32 = 1;
const STATUS_INVALIDATED: i32 = 2;

/// CU_STREAM_LEGACY (what NULL means to the entry points without `_ptsz`) and CU_STREAM_PER_THREAD
/// (what NULL means to those with it).
const LEGACY: usize = 1;
const PER_THREAD: usize = 2;
/// cuStreamCreate's CU_STREAM_NON_BLOCKING: the stream does not synchronise with the legacy stream.
const NON_BLOCKING: c_uint = 1;
/// Created streams are 0x60000 + n.
const STREAM_BASE: usize = 0x6_0000;

static NEXT_THREAD: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's capture mode (cuThreadExchangeStreamCaptureMode); GLOBAL by default.
    static MODE: Cell<i32> = const { Cell::new(MODE_GLOBAL) };
    /// A number for this thread, never reused: a capture remembers the thread that began it.
    static THREAD: u64 = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
}

fn this_thread() -> u64 {
    THREAD.with(|t| *t)
}

/// A stream as the driver tells them apart: the per-thread default stream is a different one in each
/// thread.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Stream {
    handle: usize,
    thread: u64,
}

/// The stream a handle names, for the calling thread; `_ptsz` entry points read NULL as the per-thread
/// default stream.
pub(crate) fn stream(h: *mut c_void, ptsz: bool) -> Stream {
    let handle = match h as usize {
        0 if ptsz => PER_THREAD,
        0 => LEGACY,
        h => h,
    };
    let thread = if handle == PER_THREAD {
        this_thread()
    } else {
        0
    };
    Stream { handle, thread }
}

struct StreamInfo {
    dev: usize,
    blocking: bool,
}

struct Capture {
    /// Unique over the process's life (cuStreamGetCaptureInfo's id).
    id: u64,
    thread: u64,
    mode: i32,
    invalidated: bool,
    /// The graph captured into, and whether the capture made it (cuStreamBeginCaptureToGraph captures
    /// into the caller's, which an invalidated capture leaves alone).
    graph: usize,
    own_graph: bool,
    /// What the next captured node depends on (the previous one: captures here are chains), with zeroed
    /// edge data beside it, both handed out by cuStreamGetCaptureInfo.
    deps: Vec<usize>,
    edges: Vec<[u8; 8]>,
    dev: usize,
    /// Whether the stream synchronises with the legacy stream, whose work then invalidates the capture.
    blocking: bool,
}

#[derive(Default)]
pub(crate) struct Captures {
    streams: HashMap<usize, StreamInfo>,
    created: usize,
    open: HashMap<Stream, Capture>,
    next_id: u64,
}

/// The device a stream's work runs on: its context's for a created stream, else the current one.
pub(crate) fn stream_dev(s: &Fake, st: Stream) -> Option<usize> {
    match s.capture.streams.get(&st.handle) {
        Some(i) => Some(i.dev),
        None => s.current_dev(),
    }
}

/// Invalidates the open captures `pred` picks; `Some(code)` if there were any (the call that found them
/// must fail with `code` having done nothing), else None.
fn refuse(
    s: &mut Fake,
    code: CUresult,
    pred: impl Fn(&Stream, &Capture) -> bool,
) -> Option<CUresult> {
    let mut any = false;
    for (key, c) in s.capture.open.iter_mut() {
        if pred(key, c) {
            c.invalidated = true;
            any = true;
        }
    }
    any.then_some(code)
}

/// Whether work on (or a wait for) `on` involves the capture on `key`: its own stream, or the legacy
/// stream, which synchronises with every blocking stream.
fn involves(on: Stream, key: &Stream, c: &Capture) -> bool {
    on == *key || (on.handle == LEGACY && c.blocking)
}

/// The check at the top of every potentially unsafe call: whether it is prohibited now. If so it has
/// invalidated the captures that prohibit it and the call must return what this returns, having done
/// nothing else. A thread in GLOBAL or THREAD_LOCAL mode may not make one while it has a capture of its
/// own not begun in RELAXED mode; a thread in GLOBAL mode may not while any other thread has one begun
/// in GLOBAL mode. `on`: the stream the call waits for, if any; waiting for a capturing stream is
/// prohibited in every mode, RELAXED too (measured). Captures already invalidated still prohibit.
pub(crate) fn prohibited(s: &mut Fake, on: Option<Stream>) -> Option<CUresult> {
    let me = this_thread();
    let mode = MODE.with(Cell::get);
    refuse(s, CAPTURE_UNSUPPORTED, |key, c| {
        let waits = on.is_some_and(|st| involves(st, key, c));
        let own = c.thread == me && mode != MODE_RELAXED && c.mode != MODE_RELAXED;
        let other = c.thread != me && mode == MODE_GLOBAL && c.mode == MODE_GLOBAL;
        waits || own || other
    })
}

/// A call that is only prohibited on a capturing stream (cuStreamGetDevice, measured; cuGraphUpload):
/// prohibited in every mode there, harmless elsewhere.
pub(crate) fn prohibited_on(s: &mut Fake, st: Stream) -> Option<CUresult> {
    refuse(s, CAPTURE_UNSUPPORTED, |key, c| involves(st, key, c))
}

/// What stream-ordered work does with a stream.
pub(crate) enum Work {
    Run,
    Captured,
}

/// Where stream-ordered work on `st` goes. On a capturing stream it is captured, or fails if the capture
/// was invalidated; on the legacy stream while a blocking stream captures it would synchronise with that
/// capture, which invalidates it; elsewhere it runs, once work that is unsafe outside capture
/// (`unsafe_call`: the stream-ordered allocator's) has passed the unsafe-call check.
pub(crate) fn enqueue(s: &mut Fake, st: Stream, unsafe_call: bool) -> Result<Work, CUresult> {
    if let Some(c) = s.capture.open.get(&st) {
        return if c.invalidated {
            Err(CAPTURE_INVALIDATED)
        } else {
            Ok(Work::Captured)
        };
    }
    if st.handle == LEGACY {
        if let Some(e) = refuse(s, CAPTURE_IMPLICIT, |_, c| c.blocking) {
            return Err(e);
        }
    }
    if unsafe_call {
        if let Some(e) = prohibited(s, None) {
            return Err(e);
        }
    }
    Ok(Work::Run)
}

/// The device of `st`'s capture.
pub(crate) fn capture_dev(s: &Fake, st: Stream) -> Option<usize> {
    s.capture.open.get(&st).map(|c| c.dev)
}

/// Records a node in `st`'s capture, after the previous one.
pub(crate) fn capture_node(s: &mut Fake, st: Stream, kind: Kind) -> Option<usize> {
    let c = s.capture.open.get(&st)?;
    let (graph, deps) = (c.graph, c.deps.clone());
    let node = s.graph.add_node(graph, kind, deps);
    if let Some(c) = s.capture.open.get_mut(&st) {
        c.deps = vec![node];
        c.edges = vec![[0; 8]];
    }
    Some(node)
}

/// cuMemAllocAsync / cuMemAllocFromPoolAsync before the pool sees them: on a capturing stream an
/// allocation node (on the stream's device, or the pool's) and a fresh address, nothing allocated; a
/// refusal; or None: allocate as usual.
///
/// # Safety
/// `dptr` is null or valid for a write: the caller's out-parameter.
pub(crate) unsafe fn alloc_async(
    s: &mut Fake,
    st: Stream,
    dptr: *mut u64,
    size: u64,
    pool: Option<usize>,
) -> Option<CUresult> {
    match enqueue(s, st, true) {
        Err(e) => Some(e),
        Ok(Work::Run) => None,
        Ok(Work::Captured) => {
            if size == 0 || dptr.is_null() {
                return Some(INVALID_VALUE);
            }
            let dev = match pool {
                Some(p) => match s.pool_dev(p) {
                    Some(d) => d,
                    None => return Some(INVALID_VALUE),
                },
                None => capture_dev(s, st)?,
            };
            let va = s.va(size);
            capture_node(
                s,
                st,
                Kind::Alloc {
                    dev,
                    bytes: size,
                    dptr: va,
                },
            );
            // SAFETY: `dptr` is null or writable (this function's contract).
            Some(unsafe { out(dptr, va) })
        }
    }
}

/// cuMemFreeAsync before the pool sees it: on a capturing stream a free node; a refusal; or None.
pub(crate) fn free_async(s: &mut Fake, st: Stream, ptr: u64) -> Option<CUresult> {
    match enqueue(s, st, true) {
        Err(e) => Some(e),
        Ok(Work::Run) => None,
        Ok(Work::Captured) => {
            capture_node(s, st, Kind::Free { dptr: ptr });
            Some(OK)
        }
    }
}

// ---- streams ----

/// # Safety
/// `ph` is null or valid for a write: the caller's out-parameter.
unsafe fn create_stream(name: &str, ph: *mut usize, flags: c_uint) -> CUresult {
    call(name, |s| {
        if ph.is_null() {
            return INVALID_VALUE;
        }
        let Some(dev) = s.current_dev() else {
            return INVALID_CONTEXT;
        };
        s.capture.created += 1;
        let h = STREAM_BASE + s.capture.created;
        s.capture.streams.insert(
            h,
            StreamInfo {
                dev,
                blocking: flags & NON_BLOCKING == 0,
            },
        );
        // SAFETY: `ph` is null or writable (this function's contract).
        unsafe { out(ph, h) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreate(ph: *mut usize, flags: c_uint) -> CUresult {
    // SAFETY: `ph` is the caller's out-parameter (the caller's contract).
    unsafe { create_stream("cuStreamCreate", ph, flags) }
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreateWithPriority(
    ph: *mut usize,
    flags: c_uint,
    _priority: c_int,
) -> CUresult {
    // SAFETY: `ph` is the caller's out-parameter (the caller's contract).
    unsafe { create_stream("cuStreamCreateWithPriority", ph, flags) }
}

/// Destroying a stream ends any capture on it, dropping the graph it was making.
#[no_mangle]
pub extern "C" fn cuStreamDestroy_v2(h: *mut c_void) -> CUresult {
    let h = h as usize;
    call("cuStreamDestroy_v2", |s| {
        if s.capture.streams.remove(&h).is_none() {
            return INVALID_HANDLE;
        }
        let key = Stream {
            handle: h,
            thread: 0,
        };
        if let Some(c) = s.capture.open.remove(&key) {
            if c.own_graph {
                s.graph.destroy_graph(c.graph);
            }
        }
        OK
    })
}

/// Waiting for a stream is unsafe during capture, and prohibited in every mode for the capturing stream
/// itself (measured). A synchronisation trims the pools.
fn stream_sync(name: &str, h: *mut c_void, ptsz: bool) -> CUresult {
    let st = stream(h, ptsz);
    call(name, |s| {
        if let Some(e) = prohibited(s, Some(st)) {
            return e;
        }
        s.trim_pools(None);
        OK
    })
}

#[no_mangle]
pub extern "C" fn cuStreamSynchronize(h: *mut c_void) -> CUresult {
    stream_sync("cuStreamSynchronize", h, false)
}

#[no_mangle]
pub extern "C" fn cuStreamSynchronize_ptsz(h: *mut c_void) -> CUresult {
    stream_sync("cuStreamSynchronize_ptsz", h, true)
}

/// A context synchronisation waits for every stream: prohibited in every mode while any stream of the
/// context captures (measured), invalidating those captures.
fn ctx_sync(name: &str) -> CUresult {
    call(name, |s| {
        let dev = s.current_dev();
        if let Some(e) = refuse(s, CAPTURE_UNSUPPORTED, |_, c| {
            dev.is_none_or(|d| d == c.dev)
        }) {
            return e;
        }
        s.trim_pools(None);
        OK
    })
}

#[no_mangle]
pub extern "C" fn cuCtxSynchronize() -> CUresult {
    ctx_sync("cuCtxSynchronize")
}

#[no_mangle]
pub extern "C" fn cuCtxSynchronize_v2(_ctx: *mut c_void) -> CUresult {
    ctx_sync("cuCtxSynchronize_v2")
}

/// The stream's device (a created stream's, else the current context's). A query, yet measured to be
/// prohibited, in every mode, on a capturing stream.
///
/// # Safety
/// `dev` is null or valid for a write: the caller's out-parameter.
unsafe fn stream_get_device(name: &str, h: *mut c_void, ptsz: bool, dev: *mut i32) -> CUresult {
    if bench_mode() {
        // SAFETY: `dev` is null or writable (this function's contract).
        return unsafe { out(dev, 0) };
    }
    let st = stream(h, ptsz);
    call(name, |s| {
        if let Some(e) = prohibited_on(s, st) {
            return e;
        }
        match stream_dev(s, st) {
            // SAFETY: `dev` is null or writable (this function's contract).
            Some(d) => unsafe { out(dev, d as i32) },
            None => INVALID_CONTEXT,
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamGetDevice(h: *mut c_void, dev: *mut i32) -> CUresult {
    // SAFETY: `dev` is the caller's out-parameter (the caller's contract).
    unsafe { stream_get_device("cuStreamGetDevice", h, false, dev) }
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamGetDevice_ptsz(h: *mut c_void, dev: *mut i32) -> CUresult {
    // SAFETY: `dev` is the caller's out-parameter (the caller's contract).
    unsafe { stream_get_device("cuStreamGetDevice_ptsz", h, true, dev) }
}

// ---- capture ----

/// Begins a capture on the stream, into a new graph or (`into`) the caller's graph after `deps`.
/// The legacy stream cannot capture; a capturing one cannot begin again.
///
/// # Safety
/// With `into`, the dependencies are null or an array of the count beside them: the caller's.
unsafe fn begin(
    name: &str,
    st: Stream,
    mode: i32,
    into: Option<(usize, *const usize, usize)>,
) -> CUresult {
    let thread = this_thread();
    call(name, |s| {
        if !(MODE_GLOBAL..=MODE_RELAXED).contains(&mode) {
            return INVALID_VALUE;
        }
        if st.handle == LEGACY {
            return CAPTURE_UNSUPPORTED;
        }
        if s.capture.open.contains_key(&st) {
            return ILLEGAL_STATE;
        }
        let Some(dev) = stream_dev(s, st) else {
            return INVALID_CONTEXT;
        };
        let (graph, own_graph, deps) = match into {
            Some((g, deps, n)) => {
                if !s.graph.has_graph(g) {
                    return INVALID_VALUE;
                }
                let deps = if deps.is_null() || n == 0 {
                    Vec::new()
                } else {
                    // SAFETY: `deps` is not null and is an array of `n` nodes (this function's
                    // contract), copied out before the call returns.
                    unsafe { std::slice::from_raw_parts(deps, n) }.to_vec()
                };
                (g, false, deps)
            }
            None => (s.graph.new_graph(), true, Vec::new()),
        };
        s.capture.next_id += 1;
        let blocking = match st.handle {
            PER_THREAD => true,
            h => s.capture.streams.get(&h).is_some_and(|i| i.blocking),
        };
        let edges = vec![[0; 8]; deps.len()];
        s.capture.open.insert(
            st,
            Capture {
                id: s.capture.next_id,
                thread,
                mode,
                invalidated: false,
                graph,
                own_graph,
                deps,
                edges,
                dev,
                blocking,
            },
        );
        OK
    })
}

/// The old ABI: no mode argument, GLOBAL.
#[no_mangle]
pub extern "C" fn cuStreamBeginCapture(h: *mut c_void) -> CUresult {
    // SAFETY: without `into`, begin reads through no pointer.
    unsafe { begin("cuStreamBeginCapture", stream(h, false), MODE_GLOBAL, None) }
}

#[no_mangle]
pub extern "C" fn cuStreamBeginCapture_ptsz(h: *mut c_void) -> CUresult {
    // SAFETY: without `into`, begin reads through no pointer.
    unsafe {
        begin(
            "cuStreamBeginCapture_ptsz",
            stream(h, true),
            MODE_GLOBAL,
            None,
        )
    }
}

#[no_mangle]
pub extern "C" fn cuStreamBeginCapture_v2(h: *mut c_void, mode: c_int) -> CUresult {
    // SAFETY: without `into`, begin reads through no pointer.
    unsafe { begin("cuStreamBeginCapture_v2", stream(h, false), mode, None) }
}

#[no_mangle]
pub extern "C" fn cuStreamBeginCapture_v2_ptsz(h: *mut c_void, mode: c_int) -> CUresult {
    // SAFETY: without `into`, begin reads through no pointer.
    unsafe { begin("cuStreamBeginCapture_v2_ptsz", stream(h, true), mode, None) }
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamBeginCaptureToGraph(
    h: *mut c_void,
    graph: *mut c_void,
    deps: *const usize,
    _edges: *const c_void,
    n: usize,
    mode: c_int,
) -> CUresult {
    let into = Some((graph as usize, deps, n));
    // SAFETY: `deps` is null or the caller's array of `n` nodes (the caller's contract).
    unsafe { begin("cuStreamBeginCaptureToGraph", stream(h, false), mode, into) }
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamBeginCaptureToGraph_ptsz(
    h: *mut c_void,
    graph: *mut c_void,
    deps: *const usize,
    _edges: *const c_void,
    n: usize,
    mode: c_int,
) -> CUresult {
    let into = Some((graph as usize, deps, n));
    // SAFETY: `deps` is null or the caller's array of `n` nodes (the caller's contract).
    unsafe {
        begin(
            "cuStreamBeginCaptureToGraph_ptsz",
            stream(h, true),
            mode,
            into,
        )
    }
}

/// Ends the capture (from the thread that began it, unless it was RELAXED): the graph, or, if the
/// capture was invalidated, CUDA_ERROR_STREAM_CAPTURE_INVALIDATED and a NULL graph.
///
/// # Safety
/// `ph` is null or valid for a write: the caller's out-parameter.
unsafe fn end(name: &str, h: *mut c_void, ptsz: bool, ph: *mut usize) -> CUresult {
    let st = stream(h, ptsz);
    let thread = this_thread();
    call(name, |s| {
        if ph.is_null() {
            return INVALID_VALUE;
        }
        match s.capture.open.get(&st) {
            None => return ILLEGAL_STATE,
            Some(c) if c.mode != MODE_RELAXED && c.thread != thread => return CAPTURE_WRONG_THREAD,
            Some(_) => {}
        }
        let Some(c) = s.capture.open.remove(&st) else {
            return ILLEGAL_STATE;
        };
        if c.invalidated {
            if c.own_graph {
                s.graph.destroy_graph(c.graph);
            }
            // SAFETY: `ph` is not null (checked above), so writable (this function's contract).
            unsafe { ph.write(0) };
            return CAPTURE_INVALIDATED;
        }
        // SAFETY: as above.
        unsafe { out(ph, c.graph) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamEndCapture(h: *mut c_void, ph: *mut usize) -> CUresult {
    // SAFETY: `ph` is the caller's out-parameter (the caller's contract).
    unsafe { end("cuStreamEndCapture", h, false, ph) }
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamEndCapture_ptsz(h: *mut c_void, ph: *mut usize) -> CUresult {
    // SAFETY: `ph` is the caller's out-parameter (the caller's contract).
    unsafe { end("cuStreamEndCapture_ptsz", h, true, ph) }
}

/// What cuStreamGetCaptureInfo* may be asked for; NULL pointers are not asked. Each is null or the
/// caller's out-parameter, valid for a write of its type.
struct InfoOut {
    status: *mut i32,
    id: *mut u64,
    graph: *mut usize,
    deps: *mut *const usize,
    edges: *mut *const [u8; 8],
    num: *mut usize,
}

/// A stream's capture status and, only while it is ACTIVE (as the driver documents), the rest. The legacy
/// stream answers CUDA_ERROR_STREAM_CAPTURE_IMPLICIT while a blocking stream captures.
///
/// # Safety
/// Each pointer in `o` is null or valid for a write: the caller's out-parameters.
unsafe fn capture_info(name: &str, h: *mut c_void, ptsz: bool, o: InfoOut) -> CUresult {
    let st = stream(h, ptsz);
    call(name, |s| {
        if o.status.is_null() {
            return INVALID_VALUE;
        }
        let Some(c) = s.capture.open.get(&st) else {
            if st.handle == LEGACY && s.capture.open.values().any(|c| c.blocking) {
                return CAPTURE_IMPLICIT;
            }
            // SAFETY: `o.status` is null or writable (this function's contract).
            return unsafe { out(o.status, STATUS_NONE) };
        };
        if c.invalidated {
            // SAFETY: as above.
            return unsafe { out(o.status, STATUS_INVALIDATED) };
        }
        // SAFETY: `o.status` is not null (checked above) and each other pointer is written only when not
        // null; all are writable (this function's contract). The deps and edges handed out point into
        // the capture, which the driver documents as valid until the next call on the stream.
        unsafe {
            o.status.write(STATUS_ACTIVE);
            if !o.id.is_null() {
                o.id.write(c.id);
            }
            if !o.graph.is_null() {
                o.graph.write(c.graph);
            }
            if !o.deps.is_null() {
                o.deps.write(c.deps.as_ptr());
            }
            if !o.edges.is_null() {
                o.edges.write(c.edges.as_ptr());
            }
            if !o.num.is_null() {
                o.num.write(c.deps.len());
            }
        }
        OK
    })
}

/// # Safety
/// `status` is null or valid for a write: the caller's out-parameter.
unsafe fn is_capturing(name: &str, h: *mut c_void, ptsz: bool, status: *mut i32) -> CUresult {
    let o = InfoOut {
        status,
        id: std::ptr::null_mut(),
        graph: std::ptr::null_mut(),
        deps: std::ptr::null_mut(),
        edges: std::ptr::null_mut(),
        num: std::ptr::null_mut(),
    };
    // SAFETY: `status` is null or writable (this function's contract); the rest are null.
    unsafe { capture_info(name, h, ptsz, o) }
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamIsCapturing(h: *mut c_void, status: *mut i32) -> CUresult {
    // SAFETY: `status` is the caller's out-parameter (the caller's contract).
    unsafe { is_capturing("cuStreamIsCapturing", h, false, status) }
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamIsCapturing_ptsz(h: *mut c_void, status: *mut i32) -> CUresult {
    // SAFETY: `status` is the caller's out-parameter (the caller's contract).
    unsafe { is_capturing("cuStreamIsCapturing_ptsz", h, true, status) }
}

/// # Safety
/// `status` and `id` are null or valid for a write: the caller's out-parameters.
unsafe fn info_v1(
    name: &str,
    h: *mut c_void,
    ptsz: bool,
    status: *mut i32,
    id: *mut u64,
) -> CUresult {
    let o = InfoOut {
        status,
        id,
        graph: std::ptr::null_mut(),
        deps: std::ptr::null_mut(),
        edges: std::ptr::null_mut(),
        num: std::ptr::null_mut(),
    };
    // SAFETY: `status` and `id` are null or writable (this function's contract); the rest are null.
    unsafe { capture_info(name, h, ptsz, o) }
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamGetCaptureInfo(
    h: *mut c_void,
    status: *mut i32,
    id: *mut u64,
) -> CUresult {
    // SAFETY: `status` and `id` are the caller's out-parameters (the caller's contract).
    unsafe { info_v1("cuStreamGetCaptureInfo", h, false, status, id) }
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamGetCaptureInfo_ptsz(
    h: *mut c_void,
    status: *mut i32,
    id: *mut u64,
) -> CUresult {
    // SAFETY: `status` and `id` are the caller's out-parameters (the caller's contract).
    unsafe { info_v1("cuStreamGetCaptureInfo_ptsz", h, true, status, id) }
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamGetCaptureInfo_v2(
    h: *mut c_void,
    status: *mut i32,
    id: *mut u64,
    graph: *mut usize,
    deps: *mut *const usize,
    num: *mut usize,
) -> CUresult {
    let edges = std::ptr::null_mut();
    let o = InfoOut {
        status,
        id,
        graph,
        deps,
        edges,
        num,
    };
    // SAFETY: every pointer in `o` is the caller's out-parameter (the caller's contract), or null.
    unsafe { capture_info("cuStreamGetCaptureInfo_v2", h, false, o) }
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamGetCaptureInfo_v2_ptsz(
    h: *mut c_void,
    status: *mut i32,
    id: *mut u64,
    graph: *mut usize,
    deps: *mut *const usize,
    num: *mut usize,
) -> CUresult {
    let edges = std::ptr::null_mut();
    let o = InfoOut {
        status,
        id,
        graph,
        deps,
        edges,
        num,
    };
    // SAFETY: every pointer in `o` is the caller's out-parameter (the caller's contract), or null.
    unsafe { capture_info("cuStreamGetCaptureInfo_v2_ptsz", h, true, o) }
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamGetCaptureInfo_v3(
    h: *mut c_void,
    status: *mut i32,
    id: *mut u64,
    graph: *mut usize,
    deps: *mut *const usize,
    edges: *mut *const [u8; 8],
    num: *mut usize,
) -> CUresult {
    let o = InfoOut {
        status,
        id,
        graph,
        deps,
        edges,
        num,
    };
    // SAFETY: every pointer in `o` is the caller's out-parameter (the caller's contract).
    unsafe { capture_info("cuStreamGetCaptureInfo_v3", h, false, o) }
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamGetCaptureInfo_v3_ptsz(
    h: *mut c_void,
    status: *mut i32,
    id: *mut u64,
    graph: *mut usize,
    deps: *mut *const usize,
    edges: *mut *const [u8; 8],
    num: *mut usize,
) -> CUresult {
    let o = InfoOut {
        status,
        id,
        graph,
        deps,
        edges,
        num,
    };
    // SAFETY: every pointer in `o` is the caller's out-parameter (the caller's contract).
    unsafe { capture_info("cuStreamGetCaptureInfo_v3_ptsz", h, true, o) }
}

/// Swaps the calling thread's capture mode with `*mode`.
#[no_mangle]
pub unsafe extern "C" fn cuThreadExchangeStreamCaptureMode(mode: *mut c_int) -> CUresult {
    call("cuThreadExchangeStreamCaptureMode", |_| {
        // SAFETY: `mode` is null or the caller's int, readable and writable (the caller's contract);
        // `as_ref` makes a null None, and the value is copied out at once.
        let Some(new) = (unsafe { mode.as_ref() }).copied() else {
            return INVALID_VALUE;
        };
        if !(MODE_GLOBAL..=MODE_RELAXED).contains(&new) {
            return INVALID_VALUE;
        }
        let old = MODE.with(|m| m.replace(new));
        // SAFETY: the same `mode`, not null here.
        unsafe { out(mode, old) }
    })
}
