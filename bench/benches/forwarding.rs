//! Forwarding hot paths: sleeve datagram decode and encode (the 10-frame datagram shape
//! Weave packs ACKs into), MAC lookup in a cache of 10,000 entries, the switching decision
//! for a frame from a peer, and route computation (unicast and one broadcast tree) over a
//! topology of 1,000 peers.
#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weave_router::ids::{PeerName, PeerUid, ShortId};
use weave_router::mesh::routes;
use weave_router::mesh::topology::{Peer, Topology};
use weave_router::switch::{self, Mac, MacCache, Routes};
use weave_router::wire::mesh::{ConnectionSummary, PeerSummary};
use weave_router::wire::sleeve::{encode_packet, SleeveFrame, SleevePacket};

fn name(i: u64) -> PeerName {
    PeerName::from_u64(0x0200_0000_0000 + i).expect("48 bits")
}

fn frame(dst: [u8; 6], src: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f
}

fn sleeve(c: &mut Criterion) {
    let frames: Vec<Vec<u8>> = (0..10)
        .map(|i| frame([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, i], 66))
        .collect();
    let sleeve_frames: Vec<SleeveFrame<'_>> = frames
        .iter()
        .map(|f| SleeveFrame {
            src: name(1),
            dst: name(2),
            frame: f,
        })
        .collect();
    let datagram = encode_packet(name(1), &sleeve_frames).expect("encodes");
    let mut g = c.benchmark_group("sleeve");
    g.throughput(Throughput::Bytes(datagram.len() as u64));
    g.bench_function("decode_10_frames", |b| {
        b.iter(|| {
            let packet = SleevePacket::new_checked(black_box(&datagram[..])).expect("valid");
            packet
                .frames()
                .map(|f| f.expect("valid").frame.len())
                .sum::<usize>()
        })
    });
    g.bench_function("encode_10_frames", |b| {
        b.iter(|| encode_packet(name(1), black_box(&sleeve_frames)).expect("encodes"))
    });
    g.finish();
}

fn macs(c: &mut Criterion) {
    let now = Instant::now();
    let mut cache = MacCache::default();
    for i in 0..10_000u32 {
        let b = i.to_be_bytes();
        cache.learn(
            Mac([2, 0, b[0], b[1], b[2], b[3]]),
            name(u64::from(i % 100)),
            now,
        );
    }
    let routes = Routes {
        ourself: name(0),
        unicast: (1..100).map(|i| (name(i), name(i))).collect(),
        broadcast: BTreeMap::new(),
    };
    let probe = frame([2, 0, 0, 0, 0x13, 0x37], [2, 0, 0, 0, 0x27, 0x0f], 1452);
    let mut g = c.benchmark_group("switch");
    g.throughput(Throughput::Elements(1));
    g.bench_function("mac_lookup_10k", |b| {
        b.iter(|| cache.lookup(black_box(Mac([2, 0, 0, 0, 0x13, 0x37]))))
    });
    g.bench_function("decide_frame_from_peer", |b| {
        b.iter(|| {
            switch::from_peer(
                black_box(&probe),
                name(7),
                name(0),
                &routes,
                &mut cache,
                now,
            )
        })
    });
    g.finish();
}

/// A 1,000-peer topology: a ring with a chord to a pseudo-random peer from each.
fn topology(n: u64) -> Topology {
    let mut edges: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for i in 0..n {
        for j in [(i + 1) % n, (i * 7919 + 13) % n] {
            if i != j {
                edges.entry(i).or_default().push(j);
                edges.entry(j).or_default().push(i);
            }
        }
    }
    let summary = |i: u64| PeerSummary {
        name: name(i),
        nickname: format!("p{i}"),
        uid: i + 1,
        version: 1,
        short_id: (i % 4096) as u16,
        has_short_id: true,
    };
    let conns = |i: u64| -> Vec<ConnectionSummary> {
        let mut v: Vec<u64> = edges.get(&i).cloned().unwrap_or_default();
        v.sort_unstable();
        v.dedup();
        v.into_iter()
            .map(|j| ConnectionSummary {
                name: name(j),
                remote_tcp_addr: format!("10.0.{}.{}:6783", j / 256, j % 256),
                outbound: i < j,
                established: true,
            })
            .collect()
    };
    let me = Peer {
        name: name(0),
        nickname: "p0".into(),
        uid: PeerUid(1),
        version: 1,
        short_id: ShortId(0),
        has_short_id: true,
        conns: BTreeMap::new(),
        local_refs: 1,
        history: None,
    };
    let mut topo = Topology::new(me);
    let entries: Vec<_> = (0..n).map(|i| (summary(i), conns(i))).collect();
    topo.apply_entries(&entries, &mut |_| ShortId(1));
    let ours = conns(0);
    let ourself = topo.ourself_mut();
    for c in ours {
        ourself.conns.insert(
            c.name,
            weave_router::mesh::topology::PeerConn {
                remote_tcp_addr: c.remote_tcp_addr,
                outbound: c.outbound,
                established: true,
            },
        );
    }
    topo
}

fn route_computation(c: &mut Criterion) {
    let topo = topology(1000);
    assert_eq!(routes::unicast(&topo, name(0), true).len(), 1000);
    let mut g = c.benchmark_group("routes_1000_peers");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("unicast", |b| {
        b.iter(|| routes::unicast(black_box(&topo), name(0), true))
    });
    g.bench_function("broadcast_one_source", |b| {
        b.iter(|| routes::broadcast(black_box(&topo), name(0), name(500), true))
    });
    g.finish();
}

criterion_group!(benches, sleeve, macs, route_computation);
criterion_main!(benches);
