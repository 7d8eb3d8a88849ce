//! When a worker polls its ring instead of sleeping: adaptive busy-polling, pure policy.
//!
//! A worker that sleeps in the kernel between frames pays a thread wake-up for each one: on
//! a request/response exchange that is four wake-ups per round trip (the request and the
//! response, each read from one router's TAP and received by the other's socket), and each
//! wake-up costs as much as the forwarding itself. A worker that keeps polling for a short
//! while after it last had work catches the next frame without one, as the kernel's own
//! `busy_poll` does for sockets.
//!
//! The policy, bounded so that an idle router uses no CPU:
//! - a worker polls only within `window` of its last activity, so polling ends at most
//!   `window` after traffic stops, and an idle worker sleeps as before;
//! - it polls only while polling pays: each idle gap that ended in activity counts as a hit
//!   if polling would have bridged it (the gap was at most `window`), as a miss otherwise,
//!   and a worker whose recent gaps mostly missed (traffic too sparse for the window, such
//!   as a keep-alive every few milliseconds) sleeps instead of spinning for nothing;
//! - `window` zero turns polling off.
//!
//! Both workers' loops ([`crate::dataplane::iouring`], [`crate::dataplane::epoll`]) call
//! [`BusyPoll::worked`] after each turn that found work and ask [`BusyPoll::deadline`]
//! before they would sleep; [`crate::dataplane::worker::busy_poll`] polls until then.
//!
//! A polling worker keeps its CPU: where two routers' workers, or a worker and a
//! latency-critical thread, are pinned to the same CPU, it delays the other (measured on
//! the testbed's shared placement), and `--busy-poll 0` is the better setting.

use std::time::{Duration, Instant};

/// The longest polling window the configuration accepts: beyond it a worker would spin
/// through gaps long enough that sleeping costs nothing noticeable.
pub const MAX_WINDOW: Duration = Duration::from_millis(1);

/// The hit score's scale: the score is a moving average of hits (1) and misses (0) over
/// about the last eight gaps, in 1/`SCALE` units.
const SCALE: u32 = 1024;

/// Decides whether a worker polls or sleeps (see the module head).
#[derive(Debug, Clone)]
pub struct BusyPoll {
    window: Duration,
    /// When the worker last handled a completion.
    last: Option<Instant>,
    /// Moving average of hits, 0..=SCALE.
    score: u32,
}

impl BusyPoll {
    /// A policy that polls up to `window` after activity (`Duration::ZERO`: never).
    pub fn new(window: Duration) -> Self {
        BusyPoll {
            window: window.min(MAX_WINDOW),
            last: None,
            // Optimistic: the first traffic is polled for, and sparse traffic soon is not.
            score: SCALE,
        }
    }

    /// Whether polling is configured at all.
    pub fn enabled(&self) -> bool {
        !self.window.is_zero()
    }

    /// A loop turn at `now` handled at least one completion.
    pub fn worked(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let gap = now.saturating_duration_since(last);
            let hit = gap <= self.window;
            // score += (sample - score) / 8, in integers.
            let sample = if hit { SCALE } else { 0 };
            self.score = (self.score * 7 + sample) / 8;
        }
        self.last = Some(now);
    }

    /// Until when a worker that has nothing to do at `now` polls before it sleeps; `None`:
    /// sleep now (polling is off, traffic stopped a window ago, or polling has not been
    /// paying).
    pub fn deadline(&self, now: Instant) -> Option<Instant> {
        if !self.enabled() || self.score < SCALE / 2 {
            return None;
        }
        let until = self.last? + self.window;
        (until > now).then_some(until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn an_idle_worker_never_polls() {
        let t0 = Instant::now();
        let poll = BusyPoll::new(50 * US);
        assert_eq!(poll.deadline(t0), None);
        assert_eq!(poll.deadline(t0 + Duration::from_secs(10)), None);
    }

    #[test]
    fn polling_lasts_one_window_after_the_last_activity() {
        let t0 = Instant::now();
        let mut poll = BusyPoll::new(50 * US);
        poll.worked(t0);
        assert_eq!(poll.deadline(t0), Some(t0 + 50 * US));
        assert_eq!(poll.deadline(t0 + 49 * US), Some(t0 + 50 * US));
        assert_eq!(poll.deadline(t0 + 50 * US), None);
        assert_eq!(poll.deadline(t0 + Duration::from_secs(1)), None);
        poll.worked(t0 + 30 * US);
        assert_eq!(poll.deadline(t0 + 60 * US), Some(t0 + 80 * US));
    }

    #[test]
    fn a_zero_window_is_off() {
        let t0 = Instant::now();
        let mut poll = BusyPoll::new(Duration::ZERO);
        assert!(!poll.enabled());
        poll.worked(t0);
        assert_eq!(poll.deadline(t0), None);
    }

    #[test]
    fn the_window_is_capped() {
        let t0 = Instant::now();
        let mut poll = BusyPoll::new(Duration::from_secs(5));
        poll.worked(t0);
        assert_eq!(poll.deadline(t0), Some(t0 + MAX_WINDOW));
    }

    #[test]
    fn sparse_traffic_stops_polling_and_dense_traffic_brings_it_back() {
        let t0 = Instant::now();
        let mut poll = BusyPoll::new(50 * US);
        let mut now = t0;
        poll.worked(now);
        // Frames every 2 ms: polling 50 µs after each never catches the next one.
        let mut stopped_after = None;
        for i in 1..=20 {
            now += Duration::from_millis(2);
            poll.worked(now);
            if poll.deadline(now).is_none() {
                stopped_after = Some(i);
                break;
            }
        }
        let stopped_after = stopped_after.expect("sparse traffic stops polling");
        assert!(stopped_after <= 8, "stopped after {stopped_after} misses");
        // Frames every 20 µs: each gap is bridged, and polling resumes within a few.
        let mut resumed_after = None;
        for i in 1..=20 {
            now += 20 * US;
            poll.worked(now);
            if poll.deadline(now).is_some() {
                resumed_after = Some(i);
                break;
            }
        }
        let resumed_after = resumed_after.expect("dense traffic resumes polling");
        assert!(resumed_after <= 8, "resumed after {resumed_after} hits");
    }

    #[test]
    fn occasional_long_gaps_do_not_stop_polling() {
        // A request/response exchange: short gaps, with a longer think time every fourth.
        let t0 = Instant::now();
        let mut poll = BusyPoll::new(50 * US);
        let mut now = t0;
        poll.worked(now);
        for i in 0..100 {
            now += if i % 4 == 3 { 500 * US } else { 30 * US };
            poll.worked(now);
        }
        assert!(poll.deadline(now).is_some());
    }
}
