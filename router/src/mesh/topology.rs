//! The peer table and Weave's topology merge rule.
//!
//! Every peer's entry (name, UID, version, short id, its connections) travels in topology
//! gossip. An entry replaces ours when it has the higher (version, UID), or the same with a
//! short id where ours had none. Updates about an older incarnation of ourself make us bump
//! our own version beyond theirs, so that our current entry wins everywhere.

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{PeerName, PeerUid, ShortId};
use crate::wire::digest::{entry_check, DigestEntry, EntryChange};
use crate::wire::mesh::{ConnectionSummary, PeerSummary, TopologyEntry};

/// A connection as a peer gossips it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConn {
    /// The remote TCP address as the owner sees it.
    pub remote_tcp_addr: String,
    /// Whether the owner dialled.
    pub outbound: bool,
    /// Whether the owner counts it as established.
    pub established: bool,
}

impl PeerConn {
    /// A connection as a topology update carries it (its remote's name aside).
    pub fn from_summary(c: &ConnectionSummary) -> Self {
        PeerConn {
            remote_tcp_addr: c.remote_tcp_addr.clone(),
            outbound: c.outbound,
            established: c.established,
        }
    }

    /// This connection, to `name`, as a topology update carries it.
    pub fn summary(&self, name: PeerName) -> ConnectionSummary {
        ConnectionSummary {
            name,
            remote_tcp_addr: self.remote_tcp_addr.clone(),
            outbound: self.outbound,
            established: self.established,
        }
    }
}

/// One peer's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its name.
    pub name: PeerName,
    /// Its nickname.
    pub nickname: String,
    /// Its process UID.
    pub uid: PeerUid,
    /// Its topology version.
    pub version: u64,
    /// Its short id.
    pub short_id: ShortId,
    /// Whether `short_id` is meaningful.
    pub has_short_id: bool,
    /// Its connections, by remote peer.
    pub conns: BTreeMap<PeerName, PeerConn>,
    /// How many of our own connections refer to this peer (keeps it from collection).
    pub local_refs: usize,
    /// Which versions of this UID the table held and what changed between them, so that a
    /// neighbour holding one of them can be sent only the difference
    /// ([`Topology::change_from`]). Kept for entries learnt from gossip.
    pub history: Option<Box<History>>,
}

/// Versions of an entry this table held, at most this many.
const HISTORY_VERSIONS: usize = 8;

/// What [`Peer::history`] keeps: enough to say how the entry differs from any version of
/// the same UID the table held since the oldest listed (an entry's content is fixed by its
/// UID and version, so a neighbour holding one of these holds exactly what we held).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// The versions held, oldest first, the current one last.
    versions: Vec<u64>,
    /// Each current connection, in name order, with the first of `versions` since which it
    /// has been as it is now.
    since: Vec<(PeerName, u64)>,
    /// Connections dropped, with the first of `versions` that lacked them (only those
    /// after the oldest of `versions`).
    removed: Vec<(PeerName, u64)>,
}

impl History {
    /// The history of an entry first held at `version` with `conns`.
    fn start(version: u64, conns: &BTreeMap<PeerName, PeerConn>) -> Self {
        History {
            versions: vec![version],
            since: conns.keys().map(|n| (*n, version)).collect(),
            removed: Vec::new(),
        }
    }

    /// The history once `old` (at the last of `versions`) is replaced by `new` at `version`
    /// of the same UID.
    fn next(
        mut self,
        old: &BTreeMap<PeerName, PeerConn>,
        new: &BTreeMap<PeerName, PeerConn>,
        version: u64,
    ) -> Self {
        let since = |n: &PeerName| {
            self.since
                .binary_search_by_key(n, |(k, _)| *k)
                .map_or(version, |i| self.since[i].1)
        };
        let next_since = new
            .iter()
            .map(|(n, c)| {
                let kept = old.get(n) == Some(c);
                (*n, if kept { since(n) } else { version })
            })
            .collect();
        self.since = next_since;
        self.removed.extend(
            old.keys()
                .filter(|n| !new.contains_key(n))
                .map(|n| (*n, version)),
        );
        if self.versions.last().is_none_or(|v| *v < version) {
            self.versions.push(version);
        }
        if self.versions.len() > HISTORY_VERSIONS {
            self.versions.remove(0);
            // A drop at or before the oldest version listed is already missing from it.
            let oldest = self.versions[0];
            self.removed.retain(|(_, v)| *v > oldest);
        }
        self
    }
}

impl Peer {
    /// A peer known only by name (referenced by someone's connection).
    fn placeholder(name: PeerName) -> Self {
        Peer {
            name,
            nickname: String::new(),
            uid: PeerUid(0),
            version: 0,
            short_id: ShortId(0),
            has_short_id: false,
            conns: BTreeMap::new(),
            local_refs: 0,
            history: None,
        }
    }

    fn from_summary(s: &PeerSummary) -> Self {
        Peer {
            name: s.name,
            nickname: s.nickname.clone(),
            uid: PeerUid(s.uid),
            version: s.version,
            short_id: ShortId(s.short_id),
            has_short_id: s.has_short_id,
            conns: BTreeMap::new(),
            local_refs: 0,
            history: None,
        }
    }

    /// The gossip form of this entry.
    pub fn to_entry(&self) -> TopologyEntry {
        let summary = PeerSummary {
            name: self.name,
            nickname: self.nickname.clone(),
            uid: self.uid.0,
            version: self.version,
            short_id: self.short_id.0,
            has_short_id: self.has_short_id,
        };
        let conns = self.conns.iter().map(|(n, c)| c.summary(*n)).collect();
        (summary, conns)
    }

    /// This entry as a topology digest lists it.
    pub fn digest_entry(&self) -> DigestEntry {
        DigestEntry {
            name: self.name,
            uid: self.uid.0,
            version: self.version,
        }
    }

    /// Whether we know this peer only by name: someone's connection referred to it, or it
    /// connected to us, but no entry of its own has reached us. (A peer gossips its entry
    /// only once a connection has bumped its version, so a real entry has version 1 or
    /// more.)
    pub fn is_placeholder(&self) -> bool {
        self.version == 0
    }

    /// Whether `self` should be replaced by `newer` under Weave's merge rule.
    fn superseded_by(&self, newer: &PeerSummary) -> bool {
        if newer.version != self.version {
            return newer.version > self.version;
        }
        if newer.uid != self.uid.0 {
            return newer.uid > self.uid.0;
        }
        newer.has_short_id && !self.has_short_id
    }
}

/// Which of two tables holds the newer entry for a peer (see [`Topology::compare`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Newer {
    /// Ours is newer, or theirs is only a placeholder: they should have ours.
    Ours,
    /// Theirs is newer, or we lack it: we should have theirs.
    Theirs,
    /// The same entry, or nothing on either side worth sending.
    Neither,
}

/// What applying an update changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UpdateOutcome {
    /// Peers whose entry improved (worth relaying onwards).
    pub improved: BTreeSet<PeerName>,
    /// Peers newly added to the table.
    pub added: BTreeSet<PeerName>,
    /// Whether our own entry changed (version bump or new short id).
    pub ourself_changed: bool,
}

/// Why an update was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// The payload is not a valid topology gossip stream.
    #[error("malformed topology update: {0}")]
    Malformed(#[from] crate::wire::mesh::WireError),
}

/// The peer table, ourself included.
#[derive(Debug, Clone)]
pub struct Topology {
    ourself: PeerName,
    peers: BTreeMap<PeerName, Peer>,
}

impl Topology {
    /// A table holding only ourself.
    pub fn new(ourself: Peer) -> Self {
        let name = ourself.name;
        let mut peers = BTreeMap::new();
        peers.insert(name, ourself);
        Topology {
            ourself: name,
            peers,
        }
    }

    /// Our name.
    pub fn our_name(&self) -> PeerName {
        self.ourself
    }

    /// Our own entry.
    pub fn ourself(&self) -> &Peer {
        &self.peers[&self.ourself]
    }

    /// Our own entry, for local changes (the caller bumps the version).
    pub fn ourself_mut(&mut self) -> &mut Peer {
        self.peers
            .get_mut(&self.ourself)
            .expect("ourself is always in the table")
    }

    /// A peer's entry.
    pub fn get(&self, name: PeerName) -> Option<&Peer> {
        self.peers.get(&name)
    }

    /// Every entry, in name order.
    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    /// Number of peers, ourself included.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Always false: ourself is in the table.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// All peer names.
    pub fn names(&self) -> BTreeSet<PeerName> {
        self.peers.keys().copied().collect()
    }

    /// The table's size and hash, as a topology summary carries them: equal summaries mean
    /// equal tables (see [`crate::wire::digest`]).
    pub fn summary(&self) -> (u32, u64) {
        let hash = self
            .peers
            .values()
            .fold(0u64, |h, p| h.wrapping_add(p.digest_entry().hash()));
        (self.peers.len() as u32, hash)
    }

    /// Every entry's (name, UID, version).
    pub fn digest(&self) -> Vec<DigestEntry> {
        self.peers.values().map(Peer::digest_entry).collect()
    }

    /// Compares a remote table's entry with ours under the merge rule. Our own entry is
    /// always ours to give, except against a newer one of an earlier incarnation of us:
    /// that one we take, so that the merge makes us bump our version past it.
    pub fn compare(&self, theirs: &DigestEntry) -> Newer {
        let nothing = theirs.version == 0;
        let Some(ours) = self.peers.get(&theirs.name) else {
            return if nothing {
                Newer::Neither
            } else {
                Newer::Theirs
            };
        };
        if ours.is_placeholder() {
            return if nothing {
                Newer::Neither
            } else {
                Newer::Theirs
            };
        }
        let (ov, ou) = (ours.version, ours.uid.0);
        if theirs.name == self.ourself {
            return if theirs.uid != ou && theirs.version >= ov {
                Newer::Theirs
            } else if (theirs.version, theirs.uid) == (ov, ou) {
                Newer::Neither
            } else {
                Newer::Ours
            };
        }
        match (theirs.version, theirs.uid).cmp(&(ov, ou)) {
            std::cmp::Ordering::Greater => Newer::Theirs,
            std::cmp::Ordering::Less => Newer::Ours,
            std::cmp::Ordering::Equal => Newer::Neither,
        }
    }

    /// Takes a reference on a peer for one of our connections, adding it if unknown.
    /// Returns the UID we knew it by (`None` if it is new).
    pub fn add_local_ref(&mut self, summary: &PeerSummary) -> Option<PeerUid> {
        match self.peers.get_mut(&summary.name) {
            Some(p) => {
                p.local_refs += 1;
                Some(p.uid)
            }
            None => {
                let mut p = Peer::from_summary(summary);
                p.local_refs = 1;
                self.peers.insert(p.name, p);
                None
            }
        }
    }

    /// Drops a reference taken by [`Topology::add_local_ref`].
    pub fn release_local_ref(&mut self, name: PeerName) {
        if let Some(p) = self.peers.get_mut(&name) {
            p.local_refs = p.local_refs.saturating_sub(1);
        }
    }

    /// Encodes the entries of `names` (those still known) as a topology gossip payload.
    pub fn encode(&self, names: &BTreeSet<PeerName>) -> Vec<u8> {
        crate::wire::mesh::encode_topology(&self.entries(names))
    }

    /// The entries of `names` that the table holds, as a topology update carries them.
    pub fn entries(&self, names: &BTreeSet<PeerName>) -> Vec<TopologyEntry> {
        names
            .iter()
            .filter_map(|n| self.peers.get(n))
            .map(Peer::to_entry)
            .collect()
    }

    /// How `name`'s entry differs from its version `base` of the same UID, when the table
    /// held that version: what a neighbour holding `base` needs to rebuild it.
    pub fn change_from(&self, name: PeerName, base: u64) -> Option<EntryChange> {
        let p = self.peers.get(&name)?;
        let h = p.history.as_ref()?;
        if base >= p.version || !h.versions.contains(&base) || h.since.len() != p.conns.len() {
            return None;
        }
        // A connection as it is now since `base` or earlier was so in `base` too: `base`
        // is a version we held, and the stamp is the first held version since which it
        // has not changed.
        let set = p
            .conns
            .iter()
            .zip(&h.since)
            .filter(|(_, (_, since))| *since > base)
            .map(|((n, c), _)| c.summary(*n))
            .collect();
        let removed: BTreeSet<PeerName> = h
            .removed
            .iter()
            .filter(|(n, at)| *at > base && !p.conns.contains_key(n))
            .map(|(n, _)| *n)
            .collect();
        let removed = removed.into_iter().collect();
        Some(EntryChange {
            name,
            uid: p.uid.0,
            base,
            version: p.version,
            short_id: p.short_id.0,
            has_short_id: p.has_short_id,
            removed,
            set,
            check: entry_check(&p.to_entry()),
        })
    }

    /// The whole entry a change describes, when we hold the version it was made from and
    /// the result matches the change's check; `None` otherwise (the entry must then be
    /// asked for whole).
    pub fn rebuild(&self, change: &EntryChange) -> Option<TopologyEntry> {
        let held = self.peers.get(&change.name)?;
        if held.is_placeholder() || (held.uid.0, held.version) != (change.uid, change.base) {
            return None;
        }
        let mut conns = held.conns.clone();
        for n in &change.removed {
            conns.remove(n);
        }
        for c in &change.set {
            conns.insert(c.name, PeerConn::from_summary(c));
        }
        let summary = PeerSummary {
            name: change.name,
            nickname: held.nickname.clone(),
            uid: change.uid,
            version: change.version,
            short_id: change.short_id,
            has_short_id: change.has_short_id,
        };
        let conns = conns.iter().map(|(n, c)| c.summary(*n)).collect();
        let entry = (summary, conns);
        (entry_check(&entry) == change.check).then_some(entry)
    }

    /// Applies a received topology payload; `pick_short_id` chooses a fresh short id for us
    /// when another peer wins ours.
    pub fn apply_update(
        &mut self,
        payload: &[u8],
        pick_short_id: &mut dyn FnMut(&BTreeSet<ShortId>) -> ShortId,
    ) -> Result<UpdateOutcome, TopologyError> {
        let entries = crate::wire::mesh::decode_topology(payload)?;
        Ok(self.apply_entries(&entries, pick_short_id))
    }

    /// Applies decoded entries (see [`Topology::apply_update`]).
    pub fn apply_entries(
        &mut self,
        entries: &[TopologyEntry],
        pick_short_id: &mut dyn FnMut(&BTreeSet<ShortId>) -> ShortId,
    ) -> UpdateOutcome {
        let mut out = UpdateOutcome::default();
        // New peers first, then placeholders for peers only referenced by connections,
        // so that every connection in the update can point at a known peer.
        for (summary, _) in entries {
            if !self.peers.contains_key(&summary.name) {
                let mut p = Peer::from_summary(summary);
                // A fresh entry loses to the real one below so that its connections get set.
                p.version = 0;
                p.uid = PeerUid(0);
                p.has_short_id = false;
                self.peers.insert(p.name, p);
                out.added.insert(summary.name);
            }
        }
        for (_, conns) in entries {
            for c in conns {
                if let std::collections::btree_map::Entry::Vacant(v) = self.peers.entry(c.name) {
                    v.insert(Peer::placeholder(c.name));
                    out.added.insert(c.name);
                }
            }
        }
        for (summary, conns) in entries {
            if summary.name == self.ourself {
                let me = self.ourself_mut();
                if summary.uid != me.uid.0 && summary.version >= me.version {
                    // An older incarnation of ourself is still gossiped: supersede it.
                    me.version = summary.version + 1;
                    out.ourself_changed = true;
                }
                continue;
            }
            let is_new = out.added.contains(&summary.name);
            let peer = self.peers.get_mut(&summary.name).expect("inserted above");
            if !is_new && !peer.superseded_by(summary) {
                continue;
            }
            // The history goes on while the incarnation does.
            let same_uid = !is_new && !peer.is_placeholder() && peer.uid.0 == summary.uid;
            let old_conns = std::mem::take(&mut peer.conns);
            let old_history = peer.history.take().filter(|_| same_uid);
            peer.nickname = summary.nickname.clone();
            peer.uid = PeerUid(summary.uid);
            peer.version = summary.version;
            peer.short_id = ShortId(summary.short_id);
            peer.has_short_id = summary.has_short_id;
            peer.conns = conns
                .iter()
                .map(|c| (c.name, PeerConn::from_summary(c)))
                .collect();
            let history = match old_history {
                Some(h) => h.next(&old_conns, &peer.conns, peer.version),
                None => History::start(peer.version, &peer.conns),
            };
            peer.history = Some(Box::new(history));
            out.improved.insert(summary.name);
        }
        if self.resolve_short_id_clash(&out.improved, pick_short_id) {
            out.ourself_changed = true;
        }
        out
    }

    /// When another peer holds our short id and has the lower name, it keeps it and we take
    /// an unused one. Returns whether ours changed.
    ///
    /// Only the entries an update changed can bring a clash (ours is always picked unused),
    /// so only those are looked at: an update costs what it carries, not the table's size.
    fn resolve_short_id_clash(
        &mut self,
        changed: &BTreeSet<PeerName>,
        pick_short_id: &mut dyn FnMut(&BTreeSet<ShortId>) -> ShortId,
    ) -> bool {
        let ours = self.ourself().short_id;
        let clash = changed.iter().filter_map(|n| self.peers.get(n)).any(|p| {
            p.name != self.ourself && p.has_short_id && p.short_id == ours && p.name < self.ourself
        });
        if !clash {
            return false;
        }
        let used: BTreeSet<ShortId> = self
            .peers
            .values()
            .filter(|p| p.has_short_id && p.name != self.ourself)
            .map(|p| p.short_id)
            .collect();
        let fresh = pick_short_id(&used);
        let me = self.ourself_mut();
        me.short_id = fresh;
        me.has_short_id = true;
        me.version += 1;
        true
    }

    /// Removes peers we can no longer reach over any gossiped connection and that none of
    /// our connections refers to. Returns the removed entries.
    pub fn garbage_collect(&mut self) -> Vec<Peer> {
        let reached = crate::mesh::routes::reachable(self, self.ourself);
        let removed: BTreeSet<PeerName> = self
            .peers
            .values()
            .filter(|p| p.local_refs == 0 && !reached.contains(&p.name))
            .map(|p| p.name)
            .collect();
        removed
            .iter()
            .filter_map(|name| self.peers.remove(name))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: u64) -> PeerName {
        PeerName::from_u64(n).unwrap()
    }

    fn me() -> Peer {
        Peer {
            name: name(1),
            nickname: "one".into(),
            uid: PeerUid(100),
            version: 1,
            short_id: ShortId(7),
            has_short_id: true,
            conns: BTreeMap::new(),
            local_refs: 0,
            history: None,
        }
    }

    fn summary(n: u64, uid: u64, version: u64, short_id: u16) -> PeerSummary {
        PeerSummary {
            name: name(n),
            nickname: format!("p{n}"),
            uid,
            version,
            short_id,
            has_short_id: true,
        }
    }

    fn conn(n: u64) -> ConnectionSummary {
        ConnectionSummary {
            name: name(n),
            remote_tcp_addr: format!("10.0.0.{n}:6783"),
            outbound: true,
            established: true,
        }
    }

    fn no_pick(_: &BTreeSet<ShortId>) -> ShortId {
        panic!("no short id clash expected")
    }

    /// Peer 2's entry at `version` (UID 5): connections drawn from peers 3 to 9, with
    /// addresses and flags that change as well.
    fn random_entry(rng: &mut impl rand::Rng, version: u64) -> TopologyEntry {
        let mut conns = Vec::new();
        for n in 3..10 {
            if rng.gen_bool(0.6) {
                conns.push(ConnectionSummary {
                    name: name(n),
                    remote_tcp_addr: format!("10.0.0.{n}:{}", 6783 + rng.gen_range(0..2)),
                    outbound: rng.gen_bool(0.5),
                    established: rng.gen_bool(0.7),
                });
            }
        }
        (summary(2, 5, version, 9), conns)
    }

    /// A sender that saw some of an entry's versions: for every version it held among the
    /// last [`HISTORY_VERSIONS`], a receiver holding that version rebuilds the current one
    /// exactly from the change; for any other, no change is offered, and a receiver that
    /// holds another version or UID refuses one.
    #[test]
    fn a_change_from_any_version_held_rebuilds_the_entry_exactly() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        for _ in 0..200 {
            let mut sender = Topology::new(me());
            let last = rng.gen_range(1..30u64);
            let truth: Vec<TopologyEntry> = (0..=last).map(|v| random_entry(&mut rng, v)).collect();
            let mut held = Vec::new();
            for v in 1..=last {
                if v == last || rng.gen_bool(0.6) {
                    sender.apply_entries(&[truth[v as usize].clone()], &mut no_pick);
                    held.push(v);
                }
            }
            let recent = &held[held.len().saturating_sub(HISTORY_VERSIONS)..];
            for base in 0..=last {
                let change = sender.change_from(name(2), base);
                let offered = base != last && recent.contains(&base);
                assert_eq!(
                    change.is_some(),
                    offered,
                    "base {base} of {last}, held {held:?}"
                );
                let Some(change) = change else {
                    continue;
                };
                let mut receiver = Topology::new(me());
                receiver.apply_entries(&[truth[base as usize].clone()], &mut no_pick);
                assert_eq!(
                    receiver.rebuild(&change),
                    Some(truth[last as usize].clone()),
                    "base {base} of {last}, held {held:?}"
                );
                // Another version, or another incarnation at this one, cannot use it.
                let mut other = Topology::new(me());
                let (mut s, c) = truth[base as usize].clone();
                s.uid = 6;
                other.apply_entries(&[(s, c)], &mut no_pick);
                assert_eq!(other.rebuild(&change), None);
                if base > 0 {
                    let mut older = Topology::new(me());
                    older.apply_entries(&[truth[base as usize - 1].clone()], &mut no_pick);
                    assert_eq!(older.rebuild(&change), None);
                }
            }
        }
    }

    #[test]
    fn higher_version_wins_and_lower_is_ignored() {
        let mut t = Topology::new(me());
        t.ourself_mut().conns.insert(
            name(2),
            PeerConn {
                remote_tcp_addr: "x".into(),
                outbound: true,
                established: true,
            },
        );
        t.add_local_ref(&summary(2, 5, 0, 9));
        let out = t.apply_entries(&[(summary(2, 5, 3, 9), vec![conn(1)])], &mut no_pick);
        assert!(out.improved.contains(&name(2)));
        let out = t.apply_entries(&[(summary(2, 5, 2, 9), vec![])], &mut no_pick);
        assert!(out.improved.is_empty());
        assert_eq!(t.get(name(2)).unwrap().conns.len(), 1);
    }

    #[test]
    fn same_version_higher_uid_wins() {
        let mut t = Topology::new(me());
        t.add_local_ref(&summary(2, 5, 0, 9));
        t.apply_entries(&[(summary(2, 5, 3, 9), vec![])], &mut no_pick);
        let out = t.apply_entries(&[(summary(2, 6, 3, 9), vec![])], &mut no_pick);
        assert!(out.improved.contains(&name(2)));
        assert_eq!(t.get(name(2)).unwrap().uid, PeerUid(6));
    }

    #[test]
    fn old_incarnation_of_ourself_makes_us_bump_version() {
        let mut t = Topology::new(me());
        let out = t.apply_entries(&[(summary(1, 99, 10, 7), vec![])], &mut no_pick);
        assert!(out.ourself_changed);
        assert_eq!(t.ourself().version, 11);
        assert_eq!(t.ourself().uid, PeerUid(100));
    }

    #[test]
    fn unreachable_peers_are_collected_and_referenced_ones_kept() {
        let mut t = Topology::new(me());
        // 3 is known only through 2's connections; nobody connects us to 2.
        t.apply_entries(&[(summary(2, 5, 1, 9), vec![conn(3)])], &mut no_pick);
        assert_eq!(t.len(), 3);
        let removed: Vec<PeerName> = t.garbage_collect().iter().map(|p| p.name).collect();
        assert_eq!(removed, vec![name(2), name(3)]);
        assert_eq!(t.len(), 1);
        // With a local reference and our connection to 2, both stay.
        t.add_local_ref(&summary(2, 5, 0, 9));
        t.ourself_mut().conns.insert(
            name(2),
            PeerConn {
                remote_tcp_addr: "x".into(),
                outbound: true,
                established: true,
            },
        );
        t.apply_entries(&[(summary(2, 5, 1, 9), vec![conn(3)])], &mut no_pick);
        assert!(t.garbage_collect().is_empty());
        assert_eq!(t.len(), 3);
        assert!(t.get(name(3)).unwrap().conns.is_empty());
    }

    #[test]
    fn short_id_clash_with_lower_name_moves_us() {
        let mut me_high = me();
        me_high.name = name(5);
        let mut t = Topology::new(me_high);
        t.add_local_ref(&summary(2, 5, 0, 7));
        let mut picked = false;
        let out = t.apply_entries(&[(summary(2, 5, 1, 7), vec![])], &mut |used| {
            picked = true;
            assert!(used.contains(&ShortId(7)));
            ShortId(8)
        });
        assert!(picked && out.ourself_changed);
        assert_eq!(t.ourself().short_id, ShortId(8));
    }
}
