//! Measures what a context and everything else outside our counted allocations really costs, from the
//! per-process figure the driver reports through NVML (the figure nvidia-smi shows), so that figure stays
//! under the cap.
//!
//! A reading sets the ledger's context share to what NVML's `usedGpuMemory` for this PID holds beyond our
//! counted allocations: the context itself, module images, library workspaces, and whatever packing the
//! charge model could not see. Readings come from two places:
//! - a background thread, started with the first context, every 200 ms while our count moves and every
//!   second otherwise (a reading NVML did not answer is taken again at the next tick, a few times);
//! - the cap check itself, synchronously, when an allocation would leave less than [`NEAR_CAP`] of
//!   headroom (at most once per [`FRESH`]), because a framework can load hundreds of MiB of kernels
//!   between two background readings.
//!
//! Reading per process needs no lock shared with other processes, so start-up is never serialised. Where
//! NVML is absent or does not list our PID (another PID namespace), the estimate charged at context
//! creation stays, and a line at `info` level says so.
//!
//! A reading is taken only while no allocating or freeing driver call of this process is in flight:
//! otherwise the driver and our count could disagree for a moment, and the difference would be mistaken
//! for context memory. Every such hook holds a read lock of [`OPS`] around its bookkeeping and driver
//! call ([`in_flight`]); a reading holds the write lock. The background thread only takes it when it is
//! free (`try_write`), so it never delays the program; the cap check near the cap waits for it, because
//! a process that allocates from many threads may never pause by itself. Pools are re-read first, since
//! they trim themselves at points we do not see.

use crate::cuda::nvmlProcessInfo_t;
use crate::real;
use crate::state::{self, LEDGER};
use core_lib::ledger::{DeviceUsage, MAX_DEVICES};
use core_lib::lock::Lock;
use core_lib::log::monotonic_ns;
use core_lib::striped::{stripe, Padded, Stripe, STRIPES};
use core_lib::vlog;
use std::ffi::{c_char, c_void, CString};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Below this much headroom, the cap check reads NVML before it lets an allocation through.
pub const NEAR_CAP: u64 = 512 << 20;
/// Allocations at least this large near the cap always get a fresh reading first.
const ALWAYS_READ: u64 = 16 << 20;
/// How old a reading may be and still count as fresh for the cap check.
const FRESH: u64 = 20_000_000;
/// The background thread's tick (publishing), and how many ticks make one NVML period (200 ms).
const TICK: Duration = Duration::from_millis(10);
const TICKS_PER_READING: u64 = 20;
/// Even with no change in our count, the driver can take memory on its own (a module loaded at the first
/// launch of its kernels: 138 MiB seen on an H200 right after a program's first allocations): read again
/// after this long.
const IDLE_PERIOD: u64 = 1_000_000_000;

/// Read-held by every allocating or freeing hook while its bookkeeping and driver call are in flight;
/// write-held by a reading. A big-reader lock: a reader touches only its thread's stripe (and reads the
/// writer flag), so hooks on many threads do not share a cache line; the rare writer sets the flag and
/// waits for every stripe to drain.
///
/// Reader and writer each store a flag and then read the other's (Dekker), which needs a full fence on
/// both sides. The reader's side runs on every allocation, so where the kernel offers it, the writer pays
/// for both: `membarrier(PRIVATE_EXPEDITED)` makes every running thread of the process execute a full fence,
/// so a reader on a stripe it owns gets by with a plain store and a compiler fence (the asymmetric fence
/// of liburcu and folly). Without membarrier, or on a shared stripe, readers use locked read-modify-writes.
struct OpsLock {
    readers: [Padded<AtomicU64>; STRIPES],
    writer: AtomicBool,
    writers: Lock<()>,
    /// Set once, at start-up, when membarrier is registered.
    asymmetric: AtomicBool,
}

static OPS: OpsLock = OpsLock {
    readers: [const { Padded(AtomicU64::new(0)) }; STRIPES],
    writer: AtomicBool::new(false),
    writers: Lock::new(()),
    asymmetric: AtomicBool::new(false),
};

const MEMBARRIER_CMD_QUERY: libc::c_int = 0;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

fn membarrier(cmd: libc::c_int) -> libc::c_long {
    // SAFETY: membarrier(2) takes (cmd, flags, cpu_id) and touches no memory of ours.
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) }
}

/// Turns the asymmetric fence on if the kernel has it. Called once at start-up, before any hook can
/// hold the lock (so no reader is mid-way while the mode changes).
pub fn use_membarrier() {
    let offered = membarrier(MEMBARRIER_CMD_QUERY);
    let wanted = (MEMBARRIER_CMD_PRIVATE_EXPEDITED | MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED)
        as libc::c_long;
    if offered >= 0
        && offered & wanted == wanted
        && membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0
    {
        OPS.asymmetric.store(true, Ordering::SeqCst);
    } else {
        vlog!(
            Debug,
            "membarrier unavailable; allocation hooks use locked fences"
        );
    }
}

/// In a forked child: the operations in flight were other threads', which do not exist here, and so was
/// any reading under way; no device is watched yet. The membarrier registration belongs to the address
/// space, so the child registers again or goes back to locked fences.
///
/// # Safety
/// Only from the fork child handler (`crate::fork`): one thread, no guard of these locks held.
pub unsafe fn reset_after_fork() {
    // SAFETY: the caller's guarantee.
    unsafe {
        OPS.writers.reset_after_fork(());
        READINGS.reset_after_fork([Readings::default(); MAX_DEVICES]);
    }
    for r in &OPS.readers {
        r.store(0, Ordering::SeqCst);
    }
    OPS.writer.store(false, Ordering::SeqCst);
    if OPS.asymmetric.load(Ordering::SeqCst)
        && membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) != 0
    {
        OPS.asymmetric.store(false, Ordering::SeqCst);
    }
    for dev in 0..MAX_DEVICES {
        WATCHED[dev].store(false, Ordering::Relaxed);
        LAST_READING_NS[dev].store(0, Ordering::Relaxed);
        LAST_COUNTED[dev].store(u64::MAX, Ordering::Relaxed);
        MISSED[dev].store(0, Ordering::Relaxed);
    }
}

/// An allocating or freeing operation in flight (see [`in_flight`]), on its thread's stripe.
pub struct InFlight(Stripe);

impl InFlight {
    /// The stripe of the thread running the operation, for the ledger's figures.
    pub fn stripe(&self) -> Stripe {
        self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let r = &OPS.readers[self.0.index()];
        if light(self.0) {
            r.store(r.load(Ordering::Relaxed) - 1, Ordering::Release);
        } else {
            r.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Whether a reader on stripe `s` may use the plain store (see [`OpsLock`]).
fn light(s: Stripe) -> bool {
    s.owned() && OPS.asymmetric.load(Ordering::Relaxed)
}

/// Marks an allocating or freeing driver call (with its bookkeeping) as in flight while it lives.
pub fn in_flight() -> InFlight {
    let s = stripe();
    let r = &OPS.readers[s.index()];
    loop {
        if light(s) {
            r.store(r.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
        } else {
            r.fetch_add(1, Ordering::SeqCst);
        }
        if !OPS.writer.load(Ordering::SeqCst) {
            return InFlight(s);
        }
        drop(InFlight(s));
        while OPS.writer.load(Ordering::Relaxed) {
            std::thread::yield_now();
        }
    }
}

/// Held while a reading is taken: no operation is in flight, none can start.
struct Quiet<'a>(#[allow(dead_code)] core_lib::lock::Guard<'a, ()>);

impl Drop for Quiet<'_> {
    fn drop(&mut self) {
        OPS.writer.store(false, Ordering::SeqCst);
    }
}

/// Stops new operations and waits for those in flight; without `wait`, gives up at once if any is.
fn quiet(wait: bool) -> Option<Quiet<'static>> {
    let exclusive = if wait {
        OPS.writers.lock()
    } else {
        OPS.writers.try_lock()?
    };
    OPS.writer.store(true, Ordering::SeqCst);
    if OPS.asymmetric.load(Ordering::SeqCst) && membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0 {
        // Should the kernel refuse after all, readers go back to locked fences; give those already
        // past their plain store a moment for it to drain from their store buffers.
        OPS.asymmetric.store(false, Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // Every reader's flag store is now visible here, or that reader will see ours.
    let guard = Quiet(exclusive);
    while OPS.readers.iter().any(|r| r.load(Ordering::SeqCst) != 0) {
        if !wait {
            return None;
        }
        std::thread::yield_now();
    }
    Some(guard)
}

static WATCHED: [AtomicBool; MAX_DEVICES] = [const { AtomicBool::new(false) }; MAX_DEVICES];
static LAST_READING_NS: [AtomicU64; MAX_DEVICES] = [const { AtomicU64::new(0) }; MAX_DEVICES];
/// Our count at the last reading, so an idle process is not read again and again.
static LAST_COUNTED: [AtomicU64; MAX_DEVICES] = [const { AtomicU64::new(u64::MAX) }; MAX_DEVICES];
/// Readings in a row that NVML did not answer, and how many are retried at once.
static MISSED: [AtomicU32; MAX_DEVICES] = [const { AtomicU32::new(0) }; MAX_DEVICES];
const RETRIES: u32 = 25;
/// The PID whose thread is running; a forked child starts its own.
static THREAD_PID: AtomicI32 = AtomicI32::new(0);

#[derive(Clone, Copy, Default)]
struct Readings {
    /// NVML's handle for the device, once found.
    handle: usize,
}

static READINGS: Lock<[Readings; MAX_DEVICES]> = Lock::new([Readings { handle: 0 }; MAX_DEVICES]);

pub fn watch(dev: i32) {
    if !state::config().is_some_and(|c| c.nvml) {
        return;
    }
    let Some(flag) = usize::try_from(dev).ok().and_then(|d| WATCHED.get(d)) else {
        return;
    };
    flag.store(true, Ordering::Relaxed);
    ensure_thread();
}

/// Starts this process's background thread (publishing, and NVML readings of watched devices).
pub fn ensure_thread() {
    let pid = std::process::id() as i32;
    if THREAD_PID.swap(pid, Ordering::AcqRel) != pid {
        let spawned = std::thread::Builder::new()
            .name("vramcap".into())
            .spawn(move || crate::guard::quiet(|| run(pid)));
        if let Err(e) = spawned {
            vlog!(
                Warn,
                "cannot start the background thread ({e}); context memory stays at the estimate"
            );
        }
    }
}

pub fn unwatch(dev: i32) {
    if let Some(flag) = usize::try_from(dev).ok().and_then(|d| WATCHED.get(d)) {
        flag.store(false, Ordering::Relaxed);
    }
    if let Ok(d) = usize::try_from(dev) {
        if let Some(r) = READINGS.lock().get_mut(d) {
            *r = Readings::default();
        }
    }
}

type Init = unsafe extern "C" fn() -> i32;
type HandleByUuid = unsafe extern "C" fn(*const c_char, *mut *mut c_void) -> i32;
type Processes = unsafe extern "C" fn(*mut c_void, *mut u32, *mut nvmlProcessInfo_t) -> i32;

struct Nvml {
    by_uuid: HandleByUuid,
    processes: Processes,
}

/// NVML, initialised once for the process; `None` where it is not installed.
fn nvml() -> Option<&'static Nvml> {
    static NVML: OnceLock<Option<Nvml>> = OnceLock::new();
    NVML.get_or_init(|| {
        let loaded = load();
        if loaded.is_none() {
            vlog!(
                Info,
                "NVML is not available: context memory stays at the estimate"
            );
        }
        loaded
    })
    .as_ref()
}

fn load() -> Option<Nvml> {
    let h = real::nvml_handle();
    if h.is_null() {
        return None;
    }
    let init = real::lookup(h, c"nvmlInit_v2");
    let by_uuid = real::lookup(h, c"nvmlDeviceGetHandleByUUID");
    let mut processes = real::lookup(h, c"nvmlDeviceGetComputeRunningProcesses_v3");
    if processes.is_null() {
        processes = real::lookup(h, c"nvmlDeviceGetComputeRunningProcesses_v2");
    }
    if init.is_null() || by_uuid.is_null() || processes.is_null() {
        return None;
    }
    // SAFETY: each pointer is the NVML function of that name, with the prototype of its type alias.
    unsafe {
        if std::mem::transmute::<*mut c_void, Init>(init)() != 0 {
            return None;
        }
        Some(Nvml {
            by_uuid: std::mem::transmute::<*mut c_void, HandleByUuid>(by_uuid),
            processes: std::mem::transmute::<*mut c_void, Processes>(processes),
        })
    }
}

impl Nvml {
    fn device(&self, uuid: &str) -> Option<usize> {
        let uuid = CString::new(uuid).ok()?;
        let mut handle = std::ptr::null_mut();
        // SAFETY: NUL-terminated UUID in, one handle out.
        (unsafe { (self.by_uuid)(uuid.as_ptr(), &mut handle) } == 0).then_some(handle as usize)
    }

    /// This process's usedGpuMemory on `device`, if NVML lists it.
    fn used_by(&self, device: usize, pid: u32) -> Option<u64> {
        let mut list = [nvmlProcessInfo_t::default(); 128];
        let mut count = list.len() as u32;
        // SAFETY: `list` holds `count` entries for NVML to fill; count is updated to the number written.
        if unsafe { (self.processes)(device as *mut c_void, &mut count, list.as_mut_ptr()) } != 0 {
            return None;
        }
        list.iter()
            .take(count as usize)
            .find(|p| p.pid == pid && p.usedGpuMemory != u64::MAX)
            .map(|p| p.usedGpuMemory)
    }
}

fn counted(u: DeviceUsage) -> u64 {
    u.charged.saturating_sub(u.context)
}

/// Takes one reading for `dev` and applies it; `wait` says whether to wait for in-flight operations (the
/// caller must hold none). Returns whether NVML answered for this process.
pub fn measure(dev: i32, wait: bool) -> bool {
    let (Ok(i), Some(ledger)) = (usize::try_from(dev), LEDGER.device(dev)) else {
        return false;
    };
    if !WATCHED[i].load(Ordering::Relaxed) {
        return false;
    }
    let Some(nvml) = nvml() else { return false };
    let Some(uuid) = state::devices().and_then(|d| d.uuids.get(i).cloned()) else {
        return false;
    };
    // The device's handle before the quiet point: its first lookup can be slow, and nothing waits on it.
    let handle = {
        let mut readings = READINGS.lock();
        let r = &mut readings[i];
        if r.handle == 0 {
            r.handle = nvml.device(&uuid).unwrap_or(0);
        }
        r.handle
    };
    if handle == 0 {
        return false;
    }
    // The quiet point first, and only then our own lock: hooks that hold an operation may take READINGS.
    let Some(_quiet) = quiet(wait) else {
        return true;
    };
    let readings = READINGS.lock();
    let r = &readings[i];
    crate::hooks::pool::refresh(dev);
    crate::registry::graphs::refresh(dev);
    let before = counted(ledger.snapshot());
    let used = nvml.used_by(r.handle, std::process::id());
    LAST_READING_NS[i].store(monotonic_ns(), Ordering::Relaxed);
    // A reading NVML could not answer (a process it does not list yet, before its first launch) is taken
    // again at the next tick, a few times, before our count must move again to be read.
    let missed = MISSED[i].load(Ordering::Relaxed);
    if used.is_some() || missed >= RETRIES {
        LAST_COUNTED[i].store(before, Ordering::Relaxed);
    }
    let Some(used) = used else {
        MISSED[i].store(missed.saturating_add(1), Ordering::Relaxed);
        return false;
    };
    MISSED[i].store(0, Ordering::Relaxed);
    if !WATCHED[i].load(Ordering::Relaxed) {
        return true;
    }
    let measured = beside(dev, used, before);
    vlog!(Debug, "device {dev}: NVML shows {used} bytes for this process, {before} counted: {measured} beside");
    ledger.set_context(measured);
    true
}

/// The context's share: what NVML shows beyond our counts. A malloc heap that was set but may not be
/// taken yet (see `registry::limits`) is in our counts before it is in NVML's figure: it is taken once
/// the figure beside the rest has grown by it from the share when it was set, and until then the share
/// is read without it.
fn beside(dev: i32, used: u64, counted: u64) -> u64 {
    let Some((heap, floor)) = crate::registry::limits::pending_heap(dev) else {
        return used.saturating_sub(counted);
    };
    let without_heap = used.saturating_sub(counted.saturating_sub(heap));
    if without_heap >= floor.saturating_add(heap) {
        crate::registry::limits::heap_taken(dev);
        without_heap - heap
    } else {
        without_heap
    }
}

/// Called by an allocating hook, before its own operation starts, when an allocation of `bytes` would
/// leave less than [`NEAR_CAP`] of headroom. A reading older than [`FRESH`] is renewed; so is any reading
/// before an allocation of [`ALWAYS_READ`] or more, because a framework can load a module of tens of MiB
/// between two large allocations a millisecond apart (PyTorch's first launch of a kernel, seen on an
/// H100), and such allocations are few.
pub fn measure_if_stale(dev: i32, bytes: u64) {
    let Some(last) = usize::try_from(dev)
        .ok()
        .and_then(|d| LAST_READING_NS.get(d))
    else {
        return;
    };
    if bytes >= ALWAYS_READ || monotonic_ns().saturating_sub(last.load(Ordering::Relaxed)) > FRESH {
        measure(dev, true);
    }
}

/// Whether the background thread should read `dev` now: our count moved since the last reading, or the
/// last one is older than [`IDLE_PERIOD`]. A process that allocates nothing is left alone.
fn due(dev: usize) -> bool {
    let Some(ledger) = LEDGER.device(dev as i32) else {
        return false;
    };
    counted(ledger.snapshot()) != LAST_COUNTED[dev].load(Ordering::Relaxed)
        || monotonic_ns().saturating_sub(LAST_READING_NS[dev].load(Ordering::Relaxed)) > IDLE_PERIOD
}

fn run(pid: i32) {
    // Our queries from this thread must never invalidate a program's stream capture.
    crate::driver::relax_this_thread();
    let mut misses = 0u32;
    let mut tick = 0u64;
    while std::process::id() as i32 == pid {
        crate::publish::publish();
        if tick.is_multiple_of(TICKS_PER_READING) && state::config().is_some_and(|c| c.nvml) {
            for (dev, watched) in WATCHED.iter().enumerate() {
                if watched.load(Ordering::Relaxed) && due(dev) && !measure(dev as i32, false) {
                    misses += 1;
                    if misses == 25 && nvml().is_some() {
                        vlog!(
                            Info,
                            "NVML does not list PID {pid}; context memory stays at the estimate"
                        );
                    }
                }
            }
        }
        tick += 1;
        std::thread::sleep(TICK);
    }
}
