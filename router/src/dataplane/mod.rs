//! The thread-per-core data plane: offload helpers and the I/O engines.

pub mod offload;
pub mod uring;
