//! Sleeve offload throughput: GSO split of a TAP super-frame into MSS-sized frames with
//! complete checksums, GRO coalesce of those frames back into one super-frame, and the
//! Internet checksum they both lean on.
//!
//! The super-frame is what a pod with MTU 1438 (the sleeve MTU over a 1500-byte underlay)
//! hands its TAP: TCPv4 with MSS 1438 - 20 - 20 = 1398, as many segments as a 64 KiB GSO
//! skb holds (46), each split frame preceded by 20 bytes of sleeve headroom.
#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weave_bench::{super_frame, SEGMENTS};
use weave_router::dataplane::offload::{gso_split, Checksums, GroBatch, GroTable, Segments};
use weave_router::wire::eth::checksum;

/// Room for a sleeve frame header (sender name, source, destination, length) per datagram.
const SLEEVE_HEADROOM: usize = 20;

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
