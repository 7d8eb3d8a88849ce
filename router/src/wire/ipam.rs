//! The `IPallocation` gossip channel's payloads: Weave's IPAM `gossipState` (nicknames, Paxos
//! claims, ring) and the unicast messages (space request, ring update, space request denied).
//!
//! These are value types only; the allocator in [`crate::ipam`] gives them meaning.

use crate::ids::{PeerName, PeerUid};
use crate::ipam::address::{Address, Range};

/// Go's `gossipState`: what a peer broadcasts and gossips on `IPallocation`.
///
/// Maps are kept as lists in wire order (Go's map order is random), so a decoded value
/// re-encodes to the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GossipState {
    /// The sender's clock, Unix seconds (kept by Weave for compatibility only).
    pub now: i64,
    /// Peer name → nickname, for every peer the sender knows of in IPAM.
    pub nicknames: Vec<(PeerName, String)>,
    /// Paxos claims while the sender has no ring. `Some(vec![])` is Weave's empty but
    /// non-nil map (sent by electors), `None` the nil map (sent by observers).
    pub paxos: Option<Vec<(NodeId, NodeClaims)>>,
    /// The sender's ring, once it has one.
    pub ring: Option<RingState>,
}

/// Go's `paxos.NodeID`: a peer for one process lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId {
    /// Peer name.
    pub name: PeerName,
    /// Peer UID.
    pub uid: PeerUid,
}

/// Go's `paxos.ProposalID`. Round 0 is "none" and precedes every other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ProposalId {
    /// Round number, from 1.
    pub round: u64,
    /// Who proposed it.
    pub proposer: NodeId,
}

/// Go's `paxos.AcceptedValue`: the set of peers to seed the ring with, and the proposal it
/// came from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AcceptedValue {
    /// Peer names (unsorted, possibly repeated, as Weave picks them).
    pub value: Vec<PeerName>,
    /// The proposal that first chose this value.
    pub origin: ProposalId,
}

/// Go's `paxos.NodeClaims`: one node's promise and accepted proposal.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeClaims {
    /// The node accepts no proposal below this.
    pub promise: ProposalId,
    /// The proposal it accepted (round 0: none).
    pub accepted: ProposalId,
    /// The value of that proposal.
    pub accepted_val: AcceptedValue,
}

/// Go's `ring.Ring` as gossiped: the range, the sender, the tokens and the seeds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RingState {
    /// First address of the ring.
    pub start: Address,
    /// First address after the ring.
    pub end: Address,
    /// The peer that sent (owns this copy of) the ring.
    pub peer: PeerName,
    /// Tokens, sorted by address.
    pub entries: Vec<Entry>,
    /// The peers the ring was first divided among.
    pub seeds: Vec<PeerName>,
}

/// Go's `ring.entry`: from `token` up to the next token, `peer` owns the addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Entry {
    /// First address of the range.
    pub token: Address,
    /// Owner.
    pub peer: PeerName,
    /// Bumped by the owner on every change to this entry.
    pub version: u32,
    /// Free addresses the owner reports in the range.
    pub free: u32,
}

/// A unicast message on `IPallocation`: one kind byte, then gob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unicast {
    /// Kind 0: "give me space in this range" (a gob `address.Range`).
    SpaceRequest(Range),
    /// Kind 1: the sender's state, sent back to a requester (a gob `gossipState`).
    RingUpdate(GossipState),
    /// Kind 2: "I have no space in this range for you" (a gob `address.Range`).
    SpaceRequestDenied(Range),
}
