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
