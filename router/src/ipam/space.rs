//! The addresses inside the ranges this peer owns: which are handed out and which are free.
//!
//! Both sets are kept as sorted boundary lists (even positions start a run, odd positions
//! end it), as Weave's `space` package does: a peer owning a /12 with thousands of pods
//! holds a few hundred integers, and lookups are binary searches.

use crate::ipam::address::{Address, Range};

/// Owned-and-used and owned-and-free addresses of this peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Space {
    ours: Vec<Address>,
    free: Vec<Address>,
}

impl Space {
    /// No addresses.
    pub fn new() -> Space {
        Space::default()
    }

    /// Makes every address of `ranges` ours, adding what is not yet as free (ranges the ring
    /// just gave us). Ranges already held are left as they are.
    pub fn update_ranges(&mut self, ranges: &[Range]) {
        let mut new = Vec::new();
        for r in ranges {
            new = add(&new, r.start, r.end);
        }
        let current = self.everything();
        for pair in current.chunks(2) {
            new = subtract(&new, pair[0], pair[1]);
        }
        for pair in new.chunks(2) {
            self.free = add(&self.free, pair[0], pair[1]);
        }
    }

    /// Drops free addresses outside `ranges` (space the ring gave to another peer while
    /// none of it was in use). Used addresses stay: the ring never takes those away.
    pub fn restrict_to(&mut self, ranges: &[Range]) {
        let mut kept = Vec::new();
        for pair in self.free.chunks(2) {
            let run = Range::new(pair[0], pair[1]);
            for r in ranges {
                let start = run.start.max(r.start);
                let end = run.end.min(r.end);
                if start < end {
                    kept = add(&kept, start, end);
                }
            }
        }
        self.free = kept;
    }

    /// Forgets everything (the peer gave all its ranges away).
    pub fn clear(&mut self) {
        self.ours.clear();
        self.free.clear();
    }

    /// Takes the lowest free address in `r`.
    pub fn allocate(&mut self, r: Range) -> Option<Address> {
        let mut found = None;
        self.walk_free(r, |chunk| {
            found = Some(chunk.start);
            true
        });
        let addr = found?;
        self.ours = add(&self.ours, addr, addr.offset(1));
        self.free = subtract(&self.free, addr, addr.offset(1));
        Some(addr)
    }

    /// Takes a given free address; false when it is not free here.
    pub fn claim(&mut self, addr: Address) -> bool {
        if !contains(&self.free, addr) {
            return false;
        }
        self.ours = add(&self.ours, addr, addr.offset(1));
        self.free = subtract(&self.free, addr, addr.offset(1));
        true
    }

    /// Returns a handed-out address to the free set; false when it was not handed out.
    pub fn free(&mut self, addr: Address) -> bool {
        if !contains(&self.ours, addr) || contains(&self.free, addr) {
            return false;
        }
        self.ours = subtract(&self.ours, addr, addr.offset(1));
        self.free = add(&self.free, addr, addr.offset(1));
        true
    }

    /// Whether `addr` is handed out here.
    pub fn is_used(&self, addr: Address) -> bool {
        contains(&self.ours, addr)
    }

    /// Handed-out addresses.
    pub fn num_owned(&self) -> u64 {
        run_total(&self.ours)
    }

    /// Free addresses.
    pub fn num_free(&self) -> u64 {
        run_total(&self.free)
    }

    /// Free addresses inside `r`.
    pub fn num_free_in(&self, r: Range) -> u32 {
        let mut n = 0u32;
        self.walk_free(r, |chunk| {
            n += chunk.size();
            false
        });
        n
    }

    /// Gives away a CIDR-aligned block of free space in `r`: the biggest, but no more than
    /// half of what is free there (rounded up, so never nothing). Weave donates the same way.
    pub fn donate(&mut self, r: Range) -> Option<Range> {
        let mut biggest = self.biggest_free_range(r);
        if biggest.size() == 0 {
            return None;
        }
        if biggest.size() > self.num_free_in(r) / 2 {
            biggest.start = biggest.start.offset(biggest.size() / 2);
        }
        self.ours = subtract(&self.ours, biggest.start, biggest.end);
        self.free = subtract(&self.free, biggest.start, biggest.end);
        Some(biggest)
    }

    /// Everything we own, used or free, as ranges with neighbours joined.
    pub fn owned_ranges(&self) -> Vec<Range> {
        self.everything()
            .chunks(2)
            .map(|p| Range::new(p[0], p[1]))
            .collect()
    }

    fn biggest_free_range(&self, r: Range) -> Range {
        let mut biggest = Range::default();
        self.walk_free(r, |chunk| {
            if chunk.size() >= biggest.size() {
                let block = chunk.biggest_cidr_range();
                if block.size() >= biggest.size() {
                    biggest = block;
                }
            }
            false
        });
        biggest
    }

    /// Calls `f` on each free run clipped to `r`, until it returns true.
    fn walk_free(&self, r: Range, mut f: impl FnMut(Range) -> bool) {
        if r.start >= r.end {
            return;
        }
        for pair in self.free.chunks(2) {
            let mut chunk = Range::new(pair[0], pair[1]);
            if chunk.end <= r.start {
                continue;
            }
            if chunk.start >= r.end {
                break;
            }
            chunk.start = chunk.start.max(r.start);
            chunk.end = chunk.end.min(r.end);
            if f(chunk) {
                return;
            }
        }
    }

    fn everything(&self) -> Vec<Address> {
        let mut all = self.ours.clone();
        for pair in self.free.chunks(2) {
            all = add(&all, pair[0], pair[1]);
        }
        all
    }
}

fn run_total(runs: &[Address]) -> u64 {
    runs.chunks(2).map(|p| u64::from(p[1].0 - p[0].0)).sum()
}

/// Whether the runs contain `addr`.
fn contains(runs: &[Address], addr: Address) -> bool {
    runs.partition_point(|a| *a <= addr) % 2 == 1
}

/// The union of the runs with `[start, end)`.
fn add(runs: &[Address], start: Address, end: Address) -> Vec<Address> {
    add_sub(runs, start, end, 0)
}

/// The runs without `[start, end)`.
fn subtract(runs: &[Address], start: Address, end: Address) -> Vec<Address> {
    add_sub(runs, start, end, 1)
}

fn add_sub(runs: &[Address], start: Address, end: Address, sense: usize) -> Vec<Address> {
    let start_pos = runs.partition_point(|a| *a < start);
    let end_pos = start_pos + runs[start_pos..].partition_point(|a| *a <= end);
    let mut out = Vec::with_capacity(runs.len() + 2);
    out.extend_from_slice(&runs[..start_pos]);
    if start_pos % 2 == sense {
        out.push(start);
    }
    if end_pos % 2 == sense {
        out.push(end);
    }
    out.extend_from_slice(&runs[end_pos..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn r(start: u32, end: u32) -> Range {
        Range::new(Address(start), Address(end))
    }

    #[test]
    fn allocate_claim_free_and_donate() {
        let mut s = Space::new();
        s.update_ranges(&[r(10, 20)]);
        assert_eq!(s.num_free(), 10);
        assert_eq!(s.allocate(r(10, 20)), Some(Address(10)));
        assert!(s.claim(Address(15)));
        assert!(!s.claim(Address(15)));
        assert_eq!(s.num_owned(), 2);
        assert!(s.free(Address(10)));
        assert!(!s.free(Address(10)));
        // Free: 10-14, 16-19 (9). The biggest aligned block is 16-19 (4), not above half.
        assert_eq!(s.donate(r(10, 20)), Some(r(16, 20)));
        assert_eq!(s.owned_ranges(), vec![r(10, 16)]);
        // Free: 10-14 (5): its biggest aligned block, 10-11, is not above half either.
        assert_eq!(s.donate(r(10, 20)), Some(r(10, 12)));
        assert_eq!(s.allocate(r(0, 10)), None);
    }

    proptest! {
        /// Against a plain set: allocations are distinct, free and used never overlap, and
        /// the counts add up.
        #[test]
        fn behaves_like_a_set(ops in proptest::collection::vec((0u8..4, 0u32..64), 1..200)) {
            let mut s = Space::new();
            s.update_ranges(&[r(0, 32)]);
            let mut used = BTreeSet::new();
            let mut owned: BTreeSet<u32> = (0..32).collect();
            for (op, x) in ops {
                match op {
                    0 => {
                        if let Some(a) = s.allocate(r(x % 32, 32)) {
                            prop_assert!(used.insert(a.0));
                            prop_assert!(owned.contains(&a.0));
                        }
                    }
                    1 => prop_assert_eq!(s.claim(Address(x)), owned.contains(&x) && used.insert(x)),
                    2 => prop_assert_eq!(s.free(Address(x)), used.remove(&x)),
                    _ => {
                        if let Some(d) = s.donate(r(0, 64)) {
                            for a in d.start.0..d.end.0 {
                                prop_assert!(!used.contains(&a));
                                prop_assert!(owned.remove(&a));
                            }
                        }
                    }
                }
                prop_assert_eq!(s.num_owned(), used.len() as u64);
                prop_assert_eq!(s.num_free(), (owned.len() - used.len()) as u64);
            }
        }
    }
}
