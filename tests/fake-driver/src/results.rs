//! `CUresult` and the common codes the areas answer, and `cuGetErrorName`, which names every code the
//! fake answers (capture.rs and limits.rs keep the codes that only they answer).

use crate::state::out;
use std::ffi::{c_char, CStr};

pub(crate) type CUresult = i32;
pub(crate) const OK: CUresult = 0;
pub(crate) const INVALID_VALUE: CUresult = 1;
pub(crate) const OUT_OF_MEMORY: CUresult = 2;
pub(crate) const NOT_INITIALIZED: CUresult = 3;
pub(crate) const INVALID_DEVICE: CUresult = 101;
pub(crate) const INVALID_CONTEXT: CUresult = 201;
pub(crate) const NOT_FOUND: CUresult = 500;
pub(crate) const ILLEGAL_STATE: CUresult = 401;
pub(crate) const NOT_SUPPORTED: CUresult = 801;
pub(crate) const UNKNOWN: CUresult = 999;

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorName(code: CUresult, name: *mut *const c_char) -> CUresult {
    let s: &'static CStr = match code {
        0 => c"CUDA_SUCCESS",
        1 => c"CUDA_ERROR_INVALID_VALUE",
        2 => c"CUDA_ERROR_OUT_OF_MEMORY",
        3 => c"CUDA_ERROR_NOT_INITIALIZED",
        101 => c"CUDA_ERROR_INVALID_DEVICE",
        201 => c"CUDA_ERROR_INVALID_CONTEXT",
        215 => c"CUDA_ERROR_UNSUPPORTED_LIMIT",
        400 => c"CUDA_ERROR_INVALID_HANDLE",
        401 => c"CUDA_ERROR_ILLEGAL_STATE",
        801 => c"CUDA_ERROR_NOT_SUPPORTED",
        900 => c"CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED",
        901 => c"CUDA_ERROR_STREAM_CAPTURE_INVALIDATED",
        906 => c"CUDA_ERROR_STREAM_CAPTURE_IMPLICIT",
        908 => c"CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD",
        _ => c"CUDA_ERROR_UNKNOWN",
    };
    // SAFETY: `name` is the caller's out-parameter (the caller's contract); the string it gets is static.
    unsafe { out(name, s.as_ptr()) }
}
