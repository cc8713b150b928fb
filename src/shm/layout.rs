//! The shared segment's layout: a versioned header and fixed-size slots, `#[repr(C)]` so that C readers
//! (`include/vramcap.h`, generated from this file by cbindgen) see the same bytes.
//!
//! Nobody maps the file: every access is a `pread` or `pwrite` of whole parts (see `segment`), so a file
//! that someone truncates, grows or replaces can make a read come back short or wrong, never fault. The
//! types here are plain so the C view stays plain; a C reader should read the same way.

use crate::accounting::figures::DeviceFigures;

/// "VRAMCAP1", little-endian.
pub const VRAMCAP_MAGIC: u64 = 0x3150_4143_4d41_5256;
pub const VRAMCAP_VERSION: u32 = 3;
pub const VRAMCAP_SLOTS: u32 = 1024;
/// Devices one slot describes (a process that sees more has the rest uncounted here).
pub const VRAMCAP_SLOT_DEVICES: usize = 8;
pub const VRAMCAP_NAME_LEN: usize = 64;
pub const VRAMCAP_UNLOAD_LEN: usize = 256;

/// Slot states (informative: the slot's lock decides who holds it).
pub const VRAMCAP_SLOT_FREE: u32 = 0;
pub const VRAMCAP_SLOT_LIVE: u32 = 2;

/// Slot flags.
pub const VRAMCAP_FLAG_PROTECTED: u32 = 1;
/// The unloader may suspend this worker (move its device memory to host) when its hook, if any, does
/// not free memory in time (`vramcap-run --on-pressure suspend`).
pub const VRAMCAP_FLAG_SUSPENDABLE: u32 = 2;

/// How the unloader asks a worker to give its memory back (`unload_kind`; `unload` holds the detail).
pub const VRAMCAP_UNLOAD_NONE: u32 = 0;
/// HTTP POST to the URL in `unload`.
pub const VRAMCAP_UNLOAD_URL: u32 = 1;
/// The signal named in `unload` (`USR1`, `SIGTERM`, `10`).
pub const VRAMCAP_UNLOAD_SIGNAL: u32 = 2;
/// The shell command in `unload`.
pub const VRAMCAP_UNLOAD_CMD: u32 = 3;

/// The unloader's answers to a request (`answer`).
pub const VRAMCAP_ANSWER_NONE: u32 = 0;
/// Memory was freed: retry the allocation.
pub const VRAMCAP_ANSWER_FREED: u32 = 1;
/// Not enough can be freed for this request: fail now.
pub const VRAMCAP_ANSWER_CANNOT: u32 = 2;

/// The segment's first bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct VramcapHeader {
    /// [`VRAMCAP_MAGIC`], written last by the creator.
    pub magic: u64,
    pub version: u32,
    pub header_size: u32,
    pub slot_size: u32,
    pub slot_count: u32,
    pub reserved: [u64; 5],
}

/// One device as one process sees it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct VramcapDevice {
    /// The GPU's 16-byte UUID (nvidia-smi prints it as GPU-xxxxxxxx-…); all zero for an unused entry.
    pub uuid: [u8; 16],
    /// Bytes the driver holds for this process here (context included).
    pub charged: u64,
    /// Bytes the process asked for.
    pub requested: u64,
    /// The cap, or `u64::MAX` for none.
    pub cap: u64,
    pub peak: u64,
    /// The context's share of `charged`.
    pub context: u64,
    pub allocations: u64,
    pub refusals: u64,
    pub last_refused_bytes: u64,
    pub last_refused_unix_ms: u64,
    pub reserved: u64,
}

impl VramcapDevice {
    /// The entry for the device with this UUID holding these figures (no cap: `u64::MAX`).
    pub fn new(uuid: [u8; 16], f: &DeviceFigures) -> VramcapDevice {
        VramcapDevice {
            uuid,
            charged: f.charged,
            requested: f.requested,
            cap: f.cap.unwrap_or(u64::MAX),
            peak: f.peak,
            context: f.context,
            allocations: f.allocations,
            refusals: f.refusals,
            last_refused_bytes: f.last_refused_bytes,
            last_refused_unix_ms: f.last_refused_unix_ms,
            reserved: 0,
        }
    }

    /// The figures this entry carries.
    pub fn figures(&self) -> DeviceFigures {
        DeviceFigures {
            charged: self.charged,
            requested: self.requested,
            cap: (self.cap != u64::MAX).then_some(self.cap),
            peak: self.peak,
            context: self.context,
            allocations: self.allocations,
            refusals: self.refusals,
            last_refused_bytes: self.last_refused_bytes,
            last_refused_unix_ms: self.last_refused_unix_ms,
        }
    }
}

/// One capped process: three parts, each with one writer, each written whole by one `pwrite` and
/// checked by a sum over it, so a reader that copies a part while it is rewritten (or reads a forged
/// one) sees a sum that does not match and tries again or skips it.
///
/// A slot belongs to the process that holds a POSIX write lock on its bytes (`fcntl(F_SETLK)`): the
/// kernel drops the lock when the process exits or execs, and tells readers (`F_GETLK`) which PID holds
/// it, so a slot whose `pid` is not its lock holder's is no process's and is never shown.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct VramcapSlot {
    // The owner's part, rewritten by the process whenever its figures move.
    /// [`vramcap_check`] of the owner's part (`check` itself read as zero).
    pub check: u64,
    /// [`VRAMCAP_SLOT_LIVE`] while held, [`VRAMCAP_SLOT_FREE`] once released (the lock decides).
    pub state: u32,
    pub pid: u32,
    /// The PID in the outermost namespace visible to the process (NVML reports host PIDs); 0 if the same.
    pub host_pid: u32,
    pub uid: u32,
    /// Process start, in clock ticks since boot (`/proc/PID/stat` field 22): tells a reused PID apart.
    pub start_time: u64,
    pub priority: i32,
    /// [`VRAMCAP_FLAG_PROTECTED`], …
    pub flags: u32,
    /// How to ask the process to unload: [`VRAMCAP_UNLOAD_NONE`], [`VRAMCAP_UNLOAD_URL`], …
    pub unload_kind: u32,
    /// How to tell it that it may load again, after an unload: the same kinds.
    pub reload_kind: u32,
    pub updated_unix_ms: u64,
    /// NUL-padded.
    pub name: [u8; VRAMCAP_NAME_LEN],
    /// NUL-padded URL, signal name or command.
    pub unload: [u8; VRAMCAP_UNLOAD_LEN],
    /// NUL-padded URL, signal name or command.
    pub reload: [u8; VRAMCAP_UNLOAD_LEN],
    pub devices: [VramcapDevice; VRAMCAP_SLOT_DEVICES],
    // The request part, written by the process: the pressure handshake. It writes the request's device
    // and bytes with the next `request_seq`; the unloader acts, then writes `answer` with `answer_seq` set
    // to that `request_seq`. A request is pending while the two differ.
    pub request_check: u64,
    pub request_seq: u32,
    pub reserved_request: u32,
    pub request_uuid: [u8; 16],
    pub request_bytes: u64,
    pub request_unix_ms: u64,
    // The answer part, written by the unloader only.
    pub answer_check: u64,
    pub answer_seq: u32,
    /// [`VRAMCAP_ANSWER_FREED`] or [`VRAMCAP_ANSWER_CANNOT`].
    pub answer: u32,
    /// When the unloader suspended this process (its device memory is in host memory); 0 while running.
    /// Written by the unloader, not by the process (which cannot run CUDA calls while suspended).
    pub suspended_unix_ms: u64,
    /// Bytes the suspension moved to host memory.
    pub suspended_bytes: u64,
    /// When the unloader asked this process to unload (it may load again, see `reload`); 0 otherwise.
    pub unloaded_unix_ms: u64,
    /// What it held, per device, when it was asked (summed): what it will want back.
    pub unloaded_bytes: u64,
    /// How often the unloader asked it to unload, and to reload (counted by the unloader).
    pub unloads: u32,
    pub reloads: u32,
    /// Room for later fields without a new layout version.
    pub reserved: [u64; 4],
}

/// Where the parts of a slot begin (the owner's part at 0).
pub const VRAMCAP_REQUEST_PART: usize = std::mem::offset_of!(VramcapSlot, request_check);
pub const VRAMCAP_ANSWER_PART: usize = std::mem::offset_of!(VramcapSlot, answer_check);

/// The sum that checks one part of a slot: FNV-1a (64-bit) over the part's bytes after its first 8 (the
/// check field). It catches torn copies, not forgeries: anyone who may write the file may write both.
pub const fn vramcap_check(part: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 8;
    while i < part.len() {
        h ^= part[i] as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h
}

const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    assert!(size_of::<VramcapHeader>() == 64);
    assert!(size_of::<VramcapDevice>() == 96);
    assert!(offset_of!(VramcapSlot, start_time) == 24);
    assert!(offset_of!(VramcapSlot, name) == 56);
    assert!(offset_of!(VramcapSlot, devices) == 632);
    assert!(VRAMCAP_REQUEST_PART == 632 + 8 * 96);
    assert!(offset_of!(VramcapSlot, request_bytes) == 1432);
    assert!(VRAMCAP_ANSWER_PART == 1448);
    assert!(size_of::<VramcapSlot>() == 1536);
    assert!(align_of::<VramcapSlot>() == 8);
};
