//! The mesh with a password, on the simulator's virtual clock: peers with the same password
//! connect over sealed TCP streams and agree on one session key per connection; a wrong
//! password, or none, is refused with a log line that says why; trusted subnets leave the
//! sleeve unencrypted only when both ends trust each other.

mod sim;

use std::time::Duration;

use sim::{Idx, Sim};
use weave_router::mesh::Encryption;

fn encryption(password: &str, trusted: &[&str]) -> Encryption {
    Encryption {
        password: zeroize::Zeroizing::new(password.as_bytes().to_vec()),
        trusted_subnets: trusted.iter().map(|s| s.parse().unwrap()).collect(),
        fast_cipher: true,
    }
}

/// A world of `n` sleeve peers, `setup` choosing each one's encryption.
fn world(n: usize, setup: impl Fn(Idx) -> Option<Encryption>) -> Sim {
    let mut sim = Sim::new(7);
    sim.sleeve = true;
    for i in 0..n {
        if let Some(e) = setup(i) {
            sim.encryption.insert(i, e);
        }
        sim.add_peer(Sim::config(i, false));
    }
    sim
}

fn connection_infos(sim: &Sim, i: Idx) -> Vec<String> {
    sim.mesh(i)
        .status(sim.instant())
        .connections
        .into_iter()
        .map(|c| format!("{} {}", c.state, c.info))
        .collect()
}

#[test]
fn peers_with_one_password_connect_and_share_a_session_per_connection() {
    let mut sim = world(3, |_| Some(encryption("s3cret", &[])));
    sim.connect(1, &[0]);
    sim.connect(2, &[1]);
    sim.run_until(Duration::from_secs(10));

    assert!(sim.agree(&[0, 1, 2]), "{}", sim.dump_logs(1));
    assert_eq!(sim.mesh(0).topology().len(), 3, "gossip crossed a relay");
    let status = sim.mesh(1).status(sim.instant());
    assert!(status.encryption);
    let infos = connection_infos(&sim, 1);
    assert_eq!(infos.len(), 2);
    for info in &infos {
        assert!(info.starts_with("established encrypted  "), "{info}");
    }
    // Each end of a connection holds the same key, with opposite polarities.
    let (n0, n1) = (sim.peers[0].name, sim.peers[1].name);
    let s01 = &sim.mesh(0).sleeve_sessions()[&n1];
    let s10 = &sim.mesh(1).sleeve_sessions()[&n0];
    assert_eq!(s01.key.as_bytes(), s10.key.as_bytes());
    assert_ne!(s01.outbound, s10.outbound);
    // Both are weave-routers: they agree on the fast cipher, and say so.
    assert!(s01.aead && s10.aead);
    for info in &infos {
        assert!(info.ends_with("(cipher: aes-256-gcm)"), "{info}");
    }
    // Another connection has another key.
    let s12 = &sim.mesh(1).sleeve_sessions()[&sim.peers[2].name];
    assert_ne!(s12.key.as_bytes(), s10.key.as_bytes());
}

#[test]
fn a_wrong_password_is_refused_with_the_reason() {
    let mut sim = world(2, |i| {
        Some(encryption(if i == 0 { "right" } else { "wrong" }, &[]))
    });
    sim.connect(1, &[0]);
    sim.run_until(Duration::from_secs(5));

    assert!(sim.mesh(0).connected_peers().next().is_none());
    for i in [0, 1] {
        let log = sim.dump_logs(i);
        assert!(
            log.contains("cannot decrypt the peer's first message: its password differs from ours"),
            "peer {i}: {log}"
        );
    }
}

#[test]
fn a_plain_peer_and_an_encrypted_one_refuse_each_other() {
    let mut sim = world(2, |i| (i == 0).then(|| encryption("s3cret", &[])));
    sim.connect(1, &[0]);
    sim.run_until(Duration::from_secs(5));

    assert!(sim.mesh(0).connected_peers().next().is_none());
    assert!(sim
        .dump_logs(0)
        .contains("password specified, but peer requested an unencrypted connection"));
    assert!(sim
        .dump_logs(1)
        .contains("no password specified, but peer requested an encrypted connection"));
}

#[test]
fn a_trusted_pair_talks_plain_sleeve_but_one_sided_trust_does_not() {
    // The simulator's peers live in 10.1.0.0/16; peer 2 trusts nobody.
    let mut sim = world(3, |i| {
        let trusted: &[&str] = if i == 2 { &[] } else { &["10.1.0.0/16"] };
        Some(encryption("s3cret", trusted))
    });
    sim.connect(1, &[0]);
    sim.connect(2, &[0]);
    sim.run_until(Duration::from_secs(10));

    assert!(sim.agree(&[0, 1, 2]));
    let (n1, n2) = (sim.peers[1].name, sim.peers[2].name);
    let sessions = sim.mesh(0).sleeve_sessions();
    assert!(!sessions.contains_key(&n1), "both trust: plain sleeve");
    assert!(
        sessions.contains_key(&n2),
        "peer 2 does not trust us: encrypted"
    );
    let infos = connection_infos(&sim, 0);
    assert!(
        infos
            .iter()
            .any(|i| i.starts_with("established unencrypted") && i.contains("peer1")),
        "{infos:?}"
    );
    assert!(
        infos
            .iter()
            .any(|i| i.starts_with("established encrypted") && i.contains("peer2")),
        "{infos:?}"
    );
    assert_eq!(
        sim.mesh(0).status(sim.instant()).trusted_subnets,
        vec!["10.1.0.0/16".to_string()]
    );
}

#[test]
fn a_router_that_keeps_to_weaves_format_gets_it() {
    let mut sim = world(2, |i| {
        let mut e = encryption("s3cret", &[]);
        e.fast_cipher = i == 0;
        Some(e)
    });
    sim.connect(1, &[0]);
    sim.run_until(Duration::from_secs(10));

    assert!(sim.agree(&[0, 1]));
    let s = &sim.mesh(0).sleeve_sessions()[&sim.peers[1].name];
    assert!(!s.aead, "only one end offers the fast cipher");
    let infos = connection_infos(&sim, 0);
    assert!(
        infos[0].starts_with("established encrypted") && !infos[0].contains("cipher"),
        "{infos:?}"
    );
}
