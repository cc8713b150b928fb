//! Virtual memory management: physical allocations (cuMemCreate) that hold device memory until the last
//! reference (cuMemRelease, cuMemRetainAllocationHandle) and the last mapping (cuMemMap, cuMemUnmap)
//! are gone, and the address reservations they are mapped into.

use crate::devices::dev_ok;
use crate::memory::PAGE;
use crate::results::{CUresult, INVALID_DEVICE, INVALID_VALUE, OK};
use crate::state::{call, out, Fake};
use std::ffi::c_void;

/// A physical allocation: its device and bytes (0 for host memory), references and mappings.
pub(crate) struct Handle {
    dev: usize,
    size: u64,
    refs: u32,
    maps: u32,
}

impl Fake {
    fn release_handle_if_dead(&mut self, h: u64) {
        if let Some(hd) = self.handles.get(&h) {
            if hd.refs == 0 && hd.maps == 0 {
                let (dev, size) = (hd.dev, hd.size);
                self.handles.remove(&h);
                self.give(dev, size);
            }
        }
    }
}

#[repr(C)]
pub struct AllocationProp {
    type_: i32,
    handle_types: i32,
    location_type: i32,
    location_id: i32,
    rest: [u8; 16],
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetAllocationGranularity(
    g: *mut usize,
    _p: *const AllocationProp,
    _o: i32,
) -> CUresult {
    // SAFETY: `g` is the caller's out-parameter (the caller's contract).
    unsafe { out(g, PAGE as usize) }
}

#[no_mangle]
pub unsafe extern "C" fn cuMemCreate(
    handle: *mut u64,
    size: usize,
    prop: *const AllocationProp,
    _f: u64,
) -> CUresult {
    call("cuMemCreate", |s| {
        if let Some(e) = crate::capture::prohibited(s, None) {
            return e;
        }
        // SAFETY: `prop` is null or the caller's CUmemAllocationProp, readable (the caller's contract);
        // `as_ref` makes a null None.
        let Some(prop) = (unsafe { prop.as_ref() }) else {
            return INVALID_VALUE;
        };
        if size == 0 || !(size as u64).is_multiple_of(PAGE) {
            return INVALID_VALUE;
        }
        let dev = if prop.location_type == 1 {
            match dev_ok(s, prop.location_id) {
                Some(d) => Some(d),
                None => return INVALID_DEVICE,
            }
        } else {
            None
        };
        if let Some(d) = dev {
            if let Err(e) = s.take(d, size as u64) {
                return e;
            }
        }
        let h = s.next_handle;
        s.next_handle += 1;
        // Host handles hold no device memory: record them on an impossible device with size 0.
        let (dev, size) = dev.map_or((0, 0), |d| (d, size as u64));
        s.handles.insert(
            h,
            Handle {
                dev,
                size,
                refs: 1,
                maps: 0,
            },
        );
        // SAFETY: `handle` is the caller's out-parameter (the caller's contract).
        unsafe { out(handle, h) }
    })
}

#[no_mangle]
pub extern "C" fn cuMemRelease(handle: u64) -> CUresult {
    call("cuMemRelease", |s| {
        let Some(h) = s.handles.get_mut(&handle) else {
            return INVALID_VALUE;
        };
        h.refs = h.refs.saturating_sub(1);
        s.release_handle_if_dead(handle);
        OK
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAddressReserve(
    ptr: *mut u64,
    size: usize,
    _a: usize,
    _addr: u64,
    _f: u64,
) -> CUresult {
    call("cuMemAddressReserve", |s| {
        let va = s.va(size as u64);
        // SAFETY: `ptr` is the caller's out-parameter (the caller's contract).
        unsafe { out(ptr, va) }
    })
}

#[no_mangle]
pub extern "C" fn cuMemAddressFree(_ptr: u64, _size: usize) -> CUresult {
    call("cuMemAddressFree", |_| OK)
}

#[no_mangle]
pub extern "C" fn cuMemMap(
    ptr: u64,
    _size: usize,
    _offset: usize,
    handle: u64,
    _f: u64,
) -> CUresult {
    call("cuMemMap", |s| {
        let Some(h) = s.handles.get_mut(&handle) else {
            return INVALID_VALUE;
        };
        h.maps += 1;
        s.mappings.insert(ptr, handle);
        OK
    })
}

#[no_mangle]
pub extern "C" fn cuMemUnmap(ptr: u64, size: usize) -> CUresult {
    call("cuMemUnmap", |s| {
        let gone: Vec<u64> = s
            .mappings
            .keys()
            .copied()
            .filter(|&p| p >= ptr && p < ptr + size as u64)
            .collect();
        if gone.is_empty() {
            return INVALID_VALUE;
        }
        for p in gone {
            if let Some(h) = s.mappings.remove(&p) {
                if let Some(hd) = s.handles.get_mut(&h) {
                    hd.maps = hd.maps.saturating_sub(1);
                }
                s.release_handle_if_dead(h);
            }
        }
        OK
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemRetainAllocationHandle(
    handle: *mut u64,
    addr: *mut c_void,
) -> CUresult {
    call("cuMemRetainAllocationHandle", |s| {
        let Some(&h) = s.mappings.get(&(addr as u64)) else {
            return INVALID_VALUE;
        };
        if let Some(hd) = s.handles.get_mut(&h) {
            hd.refs += 1;
        }
        // SAFETY: `handle` is the caller's out-parameter (the caller's contract).
        unsafe { out(handle, h) }
    })
}
