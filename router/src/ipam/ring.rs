//! The ring: which peer owns which addresses of the allocation range, as a CRDT of tokens.
//!
//! The range `[start, end)` is a circle of addresses. Each token (an [`Entry`]) says "from
//! this address up to the next token, `peer` owns the addresses"; only the owner of a token
//! changes it, and every change bumps the token's version. Peers gossip their whole ring and
//! merge what they receive: the token sets are united, and for a token both sides hold, the
//! higher `(version, free, peer)` wins. That merge is a join (commutative, associative,
//! idempotent), so every peer that has heard the same updates holds the same ring, whatever
//! order they came in.
//!
//! On top of the join, a merge refuses an update that would take addresses this peer still
//! has allocated away from it (Weave's protection against a stale or foreign ring), and
//! refuses a ring of another range or seeded by other peers: the two would hand out the same
//! addresses.
//!
//! Weave's rules are kept so that a ring from a Weave Net 2.8 peer merges the same way here;
//! where Weave left the tie of equal version and equal free count to "keep mine", the peer
//! name decides, so weave-routers converge even then.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;

use crate::ids::{PeerName, UNKNOWN_PEER_NAME};
use crate::ipam::address::{Address, Range};
use crate::wire::ipam::{Entry, RingState};

/// Version added to a token taken over from another peer, so the takeover wins over any
/// ordinary update the old owner might still have in flight (Weave does the same).
pub const TRANSFER_VERSION_BUMP: u32 = 100;

/// Why a received ring was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// The tokens were not in increasing order.
    #[error("received ring is not sorted")]
    NotSorted,
    /// A token appeared twice.
    #[error("received ring has a token twice")]
    TokenRepeated,
    /// A token lay outside the ring's range.
    #[error("received ring has a token outside its range")]
    TokenOutOfRange,
    /// A token claimed more free addresses than its range holds.
    #[error("received ring says {token} has {free} free addresses, more than its {size}")]
    TooMuchFree {
        /// The token.
        token: Address,
        /// Free count claimed.
        free: u32,
        /// Addresses up to the next token.
        size: u32,
    },
    /// The ring was seeded by other peers than ours: two separately formed rings.
    #[error("IP allocation was seeded by different peers (received: {theirs}, ours: {ours})")]
    DifferentSeeds {
        /// The received ring's seeds.
        theirs: String,
        /// Our seeds.
        ours: String,
    },
    /// The ring covers another range than ours.
    #[error("incompatible IP allocation ranges (received: {theirs}, ours: {ours})")]
    DifferentRange {
        /// The received range.
        theirs: String,
        /// Our range.
        ours: String,
    },
    /// The update gives a range we own, and have addresses allocated in, to another peer.
    #[error("peer {peer} says it owns the IP range from {token}, which this peer owns and has addresses allocated in")]
    EntryInMyRange {
        /// The token they claim.
        token: Address,
        /// Who they say owns it.
        peer: PeerName,
    },
    /// Same token and version, different content, and we have allocations there.
    #[error(
        "inconsistent entries for {token}: owned by {ours} but the incoming ring says {theirs}"
    )]
    Inconsistent {
        /// The token.
        token: Address,
        /// Owner in our ring.
        ours: PeerName,
        /// Owner in theirs.
        theirs: PeerName,
    },
    /// A newer version of a token we own, with addresses allocated, names another owner.
    #[error("received an update for the IP range this peer owns at {token} v{ours}: the incoming ring says owner {peer} v{theirs}")]
    NewerVersion {
        /// The token.
        token: Address,
        /// Our version.
        ours: u32,
        /// Their owner.
        peer: PeerName,
        /// Their version.
        theirs: u32,
    },
}

/// One peer's copy of the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    start: Address,
    end: Address,
    ourself: PeerName,
    entries: Vec<Entry>,
    seeds: Vec<PeerName>,
}

/// A range and its owner, for status output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeInfo {
    /// The owner.
    pub peer: PeerName,
    /// The addresses.
    pub range: Range,
    /// The token's version.
    pub version: u32,
}

impl Ring {
    /// An empty ring over `range`, held by `ourself`.
    pub fn new(range: Range, ourself: PeerName) -> Ring {
        assert!(range.start < range.end, "ring range must not be empty");
        Ring {
            start: range.start,
            end: range.end,
            ourself,
            entries: Vec::new(),
            seeds: Vec::new(),
        }
    }

    /// Rebuilds a ring from its persisted or gossiped form, checking it.
    pub fn from_state(state: &RingState, ourself: PeerName) -> Result<Ring, MergeError> {
        let ring = Ring {
            start: state.start,
            end: state.end,
            ourself,
            entries: state.entries.clone(),
            seeds: state.seeds.clone(),
        };
        if state.start >= state.end {
            return Err(MergeError::TokenOutOfRange);
        }
        ring.check_entries(&ring.entries)?;
        Ok(ring)
    }

    /// The ring as it is gossiped and persisted.
    pub fn to_state(&self) -> RingState {
        RingState {
            start: self.start,
            end: self.end,
            peer: self.ourself,
            entries: self.entries.clone(),
            seeds: self.seeds.clone(),
        }
    }

    /// The whole range the ring covers.
    pub fn range(&self) -> Range {
        Range::new(self.start, self.end)
    }

    /// Whether no peer owns anything yet (before consensus).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The tokens, sorted.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The peers the ring was first divided among.
    pub fn seeds(&self) -> &[PeerName] {
        &self.seeds
    }

    /// Whether `addr` lies in the ring's range.
    pub fn contains(&self, addr: Address) -> bool {
        self.range().contains(addr)
    }

    /// The owner of `addr`; [`UNKNOWN_PEER_NAME`] on an empty ring or outside the range.
    pub fn owner(&self, addr: Address) -> PeerName {
        if self.entries.is_empty() || !self.contains(addr) {
            return UNKNOWN_PEER_NAME;
        }
        let i = self.entries.partition_point(|e| e.token <= addr);
        // Before the first token, the last token's range wraps around to here.
        let i = if i == 0 { self.entries.len() } else { i };
        self.entries[i - 1].peer
    }

    /// Divides the whole empty ring among `peers` (sorted, deduplicated), in CIDR-aligned
    /// blocks, as Weave does when consensus or a seed picks them.
    pub fn claim_for_peers(&mut self, peers: &[PeerName]) {
        assert!(
            self.entries.is_empty(),
            "claim_for_peers on a ring with tokens"
        );
        assert!(!peers.is_empty(), "claim_for_peers with no peers");
        self.subdivide(self.start, self.end, peers);
        self.seeds = peers.to_vec();
    }

    fn subdivide(&mut self, from: Address, to: Address, peers: &[PeerName]) {
        let share = to.0 - from.0;
        if share == 0 {
            return;
        }
        if share == 1 || peers.len() == 1 {
            self.insert(Entry {
                token: from,
                peer: peers[0],
                version: 0,
                free: share,
            });
            return;
        }
        let mid = from.offset(share / 2);
        let (left, right) = peers.split_at(peers.len() / 2);
        self.subdivide(from, mid, left);
        self.subdivide(mid.offset(share % 2), to, right);
    }

    /// Ranges owned by `peer`, in address order (a range wrapping past the end is split).
    pub fn owned_ranges_of(&self, peer: PeerName) -> Vec<Range> {
        let mut out = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            if e.peer == peer {
                out.push(Range::new(e.token, self.next_token(i)));
            }
        }
        self.split_over_zero(out)
    }

    /// Ranges we own.
    pub fn owned_ranges(&self) -> Vec<Range> {
        self.owned_ranges_of(self.ourself)
    }

    /// Every token's range with its owner and version, for status.
    pub fn all_range_info(&self) -> Vec<RangeInfo> {
        let mut out = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            for range in self.make_ranges(e.token, self.next_token(i)) {
                out.push(RangeInfo {
                    peer: e.peer,
                    range,
                    version: e.version,
                });
            }
        }
        out
    }

    /// Addresses owned per peer.
    pub fn owned_counts(&self) -> BTreeMap<PeerName, u64> {
        let mut out = BTreeMap::new();
        for info in self.all_range_info() {
            *out.entry(info.peer).or_insert(0) += u64::from(info.range.size());
        }
        out
    }

    /// Peers named in the ring.
    pub fn peer_names(&self) -> BTreeSet<PeerName> {
        self.entries.iter().map(|e| e.peer).collect()
    }

    /// Gives `[start, end)`, which we own, to `peer`; inserts up to two tokens.
    pub fn grant_range_to_host(&mut self, start: Address, end: Address, peer: PeerName) {
        assert!(start < end && self.start <= start && end <= self.end);
        assert!(!self.entries.is_empty());
        // The right-most token at or before start.
        let mut preceding = self.entries.partition_point(|e| e.token <= start) as isize - 1;
        let mut pos = preceding;
        let len = self.entries.len() as isize;
        while pos < len && self.entry_at(pos).token < end {
            assert_eq!(
                self.entry_at(pos).peer,
                self.ourself,
                "grant of a range we do not own"
            );
            pos += 1;
        }

        let next_after_start = self.entry_at(preceding + 1).token;
        let start_free = self
            .distance(start, next_after_start)
            .min(self.distance(start, end));
        let prev_idx = self.index(preceding);
        if self.entries[prev_idx].token == start {
            update(&mut self.entries[prev_idx], peer, start_free);
        } else {
            self.insert(Entry {
                token: start,
                peer,
                version: 0,
                free: start_free,
            });
            preceding += 1;
            // The preceding token, ours, now ends at start.
            let prev_idx = self.index(preceding - 1);
            let prev_token = self.entries[prev_idx].token;
            let ourself = self.ourself;
            let free = self.distance(prev_token, start);
            update(&mut self.entries[prev_idx], ourself, free);
        }

        let mut pos = preceding + 1;
        let len = self.entries.len() as isize;
        while pos < len && self.entry_at(pos).token < end {
            let idx = self.index(pos);
            let e = self.entries[idx];
            let free = e.free.min(self.distance(e.token, end));
            update(&mut self.entries[idx], peer, free);
            pos += 1;
        }

        // There is never a token at the ring's end: it is its start.
        let end = if end == self.end { self.start } else { end };
        if self.find(end).is_some() {
            return;
        }
        let end_free = self.distance(end, self.entry_at(pos).token);
        self.insert(Entry {
            token: end,
            peer: self.ourself,
            version: 0,
            free: end_free,
        });
    }

    /// Merges a received ring; returns whether ours changed. `has_allocations` tells whether
    /// any address of the given ranges is allocated here.
    pub fn merge(
        &mut self,
        gossip: &RingState,
        has_allocations: &dyn Fn(&[Range]) -> bool,
    ) -> Result<bool, MergeError> {
        if gossip.start >= gossip.end {
            return Err(MergeError::TokenOutOfRange);
        }
        if gossip.start != self.start || gossip.end != self.end {
            return Err(MergeError::DifferentRange {
                theirs: Range::new(gossip.start, gossip.end).as_cidr_string(),
                ours: self.range().as_cidr_string(),
            });
        }
        self.check_entries(&gossip.entries)?;
        if !gossip.seeds.is_empty() && !self.seeds.is_empty() && gossip.seeds != self.seeds {
            return Err(MergeError::DifferentSeeds {
                theirs: names(&gossip.seeds),
                ours: names(&self.seeds),
            });
        }
        self.check_ownership(&gossip.entries, has_allocations)?;

        let mut result = join(&self.entries, &gossip.entries);
        // Our own token may come back with a higher version but still ours (a copy of an
        // update we made before a restart): impose what we hold now, one version above.
        for e in &mut result {
            if e.peer != self.ourself {
                continue;
            }
            if let Some(mine) = self.find(e.token).map(|i| self.entries[i]) {
                if mine.peer == self.ourself && mine.version < e.version && mine.free != e.free {
                    *e = Entry {
                        version: e.version + 1,
                        ..mine
                    };
                }
            }
        }
        // A token we own whose range shrank under it (split by an update) cannot keep more
        // free addresses than it now spans.
        for i in 0..result.len() {
            let next = result[(i + 1) % result.len()].token;
            let size = self.distance(result[i].token, next);
            if result[i].peer == self.ourself && result[i].free > size {
                result[i].free = size;
            }
        }
        self.check_entries(&result)?;
        let updated = result != self.entries;
        if self.seeds.is_empty() {
            self.seeds = gossip.seeds.clone();
        }
        self.entries = result;
        Ok(updated)
    }

    /// Refuses updates that would take addresses allocated here away from us.
    fn check_ownership(
        &self,
        theirs: &[Entry],
        has_allocations: &dyn Fn(&[Range]) -> bool,
    ) -> Result<(), MergeError> {
        let me = self.ourself;
        for t in theirs {
            if t.peer == me {
                continue;
            }
            match self.find(t.token) {
                Some(i) => {
                    let mine = self.entries[i];
                    if mine.peer != me || t.version < mine.version {
                        continue;
                    }
                    if t.version == mine.version && (t.free, t.peer) < (mine.free, mine.peer) {
                        continue;
                    }
                    let ranges = self.make_ranges(mine.token, self.next_token(i));
                    if has_allocations(&ranges) {
                        return Err(if t.version == mine.version {
                            MergeError::Inconsistent {
                                token: t.token,
                                ours: mine.peer,
                                theirs: t.peer,
                            }
                        } else {
                            MergeError::NewerVersion {
                                token: t.token,
                                ours: mine.version,
                                peer: t.peer,
                                theirs: t.version,
                            }
                        });
                    }
                }
                None => {
                    // A new token inside one of our ranges takes [token, our next token).
                    if self.entries.is_empty() || self.owner(t.token) != me {
                        continue;
                    }
                    let next = self.entries.partition_point(|e| e.token <= t.token);
                    let next = self.entries[next % self.entries.len()].token;
                    if has_allocations(&self.make_ranges(t.token, next)) {
                        return Err(MergeError::EntryInMyRange {
                            token: t.token,
                            peer: t.peer,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Sets the free counts of tokens we own (keyed by range start as [`Self::owned_ranges`]
    /// gives them); bumps the version of each that changed. Returns whether any did.
    pub fn report_free(&mut self, mut free: BTreeMap<Address, u32>) -> bool {
        if self.entries.is_empty() {
            return false;
        }
        // owned_ranges splits a range wrapping past the end at the start; fold it back.
        let first = self.entries[0].token;
        if first != self.start {
            if let Some(wrapped) = free.remove(&self.start) {
                let last = self.entries[self.entries.len() - 1].token;
                *free.entry(last).or_insert(0) += wrapped;
            }
        }
        let mut updated = false;
        for (token, count) in free {
            let Some(i) = self.find(token) else {
                continue;
            };
            if self.entries[i].peer != self.ourself || self.entries[i].free == count {
                continue;
            }
            let size = self.distance(token, self.next_token(i));
            self.entries[i].free = count.min(size);
            self.entries[i].version += 1;
            updated = true;
        }
        updated
    }

    /// Peers that have free space in `range`, in an order weighted at random by how much.
    pub fn choose_peers_to_ask_for_space(&self, range: Range, rng: &mut impl Rng) -> Vec<PeerName> {
        let mut per_peer: BTreeMap<PeerName, u64> = BTreeMap::new();
        for (i, e) in self.entries.iter().enumerate() {
            let next = self.next_token(i);
            let spans = self
                .make_ranges(e.token, next)
                .iter()
                .any(|r| r.overlaps(&range));
            if !spans || e.free == 0 || e.peer == self.ourself {
                continue;
            }
            *per_peer.entry(e.peer).or_insert(0) += u64::from(e.free);
        }
        let mut weighted: Vec<(f64, PeerName)> = per_peer
            .into_iter()
            .map(|(p, free)| (free as f64 * rng.gen::<f64>(), p))
            .collect();
        weighted.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        weighted.into_iter().map(|(_, p)| p).collect()
    }

    /// The first peer other than us with a token that `valid` accepts.
    pub fn pick_peer_for_transfer(&self, valid: &dyn Fn(PeerName) -> bool) -> Option<PeerName> {
        self.entries
            .iter()
            .map(|e| e.peer)
            .find(|&p| p != self.ourself && valid(p))
    }

    /// Gives every token of `from` to `to`; returns the ranges that moved.
    pub fn transfer(&mut self, from: PeerName, to: PeerName) -> Vec<Range> {
        let mut moved = Vec::new();
        for i in 0..self.entries.len() {
            if self.entries[i].peer != from {
                continue;
            }
            let next = self.next_token(i);
            let e = &mut self.entries[i];
            e.peer = to;
            e.version += TRANSFER_VERSION_BUMP;
            moved.push(Range::new(e.token, next));
        }
        self.split_over_zero(moved)
    }

    // ----- helpers -----

    fn check_entries(&self, entries: &[Entry]) -> Result<(), MergeError> {
        for w in entries.windows(2) {
            if w[0].token == w[1].token {
                return Err(MergeError::TokenRepeated);
            }
            if w[0].token > w[1].token {
                return Err(MergeError::NotSorted);
            }
        }
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        if first.token < self.start || last.token >= self.end {
            return Err(MergeError::TokenOutOfRange);
        }
        for (i, e) in entries.iter().enumerate() {
            let next = entries[(i + 1) % entries.len()].token;
            let size = self.distance(e.token, next);
            if e.free > size {
                return Err(MergeError::TooMuchFree {
                    token: e.token,
                    free: e.free,
                    size,
                });
            }
        }
        Ok(())
    }

    /// Distance from `a` forward to `b` around the ring (the whole ring when equal).
    fn distance(&self, a: Address, b: Address) -> u32 {
        if b > a {
            b.0 - a.0
        } else {
            (self.end.0 - a.0) + (b.0 - self.start.0)
        }
    }

    fn index(&self, i: isize) -> usize {
        i.rem_euclid(self.entries.len() as isize) as usize
    }

    fn entry_at(&self, i: isize) -> Entry {
        self.entries[self.index(i)]
    }

    fn next_token(&self, i: usize) -> Address {
        self.entries[(i + 1) % self.entries.len()].token
    }

    fn find(&self, token: Address) -> Option<usize> {
        self.entries.binary_search_by(|e| e.token.cmp(&token)).ok()
    }

    fn insert(&mut self, e: Entry) {
        let i = self.entries.partition_point(|x| x.token < e.token);
        assert!(
            self.entries.get(i).is_none_or(|x| x.token != e.token),
            "token inserted twice"
        );
        self.entries.insert(i, e);
    }

    /// `[start, end)` as ranges that do not wrap past the ring's end.
    fn make_ranges(&self, start: Address, end: Address) -> Vec<Range> {
        self.split_over_zero(vec![Range::new(start, end)])
    }

    /// Fixes up the last range of an ordered list when it wraps past the end.
    fn split_over_zero(&self, mut ranges: Vec<Range>) -> Vec<Range> {
        let Some(last) = ranges.last().copied() else {
            return ranges;
        };
        if last.end == self.start {
            ranges.last_mut().expect("non-empty").end = self.end;
        } else if last.end <= last.start {
            ranges.last_mut().expect("non-empty").end = self.end;
            ranges.insert(0, Range::new(self.start, last.end));
        }
        ranges
    }
}

/// The owner's change to a token: new owner or free count, one version up.
fn update(e: &mut Entry, peer: PeerName, free: u32) {
    e.peer = peer;
    e.version += 1;
    e.free = free;
}

/// The join of two token lists: every token of either; for a token in both, the entry with
/// the higher `(version, free, peer)`.
pub fn join(a: &[Entry], b: &[Entry]) -> Vec<Entry> {
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].token.cmp(&b[j].token) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(if rank(&a[i]) >= rank(&b[j]) {
                    a[i]
                } else {
                    b[j]
                });
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

fn rank(e: &Entry) -> (u32, u32, PeerName) {
    (e.version, e.free, e.peer)
}

fn names(peers: &[PeerName]) -> String {
    let list: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
    format!("[{}]", list.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(i: u64) -> PeerName {
        PeerName::from_u64(i + 1).expect("fits")
    }

    fn universe() -> Range {
        Range::new(Address(0x0a20_0000), Address(0x0a20_0400)) // 1,024 addresses
    }

    fn entries_strategy() -> impl Strategy<Value = Vec<Entry>> {
        proptest::collection::btree_map(0u32..1024, (0u64..4, 0u32..4, 0u32..8), 0..12).prop_map(
            |m| {
                m.into_iter()
                    .map(|(t, (p, version, free))| Entry {
                        token: Address(0x0a20_0000 + t),
                        peer: name(p),
                        version,
                        free,
                    })
                    .collect()
            },
        )
    }

    proptest! {
        #[test]
        fn join_is_commutative_associative_idempotent(
            a in entries_strategy(),
            b in entries_strategy(),
            c in entries_strategy(),
        ) {
            prop_assert_eq!(join(&a, &b), join(&b, &a));
            prop_assert_eq!(join(&join(&a, &b), &c), join(&a, &join(&b, &c)));
            prop_assert_eq!(join(&a, &a), a.clone());
            let ab = join(&a, &b);
            prop_assert_eq!(join(&ab, &b), ab.clone());
        }

        /// Peers divide the ring, give each other parts of what they own, report free space
        /// and merge each other's rings in any order: no address is ever owned by two peers
        /// in their own views, no honest merge is refused (even with every range "in use"),
        /// and once everyone has heard from everyone, all rings are equal.
        #[test]
        fn honest_histories_never_double_own(
            n in 2usize..6,
            ops in proptest::collection::vec((0u8..3, 0usize..6, 0usize..6, 0u32..1024, 1u32..64), 1..80),
        ) {
            let seeds: Vec<PeerName> = (0..n as u64).map(name).collect();
            let mut rings: Vec<Ring> = (0..n).map(|i| Ring::new(universe(), name(i as u64))).collect();
            rings[0].claim_for_peers(&seeds);
            let first = rings[0].to_state();
            let in_use = |_: &[Range]| true;
            for r in rings.iter_mut().skip(1) {
                r.merge(&first, &in_use).expect("initial merge");
            }
            for (op, x, y, at, len) in ops {
                let (x, y) = (x % n, y % n);
                match op {
                    0 => {
                        // x gives part of one of its ranges to y.
                        let owned = rings[x].owned_ranges();
                        if x == y || owned.is_empty() {
                            continue;
                        }
                        let r = owned[at as usize % owned.len()];
                        let start = r.start.offset(at % r.size());
                        let end = start.offset(len.min(r.end.0 - start.0));
                        rings[x].grant_range_to_host(start, end, name(y as u64));
                    }
                    1 => {
                        let state = rings[x].to_state();
                        rings[y].merge(&state, &in_use).expect("honest merge refused");
                    }
                    _ => {
                        let free: BTreeMap<Address, u32> = rings[x]
                            .owned_ranges()
                            .into_iter()
                            .map(|r| (r.start, r.size() / 2))
                            .collect();
                        rings[x].report_free(free);
                    }
                }
                for i in 0..n {
                    for j in (i + 1)..n {
                        for a in rings[i].owned_ranges() {
                            for b in rings[j].owned_ranges() {
                                prop_assert!(!a.overlaps(&b), "{:?} owned by {} and {}", a, i, j);
                            }
                        }
                    }
                }
            }
            // Everyone hears from everyone, twice around.
            for _ in 0..2 {
                for x in 0..n {
                    for y in 0..n {
                        let state = rings[x].to_state();
                        rings[y].merge(&state, &in_use).expect("final merge refused");
                    }
                }
            }
            for r in &rings[1..] {
                prop_assert_eq!(r.entries(), rings[0].entries());
            }
            let total: u64 = rings[0].owned_counts().values().sum();
            prop_assert_eq!(total, u64::from(universe().size()));
        }
    }

    #[test]
    fn claim_for_peers_splits_the_default_range_as_weave_did() {
        // The capture's consensus: host1 and host2 divide 10.32.0.0/12 in halves.
        let range = Range::new(Address(0x0a20_0000), Address(0x0a30_0000));
        let mut r = Ring::new(range, name(0));
        r.claim_for_peers(&[name(0), name(1)]);
        assert_eq!(
            r.entries(),
            &[
                Entry {
                    token: Address(0x0a20_0000),
                    peer: name(0),
                    version: 0,
                    free: 524_288
                },
                Entry {
                    token: Address(0x0a28_0000),
                    peer: name(1),
                    version: 0,
                    free: 524_288
                },
            ]
        );
        assert_eq!(r.owner(Address(0x0a2f_ffff)), name(1));
        assert_eq!(r.owner(Address(0x0a20_0001)), name(0));
    }

    #[test]
    fn a_foreign_ring_is_refused_with_the_reason() {
        let mut a = Ring::new(universe(), name(0));
        a.claim_for_peers(&[name(0)]);
        let mut b = Ring::new(universe(), name(1));
        b.claim_for_peers(&[name(1)]);
        let err = a.merge(&b.to_state(), &|_| false).unwrap_err();
        assert!(matches!(err, MergeError::DifferentSeeds { .. }), "{err}");
        let mut other = Ring::new(Range::new(Address(0), Address(1024)), name(1));
        other.claim_for_peers(&[name(0)]);
        let err = a.merge(&other.to_state(), &|_| false).unwrap_err();
        assert!(matches!(err, MergeError::DifferentRange { .. }), "{err}");
    }

    #[test]
    fn taking_a_range_with_allocations_is_refused() {
        let mut a = Ring::new(universe(), name(0));
        a.claim_for_peers(&[name(0), name(1)]);
        let mut b = a.clone();
        b.ourself = name(1);
        // b "takes over" a's range, as rmpeer of a live peer would.
        b.transfer(name(0), name(1));
        let err = a.merge(&b.to_state(), &|_| true).unwrap_err();
        assert!(matches!(err, MergeError::NewerVersion { .. }), "{err}");
        // With nothing allocated there, a accepts: the range was free to lose.
        assert!(a.merge(&b.to_state(), &|_| false).unwrap());
        assert!(a.owned_ranges().is_empty());
    }
}
