//! How many buffers a provided-buffer ring lends the kernel: few while traffic is light, more
//! while the ring runs dry, and back down, with the memory given back, after a quiet spell.
//!
//! The kernel takes a ring's buffers in order, so under load every buffer in circulation gets
//! written and stays resident: a ring's share of the router's memory is its circulating count
//! times the buffer size, however little of that a burst needed. A ring therefore starts at
//! [`Limits::min`], doubles when a loop turn finds it (nearly) empty, up to [`Limits::max`], and
//! after [`Limits::quiet`] with few buffers in use shrinks to fit what was used and releases the
//! memory of the buffers nobody holds.
//!
//! Pure: the worker feeds [`Sizer::handle_turn`] each loop turn's counters and the time, and
//! applies the [`Action`] it returns to the ring.

use std::time::{Duration, Instant};

/// Bounds and pace of one ring's sizing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Buffers in circulation at start and after a quiet spell: enough for light traffic.
    pub min: u16,
    /// The most buffers in circulation (the ring's capacity).
    pub max: u16,
    /// How long use must stay low before the ring shrinks and gives its memory back.
    pub quiet: Duration,
}

/// A ring's counters at the end of a loop turn, as [`crate::dataplane::uring::BufRing`]
/// reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Buffers the kernel has filled since the ring was registered.
    pub taken: u64,
    /// Times an operation found the ring empty since it was registered.
    pub enobufs: u64,
    /// Buffers the application holds now.
    pub lent: u16,
}

/// What the worker does to the ring after a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Put this many buffers in circulation.
    Grow(u16),
    /// Keep this many buffers in circulation and release the memory of the others and of those
    /// waiting unused in the ring.
    Shrink(u16),
    /// Keep the size; release the memory of the buffers waiting unused in the ring.
    Release,
}

/// The sizing state of one ring.
#[derive(Clone, Debug)]
pub struct Sizer {
    limits: Limits,
    size: u16,
    last: Usage,
    /// Start of the current quiet spell (reset by every busy turn and every action at its end).
    quiet_since: Instant,
    /// Most buffers one turn used during the quiet spell.
    peak: u16,
}

impl Sizer {
    /// A ring of `limits.min` buffers (at least one, at most `limits.max`), quiet since `now`.
    pub fn new(limits: Limits, now: Instant) -> Sizer {
        let max = limits.max.max(1);
        let limits = Limits {
            min: limits.min.clamp(1, max),
            max,
            quiet: limits.quiet,
        };
        Sizer {
            limits,
            size: limits.min,
            last: Usage::default(),
            quiet_since: now,
            peak: 0,
        }
    }

    /// Buffers in circulation, as decided so far.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Takes one loop turn's counters. A turn is busy when the ring ran dry or when the buffers
    /// out of it (those filled this turn plus those the application already held) reach three
    /// quarters of the size: the ring then doubles. Otherwise the turn counts toward a quiet
    /// spell; at its end, if no turn used more than a quarter of the size, the ring shrinks to
    /// twice the spell's peak (rounded up to a power of two, at least `min`) or, already that
    /// small, just releases its idle memory.
    pub fn handle_turn(&mut self, now: Instant, usage: Usage) -> Option<Action> {
        let taken = usage.taken.saturating_sub(self.last.taken);
        let dry = usage.enobufs > self.last.enobufs;
        let used = u16::try_from(taken.saturating_add(u64::from(self.last.lent)))
            .unwrap_or(u16::MAX)
            .max(usage.lent);
        self.last = usage;
        if dry || u32::from(used) * 4 >= u32::from(self.size) * 3 {
            self.restart_quiet(now);
            if self.size >= self.limits.max {
                return None;
            }
            self.size = self.size.saturating_mul(2).min(self.limits.max);
            return Some(Action::Grow(self.size));
        }
        self.peak = self.peak.max(used);
        if now.saturating_duration_since(self.quiet_since) < self.limits.quiet {
            return None;
        }
        let peak = self.peak;
        self.restart_quiet(now);
        if u32::from(peak) * 4 > u32::from(self.size) {
            return None;
        }
        let fit = peak
            .saturating_mul(2)
            .checked_next_power_of_two()
            .unwrap_or(u16::MAX)
            .clamp(self.limits.min, self.limits.max);
        if fit < self.size {
            self.size = fit;
            return Some(Action::Shrink(fit));
        }
        Some(Action::Release)
    }

    fn restart_quiet(&mut self, now: Instant) {
        self.quiet_since = now;
        self.peak = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: Limits = Limits {
        min: 4,
        max: 32,
        quiet: Duration::from_secs(5),
    };

    /// Feeds turns of `taken` buffers each, `step` apart; returns the actions.
    struct Driver {
        sizer: Sizer,
        now: Instant,
        usage: Usage,
    }

    impl Driver {
        fn new(limits: Limits) -> Driver {
            let now = Instant::now();
            Driver {
                sizer: Sizer::new(limits, now),
                now,
                usage: Usage::default(),
            }
        }

        fn turn(&mut self, after: Duration, taken: u64, dry: bool) -> Option<Action> {
            self.now += after;
            self.usage.taken += taken;
            self.usage.enobufs += u64::from(dry);
            self.sizer.handle_turn(self.now, self.usage)
        }
    }

    #[test]
    fn starts_at_the_minimum() {
        let sizer = Sizer::new(LIMITS, Instant::now());

        assert_eq!(sizer.size(), 4);
    }

    #[test]
    fn a_ring_that_runs_dry_doubles_up_to_the_maximum() {
        let mut d = Driver::new(LIMITS);

        let actions: Vec<_> = (0..5)
            .map(|_| d.turn(Duration::from_millis(1), 2, true))
            .collect();

        assert_eq!(
            actions,
            vec![
                Some(Action::Grow(8)),
                Some(Action::Grow(16)),
                Some(Action::Grow(32)),
                None,
                None
            ]
        );
        assert_eq!(d.sizer.size(), 32);
    }

    #[test]
    fn a_turn_that_nearly_empties_the_ring_grows_it() {
        let mut d = Driver::new(LIMITS);

        assert_eq!(d.turn(Duration::from_millis(1), 2, false), None);
        assert_eq!(
            d.turn(Duration::from_millis(1), 3, false),
            Some(Action::Grow(8))
        );
    }

    #[test]
    fn buffers_held_by_the_application_count_as_used() {
        let mut d = Driver::new(LIMITS);
        d.usage.lent = 3;

        assert_eq!(
            d.turn(Duration::from_millis(1), 0, false),
            Some(Action::Grow(8))
        );
    }

    #[test]
    fn a_quiet_spell_shrinks_the_ring_to_fit_its_peak() {
        let mut d = Driver::new(LIMITS);
        for _ in 0..3 {
            d.turn(Duration::from_millis(1), 0, true);
        }
        assert_eq!(d.sizer.size(), 32);

        assert_eq!(d.turn(Duration::from_secs(1), 3, false), None);
        assert_eq!(d.turn(Duration::from_secs(1), 1, false), None);
        let action = d.turn(Duration::from_secs(3), 0, false);

        assert_eq!(action, Some(Action::Shrink(8)), "twice the peak of 3");
        assert_eq!(d.sizer.size(), 8);
    }

    #[test]
    fn an_idle_ring_shrinks_to_the_minimum_then_only_releases() {
        let mut d = Driver::new(LIMITS);
        for _ in 0..3 {
            d.turn(Duration::from_millis(1), 0, true);
        }

        let first = d.turn(Duration::from_secs(5), 0, false);
        let between = d.turn(Duration::from_secs(1), 0, false);
        let second = d.turn(Duration::from_secs(4), 0, false);

        assert_eq!(first, Some(Action::Shrink(4)));
        assert_eq!(between, None, "once per quiet spell");
        assert_eq!(second, Some(Action::Release));
    }

    #[test]
    fn a_busy_turn_restarts_the_quiet_spell() {
        let mut d = Driver::new(LIMITS);
        d.turn(Duration::from_millis(1), 0, true);

        assert_eq!(d.turn(Duration::from_secs(4), 0, false), None);
        assert_eq!(
            d.turn(Duration::from_millis(1), 1, true),
            Some(Action::Grow(16))
        );
        assert_eq!(d.turn(Duration::from_secs(4), 0, false), None);
        assert_eq!(
            d.turn(Duration::from_secs(1), 0, false),
            Some(Action::Shrink(4))
        );
    }

    #[test]
    fn steady_moderate_use_keeps_the_size_and_the_memory() {
        let mut d = Driver::new(LIMITS);
        d.turn(Duration::from_millis(1), 0, true);
        assert_eq!(d.sizer.size(), 8);

        let actions: Vec<_> = (0..20)
            .map(|_| d.turn(Duration::from_secs(1), 4, false))
            .collect();

        assert!(actions.iter().all(Option::is_none), "{actions:?}");
        assert_eq!(d.sizer.size(), 8);
    }

    #[test]
    fn odd_limits_are_made_sane() {
        let sizer = Sizer::new(
            Limits {
                min: 0,
                max: 0,
                quiet: Duration::ZERO,
            },
            Instant::now(),
        );

        assert_eq!(sizer.size(), 1);
    }

    proptest! {
        #[test]
        fn the_size_stays_within_its_limits(
            turns in proptest::collection::vec((0u64..40, any::<bool>(), 0u64..3_000, 0u16..40), 1..200),
        ) {
            let mut d = Driver::new(LIMITS);
            for (taken, dry, millis, lent) in turns {
                d.usage.lent = lent;
                let action = d.turn(Duration::from_millis(millis), taken, dry);
                let size = d.sizer.size();
                prop_assert!((LIMITS.min..=LIMITS.max).contains(&size));
                match action {
                    Some(Action::Grow(n) | Action::Shrink(n)) => prop_assert_eq!(n, size),
                    Some(Action::Release) | None => {}
                }
            }
        }
    }
}
