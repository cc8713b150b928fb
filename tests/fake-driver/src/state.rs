//! The fake driver's state and its exported entry points.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{c_char, c_uint, c_void, CStr};
use std::sync::OnceLock;

pub(crate) type CUresult = i32;
pub(crate) const OK: CUresult = 0;
pub(crate) const INVALID_VALUE: CUresult = 1;
pub(crate) const OUT_OF_MEMORY: CUresult = 2;
const NOT_INITIALIZED: CUresult = 3;
pub(crate) const INVALID_DEVICE: CUresult = 101;
pub(crate) const INVALID_CONTEXT: CUresult = 201;
const NOT_FOUND: CUresult = 500;
pub(crate) const NOT_SUPPORTED: CUresult = 801;

pub(crate) const PAGE: u64 = 2 << 20;
pub(crate) const MIB: u64 = 1 << 20;

pub(crate) fn env_bytes(var: &str, default: u64) -> u64 {
    let Ok(v) = std::env::var(var) else {
        return default;
    };
    let v = v.trim();
    let (num, mult) = match v.chars().last() {
        Some('K') => (&v[..v.len() - 1], 1 << 10),
        Some('M') => (&v[..v.len() - 1], 1 << 20),
        Some('G') => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    num.parse::<u64>().map(|n| n * mult).unwrap_or(default)
}

#[derive(Default)]
struct Device {
    used: u64,
    /// Where the next small (under 2 MiB) allocation goes, and the end of its 2 MiB page.
    small_cursor: u64,
    small_end: u64,
    primary_refs: u32,
    contexts: u32,
}

#[derive(Clone, Copy)]
enum Kind {
    /// Whole pages of its own.
    Own(u64),
    /// Inside a shared 2 MiB page, which is given back when nothing in it is live.
    Packed,
    Pool(usize),
}

#[derive(Clone, Copy)]
struct Alloc {
    dev: usize,
    kind: Kind,
    size: u64,
}

struct Pool {
    dev: usize,
    reserved: u64,
    used: u64,
    threshold: u64,
}

struct Handle {
    dev: usize,
    size: u64,
    refs: u32,
    maps: u32,
}

pub struct Fake {
    /// The physical device behind each CUDA ordinal (`CUDA_VISIBLE_DEVICES` over `FAKECUDA_DEVICES`).
    physical: Vec<usize>,
    /// Physical devices on the machine (what NVML lists).
    machine_devices: usize,
    total: u64,
    /// How much a pool grows at a time (`FAKECUDA_POOL_STEP`, default one page).
    pool_step: u64,
    context_bytes: u64,
    initialized: bool,
    devices: Vec<Device>,
    allocs: HashMap<u64, Alloc>,
    /// A word of content per allocation (`fakecuda_write`), and where it is while checkpointed.
    contents: HashMap<u64, u64>,
    host_copy: Option<HashMap<u64, u64>>,
    next_va: u64,
    pools: HashMap<usize, Pool>,
    next_pool: usize,
    handles: HashMap<u64, Handle>,
    mappings: HashMap<u64, u64>,
    next_handle: u64,
    arrays: HashMap<usize, (usize, u64)>,
    contexts: HashMap<usize, usize>,
    calls: HashMap<String, u64>,
    /// Live small allocations in each shared page (by page address).
    page_users: HashMap<u64, u32>,
    next_small_page: u64,
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

fn fake() -> std::sync::MutexGuard<'static, Fake> {
    FAKE.get_or_init(|| {
        // SAFETY: registers plain extern "C" functions with no arguments.
        unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_release), Some(fork_release)) };
        let machine = env_bytes("FAKECUDA_DEVICES", 1).clamp(1, 8) as usize;
        let physical = visible_devices(machine);
        let n = physical.len();
        let mut pools = HashMap::new();
        for dev in 0..n {
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
        std::sync::Mutex::new(Fake {
            physical,
            machine_devices: machine,
            total: env_bytes("FAKECUDA_MEM", 4 << 30),
            pool_step: env_bytes("FAKECUDA_POOL_STEP", PAGE).max(PAGE),
            context_bytes: env_bytes("FAKECUDA_CONTEXT_BYTES", 300 * MIB),
            initialized: false,
            devices: (0..n).map(|_| Device::default()).collect(),
            allocs: HashMap::new(),
            contents: HashMap::new(),
            host_copy: None,
            next_va: 0x7f00_0000_0000,
            pools,
            next_pool: 0x5000,
            handles: HashMap::new(),
            mappings: HashMap::new(),
            next_handle: 0x9000,
            arrays: HashMap::new(),
            contexts: HashMap::new(),
            calls: HashMap::new(),
            page_users: HashMap::new(),
            next_small_page: 0x7d00_0000_0000,
            capture: Default::default(),
            graph: Default::default(),
            limits: Default::default(),
        })
    })
    .lock()
    .unwrap_or_else(|e| e.into_inner())
}

/// The physical devices a process sees, in its ordinal order, as the real driver reads
/// `CUDA_VISIBLE_DEVICES`: indices or `GPU-` UUID prefixes, up to the first entry that names none.
fn visible_devices(machine: usize) -> Vec<usize> {
    let Ok(list) = std::env::var("CUDA_VISIBLE_DEVICES") else {
        return (0..machine).collect();
    };
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim) {
        let found = match item.parse::<usize>() {
            Ok(i) => (i < machine).then_some(i),
            Err(_) => (0..machine).find(|&d| {
                !item.is_empty()
                    && fake_uuid_string(d)
                        .to_ascii_lowercase()
                        .starts_with(&item.to_ascii_lowercase())
            }),
        };
        match found {
            Some(d) if !out.contains(&d) => out.push(d),
            _ => break,
        }
    }
    out
}

fn default_pool(dev: usize) -> usize {
    0x4000 + dev
}

fn primary_ctx(dev: usize) -> usize {
    0x1000 + dev
}

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

impl Fake {
    fn count(&mut self, name: &str) {
        *self.calls.entry(name.to_string()).or_default() += 1;
    }

    pub(crate) fn current_dev(&self) -> Option<usize> {
        self.contexts.get(&CURRENT.with(|c| c.get())).copied()
    }

    /// Takes `bytes` from the device, or fails with OUT_OF_MEMORY.
    pub(crate) fn take(&mut self, dev: usize, bytes: u64) -> Result<(), CUresult> {
        let others = shared::used_by_others(self.physical[dev]);
        let d = &mut self.devices[dev];
        if others + d.used + bytes > self.total {
            return Err(OUT_OF_MEMORY);
        }
        d.used += bytes;
        shared::publish(self.physical[dev], d.used);
        Ok(())
    }

    pub(crate) fn give(&mut self, dev: usize, bytes: u64) {
        let d = &mut self.devices[dev];
        d.used = d.used.saturating_sub(bytes);
        shared::publish(self.physical[dev], d.used);
    }

    /// The ordinal this process sees physical device `p` as, if it sees it.
    fn ordinal_of(&self, p: usize) -> Option<usize> {
        self.physical.iter().position(|&q| q == p)
    }

    /// What this process holds on physical device `p`.
    fn own_used(&self, p: usize) -> u64 {
        self.ordinal_of(p).map_or(0, |o| self.devices[o].used)
    }

    /// What the whole physical device `p` holds: this process, and with `FAKECUDA_SHARED` every other one.
    fn device_used(&self, p: usize) -> u64 {
        self.own_used(p) + shared::used_by_others(p)
    }

    pub(crate) fn va(&mut self, size: u64) -> u64 {
        let va = self.next_va;
        self.next_va += size.max(1).div_ceil(PAGE) * PAGE + PAGE;
        va
    }

    /// A cuMemAlloc-style allocation with the real driver's rounding: 2 MiB pages, and smaller
    /// allocations packed (512-byte aligned) into shared 2 MiB pages, a page being taken from the device
    /// while anything in it is live.
    fn alloc(&mut self, dev: usize, size: u64) -> Result<u64, CUresult> {
        if size == 0 {
            return Err(INVALID_VALUE);
        }
        if size >= PAGE {
            let charge = size.div_ceil(PAGE) * PAGE;
            self.take(dev, charge)?;
            let va = self.va(size);
            self.allocs.insert(
                va,
                Alloc {
                    dev,
                    kind: Kind::Own(charge),
                    size,
                },
            );
            return Ok(va);
        }
        let slot = size.div_ceil(512) * 512;
        let d = &self.devices[dev];
        let (va, new_page) = if d.small_cursor != 0 && d.small_cursor + slot <= d.small_end {
            (d.small_cursor, false)
        } else {
            (self.next_small_page, true)
        };
        let page = va / PAGE * PAGE;
        if !self.page_users.contains_key(&page) {
            self.take(dev, PAGE)?;
        }
        if new_page {
            self.next_small_page += PAGE;
            self.devices[dev].small_end = va + PAGE;
        }
        self.devices[dev].small_cursor = va + slot;
        *self.page_users.entry(page).or_default() += 1;
        self.allocs.insert(
            va,
            Alloc {
                dev,
                kind: Kind::Packed,
                size,
            },
        );
        Ok(va)
    }

    fn free(&mut self, ptr: u64) -> CUresult {
        // A graph allocation that outlived its graph goes back to the graph pool, not to the device.
        if crate::graph::free_live(self, ptr) {
            return OK;
        }
        let Some(a) = self.allocs.remove(&ptr) else {
            return INVALID_VALUE;
        };
        self.contents.remove(&ptr);
        match a.kind {
            Kind::Own(charge) => self.give(a.dev, charge),
            Kind::Packed => {
                let page = ptr / PAGE * PAGE;
                let users = self.page_users.entry(page).or_default();
                *users = users.saturating_sub(1);
                if *users == 0 {
                    self.page_users.remove(&page);
                    self.give(a.dev, PAGE);
                }
            }
            Kind::Pool(p) => {
                if let Some(pool) = self.pools.get_mut(&p) {
                    pool.used = pool.used.saturating_sub(a.size.div_ceil(PAGE) * PAGE);
                }
            }
        }
        OK
    }

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
                kind: Kind::Pool(pool),
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

    fn release_handle_if_dead(&mut self, h: u64) {
        if let Some(hd) = self.handles.get(&h) {
            if hd.refs == 0 && hd.maps == 0 {
                let (dev, size) = (hd.dev, hd.size);
                self.handles.remove(&h);
                self.give(dev, size);
            }
        }
    }

    fn create_context(&mut self, dev: usize) -> Result<(), CUresult> {
        if self.devices[dev].primary_refs == 0 && self.devices[dev].contexts == 0 {
            let bytes = self.context_bytes;
            self.take(dev, bytes)?;
        }
        Ok(())
    }

    fn drop_context(&mut self, dev: usize) {
        let d = &self.devices[dev];
        if d.primary_refs == 0 && d.contexts == 0 {
            // The driver frees everything the device held for this process.
            self.allocs.retain(|_, a| a.dev != dev);
            self.page_users.clear();
            self.devices[dev] = Device::default();
            crate::graph::reset_device(self, dev);
            crate::limits::reset_device(self, dev);
            shared::publish(self.physical[dev], 0);
        }
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

pub(crate) unsafe fn out<T>(p: *mut T, v: T) -> CUresult {
    if p.is_null() {
        return INVALID_VALUE;
    }
    unsafe { p.write(v) };
    OK
}

pub(crate) fn dev_ok(s: &Fake, dev: i32) -> Option<usize> {
    usize::try_from(dev).ok().filter(|&d| d < s.devices.len())
}

// ---- test hooks ----

#[no_mangle]
pub unsafe extern "C" fn fakecuda_calls(name: *const c_char) -> u64 {
    let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
    fake().calls.get(name.as_ref()).copied().unwrap_or(0)
}

/// A process locked or checkpointed by another (the checkpoint API) waits in every CUDA call. While
/// checkpointed, its memory's contents are off the device (kept aside, as the driver keeps them in host
/// memory) and come back when it runs again.
fn wait_while_suspended() {
    let me = std::process::id() as i32;
    let mut waited = false;
    loop {
        match shared::state(me) {
            shared::RUNNING => break,
            shared::CHECKPOINTED => {
                let mut s = fake();
                if s.host_copy.is_none() {
                    s.host_copy = Some(std::mem::take(&mut s.contents));
                }
            }
            _ => {}
        }
        waited = true;
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    if waited {
        let mut s = fake();
        if let Some(saved) = s.host_copy.take() {
            s.contents = saved;
        }
    }
}

/// Writes one word of content into a live allocation (test hook).
#[no_mangle]
pub extern "C" fn fakecuda_write(ptr: u64, value: u64) -> CUresult {
    let mut s = fake();
    if !s.allocs.contains_key(&ptr) {
        return INVALID_VALUE;
    }
    s.contents.insert(ptr, value);
    OK
}

/// Reads it back (0 if the allocation has none, or its content is not on the device).
#[no_mangle]
pub extern "C" fn fakecuda_read(ptr: u64) -> u64 {
    fake().contents.get(&ptr).copied().unwrap_or(0)
}

#[no_mangle]
pub extern "C" fn fakecuda_device_used(dev: i32) -> u64 {
    let s = fake();
    dev_ok(&s, dev).map_or(0, |d| s.devices[d].used)
}

/// Memory the driver takes on its own, with no allocation call (as module loading does).
#[no_mangle]
pub extern "C" fn fakecuda_hidden_alloc(dev: i32, bytes: u64) -> CUresult {
    let mut s = fake();
    match dev_ok(&s, dev) {
        Some(d) => match s.take(d, bytes) {
            Ok(()) => OK,
            Err(e) => e,
        },
        None => INVALID_DEVICE,
    }
}

/// The fake's own export of `name`, bypassing any interposed dlsym.
#[no_mangle]
pub unsafe extern "C" fn fakecuda_symbol(name: *const c_char) -> *mut c_void {
    static SELF: OnceLock<(usize, usize)> = OnceLock::new();
    let (handle, dlsym) = *SELF.get_or_init(|| {
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        unsafe { libc::dladdr(fakecuda_symbol as *const c_void, &mut info) };
        let handle = unsafe { libc::dlopen(info.dli_fname, libc::RTLD_NOLOAD | libc::RTLD_LAZY) };
        let dlsym = unsafe {
            libc::dlvsym(
                libc::RTLD_DEFAULT,
                c"dlsym".as_ptr(),
                c"GLIBC_2.34".as_ptr(),
            )
        };
        let dlsym = if dlsym.is_null() {
            unsafe {
                libc::dlvsym(
                    libc::RTLD_DEFAULT,
                    c"dlsym".as_ptr(),
                    c"GLIBC_2.2.5".as_ptr(),
                )
            }
        } else {
            dlsym
        };
        (handle as usize, dlsym as usize)
    });
    let dlsym: unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void =
        unsafe { std::mem::transmute(dlsym) };
    unsafe { dlsym(handle as *mut c_void, name) }
}

// ---- initialisation, devices, contexts ----

#[no_mangle]
pub extern "C" fn cuInit(_flags: c_uint) -> CUresult {
    let mut s = fake();
    s.count("cuInit");
    s.initialized = true;
    OK
}

#[no_mangle]
pub unsafe extern "C" fn cuDriverGetVersion(v: *mut i32) -> CUresult {
    unsafe { out(v, 13000) }
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetCount(n: *mut i32) -> CUresult {
    call("cuDeviceGetCount", |s| unsafe {
        out(n, s.devices.len() as i32)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGet(d: *mut i32, ordinal: i32) -> CUresult {
    call("cuDeviceGet", |s| match dev_ok(s, ordinal) {
        Some(_) => unsafe { out(d, ordinal) },
        None => INVALID_DEVICE,
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid_v2(uuid: *mut [u8; 16], dev: i32) -> CUresult {
    call("cuDeviceGetUuid_v2", |s| match dev_ok(s, dev) {
        Some(d) => unsafe { out(uuid, fake_uuid(s.physical[d])) },
        None => INVALID_DEVICE,
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid(uuid: *mut [u8; 16], dev: i32) -> CUresult {
    unsafe { cuDeviceGetUuid_v2(uuid, dev) }
}

/// Device d's UUID: GPU-fa4e0000-0000-0000-0000-0000000000dd.
fn fake_uuid(d: usize) -> [u8; 16] {
    let mut u = [0u8; 16];
    u[0] = 0xfa;
    u[1] = 0x4e;
    u[15] = d as u8;
    u
}

fn fake_uuid_string(d: usize) -> String {
    format!("GPU-fa4e0000-0000-0000-0000-0000000000{d:02x}")
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: i32) -> CUresult {
    call("cuDeviceTotalMem_v2", |s| match dev_ok(s, dev) {
        Some(_) => unsafe { out(bytes, s.total as usize) },
        None => INVALID_DEVICE,
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(ctx: *mut usize, dev: i32) -> CUresult {
    call("cuDevicePrimaryCtxRetain", |s| {
        let Some(d) = dev_ok(s, dev) else {
            return INVALID_DEVICE;
        };
        if let Err(e) = s.create_context(d) {
            return e;
        }
        s.devices[d].primary_refs += 1;
        s.contexts.insert(primary_ctx(d), d);
        unsafe { out(ctx, primary_ctx(d)) }
    })
}

fn primary_release(name: &str, dev: i32, reset: bool) -> CUresult {
    call(name, |s| {
        let Some(d) = dev_ok(s, dev) else {
            return INVALID_DEVICE;
        };
        let refs = &mut s.devices[d].primary_refs;
        if *refs == 0 && !reset {
            return INVALID_CONTEXT;
        }
        *refs = if reset { 0 } else { *refs - 1 };
        s.drop_context(d);
        OK
    })
}

#[no_mangle]
pub extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: i32) -> CUresult {
    primary_release("cuDevicePrimaryCtxRelease_v2", dev, false)
}

#[no_mangle]
pub extern "C" fn cuDevicePrimaryCtxRelease(dev: i32) -> CUresult {
    primary_release("cuDevicePrimaryCtxRelease", dev, false)
}

#[no_mangle]
pub extern "C" fn cuDevicePrimaryCtxReset_v2(dev: i32) -> CUresult {
    primary_release("cuDevicePrimaryCtxReset_v2", dev, true)
}

#[no_mangle]
pub extern "C" fn cuDevicePrimaryCtxReset(dev: i32) -> CUresult {
    primary_release("cuDevicePrimaryCtxReset", dev, true)
}

fn ctx_create(name: &str, ctx: *mut usize, dev: i32) -> CUresult {
    call(name, |s| {
        let Some(d) = dev_ok(s, dev) else {
            return INVALID_DEVICE;
        };
        if let Err(e) = s.create_context(d) {
            return e;
        }
        s.devices[d].contexts += 1;
        let handle = 0x2000 + s.contexts.len() * 16 + d;
        s.contexts.insert(handle, d);
        CURRENT.with(|c| c.set(handle));
        unsafe { out(ctx, handle) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxCreate_v2(ctx: *mut usize, _flags: c_uint, dev: i32) -> CUresult {
    ctx_create("cuCtxCreate_v2", ctx, dev)
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxCreate(ctx: *mut usize, _flags: c_uint, dev: i32) -> CUresult {
    ctx_create("cuCtxCreate", ctx, dev)
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxCreate_v3(
    ctx: *mut usize,
    _p: *mut c_void,
    _n: i32,
    _f: c_uint,
    dev: i32,
) -> CUresult {
    ctx_create("cuCtxCreate_v3", ctx, dev)
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxCreate_v4(
    ctx: *mut usize,
    _p: *mut c_void,
    _f: c_uint,
    dev: i32,
) -> CUresult {
    ctx_create("cuCtxCreate_v4", ctx, dev)
}

fn ctx_destroy(name: &str, ctx: usize) -> CUresult {
    call(name, |s| {
        if ctx < 0x2000 {
            return INVALID_CONTEXT;
        }
        let Some(d) = s.contexts.remove(&ctx) else {
            return INVALID_CONTEXT;
        };
        s.devices[d].contexts = s.devices[d].contexts.saturating_sub(1);
        s.drop_context(d);
        CURRENT.with(|c| {
            if c.get() == ctx {
                c.set(0)
            }
        });
        OK
    })
}

#[no_mangle]
pub extern "C" fn cuCtxDestroy_v2(ctx: usize) -> CUresult {
    ctx_destroy("cuCtxDestroy_v2", ctx)
}

#[no_mangle]
pub extern "C" fn cuCtxDestroy(ctx: usize) -> CUresult {
    ctx_destroy("cuCtxDestroy", ctx)
}

#[no_mangle]
pub extern "C" fn cuCtxSetCurrent(ctx: usize) -> CUresult {
    call("cuCtxSetCurrent", |s| {
        if ctx != 0 && !s.contexts.contains_key(&ctx) {
            return INVALID_CONTEXT;
        }
        CURRENT.with(|c| c.set(ctx));
        OK
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCurrent(ctx: *mut usize) -> CUresult {
    unsafe { out(ctx, CURRENT.with(|c| c.get())) }
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetDevice(dev: *mut i32) -> CUresult {
    if bench_mode() {
        return unsafe { out(dev, 0) };
    }
    call("cuCtxGetDevice", |s| match s.current_dev() {
        Some(d) => unsafe { out(dev, d as i32) },
        None => INVALID_CONTEXT,
    })
}

// cuStreamGetDevice, cuStreamSynchronize and cuCtxSynchronize live in capture.rs: capture restricts them.

// ---- linear memory ----

#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    call("cuMemGetInfo_v2", |s| {
        let Some(d) = s.current_dev() else {
            return INVALID_CONTEXT;
        };
        unsafe {
            out(
                free,
                s.total.saturating_sub(s.device_used(s.physical[d])) as usize,
            );
            out(total, s.total as usize)
        }
    })
}

fn alloc_current(name: &str, dptr: *mut u64, size: u64) -> CUresult {
    call(name, |s| {
        if let Some(e) = crate::capture::prohibited(s, None) {
            return e;
        }
        if dptr.is_null() {
            return INVALID_VALUE;
        }
        let Some(d) = s.current_dev() else {
            return INVALID_CONTEXT;
        };
        match s.alloc(d, size) {
            Ok(va) => unsafe { out(dptr, va) },
            Err(e) => e,
        }
    })
}

/// `FAKECUDA_BENCH=1`: allocation, free and current-device calls answer at once, without bookkeeping or
/// locks, so that a benchmark of the hooks measures the hooks.
pub(crate) fn bench_mode() -> bool {
    static BENCH: OnceLock<bool> = OnceLock::new();
    *BENCH.get_or_init(|| std::env::var_os("FAKECUDA_BENCH").is_some_and(|v| v == "1"))
}

/// Bench mode's allocator: each thread takes addresses from a 1 GiB range of its own, as a stack, so a
/// freed block is handed out again at once, as the real driver reuses a freed block of the same size.
static BENCH_VA: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0x7e00_0000_0000);

thread_local! {
    /// (base of this thread's range, bytes in use from it).
    static BENCH_STACK: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

fn bench_alloc(size: u64) -> u64 {
    BENCH_STACK.with(|c| {
        let (mut base, top) = c.get();
        if base == 0 {
            base = BENCH_VA.fetch_add(1 << 30, std::sync::atomic::Ordering::Relaxed);
        }
        c.set((base, top + size.div_ceil(512) * 512));
        base + top
    })
}

fn bench_free(ptr: u64) {
    BENCH_STACK.with(|c| {
        let (base, top) = c.get();
        if ptr >= base && ptr < base + top {
            c.set((base, ptr - base));
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut u64, size: usize) -> CUresult {
    if bench_mode() {
        return unsafe { out(dptr, bench_alloc(size as u64)) };
    }
    alloc_current("cuMemAlloc_v2", dptr, size as u64)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc(_dptr: *mut u32, _size: c_uint) -> CUresult {
    fake().count("cuMemAlloc");
    NOT_SUPPORTED
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocPitch(
    _d: *mut u32,
    _p: *mut c_uint,
    _w: c_uint,
    _h: c_uint,
    _e: c_uint,
) -> CUresult {
    fake().count("cuMemAllocPitch");
    NOT_SUPPORTED
}

/// Pitch alignment of the fake device.
const PITCH: u64 = 512;

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocPitch_v2(
    dptr: *mut u64,
    pitch: *mut usize,
    width: usize,
    height: usize,
    _elem: c_uint,
) -> CUresult {
    let p = (width as u64).div_ceil(PITCH) * PITCH;
    let r = alloc_current("cuMemAllocPitch_v2", dptr, p * height as u64);
    if r == OK {
        unsafe { out(pitch, p as usize) };
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocManaged(
    dptr: *mut u64,
    size: usize,
    _flags: c_uint,
) -> CUresult {
    alloc_current("cuMemAllocManaged", dptr, size as u64)
}

#[no_mangle]
pub extern "C" fn cuMemFree_v2(ptr: u64) -> CUresult {
    if bench_mode() {
        bench_free(ptr);
        return OK;
    }
    call("cuMemFree_v2", |s| {
        if let Some(e) = crate::capture::prohibited(s, None) {
            return e;
        }
        s.free(ptr)
    })
}

// ---- stream-ordered allocation ----

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetMemPool(pool: *mut usize, dev: i32) -> CUresult {
    call("cuDeviceGetMemPool", |s| match dev_ok(s, dev) {
        Some(d) => unsafe { out(pool, default_pool(d)) },
        None => INVALID_DEVICE,
    })
}

/// Stream-ordered allocation. On a capturing stream it allocates nothing and adds a graph node instead
/// (capture.rs decides); elsewhere it is one of the calls a capture prohibits.
fn alloc_async(
    name: &str,
    dptr: *mut u64,
    size: usize,
    pool: Option<usize>,
    stream: crate::capture::Stream,
) -> CUresult {
    call(name, |s| {
        if let Some(r) = crate::capture::alloc_async(s, stream, dptr, size as u64, pool) {
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
            Ok(va) => unsafe { out(dptr, va) },
            Err(e) => e,
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocAsync(dptr: *mut u64, size: usize, st: *mut c_void) -> CUresult {
    let st = crate::capture::stream(st, false);
    alloc_async("cuMemAllocAsync", dptr, size, None, st)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocAsync_ptsz(
    dptr: *mut u64,
    size: usize,
    st: *mut c_void,
) -> CUresult {
    let st = crate::capture::stream(st, true);
    alloc_async("cuMemAllocAsync_ptsz", dptr, size, None, st)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocFromPoolAsync(
    dptr: *mut u64,
    size: usize,
    pool: usize,
    st: *mut c_void,
) -> CUresult {
    let st = crate::capture::stream(st, false);
    alloc_async("cuMemAllocFromPoolAsync", dptr, size, Some(pool), st)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocFromPoolAsync_ptsz(
    dptr: *mut u64,
    size: usize,
    pool: usize,
    st: *mut c_void,
) -> CUresult {
    let st = crate::capture::stream(st, true);
    alloc_async("cuMemAllocFromPoolAsync_ptsz", dptr, size, Some(pool), st)
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
        let (Some(p), Some(v)) = (s.pools.get_mut(&pool), unsafe { value.as_ref() }) else {
            return INVALID_VALUE;
        };
        if attr != 4 {
            return INVALID_VALUE;
        }
        p.threshold = *v;
        OK
    })
}

// ---- virtual memory management ----

#[repr(C)]
pub struct AllocationProp {
    type_: i32,
    handle_types: i32,
    location_type: i32,
    location_id: i32,
    rest: [u8; 16],
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetAllocationGranularity(
    g: *mut usize,
    _p: *const AllocationProp,
    _o: i32,
) -> CUresult {
    unsafe { out(g, PAGE as usize) }
}

#[no_mangle]
pub unsafe extern "C" fn cuMemCreate(
    handle: *mut u64,
    size: usize,
    prop: *const AllocationProp,
    _f: u64,
) -> CUresult {
    call("cuMemCreate", |s| {
        if let Some(e) = crate::capture::prohibited(s, None) {
            return e;
        }
        let Some(prop) = (unsafe { prop.as_ref() }) else {
            return INVALID_VALUE;
        };
        if size == 0 || !(size as u64).is_multiple_of(PAGE) {
            return INVALID_VALUE;
        }
        let dev = if prop.location_type == 1 {
            match dev_ok(s, prop.location_id) {
                Some(d) => Some(d),
                None => return INVALID_DEVICE,
            }
        } else {
            None
        };
        if let Some(d) = dev {
            if let Err(e) = s.take(d, size as u64) {
                return e;
            }
        }
        let h = s.next_handle;
        s.next_handle += 1;
        // Host handles hold no device memory: record them on an impossible device with size 0.
        let (dev, size) = dev.map_or((0, 0), |d| (d, size as u64));
        s.handles.insert(
            h,
            Handle {
                dev,
                size,
                refs: 1,
                maps: 0,
            },
        );
        unsafe { out(handle, h) }
    })
}

#[no_mangle]
pub extern "C" fn cuMemRelease(handle: u64) -> CUresult {
    call("cuMemRelease", |s| {
        let Some(h) = s.handles.get_mut(&handle) else {
            return INVALID_VALUE;
        };
        h.refs = h.refs.saturating_sub(1);
        s.release_handle_if_dead(handle);
        OK
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAddressReserve(
    ptr: *mut u64,
    size: usize,
    _a: usize,
    _addr: u64,
    _f: u64,
) -> CUresult {
    call("cuMemAddressReserve", |s| {
        let va = s.va(size as u64);
        unsafe { out(ptr, va) }
    })
}

#[no_mangle]
pub extern "C" fn cuMemAddressFree(_ptr: u64, _size: usize) -> CUresult {
    call("cuMemAddressFree", |_| OK)
}

#[no_mangle]
pub extern "C" fn cuMemMap(
    ptr: u64,
    _size: usize,
    _offset: usize,
    handle: u64,
    _f: u64,
) -> CUresult {
    call("cuMemMap", |s| {
        let Some(h) = s.handles.get_mut(&handle) else {
            return INVALID_VALUE;
        };
        h.maps += 1;
        s.mappings.insert(ptr, handle);
        OK
    })
}

#[no_mangle]
pub extern "C" fn cuMemUnmap(ptr: u64, size: usize) -> CUresult {
    call("cuMemUnmap", |s| {
        let gone: Vec<u64> = s
            .mappings
            .keys()
            .copied()
            .filter(|&p| p >= ptr && p < ptr + size as u64)
            .collect();
        if gone.is_empty() {
            return INVALID_VALUE;
        }
        for p in gone {
            if let Some(h) = s.mappings.remove(&p) {
                if let Some(hd) = s.handles.get_mut(&h) {
                    hd.maps = hd.maps.saturating_sub(1);
                }
                s.release_handle_if_dead(h);
            }
        }
        OK
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemRetainAllocationHandle(
    handle: *mut u64,
    addr: *mut c_void,
) -> CUresult {
    call("cuMemRetainAllocationHandle", |s| {
        let Some(&h) = s.mappings.get(&(addr as u64)) else {
            return INVALID_VALUE;
        };
        if let Some(hd) = s.handles.get_mut(&h) {
            hd.refs += 1;
        }
        unsafe { out(handle, h) }
    })
}

// ---- arrays ----

#[repr(C)]
pub struct Array3D {
    width: usize,
    height: usize,
    depth: usize,
    format: i32,
    channels: u32,
    flags: u32,
}

#[repr(C)]
pub struct Array2D {
    width: usize,
    height: usize,
    format: i32,
    channels: u32,
}

/// The fake's real array size: rows padded to 512 bytes, whole pages.
fn array_bytes(w: usize, h: usize, d: usize, format: i32, ch: u32) -> u64 {
    let elem: u64 = match format {
        1 | 8 => 1,
        2 | 9 | 0x10 => 2,
        _ => 4,
    };
    let row = (w as u64 * elem * ch.max(1) as u64).div_ceil(PITCH) * PITCH;
    (row * h.max(1) as u64 * d.max(1) as u64).div_ceil(PAGE) * PAGE
}

fn array_create(name: &str, out_handle: *mut usize, bytes: u64) -> CUresult {
    call(name, |s| {
        if let Some(e) = crate::capture::prohibited(s, None) {
            return e;
        }
        let Some(d) = s.current_dev() else {
            return INVALID_CONTEXT;
        };
        if let Err(e) = s.take(d, bytes) {
            return e;
        }
        let h = 0xa000 + s.arrays.len() * 64 + s.next_handle as usize;
        s.next_handle += 1;
        s.arrays.insert(h, (d, bytes));
        unsafe { out(out_handle, h) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuArrayCreate_v2(array: *mut usize, desc: *const Array2D) -> CUresult {
    let Some(d) = (unsafe { desc.as_ref() }) else {
        return INVALID_VALUE;
    };
    array_create(
        "cuArrayCreate_v2",
        array,
        array_bytes(d.width, d.height, 1, d.format, d.channels),
    )
}

#[no_mangle]
pub unsafe extern "C" fn cuArray3DCreate_v2(array: *mut usize, desc: *const Array3D) -> CUresult {
    let Some(d) = (unsafe { desc.as_ref() }) else {
        return INVALID_VALUE;
    };
    array_create(
        "cuArray3DCreate_v2",
        array,
        array_bytes(d.width, d.height, d.depth, d.format, d.channels),
    )
}

#[no_mangle]
pub unsafe extern "C" fn cuMipmappedArrayCreate(
    array: *mut usize,
    desc: *const Array3D,
    levels: c_uint,
) -> CUresult {
    let Some(d) = (unsafe { desc.as_ref() }) else {
        return INVALID_VALUE;
    };
    let mut total = 0;
    let (mut w, mut h, mut dp) = (d.width, d.height, d.depth);
    for _ in 0..levels.max(1) {
        total += array_bytes(w, h, dp, d.format, d.channels);
        w = (w / 2).max(1);
        h = (h / 2).max(1);
        dp = (dp / 2).max(1);
    }
    array_create("cuMipmappedArrayCreate", array, total)
}

fn array_destroy(name: &str, array: usize) -> CUresult {
    call(name, |s| match s.arrays.remove(&array) {
        Some((d, bytes)) => {
            s.give(d, bytes);
            OK
        }
        None => INVALID_VALUE,
    })
}

#[no_mangle]
pub extern "C" fn cuArrayDestroy(array: usize) -> CUresult {
    array_destroy("cuArrayDestroy", array)
}

#[no_mangle]
pub extern "C" fn cuMipmappedArrayDestroy(array: usize) -> CUresult {
    array_destroy("cuMipmappedArrayDestroy", array)
}

#[repr(C)]
pub struct ArrayRequirements {
    size: usize,
    alignment: usize,
    reserved: [u32; 4],
}

fn requirements(name: &str, req: *mut ArrayRequirements, array: usize) -> CUresult {
    call(name, |s| match s.arrays.get(&array) {
        Some(&(_, bytes)) => unsafe {
            out(
                req,
                ArrayRequirements {
                    size: bytes as usize,
                    alignment: PAGE as usize,
                    reserved: [0; 4],
                },
            )
        },
        None => INVALID_VALUE,
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuArrayGetMemoryRequirements(
    req: *mut ArrayRequirements,
    array: usize,
    _dev: i32,
) -> CUresult {
    requirements("cuArrayGetMemoryRequirements", req, array)
}

#[no_mangle]
pub unsafe extern "C" fn cuMipmappedArrayGetMemoryRequirements(
    req: *mut ArrayRequirements,
    array: usize,
    _dev: i32,
) -> CUresult {
    requirements("cuMipmappedArrayGetMemoryRequirements", req, array)
}

// ---- things vramcap must pass through untouched ----

// cuLaunchKernel lives in limits.rs: some fake kernels grow the heap or the stack, and a capture records it.

static EXPORT_TABLE: [usize; 4] = [32, 0xfeed, 0xbeef, 0];

#[no_mangle]
pub unsafe extern "C" fn cuGetExportTable(
    table: *mut *const c_void,
    _id: *const c_void,
) -> CUresult {
    fake().count("cuGetExportTable");
    unsafe { out(table, EXPORT_TABLE.as_ptr().cast()) }
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorName(code: CUresult, name: *mut *const c_char) -> CUresult {
    let s: &'static CStr = match code {
        0 => c"CUDA_SUCCESS",
        1 => c"CUDA_ERROR_INVALID_VALUE",
        2 => c"CUDA_ERROR_OUT_OF_MEMORY",
        3 => c"CUDA_ERROR_NOT_INITIALIZED",
        101 => c"CUDA_ERROR_INVALID_DEVICE",
        201 => c"CUDA_ERROR_INVALID_CONTEXT",
        215 => c"CUDA_ERROR_UNSUPPORTED_LIMIT",
        400 => c"CUDA_ERROR_INVALID_HANDLE",
        401 => c"CUDA_ERROR_ILLEGAL_STATE",
        801 => c"CUDA_ERROR_NOT_SUPPORTED",
        900 => c"CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED",
        901 => c"CUDA_ERROR_STREAM_CAPTURE_INVALIDATED",
        906 => c"CUDA_ERROR_STREAM_CAPTURE_IMPLICIT",
        908 => c"CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD",
        _ => c"CUDA_ERROR_UNKNOWN",
    };
    unsafe { out(name, s.as_ptr()) }
}

// ---- entry-point lookup ----

#[no_mangle]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: i32,
    flags: u64,
    status: *mut i32,
) -> CUresult {
    fake().count("cuGetProcAddress_v2");
    if symbol.is_null() || pfn.is_null() {
        return INVALID_VALUE;
    }
    let name = unsafe { CStr::from_ptr(symbol) }
        .to_string_lossy()
        .into_owned();
    let set_status = |v: i32| {
        if !status.is_null() {
            unsafe { status.write(v) };
        }
    };
    unsafe { pfn.write(std::ptr::null_mut()) };
    let exported = match crate::table::lookup(&name, version, flags) {
        crate::table::Answer::Symbol(sym) => sym,
        crate::table::Answer::VersionNotSufficient => {
            set_status(2);
            return OK;
        }
        crate::table::Answer::NotInTable => name,
    };
    let Ok(c) = std::ffi::CString::new(exported) else {
        return INVALID_VALUE;
    };
    let p = unsafe { fakecuda_symbol(c.as_ptr()) };
    if p.is_null() {
        set_status(1);
        return NOT_FOUND;
    }
    unsafe { pfn.write(p) };
    set_status(0);
    OK
}

#[no_mangle]
pub unsafe extern "C" fn cuGetProcAddress(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: i32,
    flags: u64,
) -> CUresult {
    unsafe { cuGetProcAddress_v2(symbol, pfn, version, flags, std::ptr::null_mut()) }
}

// ---- NVML ----

type NvmlReturn = i32;

#[no_mangle]
pub extern "C" fn nvmlInit_v2() -> NvmlReturn {
    0
}

#[no_mangle]
pub extern "C" fn nvmlShutdown() -> NvmlReturn {
    0
}

/// The physical device behind an NVML handle (NVML ignores CUDA_VISIBLE_DEVICES).
fn nvml_dev(handle: usize) -> Option<usize> {
    handle
        .checked_sub(0x6000)
        .filter(|&d| d < fake().machine_devices)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(n: *mut u32) -> NvmlReturn {
    unsafe { out(n, fake().machine_devices as u32) }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(i: u32, h: *mut usize) -> NvmlReturn {
    if (i as usize) < fake().machine_devices {
        unsafe { out(h, 0x6000 + i as usize) }
    } else {
        2
    }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(
    uuid: *const c_char,
    h: *mut usize,
) -> NvmlReturn {
    let uuid = unsafe { CStr::from_ptr(uuid) }
        .to_string_lossy()
        .to_ascii_lowercase();
    let n = fake().machine_devices;
    match (0..n).find(|&d| fake_uuid_string(d).eq_ignore_ascii_case(&uuid)) {
        Some(d) => unsafe { out(h, 0x6000 + d) },
        None => 6,
    }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUUID(h: usize, buf: *mut c_char, len: u32) -> NvmlReturn {
    let Some(d) = nvml_dev(h) else { return 2 };
    let s = fake_uuid_string(d);
    if s.len() + 1 > len as usize {
        return 7;
    }
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr().cast(), buf, s.len());
        buf.add(s.len()).write(0);
    }
    0
}

#[repr(C)]
pub struct NvmlMemory {
    total: u64,
    free: u64,
    used: u64,
}

#[repr(C)]
pub struct NvmlMemoryV2 {
    version: u32,
    total: u64,
    reserved: u64,
    free: u64,
    used: u64,
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(h: usize, m: *mut NvmlMemory) -> NvmlReturn {
    let Some(d) = nvml_dev(h) else { return 2 };
    let s = fake();
    let used = s.device_used(d);
    unsafe {
        out(
            m,
            NvmlMemory {
                total: s.total,
                free: s.total - used,
                used,
            },
        )
    }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(h: usize, m: *mut NvmlMemoryV2) -> NvmlReturn {
    let Some(d) = nvml_dev(h) else { return 2 };
    let s = fake();
    let used = s.device_used(d);
    let version = unsafe { m.as_ref() }.map_or(0, |m| m.version);
    unsafe {
        out(
            m,
            NvmlMemoryV2 {
                version,
                total: s.total,
                reserved: 0,
                free: s.total - used,
                used,
            },
        )
    }
}

#[repr(C)]
pub struct NvmlProcess {
    pid: u32,
    used: u64,
    gpu_instance: u32,
    compute_instance: u32,
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    h: usize,
    count: *mut u32,
    list: *mut NvmlProcess,
) -> NvmlReturn {
    let Some(d) = nvml_dev(h) else { return 2 };
    let s = fake();
    let used = s.own_used(d);
    let n = u32::from(used > 0);
    let room = unsafe { *count };
    unsafe { *count = n };
    if n > room {
        return 7;
    }
    if n == 1 {
        let pid = std::process::id();
        unsafe {
            list.write(NvmlProcess {
                pid,
                used,
                gpu_instance: 0,
                compute_instance: 0,
            })
        };
    }
    0
}

/// `FAKECUDA_SHARED=DIR`: one device shared by several processes. Each process writes what it holds per
/// device into `DIR/<pid>`; a process sees the others' files (of live PIDs) when it allocates and in
/// NVML's free memory, so a device can be full because of other processes, as a real one can.
mod shared {
    use std::os::unix::fs::FileExt;
    use std::path::PathBuf;
    use std::sync::OnceLock;

    fn dir() -> Option<&'static PathBuf> {
        static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
        DIR.get_or_init(|| std::env::var_os("FAKECUDA_SHARED").map(PathBuf::from))
            .as_ref()
    }

    fn alive(pid: i32) -> bool {
        // SAFETY: signal 0 only checks existence.
        unsafe { libc::kill(pid, 0) == 0 }
    }

    pub fn publish(dev: usize, used: u64) {
        let Some(dir) = dir() else { return };
        let path = dir.join(std::process::id().to_string());
        if let Ok(f) = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)
        {
            let _ = f.write_all_at(&used.to_le_bytes(), dev as u64 * 8);
        }
    }

    pub fn used_by_others(dev: usize) -> u64 {
        let me = std::process::id() as i32;
        used_by_others_than(me, dev)
    }

    fn used_by(pid: i32, dev: usize) -> Option<u64> {
        let f = std::fs::File::open(dir()?.join(pid.to_string())).ok()?;
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, dev as u64 * 8).ok()?;
        Some(u64::from_le_bytes(b))
    }

    /// What every live process but `pid` holds on `dev`; a checkpointed process holds nothing.
    fn used_by_others_than(pid: i32, dev: usize) -> u64 {
        let Some(dir) = dir() else { return 0 };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .filter_map(|e| {
                let other: i32 = e.file_name().into_string().ok()?.parse().ok()?;
                if other == pid || !alive(other) || state(other) == CHECKPOINTED {
                    return None;
                }
                used_by(other, dev)
            })
            .sum()
    }

    // ---- the checkpoint API's process states, one file per PID ----

    pub const RUNNING: i32 = 0;
    pub const LOCKED: i32 = 1;
    pub const CHECKPOINTED: i32 = 2;

    pub fn state(pid: i32) -> i32 {
        dir()
            .and_then(|d| std::fs::read(d.join(format!("{pid}.state"))).ok())
            .and_then(|b| b.first().copied())
            .map_or(RUNNING, i32::from)
    }

    pub fn set_state(pid: i32, state: i32) {
        if let Some(d) = dir() {
            let _ = std::fs::write(d.join(format!("{pid}.state")), [state as u8]);
        }
    }

    /// Whether `pid` is a live CUDA process on this shared device.
    pub fn known(pid: i32) -> bool {
        dir().is_some_and(|d| d.join(pid.to_string()).exists()) && alive(pid)
    }

    /// Whether the memory `pid` held fits its devices again, beside everyone else's.
    pub fn fits(pid: i32, devices: usize, total: u64) -> bool {
        (0..devices).all(|dev| {
            let mine = used_by(pid, dev).unwrap_or(0);
            mine == 0 || used_by_others_than(pid, dev) + mine <= total
        })
    }
}

// ---- the checkpoint API (CUDA 12.8+), over FAKECUDA_SHARED ----
// FAKECUDA_NO_CHECKPOINT=1 answers CUDA_ERROR_NOT_SUPPORTED, as a driver without it would;
// FAKECUDA_CHECKPOINT_FAIL=1 makes the checkpoint step fail (the process stays locked).

pub(crate) const ILLEGAL_STATE: CUresult = 401;
const UNKNOWN: CUresult = 999;

fn checkpoint_supported() -> bool {
    std::env::var_os("FAKECUDA_NO_CHECKPOINT").is_none()
        && std::env::var_os("FAKECUDA_SHARED").is_some()
}

fn checkpoint_call(pid: i32, from: i32, to: i32, check: impl FnOnce() -> CUresult) -> CUresult {
    if !checkpoint_supported() {
        return NOT_SUPPORTED;
    }
    if !shared::known(pid) {
        return INVALID_VALUE;
    }
    if shared::state(pid) != from {
        return ILLEGAL_STATE;
    }
    let r = check();
    if r == OK {
        shared::set_state(pid, to);
    }
    r
}

#[repr(C)]
pub struct CheckpointLockArgs {
    timeout_ms: u32,
    reserved0: u32,
    reserved1: [u64; 7],
}

#[no_mangle]
pub extern "C" fn cuCheckpointProcessLock(pid: i32, _args: *const CheckpointLockArgs) -> CUresult {
    checkpoint_call(pid, shared::RUNNING, shared::LOCKED, || OK)
}

#[no_mangle]
pub extern "C" fn cuCheckpointProcessCheckpoint(pid: i32, _args: *const c_void) -> CUresult {
    checkpoint_call(pid, shared::LOCKED, shared::CHECKPOINTED, || {
        if std::env::var_os("FAKECUDA_CHECKPOINT_FAIL").is_some() {
            UNKNOWN
        } else {
            OK
        }
    })
}

#[no_mangle]
pub extern "C" fn cuCheckpointProcessRestore(pid: i32, _args: *const c_void) -> CUresult {
    let (devices, total) = {
        let s = fake();
        (s.machine_devices, s.total)
    };
    checkpoint_call(pid, shared::CHECKPOINTED, shared::LOCKED, || {
        if shared::fits(pid, devices, total) {
            OK
        } else {
            OUT_OF_MEMORY
        }
    })
}

#[no_mangle]
pub extern "C" fn cuCheckpointProcessUnlock(pid: i32, _args: *const c_void) -> CUresult {
    checkpoint_call(pid, shared::LOCKED, shared::RUNNING, || OK)
}

#[no_mangle]
pub unsafe extern "C" fn cuCheckpointProcessGetState(pid: i32, state: *mut i32) -> CUresult {
    if !checkpoint_supported() {
        return NOT_SUPPORTED;
    }
    if !shared::known(pid) {
        return INVALID_VALUE;
    }
    unsafe { out(state, shared::state(pid)) }
}
