//! The `IPallocation` gossip channel's payloads: Weave's IPAM `gossipState` (nicknames, Paxos
//! claims, ring) and the unicast messages (space request, ring update, space request denied).
//!
//! These are value types and their codec; the allocator in [`crate::ipam`] gives them meaning.
//!
//! Format (checked byte for byte against the Weave Net 2.8.1 captures):
//! - gossip and broadcast payloads are one fresh gob stream holding one `gossipState` struct:
//!   `Now int64`, `Nicknames map[PeerName]string`, `Paxos map[NodeID]NodeClaims` (only while
//!   there is no ring; an elector sends it empty but present, an observer omits it) and
//!   `Ring *Ring` (once there is one). Every type definition is sent, whichever fields are;
//! - a unicast payload is one kind byte ([`unicast_kind`]) then a fresh gob stream holding an
//!   `address.Range{Start, End}` (space request, space request denied) or a `gossipState`
//!   (ring update);
//! - peer names, UIDs and rounds are gob `uint`s; addresses, free counts and versions are Go
//!   `uint32`s sent as gob `uint`, so the decoder refuses values wider than 32 bits, and peer
//!   names wider than 48;
//! - gob omits zero-valued fields and empty slices, but always sends nested structs and a
//!   non-nil map, even an empty one. Go numbers types once per process, so type ids differ
//!   between senders; [`encoder_with_type_ids`] reproduces a capture's numbering.
//!
//! Decoding never panics. It allocates at most a constant factor of the payload's length
//! (every element consumes input bytes, and no count is trusted for preallocation beyond
//! [`PREALLOC_LIMIT`]), matches struct fields by name and skips unknown ones, as Go does.
//! Ring semantics (sorted tokens, owners) are the allocator's to check, not the codec's.

use crate::ids::{PeerName, PeerUid};
use crate::ipam::address::{Address, Range};
use crate::wire::gob::{
    self, FieldDesc, GobError, Slot, StructReader, StructWriter, TypeDesc, TypeId,
};
use crate::wire::mesh::WireError;

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

/// The kind byte that starts an `IPallocation` unicast payload.
pub mod unicast_kind {
    /// `msgSpaceRequest`: a gob `address.Range` follows.
    pub const SPACE_REQUEST: u8 = 0;
    /// `msgRingUpdate`: a gob `gossipState` follows.
    pub const RING_UPDATE: u8 = 1;
    /// `msgSpaceRequestDenied`: a gob `address.Range` follows.
    pub const SPACE_REQUEST_DENIED: u8 = 2;
}

/// Most elements a decoder reserves room for before it has read them: counts come from the
/// peer, and a lying count must not reserve memory the payload cannot fill.
pub const PREALLOC_LIMIT: usize = 1024;

impl Unicast {
    /// The kind byte this message is sent with.
    pub fn kind(&self) -> u8 {
        match self {
            Unicast::SpaceRequest(_) => unicast_kind::SPACE_REQUEST,
            Unicast::RingUpdate(_) => unicast_kind::RING_UPDATE,
            Unicast::SpaceRequestDenied(_) => unicast_kind::SPACE_REQUEST_DENIED,
        }
    }
}

/// Encodes a gossip or broadcast payload: a fresh gob stream holding one `gossipState`.
pub fn encode_gossip(state: &GossipState) -> Vec<u8> {
    encode_gossip_with(gob::Encoder::new(), state)
}

/// Encodes a gossip payload with a given fresh encoder, e.g. one from
/// [`encoder_with_type_ids`], to compare bytes with a capture.
pub fn encode_gossip_with(mut enc: gob::Encoder, state: &GossipState) -> Vec<u8> {
    enc.encode(&GOSSIP_STATE, |w| {
        write_gossip_state(w.begin_struct(), state)
    });
    enc.into_bytes()
}

/// Decodes a gossip or broadcast payload (or the stream after a ring update's kind byte).
pub fn decode_gossip(payload: &[u8]) -> Result<GossipState, WireError> {
    decode_single(
        payload,
        GOSSIP_WHAT,
        &GOSSIP_STATE_FIELDS,
        read_gossip_state,
    )
}

/// Encodes a unicast payload: the kind byte, then a fresh gob stream.
pub fn encode_unicast(msg: &Unicast) -> Vec<u8> {
    encode_unicast_with(gob::Encoder::new(), msg)
}

/// Encodes a unicast payload with a given fresh encoder (its stream follows the kind byte).
pub fn encode_unicast_with(enc: gob::Encoder, msg: &Unicast) -> Vec<u8> {
    let stream = match msg {
        Unicast::SpaceRequest(range) | Unicast::SpaceRequestDenied(range) => {
            encode_range_with(enc, range)
        }
        Unicast::RingUpdate(state) => encode_gossip_with(enc, state),
    };
    let mut out = Vec::with_capacity(1 + stream.len());
    out.push(msg.kind());
    out.extend_from_slice(&stream);
    out
}

/// Decodes a unicast payload. An empty payload or an unknown kind byte is an error.
pub fn decode_unicast(payload: &[u8]) -> Result<Unicast, WireError> {
    let (&kind, stream) = payload
        .split_first()
        .ok_or(WireError::Missing("IPAM unicast message kind"))?;
    match kind {
        unicast_kind::SPACE_REQUEST => decode_range(stream).map(Unicast::SpaceRequest),
        unicast_kind::RING_UPDATE => decode_gossip(stream).map(Unicast::RingUpdate),
        unicast_kind::SPACE_REQUEST_DENIED => decode_range(stream).map(Unicast::SpaceRequestDenied),
        _ => Err(WireError::UnknownIpamMessage(kind)),
    }
}

/// Encodes a fresh gob stream holding one `address.Range`.
pub fn encode_range(range: &Range) -> Vec<u8> {
    encode_range_with(gob::Encoder::new(), range)
}

/// Encodes an `address.Range` stream with a given fresh encoder.
pub fn encode_range_with(mut enc: gob::Encoder, range: &Range) -> Vec<u8> {
    enc.encode(&RANGE, |w| {
        let mut s = w.begin_struct();
        s.uint(0, u64::from(range.start.0));
        s.uint(1, u64::from(range.end.0));
        s.end();
    });
    enc.into_bytes()
}

/// Decodes a gob stream holding one `address.Range`.
pub fn decode_range(bytes: &[u8]) -> Result<Range, WireError> {
    decode_single(bytes, RANGE_WHAT, &RANGE_FIELDS, read_range)
}

/// Encodes a ring as a fresh gob stream holding one top-level `Ring`, for persistence.
pub fn encode_ring(ring: &RingState) -> Vec<u8> {
    encode_ring_with(gob::Encoder::new(), ring)
}

/// Encodes a ring stream with a given fresh encoder.
pub fn encode_ring_with(mut enc: gob::Encoder, ring: &RingState) -> Vec<u8> {
    enc.encode(&RING, |w| write_ring(w.begin_struct(), ring));
    enc.into_bytes()
}

/// Decodes a gob stream holding one `Ring` (what [`encode_ring`] writes).
pub fn decode_ring(bytes: &[u8]) -> Result<RingState, WireError> {
    decode_single(bytes, RING_WHAT, &RING_FIELDS, read_ring)
}

/// An encoder numbering the IPAM types as the captured Weave processes did: the ring's types
/// from `ring_first` (they numbered them first, 65 to 68, apart from the rest) and the others
/// from `first`. Only needed to reproduce captured bytes; any numbering decodes the same.
pub fn encoder_with_type_ids(ring_first: TypeId, first: TypeId) -> gob::Encoder {
    let mut enc = gob::Encoder::with_first_type_id(first);
    enc.assign_type_ids(&RING, ring_first);
    enc
}

const GOSSIP_WHAT: &str = "IPAM gossip state";
const NICKNAMES_WHAT: &str = "IPAM nicknames";
const PAXOS_WHAT: &str = "IPAM Paxos claims";
const RING_WHAT: &str = "IPAM ring";
const RANGE_WHAT: &str = "IPAM range";

// Go's types as its encoder describes them. Names are what Go writes: a type's own name, the
// type string for an unnamed type first met as a struct field, and nothing for one first met
// as a map key, map element or through a slice of pointers.

static UINT: TypeDesc = TypeDesc::Uint;

/// Go's `gossipState`.
static GOSSIP_STATE: TypeDesc = TypeDesc::Struct {
    name: "gossipState",
    fields: &GOSSIP_STATE_FIELDS,
};

static GOSSIP_STATE_FIELDS: [FieldDesc; 4] = [
    FieldDesc {
        name: "Now",
        ty: &TypeDesc::Int,
    },
    FieldDesc {
        name: "Nicknames",
        ty: &NICKNAMES,
    },
    FieldDesc {
        name: "Paxos",
        ty: &PAXOS,
    },
    FieldDesc {
        name: "Ring",
        ty: &RING,
    },
];

/// Go's `map[mesh.PeerName]string`.
static NICKNAMES: TypeDesc = TypeDesc::NamedMap {
    name: "map[mesh.PeerName]string",
    key: &UINT,
    elem: &TypeDesc::String,
};

/// Go's `paxos.GossipState`.
static PAXOS: TypeDesc = TypeDesc::NamedMap {
    name: "GossipState",
    key: &NODE_ID,
    elem: &NODE_CLAIMS,
};

/// Go's `paxos.NodeID`.
static NODE_ID: TypeDesc = TypeDesc::Struct {
    name: "",
    fields: &[
        FieldDesc {
            name: "Name",
            ty: &UINT,
        },
        FieldDesc {
            name: "UID",
            ty: &UINT,
        },
    ],
};

/// Go's `paxos.NodeClaims`.
static NODE_CLAIMS: TypeDesc = TypeDesc::Struct {
    name: "",
    fields: &[
        FieldDesc {
            name: "Promise",
            ty: &PROPOSAL_ID,
        },
        FieldDesc {
            name: "Accepted",
            ty: &PROPOSAL_ID,
        },
        FieldDesc {
            name: "AcceptedVal",
            ty: &ACCEPTED_VALUE,
        },
    ],
};

/// Go's `paxos.ProposalID`.
static PROPOSAL_ID: TypeDesc = TypeDesc::Struct {
    name: "ProposalID",
    fields: &[
        FieldDesc {
            name: "Round",
            ty: &UINT,
        },
        FieldDesc {
            name: "Proposer",
            ty: &NODE_ID,
        },
    ],
};

/// Go's `paxos.AcceptedValue`.
static ACCEPTED_VALUE: TypeDesc = TypeDesc::Struct {
    name: "AcceptedValue",
    fields: &[
        FieldDesc {
            name: "Value",
            ty: &PAXOS_VALUE,
        },
        FieldDesc {
            name: "Origin",
            ty: &PROPOSAL_ID,
        },
    ],
};

/// Go's `paxos.Value`.
static PAXOS_VALUE: TypeDesc = TypeDesc::NamedSlice {
    name: "Value",
    elem: &UINT,
};

/// Go's `ring.Ring` (its unexported fields are not sent).
static RING: TypeDesc = TypeDesc::Struct {
    name: "Ring",
    fields: &RING_FIELDS,
};

static RING_FIELDS: [FieldDesc; 5] = [
    FieldDesc {
        name: "Start",
        ty: &UINT,
    },
    FieldDesc {
        name: "End",
        ty: &UINT,
    },
    FieldDesc {
        name: "Peer",
        ty: &UINT,
    },
    FieldDesc {
        name: "Entries",
        ty: &ENTRIES,
    },
    FieldDesc {
        name: "Seeds",
        ty: &SEEDS,
    },
];

/// Go's `ring.entries` (`[]*entry`; gob flattens the pointers).
static ENTRIES: TypeDesc = TypeDesc::NamedSlice {
    name: "entries",
    elem: &ENTRY,
};

/// Go's `ring.entry`.
static ENTRY: TypeDesc = TypeDesc::Struct {
    name: "",
    fields: &[
        FieldDesc {
            name: "Token",
            ty: &UINT,
        },
        FieldDesc {
            name: "Peer",
            ty: &UINT,
        },
        FieldDesc {
            name: "Version",
            ty: &UINT,
        },
        FieldDesc {
            name: "Free",
            ty: &UINT,
        },
    ],
};

/// Go's `[]mesh.PeerName` (the ring's seeds).
static SEEDS: TypeDesc = TypeDesc::NamedSlice {
    name: "[]mesh.PeerName",
    elem: &UINT,
};

/// Go's `address.Range`.
static RANGE: TypeDesc = TypeDesc::Struct {
    name: "Range",
    fields: &RANGE_FIELDS,
};

static RANGE_FIELDS: [FieldDesc; 2] = [
    FieldDesc {
        name: "Start",
        ty: &UINT,
    },
    FieldDesc {
        name: "End",
        ty: &UINT,
    },
];

fn write_gossip_state(mut s: StructWriter<'_>, state: &GossipState) {
    s.int(0, state.now);
    // Weave's nickname map always exists (it holds at least the sender), so it is sent even
    // when empty, as a non-nil Go map is.
    let mut w = s.field(1);
    w.seq_len(state.nicknames.len());
    for (name, nickname) in &state.nicknames {
        w.uint(name.as_u64());
        w.string(nickname);
    }
    if let Some(claims) = &state.paxos {
        let mut w = s.field(2);
        w.seq_len(claims.len());
        for (node, node_claims) in claims {
            write_node_id(w.begin_struct(), node);
            write_node_claims(w.begin_struct(), node_claims);
        }
    }
    if let Some(ring) = &state.ring {
        write_ring(s.struct_field(3), ring);
    }
    s.end();
}

fn write_node_id(mut s: StructWriter<'_>, node: &NodeId) {
    s.uint(0, node.name.as_u64());
    s.uint(1, node.uid.0);
    s.end();
}

fn write_node_claims(mut s: StructWriter<'_>, claims: &NodeClaims) {
    write_proposal_id(s.struct_field(0), &claims.promise);
    write_proposal_id(s.struct_field(1), &claims.accepted);
    let mut val = s.struct_field(2);
    write_peer_names(&mut val, 0, &claims.accepted_val.value);
    write_proposal_id(val.struct_field(1), &claims.accepted_val.origin);
    val.end();
    s.end();
}

fn write_proposal_id(mut s: StructWriter<'_>, id: &ProposalId) {
    s.uint(0, id.round);
    write_node_id(s.struct_field(1), &id.proposer);
    s.end();
}

fn write_ring(mut s: StructWriter<'_>, ring: &RingState) {
    s.uint(0, u64::from(ring.start.0));
    s.uint(1, u64::from(ring.end.0));
    s.uint(2, ring.peer.as_u64());
    if !ring.entries.is_empty() {
        let mut w = s.field(3);
        w.seq_len(ring.entries.len());
        for entry in &ring.entries {
            let mut e = w.begin_struct();
            e.uint(0, u64::from(entry.token.0));
            e.uint(1, entry.peer.as_u64());
            e.uint(2, u64::from(entry.version));
            e.uint(3, u64::from(entry.free));
            e.end();
        }
    }
    write_peer_names(&mut s, 4, &ring.seeds);
    s.end();
}

/// A `[]mesh.PeerName` field; omitted when empty, as Go omits empty slices.
fn write_peer_names(s: &mut StructWriter<'_>, index: usize, names: &[PeerName]) {
    if names.is_empty() {
        return;
    }
    let mut w = s.field(index);
    w.seq_len(names.len());
    for name in names {
        w.uint(name.as_u64());
    }
}

/// Reads a stream that must hold exactly one struct of type `ty`, with `read`.
fn decode_single<T>(
    bytes: &[u8],
    what: &'static str,
    known: &[FieldDesc],
    read: impl FnOnce(StructReader<'_, '_>) -> Result<T, WireError>,
) -> Result<T, WireError> {
    let err = malformed(what);
    let mut dec = gob::Decoder::new(bytes);
    let mut top = dec
        .next_top()
        .map_err(&err)?
        .ok_or(WireError::Missing(what))?;
    let found = top.type_id().0;
    let s = top.slot().and_then(Slot::into_struct).map_err(&err)?;
    // Go refuses a top-level struct none of whose fields it knows ("no fields matched"), so
    // a range is not taken for an empty gossip state.
    let wire = s.wire_fields();
    if !wire.is_empty()
        && !wire
            .iter()
            .any(|f| known.iter().any(|k| *f.name == *k.name))
    {
        return Err(err(GobError::TypeMismatch {
            expected: what,
            found,
        }));
    }
    let value = read(s)?;
    top.finish().map_err(&err)?;
    if !dec.is_at_end() {
        return Err(WireError::TrailingData(what));
    }
    Ok(value)
}

/// Reads a `gossipState`, matching fields by name and skipping unknown ones (as Go does).
fn read_gossip_state(mut s: StructReader<'_, '_>) -> Result<GossipState, WireError> {
    let err = malformed(GOSSIP_WHAT);
    let mut state = GossipState::default();
    while let Some((field, v)) = s.next_field().map_err(&err)? {
        match field {
            "Now" => state.now = v.int().map_err(&err)?,
            "Nicknames" => state.nicknames = read_nicknames(v)?,
            "Paxos" => state.paxos = Some(read_paxos(v)?),
            "Ring" => {
                let ring = v.into_struct().map_err(malformed(RING_WHAT))?;
                state.ring = Some(read_ring(ring)?);
            }
            _ => v.skip().map_err(&err)?,
        }
    }
    Ok(state)
}

/// Reads `map[mesh.PeerName]string`, entries in wire order.
fn read_nicknames(slot: Slot<'_, '_>) -> Result<Vec<(PeerName, String)>, WireError> {
    let err = malformed(NICKNAMES_WHAT);
    let mut map = slot.into_map().map_err(&err)?;
    let mut out = Vec::with_capacity(map.remaining().min(PREALLOC_LIMIT));
    while let Some(key) = map.next_key().map_err(&err)? {
        let name = peer_name(key.uint().map_err(&err)?)?;
        let nickname = map.elem().and_then(Slot::string).map_err(&err)?;
        out.push((name, nickname.to_owned()));
    }
    Ok(out)
}

/// Reads `paxos.GossipState`, entries in wire order.
fn read_paxos(slot: Slot<'_, '_>) -> Result<Vec<(NodeId, NodeClaims)>, WireError> {
    let err = malformed(PAXOS_WHAT);
    let mut map = slot.into_map().map_err(&err)?;
    let mut out = Vec::with_capacity(map.remaining().min(PREALLOC_LIMIT));
    while let Some(key) = map.next_key().map_err(&err)? {
        let node = read_node_id(key)?;
        let claims = read_node_claims(map.elem().map_err(&err)?)?;
        out.push((node, claims));
    }
    Ok(out)
}

fn read_node_id(slot: Slot<'_, '_>) -> Result<NodeId, WireError> {
    let err = malformed(PAXOS_WHAT);
    let mut s = slot.into_struct().map_err(&err)?;
    let mut node = NodeId::default();
    while let Some((field, v)) = s.next_field().map_err(&err)? {
        match field {
            "Name" => node.name = peer_name(v.uint().map_err(&err)?)?,
            "UID" => node.uid = PeerUid(v.uint().map_err(&err)?),
            _ => v.skip().map_err(&err)?,
        }
    }
    Ok(node)
}

fn read_node_claims(slot: Slot<'_, '_>) -> Result<NodeClaims, WireError> {
    let err = malformed(PAXOS_WHAT);
    let mut s = slot.into_struct().map_err(&err)?;
    let mut claims = NodeClaims::default();
    while let Some((field, v)) = s.next_field().map_err(&err)? {
        match field {
            "Promise" => claims.promise = read_proposal_id(v)?,
            "Accepted" => claims.accepted = read_proposal_id(v)?,
            "AcceptedVal" => claims.accepted_val = read_accepted_value(v)?,
            _ => v.skip().map_err(&err)?,
        }
    }
    Ok(claims)
}

fn read_proposal_id(slot: Slot<'_, '_>) -> Result<ProposalId, WireError> {
    let err = malformed(PAXOS_WHAT);
    let mut s = slot.into_struct().map_err(&err)?;
    let mut id = ProposalId::default();
    while let Some((field, v)) = s.next_field().map_err(&err)? {
        match field {
            "Round" => id.round = v.uint().map_err(&err)?,
            "Proposer" => id.proposer = read_node_id(v)?,
            _ => v.skip().map_err(&err)?,
        }
    }
    Ok(id)
}

fn read_accepted_value(slot: Slot<'_, '_>) -> Result<AcceptedValue, WireError> {
    let err = malformed(PAXOS_WHAT);
    let mut s = slot.into_struct().map_err(&err)?;
    let mut val = AcceptedValue::default();
    while let Some((field, v)) = s.next_field().map_err(&err)? {
        match field {
            "Value" => val.value = read_peer_names(v, PAXOS_WHAT)?,
            "Origin" => val.origin = read_proposal_id(v)?,
            _ => v.skip().map_err(&err)?,
        }
    }
    Ok(val)
}

/// Reads a `ring.Ring`.
fn read_ring(mut s: StructReader<'_, '_>) -> Result<RingState, WireError> {
    let err = malformed(RING_WHAT);
    let mut ring = RingState::default();
    while let Some((field, v)) = s.next_field().map_err(&err)? {
        match field {
            "Start" => ring.start = address("ring start", v.uint().map_err(&err)?)?,
            "End" => ring.end = address("ring end", v.uint().map_err(&err)?)?,
            "Peer" => ring.peer = peer_name(v.uint().map_err(&err)?)?,
            "Entries" => ring.entries = read_entries(v)?,
            "Seeds" => ring.seeds = read_peer_names(v, RING_WHAT)?,
            _ => v.skip().map_err(&err)?,
        }
    }
    Ok(ring)
}

fn read_entries(slot: Slot<'_, '_>) -> Result<Vec<Entry>, WireError> {
    let err = malformed(RING_WHAT);
    let mut seq = slot.into_slice().map_err(&err)?;
    let mut out = Vec::with_capacity(seq.remaining().min(PREALLOC_LIMIT));
    while let Some(elem) = seq.next_elem().map_err(&err)? {
        let mut s = elem.into_struct().map_err(&err)?;
        let mut entry = Entry::default();
        while let Some((field, v)) = s.next_field().map_err(&err)? {
            match field {
                "Token" => entry.token = address("ring token", v.uint().map_err(&err)?)?,
                "Peer" => entry.peer = peer_name(v.uint().map_err(&err)?)?,
                "Version" => entry.version = uint32("ring entry version", v.uint().map_err(&err)?)?,
                "Free" => entry.free = uint32("ring free count", v.uint().map_err(&err)?)?,
                _ => v.skip().map_err(&err)?,
            }
        }
        out.push(entry);
    }
    Ok(out)
}

/// Reads a `[]mesh.PeerName` (also `paxos.Value`).
fn read_peer_names(slot: Slot<'_, '_>, what: &'static str) -> Result<Vec<PeerName>, WireError> {
    let err = malformed(what);
    let mut seq = slot.into_slice().map_err(&err)?;
    let mut out = Vec::with_capacity(seq.remaining().min(PREALLOC_LIMIT));
    while let Some(elem) = seq.next_elem().map_err(&err)? {
        out.push(peer_name(elem.uint().map_err(&err)?)?);
    }
    Ok(out)
}

/// Reads an `address.Range`.
fn read_range(mut s: StructReader<'_, '_>) -> Result<Range, WireError> {
    let err = malformed(RANGE_WHAT);
    let mut range = Range::default();
    while let Some((field, v)) = s.next_field().map_err(&err)? {
        match field {
            "Start" => range.start = address("range start", v.uint().map_err(&err)?)?,
            "End" => range.end = address("range end", v.uint().map_err(&err)?)?,
            _ => v.skip().map_err(&err)?,
        }
    }
    Ok(range)
}

/// Wraps a [`GobError`] with the part of the payload it came from.
fn malformed(what: &'static str) -> impl Fn(GobError) -> WireError {
    move |err| WireError::Gob { what, err }
}

fn peer_name(v: u64) -> Result<PeerName, WireError> {
    PeerName::from_u64(v).ok_or(WireError::PeerNameTooWide(v))
}

fn address(what: &'static str, v: u64) -> Result<Address, WireError> {
    uint32(what, v).map(Address)
}

fn uint32(what: &'static str, value: u64) -> Result<u32, WireError> {
    u32::try_from(value).map_err(|_| WireError::Uint32TooWide { what, value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(v: u64) -> PeerName {
        PeerName::from_u64(v).unwrap()
    }

    fn node(n: u64, uid: u64) -> NodeId {
        NodeId {
            name: name(n),
            uid: PeerUid(uid),
        }
    }

    fn sample_ring() -> RingState {
        RingState {
            start: Address(0x0a20_0000),
            end: Address(0x0a30_0000),
            peer: name(0xaa00_0000_0001),
            entries: vec![
                Entry {
                    token: Address(0x0a20_0000),
                    peer: name(0xaa00_0000_0001),
                    version: 1,
                    free: 524_287,
                },
                Entry {
                    token: Address(0x0a28_0000),
                    peer: name(0xaa00_0000_0002),
                    version: 0,
                    free: 524_288,
                },
            ],
            seeds: vec![name(0xaa00_0000_0001), name(0xaa00_0000_0002)],
        }
    }

    fn sample_claims() -> Vec<(NodeId, NodeClaims)> {
        let proposal = ProposalId {
            round: 1,
            proposer: node(0xaa00_0000_0001, 7),
        };
        vec![(
            node(0xaa00_0000_0001, 7),
            NodeClaims {
                promise: proposal,
                accepted: proposal,
                accepted_val: AcceptedValue {
                    value: vec![name(0xaa00_0000_0001), name(0xaa00_0000_0002)],
                    origin: proposal,
                },
            },
        )]
    }

    #[test]
    fn gossip_states_round_trip() {
        let elector = GossipState {
            now: 1_795_337_569,
            nicknames: vec![(name(0xaa00_0000_0001), "host1".into())],
            paxos: Some(vec![]),
            ring: None,
        };
        let claiming = GossipState {
            paxos: Some(sample_claims()),
            ..elector.clone()
        };
        let with_ring = GossipState {
            paxos: None,
            ring: Some(sample_ring()),
            ..elector.clone()
        };
        for state in [elector, claiming, with_ring, GossipState::default()] {
            assert_eq!(decode_gossip(&encode_gossip(&state)), Ok(state));
        }
    }

    #[test]
    fn empty_paxos_map_is_sent_and_nil_one_is_not() {
        let empty = GossipState {
            paxos: Some(vec![]),
            ..GossipState::default()
        };
        let nil = GossipState::default();
        let empty_bytes = encode_gossip(&empty);
        let nil_bytes = encode_gossip(&nil);
        // The value message is the last one; the definitions are the same in both streams.
        // Nil: Nicknames (delta 2, count 0), end. Empty: plus Paxos (delta 1, count 0).
        assert!(empty_bytes.ends_with(&[0x02, 0x00, 0x01, 0x00, 0x00]));
        assert!(nil_bytes.ends_with(&[0x02, 0x00, 0x00]));
        assert_eq!(empty_bytes.len(), nil_bytes.len() + 2);
        assert_eq!(decode_gossip(&empty_bytes).unwrap().paxos, Some(vec![]));
        assert_eq!(decode_gossip(&nil_bytes).unwrap().paxos, None);
    }

    #[test]
    fn unicasts_round_trip_with_their_kind_byte() {
        let range = Range::new(Address(0x0a20_0000), Address(0x0a30_0000));
        let cases = [
            (Unicast::SpaceRequest(range), 0),
            (
                Unicast::RingUpdate(GossipState {
                    ring: Some(sample_ring()),
                    ..GossipState::default()
                }),
                1,
            ),
            (Unicast::SpaceRequestDenied(range), 2),
        ];
        for (msg, kind) in cases {
            let bytes = encode_unicast(&msg);
            assert_eq!(bytes[0], kind);
            assert_eq!(decode_unicast(&bytes), Ok(msg));
        }
    }

    #[test]
    fn space_request_encodes_as_weave_does() {
        // Frame 283 of three-peers-plain: host3's space request (its Range was type 86).
        let range = Range::new(Address(0x0a20_0000), Address(0x0a30_0000));
        let msg = Unicast::SpaceRequest(range);
        let bytes = encode_unicast_with(gob::Encoder::with_first_type_id(TypeId(86)), &msg);
        let captured = "0025ffab0301010552616e676501ffac000102010553746172740106000103456e64010600\
                        00000fffac01fc0a20000001fc0a30000000";
        assert_eq!(hex::encode(&bytes), captured);
        assert_eq!(decode_unicast(&bytes), Ok(msg));
        assert_eq!(decode_range(&bytes[1..]), Ok(range));
    }

    #[test]
    fn rings_round_trip_for_persistence() {
        for ring in [sample_ring(), RingState::default()] {
            assert_eq!(decode_ring(&encode_ring(&ring)), Ok(ring));
        }
    }

    #[test]
    fn bad_unicast_kinds_are_refused() {
        assert_eq!(
            decode_unicast(&[]),
            Err(WireError::Missing("IPAM unicast message kind"))
        );
        let mut bytes = encode_unicast(&Unicast::SpaceRequest(Range::default()));
        bytes[0] = 3;
        assert_eq!(
            decode_unicast(&bytes),
            Err(WireError::UnknownIpamMessage(3))
        );
        assert_eq!(
            decode_unicast(&[1]),
            Err(WireError::Missing("IPAM gossip state"))
        );
        // A ring update whose stream holds a range.
        bytes[0] = unicast_kind::RING_UPDATE;
        assert!(matches!(
            decode_unicast(&bytes),
            Err(WireError::Gob {
                what: "IPAM gossip state",
                ..
            })
        ));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let state = GossipState {
            now: 5,
            nicknames: vec![(name(1), "a".into())],
            paxos: Some(sample_claims()),
            ring: Some(sample_ring()),
        };
        let bytes = encode_gossip(&state);
        for len in 0..bytes.len() {
            assert!(decode_gossip(&bytes[..len]).is_err(), "prefix of {len}");
        }
        let ring = encode_ring(&sample_ring());
        for len in 0..ring.len() {
            assert!(decode_ring(&ring[..len]).is_err(), "prefix of {len}");
        }
        let unicast = encode_unicast(&Unicast::SpaceRequestDenied(Range::default()));
        for len in 0..unicast.len() {
            assert!(decode_unicast(&unicast[..len]).is_err(), "prefix of {len}");
        }
    }

    #[test]
    fn trailing_values_are_refused() {
        let mut bytes = encode_range(&Range::default());
        let mut enc = gob::Encoder::new();
        enc.uint(1);
        bytes.extend_from_slice(enc.as_bytes());
        assert_eq!(
            decode_range(&bytes),
            Err(WireError::TrailingData("IPAM range"))
        );
    }

    #[test]
    fn names_wider_than_48_bits_are_refused() {
        let mut enc = gob::Encoder::new();
        enc.encode(&GOSSIP_STATE, |w| {
            let mut s = w.begin_struct();
            let mut m = s.field(1);
            m.seq_len(1);
            m.uint(1 << 48);
            m.string("wide");
            s.end();
        });
        assert_eq!(
            decode_gossip(enc.as_bytes()),
            Err(WireError::PeerNameTooWide(1 << 48))
        );

        let mut ring = sample_ring();
        ring.seeds.clear();
        let mut enc = gob::Encoder::new();
        enc.encode(&RING, |w| {
            let mut s = w.begin_struct();
            s.uint(2, u64::MAX);
            s.end();
        });
        assert_eq!(
            decode_ring(enc.as_bytes()),
            Err(WireError::PeerNameTooWide(u64::MAX))
        );
    }

    #[test]
    fn addresses_and_counts_wider_than_32_bits_are_refused() {
        let mut enc = gob::Encoder::new();
        enc.encode(&RING, |w| {
            let mut s = w.begin_struct();
            let mut e = s.field(3);
            e.seq_len(1);
            let mut entry = e.begin_struct();
            entry.uint(3, 1 << 32);
            entry.end();
            s.end();
        });
        assert_eq!(
            decode_ring(enc.as_bytes()),
            Err(WireError::Uint32TooWide {
                what: "ring free count",
                value: 1 << 32
            })
        );
        let mut enc = gob::Encoder::new();
        enc.encode(&RANGE, |w| {
            let mut s = w.begin_struct();
            s.uint(1, 1 << 40);
            s.end();
        });
        assert_eq!(
            decode_range(enc.as_bytes()),
            Err(WireError::Uint32TooWide {
                what: "range end",
                value: 1 << 40
            })
        );
    }

    #[test]
    fn wrong_field_types_and_unknown_fields() {
        // A gossipState whose Now is a string: Go refuses it, so do we.
        static ODD: TypeDesc = TypeDesc::Struct {
            name: "gossipState",
            fields: &[
                FieldDesc {
                    name: "Now",
                    ty: &TypeDesc::String,
                },
                FieldDesc {
                    name: "Future",
                    ty: &TypeDesc::String,
                },
            ],
        };
        let mut enc = gob::Encoder::new();
        enc.encode(&ODD, |w| {
            let mut s = w.begin_struct();
            s.string(0, "soon");
            s.end();
        });
        assert!(matches!(
            decode_gossip(enc.as_bytes()),
            Err(WireError::Gob {
                what: "IPAM gossip state",
                err: GobError::TypeMismatch { .. }
            })
        ));
        // An unknown field is skipped.
        let mut enc = gob::Encoder::new();
        enc.encode(&ODD, |w| {
            let mut s = w.begin_struct();
            s.string(1, "ignored");
            s.end();
        });
        assert_eq!(decode_gossip(enc.as_bytes()), Ok(GossipState::default()));
        // A top-level value that is not a struct.
        let mut enc = gob::Encoder::new();
        enc.uint(3);
        assert!(matches!(
            decode_ring(enc.as_bytes()),
            Err(WireError::Gob {
                what: "IPAM ring",
                err: GobError::TypeMismatch { .. }
            })
        ));
    }

    #[test]
    fn a_lying_count_reserves_nothing_big() {
        // Nicknames announcing a count near the bytes left: refused or read, never a panic,
        // and at most PREALLOC_LIMIT entries reserved up front.
        let mut enc = gob::Encoder::new();
        enc.encode(&GOSSIP_STATE, |w| {
            let mut s = w.begin_struct();
            let mut m = s.field(1);
            m.seq_len(100_000);
            s.end();
        });
        let mut bytes = enc.into_bytes();
        bytes.extend(std::iter::repeat_n(0, 300_000));
        assert!(decode_gossip(&bytes).is_err());
    }

    fn arb_name() -> impl Strategy<Value = PeerName> {
        (0..=PeerName::MAX).prop_map(name)
    }

    fn arb_node() -> impl Strategy<Value = NodeId> {
        (arb_name(), any::<u64>()).prop_map(|(name, uid)| NodeId {
            name,
            uid: PeerUid(uid),
        })
    }

    fn arb_proposal() -> impl Strategy<Value = ProposalId> {
        (any::<u64>(), arb_node()).prop_map(|(round, proposer)| ProposalId { round, proposer })
    }

    fn arb_claims() -> impl Strategy<Value = NodeClaims> {
        (
            arb_proposal(),
            arb_proposal(),
            proptest::collection::vec(arb_name(), 0..4),
            arb_proposal(),
        )
            .prop_map(|(promise, accepted, value, origin)| NodeClaims {
                promise,
                accepted,
                accepted_val: AcceptedValue { value, origin },
            })
    }

    fn arb_ring() -> impl Strategy<Value = RingState> {
        let entry = (any::<u32>(), arb_name(), any::<u32>(), any::<u32>()).prop_map(
            |(token, peer, version, free)| Entry {
                token: Address(token),
                peer,
                version,
                free,
            },
        );
        (
            any::<u32>(),
            any::<u32>(),
            arb_name(),
            proptest::collection::vec(entry, 0..6),
            proptest::collection::vec(arb_name(), 0..4),
        )
            .prop_map(|(start, end, peer, entries, seeds)| RingState {
                start: Address(start),
                end: Address(end),
                peer,
                entries,
                seeds,
            })
    }

    fn arb_state() -> impl Strategy<Value = GossipState> {
        (
            any::<i64>(),
            proptest::collection::vec((arb_name(), ".{0,12}"), 0..4),
            proptest::option::of(proptest::collection::vec((arb_node(), arb_claims()), 0..4)),
            proptest::option::of(arb_ring()),
        )
            .prop_map(|(now, nicknames, paxos, ring)| GossipState {
                now,
                nicknames,
                paxos,
                ring,
            })
    }

    fn arb_range() -> impl Strategy<Value = Range> {
        (any::<u32>(), any::<u32>()).prop_map(|(s, e)| Range::new(Address(s), Address(e)))
    }

    fn arb_unicast() -> impl Strategy<Value = Unicast> {
        prop_oneof![
            arb_range().prop_map(Unicast::SpaceRequest),
            arb_state().prop_map(Unicast::RingUpdate),
            arb_range().prop_map(Unicast::SpaceRequestDenied),
        ]
    }

    proptest! {
        #[test]
        fn gossip_round_trips(state in arb_state()) {
            prop_assert_eq!(decode_gossip(&encode_gossip(&state)), Ok(state));
        }

        #[test]
        fn unicast_round_trips(msg in arb_unicast()) {
            prop_assert_eq!(decode_unicast(&encode_unicast(&msg)), Ok(msg));
        }

        #[test]
        fn ring_round_trips(ring in arb_ring()) {
            prop_assert_eq!(decode_ring(&encode_ring(&ring)), Ok(ring));
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_gossip(&bytes);
            let _ = decode_unicast(&bytes);
            let _ = decode_ring(&bytes);
            let _ = decode_range(&bytes);
        }

        #[test]
        fn mutated_valid_payloads_never_panic(
            state in arb_state(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        ) {
            // Flipping bytes of a valid stream reaches the typed readers, which random bytes
            // rarely do; whatever still decodes must round-trip.
            let mut bytes = encode_gossip(&state);
            for (at, v) in flips {
                let i = at % bytes.len();
                bytes[i] = v;
            }
            if let Ok(decoded) = decode_gossip(&bytes) {
                prop_assert_eq!(decode_gossip(&encode_gossip(&decoded)), Ok(decoded));
            }
            let _ = decode_unicast(&bytes);
            let _ = decode_ring(&bytes);
        }
    }
}
