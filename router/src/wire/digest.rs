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
//!   entries it lacks and sends those it has newer, in Weave's topology format on the
//!   `topology` channel.
//! - `Want`: the names whose entries the sender asks for.
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! Summary  01 | entries u32 | hash u64 | flags u8 (bit 0: an answer)
//! Digest   02 | flags u8 (bit 0: the whole table) | count u32 | { name[6] uid u64 version u64 }*
//! Want     03 | count u32 | { name[6] }*
//! ```

use crate::ids::PeerName;

/// Bytes of one digest entry.
const ENTRY_LEN: usize = 6 + 8 + 8;

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
    /// This entry's part of a table's summary hash: FNV-1a (64 bit) over the 22 bytes of
    /// its wire form, then MurmurHash3's 64-bit finaliser. A table's hash is the wrapping
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
    /// Names whose entries the sender asks for.
    Want(Vec<PeerName>),
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
    /// The payload's length does not match what its header announces.
    #[error("topology digest message of kind {kind} has {len} bytes, expected {expected}")]
    BadLength {
        /// The message kind.
        kind: u8,
        /// Its length.
        len: usize,
        /// The length its header implies.
        expected: usize,
    },
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn name_at(b: &[u8], at: usize) -> PeerName {
    PeerName::from_bytes(b[at..at + 6].try_into().expect("6 bytes"))
}

fn check_len(kind: u8, len: usize, expected: usize) -> Result<(), DigestError> {
    if len == expected {
        Ok(())
    } else {
        Err(DigestError::BadLength {
            kind,
            len,
            expected,
        })
    }
}

impl DigestMessage {
    /// Decodes a payload; every length is checked before it is used.
    pub fn parse(b: &[u8]) -> Result<Self, DigestError> {
        let Some(&kind) = b.first() else {
            return Err(DigestError::Empty);
        };
        match kind {
            1 => {
                check_len(kind, b.len(), 14)?;
                Ok(DigestMessage::Summary {
                    entries: u32_at(b, 1),
                    hash: u64_at(b, 5),
                    answer: b[13] & 1 != 0,
                })
            }
            2 => {
                if b.len() < 6 {
                    return Err(DigestError::BadLength {
                        kind,
                        len: b.len(),
                        expected: 6,
                    });
                }
                let count = u32_at(b, 2) as usize;
                check_len(kind, b.len(), 6 + count.saturating_mul(ENTRY_LEN))?;
                let entries = (0..count)
                    .map(|i| {
                        let at = 6 + i * ENTRY_LEN;
                        DigestEntry {
                            name: name_at(b, at),
                            uid: u64_at(b, at + 6),
                            version: u64_at(b, at + 14),
                        }
                    })
                    .collect();
                Ok(DigestMessage::Digest {
                    whole: b[1] & 1 != 0,
                    entries,
                })
            }
            3 => {
                if b.len() < 5 {
                    return Err(DigestError::BadLength {
                        kind,
                        len: b.len(),
                        expected: 5,
                    });
                }
                let count = u32_at(b, 1) as usize;
                check_len(kind, b.len(), 5 + count.saturating_mul(6))?;
                Ok(DigestMessage::Want(
                    (0..count).map(|i| name_at(b, 5 + i * 6)).collect(),
                ))
            }
            other => Err(DigestError::UnknownKind(other)),
        }
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
                let mut b = Vec::with_capacity(6 + entries.len() * ENTRY_LEN);
                b.push(2);
                b.push(u8::from(*whole));
                b.extend_from_slice(&(entries.len() as u32).to_be_bytes());
                for e in entries {
                    b.extend_from_slice(&e.name.to_bytes());
                    b.extend_from_slice(&e.uid.to_be_bytes());
                    b.extend_from_slice(&e.version.to_be_bytes());
                }
                b
            }
            DigestMessage::Want(names) => {
                let mut b = Vec::with_capacity(5 + names.len() * 6);
                b.push(3);
                b.extend_from_slice(&(names.len() as u32).to_be_bytes());
                for n in names {
                    b.extend_from_slice(&n.to_bytes());
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
                version: 3,
            }],
        };
        let b = d.emit();
        assert_eq!(b.len(), 6 + 22);
        assert_eq!(&b[..12], &[2, 1, 0, 0, 0, 1, 0xaa, 0, 0, 0, 0, 1]);
        let w = DigestMessage::Want(vec![name(1), name(2)]);
        assert_eq!(w.emit().len(), 5 + 12);
        for m in [s, d, w] {
            assert_eq!(DigestMessage::parse(&m.emit()).unwrap(), m);
        }
    }

    #[test]
    fn malformed_payloads_are_refused() {
        assert_eq!(DigestMessage::parse(&[]), Err(DigestError::Empty));
        assert_eq!(DigestMessage::parse(&[9]), Err(DigestError::UnknownKind(9)));
        assert!(DigestMessage::parse(&[1, 0, 0]).is_err());
        // A count larger than the bytes that follow.
        assert!(DigestMessage::parse(&[2, 0, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(DigestMessage::parse(&[3, 0, 0, 0, 2, 1, 2, 3, 4, 5, 6]).is_err());
        // Every truncation of a valid message is refused, never a panic.
        let full = DigestMessage::Digest {
            whole: false,
            entries: vec![
                DigestEntry {
                    name: name(5),
                    uid: 6,
                    version: 7
                };
                3
            ],
        }
        .emit();
        for len in 0..full.len() {
            assert!(DigestMessage::parse(&full[..len]).is_err(), "{len}");
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
