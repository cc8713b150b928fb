//! libvramcap.so: loaded with `LD_PRELOAD`, it intercepts every CUDA driver call that takes or gives back
//! device memory, counts what the driver really holds per device, and refuses with
//! `CUDA_ERROR_OUT_OF_MEMORY` the allocation that would cross the cap.
//!
//! This crate holds the hooks only; configuration, sizes, the ledger and the charge model live in the core
//! crate (`vramcap`). Layout:
//! - [`entry_points`]: the one table of wrapped functions, from which the exports, `dlsym` answers and
//!   `cuGetProcAddress` answers all follow;
//! - [`dlsym`]: our `dlsym` trampoline; [`real`]: glibc's `dlsym` and the real driver;
//! - [`state`]: start-up phases and devices; [`enforce`]: the cap check; [`guard`]: re-entry and panics;
//! - [`hooks`]: one module per family of entry points; [`driver`]: driver calls for our own bookkeeping;
//! - [`overhead`]: the context's real footprint, from NVML, and the background thread;
//! - [`publish`]: this process's slot in the shared segment.
//!
//! `unsafe` lives at the FFI edge: the generated shims, the `dlsym` trampoline, the resolver, and the
//! reads and writes of the caller's out-parameters in `enforce`.

// Driver handles (streams, pools, arrays, NVML devices) are opaque pointers that hooks pass on to the
// driver and never dereference, which this lint cannot tell.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

pub mod cuda;
pub mod dlsym;
pub mod driver;
pub mod enforce;
pub mod entry_points;
pub mod fork;
pub mod guard;
pub mod hooks;
pub mod overhead;
pub mod pressure;
pub mod publish;
pub mod real;
pub mod registry;
pub mod state;
