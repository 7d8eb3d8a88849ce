//! weave-perf: the network-namespace testbed that integration tests, the demo and the
//! performance harness of weave-router run on.
#![deny(unsafe_code)]

pub mod cni;
pub mod harness;
pub mod load;
pub mod router;
pub mod testbed;
pub mod transfer;
