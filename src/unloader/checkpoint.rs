//! The driver's checkpoint API (CUDA 12.8+), used from outside the worker: `cuCheckpointProcessLock`
//! stops its CUDA calls, `cuCheckpointProcessCheckpoint` moves its device memory to host memory and
//! releases it on the GPU, `cuCheckpointProcessRestore` brings it back, `cuCheckpointProcessUnlock` lets
//! it run on. <https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__CHECKPOINT.html>
//!
//! libcuda is opened here at run time (the CLI links no CUDA symbol of its own).

use std::ffi::{c_char, c_int, c_void, CStr};
use std::time::Duration;

/// `CUprocessState`.
pub const RUNNING: i32 = 0;
pub const LOCKED: i32 = 1;
pub const CHECKPOINTED: i32 = 2;

const CUDA_ERROR_NOT_SUPPORTED: c_int = 801;

#[repr(C)]
struct LockArgs {
    timeout_ms: u32,
    reserved0: u32,
    reserved1: [u64; 7],
}

type Init = unsafe extern "C" fn(u32) -> c_int;
type Lock = unsafe extern "C" fn(c_int, *const LockArgs) -> c_int;
type Step = unsafe extern "C" fn(c_int, *const c_void) -> c_int;
type GetState = unsafe extern "C" fn(c_int, *mut c_int) -> c_int;
type ErrorName = unsafe extern "C" fn(c_int, *mut *const c_char) -> c_int;

pub struct Checkpoint {
    lock: Lock,
    checkpoint: Step,
    restore: Step,
    unlock: Step,
    get_state: GetState,
    error_name: Option<ErrorName>,
    _lib: libloading::Library,
}

impl Checkpoint {
    /// Opens the driver (`VRAMCAP_REAL_LIBCUDA`, else `libcuda.so.1`) and finds the five calls.
    pub fn open() -> Result<Checkpoint, String> {
        let path = std::env::var(crate::config::ENV_REAL_LIBCUDA)
            .unwrap_or_else(|_| "libcuda.so.1".into());
        // SAFETY: loading the CUDA driver runs its initialisers, which is what using it requires.
        let lib = unsafe { libloading::Library::new(&path) }
            .map_err(|e| format!("cannot load the CUDA driver ({path}): {e}"))?;
        // The driver's function `name`, typed as its C prototype by the caller.
        fn find<T: Copy>(lib: &libloading::Library, name: &str) -> Result<T, String> {
            let symbol = format!("{name}\0");
            // SAFETY: every caller names T as the C prototype of the driver's function of that name.
            unsafe { lib.get::<T>(symbol.as_bytes()) }.map(|s| *s).map_err(|_| {
                format!("the driver has no {name}: suspending needs the checkpoint API of CUDA 12.8 or later")
            })
        }
        let init: Init = find(&lib, "cuInit")?;
        let me = Checkpoint {
            lock: find(&lib, "cuCheckpointProcessLock")?,
            checkpoint: find(&lib, "cuCheckpointProcessCheckpoint")?,
            restore: find(&lib, "cuCheckpointProcessRestore")?,
            unlock: find(&lib, "cuCheckpointProcessUnlock")?,
            get_state: find(&lib, "cuCheckpointProcessGetState")?,
            error_name: find(&lib, "cuGetErrorName").ok(),
            _lib: lib,
        };
        // SAFETY: cuInit(0) has no preconditions.
        let r = unsafe { init(0) };
        if r != 0 {
            return Err(format!("cuInit failed: {}", me.name(r)));
        }
        Ok(me)
    }

    fn name(&self, code: c_int) -> String {
        let mut text: *const c_char = std::ptr::null();
        match self.error_name {
            // SAFETY: cuGetErrorName writes a pointer to a static string.
            Some(f) if unsafe { f(code, &mut text) } == 0 && !text.is_null() => {
                // SAFETY: a NUL-terminated static string of the driver's.
                let name = unsafe { CStr::from_ptr(text) };
                format!("{} ({code})", name.to_string_lossy())
            }
            _ => format!("CUDA error {code}"),
        }
    }

    pub fn state(&self, pid: u32) -> Result<i32, String> {
        let mut state = -1;
        // SAFETY: writes one int.
        match unsafe { (self.get_state)(pid as c_int, &mut state) } {
            0 => Ok(state),
            r => Err(format!("cuCheckpointProcessGetState: {}", self.name(r))),
        }
    }

    /// Locks and checkpoints `pid`. On failure the process is left running as it was.
    pub fn suspend(&self, pid: u32, timeout: Duration) -> Result<(), String> {
        let args = LockArgs {
            timeout_ms: timeout.as_millis().clamp(1, u32::MAX as u128) as u32,
            reserved0: 0,
            reserved1: [0; 7],
        };
        // SAFETY: a zeroed argument block with the timeout set, as the API asks.
        let r = unsafe { (self.lock)(pid as c_int, &args) };
        if r == CUDA_ERROR_NOT_SUPPORTED {
            return Err(format!(
                "the driver does not support checkpointing this process: {}",
                self.name(r)
            ));
        }
        if r != 0 {
            return Err(format!(
                "cannot lock it within {timeout:?}: {}",
                self.name(r)
            ));
        }
        debug_assert_eq!(self.state(pid), Ok(LOCKED));
        // SAFETY: NULL arguments are allowed.
        let r = unsafe { (self.checkpoint)(pid as c_int, std::ptr::null()) };
        if r != 0 {
            // SAFETY: as above.
            let u = unsafe { (self.unlock)(pid as c_int, std::ptr::null()) };
            return Err(format!(
                "the checkpoint failed: {}; {}",
                self.name(r),
                if u == 0 {
                    "unlocked again, running as before".to_string()
                } else {
                    format!("and unlocking failed too: {}", self.name(u))
                }
            ));
        }
        match self.state(pid) {
            Ok(CHECKPOINTED) => Ok(()),
            other => Err(format!("the driver reports {other:?} after a checkpoint")),
        }
    }

    /// Restores and unlocks `pid`. A failed restore leaves it suspended.
    pub fn resume(&self, pid: u32) -> Result<(), String> {
        // SAFETY: NULL arguments are allowed.
        let r = unsafe { (self.restore)(pid as c_int, std::ptr::null()) };
        if r != 0 {
            return Err(format!(
                "the restore failed: {}; still suspended",
                self.name(r)
            ));
        }
        // SAFETY: as above.
        let r = unsafe { (self.unlock)(pid as c_int, std::ptr::null()) };
        if r != 0 {
            return Err(format!("restored, but unlocking failed: {}", self.name(r)));
        }
        match self.state(pid) {
            Ok(RUNNING) => Ok(()),
            other => Err(format!("the driver reports {other:?} after a restore")),
        }
    }
}

/// Host memory the kernel says is available (`MemAvailable`), in bytes.
pub fn host_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
