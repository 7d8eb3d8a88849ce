//! The performance harness behind `weave-perf run` and `weave-perf compare`: the same
//! workloads over the kernel's VXLAN, the bare underlay and weave-router, side by side in one
//! run, reported as ratios against the kernel baseline.
//!
//! The pure parts (the plan, the result file, Markdown, SVG, comparison) are separate from
//! the shell that builds the testbed and runs the load generator ([`run`]).

pub mod compare;
pub mod facts;
pub mod markdown;
pub mod model;
pub mod output;
pub mod placement;
pub mod result;
pub mod run;
pub mod search;
pub mod svg;

pub use model::{Metric, NetPath, WorkloadName};
pub use placement::Placement;
pub use result::RunResult;
pub use run::{HarnessError, RunOptions, SearchOptions};

use markdown::format_value;
use result::Sample;

/// One line describing a finished measurement, for progress output.
pub fn sample_headline(sample: &Sample) -> String {
    if let Some(e) = &sample.error {
        return format!("FAILED: {}", e.lines().next().unwrap_or(""));
    }
    let show = |m: Metric, unit: &str| {
        sample
            .metrics
            .get(m.key())
            .copied()
            .flatten()
            .map(|v| format!("{}{unit}", format_value(m, v)))
    };
    let parts: Vec<Option<String>> = match WorkloadName::from_name(&sample.workload) {
        Some(WorkloadName::Tcp1 | WorkloadName::Tcp4) => vec![
            show(Metric::ThroughputGbps, " Gbit/s"),
            show(Metric::MachineCpuSPerGib, " machine-s/GiB"),
            show(Metric::RouterCpuSPerGib, " router-s/GiB"),
            show(Metric::TxSegmentsPerCall, " tx/call"),
        ],
        Some(WorkloadName::Udp64 | WorkloadName::Udp1400) => vec![
            show(Metric::PacketsPerSecond, " pps received"),
            show(Metric::OfferedPacketsPerSecond, " offered"),
            show(Metric::UdpLossPercent, "% lost"),
            show(Metric::LossFreePacketsPerSecond, " pps loss-free").or_else(|| {
                let search = sample.search.as_ref()?;
                Some(match &search.error {
                    Some(e) => format!("loss-free search failed: {e}"),
                    None => "no loss-free rate found".to_owned(),
                })
            }),
            show(Metric::MachineCpuSPerGib, " machine-s/GiB"),
            show(Metric::RouterCpuSPerGib, " router-s/GiB"),
            show(Metric::TxSegmentsPerCall, " tx/call"),
        ],
        Some(WorkloadName::Rr | WorkloadName::RrPaced) => vec![
            show(Metric::LatencyP50Us, " µs p50"),
            show(Metric::LatencyP99Us, " µs p99"),
            show(Metric::LatencyP999Us, " µs p99.9"),
        ],
        None => Vec::new(),
    };
    parts.into_iter().flatten().collect::<Vec<_>>().join(", ")
}

/// A duration as `4m10s` or `12s`.
pub fn format_eta(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn headlines_show_the_workload_figures() {
        let run = result::tests::sample_run();
        let tcp = run
            .samples
            .iter()
            .find(|s| s.path == "sleeve-epoll" && s.workload == "tcp1" && s.repeat == 2)
            .unwrap();
        let rr = run
            .samples
            .iter()
            .find(|s| s.path == "vxlan" && s.workload == "rr" && s.repeat == 2)
            .unwrap();
        let mut failed = tcp.clone();
        failed.error = Some("the load client failed\nmore".into());

        assert!(
            sample_headline(tcp).starts_with("3.00 Gbit/s, "),
            "{}",
            sample_headline(tcp)
        );
        assert_eq!(
            sample_headline(rr),
            "40.0 µs p50, 80.0 µs p99, 200.0 µs p99.9"
        );
        assert_eq!(sample_headline(&failed), "FAILED: the load client failed");
        let udp = run
            .samples
            .iter()
            .find(|s| s.path == "vxlan" && s.workload == "udp64" && s.repeat == 2)
            .unwrap();
        assert!(
            sample_headline(udp)
                .starts_with("400k pps received, 410k offered, 2.0% lost, 300k pps loss-free, "),
            "{}",
            sample_headline(udp)
        );
    }

    #[test]
    fn eta_reads_as_minutes_and_seconds() {
        assert_eq!(format_eta(Duration::from_secs(12)), "12s");
        assert_eq!(format_eta(Duration::from_secs(250)), "4m10s");
        assert_eq!(format_eta(Duration::from_secs(3720)), "1h02m");
    }
}
