//! Registries: what each pointer and handle was charged, so that a free gives back exactly that.
//!
//! - [`addr_map`]: device pointers, lock-free, for the hot path;
//! - [`tracker`]: handles (a locked map, for the rarer kinds).

pub mod addr_map;
pub mod tracker;
