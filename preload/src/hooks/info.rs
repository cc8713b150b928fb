//! Memory information shows the cap: `cuMemGetInfo_v2`, `cuDeviceTotalMem_v2`, `nvmlDeviceGetMemoryInfo`
//! and `_v2`. Total is the cap (never more than the device really has: a program that sizes itself from
//! total must not plan for memory that does not exist), free is what the cap leaves (never more than the
//! device really has free). Without a cap they tell the driver's truth.
//! <https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__MEM.html>,
//! <https://docs.nvidia.com/deploy/nvml-api/group__nvmlDeviceQueries.html>

use crate::args::Out;
use crate::cuda::*;
use crate::devices;
use vramcap_core::accounting::figures::DeviceFigures;
use vramcap_core::lock::Lock;

fn capped_usage(dev: CUdevice) -> Option<DeviceFigures> {
    // Pools trim themselves at synchronisation points we do not hook: re-read them before answering.
    crate::registry::pools::refresh(dev);
    crate::registry::graphs::refresh(dev);
    let usage = devices::ledger(dev)?.snapshot();
    usage.cap.is_some().then_some(usage)
}

/// (free, total) as the capped process sees them, from the driver's own (free, total).
fn capped(usage: &DeviceFigures, real_free: u64, real_total: u64) -> (u64, u64) {
    let cap = usage.cap.unwrap_or(u64::MAX);
    (
        usage.headroom().unwrap_or(real_free).min(real_free),
        cap.min(real_total),
    )
}

pub fn mem_get_info(pass: impl Fn() -> CUresult, free: Out<usize>, total: Out<usize>) -> CUresult {
    let r = pass();
    if r == CUDA_SUCCESS {
        if let Some(usage) = devices::current().ok().and_then(capped_usage) {
            let real_total = total.get().map_or(u64::MAX, |t| t as u64);
            let (f, t) = capped(&usage, free.get().unwrap_or(0) as u64, real_total);
            free.set(f as usize);
            total.set(t as usize);
        }
    }
    r
}

pub fn device_total_mem(pass: impl Fn() -> CUresult, bytes: Out<usize>, dev: CUdevice) -> CUresult {
    let r = pass();
    if r == CUDA_SUCCESS {
        if let Some(cap) = capped_usage(dev).and_then(|u| u.cap) {
            let real = bytes.get().map_or(u64::MAX, |b| b as u64);
            bytes.set(cap.min(real) as usize);
        }
    }
    r
}

/// NVML device handles and the CUDA ordinals they were matched to.
static KNOWN: Lock<Vec<(usize, CUdevice)>> = Lock::new(Vec::new());

/// The CUDA ordinal of an NVML device, matched by UUID; remembered per handle.
fn nvml_ordinal(device: nvmlDevice_t) -> Option<CUdevice> {
    if let Some(&(_, o)) = KNOWN.lock().iter().find(|(h, _)| *h == device as usize) {
        return Some(o);
    }
    let devices = devices::get()?;
    let uuid = crate::background::nvml::device_uuid(device as usize)?;
    let ordinal = devices.ordinal_of_uuid(&uuid)?;
    KNOWN.lock().push((device as usize, ordinal));
    Some(ordinal)
}

/// The two layouts NVML reports device memory in: `nvmlMemory_t` and `nvmlMemory_v2_t`.
pub trait NvmlMemory: Copy {
    /// The driver's (free, total).
    fn free_total(&self) -> (u64, u64);
    /// This report with the capped figures; `used` is what is charged.
    fn capped(self, free: u64, total: u64, used: u64) -> Self;
}

impl NvmlMemory for nvmlMemory_t {
    fn free_total(&self) -> (u64, u64) {
        (self.free, self.total)
    }
    fn capped(self, free: u64, total: u64, used: u64) -> Self {
        nvmlMemory_t { total, free, used }
    }
}

impl NvmlMemory for nvmlMemory_v2_t {
    fn free_total(&self) -> (u64, u64) {
        (self.free, self.total)
    }
    fn capped(self, free: u64, total: u64, used: u64) -> Self {
        nvmlMemory_v2_t {
            total,
            free,
            used,
            reserved: 0,
            ..self
        }
    }
}

/// `nvmlDeviceGetMemoryInfo` and `_v2`.
pub fn nvml_memory_info<M: NvmlMemory>(
    pass: impl Fn() -> nvmlReturn_t,
    device: nvmlDevice_t,
    memory: Out<M>,
) -> nvmlReturn_t {
    let r = pass();
    if r == NVML_SUCCESS {
        if let (Some(usage), Some(m)) = (nvml_ordinal(device).and_then(capped_usage), memory.get())
        {
            let (real_free, real_total) = m.free_total();
            let (free, total) = capped(&usage, real_free, real_total);
            memory.set(m.capped(free, total, usage.charged));
        }
    }
    r
}

/// In a forked child: the parent's NVML handles are not ours.
///
/// # Safety
/// Only from the fork child handler (`crate::fork`): one thread, no guard of these locks held.
pub unsafe fn reset_after_fork() {
    // SAFETY: the caller's guarantee.
    unsafe { KNOWN.reset_after_fork(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Arg;
    use std::cell::Cell;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn usage(cap: u64, charged: u64) -> DeviceFigures {
        DeviceFigures {
            cap: Some(cap),
            charged,
            ..DeviceFigures::default()
        }
    }

    fn out<T>(cell: &Cell<T>) -> Out<T>
    where
        *mut T: for<'a> Arg<'a, Safe = Out<T>>,
    {
        // SAFETY: the cell lives for the whole test, and an `Out` writes through it as a `Cell` may.
        unsafe { cell.as_ptr().safe() }
    }

    #[test]
    fn free_is_what_the_cap_leaves_and_total_is_the_cap() {
        // tests/interposer.rs: a 1 GiB cap holding a 300 MiB context and eleven 64 MiB blocks.
        assert_eq!(
            capped(&usage(GIB, 1004 * MIB), 80 * GIB, 141 * GIB),
            (20 * MIB, GIB)
        );
    }

    #[test]
    fn free_is_never_more_than_the_device_really_has() {
        assert_eq!(
            capped(&usage(8 * GIB, GIB), 2 * GIB, 141 * GIB),
            (2 * GIB, 8 * GIB)
        );
    }

    #[test]
    fn total_is_never_more_than_the_device_has() {
        // A 200 GiB cap on a 141 GiB card: the card's total, not memory that does not exist.
        assert_eq!(
            capped(&usage(200 * GIB, GIB), 100 * GIB, 141 * GIB),
            (100 * GIB, 141 * GIB)
        );
    }

    #[test]
    fn charges_past_the_cap_leave_nothing_free() {
        // Memory charged after the fact (a pool's growth, a measured context) can pass the cap.
        assert_eq!(
            capped(&usage(GIB, 1100 * MIB), 80 * GIB, 141 * GIB),
            (0, GIB)
        );
    }

    #[test]
    fn without_a_cap_every_memory_query_tells_the_drivers_truth() {
        // No device table here: no cap applies.
        let (free, total) = (Cell::new(0usize), Cell::new(0usize));
        let driver = || {
            free.set(70 << 30);
            total.set(141 << 30);
            CUDA_SUCCESS
        };
        assert_eq!(mem_get_info(driver, out(&free), out(&total)), CUDA_SUCCESS);
        assert_eq!((free.get(), total.get()), (70 << 30, 141 << 30));
        let bytes = Cell::new(141usize << 30);
        assert_eq!(
            device_total_mem(|| CUDA_SUCCESS, out(&bytes), 0),
            CUDA_SUCCESS
        );
        assert_eq!(bytes.get(), 141 << 30);
        let shown = nvmlMemory_t {
            total: 141 << 30,
            free: 70 << 30,
            used: 71 << 30,
        };
        let memory = Cell::new(shown);
        let device = 0x1234 as nvmlDevice_t;
        assert_eq!(
            nvml_memory_info(|| NVML_SUCCESS, device, out(&memory)),
            NVML_SUCCESS
        );
        let m = memory.get();
        assert_eq!(
            (m.total, m.free, m.used),
            (shown.total, shown.free, shown.used)
        );
    }

    #[test]
    fn a_failed_query_is_passed_on_untouched() {
        let (free, total) = (Cell::new(7usize), Cell::new(9usize));
        let r = mem_get_info(|| CUDA_ERROR_INVALID_CONTEXT, out(&free), out(&total));
        assert_eq!(r, CUDA_ERROR_INVALID_CONTEXT);
        assert_eq!((free.get(), total.get()), (7, 9));
    }
}
