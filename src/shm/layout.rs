//! The shared segment's layout: a versioned header and fixed-size slots, `#[repr(C)]` so that C readers
//! (`include/vramcap.h`, generated from this file by cbindgen) see the same bytes.
//!
//! Every integer a reader may see change is read and written with atomic operations (see `segment`);
//! the types here are plain so the C view stays plain.

/// "VRAMCAP1", little-endian.
pub const VRAMCAP_MAGIC: u64 = 0x3150_4143_4d41_5256;
pub const VRAMCAP_VERSION: u32 = 2;
pub const VRAMCAP_SLOTS: u32 = 1024;
/// Devices one slot describes (a process that sees more has the rest uncounted here).
pub const VRAMCAP_SLOT_DEVICES: usize = 8;
pub const VRAMCAP_NAME_LEN: usize = 64;
pub const VRAMCAP_UNLOAD_LEN: usize = 256;

/// Slot states.
pub const VRAMCAP_SLOT_FREE: u32 = 0;
pub const VRAMCAP_SLOT_CLAIMING: u32 = 1;
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

/// One capped process.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct VramcapSlot {
    /// [`VRAMCAP_SLOT_FREE`], [`VRAMCAP_SLOT_CLAIMING`] or [`VRAMCAP_SLOT_LIVE`].
    pub state: u32,
    /// Seqlock: odd while the owner writes the figures below.
    pub seq: u32,
    pub pid: u32,
    /// The PID in the outermost namespace visible to the process (NVML reports host PIDs); 0 if the same.
    pub host_pid: u32,
    /// Process start, in clock ticks since boot (`/proc/PID/stat` field 22): tells a reused PID apart.
    pub start_time: u64,
    pub uid: u32,
    pub priority: i32,
    /// [`VRAMCAP_FLAG_PROTECTED`], …
    pub flags: u32,
    /// How to ask the process to unload: [`VRAMCAP_UNLOAD_NONE`], [`VRAMCAP_UNLOAD_URL`], …
    pub unload_kind: u32,
    pub updated_unix_ms: u64,
    /// NUL-padded.
    pub name: [u8; VRAMCAP_NAME_LEN],
    /// NUL-padded URL, signal name or command.
    pub unload: [u8; VRAMCAP_UNLOAD_LEN],
    pub devices: [VramcapDevice; VRAMCAP_SLOT_DEVICES],
    /// The pressure handshake. The process writes the request's device and bytes, then bumps
    /// `request_seq`; the unloader acts, writes `answer`, then sets `answer_seq` to that `request_seq`.
    /// A request is pending while the two differ.
    pub request_seq: u32,
    pub answer_seq: u32,
    pub request_uuid: [u8; 16],
    pub request_bytes: u64,
    pub request_unix_ms: u64,
    /// [`VRAMCAP_ANSWER_FREED`] or [`VRAMCAP_ANSWER_CANNOT`].
    pub answer: u32,
    pub reserved_u32: u32,
    /// When the unloader suspended this process (its device memory is in host memory); 0 while running.
    /// Written by the unloader, not by the process (which cannot run CUDA calls while suspended).
    pub suspended_unix_ms: u64,
    /// Bytes the suspension moved to host memory.
    pub suspended_bytes: u64,
    /// Room for later fields without a new layout version.
    pub reserved: [u64; 6],
}

const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    assert!(size_of::<VramcapHeader>() == 64);
    assert!(size_of::<VramcapDevice>() == 96);
    assert!(offset_of!(VramcapSlot, start_time) == 16);
    assert!(offset_of!(VramcapSlot, name) == 48);
    assert!(offset_of!(VramcapSlot, devices) == 368);
    assert!(offset_of!(VramcapSlot, request_seq) == 368 + 8 * 96);
    assert!(offset_of!(VramcapSlot, request_bytes) == 1160);
    assert!(size_of::<VramcapSlot>() == 1248);
    assert!(align_of::<VramcapSlot>() == 8);
};
