//! Virtual memory management: `cuMemCreate`, `cuMemRelease`, `cuMemMap`, `cuMemUnmap`,
//! `cuMemRetainAllocationHandle`.
//! <https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__VA.html>
//!
//! Physical memory is taken by `cuMemCreate` (device locations only) and freed by the driver only when the
//! handle's last reference is released *and* its last mapping is unmapped; CUDA's own samples release the
//! handle right after mapping it. So each handle we created carries a reference count and a mapping count,
//! and its charge goes back when both reach zero. Handles imported from other processes were never
//! charged here and are never tracked. Address reservations cost no device memory and are not counted.

use crate::args::Out;
use crate::cuda::*;
use crate::enforce;
use crate::ledger::LEDGER;
use std::collections::BTreeMap;
use std::ffi::c_void;
use vramcap_core::accounting::charge::Charge;
use vramcap_core::lock::Lock;
use vramcap_core::registry::tracker::Tracker;

#[derive(Debug, Clone, Copy)]
pub struct HandleRecord {
    pub dev: CUdevice,
    charge: Charge,
    requested: u64,
    refs: u32,
    maps: u32,
}

pub static HANDLES: Tracker<HandleRecord> = Tracker::new();
/// Mapped ranges of tracked handles: start address -> (length, handle).
static MAPPINGS: Lock<BTreeMap<u64, (u64, u64)>> = Lock::new(BTreeMap::new());

/// Applies `change` to a handle's counts, and gives its charge back once nothing holds it.
fn adjust(handle: u64, change: impl FnOnce(&mut HandleRecord)) {
    let dead = HANDLES.update(handle, |h| {
        change(h);
        (h.refs == 0 && h.maps == 0).then_some(*h)
    });
    if let Some(Some(h)) = dead {
        HANDLES.remove(handle);
        if let Some(ledger) = LEDGER.device(h.dev) {
            ledger.release(h.charge, h.requested);
        }
    }
}

pub fn mem_create(
    pass: impl Fn() -> CUresult,
    handle: Out<CUmemGenericAllocationHandle>,
    size: usize,
    prop: Option<&CUmemAllocationProp>,
    _flags: u64,
) -> CUresult {
    let Some(props) = prop.copied() else {
        return pass();
    };
    if props.location.type_ != CU_MEM_LOCATION_TYPE_DEVICE || size == 0 {
        return pass();
    }
    // Charged to the device named in the properties, whichever context is current.
    let dev = props.location.id;
    let charge = Charge::pages(size as u64);
    crate::pressure::retry_once(dev, charge.worst_case(), || {
        let (_op, reservation) = enforce::admit(dev, charge, size as u64)?;
        let r = pass();
        if r == CUDA_SUCCESS {
            if let Some(h) = handle.get() {
                let charge = reservation.commit(size as u64);
                HANDLES.insert(
                    h,
                    HandleRecord {
                        dev,
                        charge,
                        requested: size as u64,
                        refs: 1,
                        maps: 0,
                    },
                );
            }
        }
        Ok(r)
    })
}

pub fn mem_release(pass: impl Fn() -> CUresult, handle: CUmemGenericAllocationHandle) -> CUresult {
    let _op = crate::in_flight::enter();
    let r = pass();
    if r == CUDA_SUCCESS {
        adjust(handle, |h| h.refs = h.refs.saturating_sub(1));
    }
    r
}

pub fn mem_map(
    pass: impl Fn() -> CUresult,
    ptr: CUdeviceptr,
    size: usize,
    _offset: usize,
    handle: CUmemGenericAllocationHandle,
    _flags: u64,
) -> CUresult {
    let r = pass();
    if r == CUDA_SUCCESS && HANDLES.update(handle, |h| h.maps += 1).is_some() {
        MAPPINGS.lock().insert(ptr, (size as u64, handle));
    }
    r
}

pub fn mem_unmap(pass: impl Fn() -> CUresult, ptr: CUdeviceptr, size: usize) -> CUresult {
    let _op = crate::in_flight::enter();
    let r = pass();
    if r == CUDA_SUCCESS {
        let end = ptr.saturating_add(size as u64);
        let unmapped: Vec<u64> = {
            let mut maps = MAPPINGS.lock();
            let starts: Vec<u64> = maps.range(ptr..end).map(|(&start, _)| start).collect();
            starts
                .into_iter()
                .filter_map(|s| maps.remove(&s).map(|(_, h)| h))
                .collect()
        };
        for handle in unmapped {
            adjust(handle, |h| h.maps = h.maps.saturating_sub(1));
        }
    }
    r
}

pub fn retain_handle(
    pass: impl Fn() -> CUresult,
    handle: Out<CUmemGenericAllocationHandle>,
    _addr: *mut c_void,
) -> CUresult {
    let r = pass();
    if r == CUDA_SUCCESS {
        if let Some(h) = handle.get() {
            HANDLES.update(h, |rec| rec.refs += 1);
        }
    }
    r
}

/// Forgets the handles and mappings of a device whose last context is gone.
pub fn forget_device(dev: CUdevice) {
    HANDLES.remove_where(|_, h| h.dev == dev);
    MAPPINGS
        .lock()
        .retain(|_, (_, h)| HANDLES.get(*h).is_some());
}

/// In a forked child: the parent's handles and mappings are not ours.
///
/// # Safety
/// Only from the fork child handler (`crate::fork`): one thread, no guard of these locks held.
pub unsafe fn reset_after_fork() {
    // SAFETY: the caller's guarantee.
    unsafe {
        HANDLES.reset_after_fork();
        MAPPINGS.reset_after_fork(BTreeMap::new());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::counting;
    use crate::ledger::unused_device;
    use std::cell::Cell;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_handle_released_while_mapped_stays_charged_until_unmapped() {
        // CUDA's own samples release the handle right after mapping it.
        let dev = unused_device();
        let ledger = LEDGER.device(dev).unwrap();
        let (handle, va) = (dev as u64 + 0x7000, (dev as u64 + 1) << 40);
        let charge = ledger
            .reserve(Charge::pages(64 * MIB))
            .unwrap()
            .commit(64 * MIB);
        HANDLES.insert(
            handle,
            HandleRecord {
                dev,
                charge,
                requested: 64 * MIB,
                refs: 1,
                maps: 0,
            },
        );
        let calls = Cell::new(0);
        let ok = counting(&calls, CUDA_SUCCESS);
        assert_eq!(mem_map(ok, va, 32 << 20, 0, handle, 0), CUDA_SUCCESS);
        assert_eq!(
            mem_map(ok, va + 32 * MIB, 32 << 20, 0, handle, 0),
            CUDA_SUCCESS
        );
        mem_release(ok, handle);
        assert_eq!(ledger.snapshot().charged, 64 * MIB);
        assert_eq!(
            mem_unmap(|| CUDA_ERROR_INVALID_VALUE, va, 64 << 20),
            CUDA_ERROR_INVALID_VALUE
        );
        assert_eq!(
            ledger.snapshot().charged,
            64 * MIB,
            "a failed unmap keeps it"
        );
        mem_unmap(ok, va, 32 << 20);
        assert_eq!(ledger.snapshot().charged, 64 * MIB, "one mapping left");
        mem_unmap(ok, va + 32 * MIB, 32 << 20);
        assert_eq!(ledger.snapshot().charged, 0);
        assert!(HANDLES.get(handle).is_none());
        assert_eq!(calls.get(), 5);
    }

    #[test]
    fn an_untracked_handle_is_mapped_and_released_without_a_charge() {
        // Imported from another process: never charged here, so nothing may be given back for it.
        let dev = unused_device();
        let ledger = LEDGER.device(dev).unwrap();
        ledger.force(64 * MIB);
        let (handle, va) = (dev as u64 + 0x9000, ((dev as u64 + 1) << 40) + (1 << 36));
        assert_eq!(
            mem_map(|| CUDA_SUCCESS, va, 64 << 20, 0, handle, 0),
            CUDA_SUCCESS
        );
        assert!(!MAPPINGS.lock().contains_key(&va));
        mem_unmap(|| CUDA_SUCCESS, va, 64 << 20);
        mem_release(|| CUDA_SUCCESS, handle);
        assert_eq!(ledger.snapshot().charged, 64 * MIB);
    }
}
