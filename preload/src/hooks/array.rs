//! Arrays and mipmapped arrays, charged at the size `cu(Mipmapped)ArrayGetMemoryRequirements` reports.
//! <https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__MEM.html>
//!
//! Before the array exists we reserve an estimate from its descriptor; once it exists, the driver's figure
//! replaces the estimate. Sparse and deferred-mapping arrays own no memory until mapped, and are not charged.

use crate::args::Out;
use crate::cuda::*;
use crate::enforce;
use crate::ledger::LEDGER;
use crate::{devices, driver};
use std::ffi::{c_uint, c_void};
use vramcap_core::accounting::charge::Charge;
use vramcap_core::registry::tracker::Tracker;

const CUDA_ARRAY3D_SPARSE: u32 = 0x40;
const CUDA_ARRAY3D_DEFERRED_MAPPING: u32 = 0x80;

#[derive(Debug, Clone, Copy)]
pub(crate) struct ArrayRecord {
    dev: CUdevice,
    charge: Charge,
    requested: u64,
}

static ARRAYS: Tracker<ArrayRecord> = Tracker::new();

/// What an array takes at most before the driver says: rows padded to 512 bytes (the pitch the H100 and
/// the fake report), whole pages; unknown formats count 16 bytes an element.
fn estimate(width: usize, height: usize, depth: usize, format: i32, channels: u32) -> u64 {
    let row = (width as u64)
        .saturating_mul(array_element_bytes(format) * u64::from(channels.max(1)))
        .div_ceil(512)
        .saturating_mul(512);
    [height.max(1), depth.max(1)]
        .iter()
        .fold(row, |acc, &d| acc.saturating_mul(d as u64))
}

fn charged_create(
    handle: Out<*mut c_void>,
    bytes: u64,
    mipmapped: bool,
    call: impl FnOnce() -> CUresult,
) -> CUresult {
    if crate::phase::refusing() {
        return crate::phase::REFUSED_BY_CONFIG;
    }
    let dev = match devices::current() {
        Ok(dev) => dev,
        Err(code) => return code,
    };
    let (_op, reservation) = match enforce::admit(dev, Charge::pages(bytes), bytes) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let r = call();
    if r == CUDA_SUCCESS {
        if let Some(array) = handle.get() {
            // Unreadable: the estimate stays (rows rounded up to 512 bytes, whole pages).
            let real = driver::array_size(array, dev, mipmapped).unwrap_or(bytes);
            let charge = reservation.commit_as(Charge::pages(real), real);
            ARRAYS.insert(
                array as u64,
                ArrayRecord {
                    dev,
                    charge,
                    requested: real,
                },
            );
        }
    }
    r
}

pub fn array_create(
    pass: impl Fn() -> CUresult,
    array: Out<CUarray>,
    desc: Option<&CUDA_ARRAY_DESCRIPTOR>,
) -> CUresult {
    let Some(d) = desc.copied() else {
        return pass();
    };
    charged_create(
        array,
        estimate(d.Width, d.Height, 1, d.Format, d.NumChannels),
        false,
        pass,
    )
}

pub fn array3d_create(
    pass: impl Fn() -> CUresult,
    array: Out<CUarray>,
    desc: Option<&CUDA_ARRAY3D_DESCRIPTOR>,
) -> CUresult {
    let Some(d) = desc.copied() else {
        return pass();
    };
    if d.Flags & (CUDA_ARRAY3D_SPARSE | CUDA_ARRAY3D_DEFERRED_MAPPING) != 0 {
        return pass();
    }
    charged_create(
        array,
        estimate(d.Width, d.Height, d.Depth, d.Format, d.NumChannels),
        false,
        pass,
    )
}

pub fn mipmapped_create(
    pass: impl Fn() -> CUresult,
    array: Out<CUmipmappedArray>,
    desc: Option<&CUDA_ARRAY3D_DESCRIPTOR>,
    _levels: c_uint,
) -> CUresult {
    let Some(d) = desc.copied() else {
        return pass();
    };
    if d.Flags & (CUDA_ARRAY3D_SPARSE | CUDA_ARRAY3D_DEFERRED_MAPPING) != 0 {
        return pass();
    }
    // All levels together take less than twice the first level.
    let first = estimate(d.Width, d.Height, d.Depth, d.Format, d.NumChannels);
    charged_create(array, first.saturating_mul(2), true, pass)
}

fn charged_destroy(array: *mut c_void, call: impl FnOnce() -> CUresult) -> CUresult {
    let _op = crate::in_flight::enter();
    let record = ARRAYS.remove(array as u64);
    let r = call();
    match (record, r == CUDA_SUCCESS) {
        (Some(rec), true) => {
            if let Some(ledger) = LEDGER.device(rec.dev) {
                ledger.release(rec.charge, rec.requested);
            }
        }
        (Some(rec), false) => {
            ARRAYS.insert(array as u64, rec);
        }
        (None, _) => {}
    }
    r
}

pub fn array_destroy(pass: impl Fn() -> CUresult, array: CUarray) -> CUresult {
    charged_destroy(array, &pass)
}

pub fn mipmapped_destroy(pass: impl Fn() -> CUresult, array: CUmipmappedArray) -> CUresult {
    charged_destroy(array, &pass)
}

/// Forgets the arrays of a device whose last context is gone.
pub fn forget_device(dev: CUdevice) {
    ARRAYS.remove_where(|_, a| a.dev == dev);
}

/// In a forked child: the parent's arrays are not ours.
///
/// # Safety
/// Only from the fork child handler (`crate::fork`): one thread, no guard of these locks held.
pub unsafe fn reset_after_fork() {
    // SAFETY: the caller's guarantee.
    unsafe { ARRAYS.reset_after_fork() };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Arg;
    use crate::guard::counting;
    use crate::ledger::unused_device;
    use std::cell::Cell;

    const MIB: u64 = 1 << 20;
    const FLOAT: i32 = 0x20;
    const UNSIGNED_INT8: i32 = 0x01;
    const HALF: i32 = 0x10;

    fn desc3d(flags: u32) -> CUDA_ARRAY3D_DESCRIPTOR {
        CUDA_ARRAY3D_DESCRIPTOR {
            Width: 1024,
            Height: 1024,
            Depth: 4,
            Format: FLOAT,
            NumChannels: 4,
            Flags: flags,
        }
    }

    #[test]
    fn rows_are_padded_to_512_bytes_of_elements_times_channels() {
        // 1000 floats: 4000 bytes, padded to 4096, for each of 100 rows.
        assert_eq!(estimate(1000, 100, 1, FLOAT, 1), 409_600);
        assert_eq!(estimate(256, 3, 2, UNSIGNED_INT8, 4), 1024 * 3 * 2);
        assert_eq!(estimate(100, 1, 1, HALF, 2), 512);
        assert_eq!(estimate(1024, 1024, 4, FLOAT, 4), 64 * MIB);
    }

    #[test]
    fn missing_dimensions_count_one_and_unknown_formats_sixteen_bytes() {
        assert_eq!(estimate(1, 0, 0, UNSIGNED_INT8, 0), 512);
        assert_eq!(estimate(32, 1, 1, 0x7777, 1), 512);
        assert_eq!(estimate(33, 1, 1, 0x7777, 1), 1024);
        assert_eq!(
            estimate(usize::MAX, usize::MAX, 2, 0x7777, 4),
            u64::MAX,
            "saturates"
        );
    }

    #[test]
    fn sparse_and_deferred_arrays_pass_uncharged() {
        let calls = Cell::new(0);
        let handle = Cell::new(std::ptr::null_mut::<c_void>());
        // SAFETY: the cell lives for the whole test.
        let out = unsafe { handle.as_ptr().safe() };
        for flags in [CUDA_ARRAY3D_SPARSE, CUDA_ARRAY3D_DEFERRED_MAPPING] {
            let d = desc3d(flags);
            assert_eq!(
                array3d_create(counting(&calls, CUDA_SUCCESS), out, Some(&d)),
                CUDA_SUCCESS
            );
            let r = mipmapped_create(counting(&calls, CUDA_SUCCESS), out, Some(&d), 4);
            assert_eq!(r, CUDA_SUCCESS);
        }
        assert_eq!(
            calls.get(),
            4,
            "each reached the driver, with no device to charge"
        );
    }

    #[test]
    fn an_array_without_a_current_device_never_reaches_the_driver() {
        // No driver: the current context's device cannot be told.
        let calls = Cell::new(0);
        let handle = Cell::new(std::ptr::null_mut::<c_void>());
        // SAFETY: the cell lives for the whole test.
        let out = unsafe { handle.as_ptr().safe() };
        let d = desc3d(0);
        let r = array3d_create(counting(&calls, CUDA_SUCCESS), out, Some(&d));
        assert_eq!((r, calls.get()), (CUDA_ERROR_NOT_FOUND, 0));
        let d2 = CUDA_ARRAY_DESCRIPTOR {
            Width: 1000,
            Height: 100,
            Format: FLOAT,
            NumChannels: 1,
        };
        let r = array_create(counting(&calls, CUDA_SUCCESS), out, Some(&d2));
        assert_eq!((r, calls.get()), (CUDA_ERROR_NOT_FOUND, 0));
        // No descriptor: the driver's own answer.
        let r = array_create(counting(&calls, CUDA_ERROR_INVALID_VALUE), out, None);
        assert_eq!((r, calls.get()), (CUDA_ERROR_INVALID_VALUE, 1));
    }

    #[test]
    fn a_destroyed_array_gives_its_charge_back_once_and_a_failed_destroy_keeps_it() {
        let dev = unused_device();
        let ledger = LEDGER.device(dev).unwrap();
        let array = ((dev as usize + 1) << 32) as CUarray;
        let charge = ledger
            .reserve(Charge::pages(409_600))
            .unwrap()
            .commit(409_600);
        ARRAYS.insert(
            array as u64,
            ArrayRecord {
                dev,
                charge,
                requested: 409_600,
            },
        );
        let calls = Cell::new(0);
        let r = array_destroy(counting(&calls, CUDA_ERROR_INVALID_HANDLE), array);
        assert_eq!(r, CUDA_ERROR_INVALID_HANDLE);
        assert_eq!(ledger.snapshot().charged, 2 * MIB);
        assert!(ARRAYS.get(array as u64).is_some());
        assert_eq!(
            array_destroy(counting(&calls, CUDA_SUCCESS), array),
            CUDA_SUCCESS
        );
        assert_eq!(ledger.snapshot().charged, 0);
        let r = array_destroy(counting(&calls, CUDA_ERROR_INVALID_HANDLE), array);
        assert_eq!((r, calls.get()), (CUDA_ERROR_INVALID_HANDLE, 3));
        assert_eq!(ledger.snapshot().allocations, 0, "released once");
    }
}
