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
pub(crate) fn lookup(handle: *mut c_void, name: &CStr) -> *mut c_void {
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

/// Opens the real driver (`VRAMCAP_REAL_LIBCUDA`, else `libcuda.so.1`), unless the program already
/// opened a driver under another name, which was then adopted (see [`adopt`]). Returns the loader's error
/// on failure.
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
    match CUDA_HANDLE.compare_exchange(
        std::ptr::null_mut(),
        handle,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Ok(_) => Ok(handle),
        Err(adopted) => Ok(adopted),
    }
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

/// `dladdr1`'s request for the object's link map (glibc's `RTLD_DL_LINKMAP`).
const RTLD_DL_LINKMAP: libc::c_int = 2;

/// The loaded object that holds address `p`: its link map, which is what glibc's handles are. Null if
/// no object holds it. `dladdr1` neither allocates nor calls `dlsym`.
pub(crate) fn object_of(p: *const c_void) -> *mut c_void {
    // SAFETY: all-zero bytes are a valid Dl_info (pointers and null strings).
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let mut map: *mut c_void = std::ptr::null_mut();
    // SAFETY: dladdr1 writes the Dl_info and one pointer (the link map) into our locals.
    let found = unsafe { libc::dladdr1(p, &mut info, &mut map, RTLD_DL_LINKMAP) };
    if found == 0 {
        std::ptr::null_mut()
    } else {
        map
    }
}

/// libvramcap.so's own object, which exports the driver's names but is not a driver.
fn own_object() -> *mut c_void {
    static OWN: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
    let mut own = OWN.load(Ordering::Acquire);
    if own.is_null() {
        own = object_of(own_object as *const c_void);
        OWN.store(own, Ordering::Release);
    }
    own
}

/// Whether `object` itself defines `name` (not one of its dependencies).
fn defines(object: *mut c_void, name: &CStr) -> bool {
    let p = lookup(object, name);
    !p.is_null() && object_of(p) == object
}

/// Whether `object` is a CUDA driver, by what it is: the driver we opened, or any other object (a copy, a
/// file of another name) that defines the driver's own entry-point lookup.
pub fn is_cuda_driver(object: *mut c_void) -> bool {
    if object.is_null() || object == own_object() {
        return false;
    }
    object == CUDA_HANDLE.load(Ordering::Acquire) || defines(object, c"cuGetProcAddress_v2")
}

/// Whether `object` is NVML, by the same rule.
pub fn is_nvml(object: *mut c_void) -> bool {
    if object.is_null() || object == own_object() {
        return false;
    }
    object == NVML_HANDLE.load(Ordering::Acquire) || defines(object, c"nvmlInit_v2")
}

/// A driver object the program looked a symbol up in: the first one seen becomes the driver we forward
/// to, unless `VRAMCAP_REAL_LIBCUDA` names one (a program that opens the driver as `gpu.so` before its
/// first CUDA call must find its own driver behind every wrapper). One atomic swap, no allocation.
pub fn adopt(object: *mut c_void) {
    if !CUDA_HANDLE.load(Ordering::Acquire).is_null() {
        return;
    }
    // SAFETY: getenv with a NUL-terminated name; the result is only compared with null.
    let configured = !unsafe { libc::getenv(c"VRAMCAP_REAL_LIBCUDA".as_ptr()) }.is_null();
    if !configured && !object.is_null() {
        let _ = CUDA_HANDLE.compare_exchange(
            std::ptr::null_mut(),
            object,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
}
