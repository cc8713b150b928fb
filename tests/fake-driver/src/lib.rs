//! A fake CUDA driver (`libcuda.so.1`) and NVML (`libnvidia-ml.so.1`) over host bookkeeping, for testing
//! vramcap on machines without a GPU.
//!
//! It models what vramcap depends on, as measured on an H100 with driver 580:
//! - device memory with a configurable size (`FAKECUDA_MEM`, default 4 GiB) and device count
//!   (`FAKECUDA_DEVICES`, default 1); a context costs `FAKECUDA_CONTEXT_BYTES` (default 300 MiB);
//! - the driver's rounding: 2 MiB pages, and smaller allocations packed into shared 2 MiB chunks;
//! - stream-ordered pools that keep freed memory reserved until a synchronisation trims them to the
//!   release threshold; VMM handles freed when the last reference and mapping are gone;
//! - `cuGetProcAddress_v2` answering from the table read off the real driver
//!   (`proc-address-table.txt`, a copy of `shared/measurements/driver580-proc-address-table.txt`);
//! - per-process figures through NVML, as nvidia-smi would show them.
//!
//! Test hooks: `fakecuda_calls(name)` counts calls per entry point, `fakecuda_symbol(name)` returns the
//! fake's own address of an export, and `fakecuda_device_used(dev)` what the device holds.
#![allow(non_snake_case, clippy::missing_safety_doc)]

mod state;
mod table;

pub use state::*;
