//! `cuCtxSetLimit` (the runtime's `cudaDeviceSetLimit` reaches it through `cuGetProcAddress`): the stack
//! and the malloc heap reserve device memory, charged as `registry::limits` explains; a limit that would
//! cross the cap is refused with `CUDA_ERROR_OUT_OF_MEMORY` before the driver is asked, so it stays as it
//! was. The other limits take no device memory and pass straight on.
//! <https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__CTX.html>

use crate::cuda::*;
use crate::driver;
use crate::enforce;
use crate::ledger::LEDGER;
use crate::registry::limits::{self, DeviceLimits};
use crate::{devices, phase};
use vramcap_core::accounting::charge::{round_up_pages, Charge};

/// The charge a limit's new value calls for on `dev`, and the charge it has now.
fn charges(
    d: &mut DeviceLimits,
    dev: CUdevice,
    limit: i32,
    value: u64,
) -> driver::Result<(u64, u64)> {
    if limit == CU_LIMIT_MALLOC_HEAP_SIZE {
        return Ok((round_up_pages(value), d.heap_charge));
    }
    let threads = match d.resident_threads {
        Some(t) => t,
        None => {
            let sms = driver::device_attribute(dev, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
            let per_sm =
                driver::device_attribute(dev, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR)?;
            let t = u64::try_from(sms).unwrap_or(0) * u64::try_from(per_sm).unwrap_or(0);
            *d.resident_threads.insert(t)
        }
    };
    let base = match d.stack_base {
        Some(b) => b,
        None => *d.stack_base.insert(driver::ctx_limit(CU_LIMIT_STACK_SIZE)?),
    };
    let stack = round_up_pages(value.saturating_sub(base).saturating_mul(threads));
    Ok((stack, d.stack_charge))
}

pub fn set_limit(pass: impl Fn() -> CUresult, limit: i32, value: usize) -> CUresult {
    if phase::refusing() {
        return phase::REFUSED_BY_CONFIG;
    }
    if limit != CU_LIMIT_STACK_SIZE && limit != CU_LIMIT_MALLOC_HEAP_SIZE {
        return pass();
    }
    // Without the device (no context) or the figures a charge needs, nothing is let through uncharged:
    // the query's error is the answer.
    let dev = match devices::current() {
        Ok(dev) => dev,
        Err(code) => return code,
    };
    let first = {
        let mut all = limits::lock();
        let Some(d) = all.device(dev) else {
            return CUDA_ERROR_INVALID_VALUE;
        };
        match charges(d, dev, limit, value as u64) {
            Ok(c) => c,
            Err(code) => return code,
        }
    };
    enforce::prepare(dev, first.0.saturating_sub(first.1));
    let r = {
        let op = crate::in_flight::enter();
        let mut all = limits::lock();
        let Some(d) = all.device(dev) else {
            return CUDA_ERROR_INVALID_VALUE;
        };
        let (target, current) = match charges(d, dev, limit, value as u64) {
            Ok(c) => c,
            Err(code) => return code,
        };
        let reservation =
            match enforce::reserve(&op, dev, Charge::Pages(target.saturating_sub(current))) {
                Ok(r) => r,
                Err(code) => return code,
            };
        let r = pass();
        if r == CUDA_SUCCESS {
            reservation.settle(Charge::Pages(target.saturating_sub(current)));
            if target < current {
                if let Some(ledger) = LEDGER.device(dev) {
                    ledger.give_back(current - target);
                }
            }
            if limit == CU_LIMIT_MALLOC_HEAP_SIZE {
                d.heap_charge = target;
                d.heap_pending = true;
                d.context_floor = LEDGER.device(dev).map_or(0, |l| l.snapshot().context);
            } else {
                d.stack_charge = target;
            }
        }
        r
    };
    if r == CUDA_SUCCESS {
        // Whatever else the driver took for it now goes into the measured share at once.
        crate::background::measure::measure(dev, true);
    }
    r
}
