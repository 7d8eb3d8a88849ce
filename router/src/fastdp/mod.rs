//! The fast datapath: the kernel carries unicast between two peers when the tunnel between
//! them works, and the sleeve carries the rest.
//!
//! - [`health`]: per-connection heartbeats through the tunnel and the decision, with its
//!   reason, whether a peer is on the fast datapath or the sleeve (pure).

pub mod health;
