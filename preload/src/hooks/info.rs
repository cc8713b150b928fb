//! Memory information shows the cap: `cuMemGetInfo_v2`, `cuDeviceTotalMem_v2`, `nvmlDeviceGetMemoryInfo`
//! and `_v2`. Total is the cap, free is what the cap leaves (never more than the device really has free).
//! Without a cap they tell the driver's truth.
//! <https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__MEM.html>,
//! <https://docs.nvidia.com/deploy/nvml-api/group__nvmlDeviceQueries.html>

use crate::cuda::*;
use crate::devices;
use crate::enforce::{read_out, write_out};
use core_lib::ledger::DeviceUsage;
use core_lib::lock::Lock;
use std::ffi::{c_char, c_void, CStr};

fn capped_usage(dev: CUdevice) -> Option<DeviceUsage> {
    // Pools trim themselves at synchronisation points we do not hook: re-read them before answering.
    crate::registry::pools::refresh(dev);
    crate::registry::graphs::refresh(dev);
    let usage = devices::ledger(dev)?.snapshot();
    usage.cap.is_some().then_some(usage)
}

/// (free, total) as the capped process sees them.
fn capped(usage: &DeviceUsage, real_free: u64) -> (u64, u64) {
    let cap = usage.cap.unwrap_or(u64::MAX);
    (usage.headroom().unwrap_or(real_free).min(real_free), cap)
}

pub fn mem_get_info(
    real: unsafe extern "C" fn(*mut usize, *mut usize) -> CUresult,
    free: *mut usize,
    total: *mut usize,
) -> CUresult {
    // SAFETY: the caller's own call, passed on.
    let r = unsafe { real(free, total) };
    if r == CUDA_SUCCESS {
        if let Some(usage) = devices::current().ok().and_then(capped_usage) {
            let (f, t) = capped(&usage, read_out(free).unwrap_or(0) as u64);
            write_out(free, f as usize);
            write_out(total, t as usize);
        }
    }
    r
}

pub fn device_total_mem(
    real: unsafe extern "C" fn(*mut usize, CUdevice) -> CUresult,
    bytes: *mut usize,
    dev: CUdevice,
) -> CUresult {
    // SAFETY: the caller's own call, passed on.
    let r = unsafe { real(bytes, dev) };
    if r == CUDA_SUCCESS {
        if let Some(cap) = capped_usage(dev).and_then(|u| u.cap) {
            write_out(bytes, cap as usize);
        }
    }
    r
}

type GetUuid = unsafe extern "C" fn(nvmlDevice_t, *mut c_char, u32) -> nvmlReturn_t;

/// NVML device handles and the CUDA ordinals they were matched to.
static KNOWN: Lock<Vec<(usize, CUdevice)>> = Lock::new(Vec::new());

/// The CUDA ordinal of an NVML device, matched by UUID; remembered per handle.
fn nvml_ordinal(device: nvmlDevice_t) -> Option<CUdevice> {
    if let Some(&(_, o)) = KNOWN.lock().iter().find(|(h, _)| *h == device as usize) {
        return Some(o);
    }
    let devices = devices::get()?;
    let f = crate::real::lookup(crate::real::nvml_handle(), c"nvmlDeviceGetUUID");
    if f.is_null() {
        return None;
    }
    // SAFETY: nvmlDeviceGetUUID's prototype is GetUuid.
    let get_uuid = unsafe { std::mem::transmute::<*mut c_void, GetUuid>(f) };
    let mut buf = [0 as c_char; 96];
    // SAFETY: writes a NUL-terminated string of at most buf.len() bytes.
    if unsafe { get_uuid(device, buf.as_mut_ptr(), buf.len() as u32) } != NVML_SUCCESS {
        return None;
    }
    // SAFETY: NVML NUL-terminates within the buffer on success.
    let uuid = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
    let ordinal = devices.ordinal_of_uuid(&uuid)?;
    KNOWN.lock().push((device as usize, ordinal));
    Some(ordinal)
}

pub fn nvml_memory_info(
    real: unsafe extern "C" fn(nvmlDevice_t, *mut nvmlMemory_t) -> nvmlReturn_t,
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_t,
) -> nvmlReturn_t {
    // SAFETY: the caller's own call, passed on.
    let r = unsafe { real(device, memory) };
    if r == NVML_SUCCESS {
        if let (Some(usage), Some(m)) = (
            nvml_ordinal(device).and_then(capped_usage),
            read_out(memory),
        ) {
            let (free, total) = capped(&usage, m.free);
            write_out(
                memory,
                nvmlMemory_t {
                    total,
                    free,
                    used: usage.charged,
                },
            );
        }
    }
    r
}

pub fn nvml_memory_info_v2(
    real: unsafe extern "C" fn(nvmlDevice_t, *mut nvmlMemory_v2_t) -> nvmlReturn_t,
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_v2_t,
) -> nvmlReturn_t {
    // SAFETY: the caller's own call, passed on.
    let r = unsafe { real(device, memory) };
    if r == NVML_SUCCESS {
        if let (Some(usage), Some(m)) = (
            nvml_ordinal(device).and_then(capped_usage),
            read_out(memory),
        ) {
            let (free, total) = capped(&usage, m.free);
            write_out(
                memory,
                nvmlMemory_v2_t {
                    total,
                    free,
                    used: usage.charged,
                    reserved: 0,
                    ..m
                },
            );
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
