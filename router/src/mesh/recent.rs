//! What the mesh has seen lately: a set of message hashes that forgets each one after a
//! fixed window, so a message that comes round again within it can be dropped.
//!
//! Two kinds of message need it. Gossip on a channel this router only relays (Weave's
//! surrogate gossiper) goes on once per window. Broadcasts on an application channel are
//! relayed along each router's own broadcast tree for the source; while routers' views of
//! the topology differ (a partition healing, peers joining), two of them can each take the
//! other for its child in the same tree and hand the broadcast back and forth, and several
//! such pairs multiply it without bound. Weave Net has no guard against that; a router that
//! drops a broadcast it has already delivered or sent breaks every loop it is on.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

/// Hashes seen within the last `window`, at most `cap` of them (the oldest go first).
#[derive(Debug)]
pub struct Recent {
    window: Duration,
    cap: usize,
    order: VecDeque<(Instant, u64)>,
    set: HashSet<u64>,
}

impl Recent {
    /// An empty set that forgets after `window` and holds at most `cap` hashes.
    pub fn new(window: Duration, cap: usize) -> Self {
        Recent {
            window,
            cap: cap.max(1),
            order: VecDeque::new(),
            set: HashSet::new(),
        }
    }

    /// Records `hash` as seen at `now`; false when it was already seen within the window
    /// (its time is then left as it was, so a message repeated forever still passes once
    /// a window).
    pub fn insert(&mut self, hash: u64, now: Instant) -> bool {
        while let Some(&(t, h)) = self.order.front() {
            if t + self.window > now {
                break;
            }
            self.order.pop_front();
            self.set.remove(&h);
        }
        if !self.set.insert(hash) {
            return false;
        }
        if self.order.len() >= self.cap {
            if let Some((_, h)) = self.order.pop_front() {
                self.set.remove(&h);
            }
        }
        self.order.push_back((now, hash));
        true
    }

    /// How many hashes it holds.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeat_within_the_window_is_refused_and_passes_after_it() {
        let t0 = Instant::now();
        let mut r = Recent::new(Duration::from_secs(30), 100);
        assert!(r.insert(1, t0));
        assert!(r.insert(2, t0));
        assert!(!r.insert(1, t0 + Duration::from_secs(29)));
        // The repeat did not extend the first sighting.
        assert!(r.insert(1, t0 + Duration::from_secs(30)));
        assert!(!r.insert(1, t0 + Duration::from_secs(31)));
        // 2 expired with the pass above.
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn the_oldest_goes_when_full() {
        let t0 = Instant::now();
        let mut r = Recent::new(Duration::from_secs(30), 3);
        for h in 0..3 {
            assert!(r.insert(h, t0));
        }
        assert!(r.insert(3, t0));
        assert_eq!(r.len(), 3);
        assert!(r.insert(0, t0), "0 was the oldest and went");
        assert!(!r.insert(3, t0));
    }
}
