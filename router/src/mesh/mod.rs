//! The sans-IO control plane: peers, topology gossip, routes, the connection maker and the
//! per-connection handshake. Time comes in as `now`, randomness as a seed; effects go out
//! as [`Command`]s the shell executes.

pub mod maker;
pub mod routes;
pub mod router;
pub mod topology;
pub mod status;

pub use router::{Command, ConnKey, Event, Mesh, MeshConfig};
