//! The checkpoint API (CUDA 12.8+), over `FAKECUDA_SHARED`: another process locks, checkpoints,
//! restores and unlocks this one (states in shared.rs); a locked or checkpointed process waits in every
//! CUDA call, and while checkpointed its memory's contents (one word per allocation, `fakecuda_write` and
//! `fakecuda_read`) are off the device. `FAKECUDA_NO_CHECKPOINT` and `FAKECUDA_CHECKPOINT_FAIL` (config.rs)
//! take the API away or make the checkpoint step fail.

use crate::config::{checkpoint_fails, checkpoint_supported};
use crate::results::{
    CUresult, ILLEGAL_STATE, INVALID_VALUE, NOT_SUPPORTED, OK, OUT_OF_MEMORY, UNKNOWN,
};
use crate::shared;
use crate::state::{fake, out};
use std::ffi::c_void;

/// A process locked or checkpointed by another (the checkpoint API) waits in every CUDA call. While
/// checkpointed, its memory's contents are off the device (kept aside, as the driver keeps them in host
/// memory) and come back when it runs again.
pub(crate) fn wait_while_suspended() {
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

// ---- the API ----

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
        if checkpoint_fails() {
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
    // SAFETY: `state` is the caller's out-parameter (the caller's contract).
    unsafe { out(state, shared::state(pid)) }
}
