//! The fast datapath: the kernel carries unicast between two peers when the tunnel between
//! them works, and the sleeve carries the rest.
//!
//! - [`health`]: per-connection heartbeats through the tunnel and the decision, with its
//!   reason, whether a peer is on the fast datapath or the sleeve (pure).
//! - [`vxlan`]: the Linux VXLAN backend's devices and forwarding entries (rtnetlink).
//! - [`shell`]: the I/O around the mesh: heartbeats in and out, and the task that keeps
//!   the kernel's entries in step with the healthy peers.

pub mod health;
pub mod shell;
pub mod vxlan;
