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
//! - per-process figures through NVML, as nvidia-smi would show them;
//! - streams and stream capture, with the driver's rules for "potentially unsafe" calls made while a
//!   capture is open (`capture.rs`); graphs with allocation nodes and the per-device graph memory pool
//!   behind them (`graph.rs`); context limits, of which the stack takes memory at once and the malloc
//!   heap at the first kernel that uses it (`limits.rs`), as measured on an H200 with driver 580
//!   (`docs/probe-graph-limits-h200.txt`).
//!
//! Test hooks: `fakecuda_calls(name)` counts calls per entry point, `fakecuda_symbol(name)` returns the
//! fake's own address of an export, `fakecuda_device_used(dev)` what the device holds,
//! `fakecuda_hidden_alloc(dev, bytes)` takes memory with no allocation call, `fakecuda_write` /
//! `fakecuda_read` keep a word of content per allocation (which a checkpoint must keep), and
//! `fakecuda_malloc_kernel()` / `fakecuda_local_kernel(bytes)` fake kernels whose launch grows the malloc
//! heap or the stack, as real kernels that call malloc or use much local memory do.
//!
//! The files, by area: state.rs (the one state and its lock), results.rs (CUresult codes), config.rs
//! (every `FAKECUDA_*` variable), devices.rs (devices and contexts), memory.rs (linear memory), pools.rs
//! (stream-ordered allocation), vmm.rs (virtual memory management), arrays.rs, capture.rs, graph.rs,
//! limits.rs, nvml.rs, shared.rs (the shared-device directory, `FAKECUDA_SHARED`), checkpoint.rs (the
//! checkpoint API), lookup.rs (`cuGetProcAddress`) with table.rs, and test_hooks.rs.
//!
//! ## Pointers: the caller's contract
//!
//! Every pointer an entry point takes is its caller's (a C test client, or vramcap on its behalf), and
//! the CUDA and NVML documentation binds the caller to pass, for each one, memory fit for what that call
//! does with it: an out-parameter valid for a write of one value of its type, or null where the call
//! allows it (`out` answers a null one with CUDA_ERROR_INVALID_VALUE); an input struct readable in the
//! ABI's layout; an array readable for the count passed beside it; a name a NUL-terminated string. The
//! fake checks what the driver checks (null, mostly) and relies on the rest, as the driver does. This
//! is "the caller's contract" that the `// SAFETY:` comments on such pointers cite: the entry points that
//! use a pointer are `unsafe extern "C"` for it, and a private helper handed one is an `unsafe fn` whose
//! `# Safety` passes the same contract on.
#![allow(non_snake_case, clippy::missing_safety_doc)]

mod arrays;
mod capture;
mod checkpoint;
mod config;
mod devices;
mod graph;
mod limits;
mod lookup;
mod memory;
mod nvml;
mod pools;
mod results;
mod shared;
mod state;
mod table;
mod test_hooks;
mod vmm;

pub use arrays::*;
pub use capture::*;
pub use checkpoint::*;
pub use devices::*;
pub use graph::*;
pub use limits::*;
pub use lookup::*;
pub use memory::*;
pub use nvml::*;
pub use pools::*;
pub use results::*;
pub use state::*;
pub use test_hooks::*;
pub use vmm::*;
