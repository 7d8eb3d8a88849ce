//! Ethernet, IPv4, IPv6, TCP and UDP header views and checksums.
//!
//! Each view wraps a buffer (`&[u8]`, `&mut [u8]`, `Vec<u8>`...) and reads fields in place
//! through named byte ranges, in the style of smoltcp's `wire`. `new_unchecked` wraps any
//! buffer; `new_checked` also runs `check_len`.
//!
//! **Promise:** once `new_checked` (or `check_len`) has succeeded, no getter, setter or
//! payload accessor of that view panics, whatever the bytes hold. Views made with
//! `new_unchecked` over a buffer too short may panic; the offload code only does that over
//! buffers whose length it has just checked.
//!
//! Unknown values are kept ([`EtherType::Unknown`], [`IpProtocol::Unknown`]) rather than
//! rejected. The [`checksum`] module is the Internet checksum (RFC 1071) with the incremental
//! update of RFC 1624 and the IPv4/IPv6 pseudo-headers; [`l4_checksum`],
//! [`verify_l4_checksum`] and [`fill_l4_checksum`] apply it to a whole Ethernet frame.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use thiserror::Error;

/// A header could not be read from a buffer.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// The buffer is shorter than the fixed part of the header.
    #[error("buffer too short for the header")]
    Truncated,
    /// A length field (IHL, total length, data offset, payload length) disagrees with the
    /// buffer or with the header's own minimum.
    #[error("header length field is inconsistent with the buffer")]
    BadLength,
    /// The IP version field is not the one the view reads.
    #[error("wrong IP version {0}")]
    BadVersion(u8),
    /// The frame carries neither IPv4 nor IPv6.
    #[error("not an IP frame (ethertype {0})")]
    NotIp(EtherType),
    /// The IP packet is a fragment (an IPv4 offset or MF, or an IPv6 fragment header), so
    /// it holds no complete TCP/UDP segment.
    #[error("IP fragment (IPv4 offset or MF, or an IPv6 fragment header)")]
    Fragment,
    /// The IP packet carries something other than TCP or UDP (behind any IPv6 hop-by-hop,
    /// routing and destination-options headers): ESP, AH, ICMP, ...
    #[error("IP payload is {0}, not TCP or UDP")]
    NotTcpOrUdp(IpProtocol),
    /// An IPv6 routing header with segments left, of a type whose final destination (which
    /// the TCP/UDP checksum covers) this code cannot read: any but 0, 2 and 4.
    #[error("IPv6 routing header of type {0} with segments left")]
    UnsupportedRouting(u8),
}

// ---------------------------------------------------------------------------------------
// Ethernet II
// ---------------------------------------------------------------------------------------

/// A 48-bit MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EthernetAddress(pub [u8; 6]);

impl EthernetAddress {
    /// The broadcast address ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: EthernetAddress = EthernetAddress([0xff; 6]);

    /// Reads an address from the first six bytes of `bytes` (which must hold six).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut addr = [0u8; 6];
        addr.copy_from_slice(&bytes[..6]);
        EthernetAddress(addr)
    }

    /// Whether the group bit is set (broadcast or multicast).
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
}

impl fmt::Debug for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// The EtherType of an Ethernet II frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EtherType {
    /// 0x0800.
    Ipv4,
    /// 0x0806.
    Arp,
    /// 0x86dd.
    Ipv6,
    /// Any other value, kept as read.
    Unknown(u16),
}

impl From<u16> for EtherType {
    fn from(value: u16) -> Self {
        match value {
            0x0800 => EtherType::Ipv4,
            0x0806 => EtherType::Arp,
            0x86dd => EtherType::Ipv6,
            other => EtherType::Unknown(other),
        }
    }
}

impl From<EtherType> for u16 {
    fn from(value: EtherType) -> Self {
        match value {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Ipv6 => 0x86dd,
            EtherType::Unknown(other) => other,
        }
    }
}

impl fmt::Display for EtherType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:04x}", u16::from(*self))
    }
}

mod eth_field {
    use std::ops::{Range, RangeFrom};

    pub const DESTINATION: Range<usize> = 0..6;
    pub const SOURCE: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const PAYLOAD: RangeFrom<usize> = 14..;
}

/// Length of an Ethernet II header (no VLAN tag).
pub const ETHERNET_HEADER_LEN: usize = 14;

/// A view of an Ethernet II frame.
#[derive(Debug, Clone)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps a buffer without checking its length.
    pub fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Wraps a buffer after checking that it holds a whole header.
    pub fn new_checked(buffer: T) -> Result<Self, HeaderError> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// Checks that the buffer holds a whole header.
    pub fn check_len(&self) -> Result<(), HeaderError> {
        if self.buffer.as_ref().len() < ETHERNET_HEADER_LEN {
            return Err(HeaderError::Truncated);
        }
        Ok(())
    }

    /// Returns the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Destination MAC.
    pub fn dst_addr(&self) -> EthernetAddress {
        EthernetAddress::from_bytes(&self.buffer.as_ref()[eth_field::DESTINATION])
    }

    /// Source MAC.
    pub fn src_addr(&self) -> EthernetAddress {
        EthernetAddress::from_bytes(&self.buffer.as_ref()[eth_field::SOURCE])
    }

    /// EtherType.
    pub fn ethertype(&self) -> EtherType {
        EtherType::from(be16(self.buffer.as_ref(), eth_field::ETHERTYPE.start))
    }

    /// Everything after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[eth_field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination MAC.
    pub fn set_dst_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[eth_field::DESTINATION].copy_from_slice(&addr.0);
    }

    /// Sets the source MAC.
    pub fn set_src_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[eth_field::SOURCE].copy_from_slice(&addr.0);
    }

    /// Sets the EtherType.
    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        put16(
            self.buffer.as_mut(),
            eth_field::ETHERTYPE.start,
            ethertype.into(),
        );
    }

    /// Everything after the header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[eth_field::PAYLOAD]
    }
}

/// An Ethernet II header as a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EthernetRepr {
    /// Source MAC.
    pub src_addr: EthernetAddress,
    /// Destination MAC.
    pub dst_addr: EthernetAddress,
    /// EtherType.
    pub ethertype: EtherType,
}

impl EthernetRepr {
    /// Reads the header of a checked frame.
    pub fn parse<T: AsRef<[u8]>>(frame: &EthernetFrame<T>) -> Result<Self, HeaderError> {
        frame.check_len()?;
        Ok(EthernetRepr {
            src_addr: frame.src_addr(),
            dst_addr: frame.dst_addr(),
            ethertype: frame.ethertype(),
        })
    }

    /// Bytes the header takes.
    pub const fn buffer_len(&self) -> usize {
        ETHERNET_HEADER_LEN
    }

    /// Writes the header into a frame whose buffer holds at least [`ETHERNET_HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut EthernetFrame<T>) {
        frame.set_src_addr(self.src_addr);
        frame.set_dst_addr(self.dst_addr);
        frame.set_ethertype(self.ethertype);
    }
}

// ---------------------------------------------------------------------------------------
// IP protocol numbers
// ---------------------------------------------------------------------------------------

/// An IP protocol / IPv6 next-header number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpProtocol {
    /// 1.
    Icmp,
    /// 6.
    Tcp,
    /// 17.
    Udp,
    /// 58.
    Icmpv6,
    /// Any other value (IPv6 extension headers included), kept as read.
    Unknown(u8),
}

impl From<u8> for IpProtocol {
    fn from(value: u8) -> Self {
        match value {
            1 => IpProtocol::Icmp,
            6 => IpProtocol::Tcp,
            17 => IpProtocol::Udp,
            58 => IpProtocol::Icmpv6,
            other => IpProtocol::Unknown(other),
        }
    }
}

impl From<IpProtocol> for u8 {
    fn from(value: IpProtocol) -> Self {
        match value {
            IpProtocol::Icmp => 1,
            IpProtocol::Tcp => 6,
            IpProtocol::Udp => 17,
            IpProtocol::Icmpv6 => 58,
            IpProtocol::Unknown(other) => other,
        }
    }
}

impl fmt::Display for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "protocol {}", u8::from(*self))
    }
}

// ---------------------------------------------------------------------------------------
// IPv4
// ---------------------------------------------------------------------------------------

mod ipv4_field {
    use std::ops::Range;

    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC_ADDR: Range<usize> = 12..16;
    pub const DST_ADDR: Range<usize> = 16..20;
}

/// Length of an IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;

const IPV4_DF: u16 = 0x4000;
const IPV4_MF: u16 = 0x2000;
const IPV4_OFFSET_MASK: u16 = 0x1fff;

/// A view of an IPv4 packet. `new_checked` guarantees: version 4, a header of 20..=60 bytes
/// inside the buffer, and a total length between the header length and the buffer length
/// (bytes after the total length, such as Ethernet padding, are not part of the payload).
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps a buffer without checking it.
    pub fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, HeaderError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the version and that the header and total length fit the buffer.
    pub fn check_len(&self) -> Result<(), HeaderError> {
        let len = self.buffer.as_ref().len();
        if len < IPV4_HEADER_LEN {
            return Err(HeaderError::Truncated);
        }
        if self.version() != 4 {
            return Err(HeaderError::BadVersion(self.version()));
        }
        let header_len = usize::from(self.header_len());
        let total_len = usize::from(self.total_len());
        if header_len < IPV4_HEADER_LEN || header_len > len {
            return Err(HeaderError::BadLength);
        }
        if total_len < header_len || total_len > len {
            return Err(HeaderError::BadLength);
        }
        Ok(())
    }

    /// Returns the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Version field (4 for a checked view).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[ipv4_field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL × 4).
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[ipv4_field::VER_IHL] & 0x0f) * 4
    }

    /// The DSCP/ECN byte (the old TOS).
    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[ipv4_field::DSCP_ECN]
    }

    /// Total length (header + payload).
    pub fn total_len(&self) -> u16 {
        be16(self.buffer.as_ref(), ipv4_field::LENGTH.start)
    }

    /// Identification.
    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), ipv4_field::IDENT.start)
    }

    /// Don't Fragment.
    pub fn dont_frag(&self) -> bool {
        be16(self.buffer.as_ref(), ipv4_field::FLG_OFF.start) & IPV4_DF != 0
    }

    /// More Fragments.
    pub fn more_frags(&self) -> bool {
        be16(self.buffer.as_ref(), ipv4_field::FLG_OFF.start) & IPV4_MF != 0
    }

    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (be16(self.buffer.as_ref(), ipv4_field::FLG_OFF.start) & IPV4_OFFSET_MASK) << 3
    }

    /// Whether this packet is a fragment (MF set or a non-zero offset).
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[ipv4_field::TTL]
    }

    /// Protocol of the payload.
    pub fn protocol(&self) -> IpProtocol {
        IpProtocol::from(self.buffer.as_ref()[ipv4_field::PROTOCOL])
    }

    /// Header checksum as stored.
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), ipv4_field::CHECKSUM.start)
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        ipv4_at(self.buffer.as_ref(), ipv4_field::SRC_ADDR.start)
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        ipv4_at(self.buffer.as_ref(), ipv4_field::DST_ADDR.start)
    }

    /// The options bytes (between the fixed header and the payload).
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[IPV4_HEADER_LEN..usize::from(self.header_len())]
    }

    /// The whole header, options included.
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..usize::from(self.header_len())]
    }

    /// Whether the header checksum is correct.
    pub fn verify_checksum(&self) -> bool {
        checksum::data(self.header()) == 0xffff
    }

    /// The payload, up to the total length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[usize::from(self.header_len())..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Sets version 4 and the header length in bytes (a multiple of 4, 20..=60).
    pub fn set_version_and_header_len(&mut self, header_len: u8) {
        self.buffer.as_mut()[ipv4_field::VER_IHL] = 0x40 | ((header_len / 4) & 0x0f);
    }

    /// Sets the DSCP/ECN byte.
    pub fn set_tos(&mut self, tos: u8) {
        self.buffer.as_mut()[ipv4_field::DSCP_ECN] = tos;
    }

    /// Sets the total length.
    pub fn set_total_len(&mut self, len: u16) {
        put16(self.buffer.as_mut(), ipv4_field::LENGTH.start, len);
    }

    /// Sets the identification.
    pub fn set_ident(&mut self, ident: u16) {
        put16(self.buffer.as_mut(), ipv4_field::IDENT.start, ident);
    }

    /// Sets DF, MF and the fragment offset (in bytes, a multiple of 8).
    pub fn set_flags_and_offset(&mut self, dont_frag: bool, more_frags: bool, offset: u16) {
        let mut raw = (offset >> 3) & IPV4_OFFSET_MASK;
        if dont_frag {
            raw |= IPV4_DF;
        }
        if more_frags {
            raw |= IPV4_MF;
        }
        put16(self.buffer.as_mut(), ipv4_field::FLG_OFF.start, raw);
    }

    /// Sets the time to live.
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[ipv4_field::TTL] = ttl;
    }

    /// Sets the payload protocol.
    pub fn set_protocol(&mut self, protocol: IpProtocol) {
        self.buffer.as_mut()[ipv4_field::PROTOCOL] = protocol.into();
    }

    /// Sets the stored header checksum.
    pub fn set_checksum(&mut self, checksum: u16) {
        put16(self.buffer.as_mut(), ipv4_field::CHECKSUM.start, checksum);
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[ipv4_field::SRC_ADDR].copy_from_slice(&addr.octets());
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[ipv4_field::DST_ADDR].copy_from_slice(&addr.octets());
    }

    /// Computes and stores the header checksum.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = checksum::data(self.header());
        self.set_checksum(!sum);
    }

    /// The payload, up to the total length, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = usize::from(self.header_len())..usize::from(self.total_len());
        &mut self.buffer.as_mut()[range]
    }
}

// ---------------------------------------------------------------------------------------
// IPv6
// ---------------------------------------------------------------------------------------

mod ipv6_field {
    use std::ops::Range;

    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Range<usize> = 8..24;
    pub const DST_ADDR: Range<usize> = 24..40;
}

/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;

/// A view of an IPv6 packet (fixed header only: extension headers are payload here).
/// `new_checked` guarantees version 6 and a payload length that fits the buffer. A zero
/// payload length (jumbogram) reads as an empty payload.
#[derive(Debug, Clone)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps a buffer without checking it.
    pub fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, HeaderError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the version and that the payload length fits the buffer.
    pub fn check_len(&self) -> Result<(), HeaderError> {
        let len = self.buffer.as_ref().len();
        if len < IPV6_HEADER_LEN {
            return Err(HeaderError::Truncated);
        }
        if self.version() != 6 {
            return Err(HeaderError::BadVersion(self.version()));
        }
        if IPV6_HEADER_LEN + usize::from(self.payload_len()) > len {
            return Err(HeaderError::BadLength);
        }
        Ok(())
    }

    /// Returns the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Version field (6 for a checked view).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[ipv6_field::VER_TC_FLOW.start] >> 4
    }

    /// Traffic class.
    pub fn traffic_class(&self) -> u8 {
        let b = self.buffer.as_ref();
        (b[0] << 4) | (b[1] >> 4)
    }

    /// Flow label (20 bits).
    pub fn flow_label(&self) -> u32 {
        be32(self.buffer.as_ref(), ipv6_field::VER_TC_FLOW.start) & 0x000f_ffff
    }

    /// Payload length (everything after the fixed header).
    pub fn payload_len(&self) -> u16 {
        be16(self.buffer.as_ref(), ipv6_field::LENGTH.start)
    }

    /// Next header.
    pub fn next_header(&self) -> IpProtocol {
        IpProtocol::from(self.buffer.as_ref()[ipv6_field::NXT_HDR])
    }

    /// Hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[ipv6_field::HOP_LIMIT]
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv6Addr {
        ipv6_at(self.buffer.as_ref(), ipv6_field::SRC_ADDR.start)
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv6Addr {
        ipv6_at(self.buffer.as_ref(), ipv6_field::DST_ADDR.start)
    }

    /// The payload, up to the payload length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[IPV6_HEADER_LEN..IPV6_HEADER_LEN + usize::from(self.payload_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// Sets version 6, the traffic class and the flow label.
    pub fn set_version_class_flow(&mut self, traffic_class: u8, flow_label: u32) {
        let word = (6u32 << 28) | (u32::from(traffic_class) << 20) | (flow_label & 0x000f_ffff);
        self.buffer.as_mut()[ipv6_field::VER_TC_FLOW].copy_from_slice(&word.to_be_bytes());
    }

    /// Sets the payload length.
    pub fn set_payload_len(&mut self, len: u16) {
        put16(self.buffer.as_mut(), ipv6_field::LENGTH.start, len);
    }

    /// Sets the next header.
    pub fn set_next_header(&mut self, protocol: IpProtocol) {
        self.buffer.as_mut()[ipv6_field::NXT_HDR] = protocol.into();
    }

    /// Sets the hop limit.
    pub fn set_hop_limit(&mut self, hop_limit: u8) {
        self.buffer.as_mut()[ipv6_field::HOP_LIMIT] = hop_limit;
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[ipv6_field::SRC_ADDR].copy_from_slice(&addr.octets());
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[ipv6_field::DST_ADDR].copy_from_slice(&addr.octets());
    }

    /// The payload, up to the payload length, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = IPV6_HEADER_LEN + usize::from(self.payload_len());
        &mut self.buffer.as_mut()[IPV6_HEADER_LEN..end]
    }
}

/// Next-header values of the IPv6 extension headers [`ipv6_upper_layer`] knows.
pub mod ipv6_ext {
    /// Hop-by-hop options (RFC 8200 §4.3).
    pub const HOP_BY_HOP: u8 = 0;
    /// Routing header (RFC 8200 §4.4).
    pub const ROUTING: u8 = 43;
    /// Fragment header (RFC 8200 §4.5).
    pub const FRAGMENT: u8 = 44;
    /// Destination options (RFC 8200 §4.6).
    pub const DESTINATION_OPTIONS: u8 = 60;
}

/// Where the upper-layer header of an IPv6 packet lies behind its extension headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6UpperLayer {
    /// What the last next-header field names: TCP, UDP, ICMPv6, or wherever the walk stopped
    /// (ESP, AH, "no next header", ...).
    pub protocol: IpProtocol,
    /// Bytes of extension headers between the fixed header and the upper-layer header.
    pub offset: usize,
    /// The destination an upper-layer checksum covers (RFC 8200 §8.1): the final one named
    /// by a routing header with segments left, else the IPv6 header's.
    pub final_dst: Ipv6Addr,
}

/// Walks the hop-by-hop, routing and destination-options headers of an IPv6 packet, in
/// whatever order and number they come, to its upper-layer header. A fragment header is
/// [`HeaderError::Fragment`]: behind it there may be no complete upper-layer header. Any
/// other next-header value ends the walk. Lengths are checked against the payload length,
/// so no input panics.
pub fn ipv6_upper_layer<T: AsRef<[u8]>>(ip: &Ipv6Packet<T>) -> Result<Ipv6UpperLayer, HeaderError> {
    ip.check_len()?;
    let payload = ip.payload();
    let mut protocol = ip.next_header();
    let mut offset = 0;
    let mut final_dst = ip.dst_addr();
    loop {
        match u8::from(protocol) {
            ipv6_ext::HOP_BY_HOP | ipv6_ext::ROUTING | ipv6_ext::DESTINATION_OPTIONS => {}
            ipv6_ext::FRAGMENT => return Err(HeaderError::Fragment),
            _ => {
                return Ok(Ipv6UpperLayer {
                    protocol,
                    offset,
                    final_dst,
                })
            }
        }
        // Each of the three: next header, length in 8-byte units not counting the first 8.
        let fixed = payload
            .get(offset..offset + 8)
            .ok_or(HeaderError::Truncated)?;
        let len = (usize::from(fixed[1]) + 1) * 8;
        let header = payload
            .get(offset..offset + len)
            .ok_or(HeaderError::BadLength)?;
        if u8::from(protocol) == ipv6_ext::ROUTING {
            if let Some(dst) = routing_final_destination(header)? {
                final_dst = dst;
            }
        }
        protocol = IpProtocol::from(header[0]);
        offset += len;
    }
}

/// The final destination a routing header (at least 8 bytes) names when it has segments
/// left; `None` when it has none, as the IPv6 destination is then the final one.
fn routing_final_destination(header: &[u8]) -> Result<Option<Ipv6Addr>, HeaderError> {
    let (routing_type, segments_left) = (header[2], header[3]);
    if segments_left == 0 {
        return Ok(None);
    }
    let addresses = &header[8..];
    let at = match routing_type {
        // Type 0 (deprecated, RFC 5095) and type 2 (Mobile IPv6, RFC 6275): a list of
        // addresses with the final destination last.
        0 | 2 => (addresses.len() / 16)
            .checked_sub(1)
            .ok_or(HeaderError::BadLength)?
            .saturating_mul(16),
        // Type 4, the segment routing header (RFC 8754): segment list[0] is the last one.
        4 if addresses.len() >= 16 => 0,
        4 => return Err(HeaderError::BadLength),
        other => return Err(HeaderError::UnsupportedRouting(other)),
    };
    Ok(Some(ipv6_at(addresses, at)))
}

// ---------------------------------------------------------------------------------------
// TCP
// ---------------------------------------------------------------------------------------

mod tcp_field {
    use std::ops::Range;

    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ_NUM: Range<usize> = 4..8;
    pub const ACK_NUM: Range<usize> = 8..12;
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
}

/// Length of a TCP header without options.
pub const TCP_HEADER_LEN: usize = 20;

/// Offset of the checksum inside a TCP header (the `csum_offset` of a partial checksum).
pub const TCP_CHECKSUM_OFFSET: usize = tcp_field::CHECKSUM.start;

/// The eight TCP flag bits of byte 13.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// FIN.
    pub const FIN: TcpFlags = TcpFlags(0x01);
    /// SYN.
    pub const SYN: TcpFlags = TcpFlags(0x02);
    /// RST.
    pub const RST: TcpFlags = TcpFlags(0x04);
    /// PSH.
    pub const PSH: TcpFlags = TcpFlags(0x08);
    /// ACK.
    pub const ACK: TcpFlags = TcpFlags(0x10);
    /// URG.
    pub const URG: TcpFlags = TcpFlags(0x20);
    /// ECE.
    pub const ECE: TcpFlags = TcpFlags(0x40);
    /// CWR.
    pub const CWR: TcpFlags = TcpFlags(0x80);

    /// Whether every bit of `other` is set here.
    pub fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any bit of `other` is set here.
    pub fn intersects(self, other: TcpFlags) -> bool {
        self.0 & other.0 != 0
    }

    /// These flags without the bits of `other`.
    pub fn without(self, other: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 & !other.0)
    }

    /// These flags with the bits of `other`.
    pub fn with(self, other: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | other.0)
    }
}

/// A view of a TCP segment. `new_checked` guarantees a data offset of 20..=60 bytes inside
/// the buffer; the payload is the rest of the buffer.
#[derive(Debug, Clone)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wraps a buffer without checking it.
    pub fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, HeaderError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the header, options included, fits the buffer.
    pub fn check_len(&self) -> Result<(), HeaderError> {
        let len = self.buffer.as_ref().len();
        if len < TCP_HEADER_LEN {
            return Err(HeaderError::Truncated);
        }
        let header_len = usize::from(self.header_len());
        if header_len < TCP_HEADER_LEN || header_len > len {
            return Err(HeaderError::BadLength);
        }
        Ok(())
    }

    /// Returns the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), tcp_field::SRC_PORT.start)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), tcp_field::DST_PORT.start)
    }

    /// Sequence number.
    pub fn seq_number(&self) -> u32 {
        be32(self.buffer.as_ref(), tcp_field::SEQ_NUM.start)
    }

    /// Acknowledgement number.
    pub fn ack_number(&self) -> u32 {
        be32(self.buffer.as_ref(), tcp_field::ACK_NUM.start)
    }

    /// Header length in bytes (data offset × 4).
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[tcp_field::DATA_OFFSET] >> 4) * 4
    }

    /// The eight flag bits.
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(self.buffer.as_ref()[tcp_field::FLAGS])
    }

    /// Window size.
    pub fn window_len(&self) -> u16 {
        be16(self.buffer.as_ref(), tcp_field::WINDOW.start)
    }

    /// Checksum as stored.
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), tcp_field::CHECKSUM.start)
    }

    /// Urgent pointer.
    pub fn urgent_at(&self) -> u16 {
        be16(self.buffer.as_ref(), tcp_field::URGENT.start)
    }

    /// The options bytes.
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[TCP_HEADER_LEN..usize::from(self.header_len())]
    }

    /// The payload (everything after the header).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[usize::from(self.header_len())..]
    }

    /// Whether the checksum is correct, given the pseudo-header sum (see
    /// [`checksum::pseudo_header_v4`]) for this segment's length.
    pub fn verify_checksum(&self, pseudo_header: u16) -> bool {
        checksum::combine(&[pseudo_header, checksum::data(self.buffer.as_ref())]) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    /// Sets the source port.
    pub fn set_src_port(&mut self, port: u16) {
        put16(self.buffer.as_mut(), tcp_field::SRC_PORT.start, port);
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, port: u16) {
        put16(self.buffer.as_mut(), tcp_field::DST_PORT.start, port);
    }

    /// Sets the sequence number.
    pub fn set_seq_number(&mut self, seq: u32) {
        put32(self.buffer.as_mut(), tcp_field::SEQ_NUM.start, seq);
    }

    /// Sets the acknowledgement number.
    pub fn set_ack_number(&mut self, ack: u32) {
        put32(self.buffer.as_mut(), tcp_field::ACK_NUM.start, ack);
    }

    /// Sets the header length in bytes (a multiple of 4, 20..=60); keeps the low nibble.
    pub fn set_header_len(&mut self, len: u8) {
        let b = &mut self.buffer.as_mut()[tcp_field::DATA_OFFSET];
        *b = ((len / 4) << 4) | (*b & 0x0f);
    }

    /// Sets the eight flag bits.
    pub fn set_flags(&mut self, flags: TcpFlags) {
        self.buffer.as_mut()[tcp_field::FLAGS] = flags.0;
    }

    /// Sets the window size.
    pub fn set_window_len(&mut self, window: u16) {
        put16(self.buffer.as_mut(), tcp_field::WINDOW.start, window);
    }

    /// Sets the stored checksum.
    pub fn set_checksum(&mut self, checksum: u16) {
        put16(self.buffer.as_mut(), tcp_field::CHECKSUM.start, checksum);
    }

    /// Sets the urgent pointer.
    pub fn set_urgent_at(&mut self, urgent: u16) {
        put16(self.buffer.as_mut(), tcp_field::URGENT.start, urgent);
    }

    /// Computes and stores the checksum over the whole buffer (header and payload).
    pub fn fill_checksum(&mut self, pseudo_header: u16) {
        self.set_checksum(0);
        let sum = checksum::combine(&[pseudo_header, checksum::data(self.buffer.as_ref())]);
        self.set_checksum(!sum);
    }

    /// The payload, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = usize::from(self.header_len());
        &mut self.buffer.as_mut()[start..]
    }
}

// ---------------------------------------------------------------------------------------
// UDP
// ---------------------------------------------------------------------------------------

mod udp_field {
    use std::ops::Range;

    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
}

/// Length of a UDP header.
pub const UDP_HEADER_LEN: usize = 8;

/// Offset of the checksum inside a UDP header.
pub const UDP_CHECKSUM_OFFSET: usize = udp_field::CHECKSUM.start;

/// A view of a UDP datagram. `new_checked` guarantees a length field of at least 8 that
/// fits the buffer; the payload ends at that length.
#[derive(Debug, Clone)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wraps a buffer without checking it.
    pub fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, HeaderError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the header fits and that the length field agrees with the buffer.
    pub fn check_len(&self) -> Result<(), HeaderError> {
        let len = self.buffer.as_ref().len();
        if len < UDP_HEADER_LEN {
            return Err(HeaderError::Truncated);
        }
        let field_len = usize::from(self.len());
        if field_len < UDP_HEADER_LEN || field_len > len {
            return Err(HeaderError::BadLength);
        }
        Ok(())
    }

    /// Returns the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), udp_field::SRC_PORT.start)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), udp_field::DST_PORT.start)
    }

    /// Length field (header + payload).
    pub fn len(&self) -> u16 {
        be16(self.buffer.as_ref(), udp_field::LENGTH.start)
    }

    /// Whether the datagram has no payload.
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= UDP_HEADER_LEN
    }

    /// Checksum as stored (0 over IPv4 means "none").
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), udp_field::CHECKSUM.start)
    }

    /// The payload, up to the length field.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[UDP_HEADER_LEN..usize::from(self.len())]
    }

    /// Whether the checksum is correct over the length field's bytes, given the
    /// pseudo-header sum. A zero checksum counts as correct (IPv4's "no checksum").
    pub fn verify_checksum(&self, pseudo_header: u16) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let datagram = &self.buffer.as_ref()[..usize::from(self.len())];
        checksum::combine(&[pseudo_header, checksum::data(datagram)]) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    /// Sets the source port.
    pub fn set_src_port(&mut self, port: u16) {
        put16(self.buffer.as_mut(), udp_field::SRC_PORT.start, port);
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, port: u16) {
        put16(self.buffer.as_mut(), udp_field::DST_PORT.start, port);
    }

    /// Sets the length field.
    pub fn set_len(&mut self, len: u16) {
        put16(self.buffer.as_mut(), udp_field::LENGTH.start, len);
    }

    /// Sets the stored checksum.
    pub fn set_checksum(&mut self, checksum: u16) {
        put16(self.buffer.as_mut(), udp_field::CHECKSUM.start, checksum);
    }

    /// Computes and stores the checksum over the length field's bytes. A computed zero is
    /// stored as 0xffff, because zero means "no checksum".
    pub fn fill_checksum(&mut self, pseudo_header: u16) {
        self.set_checksum(0);
        let end = usize::from(self.len());
        let datagram = &self.buffer.as_ref()[..end];
        let sum = !checksum::combine(&[pseudo_header, checksum::data(datagram)]);
        self.set_checksum(if sum == 0 { 0xffff } else { sum });
    }

    /// The payload, up to the length field, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.len());
        &mut self.buffer.as_mut()[UDP_HEADER_LEN..end]
    }
}

// ---------------------------------------------------------------------------------------
// Whole-frame transport checksums
// ---------------------------------------------------------------------------------------

/// Where the TCP/UDP segment of an Ethernet frame lies, and its pseudo-header sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L4Location {
    /// Offset of the IP header in the frame.
    pub l3_offset: usize,
    /// Offset of the TCP/UDP header in the frame (past IPv4 options or IPv6 extension
    /// headers).
    pub l4_offset: usize,
    /// Bytes of the TCP/UDP segment (header and payload), per the IP length field.
    pub l4_len: usize,
    /// TCP or UDP.
    pub protocol: IpProtocol,
    /// The pseudo-header sum for this segment (addresses, protocol, `l4_len`); over IPv6 with
    /// a routing header, the final destination's.
    pub pseudo_header: u16,
}

impl L4Location {
    /// Offset of the checksum field in the frame.
    pub fn checksum_offset(&self) -> usize {
        match self.protocol {
            IpProtocol::Udp => self.l4_offset + UDP_CHECKSUM_OFFSET,
            IpProtocol::Tcp | IpProtocol::Icmp | IpProtocol::Icmpv6 | IpProtocol::Unknown(_) => {
                self.l4_offset + TCP_CHECKSUM_OFFSET
            }
        }
    }

    /// The frame range of the segment.
    pub fn l4_range(&self) -> std::ops::Range<usize> {
        self.l4_offset..self.l4_offset + self.l4_len
    }
}

/// Finds the TCP or UDP segment of an Ethernet II frame carrying IPv4 (not a fragment) or
/// IPv6 (behind any hop-by-hop, routing and destination-options headers, see
/// [`ipv6_upper_layer`]; not a fragment), checking every length on the way.
pub fn locate_l4(frame: &[u8]) -> Result<L4Location, HeaderError> {
    let eth = EthernetFrame::new_checked(frame)?;
    let l3_offset = ETHERNET_HEADER_LEN;
    match eth.ethertype() {
        EtherType::Ipv4 => {
            let ip = Ipv4Packet::new_checked(eth.payload())?;
            if ip.is_fragment() {
                return Err(HeaderError::Fragment);
            }
            let protocol = ip.protocol();
            let l4_len = ip.payload().len();
            check_l4(protocol, ip.payload())?;
            Ok(L4Location {
                l3_offset,
                l4_offset: l3_offset + usize::from(ip.header_len()),
                l4_len,
                protocol,
                pseudo_header: checksum::pseudo_header_v4(
                    ip.src_addr(),
                    ip.dst_addr(),
                    protocol,
                    l4_len as u32,
                ),
            })
        }
        EtherType::Ipv6 => {
            let ip = Ipv6Packet::new_checked(eth.payload())?;
            let upper = ipv6_upper_layer(&ip)?;
            let protocol = upper.protocol;
            let segment = &ip.payload()[upper.offset..];
            let l4_len = segment.len();
            check_l4(protocol, segment)?;
            Ok(L4Location {
                l3_offset,
                l4_offset: l3_offset + IPV6_HEADER_LEN + upper.offset,
                l4_len,
                protocol,
                pseudo_header: checksum::pseudo_header_v6(
                    &ip.src_addr(),
                    &upper.final_dst,
                    protocol,
                    l4_len as u32,
                ),
            })
        }
        other @ (EtherType::Arp | EtherType::Unknown(_)) => Err(HeaderError::NotIp(other)),
    }
}

fn check_l4(protocol: IpProtocol, segment: &[u8]) -> Result<(), HeaderError> {
    match protocol {
        IpProtocol::Tcp => TcpPacket::new_checked(segment).map(|_| ()),
        IpProtocol::Udp => UdpPacket::new_checked(segment).map(|_| ()),
        IpProtocol::Icmp | IpProtocol::Icmpv6 | IpProtocol::Unknown(_) => {
            Err(HeaderError::NotTcpOrUdp(protocol))
        }
    }
}

/// The checksum value the frame's TCP/UDP header should hold (whatever it holds now).
pub fn l4_checksum(frame: &[u8]) -> Result<u16, HeaderError> {
    let loc = locate_l4(frame)?;
    let segment = &frame[loc.l4_range()];
    let at = loc.checksum_offset() - loc.l4_offset;
    // Sum the segment as if the checksum field were zero: subtract nothing, just skip it.
    let sum = checksum::combine(&[
        loc.pseudo_header,
        checksum::data(&segment[..at]),
        checksum::data(&segment[at + 2..]),
    ]);
    let value = !sum;
    Ok(match loc.protocol {
        IpProtocol::Udp if value == 0 => 0xffff,
        IpProtocol::Udp
        | IpProtocol::Tcp
        | IpProtocol::Icmp
        | IpProtocol::Icmpv6
        | IpProtocol::Unknown(_) => value,
    })
}

/// Whether the frame's TCP/UDP checksum is correct (a zero UDP checksum over IPv4 counts as
/// correct; over IPv6 it does not, as RFC 8200 requires one).
pub fn verify_l4_checksum(frame: &[u8]) -> Result<bool, HeaderError> {
    let loc = locate_l4(frame)?;
    let segment = &frame[loc.l4_range()];
    if loc.protocol == IpProtocol::Udp && be16(segment, UDP_CHECKSUM_OFFSET) == 0 {
        return Ok(frame[eth_field::ETHERTYPE] == [0x08, 0x00]);
    }
    Ok(checksum::combine(&[loc.pseudo_header, checksum::data(segment)]) == 0xffff)
}

/// Computes and stores the frame's TCP/UDP checksum.
pub fn fill_l4_checksum(frame: &mut [u8]) -> Result<(), HeaderError> {
    let value = l4_checksum(frame)?;
    let loc = locate_l4(frame)?;
    put16(frame, loc.checksum_offset(), value);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The Internet checksum
// ---------------------------------------------------------------------------------------

/// The Internet checksum (RFC 1071): sums are ones'-complement 16-bit values, *not*
/// complemented; a stored checksum is the complement of the final sum.
pub mod checksum {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::IpProtocol;

    /// The folded ones'-complement sum of `bytes` read as big-endian 16-bit words; an odd
    /// last byte is padded with zero. Sums of pieces combine with [`combine`] as long as
    /// every piece but the last has an even length.
    pub fn data(bytes: &[u8]) -> u16 {
        // RFC 1071 §2(B): the sum is byte-order independent, so add native-endian 32-bit
        // words (which vectorises) and swap once at the end. Blocks keep the u64 from
        // overflowing for any slice length.
        let mut total: u64 = 0;
        for block in bytes.chunks(1 << 20) {
            let mut acc: u64 = 0;
            let mut words = block.chunks_exact(4);
            for w in &mut words {
                acc += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
            }
            let rest = words.remainder();
            let mut tail = [0u8; 4];
            tail[..rest.len()].copy_from_slice(rest);
            acc += u64::from(u32::from_ne_bytes(tail));
            total += u64::from(fold(acc));
        }
        u16::from_be(fold(total))
    }

    /// The ones'-complement sum of several sums.
    pub fn combine(sums: &[u16]) -> u16 {
        fold(sums.iter().map(|&s| u64::from(s)).sum())
    }

    /// The ones'-complement sum of two sums.
    pub fn add(a: u16, b: u16) -> u16 {
        fold(u64::from(a) + u64::from(b))
    }

    /// The IPv4 pseudo-header sum: addresses, protocol and the TCP/UDP length.
    pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: IpProtocol, len: u32) -> u16 {
        let s = src.octets();
        let d = dst.octets();
        let words = [
            u16::from_be_bytes([s[0], s[1]]),
            u16::from_be_bytes([s[2], s[3]]),
            u16::from_be_bytes([d[0], d[1]]),
            u16::from_be_bytes([d[2], d[3]]),
            u16::from(u8::from(protocol)),
            (len >> 16) as u16,
            len as u16,
        ];
        combine(&words)
    }

    /// The IPv6 pseudo-header sum (RFC 8200 §8.1): addresses, upper-layer length and next
    /// header.
    pub fn pseudo_header_v6(
        src: &Ipv6Addr,
        dst: &Ipv6Addr,
        next_header: IpProtocol,
        len: u32,
    ) -> u16 {
        let tail = [
            (len >> 16) as u16,
            len as u16,
            u16::from(u8::from(next_header)),
        ];
        combine(&[data(&src.octets()), data(&dst.octets()), combine(&tail)])
    }

    /// RFC 1624 eq. 3: the stored checksum after a 16-bit word it covers changes from
    /// `old` to `new`.
    pub fn update16(stored: u16, old: u16, new: u16) -> u16 {
        !combine(&[!stored, !old, new])
    }

    /// [`update16`] for a 32-bit field (two words).
    pub fn update32(stored: u16, old: u32, new: u32) -> u16 {
        let stored = update16(stored, (old >> 16) as u16, (new >> 16) as u16);
        update16(stored, old as u16, new as u16)
    }

    /// Folds a wide sum to 16 bits with end-around carry. Never returns 0 for a non-zero
    /// input, which keeps "all ones" (0xffff) as the mark of a verified checksum.
    fn fold(mut sum: u64) -> u16 {
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }
}

fn be16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

fn be32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

fn put16(buf: &mut [u8], at: usize, value: u16) {
    buf[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

fn put32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

fn ipv4_at(buf: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(buf[at], buf[at + 1], buf[at + 2], buf[at + 3])
}

fn ipv6_at(buf: &[u8], at: usize) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&buf[at..at + 16]);
    Ipv6Addr::from(octets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A textbook checksum: 16-bit big-endian words summed one at a time, RFC 1071 §4.1.
    fn reference_sum(bytes: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        let mut i = 0;
        while i + 1 < bytes.len() {
            sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
            i += 2;
        }
        if i < bytes.len() {
            sum += u32::from(bytes[i]) << 8;
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    /// A SYN from 10.32.0.1:45678 to 10.32.0.2:80 laid out the way Linux sends one (MSS,
    /// SACK-permitted, timestamps, window scale). Its checksum fields are placeholders that
    /// the tests recompute and check against an independent sum.
    const SYN_FRAME: &str = concat!(
        "0242c0a80002",
        "0242c0a80001",
        "0800",
        "4500003c1c4640004006",
        "0a6e",
        "0a200001",
        "0a200002",
        "b26e0050",
        "3a7c4e2a",
        "00000000",
        "a002faf0",
        "7bc1",
        "0000",
        "020405b40402080a00a3c6f90000000001030307",
    );

    fn syn_frame() -> Vec<u8> {
        hex::decode(SYN_FRAME).unwrap()
    }

    #[test]
    fn reads_every_field_of_a_syn() {
        let frame = syn_frame();

        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();

        assert_eq!(eth.dst_addr().to_string(), "02:42:c0:a8:00:02");
        assert_eq!(eth.ethertype(), EtherType::Ipv4);
        assert_eq!(ip.header_len(), 20);
        assert_eq!(ip.total_len(), 60);
        assert_eq!(ip.ident(), 0x1c46);
        assert!(ip.dont_frag());
        assert!(!ip.is_fragment());
        assert_eq!(ip.ttl(), 64);
        assert_eq!(ip.protocol(), IpProtocol::Tcp);
        assert_eq!(ip.src_addr(), Ipv4Addr::new(10, 32, 0, 1));
        assert_eq!(tcp.src_port(), 45678);
        assert_eq!(tcp.dst_port(), 80);
        assert_eq!(tcp.seq_number(), 0x3a7c_4e2a);
        assert_eq!(tcp.header_len(), 40);
        assert_eq!(tcp.flags(), TcpFlags::SYN);
        assert_eq!(tcp.window_len(), 64240);
        assert_eq!(tcp.options().len(), 20);
        assert!(tcp.payload().is_empty());
    }

    #[test]
    fn computed_checksums_match_an_independent_sum() {
        let mut frame = syn_frame();
        fill_l4_checksum(&mut frame).unwrap();
        {
            let mut ip = Ipv4Packet::new_unchecked(&mut frame[14..34]);
            ip.fill_checksum();
        }

        let ip_sum = reference_sum(&frame[14..34]);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&frame[26..34]);
        pseudo.extend_from_slice(&[0, 6, 0, 40]);
        pseudo.extend_from_slice(&frame[34..]);

        assert_eq!(ip_sum, 0xffff);
        assert_eq!(reference_sum(&pseudo), 0xffff);
        assert!(verify_l4_checksum(&frame).unwrap());
        frame[60] ^= 1;
        assert!(!verify_l4_checksum(&frame).unwrap());
    }

    #[test]
    fn emitted_ethernet_header_reads_back() {
        let repr = EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            dst_addr: EthernetAddress::BROADCAST,
            ethertype: EtherType::Unknown(0x88b5),
        };
        let mut buf = [0u8; 14];
        let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);

        repr.emit(&mut frame);

        let back = EthernetRepr::parse(&EthernetFrame::new_checked(&buf[..]).unwrap()).unwrap();
        assert_eq!(back, repr);
        assert!(back.dst_addr.is_multicast());
        assert_eq!(buf[12..14], [0x88, 0xb5]);
    }

    #[test]
    fn checks_refuse_inconsistent_lengths() {
        let frame = syn_frame();
        let ip = &frame[14..];
        let mut bad_ihl = ip.to_vec();
        bad_ihl[0] = 0x44;
        let mut long_total = ip.to_vec();
        long_total[3] = 61;
        let mut v6_in_v4 = ip.to_vec();
        v6_in_v4[0] = 0x65;
        let mut bad_doff = ip[20..].to_vec();
        bad_doff[12] = 0xf0;
        bad_doff.truncate(40);

        assert_eq!(
            Ipv4Packet::new_checked(&bad_ihl[..]).unwrap_err(),
            HeaderError::BadLength
        );
        assert_eq!(
            Ipv4Packet::new_checked(&long_total[..]).unwrap_err(),
            HeaderError::BadLength
        );
        assert_eq!(
            Ipv4Packet::new_checked(&v6_in_v4[..]).unwrap_err(),
            HeaderError::BadVersion(6)
        );
        assert_eq!(
            TcpPacket::new_checked(&bad_doff[..]).unwrap_err(),
            HeaderError::BadLength
        );
        assert_eq!(
            EthernetFrame::new_checked(&frame[..13]).unwrap_err(),
            HeaderError::Truncated
        );
    }

    #[test]
    fn udp_over_ipv6_checksum_and_zero_rule() {
        let mut frame = vec![0u8; 14 + 40 + 8 + 5];
        frame[12..14].copy_from_slice(&[0x86, 0xdd]);
        {
            let mut ip = Ipv6Packet::new_unchecked(&mut frame[14..]);
            ip.set_version_class_flow(0, 0x12345);
            ip.set_payload_len(13);
            ip.set_next_header(IpProtocol::Udp);
            ip.set_hop_limit(64);
            ip.set_src_addr("fd00::1".parse().unwrap());
            ip.set_dst_addr("fd00::2".parse().unwrap());
            let mut udp = UdpPacket::new_unchecked(ip.payload_mut());
            udp.set_src_port(5353);
            udp.set_dst_port(6783);
            udp.set_len(13);
            udp.payload_mut().copy_from_slice(b"hello");
        }
        let ip = Ipv6Packet::new_checked(&frame[14..]).unwrap();
        assert_eq!(ip.flow_label(), 0x12345);

        fill_l4_checksum(&mut frame).unwrap();

        assert!(verify_l4_checksum(&frame).unwrap());
        frame[54 + 6..54 + 8].copy_from_slice(&[0, 0]);
        assert!(!verify_l4_checksum(&frame).unwrap());
    }

    /// An IPv6 frame from fd00::1 to `dst` with `extensions` (the IPv6 next header is
    /// `first`) in front of a UDP datagram carrying "hello".
    fn ipv6_udp_frame(first: u8, extensions: &[u8], dst: Ipv6Addr) -> Vec<u8> {
        let mut frame = vec![0u8; 14 + 40];
        frame[12..14].copy_from_slice(&[0x86, 0xdd]);
        frame.extend_from_slice(extensions);
        frame.extend_from_slice(&[0x14, 0xe9, 0x1a, 0x7f, 0, 13, 0, 0]);
        frame.extend_from_slice(b"hello");
        let mut ip = Ipv6Packet::new_unchecked(&mut frame[14..]);
        ip.set_version_class_flow(0, 0);
        ip.set_payload_len((extensions.len() + 13) as u16);
        ip.set_next_header(IpProtocol::from(first));
        ip.set_hop_limit(64);
        ip.set_src_addr("fd00::1".parse().unwrap());
        ip.set_dst_addr(dst);
        frame
    }

    /// The UDP checksum of the datagram at `l4` over the IPv6 pseudo-header of `dst`.
    fn udp_sum_to(frame: &[u8], l4: usize, dst: Ipv6Addr) -> u16 {
        let segment = &frame[l4..];
        let pseudo = checksum::pseudo_header_v6(
            &"fd00::1".parse().unwrap(),
            &dst,
            IpProtocol::Udp,
            segment.len() as u32,
        );
        checksum::combine(&[pseudo, checksum::data(segment)])
    }

    #[test]
    fn ipv6_extension_headers_are_walked_to_the_transport_header() {
        let next_hop: Ipv6Addr = "fd00::99".parse().unwrap();
        let last: Ipv6Addr = "fd00::2".parse().unwrap();
        // Hop-by-hop (PadN), then a segment routing header (type 4) with two segments, one
        // left: segment list[0] is the final destination.
        let mut ext = vec![43, 0, 1, 4, 0, 0, 0, 0];
        ext.extend_from_slice(&[17, 4, 4, 1, 1, 0, 0, 0]);
        ext.extend_from_slice(&last.octets());
        ext.extend_from_slice(&next_hop.octets());
        let mut frame = ipv6_udp_frame(0, &ext, next_hop);

        let loc = locate_l4(&frame).unwrap();
        fill_l4_checksum(&mut frame).unwrap();

        assert_eq!(loc.protocol, IpProtocol::Udp);
        assert_eq!(loc.l4_offset, 14 + 40 + ext.len());
        assert_eq!(loc.l4_len, 13);
        assert_eq!(udp_sum_to(&frame, loc.l4_offset, last), 0xffff);
        assert!(verify_l4_checksum(&frame).unwrap());
        let ip = Ipv6Packet::new_checked(&frame[14..]).unwrap();
        assert_eq!(
            ipv6_upper_layer(&ip).unwrap(),
            Ipv6UpperLayer {
                protocol: IpProtocol::Udp,
                offset: ext.len(),
                final_dst: last,
            }
        );
    }

    #[test]
    fn a_routing_header_without_segments_left_keeps_the_header_destination() {
        let dst: Ipv6Addr = "fd00::2".parse().unwrap();
        let mut ext = vec![60, 2, 2, 0, 0, 0, 0, 0];
        ext.extend_from_slice(&"fd00::77".parse::<Ipv6Addr>().unwrap().octets());
        ext.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
        let mut frame = ipv6_udp_frame(43, &ext, dst);

        fill_l4_checksum(&mut frame).unwrap();

        assert_eq!(udp_sum_to(&frame, 14 + 40 + ext.len(), dst), 0xffff);
    }

    #[test]
    fn ipv6_headers_the_walk_cannot_pass_are_named() {
        let dst: Ipv6Addr = "fd00::2".parse().unwrap();
        let fragment = ipv6_udp_frame(44, &[17, 0, 0, 0, 0, 0, 0, 1], dst);
        let mut rpl = vec![17, 2, 3, 1, 0, 0, 0, 0];
        rpl.extend_from_slice(&[0; 16]);
        let rpl = ipv6_udp_frame(43, &rpl, dst);
        let esp = ipv6_udp_frame(50, &[0; 8], dst);
        let mut cut = ipv6_udp_frame(0, &[17, 1, 1, 4, 0, 0, 0, 0], dst);
        cut.truncate(14 + 40 + 8 + 3);
        Ipv6Packet::new_unchecked(&mut cut[14..]).set_payload_len(11);
        let mut short = ipv6_udp_frame(0, &[], dst);
        short.truncate(14 + 40 + 4);
        Ipv6Packet::new_unchecked(&mut short[14..]).set_payload_len(4);

        assert_eq!(locate_l4(&fragment), Err(HeaderError::Fragment));
        assert_eq!(locate_l4(&rpl), Err(HeaderError::UnsupportedRouting(3)));
        assert_eq!(
            locate_l4(&esp),
            Err(HeaderError::NotTcpOrUdp(IpProtocol::Unknown(50)))
        );
        assert_eq!(locate_l4(&cut), Err(HeaderError::BadLength));
        assert_eq!(locate_l4(&short), Err(HeaderError::Truncated));
    }

    #[test]
    fn non_tcp_udp_frames_are_named() {
        let mut frame = syn_frame();
        frame[23] = 1; // ICMP
        let mut arp = syn_frame();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let mut frag = syn_frame();
        frag[20] = 0x20; // MF

        assert_eq!(
            locate_l4(&frame).unwrap_err(),
            HeaderError::NotTcpOrUdp(IpProtocol::Icmp)
        );
        assert_eq!(
            locate_l4(&arp).unwrap_err(),
            HeaderError::NotIp(EtherType::Arp)
        );
        assert_eq!(locate_l4(&frag).unwrap_err(), HeaderError::Fragment);
    }

    proptest! {
        #[test]
        fn data_sum_matches_the_textbook_sum(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
            prop_assert_eq!(checksum::data(&bytes), reference_sum(&bytes));
        }

        #[test]
        fn even_pieces_combine(bytes in proptest::collection::vec(any::<u8>(), 0..600), cut in 0usize..300) {
            let cut = (cut * 2).min(bytes.len() & !1);
            let whole = checksum::data(&bytes);
            let parts = checksum::combine(&[checksum::data(&bytes[..cut]), checksum::data(&bytes[cut..])]);
            // 0x0000 and 0xffff are the same ones'-complement value.
            prop_assert_eq!(whole % 0xffff, parts % 0xffff);
        }

        #[test]
        fn incremental_update_equals_recompute(
            mut bytes in proptest::collection::vec(any::<u8>(), 8..200),
            at in 0usize..100,
            new in any::<u32>(),
        ) {
            let at = ((at * 2) % (bytes.len() - 4)) & !1;
            let stored = !checksum::data(&bytes);
            let old = u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
            bytes[at..at + 4].copy_from_slice(&new.to_be_bytes());

            let updated = checksum::update32(stored, old, new);

            let recomputed = !checksum::data(&bytes);
            prop_assert_eq!(updated % 0xffff, recomputed % 0xffff);
        }

        #[test]
        fn checked_views_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(eth) = EthernetFrame::new_checked(&bytes[..]) {
                let _ = (eth.dst_addr(), eth.src_addr(), eth.ethertype(), eth.payload());
                if let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) {
                    let _ = (ip.options(), ip.payload(), ip.verify_checksum(), ip.frag_offset());
                    if let Ok(tcp) = TcpPacket::new_checked(ip.payload()) {
                        let _ = (tcp.options(), tcp.payload(), tcp.flags(), tcp.verify_checksum(0));
                    }
                    if let Ok(udp) = UdpPacket::new_checked(ip.payload()) {
                        let _ = (udp.payload(), udp.verify_checksum(0));
                    }
                }
                if let Ok(ip) = Ipv6Packet::new_checked(eth.payload()) {
                    let _ = (ip.payload(), ip.flow_label(), ip.traffic_class());
                }
            }
            let _ = locate_l4(&bytes);
            let _ = verify_l4_checksum(&bytes);
            let mut copy = bytes.clone();
            let _ = fill_l4_checksum(&mut copy);
        }

        /// Arbitrary bytes behind an IPv6 header that names an extension header: the walk
        /// finds a transport header inside the payload or names an error, never panics.
        #[test]
        fn ipv6_extension_walk_never_panics(
            first in prop::sample::select(vec![0u8, 43, 44, 60]),
            payload in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let frame = ipv6_udp_frame(first, &payload, "fd00::2".parse().unwrap());
            let mut copy = frame.clone();
            if let Ok(loc) = locate_l4(&frame) {
                prop_assert!(loc.l4_offset + loc.l4_len <= frame.len());
            }
            let _ = fill_l4_checksum(&mut copy);
        }
    }
}
