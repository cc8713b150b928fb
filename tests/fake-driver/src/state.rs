//! The fake driver's state: one `Fake` behind one process-wide lock, reached through `fake()`, kept
//! usable across `fork`, and the two helpers every entry point goes through: `call` (the lock, the call
//! count, the cuInit check) and `out` (an out-parameter). What each field means belongs to the area that
//! uses it (devices.rs, memory.rs, pools.rs, vmm.rs, arrays.rs, checkpoint.rs, capture.rs, graph.rs,
//! limits.rs); this file only makes the state and hands it out.

use crate::checkpoint::wait_while_suspended;
use crate::config;
use crate::devices::{visible_devices, Device};
use crate::memory::Alloc;
use crate::pools::{default_pools, Pool};
use crate::results::{CUresult, INVALID_VALUE, NOT_INITIALIZED, OK};
use crate::vmm::Handle;
use std::collections::HashMap;
use std::sync::OnceLock;

/// Everything the fake driver knows, behind the one lock (`fake()`). Fields are grouped by the area whose
/// entry points keep them.
pub struct Fake {
    // ---- devices and contexts (devices.rs) ----
    /// The physical device behind each CUDA ordinal (`CUDA_VISIBLE_DEVICES` over `FAKECUDA_DEVICES`).
    pub(crate) physical: Vec<usize>,
    /// Physical devices on the machine (what NVML lists).
    pub(crate) machine_devices: usize,
    pub(crate) total: u64,
    pub(crate) context_bytes: u64,
    pub(crate) initialized: bool,
    pub(crate) devices: Vec<Device>,
    pub(crate) contexts: HashMap<usize, usize>,
    // ---- linear memory (memory.rs) ----
    pub(crate) allocs: HashMap<u64, Alloc>,
    /// Live small allocations in each shared page (by page address).
    pub(crate) page_users: HashMap<u64, u32>,
    pub(crate) next_small_page: u64,
    pub(crate) next_va: u64,
    /// A word of content per allocation (`fakecuda_write`), and where it is while checkpointed
    /// (checkpoint.rs).
    pub(crate) contents: HashMap<u64, u64>,
    pub(crate) host_copy: Option<HashMap<u64, u64>>,
    // ---- stream-ordered pools (pools.rs) ----
    pub(crate) pools: HashMap<usize, Pool>,
    pub(crate) next_pool: usize,
    /// How much a pool grows at a time (`FAKECUDA_POOL_STEP`, default one page).
    pub(crate) pool_step: u64,
    // ---- VMM handles and their mappings (vmm.rs), arrays (arrays.rs) ----
    pub(crate) handles: HashMap<u64, Handle>,
    pub(crate) mappings: HashMap<u64, u64>,
    /// Numbers VMM handles and arrays alike.
    pub(crate) next_handle: u64,
    /// Each array's device and bytes.
    pub(crate) arrays: HashMap<usize, (usize, u64)>,
    /// Calls per entry point (`fakecuda_calls`).
    pub(crate) calls: HashMap<String, u64>,
    /// Streams and their captures (capture.rs), graphs and graph memory (graph.rs), context limits
    /// (limits.rs).
    pub(crate) capture: crate::capture::Captures,
    pub(crate) graph: crate::graph::Graphs,
    pub(crate) limits: crate::limits::Limits,
}

static FAKE: OnceLock<std::sync::Mutex<Fake>> = OnceLock::new();

// The driver survives `fork` from a busy process, as the real one lets a child call into it: the
// forking thread holds the state across the fork (so no other thread is half-way through it) and lets
// it go on both sides. A std mutex keeps its waiters in the kernel, so a child's unlock wakes nobody
// (parking_lot would hand the lock to a waiter that the child does not have).
thread_local! {
    static HELD_FOR_FORK: std::cell::RefCell<Option<std::sync::MutexGuard<'static, Fake>>> =
        const { std::cell::RefCell::new(None) };
}

extern "C" fn fork_prepare() {
    if let Some(m) = FAKE.get() {
        let guard = m.lock().unwrap_or_else(|e| e.into_inner());
        HELD_FOR_FORK.with(|h| *h.borrow_mut() = Some(guard));
    }
}

extern "C" fn fork_release() {
    HELD_FOR_FORK.with(|h| drop(h.borrow_mut().take()));
}

/// The state, locked; made on first use from the configuration (config.rs).
pub(crate) fn fake() -> std::sync::MutexGuard<'static, Fake> {
    FAKE.get_or_init(|| {
        // SAFETY: the handlers are functions of this library that take nothing and touch only its own
        // state; glibc drops a library's handlers when it is unloaded, so they never outlive their code.
        unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_release), Some(fork_release)) };
        let machine = config::machine_devices();
        let physical = visible_devices(machine);
        let n = physical.len();
        std::sync::Mutex::new(Fake {
            physical,
            machine_devices: machine,
            total: config::device_memory(),
            context_bytes: config::context_bytes(),
            initialized: false,
            devices: (0..n).map(|_| Device::default()).collect(),
            contexts: HashMap::new(),
            allocs: HashMap::new(),
            page_users: HashMap::new(),
            next_small_page: 0x7d00_0000_0000,
            next_va: 0x7f00_0000_0000,
            contents: HashMap::new(),
            host_copy: None,
            pools: default_pools(n),
            next_pool: 0x5000,
            pool_step: config::pool_step(),
            handles: HashMap::new(),
            mappings: HashMap::new(),
            next_handle: 0x9000,
            arrays: HashMap::new(),
            calls: HashMap::new(),
            capture: Default::default(),
            graph: Default::default(),
            limits: Default::default(),
        })
    })
    .lock()
    .unwrap_or_else(|e| e.into_inner())
}

impl Fake {
    pub(crate) fn count(&mut self, name: &str) {
        *self.calls.entry(name.to_string()).or_default() += 1;
    }
}

/// Runs `f` with the state locked, counting the call and requiring cuInit.
pub(crate) fn call(name: &str, f: impl FnOnce(&mut Fake) -> CUresult) -> CUresult {
    wait_while_suspended();
    let mut s = fake();
    s.count(name);
    if !s.initialized {
        return NOT_INITIALIZED;
    }
    f(&mut s)
}

/// Writes `v` through an out-parameter, or answers INVALID_VALUE for a null one, as the driver does.
///
/// # Safety
/// `p` is null or valid for a write of a `T`: what the caller's contract (crate docs) promises of an
/// out-parameter.
pub(crate) unsafe fn out<T>(p: *mut T, v: T) -> CUresult {
    if p.is_null() {
        return INVALID_VALUE;
    }
    // SAFETY: `p` is not null, and a non-null `p` is valid for a write of a `T` (this function's contract).
    unsafe { p.write(v) };
    OK
}
