//! The thread-per-core data plane: host plumbing, the frame engine, offload helpers and
//! the I/O engines.

pub mod bufsize;
pub mod busypoll;
pub mod engine;
pub mod epoll;
pub mod iouring;
pub mod learn;
pub mod offload;
pub mod plumbing;
pub mod sealed;
pub mod supervise;
pub mod uring;
pub mod worker;
