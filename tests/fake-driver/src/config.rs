//! The fake's configuration: every `FAKECUDA_*` variable it reads, in one place. Sizes take a `K`, `M`
//! or `G` suffix; a value that does not parse reads as the default.
//!
//! | variable | what it sets | default |
//! | --- | --- | --- |
//! | `FAKECUDA_DEVICES` | physical devices on the machine, 1 to 8 | 1 |
//! | `FAKECUDA_MEM` | memory per device | 4 GiB |
//! | `FAKECUDA_CONTEXT_BYTES` | what a context costs | 300 MiB |
//! | `FAKECUDA_POOL_STEP` | how much a stream-ordered pool grows at a time, at least a page | 2 MiB |
//! | `FAKECUDA_SMS` | SMs per device, which the stack limit is taken for | 132 |
//! | `FAKECUDA_BENCH=1` | answers without bookkeeping, for benchmarks of the hooks | off |
//! | `FAKECUDA_SHARED=DIR` | a device shared with other processes through `DIR` (shared.rs) | none |
//! | `FAKECUDA_NO_CHECKPOINT` | no checkpoint API, as a driver without it | unset |
//! | `FAKECUDA_CHECKPOINT_FAIL` | the checkpoint step fails | unset |
//!
//! The sizes are read once, when the state is made; `CUDA_VISIBLE_DEVICES` is the real driver's, read in
//! devices.rs.

use crate::memory::{MIB, PAGE};
use std::path::PathBuf;
use std::sync::OnceLock;

pub(crate) fn env_bytes(var: &str, default: u64) -> u64 {
    let Ok(v) = std::env::var(var) else {
        return default;
    };
    let v = v.trim();
    let (num, mult) = match v.chars().last() {
        Some('K') => (&v[..v.len() - 1], 1 << 10),
        Some('M') => (&v[..v.len() - 1], 1 << 20),
        Some('G') => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    num.parse::<u64>().map(|n| n * mult).unwrap_or(default)
}

/// `FAKECUDA_DEVICES`: the physical devices on the machine (what NVML lists).
pub(crate) fn machine_devices() -> usize {
    env_bytes("FAKECUDA_DEVICES", 1).clamp(1, 8) as usize
}

/// `FAKECUDA_MEM`: each device's memory.
pub(crate) fn device_memory() -> u64 {
    env_bytes("FAKECUDA_MEM", 4 << 30)
}

/// `FAKECUDA_POOL_STEP`: how much a stream-ordered pool grows at a time.
pub(crate) fn pool_step() -> u64 {
    env_bytes("FAKECUDA_POOL_STEP", PAGE).max(PAGE)
}

/// `FAKECUDA_CONTEXT_BYTES`: what a context costs.
pub(crate) fn context_bytes() -> u64 {
    env_bytes("FAKECUDA_CONTEXT_BYTES", 300 * MIB)
}

/// `FAKECUDA_SMS`: the SM count (default 132, an H100/H200 SXM).
pub(crate) fn sms() -> u64 {
    static SMS: OnceLock<u64> = OnceLock::new();
    *SMS.get_or_init(|| env_bytes("FAKECUDA_SMS", 132).clamp(1, 1 << 16))
}

/// `FAKECUDA_BENCH=1`: allocation, free and current-device calls answer at once, without bookkeeping or
/// locks, so that a benchmark of the hooks measures the hooks.
pub(crate) fn bench_mode() -> bool {
    static BENCH: OnceLock<bool> = OnceLock::new();
    *BENCH.get_or_init(|| std::env::var_os("FAKECUDA_BENCH").is_some_and(|v| v == "1"))
}

/// `FAKECUDA_SHARED=DIR`: the directory through which processes share a device (shared.rs).
pub(crate) fn shared_dir() -> Option<&'static PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| std::env::var_os("FAKECUDA_SHARED").map(PathBuf::from))
        .as_ref()
}

/// Whether the checkpoint API is there: it works over `FAKECUDA_SHARED`, and `FAKECUDA_NO_CHECKPOINT`
/// takes it away (CUDA_ERROR_NOT_SUPPORTED, as a driver without it answers).
pub(crate) fn checkpoint_supported() -> bool {
    std::env::var_os("FAKECUDA_NO_CHECKPOINT").is_none()
        && std::env::var_os("FAKECUDA_SHARED").is_some()
}

/// `FAKECUDA_CHECKPOINT_FAIL`: the checkpoint step fails, and the process stays locked.
pub(crate) fn checkpoint_fails() -> bool {
    std::env::var_os("FAKECUDA_CHECKPOINT_FAIL").is_some()
}
