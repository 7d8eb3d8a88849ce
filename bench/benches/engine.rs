//! The whole frame engine per byte, as a worker runs it between its system calls: a TAP
//! super-frame (64 KiB TSO, as a pod with MTU 1438 hands it over) switched and cut into
//! sleeve datagrams for a peer (`tap_to_udp`), and those datagrams received, switched and
//! coalesced back into TAP writes on the peer (`udp_to_tap`). What the kernel does around
//! it (copies in and out, the system calls) is not in these figures; `weave-perf` has it.
//! Each runs twice: with complete TCP checksums (`full`, as towards Weave Net peers) and
//! with partial ones (`partial`, between weave-routers that both offer it).
#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weave_bench::{super_frame, SEGMENTS};
use weave_router::dataplane::engine::{Counters, Engine, PeerPath, Snapshot};
use weave_router::ids::PeerName;
use weave_router::switch::Routes;
use weave_router::wire::sleeve::{encode_packet, SleeveFrame};
use weave_router::wire::vnet::VNET_HDR_LEN;

const POD_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const POD_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn name(i: u64) -> PeerName {
    PeerName::from_u64(0x0200_0000_0000 + i).expect("48 bits")
}

/// A TAP read: virtio_net_hdr, then a TSO super-frame from pod A to pod B with the
/// pseudo-header sum in the TCP checksum field (NEEDS_CSUM).
fn tap_read() -> Vec<u8> {
    let (hdr, frame) = super_frame();
    let mut read = vec![0u8; VNET_HDR_LEN];
    hdr.emit(&mut read).expect("header fits");
    read.extend_from_slice(&frame);
    read
}

/// An engine for peer `me` whose only peer is `other` at `udp`, with partial checksums
/// or not.
fn engine(me: PeerName, other: PeerName, udp: SocketAddr, partial_csum: bool) -> Engine {
    let mut e = Engine::new(me, Arc::new(Counters::default()));
    e.set_snapshot(Arc::new(Snapshot {
        routes: Routes {
            ourself: me,
            unicast: BTreeMap::from([(other, other)]),
            broadcast: BTreeMap::from([(me, vec![other]), (other, vec![])]),
        },
        paths: BTreeMap::from([(
            other,
            PeerPath {
                udp,
                mtu: 1438,
                spread: true,
                partial_csum,
            },
        )]),
        crypto: BTreeMap::new(),
    }));
    e
}

fn engine_bench(c: &mut Criterion) {
    for (mode, partial) in [("full", false), ("partial", true)] {
        engine_mode(c, mode, partial);
    }
}

fn engine_mode(c: &mut Criterion, mode: &str, partial: bool) {
    let (a, b) = (name(1), name(2));
    let (udp_a, udp_b): (SocketAddr, SocketAddr) = (
        "10.0.0.1:6783".parse().expect("addr"),
        "10.0.0.2:6783".parse().expect("addr"),
    );
    let mut sender = engine(a, b, udp_b, partial);
    let mut receiver = engine(b, a, udp_a, partial);
    let now = Instant::now();
    // Teach the sender where pod B is, as B's first frame would.
    let mut hello = vec![0u8; 60];
    hello[..6].copy_from_slice(&POD_A);
    hello[6..12].copy_from_slice(&POD_B);
    hello[12..14].copy_from_slice(&[0x08, 0x06]);
    let learn = encode_packet(
        b,
        &[SleeveFrame {
            src: b,
            dst: a,
            frame: &hello,
        }],
    )
    .expect("encodes");
    let mut out = sender.output();
    sender.from_udp(udp_b, &learn, now, &mut out);

    let read = tap_read();
    let mut out = sender.output();
    sender.from_tap(&read, now, &mut out);
    let datagrams: Vec<Vec<u8>> = out
        .send
        .runs()
        .iter()
        .flat_map(|r| r.buf.chunks(r.segment).map(<[u8]>::to_vec))
        .collect();
    assert_eq!(datagrams.len(), SEGMENTS);

    let mut g = c.benchmark_group(format!("engine_tcpv4_64k_mss1398_{mode}"));
    g.throughput(Throughput::Bytes(read.len() as u64));
    g.bench_function("tap_to_udp", |bench| {
        bench.iter(|| {
            out.send.clear();
            sender.from_tap(black_box(&read), now, &mut out);
            out.send.runs().len()
        })
    });
    let mut into_tap = receiver.output();
    receiver.from_udp(udp_a, &datagrams[0], now, &mut into_tap);
    receiver.flush(&mut into_tap);
    into_tap.tap.clear();
    for d in &datagrams {
        receiver.from_udp(udp_a, d, now, &mut into_tap);
    }
    receiver.flush(&mut into_tap);
    assert_eq!(into_tap.tap.len(), 1, "coalesced into one TAP write");
    g.bench_function("udp_to_tap", |bench| {
        bench.iter(|| {
            into_tap.tap.clear();
            for d in &datagrams {
                receiver.from_udp(udp_a, black_box(d), now, &mut into_tap);
            }
            receiver.flush(&mut into_tap);
            into_tap.tap.len()
        })
    });
    g.finish();
}

criterion_group!(benches, engine_bench);
criterion_main!(benches);
