//! Hook bodies: safe Rust called from the generated shims in `entry_points`. Each gets the caller's call,
//! passed on unchanged to the real function, as its first argument (`pass`), then the caller's arguments
//! as safe values (`crate::args`: an out-parameter is an `Out<T>`, an in-parameter an `Option<&T>`).

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
