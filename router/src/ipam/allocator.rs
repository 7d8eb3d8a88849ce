//! The allocator: Weave's IPAM as a sans-IO state machine.
//!
//! It brings together the [`Ring`] (who owns which range, cluster-wide), the [`Space`] (which
//! of our addresses are used) and the per-id records of what is handed out. Inputs are the
//! shell's calls (`allocate`, `claim`, `release`, `take_over`, ...), the gossip the mesh
//! delivers on `IPallocation` (`handle_gossip`, `handle_broadcast`, `handle_unicast`,
//! `handle_neighbour_up`) and `handle_timeout(now)`. Outputs are polled:
//! [`Allocator::poll_transmit`] (gossip to send), [`Allocator::take_store_ops`] (state to
//! persist), [`Allocator::poll_reply`] (answers to requests that waited) and
//! [`Allocator::poll_event`] (log lines).
//!
//! The shell must persist the store operations of a step before it sends that step's
//! transmits or replies: an address is never given to a pod, nor a range to a peer, before
//! it is on disk.
//!
//! Requests that cannot be answered yet (no ring, no free space here) wait until their
//! deadline, retried every [`TICK`] and whenever the ring changes; they end with an error
//! that says what they were waiting for, or when the shell cancels them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::ids::{PeerName, PeerUid, UNKNOWN_PEER_NAME};
use crate::ipam::address::{Address, Cidr, Range};
use crate::ipam::paxos;
use crate::ipam::ring::Ring;
use crate::ipam::space::Space;
use crate::ipam::store::{Owned, Persisted, StoreOp};
use crate::mesh::Event;
use crate::wire::ipam::{self as wire, GossipState, NodeId, Unicast};

/// Pending requests are retried, and consensus proposed again, this often.
pub const TICK: Duration = Duration::from_secs(5);
/// The full IPAM state goes to random neighbours this often.
pub const GOSSIP_INTERVAL: Duration = Duration::from_secs(30);
/// A claim whose owner cannot be reached gives up after this many tries.
const MAX_CLAIM_TRIES: u32 = 5;
/// The id Weave files anonymous allocations under (the address itself is used instead).
pub const NO_CONTAINER_ID: &str = "_";

/// How the ring is first divided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Init {
    /// Paxos among the peers; this many must agree (`consensus=N` gives N/2+1).
    Consensus {
        /// Nodes that must accept one value.
        quorum: u32,
    },
    /// These peers divide the ring among themselves, no election (`seed=a,b,c`).
    Seed(Vec<PeerName>),
    /// Takes no part in the election; asks the electors for their ring (`observer`).
    Observer,
}

/// What the allocator needs to know about this peer and the cluster range.
#[derive(Debug, Clone)]
pub struct Config {
    /// Our peer name.
    pub name: PeerName,
    /// Our UID for this process (Paxos tells restarts apart by it).
    pub uid: PeerUid,
    /// Our nickname.
    pub nickname: String,
    /// The whole allocation range (`--ipalloc-range`).
    pub universe: Cidr,
    /// Where `POST /ip/{id}` allocates without a subnet.
    pub default_subnet: Cidr,
    /// How the ring is first divided.
    pub init: Init,
    /// Unix time, in seconds, at the `now` given to [`Allocator::new`] (for the gossiped
    /// timestamp, which Weave sends for compatibility only).
    pub unix_time: i64,
}

/// The shell's handle for a request that may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

/// Gossip the shell must send through the mesh on `IPallocation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// GossipUnicast to one peer.
    Unicast {
        /// Destination.
        dst: PeerName,
        /// Payload (kind byte + gob).
        payload: Vec<u8>,
    },
    /// GossipBroadcast from us.
    Broadcast {
        /// Our state.
        payload: Vec<u8>,
    },
    /// Relay of a broadcast from `src`, carrying our state as Weave does.
    RelayBroadcast {
        /// The broadcast's origin.
        src: PeerName,
        /// Our state.
        payload: Vec<u8>,
    },
    /// Gossip to random neighbours.
    Gossip {
        /// Our state.
        payload: Vec<u8>,
    },
    /// Gossip to one neighbour (a new connection gets our state).
    GossipTo {
        /// The neighbour.
        peer: PeerName,
        /// Our state.
        payload: Vec<u8>,
    },
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The address given, with the subnet's prefix length.
    Allocated(Cidr),
    /// The claim holds.
    Claimed,
    /// The ring exists.
    Primed,
}

/// Why a request failed. HTTP maps each to a status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// The subnet does not overlap the allocation range.
    #[error("range {subnet} out of bounds: {universe}")]
    OutOfRange {
        /// What was asked for.
        subnet: Cidr,
        /// The allocation range.
        universe: Cidr,
    },
    /// The address is outside the allocation range.
    #[error("address {addr} is outside the allocation range {universe}")]
    AddressOutOfRange {
        /// The address.
        addr: Address,
        /// The allocation range.
        universe: Cidr,
    },
    /// Another id on this peer holds the address.
    #[error("address {addr} is already owned by {ident}")]
    InUse {
        /// The address.
        addr: Address,
        /// Who holds it.
        ident: String,
    },
    /// Another peer owns the address and would not give it.
    #[error("address {addr} is owned by other peer {peer}{nick}{reason}")]
    OwnedByPeer {
        /// The address.
        addr: Address,
        /// The owner.
        peer: PeerName,
        /// " (nickname)" or "".
        nick: String,
        /// " - reason" or "".
        reason: String,
    },
    /// The id holds no address (to release).
    #[error("no addresses for {0}")]
    NotFound(String),
    /// The id does not hold that address.
    #[error("address {addr} not found for {ident}")]
    AddressNotHeld {
        /// The id.
        ident: String,
        /// The address.
        addr: Address,
    },
    /// The request waited until its deadline.
    #[error("{kind} request for {ident} timed out: {waiting}")]
    TimedOut {
        /// Allocate, Claim or Prime.
        kind: &'static str,
        /// The id.
        ident: String,
        /// What it was waiting for.
        waiting: String,
    },
    /// The shell cancelled the request (client gone, shutdown).
    #[error("{kind} request for {ident} cancelled")]
    Cancelled {
        /// Allocate, Claim or Prime.
        kind: &'static str,
        /// The id.
        ident: String,
    },
    /// `rmpeer` named a peer neither the ring nor the mesh knows.
    #[error("unknown peer {0}")]
    UnknownPeer(String),
    /// `rmpeer` named ourselves.
    #[error("cannot take over the ranges of this peer itself")]
    TakeoverSelf,
    /// `rmpeer` named a peer that is reachable now.
    #[error("peer {0} is reachable: stop it before removing it (or force the removal)")]
    PeerAlive(String),
    /// The persisted state belongs to another peer or range.
    #[error("{0}")]
    StoreMismatch(String),
    /// A malformed id (empty, too long, or with '/').
    #[error("invalid id {0:?}: must be 1-{MAX_IDENT_LEN} bytes without '/' or control characters")]
    BadIdent(String),
}

/// Longest id accepted (container ids are 64 hex characters).
pub const MAX_IDENT_LEN: usize = 256;

/// Whether `ident` is usable as an allocation id.
pub fn valid_ident(ident: &str) -> bool {
    !ident.is_empty()
        && ident.len() <= MAX_IDENT_LEN
        && !ident.contains('/')
        && !ident.chars().any(char::is_control)
}

#[derive(Debug, Clone)]
struct PendingAllocate {
    id: OpId,
    ident: String,
    subnet: Cidr,
    is_container: bool,
    deadline: Instant,
}

#[derive(Debug, Clone)]
struct PendingClaim {
    id: OpId,
    ident: String,
    cidr: Cidr,
    is_container: bool,
    tries: u32,
    deadline: Instant,
}

#[derive(Debug, Clone)]
struct PendingPrime {
    id: OpId,
    deadline: Instant,
}

/// Paxos state in Weave's status shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PaxosStatus {
    /// Whether we take part in the election.
    pub elector: bool,
    /// Nodes whose claims we know.
    pub known_nodes: usize,
    /// Nodes that must agree.
    pub quorum: u32,
}

/// One ring range in Weave's status shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EntryStatus {
    /// First address.
    pub token: String,
    /// Addresses in the range.
    pub size: u32,
    /// Owner.
    pub peer: String,
    /// Owner's nickname.
    pub nickname: String,
    /// Whether the owner is in the mesh now.
    pub is_known_peer: bool,
    /// Token version.
    pub version: u32,
}

/// A waiting claim in Weave's status shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ClaimStatus {
    /// The id.
    pub ident: String,
    /// The address.
    #[serde(rename = "CIDR")]
    pub cidr: String,
}

/// The allocator's state as Weave's `/report` shows it (its `IPAM` object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamStatus {
    /// Election progress while awaiting consensus.
    pub paxos: Option<PaxosStatus>,
    /// The allocation range.
    pub range: String,
    /// Addresses in it.
    #[serde(rename = "RangeNumIPs")]
    pub range_num_ips: u64,
    /// Addresses handed out here.
    #[serde(rename = "ActiveIPs")]
    pub active_ips: u64,
    /// Default subnet.
    pub default_subnet: String,
    /// The ring.
    #[serde(deserialize_with = "null_as_empty")]
    pub entries: Vec<EntryStatus>,
    /// Waiting claims.
    #[serde(deserialize_with = "null_as_empty")]
    pub pending_claims: Vec<ClaimStatus>,
    /// Waiting allocations, "id subnet".
    #[serde(deserialize_with = "null_as_empty")]
    pub pending_allocates: Vec<String>,
    /// The last ring this peer refused and why (weave-router only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflict: Option<String>,
}

/// Weave writes `null` for an empty list.
fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

impl IpamStatus {
    /// Weave's one-line state: ready, awaiting consensus, ...
    pub fn state(&self) -> String {
        if !self.entries.is_empty() {
            let all_unreachable = self.entries.iter().all(|e| e.size == 0 || !e.is_known_peer);
            if all_unreachable {
                return "all IP ranges owned by unreachable peers - use 'rmpeer' if they are dead"
                    .to_string();
            }
            if !self.pending_allocates.is_empty() {
                return "waiting for IP(s) to become available".to_string();
            }
            return "ready".to_string();
        }
        match &self.paxos {
            Some(p) if p.elector => format!(
                "awaiting consensus (quorum: {}, known: {})",
                p.quorum, p.known_nodes
            ),
            Some(_) => "priming".to_string(),
            None => "idle".to_string(),
        }
    }
}

/// The allocator of one peer.
pub struct Allocator {
    config: Config,
    start: Instant,
    ring: Ring,
    space: Space,
    owned: BTreeMap<String, Owned>,
    nicknames: BTreeMap<PeerName, String>,
    paxos: Option<paxos::Node>,
    awaiting_consensus: bool,
    allocates: Vec<PendingAllocate>,
    claims: Vec<PendingClaim>,
    primes: Vec<PendingPrime>,
    reachable: BTreeSet<PeerName>,
    rng: ChaCha8Rng,
    transmits: VecDeque<Transmit>,
    store_ops: Vec<StoreOp>,
    ring_dirty: bool,
    replies: VecDeque<(OpId, Result<Reply, IpamError>)>,
    events: VecDeque<Event>,
    next_tick: Instant,
    next_gossip: Instant,
    conflict: Option<String>,
    /// The latest `now` the shell gave; for the gossiped timestamp.
    clock: Instant,
}

impl Allocator {
    /// Starts from what the store holds; refuses a store of another peer or range.
    pub fn new(
        config: Config,
        persisted: Persisted,
        seed: u64,
        now: Instant,
    ) -> Result<Allocator, IpamError> {
        let universe = config.universe.range();
        let paxos = match config.init {
            Init::Observer => None,
            Init::Consensus { .. } | Init::Seed(_) => Some(paxos::Node::new(NodeId {
                name: config.name,
                uid: config.uid,
            })),
        };
        let mut alloc = Allocator {
            ring: Ring::new(universe, config.name),
            space: Space::new(),
            owned: BTreeMap::new(),
            nicknames: BTreeMap::from([(config.name, config.nickname.clone())]),
            paxos,
            awaiting_consensus: false,
            allocates: Vec::new(),
            claims: Vec::new(),
            primes: Vec::new(),
            reachable: BTreeSet::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            transmits: VecDeque::new(),
            store_ops: Vec::new(),
            ring_dirty: false,
            replies: VecDeque::new(),
            events: VecDeque::new(),
            next_tick: now + TICK,
            next_gossip: now + GOSSIP_INTERVAL,
            conflict: None,
            start: now,
            clock: now,
            config,
        };
        let restored = alloc.restore(persisted)?;
        if !restored {
            alloc.store_ops.push(StoreOp::SetIdentity {
                peer: alloc.config.name,
                range: universe,
            });
        }
        match (&alloc.config.init, restored) {
            (Init::Seed(_), true) => {
                alloc.info("Found persisted IPAM data, ignoring supplied IPAM seed".into());
            }
            (_, true) => alloc.info("Initialising with persisted data".into()),
            (Init::Seed(seed), false) => {
                let seed = seed.clone();
                alloc.info("Initialising with supplied IPAM seed".into());
                alloc.create_ring(&seed);
            }
            (Init::Consensus { .. }, false) => {
                alloc.info("Initialising via deferred consensus".into());
            }
            (Init::Observer, false) => {
                alloc.info("Initialising as observer - awaiting IPAM data from another peer".into())
            }
        }
        alloc.finish();
        Ok(alloc)
    }

    /// Loads the persisted ring and allocations; false when there was nothing to load.
    fn restore(&mut self, p: Persisted) -> Result<bool, IpamError> {
        if let Some(peer) = p.peer {
            if peer != self.config.name {
                return Err(IpamError::StoreMismatch(format!(
                    "the IPAM store belongs to peer {peer}, but this peer is {}: start with \
                     --name {peer}, or give this peer its own --db-dir",
                    self.config.name
                )));
            }
        }
        if let Some(range) = p.range {
            if range != self.config.universe.range() {
                return Err(IpamError::StoreMismatch(format!(
                    "the IPAM store holds allocations from range {}, but --ipalloc-range is \
                     {}: use the range the cluster was created with, or (only if no pod \
                     holds an address from the old range) move the store away",
                    range.as_cidr_string(),
                    self.config.universe
                )));
            }
        }
        let ring = match p.ring {
            Some(state) if !state.entries.is_empty() => Ring::from_state(&state, self.config.name)
                .map_err(|e| {
                    IpamError::StoreMismatch(format!("the persisted IPAM ring is invalid: {e}"))
                })?,
            Some(_) | None => {
                if !p.owned.is_empty() {
                    // Allocations outside any ring can only be claims outside the range.
                    self.owned = p.owned;
                }
                return Ok(p.peer.is_some());
            }
        };
        self.ring = ring;
        self.space.update_ranges(&self.ring.owned_ranges());
        self.owned = p.owned;
        for owned in self.owned.values() {
            for cidr in &owned.cidrs {
                self.space.claim(cidr.addr);
            }
        }
        Ok(true)
    }

    // ----- requests -----

    /// Allocates an address in `subnet` (the default subnet when `None`) for `ident`; an id
    /// that already holds one there gets it again. Answers now (`Some`) or later through
    /// [`Self::poll_reply`], by `deadline` at the latest.
    pub fn allocate(
        &mut self,
        id: OpId,
        ident: &str,
        subnet: Option<Cidr>,
        is_container: bool,
        deadline: Instant,
        now: Instant,
    ) -> Option<Result<Reply, IpamError>> {
        self.clock = now;
        let op = PendingAllocate {
            id,
            ident: ident.to_string(),
            subnet: subnet.unwrap_or(self.config.default_subnet),
            is_container,
            deadline,
        };
        let out = match self.try_allocate(&op) {
            Some(result) => Some(result),
            None => {
                self.allocates.push(op);
                None
            }
        };
        self.finish();
        out
    }

    /// Records that `ident` holds `cidr`'s address; asks its owner for it if that is another
    /// peer. Answers now or later, as [`Self::allocate`].
    pub fn claim(
        &mut self,
        id: OpId,
        ident: &str,
        cidr: Cidr,
        is_container: bool,
        deadline: Instant,
        now: Instant,
    ) -> Option<Result<Reply, IpamError>> {
        self.clock = now;
        let mut op = PendingClaim {
            id,
            ident: ident.to_string(),
            cidr,
            is_container,
            tries: 0,
            deadline,
        };
        let out = match self.try_claim(&mut op) {
            Some(result) => Some(result),
            None => {
                self.claims.push(op);
                None
            }
        };
        self.finish();
        out
    }

    /// Waits until the ring exists (Weave's `GET /ring`), starting consensus if needed.
    pub fn prime(
        &mut self,
        id: OpId,
        deadline: Instant,
        now: Instant,
    ) -> Option<Result<Reply, IpamError>> {
        self.clock = now;
        let out = if self.ring.is_empty() {
            self.establish_ring();
            if self.ring.is_empty() {
                self.primes.push(PendingPrime { id, deadline });
                None
            } else {
                Some(Ok(Reply::Primed))
            }
        } else {
            Some(Ok(Reply::Primed))
        };
        self.finish();
        out
    }

    /// Ends a waiting request with [`IpamError::Cancelled`] (queued for `poll_reply`).
    pub fn cancel(&mut self, id: OpId) {
        if let Some(i) = self.allocates.iter().position(|o| o.id == id) {
            let op = self.allocates.remove(i);
            self.reply_cancelled(id, "Allocate", op.ident);
        } else if let Some(i) = self.claims.iter().position(|o| o.id == id) {
            let op = self.claims.remove(i);
            self.reply_cancelled(id, "Claim", op.ident);
        } else if let Some(i) = self.primes.iter().position(|o| o.id == id) {
            self.primes.remove(i);
            self.reply_cancelled(id, "Prime", String::new());
        }
    }

    fn reply_cancelled(&mut self, id: OpId, kind: &'static str, ident: String) {
        self.replies
            .push_back((id, Err(IpamError::Cancelled { kind, ident })));
    }

    /// The addresses `ident` holds inside `range` (the default subnet's hosts when `None`).
    pub fn lookup(&self, ident: &str, range: Option<Range>) -> Vec<Cidr> {
        let range = range.unwrap_or_else(|| self.config.default_subnet.host_range());
        self.owned_in_range(ident, range)
    }

    /// Every id and what it holds.
    pub fn owned(&self) -> &BTreeMap<String, Owned> {
        &self.owned
    }

    /// Releases every address `ident` holds (and cancels its waiting requests).
    pub fn release(&mut self, ident: &str) -> Result<(), IpamError> {
        let cancelled: Vec<OpId> = self
            .allocates
            .iter()
            .filter(|o| o.ident == ident)
            .map(|o| o.id)
            .chain(
                self.claims
                    .iter()
                    .filter(|o| o.ident == ident)
                    .map(|o| o.id),
            )
            .collect();
        for id in &cancelled {
            self.cancel(*id);
        }
        let Some(owned) = self.owned.remove(ident) else {
            self.finish();
            return if cancelled.is_empty() {
                Err(IpamError::NotFound(ident.to_string()))
            } else {
                Ok(())
            };
        };
        for cidr in &owned.cidrs {
            self.space.free(cidr.addr);
        }
        self.store_ops.push(StoreOp::DeleteOwned {
            ident: ident.to_string(),
        });
        self.finish();
        Ok(())
    }

    /// Releases one address of `ident`.
    pub fn free(&mut self, ident: &str, addr: Address) -> Result<(), IpamError> {
        let held = self
            .owned
            .get(ident)
            .is_some_and(|o| o.cidrs.iter().any(|c| c.addr == addr));
        if !held {
            return Err(IpamError::AddressNotHeld {
                ident: ident.to_string(),
                addr,
            });
        }
        self.remove_owned(ident, addr);
        self.space.free(addr);
        self.finish();
        Ok(())
    }

    /// Takes over every range `name` (a peer name or nickname) owns, for a peer that is
    /// gone for good; returns how many addresses moved to us. A peer the mesh can reach is
    /// refused unless `force`: its ranges would be handed out twice.
    pub fn take_over(&mut self, name: &str, force: bool) -> Result<u64, IpamError> {
        let peer = self.lookup_peer(name)?;
        if peer == self.config.name {
            return Err(IpamError::TakeoverSelf);
        }
        if self.reachable.contains(&peer) && !force {
            return Err(IpamError::PeerAlive(self.describe(peer)));
        }
        let moved = self.ring.transfer(peer, self.config.name);
        let count: u64 = moved.iter().map(|r| u64::from(r.size())).sum();
        if moved.is_empty() {
            return Ok(0);
        }
        self.warn(format!(
            "Took over {count} addresses from {}",
            self.describe(peer)
        ));
        self.ring_updated();
        self.broadcast_state();
        self.finish();
        Ok(count)
    }

    fn lookup_peer(&self, name: &str) -> Result<PeerName, IpamError> {
        if let Some((peer, _)) = self.nicknames.iter().find(|(_, nick)| *nick == name) {
            return Ok(*peer);
        }
        let peer: PeerName = name
            .parse()
            .map_err(|_| IpamError::UnknownPeer(name.to_string()))?;
        let known = self.ring.peer_names().contains(&peer)
            || self.nicknames.contains_key(&peer)
            || self.reachable.contains(&peer);
        if known {
            Ok(peer)
        } else {
            Err(IpamError::UnknownPeer(name.to_string()))
        }
    }

    // ----- mesh input -----

    /// The peers the mesh can reach now (ourselves excluded or not; either works).
    pub fn set_reachable(&mut self, peers: BTreeSet<PeerName>) {
        self.reachable = peers;
    }

    /// Periodic gossip (tag 4) from a neighbour.
    pub fn handle_gossip(&mut self, payload: &[u8], now: Instant) -> Result<(), String> {
        self.clock = now;
        let result = self.update(None, payload);
        self.finish();
        result
    }

    /// A broadcast from `src`; we relay our own state onward, as Weave does.
    pub fn handle_broadcast(
        &mut self,
        src: PeerName,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), String> {
        self.clock = now;
        let result = self.update(Some(src), payload);
        if result.is_ok() {
            let payload = self.encode_state();
            self.transmits
                .push_back(Transmit::RelayBroadcast { src, payload });
        }
        self.finish();
        result
    }

    /// A unicast to us from `src`.
    pub fn handle_unicast(
        &mut self,
        src: PeerName,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), String> {
        self.clock = now;
        let msg = wire::decode_unicast(payload).map_err(|e| e.to_string());
        let result = match msg {
            Err(e) => Err(e),
            Ok(Unicast::SpaceRequest(range)) => {
                // Without a ring we have nothing to give; the requester asks again later.
                if !self.ring.is_empty() {
                    self.donate_space(range, src);
                }
                Ok(())
            }
            Ok(Unicast::SpaceRequestDenied(range)) => {
                self.space_request_denied(src, range);
                Ok(())
            }
            Ok(Unicast::RingUpdate(state)) => self.apply_state(Some(src), state),
        };
        self.finish();
        result
    }

    /// A new connection to `peer`: it gets our state.
    pub fn handle_neighbour_up(&mut self, peer: PeerName) {
        let payload = self.encode_state();
        self.transmits
            .push_back(Transmit::GossipTo { peer, payload });
    }

    /// The mesh forgot `peer`: drop its nickname unless the ring still names it.
    pub fn handle_peer_gone(&mut self, peer: PeerName) {
        if !self.ring.peer_names().contains(&peer) && peer != self.config.name {
            self.nicknames.remove(&peer);
        }
    }

    /// Retries, re-proposals, deadlines and periodic gossip.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.clock = now;
        if now >= self.next_tick {
            self.next_tick = now + TICK;
            if self.awaiting_consensus {
                self.propose();
            } else if self.has_pending() {
                if self.ring.is_empty() {
                    self.establish_ring();
                } else {
                    self.try_pending();
                }
            }
        }
        self.expire(now);
        if now >= self.next_gossip {
            self.next_gossip = now + GOSSIP_INTERVAL;
            let payload = self.encode_state();
            self.transmits.push_back(Transmit::Gossip { payload });
        }
        self.finish();
    }

    /// When [`Self::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_tick.min(self.next_gossip);
        let deadlines = self
            .allocates
            .iter()
            .map(|o| o.deadline)
            .chain(self.claims.iter().map(|o| o.deadline))
            .chain(self.primes.iter().map(|o| o.deadline));
        for d in deadlines {
            t = t.min(d);
        }
        t
    }

    // ----- output -----

    /// Next gossip to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Store operations to apply, in one transaction, before sending anything.
    pub fn take_store_ops(&mut self) -> Vec<StoreOp> {
        std::mem::take(&mut self.store_ops)
    }

    /// Next answer to a request that waited.
    pub fn poll_reply(&mut self) -> Option<(OpId, Result<Reply, IpamError>)> {
        self.replies.pop_front()
    }

    /// Next log line.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ----- views -----

    /// The ring.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The allocation range.
    pub fn universe(&self) -> Cidr {
        self.config.universe
    }

    /// The default subnet.
    pub fn default_subnet(&self) -> Cidr {
        self.config.default_subnet
    }

    /// Nickname of `peer`, if known.
    pub fn nickname(&self, peer: PeerName) -> Option<&str> {
        self.nicknames.get(&peer).map(String::as_str)
    }

    /// Whether `peer` is reachable now.
    pub fn is_reachable(&self, peer: PeerName) -> bool {
        peer == self.config.name || self.reachable.contains(&peer)
    }

    /// Addresses handed out here.
    pub fn active(&self) -> u64 {
        self.space.num_owned()
    }

    /// Waiting allocations and claims.
    pub fn pending(&self) -> (usize, usize) {
        (self.allocates.len(), self.claims.len())
    }

    /// Weave's status object.
    pub fn status(&self) -> IpamStatus {
        let paxos = match (&self.paxos, self.awaiting_consensus) {
            (Some(p), true) => Some(PaxosStatus {
                elector: true,
                known_nodes: p.known_nodes(),
                quorum: p.quorum(),
            }),
            (None, true) => Some(PaxosStatus {
                elector: false,
                known_nodes: 0,
                quorum: 0,
            }),
            (_, false) => None,
        };
        let entries = self
            .ring
            .all_range_info()
            .into_iter()
            .map(|info| EntryStatus {
                token: info.range.start.to_string(),
                size: info.range.size(),
                peer: info.peer.to_string(),
                nickname: self.nickname(info.peer).unwrap_or_default().to_string(),
                is_known_peer: self.is_reachable(info.peer),
                version: info.version,
            })
            .collect();
        IpamStatus {
            paxos,
            range: self.config.universe.to_string(),
            range_num_ips: self.config.universe.size(),
            active_ips: self.space.num_owned(),
            default_subnet: self.config.default_subnet.to_string(),
            entries,
            pending_claims: self
                .claims
                .iter()
                .map(|c| ClaimStatus {
                    ident: c.ident.clone(),
                    cidr: c.cidr.to_string(),
                })
                .collect(),
            pending_allocates: self
                .allocates
                .iter()
                .map(|a| format!("{} {}", a.ident, a.subnet))
                .collect(),
            conflict: self.conflict.clone(),
        }
    }

    // ----- operations -----

    fn try_allocate(&mut self, op: &PendingAllocate) -> Option<Result<Reply, IpamError>> {
        let held = self.owned_in_range(&op.ident, op.subnet.range());
        if let Some(cidr) = held.first() {
            return Some(Ok(Reply::Allocated(*cidr)));
        }
        if !self.config.universe.range().overlaps(&op.subnet.range()) {
            return Some(Err(IpamError::OutOfRange {
                subnet: op.subnet,
                universe: self.config.universe,
            }));
        }
        self.establish_ring();
        if let Some(addr) = self.space.allocate(op.subnet.host_range()) {
            let ident = if op.ident == NO_CONTAINER_ID {
                addr.to_string()
            } else {
                op.ident.clone()
            };
            let cidr = Cidr {
                addr,
                prefix_len: op.subnet.prefix_len,
            };
            self.add_owned(&ident, cidr, op.is_container);
            return Some(Ok(Reply::Allocated(cidr)));
        }
        // Out of space here: ask a peer that has some.
        let donors = self
            .ring
            .choose_peers_to_ask_for_space(op.subnet.range(), &mut self.rng);
        if let Some(&donor) = donors.iter().find(|p| self.reachable.contains(p)) {
            self.send_unicast(donor, &Unicast::SpaceRequest(op.subnet.range()));
        }
        None
    }

    fn try_claim(&mut self, op: &mut PendingClaim) -> Option<Result<Reply, IpamError>> {
        op.tries += 1;
        let addr = op.cidr.addr;
        if !self.ring.contains(addr) {
            return Some(Err(IpamError::AddressOutOfRange {
                addr,
                universe: self.config.universe,
            }));
        }
        self.establish_ring();
        let owner = self.ring.owner(addr);
        if owner == UNKNOWN_PEER_NAME {
            return None; // no ring yet
        }
        if owner != self.config.name {
            if self.reachable.contains(&owner) {
                self.send_unicast(owner, &Unicast::SpaceRequest(Range::sized(addr, 1)));
            } else if op.tries > MAX_CLAIM_TRIES {
                return Some(Err(self.denied(addr, owner, Some("unreachable"))));
            }
            return None;
        }
        let ident = if op.ident == NO_CONTAINER_ID {
            addr.to_string()
        } else {
            op.ident.clone()
        };
        match self.find_owner(addr) {
            None => {
                if self.space.claim(addr) {
                    self.add_owned(&ident, op.cidr, op.is_container);
                    Some(Ok(Reply::Claimed))
                } else {
                    Some(Err(IpamError::InUse {
                        addr,
                        ident: "another allocation".to_string(),
                    }))
                }
            }
            Some(existing) if existing == ident => Some(Ok(Reply::Claimed)),
            Some(existing) => Some(Err(IpamError::InUse {
                addr,
                ident: existing,
            })),
        }
    }

    fn denied(&self, addr: Address, peer: PeerName, reason: Option<&str>) -> IpamError {
        IpamError::OwnedByPeer {
            addr,
            peer,
            nick: self
                .nickname(peer)
                .map(|n| format!(" ({n})"))
                .unwrap_or_default(),
            reason: reason.map(|r| format!(" - {r}")).unwrap_or_default(),
        }
    }

    fn space_request_denied(&mut self, sender: PeerName, range: Range) {
        let (denied, keep): (Vec<PendingClaim>, Vec<PendingClaim>) =
            std::mem::take(&mut self.claims)
                .into_iter()
                .partition(|c| range.contains(c.cidr.addr));
        self.claims = keep;
        for c in denied {
            let err = self.denied(c.cidr.addr, sender, None);
            self.replies.push_back((c.id, Err(err)));
        }
    }

    fn has_pending(&self) -> bool {
        !(self.allocates.is_empty() && self.claims.is_empty() && self.primes.is_empty())
    }

    fn try_pending(&mut self) {
        if !self.ring.is_empty() {
            for p in std::mem::take(&mut self.primes) {
                self.replies.push_back((p.id, Ok(Reply::Primed)));
            }
        }
        // Claims first: an address a pod already holds must not be allocated to another.
        let mut waiting = Vec::new();
        for mut op in std::mem::take(&mut self.claims) {
            match self.try_claim(&mut op) {
                Some(result) => self.replies.push_back((op.id, result)),
                None => waiting.push(op),
            }
        }
        self.claims.extend(waiting);
        let mut waiting = Vec::new();
        for op in std::mem::take(&mut self.allocates) {
            match self.try_allocate(&op) {
                Some(result) => self.replies.push_back((op.id, result)),
                None => waiting.push(op),
            }
        }
        self.allocates.extend(waiting);
    }

    fn expire(&mut self, now: Instant) {
        let waiting = self.waiting_for();
        let late = take_late(&mut self.allocates, now, |o| o.deadline)
            .into_iter()
            .map(|o| (o.id, "Allocate", o.ident))
            .chain(
                take_late(&mut self.claims, now, |o| o.deadline)
                    .into_iter()
                    .map(|o| (o.id, "Claim", o.ident)),
            )
            .chain(
                take_late(&mut self.primes, now, |o| o.deadline)
                    .into_iter()
                    .map(|o| (o.id, "Prime", String::new())),
            )
            .collect::<Vec<_>>();
        for (id, kind, ident) in late {
            let err = IpamError::TimedOut {
                kind,
                ident,
                waiting: waiting.clone(),
            };
            self.replies.push_back((id, Err(err)));
        }
    }

    /// What a waiting request waits for, for its error.
    fn waiting_for(&self) -> String {
        let status = self.status();
        if self.ring.is_empty() {
            return format!("IPAM is {}", status.state());
        }
        let unreachable: Vec<String> = self
            .ring
            .owned_counts()
            .into_iter()
            .filter(|(p, _)| !self.is_reachable(*p))
            .map(|(p, _)| self.describe(p))
            .collect();
        if unreachable.is_empty() {
            "no free address here and no peer gave space".to_string()
        } else {
            format!(
                "no free address here; peers owning space are unreachable: {} (use 'rmpeer' if they are gone for good)",
                unreachable.join(", ")
            )
        }
    }

    // ----- ring life cycle -----

    fn establish_ring(&mut self) {
        if !self.ring.is_empty() || self.awaiting_consensus {
            return;
        }
        self.awaiting_consensus = true;
        if let (Some(p), Init::Consensus { quorum }) = (&mut self.paxos, &self.config.init) {
            p.set_quorum(*quorum);
        }
        if let (Some(p), Init::Seed(seed)) = (&mut self.paxos, &self.config.init) {
            p.set_quorum(seed.len() as u32 / 2 + 1);
        }
        self.propose();
        let agreed = self.paxos.as_ref().and_then(|p| p.consensus());
        if let Some(value) = agreed {
            self.create_ring(&value.value);
        }
    }

    fn propose(&mut self) {
        if let Some(p) = &mut self.paxos {
            p.propose();
        }
        self.broadcast_state();
    }

    fn create_ring(&mut self, peers: &[PeerName]) {
        let peers = paxos::normalize(peers);
        let list: Vec<String> = peers.iter().map(|p| self.describe(*p)).collect();
        self.info(format!(
            "IP allocation ring divided among [{}]",
            list.join(" ")
        ));
        self.ring.claim_for_peers(&peers);
        self.ring_updated();
        self.broadcast_state();
    }

    fn ring_updated(&mut self) {
        if self.awaiting_consensus {
            self.awaiting_consensus = false;
        }
        self.ring_dirty = true;
        let owned = self.ring.owned_ranges();
        self.space.restrict_to(&owned);
        self.space.update_ranges(&owned);
        self.try_pending();
    }

    // ----- gossip -----

    fn update(&mut self, sender: Option<PeerName>, payload: &[u8]) -> Result<(), String> {
        let state = wire::decode_gossip(payload).map_err(|e| e.to_string())?;
        self.apply_state(sender, state)
    }

    fn apply_state(&mut self, sender: Option<PeerName>, state: GossipState) -> Result<(), String> {
        for (peer, nick) in &state.nicknames {
            self.nicknames.insert(*peer, nick.clone());
        }
        if let Some(ring) = &state.ring {
            let space = &self.space;
            let has_allocations =
                |ranges: &[Range]| ranges.iter().any(|r| space.num_free_in(*r) != r.size());
            return match self.ring.merge(ring, &has_allocations) {
                Ok(updated) => {
                    if updated {
                        self.prune_nicknames();
                        self.ring_updated();
                    }
                    Ok(())
                }
                Err(e) => {
                    let from = sender
                        .map(|p| self.describe(p))
                        .unwrap_or_else(|| "a peer".into());
                    let text = format!("refused the IP allocation ring from {from}: {e}");
                    if self.conflict.as_ref() != Some(&text) {
                        self.warn(text.clone());
                    }
                    self.conflict = Some(text);
                    Err(e.to_string())
                }
            };
        }
        if !self.ring.is_empty() {
            // An elector proposing or an observer asking: they get our ring.
            if let Some(sender) = sender {
                self.send_ring_update(sender);
            }
            return Ok(());
        }
        match (state.paxos, &mut self.paxos) {
            (Some(claims), Some(node)) => {
                if node.update(&claims) {
                    if node.think() {
                        self.broadcast_state();
                    }
                    let agreed = self.paxos.as_ref().and_then(|p| p.consensus());
                    if let Some(value) = agreed {
                        self.create_ring(&value.value);
                    }
                }
            }
            (Some(_), None) => {} // observers do not vote
            (None, Some(_)) => {
                // An observer wants a ring: electors start one on its behalf, but only on
                // its explicit request, not on periodic gossip.
                if sender.is_some() {
                    self.establish_ring();
                }
            }
            (None, None) => {}
        }
        Ok(())
    }

    fn donate_space(&mut self, range: Range, to: PeerName) {
        match self.space.donate(range) {
            Some(chunk) => {
                self.info(format!("Giving range {chunk} to {}", self.describe(to)));
                self.ring.grant_range_to_host(chunk.start, chunk.end, to);
                self.ring_dirty = true;
                self.broadcast_state();
            }
            None => self.send_unicast(to, &Unicast::SpaceRequestDenied(range)),
        }
        // Whatever happened, the requester learns our ring: what we gave, or who has space.
        self.send_ring_update(to);
    }

    /// Our state as gossiped: Paxos claims until there is a ring, then the ring.
    fn state(&self) -> GossipState {
        let elapsed = self.clock.saturating_duration_since(self.start).as_secs();
        let mut state = GossipState {
            now: self.config.unix_time + elapsed as i64,
            nicknames: self
                .nicknames
                .iter()
                .map(|(p, n)| (*p, n.clone()))
                .collect(),
            paxos: None,
            ring: None,
        };
        if self.ring.is_empty() {
            // Observers send no claims (nil), which asks electors for their ring.
            state.paxos = self.paxos.as_ref().map(paxos::Node::gossip_state);
        } else {
            state.ring = Some(self.ring.to_state());
        }
        state
    }

    fn encode_state(&self) -> Vec<u8> {
        wire::encode_gossip(&self.state())
    }

    fn broadcast_state(&mut self) {
        let payload = self.encode_state();
        self.transmits.push_back(Transmit::Broadcast { payload });
    }

    fn send_ring_update(&mut self, to: PeerName) {
        let state = self.state();
        self.send_unicast(to, &Unicast::RingUpdate(state));
    }

    fn send_unicast(&mut self, dst: PeerName, msg: &Unicast) {
        let payload = wire::encode_unicast(msg);
        self.transmits.push_back(Transmit::Unicast { dst, payload });
    }

    fn prune_nicknames(&mut self) {
        let in_ring = self.ring.peer_names();
        let me = self.config.name;
        let reachable = &self.reachable;
        self.nicknames
            .retain(|p, _| *p == me || in_ring.contains(p) || reachable.contains(p));
    }

    /// End of every step: report free space into the ring, persist what changed.
    fn finish(&mut self) {
        if !self.ring.is_empty() {
            let free: BTreeMap<Address, u32> = self
                .ring
                .owned_ranges()
                .into_iter()
                .map(|r| (r.start, self.space.num_free_in(r)))
                .collect();
            if self.ring.report_free(free) {
                self.ring_dirty = true;
            }
        }
        if self.ring_dirty {
            self.ring_dirty = false;
            self.store_ops.push(StoreOp::SetRing(self.ring.to_state()));
        }
    }

    // ----- owned addresses -----

    fn owned_in_range(&self, ident: &str, range: Range) -> Vec<Cidr> {
        self.owned
            .get(ident)
            .map(|o| {
                o.cidrs
                    .iter()
                    .copied()
                    .filter(|c| range.contains(c.addr))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn find_owner(&self, addr: Address) -> Option<String> {
        self.owned
            .iter()
            .find(|(_, o)| o.cidrs.iter().any(|c| c.addr == addr))
            .map(|(ident, _)| ident.clone())
    }

    fn add_owned(&mut self, ident: &str, cidr: Cidr, is_container: bool) {
        let owned = self.owned.entry(ident.to_string()).or_default();
        owned.is_container = is_container;
        owned.cidrs.push(cidr);
        self.store_ops.push(StoreOp::PutOwned {
            ident: ident.to_string(),
            owned: owned.clone(),
        });
    }

    fn remove_owned(&mut self, ident: &str, addr: Address) {
        let Some(owned) = self.owned.get_mut(ident) else {
            return;
        };
        owned.cidrs.retain(|c| c.addr != addr);
        if owned.cidrs.is_empty() {
            self.owned.remove(ident);
            self.store_ops.push(StoreOp::DeleteOwned {
                ident: ident.to_string(),
            });
        } else {
            let owned = owned.clone();
            self.store_ops.push(StoreOp::PutOwned {
                ident: ident.to_string(),
                owned,
            });
        }
    }

    // ----- logging -----

    fn describe(&self, peer: PeerName) -> String {
        match self.nickname(peer) {
            Some(nick) => format!("{peer}({nick})"),
            None => peer.to_string(),
        }
    }

    fn info(&mut self, message: String) {
        self.events.push_back(Event {
            warning: false,
            message: format!("[allocator {}] {message}", self.config.name),
        });
    }

    fn warn(&mut self, message: String) {
        self.events.push_back(Event {
            warning: true,
            message: format!("[allocator {}] {message}", self.config.name),
        });
    }
}

/// Removes and returns the requests whose deadline has come.
fn take_late<T>(ops: &mut Vec<T>, now: Instant, deadline: impl Fn(&T) -> Instant) -> Vec<T> {
    let (late, keep) = std::mem::take(ops)
        .into_iter()
        .partition(|o| deadline(o) <= now);
    *ops = keep;
    late
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::store::{MemoryStore, Store};

    fn name(i: u64) -> PeerName {
        PeerName::from_u64(0xaa00_0000_0000 + i).expect("fits")
    }

    fn config(i: u64, init: Init) -> Config {
        let universe = Cidr::parse_subnet("10.32.0.0/12").expect("cidr");
        Config {
            name: name(i),
            uid: PeerUid(100 + i),
            nickname: format!("host{i}"),
            universe,
            default_subnet: universe,
            init,
            unix_time: 1_700_000_000,
        }
    }

    /// Allocators wired to each other directly, every transmit delivered at once, with a
    /// store per peer that every step's operations go into.
    struct Net {
        now: Instant,
        peers: Vec<Allocator>,
        stores: Vec<MemoryStore>,
        replies: Vec<(usize, OpId, Result<Reply, IpamError>)>,
    }

    impl Net {
        fn new(inits: Vec<Init>) -> Net {
            let t0 = Instant::now();
            let mut peers = Vec::new();
            for (i, init) in inits.into_iter().enumerate() {
                let a = Allocator::new(
                    config(i as u64 + 1, init),
                    Persisted::default(),
                    i as u64,
                    t0,
                )
                .expect("new");
                peers.push(a);
            }
            let all: BTreeSet<PeerName> = peers.iter().map(|p| p.config.name).collect();
            for p in &mut peers {
                p.set_reachable(all.clone());
            }
            let stores = peers.iter().map(|_| MemoryStore::default()).collect();
            let mut net = Net {
                now: t0,
                peers,
                stores,
                replies: Vec::new(),
            };
            net.pump();
            net
        }

        fn pump(&mut self) {
            for _ in 0..100 {
                let mut moved = false;
                for i in 0..self.peers.len() {
                    let ops = self.peers[i].take_store_ops();
                    self.stores[i].apply(&ops).expect("store");
                    while let Some(r) = self.peers[i].poll_reply() {
                        self.replies.push((i, r.0, r.1));
                    }
                    while let Some(t) = self.peers[i].poll_transmit() {
                        moved = true;
                        let src = self.peers[i].config.name;
                        let now = self.now;
                        for j in 0..self.peers.len() {
                            if j == i {
                                continue;
                            }
                            let dst = self.peers[j].config.name;
                            let _ = match &t {
                                Transmit::Unicast { dst: d, payload } if *d == dst => {
                                    self.peers[j].handle_unicast(src, payload, now)
                                }
                                Transmit::Broadcast { payload } => {
                                    self.peers[j].handle_broadcast(src, payload, now)
                                }
                                Transmit::Gossip { payload } => {
                                    self.peers[j].handle_gossip(payload, now)
                                }
                                Transmit::GossipTo { peer, payload } if *peer == dst => {
                                    self.peers[j].handle_gossip(payload, now)
                                }
                                Transmit::Unicast { .. }
                                | Transmit::GossipTo { .. }
                                | Transmit::RelayBroadcast { .. } => Ok(()),
                            };
                        }
                    }
                }
                if !moved {
                    return;
                }
            }
            panic!("gossip did not settle");
        }

        fn advance(&mut self, d: Duration) {
            self.now += d;
            for p in &mut self.peers {
                p.handle_timeout(self.now);
            }
            self.pump();
        }

        fn allocate(&mut self, i: usize, ident: &str) -> Option<Result<Reply, IpamError>> {
            let now = self.now;
            let r = self.peers[i].allocate(
                OpId(0),
                ident,
                None,
                true,
                now + Duration::from_secs(60),
                now,
            );
            self.pump();
            r
        }
    }

    fn addr(r: &Result<Reply, IpamError>) -> Cidr {
        match r {
            Ok(Reply::Allocated(c)) => *c,
            other => panic!("not an allocation: {other:?}"),
        }
    }

    #[test]
    fn seeded_peer_allocates_persists_and_releases() {
        let mut net = Net::new(vec![Init::Seed(vec![name(1)])]);
        let a = addr(&net.allocate(0, "c1").expect("at once"));
        assert_eq!(a.to_string(), "10.32.0.1/12");
        assert_eq!(
            addr(&net.allocate(0, "c1").expect("again")),
            a,
            "same id, same address"
        );
        let b = addr(&net.allocate(0, "c2").expect("second"));
        assert_ne!(a, b);
        let stored = net.stores[0].load().expect("load");
        assert_eq!(stored.owned.len(), 2);
        assert_eq!(stored.peer, Some(name(1)));
        assert!(stored.ring.is_some());
        net.peers[0].release("c1").expect("release");
        assert_eq!(
            net.peers[0].release("c1"),
            Err(IpamError::NotFound("c1".into()))
        );
        net.pump();
        assert_eq!(net.stores[0].load().expect("load").owned.len(), 1);
        // The released address is the lowest free one again.
        assert_eq!(addr(&net.allocate(0, "c3").expect("third")), a);
    }

    #[test]
    fn consensus_waits_for_a_quorum_then_both_peers_allocate_distinct_addresses() {
        let mut net = Net::new(vec![
            Init::Consensus { quorum: 2 },
            Init::Consensus { quorum: 2 },
        ]);
        // Peer 2 unreachable: peer 1 cannot reach a quorum and says so.
        net.peers[0].set_reachable(BTreeSet::new());
        let now = net.now;
        let pending = net.peers[0].allocate(
            OpId(7),
            "c1",
            None,
            true,
            now + Duration::from_secs(20),
            now,
        );
        assert!(pending.is_none(), "no ring yet: the request waits");
        // Deliveries are cut by dropping transmits.
        while net.peers[0].poll_transmit().is_some() {}
        assert_eq!(
            net.peers[0].status().state(),
            "awaiting consensus (quorum: 2, known: 1)"
        );
        assert!(
            net.peers[0].ring().is_empty(),
            "nothing allocated from a ring that does not exist"
        );
        // Past the deadline the request ends with the reason.
        net.now += Duration::from_secs(21);
        net.peers[0].handle_timeout(net.now);
        let (id, result) = net.peers[0].poll_reply().expect("timed out");
        assert_eq!(id, OpId(7));
        let err = result.unwrap_err().to_string();
        assert!(
            err.contains("awaiting consensus (quorum: 2, known: 1)"),
            "{err}"
        );
        while net.peers[0].poll_transmit().is_some() {}

        // Now connected: consensus forms and both allocate.
        net.pump();
        let a = net.allocate(0, "c1");
        net.advance(TICK);
        let a = a.or_else(|| net.replies.iter().find(|r| r.0 == 0).map(|r| r.2.clone()));
        let a = addr(&a.expect("allocated after consensus"));
        let b = net.allocate(1, "c2");
        net.advance(TICK);
        let b = b.or_else(|| net.replies.iter().find(|r| r.0 == 1).map(|r| r.2.clone()));
        let b = addr(&b.expect("allocated"));
        assert_ne!(a.addr, b.addr);
        assert_eq!(net.peers[0].ring().entries(), net.peers[1].ring().entries());
        assert_eq!(net.peers[0].status().state(), "ready");
    }

    #[test]
    fn a_peer_without_space_gets_some_from_its_neighbour() {
        // The seed gives everything to peer 1; peer 2 must ask for space.
        let mut net = Net::new(vec![Init::Seed(vec![name(1)]), Init::Seed(vec![name(1)])]);
        net.pump();
        assert!(net.peers[1].ring().owned_ranges().is_empty());
        let r = net.allocate(1, "c9");
        let r = r.or_else(|| net.replies.iter().find(|r| r.0 == 1).map(|r| r.2.clone()));
        let got = addr(&r.expect("allocated once space arrived"));
        assert_eq!(net.peers[1].ring().owner(got.addr), name(2));
        assert_eq!(net.peers[0].ring().owner(got.addr), name(2));
        // Free counts travel with the periodic gossip.
        net.advance(GOSSIP_INTERVAL);
        assert_eq!(net.peers[0].ring().entries(), net.peers[1].ring().entries());
    }

    #[test]
    fn bad_claims_change_nothing() {
        let mut net = Net::new(vec![Init::Seed(vec![name(1)])]);
        let now = net.now;
        let deadline = now + Duration::from_secs(5);
        let outside: Cidr = "192.168.1.5/24".parse().expect("cidr");
        let r = net.peers[0].claim(OpId(1), "c1", outside, true, deadline, now);
        assert!(
            matches!(r, Some(Err(IpamError::AddressOutOfRange { .. }))),
            "{r:?}"
        );
        let mine: Cidr = "10.32.0.9/12".parse().expect("cidr");
        assert_eq!(
            net.peers[0].claim(OpId(2), "c1", mine, true, deadline, now),
            Some(Ok(Reply::Claimed))
        );
        let r = net.peers[0].claim(OpId(3), "c2", mine, true, deadline, now);
        assert!(matches!(r, Some(Err(IpamError::InUse { .. }))), "{r:?}");
        assert_eq!(net.peers[0].lookup("c1", None), vec![mine]);
        assert!(net.peers[0].lookup("c2", None).is_empty());
        // The claimed address is not allocated to anyone else.
        for i in 0..20 {
            let got = addr(&net.allocate(0, &format!("x{i}")).expect("allocated"));
            assert_ne!(got.addr, mine.addr);
        }
    }

    #[test]
    fn takeover_refuses_a_reachable_peer_and_moves_a_dead_ones_space() {
        let mut net = Net::new(vec![
            Init::Seed(vec![name(1), name(2)]),
            Init::Seed(vec![name(1), name(2)]),
        ]);
        let err = net.peers[0].take_over("host2", false).unwrap_err();
        assert!(matches!(err, IpamError::PeerAlive(_)), "{err}");
        assert_eq!(
            net.peers[0].take_over("host1", false),
            Err(IpamError::TakeoverSelf)
        );
        assert!(matches!(
            net.peers[0].take_over("nobody", false),
            Err(IpamError::UnknownPeer(_))
        ));
        net.peers[0].set_reachable(BTreeSet::from([name(1)]));
        assert_eq!(net.peers[0].take_over("host2", false), Ok(524_288));
        assert_eq!(
            net.peers[0].ring().owned_counts().get(&name(1)),
            Some(&1_048_576)
        );
    }

    #[test]
    fn restart_from_the_store_keeps_allocations_and_refuses_a_foreign_store() {
        let mut net = Net::new(vec![Init::Seed(vec![name(1)])]);
        let held: Vec<Cidr> = (0..5)
            .map(|i| addr(&net.allocate(0, &format!("c{i}")).expect("a")))
            .collect();
        let persisted = net.stores[0].load().expect("load");
        let mut cfg = config(1, Init::Consensus { quorum: 1 });
        cfg.uid = PeerUid(999); // a new process
        let mut again = Allocator::new(cfg, persisted.clone(), 5, net.now).expect("restored");
        for (i, cidr) in held.iter().enumerate() {
            assert_eq!(again.lookup(&format!("c{i}"), None), vec![*cidr]);
        }
        let now = net.now;
        let fresh = again.allocate(OpId(1), "new", None, true, now + TICK, now);
        let fresh = addr(&fresh.expect("at once"));
        assert!(!held.contains(&fresh), "{fresh} handed out twice");

        let err = Allocator::new(config(2, Init::Observer), persisted.clone(), 0, now)
            .err()
            .expect("foreign store refused")
            .to_string();
        assert!(err.contains("belongs to peer"), "{err}");
        let mut other_range = config(1, Init::Observer);
        other_range.universe = Cidr::parse_subnet("10.0.0.0/16").expect("cidr");
        other_range.default_subnet = other_range.universe;
        let err = Allocator::new(other_range, persisted, 0, now)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("--ipalloc-range"), "{err}");
    }
}
