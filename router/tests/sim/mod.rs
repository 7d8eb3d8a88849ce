//! A deterministic network simulator for [`Mesh`]: peers on a virtual clock, TCP-like
//! links with latency and in-order delivery, message loss and partitions.
//!
//! Each peer may run an [`App`] beside its mesh (the IPAM allocator, for instance): the
//! simulator starts and stops it with the peer's process and steps it after every input to
//! the mesh and on its own timer, before the mesh's commands go out, as the daemon's shell
//! does. Mesh-only simulations use `()`, which does nothing.

#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use weave_router::ids::{PeerName, PeerUid, UNKNOWN_PEER_NAME};
use weave_router::mesh::{Command, ConnKey, DirectPeer, Mesh, MeshConfig};

/// What runs beside a peer's mesh, in the same process.
pub trait App {
    /// The peer's process (re)started with this mesh (nothing has connected yet).
    fn start(&mut self, _mesh: &mut Mesh, _now: Instant) {}
    /// The peer's process died.
    fn stop(&mut self) {}
    /// After every input to the mesh, and when [`App::poll_timeout`] is due: take the
    /// mesh's channel events, run timers, hand output to the mesh.
    fn step(&mut self, _mesh: &mut Mesh, _now: Instant) {}
    /// When `step` next has work of its own.
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

impl App for () {}

/// Index of a simulated peer.
pub type Idx = usize;

/// One end of a link: which peer, which of its connection keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct End {
    pub peer: Idx,
    pub key: ConnKey,
}

#[derive(Debug)]
enum Ev {
    Timer(Idx),
    Connect {
        from: End,
        to: Idx,
    },
    DialFailed {
        from: End,
        why: &'static str,
    },
    Data {
        to: End,
        bytes: Vec<u8>,
    },
    Closed {
        to: End,
    },
    Udp {
        to: Idx,
        from: SocketAddr,
        datagram: Vec<u8>,
    },
}

pub struct SimPeer<A> {
    pub mesh: Option<Mesh>,
    pub app: A,
    pub addr: SocketAddr,
    pub name: PeerName,
    pub log: Vec<String>,
    timer_at: Option<Duration>,
}

/// The simulated world.
pub struct Sim<A: App = ()> {
    pub base: Instant,
    pub now: Duration,
    pub peers: Vec<SimPeer<A>>,
    rng: ChaCha8Rng,
    queue: BinaryHeap<Reverse<(Duration, u64)>>,
    events: BTreeMap<u64, Ev>,
    seq: u64,
    links: BTreeMap<End, End>,
    last_delivery: BTreeMap<End, Duration>,
    sends: BTreeMap<End, u64>,
    /// Probability that a message after the handshake is lost.
    pub loss: f64,
    /// Peers on side A of a partition (None: no partition).
    pub partition: Option<BTreeSet<Idx>>,
    pub latency: (u64, u64),
    pub messages: u64,
    pub bytes: u64,
    /// Bytes each peer has sent (TCP and UDP), by index.
    pub sent: Vec<u64>,
    /// Messages and bytes by kind: handshake, heartbeat, gossip by channel (the digest
    /// channel by message), sleeve, ...
    pub by_kind: BTreeMap<String, (u64, u64)>,
    /// Message bytes queued for delivery.
    queued_bytes: usize,
    /// Entries sent on the digest channel: whole, and as changes.
    pub entries_sent: (u64, u64),
    pub keep_logs: bool,
    /// Run every new peer's sleeve (UDP heartbeats decide establishment).
    pub sleeve: bool,
    /// With `sleeve`: the peers that offer to spread sleeve traffic over their workers.
    pub spread: std::collections::BTreeSet<Idx>,
    /// Whether new peers offer topology digests ([`Mesh::with_topology_digest`]), as the
    /// daemon's do by default...
    pub topology_digest: bool,
    /// ...except these, which keep to Weave Net's topology gossip.
    pub weave_gossip: BTreeSet<Idx>,
    /// Peers that run with a password (and trusted subnets).
    pub encryption: BTreeMap<Idx, weave_router::mesh::Encryption>,
}

/// The most message bytes the world holds in flight at once; more is a storm.
const MAX_QUEUED_BYTES: usize = 2 << 30;

impl Ev {
    /// The message bytes it carries.
    fn len(&self) -> usize {
        match self {
            Ev::Data { bytes, .. } => bytes.len(),
            Ev::Udp { datagram, .. } => datagram.len(),
            _ => 0,
        }
    }
}

pub fn peer_name(i: Idx) -> PeerName {
    PeerName::from_u64(0x0200_0000_0000 + i as u64 + 1).unwrap()
}

/// The index of the simulated peer named `name` (the inverse of [`peer_name`]).
pub fn peer_index(name: PeerName) -> Idx {
    (name.as_u64() - 0x0200_0000_0000 - 1) as usize
}

pub fn peer_addr(i: Idx) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(10, 1, (i >> 8) as u8, (i & 255) as u8),
        6783,
    ))
}

impl Sim<()> {
    /// A world of mesh-only peers.
    pub fn new(seed: u64) -> Self {
        Sim::with_apps(seed)
    }

    pub fn config(i: Idx, discovery: bool) -> MeshConfig {
        MeshConfig {
            name: peer_name(i),
            nickname: format!("peer{i}"),
            uid: PeerUid(0),
            port: 6783,
            conn_limit: 200,
            discovery,
            overlays: vec!["sleeve".into()],
        }
    }
}

impl<A: App + Default> Sim<A> {
    /// Adds a peer running `A::default()` beside its mesh.
    pub fn add_peer(&mut self, config: MeshConfig) -> Idx {
        self.add_peer_with(config, A::default())
    }
}

impl<A: App> Sim<A> {
    /// A world whose peers run an `A` each.
    pub fn with_apps(seed: u64) -> Self {
        Sim {
            base: Instant::now(),
            now: Duration::ZERO,
            peers: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            seq: 0,
            links: BTreeMap::new(),
            last_delivery: BTreeMap::new(),
            sends: BTreeMap::new(),
            loss: 0.0,
            partition: None,
            latency: (1, 10),
            messages: 0,
            bytes: 0,
            sent: Vec::new(),
            by_kind: BTreeMap::new(),
            queued_bytes: 0,
            entries_sent: (0, 0),
            keep_logs: true,
            sleeve: false,
            spread: Default::default(),
            topology_digest: true,
            weave_gossip: BTreeSet::new(),
            encryption: BTreeMap::new(),
        }
    }

    /// Adds a peer (its UID drawn from the simulator's seed) running `app`, and returns
    /// its index.
    pub fn add_peer_with(&mut self, mut config: MeshConfig, app: A) -> Idx {
        let i = self.peers.len();
        let addr = peer_addr(i);
        self.peers.push(SimPeer {
            mesh: None,
            app,
            addr,
            name: config.name,
            log: Vec::new(),
            timer_at: None,
        });
        self.sent.push(0);
        config.uid = PeerUid(self.rng.gen());
        self.start_peer(i, config);
        i
    }

    /// (Re)starts a peer's process with `config`.
    pub fn start_peer(&mut self, i: Idx, mut config: MeshConfig) {
        if config.uid == PeerUid(0) {
            config.uid = PeerUid(self.rng.gen());
        }
        self.peers[i].name = config.name;
        let seed = self.rng.gen();
        let mut mesh = Mesh::new(config, seed, self.instant());
        if let Some(e) = self.encryption.get(&i) {
            mesh = mesh.with_encryption(e.clone());
        }
        if self.topology_digest && !self.weave_gossip.contains(&i) {
            mesh = mesh.with_topology_digest();
        }
        if self.sleeve {
            mesh = mesh.with_sleeve(1500);
            if self.spread.contains(&i) {
                mesh = mesh.with_sleeve_spread();
            }
        }
        let now = self.instant();
        self.peers[i].app.start(&mut mesh, now);
        self.peers[i].mesh = Some(mesh);
        self.after_call(i);
    }

    /// Kills a peer's process: every link of it closes at once (the kernel resets them).
    pub fn kill_peer(&mut self, i: Idx) {
        if self.peers[i].mesh.take().is_some() {
            self.peers[i].app.stop();
        }
        let ends: Vec<(End, End)> = self
            .links
            .iter()
            .filter(|(a, _)| a.peer == i)
            .map(|(a, b)| (*a, *b))
            .collect();
        for (a, b) in ends {
            self.links.remove(&a);
            self.links.remove(&b);
            let at = self.now + self.latency();
            self.push(at, Ev::Closed { to: b });
        }
    }

    pub fn instant(&self) -> Instant {
        self.base + self.now
    }

    pub fn mesh(&self, i: Idx) -> &Mesh {
        self.peers[i].mesh.as_ref().expect("peer is running")
    }

    /// Calls into a running peer's app (a request from outside, say), then lets the app and
    /// the mesh send what it caused. `None` when the peer is not running.
    pub fn call<R>(
        &mut self,
        i: Idx,
        f: impl FnOnce(&mut A, &mut Mesh, Instant) -> R,
    ) -> Option<R> {
        let now = self.instant();
        let p = &mut self.peers[i];
        let mesh = p.mesh.as_mut()?;
        let out = f(&mut p.app, mesh, now);
        self.after_call(i);
        Some(out)
    }

    pub fn connect(&mut self, i: Idx, targets: &[Idx]) {
        let addrs: Vec<DirectPeer> = targets
            .iter()
            .map(|t| {
                // A peer not started yet has the address it will have.
                let addr = peer_addr(*t);
                DirectPeer::new(addr.ip().to_string(), addr, 6783)
            })
            .collect();
        let now = self.instant();
        if let Some(m) = self.peers[i].mesh.as_mut() {
            m.connect(&addrs, false, now);
        }
        self.after_call(i);
    }

    fn latency(&mut self) -> Duration {
        Duration::from_millis(self.rng.gen_range(self.latency.0..=self.latency.1))
    }

    fn push(&mut self, at: Duration, ev: Ev) {
        // A storm (messages multiplying faster than they are delivered) ends the run here
        // with what was being sent, rather than in memory exhaustion.
        self.queued_bytes += ev.len();
        assert!(
            self.queued_bytes < MAX_QUEUED_BYTES,
            "message storm: {} MB in {} events queued at {:.3} virtual s; sent by kind {:?}",
            self.queued_bytes >> 20,
            self.queue.len(),
            self.now.as_secs_f64(),
            self.by_kind
        );
        self.seq += 1;
        self.events.insert(self.seq, ev);
        self.queue.push(Reverse((at, self.seq)));
    }

    fn cut(&self, a: Idx, b: Idx) -> bool {
        match &self.partition {
            Some(side) => side.contains(&a) != side.contains(&b),
            None => false,
        }
    }

    /// Steps a peer's app, drains its mesh's commands and logs, and arms its timer.
    fn after_call(&mut self, i: Idx) {
        let now = self.instant();
        let p = &mut self.peers[i];
        let Some(m) = p.mesh.as_mut() else {
            return;
        };
        p.app.step(m, now);
        let app_next = p.app.poll_timeout();
        let mut cmds = Vec::new();
        while let Some(c) = m.poll_command() {
            cmds.push(c);
        }
        let mut lines = Vec::new();
        while let Some(e) = m.poll_event() {
            if self.keep_logs {
                lines.push(format!("{:.3}s {}", self.now.as_secs_f64(), e));
            }
        }
        let next = match (m.poll_timeout(), app_next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .map(|t| t.saturating_duration_since(self.base).max(self.now));
        self.peers[i].log.extend(lines);
        for c in cmds {
            match c {
                Command::Dial { conn, addr } => {
                    let from = End { peer: i, key: conn };
                    let at = self.now + self.latency();
                    let target = self.peers.iter().position(|p| p.addr == addr);
                    match target {
                        Some(t) if self.peers[t].mesh.is_some() && !self.cut(i, t) && t != i => {
                            self.push(at, Ev::Connect { from, to: t })
                        }
                        Some(t) if t == i => self.push(at, Ev::Connect { from, to: t }),
                        _ => self.push(
                            at,
                            Ev::DialFailed {
                                from,
                                why: "connect: connection refused",
                            },
                        ),
                    }
                }
                Command::Send { conn, bytes } => {
                    let from = End { peer: i, key: conn };
                    let Some(&to) = self.links.get(&from) else {
                        continue;
                    };
                    self.messages += 1;
                    self.bytes += bytes.len() as u64;
                    self.sent[i] += bytes.len() as u64;
                    // The handshake (header, flag, feature map) is never lost: a TCP
                    // connection either delivers it or fails. Loss models messages that
                    // vanish afterwards, which the gossip must survive.
                    let sent = self.sends.entry(from).or_insert(0);
                    *sent += 1;
                    let lossy = *sent > 3;
                    let kind = if lossy {
                        kind_of(&bytes)
                    } else {
                        "handshake".into()
                    };
                    if kind == "gossip topology.digest 4" {
                        let (full, changes) = digest_entries(&bytes);
                        self.entries_sent.0 += full;
                        self.entries_sent.1 += changes;
                    }
                    let k = self.by_kind.entry(kind).or_default();
                    k.0 += 1;
                    k.1 += bytes.len() as u64;
                    if self.cut(i, to.peer) || (lossy && self.rng.gen_bool(self.loss)) {
                        continue;
                    }
                    let at = (self.now + self.latency())
                        .max(*self.last_delivery.get(&to).unwrap_or(&Duration::ZERO));
                    self.last_delivery.insert(to, at);
                    self.push(at, Ev::Data { to, bytes });
                }
                // The simulated routers run no fast datapath.
                Command::SendFastdp { .. } => {}
                Command::SendUdp(udp) => {
                    self.messages += 1;
                    self.bytes += udp.datagram.len() as u64;
                    self.sent[i] += udp.datagram.len() as u64;
                    let Some(t) = self.peers.iter().position(|p| p.addr == udp.to) else {
                        continue;
                    };
                    if self.cut(i, t) || self.rng.gen_bool(self.loss) {
                        continue;
                    }
                    let at = self.now + self.latency();
                    let from = self.peers[i].addr;
                    self.push(
                        at,
                        Ev::Udp {
                            to: t,
                            from,
                            datagram: udp.datagram,
                        },
                    );
                }
                Command::Close { conn } => {
                    let from = End { peer: i, key: conn };
                    let Some(to) = self.links.remove(&from) else {
                        continue;
                    };
                    self.links.remove(&to);
                    if !self.cut(i, to.peer) {
                        let at = (self.now + self.latency())
                            .max(*self.last_delivery.get(&to).unwrap_or(&Duration::ZERO));
                        self.push(at, Ev::Closed { to });
                    }
                }
            }
        }
        if let Some(t) = next {
            let p = &mut self.peers[i];
            if p.timer_at.is_none_or(|old| t < old || old < self.now) {
                p.timer_at = Some(t);
                self.push(t, Ev::Timer(i));
            }
        }
    }

    /// Runs the world until virtual time `until`.
    pub fn run_until(&mut self, until: Duration) {
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > until {
                break;
            }
            self.queue.pop();
            self.now = at;
            let ev = self.events.remove(&seq).expect("queued event");
            self.queued_bytes -= ev.len();
            self.dispatch(ev);
        }
        self.now = until;
    }

    /// Runs in steps of `step` until `done` holds (returns the time) or `limit` passes.
    pub fn run_until_true(
        &mut self,
        step: Duration,
        limit: Duration,
        mut done: impl FnMut(&Sim<A>) -> bool,
    ) -> Option<Duration> {
        loop {
            if done(self) {
                return Some(self.now);
            }
            if self.now >= limit {
                return None;
            }
            let next = self.now + step;
            self.run_until(next);
        }
    }

    fn dispatch(&mut self, ev: Ev) {
        let now = self.instant();
        match ev {
            Ev::Timer(i) => {
                let p = &mut self.peers[i];
                if p.timer_at == Some(self.now) {
                    p.timer_at = None;
                }
                if let Some(m) = p.mesh.as_mut() {
                    if m.poll_timeout().is_some_and(|t| t <= now) {
                        m.handle_timeout(now);
                    }
                }
                self.after_call(i);
            }
            Ev::Connect { from, to } => {
                if self.peers[from.peer].mesh.is_none() {
                    return;
                }
                if self.peers[to].mesh.is_none() || self.cut(from.peer, to) {
                    self.peers[from.peer]
                        .mesh
                        .as_mut()
                        .unwrap()
                        .handle_dial_failed(from.key, "connect: connection refused", now);
                    self.after_call(from.peer);
                    return;
                }
                let port = 40000 + (self.seq % 20000) as u16;
                let mut remote = self.peers[from.peer].addr;
                remote.set_port(port);
                self.peers[from.peer]
                    .mesh
                    .as_mut()
                    .unwrap()
                    .handle_dialed(from.key, now);
                let key = self.peers[to]
                    .mesh
                    .as_mut()
                    .unwrap()
                    .handle_accepted(remote, now);
                let back = End { peer: to, key };
                self.links.insert(from, back);
                self.links.insert(back, from);
                self.after_call(from.peer);
                self.after_call(to);
            }
            Ev::DialFailed { from, why } => {
                if let Some(m) = self.peers[from.peer].mesh.as_mut() {
                    m.handle_dial_failed(from.key, why, now);
                }
                self.after_call(from.peer);
            }
            Ev::Data { to, bytes } => {
                if !self.links.contains_key(&to) {
                    return;
                }
                if let Some(m) = self.peers[to.peer].mesh.as_mut() {
                    m.handle_data(to.key, &bytes, now);
                }
                self.after_call(to.peer);
            }
            Ev::Udp { to, from, datagram } => {
                // Sleeve datagram: sender(6) src(6) dst(6) len(2) frame.
                if datagram.len() < 20 {
                    return;
                }
                let src = PeerName::from_bytes(datagram[6..12].try_into().unwrap());
                if let Some(m) = self.peers[to].mesh.as_mut() {
                    m.handle_sleeve_frame(from, src, &datagram[20..], now);
                }
                self.after_call(to);
            }
            Ev::Closed { to } => {
                self.links.remove(&to);
                if let Some(m) = self.peers[to.peer].mesh.as_mut() {
                    m.handle_closed(to.key, "connection reset by peer", now);
                }
                self.after_call(to.peer);
            }
        }
    }

    /// A peer's view: every entry whole, as it would gossip it (nickname, UID, version,
    /// short id, and each connection's address and flags).
    pub fn view(&self, i: Idx) -> BTreeMap<PeerName, weave_router::wire::mesh::TopologyEntry> {
        self.mesh(i)
            .topology()
            .peers()
            .map(|p| (p.name, p.to_entry()))
            .collect()
    }

    /// A cheap summary of a peer's view: its size and a hash of every entry's name, UID and
    /// version (an entry's content is fixed by those three).
    pub fn fingerprint(&self, i: Idx) -> (usize, u64) {
        use std::hash::{Hash, Hasher};
        let topo = self.mesh(i).topology();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for p in topo.peers() {
            (p.name, p.uid.0, p.version).hash(&mut h);
        }
        (topo.len(), h.finish())
    }

    /// Whether the peers `who` hold the same entries, by [`Sim::fingerprint`]; linear in
    /// the table per peer, so it can be asked often of a large mesh.
    pub fn agree_fast(&self, who: &[Idx]) -> bool {
        let mut prints = who.iter().map(|i| self.fingerprint(*i));
        let Some(first) = prints.next() else {
            return true;
        };
        prints.all(|p| p == first)
    }

    /// Whether every running peer holds the same topology.
    pub fn agree(&self, who: &[Idx]) -> bool {
        let mut views = who.iter().map(|i| self.view(*i));
        let Some(first) = views.next() else {
            return true;
        };
        views.all(|v| v == first)
    }

    /// Undirected edges that both ends report as established, over running peers `who`.
    pub fn established_edges(&self, who: &[Idx]) -> BTreeSet<(PeerName, PeerName)> {
        let mut out = BTreeSet::new();
        for i in who {
            let m = self.mesh(*i);
            let me = m.name();
            let Some(p) = m.topology().get(me) else {
                continue;
            };
            for (n, c) in &p.conns {
                if c.established {
                    out.insert((me.min(*n), me.max(*n)));
                }
            }
        }
        // Keep only those both ends report.
        let directed: BTreeSet<(PeerName, PeerName)> = who
            .iter()
            .flat_map(|i| {
                let m = self.mesh(*i);
                let me = m.name();
                m.topology()
                    .get(me)
                    .unwrap()
                    .conns
                    .iter()
                    .filter(|(_, c)| c.established)
                    .map(move |(n, _)| (me, *n))
                    .collect::<Vec<_>>()
            })
            .collect();
        out.into_iter()
            .filter(|(a, b)| directed.contains(&(*a, *b)) && directed.contains(&(*b, *a)))
            .collect()
    }

    pub fn dump_logs(&self, i: Idx) -> String {
        self.peers[i].log.join("\n")
    }
}

/// What a framed mesh message is, for [`Sim::by_kind`].
fn kind_of(framed: &[u8]) -> String {
    use weave_router::wire::mesh::Message;
    let Some(body) = framed.get(4..) else {
        return "short".into();
    };
    match Message::parse(body) {
        Ok(Message::Heartbeat) => "heartbeat".into(),
        Ok(Message::Gossip {
            channel, payload, ..
        }) => match payload.first() {
            Some(k) if channel == "topology.digest" => format!("gossip {channel} {k}"),
            _ => format!("gossip {channel}"),
        },
        Ok(Message::GossipUnicast { channel, .. }) => format!("unicast {channel}"),
        Ok(Message::GossipBroadcast { channel, .. }) => format!("broadcast {channel}"),
        Ok(Message::OverlayControl { .. }) => "overlay control".into(),
        _ => "other (sealed?)".into(),
    }
}

/// How many whole entries and changes a framed digest-channel `Entries` message carries.
fn digest_entries(framed: &[u8]) -> (u64, u64) {
    use weave_router::wire::digest::DigestMessage;
    use weave_router::wire::mesh::Message;
    let Some(Ok(Message::Gossip { payload, .. })) = framed.get(4..).map(Message::parse) else {
        return (0, 0);
    };
    match DigestMessage::parse(&payload) {
        Ok(DigestMessage::Entries { full, changes }) => (full.len() as u64, changes.len() as u64),
        _ => (0, 0),
    }
}

/// Plain BFS distances over an undirected graph.
pub fn bfs(edges: &BTreeSet<(PeerName, PeerName)>, start: PeerName) -> BTreeMap<PeerName, usize> {
    let mut adj: BTreeMap<PeerName, Vec<PeerName>> = BTreeMap::new();
    for (a, b) in edges {
        adj.entry(*a).or_default().push(*b);
        adj.entry(*b).or_default().push(*a);
    }
    let mut dist = BTreeMap::new();
    dist.insert(start, 0);
    let mut q = VecDeque::from([start]);
    while let Some(cur) = q.pop_front() {
        let d = dist[&cur];
        for n in adj.get(&cur).into_iter().flatten() {
            if !dist.contains_key(n) {
                dist.insert(*n, d + 1);
                q.push_back(*n);
            }
        }
    }
    dist
}

/// Whether peer `i` holds a registered connection to peer `j`.
pub fn connected_to(sim: &Sim, i: Idx, j: Idx) -> bool {
    sim.mesh(i)
        .connected_peers()
        .any(|n| n == sim.peers[j].name)
}

/// Every running peer's data routes against a plain BFS over the edges both ends report
/// established: the same reachable set, and every first hop one step closer.
pub fn assert_routes_match_bfs(sim: &Sim, who: &[Idx]) {
    let edges = sim.established_edges(who);
    let mut dist: BTreeMap<PeerName, BTreeMap<PeerName, usize>> = BTreeMap::new();
    for &i in who {
        let me = sim.mesh(i).name();
        dist.insert(me, bfs(&edges, me));
    }
    for &i in who {
        let me = sim.mesh(i).name();
        let routes = sim.mesh(i).unicast_routes();
        let mine = &dist[&me];
        let reached: BTreeSet<PeerName> = routes.keys().copied().collect();
        let expected: BTreeSet<PeerName> = mine.keys().copied().collect();
        assert_eq!(reached, expected, "peer {i}: reachable set differs");
        for (dest, via) in &routes {
            if *dest == me {
                assert_eq!(*via, UNKNOWN_PEER_NAME);
                continue;
            }
            assert!(
                edges.contains(&(me.min(*via), me.max(*via))),
                "peer {i}: hop {via} is not a neighbour"
            );
            assert_eq!(
                dist[via][dest] + 1,
                mine[dest],
                "peer {i}: hop {via} to {dest} is not on a shortest path"
            );
        }
    }
}
