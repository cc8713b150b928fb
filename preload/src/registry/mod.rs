//! Registries below the cap check: what vramcap knows about driver objects that hold memory outside
//! the allocation calls (graph executables, context limits). The hooks record into them; `enforce` and
//! the background measurement read them. They call only the ledger and `driver`, never up.

pub mod graphs;
pub mod limits;
pub mod pointers;
pub mod pools;
