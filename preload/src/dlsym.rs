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
//! entry table, asks glibc which object holds an address (`dladdr1`), and calls glibc's `dlsym`.

use crate::entry_points::ENTRIES;
use crate::real::{self, Lib};
use std::ffi::{c_char, c_void, CStr};

/// Decides a `dlsym` call: our wrapper's address, the driver's own pointer for a name looked up in
/// another copy of the driver, or null to let glibc answer it with the caller's identity.
///
/// The driver is recognised by what it is, not by its file name: the object that defines the symbol
/// glibc would return must be a CUDA driver (or NVML) by [`real::is_cuda_driver`]. A program that opens
/// the driver under another name (`gpu.so -> libcuda.so.1`, or a copy) gets our wrappers all the same;
/// and all its lookups of the driver's names go to one driver object, the one we forward to, so that
/// wrapped and unwrapped calls never meet two instances.
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
    let name = unsafe { CStr::from_ptr(name) };
    let wanted = name.to_bytes();
    // Driver and NVML names only (`cuMemAlloc`, `nvmlInit`): the runtime's and the libraries' names
    // (`cudaMalloc`, `cublasCreate`) go straight to glibc, with no lookup of ours.
    let driver_name = |prefix: &[u8]| {
        wanted.starts_with(prefix) && wanted.get(prefix.len()).is_some_and(u8::is_ascii_uppercase)
    };
    if !(driver_name(b"cu") || driver_name(b"nvml")) {
        return std::ptr::null_mut();
    }
    // What glibc would answer, and the object that defines it. Where the driver lacks the symbol (an
    // old driver), the answer stays null.
    let theirs = real::lookup(handle, name);
    if theirs.is_null() {
        return std::ptr::null_mut();
    }
    let object = real::object_of(theirs);
    if let Some(entry) = ENTRIES.iter().find(|e| e.name.to_bytes() == wanted) {
        return match entry.lib {
            Lib::Cuda if real::is_cuda_driver(object) => {
                real::adopt(object);
                (entry.wrapper)()
            }
            Lib::Nvml if real::is_nvml(object) => (entry.wrapper)(),
            _ => std::ptr::null_mut(),
        };
    }
    if driver_name(b"cu") && real::is_cuda_driver(object) {
        real::adopt(object);
        let primary = real::handle(Lib::Cuda);
        if primary != object {
            return real::lookup(primary, name);
        }
    }
    std::ptr::null_mut()
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
