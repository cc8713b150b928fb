//! How a caller finds the fake's functions: `cuGetProcAddress`, answering as the real driver does from
//! the table read off it (table.rs), and `fakecuda_symbol`, the fake's own export of a name, found past
//! any interposed `dlsym`; and `cuGetExportTable`, an opaque table that vramcap must hand through as it
//! is.

use crate::results::{CUresult, INVALID_VALUE, NOT_FOUND, OK};
use crate::state::{fake, out};
use std::ffi::{c_char, c_void, CStr};
use std::sync::OnceLock;

#[no_mangle]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: i32,
    flags: u64,
    status: *mut i32,
) -> CUresult {
    fake().count("cuGetProcAddress_v2");
    if symbol.is_null() || pfn.is_null() {
        return INVALID_VALUE;
    }
    // SAFETY: `symbol` is not null (checked above), and the caller's contract makes it a NUL-terminated
    // name, read before the call returns.
    let name = unsafe { CStr::from_ptr(symbol) }
        .to_string_lossy()
        .into_owned();
    let set_status = |v: i32| {
        if !status.is_null() {
            // SAFETY: `status` is not null, and a non-null `status` is the caller's out-parameter (the
            // caller's contract).
            unsafe { status.write(v) };
        }
    };
    // SAFETY: `pfn` is not null (checked above) and is the caller's out-parameter (the caller's contract).
    unsafe { pfn.write(std::ptr::null_mut()) };
    let exported = match crate::table::lookup(&name, version, flags) {
        crate::table::Answer::Symbol(sym) => sym,
        crate::table::Answer::VersionNotSufficient => {
            set_status(2);
            return OK;
        }
        crate::table::Answer::NotInTable => name,
    };
    let Ok(c) = std::ffi::CString::new(exported) else {
        return INVALID_VALUE;
    };
    // SAFETY: `c` is a CString: NUL-terminated, and alive until the call returns.
    let p = unsafe { fakecuda_symbol(c.as_ptr()) };
    if p.is_null() {
        set_status(1);
        return NOT_FOUND;
    }
    // SAFETY: as above: `pfn` is the caller's out-parameter, not null.
    unsafe { pfn.write(p) };
    set_status(0);
    OK
}

#[no_mangle]
pub unsafe extern "C" fn cuGetProcAddress(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: i32,
    flags: u64,
) -> CUresult {
    // SAFETY: the caller's `symbol` and `pfn` go on as they came (the caller's contract); a null `status`
    // is allowed and never written.
    unsafe { cuGetProcAddress_v2(symbol, pfn, version, flags, std::ptr::null_mut()) }
}

/// The fake's own export of `name`, bypassing any interposed dlsym.
#[no_mangle]
pub unsafe extern "C" fn fakecuda_symbol(name: *const c_char) -> *mut c_void {
    static SELF: OnceLock<(usize, usize)> = OnceLock::new();
    let (handle, dlsym) = *SELF.get_or_init(|| {
        // SAFETY: Dl_info is pointers and ints, for which all zeros (null, 0) is a valid value.
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a live Dl_info that dladdr only fills in; the address is this function's.
        unsafe { libc::dladdr(fakecuda_symbol as *const c_void, &mut info) };
        // SAFETY: `dli_fname` is the NUL-terminated path of this library, which dladdr set and the
        // loader keeps while the library is loaded (or null if dladdr failed, which names the program).
        // RTLD_NOLOAD only finds a library already loaded: nothing is loaded or initialised.
        let handle = unsafe { libc::dlopen(info.dli_fname, libc::RTLD_NOLOAD | libc::RTLD_LAZY) };
        // SAFETY: RTLD_DEFAULT and two NUL-terminated literals; dlvsym only looks the name up.
        let dlsym = unsafe {
            libc::dlvsym(
                libc::RTLD_DEFAULT,
                c"dlsym".as_ptr(),
                c"GLIBC_2.34".as_ptr(),
            )
        };
        let dlsym = if dlsym.is_null() {
            // SAFETY: as above; glibc before 2.34 exports dlsym at GLIBC_2.2.5 only.
            unsafe {
                libc::dlvsym(
                    libc::RTLD_DEFAULT,
                    c"dlsym".as_ptr(),
                    c"GLIBC_2.2.5".as_ptr(),
                )
            }
        } else {
            dlsym
        };
        (handle as usize, dlsym as usize)
    });
    // SAFETY: `dlsym` is glibc's dlsym, of this type, and not null: glibc on x86-64, the only target,
    // exports it at GLIBC_2.2.5 (its first version), and at GLIBC_2.34 as well since 2.34.
    let dlsym: unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void =
        unsafe { std::mem::transmute(dlsym) };
    // SAFETY: `handle` is this library's, never closed; `name` is the caller's NUL-terminated name (the
    // caller's contract). dlsym only looks the name up.
    unsafe { dlsym(handle as *mut c_void, name) }
}

// ---- things vramcap must pass through untouched ----
// cuGetErrorName lives in results.rs, cuLaunchKernel in limits.rs: some fake kernels grow the heap or the
// stack, and a capture records it.

static EXPORT_TABLE: [usize; 4] = [32, 0xfeed, 0xbeef, 0];

#[no_mangle]
pub unsafe extern "C" fn cuGetExportTable(
    table: *mut *const c_void,
    _id: *const c_void,
) -> CUresult {
    fake().count("cuGetExportTable");
    // SAFETY: `table` is the caller's out-parameter (the caller's contract); the table it gets is static.
    unsafe { out(table, EXPORT_TABLE.as_ptr().cast()) }
}
