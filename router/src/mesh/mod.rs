//! The sans-IO control plane: peers, topology gossip, routes, the connection maker and the
//! per-connection handshake. Time comes in as `now`, randomness as a seed; effects go out
//! as [`Command`]s the shell executes.

pub mod maker;
pub mod recent;
pub mod router;
pub mod routes;
pub mod rtt;
pub mod sleeve;
pub mod status;
pub mod topology;

pub use maker::DirectPeer;
pub use router::{
    ChannelEvent, Command, ConnKey, Encryption, Event, FastdpPath, GossipError, Mesh, MeshConfig,
    SleeveCrypto, SleevePeer, AEAD_FEATURE, DIGEST_FEATURE, SPREAD_FEATURE,
};
