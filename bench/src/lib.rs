//! Micro-benchmarks live in `benches/`; this library holds the inputs several of them share.

use std::net::Ipv4Addr;

use weave_router::wire::eth::{checksum, IpProtocol, Ipv4Packet, TcpFlags, TcpPacket};
use weave_router::wire::vnet::{GsoType, VirtioNetHdr, VIRTIO_NET_HDR_F_NEEDS_CSUM};

/// The MSS of a pod with MTU 1438 (the sleeve MTU over a 1500-byte underlay): 1438 - 20 - 20.
pub const MSS: usize = 1398;
/// Segments of that MSS in a 64 KiB GSO skb.
pub const SEGMENTS: usize = 46;
/// Ethernet, IPv4 and TCP headers.
pub const HEADERS: usize = 14 + 20 + 20;

/// A TSO super-frame as the TAP delivers it: full IP lengths, the pseudo-header sum in the
/// TCP checksum field, NEEDS_CSUM.
pub fn super_frame() -> (VirtioNetHdr, Vec<u8>) {
    let payload_len = MSS * SEGMENTS;
    let mut frame = vec![0u8; HEADERS + payload_len];
    frame[..12].copy_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    let (src, dst) = (Ipv4Addr::new(10, 32, 0, 1), Ipv4Addr::new(10, 40, 0, 1));
    let mut ip = Ipv4Packet::new_unchecked(&mut frame[14..]);
    ip.set_version_and_header_len(20);
    ip.set_total_len((20 + 20 + payload_len) as u16);
    ip.set_ident(4242);
    ip.set_flags_and_offset(true, false, 0);
    ip.set_ttl(64);
    ip.set_protocol(IpProtocol::Tcp);
    ip.set_src_addr(src);
    ip.set_dst_addr(dst);
    ip.fill_checksum();
    let mut tcp = TcpPacket::new_unchecked(&mut frame[34..]);
    tcp.set_src_port(40_000);
    tcp.set_dst_port(5201);
    tcp.set_seq_number(1_000_000);
    tcp.set_ack_number(1);
    tcp.set_header_len(20);
    tcp.set_flags(TcpFlags::ACK.with(TcpFlags::PSH));
    tcp.set_window_len(502);
    for (i, b) in tcp.payload_mut().iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    tcp.set_checksum(checksum::pseudo_header_v4(
        src,
        dst,
        IpProtocol::Tcp,
        (20 + payload_len) as u32,
    ));
    let hdr = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: GsoType::TcpV4,
        gso_ecn: false,
        hdr_len: HEADERS as u16,
        gso_size: MSS as u16,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    (hdr, frame)
}
