//! Graphs: instantiation (`cuGraphInstantiate`, `_v2`, `WithFlags`, `WithParams` and `_ptsz`), launch and
//! upload (`cuGraphLaunch`, `cuGraphUpload` and their `_ptsz` variants), `cuGraphExecDestroy` and
//! `cuDeviceGraphMemTrim`. Allocation nodes, whether added with `cuGraphAddMemAllocNode`,
//! `cuGraphAddNode` or made by stream capture, take memory only when their executable graph is uploaded
//! or launched, so they are read from the graph at instantiation and charged there, as
//! `registry::graphs` explains. A graph without allocation nodes launches through the driver with no more
//! than one atomic load of ours.
//! <https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__GRAPH.html>

use crate::args::Out;
use crate::cuda::*;
use crate::driver::{self, GraphMemory};
use crate::enforce;
use crate::phase;
use crate::registry::graphs;
use std::ffi::c_char;
use vramcap_core::accounting::charge::Charge;

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
    exec: Out<CUgraphExec>,
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
        let made = || exec.get().unwrap_or(std::ptr::null_mut());
        return charged_map(made, Some((&memory, auto_free)), Map::Upload, call);
    }
    let r = call();
    if r == CUDA_SUCCESS && !memory.allocs.is_empty() {
        if let Some(e) = exec.get() {
            graphs::lock().register(e, &memory, auto_free);
        }
    }
    r
}

pub fn instantiate_v1(
    pass: impl Fn() -> CUresult,
    exec: Out<CUgraphExec>,
    graph: CUgraph,
    _err: Out<CUgraphNode>,
    _log: *mut c_char,
    _size: usize,
) -> CUresult {
    instantiate(exec, graph, 0, &pass)
}

pub fn instantiate_with_flags(
    pass: impl Fn() -> CUresult,
    exec: Out<CUgraphExec>,
    graph: CUgraph,
    flags: u64,
) -> CUresult {
    instantiate(exec, graph, flags, &pass)
}

pub fn instantiate_with_params(
    pass: impl Fn() -> CUresult,
    exec: Out<CUgraphExec>,
    graph: CUgraph,
    params: Out<CUDA_GRAPH_INSTANTIATE_PARAMS>,
) -> CUresult {
    let flags = params.get().map_or(0, |p| p.flags);
    instantiate(exec, graph, flags, &pass)
}

/// Reached only when some executable has allocation nodes: the entry table's `unless !graphs::any()`
/// sends every other launch to the driver before the guard. (Should the last one go meanwhile, `exec` is
/// unknown and [`charged_map`] passes the call on.)
pub fn launch(pass: impl Fn() -> CUresult, exec: CUgraphExec, _stream: CUstream) -> CUresult {
    charged_map(|| exec, None, Map::Launch, pass)
}

pub fn upload(pass: impl Fn() -> CUresult, exec: CUgraphExec, _stream: CUstream) -> CUresult {
    if !graphs::any() {
        return pass();
    }
    charged_map(|| exec, None, Map::Upload, pass)
}

pub fn exec_destroy(pass: impl Fn() -> CUresult, exec: CUgraphExec) -> CUresult {
    let r = pass();
    if r == CUDA_SUCCESS && graphs::any() {
        graphs::lock().forget(exec);
    }
    r
}

pub fn trim(pass: impl Fn() -> CUresult, dev: CUdevice) -> CUresult {
    let _op = crate::in_flight::enter();
    let r = pass();
    if r == CUDA_SUCCESS {
        graphs::lock().trimmed(dev);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Arg;
    use crate::guard::counting;
    use std::cell::Cell;

    #[test]
    fn a_graph_whose_memory_nodes_cannot_be_read_is_not_instantiated() {
        // No driver: the graph's nodes cannot be listed, so what it would allocate is unknown.
        let calls = Cell::new(0);
        let pass = counting(&calls, CUDA_SUCCESS);
        let made = Cell::new(std::ptr::null_mut::<std::ffi::c_void>());
        // SAFETY: the cell lives for the whole test.
        let exec = unsafe { made.as_ptr().safe() };
        let graph = 0x9a00 as CUgraph;
        for flags in [0, CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD] {
            let r = instantiate_with_flags(pass, exec, graph, flags);
            assert_eq!(r, CUDA_ERROR_NOT_FOUND, "flags {flags}");
        }
        assert_eq!(calls.get(), 0);
        assert!(made.get().is_null());
    }
}
