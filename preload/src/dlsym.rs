//! Our `dlsym`: hands out our wrappers for the driver entry points we hook, and is otherwise glibc's.
//!
//! glibc decides what `dlsym(RTLD_NEXT, …)` and `dlsym(RTLD_DEFAULT, …)` mean from the *return address* of
//! the call (the caller's object). A wrapper that called glibc's `dlsym` would make every such lookup look
//! like it came from libvramcap.so. So `dlsym` is a naked trampoline: it asks [`answer`] whether this is a
//! lookup we answer; if not, it restores the arguments and *jumps* to glibc's `dlsym`, leaving the caller's
//! return address on the stack. The trampoline is assembly, so a debug build behaves the same.
//!
//! [`answer`] runs for every `dlsym` in the process (Rust std and Python call it from anywhere), so it must
//! not allocate, take a lock, log or run a lazy initializer. It only compares strings against the static
//! entry table, asks glibc about the handle with `dlinfo`, and calls glibc's `dlsym`.

use crate::entry_points::ENTRIES;
use crate::real;
use std::ffi::{c_char, c_void, CStr};

/// Decides a `dlsym` call: our wrapper's address, or null to let glibc answer it with the caller's identity.
extern "C" fn answer(handle: *mut c_void, name: *const c_char) -> *mut c_void {
    // Resolve glibc's dlsym before the trampoline jumps through it.
    if real::real_dlsym().is_none() || name.is_null() {
        return std::ptr::null_mut();
    }
    // Pseudo-handles (RTLD_DEFAULT = 0, RTLD_NEXT = -1) are glibc's: RTLD_DEFAULT already finds our
    // exports first, and RTLD_NEXT must keep meaning "after the caller".
    if handle.is_null() || handle as isize == -1 {
        return std::ptr::null_mut();
    }
    // SAFETY: dlsym's contract: name is a NUL-terminated string.
    let wanted = unsafe { CStr::from_ptr(name) }.to_bytes();
    if !(wanted.starts_with(b"cu") || wanted.starts_with(b"nvml")) {
        return std::ptr::null_mut();
    }
    let Some(entry) = ENTRIES.iter().find(|e| e.name.to_bytes() == wanted) else {
        return std::ptr::null_mut();
    };
    // Only lookups in the driver's own libraries get our wrapper, and only where the driver has the symbol
    // (an old driver without it must still answer null).
    if !real::is_driver_handle(handle) || real::lookup(handle, entry.name).is_null() {
        return std::ptr::null_mut();
    }
    (entry.wrapper)()
}

/// `void *dlsym(void *handle, const char *name)`.
///
/// # Safety
/// glibc's contract: `handle` is a pseudo-handle or a live `dlopen` handle, `name` a C string.
///
/// On entry the stack holds the caller's return address. We save the two arguments, call [`answer`] with a
/// 16-byte aligned stack, and either return its non-null answer or restore the arguments, pop back to the
/// entry state and tail-jump to glibc's `dlsym`.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn dlsym(handle: *mut c_void, name: *const c_char) -> *mut c_void {
    std::arch::naked_asm!(
        "push rdi",
        "push rsi",
        "sub rsp, 8",
        "call {answer}",
        "add rsp, 8",
        "pop rsi",
        "pop rdi",
        "test rax, rax",
        "jnz 2f",
        "mov rax, qword ptr [rip + {real}@GOTPCREL]",
        "mov rax, qword ptr [rax]",
        "test rax, rax",
        "jz 2f",
        "jmp rax",
        "2:",
        "ret",
        answer = sym answer,
        real = sym real::VRAMCAP_REAL_DLSYM,
    )
}

#[cfg(not(target_arch = "x86_64"))]
compile_error!("the dlsym trampoline is written for x86-64 only");
