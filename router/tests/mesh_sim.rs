//! Deterministic simulations of the mesh control plane on a virtual clock.

mod sim;

use std::collections::BTreeSet;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sim::{assert_routes_match_bfs, connected_to, peer_name, Idx, Sim};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn all(sim: &Sim) -> Vec<Idx> {
    (0..sim.peers.len())
        .filter(|i| sim.peers[*i].mesh.is_some())
        .collect()
}

fn peer_count(sim: &Sim, i: Idx) -> usize {
    sim.mesh(i).topology().len()
}

#[test]
fn two_peers_connect_and_agree() {
    let mut sim = Sim::new(1);
    let a = sim.add_peer(Sim::config(0, true));
    let b = sim.add_peer(Sim::config(1, true));
    sim.connect(b, &[a]);
    let t = sim.run_until_true(Duration::from_millis(10), secs(10), |s| {
        s.agree(&[a, b]) && peer_count(s, a) == 2
    });
    assert!(
        t.is_some(),
        "logs a:\n{}\nlogs b:\n{}",
        sim.dump_logs(a),
        sim.dump_logs(b)
    );
    assert!(connected_to(&sim, a, b) && connected_to(&sim, b, a));
    let status = sim.mesh(a).status(sim.instant());
    assert_eq!(status.peers.len(), 2);
    assert_eq!(status.peers[0].name, peer_name(0), "ourself first");
    assert_eq!(status.connections.len(), 1);
    assert_eq!(status.connections[0].state, "established");
    assert!(!status.connections[0].outbound);
}

#[test]
fn chain_discovers_the_far_end_and_survives_losing_the_middle() {
    let mut sim = Sim::new(2);
    let h1 = sim.add_peer(Sim::config(0, true));
    let h2 = sim.add_peer(Sim::config(1, true));
    let h3 = sim.add_peer(Sim::config(2, true));
    sim.connect(h2, &[h1]);
    sim.connect(h3, &[h2]);
    let t = sim.run_until_true(Duration::from_millis(50), secs(30), |s| {
        connected_to(s, h1, h3) && connected_to(s, h3, h1) && s.agree(&[h1, h2, h3])
    });
    assert!(
        t.is_some(),
        "h1 and h3 never connected directly:\n{}",
        sim.dump_logs(h3)
    );
    for i in [h1, h2, h3] {
        assert_eq!(peer_count(&sim, i), 3);
        assert_eq!(
            sim.mesh(i).connected_peers().count(),
            2,
            "full mesh of three"
        );
    }
    let old_uid = sim.mesh(h1).topology().get(peer_name(1)).unwrap().uid;

    sim.kill_peer(h2);
    let t = sim.run_until_true(Duration::from_millis(50), secs(60), |s| {
        peer_count(s, h1) == 2 && peer_count(s, h3) == 2 && s.agree(&[h1, h3])
    });
    assert!(t.is_some(), "h2 was not collected:\n{}", sim.dump_logs(h1));
    assert!(connected_to(&sim, h1, h3));

    sim.start_peer(h2, Sim::config(1, true));
    sim.connect(h2, &[h1]);
    let t = sim.run_until_true(Duration::from_millis(50), secs(60), |s| {
        s.agree(&[h1, h2, h3])
            && peer_count(s, h1) == 3
            && s.mesh(h2).connected_peers().count() == 2
    });
    assert!(t.is_some(), "h2 did not rejoin:\n{}", sim.dump_logs(h2));
    let new_uid = sim.mesh(h1).topology().get(peer_name(1)).unwrap().uid;
    assert_ne!(
        old_uid, new_uid,
        "the restarted peer is known by its new UID"
    );
    assert_routes_match_bfs(&sim, &[h1, h2, h3]);
}

#[test]
fn simultaneous_dials_leave_one_connection_at_both_ends() {
    let mut sim = Sim::new(3);
    sim.latency = (5, 5);
    let a = sim.add_peer(Sim::config(0, false));
    let b = sim.add_peer(Sim::config(1, false));
    sim.connect(a, &[b]);
    sim.connect(b, &[a]);
    let t = sim.run_until_true(Duration::from_millis(10), secs(60), |s| {
        s.agree(&[a, b]) && connected_to(s, a, b) && connected_to(s, b, a)
    });
    assert!(t.is_some());
    sim.run_until(sim.now + secs(20));
    assert_eq!(sim.mesh(a).connected_peers().count(), 1);
    assert_eq!(sim.mesh(b).connected_peers().count(), 1);
    let sa = sim.mesh(a).status(sim.instant());
    let sb = sim.mesh(b).status(sim.instant());
    let est = |s: &weave_router::mesh::status::RouterStatus| {
        s.connections
            .iter()
            .filter(|c| c.state == "established")
            .count()
    };
    assert_eq!((est(&sa), est(&sb)), (1, 1));
    // Both ends keep the same TCP connection: one side's outbound is the other's inbound.
    let oa = sa
        .connections
        .iter()
        .find(|c| c.state == "established")
        .unwrap()
        .outbound;
    let ob = sb
        .connections
        .iter()
        .find(|c| c.state == "established")
        .unwrap()
        .outbound;
    assert_ne!(oa, ob);
}

#[test]
fn connecting_to_ourself_is_refused_and_never_retried() {
    let mut sim = Sim::new(4);
    let a = sim.add_peer(Sim::config(0, true));
    sim.connect(a, &[a]);
    sim.run_until(secs(600));
    let attempts = sim.peers[a]
        .log
        .iter()
        .filter(|l| l.contains("attempting connection"))
        .count();
    assert_eq!(attempts, 1, "{}", sim.dump_logs(a));
    assert!(sim.peers[a]
        .log
        .iter()
        .any(|l| l.contains("cannot connect to ourself")));
    assert_eq!(peer_count(&sim, a), 1);
}

#[test]
fn a_peer_using_our_name_is_refused_and_never_retried() {
    let mut sim = Sim::new(5);
    let a = sim.add_peer(Sim::config(0, true));
    let mut clash = Sim::config(0, true);
    clash.nickname = "impostor".into();
    let b = sim.add_peer(clash);
    sim.connect(b, &[a]);
    sim.run_until(secs(600));
    assert!(
        sim.peers[b]
            .log
            .iter()
            .any(|l| l.contains("peer names collision")),
        "{}",
        sim.dump_logs(b)
    );
    let attempts = sim.peers[b]
        .log
        .iter()
        .filter(|l| l.contains("attempting connection"))
        .count();
    assert_eq!(attempts, 1);
    assert_eq!(sim.mesh(a).connected_peers().count(), 0);
}

#[test]
fn connection_limit_is_enforced() {
    let mut sim = Sim::new(6);
    let mut cfg = Sim::config(0, false);
    cfg.conn_limit = 2;
    let hub = sim.add_peer(cfg);
    let others: Vec<Idx> = (1..5)
        .map(|i| sim.add_peer(Sim::config(i, false)))
        .collect();
    for o in &others {
        sim.connect(*o, &[hub]);
    }
    sim.run_until(secs(30));
    assert_eq!(sim.mesh(hub).connected_peers().count(), 2);
    assert!(sim.peers[hub]
        .log
        .iter()
        .any(|l| l.contains("Connection limit reached (2)")));
}

#[test]
fn failed_dials_back_off_with_growing_intervals() {
    let mut sim = Sim::new(7);
    let a = sim.add_peer(Sim::config(0, false));
    let mut dead = sim.add_peer(Sim::config(1, false));
    sim.kill_peer(dead);
    dead = dead.min(1);
    sim.connect(a, &[dead]);
    sim.run_until(secs(120));
    let times: Vec<f64> = sim.peers[a]
        .log
        .iter()
        .filter(|l| l.contains("attempting connection"))
        .map(|l| l.split('s').next().unwrap().parse::<f64>().unwrap_or(0.0))
        .collect();
    // 2 s, ×1.5 each time with jitter in [i/2, 3i/2): within 120 s there are a handful of
    // attempts, far fewer than with a fixed 2 s interval.
    assert!(times.len() >= 4 && times.len() <= 12, "{times:?}");
}

/// The big one: 200 peers with random connections, 5% message loss, and a partition that
/// heals. Every peer must end with the same topology and routes equal to a BFS reference.
/// Every third peer keeps to Weave Net's gossip, so digests between weave-routers, Weave's
/// gossip and the two meeting are all exercised.
#[test]
fn two_hundred_peers_with_loss_and_a_healing_partition_converge() {
    const N: usize = 200;
    let mut sim = Sim::new(42);
    sim.keep_logs = false;
    sim.weave_gossip = (0..N).filter(|i| i % 3 == 0).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(4242);
    for i in 0..N {
        sim.add_peer(Sim::config(i, false));
    }
    // Each peer dials three random others: a random graph of mean degree about 6.
    let mut intended: BTreeSet<(Idx, Idx)> = BTreeSet::new();
    for i in 0..N {
        let mut others: Vec<Idx> = (0..N).filter(|j| *j != i).collect();
        others.shuffle(&mut rng);
        let targets: Vec<Idx> = others.into_iter().take(3).collect();
        for t in &targets {
            intended.insert((i.min(*t), i.max(*t)));
        }
        sim.connect(i, &targets);
        // Stagger start-up a little.
        let t = sim.now + Duration::from_millis(rng.gen_range(0..50));
        sim.run_until(t);
    }
    sim.loss = 0.05;
    let everyone = all(&sim);
    let links_up = |s: &Sim| {
        intended
            .iter()
            .all(|(a, b)| connected_to(s, *a, *b) && connected_to(s, *b, *a))
    };

    let t0 = sim.now;
    let m0 = sim.messages;
    let first = sim.run_until_true(Duration::from_millis(100), t0 + secs(600), |s| {
        links_up(s) && s.agree(&everyone)
    });
    let first = first.expect("initial convergence");
    println!(
        "initial convergence: {:.1} simulated s, {} messages ({} KiB)",
        (first - t0).as_secs_f64(),
        sim.messages - m0,
        sim.bytes / 1024
    );
    assert_routes_match_bfs(&sim, &everyone);

    // Partition: peers 0..100 against 100..200, long enough for heartbeats to time out.
    let side: BTreeSet<Idx> = (0..N / 2).collect();
    sim.partition = Some(side.clone());
    let split_at = sim.now;
    sim.run_until(split_at + secs(240));
    // Each side has dropped the other: nobody still lists a peer across the cut.
    for i in 0..N {
        let mine = side.contains(&i);
        for p in sim.mesh(i).topology().peers() {
            let idx = sim::peer_index(p.name);
            assert_eq!(
                side.contains(&idx),
                mine,
                "peer {i} still knows {idx} across the partition"
            );
        }
    }

    sim.partition = None;
    let healed_at = sim.now;
    let m1 = sim.messages;
    let t = sim.run_until_true(Duration::from_millis(100), healed_at + secs(1200), |s| {
        links_up(s) && s.agree(&everyone)
    });
    let t = t.expect("convergence after the partition healed");
    println!(
        "after healing: {:.1} simulated s, {} messages; {} peers, {} links, loss {:.0}%",
        (t - healed_at).as_secs_f64(),
        sim.messages - m1,
        N,
        intended.len(),
        sim.loss * 100.0
    );
    for i in &everyone {
        assert_eq!(peer_count(&sim, *i), N);
    }
    assert_routes_match_bfs(&sim, &everyone);
}

#[test]
fn sleeve_heartbeats_establish_connections_and_verify_the_mtu() {
    let mut sim = Sim::new(8);
    sim.sleeve = true;
    // h1 and h2 spread sleeve traffic over their workers; h3 does not, as Weave Net.
    sim.spread.extend([0, 1]);
    let h1 = sim.add_peer(Sim::config(0, true));
    let h2 = sim.add_peer(Sim::config(1, true));
    let h3 = sim.add_peer(Sim::config(2, true));
    sim.connect(h2, &[h1]);
    sim.connect(h3, &[h2]);
    let t = sim.run_until_true(Duration::from_millis(50), secs(30), |s| {
        s.agree(&[h1, h2, h3])
            && [h1, h2, h3].iter().all(|i| {
                let st = s.mesh(*i).status(s.instant());
                st.connections
                    .iter()
                    .filter(|c| c.state == "established")
                    .count()
                    == 2
                    && st
                        .connections
                        .iter()
                        .all(|c| c.attrs.get("mtu").is_some_and(|m| m == 1438))
            })
    });
    assert!(t.is_some(), "{}", sim.dump_logs(h1));
    let st = sim.mesh(h2).status(sim.instant());
    assert!(st.connections.iter().all(|c| c.info.starts_with("sleeve ")));
    let paths = sim.mesh(h2).sleeve_peers();
    assert_eq!(paths.len(), 2);
    assert!(paths[&peer_name(h1)].spread, "both offer it");
    assert!(!paths[&peer_name(h3)].spread, "h3 does not offer it");
    assert!(sim.mesh(h3).sleeve_peers().values().all(|p| !p.spread));
    assert!(sim.peers[h1]
        .log
        .iter()
        .any(|l| l.contains("Effective MTU verified at 1438")));
    assert_routes_match_bfs(&sim, &[h1, h2, h3]);

    // Heartbeats that stop arriving end the connection after 60 s; it is then redialled.
    sim.loss = 1.0;
    sim.run_until(sim.now + secs(70));
    assert!(
        sim.peers[h1]
            .log
            .iter()
            .any(|l| l.contains("no UDP heartbeat for 60s")),
        "{}",
        sim.dump_logs(h1)
    );
}
