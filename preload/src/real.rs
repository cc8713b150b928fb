//! Finds the real driver and the real `dlsym`, once, and caches what it found in atomics.
//!
//! Every lookup of a real symbol goes through glibc's own `dlsym`, found with `dlvsym` so it can never be our
//! exported `dlsym`. Nothing here allocates, so `dlsym` itself may call [`real_dlsym`].

use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicPtr, Ordering};

pub type DlsymFn = unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void;

/// glibc's `dlsym`. Read by the `dlsym` trampoline with a plain load, so it must hold a function or null.
pub static VRAMCAP_REAL_DLSYM: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

/// Which library an entry point lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lib {
    Cuda,
    Nvml,
}

static CUDA_HANDLE: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
static NVML_HANDLE: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

/// glibc's `dlsym`, resolved on first use (no allocation, no lock: a race resolves it twice, identically).
pub fn real_dlsym() -> Option<DlsymFn> {
    let mut p = VRAMCAP_REAL_DLSYM.load(Ordering::Acquire);
    if p.is_null() {
        for version in [c"GLIBC_2.34", c"GLIBC_2.2.5"] {
            // SAFETY: dlvsym takes a pseudo-handle and two NUL-terminated strings; it does not call our dlsym.
            p = unsafe { libc::dlvsym(libc::RTLD_NEXT, c"dlsym".as_ptr(), version.as_ptr()) };
            if !p.is_null() {
                break;
            }
        }
        VRAMCAP_REAL_DLSYM.store(p, Ordering::Release);
    }
    // SAFETY: p is null or glibc's dlsym, whose prototype DlsymFn spells out.
    (!p.is_null()).then(|| unsafe { std::mem::transmute::<*mut c_void, DlsymFn>(p) })
}

/// Looks `name` up in `handle` with glibc's `dlsym`.
pub fn lookup(handle: *mut c_void, name: &CStr) -> *mut c_void {
    match real_dlsym() {
        // SAFETY: handle came from dlopen (or is a pseudo-handle) and name is NUL-terminated.
        Some(dlsym) => unsafe { dlsym(handle, name.as_ptr()) },
        None => std::ptr::null_mut(),
    }
}

fn open(path: &CStr) -> *mut c_void {
    // SAFETY: path is NUL-terminated; dlopen is thread-safe.
    unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) }
}

/// Opens the real driver (`VRAMCAP_REAL_LIBCUDA`, else `libcuda.so.1`). Returns the loader's error on failure.
pub fn open_driver(path: Option<&str>) -> Result<*mut c_void, String> {
    let held = CUDA_HANDLE.load(Ordering::Acquire);
    if !held.is_null() {
        return Ok(held);
    }
    let path = std::ffi::CString::new(path.unwrap_or("libcuda.so.1")).map_err(|e| e.to_string())?;
    let handle = open(&path);
    if handle.is_null() {
        return Err(loader_error());
    }
    CUDA_HANDLE.store(handle, Ordering::Release);
    Ok(handle)
}

/// The handle of NVML, opened on first use; null if it is not installed.
pub fn nvml_handle() -> *mut c_void {
    let mut h = NVML_HANDLE.load(Ordering::Acquire);
    if h.is_null() {
        h = open(c"libnvidia-ml.so.1");
        NVML_HANDLE.store(h, Ordering::Release);
    }
    h
}

pub fn handle(lib: Lib) -> *mut c_void {
    match lib {
        Lib::Cuda => CUDA_HANDLE.load(Ordering::Acquire),
        Lib::Nvml => nvml_handle(),
    }
}

fn loader_error() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string owned by the loader, read at once.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown loader error".into()
    } else {
        // SAFETY: non-null dlerror strings are valid C strings until the next dl call on this thread.
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

/// Whether `handle` is a library whose symbols we wrap: its file name begins `libcuda.` or `libnvidia-ml.`,
/// or it is the configured real driver. Uses `dlinfo`, which neither allocates nor calls `dlsym`.
pub fn is_driver_handle(handle: *mut c_void) -> bool {
    if handle == CUDA_HANDLE.load(Ordering::Relaxed)
        || handle == NVML_HANDLE.load(Ordering::Relaxed)
    {
        return !handle.is_null();
    }
    let mut map: *mut libc::c_void = std::ptr::null_mut();
    // SAFETY: RTLD_DI_LINKMAP writes one pointer into `map`; handle is the caller's dlopen handle.
    let rc = unsafe {
        libc::dlinfo(
            handle,
            libc::RTLD_DI_LINKMAP,
            (&mut map as *mut *mut libc::c_void).cast(),
        )
    };
    if rc != 0 || map.is_null() {
        return false;
    }
    // SAFETY: a link_map starts with l_addr then l_name, a NUL-terminated path owned by the loader.
    let name = unsafe { *(map as *const *const c_char).add(1) };
    if name.is_null() {
        return false;
    }
    // SAFETY: see above; the string lives as long as the library stays loaded.
    let bytes = unsafe { CStr::from_ptr(name) }.to_bytes();
    let base = bytes.rsplit(|&b| b == b'/').next().unwrap_or(bytes);
    base.starts_with(b"libcuda.") || base.starts_with(b"libnvidia-ml.")
}
