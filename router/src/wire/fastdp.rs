//! Weave Net 2.8's fast-datapath wire format: VXLAN on UDP 6784 whose VNI names both ends
//! (`srcShortID | dstShortID << 12`), and the heartbeat frame each end sends through the
//! tunnel to check it.
//!
//! A heartbeat is an Ethernet frame with zero addresses and type, as long as the datapath's
//! MTU plus its Ethernet header, carrying the connection UID (8 bytes, big-endian) and the
//! frame's own length (2 bytes, big-endian). Weave Net checks exactly those two fields, so
//! between weave-routers the bytes after them carry a sequence number (8 bytes,
//! big-endian) that the receiver echoes in its acknowledgement; a Weave Net peer ignores
//! it.

use crate::ids::{ConnUid, ShortId};
use crate::wire::sleeve::ETHERNET_HEADER_LEN;

/// The fast datapath's UDP port (the mesh port plus one).
pub const PORT: u16 = 6784;
/// Length of the VXLAN header (RFC 7348).
pub const VXLAN_HEADER_LEN: usize = 8;
/// The VXLAN header's flags byte with the "valid VNI" bit.
const VXLAN_FLAG_VNI: u8 = 0x08;
/// Shortest heartbeat: Ethernet header, UID and length.
pub const MIN_HEARTBEAT_LEN: usize = ETHERNET_HEADER_LEN + 10;
/// Heartbeat length that also carries a weave-router sequence number: the small heartbeat
/// weave-routers send between full-size ones.
pub const SEQ_HEARTBEAT_LEN: usize = MIN_HEARTBEAT_LEN + 8;

/// The VNI of frames from `src` to `dst`.
pub fn vni(src: ShortId, dst: ShortId) -> u32 {
    u32::from(src.0 & 0xfff) | u32::from(dst.0 & 0xfff) << 12
}

/// The two ends a VNI names: (source, destination).
pub fn peers_of(vni: u32) -> (ShortId, ShortId) {
    (
        ShortId((vni & 0xfff) as u16),
        ShortId(((vni >> 12) & 0xfff) as u16),
    )
}

/// Prepends a VXLAN header with `vni` to `frame`: a UDP payload for port 6784.
pub fn encapsulate(vni: u32, frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(VXLAN_HEADER_LEN + frame.len());
    out.extend_from_slice(&[VXLAN_FLAG_VNI, 0, 0, 0]);
    out.extend_from_slice(&(vni << 8).to_be_bytes());
    out.extend_from_slice(frame);
    out
}

/// Splits a UDP payload into its VNI and inner frame; `None` when it is not VXLAN with a
/// valid VNI.
pub fn decapsulate(payload: &[u8]) -> Option<(u32, &[u8])> {
    let header = payload.get(..VXLAN_HEADER_LEN)?;
    if header[0] & VXLAN_FLAG_VNI == 0 {
        return None;
    }
    let vni = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) >> 8;
    Some((vni, &payload[VXLAN_HEADER_LEN..]))
}

/// A heartbeat as read from the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// The connection it belongs to.
    pub uid: ConnUid,
    /// The length its sender wrote (equal to the frame's when it arrived whole).
    pub len: usize,
    /// The weave-router sequence number, when the frame is long enough to carry one.
    pub seq: Option<u64>,
}

/// Builds a heartbeat frame of `len` bytes (at least [`MIN_HEARTBEAT_LEN`], at most
/// 65535) for connection `uid`, carrying `seq` when there is room.
pub fn heartbeat_frame(uid: ConnUid, len: usize, seq: u64) -> Vec<u8> {
    let len = len.clamp(MIN_HEARTBEAT_LEN, usize::from(u16::MAX));
    let mut frame = vec![0u8; len];
    let p = ETHERNET_HEADER_LEN;
    frame[p..p + 8].copy_from_slice(&uid.0.to_be_bytes());
    frame[p + 8..p + 10].copy_from_slice(&(len as u16).to_be_bytes());
    if len >= SEQ_HEARTBEAT_LEN {
        frame[p + 10..p + 18].copy_from_slice(&seq.to_be_bytes());
    }
    frame
}

/// Reads a heartbeat: zero addresses and type, and a length field equal to the frame's
/// (a truncated or padded frame is not one, as in Weave Net).
pub fn parse_heartbeat(frame: &[u8]) -> Option<Heartbeat> {
    if frame.len() < MIN_HEARTBEAT_LEN || frame[..ETHERNET_HEADER_LEN].iter().any(|b| *b != 0) {
        return None;
    }
    let p = ETHERNET_HEADER_LEN;
    let uid = ConnUid(u64::from_be_bytes(frame[p..p + 8].try_into().ok()?));
    let len = usize::from(u16::from_be_bytes([frame[p + 8], frame[p + 9]]));
    if len != frame.len() {
        return None;
    }
    let seq = frame
        .get(p + 10..p + 18)
        .map(|b| u64::from_be_bytes(b.try_into().expect("eight bytes")));
    Some(Heartbeat { uid, len, seq })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vni_names_source_then_destination() {
        // Weave's tunnelIDFor: src | dst << 12.
        assert_eq!(vni(ShortId(5), ShortId(10)), 40965);
        assert_eq!(peers_of(40965), (ShortId(5), ShortId(10)));
        assert_eq!(vni(ShortId(0xfff), ShortId(0xfff)), 0xff_ffff);
    }

    #[test]
    fn vxlan_header_round_trips() {
        let d = encapsulate(0x00ab_cdef, b"frame");
        assert_eq!(&d[..8], &[0x08, 0, 0, 0, 0xab, 0xcd, 0xef, 0]);
        assert_eq!(decapsulate(&d), Some((0x00ab_cdef, &b"frame"[..])));
        assert_eq!(decapsulate(&d[..7]), None);
        let mut no_vni = d.clone();
        no_vni[0] = 0;
        assert_eq!(decapsulate(&no_vni), None);
    }

    #[test]
    fn heartbeat_is_weaves_layout_with_a_sequence_after_it() {
        let f = heartbeat_frame(ConnUid(0x1122_3344_5566_7788), 14 + 1376, 7);
        assert_eq!(f.len(), 1390);
        assert!(f[..14].iter().all(|b| *b == 0));
        // Weave's sendHeartbeat: uid then uint16(len(buf)).
        assert_eq!(
            &f[14..24],
            &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x05, 0x6e]
        );
        assert_eq!(&f[24..32], &7u64.to_be_bytes());
        assert!(f[32..].iter().all(|b| *b == 0));
        let hb = parse_heartbeat(&f).unwrap();
        assert_eq!(hb.uid, ConnUid(0x1122_3344_5566_7788));
        assert_eq!((hb.len, hb.seq), (1390, Some(7)));
    }

    #[test]
    fn weaves_own_heartbeat_parses_with_a_zero_sequence() {
        // What Weave Net sends: zero bytes after the length.
        let mut f = vec![0u8; 14 + 1376];
        f[14..22].copy_from_slice(&42u64.to_be_bytes());
        f[22..24].copy_from_slice(&1390u16.to_be_bytes());
        let hb = parse_heartbeat(&f).unwrap();
        assert_eq!((hb.uid, hb.seq), (ConnUid(42), Some(0)));
    }

    #[test]
    fn truncated_padded_or_addressed_frames_are_not_heartbeats() {
        let f = heartbeat_frame(ConnUid(1), 200, 1);
        assert!(parse_heartbeat(&f[..199]).is_none(), "truncated");
        let mut padded = f.clone();
        padded.push(0);
        assert!(parse_heartbeat(&padded).is_none(), "padded");
        let mut addressed = f.clone();
        addressed[0] = 2;
        assert!(parse_heartbeat(&addressed).is_none(), "has a MAC");
        assert!(parse_heartbeat(&f[..10]).is_none(), "runt");
        let short = heartbeat_frame(ConnUid(1), 0, 1);
        assert_eq!(short.len(), MIN_HEARTBEAT_LEN);
        assert_eq!(parse_heartbeat(&short).unwrap().seq, None);
    }
}
