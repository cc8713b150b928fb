//! Hook bodies: ordinary Rust called from the generated shims in `entry_points`, each with the real
//! function as its first argument.

pub mod alloc;
pub mod array;
pub mod capture;
pub mod context;
pub mod graph;
pub mod info;
pub mod init;
pub mod limits;
pub mod pool;
pub mod vmm;
