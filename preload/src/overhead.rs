//! Measures what a context and everything else outside our counted allocations really costs, from the
//! per-process figure the driver reports through NVML (the same figure nvidia-smi shows), so that figure
//! stays under the cap.
//!
//! A background thread, started with the first context, reads this process's `usedGpuMemory` on each
//! watched device every 200 ms and sets the ledger's context share to what that figure holds beyond our
//! counted allocations: the context itself, module images, and whatever packing the charge model could
//! not see. Reading per process needs no lock shared with other processes, so start-up is never
//! serialised. A reading is used only if our own count did not move while NVML was asked. Where NVML is
//! absent or does not list our PID (another PID namespace), the estimate charged at context creation stays.

use crate::real;
use crate::state::{self, LEDGER};
use core_lib::ledger::MAX_DEVICES;
use core_lib::vlog;
use std::ffi::{c_char, c_void, CString};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

static WATCHED: [AtomicBool; MAX_DEVICES] = [const { AtomicBool::new(false) }; MAX_DEVICES];
/// The PID whose thread is running; a forked child starts its own.
static THREAD_PID: AtomicI32 = AtomicI32::new(0);

const PERIOD: Duration = Duration::from_millis(200);

pub fn watch(dev: i32) {
    let Some(flag) = usize::try_from(dev).ok().and_then(|d| WATCHED.get(d)) else { return };
    flag.store(true, Ordering::Relaxed);
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    if THREAD_PID.swap(pid, Ordering::AcqRel) != pid {
        let spawned = std::thread::Builder::new()
            .name("vramcap-overhead".into())
            .spawn(move || crate::guard::quiet(|| run(pid)));
        if let Err(e) = spawned {
            vlog!(Warn, "cannot start the context-memory thread ({e}); keeping the estimate");
        }
    }
}

pub fn unwatch(dev: i32) {
    if let Some(flag) = usize::try_from(dev).ok().and_then(|d| WATCHED.get(d)) {
        flag.store(false, Ordering::Relaxed);
    }
}

type Init = unsafe extern "C" fn() -> i32;
type HandleByUuid = unsafe extern "C" fn(*const c_char, *mut *mut c_void) -> i32;
type Processes = unsafe extern "C" fn(*mut c_void, *mut u32, *mut crate::cuda::nvmlProcessInfo_t) -> i32;

struct Nvml {
    by_uuid: HandleByUuid,
    processes: Processes,
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
    fn device(&self, uuid: &str) -> Option<*mut c_void> {
        let uuid = CString::new(uuid).ok()?;
        let mut handle = std::ptr::null_mut();
        // SAFETY: NUL-terminated UUID in, one handle out.
        (unsafe { (self.by_uuid)(uuid.as_ptr(), &mut handle) } == 0).then_some(handle)
    }

    /// This process's usedGpuMemory on `device`, if NVML lists it.
    fn used_by(&self, device: *mut c_void, pid: u32) -> Option<u64> {
        let mut list = vec![crate::cuda::nvmlProcessInfo_t::default(); 256];
        let mut count = list.len() as u32;
        // SAFETY: `list` holds `count` entries for NVML to fill; count is updated to the number written.
        if unsafe { (self.processes)(device, &mut count, list.as_mut_ptr()) } != 0 {
            return None;
        }
        list.iter()
            .take(count as usize)
            .find(|p| p.pid == pid && p.usedGpuMemory != u64::MAX)
            .map(|p| p.usedGpuMemory)
    }
}

/// Raises the context figure at once, but lowers it only to the largest of three readings: a reading taken
/// while an allocation is reserved here but not yet made in the driver comes out too low, and must not
/// open room under the cap that the driver is about to fill.
fn apply(ledger: &core_lib::ledger::DeviceLedger, measured: u64, history: &[u64; 3], readings: u64) {
    let current = ledger.snapshot().context;
    if measured >= current {
        ledger.set_context(measured);
    } else if readings >= 3 {
        ledger.set_context(history.iter().copied().max().unwrap_or(current).min(current));
    }
}

fn run(pid: i32) {
    let Some(nvml) = load() else {
        vlog!(Info, "NVML is not available: context memory stays at the estimate");
        return;
    };
    let mut handles: Vec<Option<*mut c_void>> = vec![None; MAX_DEVICES];
    let mut recent: Vec<[u64; 3]> = vec![[0; 3]; MAX_DEVICES];
    let mut readings = vec![0u64; MAX_DEVICES];
    let mut missed = 0u32;
    // SAFETY: getpid has no preconditions.
    while unsafe { libc::getpid() } == pid {
        for dev in 0..MAX_DEVICES {
            if !WATCHED[dev].load(Ordering::Relaxed) {
                continue;
            }
            let Some(uuid) = state::devices().and_then(|d| d.uuids.get(dev).cloned()) else { continue };
            if handles[dev].is_none() {
                handles[dev] = nvml.device(&uuid);
            }
            let (Some(handle), Some(ledger)) = (handles[dev], LEDGER.device(dev as i32)) else { continue };
            let counted = |u: core_lib::ledger::DeviceUsage| u.charged.saturating_sub(u.context);
            let before = counted(ledger.snapshot());
            let used = nvml.used_by(handle, pid as u32);
            let after = counted(ledger.snapshot());
            match used {
                Some(used) if before == after && WATCHED[dev].load(Ordering::Relaxed) => {
                    let measured = used.saturating_sub(before);
                    let history = &mut recent[dev];
                    history[(readings[dev] % 3) as usize] = measured;
                    readings[dev] += 1;
                    apply(ledger, measured, history, readings[dev]);
                }
                Some(_) => {}
                None => {
                    missed += 1;
                    if missed == 25 {
                        vlog!(Info, "NVML does not list PID {pid}; context memory stays at the estimate");
                    }
                }
            }
        }
        std::thread::sleep(PERIOD);
    }
}
