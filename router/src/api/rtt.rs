//! Round-trip times to peers: a window of recent samples per connection and its percentiles.
//!
//! Weave's heartbeats go one way only (each side sends its own and nothing answers them),
//! so they cannot time a round trip. The kernel can: every mesh connection is TCP, and its
//! `TCP_INFO` holds the smoothed round-trip time (`tcpi_rtt`, microseconds) that TCP keeps
//! from the acknowledgements of everything sent on it, heartbeats and gossip included. The
//! daemon reads it once a second per connection and offers it here with the connection's
//! acknowledged byte count; a reading is kept only when that count moved (an ACK of new
//! data came in, so the kernel measured again), so an idle connection does not fill the
//! window with copies of one old estimate. The last [`RTT_WINDOW`] samples are kept.
//!
//! Because the peer may delay its ACK of a one-way message (a heartbeat), the figure is an
//! upper bound of the network's round trip rather than the bare path delay.
//!
//! This module is pure: samples come in as numbers.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Samples kept per connection: five minutes at one a second.
pub const RTT_WINDOW: usize = 300;

/// The most recent round-trip samples of one connection, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RttWindow {
    samples: VecDeque<u32>,
    acked: u64,
}

impl RttWindow {
    /// Offers a `TCP_INFO` reading: the smoothed RTT and the bytes acknowledged so far. It
    /// is kept only when new bytes were acknowledged since the last kept reading and the
    /// kernel has an estimate (non-zero); returns whether it was kept.
    pub fn offer(&mut self, rtt_us: u32, bytes_acked: u64) -> bool {
        if rtt_us == 0 || bytes_acked <= self.acked {
            return false;
        }
        self.acked = bytes_acked;
        self.push(rtt_us);
        true
    }

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
    fn readings_count_only_when_new_bytes_were_acknowledged() {
        let mut w = RttWindow::default();
        assert!(!w.offer(0, 10), "no estimate yet");
        assert!(w.offer(500, 10));
        assert!(!w.offer(500, 10), "idle: the same estimate again");
        assert!(w.offer(700, 25));
        assert_eq!(w.len(), 2);
        assert_eq!(w.summary().unwrap().last_us, 700);
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
