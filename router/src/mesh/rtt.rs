//! Round-trip times to peers: a window of recent samples per connection and its percentiles.
//!
//! Weave's heartbeats go one way only (each side sends its own and nothing answers them),
//! so they cannot time a round trip. The sleeve's path-MTU probe is answered, though: a
//! peer that receives one replies at once over the TCP connection with `PMTUVerified`, and
//! Weave Net does the same. Once the MTU is known, each connection sends a small probe
//! every second ([`crate::mesh::sleeve`]) and times the answer: one UDP trip over the
//! data path plus one TCP trip back, the way a pod's packet and its answer travel.
//! The last [`RTT_WINDOW`] samples are kept.
//!
//! This module is pure: samples come in as numbers.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Samples kept per connection: five minutes at one probe a second.
pub const RTT_WINDOW: usize = 300;

/// The most recent round-trip samples of one connection, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RttWindow {
    samples: VecDeque<u32>,
}

impl RttWindow {
    /// Adds one sample in microseconds, forgetting the oldest beyond [`RTT_WINDOW`].
    pub fn push(&mut self, rtt_us: u32) {
        if self.samples.len() == RTT_WINDOW {
            self.samples.pop_front();
        }
        self.samples.push_back(rtt_us);
    }

    /// How many samples the window holds.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True before the first sample.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Percentiles of the window, or `None` before the first sample.
    pub fn summary(&self) -> Option<RttSummary> {
        let last = *self.samples.back()?;
        let mut sorted: Vec<u32> = self.samples.iter().copied().collect();
        sorted.sort_unstable();
        Some(RttSummary {
            samples: sorted.len(),
            last_us: last,
            p50_us: nearest_rank(&sorted, 50),
            p90_us: nearest_rank(&sorted, 90),
            p99_us: nearest_rank(&sorted, 99),
            max_us: sorted[sorted.len() - 1],
            lost: 0,
        })
    }
}

/// Round-trip percentiles over a window of samples, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RttSummary {
    /// Samples in the window.
    pub samples: usize,
    /// The latest sample.
    pub last_us: u32,
    /// Median.
    pub p50_us: u32,
    /// 90th percentile.
    pub p90_us: u32,
    /// 99th percentile.
    pub p99_us: u32,
    /// Largest sample.
    pub max_us: u32,
    /// Probes that went unanswered since the connection started (not in the percentiles).
    #[serde(default)]
    pub lost: u64,
}

/// The nearest-rank percentile of a non-empty sorted slice: the smallest sample with at
/// least `pct`% of the samples at or below it.
fn nearest_rank(sorted: &[u32], pct: usize) -> u32 {
    let rank = (pct * sorted.len()).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_window_has_no_summary() {
        assert_eq!(RttWindow::default().summary(), None);
    }

    #[test]
    fn one_sample_is_every_percentile() {
        let mut w = RttWindow::default();
        w.push(250);
        let s = w.summary().unwrap();
        assert_eq!(
            (s.samples, s.last_us, s.p50_us, s.p90_us, s.p99_us, s.max_us),
            (1, 250, 250, 250, 250, 250)
        );
    }

    #[test]
    fn percentiles_of_one_to_a_hundred_are_nearest_rank() {
        let mut w = RttWindow::default();
        // Pushed out of order: the summary must not depend on arrival order.
        for v in (1..=100).rev() {
            w.push(v);
        }
        let s = w.summary().unwrap();
        assert_eq!((s.p50_us, s.p90_us, s.p99_us, s.max_us), (50, 90, 99, 100));
        assert_eq!(s.last_us, 1);
    }

    #[test]
    fn ten_samples_with_one_outlier() {
        let mut w = RttWindow::default();
        for v in [100, 100, 100, 100, 100, 100, 100, 100, 100, 9000] {
            w.push(v);
        }
        let s = w.summary().unwrap();
        assert_eq!(
            (s.p50_us, s.p90_us, s.p99_us, s.max_us),
            (100, 100, 9000, 9000)
        );
    }

    #[test]
    fn window_forgets_the_oldest_samples() {
        let mut w = RttWindow::default();
        w.push(1_000_000);
        for _ in 0..RTT_WINDOW {
            w.push(10);
        }
        assert_eq!(w.len(), RTT_WINDOW);
        assert_eq!(w.summary().unwrap().max_us, 10);
    }
}
