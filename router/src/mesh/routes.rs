//! Unicast and broadcast routes, computed exactly as Weave computes them.
//!
//! Breadth-first search from a start peer, each level visited in name order; a peer takes
//! its first hop from the first peer of the lowest level that lists it. With
//! `established_symmetric`, a connection counts only when it is established and the remote
//! lists an established connection back.
//!
//! [`Graph`] indexes a topology once (peers by name order, adjacency as index lists), so
//! that one search costs O(peers + connections). Weave computes the broadcast routes of
//! every source with a search from each source, which is quadratic in the mesh's size;
//! [`Graph::broadcast_all`] gets the same answer from the searches of ourself, our
//! neighbours and theirs (see there). [`broadcast`] stays as the per-source definition.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::ids::{PeerName, UNKNOWN_PEER_NAME};
use crate::mesh::topology::Topology;

/// Destination → first hop (`UNKNOWN_PEER_NAME` for the start peer itself).
pub type UnicastRoutes = BTreeMap<PeerName, PeerName>;

/// Marks a peer a search has not reached.
const UNREACHED: u32 = u32::MAX;

/// A topology's connections under one rule, indexed for searches: peer `i` is the `i`th
/// name in order, and `adj[i]` lists the peers it is connected to, in name order.
#[derive(Debug, Clone)]
pub struct Graph {
    names: Vec<PeerName>,
    adj: Vec<Vec<u32>>,
    symmetric: bool,
}

impl Graph {
    /// Indexes `topo`'s connections under the rule (see the module head).
    pub fn new(topo: &Topology, established_symmetric: bool) -> Self {
        let names: Vec<PeerName> = topo.peers().map(|p| p.name).collect();
        let adj = topo
            .peers()
            .map(|p| {
                p.conns
                    .iter()
                    .filter_map(|(remote, conn)| {
                        let j = names.binary_search(remote).ok()?;
                        if established_symmetric {
                            let r = topo.get(*remote)?;
                            let back = r.conns.get(&p.name)?;
                            if !(conn.established && back.established) {
                                return None;
                            }
                        }
                        Some(j as u32)
                    })
                    .collect()
            })
            .collect();
        Graph {
            names,
            adj,
            symmetric: established_symmetric,
        }
    }

    fn index(&self, name: PeerName) -> Option<u32> {
        self.names.binary_search(&name).ok().map(|i| i as u32)
    }

    /// Hop counts from `start` to every peer (`UNREACHED` where none).
    fn distances(&self, start: u32) -> Vec<u32> {
        let mut dist = vec![UNREACHED; self.names.len()];
        dist[start as usize] = 0;
        let mut level = vec![start];
        let mut d = 0;
        while !level.is_empty() {
            d += 1;
            let mut next = Vec::new();
            for &cur in &level {
                for &r in &self.adj[cur as usize] {
                    if dist[r as usize] == UNREACHED {
                        dist[r as usize] = d;
                        next.push(r);
                    }
                }
            }
            level = next;
        }
        dist
    }

    /// Unicast routes from `start`, as [`unicast`] gives them.
    pub fn unicast(&self, start: PeerName) -> UnicastRoutes {
        let mut routes = UnicastRoutes::new();
        let Some(s) = self.index(start) else {
            return routes;
        };
        let mut hop = vec![UNREACHED; self.names.len()];
        hop[s as usize] = s;
        routes.insert(start, UNKNOWN_PEER_NAME);
        let mut level = vec![s];
        while !level.is_empty() {
            // Each level in name order: the first peer to list a remote gives it its hop.
            level.sort_unstable();
            let mut next = Vec::new();
            for &cur in &level {
                for &r in &self.adj[cur as usize] {
                    if hop[r as usize] == UNREACHED {
                        let h = if cur == s { r } else { hop[cur as usize] };
                        hop[r as usize] = h;
                        routes.insert(self.names[r as usize], self.names[h as usize]);
                        next.push(r);
                    }
                }
            }
            level = next;
        }
        routes
    }

    /// The broadcast next hops of `ourself` for every source, as [`broadcast`] gives them
    /// one source at a time, over a symmetric graph (`established_symmetric`).
    ///
    /// Source S's search dequeues us at level d = dist(S, us). By then it has reached
    /// every peer within d, and those at d + 1 that a peer of level d listed before us, in
    /// name order. So neighbour N gets S's broadcasts from us exactly when
    /// dist(S, N) = d + 1 and no neighbour of N named below us lies at distance d. In a
    /// symmetric graph dist(S, X) = dist(X, S), so the searches from us, our neighbours
    /// and their neighbours give every source's answer: O(degree² · (peers +
    /// connections)) instead of a search per source. Where those are more searches than
    /// there are peers, one search per source is cheaper and gives the same answer.
    pub fn broadcast_all(&self, ourself: PeerName) -> BTreeMap<PeerName, Vec<PeerName>> {
        let Some(u) = self.index(ourself) else {
            return self.names.iter().map(|n| (*n, Vec::new())).collect();
        };
        let nbrs = &self.adj[u as usize];
        let mut around: BTreeSet<u32> = nbrs.iter().copied().collect();
        around.insert(u);
        for &n in nbrs {
            around.extend(self.adj[n as usize].iter().copied());
        }
        if !self.symmetric || around.len() >= self.names.len() {
            return self.broadcast_each(u);
        }
        // dist[x][s] = dist(x, s) for every x around us.
        let dist: BTreeMap<u32, Vec<u32>> =
            around.iter().map(|&x| (x, self.distances(x))).collect();
        let from_us = &dist[&u];
        (0..self.names.len())
            .map(|s| {
                let d = from_us[s];
                let hops = if d == UNREACHED {
                    Vec::new()
                } else {
                    nbrs.iter()
                        .filter(|&&n| {
                            dist[&n][s] == d + 1
                                && !self.adj[n as usize]
                                    .iter()
                                    .any(|&x| x < u && dist[&x][s] == d)
                        })
                        .map(|&n| self.names[n as usize])
                        .collect()
                };
                (self.names[s], hops)
            })
            .collect()
    }

    /// [`Graph::broadcast_all`] by one search per source, stopping at us.
    fn broadcast_each(&self, u: u32) -> BTreeMap<PeerName, Vec<PeerName>> {
        let len = self.names.len();
        let mut reached = vec![false; len];
        (0..len as u32)
            .map(|s| {
                reached.iter_mut().for_each(|r| *r = false);
                reached[s as usize] = true;
                let mut level = vec![s];
                let mut found = false;
                'search: while !level.is_empty() {
                    level.sort_unstable();
                    let mut next = Vec::new();
                    for &cur in &level {
                        if cur == u {
                            found = true;
                            break 'search;
                        }
                        for &r in &self.adj[cur as usize] {
                            if !reached[r as usize] {
                                reached[r as usize] = true;
                                next.push(r);
                            }
                        }
                    }
                    level = next;
                }
                let hops = if found {
                    self.adj[u as usize]
                        .iter()
                        .filter(|&&n| !reached[n as usize])
                        .map(|&n| self.names[n as usize])
                        .collect()
                } else {
                    Vec::new()
                };
                (self.names[s as usize], hops)
            })
            .collect()
    }
}

/// Unicast routes from `start`.
pub fn unicast(topo: &Topology, start: PeerName, established_symmetric: bool) -> UnicastRoutes {
    Graph::new(topo, established_symmetric).unicast(start)
}

/// Every peer reachable from `start` over the connections each entry lists (one-sided
/// ones count), itself included: what [`unicast`] without `established_symmetric` reaches.
/// Garbage collection asks this after every batch of changes, so it walks the table
/// directly, in no particular order, rather than indexing it for ordered searches.
pub fn reachable(topo: &Topology, start: PeerName) -> HashSet<PeerName> {
    let mut seen = HashSet::with_capacity(topo.len());
    if topo.get(start).is_none() {
        return seen;
    }
    seen.insert(start);
    let mut stack = vec![start];
    while let Some(cur) = stack.pop() {
        let Some(p) = topo.get(cur) else {
            continue;
        };
        for r in p.conns.keys() {
            if !seen.contains(r) && topo.get(*r).is_some() {
                seen.insert(*r);
                stack.push(*r);
            }
        }
    }
    seen
}

/// The neighbours of `ourself` that a broadcast from `source` must be forwarded to: those
/// that `source`'s own search has not reached by the time it reaches us.
pub fn broadcast(
    topo: &Topology,
    ourself: PeerName,
    source: PeerName,
    established_symmetric: bool,
) -> Vec<PeerName> {
    if topo.get(source).is_none() {
        return Vec::new();
    }
    let (found, reached) = search(topo, source, Some(ourself), established_symmetric);
    if !found {
        return Vec::new();
    }
    connected_peers(topo, ourself, established_symmetric, &reached)
}

/// The search itself, as Weave writes it; stops when `stop_at` is dequeued, returning
/// whether it was.
fn search(
    topo: &Topology,
    start: PeerName,
    stop_at: Option<PeerName>,
    established_symmetric: bool,
) -> (bool, UnicastRoutes) {
    let mut routes = UnicastRoutes::new();
    if topo.get(start).is_none() {
        return (false, routes);
    }
    routes.insert(start, UNKNOWN_PEER_NAME);
    let mut next = vec![start];
    while !next.is_empty() {
        let mut worklist = std::mem::take(&mut next);
        worklist.sort_unstable();
        for cur in worklist {
            if Some(cur) == stop_at {
                return (true, routes);
            }
            for remote in connected_peers(topo, cur, established_symmetric, &routes) {
                let hop = if cur == start { remote } else { routes[&cur] };
                routes.insert(remote, hop);
                next.push(remote);
            }
        }
    }
    (false, routes)
}

/// The peers `peer` is connected to under the rule, leaving out those in `exclude`.
fn connected_peers(
    topo: &Topology,
    peer: PeerName,
    established_symmetric: bool,
    exclude: &UnicastRoutes,
) -> Vec<PeerName> {
    let Some(p) = topo.get(peer) else {
        return Vec::new();
    };
    p.conns
        .iter()
        .filter(|(remote, conn)| {
            if exclude.contains_key(remote) {
                return false;
            }
            let Some(r) = topo.get(**remote) else {
                return false;
            };
            if !established_symmetric {
                return true;
            }
            conn.established && r.conns.get(&peer).is_some_and(|back| back.established)
        })
        .map(|(remote, _)| *remote)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{PeerUid, ShortId};
    use crate::mesh::topology::{Peer, PeerConn};

    fn name(n: u64) -> PeerName {
        PeerName::from_u64(n).unwrap()
    }

    /// A topology from undirected established edges; peer 1 is ourself.
    fn topo(n: u64, edges: &[(u64, u64)]) -> Topology {
        let mk = |i: u64| Peer {
            name: name(i),
            nickname: format!("p{i}"),
            uid: PeerUid(i),
            version: 1,
            short_id: ShortId(i as u16),
            has_short_id: true,
            conns: BTreeMap::new(),
            local_refs: 0,
            history: None,
        };
        let mut all: BTreeMap<u64, Peer> = (1..=n).map(|i| (i, mk(i))).collect();
        for &(a, b) in edges {
            let c = PeerConn {
                remote_tcp_addr: String::new(),
                outbound: true,
                established: true,
            };
            all.get_mut(&a).unwrap().conns.insert(name(b), c.clone());
            all.get_mut(&b).unwrap().conns.insert(name(a), c);
        }
        let mut t = Topology::new(all.remove(&1).unwrap());
        let entries: Vec<_> = all.values().map(Peer::to_entry).collect();
        t.apply_entries(&entries, &mut |_| ShortId(0));
        // Our own connections are local state, not gossip.
        for &(a, b) in edges {
            if a == 1 || b == 1 {
                let other = if a == 1 { b } else { a };
                t.ourself_mut().conns.insert(
                    name(other),
                    PeerConn {
                        remote_tcp_addr: String::new(),
                        outbound: true,
                        established: true,
                    },
                );
            }
        }
        t
    }

    #[test]
    fn chain_routes_through_the_middle() {
        let t = topo(3, &[(1, 2), (2, 3)]);
        let r = unicast(&t, name(1), true);
        assert_eq!(r[&name(1)], UNKNOWN_PEER_NAME);
        assert_eq!(r[&name(2)], name(2));
        assert_eq!(r[&name(3)], name(2));
    }

    #[test]
    fn first_hop_ties_go_to_the_lower_name() {
        // 1 connects to 2 and 3, both connect to 4.
        let t = topo(4, &[(1, 3), (1, 2), (3, 4), (2, 4)]);
        assert_eq!(unicast(&t, name(1), true)[&name(4)], name(2));
    }

    #[test]
    fn asymmetric_or_unestablished_links_do_not_carry_data() {
        let mut t = topo(3, &[(1, 2), (2, 3)]);
        t.ourself_mut().conns.get_mut(&name(2)).unwrap().established = false;
        assert_eq!(unicast(&t, name(1), true).len(), 1);
        assert_eq!(unicast(&t, name(1), false).len(), 3);
    }

    #[test]
    fn broadcast_tree_matches_the_captured_three_peer_report() {
        // host2 (here 1) sits between host1 (2) and host3 (3): it forwards host1's
        // broadcasts to host3, host3's to host1, and its own to both.
        let t = topo(3, &[(1, 2), (1, 3)]);
        assert_eq!(broadcast(&t, name(1), name(2), true), vec![name(3)]);
        assert_eq!(broadcast(&t, name(1), name(3), true), vec![name(2)]);
        assert_eq!(
            broadcast(&t, name(1), name(1), true),
            vec![name(2), name(3)]
        );
    }

    #[test]
    fn broadcast_in_a_triangle_is_not_forwarded() {
        let t = topo(3, &[(1, 2), (1, 3), (2, 3)]);
        assert!(broadcast(&t, name(1), name(2), true).is_empty());
    }

    /// Random topologies, some connections one-sided or not established: the indexed
    /// searches give what Weave's per-source search gives.
    #[test]
    fn indexed_searches_match_the_per_source_search() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for round in 0..60 {
            let n: u64 = rng.gen_range(2..40);
            let degree = rng.gen_range(1..6);
            let mut edges = Vec::new();
            for a in 1..=n {
                for _ in 0..degree {
                    let b = rng.gen_range(1..=n);
                    if a != b {
                        edges.push((a, b));
                    }
                }
            }
            let mut t = topo(n, &edges);
            // Break some links: one end not established, or one end missing.
            let names: Vec<PeerName> = t.peers().map(|p| p.name).collect();
            for name in names.iter().skip(1) {
                let peer = t.get(*name).unwrap().clone();
                let mut entry = peer.to_entry();
                entry.0.version += 1;
                for c in entry.1.iter_mut() {
                    if rng.gen_bool(0.1) {
                        c.established = false;
                    }
                }
                entry.1.retain(|_| !rng.gen_bool(0.05));
                t.apply_entries(&[entry], &mut |_| ShortId(0));
            }
            for start in &names {
                let all: HashSet<PeerName> =
                    search(&t, *start, None, false).1.into_keys().collect();
                assert_eq!(reachable(&t, *start), all, "round {round}: reachable");
            }
            for sym in [true, false] {
                let g = Graph::new(&t, sym);
                for start in &names {
                    assert_eq!(
                        g.unicast(*start),
                        search(&t, *start, None, sym).1,
                        "round {round}: unicast from {start}, symmetric {sym}"
                    );
                }
            }
            let g = Graph::new(&t, true);
            for ourself in &names {
                let all = g.broadcast_all(*ourself);
                assert_eq!(all.len(), names.len());
                assert_eq!(all, g.broadcast_each(g.index(*ourself).unwrap()));
                for src in &names {
                    assert_eq!(
                        all[src],
                        broadcast(&t, *ourself, *src, true),
                        "round {round}: at {ourself} from {src}"
                    );
                }
            }
        }
    }
}
