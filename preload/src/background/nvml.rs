//! NVML, for the measurement: loaded and initialised once, on first use; absent where it is not installed.

use crate::cuda::nvmlProcessInfo_t;
use crate::real;
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::OnceLock;
use vramcap_core::vlog;

type Init = unsafe extern "C" fn() -> i32;
type HandleByUuid = unsafe extern "C" fn(*const c_char, *mut *mut c_void) -> i32;
type Processes = unsafe extern "C" fn(*mut c_void, *mut u32, *mut nvmlProcessInfo_t) -> i32;

pub struct Nvml {
    by_uuid: HandleByUuid,
    processes: Processes,
}

/// NVML, initialised once for the process; `None` where it is not installed.
pub fn nvml() -> Option<&'static Nvml> {
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
    pub fn device(&self, uuid: &str) -> Option<usize> {
        let uuid = CString::new(uuid).ok()?;
        let mut handle = std::ptr::null_mut();
        // SAFETY: NUL-terminated UUID in, one handle out.
        (unsafe { (self.by_uuid)(uuid.as_ptr(), &mut handle) } == 0).then_some(handle as usize)
    }

    /// This process's usedGpuMemory on `device`, if NVML lists it.
    pub fn used_by(&self, device: usize, pid: u32) -> Option<u64> {
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

type GetUuid = unsafe extern "C" fn(*mut c_void, *mut c_char, u32) -> i32;

/// The UUID NVML gives a device handle (`GPU-…`), for the memory-information hooks; looked up in NVML
/// each time, without initialising it (the program that holds the handle has).
pub fn device_uuid(device: usize) -> Option<String> {
    let f = real::lookup(real::nvml_handle(), c"nvmlDeviceGetUUID");
    if f.is_null() {
        return None;
    }
    // SAFETY: nvmlDeviceGetUUID's prototype is GetUuid.
    let get_uuid = unsafe { std::mem::transmute::<*mut c_void, GetUuid>(f) };
    let mut buf = [0 as c_char; 96];
    // SAFETY: writes a NUL-terminated string of at most buf.len() bytes; the handle is the program's.
    if unsafe { get_uuid(device as *mut c_void, buf.as_mut_ptr(), buf.len() as u32) } != 0 {
        return None;
    }
    // SAFETY: NVML NUL-terminates within the buffer on success.
    let uuid = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
    Some(uuid.into_owned())
}
