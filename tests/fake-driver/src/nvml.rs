//! NVML (`libnvidia-ml.so.1`, the same library): the machine's physical devices (NVML ignores
//! `CUDA_VISIBLE_DEVICES`), their UUIDs and memory, with other processes' use under `FAKECUDA_SHARED`,
//! and this process's own figure, as nvidia-smi would show it.

use crate::devices::fake_uuid_string;
use crate::state::{fake, out};
use std::ffi::{c_char, CStr};

type NvmlReturn = i32;

#[no_mangle]
pub extern "C" fn nvmlInit_v2() -> NvmlReturn {
    0
}

#[no_mangle]
pub extern "C" fn nvmlShutdown() -> NvmlReturn {
    0
}

/// The physical device behind an NVML handle (NVML ignores CUDA_VISIBLE_DEVICES).
fn nvml_dev(handle: usize) -> Option<usize> {
    handle
        .checked_sub(0x6000)
        .filter(|&d| d < fake().machine_devices)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(n: *mut u32) -> NvmlReturn {
    // SAFETY: `n` is the caller's out-parameter (the caller's contract).
    unsafe { out(n, fake().machine_devices as u32) }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(i: u32, h: *mut usize) -> NvmlReturn {
    if (i as usize) < fake().machine_devices {
        // SAFETY: `h` is the caller's out-parameter (the caller's contract).
        unsafe { out(h, 0x6000 + i as usize) }
    } else {
        2
    }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(
    uuid: *const c_char,
    h: *mut usize,
) -> NvmlReturn {
    // SAFETY: `uuid` is the caller's NUL-terminated UUID string, which NVML requires (the caller's
    // contract), read before the call returns.
    let uuid = unsafe { CStr::from_ptr(uuid) }
        .to_string_lossy()
        .to_ascii_lowercase();
    let n = fake().machine_devices;
    match (0..n).find(|&d| fake_uuid_string(d).eq_ignore_ascii_case(&uuid)) {
        // SAFETY: `h` is the caller's out-parameter (the caller's contract).
        Some(d) => unsafe { out(h, 0x6000 + d) },
        None => 6,
    }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUUID(h: usize, buf: *mut c_char, len: u32) -> NvmlReturn {
    let Some(d) = nvml_dev(h) else { return 2 };
    let s = fake_uuid_string(d);
    if s.len() + 1 > len as usize {
        return 7;
    }
    // SAFETY: `buf` is the caller's buffer of `len` bytes (the caller's contract), which holds the string
    // and its NUL (checked above); our own String cannot overlap it.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr().cast(), buf, s.len());
        buf.add(s.len()).write(0);
    }
    0
}

#[repr(C)]
pub struct NvmlMemory {
    total: u64,
    free: u64,
    used: u64,
}

#[repr(C)]
pub struct NvmlMemoryV2 {
    version: u32,
    total: u64,
    reserved: u64,
    free: u64,
    used: u64,
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(h: usize, m: *mut NvmlMemory) -> NvmlReturn {
    let Some(d) = nvml_dev(h) else { return 2 };
    let s = fake();
    let used = s.device_used(d);
    // SAFETY: `m` is the caller's out-parameter, an nvmlMemory_t (the caller's contract).
    unsafe {
        out(
            m,
            NvmlMemory {
                total: s.total,
                free: s.total - used,
                used,
            },
        )
    }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(h: usize, m: *mut NvmlMemoryV2) -> NvmlReturn {
    let Some(d) = nvml_dev(h) else { return 2 };
    let s = fake();
    let used = s.device_used(d);
    // SAFETY: `m` is null or the caller's nvmlMemory_v2_t, readable, with its version set (the caller's
    // contract); `as_ref` makes a null None.
    let version = unsafe { m.as_ref() }.map_or(0, |m| m.version);
    // SAFETY: `m` is the caller's out-parameter, the same nvmlMemory_v2_t (the caller's contract).
    unsafe {
        out(
            m,
            NvmlMemoryV2 {
                version,
                total: s.total,
                reserved: 0,
                free: s.total - used,
                used,
            },
        )
    }
}

#[repr(C)]
pub struct NvmlProcess {
    pid: u32,
    used: u64,
    gpu_instance: u32,
    compute_instance: u32,
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    h: usize,
    count: *mut u32,
    list: *mut NvmlProcess,
) -> NvmlReturn {
    let Some(d) = nvml_dev(h) else { return 2 };
    let s = fake();
    let used = s.own_used(d);
    let n = u32::from(used > 0);
    // SAFETY: `count` is the caller's in/out count, which NVML requires not null (the caller's contract).
    let room = unsafe { *count };
    // SAFETY: the same `count`.
    unsafe { *count = n };
    if n > room {
        return 7;
    }
    if n == 1 {
        let pid = std::process::id();
        // SAFETY: `list` is the caller's array of `room` entries (the caller's contract), and `room` is at
        // least 1 here (n <= room).
        unsafe {
            list.write(NvmlProcess {
                pid,
                used,
                gpu_instance: 0,
                compute_instance: 0,
            })
        };
    }
    0
}
