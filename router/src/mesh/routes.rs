//! Unicast and broadcast routes, computed exactly as Weave computes them.
//!
//! Breadth-first search from a start peer, each level visited in name order; a peer takes
//! its first hop from the first peer of the lowest level that lists it. With
//! `established_symmetric`, a connection counts only when it is established and the remote
//! lists an established connection back.

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{PeerName, UNKNOWN_PEER_NAME};
use crate::mesh::topology::Topology;

/// Destination → first hop (`UNKNOWN_PEER_NAME` for the start peer itself).
pub type UnicastRoutes = BTreeMap<PeerName, PeerName>;

/// Unicast routes from `start`.
pub fn unicast(topo: &Topology, start: PeerName, established_symmetric: bool) -> UnicastRoutes {
    search(topo, start, None, established_symmetric).1
}

/// Every peer reachable from `start`, itself included.
pub fn reachable(
    topo: &Topology,
    start: PeerName,
    established_symmetric: bool,
) -> BTreeSet<PeerName> {
    unicast(topo, start, established_symmetric)
        .into_keys()
        .collect()
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

/// The search itself; stops when `stop_at` is dequeued, returning whether it was.
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
}
