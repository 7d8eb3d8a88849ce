//! GSO split and GRO coalesce of TCP super-frames.
//!
//! The TAP hands the router "super-frames" of up to 64 KiB with a [`VirtioNetHdr`] that asks
//! for segmentation; peers must receive ordinary MTU-sized frames with complete checksums.
//! [`gso_split`] does in user space what the kernel's `tcp_gso_segment` does: every segment
//! gets the full Ethernet/IP/TCP header with the IPv4 total length and an identification
//! incremented per segment, a fresh IPv4 header checksum, the sequence number advanced by
//! the payload offset, FIN/PSH only on the last segment, CWR only on the first, and a
//! complete TCP checksum. UDP_L4 (USO) gets a UDP length and checksum per segment. Over
//! IPv6, hop-by-hop, routing and destination-options headers are copied to every segment
//! and counted in its payload length, and the checksum covers a routing header's final
//! destination (RFC 8200 §8.1); a fragment header is refused.
//!
//! On the way back, [`GroTable`] coalesces consecutive in-order segments of a TCP flow into
//! one super-frame, so the TAP write path sees one skb per burst as it would from a NIC's GRO.
//!
//! # Checksum mode of GRO output
//!
//! Coalesced super-frames carry `VIRTIO_NET_HDR_F_NEEDS_CSUM` with `csum_start` at the TCP
//! header, `csum_offset` 16, and the TCP checksum field holding the (uncomplemented, folded)
//! pseudo-header sum for the super-frame's TCP length, exactly what the kernel's own
//! `tcp_v4_send_check`/`tcp_v6_send_check` leave in a TSO skb. Reasons:
//!
//! - The tun driver's write path (`tun_get_user` → `virtio_net_hdr_to_skb`) reads only
//!   NEEDS_CSUM; DATA_VALID is a flag the kernel sets on reads and ignores on writes. A GSO
//!   write without NEEDS_CSUM becomes a CHECKSUM_NONE skb whose transport header must be
//!   found by flow dissection, and for TCP GSO with a partial checksum the kernel insists on
//!   `csum_offset == offsetof(tcphdr, check)`.
//! - CHECKSUM_PARTIAL is what `tcp_gso_segment` expects: it adjusts the pre-filled
//!   pseudo-header sum per segment when the skb has to be split again (a bridge port without
//!   TSO), and a local receiver in a pod's namespace treats CHECKSUM_PARTIAL as verified, so
//!   nobody re-sums 64 KiB in software.
//! - The router verifies every segment's IPv4 and TCP checksum before coalescing (the kernel's
//!   GRO does the same), so marking the result "partial" vouches only for bytes that were
//!   checked. Segments that fail are passed through untouched for the kernel to drop.
//!
//! # Partial checksums between weave-routers
//!
//! Two weave-routers that both offer `SleevePartialCsum` ([`Checksums::Partial`]) send
//! each other every TCP segment (whatever [`locate_l4`] finds TCP in) with the pseudo-header
//! sum in its checksum field, as the sending pod's kernel left it, instead of a complete
//! checksum: neither end sums the payload, as on a kernel path between two pods, where a
//! CHECKSUM_PARTIAL skb is never summed either. The datagram's outer UDP checksum, which the
//! receiving kernel or NIC checks, covers the frame on the way. The receiver trusts such
//! segments ([`GroTable::push_partial`]) and hands them to its TAP with NEEDS_CSUM; a frame
//! relayed to a peer that wants complete checksums is finished first ([`make_full`]), and
//! one that arrived complete is made partial for a peer that wants that ([`make_partial`]).

use std::mem;
use std::ops::Range;

use thiserror::Error;

use crate::wire::eth::{
    checksum, locate_l4, EtherType, EthernetFrame, HeaderError, IpProtocol, Ipv4Packet, Ipv6Packet,
    L4Location, TcpFlags, TcpPacket, UdpPacket, ETHERNET_HEADER_LEN, IPV6_HEADER_LEN,
    TCP_CHECKSUM_OFFSET, UDP_CHECKSUM_OFFSET, UDP_HEADER_LEN,
};
use crate::wire::vnet::{GsoType, VirtioNetHdr, VIRTIO_NET_HDR_F_NEEDS_CSUM, VNET_HDR_LEN};

/// How TCP checksums leave [`gso_split`] and travel to a peer (see the module head).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksums {
    /// Complete, as Weave Net peers need them.
    Full,
    /// The pseudo-header sum only (CHECKSUM_PARTIAL), between weave-routers.
    Partial,
}

/// Where a TCP segment's header starts and its pseudo-header sum, if `frame` carries one
/// that travels with a partial checksum.
fn partial_tcp(frame: &[u8]) -> Option<L4Location> {
    let loc = locate_l4(frame).ok()?;
    (loc.protocol == IpProtocol::Tcp).then_some(loc)
}

/// Puts the pseudo-header sum in a TCP segment's checksum field; returns whether `frame`
/// is a TCP segment (anything else is left alone).
pub fn make_partial(frame: &mut [u8]) -> bool {
    let Some(loc) = partial_tcp(frame) else {
        return false;
    };
    let at = loc.l4_offset + TCP_CHECKSUM_OFFSET;
    frame[at..at + 2].copy_from_slice(&loc.pseudo_header.to_be_bytes());
    true
}

/// Completes a TCP segment's partial checksum (the field holds the pseudo-header sum);
/// returns whether `frame` is a TCP segment (anything else is left alone).
pub fn make_full(frame: &mut [u8]) -> bool {
    let Some(loc) = partial_tcp(frame) else {
        return false;
    };
    let segment = &mut frame[loc.l4_offset..loc.l4_offset + loc.l4_len];
    let value = !checksum::data(segment);
    segment[TCP_CHECKSUM_OFFSET..TCP_CHECKSUM_OFFSET + 2].copy_from_slice(&value.to_be_bytes());
    true
}

/// The virtio_net_hdr for writing one TCP segment with a partial checksum to the TAP.
fn partial_header(loc: &L4Location) -> VirtioNetHdr {
    VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: GsoType::None,
        gso_ecn: false,
        hdr_len: 0,
        gso_size: 0,
        csum_start: loc.l4_offset as u16,
        csum_offset: TCP_CHECKSUM_OFFSET as u16,
        num_buffers: 0,
    }
}

/// Why a frame read from the TAP could not be split. The data plane counts each as a drop
/// reason; none of them is a reason to stop.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum GsoError {
    /// `hdr_len` points past the end of the frame.
    #[error("hdr_len {hdr_len} is beyond the {frame_len}-byte frame")]
    HdrLenBeyondFrame {
        /// The header's `hdr_len`.
        hdr_len: u16,
        /// Bytes of the frame.
        frame_len: usize,
    },
    /// A GSO frame with `gso_size` 0.
    #[error("gso_size is zero")]
    ZeroGsoSize,
    /// The frame's headers are truncated or inconsistent, or the packet is a fragment (IPv4,
    /// or an IPv6 fragment header), or has an IPv6 routing header of a type whose final
    /// destination is unknown.
    #[error("bad headers: {0}")]
    BadHeaders(HeaderError),
    /// The frame does not carry what `gso_type` says (TCPV4 on a non-TCP or non-IPv4 frame,
    /// ESP or AH in front of the transport header, ...).
    #[error("frame does not match gso_type {gso_type:?}")]
    GsoTypeMismatch {
        /// The header's `gso_type`.
        gso_type: GsoType,
    },
    /// A segmentation the router does not perform (UFO, unknown values).
    #[error("unsupported gso_type {0:?}")]
    UnsupportedGsoType(GsoType),
    /// The ECN bit on a `gso_type` that is not TCP.
    #[error("ECN bit set on gso_type {0:?}")]
    EcnWithoutTcp(GsoType),
    /// `csum_start`/`csum_offset` fall outside the frame or, on a GSO frame, not on the
    /// TCP/UDP checksum field.
    #[error("partial checksum at start {start} offset {offset} does not fit the frame")]
    BadChecksumOffsets {
        /// The header's `csum_start`.
        start: u16,
        /// The header's `csum_offset`.
        offset: u16,
    },
}

/// Split frames, written back to back into one reusable buffer, each preceded by
/// `headroom` zeroed bytes the caller may fill (a sleeve frame header, say). Equal-size
/// records make the buffer directly usable as one UDP_SEGMENT send.
#[derive(Debug, Clone, Default)]
pub struct Segments {
    buf: Vec<u8>,
    frames: Vec<Range<usize>>,
    headroom: usize,
}

impl Segments {
    /// An empty arena with no headroom.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty arena that leaves `headroom` bytes before each frame.
    pub fn with_headroom(headroom: usize) -> Self {
        Segments {
            headroom,
            ..Self::default()
        }
    }

    /// Bytes left before each frame.
    pub fn headroom(&self) -> usize {
        self.headroom
    }

    /// Number of frames held.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether no frame is held.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Forgets every frame, keeping the capacity.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.frames.clear();
    }

    /// Frame `index` (without headroom).
    pub fn frame(&self, index: usize) -> Option<&[u8]> {
        let range = self.frames.get(index)?.clone();
        Some(&self.buf[range])
    }

    /// Every frame, in order.
    pub fn frames(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.frames.iter().map(|r| &self.buf[r.clone()])
    }

    /// Record `index`: its headroom followed by its frame.
    pub fn record(&self, index: usize) -> Option<&[u8]> {
        let range = self.frames.get(index)?;
        Some(&self.buf[range.start - self.headroom..range.end])
    }

    /// Record `index`, writable (to fill the headroom).
    pub fn record_mut(&mut self, index: usize) -> Option<&mut [u8]> {
        let range = self.frames.get(index)?.clone();
        Some(&mut self.buf[range.start - self.headroom..range.end])
    }

    /// All records back to back.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    fn begin_record(&mut self) -> usize {
        self.buf.resize(self.buf.len() + self.headroom, 0);
        self.buf.len()
    }

    fn finish_record(&mut self, frame_start: usize) -> &mut [u8] {
        self.frames.push(frame_start..self.buf.len());
        &mut self.buf[frame_start..]
    }

    fn mark(&self) -> (usize, usize) {
        (self.buf.len(), self.frames.len())
    }

    fn rewind(&mut self, mark: (usize, usize)) {
        self.buf.truncate(mark.0);
        self.frames.truncate(mark.1);
    }
}

/// Turns one frame read from the TAP into ordinary frames with complete checksums,
/// appended to `out`; returns how many. TCPV4/TCPV6/UDP_L4 frames are split into segments
/// of at most `gso_size` payload bytes behind a copy of the real headers (parsed, since
/// the kernel's `hdr_len` is only a hint: each segment is at most `hdr_len + gso_size`
/// bytes whenever `hdr_len` covers the headers, as the kernel's does). A NONE frame with
/// NEEDS_CSUM has its partial checksum finished; any other NONE frame is copied unchanged.
/// On error nothing is appended. With [`Checksums::Partial`], TCP segments get the
/// pseudo-header sum instead of a complete checksum (UDP still gets a complete one).
pub fn gso_split(
    hdr: &VirtioNetHdr,
    frame: &[u8],
    out: &mut Segments,
    checksums: Checksums,
) -> Result<usize, GsoError> {
    if usize::from(hdr.hdr_len) > frame.len() {
        return Err(GsoError::HdrLenBeyondFrame {
            hdr_len: hdr.hdr_len,
            frame_len: frame.len(),
        });
    }
    let mark = out.mark();
    let result = match hdr.gso_type {
        GsoType::None => split_none(hdr, frame, out, checksums),
        GsoType::TcpV4 | GsoType::TcpV6 | GsoType::UdpL4 => {
            split_segments(hdr, frame, out, checksums)
        }
        GsoType::Udp | GsoType::Unknown(_) => Err(GsoError::UnsupportedGsoType(hdr.gso_type)),
    };
    if result.is_err() {
        out.rewind(mark);
    }
    result
}

fn split_none(
    hdr: &VirtioNetHdr,
    frame: &[u8],
    out: &mut Segments,
    checksums: Checksums,
) -> Result<usize, GsoError> {
    if hdr.gso_ecn {
        return Err(GsoError::EcnWithoutTcp(hdr.gso_type));
    }
    let start = out.begin_record();
    out.buf.extend_from_slice(frame);
    let copy = out.finish_record(start);
    if checksums == Checksums::Partial {
        if let Some(loc) = partial_tcp(copy) {
            let in_place = hdr.needs_csum()
                && usize::from(hdr.csum_start) == loc.l4_offset
                && usize::from(hdr.csum_offset) == TCP_CHECKSUM_OFFSET;
            if !in_place {
                make_partial(copy);
            }
            return Ok(1);
        }
    }
    if hdr.needs_csum() {
        let from = usize::from(hdr.csum_start);
        let at = from + usize::from(hdr.csum_offset);
        if at + 2 > copy.len() {
            return Err(GsoError::BadChecksumOffsets {
                start: hdr.csum_start,
                offset: hdr.csum_offset,
            });
        }
        // The field holds the pseudo-header sum; summing through it finishes the job, as
        // the kernel's skb_checksum_help does (and like it, a zero result is stored as
        // 0xffff, which UDP needs and TCP accepts).
        let value = !checksum::data(&copy[from..]);
        let value = if value == 0 { 0xffff } else { value };
        copy[at..at + 2].copy_from_slice(&value.to_be_bytes());
    }
    Ok(1)
}

fn split_segments(
    hdr: &VirtioNetHdr,
    frame: &[u8],
    out: &mut Segments,
    checksums: Checksums,
) -> Result<usize, GsoError> {
    let gso_type = hdr.gso_type;
    let loc = locate_l4(frame).map_err(|e| match e {
        HeaderError::NotIp(_) | HeaderError::NotTcpOrUdp(_) => {
            GsoError::GsoTypeMismatch { gso_type }
        }
        HeaderError::Truncated
        | HeaderError::BadLength
        | HeaderError::BadVersion(_)
        | HeaderError::Fragment
        | HeaderError::UnsupportedRouting(_) => GsoError::BadHeaders(e),
    })?;
    let ethertype = EthernetFrame::new_unchecked(frame).ethertype();
    let is_v4 = ethertype == EtherType::Ipv4;
    let is_tcp = match (gso_type, is_v4, loc.protocol) {
        (GsoType::TcpV4, true, IpProtocol::Tcp) | (GsoType::TcpV6, false, IpProtocol::Tcp) => true,
        (GsoType::UdpL4, _, IpProtocol::Udp) => false,
        _ => return Err(GsoError::GsoTypeMismatch { gso_type }),
    };
    if hdr.gso_ecn && !is_tcp {
        return Err(GsoError::EcnWithoutTcp(gso_type));
    }
    if hdr.gso_size == 0 {
        return Err(GsoError::ZeroGsoSize);
    }
    let csum_field = if is_tcp {
        TCP_CHECKSUM_OFFSET
    } else {
        UDP_CHECKSUM_OFFSET
    };
    if hdr.needs_csum()
        && (usize::from(hdr.csum_start) != loc.l4_offset
            || usize::from(hdr.csum_offset) != csum_field)
    {
        return Err(GsoError::BadChecksumOffsets {
            start: hdr.csum_start,
            offset: hdr.csum_offset,
        });
    }

    let segment = &frame[loc.l4_range()];
    let l4_hdr_len = if is_tcp {
        usize::from(TcpPacket::new_unchecked(segment).header_len())
    } else {
        UDP_HEADER_LEN
    };
    let headers = &frame[..loc.l4_offset + l4_hdr_len];
    let payload = &segment[l4_hdr_len..];
    let ip_hdr_len = loc.l4_offset - loc.l3_offset;
    let mss = usize::from(hdr.gso_size);
    // The pseudo-header without its length word; each segment adds its own length.
    let pseudo_base = checksum::add(loc.pseudo_header, !(loc.l4_len as u16));
    let (base_seq, base_flags) = if is_tcp {
        let tcp = TcpPacket::new_unchecked(segment);
        (tcp.seq_number(), tcp.flags())
    } else {
        (0, TcpFlags::default())
    };
    let base_ident = if is_v4 {
        Ipv4Packet::new_unchecked(&frame[loc.l3_offset..]).ident()
    } else {
        0
    };

    let count = payload.len().div_ceil(mss).max(1);
    for index in 0..count {
        let chunk =
            &payload[(index * mss).min(payload.len())..((index + 1) * mss).min(payload.len())];
        let l4_len = l4_hdr_len + chunk.len();
        let start = out.begin_record();
        out.buf.extend_from_slice(headers);
        out.buf.extend_from_slice(chunk);
        let seg = out.finish_record(start);

        if is_v4 {
            let mut ip = Ipv4Packet::new_unchecked(&mut seg[loc.l3_offset..]);
            ip.set_total_len((ip_hdr_len + l4_len) as u16);
            ip.set_ident(base_ident.wrapping_add(index as u16));
            ip.fill_checksum();
        } else {
            // The payload length counts the extension headers between the fixed header and TCP.
            let mut ip = Ipv6Packet::new_unchecked(&mut seg[loc.l3_offset..]);
            ip.set_payload_len((ip_hdr_len - IPV6_HEADER_LEN + l4_len) as u16);
        }
        let pseudo = checksum::add(pseudo_base, l4_len as u16);
        let partial = is_tcp && checksums == Checksums::Partial;
        let l4 = &mut seg[loc.l4_offset..];
        if is_tcp {
            let mut tcp = TcpPacket::new_unchecked(&mut *l4);
            tcp.set_seq_number(base_seq.wrapping_add((index * mss) as u32));
            let mut flags = base_flags;
            if index + 1 != count {
                flags = flags.without(TcpFlags::FIN.with(TcpFlags::PSH));
            }
            if index != 0 {
                flags = flags.without(TcpFlags::CWR);
            }
            tcp.set_flags(flags);
            tcp.set_checksum(if partial { pseudo } else { 0 });
        } else {
            let mut udp = UdpPacket::new_unchecked(&mut *l4);
            udp.set_len(l4_len as u16);
            udp.set_checksum(0);
        }
        if partial {
            continue;
        }
        // Sum the header copy and the payload from the source, where it is still in cache.
        let sum = checksum::combine(&[
            pseudo,
            checksum::data(&l4[..l4_hdr_len]),
            checksum::data(chunk),
        ]);
        let value = if !is_tcp && !sum == 0 { 0xffff } else { !sum };
        l4[csum_field..csum_field + 2].copy_from_slice(&value.to_be_bytes());
    }
    Ok(count)
}

// ---------------------------------------------------------------------------------------
// GRO
// ---------------------------------------------------------------------------------------

/// Largest IP length field (IPv4 total length, IPv6 payload length) a coalesced
/// super-frame may reach: the 64 KiB a TAP skb without BIG TCP can describe.
pub const GRO_MAX_IP_LEN: usize = 65_535;

/// Flows a [`GroTable`] holds open at once unless told otherwise.
pub const GRO_DEFAULT_FLOWS: usize = 64;

/// What [`GroTable::push`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroOutcome {
    /// The frame opened a new pending super-frame.
    Held,
    /// The frame was appended to a pending super-frame of its flow.
    Merged,
    /// The frame went to the output unchanged (after its flow's pending super-frame).
    Passed,
}

/// Output of a [`GroTable`]: each item is a [`VNET_HDR_LEN`]-byte `virtio_net_hdr`
/// followed by a frame, ready for one TAP write. Buffers are recycled by [`clear`]
/// (call it once the writes have completed), so a steady state allocates nothing.
///
/// [`clear`]: GroBatch::clear
#[derive(Debug, Default)]
pub struct GroBatch {
    ready: Vec<Vec<u8>>,
    spare: Vec<Vec<u8>>,
}

impl GroBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of items ready.
    pub fn len(&self) -> usize {
        self.ready.len()
    }

    /// Whether no item is ready.
    pub fn is_empty(&self) -> bool {
        self.ready.is_empty()
    }

    /// Item `index`: header then frame.
    pub fn get(&self, index: usize) -> Option<&[u8]> {
        self.ready.get(index).map(Vec::as_slice)
    }

    /// Every item, in output order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.ready.iter().map(Vec::as_slice)
    }

    /// Forgets every item, keeping the buffers for reuse.
    pub fn clear(&mut self) {
        self.spare.append(&mut self.ready);
    }

    fn take_spare(&mut self) -> Vec<u8> {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf
    }

    /// Takes the ready writes out, for a backend that must own its buffers until the
    /// kernel is done with them; hand them back with [`GroBatch::recycle`].
    pub fn take(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.ready)
    }

    /// Returns a buffer taken with [`GroBatch::take`] for reuse.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        buf.clear();
        self.spare.push(buf);
    }

    /// Appends a frame unchanged, behind a zero header (no coalescing).
    pub fn push_plain(&mut self, frame: &[u8]) {
        let mut buf = self.take_spare();
        buf.extend_from_slice(&[0u8; VNET_HDR_LEN]);
        buf.extend_from_slice(frame);
        self.ready.push(buf);
    }

    /// Appends a frame from a peer that sends partial checksums, unchanged: a TCP segment
    /// behind a NEEDS_CSUM header, anything else behind a zero header.
    pub fn push_partial(&mut self, frame: &[u8]) {
        let mut buf = self.take_spare();
        match partial_tcp(frame) {
            Some(loc) => buf.extend_from_slice(&partial_header(&loc).to_bytes()),
            None => buf.extend_from_slice(&[0u8; VNET_HDR_LEN]),
        }
        buf.extend_from_slice(frame);
        self.ready.push(buf);
    }

    fn push_as(&mut self, frame: &[u8], checksums: Checksums) {
        match checksums {
            Checksums::Full => self.push_plain(frame),
            Checksums::Partial => self.push_partial(frame),
        }
    }
}

/// Coalesces consecutive in-order TCP segments of a flow into super-frames.
///
/// A segment joins its flow's pending super-frame when it has: the same Ethernet header,
/// the same IP header except the length, IPv4 identification and header checksum (so the
/// same addresses, TOS/traffic class, TTL/hop limit, flow label, IPv4 options and DF set),
/// the same TCP header except sequence number, checksum and PSH (so the same ports, ack,
/// window, options and flags, no CWR), the next sequence number, a payload no larger than
/// the first's, valid IPv4 and TCP checksums, and the result stays within
/// [`GRO_MAX_IP_LEN`]. A shorter or PSH segment ends the super-frame. Segments with
/// SYN/FIN/RST/URG or no payload, non-TCP traffic, fragments and malformed frames pass
/// through unchanged with a zero header; a TCP frame that passes through first flushes its
/// flow's pending super-frame, so each flow's frames leave in the order they came.
/// Segments are identified by the IPv4 identification of their first segment; the
/// kernel renumbers the rest when it segments again (DF packets' IDs carry no meaning).
#[derive(Debug)]
pub struct GroTable {
    slots: Vec<Slot>,
    max_flows: usize,
    clock: u64,
    order: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct FlowKey {
    v6: bool,
    src: [u8; 16],
    dst: [u8; 16],
    src_port: u16,
    dst_port: u16,
}

#[derive(Debug, Default)]
struct Slot {
    active: bool,
    /// `VNET_HDR_LEN` bytes for the header, then the frame being built.
    buf: Vec<u8>,
    key: FlowKey,
    l4_offset: usize,
    headers_end: usize,
    mss: usize,
    segments: u32,
    next_seq: u32,
    cwr: bool,
    born: u64,
    /// The segments came with partial checksums (trusted, not verified).
    checksums: Option<Checksums>,
}

/// A TCP segment that may be coalesced, with the offsets the table needs.
struct Candidate<'a> {
    frame: &'a [u8],
    key: FlowKey,
    l4_offset: usize,
    headers_end: usize,
    payload_len: usize,
    seq: u32,
    flags: TcpFlags,
    eligible: bool,
    checksums: Checksums,
}

enum Class<'a> {
    /// Not part of any TCP flow (or malformed, which the kernel drops): pass through.
    Unrelated,
    /// Possibly TCP, but without a flow key (a fragment, IPv6 extension headers): flush
    /// everything before passing it, to keep every flow's order.
    Opaque,
    /// A TCP segment.
    Tcp(Candidate<'a>),
}

impl Default for GroTable {
    fn default() -> Self {
        Self::new(GRO_DEFAULT_FLOWS)
    }
}

impl GroTable {
    /// A table holding at most `max_flows` pending super-frames (at least one); opening
    /// one more flushes the oldest.
    pub fn new(max_flows: usize) -> Self {
        GroTable {
            slots: Vec::new(),
            max_flows: max_flows.max(1),
            clock: 0,
            order: Vec::new(),
        }
    }

    /// Number of pending super-frames.
    pub fn pending(&self) -> usize {
        self.slots.iter().filter(|s| s.active).count()
    }

    /// Takes one Ethernet frame (with a complete checksum, as Weave Net peers send them).
    /// Whatever becomes ready goes to `out`; the rest waits for a later frame or [`flush`].
    ///
    /// [`flush`]: GroTable::flush
    pub fn push(&mut self, frame: &[u8], out: &mut GroBatch) -> GroOutcome {
        self.push_with(frame, out, Checksums::Full)
    }

    /// [`GroTable::push`] for a frame from a peer that sends TCP segments with partial
    /// checksums: they are trusted, not verified, and reach the TAP with NEEDS_CSUM.
    pub fn push_partial(&mut self, frame: &[u8], out: &mut GroBatch) -> GroOutcome {
        self.push_with(frame, out, Checksums::Partial)
    }

    fn push_with(&mut self, frame: &[u8], out: &mut GroBatch, checksums: Checksums) -> GroOutcome {
        let candidate = match classify(frame, checksums) {
            Class::Unrelated => {
                out.push_as(frame, checksums);
                return GroOutcome::Passed;
            }
            Class::Opaque => {
                self.flush(out);
                out.push_as(frame, checksums);
                return GroOutcome::Passed;
            }
            Class::Tcp(candidate) => candidate,
        };
        let found = self
            .slots
            .iter()
            .position(|s| s.active && s.key == candidate.key);
        if !candidate.eligible {
            if let Some(index) = found {
                self.flush_slot(index, out);
            }
            out.push_as(frame, checksums);
            return GroOutcome::Passed;
        }
        if let Some(index) = found {
            if self.slots[index].can_merge(&candidate) {
                let ends = self.slots[index].merge(&candidate);
                if ends {
                    self.flush_slot(index, out);
                }
                return GroOutcome::Merged;
            }
            self.flush_slot(index, out);
        }
        if candidate.flags.contains(TcpFlags::PSH) {
            // A pushed segment ends its super-frame, so on its own it is one already.
            out.push_as(frame, checksums);
            return GroOutcome::Passed;
        }
        let index = self.free_slot(out);
        self.clock += 1;
        self.slots[index].open(&candidate, self.clock);
        GroOutcome::Held
    }

    /// Emits every pending super-frame, oldest first. Call it at the end of each receive
    /// batch.
    pub fn flush(&mut self, out: &mut GroBatch) {
        let mut order = mem::take(&mut self.order);
        order.clear();
        order.extend((0..self.slots.len()).filter(|&i| self.slots[i].active));
        order.sort_unstable_by_key(|&i| self.slots[i].born);
        for &index in &order {
            self.flush_slot(index, out);
        }
        self.order = order;
    }

    fn free_slot(&mut self, out: &mut GroBatch) -> usize {
        if let Some(index) = self.slots.iter().position(|s| !s.active) {
            return index;
        }
        if self.slots.len() < self.max_flows {
            self.slots.push(Slot::default());
            return self.slots.len() - 1;
        }
        let oldest = (0..self.slots.len())
            .min_by_key(|&i| self.slots[i].born)
            .unwrap_or(0);
        self.flush_slot(oldest, out);
        oldest
    }

    fn flush_slot(&mut self, index: usize, out: &mut GroBatch) {
        let slot = &mut self.slots[index];
        slot.active = false;
        if slot.segments > 1 {
            slot.finish();
        } else if slot.checksums == Some(Checksums::Partial) {
            // One segment alone keeps its partial checksum: the TAP must be told.
            if let Some(loc) = partial_tcp(slot.frame()) {
                let hdr = partial_header(&loc).to_bytes();
                slot.buf[..VNET_HDR_LEN].copy_from_slice(&hdr);
            }
        }
        let fresh = out.take_spare();
        let full = mem::replace(&mut slot.buf, fresh);
        out.ready.push(full);
    }
}

impl Slot {
    fn open(&mut self, c: &Candidate<'_>, born: u64) {
        self.buf.clear();
        self.buf.extend_from_slice(&[0u8; VNET_HDR_LEN]);
        self.buf.extend_from_slice(c.frame);
        self.active = true;
        self.key = c.key;
        self.l4_offset = c.l4_offset;
        self.headers_end = c.headers_end;
        self.mss = c.payload_len;
        self.segments = 1;
        self.next_seq = c.seq.wrapping_add(c.payload_len as u32);
        self.cwr = c.flags.contains(TcpFlags::CWR);
        self.born = born;
        self.checksums = Some(c.checksums);
    }

    fn frame(&self) -> &[u8] {
        &self.buf[VNET_HDR_LEN..]
    }

    fn can_merge(&self, c: &Candidate<'_>) -> bool {
        if c.seq != self.next_seq
            || Some(c.checksums) != self.checksums
            || c.payload_len > self.mss
            || c.headers_end != self.headers_end
            || c.l4_offset != self.l4_offset
            || c.flags.contains(TcpFlags::CWR)
        {
            return false;
        }
        let ip_len_after = self.frame().len() + c.payload_len
            - ETHERNET_HEADER_LEN
            - if self.key.v6 { IPV6_HEADER_LEN } else { 0 };
        if ip_len_after > GRO_MAX_IP_LEN {
            return false;
        }
        let mine = &self.frame()[..self.headers_end];
        let theirs = &c.frame[..c.headers_end];
        let l3 = ETHERNET_HEADER_LEN;
        let l4 = self.l4_offset;
        let flags_at = l4 + 13;
        let ignore_flags = TcpFlags::PSH.with(TcpFlags::CWR);
        if TcpFlags(mine[flags_at]).without(ignore_flags) != c.flags.without(ignore_flags) {
            return false;
        }
        // Fields that differ between segments of one burst: lengths, IPv4 identification
        // and checksums, the sequence number and the flags compared above.
        let skip: [Range<usize>; 5] = if self.key.v6 {
            [
                l3 + 4..l3 + 6,
                l4 + 4..l4 + 8,
                flags_at..flags_at + 1,
                l4 + 16..l4 + 18,
                l4 + 18..l4 + 18,
            ]
        } else {
            [
                l3 + 2..l3 + 6,
                l3 + 10..l3 + 12,
                l4 + 4..l4 + 8,
                flags_at..flags_at + 1,
                l4 + 16..l4 + 18,
            ]
        };
        eq_except(mine, theirs, &skip)
    }

    /// Appends the segment's payload; returns whether the super-frame is complete.
    fn merge(&mut self, c: &Candidate<'_>) -> bool {
        self.buf.extend_from_slice(&c.frame[c.headers_end..]);
        self.segments += 1;
        self.next_seq = self.next_seq.wrapping_add(c.payload_len as u32);
        let pushed = c.flags.contains(TcpFlags::PSH);
        if pushed {
            let at = VNET_HDR_LEN + self.l4_offset + 13;
            self.buf[at] |= TcpFlags::PSH.0;
        }
        pushed || c.payload_len < self.mss
    }

    /// Rewrites the lengths and checksums of a coalesced frame and writes its header.
    fn finish(&mut self) {
        let l3 = ETHERNET_HEADER_LEN;
        let l4_offset = self.l4_offset;
        let frame = &mut self.buf[VNET_HDR_LEN..];
        let l4_len = frame.len() - l4_offset;
        let (pseudo, gso_type) = if self.key.v6 {
            let mut ip = Ipv6Packet::new_unchecked(&mut frame[l3..]);
            ip.set_payload_len(l4_len as u16);
            let pseudo = checksum::pseudo_header_v6(
                &ip.src_addr(),
                &ip.dst_addr(),
                IpProtocol::Tcp,
                l4_len as u32,
            );
            (pseudo, GsoType::TcpV6)
        } else {
            let mut ip = Ipv4Packet::new_unchecked(&mut frame[l3..]);
            ip.set_total_len((l4_offset - l3 + l4_len) as u16);
            ip.fill_checksum();
            let pseudo = checksum::pseudo_header_v4(
                ip.src_addr(),
                ip.dst_addr(),
                IpProtocol::Tcp,
                l4_len as u32,
            );
            (pseudo, GsoType::TcpV4)
        };
        // A partial checksum: the field holds the pseudo-header sum, uncomplemented, and
        // the kernel (or whoever segments the frame again) sums from csum_start onwards.
        TcpPacket::new_unchecked(&mut frame[l4_offset..]).set_checksum(pseudo);
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type,
            gso_ecn: self.cwr,
            hdr_len: self.headers_end as u16,
            gso_size: self.mss as u16,
            csum_start: l4_offset as u16,
            csum_offset: TCP_CHECKSUM_OFFSET as u16,
            num_buffers: 0,
        };
        self.buf[..VNET_HDR_LEN].copy_from_slice(&hdr.to_bytes());
    }
}

/// Whether `a` and `b` (equal lengths) agree outside the `skip` ranges (sorted, in bounds).
fn eq_except(a: &[u8], b: &[u8], skip: &[Range<usize>]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut from = 0;
    for range in skip {
        if a[from..range.start] != b[from..range.start] {
            return false;
        }
        from = range.end;
    }
    a[from..] == b[from..]
}

fn classify(frame: &[u8], checksums: Checksums) -> Class<'_> {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Class::Unrelated;
    };
    let l3 = ETHERNET_HEADER_LEN;
    match eth.ethertype() {
        EtherType::Ipv4 => {
            let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                return Class::Unrelated;
            };
            if ip.protocol() != IpProtocol::Tcp {
                return Class::Unrelated;
            }
            if ip.is_fragment() {
                return Class::Opaque;
            }
            let mut key = FlowKey::default();
            key.src[..4].copy_from_slice(&ip.src_addr().octets());
            key.dst[..4].copy_from_slice(&ip.dst_addr().octets());
            let l4_offset = l3 + usize::from(ip.header_len());
            let ip_ok = ip.dont_frag()
                && frame.len() == l3 + usize::from(ip.total_len())
                && ip.verify_checksum();
            let pseudo = |len: usize| {
                checksum::pseudo_header_v4(
                    ip.src_addr(),
                    ip.dst_addr(),
                    IpProtocol::Tcp,
                    len as u32,
                )
            };
            tcp_candidate(
                frame,
                key,
                l4_offset,
                ip.payload(),
                ip_ok,
                pseudo,
                checksums,
            )
        }
        EtherType::Ipv6 => {
            let Ok(ip) = Ipv6Packet::new_checked(eth.payload()) else {
                return Class::Unrelated;
            };
            match ip.next_header() {
                IpProtocol::Tcp => {}
                IpProtocol::Udp | IpProtocol::Icmpv6 | IpProtocol::Icmp => return Class::Unrelated,
                // 59 is "no next header"; anything else may be an extension header with
                // TCP behind it.
                IpProtocol::Unknown(59) => return Class::Unrelated,
                IpProtocol::Unknown(_) => return Class::Opaque,
            }
            let key = FlowKey {
                v6: true,
                src: ip.src_addr().octets(),
                dst: ip.dst_addr().octets(),
                ..FlowKey::default()
            };
            let ip_ok = frame.len() == l3 + IPV6_HEADER_LEN + usize::from(ip.payload_len());
            let pseudo = |len: usize| {
                checksum::pseudo_header_v6(
                    &ip.src_addr(),
                    &ip.dst_addr(),
                    IpProtocol::Tcp,
                    len as u32,
                )
            };
            tcp_candidate(
                frame,
                key,
                l3 + IPV6_HEADER_LEN,
                ip.payload(),
                ip_ok,
                pseudo,
                checksums,
            )
        }
        EtherType::Arp | EtherType::Unknown(_) => Class::Unrelated,
    }
}

fn tcp_candidate<'a>(
    frame: &'a [u8],
    mut key: FlowKey,
    l4_offset: usize,
    segment: &[u8],
    ip_ok: bool,
    pseudo: impl Fn(usize) -> u16,
    checksums: Checksums,
) -> Class<'a> {
    let Ok(tcp) = TcpPacket::new_checked(segment) else {
        return Class::Unrelated;
    };
    key.src_port = tcp.src_port();
    key.dst_port = tcp.dst_port();
    let flags = tcp.flags();
    let allowed = TcpFlags::ACK
        .with(TcpFlags::PSH)
        .with(TcpFlags::ECE)
        .with(TcpFlags::CWR);
    let payload_len = tcp.payload().len();
    let eligible = ip_ok
        && payload_len > 0
        && flags.without(allowed) == TcpFlags::default()
        && (checksums == Checksums::Partial || tcp.verify_checksum(pseudo(segment.len())));
    Class::Tcp(Candidate {
        frame,
        key,
        l4_offset,
        headers_end: l4_offset + usize::from(tcp.header_len()),
        payload_len,
        seq: tcp.seq_number(),
        flags,
        eligible,
        checksums,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::vnet::{VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_GSO_ECN};
    use proptest::prelude::*;
    use std::collections::HashMap;

    // ---- An independent checker: textbook RFC 1071 sums over hand-built pseudo-headers.

    fn reference_sum(bytes: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    /// Whether a frame's IPv4 header checksum (if IPv4) and TCP/UDP checksum verify, using
    /// only byte offsets and `reference_sum`.
    fn independently_valid(frame: &[u8]) -> bool {
        let v6 = frame[12..14] == [0x86, 0xdd];
        let (l4, proto, src_dst, l4_len) = if v6 {
            let len = usize::from(u16::from_be_bytes([frame[18], frame[19]]));
            (54, frame[20], &frame[22..54], len)
        } else {
            let ihl = usize::from(frame[14] & 0x0f) * 4;
            if reference_sum(&frame[14..14 + ihl]) != 0xffff {
                return false;
            }
            let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
            (14 + ihl, frame[23], &frame[26..34], total - ihl)
        };
        let mut pseudo = src_dst.to_vec();
        if v6 {
            pseudo.extend_from_slice(&(l4_len as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, proto]);
        } else {
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(l4_len as u16).to_be_bytes());
        }
        pseudo.extend_from_slice(&frame[l4..l4 + l4_len]);
        reference_sum(&pseudo) == 0xffff
    }

    // ---- Building super-frames the way a Linux TAP delivers them.

    #[derive(Debug, Clone)]
    struct Flow {
        v6: bool,
        macs: [u8; 12],
        src: [u8; 16],
        dst: [u8; 16],
        src_port: u16,
        dst_port: u16,
        ttl: u8,
        tos: u8,
        flow_label: u32,
        ip_options: Vec<u8>,
        tcp_options: Vec<u8>,
        seq: u32,
        ack: u32,
        window: u16,
        ident: u16,
        flags: TcpFlags,
    }

    fn arb_flow() -> impl Strategy<Value = Flow> {
        (
            (
                any::<bool>(),
                any::<[u8; 12]>(),
                any::<[u8; 16]>(),
                any::<[u8; 16]>(),
            ),
            (
                any::<u16>(),
                any::<u16>(),
                any::<u8>(),
                any::<u8>(),
                any::<u32>(),
            ),
            (
                prop::collection::vec(any::<[u8; 4]>(), 0..=10),
                prop::collection::vec(any::<[u8; 4]>(), 0..=10),
            ),
            (any::<u32>(), any::<u32>(), any::<u16>(), any::<u16>()),
            (any::<bool>(), any::<bool>(), any::<bool>()),
        )
            .prop_map(|(a, b, opts, nums, fl)| {
                let mut flags = TcpFlags::ACK;
                for (on, bit) in [
                    (fl.0, TcpFlags::PSH),
                    (fl.1, TcpFlags::CWR),
                    (fl.2, TcpFlags::ECE),
                ] {
                    if on {
                        flags = flags.with(bit);
                    }
                }
                Flow {
                    v6: a.0,
                    macs: a.1,
                    src: a.2,
                    dst: a.3,
                    src_port: b.0,
                    dst_port: b.1,
                    ttl: b.2,
                    tos: b.3,
                    flow_label: b.4 & 0xf_ffff,
                    ip_options: if a.0 { Vec::new() } else { opts.0.concat() },
                    tcp_options: opts.1.concat(),
                    seq: nums.0,
                    ack: nums.1,
                    window: nums.2,
                    ident: nums.3,
                    flags,
                }
            })
    }

    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn max_payload(flow: &Flow) -> usize {
        let tcp = 20 + flow.tcp_options.len();
        if flow.v6 {
            GRO_MAX_IP_LEN - tcp
        } else {
            GRO_MAX_IP_LEN - 20 - flow.ip_options.len() - tcp
        }
    }

    /// A TCP frame of `flow` carrying `payload`. With `partial`, the checksum field holds the
    /// pseudo-header sum as a TSO skb has it; otherwise a complete checksum.
    fn tcp_frame(flow: &Flow, payload: &[u8], partial: bool) -> (Vec<u8>, usize, usize) {
        let ip_len = if flow.v6 {
            40
        } else {
            20 + flow.ip_options.len()
        };
        let tcp_len = 20 + flow.tcp_options.len();
        let l4 = 14 + ip_len;
        let mut f = vec![0u8; l4 + tcp_len + payload.len()];
        f[..12].copy_from_slice(&flow.macs);
        let l4_len = tcp_len + payload.len();
        let pseudo = if flow.v6 {
            f[12..14].copy_from_slice(&[0x86, 0xdd]);
            let mut ip = Ipv6Packet::new_unchecked(&mut f[14..]);
            ip.set_version_class_flow(flow.tos, flow.flow_label);
            ip.set_payload_len(l4_len as u16);
            ip.set_next_header(IpProtocol::Tcp);
            ip.set_hop_limit(flow.ttl);
            ip.set_src_addr(flow.src.into());
            ip.set_dst_addr(flow.dst.into());
            checksum::pseudo_header_v6(
                &flow.src.into(),
                &flow.dst.into(),
                IpProtocol::Tcp,
                l4_len as u32,
            )
        } else {
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            let src = std::net::Ipv4Addr::new(flow.src[0], flow.src[1], flow.src[2], flow.src[3]);
            let dst = std::net::Ipv4Addr::new(flow.dst[0], flow.dst[1], flow.dst[2], flow.dst[3]);
            f[34..34 + flow.ip_options.len()].copy_from_slice(&flow.ip_options);
            let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
            ip.set_version_and_header_len(ip_len as u8);
            ip.set_tos(flow.tos);
            ip.set_total_len((ip_len + l4_len) as u16);
            ip.set_ident(flow.ident);
            ip.set_flags_and_offset(true, false, 0);
            ip.set_ttl(flow.ttl);
            ip.set_protocol(IpProtocol::Tcp);
            ip.set_src_addr(src);
            ip.set_dst_addr(dst);
            ip.fill_checksum();
            checksum::pseudo_header_v4(src, dst, IpProtocol::Tcp, l4_len as u32)
        };
        let mut tcp = TcpPacket::new_unchecked(&mut f[l4..]);
        tcp.set_src_port(flow.src_port);
        tcp.set_dst_port(flow.dst_port);
        tcp.set_seq_number(flow.seq);
        tcp.set_ack_number(flow.ack);
        tcp.set_header_len(tcp_len as u8);
        tcp.set_flags(flow.flags);
        tcp.set_window_len(flow.window);
        f[l4 + 20..l4 + tcp_len].copy_from_slice(&flow.tcp_options);
        f[l4 + tcp_len..].copy_from_slice(payload);
        let mut tcp = TcpPacket::new_unchecked(&mut f[l4..]);
        if partial {
            tcp.set_checksum(pseudo);
        } else {
            tcp.fill_checksum(pseudo);
        }
        (f, l4, l4 + tcp_len)
    }

    fn super_frame(flow: &Flow, payload: &[u8], mss: u16) -> (VirtioNetHdr, Vec<u8>) {
        let (frame, l4, headers_end) = tcp_frame(flow, payload, true);
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: if flow.v6 {
                GsoType::TcpV6
            } else {
                GsoType::TcpV4
            },
            gso_ecn: flow.flags.contains(TcpFlags::CWR),
            hdr_len: headers_end as u16,
            gso_size: mss,
            csum_start: l4 as u16,
            csum_offset: 16,
            num_buffers: 0,
        };
        (hdr, frame)
    }

    /// `frame` (IPv6 with TCP right behind its fixed header) with `extensions` put between
    /// the two: the IPv6 next header becomes `first` (the last extension must name TCP), the
    /// payload length grows to cover them, and the destination becomes `via` when given (a
    /// routing header's next hop; the TCP checksum stays that of the final destination).
    fn with_ipv6_extensions(
        frame: &[u8],
        first: u8,
        extensions: &[u8],
        via: Option<std::net::Ipv6Addr>,
    ) -> Vec<u8> {
        let mut out = frame[..54].to_vec();
        out.extend_from_slice(extensions);
        out.extend_from_slice(&frame[54..]);
        let mut ip = Ipv6Packet::new_unchecked(&mut out[14..]);
        ip.set_payload_len(ip.payload_len() + extensions.len() as u16);
        ip.set_next_header(IpProtocol::from(first));
        if let Some(via) = via {
            ip.set_dst_addr(via);
        }
        out
    }

    /// Whether the TCP checksum of the segment at `l4` verifies against the IPv6
    /// pseudo-header of `src` and `dst`, summed by the textbook.
    fn tcp_valid_v6(frame: &[u8], l4: usize, src: &[u8; 16], dst: &[u8; 16]) -> bool {
        let segment = &frame[l4..];
        let mut pseudo = src.to_vec();
        pseudo.extend_from_slice(dst);
        pseudo.extend_from_slice(&(segment.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 6]);
        pseudo.extend_from_slice(segment);
        reference_sum(&pseudo) == 0xffff
    }

    fn split(hdr: &VirtioNetHdr, frame: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Segments::new();
        gso_split(hdr, frame, &mut out, Checksums::Full).unwrap();
        out.frames().map(<[u8]>::to_vec).collect()
    }

    fn items(batch: &GroBatch) -> Vec<(VirtioNetHdr, Vec<u8>)> {
        batch
            .iter()
            .map(|item| {
                (
                    VirtioNetHdr::parse(item).unwrap(),
                    item[VNET_HDR_LEN..].to_vec(),
                )
            })
            .collect()
    }

    fn simple_flow() -> Flow {
        Flow {
            v6: false,
            macs: [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1],
            src: [10, 32, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [10, 32, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            src_port: 40000,
            dst_port: 5201,
            ttl: 64,
            tos: 0,
            flow_label: 0,
            ip_options: Vec::new(),
            tcp_options: vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2],
            seq: 0xffff_fff0,
            ack: 77,
            window: 502,
            ident: 0xfffe,
            flags: TcpFlags::ACK.with(TcpFlags::PSH),
        }
    }

    // ---- GSO split

    #[test]
    fn splits_a_tso_frame_like_the_kernel() {
        let flow = simple_flow();
        let payload = pattern(1398 * 3 + 100, 7);
        let (hdr, frame) = super_frame(&flow, &payload, 1398);

        let segs = split(&hdr, &frame);

        assert_eq!(segs.len(), 4);
        let mut offset = 0;
        for (i, seg) in segs.iter().enumerate() {
            assert!(independently_valid(seg), "segment {i}");
            assert!(seg.len() <= usize::from(hdr.hdr_len) + 1398);
            let ip = Ipv4Packet::new_checked(&seg[14..]).unwrap();
            let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
            assert_eq!(ip.ident(), 0xfffeu16.wrapping_add(i as u16));
            assert_eq!(tcp.seq_number(), flow.seq.wrapping_add(offset as u32));
            assert_eq!(tcp.flags().contains(TcpFlags::PSH), i == 3);
            assert_eq!(tcp.options(), &flow.tcp_options[..]);
            assert_eq!(
                tcp.payload(),
                &payload[offset..offset + tcp.payload().len()]
            );
            offset += tcp.payload().len();
        }
        assert_eq!(offset, payload.len());
        assert_eq!(segs[3].len(), 14 + 20 + 32 + 100);
    }

    #[test]
    fn splits_a_tcpv6_tso_frame_behind_extension_headers() {
        let final_dst: std::net::Ipv6Addr = "fd00::2".parse().unwrap();
        let via: std::net::Ipv6Addr = "fd00::99".parse().unwrap();
        let flow = Flow {
            v6: true,
            src: "fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets(),
            dst: final_dst.octets(),
            ..simple_flow()
        };
        let payload = pattern(1398 * 2 + 500, 13);
        let (hdr, frame) = super_frame(&flow, &payload, 1398);
        // Hop-by-hop options (PadN), a type 2 routing header with one segment left that names
        // the final destination, destination options (PadN), then TCP.
        let mut ext = vec![43, 0, 1, 4, 0, 0, 0, 0];
        ext.extend_from_slice(&[60, 2, 2, 1, 0, 0, 0, 0]);
        ext.extend_from_slice(&final_dst.octets());
        ext.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
        let frame = with_ipv6_extensions(&frame, 0, &ext, Some(via));
        let l4 = 14 + 40 + ext.len();
        let hdr = VirtioNetHdr {
            hdr_len: hdr.hdr_len + ext.len() as u16,
            csum_start: l4 as u16,
            ..hdr
        };

        let segs = split(&hdr, &frame);

        assert_eq!(segs.len(), 3);
        let mut offset = 0;
        for (i, seg) in segs.iter().enumerate() {
            assert!(seg.len() <= usize::from(hdr.hdr_len) + 1398, "segment {i}");
            let ip = Ipv6Packet::new_checked(&seg[14..]).unwrap();
            assert_eq!(
                usize::from(ip.payload_len()),
                seg.len() - 54,
                "segment {i}: the payload length counts the extension headers"
            );
            assert_eq!(ip.dst_addr(), via);
            assert_eq!(&seg[54..l4], &ext[..], "segment {i}: extension headers");
            assert!(
                tcp_valid_v6(seg, l4, &flow.src, &flow.dst),
                "segment {i}: checksum over the final destination"
            );
            let tcp = TcpPacket::new_checked(&seg[l4..]).unwrap();
            assert_eq!(tcp.seq_number(), flow.seq.wrapping_add(offset as u32));
            assert_eq!(tcp.flags().contains(TcpFlags::PSH), i == 2);
            assert_eq!(
                tcp.payload(),
                &payload[offset..offset + tcp.payload().len()]
            );
            offset += tcp.payload().len();
        }
        assert_eq!(offset, payload.len());
    }

    #[test]
    fn a_tcpv6_tso_frame_with_a_fragment_header_is_refused_as_a_fragment() {
        let flow = Flow {
            v6: true,
            ..simple_flow()
        };
        let (hdr, frame) = super_frame(&flow, &pattern(3000, 17), 1398);
        let fragment = [6, 0, 0, 0, 0, 0, 0, 1];
        let frame = with_ipv6_extensions(&frame, 44, &fragment, None);
        let hdr = VirtioNetHdr {
            hdr_len: hdr.hdr_len + 8,
            csum_start: hdr.csum_start + 8,
            ..hdr
        };
        let mut out = Segments::new();

        let result = gso_split(&hdr, &frame, &mut out, Checksums::Full);

        assert_eq!(result, Err(GsoError::BadHeaders(HeaderError::Fragment)));
        assert!(out.is_empty());
    }

    #[test]
    fn headroom_precedes_every_segment() {
        let (hdr, frame) = super_frame(&simple_flow(), &pattern(3000, 1), 1398);
        let mut out = Segments::with_headroom(20);

        let n = gso_split(&hdr, &frame, &mut out, Checksums::Full).unwrap();
        out.record_mut(1).unwrap()[..20].copy_from_slice(&[9; 20]);

        assert_eq!(n, 3);
        let stride = 20 + 66 + 1398;
        assert_eq!(out.as_bytes().len(), 2 * stride + 20 + 66 + 204);
        assert_eq!(out.record(0).unwrap().len(), stride);
        assert_eq!(&out.as_bytes()[stride..stride + 20], &[9; 20]);
        assert_eq!(
            out.frame(1).unwrap(),
            &out.as_bytes()[stride + 20..2 * stride]
        );
        assert!(out.frame(3).is_none());
    }

    #[test]
    fn cwr_goes_on_the_first_segment_and_fin_on_the_last() {
        let mut flow = simple_flow();
        flow.flags = TcpFlags::ACK.with(TcpFlags::CWR).with(TcpFlags::FIN);
        let (hdr, frame) = super_frame(&flow, &pattern(2000, 3), 1000);

        let segs = split(&hdr, &frame);

        let flags: Vec<TcpFlags> = segs.iter().map(|s| TcpFlags(s[14 + 20 + 13])).collect();
        assert_eq!(
            flags,
            [
                TcpFlags::ACK.with(TcpFlags::CWR),
                TcpFlags::ACK.with(TcpFlags::FIN)
            ]
        );
    }

    #[test]
    fn finishes_a_partial_checksum_on_a_plain_frame() {
        let (mut hdr, frame) = super_frame(&simple_flow(), &pattern(501, 5), 1398);
        hdr.gso_type = GsoType::None;
        hdr.gso_size = 0;
        assert!(!independently_valid(&frame));

        let segs = split(&hdr, &frame);

        assert_eq!(segs.len(), 1);
        assert!(independently_valid(&segs[0]));
        assert_eq!(segs[0][..50], frame[..50]);
        assert_eq!(segs[0][52..], frame[52..]);
    }

    #[test]
    fn plain_frames_without_partial_checksum_are_copied() {
        let frame = pattern(60, 9);
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_DATA_VALID,
            ..VirtioNetHdr::default()
        };

        assert_eq!(split(&hdr, &frame), vec![frame]);
    }

    #[test]
    fn splits_udp_l4_with_a_length_and_checksum_per_datagram() {
        let mut frame = vec![0u8; 14 + 40 + 8 + 2500];
        frame[12..14].copy_from_slice(&[0x86, 0xdd]);
        let mut ip = Ipv6Packet::new_unchecked(&mut frame[14..]);
        ip.set_version_class_flow(0, 0);
        ip.set_payload_len(2508);
        ip.set_next_header(IpProtocol::Udp);
        ip.set_src_addr("fd00::1".parse().unwrap());
        ip.set_dst_addr("fd00::2".parse().unwrap());
        let mut udp = UdpPacket::new_unchecked(ip.payload_mut());
        udp.set_len(2508);
        udp.payload_mut().copy_from_slice(&pattern(2500, 11));
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: GsoType::UdpL4,
            hdr_len: 62,
            gso_size: 1200,
            csum_start: 54,
            csum_offset: 6,
            ..VirtioNetHdr::default()
        };

        let segs = split(&hdr, &frame);

        let lens: Vec<usize> = segs.iter().map(Vec::len).collect();
        assert_eq!(lens, [62 + 1200, 62 + 1200, 62 + 100]);
        for seg in &segs {
            assert!(independently_valid(seg));
            let udp = UdpPacket::new_checked(&seg[54..]).unwrap();
            assert_eq!(usize::from(udp.len()), seg.len() - 54);
        }
        assert_eq!(&segs[2][62..], &frame[62 + 2400..]);
    }

    #[test]
    fn inconsistent_headers_are_named_errors_and_append_nothing() {
        let (hdr, frame) = super_frame(&simple_flow(), &pattern(3000, 2), 1398);
        let mut out = Segments::new();
        gso_split(&hdr, &frame, &mut out, Checksums::Full).unwrap();
        let before = out.as_bytes().to_vec();
        let cases: Vec<(VirtioNetHdr, Vec<u8>, GsoError)> = vec![
            (
                VirtioNetHdr {
                    hdr_len: 9000,
                    ..hdr
                },
                frame.clone(),
                GsoError::HdrLenBeyondFrame {
                    hdr_len: 9000,
                    frame_len: frame.len(),
                },
            ),
            (
                VirtioNetHdr { gso_size: 0, ..hdr },
                frame.clone(),
                GsoError::ZeroGsoSize,
            ),
            (
                VirtioNetHdr {
                    gso_type: GsoType::TcpV6,
                    ..hdr
                },
                frame.clone(),
                GsoError::GsoTypeMismatch {
                    gso_type: GsoType::TcpV6,
                },
            ),
            (
                VirtioNetHdr {
                    gso_type: GsoType::UdpL4,
                    gso_ecn: false,
                    ..hdr
                },
                frame.clone(),
                GsoError::GsoTypeMismatch {
                    gso_type: GsoType::UdpL4,
                },
            ),
            (
                VirtioNetHdr {
                    gso_type: GsoType::Udp,
                    ..hdr
                },
                frame.clone(),
                GsoError::UnsupportedGsoType(GsoType::Udp),
            ),
            (
                VirtioNetHdr {
                    csum_offset: 6,
                    ..hdr
                },
                frame.clone(),
                GsoError::BadChecksumOffsets {
                    start: 34,
                    offset: 6,
                },
            ),
            (
                VirtioNetHdr { hdr_len: 0, ..hdr },
                frame[..40].to_vec(),
                GsoError::BadHeaders(HeaderError::BadLength),
            ),
            (
                VirtioNetHdr {
                    gso_type: GsoType::None,
                    gso_ecn: true,
                    ..hdr
                },
                frame.clone(),
                GsoError::EcnWithoutTcp(GsoType::None),
            ),
            (
                VirtioNetHdr {
                    gso_type: GsoType::None,
                    csum_start: 3065,
                    ..hdr
                },
                frame.clone(),
                GsoError::BadChecksumOffsets {
                    start: 3065,
                    offset: 16,
                },
            ),
        ];

        for (bad, bytes, want) in cases {
            assert_eq!(
                gso_split(&bad, &bytes, &mut out, Checksums::Full),
                Err(want)
            );
        }

        assert_eq!(out.as_bytes(), &before[..]);
        assert_eq!(out.len(), 3);
    }

    // ---- GRO

    #[test]
    fn coalesces_a_burst_and_marks_a_partial_checksum() {
        let flow = simple_flow();
        let (hdr, frame) = super_frame(&flow, &pattern(1398 * 5, 4), 1398);
        let mut gro = GroTable::default();
        let mut out = GroBatch::new();

        let outcomes: Vec<GroOutcome> = split(&hdr, &frame)
            .iter()
            .map(|s| gro.push(s, &mut out))
            .collect();

        assert_eq!(outcomes[0], GroOutcome::Held);
        assert!(outcomes[1..].iter().all(|o| *o == GroOutcome::Merged));
        // The last segment carries PSH, so the super-frame left without a flush.
        assert_eq!(gro.pending(), 0);
        let got = items(&out);
        assert_eq!(got, vec![(hdr, frame)]);
        assert_eq!(got[0].0.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM);
        assert_eq!(got[0].0.raw_gso_type() & VIRTIO_NET_HDR_GSO_ECN, 0);
    }

    #[test]
    fn frames_that_cannot_join_pass_through_unchanged_in_flow_order() {
        let mut flow = simple_flow();
        flow.flags = TcpFlags::ACK;
        let segs = split(
            &super_frame(&flow, &pattern(1000 * 4, 8), 1000).0,
            &super_frame(&flow, &pattern(1000 * 4, 8), 1000).1,
        );
        let mut bad_sum = segs[1].clone();
        let last = bad_sum.len() - 1;
        bad_sum[last] ^= 0xff;
        let mut syn_flow = flow.clone();
        syn_flow.flags = TcpFlags::SYN;
        let (syn, _, _) = tcp_frame(&syn_flow, &[], false);
        let mut gro = GroTable::default();
        let mut out = GroBatch::new();

        let outcomes = [
            gro.push(&segs[0], &mut out),
            gro.push(&bad_sum, &mut out),
            gro.push(&segs[1], &mut out),
            gro.push(&segs[3], &mut out),
            gro.push(&syn, &mut out),
        ];
        gro.flush(&mut out);

        use GroOutcome::{Held, Passed};
        assert_eq!(outcomes, [Held, Passed, Held, Held, Passed]);
        let got = items(&out);
        let frames: Vec<&[u8]> = got.iter().map(|(_, f)| f.as_slice()).collect();
        assert_eq!(
            frames,
            [
                &segs[0][..],
                &bad_sum[..],
                &segs[1][..],
                &segs[3][..],
                &syn[..]
            ]
        );
        assert!(got.iter().all(|(h, _)| *h == VirtioNetHdr::default()));
    }

    #[test]
    fn different_ttl_or_window_starts_a_new_super_frame() {
        let mut flow = simple_flow();
        flow.flags = TcpFlags::ACK;
        let segs = split(
            &super_frame(&flow, &pattern(4000, 8), 1000).0,
            &super_frame(&flow, &pattern(4000, 8), 1000).1,
        );
        let mut ttl = segs[2].clone();
        ttl[22] -= 1;
        Ipv4Packet::new_unchecked(&mut ttl[14..]).fill_checksum();
        let mut window = segs[3].clone();
        window[34 + 14] ^= 1;
        fill_l4_checksum_for_test(&mut window);
        let mut gro = GroTable::default();
        let mut out = GroBatch::new();

        for seg in [&segs[0], &segs[1], &ttl, &window] {
            gro.push(seg, &mut out);
        }
        gro.flush(&mut out);

        let got = items(&out);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].0.gso_type, GsoType::TcpV4);
        assert_eq!(split(&got[0].0, &got[0].1), segs[..2].to_vec());
        assert_eq!(got[1].1, ttl);
        assert_eq!(got[2].1, window);
    }

    fn fill_l4_checksum_for_test(frame: &mut [u8]) {
        crate::wire::eth::fill_l4_checksum(frame).unwrap();
    }

    #[test]
    fn a_full_table_flushes_its_oldest_flow() {
        let mut gro = GroTable::new(2);
        let mut out = GroBatch::new();
        let mut first = Vec::new();
        for port in [1u16, 2, 3] {
            let mut flow = simple_flow();
            flow.flags = TcpFlags::ACK;
            flow.src_port = port;
            let (hdr, frame) = super_frame(&flow, &pattern(2000, 1), 1000);
            first.push(split(&hdr, &frame)[0].clone());
        }

        for seg in &first {
            gro.push(seg, &mut out);
        }

        assert_eq!(gro.pending(), 2);
        assert_eq!(
            items(&out),
            vec![(VirtioNetHdr::default(), first[0].clone())]
        );
        gro.flush(&mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(items(&out)[2].1, first[2]);
        out.clear();
        assert!(out.is_empty());
    }

    #[test]
    fn super_frames_stop_at_64_kib() {
        let mut flow = simple_flow();
        flow.flags = TcpFlags::ACK;
        flow.tcp_options.clear();
        let payload = pattern(1000 * 70, 6);
        let mut gro = GroTable::default();
        let mut out = GroBatch::new();
        let mut seq = flow.seq;
        for chunk in payload.chunks(1000) {
            let mut f = flow.clone();
            f.seq = seq;
            seq = seq.wrapping_add(chunk.len() as u32);
            let (frame, _, _) = tcp_frame(&f, chunk, false);
            gro.push(&frame, &mut out);
        }
        gro.flush(&mut out);

        let got = items(&out);
        assert_eq!(got.len(), 2);
        // 65535 - 20 - 20 = 65495 bytes of payload fit: 65 segments of 1000.
        assert_eq!(got[0].1.len(), 14 + 40 + 65 * 1000);
        assert_eq!(got[1].1.len(), 14 + 40 + 5 * 1000);
    }

    // ---- Properties

    fn arb_payload_len() -> impl Strategy<Value = usize> {
        prop_oneof![0usize..4000, 0usize..=65_535]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Split then coalesce gives back the super-frame byte for byte, header included:
        /// the original carries what the kernel's TSO path leaves (full IP lengths, the
        /// first IPv4 ID, the pseudo-header sum in the TCP checksum field), and so does GRO.
        /// A frame with no more than one segment's payload comes back as that one segment
        /// with a complete checksum and a zero header.
        #[test]
        fn split_then_coalesce_restores_the_super_frame(
            flow in arb_flow(),
            len in arb_payload_len(),
            mss in prop_oneof![8u16..200, 500u16..=1500],
            seed in any::<u64>(),
        ) {
            let payload = pattern(len.min(max_payload(&flow)), seed);
            let (hdr, frame) = super_frame(&flow, &payload, mss);

            let segs = split(&hdr, &frame);
            let mut gro = GroTable::default();
            let mut out = GroBatch::new();
            for seg in &segs {
                gro.push(seg, &mut out);
            }
            gro.flush(&mut out);

            prop_assert_eq!(segs.len(), payload.len().div_ceil(usize::from(mss)).max(1));
            for seg in &segs {
                prop_assert!(independently_valid(seg));
                prop_assert!(seg.len() <= usize::from(hdr.hdr_len) + usize::from(mss));
            }
            let got = items(&out);
            prop_assert_eq!(got.len(), 1);
            if segs.len() > 1 {
                prop_assert_eq!(&got[0].0, &hdr);
                prop_assert_eq!(&got[0].1, &frame);
            } else {
                prop_assert_eq!(&got[0].0, &VirtioNetHdr::default());
                prop_assert_eq!(&got[0].1, &segs[0]);
            }
        }

        /// Between two weave-routers with partial checksums: split without summing, and
        /// every segment is the full split's with the pseudo-header sum in place of the
        /// checksum ([`make_full`] gives the full split's back); coalescing them untrusted
        /// would refuse them, trusted gives the super-frame back byte for byte, and one
        /// segment alone reaches the TAP with NEEDS_CSUM at its TCP header.
        #[test]
        fn partial_checksums_split_and_coalesce_without_summing(
            flow in arb_flow(),
            len in arb_payload_len(),
            mss in prop_oneof![8u16..200, 500u16..=1500],
            seed in any::<u64>(),
        ) {
            let payload = pattern(len.min(max_payload(&flow)), seed);
            let (hdr, frame) = super_frame(&flow, &payload, mss);
            let full = split(&hdr, &frame);
            let mut partial = Segments::new();
            gso_split(&hdr, &frame, &mut partial, Checksums::Partial).unwrap();
            let partial: Vec<Vec<u8>> = partial.frames().map(<[u8]>::to_vec).collect();
            prop_assert_eq!(partial.len(), full.len());
            for (p, f) in partial.iter().zip(&full) {
                let loc = locate_l4(p).unwrap();
                let at = loc.l4_offset + TCP_CHECKSUM_OFFSET;
                prop_assert_eq!(&p[..at], &f[..at]);
                prop_assert_eq!(&p[at + 2..], &f[at + 2..]);
                prop_assert_eq!(u16::from_be_bytes([p[at], p[at + 1]]), loc.pseudo_header);
                let mut finished = p.clone();
                prop_assert!(make_full(&mut finished));
                prop_assert_eq!(&finished, f);
                let mut again = f.clone();
                prop_assert!(make_partial(&mut again));
                prop_assert_eq!(&again, p);
            }

            let mut gro = GroTable::default();
            let mut out = GroBatch::new();
            for seg in &partial {
                gro.push_partial(seg, &mut out);
            }
            gro.flush(&mut out);
            let got = items(&out);
            prop_assert_eq!(got.len(), 1);
            if partial.len() > 1 {
                prop_assert_eq!(&got[0].0, &hdr);
                prop_assert_eq!(&got[0].1, &frame);
            } else {
                let loc = locate_l4(&partial[0]).unwrap();
                prop_assert_eq!(got[0].0.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM);
                prop_assert_eq!(usize::from(got[0].0.csum_start), loc.l4_offset);
                prop_assert_eq!(usize::from(got[0].0.csum_offset), TCP_CHECKSUM_OFFSET);
                prop_assert_eq!(&got[0].1, &partial[0]);
            }
            if partial.len() > 1 && payload.len() >= 2 {
                // Untrusted, a partial checksum does not verify: nothing merges.
                let mut out = GroBatch::new();
                for seg in &partial {
                    gro.push(seg, &mut out);
                }
                gro.flush(&mut out);
                prop_assert_eq!(out.len(), partial.len());
            }
        }

        /// Interleaved flows, pure ACKs and non-IP frames through a small table: after
        /// splitting whatever GRO emits again, every flow's frames come out exactly as they
        /// went in, in the same order.
        #[test]
        fn per_flow_order_is_kept(
            flows in prop::collection::vec((arb_flow(), 1usize..12_000, 300u16..1500), 1..5),
            schedule in prop::collection::vec(0usize..6, 0..200),
            max_flows in 1usize..4,
        ) {
            let mut queues: Vec<std::collections::VecDeque<Vec<u8>>> = Vec::new();
            for (i, (flow, len, mss)) in flows.iter().enumerate() {
                let mut flow = flow.clone();
                flow.src_port = i as u16;
                let (hdr, frame) = super_frame(&flow, &pattern(*len, i as u64), *mss);
                queues.push(split(&hdr, &frame).into());
            }
            let mut input = Vec::new();
            for pick in schedule {
                match pick {
                    4 => input.push(pattern(64, 42)), // not IP
                    5 => {
                        // A pure ACK of flow 0: part of its order, never coalesced.
                        let mut f = flows[0].0.clone();
                        f.src_port = 0;
                        f.flags = TcpFlags::ACK;
                        input.push(tcp_frame(&f, &[], false).0);
                    }
                    q => {
                        if let Some(seg) = queues.get_mut(q).and_then(|q| q.pop_front()) {
                            input.push(seg);
                        }
                    }
                }
            }
            for q in &mut queues {
                input.extend(q.drain(..));
            }

            let mut gro = GroTable::new(max_flows);
            let mut out = GroBatch::new();
            for frame in &input {
                gro.push(frame, &mut out);
            }
            gro.flush(&mut out);

            let by_flow = |frames: &mut dyn Iterator<Item = Vec<u8>>| {
                let mut map: HashMap<(bool, u16), Vec<Vec<u8>>> = HashMap::new();
                for f in frames {
                    if let Ok(loc) = locate_l4(&f) {
                        let port = u16::from_be_bytes([f[loc.l4_offset], f[loc.l4_offset + 1]]);
                        map.entry((f[12] == 0x86, port)).or_default().push(f);
                    }
                }
                map
            };
            let expected = by_flow(&mut input.clone().into_iter());
            let mut resplit = Vec::new();
            for (hdr, frame) in items(&out) {
                if hdr.gso_type == GsoType::None {
                    resplit.push(frame);
                } else {
                    resplit.extend(split(&hdr, &frame));
                }
            }
            prop_assert_eq!(by_flow(&mut resplit.into_iter()), expected);
        }

        /// Arbitrary headers and bytes: an error or segments, never a panic.
        #[test]
        fn gso_split_never_panics_on_arbitrary_input(
            raw_hdr in proptest::array::uniform12(any::<u8>()),
            bytes in prop::collection::vec(any::<u8>(), 0..400),
        ) {
            let hdr = VirtioNetHdr::parse(&raw_hdr).unwrap();
            let mut out = Segments::with_headroom(3);
            let _ = gso_split(&hdr, &bytes, &mut out, Checksums::Full);
        }

        /// Valid super-frames with random bytes and header fields changed: never a panic; a
        /// failed split appends nothing; a successful one has complete checksums and comes
        /// back unchanged through GRO and another split (what the fuzz target checks).
        #[test]
        fn gso_split_survives_corrupted_super_frames(
            flow in arb_flow(),
            len in 0usize..3000,
            mss in 1u16..1500,
            flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            hdr_noise in (any::<u16>(), any::<u16>(), any::<u16>(), 0u8..8),
            cut in any::<usize>(),
        ) {
            let (mut hdr, mut frame) = super_frame(&flow, &pattern(len, 3), mss);
            for (at, x) in flips {
                let at = at % frame.len();
                frame[at] ^= x;
            }
            match hdr_noise.3 {
                0 => hdr.hdr_len = hdr_noise.0,
                1 => hdr.gso_size = hdr_noise.0,
                2 => hdr.csum_start = hdr_noise.1,
                3 => hdr.csum_offset = hdr_noise.2,
                4 => frame.truncate(cut % (frame.len() + 1)),
                _ => {}
            }
            let mut out = Segments::new();
            let Ok(n) = gso_split(&hdr, &frame, &mut out, Checksums::Full) else {
                prop_assert!(out.is_empty());
                return Ok(());
            };
            prop_assert_eq!(n, out.len());
            let segs: Vec<Vec<u8>> = out.frames().map(<[u8]>::to_vec).collect();
            if hdr.gso_type != GsoType::None {
                for seg in &segs {
                    prop_assert!(independently_valid(seg));
                }
            }
            // Through GRO and split again: the same frames in the same order.
            let mut gro = GroTable::new(2);
            let mut batch = GroBatch::new();
            for seg in &segs {
                gro.push(seg, &mut batch);
            }
            gro.flush(&mut batch);
            let mut again = Vec::new();
            for (h, f) in items(&batch) {
                again.extend(split(&h, &f));
            }
            prop_assert_eq!(again, segs);
        }

        /// Arbitrary frames, and corrupted copies of real segments, never make GRO panic,
        /// and every frame that goes in comes out (merged or not).
        #[test]
        fn gro_never_panics_on_arbitrary_frames(
            frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..20),
            flow in arb_flow(),
            flips in prop::collection::vec((any::<usize>(), any::<usize>(), any::<u8>()), 0..8),
        ) {
            let (hdr, frame) = super_frame(&flow, &pattern(5000, 1), 700);
            let mut segs = split(&hdr, &frame);
            let n = segs.len();
            for (which, at, x) in flips {
                let seg = &mut segs[which % n];
                let at = at % seg.len();
                seg[at] ^= x;
            }
            let mut gro = GroTable::new(3);
            let mut out = GroBatch::new();
            let mut merged = 0;
            for f in frames.iter().chain(segs.iter()) {
                if gro.push(f, &mut out) == GroOutcome::Merged {
                    merged += 1;
                }
            }
            gro.flush(&mut out);
            prop_assert_eq!(out.len() + merged, frames.len() + segs.len());
        }
    }
}
