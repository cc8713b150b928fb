//! Graphs: instantiation (`cuGraphInstantiate`, `_v2`, `WithFlags`, `WithParams` and `_ptsz`), launch and
//! upload (`cuGraphLaunch`, `cuGraphUpload` and their `_ptsz` variants), `cuGraphExecDestroy` and
//! `cuDeviceGraphMemTrim`. Allocation nodes, whether added with `cuGraphAddMemAllocNode`,
//! `cuGraphAddNode` or made by stream capture, take memory only when their executable graph is uploaded
//! or launched, so they are read from the graph at instantiation and charged there, as
//! `registry::graphs` explains. A graph without allocation nodes launches through the driver with no more
//! than one atomic load of ours.
//! <https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__GRAPH.html>

use crate::cuda::*;
use crate::driver::{self, GraphMemory};
use crate::enforce::{self, read_out};
use crate::phase;
use crate::registry::graphs;
use core_lib::charge::Charge;
use std::ffi::c_char;

/// Whether an upload (or a launch) maps memory that stays live after it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Map {
    Upload,
    Launch,
}

/// Runs `call`, which uploads or launches `exec` (or instantiates it with the upload flag, `memory`
/// being its graph's memory nodes): reserves what it may add against the cap first, refusing with
/// `CUDA_ERROR_OUT_OF_MEMORY` before the driver maps anything, then charges what the graph allocator
/// really holds after it.
fn charged_map(
    exec: impl Fn() -> CUgraphExec,
    memory: Option<(&GraphMemory, bool)>,
    map: Map,
    call: impl FnOnce() -> CUresult,
) -> CUresult {
    let worst = |g: &graphs::Graphs| match memory {
        Some((m, _)) => Some(graphs::footprint(m)),
        None => g.worst_case(exec()),
    };
    let Some(first) = worst(&graphs::lock()) else {
        return call();
    };
    if phase::refusing() {
        return phase::REFUSED_BY_CONFIG;
    }
    for &(dev, bytes) in &first {
        enforce::prepare(dev, bytes);
    }
    let op = crate::in_flight::enter();
    let mut g = graphs::lock();
    let mut reservations = Vec::new();
    for (dev, bytes) in worst(&g).unwrap_or_default() {
        match enforce::reserve(&op, dev, Charge::Pages(bytes)) {
            Ok(r) => reservations.push((dev, r)),
            Err(code) => return code,
        }
    }
    let r = call();
    if let Some((m, auto_free)) = memory {
        if r == CUDA_SUCCESS {
            g.register(exec(), m, auto_free);
        }
    }
    g.settle(exec(), r == CUDA_SUCCESS, map == Map::Launch, reservations);
    r
}

/// Instantiation without upload: reads the graph's memory nodes (a failed read is the answer: nothing
/// uncounted may be instantiated) and records the executable.
fn instantiate(
    exec: *mut CUgraphExec,
    graph: CUgraph,
    flags: u64,
    call: impl FnOnce() -> CUresult,
) -> CUresult {
    let memory = match driver::graph_memory(graph) {
        Ok(m) => m,
        Err(code) => return code,
    };
    let auto_free = flags & CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH != 0;
    if flags & CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD != 0 && !memory.allocs.is_empty() {
        let made = || read_out(exec).unwrap_or(std::ptr::null_mut());
        return charged_map(made, Some((&memory, auto_free)), Map::Upload, call);
    }
    let r = call();
    if r == CUDA_SUCCESS && !memory.allocs.is_empty() {
        if let Some(e) = read_out(exec) {
            graphs::lock().register(e, &memory, auto_free);
        }
    }
    r
}

type InstantiateV1 = unsafe extern "C" fn(
    *mut CUgraphExec,
    CUgraph,
    *mut CUgraphNode,
    *mut c_char,
    usize,
) -> CUresult;

pub fn instantiate_v1(
    real: InstantiateV1,
    exec: *mut CUgraphExec,
    graph: CUgraph,
    err: *mut CUgraphNode,
    log: *mut c_char,
    size: usize,
) -> CUresult {
    // SAFETY: the caller's own call, passed on.
    instantiate(exec, graph, 0, || unsafe {
        real(exec, graph, err, log, size)
    })
}

pub fn instantiate_with_flags(
    real: unsafe extern "C" fn(*mut CUgraphExec, CUgraph, u64) -> CUresult,
    exec: *mut CUgraphExec,
    graph: CUgraph,
    flags: u64,
) -> CUresult {
    // SAFETY: the caller's own call, passed on.
    instantiate(exec, graph, flags, || unsafe { real(exec, graph, flags) })
}

pub fn instantiate_with_params(
    real: unsafe extern "C" fn(
        *mut CUgraphExec,
        CUgraph,
        *mut CUDA_GRAPH_INSTANTIATE_PARAMS,
    ) -> CUresult,
    exec: *mut CUgraphExec,
    graph: CUgraph,
    params: *mut CUDA_GRAPH_INSTANTIATE_PARAMS,
) -> CUresult {
    let flags = read_out(params).map_or(0, |p| p.flags);
    // SAFETY: the caller's own call, passed on.
    instantiate(exec, graph, flags, || unsafe { real(exec, graph, params) })
}

type MapFn = unsafe extern "C" fn(CUgraphExec, CUstream) -> CUresult;

pub fn launch(real: MapFn, exec: CUgraphExec, stream: CUstream) -> CUresult {
    // SAFETY: the caller's own call, passed on.
    let pass = || unsafe { real(exec, stream) };
    if !graphs::any() {
        return pass();
    }
    charged_map(|| exec, None, Map::Launch, pass)
}

pub fn upload(real: MapFn, exec: CUgraphExec, stream: CUstream) -> CUresult {
    // SAFETY: the caller's own call, passed on.
    let pass = || unsafe { real(exec, stream) };
    if !graphs::any() {
        return pass();
    }
    charged_map(|| exec, None, Map::Upload, pass)
}

pub fn exec_destroy(
    real: unsafe extern "C" fn(CUgraphExec) -> CUresult,
    exec: CUgraphExec,
) -> CUresult {
    // SAFETY: the caller's own call, passed on.
    let r = unsafe { real(exec) };
    if r == CUDA_SUCCESS && graphs::any() {
        graphs::lock().forget(exec);
    }
    r
}

pub fn trim(real: unsafe extern "C" fn(CUdevice) -> CUresult, dev: CUdevice) -> CUresult {
    let _op = crate::in_flight::enter();
    // SAFETY: the caller's own call, passed on.
    let r = unsafe { real(dev) };
    if r == CUDA_SUCCESS {
        graphs::lock().trimmed(dev);
    }
    r
}
