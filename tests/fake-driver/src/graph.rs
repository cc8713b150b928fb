//! Graphs, their executable instances, and the graph memory pool each device keeps for allocation nodes,
//! as measured on an H200 with driver 580 (`docs/probe-graph-limits-h200.txt`).
//!
//! Graph memory is what vramcap must charge, and it follows none of the other allocators' rules:
//! - each device has one pool for all graphs, of `reserved` bytes (RESERVED_MEM_CURRENT; USED_MEM_CURRENT
//!   measured equal throughout), taken from the device and seen by NVML;
//! - an allocation node costs its size rounded up to 32 MiB; an exec needs the sum of its nodes' costs on
//!   each device, on top of the allocations of other execs that outlived their graph and are still live;
//!   a launch or upload grows the pool to that, and never shrinks it: an exec's memory stays reserved,
//!   reused by the next launch of any graph, until cuDeviceGraphMemTrim, even after cuGraphExecDestroy;
//! - an allocation with no free node in its graph outlives the launch: live until cuMemFree(Async), which
//!   gives it back to the pool, not the device; relaunching while it is live fails unless the exec was
//!   instantiated with AUTO_FREE_ON_LAUNCH;
//! - a graph with allocation nodes may have one exec at a time.

use crate::capture::{self, Stream, Work};
use crate::devices::dev_ok;
use crate::memory::MIB;
use crate::results::{CUresult, INVALID_CONTEXT, INVALID_DEVICE, INVALID_VALUE, NOT_SUPPORTED, OK};
use crate::state::{call, out, Fake};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_void};

/// Graph allocations are mapped in 32 MiB granules (measured: 1 B to 32 MiB take 32 MiB, 33 MiB 64,
/// 100 MiB 128, 1000 MiB 1024).
const GRANULE: u64 = 32 * MIB;

const TYPE_KERNEL: i32 = 0;
const TYPE_GRAPH: i32 = 4;
const TYPE_EMPTY: i32 = 5;
const TYPE_MEM_ALLOC: i32 = 10;
const TYPE_MEM_FREE: i32 = 11;
/// Node types the fake records without modelling (memcpy, memset, host, events, semaphores, memops,
/// conditionals).
const TYPE_LAST: i32 = 13;

const FLAG_AUTO_FREE_ON_LAUNCH: u64 = 1;
const FLAG_UPLOAD: u64 = 2;

/// CUgraphInstantiateResult.
const INSTANTIATE_SUCCESS: i32 = 0;
const INSTANTIATE_ERROR: i32 = 1;

const ATTR_USED_MEM_CURRENT: c_int = 0;
const ATTR_USED_MEM_HIGH: c_int = 1;
const ATTR_RESERVED_MEM_CURRENT: c_int = 2;
const ATTR_RESERVED_MEM_HIGH: c_int = 3;

/// CUmemLocationType's CU_MEM_LOCATION_TYPE_DEVICE, and CU_MEM_ALLOCATION_TYPE_PINNED.
const LOCATION_DEVICE: i32 = 1;
const ALLOCATION_PINNED: i32 = 1;
/// CUgraphChildGraphNodeOwnership's MOVE: the node takes the graph instead of a clone of it.
const OWNERSHIP_MOVE: i32 = 1;

const GRAPH_BASE: usize = 0x6a00_0000;
const NODE_BASE: usize = 0x6b00_0000;
const EXEC_BASE: usize = 0x6c00_0000;

/// What a node does.
#[derive(Clone)]
pub(crate) enum Kind {
    Kernel {
        func: usize,
        dev: usize,
    },
    Empty,
    Alloc {
        dev: usize,
        bytes: u64,
        dptr: u64,
    },
    Free {
        dptr: u64,
    },
    /// A child graph, which the node owns.
    Child {
        graph: usize,
    },
    /// A node type the fake does not model.
    Other(i32),
}

impl Kind {
    fn type_code(&self) -> i32 {
        match self {
            Kind::Kernel { .. } => TYPE_KERNEL,
            Kind::Empty => TYPE_EMPTY,
            Kind::Alloc { .. } => TYPE_MEM_ALLOC,
            Kind::Free { .. } => TYPE_MEM_FREE,
            Kind::Child { .. } => TYPE_GRAPH,
            Kind::Other(t) => *t,
        }
    }
}

struct Node {
    graph: usize,
    kind: Kind,
    /// Dependencies are only kept (and copied into clones), not enforced.
    deps: Vec<usize>,
}

#[derive(Default)]
struct Graph {
    nodes: Vec<usize>,
    /// The live exec of a graph with allocation nodes (it may have only one).
    exec: Option<usize>,
}

/// An allocation node of an exec: its device, its cost there (rounded), its address, and whether it
/// outlives the launch (no free node of the same exec frees it).
struct ExecAlloc {
    dev: usize,
    cost: u64,
    dptr: u64,
    outliving: bool,
}

/// An exec: a snapshot of its graph's nodes, child graphs flattened, at instantiation.
struct Exec {
    graph: usize,
    kinds: Vec<Kind>,
    allocs: Vec<ExecAlloc>,
    auto_free: bool,
}

/// A device's graph memory pool.
#[derive(Default, Clone, Copy)]
struct Mem {
    reserved: u64,
    used_high: u64,
    reserved_high: u64,
}

/// A live allocation that outlived its graph's launch: its device and cost.
struct Live {
    dev: usize,
    cost: u64,
}

#[derive(Default)]
pub(crate) struct Graphs {
    graphs: HashMap<usize, Graph>,
    nodes: HashMap<usize, Node>,
    execs: HashMap<usize, Exec>,
    mem: HashMap<usize, Mem>,
    live: HashMap<u64, Live>,
    next: usize,
}

impl Graphs {
    fn handle(&mut self, base: usize) -> usize {
        self.next += 1;
        base + self.next * 8
    }

    pub(crate) fn new_graph(&mut self) -> usize {
        let g = self.handle(GRAPH_BASE);
        self.graphs.insert(g, Graph::default());
        g
    }

    pub(crate) fn has_graph(&self, g: usize) -> bool {
        self.graphs.contains_key(&g)
    }

    pub(crate) fn add_node(&mut self, graph: usize, kind: Kind, deps: Vec<usize>) -> usize {
        let n = self.handle(NODE_BASE);
        self.nodes.insert(n, Node { graph, kind, deps });
        if let Some(g) = self.graphs.get_mut(&graph) {
            g.nodes.push(n);
        }
        n
    }

    /// Destroys a graph with its nodes and the child graphs they own. Execs made from it live on.
    pub(crate) fn destroy_graph(&mut self, g: usize) {
        let Some(graph) = self.graphs.remove(&g) else {
            return;
        };
        for n in graph.nodes {
            if let Some(Node {
                kind: Kind::Child { graph },
                ..
            }) = self.nodes.remove(&n)
            {
                self.destroy_graph(graph);
            }
        }
    }

    /// A deep copy of a graph (new nodes, and new copies of the child graphs), dependencies mapped.
    fn clone_graph(&mut self, g: usize) -> usize {
        let copy = self.new_graph();
        let nodes = self
            .graphs
            .get(&g)
            .map(|x| x.nodes.clone())
            .unwrap_or_default();
        let mut map: HashMap<usize, usize> = HashMap::new();
        for n in nodes {
            let Some(node) = self.nodes.get(&n) else {
                continue;
            };
            let (mut kind, deps) = (node.kind.clone(), node.deps.clone());
            if let Kind::Child { graph } = kind {
                kind = Kind::Child {
                    graph: self.clone_graph(graph),
                };
            }
            let deps = deps.iter().filter_map(|d| map.get(d).copied()).collect();
            let new = self.add_node(copy, kind, deps);
            map.insert(n, new);
        }
        copy
    }

    /// The graph's nodes with child graphs flattened in.
    fn flatten(&self, g: usize, into: &mut Vec<Kind>) {
        let Some(graph) = self.graphs.get(&g) else {
            return;
        };
        for n in &graph.nodes {
            match self.nodes.get(n).map(|n| &n.kind) {
                Some(Kind::Child { graph }) => self.flatten(*graph, into),
                Some(k) => into.push(k.clone()),
                None => {}
            }
        }
    }

    /// A graph of an exec's snapshot, for a launch into a capturing stream (a child graph node).
    fn graph_of_exec(&mut self, exec: usize) -> usize {
        let kinds = self
            .execs
            .get(&exec)
            .map(|e| e.kinds.clone())
            .unwrap_or_default();
        let g = self.new_graph();
        let mut prev = Vec::new();
        for k in kinds {
            prev = vec![self.add_node(g, k, prev)];
        }
        g
    }
}

/// Whether `ptr` was a live graph allocation, now freed (back to the graph pool: the device keeps it).
pub(crate) fn free_live(s: &mut Fake, ptr: u64) -> bool {
    s.graph.live.remove(&ptr).is_some()
}

/// A device whose last context went: its graph memory went with it (the device's figure is reset
/// wholesale by the caller).
pub(crate) fn reset_device(s: &mut Fake, dev: usize) {
    s.graph.mem.remove(&dev);
    s.graph.live.retain(|_, l| l.dev != dev);
}

/// The nodes `deps` names, all of which must be nodes of `graph`.
///
/// # Safety
/// `deps` is null or an array of `n` nodes: the caller's.
unsafe fn deps_of(
    s: &Fake,
    graph: usize,
    deps: *const usize,
    n: usize,
) -> Result<Vec<usize>, CUresult> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if deps.is_null() {
        return Err(INVALID_VALUE);
    }
    // SAFETY: `deps` is not null (checked above) and is an array of `n` nodes (this function's
    // contract), copied out before the call returns.
    let deps = unsafe { std::slice::from_raw_parts(deps, n) }.to_vec();
    if deps
        .iter()
        .any(|d| s.graph.nodes.get(d).is_none_or(|x| x.graph != graph))
    {
        return Err(INVALID_VALUE);
    }
    Ok(deps)
}

/// Adds a node once the graph, the dependencies and the out pointer are good; `make` builds the node (and
/// may still refuse).
///
/// # Safety
/// `node_out` is null or valid for a write, and `deps` null or an array of `n` nodes: the caller's.
unsafe fn add(
    s: &mut Fake,
    node_out: *mut usize,
    graph: usize,
    deps: *const usize,
    n: usize,
    make: impl FnOnce(&mut Fake) -> Result<Kind, CUresult>,
) -> CUresult {
    if node_out.is_null() || !s.graph.has_graph(graph) {
        return INVALID_VALUE;
    }
    // SAFETY: `deps` is null or an array of `n` (this function's contract).
    let deps = match unsafe { deps_of(s, graph, deps, n) } {
        Ok(d) => d,
        Err(e) => return e,
    };
    let kind = match make(s) {
        Ok(k) => k,
        Err(e) => return e,
    };
    let node = s.graph.add_node(graph, kind, deps);
    // SAFETY: `node_out` is not null (checked above), so writable (this function's contract).
    unsafe { out(node_out, node) }
}

// ---- graphs and nodes ----

#[no_mangle]
pub unsafe extern "C" fn cuGraphCreate(ph: *mut usize, _flags: c_uint) -> CUresult {
    call("cuGraphCreate", |s| {
        if ph.is_null() {
            return INVALID_VALUE;
        }
        let g = s.graph.new_graph();
        // SAFETY: `ph` is the caller's out-parameter (the caller's contract).
        unsafe { out(ph, g) }
    })
}

#[no_mangle]
pub extern "C" fn cuGraphDestroy(g: *mut c_void) -> CUresult {
    call("cuGraphDestroy", |s| {
        if !s.graph.has_graph(g as usize) {
            return INVALID_VALUE;
        }
        s.graph.destroy_graph(g as usize);
        OK
    })
}

/// CUmemPoolProps (cuda.h, 88 bytes).
#[repr(C)]
pub struct MemPoolProps {
    alloc_type: i32,
    handle_types: i32,
    location_type: i32,
    location_id: i32,
    win32_security_attributes: *mut c_void,
    max_size: usize,
    usage: u16,
    reserved: [u8; 54],
}

/// CUmemAccessDesc (cuda.h): a location and its protection.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct AccessDesc {
    location_type: i32,
    location_id: i32,
    flags: i32,
}

/// CUmemAccess_flags: PROT_NONE, PROT_READ, PROT_READWRITE.
const ACCESS_FLAGS: [i32; 3] = [0, 1, 3];

/// CUDA_MEM_ALLOC_NODE_PARAMS, v1 and v2 alike (cuda.h, 120 bytes).
#[repr(C)]
pub struct MemAllocNodeParams {
    pool_props: MemPoolProps,
    access_descs: *const AccessDesc,
    access_desc_count: usize,
    bytesize: usize,
    dptr: u64,
}

/// CUgraphNodeParams (cuda.h, 256 bytes): the type, then a union of every type's parameters.
#[repr(C)]
pub struct GraphNodeParams {
    type_: c_int,
    reserved0: [c_int; 3],
    params: [i64; 29],
    reserved2: i64,
}

/// CUDA_CHILD_GRAPH_NODE_PARAMS.
#[repr(C)]
struct ChildGraphNodeParams {
    graph: usize,
    ownership: c_int,
}

/// An allocation node's device and a fresh address for it (the address is fixed when the node is made).
/// Its access descriptors map it for other devices (peers), which takes no memory there; the driver takes
/// no more of them than there are devices, each naming a device and a protection.
///
/// # Safety
/// `p.access_descs` is null or an array of `p.access_desc_count` descriptors: the caller's.
unsafe fn alloc_kind(s: &mut Fake, p: &MemAllocNodeParams) -> Result<Kind, CUresult> {
    if p.bytesize == 0 || p.pool_props.location_type != LOCATION_DEVICE {
        return Err(INVALID_VALUE);
    }
    let dev = dev_ok(s, p.pool_props.location_id).ok_or(INVALID_DEVICE)?;
    let descs: &[AccessDesc] = match (p.access_desc_count, p.access_descs.is_null()) {
        (0, _) => &[],
        (_, true) => return Err(INVALID_VALUE),
        // SAFETY: not null, and an array of `access_desc_count` (this function's contract), read
        // before the call returns.
        (n, false) => unsafe { std::slice::from_raw_parts(p.access_descs, n) },
    };
    let valid = |a: &AccessDesc| {
        a.location_type == LOCATION_DEVICE
            && dev_ok(s, a.location_id).is_some()
            && ACCESS_FLAGS.contains(&a.flags)
    };
    if descs.len() > s.devices.len() || !descs.iter().all(valid) {
        return Err(INVALID_VALUE);
    }
    let bytes = p.bytesize as u64;
    Ok(Kind::Alloc {
        dev,
        bytes,
        dptr: s.va(bytes),
    })
}

fn dptr_of(kind: &Kind) -> u64 {
    match kind {
        Kind::Alloc { dptr, .. } => *dptr,
        _ => 0,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphAddMemAllocNode(
    node: *mut usize,
    graph: *mut c_void,
    deps: *const usize,
    n: usize,
    params: *mut MemAllocNodeParams,
) -> CUresult {
    call("cuGraphAddMemAllocNode", |s| {
        // SAFETY: `params` is null or the caller's CUDA_MEM_ALLOC_NODE_PARAMS, readable and writable (the
        // driver writes the address back) by the caller's contract; `as_mut` makes a null None.
        let Some(p) = (unsafe { params.as_mut() }) else {
            return INVALID_VALUE;
        };
        let mut dptr = 0;
        // SAFETY: `node` is the caller's out-parameter, `deps` its array of `n`, and the access
        // descriptors in `p` its array of their count (the caller's contract).
        let r = unsafe {
            add(s, node, graph as usize, deps, n, |s| {
                let k = alloc_kind(s, p)?;
                dptr = dptr_of(&k);
                Ok(k)
            })
        };
        if r == OK {
            p.dptr = dptr;
        }
        r
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphAddMemFreeNode(
    node: *mut usize,
    graph: *mut c_void,
    deps: *const usize,
    n: usize,
    dptr: u64,
) -> CUresult {
    call("cuGraphAddMemFreeNode", |s| {
        // SAFETY: `node` is the caller's out-parameter and `deps` its array of `n` (the caller's
        // contract).
        unsafe {
            add(s, node, graph as usize, deps, n, |_| {
                Ok(Kind::Free { dptr })
            })
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphAddEmptyNode(
    node: *mut usize,
    graph: *mut c_void,
    deps: *const usize,
    n: usize,
) -> CUresult {
    call("cuGraphAddEmptyNode", |s| {
        // SAFETY: `node` is the caller's out-parameter and `deps` its array of `n` (the caller's
        // contract).
        unsafe { add(s, node, graph as usize, deps, n, |_| Ok(Kind::Empty)) }
    })
}

/// A kernel node runs on the current context's device; of its parameters only the function (the first
/// field of every version of CUDA_KERNEL_NODE_PARAMS) matters, for the fake kernels of limits.rs.
fn kernel_kind(s: &Fake, func: usize) -> Result<Kind, CUresult> {
    let dev = s.current_dev().ok_or(INVALID_CONTEXT)?;
    Ok(Kind::Kernel { func, dev })
}

/// # Safety
/// `node` is null or valid for a write, `deps` null or an array of `n` nodes, and `params` null or
/// readable for the function at its start: the caller's.
unsafe fn add_kernel(
    name: &str,
    node: *mut usize,
    graph: *mut c_void,
    deps: *const usize,
    n: usize,
    params: *const usize,
) -> CUresult {
    call(name, |s| {
        // SAFETY: `params` is null or readable for the function at its start (this function's
        // contract); `as_ref` makes a null None.
        let Some(&func) = (unsafe { params.as_ref() }) else {
            return INVALID_VALUE;
        };
        // SAFETY: `node` and `deps` as this function's contract has them.
        unsafe { add(s, node, graph as usize, deps, n, |s| kernel_kind(s, func)) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphAddKernelNode(
    node: *mut usize,
    graph: *mut c_void,
    deps: *const usize,
    n: usize,
    params: *const usize,
) -> CUresult {
    // SAFETY: `node`, `deps` and `params` are the caller's, CUDA_KERNEL_NODE_PARAMS starting with the
    // function (the caller's contract).
    unsafe { add_kernel("cuGraphAddKernelNode", node, graph, deps, n, params) }
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphAddKernelNode_v2(
    node: *mut usize,
    graph: *mut c_void,
    deps: *const usize,
    n: usize,
    params: *const usize,
) -> CUresult {
    // SAFETY: `node`, `deps` and `params` are the caller's, CUDA_KERNEL_NODE_PARAMS_v2 starting with the
    // function (the caller's contract).
    unsafe { add_kernel("cuGraphAddKernelNode_v2", node, graph, deps, n, params) }
}

/// A child graph node owns a clone of the child graph.
#[no_mangle]
pub unsafe extern "C" fn cuGraphAddChildGraphNode(
    node: *mut usize,
    graph: *mut c_void,
    deps: *const usize,
    n: usize,
    child: *mut c_void,
) -> CUresult {
    call("cuGraphAddChildGraphNode", |s| {
        // SAFETY: `node` is the caller's out-parameter and `deps` its array of `n` (the caller's
        // contract).
        unsafe {
            add(s, node, graph as usize, deps, n, |s| {
                if !s.graph.has_graph(child as usize) {
                    return Err(INVALID_VALUE);
                }
                Ok(Kind::Child {
                    graph: s.graph.clone_graph(child as usize),
                })
            })
        }
    })
}

/// cuGraphAddNode: the node type picks the union member. Allocation nodes write their address back into
/// the caller's parameters; a child graph is cloned unless its ownership moves to the node.
///
/// # Safety
/// `node` is null or valid for a write, `deps` null or an array of `n` nodes, and `params` null or a
/// CUgraphNodeParams, readable and writable, whose union holds the member its type names: the caller's.
unsafe fn add_node_params(
    name: &str,
    node: *mut usize,
    graph: *mut c_void,
    deps: *const usize,
    n: usize,
    params: *mut GraphNodeParams,
) -> CUresult {
    call(name, |s| {
        // SAFETY: `params` is null or a readable and writable CUgraphNodeParams (this function's
        // contract); `as_mut` makes a null None.
        let Some(p) = (unsafe { params.as_mut() }) else {
            return INVALID_VALUE;
        };
        let ty = p.type_;
        // The union: 232 bytes, 8-aligned, more than any member read below takes. `p` is not used
        // again, so this pointer is the only way in. Each read is of the member that `ty` names, which
        // the caller's union holds (this function's contract).
        let union = p.params.as_mut_ptr().cast::<u8>();
        let mut alloc_dptr = None;
        let make = |s: &mut Fake| match ty {
            // SAFETY: a kernel node's CUDA_KERNEL_NODE_PARAMS starts with the function, a pointer.
            TYPE_KERNEL => kernel_kind(s, unsafe { union.cast::<usize>().read() }),
            TYPE_GRAPH => {
                // SAFETY: a child graph node's member is CUDA_CHILD_GRAPH_NODE_PARAMS.
                let c = unsafe { union.cast::<ChildGraphNodeParams>().read() };
                if !s.graph.has_graph(c.graph) {
                    return Err(INVALID_VALUE);
                }
                let graph = if c.ownership == OWNERSHIP_MOVE {
                    c.graph
                } else {
                    s.graph.clone_graph(c.graph)
                };
                Ok(Kind::Child { graph })
            }
            TYPE_EMPTY => Ok(Kind::Empty),
            TYPE_MEM_ALLOC => {
                // SAFETY: an allocation node's member is CUDA_MEM_ALLOC_NODE_PARAMS, borrowed only
                // for this call, with its access descriptors the caller's array (this function's
                // contract).
                let k = unsafe { alloc_kind(s, &*union.cast::<MemAllocNodeParams>()) }?;
                alloc_dptr = Some(dptr_of(&k));
                Ok(k)
            }
            TYPE_MEM_FREE => Ok(Kind::Free {
                // SAFETY: a free node's CUDA_MEM_FREE_NODE_PARAMS is the address, a CUdeviceptr.
                dptr: unsafe { union.cast::<u64>().read() },
            }),
            t if (0..=TYPE_LAST).contains(&t) => Ok(Kind::Other(t)),
            _ => Err(INVALID_VALUE),
        };
        // SAFETY: `node` and `deps` as this function's contract has them.
        let r = unsafe { add(s, node, graph as usize, deps, n, make) };
        if let (OK, Some(d)) = (r, alloc_dptr) {
            // SAFETY: `alloc_dptr` is set only for an allocation node, whose member is the caller's
            // writable CUDA_MEM_ALLOC_NODE_PARAMS (this function's contract).
            unsafe { (*union.cast::<MemAllocNodeParams>()).dptr = d };
        }
        r
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphAddNode(
    node: *mut usize,
    graph: *mut c_void,
    deps: *const usize,
    n: usize,
    params: *mut GraphNodeParams,
) -> CUresult {
    // SAFETY: `node`, `deps` and `params` are the caller's (the caller's contract).
    unsafe { add_node_params("cuGraphAddNode", node, graph, deps, n, params) }
}

/// CUDA 12.3's signature, with edge data (ignored) beside the dependencies.
#[no_mangle]
pub unsafe extern "C" fn cuGraphAddNode_v2(
    node: *mut usize,
    graph: *mut c_void,
    deps: *const usize,
    _edges: *const c_void,
    n: usize,
    params: *mut GraphNodeParams,
) -> CUresult {
    // SAFETY: `node`, `deps` and `params` are the caller's (the caller's contract); the edge data is not
    // read.
    unsafe { add_node_params("cuGraphAddNode_v2", node, graph, deps, n, params) }
}

/// A graph's nodes: with `nodes` NULL their count; else up to `*num` of them, NULL after the last, and
/// how many were written.
#[no_mangle]
pub unsafe extern "C" fn cuGraphGetNodes(
    graph: *mut c_void,
    nodes: *mut usize,
    num: *mut usize,
) -> CUresult {
    call("cuGraphGetNodes", |s| {
        let (Some(g), false) = (s.graph.graphs.get(&(graph as usize)), num.is_null()) else {
            return INVALID_VALUE;
        };
        if nodes.is_null() {
            // SAFETY: `num` is the caller's out-parameter (the caller's contract).
            return unsafe { out(num, g.nodes.len()) };
        }
        // SAFETY: `num` is not null (checked above) and is the caller's in/out count (the caller's
        // contract).
        let room = unsafe { num.read() };
        let filled = room.min(g.nodes.len());
        for i in 0..room {
            // SAFETY: `nodes` is the caller's array of `room` (the caller's contract), and i < room.
            unsafe { nodes.add(i).write(g.nodes.get(i).copied().unwrap_or(0)) };
        }
        // SAFETY: the same `num`.
        unsafe { out(num, filled) }
    })
}

fn node_kind(s: &Fake, node: *mut c_void) -> Option<&Kind> {
    s.graph.nodes.get(&(node as usize)).map(|n| &n.kind)
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphNodeGetType(node: *mut c_void, ty: *mut c_int) -> CUresult {
    call("cuGraphNodeGetType", |s| match node_kind(s, node) {
        // SAFETY: `ty` is the caller's out-parameter (the caller's contract).
        Some(k) => unsafe { out(ty, k.type_code()) },
        None => INVALID_VALUE,
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphMemAllocNodeGetParams(
    node: *mut c_void,
    params: *mut MemAllocNodeParams,
) -> CUresult {
    call("cuGraphMemAllocNodeGetParams", |s| {
        let Some(&Kind::Alloc { dev, bytes, dptr }) = node_kind(s, node) else {
            return INVALID_VALUE;
        };
        let pool_props = MemPoolProps {
            alloc_type: ALLOCATION_PINNED,
            handle_types: 0,
            location_type: LOCATION_DEVICE,
            location_id: dev as i32,
            win32_security_attributes: std::ptr::null_mut(),
            max_size: 0,
            usage: 0,
            reserved: [0; 54],
        };
        // SAFETY: `params` is the caller's out-parameter, a CUDA_MEM_ALLOC_NODE_PARAMS (the caller's
        // contract).
        unsafe {
            out(
                params,
                MemAllocNodeParams {
                    pool_props,
                    access_descs: std::ptr::null(),
                    access_desc_count: 0,
                    bytesize: bytes as usize,
                    dptr,
                },
            )
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphMemFreeNodeGetParams(
    node: *mut c_void,
    dptr: *mut u64,
) -> CUresult {
    call("cuGraphMemFreeNodeGetParams", |s| {
        match node_kind(s, node) {
            // SAFETY: `dptr` is the caller's out-parameter (the caller's contract).
            Some(&Kind::Free { dptr: p }) => unsafe { out(dptr, p) },
            _ => INVALID_VALUE,
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphChildGraphNodeGetGraph(
    node: *mut c_void,
    graph: *mut usize,
) -> CUresult {
    call("cuGraphChildGraphNodeGetGraph", |s| {
        match node_kind(s, node) {
            // SAFETY: `graph` is the caller's out-parameter (the caller's contract).
            Some(&Kind::Child { graph: g }) => unsafe { out(graph, g) },
            _ => INVALID_VALUE,
        }
    })
}

// ---- execs ----

/// Snapshots a graph into a new exec. A graph with allocation nodes may have one exec at a time
/// (a second: CUDA_ERROR_NOT_SUPPORTED, measured).
///
/// # Safety
/// `exec_out` is null or valid for a write: the caller's out-parameter.
unsafe fn instantiate(s: &mut Fake, exec_out: *mut usize, graph: usize, flags: u64) -> CUresult {
    if exec_out.is_null() {
        return INVALID_VALUE;
    }
    let Some(g) = s.graph.graphs.get(&graph) else {
        return INVALID_VALUE;
    };
    let busy = g.exec.is_some();
    let mut kinds = Vec::new();
    s.graph.flatten(graph, &mut kinds);
    let freed: Vec<u64> = kinds
        .iter()
        .filter_map(|k| match k {
            Kind::Free { dptr } => Some(*dptr),
            _ => None,
        })
        .collect();
    let allocs: Vec<ExecAlloc> = kinds
        .iter()
        .filter_map(|k| match *k {
            Kind::Alloc { dev, bytes, dptr } => Some(ExecAlloc {
                dev,
                cost: bytes.div_ceil(GRANULE) * GRANULE,
                dptr,
                outliving: !freed.contains(&dptr),
            }),
            _ => None,
        })
        .collect();
    if !allocs.is_empty() && busy {
        return NOT_SUPPORTED;
    }
    let e = s.graph.handle(EXEC_BASE);
    if !allocs.is_empty() {
        if let Some(g) = s.graph.graphs.get_mut(&graph) {
            g.exec = Some(e);
        }
    }
    s.graph.execs.insert(
        e,
        Exec {
            graph,
            kinds,
            allocs,
            auto_free: flags & FLAG_AUTO_FREE_ON_LAUNCH != 0,
        },
    );
    // SAFETY: `exec_out` is not null (checked above), so writable (this function's contract).
    unsafe { out(exec_out, e) }
}

fn destroy_exec(s: &mut Fake, exec: usize) -> CUresult {
    let Some(e) = s.graph.execs.remove(&exec) else {
        return INVALID_VALUE;
    };
    if let Some(g) = s.graph.graphs.get_mut(&e.graph) {
        if g.exec == Some(exec) {
            g.exec = None;
        }
    }
    OK
}

/// Only cuGraphInstantiateWithParams can upload at instantiation: here the flag is refused (measured).
#[no_mangle]
pub unsafe extern "C" fn cuGraphInstantiateWithFlags(
    exec: *mut usize,
    graph: *mut c_void,
    flags: u64,
) -> CUresult {
    call("cuGraphInstantiateWithFlags", |s| {
        if flags & FLAG_UPLOAD != 0 {
            return INVALID_VALUE;
        }
        // SAFETY: `exec` is the caller's out-parameter (the caller's contract).
        unsafe { instantiate(s, exec, graph as usize, flags) }
    })
}

/// The old ABI: an error node and a log instead of flags.
///
/// # Safety
/// `exec` and `err_node` are null or valid for a write, and `log` null or a buffer of `log_size`
/// bytes: the caller's.
unsafe fn instantiate_old(
    name: &str,
    exec: *mut usize,
    graph: *mut c_void,
    err_node: *mut usize,
    log: *mut c_char,
    log_size: usize,
) -> CUresult {
    call(name, |s| {
        if !err_node.is_null() {
            // SAFETY: `err_node` is not null, so writable (this function's contract).
            unsafe { err_node.write(0) };
        }
        if !log.is_null() && log_size > 0 {
            // SAFETY: `log` is not null and its buffer has at least the one byte (this function's
            // contract).
            unsafe { log.write(0) };
        }
        // SAFETY: `exec` is null or writable (this function's contract).
        unsafe { instantiate(s, exec, graph as usize, 0) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphInstantiate(
    exec: *mut usize,
    graph: *mut c_void,
    err_node: *mut usize,
    log: *mut c_char,
    log_size: usize,
) -> CUresult {
    // SAFETY: `exec`, `err_node` and `log` are the caller's (the caller's contract).
    unsafe { instantiate_old("cuGraphInstantiate", exec, graph, err_node, log, log_size) }
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphInstantiate_v2(
    exec: *mut usize,
    graph: *mut c_void,
    err_node: *mut usize,
    log: *mut c_char,
    log_size: usize,
) -> CUresult {
    // SAFETY: `exec`, `err_node` and `log` are the caller's (the caller's contract).
    unsafe {
        instantiate_old(
            "cuGraphInstantiate_v2",
            exec,
            graph,
            err_node,
            log,
            log_size,
        )
    }
}

/// CUDA_GRAPH_INSTANTIATE_PARAMS.
#[repr(C)]
pub struct InstantiateParams {
    flags: u64,
    upload_stream: *mut c_void,
    err_node_out: usize,
    result_out: c_int,
}

/// Instantiates, and with the UPLOAD flag uploads on the given stream at once (a failed upload destroys
/// the new exec again).
///
/// # Safety
/// `exec` is null or valid for a write and read back, and `params` null or a readable and writable
/// CUDA_GRAPH_INSTANTIATE_PARAMS: the caller's.
unsafe fn instantiate_with_params(
    name: &str,
    exec: *mut usize,
    graph: *mut c_void,
    params: *mut InstantiateParams,
    ptsz: bool,
) -> CUresult {
    // SAFETY: `params` is null or a readable and writable CUDA_GRAPH_INSTANTIATE_PARAMS (this function's
    // contract); `as_mut` makes a null None.
    let Some(p) = (unsafe { params.as_mut() }) else {
        return call(name, |_| INVALID_VALUE);
    };
    let st = capture::stream(p.upload_stream, ptsz);
    call(name, |s| {
        p.err_node_out = 0;
        p.result_out = INSTANTIATE_ERROR;
        // SAFETY: `exec` is null or writable (this function's contract).
        let r = unsafe { instantiate(s, exec, graph as usize, p.flags & !FLAG_UPLOAD) };
        if r != OK {
            return r;
        }
        if p.flags & FLAG_UPLOAD != 0 {
            // SAFETY: instantiate succeeded, so `exec` is not null and holds the new exec (this
            // function's contract makes it readable).
            let e = unsafe { exec.read() };
            let r = enqueue_launch(s, e, st, true);
            if r != OK {
                destroy_exec(s, e);
                // SAFETY: the same `exec`, not null.
                unsafe { exec.write(0) };
                return r;
            }
        }
        p.result_out = INSTANTIATE_SUCCESS;
        OK
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphInstantiateWithParams(
    exec: *mut usize,
    graph: *mut c_void,
    params: *mut InstantiateParams,
) -> CUresult {
    // SAFETY: `exec` and `params` are the caller's (the caller's contract).
    unsafe { instantiate_with_params("cuGraphInstantiateWithParams", exec, graph, params, false) }
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphInstantiateWithParams_ptsz(
    exec: *mut usize,
    graph: *mut c_void,
    params: *mut InstantiateParams,
) -> CUresult {
    // SAFETY: `exec` and `params` are the caller's (the caller's contract).
    unsafe {
        instantiate_with_params(
            "cuGraphInstantiateWithParams_ptsz",
            exec,
            graph,
            params,
            true,
        )
    }
}

/// Destroying an exec gives nothing back: its memory stays in the graph pool until a trim (measured).
#[no_mangle]
pub extern "C" fn cuGraphExecDestroy(exec: *mut c_void) -> CUresult {
    call("cuGraphExecDestroy", |s| destroy_exec(s, exec as usize))
}

/// A launch or upload: into a capturing stream a launch is captured as a child graph node and maps
/// nothing (an upload there is prohibited); elsewhere it maps the exec's memory.
fn enqueue_launch(s: &mut Fake, exec: usize, st: Stream, upload: bool) -> CUresult {
    if !s.graph.execs.contains_key(&exec) {
        return INVALID_VALUE;
    }
    if upload {
        if let Some(e) = capture::prohibited_on(s, st) {
            return e;
        }
    }
    match capture::enqueue(s, st, false) {
        Err(e) => e,
        Ok(Work::Captured) => {
            let child = s.graph.graph_of_exec(exec);
            capture::capture_node(s, st, Kind::Child { graph: child });
            OK
        }
        Ok(Work::Run) => map(s, exec, upload),
    }
}

/// Maps an exec's graph memory for a launch (its outliving allocations then live) or an upload (none
/// live). Its own allocations still live from a previous launch refuse it (CUDA_ERROR_INVALID_VALUE,
/// measured) unless it frees them on launch. Each device's pool grows to what the exec needs beside the
/// other live allocations; if the device cannot give that, nothing changes. The exec's fake kernels then
/// take what they take (limits.rs).
fn map(s: &mut Fake, exec: usize, upload: bool) -> CUresult {
    let Some(e) = s.graph.execs.get(&exec) else {
        return INVALID_VALUE;
    };
    let mine: Vec<u64> = e
        .allocs
        .iter()
        .filter(|a| a.outliving && s.graph.live.contains_key(&a.dptr))
        .map(|a| a.dptr)
        .collect();
    if !mine.is_empty() && !e.auto_free {
        return INVALID_VALUE;
    }
    let mut need: Vec<(usize, u64)> = Vec::new();
    for a in &e.allocs {
        match need.iter_mut().find(|(d, _)| *d == a.dev) {
            Some((_, n)) => *n += a.cost,
            None => need.push((a.dev, a.cost)),
        }
    }
    let outliving: Vec<(u64, usize, u64)> = e
        .allocs
        .iter()
        .filter(|a| a.outliving)
        .map(|a| (a.dptr, a.dev, a.cost))
        .collect();
    let kernels: Vec<(usize, usize)> = e
        .kinds
        .iter()
        .filter_map(|k| match *k {
            Kind::Kernel { func, dev } => Some((func, dev)),
            _ => None,
        })
        .collect();
    let mut grown: Vec<(usize, u64)> = Vec::new();
    let undo = |s: &mut Fake, grown: &[(usize, u64)]| {
        for &(d, g) in grown {
            s.give(d, g);
        }
    };
    for (dev, n) in need {
        let others: u64 = s
            .graph
            .live
            .iter()
            .filter(|(p, l)| l.dev == dev && !mine.contains(p))
            .map(|(_, l)| l.cost)
            .sum();
        let reserved = s.graph.mem.get(&dev).map_or(0, |m| m.reserved);
        let grow = (others + n).saturating_sub(reserved);
        if grow > 0 {
            if let Err(e) = s.take(dev, grow) {
                undo(s, &grown);
                return e;
            }
            grown.push((dev, grow));
        }
    }
    if !upload {
        for (func, dev) in kernels {
            let r = crate::limits::kernel_effect(s, dev, func);
            if r != OK {
                undo(s, &grown);
                return r;
            }
        }
    }
    for (dev, g) in grown {
        let m = s.graph.mem.entry(dev).or_default();
        m.reserved += g;
        m.reserved_high = m.reserved_high.max(m.reserved);
        m.used_high = m.used_high.max(m.reserved);
    }
    for p in mine {
        s.graph.live.remove(&p);
    }
    if !upload {
        for (dptr, dev, cost) in outliving {
            s.graph.live.insert(dptr, Live { dev, cost });
        }
    }
    OK
}

fn launch(name: &str, exec: *mut c_void, h: *mut c_void, ptsz: bool, upload: bool) -> CUresult {
    let st = capture::stream(h, ptsz);
    call(name, |s| enqueue_launch(s, exec as usize, st, upload))
}

#[no_mangle]
pub extern "C" fn cuGraphLaunch(exec: *mut c_void, st: *mut c_void) -> CUresult {
    launch("cuGraphLaunch", exec, st, false, false)
}

#[no_mangle]
pub extern "C" fn cuGraphLaunch_ptsz(exec: *mut c_void, st: *mut c_void) -> CUresult {
    launch("cuGraphLaunch_ptsz", exec, st, true, false)
}

#[no_mangle]
pub extern "C" fn cuGraphUpload(exec: *mut c_void, st: *mut c_void) -> CUresult {
    launch("cuGraphUpload", exec, st, false, true)
}

#[no_mangle]
pub extern "C" fn cuGraphUpload_ptsz(exec: *mut c_void, st: *mut c_void) -> CUresult {
    launch("cuGraphUpload_ptsz", exec, st, true, true)
}

// ---- the device's graph memory ----

/// The pool shrinks to its live allocations; the rest goes back to the device. Execs keep their
/// snapshots and map again at their next launch.
#[no_mangle]
pub extern "C" fn cuDeviceGraphMemTrim(dev: c_int) -> CUresult {
    call("cuDeviceGraphMemTrim", |s| {
        let Some(d) = dev_ok(s, dev) else {
            return INVALID_DEVICE;
        };
        let keep: u64 = s
            .graph
            .live
            .values()
            .filter(|l| l.dev == d)
            .map(|l| l.cost)
            .sum();
        let reserved = s.graph.mem.get(&d).map_or(0, |m| m.reserved);
        if reserved > keep {
            s.give(d, reserved - keep);
            s.graph.mem.entry(d).or_default().reserved = keep;
        }
        OK
    })
}

/// USED_MEM_CURRENT answers what RESERVED_MEM_CURRENT does: measured equal through every step.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetGraphMemAttribute(
    dev: c_int,
    attr: c_int,
    value: *mut c_void,
) -> CUresult {
    call("cuDeviceGetGraphMemAttribute", |s| {
        let Some(d) = dev_ok(s, dev) else {
            return INVALID_DEVICE;
        };
        let m = s.graph.mem.get(&d).copied().unwrap_or_default();
        let v = match attr {
            ATTR_USED_MEM_CURRENT | ATTR_RESERVED_MEM_CURRENT => m.reserved,
            ATTR_USED_MEM_HIGH => m.used_high,
            ATTR_RESERVED_MEM_HIGH => m.reserved_high,
            _ => return INVALID_VALUE,
        };
        // SAFETY: `value` is the caller's out-parameter, a cuuint64_t for every graph memory attribute
        // (the caller's contract).
        unsafe { out(value.cast::<u64>(), v) }
    })
}

/// Only the high marks can be set, and only to 0, which resets them to the current figure.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceSetGraphMemAttribute(
    dev: c_int,
    attr: c_int,
    value: *mut c_void,
) -> CUresult {
    call("cuDeviceSetGraphMemAttribute", |s| {
        let Some(d) = dev_ok(s, dev) else {
            return INVALID_DEVICE;
        };
        // SAFETY: `value` is null or the caller's cuuint64_t, every graph memory attribute's type (the
        // caller's contract); `as_ref` makes a null None.
        if unsafe { value.cast::<u64>().as_ref() } != Some(&0) {
            return INVALID_VALUE;
        }
        let m = s.graph.mem.entry(d).or_default();
        match attr {
            ATTR_USED_MEM_HIGH => m.used_high = m.reserved,
            ATTR_RESERVED_MEM_HIGH => m.reserved_high = m.reserved,
            _ => return INVALID_VALUE,
        }
        OK
    })
}
