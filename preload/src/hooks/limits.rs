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
use vramcap_core::accounting::ledger::Reservation;

/// The threads a device runs at once, whose stacks a stack limit sizes. A count that is not positive
/// cannot be the device's (it would charge every stack nothing), so it fails closed, uncached.
fn resident_threads(sms: i32, per_sm: i32) -> driver::Result<u64> {
    match (u64::try_from(sms), u64::try_from(per_sm)) {
        (Ok(s), Ok(p)) if s > 0 && p > 0 => Ok(s.saturating_mul(p)),
        _ => Err(CUDA_ERROR_INVALID_VALUE),
    }
}

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
            *d.resident_threads.insert(resident_threads(sms, per_sm)?)
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
            record(d, dev, limit, (target, current), reservation);
        }
        r
    };
    if r == CUDA_SUCCESS {
        // Whatever else the driver took for it now goes into the measured share at once.
        crate::background::measure::measure(dev, true);
    }
    r
}

/// The driver set the limit: its charge moves from `current` to `target`, on the ledger (keeping the
/// reservation of the rise, giving back a fall) and in `d`.
fn record(
    d: &mut DeviceLimits,
    dev: CUdevice,
    limit: i32,
    (target, current): (u64, u64),
    reservation: Reservation<'static>,
) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::counting;
    use crate::ledger::unused_device;

    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    /// An H200: 132 multiprocessors of 2048 threads, and the 1 KiB stack a context starts with.
    const H200_THREADS: u64 = 132 * 2048;

    fn h200() -> DeviceLimits {
        DeviceLimits {
            stack_base: Some(KIB),
            resident_threads: Some(H200_THREADS),
            ..DeviceLimits::default()
        }
    }

    /// What `set_limit` does once the driver accepted `value`; returns what the device holds then.
    fn set(d: &mut DeviceLimits, dev: CUdevice, limit: i32, value: u64) -> u64 {
        let (target, current) = charges(d, dev, limit, value).unwrap();
        let ledger = LEDGER.device(dev).unwrap();
        let r = ledger
            .reserve(Charge::Pages(target.saturating_sub(current)))
            .unwrap();
        record(d, dev, limit, (target, current), r);
        ledger.snapshot().charged
    }

    #[test]
    fn the_stack_costs_its_growth_on_every_resident_thread() {
        // Measured on an H200 (docs/probe-graph-limits-h200.txt): 1 KiB to 16 KiB took 3960 MiB, to
        // 64 KiB 16632 MiB.
        let mut d = h200();
        assert_eq!(
            charges(&mut d, 0, CU_LIMIT_STACK_SIZE, 16 * KIB),
            Ok((3960 * MIB, 0))
        );
        assert_eq!(
            charges(&mut d, 0, CU_LIMIT_STACK_SIZE, 64 * KIB),
            Ok((16632 * MIB, 0))
        );
        assert_eq!(
            charges(&mut d, 0, CU_LIMIT_STACK_SIZE, 512),
            Ok((0, 0)),
            "below the base the context already holds it"
        );
    }

    #[test]
    fn the_heap_costs_its_size_in_whole_pages() {
        let mut d = DeviceLimits {
            heap_charge: 8 * MIB,
            ..DeviceLimits::default()
        };
        assert_eq!(
            charges(&mut d, 0, CU_LIMIT_MALLOC_HEAP_SIZE, 1024 * MIB + 1),
            Ok((1026 * MIB, 8 * MIB))
        );
        assert_eq!(d.resident_threads, None, "the heap needs no device query");
    }

    #[test]
    fn a_stack_without_the_thread_count_fails_closed_with_the_drivers_error() {
        // No driver here: the attribute query answers CUDA_ERROR_NOT_FOUND.
        let mut d = DeviceLimits::default();
        assert_eq!(
            charges(&mut d, 0, CU_LIMIT_STACK_SIZE, 64 * KIB),
            Err(CUDA_ERROR_NOT_FOUND)
        );
        assert_eq!((d.resident_threads, d.stack_base), (None, None));
    }

    #[test]
    fn a_stack_without_its_base_fails_closed_and_keeps_the_thread_count() {
        let mut d = DeviceLimits {
            resident_threads: Some(H200_THREADS),
            ..DeviceLimits::default()
        };
        assert_eq!(
            charges(&mut d, 0, CU_LIMIT_STACK_SIZE, 64 * KIB),
            Err(CUDA_ERROR_NOT_FOUND)
        );
        assert_eq!(d.stack_base, None, "asked again next time");
        assert_eq!(d.resident_threads, Some(H200_THREADS));
    }

    #[test]
    fn raising_lowering_and_setting_the_stack_again_keeps_one_charge() {
        let dev = unused_device();
        let mut d = h200();
        assert_eq!(set(&mut d, dev, CU_LIMIT_STACK_SIZE, 16 * KIB), 3960 * MIB);
        assert_eq!(set(&mut d, dev, CU_LIMIT_STACK_SIZE, 64 * KIB), 16632 * MIB);
        assert_eq!(set(&mut d, dev, CU_LIMIT_STACK_SIZE, 16 * KIB), 3960 * MIB);
        assert_eq!(set(&mut d, dev, CU_LIMIT_STACK_SIZE, 16 * KIB), 3960 * MIB);
        assert_eq!(d.stack_charge, 3960 * MIB);
        assert_eq!(set(&mut d, dev, CU_LIMIT_STACK_SIZE, KIB), 0);
        assert_eq!(d.stack_charge, 0);
    }

    #[test]
    fn a_set_heap_is_charged_pending_over_the_contexts_share() {
        let dev = unused_device();
        let ledger = LEDGER.device(dev).unwrap();
        ledger.reserve_context(300 * MIB).unwrap();
        let mut d = DeviceLimits::default();
        assert_eq!(
            set(&mut d, dev, CU_LIMIT_MALLOC_HEAP_SIZE, 1024 * MIB),
            1324 * MIB
        );
        assert!(d.heap_pending);
        assert_eq!((d.heap_charge, d.context_floor), (1024 * MIB, 300 * MIB));
        assert_eq!(
            set(&mut d, dev, CU_LIMIT_MALLOC_HEAP_SIZE, 256 * MIB),
            556 * MIB,
            "a smaller heap gives the difference back"
        );
        assert_eq!(d.heap_charge, 256 * MIB);
    }

    #[test]
    fn limits_that_take_no_memory_pass_straight_to_the_driver() {
        let calls = std::cell::Cell::new(0);
        // CU_LIMIT_PRINTF_FIFO_SIZE (1): measured to take nothing.
        let r = set_limit(counting(&calls, CUDA_ERROR_INVALID_VALUE), 1, 256 << 20);
        assert_eq!((r, calls.get()), (CUDA_ERROR_INVALID_VALUE, 1));
    }

    #[test]
    fn a_stack_or_heap_without_a_device_never_reaches_the_driver() {
        // No driver: the current device cannot be told, and that query's error is the answer.
        for limit in [CU_LIMIT_STACK_SIZE, CU_LIMIT_MALLOC_HEAP_SIZE] {
            let calls = std::cell::Cell::new(0);
            let r = set_limit(counting(&calls, CUDA_SUCCESS), limit, 1 << 30);
            assert_eq!((r, calls.get()), (CUDA_ERROR_NOT_FOUND, 0), "limit {limit}");
        }
    }

    #[test]
    fn a_thread_count_that_is_not_positive_fails_closed() {
        assert_eq!(resident_threads(132, 2048), Ok(H200_THREADS));
        for (sms, per_sm) in [(0, 2048), (132, 0), (-1, 2048), (132, -5)] {
            assert_eq!(
                resident_threads(sms, per_sm),
                Err(CUDA_ERROR_INVALID_VALUE),
                "{sms} x {per_sm}"
            );
        }
    }
}
