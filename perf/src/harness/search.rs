//! The loss-free rate of a UDP workload, searched as RFC 2544's throughput test does it, in
//! a bounded number of short trials. The first trial is the unpaced flood measured just
//! before on the same path: its offered rate is the ceiling, the most the sender puts out,
//! and a path that carried it with less than [`MAX_LOSS_PERCENT`] loss has nothing above it
//! to find. Otherwise each further trial offers one paced rate, bisecting between the
//! highest rate carried and the lowest that lost more.
//!
//! Pure: the shell asks [`RateSearch::poll_rate`] what to offer next, runs the trial, and
//! hands the counts back through [`RateSearch::handle_trial`].

use serde::{Deserialize, Serialize};

/// The largest loss, in percent of the packets sent, a trial may have and pass.
pub const MAX_LOSS_PERCENT: f64 = 0.1;

/// The search stops once the rates it still has to choose between are this close (as a
/// share of the ceiling): trials cannot tell them apart on a noisy machine.
const RESOLUTION: f64 = 0.02;

/// One trial: a rate offered for a counted window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// Whether the sender was paced; the first trial, the flood, is not.
    pub paced: bool,
    /// The pace asked of the sender, packets/s (the flood: what it offered).
    pub target_pps: f64,
    /// Packets/s it sent in the counted window (below the target where it could not keep up).
    pub offered_pps: f64,
    /// Packets/s of those the receiving pod got, over the same window.
    pub received_pps: f64,
    /// Share of the packets sent that did not arrive, percent (100 when none were sent).
    pub loss_percent: f64,
}

impl Trial {
    /// A paced trial of `target_pps` that sent `sent` and got `received` packets through in
    /// `seconds`.
    pub fn from_counts(target_pps: f64, sent: u64, received: u64, seconds: f64) -> Trial {
        let per_second = |n: u64| match seconds > 0.0 {
            true => n as f64 / seconds,
            false => 0.0,
        };
        let loss_percent = match sent {
            0 => 100.0,
            _ => 100.0 * sent.saturating_sub(received) as f64 / sent as f64,
        };
        Trial {
            paced: true,
            target_pps,
            offered_pps: per_second(sent),
            received_pps: per_second(received),
            loss_percent,
        }
    }

    /// The unpaced flood as the search's first trial: it offered `offered_pps` and lost
    /// `loss_percent`.
    pub fn flood(offered_pps: f64, loss_percent: f64) -> Trial {
        Trial {
            paced: false,
            target_pps: offered_pps,
            offered_pps,
            received_pps: offered_pps * (1.0 - loss_percent / 100.0),
            loss_percent,
        }
    }

    /// Whether the path carried it: loss below [`MAX_LOSS_PERCENT`].
    pub fn passed(&self) -> bool {
        self.loss_percent < MAX_LOSS_PERCENT
    }
}

/// What a search found, as result files keep it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchRecord {
    /// The first and highest rate offered: the unpaced sender's packets/s on this path.
    pub ceiling_pps: f64,
    /// The packets/s offered in the best trial that passed; `None` when none passed.
    pub loss_free_pps: Option<f64>,
    /// Every trial, in the order run: the flood, then the paced ones.
    pub trials: Vec<Trial>,
    /// Why the search stopped before its trials were done (a trial that could not run).
    pub error: Option<String>,
}

impl SearchRecord {
    /// Whether the path carried the ceiling itself (the flood lost nothing to speak of): the
    /// sender, not the path, set the loss-free rate.
    pub fn reached_ceiling(&self) -> bool {
        self.trials.first().is_some_and(Trial::passed)
    }
}

/// A search in progress.
#[derive(Debug, Clone)]
pub struct RateSearch {
    ceiling: f64,
    /// The most paced trials.
    max_trials: usize,
    /// The highest target that passed (0: none yet).
    passed: f64,
    /// The lowest target that failed.
    failed: f64,
    trials: Vec<Trial>,
}

impl RateSearch {
    /// A search after `flood`, the unpaced trial whose offered rate is the ceiling, of at
    /// most `max_trials` paced trials below it.
    pub fn after_flood(flood: Trial, max_trials: usize) -> RateSearch {
        let ceiling = flood.offered_pps;
        let mut search = RateSearch {
            ceiling,
            max_trials,
            passed: 0.0,
            failed: ceiling,
            trials: Vec::with_capacity(max_trials + 1),
        };
        search.handle_trial(flood);
        search
    }

    /// The rate the next trial should offer; `None` when the search is over.
    pub fn poll_rate(&self) -> Option<f64> {
        let paced = self.trials.iter().filter(|t| t.paced).count();
        let no_ceiling = self.ceiling.is_nan() || self.ceiling <= 0.0;
        if paced >= self.max_trials || no_ceiling {
            return None;
        }
        // Noise can make a lower rate fail after a higher one passed; then the interval is
        // empty and the best pass stands.
        let open = self.failed - self.passed;
        if self.passed >= self.ceiling || open <= RESOLUTION * self.ceiling {
            return None;
        }
        Some((self.passed + self.failed) / 2.0)
    }

    /// Takes the outcome of the trial [`RateSearch::poll_rate`] asked for.
    pub fn handle_trial(&mut self, trial: Trial) {
        if trial.passed() {
            self.passed = self.passed.max(trial.target_pps);
        } else {
            self.failed = self.failed.min(trial.target_pps);
        }
        self.trials.push(trial);
    }

    /// The record of the search so far; `error` says why it ended early, if it did.
    pub fn finish(self, error: Option<String>) -> SearchRecord {
        let loss_free_pps = self
            .trials
            .iter()
            .filter(|t| t.passed())
            .map(|t| t.offered_pps)
            .max_by(f64::total_cmp);
        SearchRecord {
            ceiling_pps: self.ceiling,
            loss_free_pps,
            trials: self.trials,
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search against a path that carries up to `capacity` packets/s without loss
    /// and a sender that offers what it is asked, after a flood at `ceiling`; returns the
    /// paced targets tried and the record.
    fn search(ceiling: f64, trials: usize, capacity: f64) -> (Vec<f64>, SearchRecord) {
        let carried = |rate: f64| if rate <= capacity { rate } else { capacity };
        let flood_loss = 100.0 * (ceiling - carried(ceiling)) / ceiling;
        let mut s = RateSearch::after_flood(Trial::flood(ceiling, flood_loss), trials);
        let mut tried = Vec::new();
        while let Some(rate) = s.poll_rate() {
            tried.push(rate);
            s.handle_trial(Trial::from_counts(
                rate,
                rate as u64,
                carried(rate) as u64,
                1.0,
            ));
        }
        (tried, s.finish(None))
    }

    #[test]
    fn a_flood_that_lost_nothing_ends_the_search() {
        let (tried, record) = search(100_000.0, 6, 1e9);

        assert!(tried.is_empty(), "{tried:?}");
        assert_eq!(record.loss_free_pps, Some(100_000.0));
        assert!(record.reached_ceiling());
        assert!(!record.trials[0].paced);
    }

    #[test]
    fn the_search_bisects_towards_the_capacity_within_its_trials() {
        let (tried, record) = search(100_000.0, 5, 60_000.0);

        assert_eq!(tried, [50_000.0, 75_000.0, 62_500.0, 56_250.0, 59_375.0]);
        assert_eq!(record.loss_free_pps, Some(59_375.0));
        assert!(!record.reached_ceiling());
        assert_eq!(record.trials.len(), 6);
        assert!(record.trials[0].loss_percent > 39.0);
        assert!(record.trials[2].loss_percent > 19.0);
        assert!(record.trials[1..].iter().all(|t| t.paced));
    }

    #[test]
    fn the_search_stops_at_its_resolution() {
        // 1 % of the ceiling apart is closer than the search tells rates apart.
        let (tried, _) = search(100.0, 20, 99.0);

        assert!(tried.len() < 10, "{tried:?}");
    }

    #[test]
    fn a_path_that_carries_nothing_has_no_loss_free_rate() {
        let (tried, record) = search(1000.0, 3, 0.0);

        assert_eq!(tried, [500.0, 250.0, 125.0]);
        assert_eq!(record.loss_free_pps, None);
        let nothing_sent = RateSearch::after_flood(Trial::flood(0.0, 100.0), 4);
        assert_eq!(nothing_sent.poll_rate(), None);
        let no_trials = RateSearch::after_flood(Trial::flood(1000.0, 50.0), 0);
        assert_eq!(no_trials.poll_rate(), None);
    }

    #[test]
    fn the_rate_found_is_what_was_offered_not_what_was_asked() {
        let mut s = RateSearch::after_flood(Trial::flood(2000.0, 50.0), 1);
        assert_eq!(s.poll_rate(), Some(1000.0));
        // The sender could put out only 900 of the 1000 packets/s asked; all arrived.
        s.handle_trial(Trial::from_counts(1000.0, 450, 450, 0.5));

        let record = s.finish(Some("stopped".into()));

        assert_eq!(record.loss_free_pps, Some(900.0));
        assert_eq!(record.error.as_deref(), Some("stopped"));
    }

    #[test]
    fn loss_at_the_threshold_fails() {
        assert!(Trial::from_counts(1.0, 10_000, 9_991, 1.0).passed());
        assert!(!Trial::from_counts(1.0, 10_000, 9_990, 1.0).passed());
        assert!(!Trial::from_counts(1.0, 0, 0, 1.0).passed());
        assert!(Trial::flood(5.0, 0.05).passed());
        assert!(!Trial::flood(5.0, 0.1).passed());
    }
}
