//! Identifier newtypes shared by the codecs and the control plane.

use std::fmt;
use std::str::FromStr;

/// A peer's name: 48 bits, written like a MAC address (`aa:00:00:00:00:01`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PeerName(u64);

/// The all-zero peer name, used by Weave's reports for "no next hop" (ourself).
pub const UNKNOWN_PEER_NAME: PeerName = PeerName(0);

impl PeerName {
    /// Largest value a 48-bit name can take.
    pub const MAX: u64 = (1 << 48) - 1;

    /// Builds a name from its 48-bit value; `None` when the value does not fit 48 bits.
    pub fn from_u64(v: u64) -> Option<Self> {
        (v <= Self::MAX).then_some(PeerName(v))
    }

    /// The name as the integer Weave puts in gob (`uint`).
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// The six bytes of the name, most significant first (as in sleeve headers).
    pub fn to_bytes(self) -> [u8; 6] {
        let b = self.0.to_be_bytes();
        [b[2], b[3], b[4], b[5], b[6], b[7]]
    }

    /// Builds a name from six bytes, most significant first.
    pub fn from_bytes(b: [u8; 6]) -> Self {
        PeerName(u64::from_be_bytes([
            0, 0, b[0], b[1], b[2], b[3], b[4], b[5],
        ]))
    }

    /// Builds a name from a byte slice of length 6 (Weave's `NameByte`).
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        let arr: [u8; 6] = b.try_into().ok()?;
        Some(Self::from_bytes(arr))
    }
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.to_bytes();
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a string is not a peer name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid peer name {0:?}: expected six hex octets like aa:00:00:00:00:01")]
pub struct ParsePeerNameError(pub String);

impl FromStr for PeerName {
    type Err = ParsePeerNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePeerNameError(s.to_string());
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(err());
        }
        let mut b = [0u8; 6];
        for (slot, part) in b.iter_mut().zip(&parts) {
            if part.is_empty() || part.len() > 2 {
                return Err(err());
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        Ok(PeerName::from_bytes(b))
    }
}

impl serde::Serialize for PeerName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PeerName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A random 64-bit value chosen at every process start; tells a restart from the same peer.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct PeerUid(pub u64);

impl fmt::Display for PeerUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A 12-bit short peer id (used by the fast datapath's VNI).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct ShortId(pub u16);

impl ShortId {
    /// Number of distinct short ids (12 bits).
    pub const COUNT: u16 = 1 << 12;
}

/// A random value each side of a connection offers in its feature map.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct ConnId(pub u64);

/// The connection UID: the XOR of both sides' [`ConnId`]s, equal at both ends.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct ConnUid(pub u64);

impl ConnUid {
    /// Combines the two sides' connection ids.
    pub fn from_ids(a: ConnId, b: ConnId) -> Self {
        ConnUid(a.0 ^ b.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_name_round_trips_through_text_and_bytes() {
        let n: PeerName = "aa:00:00:00:00:02".parse().unwrap();
        assert_eq!(n.as_u64(), 186916976721922);
        assert_eq!(n.to_string(), "aa:00:00:00:00:02");
        assert_eq!(PeerName::from_bytes(n.to_bytes()), n);
    }

    #[test]
    fn peer_name_rejects_bad_text() {
        for bad in [
            "",
            "aa:00:00:00:00",
            "aa:00:00:00:00:0g",
            "aa:00:00:00:00:001",
            "aa::00:00:00:00:01",
        ] {
            assert!(bad.parse::<PeerName>().is_err(), "{bad}");
        }
        assert!(PeerName::from_u64(1 << 48).is_none());
    }

    #[test]
    fn conn_uid_is_xor_of_captured_ids() {
        // host2 -> host1 in three-peers-plain: peers.json
        let uid = ConnUid::from_ids(ConnId(14611901497816135056), ConnId(18359970741877391319));
        assert_eq!(uid, ConnUid(3750476922811746887));
    }
}
