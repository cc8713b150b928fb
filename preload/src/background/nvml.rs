//! NVML, for the measurement and the memory-information hooks: its functions declared once in a typed
//! table ([`NvmlCalls`]), resolved once; NVML initialised once, on first use; absent where it is not
//! installed.

use crate::called::called_table;
use crate::cuda::nvmlProcessInfo_t;
use crate::real::Lib;
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::OnceLock;
use vramcap_core::vlog;

/// What NVML functions return (`nvmlReturn_t`; 0 is success).
type NvmlReturn = i32;

called_table! {
    /// The NVML functions vramcap calls, typed by their C prototypes.
    pub struct NvmlCalls in Lib::Nvml => NvmlReturn {
        init: "nvmlInit_v2" fn();
        by_uuid: "nvmlDeviceGetHandleByUUID" fn(*const c_char, *mut *mut c_void);
        processes_v3: "nvmlDeviceGetComputeRunningProcesses_v3"
            fn(*mut c_void, *mut u32, *mut nvmlProcessInfo_t);
        processes_v2: "nvmlDeviceGetComputeRunningProcesses_v2"
            fn(*mut c_void, *mut u32, *mut nvmlProcessInfo_t);
        get_uuid: "nvmlDeviceGetUUID" fn(*mut c_void, *mut c_char, u32);
    }
}

/// The NVML table, resolved on first use (opening NVML, not initialising it).
fn calls() -> &'static NvmlCalls {
    static CALLS: OnceLock<NvmlCalls> = OnceLock::new();
    CALLS.get_or_init(NvmlCalls::resolve)
}

type HandleByUuid = unsafe extern "C" fn(*const c_char, *mut *mut c_void) -> NvmlReturn;
type Processes = unsafe extern "C" fn(*mut c_void, *mut u32, *mut nvmlProcessInfo_t) -> NvmlReturn;

/// NVML, initialised, with the two functions the measurement needs.
pub struct Nvml {
    by_uuid: HandleByUuid,
    processes: Processes,
}

/// NVML, initialised once for the process; `None` where it is not installed.
pub fn nvml() -> Option<&'static Nvml> {
    static NVML: OnceLock<Option<Nvml>> = OnceLock::new();
    NVML.get_or_init(|| {
        let loaded = init(calls());
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

fn init(calls: &NvmlCalls) -> Option<Nvml> {
    let init = calls.init?;
    let by_uuid = calls.by_uuid?;
    let processes = calls.processes_v3.or(calls.processes_v2)?;
    // SAFETY: nvmlInit_v2 takes no arguments.
    (unsafe { init() } == 0).then_some(Nvml { by_uuid, processes })
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

/// The UUID NVML gives a device handle (`GPU-…`), for the memory-information hooks; asked without
/// initialising NVML (the program that holds the handle has).
pub fn device_uuid(device: usize) -> Option<String> {
    let get_uuid = calls().get_uuid?;
    let mut buf = [0 as c_char; 96];
    // SAFETY: writes a NUL-terminated string of at most buf.len() bytes; the handle is the program's.
    if unsafe { get_uuid(device as *mut c_void, buf.as_mut_ptr(), buf.len() as u32) } != 0 {
        return None;
    }
    // SAFETY: NVML NUL-terminates within the buffer on success.
    let uuid = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
    Some(uuid.into_owned())
}
