//! Deterministic simulations of cluster-wide IPAM: allocators beside meshes on the
//! simulator's virtual clock, driven the way the daemon's shell drives them.

mod sim;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sim::{peer_name, App, Idx, Sim};
use weave_router::ids::PeerName;
use weave_router::ipam::address::{Address, Cidr, Range};
use weave_router::ipam::allocator::{Allocator, Config, Init, IpamError, OpId, Reply};
use weave_router::ipam::store::{MemoryStore, Owned, Store};
use weave_router::ipam::{self, CHANNEL};
use weave_router::mesh::Mesh;
use weave_router::wire::ipam::Entry;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn universe() -> Cidr {
    Cidr::parse_subnet("10.32.0.0/22").expect("cidr")
}

/// One peer's IPAM side: its store (which outlives the process), its allocator while the
/// process runs, and what came out of it.
#[derive(Default)]
struct Node {
    /// How the ring is first divided, for a peer that runs IPAM (registers `IPallocation`);
    /// `None`: it does not, and its mesh relays the channel as a surrogate.
    init: Option<Init>,
    store: MemoryStore,
    alloc: Option<Allocator>,
    starts: u64,
    generation: Option<u64>,
    /// Answers to requests that waited, in order.
    replies: Vec<(OpId, Result<Reply, IpamError>)>,
    /// Messages the allocator refused.
    bad: Vec<String>,
    /// Unicasts the mesh had no route for (the allocator asks again on its next tick).
    unrouted: Vec<String>,
    /// The allocator's log lines.
    log: Vec<String>,
}

impl Node {
    fn ipam(init: Init) -> Node {
        Node {
            init: Some(init),
            ..Node::default()
        }
    }

    fn alloc(&self) -> &Allocator {
        self.alloc.as_ref().expect("allocator running")
    }

    /// What a process of the shell does after every call into the allocator: persist before
    /// anything (reply or gossip) leaves.
    fn persist(&mut self) {
        let Some(alloc) = self.alloc.as_mut() else {
            return;
        };
        let ops = alloc.take_store_ops();
        if !ops.is_empty() {
            self.store.apply(&ops).expect("memory store");
        }
    }

    /// A request from outside; the store has taken its effects when it returns.
    fn request<R>(&mut self, f: impl FnOnce(&mut Allocator) -> R) -> R {
        let out = f(self.alloc.as_mut().expect("allocator running"));
        self.persist();
        out
    }
}

impl App for Node {
    fn start(&mut self, mesh: &mut Mesh, now: Instant) {
        let Some(init) = self.init.clone() else {
            return;
        };
        mesh.register_channel(CHANNEL);
        let me = mesh.topology().ourself();
        let config = Config {
            name: me.name,
            uid: me.uid,
            nickname: me.nickname.clone(),
            universe: universe(),
            default_subnet: universe(),
            init,
            unix_time: 1_700_000_000,
        };
        let persisted = self.store.load().expect("load");
        let seed = me.name.as_u64() * 1000 + self.starts;
        self.starts += 1;
        self.alloc = Some(Allocator::new(config, persisted, seed, now).expect("allocator"));
        self.generation = None;
        self.persist();
    }

    fn stop(&mut self) {
        self.alloc = None;
        self.generation = None;
    }

    fn step(&mut self, mesh: &mut Mesh, now: Instant) {
        let Some(alloc) = self.alloc.as_mut() else {
            return;
        };
        loop {
            let mut delivered = false;
            while let Some(ev) = mesh.poll_channel_event() {
                delivered = true;
                if let Err(e) = ipam::deliver(alloc, ev, now) {
                    self.bad.push(e);
                }
            }
            if self.generation != Some(mesh.generation()) {
                self.generation = Some(mesh.generation());
                alloc.set_reachable(mesh.reachable_peers());
            }
            if alloc.poll_timeout() <= now {
                alloc.handle_timeout(now);
            }
            let ops = alloc.take_store_ops();
            if !ops.is_empty() {
                self.store.apply(&ops).expect("memory store");
            }
            while let Some(r) = alloc.poll_reply() {
                self.replies.push(r);
            }
            while let Some(e) = alloc.poll_event() {
                self.log.push(e.message);
            }
            for e in ipam::transmit(alloc, mesh, now) {
                self.unrouted.push(e);
            }
            if !delivered {
                break;
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.alloc.as_ref().map(Allocator::poll_timeout)
    }
}

// ----- the cluster and the clients' model of it -----

/// What a request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A new container asks for any address.
    Allocate,
    /// A new container asks for one given address.
    Claim(Cidr),
    /// A container claims the address it already holds (a restarted pod, say).
    Reclaim(Cidr),
}

/// A container as its client sees it: where it runs, the address it was told it holds,
/// the request it still waits on.
#[derive(Debug, Clone)]
struct Container {
    peer: Idx,
    addr: Option<Address>,
    pending: Option<OpId>,
}

#[derive(Debug, Default)]
struct Stats {
    ops: u64,
    allocates: u64,
    allocated: u64,
    allocated_late: u64,
    allocate_failed: u64,
    claims: u64,
    claimed: u64,
    claim_refused: u64,
    reclaims: u64,
    releases: u64,
    cancelled: u64,
    lost_in_restart: u64,
    checks: u64,
}

struct World {
    sim: Sim<Node>,
    rng: ChaCha8Rng,
    n: usize,
    /// Peers whose process is not running now but whose containers still run (they keep
    /// their addresses: the store has them).
    down: BTreeSet<Idx>,
    /// Peers gone for good: their containers went with them.
    removed: BTreeSet<Idx>,
    weights: Vec<u32>,
    containers: BTreeMap<String, Container>,
    /// Who holds each address, as the clients were told.
    held: BTreeMap<Address, String>,
    requests: BTreeMap<OpId, (Idx, Kind, String)>,
    released: Vec<Address>,
    next_op: u64,
    next_ident: u64,
    target: usize,
    stats: Stats,
}

impl World {
    fn new(n: usize, seed: u64) -> World {
        let mut sim = Sim::with_apps(seed);
        sim.keep_logs = false;
        for i in 0..n {
            sim.add_peer_with(
                Sim::config(i, false),
                Node::ipam(Init::Consensus { quorum: 26 }),
            );
        }
        World {
            sim,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x1234_5678),
            n,
            down: BTreeSet::new(),
            removed: BTreeSet::new(),
            // A few busy peers run out of space and must ask the others for some.
            weights: (0..n).map(|i| if i % 5 == 0 { 6 } else { 1 }).collect(),
            containers: BTreeMap::new(),
            held: BTreeMap::new(),
            requests: BTreeMap::new(),
            released: Vec::new(),
            next_op: 1,
            next_ident: 1,
            target: 650,
            stats: Stats::default(),
        }
    }

    fn running(&self) -> Vec<Idx> {
        (0..self.n)
            .filter(|i| self.sim.peers[*i].mesh.is_some())
            .collect()
    }

    fn node(&self, i: Idx) -> &Node {
        &self.sim.peers[i].app
    }

    fn hosts() -> Range {
        universe().host_range()
    }

    /// Runs the world for `d`, taking the answers that came out.
    fn run(&mut self, d: Duration) {
        let until = self.sim.now + d;
        self.sim.run_until(until);
        self.collect();
    }

    fn collect(&mut self) {
        for i in 0..self.n {
            let replies = std::mem::take(&mut self.sim.peers[i].app.replies);
            for (id, r) in replies {
                self.answer(id, r, true);
            }
        }
    }

    fn answer(&mut self, id: OpId, r: Result<Reply, IpamError>, late: bool) {
        let (peer, kind, ident) = self
            .requests
            .remove(&id)
            .unwrap_or_else(|| panic!("answer {r:?} to unknown request {id:?}"));
        let Some(c) = self.containers.get_mut(&ident) else {
            // Released while it waited: the release cancelled it.
            assert!(
                matches!(r, Err(IpamError::Cancelled { .. })),
                "{ident} was released, yet its request {id:?} ended {r:?}"
            );
            self.stats.cancelled += 1;
            return;
        };
        assert_eq!(
            c.pending,
            Some(id),
            "{ident}: answer to a request it is not waiting on"
        );
        assert_eq!(c.peer, peer);
        c.pending = None;
        let got = match (kind, r) {
            (Kind::Allocate, Ok(Reply::Allocated(cidr))) => {
                assert!(
                    Self::hosts().contains(cidr.addr) && cidr.prefix_len == universe().prefix_len,
                    "{ident} was given {cidr}, outside {}",
                    universe()
                );
                self.stats.allocated += 1;
                if late {
                    self.stats.allocated_late += 1;
                }
                Some(cidr.addr)
            }
            (Kind::Claim(want), Ok(Reply::Claimed)) => {
                self.stats.claimed += 1;
                Some(want.addr)
            }
            (Kind::Reclaim(want), Ok(Reply::Claimed)) => {
                assert_eq!(c.addr, Some(want.addr));
                return;
            }
            (Kind::Reclaim(want), other) => {
                panic!("{ident} re-claiming its own {want} on peer {peer} got {other:?}")
            }
            (Kind::Allocate, Err(e)) => {
                assert!(
                    matches!(e, IpamError::TimedOut { .. }),
                    "{ident}: allocate failed with {e}"
                );
                self.stats.allocate_failed += 1;
                None
            }
            (Kind::Claim(_), Err(e)) => {
                assert!(
                    matches!(
                        e,
                        IpamError::InUse { .. }
                            | IpamError::OwnedByPeer { .. }
                            | IpamError::TimedOut { .. }
                    ),
                    "{ident}: claim failed with {e}"
                );
                self.stats.claim_refused += 1;
                None
            }
            (kind, r) => panic!("{ident}: {kind:?} answered {r:?}"),
        };
        match got {
            Some(addr) => {
                let c = self.containers.get_mut(&ident).expect("present");
                c.addr = Some(addr);
                if let Some(other) = self.held.insert(addr, ident.clone()) {
                    panic!(
                        "{addr} given to {ident} on peer {peer}, but {other} on peer {} holds it",
                        self.containers[&other].peer
                    );
                }
            }
            None => {
                self.containers.remove(&ident);
            }
        }
    }

    fn pick_peer(&mut self) -> Idx {
        let up: Vec<Idx> = self.running();
        *up.choose_weighted(&mut self.rng, |i| self.weights[*i])
            .expect("a running peer")
    }

    fn new_request(&mut self, peer: Idx, kind: Kind, ident: &str) -> OpId {
        let id = OpId(self.next_op);
        self.next_op += 1;
        self.requests.insert(id, (peer, kind, ident.to_string()));
        id
    }

    fn new_container(&mut self, peer: Idx, kind: Kind) -> (String, OpId) {
        let ident = format!("c{:05}", self.next_ident);
        self.next_ident += 1;
        let id = self.new_request(peer, kind, &ident);
        self.containers.insert(
            ident.clone(),
            Container {
                peer,
                addr: None,
                pending: Some(id),
            },
        );
        (ident, id)
    }

    /// One random operation on a random running peer.
    fn op(&mut self) {
        self.stats.ops += 1;
        let live = self.containers.len();
        let x: f64 = self.rng.gen();
        let alloc_share = if live < self.target { 0.62 } else { 0.35 };
        if x < alloc_share {
            self.allocate();
        } else if x < alloc_share + 0.12 {
            self.claim();
        } else {
            self.release();
        }
    }

    fn allocate(&mut self) {
        self.stats.allocates += 1;
        let peer = self.pick_peer();
        let (ident, id) = self.new_container(peer, Kind::Allocate);
        let deadline = self.sim.instant() + secs(30);
        let r = self
            .sim
            .call(peer, |node, _, now| {
                node.request(|a| a.allocate(id, &ident, None, true, deadline, now))
            })
            .expect("running");
        self.collect();
        if let Some(r) = r {
            self.answer(id, r, false);
        }
    }

    fn claim(&mut self) {
        let peer = self.pick_peer();
        let x: f64 = self.rng.gen();
        let hosts = Self::hosts();
        let addr = if x < 0.35 && !self.released.is_empty() {
            // An address someone let go of: free somewhere, unless handed out since.
            *self.released.choose(&mut self.rng).expect("non-empty")
        } else if x < 0.65 {
            Address(self.rng.gen_range(hosts.start.0..hosts.end.0))
        } else if x < 0.85 && !self.held.is_empty() {
            // An address a container holds: must be refused.
            let k = self.rng.gen_range(0..self.held.len());
            *self.held.keys().nth(k).expect("in range")
        } else {
            // A container on this peer claims its own address again: always granted.
            let mine: Vec<(String, Address)> = self
                .containers
                .iter()
                .filter(|(_, c)| c.peer == peer && c.pending.is_none())
                .filter_map(|(n, c)| c.addr.map(|a| (n.clone(), a)))
                .collect();
            let Some((ident, addr)) = mine.choose(&mut self.rng).cloned() else {
                return self.allocate();
            };
            self.stats.reclaims += 1;
            let cidr = Cidr {
                addr,
                prefix_len: universe().prefix_len,
            };
            let id = self.new_request(peer, Kind::Reclaim(cidr), &ident);
            self.containers.get_mut(&ident).expect("present").pending = Some(id);
            let deadline = self.sim.instant() + secs(30);
            let r = self
                .sim
                .call(peer, |node, _, now| {
                    node.request(|a| a.claim(id, &ident, cidr, true, deadline, now))
                })
                .expect("running");
            self.collect();
            let r = r.unwrap_or_else(|| panic!("re-claim of {ident}'s own {cidr} waited"));
            self.answer(id, r, false);
            return;
        };
        self.stats.claims += 1;
        let cidr = Cidr {
            addr,
            prefix_len: universe().prefix_len,
        };
        let (ident, id) = self.new_container(peer, Kind::Claim(cidr));
        let deadline = self.sim.instant() + secs(30);
        let r = self
            .sim
            .call(peer, |node, _, now| {
                node.request(|a| a.claim(id, &ident, cidr, true, deadline, now))
            })
            .expect("running");
        self.collect();
        if let Some(r) = r {
            self.answer(id, r, false);
        }
    }

    fn release(&mut self) {
        let candidates: Vec<&String> = self
            .containers
            .iter()
            .filter(|(_, c)| !self.down.contains(&c.peer))
            .map(|(n, _)| n)
            .collect();
        let Some(ident) = candidates.choose(&mut self.rng).map(|s| s.to_string()) else {
            return self.allocate();
        };
        self.stats.releases += 1;
        let c = self.containers.remove(&ident).expect("present");
        let r = self
            .sim
            .call(c.peer, |node, _, _| node.request(|a| a.release(&ident)))
            .expect("running");
        assert_eq!(r, Ok(()), "releasing {ident} on peer {}: {c:?}", c.peer);
        if let Some(addr) = c.addr {
            self.held.remove(&addr);
            self.released.push(addr);
            if self.released.len() > 64 {
                self.released.remove(0);
            }
        }
        // A cancelled request is answered later; `answer` accepts it.
        self.collect();
    }

    /// `count` operations spread over `over`, checking after every batch of 50.
    fn ops(&mut self, count: usize, over: Duration) {
        let gap = over / count as u32;
        for k in 0..count {
            self.op();
            self.run(gap);
            if k % 50 == 49 {
                self.check();
            }
        }
        self.check();
    }

    /// The cluster-wide invariants.
    fn check(&mut self) {
        self.stats.checks += 1;
        let hosts = Self::hosts();
        let mut everywhere: BTreeMap<Address, (Idx, String)> = BTreeMap::new();
        let mut self_owned: Vec<(Range, Idx)> = Vec::new();
        for i in 0..self.n {
            if self.removed.contains(&i) {
                continue;
            }
            let node = self.node(i);
            let (owned, ring): (BTreeMap<String, Owned>, _) = match &node.alloc {
                Some(a) => (a.owned().clone(), a.ring().clone()),
                None => {
                    // Not running: its containers still hold what the store says.
                    let p = node.store.load().expect("load");
                    let ring = p.ring.as_ref().map(|s| {
                        weave_router::ipam::ring::Ring::from_state(s, peer_name(i))
                            .expect("stored ring")
                    });
                    let Some(ring) = ring else {
                        assert!(p.owned.is_empty());
                        continue;
                    };
                    (p.owned, ring)
                }
            };
            let mine = ring.owned_ranges();
            for r in &mine {
                self_owned.push((*r, i));
            }
            let mut actual: BTreeMap<String, Address> = BTreeMap::new();
            for (ident, o) in &owned {
                assert_eq!(o.cidrs.len(), 1, "{ident} on peer {i} holds {:?}", o.cidrs);
                let addr = o.cidrs[0].addr;
                assert!(hosts.contains(addr), "peer {i}: {ident} holds {addr}");
                assert!(
                    mine.iter().any(|r| r.contains(addr)),
                    "peer {i}: {ident} holds {addr}, which its ring does not give it"
                );
                if let Some((j, other)) = everywhere.insert(addr, (i, ident.clone())) {
                    panic!("{addr} is held by {other} on peer {j} and by {ident} on peer {i}");
                }
                actual.insert(ident.clone(), addr);
            }
            let expected: BTreeMap<String, Address> = self
                .containers
                .iter()
                .filter(|(_, c)| c.peer == i)
                .filter_map(|(n, c)| c.addr.map(|a| (n.clone(), a)))
                .collect();
            assert_eq!(
                actual, expected,
                "peer {i}: the allocator's records differ from what its clients were told"
            );
        }
        // No address is in two peers' own view of what they own.
        self_owned.sort();
        for w in self_owned.windows(2) {
            assert!(
                w[0].0.end <= w[1].0.start,
                "peer {} owns {:?} and peer {} owns {:?}, by their own rings",
                w[0].1,
                w[0].0,
                w[1].1,
                w[1].0
            );
        }
    }

    fn rings_agree(sim: &Sim<Node>, who: &[Idx]) -> bool {
        let mut rings = who
            .iter()
            .map(|i| sim.peers[*i].app.alloc.as_ref().map(|a| a.ring().entries()));
        let Some(Some(first)) = rings.next() else {
            return false;
        };
        !first.is_empty() && rings.all(|r| r == Some(first))
    }

    /// Runs without new requests until every running peer holds the same ring; returns how
    /// long that took.
    fn converge(&mut self, what: &str, limit: Duration) -> Duration {
        let who = self.running();
        let t0 = self.sim.now;
        let t = self
            .sim
            .run_until_true(secs(1), t0 + limit, |s| World::rings_agree(s, &who));
        self.collect();
        let Some(t) = t else {
            let mut distinct: Vec<(&[Entry], Vec<Idx>)> = Vec::new();
            for i in &who {
                let e = self.node(*i).alloc().ring().entries();
                match distinct.iter_mut().find(|(d, _)| *d == e) {
                    Some((_, v)) => v.push(*i),
                    None => distinct.push((e, vec![*i])),
                }
            }
            let views: Vec<String> = distinct
                .iter()
                .map(|(e, v)| format!("{} tokens at {v:?}", e.len()))
                .collect();
            panic!("{what}: rings did not converge in {limit:?}: {views:?}");
        };
        self.check();
        t - t0
    }

    fn kill(&mut self, i: Idx, for_good: bool) {
        self.sim.kill_peer(i);
        // Its waiting requests die with the process: their clients see an error.
        let lost: Vec<OpId> = self
            .requests
            .iter()
            .filter(|(_, (p, _, _))| *p == i)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            let (_, _, ident) = self.requests.remove(&id).expect("present");
            self.stats.lost_in_restart += 1;
            if let Some(c) = self.containers.get_mut(&ident) {
                c.pending = None;
                if c.addr.is_none() {
                    self.containers.remove(&ident);
                }
            }
        }
        if for_good {
            self.removed.insert(i);
            let gone: Vec<String> = self
                .containers
                .iter()
                .filter(|(_, c)| c.peer == i)
                .map(|(n, _)| n.clone())
                .collect();
            for ident in gone {
                let c = self.containers.remove(&ident).expect("present");
                if let Some(a) = c.addr {
                    self.held.remove(&a);
                }
            }
        } else {
            self.down.insert(i);
        }
    }

    fn summary(&self) -> String {
        let donations: usize = (0..self.n)
            .map(|i| {
                self.node(i)
                    .log
                    .iter()
                    .filter(|l| l.contains("Giving range"))
                    .count()
            })
            .sum();
        format!("{:?}, space donations: {donations}", self.stats)
    }
}

/// "... Giving range 10.32.1.4-10.32.1.7 to 02:00:00:00:00:1f(peer30)" as the range and peer.
fn parse_gift(line: &str) -> Option<(Range, PeerName)> {
    let rest = line.split("Giving range ").nth(1)?;
    let (range, to) = rest.split_once(" to ")?;
    let (first, last) = range.split_once('-')?;
    let first: Address = first.parse().ok()?;
    let last: Address = last.parse().ok()?;
    let peer: PeerName = to.split('(').next()?.parse().ok()?;
    Some((Range::new(first, last.offset(1)), peer))
}

fn connected_to(sim: &Sim<Node>, i: Idx, j: Idx) -> bool {
    sim.mesh(i)
        .connected_peers()
        .any(|n| n == sim.peers[j].name)
}

/// The acceptance scenario: 50 peers dividing the ring by consensus (quorum 26), 20,000
/// allocations, claims and releases spread over them, 5% of mesh messages lost, a partition
/// that heals, two peers removed with `rmpeer`, one restarted from its store. No address is
/// ever held twice, every ring converges, and nothing a client was told is lost.
#[test]
fn fifty_peers_twenty_thousand_operations_with_loss_partition_rmpeer_and_restart() {
    const N: usize = 50;
    let wall = std::time::Instant::now();
    let seed = 7;
    let mut w = World::new(N, seed);
    let mut rng = ChaCha8Rng::seed_from_u64(77 + seed);
    let mut targets: Vec<Vec<Idx>> = Vec::new();
    for i in 0..N {
        let mut others: Vec<Idx> = (0..N).filter(|j| *j != i).collect();
        others.shuffle(&mut rng);
        let t: Vec<Idx> = others.into_iter().take(3).collect();
        w.sim.connect(i, &t);
        targets.push(t);
        let at = w.sim.now + Duration::from_millis(rng.gen_range(0..50));
        w.sim.run_until(at);
    }
    w.sim.loss = 0.05;
    let everyone: Vec<Idx> = (0..N).collect();
    let t = w.sim.run_until_true(secs(1), secs(300), |s| {
        everyone.iter().all(|i| s.mesh(*i).topology().len() == N)
    });
    t.expect("mesh formed");

    // 1. Consensus on the first allocation, then a steady load.
    let t0 = w.sim.now;
    let m0 = w.sim.messages;
    w.stats.ops += 1;
    w.allocate();
    let who = w.running();
    let t = w
        .sim
        .run_until_true(Duration::from_millis(100), t0 + secs(120), |s| {
            who.iter()
                .all(|i| !s.peers[*i].app.alloc().ring().is_empty())
        });
    let consensus = t.expect("consensus") - t0;
    w.collect();
    let ring_peers = w.node(0).alloc().ring().peer_names().len();
    println!(
        "consensus: every peer has the ring {:.1} virtual s after the first request ({} messages); divided among {ring_peers} peers",
        consensus.as_secs_f64(),
        w.sim.messages - m0
    );
    w.ops(5999, secs(60));
    println!("after phase 1: {}", w.summary());

    // 2. A partition for longer than the mesh's read timeout, with requests on both sides.
    let side: BTreeSet<Idx> = (0..N / 2).collect();
    w.sim.partition = Some(side.clone());
    let split = w.sim.now;
    w.ops(3000, secs(120));
    // Long enough for both sides to forget each other: connections across time out, and
    // the news reaches everyone (one lost gossip costs a 30 s gossip interval, per hop).
    let index = |p: &PeerName| (p.as_u64() - peer_name(0).as_u64()) as usize;
    let mut waited = 0;
    loop {
        let across: Vec<Idx> = (0..N)
            .filter(|i| {
                let reach = w.sim.peers[*i]
                    .mesh
                    .as_mut()
                    .expect("running")
                    .reachable_peers();
                reach
                    .iter()
                    .any(|p| side.contains(&index(p)) != side.contains(i))
            })
            .collect();
        if across.is_empty() {
            break;
        }
        waited += 1;
        assert!(
            waited <= 60,
            "peers {across:?} still reach across the partition"
        );
        w.ops(100, secs(3));
    }
    println!(
        "partition: each side stopped reaching the other {:.1} virtual s after the split; {}",
        (w.sim.now - split).as_secs_f64(),
        w.summary()
    );
    w.sim.partition = None;
    let m1 = w.sim.messages;
    let healed = w.converge("after the partition healed", secs(900));
    println!(
        "after heal: rings converged in {:.1} virtual s, {} messages",
        healed.as_secs_f64(),
        w.sim.messages - m1
    );
    w.ops(2000, secs(40));

    // 3. Two peers die for good; another takes their space over with rmpeer.
    let dead = [17, 33];
    let taker = 5;
    let finals: Vec<Vec<Entry>> = dead
        .iter()
        .map(|d| w.node(*d).alloc().ring().entries().to_vec())
        .collect();
    for d in dead {
        w.kill(d, true);
    }
    w.ops(1500, secs(45));
    // rmpeer is for a peer that is gone: wait until the mesh no longer reaches it and the
    // taker's ring has every token the dead peers' rings had, with the same owner (its last
    // free counts it never gossiped, nor needed to: nobody can allocate from them).
    let dead_names: Vec<PeerName> = dead.iter().map(|d| peer_name(*d)).collect();
    let covered = |s: &mut Sim<Node>| {
        let reach = s.peers[taker]
            .mesh
            .as_mut()
            .expect("running")
            .reachable_peers();
        let ring = s.peers[taker].app.alloc().ring().entries();
        dead_names.iter().all(|d| !reach.contains(d))
            && finals.iter().flatten().all(|e| {
                ring.iter()
                    .any(|r| r.token == e.token && (r.peer == e.peer || r.version >= e.version))
            })
    };
    let mut waited = 0;
    while !covered(&mut w.sim) {
        w.ops(100, secs(3));
        waited += 1;
        if waited >= 100 {
            let reach = w.sim.peers[taker]
                .mesh
                .as_mut()
                .expect("running")
                .reachable_peers();
            let ring = w.node(taker).alloc().ring().entries().to_vec();
            let missing: Vec<(Entry, Option<Entry>)> = finals
                .iter()
                .flatten()
                .filter(|e| {
                    !ring
                        .iter()
                        .any(|r| r.token == e.token && (r.peer == e.peer || r.version >= e.version))
                })
                .map(|e| (*e, ring.iter().find(|r| r.token == e.token).copied()))
                .collect();
            panic!(
                "the taker never learned the dead peers' ring: reaches dead {:?}; missing {missing:?}",
                dead_names.iter().map(|d| reach.contains(d)).collect::<Vec<_>>()
            );
        }
    }
    let before = w.node(taker).alloc().ring().clone();
    let log_mark = w.node(taker).log.len();
    let mut moved: Vec<Range> = Vec::new();
    for d in dead {
        moved.extend(before.owned_ranges_of(peer_name(d)));
        let n = w
            .sim
            .call(taker, |node, _, _| {
                node.request(|a| a.take_over(&format!("peer{d}"), false))
            })
            .expect("running")
            .expect("rmpeer");
        println!("rmpeer peer{d} on peer{taker}: {n} addresses moved");
    }
    assert!(!moved.is_empty(), "the dead peers owned nothing");
    let ring = w.node(taker).alloc().ring();
    for r in &moved {
        for a in [r.start, Address(r.end.0 - 1)] {
            assert_eq!(
                ring.owner(a),
                peer_name(taker),
                "{a} of {r:?} not taken over"
            );
        }
    }
    // The space is allocatable: the taker claims one address of each moved range at once,
    // and another peer gets one through a space request.
    for (k, r) in moved.iter().enumerate() {
        let mut hosts = (r.start.0..r.end.0)
            .map(Address)
            .filter(|a| World::hosts().contains(*a))
            .peekable();
        if hosts.peek().is_none() {
            continue; // the broadcast address, say
        }
        let a = hosts
            .find(|a| !w.held.contains_key(a))
            .unwrap_or_else(|| panic!("{r:?}, moved from a dead peer, is in use: {moved:?}"));
        let cidr = Cidr {
            addr: a,
            prefix_len: universe().prefix_len,
        };
        let ident = format!("takeover{k}");
        let (_, id) = {
            let id = w.new_request(taker, Kind::Claim(cidr), &ident);
            w.containers.insert(
                ident.clone(),
                Container {
                    peer: taker,
                    addr: None,
                    pending: Some(id),
                },
            );
            (ident.clone(), id)
        };
        let deadline = w.sim.instant() + secs(30);
        let r = w
            .sim
            .call(taker, |node, _, now| {
                node.request(|al| al.claim(id, &ident, cidr, true, deadline, now))
            })
            .expect("running");
        assert_eq!(r, Some(Ok(Reply::Claimed)), "claim of {cidr} on the taker");
        w.answer(id, r.expect("answered"), false);
    }
    let m2 = w.sim.messages;
    let after_rmpeer = w.converge("after rmpeer", secs(600));
    println!(
        "after rmpeer: rings converged in {:.1} virtual s, {} messages",
        after_rmpeer.as_secs_f64(),
        w.sim.messages - m2
    );
    let gifts: Vec<(Range, PeerName)> = w.node(taker).log[log_mark..]
        .iter()
        .filter_map(|l| parse_gift(l))
        .collect();
    for i in w.running() {
        let ring = w.node(i).alloc().ring();
        for d in &dead_names {
            assert!(!ring.peer_names().contains(d), "peer {i} still names {d}");
        }
        // The taker may have given some of it away since, to a peer that asked.
        for r in &moved {
            for a in (r.start.0..r.end.0).map(Address) {
                let owner = ring.owner(a);
                assert!(
                    owner == peer_name(taker)
                        || gifts.iter().any(|(g, to)| g.contains(a) && *to == owner),
                    "peer {i}: {a} of the dead peers' {r:?} is owned by {owner}; the taker gave {gifts:?}"
                );
            }
        }
    }
    // Another peer asks the taker for an address of the moved space, and gets it: the one
    // the taker claimed first, released now.
    let asker = 44;
    let a = w.containers["takeover0"].addr.expect("claimed");
    let released = w
        .sim
        .call(taker, |node, _, _| {
            node.request(|al| al.release("takeover0"))
        })
        .expect("running");
    assert_eq!(released, Ok(()));
    w.containers.remove("takeover0");
    w.held.remove(&a);
    let cidr = Cidr {
        addr: a,
        prefix_len: universe().prefix_len,
    };
    let (ident, id) = w.new_container(asker, Kind::Claim(cidr));
    let deadline = w.sim.instant() + secs(30);
    let r = w
        .sim
        .call(asker, |node, _, now| {
            node.request(|al| al.claim(id, &ident, cidr, true, deadline, now))
        })
        .expect("running");
    assert!(r.is_none(), "peer {asker} does not own {cidr}: it must ask");
    let granted = w
        .sim
        .run_until_true(Duration::from_millis(100), w.sim.now + secs(30), |s| {
            s.peers[asker].app.replies.iter().any(|(i, _)| *i == id)
        });
    assert!(
        granted.is_some(),
        "the claim on peer {asker} was never answered"
    );
    assert!(
        w.node(asker).replies.contains(&(id, Ok(Reply::Claimed))),
        "{:?}",
        w.node(asker).replies
    );
    w.collect();
    assert_eq!(w.containers[&ident].addr, Some(a));
    assert_eq!(w.node(asker).alloc().ring().owner(a), peer_name(asker));
    w.ops(1500, secs(30));

    // 4. One peer restarts from its store, with a new process UID.
    let r = 40;
    let owned_before = w.node(r).alloc().owned().clone();
    assert!(!owned_before.is_empty(), "peer {r} holds nothing to keep");
    w.kill(r, false);
    w.ops(1000, secs(40));
    w.sim.start_peer(r, Sim::config(r, false));
    w.down.remove(&r);
    assert_eq!(
        w.node(r).alloc().owned(),
        &owned_before,
        "the restarted peer lost allocations"
    );
    w.sim.connect(r, &targets[r]);
    let rest = 20_000 - w.stats.ops as usize;
    assert!(
        rest >= 1000,
        "only {rest} operations left for after the restart"
    );
    w.ops(rest, secs(60));
    assert_eq!(w.stats.ops, 20_000);

    // 5. Quiet: everything converges, and every allocation is where its client thinks.
    let m3 = w.sim.messages;
    let last = w.converge("at the end", secs(600));
    w.check();
    println!(
        "final: rings converged in {:.1} virtual s, {} messages",
        last.as_secs_f64(),
        w.sim.messages - m3
    );
    let allocated: usize = w
        .running()
        .iter()
        .map(|i| w.node(*i).alloc().owned().len())
        .sum();
    let refused: usize = (0..N).map(|i| w.node(i).bad.len()).sum();
    let unrouted: usize = (0..N).map(|i| w.node(i).unrouted.len()).sum();
    println!(
        "{} operations ({} requests incl. the first), {} addresses held at the end, {} ring tokens, {:.0} virtual s, {} mesh messages ({} KiB), {} gossip refused, {} unicasts unrouted, wall {:.1}s",
        w.stats.ops,
        w.next_op - 1,
        allocated,
        w.node(0).alloc().ring().entries().len(),
        w.sim.now.as_secs_f64(),
        w.sim.messages,
        w.sim.bytes / 1024,
        refused,
        unrouted,
        wall.elapsed().as_secs_f64()
    );
    println!("{}", w.summary());
    let broadcasts = w
        .sim
        .by_kind
        .get("broadcast IPallocation")
        .map_or(0, |k| k.0);
    let repeats: u64 = w
        .running()
        .iter()
        .map(|i| w.sim.mesh(*i).broadcast_repeats())
        .sum();
    println!("{broadcasts} IPAM broadcast messages; repeats dropped by running peers: {repeats}");
    assert_eq!(allocated, w.held.len());
    assert_eq!(
        refused,
        0,
        "{:?}",
        (0..N)
            .flat_map(|i| w.node(i).bad.clone())
            .collect::<Vec<_>>()
    );
}

/// Waits for the answer to request `id` on peer `i`.
fn await_reply(sim: &mut Sim<Node>, i: Idx, id: OpId, limit: Duration) -> Result<Reply, IpamError> {
    let until = sim.now + limit;
    let t = sim.run_until_true(Duration::from_millis(100), until, |s| {
        s.peers[i].app.replies.iter().any(|(r, _)| *r == id)
    });
    assert!(
        t.is_some(),
        "request {id:?} on peer {i} not answered in {limit:?}"
    );
    let replies = &mut sim.peers[i].app.replies;
    let k = replies.iter().position(|(r, _)| *r == id).expect("present");
    replies.remove(k).1
}

/// A peer that runs no IPAM (it never registered `IPallocation`) still carries the
/// channel's gossip as a surrogate: two allocating peers connected only through it reach
/// consensus, allocate distinct addresses, and a claim crosses it as unicasts.
#[test]
fn a_peer_without_ipam_relays_the_gossip_of_two_that_have_it() {
    let mut sim: Sim<Node> = Sim::with_apps(11);
    let a = sim.add_peer_with(
        Sim::config(0, false),
        Node::ipam(Init::Consensus { quorum: 2 }),
    );
    let b = sim.add_peer_with(Sim::config(1, false), Node::default());
    let c = sim.add_peer_with(
        Sim::config(2, false),
        Node::ipam(Init::Consensus { quorum: 2 }),
    );
    // A line: A - B - C, and no discovery, so A and C never connect directly.
    sim.connect(a, &[b]);
    sim.connect(c, &[b]);
    let t = sim.run_until_true(Duration::from_millis(100), secs(30), |s| {
        s.mesh(a).unicast_routes().contains_key(&peer_name(c))
            && s.mesh(c).unicast_routes().contains_key(&peer_name(a))
    });
    assert!(t.is_some(), "mesh formed");

    let deadline = sim.instant() + secs(60);
    let r = sim
        .call(a, |n, _, now| {
            n.request(|al| al.allocate(OpId(1), "on-a", None, true, deadline, now))
        })
        .expect("running");
    assert!(
        r.is_none(),
        "one peer is no quorum of two: the request waits"
    );
    let r = sim
        .call(c, |n, _, now| {
            n.request(|al| al.allocate(OpId(2), "on-c", None, true, deadline, now))
        })
        .expect("running");
    let on_c = match r {
        Some(r) => r,
        None => await_reply(&mut sim, c, OpId(2), secs(30)),
    };
    let on_a = await_reply(&mut sim, a, OpId(1), secs(30));
    let (Ok(Reply::Allocated(x)), Ok(Reply::Allocated(y))) = (&on_a, &on_c) else {
        panic!("A: {on_a:?}, C: {on_c:?}");
    };
    assert_ne!(x.addr, y.addr);
    assert!(universe().host_range().contains(x.addr) && universe().host_range().contains(y.addr));
    let ring_a = sim.peers[a].app.alloc().ring();
    assert_eq!(
        ring_a.peer_names(),
        BTreeSet::from([peer_name(a), peer_name(c)]),
        "the ring is divided between the two allocating peers only"
    );
    assert_eq!(ring_a.owner(x.addr), peer_name(a));
    assert_eq!(ring_a.owner(y.addr), peer_name(c));

    // A claim on C of an address A owns: a space request to A and its answer, both
    // through B.
    let wanted = Cidr {
        addr: x.addr.offset(7),
        prefix_len: universe().prefix_len,
    };
    let deadline = sim.instant() + secs(60);
    let r = sim
        .call(c, |n, _, now| {
            n.request(|al| al.claim(OpId(3), "claimed-on-c", wanted, true, deadline, now))
        })
        .expect("running");
    assert!(r.is_none(), "C does not own {wanted}: it must ask A");
    assert_eq!(
        await_reply(&mut sim, c, OpId(3), secs(30)),
        Ok(Reply::Claimed)
    );
    assert_eq!(
        sim.peers[c].app.alloc().ring().owner(wanted.addr),
        peer_name(c)
    );

    // Free counts travel with the periodic gossip, through B too: the rings agree.
    let t = sim.run_until_true(secs(1), sim.now + secs(300), |s| {
        World::rings_agree(s, &[a, c])
    });
    assert!(t.is_some(), "the rings of A and C never agreed");
    assert!(!connected_to(&sim, a, c) && !connected_to(&sim, c, a));
    assert!(sim.peers[b].app.alloc.is_none(), "B runs no IPAM");
    for i in [a, c] {
        assert!(
            sim.peers[i].app.bad.is_empty(),
            "{:?}",
            sim.peers[i].app.bad
        );
        assert!(
            sim.peers[i].app.unrouted.is_empty(),
            "{:?} {:?}",
            sim.peers[i].app.unrouted,
            sim.base
        );
    }
}
