//! The mesh's TCP protocol (version 2): header, framing, feature map, tagged messages,
//! gossip envelopes and topology payloads.

use std::collections::BTreeMap;

use crate::ids::PeerName;

/// Errors from decoding mesh protocol data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The placeholder until the codec lands.
    #[error("not implemented")]
    Todo,
}

/// The 7-byte protocol header: `"weave"`, min version, max version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolHeader {
    /// Lowest protocol version offered.
    pub min_version: u8,
    /// Highest protocol version offered.
    pub max_version: u8,
}

/// Largest message body accepted in protocol 2 (10 MiB).
pub const MAX_MESSAGE_LEN: usize = 10 * 1024 * 1024;

/// One peer's entry in a topology update (Weave's `peerSummary`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSummary {
    /// The peer's name (`NameByte`).
    pub name: PeerName,
    /// Its nickname.
    pub nickname: String,
    /// Its process UID.
    pub uid: u64,
    /// Its topology version.
    pub version: u64,
    /// Its short id.
    pub short_id: u16,
    /// Whether `short_id` is meaningful.
    pub has_short_id: bool,
}

/// One connection of a peer in a topology update (Weave's `connectionSummary`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSummary {
    /// The remote peer's name (`NameByte`).
    pub name: PeerName,
    /// The remote TCP address as the owning peer sees it.
    pub remote_tcp_addr: String,
    /// Whether the owning peer dialled.
    pub outbound: bool,
    /// Whether the connection is established.
    pub established: bool,
}

/// A peer and its connections, as a topology update carries them.
pub type TopologyEntry = (PeerSummary, Vec<ConnectionSummary>);

/// A message after the feature map, parsed from a length-prefixed body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Tag 0: keep-alive.
    Heartbeat,
    /// Tag 4: gossip to a neighbour.
    Gossip {
        /// Gossip channel name.
        channel: String,
        /// Originating peer.
        src: PeerName,
        /// Channel payload.
        payload: Vec<u8>,
    },
    /// Tag 5: gossip addressed to one peer, relayed hop by hop.
    GossipUnicast {
        /// Gossip channel name.
        channel: String,
        /// Originating peer.
        src: PeerName,
        /// Destination peer.
        dst: PeerName,
        /// Channel payload.
        payload: Vec<u8>,
    },
    /// Tag 6: gossip to every peer along the source's broadcast tree.
    GossipBroadcast {
        /// Gossip channel name.
        channel: String,
        /// Originating peer.
        src: PeerName,
        /// Channel payload.
        payload: Vec<u8>,
    },
    /// Tag 7: an overlay's control message.
    OverlayControl {
        /// Which overlay (index in the overlay switch).
        overlay: u8,
        /// The overlay's sub-tag.
        subtag: u8,
        /// The rest of the body.
        data: Vec<u8>,
    },
    /// Any other tag, kept rather than rejected.
    Unknown {
        /// The tag byte.
        tag: u8,
        /// The rest of the body.
        body: Vec<u8>,
    },
}

impl ProtocolHeader {
    /// Parses the 7-byte header.
    pub fn parse(_buf: &[u8; 7]) -> Result<Self, WireError> {
        todo!()
    }
    /// Emits the 7-byte header.
    pub fn emit(&self) -> [u8; 7] {
        todo!()
    }
}

impl Message {
    /// Parses a message body (tag byte + payload).
    pub fn parse(_body: &[u8]) -> Result<Self, WireError> {
        todo!()
    }
    /// Emits the body (tag byte + payload), without the length prefix.
    pub fn emit(&self) -> Vec<u8> {
        todo!()
    }
}

/// Encodes a feature map as the first message body.
pub fn encode_features(_features: &BTreeMap<String, String>) -> Vec<u8> {
    todo!()
}

/// Decodes the first message body into a feature map.
pub fn decode_features(_body: &[u8]) -> Result<BTreeMap<String, String>, WireError> {
    todo!()
}

/// Encodes a topology gossip payload.
pub fn encode_topology(_entries: &[TopologyEntry]) -> Vec<u8> {
    todo!()
}

/// Decodes a topology gossip payload.
pub fn decode_topology(_payload: &[u8]) -> Result<Vec<TopologyEntry>, WireError> {
    todo!()
}

/// Splits a v2 byte stream into message bodies (4-byte big-endian length + body).
#[derive(Debug, Default)]
pub struct FrameDecoder {
    _buf: Vec<u8>,
}

impl FrameDecoder {
    /// Appends received bytes.
    pub fn push(&mut self, _data: &[u8]) {
        todo!()
    }
    /// Returns the next complete body, `Ok(None)` when more bytes are needed, or an error
    /// for a length over [`MAX_MESSAGE_LEN`].
    pub fn next_body(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        todo!()
    }
}

/// Prefixes a body with its 4-byte big-endian length.
pub fn frame(_body: &[u8]) -> Vec<u8> {
    todo!()
}
