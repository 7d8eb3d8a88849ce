//! Single-value Paxos over gossip, to agree on the peers the ring is first divided among.
//!
//! Every elector gossips what it knows of every node's claims (its promise and the proposal
//! it accepted); a node that hears of a higher promise adopts it, a proposer whose promise a
//! quorum shares asks them to accept its value by accepting it itself, and consensus is a
//! quorum of nodes that accepted proposals from the same origin. This is Weave's algorithm
//! (ipam/paxos), message for message, so weave-routers and Weave Net peers elect together.
//!
//! Nodes are (name, UID): a restarted peer is a new node and cannot contradict promises its
//! previous life made.

use std::collections::BTreeMap;

use crate::ids::PeerName;
use crate::wire::ipam::{AcceptedValue, NodeClaims, NodeId, ProposalId};

/// Whether `a` comes strictly before `b`: by round, then proposer name, then UID.
pub fn precedes(a: &ProposalId, b: &ProposalId) -> bool {
    key(a) < key(b)
}

fn key(p: &ProposalId) -> (u64, PeerName, u64) {
    (p.round, p.proposer.name, p.proposer.uid.0)
}

fn valid(p: &ProposalId) -> bool {
    p.round > 0
}

/// One elector's Paxos state.
#[derive(Debug, Clone)]
pub struct Node {
    id: NodeId,
    quorum: u32,
    knows: BTreeMap<NodeId, NodeClaims>,
}

impl Node {
    /// A node with no claims yet; the quorum is set when it first proposes.
    pub fn new(id: NodeId) -> Node {
        Node {
            id,
            quorum: 0,
            knows: BTreeMap::new(),
        }
    }

    /// The number of accepting nodes that makes a consensus.
    pub fn set_quorum(&mut self, quorum: u32) {
        self.quorum = quorum;
    }

    /// The quorum in force (0 before the first proposal).
    pub fn quorum(&self) -> u32 {
        self.quorum
    }

    /// How many nodes' claims we know, ourselves included once we proposed.
    pub fn known_nodes(&self) -> usize {
        self.knows.len()
    }

    /// What we gossip: every node's claims we know.
    pub fn gossip_state(&self) -> Vec<(NodeId, NodeClaims)> {
        self.knows
            .iter()
            .map(|(id, claims)| (*id, claims.clone()))
            .collect()
    }

    /// Learns from another node's gossip; true if anything was new.
    pub fn update(&mut self, from: &[(NodeId, NodeClaims)]) -> bool {
        let mut changed = false;
        for (id, theirs) in from {
            match self.knows.get_mut(id) {
                Some(claims) => {
                    if precedes(&claims.promise, &theirs.promise) {
                        claims.promise = theirs.promise;
                        changed = true;
                    }
                    if precedes(&claims.accepted, &theirs.accepted) {
                        claims.accepted = theirs.accepted;
                        claims.accepted_val = theirs.accepted_val.clone();
                        changed = true;
                    }
                }
                None => {
                    self.knows.insert(*id, theirs.clone());
                    changed = true;
                }
            }
        }
        changed
    }

    /// Starts a new proposal ("prepare"): a promise above every round we know of.
    pub fn propose(&mut self) {
        assert!(self.quorum > 0, "Paxos proposal without a quorum");
        let round = self
            .knows
            .values()
            .map(|c| c.promise.round.max(c.accepted.round))
            .max()
            .unwrap_or(0);
        let ours = self.knows.entry(self.id).or_default();
        ours.promise = ProposalId {
            round: round + 1,
            proposer: self.id,
        };
        if self.quorum == 1 {
            self.think();
        }
    }

    /// Runs the promise, accept-request and accepted steps; true if our claims changed.
    pub fn think(&mut self) -> bool {
        let before = self.knows.get(&self.id).cloned().unwrap_or_default();
        let mut ours = before.clone();

        // Promise: adopt the highest promise known.
        for claims in self.knows.values() {
            if precedes(&ours.promise, &claims.promise) {
                ours.promise = claims.promise;
            }
        }

        // Accept request: our own proposal, promised by a quorum, gets a value.
        if ours.promise.proposer == self.id {
            let mut count = 0u32;
            let mut accepted = ProposalId::default();
            let mut accepted_val = AcceptedValue::default();
            for claims in self.knows.values() {
                if claims.promise == ours.promise {
                    count += 1;
                    if precedes(&accepted, &claims.accepted) {
                        accepted = claims.accepted;
                        accepted_val = claims.accepted_val.clone();
                    }
                }
            }
            if count >= self.quorum {
                if !valid(&accepted) {
                    accepted_val = AcceptedValue {
                        value: self.knows.keys().map(|id| id.name).collect(),
                        origin: ours.promise,
                    };
                }
                ours.accepted = ours.promise;
                ours.accepted_val = accepted_val;
            }
        }

        // Accepted: if another node accepted the proposal we promised, accept it too.
        if let Some(claims) = self.knows.values().find(|c| c.accepted == ours.promise) {
            ours.accepted = claims.accepted;
            ours.accepted_val = claims.accepted_val.clone();
        }

        if same_claims(&ours, &before) {
            return false;
        }
        self.knows.insert(self.id, ours);
        true
    }

    /// The agreed value, once a quorum accepted proposals of one origin.
    pub fn consensus(&self) -> Option<AcceptedValue> {
        if self.quorum == 0 {
            return None;
        }
        let mut counts: BTreeMap<(u64, PeerName, u64), u32> = BTreeMap::new();
        for claims in self.knows.values() {
            if !valid(&claims.accepted) {
                continue;
            }
            let n = counts.entry(key(&claims.accepted_val.origin)).or_insert(0);
            *n += 1;
            if *n >= self.quorum {
                return Some(claims.accepted_val.clone());
            }
        }
        None
    }
}

/// Weave compares claims by promise, accepted proposal and the value's origin.
fn same_claims(a: &NodeClaims, b: &NodeClaims) -> bool {
    a.promise == b.promise
        && a.accepted == b.accepted
        && a.accepted_val.origin == b.accepted_val.origin
}

/// Sorts and deduplicates an agreed value: Paxos values come in no defined order.
pub fn normalize(value: &[PeerName]) -> Vec<PeerName> {
    let mut peers = value.to_vec();
    peers.sort();
    peers.dedup();
    peers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::PeerUid;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn node(i: u64) -> Node {
        Node::new(NodeId {
            name: PeerName::from_u64(i).unwrap(),
            uid: PeerUid(1000 + i),
        })
    }

    /// Nodes gossip to random others, losing some messages; all that hear enough agree on
    /// one value, and no two consensus values ever differ.
    #[test]
    fn random_gossip_reaches_one_consensus() {
        for seed in 0..200u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let n = rng.gen_range(1..8usize);
            let quorum = (n / 2 + 1) as u32;
            let mut nodes: Vec<Node> = (1..=n as u64).map(node).collect();
            for nd in &mut nodes {
                nd.set_quorum(quorum);
            }
            // Some nodes propose at once (competing proposers).
            let proposers = rng.gen_range(1..=n);
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut rng);
            for &i in &order[..proposers] {
                nodes[i].propose();
            }
            let mut agreed: Option<Vec<PeerName>> = None;
            for step in 0..2000 {
                // Proposers without a consensus propose again now and then, as the
                // allocator does on its tick.
                if step % 100 == 99 {
                    for &i in &order[..proposers] {
                        if nodes[i].consensus().is_none() && rng.gen_bool(0.5) {
                            nodes[i].propose();
                        }
                    }
                }
                let from = rng.gen_range(0..n);
                let to = rng.gen_range(0..n);
                if from != to && !rng.gen_bool(0.2) {
                    let state = nodes[from].gossip_state();
                    if nodes[to].update(&state) {
                        nodes[to].think();
                    }
                }
                for nd in &nodes {
                    if let Some(v) = nd.consensus() {
                        let v = normalize(&v.value);
                        match &agreed {
                            Some(a) => assert_eq!(a, &v, "seed {seed}: two values agreed"),
                            None => agreed = Some(v),
                        }
                    }
                }
            }
            let value = agreed.unwrap_or_else(|| panic!("seed {seed}: no consensus"));
            assert!(value.len() >= quorum as usize, "value holds a quorum");
        }
    }

    #[test]
    fn quorum_of_one_agrees_on_itself() {
        let mut n = node(1);
        n.set_quorum(1);
        n.propose();
        let v = n.consensus().expect("consensus");
        assert_eq!(v.value, vec![PeerName::from_u64(1).unwrap()]);
    }
}
