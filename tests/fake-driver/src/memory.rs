//! Linear memory: cuMemAlloc and its kin with the real driver's rounding (whole 2 MiB pages, and smaller
//! allocations packed into shared pages), cuMemFree for every kind of allocation (its own pages, a packed
//! slot, a pool's memory, a graph allocation that outlived its graph), cuMemGetInfo, the device address
//! space the other areas take addresses from (`va`), and the bench mode's lock-free allocator.

use crate::config::bench_mode;
use crate::results::{CUresult, INVALID_CONTEXT, INVALID_VALUE, NOT_SUPPORTED, OK};
use crate::state::{call, fake, out, Fake};
use std::ffi::c_uint;

/// The driver's page: what an allocation of 2 MiB or more is rounded up to, and a packed page's size.
pub(crate) const PAGE: u64 = 2 << 20;
pub(crate) const MIB: u64 = 1 << 20;

/// What an allocation's memory is part of, and so what freeing it gives back.
#[derive(Clone, Copy)]
pub(crate) enum Backing {
    /// Whole pages of its own.
    Own(u64),
    /// Inside a shared 2 MiB page, which is given back when nothing in it is live.
    Packed,
    /// A stream-ordered pool's (pools.rs), which keeps the memory when it is freed.
    Pool(usize),
}

#[derive(Clone, Copy)]
pub(crate) struct Alloc {
    pub(crate) dev: usize,
    pub(crate) kind: Backing,
    pub(crate) size: u64,
}

impl Fake {
    /// A fresh device address for `size` bytes, with a page of room after it.
    pub(crate) fn va(&mut self, size: u64) -> u64 {
        let va = self.next_va;
        self.next_va += size.max(1).div_ceil(PAGE) * PAGE + PAGE;
        va
    }

    /// A cuMemAlloc-style allocation with the real driver's rounding: 2 MiB pages, and smaller
    /// allocations packed (512-byte aligned) into shared 2 MiB pages, a page being taken from the device
    /// while anything in it is live.
    pub(crate) fn alloc(&mut self, dev: usize, size: u64) -> Result<u64, CUresult> {
        if size == 0 {
            return Err(INVALID_VALUE);
        }
        if size >= PAGE {
            let charge = size.div_ceil(PAGE) * PAGE;
            self.take(dev, charge)?;
            let va = self.va(size);
            self.allocs.insert(
                va,
                Alloc {
                    dev,
                    kind: Backing::Own(charge),
                    size,
                },
            );
            return Ok(va);
        }
        let slot = size.div_ceil(512) * 512;
        let d = &self.devices[dev];
        let (va, new_page) = if d.small_cursor != 0 && d.small_cursor + slot <= d.small_end {
            (d.small_cursor, false)
        } else {
            (self.next_small_page, true)
        };
        let page = va / PAGE * PAGE;
        if !self.page_users.contains_key(&page) {
            self.take(dev, PAGE)?;
        }
        if new_page {
            self.next_small_page += PAGE;
            self.devices[dev].small_end = va + PAGE;
        }
        self.devices[dev].small_cursor = va + slot;
        *self.page_users.entry(page).or_default() += 1;
        self.allocs.insert(
            va,
            Alloc {
                dev,
                kind: Backing::Packed,
                size,
            },
        );
        Ok(va)
    }

    pub(crate) fn free(&mut self, ptr: u64) -> CUresult {
        // A graph allocation that outlived its graph goes back to the graph pool, not to the device.
        if crate::graph::free_live(self, ptr) {
            return OK;
        }
        let Some(a) = self.allocs.remove(&ptr) else {
            return INVALID_VALUE;
        };
        self.contents.remove(&ptr);
        match a.kind {
            Backing::Own(charge) => self.give(a.dev, charge),
            Backing::Packed => {
                let page = ptr / PAGE * PAGE;
                let users = self.page_users.entry(page).or_default();
                *users = users.saturating_sub(1);
                if *users == 0 {
                    self.page_users.remove(&page);
                    self.give(a.dev, PAGE);
                }
            }
            Backing::Pool(p) => {
                if let Some(pool) = self.pools.get_mut(&p) {
                    pool.used = pool.used.saturating_sub(a.size.div_ceil(PAGE) * PAGE);
                }
            }
        }
        OK
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    call("cuMemGetInfo_v2", |s| {
        let Some(d) = s.current_dev() else {
            return INVALID_CONTEXT;
        };
        // SAFETY: `free` and `total` are the caller's out-parameters (the caller's contract).
        unsafe {
            out(
                free,
                s.total.saturating_sub(s.device_used(s.physical[d])) as usize,
            );
            out(total, s.total as usize)
        }
    })
}

/// An allocation on the current context's device, its address written to `dptr`.
///
/// # Safety
/// `dptr` is null or valid for a write: the caller's out-parameter.
unsafe fn alloc_current(name: &str, dptr: *mut u64, size: u64) -> CUresult {
    call(name, |s| {
        if let Some(e) = crate::capture::prohibited(s, None) {
            return e;
        }
        if dptr.is_null() {
            return INVALID_VALUE;
        }
        let Some(d) = s.current_dev() else {
            return INVALID_CONTEXT;
        };
        match s.alloc(d, size) {
            // SAFETY: `dptr` is null or writable (this function's contract).
            Ok(va) => unsafe { out(dptr, va) },
            Err(e) => e,
        }
    })
}

/// Bench mode's allocator: each thread takes addresses from a 1 GiB range of its own, as a stack, so a
/// freed block is handed out again at once, as the real driver reuses a freed block of the same size.
static BENCH_VA: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0x7e00_0000_0000);

thread_local! {
    /// (base of this thread's range, bytes in use from it).
    static BENCH_STACK: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

fn bench_alloc(size: u64) -> u64 {
    BENCH_STACK.with(|c| {
        let (mut base, top) = c.get();
        if base == 0 {
            base = BENCH_VA.fetch_add(1 << 30, std::sync::atomic::Ordering::Relaxed);
        }
        c.set((base, top + size.div_ceil(512) * 512));
        base + top
    })
}

fn bench_free(ptr: u64) {
    BENCH_STACK.with(|c| {
        let (base, top) = c.get();
        if ptr >= base && ptr < base + top {
            c.set((base, ptr - base));
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut u64, size: usize) -> CUresult {
    if bench_mode() {
        // SAFETY: `dptr` is the caller's out-parameter (the caller's contract).
        return unsafe { out(dptr, bench_alloc(size as u64)) };
    }
    // SAFETY: `dptr` is the caller's out-parameter (the caller's contract).
    unsafe { alloc_current("cuMemAlloc_v2", dptr, size as u64) }
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc(_dptr: *mut u32, _size: c_uint) -> CUresult {
    fake().count("cuMemAlloc");
    NOT_SUPPORTED
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocPitch(
    _d: *mut u32,
    _p: *mut c_uint,
    _w: c_uint,
    _h: c_uint,
    _e: c_uint,
) -> CUresult {
    fake().count("cuMemAllocPitch");
    NOT_SUPPORTED
}

/// Pitch alignment of the fake device.
pub(crate) const PITCH: u64 = 512;

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocPitch_v2(
    dptr: *mut u64,
    pitch: *mut usize,
    width: usize,
    height: usize,
    _elem: c_uint,
) -> CUresult {
    let p = (width as u64).div_ceil(PITCH) * PITCH;
    // SAFETY: `dptr` is the caller's out-parameter (the caller's contract).
    let r = unsafe { alloc_current("cuMemAllocPitch_v2", dptr, p * height as u64) };
    if r == OK {
        // SAFETY: `pitch` is the caller's out-parameter (the caller's contract).
        unsafe { out(pitch, p as usize) };
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocManaged(
    dptr: *mut u64,
    size: usize,
    _flags: c_uint,
) -> CUresult {
    // SAFETY: `dptr` is the caller's out-parameter (the caller's contract).
    unsafe { alloc_current("cuMemAllocManaged", dptr, size as u64) }
}

#[no_mangle]
pub extern "C" fn cuMemFree_v2(ptr: u64) -> CUresult {
    if bench_mode() {
        bench_free(ptr);
        return OK;
    }
    call("cuMemFree_v2", |s| {
        if let Some(e) = crate::capture::prohibited(s, None) {
            return e;
        }
        s.free(ptr)
    })
}
