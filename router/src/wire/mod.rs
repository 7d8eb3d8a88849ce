//! Pure codecs for Weave Net 2.8's wire formats. No I/O, no clocks, no unsafe.
//!
//! - [`gob`]: the subset of Go's gob encoding the mesh uses.
//! - [`mesh`]: the TCP control protocol: protocol header, v2 framing, feature map, messages,
//!   gossip envelopes and the topology payload.
//! - [`digest`]: the topology digest channel between weave-routers (summaries, digests,
//!   requests), which replaces Weave's periodic full-table gossip where both ends offer it.
//! - [`fastdp`]: the fast datapath's VXLAN framing (VNI from both short ids) and heartbeats.
//! - [`ipam`]: the `IPallocation` channel's payloads (nicknames, Paxos claims, ring, space
//!   requests).

pub mod digest;
pub mod eth;
pub mod fastdp;
pub mod gob;
pub mod icmp;
pub mod ipam;
pub mod mesh;
pub mod sleeve;
pub mod vnet;
