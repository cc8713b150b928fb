//! The shim around every hook: re-entry guard and panic fence.
//!
//! **Re-entry.** A hook calls the driver through real pointers, never through our exports, but the driver
//! (or a library it loads) may call an exported entry point of its own through the dynamic linker, which
//! lands in our shim again. Counting that inner call would charge memory twice, so each thread carries an
//! "inside a hook" flag: the outer shim sets it, and a shim that finds it set calls the real function and
//! nothing else. The flag is part of the thread's one state (`vramcap_core::thread_state`), which needs
//! no allocation and no destructor.
//!
//! **Panics.** A panic must never unwind into the host program. The shim catches it, logs it, and falls
//! back to the real call, so the program sees the driver's own behaviour.

use std::panic::{catch_unwind, AssertUnwindSafe};
use vramcap_core::thread_state;

/// Runs `hook` as the outermost hook of this thread, or `real` if a hook is already running here or `hook`
/// panicked.
pub fn run<R>(name: &str, hook: impl FnOnce() -> R, real: impl FnOnce() -> R) -> R {
    let outer = thread_state::with(|t| !t.in_hook.replace(true));
    if !outer {
        return real();
    }
    let result = catch_unwind(AssertUnwindSafe(hook));
    thread_state::with(|t| t.in_hook.set(false));
    match result {
        Ok(r) => r,
        Err(_) => {
            vramcap_core::vlog!(
                Error,
                "internal error in the {name} hook; passing the call to the driver"
            );
            real()
        }
    }
}

/// Runs `f` with the flag set, so driver calls made from our own threads are not counted as the program's.
pub fn quiet<R>(f: impl FnOnce() -> R) -> R {
    let was = thread_state::with(|t| t.in_hook.replace(true));
    let r = f();
    thread_state::with(|t| t.in_hook.set(was));
    r
}
