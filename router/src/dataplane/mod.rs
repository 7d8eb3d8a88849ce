//! The thread-per-core data plane: host plumbing, offload helpers and the I/O engines.

pub mod offload;
pub mod plumbing;
pub mod uring;
