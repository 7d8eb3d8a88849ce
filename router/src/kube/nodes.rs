//! Which Nodes are peers, and at which address: pure functions over the API's Node objects.
//!
//! As Weave's `kube-utils` does it: a Node's IPv4 InternalIP, else its IPv4 ExternalIP (a
//! Node with neither is not dialled); our own Node is left out, by name and by address.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Node;

/// The address the mesh dials for `node`: its first IPv4 InternalIP, else its first IPv4
/// ExternalIP.
pub fn node_address(node: &Node) -> Option<Ipv4Addr> {
    let addresses = node.status.as_ref()?.addresses.as_ref()?;
    let first = |kind: &str| {
        addresses
            .iter()
            .filter(|a| a.type_ == kind)
            .find_map(|a| a.address.trim().parse::<Ipv4Addr>().ok())
    };
    first("InternalIP").or_else(|| first("ExternalIP"))
}

/// The addresses of every Node but ours (named `me`, or holding an address `is_local`
/// says is this host's), sorted and without duplicates.
pub fn peer_addresses<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    me: &str,
    is_local: impl Fn(Ipv4Addr) -> bool,
) -> Vec<Ipv4Addr> {
    let set: BTreeSet<Ipv4Addr> = nodes
        .into_iter()
        .filter(|n| n.metadata.name.as_deref() != Some(me))
        .filter_map(node_address)
        .filter(|a| !is_local(*a))
        .collect();
    set.into_iter().collect()
}

/// The Nodes the cluster has, by name, as a watch keeps them.
#[derive(Debug, Default)]
pub struct NodeSet {
    nodes: BTreeMap<String, Node>,
    /// Objects received since the watch (re)started its list, until the list is complete.
    listing: Option<BTreeMap<String, Node>>,
    /// A complete list has been seen.
    seen_list: bool,
}

/// What a watch event changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Change {
    /// The set is complete (the first list is done).
    pub ready: bool,
    /// Names that are gone.
    pub removed: Vec<String>,
    /// Whether the addresses the peers come from may have changed (a Node added, gone, or
    /// given another address, or a new list); a status update alone leaves them.
    pub addresses: bool,
}

impl NodeSet {
    /// Whether the first complete list has been seen.
    pub fn is_ready(&self) -> bool {
        self.seen_list
    }

    /// Every Node.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// Every Node's name.
    pub fn names(&self) -> BTreeSet<String> {
        self.nodes.keys().cloned().collect()
    }

    /// A Node was added or changed.
    pub fn apply(&mut self, node: Node) -> Change {
        let Some(name) = node.metadata.name.clone() else {
            return Change::default();
        };
        let addresses = self.nodes.get(&name).map(node_address) != Some(node_address(&node));
        self.nodes.insert(name, node);
        Change {
            ready: self.seen_list,
            removed: Vec::new(),
            addresses,
        }
    }

    /// A Node was deleted.
    pub fn delete(&mut self, node: &Node) -> Change {
        let removed = node
            .metadata
            .name
            .as_ref()
            .and_then(|n| self.nodes.remove_entry(n))
            .map(|(n, _)| vec![n])
            .unwrap_or_default();
        Change {
            ready: self.seen_list,
            addresses: !removed.is_empty(),
            removed,
        }
    }

    /// The watch starts (again) with a full list.
    pub fn list_started(&mut self) {
        self.listing = Some(BTreeMap::new());
    }

    /// One Node of the list.
    pub fn listed(&mut self, node: Node) {
        if let (Some(listing), Some(name)) = (self.listing.as_mut(), node.metadata.name.clone()) {
            listing.insert(name, node);
        }
    }

    /// The list is complete: it replaces what was known; Nodes it lacks were deleted while
    /// the watch was down.
    pub fn list_done(&mut self) -> Change {
        let Some(listing) = self.listing.take() else {
            return Change::default();
        };
        let removed = self
            .nodes
            .keys()
            .filter(|n| !listing.contains_key(*n))
            .cloned()
            .collect();
        self.nodes = listing;
        self.seen_list = true;
        Change {
            ready: true,
            removed,
            addresses: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, addrs: &[(&str, &str)]) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"addresses": addrs.iter().map(|(t, a)| serde_json::json!({"type": t, "address": a})).collect::<Vec<_>>()}
        }))
        .expect("node JSON")
    }

    #[test]
    fn internal_ipv4_first_then_external() {
        let n = node(
            "a",
            &[
                ("Hostname", "a"),
                ("InternalIP", "fd00::1"),
                ("ExternalIP", "203.0.113.7"),
                ("InternalIP", "10.0.0.1"),
            ],
        );
        assert_eq!(node_address(&n), Some(Ipv4Addr::new(10, 0, 0, 1)));
        let n = node("b", &[("ExternalIP", "203.0.113.8"), ("Hostname", "b")]);
        assert_eq!(node_address(&n), Some(Ipv4Addr::new(203, 0, 113, 8)));
        let n = node("c", &[("Hostname", "c"), ("InternalIP", "fd00::3")]);
        assert_eq!(node_address(&n), None);
        assert_eq!(node_address(&serde_json::from_str("{}").unwrap()), None);
    }

    #[test]
    fn peers_leave_out_ourselves_by_name_and_address() {
        let nodes = [
            node("me", &[("InternalIP", "10.0.0.1")]),
            node("b", &[("InternalIP", "10.0.0.2")]),
            node("c", &[("InternalIP", "10.0.0.9")]),
            node("d", &[("InternalIP", "10.0.0.2")]),
            node("e", &[]),
        ];
        let local = |a: Ipv4Addr| a == Ipv4Addr::new(10, 0, 0, 9);
        assert_eq!(
            peer_addresses(&nodes, "me", local),
            vec![Ipv4Addr::new(10, 0, 0, 2)]
        );
    }

    #[test]
    fn a_relist_reports_what_went_missing() {
        let mut set = NodeSet::default();
        assert!(!set.is_ready());
        set.list_started();
        set.listed(node("a", &[]));
        set.listed(node("b", &[]));
        assert_eq!(
            set.list_done(),
            Change {
                ready: true,
                removed: vec![],
                addresses: true,
            }
        );
        assert!(set.is_ready());
        let added = set.apply(node("c", &[("InternalIP", "10.0.0.3")]));
        assert_eq!(added.removed, Vec::<String>::new());
        assert!(added.addresses);
        // A status update (same address) leaves the peers alone; a new address does not.
        assert!(
            !set.apply(node("c", &[("InternalIP", "10.0.0.3")]))
                .addresses
        );
        assert!(
            set.apply(node("c", &[("InternalIP", "10.0.0.4")]))
                .addresses
        );
        let gone = set.delete(&node("a", &[]));
        assert_eq!(gone.removed, vec!["a".to_string()]);
        assert!(gone.addresses);
        let again = set.delete(&node("a", &[]));
        assert_eq!(again.removed, Vec::<String>::new());
        assert!(!again.addresses);
        // The watch broke; b went away meanwhile.
        set.list_started();
        set.listed(node("c", &[]));
        assert_eq!(set.list_done().removed, vec!["b".to_string()]);
        assert_eq!(set.names(), BTreeSet::from(["c".to_string()]));
    }
}
