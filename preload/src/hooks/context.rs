//! Contexts: their own memory (about 0.5 GiB on an H100) counts against the cap.
//! <https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__PRIMARY__CTX.html>
//!
//! The first context on a device reserves an estimate (`VRAMCAP_CONTEXT_BYTES`, 512 MiB by default) before
//! the driver creates it, so a cap too small for a context refuses it with `CUDA_ERROR_OUT_OF_MEMORY`.
//! The background thread ([`crate::background::measure`]) then replaces the estimate with the figure the driver reports for this
//! process, without any lock shared with other processes. When a device's last context goes, the driver
//! frees everything on it, and so do we.

use crate::args::Out;
use crate::cuda::*;
use crate::enforce;
use crate::ledger::LEDGER;
use crate::phase;
use std::ffi::{c_uint, c_void};
use vramcap_core::accounting::ledger::MAX_DEVICES;
use vramcap_core::lock::Lock;

#[derive(Default, Clone, Copy)]
pub(crate) struct DeviceContexts {
    primary_refs: u32,
    created: u32,
}

static CONTEXTS: Lock<[DeviceContexts; MAX_DEVICES]> = Lock::new(
    [DeviceContexts {
        primary_refs: 0,
        created: 0,
    }; MAX_DEVICES],
);
/// Contexts made with cuCtxCreate, and their devices.
static CREATED: Lock<Vec<(usize, CUdevice)>> = Lock::new(Vec::new());

fn slot(dev: CUdevice) -> Option<usize> {
    usize::try_from(dev).ok().filter(|&d| d < MAX_DEVICES)
}

/// Charges a context's memory around `call` if it is the device's first, and counts it on success.
fn create(dev: CUdevice, primary: bool, call: impl FnOnce() -> CUresult) -> CUresult {
    let _op = crate::in_flight::enter();
    let Some(i) = slot(dev) else { return call() };
    if phase::refusing() {
        return phase::REFUSED_BY_CONFIG;
    }
    let first = {
        let c = CONTEXTS.lock()[i];
        c.primary_refs == 0 && c.created == 0
    };
    let estimate = phase::config().map_or(0, |c| c.context_estimate);
    let charged = first
        && LEDGER
            .device(dev)
            .is_some_and(|l| l.snapshot().context == 0);
    if charged {
        if let Err(code) = enforce::reserve_context(dev, estimate) {
            return code;
        }
    }
    let r = call();
    if r == CUDA_SUCCESS {
        let mut all = CONTEXTS.lock();
        if primary {
            all[i].primary_refs += 1;
        } else {
            all[i].created += 1;
        }
        drop(all);
        crate::background::watch(dev);
    } else if charged {
        if let Some(l) = LEDGER.device(dev) {
            l.set_context(0);
        }
    }
    r
}

/// Updates the counts after a context went away; forgets the device when none is left.
fn gone(dev: CUdevice, change: impl FnOnce(&mut DeviceContexts)) {
    let Some(i) = slot(dev) else { return };
    let mut all = CONTEXTS.lock();
    change(&mut all[i]);
    if all[i].primary_refs == 0 && all[i].created == 0 {
        drop(all);
        forget_device(dev);
    }
}

/// The driver freed everything on `dev`: drop its records and counts (the cap stays).
fn forget_device(dev: CUdevice) {
    crate::registry::pointers::PTRS.remove_where(|_, p| p.dev == dev);
    crate::registry::pointers::PAGES.forget_device(dev);
    super::vmm::forget_device(dev);
    super::array::forget_device(dev);
    crate::registry::pools::forget_device(dev);
    crate::registry::graphs::forget_device(dev);
    crate::registry::limits::forget_device(dev);
    crate::background::unwatch(dev);
    if let Some(l) = LEDGER.device(dev) {
        l.reset();
    }
}

pub fn primary_retain(
    pass: impl Fn() -> CUresult,
    _ctx: Out<CUcontext>,
    dev: CUdevice,
) -> CUresult {
    create(dev, true, &pass)
}

pub fn primary_release(pass: impl Fn() -> CUresult, dev: CUdevice) -> CUresult {
    let _op = crate::in_flight::enter();
    let r = pass();
    if r == CUDA_SUCCESS {
        gone(dev, |c| c.primary_refs = c.primary_refs.saturating_sub(1));
    }
    r
}

pub fn primary_reset(pass: impl Fn() -> CUresult, dev: CUdevice) -> CUresult {
    let _op = crate::in_flight::enter();
    let r = pass();
    if r == CUDA_SUCCESS {
        gone(dev, |c| c.primary_refs = 0);
    }
    r
}

fn remember(ctx: Out<CUcontext>, dev: CUdevice, r: CUresult) -> CUresult {
    if r == CUDA_SUCCESS {
        if let Some(c) = ctx.get() {
            CREATED.lock().push((c as usize, dev));
        }
    }
    r
}

pub fn ctx_create(
    pass: impl Fn() -> CUresult,
    ctx: Out<CUcontext>,
    _flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    let r = create(dev, false, &pass);
    remember(ctx, dev, r)
}

pub fn ctx_create_v3(
    pass: impl Fn() -> CUresult,
    ctx: Out<CUcontext>,
    _params: *mut c_void,
    _nparams: i32,
    _flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    let r = create(dev, false, &pass);
    remember(ctx, dev, r)
}

pub fn ctx_create_v4(
    pass: impl Fn() -> CUresult,
    ctx: Out<CUcontext>,
    _params: *mut c_void,
    _flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    let r = create(dev, false, &pass);
    remember(ctx, dev, r)
}

pub fn ctx_destroy(pass: impl Fn() -> CUresult, ctx: CUcontext) -> CUresult {
    let _op = crate::in_flight::enter();
    let r = pass();
    if r == CUDA_SUCCESS {
        let dev = {
            let mut created = CREATED.lock();
            created
                .iter()
                .position(|(c, _)| *c == ctx as usize)
                .map(|i| created.swap_remove(i).1)
        };
        if let Some(dev) = dev {
            gone(dev, |c| c.created = c.created.saturating_sub(1));
        }
    }
    r
}

/// In a forked child: the parent's contexts are not ours.
///
/// # Safety
/// Only from the fork child handler (`crate::fork`): one thread, no guard of these locks held.
pub unsafe fn reset_after_fork() {
    // SAFETY: the caller's guarantee.
    unsafe {
        CONTEXTS.reset_after_fork([DeviceContexts::default(); MAX_DEVICES]);
        CREATED.reset_after_fork(Vec::new());
    }
}
