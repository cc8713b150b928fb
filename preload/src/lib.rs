//! libvramcap.so: loaded with `LD_PRELOAD`, it intercepts every CUDA driver call that takes or gives back
//! device memory, counts what the driver really holds per device, and refuses with
//! `CUDA_ERROR_OUT_OF_MEMORY` the allocation that would cross the cap.
//!
//! This crate holds the hooks only; configuration, sizes, the ledger and the charge model live in the core
//! crate (`vramcap-core`). Its modules form layers, top to bottom; a module calls only those below it (the
//! test `preload/tests/layers.rs` fails on a cycle):
//! 1. the entry table: [`entry_points`] (the one table of wrapped functions, from which the exports, the
//!    `dlsym` answers and the `cuGetProcAddress` answers all follow), [`dlsym`] (our `dlsym` trampoline),
//!    [`startup`] (the configuration read and the driver resolved, once), [`fork`] (the child handler);
//! 2. [`hooks`]: one module per family of entry points;
//! 3. enforcement: [`enforce`] (the cap check), [`pressure`] (the handshake with the unloader);
//! 4. [`background`]: the background thread, publishing this process's slot in the shared segment and
//!    measuring the context's real footprint from NVML;
//! 5. the registries: [`registry`] (pools, graph executables, context limits, device pointers) and
//!    [`devices`] (the devices this process sees, with their caps);
//! 6. the ledger and the driver: [`args`] (the caller's arguments as safe values), [`driver`] (driver calls
//!    for our own bookkeeping), [`called`] (the typed tables of the functions we call but do not wrap, the
//!    driver's and NVML's), [`in_flight`] (the in-flight lock that measurements wait on), [`ledger`],
//!    [`phase`] (start-up phase and configuration), [`guard`] (re-entry and panics), [`real`] (glibc's
//!    `dlsym` and the real driver), [`cuda`] (types).
//!
//! `unsafe` lives at the FFI edge: the generated shims (which turn the caller's raw arguments into safe
//! values, [`args`], and pass the caller's call to the hook as a closure), the `dlsym` trampoline, the
//! resolver, the two typed tables (the entry table and [`called`]) and the calls through them, and the
//! segment's file calls in the core. Hook bodies are safe Rust.

pub mod args;
pub mod background;
pub mod called;
pub mod cuda;
pub mod devices;
pub mod dlsym;
pub mod driver;
pub mod enforce;
pub mod entry_points;
pub mod fork;
pub mod guard;
pub mod hooks;
pub mod in_flight;
pub mod ledger;
pub mod phase;
pub mod pressure;
pub mod real;
pub mod registry;
pub mod startup;
