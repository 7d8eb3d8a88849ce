//! What one topology change costs the control plane of a router in a 1,000- and a
//! 5,000-peer mesh (each peer dialling three random others, so about six connections
//! each): unicast routes, every source's broadcast next hops (and, at 1,000, Weave's way
//! of computing them, one search per source), merging one changed entry, encoding it,
//! encoding the whole table (what Weave Net neighbours still get every 30 s) and the
//! table's digest summary.
#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use weave_router::ids::{PeerName, PeerUid, ShortId};
use weave_router::mesh::routes::{self, Graph};
use weave_router::mesh::topology::{Peer, PeerConn, Topology};

fn name(i: usize) -> PeerName {
    PeerName::from_u64(0x0200_0000_0000 + i as u64 + 1).expect("fits 48 bits")
}

/// Peer 0's table of an `n`-peer mesh where each peer dialled three random others and
/// every connection is established at both ends.
fn topology(n: usize) -> Topology {
    let mut rng = ChaCha8Rng::seed_from_u64(n as u64);
    let mut peers: Vec<Peer> = (0..n)
        .map(|i| Peer {
            name: name(i),
            nickname: format!("node-{i}"),
            uid: PeerUid(0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1)),
            version: 10,
            short_id: ShortId((i % 4096) as u16),
            has_short_id: true,
            conns: BTreeMap::new(),
            local_refs: 0,
            history: None,
        })
        .collect();
    for i in 0..n {
        let mut others: Vec<usize> = (0..n).filter(|j| *j != i).collect();
        others.shuffle(&mut rng);
        for &j in others.iter().take(3) {
            let conn = |outbound: bool, k: usize| PeerConn {
                remote_tcp_addr: format!(
                    "10.1.{}.{}:{}",
                    k / 256,
                    k % 256,
                    if outbound { 6783 } else { 40000 + i as u16 }
                ),
                outbound,
                established: true,
            };
            peers[i].conns.insert(name(j), conn(true, j));
            peers[j].conns.insert(name(i), conn(false, i));
        }
    }
    let rest = peers.split_off(1);
    let mut t = Topology::new(peers.pop().expect("peer 0"));
    let entries: Vec<_> = rest.iter().map(Peer::to_entry).collect();
    t.apply_entries(&entries, &mut |_| ShortId(0));
    t
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("mesh_scale");
    g.sample_size(10);
    for n in [1000usize, 5000] {
        let t = topology(n);
        let me = name(0);
        g.bench_with_input(BenchmarkId::new("unicast_routes", n), &t, |b, t| {
            b.iter(|| black_box(routes::unicast(t, me, true)))
        });
        g.bench_with_input(BenchmarkId::new("broadcast_routes_all", n), &t, |b, t| {
            b.iter(|| black_box(Graph::new(t, true).broadcast_all(me)))
        });
        if n <= 1000 {
            g.bench_with_input(
                BenchmarkId::new("broadcast_routes_per_source", n),
                &t,
                |b, t| {
                    b.iter(|| {
                        let all: BTreeMap<PeerName, Vec<PeerName>> = t
                            .peers()
                            .map(|p| (p.name, routes::broadcast(t, me, p.name, true)))
                            .collect();
                        black_box(all)
                    })
                },
            );
        }
        // One peer's entry changes: merge the newer version into the table.
        let victim = name(n / 2);
        let mut entry = t.get(victim).expect("peer").to_entry();
        let mut merged = t.clone();
        g.bench_function(BenchmarkId::new("merge_one_entry", n), |b| {
            b.iter(|| {
                entry.0.version += 1;
                black_box(merged.apply_entries(std::slice::from_ref(&entry), &mut |_| ShortId(0)))
            })
        });
        let one: BTreeSet<PeerName> = [victim].into();
        g.bench_with_input(BenchmarkId::new("encode_one_entry", n), &t, |b, t| {
            b.iter(|| black_box(t.encode(&one)))
        });
        g.bench_with_input(BenchmarkId::new("encode_whole_table", n), &t, |b, t| {
            b.iter(|| black_box(t.encode(&t.names())))
        });
        g.bench_with_input(BenchmarkId::new("summary", n), &t, |b, t| {
            b.iter(|| black_box(t.summary()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
