//! The mesh's TCP protocol (version 2): header, framing, feature map, tagged messages,
//! gossip envelopes and topology payloads.

use std::collections::BTreeMap;

use crate::ids::PeerName;
use crate::wire::gob::{self, FieldDesc, GobError, Slot, TypeDesc};

/// Errors from decoding mesh protocol data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The protocol header did not start with `"weave"`.
    #[error("protocol header starts with {0:02x?}, not \"weave\"")]
    BadMagic([u8; 5]),
    /// A length prefix announced a body larger than [`MAX_MESSAGE_LEN`].
    #[error("message length {0} exceeds the {MAX_MESSAGE_LEN}-byte limit")]
    TooLong(usize),
    /// A message body had no tag byte.
    #[error("empty message body")]
    EmptyBody,
    /// A heartbeat (tag 0) carried bytes after its tag.
    #[error("heartbeat with {0} bytes of payload")]
    HeartbeatPayload(usize),
    /// An overlay control message (tag 7) lacked its overlay index or sub-tag.
    #[error("overlay control message of {0} bytes lacks overlay index and sub-tag")]
    ShortOverlayControl(usize),
    /// The gob data of the named part was malformed or of the wrong type.
    #[error("malformed {what}: {err}")]
    Gob {
        /// Which part of the message: "feature map", "gossip channel name", ...
        what: &'static str,
        /// What the gob decoder found.
        #[source]
        err: GobError,
    },
    /// The named part ended before a value it needs.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// The named part had gob data after its last expected value.
    #[error("unexpected data after the {0}")]
    TrailingData(&'static str),
    /// A gob peer name did not fit 48 bits.
    #[error("peer name {0:#x} does not fit 48 bits")]
    PeerNameTooWide(u64),
    /// A topology `NameByte` was not 6 bytes long.
    #[error("peer name bytes of length {0}, expected 6")]
    BadNameBytes(usize),
    /// A topology `ShortID` did not fit 16 bits.
    #[error("short id {0} does not fit 16 bits")]
    ShortIdTooWide(u64),
    /// An IPAM address, free count or entry version did not fit the 32 bits of its Go type.
    #[error("{what} {value:#x} does not fit 32 bits")]
    Uint32TooWide {
        /// Which value: "ring token", "free count", ...
        what: &'static str,
        /// The value on the wire.
        value: u64,
    },
    /// An `IPallocation` unicast payload started with a message kind other than 0, 1 or 2.
    #[error("unknown IPAM unicast message kind {0}")]
    UnknownIpamMessage(u8),
}

/// Wraps a [`GobError`] with the part of the message it came from.
fn malformed(what: &'static str) -> impl Fn(GobError) -> WireError {
    move |err| WireError::Gob { what, err }
}

/// The first five bytes of the protocol header.
pub const PROTOCOL_MAGIC: [u8; 5] = *b"weave";

/// Message tags (the first byte of every body after the feature map).
pub mod tag {
    /// Keep-alive, no payload.
    pub const HEARTBEAT: u8 = 0;
    /// Gossip to a neighbour.
    pub const GOSSIP: u8 = 4;
    /// Gossip to one peer.
    pub const GOSSIP_UNICAST: u8 = 5;
    /// Gossip along a broadcast tree.
    pub const GOSSIP_BROADCAST: u8 = 6;
    /// An overlay's control message.
    pub const OVERLAY_CONTROL: u8 = 7;
}

/// Sub-tags of the sleeve overlay's control messages ([`Message::OverlayControl`]).
pub mod sleeve_subtag {
    /// The sender accepted our UDP heartbeat.
    pub const CONNECTION_ESTABLISHED: u8 = 1;
    /// The sender received our fragmentation test.
    pub const FRAGMENTATION_RECEIVED: u8 = 2;
    /// The sender received our PMTU probe; data = the MTU as a big-endian `u16`.
    pub const PMTU_VERIFIED: u8 = 3;
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
    /// Length of the header on the wire.
    pub const LEN: usize = 7;

    /// Parses the 7-byte header.
    pub fn parse(buf: &[u8; 7]) -> Result<Self, WireError> {
        let [w, e, a, v, e2, min_version, max_version] = *buf;
        let magic = [w, e, a, v, e2];
        if magic != PROTOCOL_MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        Ok(ProtocolHeader {
            min_version,
            max_version,
        })
    }

    /// Emits the 7-byte header.
    pub fn emit(&self) -> [u8; 7] {
        let [w, e, a, v, e2] = PROTOCOL_MAGIC;
        [w, e, a, v, e2, self.min_version, self.max_version]
    }

    /// The version both sides speak: the highest in both ranges, `None` if they do not meet.
    pub fn negotiate(&self, remote: &ProtocolHeader) -> Option<u8> {
        let lo = self.min_version.max(remote.min_version);
        let hi = self.max_version.min(remote.max_version);
        (lo <= hi).then_some(hi)
    }
}

impl Message {
    /// Parses a message body (tag byte + payload).
    pub fn parse(body: &[u8]) -> Result<Self, WireError> {
        let (&tag, rest) = body.split_first().ok_or(WireError::EmptyBody)?;
        match tag {
            tag::HEARTBEAT if rest.is_empty() => Ok(Message::Heartbeat),
            tag::HEARTBEAT => Err(WireError::HeartbeatPayload(rest.len())),
            tag::GOSSIP => {
                let g = parse_gossip(rest, false)?;
                Ok(Message::Gossip {
                    channel: g.channel,
                    src: g.src,
                    payload: g.payload,
                })
            }
            tag::GOSSIP_UNICAST => {
                let g = parse_gossip(rest, true)?;
                Ok(Message::GossipUnicast {
                    channel: g.channel,
                    src: g.src,
                    // parse_gossip always fills dst when asked to.
                    dst: g.dst.unwrap_or_default(),
                    payload: g.payload,
                })
            }
            tag::GOSSIP_BROADCAST => {
                let g = parse_gossip(rest, false)?;
                Ok(Message::GossipBroadcast {
                    channel: g.channel,
                    src: g.src,
                    payload: g.payload,
                })
            }
            tag::OVERLAY_CONTROL => {
                let [overlay, subtag, data @ ..] = rest else {
                    return Err(WireError::ShortOverlayControl(body.len()));
                };
                Ok(Message::OverlayControl {
                    overlay: *overlay,
                    subtag: *subtag,
                    data: data.to_vec(),
                })
            }
            _ => Ok(Message::Unknown {
                tag,
                body: rest.to_vec(),
            }),
        }
    }

    /// Emits the body (tag byte + payload), without the length prefix.
    pub fn emit(&self) -> Vec<u8> {
        match self {
            Message::Heartbeat => vec![tag::HEARTBEAT],
            Message::Gossip {
                channel,
                src,
                payload,
            } => emit_gossip(tag::GOSSIP, channel, *src, None, payload),
            Message::GossipUnicast {
                channel,
                src,
                dst,
                payload,
            } => emit_gossip(tag::GOSSIP_UNICAST, channel, *src, Some(*dst), payload),
            Message::GossipBroadcast {
                channel,
                src,
                payload,
            } => emit_gossip(tag::GOSSIP_BROADCAST, channel, *src, None, payload),
            Message::OverlayControl {
                overlay,
                subtag,
                data,
            } => {
                let mut out = Vec::with_capacity(3 + data.len());
                out.extend_from_slice(&[tag::OVERLAY_CONTROL, *overlay, *subtag]);
                out.extend_from_slice(data);
                out
            }
            Message::Unknown { tag, body } => {
                let mut out = Vec::with_capacity(1 + body.len());
                out.push(*tag);
                out.extend_from_slice(body);
                out
            }
        }
    }
}

/// The gob values of a gossip message after its tag.
struct GossipEnvelope {
    channel: String,
    src: PeerName,
    dst: Option<PeerName>,
    payload: Vec<u8>,
}

/// Reads `channel, src, [dst,] payload`: successive values of one gob stream.
fn parse_gossip(rest: &[u8], unicast: bool) -> Result<GossipEnvelope, WireError> {
    let mut dec = gob::Decoder::new(rest);
    let channel = dec
        .string()
        .map_err(malformed("gossip channel name"))?
        .to_owned();
    let src = peer_name(dec.uint().map_err(malformed("gossip source peer"))?)?;
    let dst = if unicast {
        Some(peer_name(
            dec.uint().map_err(malformed("gossip destination peer"))?,
        )?)
    } else {
        None
    };
    let payload = dec.bytes().map_err(malformed("gossip payload"))?.to_vec();
    if !dec.is_at_end() {
        return Err(WireError::TrailingData("gossip payload"));
    }
    Ok(GossipEnvelope {
        channel,
        src,
        dst,
        payload,
    })
}

fn peer_name(v: u64) -> Result<PeerName, WireError> {
    PeerName::from_u64(v).ok_or(WireError::PeerNameTooWide(v))
}

/// Writes tag + one fresh gob stream of the envelope's values.
fn emit_gossip(
    tag: u8,
    channel: &str,
    src: PeerName,
    dst: Option<PeerName>,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + channel.len() + payload.len());
    out.push(tag);
    let mut enc = gob::Encoder::with_buffer(out);
    enc.string(channel);
    enc.uint(src.as_u64());
    if let Some(dst) = dst {
        enc.uint(dst.as_u64());
    }
    enc.bytes(payload);
    enc.into_bytes()
}

/// Go's `map[string]string`.
static FEATURE_MAP: TypeDesc = TypeDesc::Map {
    key: &TypeDesc::String,
    elem: &TypeDesc::String,
};

/// Encodes a feature map as the first message body.
pub fn encode_features(features: &BTreeMap<String, String>) -> Vec<u8> {
    encode_features_with(gob::Encoder::new(), features)
}

/// Encodes a feature map with a given encoder, e.g. one whose type ids start where a Go
/// process's did, to compare bytes.
pub fn encode_features_with(mut enc: gob::Encoder, features: &BTreeMap<String, String>) -> Vec<u8> {
    enc.encode(&FEATURE_MAP, |w| {
        w.seq_len(features.len());
        for (k, v) in features {
            w.string(k);
            w.string(v);
        }
    });
    enc.into_bytes()
}

/// Decodes the first message body into a feature map. A key sent twice keeps its last value,
/// as Go's decoder does.
pub fn decode_features(body: &[u8]) -> Result<BTreeMap<String, String>, WireError> {
    const WHAT: &str = "feature map";
    let mut dec = gob::Decoder::new(body);
    let mut top = dec
        .next_top()
        .map_err(malformed(WHAT))?
        .ok_or(WireError::Missing(WHAT))?;
    let mut map = top
        .slot()
        .and_then(Slot::into_map)
        .map_err(malformed(WHAT))?;
    if map.key_type() != gob::TypeId::STRING || map.elem_type() != gob::TypeId::STRING {
        return Err(WireError::Gob {
            what: WHAT,
            err: GobError::TypeMismatch {
                expected: "map[string]string",
                found: top.type_id().0,
            },
        });
    }
    let mut out = BTreeMap::new();
    while let Some(key) = map.next_key().map_err(malformed(WHAT))? {
        let key = key.string().map_err(malformed(WHAT))?;
        let value = map.elem().and_then(Slot::string).map_err(malformed(WHAT))?;
        out.insert(key.to_owned(), value.to_owned());
    }
    top.finish().map_err(malformed(WHAT))?;
    if !dec.is_at_end() {
        return Err(WireError::TrailingData(WHAT));
    }
    Ok(out)
}

/// Field order of Go's `peerSummary`; a Go peer matches fields by these names.
static PEER_SUMMARY_FIELDS: [FieldDesc; 6] = [
    FieldDesc {
        name: "NameByte",
        ty: &TypeDesc::Bytes,
    },
    FieldDesc {
        name: "NickName",
        ty: &TypeDesc::String,
    },
    FieldDesc {
        name: "UID",
        ty: &TypeDesc::Uint,
    },
    FieldDesc {
        name: "Version",
        ty: &TypeDesc::Uint,
    },
    FieldDesc {
        name: "ShortID",
        ty: &TypeDesc::Uint,
    },
    FieldDesc {
        name: "HasShortID",
        ty: &TypeDesc::Bool,
    },
];

/// Go's `peerSummary`.
static PEER_SUMMARY: TypeDesc = TypeDesc::Struct {
    name: "peerSummary",
    fields: &PEER_SUMMARY_FIELDS,
};

/// Field order of Go's `connectionSummary`.
static CONNECTION_SUMMARY_FIELDS: [FieldDesc; 4] = [
    FieldDesc {
        name: "NameByte",
        ty: &TypeDesc::Bytes,
    },
    FieldDesc {
        name: "RemoteTCPAddr",
        ty: &TypeDesc::String,
    },
    FieldDesc {
        name: "Outbound",
        ty: &TypeDesc::Bool,
    },
    FieldDesc {
        name: "Established",
        ty: &TypeDesc::Bool,
    },
];

/// Go's `connectionSummary`.
static CONNECTION_SUMMARY: TypeDesc = TypeDesc::Struct {
    name: "connectionSummary",
    fields: &CONNECTION_SUMMARY_FIELDS,
};

/// Go's `[]connectionSummary`.
static CONNECTION_SUMMARIES: TypeDesc = TypeDesc::Slice {
    elem: &CONNECTION_SUMMARY,
};

/// Encodes a topology gossip payload.
pub fn encode_topology(entries: &[TopologyEntry]) -> Vec<u8> {
    encode_topology_with(gob::Encoder::new(), entries)
}

/// Encodes a topology payload with a given encoder, e.g. one whose type ids start where a
/// Go process's did, to compare bytes.
pub fn encode_topology_with(mut enc: gob::Encoder, entries: &[TopologyEntry]) -> Vec<u8> {
    for (peer, conns) in entries {
        enc.encode(&PEER_SUMMARY, |w| {
            let mut s = w.begin_struct();
            s.bytes(0, &peer.name.to_bytes());
            s.string(1, &peer.nickname);
            s.uint(2, peer.uid);
            s.uint(3, peer.version);
            s.uint(4, u64::from(peer.short_id));
            s.bool(5, peer.has_short_id);
            s.end();
        });
        enc.encode(&CONNECTION_SUMMARIES, |w| {
            w.seq_len(conns.len());
            for c in conns {
                let mut s = w.begin_struct();
                s.bytes(0, &c.name.to_bytes());
                s.string(1, &c.remote_tcp_addr);
                s.bool(2, c.outbound);
                s.bool(3, c.established);
                s.end();
            }
        });
    }
    enc.into_bytes()
}

/// Decodes a topology gossip payload.
pub fn decode_topology(payload: &[u8]) -> Result<Vec<TopologyEntry>, WireError> {
    const PEER: &str = "topology peer summary";
    const CONNS: &str = "topology connection list";
    let mut dec = gob::Decoder::new(payload);
    let mut out = Vec::new();
    loop {
        let Some(mut top) = dec.next_top().map_err(malformed(PEER))? else {
            return Ok(out);
        };
        let peer = read_peer_summary(top.slot().map_err(malformed(PEER))?)?;
        top.finish().map_err(malformed(PEER))?;
        let mut top = dec
            .next_top()
            .map_err(malformed(CONNS))?
            .ok_or(WireError::Missing(CONNS))?;
        let conns = read_connection_summaries(top.slot().map_err(malformed(CONNS))?)?;
        top.finish().map_err(malformed(CONNS))?;
        out.push((peer, conns));
    }
}

/// Reads a `peerSummary`, matching fields by name and skipping unknown ones (as Go does).
fn read_peer_summary(slot: Slot<'_, '_>) -> Result<PeerSummary, WireError> {
    const WHAT: &str = "topology peer summary";
    let err = malformed(WHAT);
    let mut s = slot.into_struct().map_err(&err)?;
    let mut name: &[u8] = &[];
    let mut summary = PeerSummary {
        name: PeerName::default(),
        nickname: String::new(),
        uid: 0,
        version: 0,
        short_id: 0,
        has_short_id: false,
    };
    while let Some((field, v)) = s.next_field().map_err(&err)? {
        match field {
            "NameByte" => name = v.bytes().map_err(&err)?,
            "NickName" => summary.nickname = v.string().map_err(&err)?.to_owned(),
            "UID" => summary.uid = v.uint().map_err(&err)?,
            "Version" => summary.version = v.uint().map_err(&err)?,
            "ShortID" => {
                let id = v.uint().map_err(&err)?;
                summary.short_id = u16::try_from(id).map_err(|_| WireError::ShortIdTooWide(id))?;
            }
            "HasShortID" => summary.has_short_id = v.bool().map_err(&err)?,
            _ => v.skip().map_err(&err)?,
        }
    }
    summary.name = name_from_bytes(name)?;
    Ok(summary)
}

/// Reads a `[]connectionSummary`.
fn read_connection_summaries(slot: Slot<'_, '_>) -> Result<Vec<ConnectionSummary>, WireError> {
    const WHAT: &str = "topology connection list";
    let err = malformed(WHAT);
    let mut seq = slot.into_slice().map_err(&err)?;
    let mut out = Vec::with_capacity(seq.remaining());
    while let Some(elem) = seq.next_elem().map_err(&err)? {
        let mut s = elem.into_struct().map_err(&err)?;
        let mut name: &[u8] = &[];
        let mut conn = ConnectionSummary {
            name: PeerName::default(),
            remote_tcp_addr: String::new(),
            outbound: false,
            established: false,
        };
        while let Some((field, v)) = s.next_field().map_err(&err)? {
            match field {
                "NameByte" => name = v.bytes().map_err(&err)?,
                "RemoteTCPAddr" => conn.remote_tcp_addr = v.string().map_err(&err)?.to_owned(),
                "Outbound" => conn.outbound = v.bool().map_err(&err)?,
                "Established" => conn.established = v.bool().map_err(&err)?,
                _ => v.skip().map_err(&err)?,
            }
        }
        conn.name = name_from_bytes(name)?;
        out.push(conn);
    }
    Ok(out)
}

fn name_from_bytes(b: &[u8]) -> Result<PeerName, WireError> {
    PeerName::from_slice(b).ok_or(WireError::BadNameBytes(b.len()))
}

/// Splits a v2 byte stream into message bodies (4-byte big-endian length + body).
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out; compacted lazily so that each byte moves O(1) times.
    start: usize,
}

impl FrameDecoder {
    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Returns the next complete body, `Ok(None)` when more bytes are needed, or an error
    /// for a length over [`MAX_MESSAGE_LEN`].
    ///
    /// The error repeats on later calls: a v2 stream cannot be resynchronised after a bad
    /// length, so the connection must be closed.
    pub fn next_body(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        let avail = &self.buf[self.start..];
        let Some((len, rest)) = avail.split_first_chunk::<4>() else {
            return Ok(None);
        };
        // Checked as soon as the prefix arrives, before any of the body is waited for.
        let len = u32::from_be_bytes(*len) as usize;
        if len > MAX_MESSAGE_LEN {
            return Err(WireError::TooLong(len));
        }
        let Some(body) = rest.get(..len) else {
            return Ok(None);
        };
        let body = body.to_vec();
        self.start += 4 + len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(body))
    }

    /// Bytes received but not yet returned as bodies.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }
}

/// Prefixes a body with its 4-byte big-endian length. Bodies must not exceed
/// [`MAX_MESSAGE_LEN`]; a receiver refuses them.
pub fn frame(body: &[u8]) -> Vec<u8> {
    debug_assert!(body.len() <= MAX_MESSAGE_LEN, "message body too long");
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(v: u64) -> PeerName {
        PeerName::from_u64(v).unwrap()
    }

    #[test]
    fn header_round_trips_and_negotiates() {
        let bytes = [0x77, 0x65, 0x61, 0x76, 0x65, 0x01, 0x02];
        let h = ProtocolHeader::parse(&bytes).unwrap();
        assert_eq!(
            h,
            ProtocolHeader {
                min_version: 1,
                max_version: 2
            }
        );
        assert_eq!(h.emit(), bytes);
        assert_eq!(h.negotiate(&h), Some(2));
        let old = ProtocolHeader {
            min_version: 1,
            max_version: 1,
        };
        assert_eq!(h.negotiate(&old), Some(1));
        let future = ProtocolHeader {
            min_version: 3,
            max_version: 4,
        };
        assert_eq!(h.negotiate(&future), None);
    }

    #[test]
    fn header_with_wrong_magic_is_refused() {
        assert_eq!(
            ProtocolHeader::parse(b"GET / H"),
            Err(WireError::BadMagic(*b"GET /"))
        );
    }

    #[test]
    fn frame_decoder_reassembles_split_bodies() {
        let mut stream = frame(&[0x00]);
        stream.extend(frame(&[0x07, 0x00, 0x03, 0x05, 0x9e]));
        stream.extend(frame(&[]));
        let mut dec = FrameDecoder::default();
        let mut bodies = Vec::new();
        for chunk in stream.chunks(3) {
            dec.push(chunk);
            while let Some(body) = dec.next_body().unwrap() {
                bodies.push(body);
            }
        }
        assert_eq!(
            bodies,
            vec![vec![0x00], vec![0x07, 0x00, 0x03, 0x05, 0x9e], vec![]]
        );
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn frame_decoder_refuses_oversized_length_before_the_body_arrives() {
        let mut dec = FrameDecoder::default();
        dec.push(&((MAX_MESSAGE_LEN as u32) + 1).to_be_bytes());
        assert_eq!(
            dec.next_body(),
            Err(WireError::TooLong(MAX_MESSAGE_LEN + 1))
        );
        dec.push(&[0; 16]);
        assert!(dec.next_body().is_err());

        let mut dec = FrameDecoder::default();
        dec.push(&(MAX_MESSAGE_LEN as u32).to_be_bytes());
        assert_eq!(dec.next_body(), Ok(None));
    }

    #[test]
    fn frame_decoder_waits_for_a_truncated_body() {
        let mut dec = FrameDecoder::default();
        dec.push(&[0, 0, 0, 3, 0x07, 0x00]);
        assert_eq!(dec.next_body(), Ok(None));
        dec.push(&[0x01]);
        assert_eq!(dec.next_body(), Ok(Some(vec![0x07, 0x00, 0x01])));
    }

    #[test]
    fn simple_messages_parse_and_emit() {
        let cases = [
            (vec![0x00], Message::Heartbeat),
            (
                vec![0x07, 0x00, 0x03, 0x05, 0x9e],
                Message::OverlayControl {
                    overlay: 0,
                    subtag: sleeve_subtag::PMTU_VERIFIED,
                    data: vec![0x05, 0x9e],
                },
            ),
            (
                vec![0x02, 0xaa],
                Message::Unknown {
                    tag: 2,
                    body: vec![0xaa],
                },
            ),
        ];
        for (bytes, msg) in cases {
            assert_eq!(Message::parse(&bytes), Ok(msg.clone()));
            assert_eq!(msg.emit(), bytes);
        }
    }

    #[test]
    fn malformed_messages_get_specific_errors() {
        assert_eq!(Message::parse(&[]), Err(WireError::EmptyBody));
        assert_eq!(Message::parse(&[0, 1]), Err(WireError::HeartbeatPayload(1)));
        assert_eq!(
            Message::parse(&[7, 0]),
            Err(WireError::ShortOverlayControl(2))
        );
        assert!(matches!(
            Message::parse(&[4]),
            Err(WireError::Gob {
                what: "gossip channel name",
                err: GobError::Truncated
            })
        ));
        // A gossip whose "channel" is a uint.
        let mut enc = gob::Encoder::with_buffer(vec![4]);
        enc.uint(1);
        assert!(matches!(
            Message::parse(enc.as_bytes()),
            Err(WireError::Gob {
                what: "gossip channel name",
                err: GobError::TypeMismatch { .. }
            })
        ));
        // A source name wider than 48 bits.
        let mut enc = gob::Encoder::with_buffer(vec![4]);
        enc.string("topology");
        enc.uint(1 << 48);
        enc.bytes(&[]);
        assert_eq!(
            Message::parse(enc.as_bytes()),
            Err(WireError::PeerNameTooWide(1 << 48))
        );
        // A unicast without its destination.
        let mut enc = gob::Encoder::with_buffer(vec![5]);
        enc.string("IPallocation");
        enc.uint(1);
        enc.bytes(&[1, 2]);
        assert!(matches!(
            Message::parse(enc.as_bytes()),
            Err(WireError::Gob {
                what: "gossip destination peer",
                err: GobError::TypeMismatch { .. }
            })
        ));
        // A value after the payload.
        let mut enc = gob::Encoder::with_buffer(vec![6]);
        enc.string("x");
        enc.uint(1);
        enc.bytes(&[]);
        enc.uint(2);
        assert_eq!(
            Message::parse(enc.as_bytes()),
            Err(WireError::TrailingData("gossip payload"))
        );
    }

    #[test]
    fn garbage_feature_maps_are_refused() {
        assert_eq!(decode_features(&[]), Err(WireError::Missing("feature map")));
        assert!(matches!(
            decode_features(&[0xff, 0x01]),
            Err(WireError::Gob {
                what: "feature map",
                err: GobError::Truncated
            })
        ));
        // A string where the map should be.
        let mut enc = gob::Encoder::new();
        enc.string("Name");
        assert!(matches!(
            decode_features(enc.as_bytes()),
            Err(WireError::Gob {
                what: "feature map",
                err: GobError::TypeMismatch {
                    expected: "map",
                    ..
                }
            })
        ));
        // map[string]uint is not a feature map.
        static SU: TypeDesc = TypeDesc::Map {
            key: &TypeDesc::String,
            elem: &TypeDesc::Uint,
        };
        let mut enc = gob::Encoder::new();
        enc.encode(&SU, |w| w.seq_len(0));
        assert!(matches!(
            decode_features(enc.as_bytes()),
            Err(WireError::Gob {
                what: "feature map",
                err: GobError::TypeMismatch {
                    expected: "map[string]string",
                    ..
                }
            })
        ));
        // Two maps in one body.
        let one = encode_features(&BTreeMap::new());
        let mut two = one.clone();
        two.extend_from_slice(&one[one.len() - 5..]);
        assert_eq!(
            decode_features(&two),
            Err(WireError::TrailingData("feature map"))
        );
    }

    #[test]
    fn topology_refusals() {
        let entry = (
            PeerSummary {
                name: name(1),
                nickname: "a".into(),
                uid: 1,
                version: 1,
                short_id: 1,
                has_short_id: true,
            },
            vec![],
        );
        let bytes = encode_topology(&[entry]);
        // Drop the connection list message (the last 5 bytes: len, id, id, 0, count).
        assert_eq!(
            decode_topology(&bytes[..bytes.len() - 5]),
            Err(WireError::Missing("topology connection list"))
        );
        assert!(matches!(
            decode_topology(&bytes[..bytes.len() - 1]),
            Err(WireError::Gob {
                what: "topology connection list",
                err: GobError::Truncated
            })
        ));
        // A peer summary whose NameByte has 3 bytes.
        static ODD: TypeDesc = TypeDesc::Struct {
            name: "peerSummary",
            fields: &PEER_SUMMARY_FIELDS,
        };
        let mut enc = gob::Encoder::new();
        enc.encode(&ODD, |w| {
            let mut s = w.begin_struct();
            s.bytes(0, &[1, 2, 3]);
            s.end();
        });
        enc.encode(&CONNECTION_SUMMARIES, |w| w.seq_len(0));
        assert_eq!(
            decode_topology(enc.as_bytes()),
            Err(WireError::BadNameBytes(3))
        );
        assert_eq!(decode_topology(&[]), Ok(vec![]));
    }

    #[test]
    fn topology_decoder_skips_unknown_fields_and_tolerates_missing_ones() {
        static EXTRA_FIELDS: [FieldDesc; 3] = [
            FieldDesc {
                name: "Future",
                ty: &TypeDesc::String,
            },
            FieldDesc {
                name: "NameByte",
                ty: &TypeDesc::Bytes,
            },
            FieldDesc {
                name: "UID",
                ty: &TypeDesc::Uint,
            },
        ];
        static EXTRA: TypeDesc = TypeDesc::Struct {
            name: "peerSummary",
            fields: &EXTRA_FIELDS,
        };
        let mut enc = gob::Encoder::new();
        enc.encode(&EXTRA, |w| {
            let mut s = w.begin_struct();
            s.string(0, "ignored");
            s.bytes(1, &name(7).to_bytes());
            s.uint(2, 99);
            s.end();
        });
        enc.encode(&CONNECTION_SUMMARIES, |w| w.seq_len(0));
        let entries = decode_topology(enc.as_bytes()).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].0.name, name(7));
        assert_eq!(entries[0].0.uid, 99);
        assert_eq!(entries[0].0.version, 0);
    }

    pub(crate) fn arb_peer_name() -> impl Strategy<Value = PeerName> {
        (0..=PeerName::MAX).prop_map(name)
    }

    /// Any topology entry, with up to four connections whose addresses are any text.
    pub(crate) fn arb_entry() -> impl Strategy<Value = TopologyEntry> {
        let peer = (
            arb_peer_name(),
            ".{0,12}",
            any::<u64>(),
            any::<u64>(),
            any::<u16>(),
            any::<bool>(),
        )
            .prop_map(|(name, nickname, uid, version, short_id, has_short_id)| {
                PeerSummary {
                    name,
                    nickname,
                    uid,
                    version,
                    short_id,
                    has_short_id,
                }
            });
        let conn = (arb_peer_name(), ".{0,24}", any::<bool>(), any::<bool>()).prop_map(
            |(name, remote_tcp_addr, outbound, established)| ConnectionSummary {
                name,
                remote_tcp_addr,
                outbound,
                established,
            },
        );
        (peer, proptest::collection::vec(conn, 0..5))
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let bytes = proptest::collection::vec(any::<u8>(), 0..64);
        prop_oneof![
            Just(Message::Heartbeat),
            (".{0,16}", arb_peer_name(), bytes.clone()).prop_map(|(channel, src, payload)| {
                Message::Gossip {
                    channel,
                    src,
                    payload,
                }
            }),
            (".{0,16}", arb_peer_name(), arb_peer_name(), bytes.clone()).prop_map(
                |(channel, src, dst, payload)| Message::GossipUnicast {
                    channel,
                    src,
                    dst,
                    payload,
                }
            ),
            (".{0,16}", arb_peer_name(), bytes.clone()).prop_map(|(channel, src, payload)| {
                Message::GossipBroadcast {
                    channel,
                    src,
                    payload,
                }
            }),
            (any::<u8>(), any::<u8>(), bytes.clone()).prop_map(|(overlay, subtag, data)| {
                Message::OverlayControl {
                    overlay,
                    subtag,
                    data,
                }
            }),
            (prop_oneof![1..4u8, 8..=255u8], bytes)
                .prop_map(|(tag, body)| Message::Unknown { tag, body }),
        ]
    }

    proptest! {
        #[test]
        fn features_round_trip(features in proptest::collection::btree_map(".{0,16}", ".{0,32}", 0..12)) {
            prop_assert_eq!(decode_features(&encode_features(&features)), Ok(features));
        }

        #[test]
        fn topology_round_trips(entries in proptest::collection::vec(arb_entry(), 0..8)) {
            prop_assert_eq!(decode_topology(&encode_topology(&entries)), Ok(entries));
        }

        #[test]
        fn messages_round_trip(msg in arb_message()) {
            prop_assert_eq!(Message::parse(&msg.emit()), Ok(msg));
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Message::parse(&bytes);
            let _ = decode_features(&bytes);
            let _ = decode_topology(&bytes);
            let mut dec = gob::Decoder::new(&bytes);
            while let Ok(Some(_)) = dec.next_value() {}
            let mut frames = FrameDecoder::default();
            frames.push(&bytes);
            while let Ok(Some(_)) = frames.next_body() {}
        }

        #[test]
        fn mutated_valid_streams_never_panic(
            entries in proptest::collection::vec(arb_entry(), 1..4),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        ) {
            // Random bytes rarely get past the first message; flipping bytes of a valid
            // stream reaches the definition and struct decoders.
            let mut bytes = encode_topology(&entries);
            for (at, v) in flips {
                let i = at % bytes.len();
                bytes[i] = v;
            }
            let _ = decode_topology(&bytes);
            let mut dec = gob::Decoder::new(&bytes);
            while let Ok(Some(_)) = dec.next_value() {}
        }
    }
}
