//! Hook bodies: ordinary Rust called from the generated shims in `entry_points`, each with the real
//! function as its first argument.

pub mod alloc;
pub mod array;
pub mod context;
pub mod info;
pub mod init;
pub mod pool;
pub mod proc_address;
pub mod vmm;

use core_lib::charge::Charge;
use core_lib::pages::PageSet;
use core_lib::tracker::Tracker;

/// How a device pointer's memory is charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// Its own charge (`cuMemAlloc`, managed, pitch); `Packed` ones are charged through [`PAGES`].
    Own(Charge),
    /// Part of a stream-ordered pool, which is charged as a whole.
    Pool(usize),
}

#[derive(Debug, Clone, Copy)]
pub struct PtrRecord {
    pub dev: i32,
    pub backing: Backing,
    pub requested: u64,
}

/// Every device pointer we charged, by address.
pub static PTRS: Tracker<PtrRecord> = Tracker::new();

/// The shared pages that hold live packed allocations.
pub static PAGES: PageSet = PageSet::new();
