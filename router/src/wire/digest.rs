//! The topology digest channel between weave-routers (`topology.digest`).
//!
//! Weave Net gossips its whole peer table to random neighbours every 30 s, and relays every
//! change it learns in full; both grow with the mesh. Two weave-routers that both offer the
//! feature `TopologyDigest` (see [`crate::mesh::router::DIGEST_FEATURE`]) instead exchange,
//! as gossip on this channel:
//!
//! - `Summary`: the number of entries and a hash of every entry's (name, UID, version).
//!   Equal summaries mean equal tables, so a mesh at rest sends a few bytes per period.
//! - `Digest`: (name, UID, version) of some entries: all of them in answer to a summary
//!   that differs, or those a change improved when relaying it. The receiver asks for the
//!   entries it lacks and sends those it has newer.
//! - `Want`: the names whose entries the sender asks for, each with the version it holds.
//! - `Entries`: topology entries, as Weave's `topology` channel carries them in gob, in a
//!   compact binary form, and changes. A thousand-peer mesh moves each entry hundreds of
//!   thousands of times while it starts, mostly one new connection after another: gob spends
//!   220 bytes on an entry with six connections, the whole entry here about 100 (addresses
//!   as 6 bytes instead of text, no field names, no type definitions per message), and a
//!   change from the version the receiver holds about 35 (what was removed, what was added
//!   or changed).
//!
//! Layout (fixed-width integers big-endian; `v` is an unsigned LEB128 varint, at most 10
//! bytes):
//!
//! ```text
//! Summary  01 | entries u32 | hash u64 | flags u8 (bit 0: an answer)
//! Digest   02 | flags u8 (bit 0: the whole table) | count v | { name[6] uid u64 version v }*
//! Want     03 | count v | { name[6] held_version v }*
//! Entries  04 | count v | { entry }* | count v | { change }*
//!   entry:  name[6] uid u64 version v short v (short_id << 1 | has_short_id)
//!           nickname_len v nickname | conns v | { conn }*
//!   change: name[6] uid u64 base_version v version v short v check u32
//!           removed v | { name[6] }* | set v | { conn }*
//!   conn:   name[6] flags u8 (bit 0: outbound, bit 1: established, bit 2: IPv4 address)
//!           address: ip[4] port u16 with bit 2, else len v and the text
//! ```
//!
//! A change goes only to a neighbour whose `Want` or digest named its base version; one
//! whose base the receiver no longer holds is asked for again whole. `check` is
//! [`entry_check`] of the entry the change makes: a receiver whose rebuilt entry does not
//! match it (its copy of the base differed) discards it and asks for the entry whole, so a
//! change can never make two tables disagree about one version.
//!
//! An address goes as 6 bytes only when its text is exactly how an IPv4 socket address
//! prints (Go prints `net.TCPAddr` the same way), so every entry decodes to the bytes that
//! were encoded. The varints are written here rather than taken from a crate: LEB128 is a
//! dozen lines, and the reader must bound each one by the bytes left anyway.
//!
//! Version 1 of the feature used fixed-width counts and versions and sent entries on the
//! `topology` channel in gob; a weave-router that offers only that version gets Weave's
//! gossip from this one.

use std::net::SocketAddrV4;

use crate::ids::PeerName;
use crate::wire::mesh::{ConnectionSummary, PeerSummary, TopologyEntry};

/// One entry of a digest: enough to tell which of two tables holds the newer entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DigestEntry {
    /// The peer.
    pub name: PeerName,
    /// Its process UID as the sender knows it.
    pub uid: u64,
    /// Its topology version as the sender knows it.
    pub version: u64,
}

impl DigestEntry {
    /// This entry's part of a table's summary hash: FNV-1a (64 bit) over its name, UID and
    /// version as 22 big-endian bytes, then MurmurHash3's 64-bit finaliser. A table's hash is the wrapping
    /// sum of its entries' parts, so it does not depend on order and can be kept up to date
    /// entry by entry.
    ///
    /// The finaliser is what makes the sum sound. FNV-1a ends with the version's low byte:
    /// `(h ^ b) · p`, so two versions of one entry differ by a small multiple of the prime
    /// (±2p for 8 → 10), and two entries a step behind each could cancel in the sum: tables
    /// that differed had equal summaries and never repaired. Finalised, the parts behave as
    /// independent random values.
    pub fn hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self
            .name
            .to_bytes()
            .iter()
            .chain(&self.uid.to_be_bytes())
            .chain(&self.version.to_be_bytes())
        {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        fmix64(h)
    }
}

/// MurmurHash3's 64-bit finaliser: a bijection in which every input bit flips each output
/// bit with probability about one half.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// A message on the digest channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigestMessage {
    /// How many entries the sender holds and their hash.
    Summary {
        /// Entries in the sender's table, itself included.
        entries: u32,
        /// The wrapping sum of [`DigestEntry::hash`] over them.
        hash: u64,
        /// Whether this answers a summary (an answer is never answered with a summary).
        answer: bool,
    },
    /// Some or all of the sender's entries.
    Digest {
        /// Whether these are all of the sender's entries (so a name missing here is one
        /// the sender lacks).
        whole: bool,
        /// The entries.
        entries: Vec<DigestEntry>,
    },
    /// Names whose entries the sender asks for, each with the version of it the sender
    /// holds (0 for none), so that the answer can be a change from that version.
    Want(Vec<(PeerName, u64)>),
    /// Entries asked for, those the sender holds newer than a digest showed, and the
    /// sender's own changes: whole, or as changes from the version the receiver holds.
    Entries {
        /// Whole entries.
        full: Vec<TopologyEntry>,
        /// Changes.
        changes: Vec<EntryChange>,
    },
}

/// How an entry differs from an earlier version of it (same UID): rebuilt by a receiver
/// that holds `base` (see [`crate::mesh::topology::Topology::rebuild`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryChange {
    /// The peer.
    pub name: PeerName,
    /// Its UID, the same in both versions.
    pub uid: u64,
    /// The version the change is from.
    pub base: u64,
    /// The version it makes.
    pub version: u64,
    /// The short id in `version`.
    pub short_id: u16,
    /// Whether `short_id` is meaningful.
    pub has_short_id: bool,
    /// Connections in `base` and not in `version`.
    pub removed: Vec<PeerName>,
    /// Connections of `version` that `base` lacks or holds otherwise.
    pub set: Vec<ConnectionSummary>,
    /// [`entry_check`] of the whole entry at `version`.
    pub check: u32,
}

/// A 32-bit FNV-1a of an entry's form in an `Entries` message: what a change carries so
/// that the receiver can tell that it rebuilt exactly the sender's entry.
pub fn entry_check(entry: &TopologyEntry) -> u32 {
    let mut b = Vec::with_capacity(128);
    put_entry(&mut b, entry);
    b.iter().fold(0x811c_9dc5u32, |h, x| {
        (h ^ u32::from(*x)).wrapping_mul(0x0100_0193)
    })
}

/// Why a digest-channel payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The payload was empty.
    #[error("empty topology digest message")]
    Empty,
    /// The first byte named no known message.
    #[error("unknown topology digest message kind {0}")]
    UnknownKind(u8),
    /// The payload ended inside a field.
    #[error("topology digest message of kind {kind} ends inside its {field}")]
    Truncated {
        /// The message kind.
        kind: u8,
        /// The field being read.
        field: &'static str,
    },
    /// Bytes were left after the last field.
    #[error("topology digest message of kind {kind} has {extra} bytes after its end")]
    Trailing {
        /// The message kind.
        kind: u8,
        /// How many.
        extra: usize,
    },
    /// A field held a value its type does not allow.
    #[error("topology digest message of kind {kind} has a bad {field}")]
    Invalid {
        /// The message kind.
        kind: u8,
        /// The field.
        field: &'static str,
    },
}

/// Reads a payload front to back; every read is bounded by the bytes left.
struct Reader<'a> {
    b: &'a [u8],
    kind: u8,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DigestError> {
        if self.b.len() < n {
            return Err(DigestError::Truncated {
                kind: self.kind,
                field,
            });
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DigestError> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DigestError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DigestError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes(b.try_into().expect("4 bytes")))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DigestError> {
        let b = self.take(8, field)?;
        Ok(u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }

    fn name(&mut self, field: &'static str) -> Result<PeerName, DigestError> {
        let b = self.take(6, field)?;
        Ok(PeerName::from_bytes(b.try_into().expect("6 bytes")))
    }

    /// An unsigned LEB128 varint of at most 64 bits.
    fn varint(&mut self, field: &'static str) -> Result<u64, DigestError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let byte = self.u8(field)?;
            let bits = u64::from(byte & 0x7f);
            // The tenth byte may carry only the 64th bit.
            if i == 9 && bits > 1 {
                return Err(DigestError::Invalid {
                    kind: self.kind,
                    field,
                });
            }
            v |= bits << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DigestError::Invalid {
            kind: self.kind,
            field,
        })
    }

    /// A count of items of at least `min_len` bytes each, refused when the bytes left
    /// cannot hold that many (so a forged count allocates nothing).
    fn count(&mut self, min_len: usize, field: &'static str) -> Result<usize, DigestError> {
        let n = self.varint(field)?;
        if n > (self.b.len() / min_len.max(1)) as u64 {
            return Err(DigestError::Truncated {
                kind: self.kind,
                field,
            });
        }
        Ok(n as usize)
    }

    fn text(&mut self, field: &'static str) -> Result<String, DigestError> {
        let len = self.count(1, field)?;
        let b = self.take(len, field)?;
        String::from_utf8(b.to_vec()).map_err(|_| DigestError::Invalid {
            kind: self.kind,
            field,
        })
    }

    fn end(self) -> Result<(), DigestError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(DigestError::Trailing {
                kind: self.kind,
                extra: self.b.len(),
            })
        }
    }
}

fn put_varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

/// Connection flag bits of an `Entries` message.
const OUTBOUND: u8 = 1;
const ESTABLISHED: u8 = 2;
const IPV4: u8 = 4;

/// The bytes of the smallest entry: name, UID, and one byte each of version, short id,
/// nickname length and connection count.
const MIN_ENTRY_LEN: usize = 6 + 8 + 4;
/// The bytes of the smallest change: name, UID, one byte each of base version, version and
/// short id, the check, and one byte each of removed count and connection count.
const MIN_CHANGE_LEN: usize = 6 + 8 + 3 + 4 + 2;
/// The bytes of the smallest connection: name, flags and an empty address.
const MIN_CONN_LEN: usize = 6 + 2;

fn put_entry(b: &mut Vec<u8>, (peer, conns): &TopologyEntry) {
    b.extend_from_slice(&peer.name.to_bytes());
    b.extend_from_slice(&peer.uid.to_be_bytes());
    put_varint(b, peer.version);
    put_short(b, peer.short_id, peer.has_short_id);
    put_varint(b, peer.nickname.len() as u64);
    b.extend_from_slice(peer.nickname.as_bytes());
    put_conns(b, conns);
}

fn put_conns(b: &mut Vec<u8>, conns: &[ConnectionSummary]) {
    put_varint(b, conns.len() as u64);
    for c in conns {
        b.extend_from_slice(&c.name.to_bytes());
        let mut flags = 0;
        if c.outbound {
            flags |= OUTBOUND;
        }
        if c.established {
            flags |= ESTABLISHED;
        }
        // Only an address that prints back to the same text goes as 6 bytes.
        let v4 = c
            .remote_tcp_addr
            .parse::<SocketAddrV4>()
            .ok()
            .filter(|a| a.to_string() == c.remote_tcp_addr);
        match v4 {
            Some(a) => {
                b.push(flags | IPV4);
                b.extend_from_slice(&a.ip().octets());
                b.extend_from_slice(&a.port().to_be_bytes());
            }
            None => {
                b.push(flags);
                put_varint(b, c.remote_tcp_addr.len() as u64);
                b.extend_from_slice(c.remote_tcp_addr.as_bytes());
            }
        }
    }
}

fn read_entry(r: &mut Reader<'_>) -> Result<TopologyEntry, DigestError> {
    let name = r.name("entry name")?;
    let uid = r.u64("entry UID")?;
    let version = r.varint("entry version")?;
    let (short_id, has_short_id) = read_short(r)?;
    let nickname = r.text("entry nickname")?;
    let conns = read_conns(r)?;
    let peer = PeerSummary {
        name,
        nickname,
        uid,
        version,
        short_id,
        has_short_id,
    };
    Ok((peer, conns))
}

/// A short id and its flag, as `short v` carries them.
fn read_short(r: &mut Reader<'_>) -> Result<(u16, bool), DigestError> {
    let short = r.varint("short id")?;
    let id = u16::try_from(short >> 1).map_err(|_| DigestError::Invalid {
        kind: r.kind,
        field: "short id",
    })?;
    Ok((id, short & 1 != 0))
}

fn put_short(b: &mut Vec<u8>, id: u16, has: bool) {
    put_varint(b, (u64::from(id) << 1) | u64::from(has));
}

fn put_change(b: &mut Vec<u8>, c: &EntryChange) {
    b.extend_from_slice(&c.name.to_bytes());
    b.extend_from_slice(&c.uid.to_be_bytes());
    put_varint(b, c.base);
    put_varint(b, c.version);
    put_short(b, c.short_id, c.has_short_id);
    b.extend_from_slice(&c.check.to_be_bytes());
    put_varint(b, c.removed.len() as u64);
    for n in &c.removed {
        b.extend_from_slice(&n.to_bytes());
    }
    put_conns(b, &c.set);
}

fn read_change(r: &mut Reader<'_>) -> Result<EntryChange, DigestError> {
    let name = r.name("change name")?;
    let uid = r.u64("change UID")?;
    let base = r.varint("change base version")?;
    let version = r.varint("change version")?;
    let (short_id, has_short_id) = read_short(r)?;
    let check = r.u32("change check")?;
    let n = r.count(6, "removed count")?;
    let mut removed = Vec::with_capacity(n);
    for _ in 0..n {
        removed.push(r.name("removed name")?);
    }
    let set = read_conns(r)?;
    Ok(EntryChange {
        name,
        uid,
        base,
        version,
        short_id,
        has_short_id,
        removed,
        set,
        check,
    })
}

fn read_conns(r: &mut Reader<'_>) -> Result<Vec<ConnectionSummary>, DigestError> {
    let n = r.count(MIN_CONN_LEN, "connection count")?;
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.name("connection name")?;
        let flags = r.u8("connection flags")?;
        if flags & !(OUTBOUND | ESTABLISHED | IPV4) != 0 {
            return Err(DigestError::Invalid {
                kind: r.kind,
                field: "connection flags",
            });
        }
        let remote_tcp_addr = if flags & IPV4 != 0 {
            let ip: [u8; 4] = r
                .take(4, "connection address")?
                .try_into()
                .expect("4 bytes");
            let port = r.u16("connection address")?;
            SocketAddrV4::new(ip.into(), port).to_string()
        } else {
            r.text("connection address")?
        };
        conns.push(ConnectionSummary {
            name,
            remote_tcp_addr,
            outbound: flags & OUTBOUND != 0,
            established: flags & ESTABLISHED != 0,
        });
    }
    Ok(conns)
}

impl DigestMessage {
    /// Decodes a payload; every length is checked before it is used, and nothing may
    /// follow the last field.
    pub fn parse(b: &[u8]) -> Result<Self, DigestError> {
        let Some((&kind, rest)) = b.split_first() else {
            return Err(DigestError::Empty);
        };
        let mut r = Reader { b: rest, kind };
        let msg = match kind {
            1 => DigestMessage::Summary {
                entries: r.u32("entry count")?,
                hash: r.u64("hash")?,
                answer: r.u8("flags")? & 1 != 0,
            },
            2 => {
                let whole = r.u8("flags")? & 1 != 0;
                let count = r.count(6 + 8 + 1, "entry count")?;
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    entries.push(DigestEntry {
                        name: r.name("entry name")?,
                        uid: r.u64("entry UID")?,
                        version: r.varint("entry version")?,
                    });
                }
                DigestMessage::Digest { whole, entries }
            }
            3 => {
                let count = r.count(7, "name count")?;
                let mut names = Vec::with_capacity(count);
                for _ in 0..count {
                    names.push((r.name("name")?, r.varint("held version")?));
                }
                DigestMessage::Want(names)
            }
            4 => {
                let count = r.count(MIN_ENTRY_LEN, "entry count")?;
                let mut full = Vec::with_capacity(count);
                for _ in 0..count {
                    full.push(read_entry(&mut r)?);
                }
                let count = r.count(MIN_CHANGE_LEN, "change count")?;
                let mut changes = Vec::with_capacity(count);
                for _ in 0..count {
                    changes.push(read_change(&mut r)?);
                }
                DigestMessage::Entries { full, changes }
            }
            other => return Err(DigestError::UnknownKind(other)),
        };
        r.end()?;
        Ok(msg)
    }

    /// Encodes the message.
    pub fn emit(&self) -> Vec<u8> {
        match self {
            DigestMessage::Summary {
                entries,
                hash,
                answer,
            } => {
                let mut b = Vec::with_capacity(14);
                b.push(1);
                b.extend_from_slice(&entries.to_be_bytes());
                b.extend_from_slice(&hash.to_be_bytes());
                b.push(u8::from(*answer));
                b
            }
            DigestMessage::Digest { whole, entries } => {
                let mut b = Vec::with_capacity(7 + entries.len() * 16);
                b.push(2);
                b.push(u8::from(*whole));
                put_varint(&mut b, entries.len() as u64);
                for e in entries {
                    b.extend_from_slice(&e.name.to_bytes());
                    b.extend_from_slice(&e.uid.to_be_bytes());
                    put_varint(&mut b, e.version);
                }
                b
            }
            DigestMessage::Want(names) => {
                let mut b = Vec::with_capacity(6 + names.len() * 8);
                b.push(3);
                put_varint(&mut b, names.len() as u64);
                for (n, held) in names {
                    b.extend_from_slice(&n.to_bytes());
                    put_varint(&mut b, *held);
                }
                b
            }
            DigestMessage::Entries { full, changes } => {
                let mut b = Vec::with_capacity(12 + full.len() * 112 + changes.len() * 40);
                b.push(4);
                put_varint(&mut b, full.len() as u64);
                for e in full {
                    put_entry(&mut b, e);
                }
                put_varint(&mut b, changes.len() as u64);
                for c in changes {
                    put_change(&mut b, c);
                }
                b
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: u64) -> PeerName {
        PeerName::from_u64(n).unwrap()
    }

    #[test]
    fn messages_round_trip_with_the_documented_layout() {
        let s = DigestMessage::Summary {
            entries: 3,
            hash: 0x0102_0304_0506_0708,
            answer: true,
        };
        assert_eq!(
            s.emit(),
            [1, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6, 7, 8, 1].to_vec()
        );
        let d = DigestMessage::Digest {
            whole: true,
            entries: vec![DigestEntry {
                name: name(0xaa00_0000_0001),
                uid: 2,
                version: 300,
            }],
        };
        assert_eq!(
            d.emit(),
            [2, 1, 1, 0xaa, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0xac, 0x02].to_vec()
        );
        let w = DigestMessage::Want(vec![(name(1), 0), (name(2), 300)]);
        assert_eq!(w.emit().len(), 2 + 7 + 8);
        let e = DigestMessage::Entries {
            full: vec![entry(7, 6), entry(8, 0)],
            changes: vec![change(9), change(10)],
        };
        for m in [s, d, w, e] {
            assert_eq!(DigestMessage::parse(&m.emit()).unwrap(), m);
        }
    }

    /// A peer with `conns` connections, addressed as the mesh prints IPv4 addresses.
    fn entry(n: u64, conns: u64) -> TopologyEntry {
        let peer = PeerSummary {
            name: name(0x0200_0000_0000 + n),
            nickname: format!("node-{n}"),
            uid: 0x9e37_79b9_7f4a_7c15 ^ n,
            version: 12,
            short_id: 0xfff,
            has_short_id: true,
        };
        let conns = (0..conns)
            .map(|c| ConnectionSummary {
                name: name(0x0200_0000_1000 + c),
                remote_tcp_addr: format!("10.1.{c}.{n}:{}", 40000 + c),
                outbound: c % 2 == 0,
                established: c % 3 != 0,
            })
            .collect();
        (peer, conns)
    }

    /// A change that drops one connection and adds another.
    fn change(n: u64) -> EntryChange {
        let (_, mut conns) = entry(n, 2);
        EntryChange {
            name: name(0x0200_0000_0000 + n),
            uid: 0x9e37_79b9_7f4a_7c15 ^ n,
            base: 11,
            version: 200,
            short_id: 0x123,
            has_short_id: false,
            removed: vec![name(0x0200_0000_2000 + n)],
            set: vec![conns.remove(1)],
            check: 0xdead_beef,
        }
    }

    fn entries(full: Vec<TopologyEntry>, changes: Vec<EntryChange>) -> Vec<u8> {
        DigestMessage::Entries { full, changes }.emit()
    }

    #[test]
    fn entries_are_less_than_half_the_size_of_gob_and_changes_a_third_of_that() {
        let es = vec![entry(1, 6), entry(2, 6), entry(3, 6)];
        let compact = entries(es.clone(), Vec::new()).len();
        let gob = crate::wire::mesh::encode_topology(&es).len();
        // 6 + 8 + 1 + 2 + 7 + 1 + 6 × 13 = 103 bytes an entry, and the two counts.
        assert_eq!(compact, 3 + 3 * 103);
        assert!(compact * 2 < gob, "{compact} vs {gob}");
        // A new connection: name, UID, two one-byte versions, a two-byte short id, the
        // check, two counts and the connection: 6 + 8 + 2 + 2 + 4 + 2 + 13 bytes.
        let (_, mut conns) = entry(1, 6);
        let one = EntryChange {
            name: name(1),
            uid: 1,
            base: 12,
            version: 14,
            short_id: 0xfff,
            has_short_id: true,
            removed: Vec::new(),
            set: vec![conns.remove(5)],
            check: 7,
        };
        assert_eq!(entries(Vec::new(), vec![one]).len(), 3 + 37);
    }

    #[test]
    fn addresses_that_do_not_print_back_the_same_go_as_text() {
        let (peer, mut conns) = entry(1, 4);
        conns[0].remote_tcp_addr = "[fd00::1]:6783".into();
        conns[1].remote_tcp_addr = "10.0.0.1:0080".into();
        conns[2].remote_tcp_addr = String::new();
        conns[3].remote_tcp_addr = "10.0.0.1:65535".into();
        let m = DigestMessage::Entries {
            full: vec![(peer, conns)],
            changes: Vec::new(),
        };
        assert_eq!(DigestMessage::parse(&m.emit()).unwrap(), m);
        // Out-of-range fields are kept exactly too.
        let (mut peer, conns) = entry(2, 1);
        peer.version = u64::MAX;
        peer.uid = u64::MAX;
        peer.short_id = u16::MAX;
        peer.has_short_id = false;
        let m = DigestMessage::Entries {
            full: vec![(peer, conns)],
            changes: Vec::new(),
        };
        assert_eq!(DigestMessage::parse(&m.emit()).unwrap(), m);
    }

    #[test]
    fn malformed_payloads_are_refused() {
        assert_eq!(DigestMessage::parse(&[]), Err(DigestError::Empty));
        assert_eq!(DigestMessage::parse(&[9]), Err(DigestError::UnknownKind(9)));
        assert!(DigestMessage::parse(&[1, 0, 0]).is_err());
        // Counts larger than the bytes that follow, even when huge.
        assert!(DigestMessage::parse(&[2, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(DigestMessage::parse(&[3, 2, 1, 2, 3, 4, 5, 6, 0]).is_err());
        assert!(DigestMessage::parse(&[4, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        // A varint longer than 64 bits.
        let mut long = vec![2, 0, 1, 1, 2, 3, 4, 5, 6, 0, 0, 0, 0, 0, 0, 0, 0];
        long.extend_from_slice(&[0xff; 9]);
        long.push(0x02);
        assert_eq!(
            DigestMessage::parse(&long),
            Err(DigestError::Invalid {
                kind: 2,
                field: "entry version"
            })
        );
        // Something after the end.
        let mut extra = DigestMessage::Want(vec![(name(1), 1)]).emit();
        extra.push(0);
        assert_eq!(
            DigestMessage::parse(&extra),
            Err(DigestError::Trailing { kind: 3, extra: 1 })
        );
        // Unknown connection flags, and a nickname that is not UTF-8.
        let good = entries(vec![entry(1, 1)], Vec::new());
        let flags_at = good.len() - 8;
        let mut bad = good.clone();
        bad[flags_at] |= 0x80;
        assert!(matches!(
            DigestMessage::parse(&bad),
            Err(DigestError::Invalid {
                field: "connection flags",
                ..
            })
        ));
        let nick_at = 2 + 6 + 8 + 1 + 2 + 1;
        let mut bad = good.clone();
        bad[nick_at] = 0xff;
        assert!(matches!(
            DigestMessage::parse(&bad),
            Err(DigestError::Invalid {
                field: "entry nickname",
                ..
            })
        ));
        // Every truncation of a valid message is refused, never a panic.
        let digest = DigestMessage::Digest {
            whole: false,
            entries: vec![
                DigestEntry {
                    name: name(5),
                    uid: 6,
                    version: 700
                };
                3
            ],
        }
        .emit();
        let both = entries(vec![entry(1, 2), entry(2, 0)], vec![change(3)]);
        for full in [digest, both] {
            DigestMessage::parse(&full).unwrap();
            for len in 0..full.len() {
                assert!(DigestMessage::parse(&full[..len]).is_err(), "{len}");
            }
        }
    }

    /// Any entry, with each connection's address replaced, at random, by an IPv4 socket
    /// address as a Go peer prints it.
    fn arb_entry() -> impl proptest::strategy::Strategy<Value = TopologyEntry> {
        use proptest::prelude::*;
        let v4 = proptest::collection::vec((any::<bool>(), any::<[u8; 4]>(), any::<u16>()), 5);
        (crate::wire::mesh::tests::arb_entry(), v4).prop_map(|((peer, mut conns), v4)| {
            for (c, (replace, ip, port)) in conns.iter_mut().zip(v4) {
                if replace {
                    c.remote_tcp_addr = std::net::SocketAddrV4::new(ip.into(), port).to_string();
                }
            }
            (peer, conns)
        })
    }

    proptest::proptest! {
        /// Whole entries and changes made of any fields survive the round trip exactly,
        /// and no truncation of the message parses.
        #[test]
        fn any_entries_and_changes_round_trip(
            full in proptest::collection::vec(arb_entry(), 0..4),
            bases in proptest::collection::vec((arb_entry(), proptest::num::u64::ANY, 0..3usize), 0..3),
        ) {
            let changes: Vec<EntryChange> = bases
                .into_iter()
                .map(|((peer, conns), base, drop)| EntryChange {
                    check: peer.version as u32,
                    name: peer.name,
                    uid: peer.uid,
                    base,
                    version: peer.version,
                    short_id: peer.short_id,
                    has_short_id: peer.has_short_id,
                    removed: conns.iter().take(drop).map(|c| c.name).collect(),
                    set: conns.into_iter().skip(drop).collect(),
                })
                .collect();
            let m = DigestMessage::Entries { full, changes };
            let b = m.emit();
            proptest::prop_assert_eq!(DigestMessage::parse(&b).unwrap(), m);
            for len in 0..b.len() {
                proptest::prop_assert!(DigestMessage::parse(&b[..len]).is_err());
            }
        }
    }

    #[test]
    fn the_entry_hash_is_finalised_fnv1a_over_the_wire_form() {
        // FNV-1a of 22 zero bytes, computed independently, then the finaliser.
        let zero = DigestEntry {
            name: PeerName::from_u64(0).unwrap(),
            uid: 0,
            version: 0,
        };
        let mut h: u64 = 0xcbf29ce484222325;
        for _ in 0..22 {
            h = h.wrapping_mul(0x100000001b3);
        }
        h = (h ^ (h >> 33)).wrapping_mul(0xff51afd7ed558ccd);
        h = (h ^ (h >> 33)).wrapping_mul(0xc4ceb9fe1a85ec53);
        assert_eq!(zero.hash(), h ^ (h >> 33));
        let a = DigestEntry {
            name: name(1),
            uid: 1,
            version: 1,
        };
        let b = DigestEntry { version: 2, ..a };
        assert_ne!(a.hash(), b.hash());
    }

    /// Two entries each a couple of versions behind, as a lossy cold start leaves them:
    /// with plain FNV-1a parts, such pairs cancelled in the sum (a mesh of 200 stalled on
    /// it); no pair of 150 entries may.
    #[test]
    fn tables_a_few_versions_apart_have_different_summaries() {
        let entries: Vec<DigestEntry> = (0..150u64)
            .map(|i| DigestEntry {
                name: name(i + 1),
                uid: 0x1000 + i * 7919,
                version: 4 + i % 11,
            })
            .collect();
        let sum = |es: &[DigestEntry]| es.iter().fold(0u64, |h, e| h.wrapping_add(e.hash()));
        let base = sum(&entries);
        let mut equal = 0;
        for a in 0..entries.len() {
            for b in a + 1..entries.len() {
                for (da, db) in [(2, 2), (2, 4), (1, 3)] {
                    let mut t = entries.clone();
                    t[a].version -= da;
                    t[b].version -= db;
                    if sum(&t) == base {
                        equal += 1;
                    }
                }
            }
        }
        assert_eq!(equal, 0);
    }
}
