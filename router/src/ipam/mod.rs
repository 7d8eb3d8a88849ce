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

pub mod address;
pub mod allocator;
pub mod paxos;
pub mod ring;
pub mod space;
pub mod store;
