//! Devices and contexts: which physical devices the process sees (`CUDA_VISIBLE_DEVICES`), what each
//! holds (`take` and `give`, which every allocating area charges through, and which publish the figure
//! for other processes with `FAKECUDA_SHARED`), their UUIDs, and the contexts on them: primary and
//! created, the calling thread's current one, and a context's cost, taken by the first context on a
//! device and given back, with everything the device held, when the last one goes.

use crate::config::bench_mode;
use crate::results::{CUresult, INVALID_CONTEXT, INVALID_DEVICE, OK, OUT_OF_MEMORY};
use crate::shared;
use crate::state::{call, fake, out, Fake};
use std::cell::Cell;
use std::ffi::{c_uint, c_void};

/// What one device holds for this process, and the contexts on it.
#[derive(Default)]
pub(crate) struct Device {
    pub(crate) used: u64,
    /// Where the next small (under 2 MiB) allocation goes, and the end of its 2 MiB page (memory.rs).
    pub(crate) small_cursor: u64,
    pub(crate) small_end: u64,
    pub(crate) primary_refs: u32,
    pub(crate) contexts: u32,
}

/// The physical devices a process sees, in its ordinal order, as the real driver reads
/// `CUDA_VISIBLE_DEVICES`: indices or `GPU-` UUID prefixes, up to the first entry that names none.
pub(crate) fn visible_devices(machine: usize) -> Vec<usize> {
    let Ok(list) = std::env::var("CUDA_VISIBLE_DEVICES") else {
        return (0..machine).collect();
    };
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim) {
        let found = match item.parse::<usize>() {
            Ok(i) => (i < machine).then_some(i),
            Err(_) => (0..machine).find(|&d| {
                !item.is_empty()
                    && fake_uuid_string(d)
                        .to_ascii_lowercase()
                        .starts_with(&item.to_ascii_lowercase())
            }),
        };
        match found {
            Some(d) if !out.contains(&d) => out.push(d),
            _ => break,
        }
    }
    out
}

fn primary_ctx(dev: usize) -> usize {
    0x1000 + dev
}

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

impl Fake {
    pub(crate) fn current_dev(&self) -> Option<usize> {
        self.contexts.get(&CURRENT.with(|c| c.get())).copied()
    }

    /// Takes `bytes` from the device, or fails with OUT_OF_MEMORY.
    pub(crate) fn take(&mut self, dev: usize, bytes: u64) -> Result<(), CUresult> {
        let others = shared::used_by_others(self.physical[dev]);
        let d = &mut self.devices[dev];
        if others + d.used + bytes > self.total {
            return Err(OUT_OF_MEMORY);
        }
        d.used += bytes;
        shared::publish(self.physical[dev], d.used);
        Ok(())
    }

    pub(crate) fn give(&mut self, dev: usize, bytes: u64) {
        let d = &mut self.devices[dev];
        d.used = d.used.saturating_sub(bytes);
        shared::publish(self.physical[dev], d.used);
    }

    /// The ordinal this process sees physical device `p` as, if it sees it.
    fn ordinal_of(&self, p: usize) -> Option<usize> {
        self.physical.iter().position(|&q| q == p)
    }

    /// What this process holds on physical device `p`.
    pub(crate) fn own_used(&self, p: usize) -> u64 {
        self.ordinal_of(p).map_or(0, |o| self.devices[o].used)
    }

    /// What the whole physical device `p` holds: this process, and with `FAKECUDA_SHARED` every other one.
    pub(crate) fn device_used(&self, p: usize) -> u64 {
        self.own_used(p) + shared::used_by_others(p)
    }

    fn create_context(&mut self, dev: usize) -> Result<(), CUresult> {
        if self.devices[dev].primary_refs == 0 && self.devices[dev].contexts == 0 {
            let bytes = self.context_bytes;
            self.take(dev, bytes)?;
        }
        Ok(())
    }

    fn drop_context(&mut self, dev: usize) {
        let d = &self.devices[dev];
        if d.primary_refs == 0 && d.contexts == 0 {
            // The driver frees everything the device held for this process.
            self.allocs.retain(|_, a| a.dev != dev);
            self.page_users.clear();
            self.devices[dev] = Device::default();
            crate::graph::reset_device(self, dev);
            crate::limits::reset_device(self, dev);
            shared::publish(self.physical[dev], 0);
        }
    }
}

pub(crate) fn dev_ok(s: &Fake, dev: i32) -> Option<usize> {
    usize::try_from(dev).ok().filter(|&d| d < s.devices.len())
}

#[no_mangle]
pub extern "C" fn cuInit(_flags: c_uint) -> CUresult {
    let mut s = fake();
    s.count("cuInit");
    s.initialized = true;
    OK
}

#[no_mangle]
pub unsafe extern "C" fn cuDriverGetVersion(v: *mut i32) -> CUresult {
    // SAFETY: `v` is the caller's out-parameter (the caller's contract).
    unsafe { out(v, 13000) }
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetCount(n: *mut i32) -> CUresult {
    call("cuDeviceGetCount", |s| {
        // SAFETY: `n` is the caller's out-parameter (the caller's contract).
        unsafe { out(n, s.devices.len() as i32) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGet(d: *mut i32, ordinal: i32) -> CUresult {
    call("cuDeviceGet", |s| match dev_ok(s, ordinal) {
        // SAFETY: `d` is the caller's out-parameter (the caller's contract).
        Some(_) => unsafe { out(d, ordinal) },
        None => INVALID_DEVICE,
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid_v2(uuid: *mut [u8; 16], dev: i32) -> CUresult {
    call("cuDeviceGetUuid_v2", |s| match dev_ok(s, dev) {
        // SAFETY: `uuid` is the caller's out-parameter, a CUuuid of 16 bytes (the caller's contract).
        Some(d) => unsafe { out(uuid, fake_uuid(s.physical[d])) },
        None => INVALID_DEVICE,
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid(uuid: *mut [u8; 16], dev: i32) -> CUresult {
    // SAFETY: the same call with the same out-parameter; the caller's contract passes on.
    unsafe { cuDeviceGetUuid_v2(uuid, dev) }
}

/// Device d's UUID: GPU-fa4e0000-0000-0000-0000-0000000000dd.
fn fake_uuid(d: usize) -> [u8; 16] {
    let mut u = [0u8; 16];
    u[0] = 0xfa;
    u[1] = 0x4e;
    u[15] = d as u8;
    u
}

pub(crate) fn fake_uuid_string(d: usize) -> String {
    format!("GPU-fa4e0000-0000-0000-0000-0000000000{d:02x}")
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: i32) -> CUresult {
    call("cuDeviceTotalMem_v2", |s| match dev_ok(s, dev) {
        // SAFETY: `bytes` is the caller's out-parameter (the caller's contract).
        Some(_) => unsafe { out(bytes, s.total as usize) },
        None => INVALID_DEVICE,
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(ctx: *mut usize, dev: i32) -> CUresult {
    call("cuDevicePrimaryCtxRetain", |s| {
        let Some(d) = dev_ok(s, dev) else {
            return INVALID_DEVICE;
        };
        if let Err(e) = s.create_context(d) {
            return e;
        }
        s.devices[d].primary_refs += 1;
        s.contexts.insert(primary_ctx(d), d);
        // SAFETY: `ctx` is the caller's out-parameter (the caller's contract).
        unsafe { out(ctx, primary_ctx(d)) }
    })
}

fn primary_release(name: &str, dev: i32, reset: bool) -> CUresult {
    call(name, |s| {
        let Some(d) = dev_ok(s, dev) else {
            return INVALID_DEVICE;
        };
        let refs = &mut s.devices[d].primary_refs;
        if *refs == 0 && !reset {
            return INVALID_CONTEXT;
        }
        *refs = if reset { 0 } else { *refs - 1 };
        s.drop_context(d);
        OK
    })
}

#[no_mangle]
pub extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: i32) -> CUresult {
    primary_release("cuDevicePrimaryCtxRelease_v2", dev, false)
}

#[no_mangle]
pub extern "C" fn cuDevicePrimaryCtxRelease(dev: i32) -> CUresult {
    primary_release("cuDevicePrimaryCtxRelease", dev, false)
}

#[no_mangle]
pub extern "C" fn cuDevicePrimaryCtxReset_v2(dev: i32) -> CUresult {
    primary_release("cuDevicePrimaryCtxReset_v2", dev, true)
}

#[no_mangle]
pub extern "C" fn cuDevicePrimaryCtxReset(dev: i32) -> CUresult {
    primary_release("cuDevicePrimaryCtxReset", dev, true)
}

/// # Safety
/// `ctx` is null or valid for a write: the caller's out-parameter.
unsafe fn ctx_create(name: &str, ctx: *mut usize, dev: i32) -> CUresult {
    call(name, |s| {
        let Some(d) = dev_ok(s, dev) else {
            return INVALID_DEVICE;
        };
        if let Err(e) = s.create_context(d) {
            return e;
        }
        s.devices[d].contexts += 1;
        let handle = 0x2000 + s.contexts.len() * 16 + d;
        s.contexts.insert(handle, d);
        CURRENT.with(|c| c.set(handle));
        // SAFETY: `ctx` is null or writable (this function's contract).
        unsafe { out(ctx, handle) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxCreate_v2(ctx: *mut usize, _flags: c_uint, dev: i32) -> CUresult {
    // SAFETY: `ctx` is the caller's out-parameter (the caller's contract).
    unsafe { ctx_create("cuCtxCreate_v2", ctx, dev) }
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxCreate(ctx: *mut usize, _flags: c_uint, dev: i32) -> CUresult {
    // SAFETY: `ctx` is the caller's out-parameter (the caller's contract).
    unsafe { ctx_create("cuCtxCreate", ctx, dev) }
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxCreate_v3(
    ctx: *mut usize,
    _p: *mut c_void,
    _n: i32,
    _f: c_uint,
    dev: i32,
) -> CUresult {
    // SAFETY: `ctx` is the caller's out-parameter (the caller's contract); the affinity parameters
    // are not read.
    unsafe { ctx_create("cuCtxCreate_v3", ctx, dev) }
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxCreate_v4(
    ctx: *mut usize,
    _p: *mut c_void,
    _f: c_uint,
    dev: i32,
) -> CUresult {
    // SAFETY: `ctx` is the caller's out-parameter (the caller's contract); the parameters struct is not
    // read.
    unsafe { ctx_create("cuCtxCreate_v4", ctx, dev) }
}

fn ctx_destroy(name: &str, ctx: usize) -> CUresult {
    call(name, |s| {
        if ctx < 0x2000 {
            return INVALID_CONTEXT;
        }
        let Some(d) = s.contexts.remove(&ctx) else {
            return INVALID_CONTEXT;
        };
        s.devices[d].contexts = s.devices[d].contexts.saturating_sub(1);
        s.drop_context(d);
        CURRENT.with(|c| {
            if c.get() == ctx {
                c.set(0)
            }
        });
        OK
    })
}

#[no_mangle]
pub extern "C" fn cuCtxDestroy_v2(ctx: usize) -> CUresult {
    ctx_destroy("cuCtxDestroy_v2", ctx)
}

#[no_mangle]
pub extern "C" fn cuCtxDestroy(ctx: usize) -> CUresult {
    ctx_destroy("cuCtxDestroy", ctx)
}

#[no_mangle]
pub extern "C" fn cuCtxSetCurrent(ctx: usize) -> CUresult {
    call("cuCtxSetCurrent", |s| {
        if ctx != 0 && !s.contexts.contains_key(&ctx) {
            return INVALID_CONTEXT;
        }
        CURRENT.with(|c| c.set(ctx));
        OK
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCurrent(ctx: *mut usize) -> CUresult {
    // SAFETY: `ctx` is the caller's out-parameter (the caller's contract).
    unsafe { out(ctx, CURRENT.with(|c| c.get())) }
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetDevice(dev: *mut i32) -> CUresult {
    if bench_mode() {
        // SAFETY: `dev` is the caller's out-parameter (the caller's contract).
        return unsafe { out(dev, 0) };
    }
    call("cuCtxGetDevice", |s| match s.current_dev() {
        // SAFETY: `dev` is the caller's out-parameter (the caller's contract).
        Some(d) => unsafe { out(dev, d as i32) },
        None => INVALID_CONTEXT,
    })
}

// cuStreamGetDevice, cuStreamSynchronize and cuCtxSynchronize live in capture.rs: capture restricts them.
