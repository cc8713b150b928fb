//! Test hooks that read or change the fake's state from outside the CUDA API: calls per entry point,
//! what a device holds, and memory taken behind vramcap's back. The others live with what they touch:
//! `fakecuda_symbol` (lookup.rs), `fakecuda_write` / `fakecuda_read` (checkpoint.rs), the fake kernels
//! (limits.rs).

use crate::devices::dev_ok;
use crate::results::{CUresult, INVALID_DEVICE, OK};
use crate::state::fake;
use std::ffi::{c_char, CStr};

/// How many times the entry point `name` was called.
#[no_mangle]
pub unsafe extern "C" fn fakecuda_calls(name: *const c_char) -> u64 {
    // SAFETY: `name` is the caller's NUL-terminated entry-point name (the caller's contract), read before
    // the call returns.
    let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
    fake().calls.get(name.as_ref()).copied().unwrap_or(0)
}

/// What device `dev` holds for this process.
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
