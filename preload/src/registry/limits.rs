//! Context limits that reserve device memory, per device.
//! <https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__CTX.html> (`cuCtxSetLimit`)
//!
//! Measured on an H200 with driver 580 (`docs/probe-graph-limits-h200.txt`):
//! - `CU_LIMIT_STACK_SIZE` is taken at once: raising it from 1 KiB to 16 KiB took 3960 MiB, to 64 KiB
//!   16632 MiB, exactly (new - old) x multiprocessors x threads per multiprocessor; lowering it gives the
//!   memory back;
//! - `CU_LIMIT_MALLOC_HEAP_SIZE` is taken at the first launch of a kernel that calls `malloc` (1 GiB took
//!   1026 MiB then); after that launch the limit can no longer be set;
//! - the printf FIFO (256 MiB), the pending-launch count and the persisting L2 size took nothing.
//!
//! So the stack is charged at its formula and the heap, in full, when set: the cap check runs before the
//! driver is asked. A heap set but not yet taken is *pending*: the driver's per-process figure does not
//! show it yet, so the measurement of the context's share must not count it as taken (see
//! [`pending_heap`]).

use crate::cuda::CUdevice;
use vramcap_core::accounting::ledger::MAX_DEVICES;
use vramcap_core::lock::{Guard, Lock};

#[derive(Clone, Copy, Default)]
pub struct DeviceLimits {
    /// The stack size when we first saw it set: what the context's own memory already holds.
    pub stack_base: Option<u64>,
    /// Bytes charged for the stack above its base.
    pub stack_charge: u64,
    /// Bytes charged for the malloc heap.
    pub heap_charge: u64,
    /// Whether the heap is charged but maybe not taken yet, and the context's share when it was set.
    pub heap_pending: bool,
    pub context_floor: u64,
    /// Multiprocessors x threads per multiprocessor.
    pub resident_threads: Option<u64>,
}

pub struct Limits {
    devices: [DeviceLimits; MAX_DEVICES],
}

static LIMITS: Lock<Limits> = Lock::new(Limits::new());

impl Limits {
    const fn new() -> Limits {
        Limits {
            devices: [DeviceLimits {
                stack_base: None,
                stack_charge: 0,
                heap_charge: 0,
                heap_pending: false,
                context_floor: 0,
                resident_threads: None,
            }; MAX_DEVICES],
        }
    }
}

pub fn lock() -> Guard<'static, Limits> {
    LIMITS.lock()
}

impl Limits {
    pub fn device(&mut self, dev: CUdevice) -> Option<&mut DeviceLimits> {
        usize::try_from(dev)
            .ok()
            .and_then(|d| self.devices.get_mut(d))
    }
}

/// The pending heap of `dev` and the context's share when it was set, if any.
pub fn pending_heap(dev: CUdevice) -> Option<(u64, u64)> {
    let mut limits = LIMITS.lock();
    let d = limits.device(dev)?;
    d.heap_pending.then_some((d.heap_charge, d.context_floor))
}

/// A measurement saw the heap taken.
pub fn heap_taken(dev: CUdevice) {
    if let Some(d) = LIMITS.lock().device(dev) {
        d.heap_pending = false;
    }
}

/// The device's last context is gone, and its limits with it.
pub fn forget_device(dev: CUdevice) {
    if let Some(d) = LIMITS.lock().device(dev) {
        *d = DeviceLimits::default();
    }
}

/// In a forked child: the parent's limits are not ours.
///
/// # Safety
/// Only from the fork child handler (`crate::fork`): one thread, no guard of these locks held.
pub unsafe fn reset_after_fork() {
    // SAFETY: the caller's guarantee.
    unsafe { LIMITS.reset_after_fork(Limits::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::unused_device;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_set_heap_is_pending_with_its_floor_until_a_measurement_sees_it_taken() {
        let dev = unused_device();
        assert_eq!(pending_heap(dev), None, "nothing set yet");
        assert_eq!(pending_heap(-1), None, "no such device");
        {
            let mut all = lock();
            let d = all.device(dev).unwrap();
            d.heap_charge = 1024 * MIB;
            d.heap_pending = true;
            d.context_floor = 300 * MIB;
        }
        assert_eq!(pending_heap(dev), Some((1024 * MIB, 300 * MIB)));
        heap_taken(dev);
        assert_eq!(pending_heap(dev), None);
        assert_eq!(
            lock().device(dev).unwrap().heap_charge,
            1024 * MIB,
            "taken, the heap stays charged"
        );
    }

    #[test]
    fn forgetting_a_device_drops_its_limits_and_what_was_learnt_of_it() {
        let dev = unused_device();
        {
            let mut all = lock();
            let d = all.device(dev).unwrap();
            *d = DeviceLimits {
                stack_base: Some(1024),
                stack_charge: 3960 * MIB,
                heap_charge: 8 * MIB,
                heap_pending: true,
                context_floor: 300 * MIB,
                resident_threads: Some(132 * 2048),
            };
        }
        forget_device(dev);
        let d = *lock().device(dev).unwrap();
        assert_eq!(d.stack_base, None);
        assert_eq!(d.resident_threads, None, "a new context is asked again");
        assert_eq!((d.stack_charge, d.heap_charge, d.context_floor), (0, 0, 0));
        assert_eq!(pending_heap(dev), None);
    }
}
