//! Sleeve offload throughput: GSO split of a TAP super-frame into MSS-sized frames with
//! complete checksums, GRO coalesce of those frames back into one super-frame, and the
//! Internet checksum they both lean on.
//!
//! The super-frame is what a pod with MTU 1438 (the sleeve MTU over a 1500-byte underlay)
//! hands its TAP: TCPv4 with MSS 1438 - 20 - 20 = 1398, as many segments as a 64 KiB GSO
//! skb holds (46), each split frame preceded by 20 bytes of sleeve headroom.
#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weave_router::dataplane::offload::{gso_split, Checksums, GroBatch, GroTable, Segments};
use weave_router::wire::eth::{checksum, IpProtocol, Ipv4Packet, TcpFlags, TcpPacket};
use weave_router::wire::vnet::{GsoType, VirtioNetHdr, VIRTIO_NET_HDR_F_NEEDS_CSUM};

const MSS: usize = 1398;
const SEGMENTS: usize = 46;
const HEADERS: usize = 14 + 20 + 20;
/// Room for a sleeve frame header (sender name, source, destination, length) per datagram.
const SLEEVE_HEADROOM: usize = 20;

/// A TSO super-frame as the TAP delivers it: full IP lengths, the pseudo-header sum in the
/// TCP checksum field, NEEDS_CSUM.
fn super_frame() -> (VirtioNetHdr, Vec<u8>) {
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

fn offload(c: &mut Criterion) {
    let (hdr, frame) = super_frame();
    let mut segments = Segments::with_headroom(SLEEVE_HEADROOM);
    let count =
        gso_split(&hdr, &frame, &mut segments, Checksums::Full).expect("the super-frame splits");
    assert_eq!(count, SEGMENTS);
    let split: Vec<Vec<u8>> = segments.frames().map(<[u8]>::to_vec).collect();
    let split_bytes: usize = split.iter().map(Vec::len).sum();

    let mut g = c.benchmark_group("offload_tcpv4_64k_mss1398");
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("gso_split", |b| {
        b.iter(|| {
            segments.clear();
            gso_split(
                black_box(&hdr),
                black_box(&frame),
                &mut segments,
                Checksums::Full,
            )
        })
    });

    let mut gro = GroTable::default();
    let mut out = GroBatch::new();
    for seg in &split {
        gro.push(seg, &mut out);
    }
    gro.flush(&mut out);
    assert_eq!(out.len(), 1, "the segments coalesce into one super-frame");
    g.throughput(Throughput::Bytes(split_bytes as u64));
    g.bench_function("gro_coalesce", |b| {
        b.iter(|| {
            out.clear();
            for seg in &split {
                gro.push(black_box(seg), &mut out);
            }
            gro.flush(&mut out);
            out.len()
        })
    });

    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("internet_checksum", |b| {
        b.iter(|| checksum::data(black_box(&frame)))
    });
    g.finish();
}

criterion_group!(benches, offload);
criterion_main!(benches);
