//! CUDA arrays (plain, 3D, mipmapped): the device memory each takes, rows padded to the pitch and whole
//! pages, charged to the current context's device, and the memory requirements vramcap asks of them.

use crate::memory::{PAGE, PITCH};
use crate::results::{CUresult, INVALID_CONTEXT, INVALID_VALUE, OK};
use crate::state::{call, out};
use std::ffi::c_uint;

#[repr(C)]
pub struct Array3D {
    width: usize,
    height: usize,
    depth: usize,
    format: i32,
    channels: u32,
    flags: u32,
}

#[repr(C)]
pub struct Array2D {
    width: usize,
    height: usize,
    format: i32,
    channels: u32,
}

/// The fake's real array size: rows padded to 512 bytes, whole pages.
fn array_bytes(w: usize, h: usize, d: usize, format: i32, ch: u32) -> u64 {
    let elem: u64 = match format {
        1 | 8 => 1,
        2 | 9 | 0x10 => 2,
        _ => 4,
    };
    let row = (w as u64 * elem * ch.max(1) as u64).div_ceil(PITCH) * PITCH;
    (row * h.max(1) as u64 * d.max(1) as u64).div_ceil(PAGE) * PAGE
}

/// An array of `bytes` on the current context's device, its handle written to `out_handle`.
///
/// # Safety
/// `out_handle` is null or valid for a write: the caller's out-parameter.
unsafe fn array_create(name: &str, out_handle: *mut usize, bytes: u64) -> CUresult {
    call(name, |s| {
        if let Some(e) = crate::capture::prohibited(s, None) {
            return e;
        }
        let Some(d) = s.current_dev() else {
            return INVALID_CONTEXT;
        };
        if let Err(e) = s.take(d, bytes) {
            return e;
        }
        let h = 0xa000 + s.arrays.len() * 64 + s.next_handle as usize;
        s.next_handle += 1;
        s.arrays.insert(h, (d, bytes));
        // SAFETY: `out_handle` is null or writable (this function's contract).
        unsafe { out(out_handle, h) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuArrayCreate_v2(array: *mut usize, desc: *const Array2D) -> CUresult {
    // SAFETY: `desc` is null or the caller's CUDA_ARRAY_DESCRIPTOR, readable (the caller's contract);
    // `as_ref` makes a null None.
    let Some(d) = (unsafe { desc.as_ref() }) else {
        return INVALID_VALUE;
    };
    let bytes = array_bytes(d.width, d.height, 1, d.format, d.channels);
    // SAFETY: `array` is the caller's out-parameter (the caller's contract).
    unsafe { array_create("cuArrayCreate_v2", array, bytes) }
}

#[no_mangle]
pub unsafe extern "C" fn cuArray3DCreate_v2(array: *mut usize, desc: *const Array3D) -> CUresult {
    // SAFETY: `desc` is null or the caller's CUDA_ARRAY3D_DESCRIPTOR, readable (the caller's contract);
    // `as_ref` makes a null None.
    let Some(d) = (unsafe { desc.as_ref() }) else {
        return INVALID_VALUE;
    };
    let bytes = array_bytes(d.width, d.height, d.depth, d.format, d.channels);
    // SAFETY: `array` is the caller's out-parameter (the caller's contract).
    unsafe { array_create("cuArray3DCreate_v2", array, bytes) }
}

#[no_mangle]
pub unsafe extern "C" fn cuMipmappedArrayCreate(
    array: *mut usize,
    desc: *const Array3D,
    levels: c_uint,
) -> CUresult {
    // SAFETY: `desc` is null or the caller's CUDA_ARRAY3D_DESCRIPTOR, readable (the caller's contract);
    // `as_ref` makes a null None.
    let Some(d) = (unsafe { desc.as_ref() }) else {
        return INVALID_VALUE;
    };
    let mut total = 0;
    let (mut w, mut h, mut dp) = (d.width, d.height, d.depth);
    for _ in 0..levels.max(1) {
        total += array_bytes(w, h, dp, d.format, d.channels);
        w = (w / 2).max(1);
        h = (h / 2).max(1);
        dp = (dp / 2).max(1);
    }
    // SAFETY: `array` is the caller's out-parameter (the caller's contract).
    unsafe { array_create("cuMipmappedArrayCreate", array, total) }
}

fn array_destroy(name: &str, array: usize) -> CUresult {
    call(name, |s| match s.arrays.remove(&array) {
        Some((d, bytes)) => {
            s.give(d, bytes);
            OK
        }
        None => INVALID_VALUE,
    })
}

#[no_mangle]
pub extern "C" fn cuArrayDestroy(array: usize) -> CUresult {
    array_destroy("cuArrayDestroy", array)
}

#[no_mangle]
pub extern "C" fn cuMipmappedArrayDestroy(array: usize) -> CUresult {
    array_destroy("cuMipmappedArrayDestroy", array)
}

#[repr(C)]
pub struct ArrayRequirements {
    size: usize,
    alignment: usize,
    reserved: [u32; 4],
}

/// An array's size and alignment, written to `req`.
///
/// # Safety
/// `req` is null or valid for a write: the caller's out-parameter.
unsafe fn requirements(name: &str, req: *mut ArrayRequirements, array: usize) -> CUresult {
    call(name, |s| match s.arrays.get(&array) {
        // SAFETY: `req` is null or writable (this function's contract).
        Some(&(_, bytes)) => unsafe {
            out(
                req,
                ArrayRequirements {
                    size: bytes as usize,
                    alignment: PAGE as usize,
                    reserved: [0; 4],
                },
            )
        },
        None => INVALID_VALUE,
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuArrayGetMemoryRequirements(
    req: *mut ArrayRequirements,
    array: usize,
    _dev: i32,
) -> CUresult {
    // SAFETY: `req` is the caller's out-parameter (the caller's contract).
    unsafe { requirements("cuArrayGetMemoryRequirements", req, array) }
}

#[no_mangle]
pub unsafe extern "C" fn cuMipmappedArrayGetMemoryRequirements(
    req: *mut ArrayRequirements,
    array: usize,
    _dev: i32,
) -> CUresult {
    // SAFETY: `req` is the caller's out-parameter (the caller's contract).
    unsafe { requirements("cuMipmappedArrayGetMemoryRequirements", req, array) }
}
