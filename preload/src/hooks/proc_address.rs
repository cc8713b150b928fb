//! `cuGetProcAddress` and `cuGetProcAddress_v2`: the driver chooses the ABI variant for (name, version,
//! flags); we hand out our wrapper for exactly that variant, found by the real pointer the driver returned,
//! and the driver's own pointer for anything we do not wrap.
//! <https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__DRIVER__ENTRY__POINT.html>

use crate::cuda::*;
use crate::entry_points::wrapper_for_real;
use std::ffi::{c_char, c_void};

type RealV1 = unsafe extern "C" fn(*const c_char, *mut *mut c_void, i32, u64) -> CUresult;
type RealV2 = unsafe extern "C" fn(*const c_char, *mut *mut c_void, i32, u64, *mut i32) -> CUresult;

fn swap_in_wrapper(r: CUresult, pfn: *mut *mut c_void) -> CUresult {
    if r == CUDA_SUCCESS {
        if let Some(wrapper) = crate::enforce::read_out(pfn).and_then(wrapper_for_real) {
            crate::enforce::write_out(pfn, wrapper);
        }
    }
    r
}

pub fn get_proc_address(
    real: RealV1,
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: i32,
    flags: u64,
) -> CUresult {
    // SAFETY: the caller's own call, passed on.
    swap_in_wrapper(unsafe { real(symbol, pfn, version, flags) }, pfn)
}

pub fn get_proc_address_v2(
    real: RealV2,
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: i32,
    flags: u64,
    status: *mut i32,
) -> CUresult {
    // SAFETY: the caller's own call, passed on; symbolStatus stays the driver's.
    swap_in_wrapper(unsafe { real(symbol, pfn, version, flags, status) }, pfn)
}
