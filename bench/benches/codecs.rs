//! Mesh codec throughput: a 200-peer topology update (the size of a full-state gossip in a
//! 200-node cluster) and a connection's feature map, each encoded and decoded.
#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weave_router::ids::PeerName;
use weave_router::wire::mesh::{
    decode_features, decode_topology, encode_features, encode_topology, ConnectionSummary, Message,
    PeerSummary, TopologyEntry,
};

const PEERS: u64 = 200;
const CONNS_PER_PEER: u64 = 4;

fn name(i: u64) -> PeerName {
    PeerName::from_u64(0xaa00_0000_0000 + i).expect("fits 48 bits")
}

/// Every peer connected to its next few neighbours on a ring, like a meshed cluster.
fn topology() -> Vec<TopologyEntry> {
    (0..PEERS)
        .map(|i| {
            let peer = PeerSummary {
                name: name(i),
                nickname: format!("node-{i:03}"),
                uid: 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i + 1),
                version: 1000 + i,
                short_id: (i * 37 % 4096) as u16,
                has_short_id: true,
            };
            let conns = (1..=CONNS_PER_PEER)
                .map(|d| {
                    let j = (i + d) % PEERS;
                    ConnectionSummary {
                        name: name(j),
                        remote_tcp_addr: format!("10.0.{}.{}:6783", j / 250, j % 250 + 1),
                        outbound: d % 2 == 0,
                        established: true,
                    }
                })
                .collect();
            (peer, conns)
        })
        .collect()
}

fn features() -> BTreeMap<String, String> {
    [
        ("PeerNameFlavour", "mac"),
        ("Name", "aa:00:00:00:00:02"),
        ("NickName", "node-002"),
        ("ShortID", "3422"),
        ("UID", "10347548252719273627"),
        ("ConnID", "14611901497816135056"),
        ("Trusted", "false"),
        ("Overlays", "fastdp sleeve"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn topology_codec(c: &mut Criterion) {
    let entries = topology();
    let payload = encode_topology(&entries);
    let body = Message::Gossip {
        channel: "topology".into(),
        src: name(0),
        payload: payload.clone(),
    }
    .emit();

    let mut g = c.benchmark_group("topology_200_peers");
    g.throughput(Throughput::Bytes(payload.len() as u64));
    g.bench_function("encode", |b| {
        b.iter(|| encode_topology(black_box(&entries)))
    });
    g.bench_function("decode", |b| {
        b.iter(|| decode_topology(black_box(&payload)).expect("valid payload"))
    });
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("parse_gossip_and_decode", |b| {
        b.iter(|| {
            let Ok(Message::Gossip { payload, .. }) = Message::parse(black_box(&body)) else {
                unreachable!("a gossip body");
            };
            decode_topology(&payload).expect("valid payload")
        })
    });
    g.finish();
}

fn feature_codec(c: &mut Criterion) {
    let features = features();
    let body = encode_features(&features);

    let mut g = c.benchmark_group("feature_map");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("encode", |b| {
        b.iter(|| encode_features(black_box(&features)))
    });
    g.bench_function("decode", |b| {
        b.iter(|| decode_features(black_box(&body)).expect("valid map"))
    });
    g.finish();
}

criterion_group!(benches, topology_codec, feature_codec);
criterion_main!(benches);
