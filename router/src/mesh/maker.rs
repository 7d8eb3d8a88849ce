//! The connection maker: which addresses to dial and when, as Weave's does it.
//!
//! Targets are the direct peers (command line, `POST /connect`) and, with discovery, the
//! addresses other peers gossip for peers we are not connected to. A failed target is
//! retried after `interval/2 + random(interval)`, the interval growing ×1.5 from 2 s up to
//! 6 min; a connection that lived over a minute is retried at once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::ids::PeerName;
use crate::mesh::topology::Topology;

/// First retry interval.
pub const INITIAL_INTERVAL: Duration = Duration::from_secs(2);
/// Longest retry interval.
pub const MAX_INTERVAL: Duration = Duration::from_secs(6 * 60);
/// A connection that lasted this long is retried at once when it ends.
pub const RESET_AFTER: Duration = Duration::from_secs(60);

/// Where a target stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    /// Waiting for its retry time.
    Waiting,
    /// A dial or handshake is under way.
    Attempting,
    /// Connected.
    Connected,
    /// A direct peer we are connected to by other means.
    Suspended,
}

/// One address the maker tries to keep connected.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its state.
    pub state: TargetState,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When to try next; `None` means never (self-connection, name collision).
    pub try_after: Option<Instant>,
    /// The current retry interval.
    pub interval: Duration,
}

impl Target {
    fn new(now: Instant) -> Self {
        Target {
            state: TargetState::Waiting,
            last_error: None,
            try_after: Some(now),
            interval: INITIAL_INTERVAL,
        }
    }

    fn try_now(&mut self, now: Instant) {
        self.try_after = Some(now);
        self.interval = INITIAL_INTERVAL;
    }

    fn try_later(&mut self, now: Instant, rng: &mut impl Rng) {
        let jitter = rng.gen_range(0..self.interval.as_nanos().max(1) as u64);
        self.try_after = Some(now + self.interval / 2 + Duration::from_nanos(jitter));
        self.interval = (self.interval * 3 / 2).min(MAX_INTERVAL);
    }

    fn try_never(&mut self) {
        self.try_after = None;
        self.interval = MAX_INTERVAL;
    }
}

/// A peer address given on the command line or to `POST /connect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectPeer {
    /// The address as the operator wrote it (shown by `/status/targets`).
    pub text: String,
    /// Where to dial (resolved, with the mesh port when none was given).
    pub addr: SocketAddr,
    /// Whether the operator gave a port. A peer given without one is not dialled while it
    /// is connected to us from that IP, so two peers that list each other keep one
    /// connection instead of replacing it with every retry.
    pub port_given: bool,
}

impl DirectPeer {
    /// A direct peer from an address; `default_port` tells whether a port was given.
    pub fn new(text: impl Into<String>, addr: SocketAddr, default_port: u16) -> Self {
        DirectPeer {
            text: text.into(),
            addr,
            port_given: addr.port() != default_port,
        }
    }
}

/// One of our live connections, as the maker needs to see it.
#[derive(Debug, Clone)]
pub struct OurConn {
    /// The remote peer.
    pub peer: PeerName,
    /// Its TCP address (dialled, or seen for inbound).
    pub addr: SocketAddr,
    /// Whether we dialled.
    pub outbound: bool,
}

/// How a connection ended, for the retry decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// An ordinary failure: back off.
    Failed,
    /// It was ourself, or a peer using our name: never retry.
    Never,
}

/// A dial the mesh should start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Where.
    pub addr: SocketAddr,
    /// Whether an unknown peer may answer (direct targets) or only one we know (discovered).
    pub accept_new_peer: bool,
}

/// The connection maker's state.
#[derive(Debug)]
pub struct ConnectionMaker {
    discovery: bool,
    port: u16,
    direct: BTreeMap<String, DirectPeer>,
    targets: BTreeMap<SocketAddr, Target>,
}

impl ConnectionMaker {
    /// A maker with no targets.
    pub fn new(port: u16, discovery: bool) -> Self {
        ConnectionMaker {
            discovery,
            port,
            direct: BTreeMap::new(),
            targets: BTreeMap::new(),
        }
    }

    /// Adds direct peers; with `replace` the old ones are dropped first. Known targets are
    /// retried at once.
    pub fn connect(&mut self, peers: &[DirectPeer], replace: bool, now: Instant) {
        if replace {
            self.direct.clear();
        }
        for peer in peers {
            self.direct.insert(peer.text.clone(), peer.clone());
            if let Some(t) = self.targets.get_mut(&peer.addr) {
                t.try_now(now);
            }
        }
    }

    /// Removes direct peers, matched by text or address (existing connections stay).
    pub fn forget(&mut self, peers: &[DirectPeer]) {
        self.direct
            .retain(|text, d| !peers.iter().any(|p| p.text == *text || p.addr == d.addr));
    }

    /// The direct peers as given, for `/status/targets`.
    pub fn direct_peers(&self) -> impl Iterator<Item = &str> {
        self.direct.keys().map(String::as_str)
    }

    /// All targets, for `/status/connections`.
    pub fn targets(&self) -> impl Iterator<Item = (&SocketAddr, &Target)> {
        self.targets.iter()
    }

    /// Works out which targets are valid, which to dial now, and when to look again.
    pub fn check(
        &mut self,
        ours: &[OurConn],
        topo: &Topology,
        now: Instant,
    ) -> (Vec<Attempt>, Option<Instant>) {
        let connected_peers: BTreeSet<PeerName> = ours.iter().map(|c| c.peer).collect();
        let connected_addrs: BTreeSet<SocketAddr> = ours.iter().map(|c| c.addr).collect();
        let inbound_ips: BTreeSet<IpAddr> = ours
            .iter()
            .filter(|c| !c.outbound)
            .map(|c| c.addr.ip())
            .collect();
        let direct: BTreeSet<SocketAddr> = self.direct.values().map(|d| d.addr).collect();
        let mut valid = BTreeSet::new();
        let mut add = |targets: &mut BTreeMap<SocketAddr, Target>, addr: SocketAddr| {
            if connected_addrs.contains(&addr) {
                return;
            }
            valid.insert(addr);
            targets.entry(addr).or_insert_with(|| Target::new(now));
        };
        for d in self.direct.values() {
            if d.port_given || !inbound_ips.contains(&d.addr.ip()) {
                add(&mut self.targets, d.addr);
            }
        }
        if self.discovery {
            for addr in discovered(topo, &connected_peers, self.port) {
                add(&mut self.targets, addr);
            }
        }
        let mut attempts = Vec::new();
        let mut next: Option<Instant> = None;
        let direct = &direct;
        self.targets.retain(|addr, t| {
            if !matches!(t.state, TargetState::Waiting | TargetState::Suspended) {
                return true;
            }
            if !valid.contains(addr) {
                if direct.contains(addr) {
                    t.state = TargetState::Suspended;
                    return true;
                }
                return false;
            }
            t.state = TargetState::Waiting;
            let Some(at) = t.try_after else {
                return true;
            };
            if at <= now {
                t.state = TargetState::Attempting;
                attempts.push(Attempt {
                    addr: *addr,
                    accept_new_peer: direct.contains(addr),
                });
            } else {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
            true
        });
        (attempts, next)
    }

    /// A dial failed (or was refused before a connection existed): back off.
    pub fn attempt_failed(
        &mut self,
        addr: SocketAddr,
        error: &str,
        now: Instant,
        rng: &mut impl Rng,
    ) {
        if let Some(t) = self.targets.get_mut(&addr) {
            t.state = TargetState::Waiting;
            t.last_error = Some(error.to_string());
            t.try_later(now, rng);
        }
    }

    /// An outbound connection completed its handshake and was added.
    pub fn connection_created(&mut self, addr: SocketAddr) {
        if let Some(t) = self.targets.get_mut(&addr) {
            t.state = TargetState::Connected;
        }
    }

    /// An outbound connection (or its handshake) ended.
    pub fn connection_terminated(
        &mut self,
        addr: SocketAddr,
        error: &str,
        how: Termination,
        now: Instant,
        rng: &mut impl Rng,
    ) {
        let Some(t) = self.targets.get_mut(&addr) else {
            return;
        };
        t.state = TargetState::Waiting;
        t.last_error = Some(error.to_string());
        match how {
            Termination::Never => t.try_never(),
            Termination::Failed => match t.try_after {
                Some(at) if now > at + RESET_AFTER => t.try_now(now),
                _ => t.try_later(now, rng),
            },
        }
    }
}

/// Addresses other peers gossip for peers we are not connected to: the address they
/// dialled, or for inbound connections the remote's IP with our mesh port.
fn discovered(topo: &Topology, connected: &BTreeSet<PeerName>, port: u16) -> Vec<SocketAddr> {
    let us = topo.our_name();
    let mut out = Vec::new();
    for peer in topo.peers() {
        if peer.name == us {
            continue;
        }
        for (other, conn) in &peer.conns {
            if *other == us || connected.contains(other) {
                continue;
            }
            let Ok(mut addr) = conn.remote_tcp_addr.parse::<SocketAddr>() else {
                continue;
            };
            if !conn.outbound {
                addr.set_port(port);
            }
            out.push(addr);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn backoff_grows_by_half_with_jitter_and_caps() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let now = Instant::now();
        let mut t = Target::new(now);
        let mut expected = INITIAL_INTERVAL;
        for _ in 0..30 {
            t.try_later(now, &mut rng);
            let wait = t.try_after.unwrap() - now;
            assert!(
                wait >= expected / 2 && wait < expected * 3 / 2,
                "{wait:?} vs {expected:?}"
            );
            expected = (expected * 3 / 2).min(MAX_INTERVAL);
            assert_eq!(t.interval, expected);
        }
        assert_eq!(t.interval, MAX_INTERVAL);
    }

    #[test]
    fn long_lived_connection_is_retried_at_once_and_self_never() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let now = Instant::now();
        let a = addr("10.0.0.2:6783");
        let mut m = ConnectionMaker::new(6783, true);
        m.connect(&[DirectPeer::new("10.0.0.2", a, 6783)], false, now);
        let me = crate::mesh::topology::Peer {
            name: PeerName::from_u64(1).unwrap(),
            nickname: String::new(),
            uid: crate::ids::PeerUid(1),
            version: 0,
            short_id: crate::ids::ShortId(1),
            has_short_id: true,
            conns: BTreeMap::new(),
            local_refs: 0,
            history: None,
        };
        let topo = Topology::new(me);
        let (attempts, _) = m.check(&[], &topo, now);
        assert_eq!(
            attempts,
            vec![Attempt {
                addr: a,
                accept_new_peer: true
            }]
        );
        m.connection_created(a);
        let later = now + Duration::from_secs(120);
        m.connection_terminated(a, "eof", Termination::Failed, later, &mut rng);
        let (attempts, _) = m.check(&[], &topo, later);
        assert_eq!(
            attempts.len(),
            1,
            "retried at once after a long-lived connection"
        );
        m.connection_terminated(a, "self", Termination::Never, later, &mut rng);
        let (attempts, next) = m.check(&[], &topo, later + MAX_INTERVAL * 10);
        assert!(attempts.is_empty() && next.is_none());
    }
}
