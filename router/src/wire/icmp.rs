//! Synthesised ICMPv4 "fragmentation needed" (type 3, code 4) and ICMPv6 "packet too big"
//! (type 2) messages.
//!
//! When a pod sends an IPv4 packet with DF set that is larger than the sleeve MTU to a peer,
//! the router answers the pod itself, as a router on the path would: an Ethernet frame from
//! the original destination's MAC and IP back to the source, carrying the next-hop MTU and
//! the start of the offending packet (RFC 792, RFC 1191). The pod's stack then lowers its
//! path MTU and resends. IPv6 packets are never fragmented on the way, so every one that is
//! too large gets a "packet too big" built the same way: from the original destination,
//! quoting as much of the packet as fits in the IPv6 minimum MTU (RFC 4443 §3.2, RFC 8201).
//! [`too_big`] picks the one the frame's EtherType calls for.
//!
//! Only the headers needed for that are read here, with their own bounds checks; no input
//! makes these functions panic.

/// ICMP type "destination unreachable".
pub const TYPE_DEST_UNREACHABLE: u8 = 3;
/// ICMP code "fragmentation needed and DF set" (of type 3).
pub const CODE_FRAG_NEEDED: u8 = 4;
/// IP protocol number of ICMP.
pub const IP_PROTO_ICMP: u8 = 1;
/// TTL of the synthesised IP header.
pub const TTL: u8 = 64;
/// Bytes of the offending packet's payload quoted after its IP header (RFC 792).
pub const QUOTED_PAYLOAD_LEN: usize = 8;

/// ICMPv6 type "packet too big".
pub const ICMPV6_TYPE_PACKET_TOO_BIG: u8 = 2;
/// IPv6 next-header number of ICMPv6.
pub const IP_PROTO_ICMPV6: u8 = 58;
/// Hop limit of the synthesised IPv6 header.
pub const HOP_LIMIT: u8 = 64;
/// The IPv6 minimum link MTU; a "packet too big" message, quote included, fits in it.
pub const IPV6_MIN_MTU: usize = 1280;
/// Most bytes of the offending IPv6 packet a "packet too big" quotes.
pub const PTB_MAX_QUOTED: usize = IPV6_MIN_MTU - IPV6_HEADER_LEN - ICMP_HEADER_LEN;

const ETH_HEADER_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const IPV6_HEADER_LEN: usize = 40;
/// ICMPv6 types below this are errors (RFC 4443 §2.1).
const ICMPV6_FIRST_INFORMATIONAL: u8 = 128;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DESTINATION_OPTIONS: u8 = 60;
const IPV6_FRAGMENT_OFFSET_MASK: u16 = 0xfff8;
const IPV4_HEADER_LEN: usize = 20;
const ICMP_HEADER_LEN: usize = 8;
const IP_FLAG_DF: u16 = 0x4000;
const IP_FLAG_MF: u16 = 0x2000;
const IP_FRAG_OFFSET_MASK: u16 = 0x1fff;
/// Precedence "internetwork control", which RFC 1812 (4.3.2.5) asks ICMP errors to carry.
const TOS_INTERNETWORK_CONTROL: u8 = 0xc0;

/// Why a frame gets no "fragmentation needed" answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoAnswer {
    /// The frame is shorter than an Ethernet header.
    #[error("frame shorter than an Ethernet header")]
    TooShort,
    /// The EtherType is not IPv4 (VLAN-tagged frames included).
    #[error("not an IPv4 frame (EtherType {0:#06x})")]
    NotIpv4(u16),
    /// The EtherType is not IPv6 (VLAN-tagged frames included).
    #[error("not an IPv6 frame (EtherType {0:#06x})")]
    NotIpv6(u16),
    /// The IP header is malformed: wrong version, bad header length, or a total (IPv4) or
    /// payload (IPv6) length that does not fit the frame.
    #[error("malformed IP header")]
    BadIpHeader,
    /// The IPv4 header checksum is wrong.
    #[error("bad IPv4 header checksum")]
    BadIpChecksum,
    /// The packet may be fragmented, so it needs no answer.
    #[error("DF not set")]
    NotDf,
    /// The packet is a fragment (RFC 1122 3.2.2: no ICMP error about a non-initial fragment;
    /// a DF packet with MF set is contradictory).
    #[error("packet is a fragment")]
    Fragment,
    /// The packet is itself an ICMP (or ICMPv6) error; answering errors with errors can loop.
    #[error("packet is an ICMP error message")]
    IcmpError,
    /// A source or destination is not a single host (multicast or broadcast MAC, zero,
    /// broadcast or multicast IP), so there is no one to answer or no one answering. RFC 4443
    /// lets "packet too big" answer multicast too, but its source would then have to be an
    /// address of the router's own, which it does not have on the bridge.
    #[error("source or destination is not a single host")]
    NotUnicast,
    /// The output buffer is too small.
    #[error("need {needed} bytes, {available} available")]
    BufferTooSmall {
        /// Bytes the message needs.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
}

/// A "fragmentation needed" answer to one frame, ready to emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragNeeded<'a> {
    /// Ethernet destination: the offending frame's source.
    pub eth_dst: [u8; 6],
    /// Ethernet source: the offending frame's destination.
    pub eth_src: [u8; 6],
    /// IP source: the offending packet's destination.
    pub ip_src: [u8; 4],
    /// IP destination: the offending packet's source.
    pub ip_dst: [u8; 4],
    /// The next-hop MTU to report.
    pub mtu: u16,
    /// The offending packet's IP header and up to 8 bytes of its payload.
    pub quoted: &'a [u8],
}

impl<'a> FragNeeded<'a> {
    /// Reads an Ethernet frame as received from the bridge and builds the answer telling its
    /// sender to use `mtu`, or says why there is none. Whether the frame is too big is the
    /// caller's decision.
    pub fn answering(frame: &'a [u8], mtu: u16) -> Result<Self, NoAnswer> {
        let eth = frame.get(..ETH_HEADER_LEN).ok_or(NoAnswer::TooShort)?;
        let ethertype = be16(eth, 12);
        if ethertype != ETHERTYPE_IPV4 {
            return Err(NoAnswer::NotIpv4(ethertype));
        }
        let eth_dst = mac_at(eth, 0);
        let eth_src = mac_at(eth, 6);
        if is_multicast_mac(eth_dst) || is_multicast_mac(eth_src) {
            return Err(NoAnswer::NotUnicast);
        }

        let ip = &frame[ETH_HEADER_LEN..];
        let first = *ip.first().ok_or(NoAnswer::BadIpHeader)?;
        let header_len = usize::from(first & 0x0f) * 4;
        if first >> 4 != 4 || header_len < IPV4_HEADER_LEN || ip.len() < header_len {
            return Err(NoAnswer::BadIpHeader);
        }
        let header = &ip[..header_len];
        let total_len = usize::from(be16(header, 2));
        if total_len < header_len || total_len > ip.len() {
            return Err(NoAnswer::BadIpHeader);
        }
        if checksum(&[header]) != 0 {
            return Err(NoAnswer::BadIpChecksum);
        }
        let flags = be16(header, 6);
        if flags & IP_FLAG_DF == 0 {
            return Err(NoAnswer::NotDf);
        }
        if flags & (IP_FLAG_MF | IP_FRAG_OFFSET_MASK) != 0 {
            return Err(NoAnswer::Fragment);
        }
        let src = ipv4_at(header, 12);
        let dst = ipv4_at(header, 16);
        if !is_unicast_ip(src) || !is_unicast_ip(dst) {
            return Err(NoAnswer::NotUnicast);
        }
        let payload = &ip[header_len..total_len];
        if header[9] == IP_PROTO_ICMP && payload.first().is_some_and(|&t| is_icmp_error(t)) {
            return Err(NoAnswer::IcmpError);
        }

        let quoted_len = header_len + payload.len().min(QUOTED_PAYLOAD_LEN);
        Ok(FragNeeded {
            eth_dst: eth_src,
            eth_src: eth_dst,
            ip_src: dst,
            ip_dst: src,
            mtu,
            quoted: &ip[..quoted_len],
        })
    }

    /// Length of the Ethernet frame [`Self::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        ETH_HEADER_LEN + IPV4_HEADER_LEN + ICMP_HEADER_LEN + self.quoted.len()
    }

    /// Writes the Ethernet frame at the start of `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, NoAnswer> {
        let needed = self.buffer_len();
        let available = buf.len();
        let out = buf
            .get_mut(..needed)
            .ok_or(NoAnswer::BufferTooSmall { needed, available })?;
        let (eth, rest) = out.split_at_mut(ETH_HEADER_LEN);
        let (ip, icmp) = rest.split_at_mut(IPV4_HEADER_LEN);

        eth[0..6].copy_from_slice(&self.eth_dst);
        eth[6..12].copy_from_slice(&self.eth_src);
        eth[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());

        // The quoted header is at most 60 bytes, so the total always fits 16 bits.
        let ip_total = (IPV4_HEADER_LEN + ICMP_HEADER_LEN + self.quoted.len()) as u16;
        ip[0] = 0x45;
        ip[1] = TOS_INTERNETWORK_CONTROL;
        ip[2..4].copy_from_slice(&ip_total.to_be_bytes());
        // Identification 0 and no DF, as Weave sends it: the answer is small, and without DF
        // it can never itself trigger another "fragmentation needed".
        ip[4..8].fill(0);
        ip[8] = TTL;
        ip[9] = IP_PROTO_ICMP;
        ip[10..12].fill(0);
        ip[12..16].copy_from_slice(&self.ip_src);
        ip[16..20].copy_from_slice(&self.ip_dst);
        let ip_sum = checksum(&[ip]);
        ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());

        icmp[0] = TYPE_DEST_UNREACHABLE;
        icmp[1] = CODE_FRAG_NEEDED;
        icmp[2..6].fill(0);
        icmp[6..8].copy_from_slice(&self.mtu.to_be_bytes());
        icmp[ICMP_HEADER_LEN..].copy_from_slice(self.quoted);
        let icmp_sum = checksum(&[icmp]);
        icmp[2..4].copy_from_slice(&icmp_sum.to_be_bytes());
        Ok(needed)
    }

    /// The Ethernet frame as a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.buffer_len()];
        // The buffer has exactly the length emit needs.
        let _ = self.emit(&mut v);
        v
    }
}

/// The "fragmentation needed" Ethernet frame answering `frame` with `mtu`, or `None` when
/// the frame must not be answered (see [`NoAnswer`]).
pub fn frag_needed(frame: &[u8], mtu: u16) -> Option<Vec<u8>> {
    FragNeeded::answering(frame, mtu).ok().map(|a| a.to_vec())
}

/// A "packet too big" answer to one IPv6 frame, ready to emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketTooBig<'a> {
    /// Ethernet destination: the offending frame's source.
    pub eth_dst: [u8; 6],
    /// Ethernet source: the offending frame's destination.
    pub eth_src: [u8; 6],
    /// IPv6 source: the offending packet's destination, as [`FragNeeded`] does it.
    pub ip_src: [u8; 16],
    /// IPv6 destination: the offending packet's source.
    pub ip_dst: [u8; 16],
    /// The next-hop MTU to report. One below [`IPV6_MIN_MTU`] is reported as it is: the
    /// sender then keeps to 1280 (RFC 8201 §4), which is all it can do.
    pub mtu: u32,
    /// The start of the offending packet: at most [`PTB_MAX_QUOTED`] bytes from its IPv6
    /// header on, never Ethernet padding.
    pub quoted: &'a [u8],
}

impl<'a> PacketTooBig<'a> {
    /// Reads an Ethernet frame as received from the bridge and builds the answer telling its
    /// sender to use `mtu`, or says why there is none. Whether the frame is too big is the
    /// caller's decision.
    pub fn answering(frame: &'a [u8], mtu: u16) -> Result<Self, NoAnswer> {
        let eth = frame.get(..ETH_HEADER_LEN).ok_or(NoAnswer::TooShort)?;
        let ethertype = be16(eth, 12);
        if ethertype != ETHERTYPE_IPV6 {
            return Err(NoAnswer::NotIpv6(ethertype));
        }
        let eth_dst = mac_at(eth, 0);
        let eth_src = mac_at(eth, 6);
        if is_multicast_mac(eth_dst) || is_multicast_mac(eth_src) {
            return Err(NoAnswer::NotUnicast);
        }

        let ip = &frame[ETH_HEADER_LEN..];
        let header = ip.get(..IPV6_HEADER_LEN).ok_or(NoAnswer::BadIpHeader)?;
        if header[0] >> 4 != 6 {
            return Err(NoAnswer::BadIpHeader);
        }
        let packet_len = IPV6_HEADER_LEN + usize::from(be16(header, 4));
        let packet = ip.get(..packet_len).ok_or(NoAnswer::BadIpHeader)?;
        let src = ipv6_at(header, 8);
        let dst = ipv6_at(header, 24);
        if !is_unicast_ipv6(src) || !is_unicast_ipv6(dst) {
            return Err(NoAnswer::NotUnicast);
        }
        if let Some((IP_PROTO_ICMPV6, message)) =
            ipv6_upper_layer(header[6], &packet[IPV6_HEADER_LEN..])
        {
            if message
                .first()
                .is_some_and(|&t| t < ICMPV6_FIRST_INFORMATIONAL)
            {
                return Err(NoAnswer::IcmpError);
            }
        }

        Ok(PacketTooBig {
            eth_dst: eth_src,
            eth_src: eth_dst,
            ip_src: dst,
            ip_dst: src,
            mtu: u32::from(mtu),
            quoted: &packet[..packet_len.min(PTB_MAX_QUOTED)],
        })
    }

    /// Length of the Ethernet frame [`Self::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        ETH_HEADER_LEN + IPV6_HEADER_LEN + ICMP_HEADER_LEN + self.quoted.len()
    }

    /// Writes the Ethernet frame at the start of `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, NoAnswer> {
        let needed = self.buffer_len();
        let available = buf.len();
        let out = buf
            .get_mut(..needed)
            .ok_or(NoAnswer::BufferTooSmall { needed, available })?;
        let (eth, rest) = out.split_at_mut(ETH_HEADER_LEN);
        let (ip, icmp) = rest.split_at_mut(IPV6_HEADER_LEN);

        eth[0..6].copy_from_slice(&self.eth_dst);
        eth[6..12].copy_from_slice(&self.eth_src);
        eth[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());

        // The quote is at most PTB_MAX_QUOTED bytes, so the length always fits 16 bits.
        let icmp_len = (ICMP_HEADER_LEN + self.quoted.len()) as u16;
        // Version 6, traffic class and flow label 0.
        ip[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
        ip[4..6].copy_from_slice(&icmp_len.to_be_bytes());
        ip[6] = IP_PROTO_ICMPV6;
        ip[7] = HOP_LIMIT;
        ip[8..24].copy_from_slice(&self.ip_src);
        ip[24..40].copy_from_slice(&self.ip_dst);

        icmp[0] = ICMPV6_TYPE_PACKET_TOO_BIG;
        icmp[1] = 0;
        icmp[2..4].fill(0);
        icmp[4..8].copy_from_slice(&self.mtu.to_be_bytes());
        icmp[ICMP_HEADER_LEN..].copy_from_slice(self.quoted);
        // RFC 4443 §2.3: the checksum covers the IPv6 pseudo-header (RFC 8200 §8.1).
        let mut pseudo = [0u8; 40];
        pseudo[..16].copy_from_slice(&self.ip_src);
        pseudo[16..32].copy_from_slice(&self.ip_dst);
        pseudo[32..36].copy_from_slice(&u32::from(icmp_len).to_be_bytes());
        pseudo[39] = IP_PROTO_ICMPV6;
        let icmp_sum = checksum(&[&pseudo, icmp]);
        icmp[2..4].copy_from_slice(&icmp_sum.to_be_bytes());
        Ok(needed)
    }

    /// The Ethernet frame as a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.buffer_len()];
        // The buffer has exactly the length emit needs.
        let _ = self.emit(&mut v);
        v
    }
}

/// The "packet too big" Ethernet frame answering the IPv6 `frame` with `mtu`, or `None` when
/// the frame must not be answered (see [`NoAnswer`]).
pub fn packet_too_big(frame: &[u8], mtu: u16) -> Option<Vec<u8>> {
    PacketTooBig::answering(frame, mtu).ok().map(|a| a.to_vec())
}

/// The answer to a frame larger than the path MTU `mtu`: "fragmentation needed" for an IPv4
/// packet with DF set, "packet too big" for an IPv6 packet, `None` for anything else or a
/// frame that must not be answered.
pub fn too_big(frame: &[u8], mtu: u16) -> Option<Vec<u8>> {
    match frame.get(12..14).map(|t| u16::from_be_bytes([t[0], t[1]])) {
        Some(ETHERTYPE_IPV4) => frag_needed(frame, mtu),
        Some(ETHERTYPE_IPV6) => packet_too_big(frame, mtu),
        Some(_) | None => None,
    }
}

/// The upper-layer protocol and message of an IPv6 packet (`next` and the payload after the
/// fixed header), past hop-by-hop, routing and destination-options headers and the fragment
/// header of a first fragment; `None` when it cannot be seen (a later fragment, a header
/// running past the payload).
fn ipv6_upper_layer(mut next: u8, mut rest: &[u8]) -> Option<(u8, &[u8])> {
    loop {
        let len = match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DESTINATION_OPTIONS => {
                (usize::from(*rest.get(1)?) + 1) * 8
            }
            IPV6_FRAGMENT if be16(rest.get(..4)?, 2) & IPV6_FRAGMENT_OFFSET_MASK == 0 => 8,
            IPV6_FRAGMENT => return None,
            upper => return Some((upper, rest)),
        };
        next = *rest.first()?;
        rest = rest.get(len..)?;
    }
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts`, each of even length
/// except possibly the last.
fn checksum(parts: &[&[u8]]) -> u16 {
    // A u64 cannot overflow: it would take 2^48 words.
    let mut sum: u64 = 0;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for c in &mut chunks {
            sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u64::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn mac_at(b: &[u8], at: usize) -> [u8; 6] {
    [b[at], b[at + 1], b[at + 2], b[at + 3], b[at + 4], b[at + 5]]
}

fn ipv4_at(b: &[u8], at: usize) -> [u8; 4] {
    [b[at], b[at + 1], b[at + 2], b[at + 3]]
}

fn ipv6_at(b: &[u8], at: usize) -> [u8; 16] {
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&b[at..at + 16]);
    ip
}

fn is_multicast_mac(mac: [u8; 6]) -> bool {
    mac[0] & 1 != 0
}

fn is_unicast_ip(ip: [u8; 4]) -> bool {
    ip != [0; 4] && ip != [255; 4] && !(224..=239).contains(&ip[0])
}

/// Neither the unspecified address nor a multicast one (ff00::/8).
fn is_unicast_ipv6(ip: [u8; 16]) -> bool {
    ip != [0; 16] && ip[0] != 0xff
}

/// ICMP error types (RFC 1122 3.2.2): unreachable, source quench, redirect, time exceeded,
/// parameter problem.
fn is_icmp_error(icmp_type: u8) -> bool {
    matches!(icmp_type, 3 | 4 | 5 | 11 | 12)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const POD1_MAC: [u8; 6] = [0x2a, 0xfe, 0xaa, 0xa8, 0x75, 0xe9];
    const POD2_MAC: [u8; 6] = [0x46, 0xaf, 0xf0, 0x26, 0x53, 0xfc];
    const POD1_IP: [u8; 4] = [10, 32, 0, 1];
    const POD2_IP: [u8; 4] = [10, 40, 0, 0];

    /// Checksum written independently of the one under test: one's-complement sum by
    /// 16-bit words into a u64, folded at the end.
    fn reference_sum(data: &[u8]) -> u16 {
        let mut s: u64 = 0;
        let mut i = 0;
        while i < data.len() {
            let hi = u64::from(data[i]) << 8;
            let lo = data.get(i + 1).map_or(0, |&b| u64::from(b));
            s += hi | lo;
            i += 2;
        }
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    /// A pod1 -> pod2 TCP segment with DF, `payload_len` bytes of data, as on the bridge.
    fn tcp_frame(payload_len: usize, options: usize) -> Vec<u8> {
        let ihl = 20 + options;
        let total = ihl + 20 + payload_len;
        let mut f = Vec::new();
        f.extend_from_slice(&POD2_MAC);
        f.extend_from_slice(&POD1_MAC);
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ip = vec![0u8; ihl];
        ip[0] = 0x40 | (ihl / 4) as u8;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&0x0663u16.to_be_bytes());
        ip[6] = 0x40;
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&POD1_IP);
        ip[16..20].copy_from_slice(&POD2_IP);
        for (i, b) in ip[20..].iter_mut().enumerate() {
            // NOP options, then end of list.
            *b = if i + 1 == options { 0 } else { 1 };
        }
        let sum = reference_sum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        f.extend_from_slice(&ip);
        // TCP header: ports 53074 -> 5001, then data.
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&53074u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&5001u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&0x11223344u32.to_be_bytes());
        tcp[12] = 0x50;
        f.extend_from_slice(&tcp);
        f.extend((0..payload_len).map(|i| i as u8));
        f
    }

    const POD1_IP6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const POD2_IP6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    /// A pod1 -> pod2 IPv6 packet on the bridge: `extensions` (the IPv6 next header is
    /// `first`, the last extension names `upper`) in front of `upper_bytes`.
    fn ipv6_frame(first: u8, extensions: &[u8], upper_bytes: &[u8]) -> Vec<u8> {
        let payload_len = extensions.len() + upper_bytes.len();
        let mut f = Vec::new();
        f.extend_from_slice(&POD2_MAC);
        f.extend_from_slice(&POD1_MAC);
        f.extend_from_slice(&[0x86, 0xdd]);
        f.extend_from_slice(&[0x60, 0x01, 0x23, 0x45]);
        f.extend_from_slice(&(payload_len as u16).to_be_bytes());
        f.extend_from_slice(&[first, 64]);
        f.extend_from_slice(&POD1_IP6);
        f.extend_from_slice(&POD2_IP6);
        f.extend_from_slice(extensions);
        f.extend_from_slice(upper_bytes);
        f
    }

    /// A pod1 -> pod2 TCP segment over IPv6 with `payload_len` bytes of data.
    fn tcp6_frame(payload_len: usize) -> Vec<u8> {
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&53074u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&5001u16.to_be_bytes());
        tcp[12] = 0x50;
        tcp.extend((0..payload_len).map(|i| i as u8));
        ipv6_frame(6, &[], &tcp)
    }

    /// The ICMPv6 checksum check, with the pseudo-header built independently.
    fn icmpv6_sum(ip: &[u8]) -> u16 {
        let len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
        let mut pseudo = ip[8..40].to_vec();
        pseudo.extend_from_slice(&(len as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        pseudo.extend_from_slice(&ip[40..40 + len]);
        reference_sum(&pseudo)
    }

    #[test]
    fn answers_an_oversized_ipv6_packet_with_packet_too_big() {
        let frame = tcp6_frame(2000);

        let out = packet_too_big(&frame, 1376).expect("an answer");

        assert_eq!(
            out.len(),
            14 + 1280,
            "the IPv6 packet fills the minimum MTU"
        );
        assert_eq!(&out[0..6], &POD1_MAC);
        assert_eq!(&out[6..12], &POD2_MAC);
        assert_eq!(&out[12..14], &[0x86, 0xdd]);
        let ip = &out[14..];
        assert_eq!(&ip[0..4], &[0x60, 0, 0, 0]);
        assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), 1240);
        assert_eq!(ip[6], 58, "next header ICMPv6");
        assert_eq!(ip[7], 64);
        assert_eq!(&ip[8..24], &POD2_IP6, "from the original destination");
        assert_eq!(&ip[24..40], &POD1_IP6);
        let icmp = &ip[40..];
        assert_eq!((icmp[0], icmp[1]), (2, 0));
        assert_eq!(
            u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]),
            1376
        );
        assert_eq!(icmpv6_sum(ip), 0, "ICMPv6 checksum");
        assert_eq!(&icmp[8..], &frame[14..14 + 1232], "as much as fits in 1280");
    }

    #[test]
    fn a_short_ipv6_packet_is_quoted_whole_without_padding() {
        let mut frame = tcp6_frame(100);
        let packet = frame[14..].to_vec();
        frame.extend_from_slice(&[0xee; 6]);

        let answer = PacketTooBig::answering(&frame, 1280).unwrap();
        let out = answer.to_vec();

        assert_eq!(answer.quoted, &packet[..]);
        assert_eq!(out.len(), 14 + 40 + 8 + 160);
        assert_eq!(icmpv6_sum(&out[14..]), 0);
        // An odd-length quote still sums right.
        let mut odd = tcp6_frame(101);
        odd.push(0xee);
        let out = packet_too_big(&odd, 1280).unwrap();
        assert_eq!(out.len(), 14 + 40 + 8 + 161);
        assert_eq!(icmpv6_sum(&out[14..]), 0);
    }

    #[test]
    fn icmpv6_errors_get_no_packet_too_big_but_echo_requests_do() {
        let echo = ipv6_frame(58, &[], &[128, 0, 0, 0, 0, 1, 0, 1]);
        let error = ipv6_frame(58, &[], &[1, 4, 0, 0, 0, 0, 0, 0]);
        let hop_by_hop = [58, 0, 1, 4, 0, 0, 0, 0];
        let behind_options = ipv6_frame(0, &hop_by_hop, &[2, 0, 0, 0, 0, 0, 5, 0]);
        let first_fragment = ipv6_frame(44, &[58, 0, 0, 1, 0, 0, 0, 9], &[3, 0, 0, 0]);
        let later_fragment = ipv6_frame(44, &[58, 0, 0x05, 0x01, 0, 0, 0, 9], &[3, 0, 0, 0]);

        assert!(packet_too_big(&echo, 1280).is_some());
        for (name, frame) in [
            ("error", &error),
            ("behind options", &behind_options),
            ("first fragment", &first_fragment),
        ] {
            assert_eq!(
                PacketTooBig::answering(frame, 1280).err(),
                Some(NoAnswer::IcmpError),
                "{name}"
            );
        }
        assert!(
            packet_too_big(&later_fragment, 1280).is_some(),
            "a later fragment shows no ICMPv6 header"
        );
    }

    #[test]
    fn refuses_ipv6_frames_that_must_not_be_answered() {
        let good = tcp6_frame(100);
        let case = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut f = good.clone();
            edit(&mut f);
            PacketTooBig::answering(&f, 1280).err()
        };

        assert_eq!(case(&|f| f.truncate(13)), Some(NoAnswer::TooShort));
        assert_eq!(
            case(&|f| f[12..14].copy_from_slice(&[0x08, 0x00])),
            Some(NoAnswer::NotIpv6(0x0800))
        );
        assert_eq!(case(&|f| f.truncate(14 + 39)), Some(NoAnswer::BadIpHeader));
        assert_eq!(case(&|f| f[14] = 0x40), Some(NoAnswer::BadIpHeader));
        assert_eq!(
            case(&|f| f[18..20].copy_from_slice(&121u16.to_be_bytes())),
            Some(NoAnswer::BadIpHeader)
        );
        assert_eq!(case(&|f| f[0] = 0x33), Some(NoAnswer::NotUnicast));
        assert_eq!(case(&|f| f[6] = 0x01), Some(NoAnswer::NotUnicast));
        assert_eq!(case(&|f| f[22..38].fill(0)), Some(NoAnswer::NotUnicast));
        assert_eq!(case(&|f| f[22] = 0xff), Some(NoAnswer::NotUnicast));
        assert_eq!(case(&|f| f[38] = 0xff), Some(NoAnswer::NotUnicast));
    }

    #[test]
    fn too_big_answers_by_ethertype() {
        let v4 = too_big(&tcp_frame(2000, 0), 1376).expect("IPv4 DF answered");
        let v6 = too_big(&tcp6_frame(2000), 1376).expect("IPv6 answered");
        let mut arp = tcp_frame(2000, 0);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);

        assert_eq!(v4, frag_needed(&tcp_frame(2000, 0), 1376).unwrap());
        assert_eq!(v6, packet_too_big(&tcp6_frame(2000), 1376).unwrap());
        assert_eq!(too_big(&arp, 1376), None);
        assert_eq!(too_big(&[0; 13], 1376), None);
    }

    fn fix_ip_checksum(f: &mut [u8]) {
        let ihl = usize::from(f[14] & 0x0f) * 4;
        f[24..26].fill(0);
        let sum = reference_sum(&f[14..14 + ihl]);
        f[24..26].copy_from_slice(&sum.to_be_bytes());
    }

    #[test]
    fn answers_oversized_df_tcp_segment() {
        let frame = tcp_frame(2000, 0);
        let out = frag_needed(&frame, 1438).expect("an answer");
        assert_eq!(out.len(), 14 + 20 + 8 + 28);

        assert_eq!(&out[0..6], &POD1_MAC);
        assert_eq!(&out[6..12], &POD2_MAC);
        assert_eq!(&out[12..14], &[0x08, 0x00]);

        let ip = &out[14..34];
        assert_eq!(ip[0], 0x45);
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 56);
        assert_eq!(ip[6] & 0x40, 0, "the answer itself may be fragmented");
        assert_eq!(ip[8], 64);
        assert_eq!(ip[9], 1);
        assert_eq!(&ip[12..16], &POD2_IP);
        assert_eq!(&ip[16..20], &POD1_IP);
        assert_eq!(reference_sum(ip), 0, "IP header checksum");

        let icmp = &out[34..];
        assert_eq!((icmp[0], icmp[1]), (3, 4));
        assert_eq!(&icmp[4..6], &[0, 0]);
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1438);
        assert_eq!(reference_sum(icmp), 0, "ICMP checksum");
        assert_eq!(&icmp[8..], &frame[14..14 + 28], "IP header + 8 bytes");
    }

    #[test]
    fn quotes_ip_options_and_short_payloads() {
        let frame = tcp_frame(0, 8);
        let a = FragNeeded::answering(&frame, 1400).unwrap();
        assert_eq!(a.quoted, &frame[14..14 + 28 + 8]);
        let out = a.to_vec();
        assert_eq!(reference_sum(&out[14..34]), 0);
        assert_eq!(reference_sum(&out[34..]), 0);

        // A packet with only 3 bytes after its IP header quotes those 3 (odd checksum length).
        let mut f = tcp_frame(0, 0);
        f.truncate(14 + 20 + 3);
        f[16..18].copy_from_slice(&23u16.to_be_bytes());
        fix_ip_checksum(&mut f);
        let out = frag_needed(&f, 600).unwrap();
        assert_eq!(out.len(), 14 + 20 + 8 + 23);
        assert_eq!(reference_sum(&out[34..]), 0);
    }

    #[test]
    fn ethernet_padding_is_not_quoted() {
        let mut f = tcp_frame(0, 0);
        f.extend_from_slice(&[0xee; 6]);
        let a = FragNeeded::answering(&f, 1438).unwrap();
        assert_eq!(a.quoted, &f[14..14 + 28]);
    }

    #[test]
    fn emit_into_small_buffer_fails() {
        let frame = tcp_frame(100, 0);
        let a = FragNeeded::answering(&frame, 1438).unwrap();
        let mut buf = [0u8; 69];
        assert_eq!(
            a.emit(&mut buf),
            Err(NoAnswer::BufferTooSmall {
                needed: 70,
                available: 69
            })
        );
    }

    #[test]
    fn refuses_what_must_not_be_answered() {
        let good = tcp_frame(100, 0);
        let case = |edit: &dyn Fn(&mut Vec<u8>), fix: bool| {
            let mut f = good.clone();
            edit(&mut f);
            if fix {
                fix_ip_checksum(&mut f);
            }
            FragNeeded::answering(&f, 1438).err()
        };
        assert_eq!(case(&|f| f.truncate(13), false), Some(NoAnswer::TooShort));
        assert_eq!(
            case(&|f| f[12..14].copy_from_slice(&[0x86, 0xdd]), false),
            Some(NoAnswer::NotIpv4(0x86dd))
        );
        assert_eq!(
            case(&|f| f[12..14].copy_from_slice(&[0x81, 0x00]), false),
            Some(NoAnswer::NotIpv4(0x8100))
        );
        assert_eq!(case(&|f| f[20] = 0, true), Some(NoAnswer::NotDf));
        assert_eq!(case(&|f| f[20] = 0x60, true), Some(NoAnswer::Fragment));
        assert_eq!(case(&|f| f[21] = 0x08, true), Some(NoAnswer::Fragment));
        assert_eq!(case(&|f| f[22] ^= 1, false), Some(NoAnswer::BadIpChecksum));
        assert_eq!(case(&|f| f[14] = 0x65, true), Some(NoAnswer::BadIpHeader));
        assert_eq!(case(&|f| f[14] = 0x44, true), Some(NoAnswer::BadIpHeader));
        assert_eq!(
            case(&|f| f.truncate(14 + 19), false),
            Some(NoAnswer::BadIpHeader)
        );
        assert_eq!(
            case(&|f| f.truncate(14), false),
            Some(NoAnswer::BadIpHeader)
        );
        assert_eq!(
            case(&|f| f[16..18].copy_from_slice(&19u16.to_be_bytes()), true),
            Some(NoAnswer::BadIpHeader)
        );
        assert_eq!(
            case(&|f| f[16..18].copy_from_slice(&9999u16.to_be_bytes()), true),
            Some(NoAnswer::BadIpHeader)
        );
        assert_eq!(case(&|f| f[0] = 0xff, false), Some(NoAnswer::NotUnicast));
        assert_eq!(case(&|f| f[6] = 0x01, false), Some(NoAnswer::NotUnicast));
        assert_eq!(
            case(&|f| f[26..30].copy_from_slice(&[0, 0, 0, 0]), true),
            Some(NoAnswer::NotUnicast)
        );
        assert_eq!(
            case(&|f| f[30..34].copy_from_slice(&[224, 0, 0, 251]), true),
            Some(NoAnswer::NotUnicast)
        );
        assert_eq!(
            case(&|f| f[30..34].copy_from_slice(&[255; 4]), true),
            Some(NoAnswer::NotUnicast)
        );
    }

    #[test]
    fn icmp_errors_get_no_answer_but_echo_requests_do() {
        let mut f = tcp_frame(100, 0);
        f[23] = IP_PROTO_ICMP;
        f[34] = 8; // echo request
        fix_ip_checksum(&mut f);
        assert!(frag_needed(&f, 1438).is_some());
        f[34] = 3;
        assert_eq!(
            FragNeeded::answering(&f, 1438).err(),
            Some(NoAnswer::IcmpError)
        );
    }

    #[test]
    fn checksum_matches_reference_on_known_header() {
        // IPv4 header of a captured pod2 -> pod1 ACK (frame 349 of three-peers-plain).
        let h = hex::decode("4500003406634000400620190a2800000a200001").unwrap();
        assert_eq!(checksum(&[&h]), 0);
        assert_eq!(reference_sum(&h), 0);
    }

    proptest! {
        #[test]
        fn checksum_agrees_with_reference(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            prop_assert_eq!(checksum(&[&data]), reference_sum(&data));
        }

        #[test]
        fn arbitrary_frames_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200), mtu in any::<u16>()) {
            if let Some(out) = frag_needed(&data, mtu) {
                prop_assert_eq!(reference_sum(&out[14..34]), 0);
                prop_assert_eq!(reference_sum(&out[34..]), 0);
            }
        }

        #[test]
        fn arbitrary_ipv6_packets_never_panic(
            first in prop::sample::select(vec![0u8, 6, 43, 44, 58, 60]),
            body in proptest::collection::vec(any::<u8>(), 0..300),
            mtu in any::<u16>(),
        ) {
            let frame = ipv6_frame(first, &[], &body);
            if let Some(out) = too_big(&frame, mtu) {
                prop_assert!(out.len() <= 14 + IPV6_MIN_MTU);
                prop_assert_eq!(icmpv6_sum(&out[14..]), 0);
            }
        }

        #[test]
        fn any_ipv6_tcp_segment_gets_a_valid_packet_too_big(len in 0usize..3000, mtu in 1280u16..9000) {
            let frame = tcp6_frame(len);
            let out = packet_too_big(&frame, mtu).unwrap();
            prop_assert_eq!(out.len(), 14 + 48 + (60 + len).min(PTB_MAX_QUOTED));
            prop_assert_eq!(icmpv6_sum(&out[14..]), 0);
            prop_assert_eq!(u32::from_be_bytes([out[58], out[59], out[60], out[61]]), u32::from(mtu));
        }

        #[test]
        fn any_df_tcp_segment_gets_valid_answer(len in 0usize..3000, opts in 0usize..=10, mtu in 552u16..9000) {
            let frame = tcp_frame(len, opts * 4);
            let out = frag_needed(&frame, mtu).unwrap();
            let quoted = 20 + opts * 4 + (20 + len).min(8);
            prop_assert_eq!(out.len(), 14 + 20 + 8 + quoted);
            prop_assert_eq!(reference_sum(&out[14..34]), 0);
            prop_assert_eq!(reference_sum(&out[34..]), 0);
            prop_assert_eq!(u16::from_be_bytes([out[40], out[41]]), mtu);
        }
    }
}
