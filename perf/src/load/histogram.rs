//! Round-trip histograms as result files keep them: the buckets of an hdrhistogram that hold
//! counts, so that the repeats of a measurement can be merged later and read at any
//! percentile, exactly as the client's own histogram would have been.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::Latency;

/// An hdrhistogram of round trips in nanoseconds, as its non-empty buckets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    /// Significant decimal digits the histogram keeps (its bucket resolution).
    pub significant_figures: u8,
    /// The largest value it tells apart from larger ones, ns.
    pub highest_ns: u64,
    /// `[value_ns, count]` of every non-empty bucket, values rising; the value is the
    /// highest one the bucket stands for, so recording it again lands in the same bucket.
    pub buckets: Vec<[u64; 2]>,
}

impl LatencyHistogram {
    /// The buckets of `hist` (values in ns).
    pub fn from_histogram(hist: &Histogram<u64>) -> LatencyHistogram {
        LatencyHistogram {
            significant_figures: hist.sigfig(),
            highest_ns: hist.high(),
            buckets: hist
                .iter_recorded()
                .map(|v| [v.value_iterated_to(), v.count_at_value()])
                .collect(),
        }
    }

    /// The histogram these buckets came from.
    pub fn to_histogram(&self) -> Result<Histogram<u64>, String> {
        let mut hist =
            Histogram::<u64>::new_with_bounds(1, self.highest_ns.max(2), self.significant_figures)
                .map_err(|e| format!("histogram bounds: {e}"))?;
        for &[value, count] in &self.buckets {
            hist.record_n(value.max(1), count)
                .map_err(|e| format!("bucket {value} ns: {e}"))?;
        }
        Ok(hist)
    }

    /// Round trips recorded.
    pub fn samples(&self) -> u64 {
        self.buckets.iter().map(|[_, count]| count).sum()
    }
}

/// Percentiles of round trips recorded in nanoseconds, in microseconds.
pub fn latency_of(hist: &Histogram<u64>) -> Latency {
    let us = |ns: u64| ns as f64 / 1000.0;
    Latency {
        p50_us: us(hist.value_at_quantile(0.50)),
        p90_us: us(hist.value_at_quantile(0.90)),
        p99_us: us(hist.value_at_quantile(0.99)),
        p999_us: us(hist.value_at_quantile(0.999)),
        mean_us: hist.mean() / 1000.0,
        samples: hist.len(),
    }
}

/// One histogram holding every round trip of `parts`; `None` when there are none.
pub fn merge<'a>(
    parts: impl IntoIterator<Item = &'a LatencyHistogram>,
) -> Result<Option<Histogram<u64>>, String> {
    let mut merged: Option<Histogram<u64>> = None;
    for part in parts {
        let hist = part.to_histogram()?;
        match merged.as_mut() {
            None => merged = Some(hist),
            // A histogram grows to take a wider one's values (auto-resize is off only for
            // values above both ranges, which `to_histogram` cannot produce).
            Some(m) => m
                .add(&hist)
                .map_err(|e| format!("merging histograms: {e}"))?,
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist_of(values_ns: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for v in values_ns {
            h.record(v).unwrap();
        }
        h
    }

    #[test]
    fn buckets_give_back_the_same_percentiles() {
        let original = hist_of((1..=10_000u64).map(|i| 20_000 + i * i % 977_000));

        let stored = LatencyHistogram::from_histogram(&original);
        let text = serde_json::to_string(&stored).unwrap();
        let back: LatencyHistogram = serde_json::from_str(&text).unwrap();
        let restored = back.to_histogram().unwrap();

        assert_eq!(back, stored);
        assert_eq!(back.samples(), 10_000);
        assert_eq!(latency_of(&restored), latency_of(&original));
        assert!(stored.buckets.windows(2).all(|w| w[0][0] < w[1][0]));
    }

    #[test]
    fn merged_histograms_hold_every_round_trip() {
        let fast = LatencyHistogram::from_histogram(&hist_of((0..900).map(|_| 50_000)));
        let slow = LatencyHistogram::from_histogram(&hist_of((0..100).map(|_| 900_000)));

        let merged = merge([&fast, &slow]).unwrap().unwrap();

        assert_eq!(merged.len(), 1000);
        let l = latency_of(&merged);
        assert!((l.p50_us - 50.0).abs() < 0.1, "{l:?}");
        // The slow tenth sets the 99th percentile, which neither repeat's median shows.
        assert!((l.p99_us - 900.0).abs() < 1.0, "{l:?}");
        assert_eq!(merge(std::iter::empty()).unwrap(), None);
    }

    #[test]
    fn latency_percentiles_from_histogram() {
        let mut hist = Histogram::<u64>::new(3).unwrap();
        for ns in 1..=1000u64 {
            hist.record(ns * 1000).unwrap();
        }
        let l = latency_of(&hist);

        assert_eq!(l.samples, 1000);
        assert!((l.p50_us - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99_us - 990.0).abs() < 1.0, "{l:?}");
        assert!(l.p50_us <= l.p90_us && l.p90_us <= l.p99_us && l.p99_us <= l.p999_us);
    }
}
