//! IP address management: every pod gets an address from the cluster range that no other
//! pod holds, with no central server, the way Weave Net does it and on Weave's wire.
//!
//! - [`address`]: addresses, ranges and CIDRs as integers.
//! - [`ring`]: the ring CRDT of tokens that says which peer owns which addresses.
//! - [`space`]: the free and used addresses inside the ranges this peer owns.
//! - [`paxos`]: the single-value Paxos that picks the peers the ring is first divided among.
//! - [`allocator`]: the sans-IO allocator that ties them together: allocations, claims,
//!   space requests and donations, gossip, persistence commands.
//! - [`store`]: the on-disk store (redb) the shell saves the allocator's state in.
//! - [`shell`]: the allocator's I/O side in the daemon: store, HTTP requests, the mesh.

pub mod address;
pub mod allocator;
pub mod paxos;
pub mod ring;
pub mod shell;
pub mod space;
pub mod store;

use std::time::Instant;

use crate::mesh::{ChannelEvent, Mesh};
use allocator::{Allocator, Transmit};

/// The mesh gossip channel IPAM speaks on, as Weave names it.
pub const CHANNEL: &str = "IPallocation";

/// Hands one event of the mesh's registered channels to the allocator; events of other
/// channels are ignored. An error is a message that could not be used, for the log.
pub fn deliver(alloc: &mut Allocator, ev: ChannelEvent, now: Instant) -> Result<(), String> {
    match ev {
        ChannelEvent::Gossip {
            channel,
            src,
            payload,
        } if channel == CHANNEL => alloc
            .handle_gossip(&payload, now)
            .map_err(|e| format!("[allocator]: bad gossip via {src}: {e}")),
        ChannelEvent::Unicast {
            channel,
            src,
            payload,
        } if channel == CHANNEL => alloc
            .handle_unicast(src, &payload, now)
            .map_err(|e| format!("[allocator]: bad message from {src}: {e}")),
        ChannelEvent::Broadcast {
            channel,
            src,
            payload,
        } if channel == CHANNEL => alloc
            .handle_broadcast(src, &payload, now)
            .map_err(|e| format!("[allocator]: bad broadcast from {src}: {e}")),
        ChannelEvent::Gossip { .. }
        | ChannelEvent::Unicast { .. }
        | ChannelEvent::Broadcast { .. } => Ok(()),
        ChannelEvent::NeighbourUp { peer } => {
            alloc.handle_neighbour_up(peer);
            Ok(())
        }
        ChannelEvent::PeerGone { peer } => {
            alloc.handle_peer_gone(peer);
            Ok(())
        }
    }
}

/// Sends what the allocator queued through the mesh. The shell calls it only after the
/// store has durably taken the allocator's operations, so no peer learns of a change a
/// crash could lose. Returns the unicasts that found no route, for the log (the allocator
/// asks again on its next tick).
pub fn transmit(alloc: &mut Allocator, mesh: &mut Mesh, now: Instant) -> Vec<String> {
    let mut failed = Vec::new();
    while let Some(t) = alloc.poll_transmit() {
        match t {
            Transmit::Unicast { dst, payload } => {
                if let Err(e) = mesh.gossip_unicast(CHANNEL, dst, payload) {
                    failed.push(format!("[allocator]: cannot send to {dst}: {e}"));
                }
            }
            Transmit::Broadcast { payload } => mesh.gossip_broadcast(CHANNEL, payload, now),
            Transmit::RelayBroadcast { src, payload } => {
                mesh.relay_broadcast(CHANNEL, src, payload, now);
            }
            Transmit::Gossip { payload } => mesh.gossip(CHANNEL, payload),
            Transmit::GossipTo { peer, payload } => mesh.gossip_to(CHANNEL, peer, payload),
        }
    }
    failed
}
