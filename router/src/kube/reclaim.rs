//! Reclaiming a deleted Node's addresses exactly once: the decisions, as pure functions over
//! the annotations of the `weave-net` ConfigMap in `kube-system`.
//!
//! The format and the steps are Weave Net's (`prog/kube-utils`), so weave-router and Weave
//! Net pods coordinate through the same ConfigMap while a cluster moves from one to the
//! other:
//! - `kube-peers.weave.works/peers` holds `{"Peers":[{"PeerName":..,"NodeName":..}]}`: every
//!   peer that has run on a Node of the cluster. Each router adds itself when it starts.
//! - A peer in that list whose Node is gone has disappeared. A router that wants to reclaim
//!   its space first writes the claim `kube-peers.weave.works/<peer>` = its own peer name
//!   (key characters other than letters, digits, `-_./` become `_`). The write carries the
//!   ConfigMap's `resourceVersion`, so of two routers racing, the API server accepts one
//!   write and refuses the other with a conflict: only the winner goes on.
//! - The winner takes the peer's ring space over (`rmpeer`), then removes the peer from the
//!   list, any claims the peer itself held, and its own claim.
//! - A claim held by a peer that is no longer in the list (it died mid-reclaim) may be taken
//!   over; a claim already ours (we restarted mid-reclaim) is carried on.
//!
//! The I/O around these steps (reading and writing the ConfigMap, retrying on conflicts,
//! calling the allocator) is in [`super`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Deserializer, Serialize};

/// Namespace of the ConfigMap.
pub const NAMESPACE: &str = "kube-system";
/// Name of the ConfigMap (Weave's).
pub const CONFIGMAP: &str = "weave-net";
/// Prefix of every annotation key.
pub const PREFIX: &str = "kube-peers.weave.works/";
/// Key of the peer list.
pub const PEERS_KEY: &str = "kube-peers.weave.works/peers";

/// The ConfigMap's annotations.
pub type Annotations = BTreeMap<String, String>;

/// The peer list, in Weave's JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerList {
    /// Every peer seen, in the order they joined. Go writes `null` for an empty list.
    #[serde(rename = "Peers", default, deserialize_with = "null_as_empty")]
    pub peers: Vec<PeerInfo>,
}

/// One peer of the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The peer's name (`aa:bb:cc:dd:ee:ff`).
    #[serde(rename = "PeerName")]
    pub peer_name: String,
    /// The Node it ran on.
    #[serde(rename = "NodeName")]
    pub node_name: String,
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PeerInfo>, D::Error> {
    Ok(Option::<Vec<PeerInfo>>::deserialize(d)?.unwrap_or_default())
}

impl PeerList {
    /// Whether `peer` is listed.
    pub fn contains(&self, peer: &str) -> bool {
        self.peers.iter().any(|p| p.peer_name == peer)
    }
}

/// The peer list annotation is not Weave's JSON.
#[derive(Debug, thiserror::Error)]
#[error("annotation {PEERS_KEY} of ConfigMap {NAMESPACE}/{CONFIGMAP} is not a peer list: {0}")]
pub struct BadPeerList(#[from] serde_json::Error);

/// An annotation key in the form the API accepts, as Weave makes it.
pub fn clean_key(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The key of the claim to reclaim `peer`.
pub fn claim_key(peer: &str) -> String {
    clean_key(&format!("{PREFIX}{peer}"))
}

/// The peer list (empty when there is none yet).
pub fn peer_list(a: &Annotations) -> Result<PeerList, BadPeerList> {
    match a.get(PEERS_KEY) {
        Some(text) => Ok(serde_json::from_str(text)?),
        None => Ok(PeerList::default()),
    }
}

fn set_peer_list(a: &mut Annotations, list: &PeerList) {
    let text = serde_json::to_string(list).expect("a peer list always serialises");
    a.insert(PEERS_KEY.to_string(), text);
}

/// Adds us to the list; whether that changed anything.
pub fn add_member(a: &mut Annotations, me: &str, node: &str) -> Result<bool, BadPeerList> {
    let mut list = peer_list(a)?;
    if list.contains(me) {
        return Ok(false);
    }
    list.peers.push(PeerInfo {
        peer_name: me.to_string(),
        node_name: node.to_string(),
    });
    set_peer_list(a, &list);
    Ok(true)
}

/// The listed peers whose Node is gone, as Weave finds them: not us, and not on a Node that
/// exists, except a peer other than us listed on our own Node (an earlier life of this
/// Node, with another peer name).
pub fn disappeared(
    list: &PeerList,
    nodes: &BTreeSet<String>,
    me: &str,
    my_node: &str,
) -> Vec<PeerInfo> {
    let mut seen = BTreeSet::new();
    list.peers
        .iter()
        .filter(|p| p.peer_name != me)
        .filter(|p| !nodes.contains(&p.node_name) || p.node_name == my_node)
        .filter(|p| seen.insert(p.peer_name.clone()))
        .cloned()
        .collect()
}

/// What to do about a disappeared peer, given the ConfigMap as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// We claimed it before (and restarted, or retry): go on.
    Ours,
    /// Unclaimed, or claimed by a peer that is itself gone: write our claim, and go on only
    /// if the write is accepted.
    Take,
    /// Another live peer claimed it: leave it to that peer.
    Theirs(String),
}

/// Whether we may reclaim `peer`.
pub fn claim(a: &Annotations, list: &PeerList, peer: &str, me: &str) -> Claim {
    match a.get(&claim_key(peer)) {
        None => Claim::Take,
        Some(holder) if holder == me => Claim::Ours,
        Some(holder) if !list.contains(holder) => Claim::Take,
        Some(holder) => Claim::Theirs(holder.clone()),
    }
}

/// Writes our claim on `peer`.
pub fn take(a: &mut Annotations, peer: &str, me: &str) {
    a.insert(claim_key(peer), me.to_string());
}

/// Gives up our claim on `peer` (it turned out to be alive); whether it was ours.
pub fn give_up(a: &mut Annotations, peer: &str, me: &str) -> bool {
    let key = claim_key(peer);
    if a.get(&key).map(String::as_str) == Some(me) {
        a.remove(&key);
        true
    } else {
        false
    }
}

/// After the takeover: removes the claims `peer` held, `peer` from the list and the claim on
/// `peer`; whether anything changed.
pub fn finish(a: &mut Annotations, peer: &str) -> Result<bool, BadPeerList> {
    let before = a.clone();
    a.retain(|_, holder| holder != peer);
    let mut list = peer_list(a)?;
    if list.contains(peer) {
        list.peers.retain(|p| p.peer_name != peer);
        set_peer_list(a, &list);
    }
    a.remove(&claim_key(peer));
    Ok(*a != before)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aa:00:00:00:00:01";
    const B: &str = "aa:00:00:00:00:02";
    const C: &str = "aa:00:00:00:00:03";

    /// A, B and C on node-1, node-2 and node-3.
    fn three_members() -> Annotations {
        let mut a = Annotations::new();
        for (peer, node) in [(A, "node-1"), (B, "node-2"), (C, "node-3")] {
            add_member(&mut a, peer, node).unwrap();
        }
        a
    }

    fn names(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn keys_and_list_are_weaves() {
        assert_eq!(claim_key(C), "kube-peers.weave.works/aa_00_00_00_00_03");
        // What Weave's kube-utils writes (Go's encoding/json of its peerList).
        let weave = r#"{"Peers":[{"PeerName":"aa:00:00:00:00:01","NodeName":"node-1"}]}"#;
        let mut a = Annotations::from([(PEERS_KEY.to_string(), weave.to_string())]);
        let list = peer_list(&a).unwrap();
        assert!(list.contains(A));
        assert!(!add_member(&mut a, A, "node-1").unwrap());
        assert_eq!(
            a[PEERS_KEY], weave,
            "an unchanged list is left byte for byte"
        );
        assert!(add_member(&mut a, B, "node-2").unwrap());
        assert_eq!(
            a[PEERS_KEY],
            r#"{"Peers":[{"PeerName":"aa:00:00:00:00:01","NodeName":"node-1"},{"PeerName":"aa:00:00:00:00:02","NodeName":"node-2"}]}"#
        );
        let null = Annotations::from([(PEERS_KEY.to_string(), r#"{"Peers":null}"#.to_string())]);
        assert_eq!(peer_list(&null).unwrap(), PeerList::default());
        let bad = Annotations::from([(PEERS_KEY.to_string(), "[".to_string())]);
        assert!(peer_list(&bad)
            .unwrap_err()
            .to_string()
            .contains("kube-system/weave-net"));
    }

    #[test]
    fn disappeared_follows_weave() {
        let a = three_members();
        let list = peer_list(&a).unwrap();
        let gone = |nodes: &[&str], me: &str, my_node: &str| -> Vec<String> {
            disappeared(&list, &names(nodes), me, my_node)
                .into_iter()
                .map(|p| p.peer_name)
                .collect()
        };
        assert!(gone(&["node-1", "node-2", "node-3"], A, "node-1").is_empty());
        assert_eq!(gone(&["node-1", "node-2"], A, "node-1"), vec![C]);
        // Never ourselves, even when our Node is missing.
        assert_eq!(gone(&["node-2"], A, "node-1"), vec![C]);
        // Node-1 came back with a new peer name: the old one listed there is gone.
        assert_eq!(
            gone(
                &["node-1", "node-2", "node-3"],
                "aa:00:00:00:00:09",
                "node-1"
            ),
            vec![A]
        );
    }

    #[test]
    fn claims() {
        let mut a = three_members();
        let list = peer_list(&a).unwrap();
        assert_eq!(claim(&a, &list, C, A), Claim::Take);
        take(&mut a, C, A);
        assert_eq!(claim(&a, &list, C, A), Claim::Ours);
        assert_eq!(claim(&a, &list, C, B), Claim::Theirs(A.to_string()));
        // A vanished from the list mid-reclaim: B may take its claim over.
        let without_a = PeerList {
            peers: list
                .peers
                .iter()
                .filter(|p| p.peer_name != A)
                .cloned()
                .collect(),
        };
        assert_eq!(claim(&a, &without_a, C, B), Claim::Take);
        assert!(!give_up(&mut a, C, B));
        assert!(give_up(&mut a, C, A));
        assert_eq!(claim(&a, &list, C, A), Claim::Take);
    }

    #[test]
    fn finish_clears_the_peer_everywhere() {
        let mut a = three_members();
        a.insert("other.example/keep".into(), "x".into());
        // C had claimed B, then died; A reclaims C.
        take(&mut a, B, C);
        take(&mut a, C, A);
        assert!(finish(&mut a, C).unwrap());
        let list = peer_list(&a).unwrap();
        assert!(!list.contains(C) && list.contains(A) && list.contains(B));
        assert!(!a.contains_key(&claim_key(C)));
        assert!(!a.contains_key(&claim_key(B)), "C's own claims go with it");
        assert_eq!(a["other.example/keep"], "x");
        assert!(
            !finish(&mut a, C).unwrap(),
            "a second finish changes nothing"
        );
    }
}
