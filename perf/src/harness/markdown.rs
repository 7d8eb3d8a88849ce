//! The Markdown report of a run: machine facts, ratios against the kernel VXLAN baseline,
//! the absolute medians with their spread, and what the routers spent.

use std::fmt::Write as _;

use super::model::{Metric, NetPath, PathKind, WorkloadName};
use super::result::{RunResult, Spread};

/// The figures the ratio table shows: one column per (workload, metric).
fn headline(workload: WorkloadName) -> &'static [(Metric, &'static str)] {
    match workload {
        WorkloadName::Tcp1 => &[(Metric::ThroughputGbps, "tcp1 throughput")],
        WorkloadName::Tcp4 => &[(Metric::ThroughputGbps, "tcp4 throughput")],
        WorkloadName::Udp64 => &[(Metric::PacketsPerSecond, "udp64 received pps")],
        WorkloadName::Udp1400 => &[(Metric::PacketsPerSecond, "udp1400 received pps")],
        WorkloadName::Rr => &[
            (Metric::LatencyP50Us, "rr p50"),
            (Metric::LatencyP99Us, "rr p99"),
        ],
    }
}

/// The figures of the absolute table, per workload: what the workload measures, without the
/// router's costs (those have their own table).
fn absolute(workload: WorkloadName) -> impl Iterator<Item = Metric> {
    workload
        .metrics()
        .iter()
        .copied()
        .filter(|m| !m.router_only())
}

/// A UDP measurement that lost at most this share of what was sent (median, percent) had
/// its rate set by the sender: the receiving pod got at least 97 % of the packets offered.
pub const SENDER_LIMITED_LOSS_PERCENT: f64 = 3.0;

/// Whether `path`'s UDP figure for `workload` was set by the sender rather than by drops on
/// the way: its median loss is at most [`SENDER_LIMITED_LOSS_PERCENT`]. `None` where there
/// is no loss figure (not UDP, not measured).
pub fn sender_limited(run: &RunResult, path: &str, workload: WorkloadName) -> Option<bool> {
    let udp = matches!(workload, WorkloadName::Udp64 | WorkloadName::Udp1400);
    if !udp {
        return None;
    }
    run.median(path, workload.name(), Metric::UdpLossPercent)
        .map(|loss| loss <= SENDER_LIMITED_LOSS_PERCENT)
}

/// One cell of the ratio table: `value / base`, with `†` where the path's own UDP figure was
/// sender-limited, and `≤` / `≥` where exactly one side was, so the ratio is a bound.
/// `(path_limited, base_limited)` are [`sender_limited`] of the path and the baseline.
fn ratio_cell(
    value: f64,
    base: f64,
    path_limited: Option<bool>,
    base_limited: Option<bool>,
) -> String {
    let (path_limited, base_limited) = (path_limited == Some(true), base_limited == Some(true));
    // A sender-limited figure is a floor of what its path can carry. A floor over a true
    // capacity is a lower bound of the ratio; a true capacity over a floor, an upper bound;
    // a floor over a floor bounds nothing.
    let bound = match (path_limited, base_limited) {
        (true, false) => "≥",
        (false, true) => "≤",
        (true, true) | (false, false) => "",
    };
    let mark = if path_limited { "†" } else { "" };
    format!("{bound}{:.2}×{mark}", value / base)
}

/// Router figures shown per router path and workload.
const ROUTER_COLUMNS: [(Metric, &str); 4] = [
    (Metric::RouterCpuSPerGib, "CPU s/GiB"),
    (Metric::RouterPeakRssMib, "peak RSS MiB"),
    (Metric::TxSegmentsPerCall, "tx datagrams/call"),
    (Metric::RxSegmentsPerCall, "rx datagrams/call"),
];

/// Renders `run` as Markdown.
pub fn render_markdown(run: &RunResult) -> String {
    let mut md = String::new();
    header(&mut md, run);
    ratios(&mut md, run);
    absolutes(&mut md, run);
    router_costs(&mut md, run);
    failures(&mut md, run);
    md
}

/// Whether the run measured a path whose routers carry the traffic over `overlay`
/// ([`NetPath::overlay`]); paths this version does not know count as neither.
fn measured_over(run: &RunResult, overlay: &str) -> bool {
    run.paths.iter().any(|p| {
        p.measured && NetPath::from_name(&p.name).and_then(NetPath::overlay) == Some(overlay)
    })
}

/// Workloads of the run that this version knows, in run order.
fn workloads(run: &RunResult) -> Vec<WorkloadName> {
    run.workloads
        .iter()
        .filter_map(|w| WorkloadName::from_name(&w.name))
        .collect()
}

fn header(md: &mut String, run: &RunResult) {
    let m = &run.machine;
    let s = &run.settings;
    let _ = writeln!(md, "# weave-perf run {}\n", run.started_utc);
    let mut machine = format!("Linux {}, {} cores", m.kernel, m.cores);
    if let Some(cpu) = &m.cpu_model {
        let _ = write!(machine, " ({cpu})");
    }
    if let Some(mem) = m.memory_bytes {
        let _ = write!(
            machine,
            ", {:.1} GiB memory",
            mem as f64 / (1u64 << 30) as f64
        );
    }
    if let Some(load) = m.load_average {
        let _ = write!(machine, ", load average {load:.2} at the start");
    }
    let _ = writeln!(md, "- machine: {machine}");
    let version = m
        .router_version
        .as_deref()
        .unwrap_or("weave-router (version unknown)");
    let commit = match (&m.git_commit, m.git_dirty) {
        (Some(c), Some(true)) => format!(", commit {c} with uncommitted changes"),
        (Some(c), _) => format!(", commit {c}"),
        (None, _) => String::new(),
    };
    let _ = writeln!(md, "- {version}{commit}");
    let workers = match s.router_workers {
        Some(n) => format!("{n} data-plane workers per router"),
        None => "one data-plane worker per CPU".to_owned(),
    };
    let _ = writeln!(
        md,
        "- settings: {} repeat{} of {} s (after {} s warm-up) per path and workload, paths \
         interleaved; {} hosts per path, all routers meshed, {workers}; traffic pod on host1 → \
         pod on host2{}",
        s.repeats,
        if s.repeats == 1 { "" } else { "s" },
        s.seconds,
        s.warmup,
        s.hosts_per_path,
        if s.quick {
            " (--quick: a smoke run, not a measurement)"
        } else {
            ""
        },
    );
    let _ = writeln!(md, "- command: `{}`", m.command_line.join(" "));
    for p in run.paths.iter().filter(|p| !p.measured) {
        let _ = writeln!(
            md,
            "- {}: {}",
            p.name,
            p.note.as_deref().unwrap_or("not measured")
        );
    }
    md.push('\n');
    let _ = writeln!(md, "Paths:\n");
    for p in run.paths.iter().filter(|p| p.measured) {
        let _ = writeln!(md, "- `{}`: {}", p.name, p.description);
    }
    md.push('\n');
}

fn ratios(md: &mut String, run: &RunResult) {
    let base = NetPath::BASELINE.name();
    let _ = writeln!(md, "## Against the kernel VXLAN baseline\n");
    if !run.measured_paths().contains(&base) {
        let _ = writeln!(
            md,
            "The run did not measure `{base}`, so there are no ratios.\n"
        );
        return;
    }
    let _ = writeln!(
        md,
        "Each path's median over `{base}`'s median, measured side by side in this run. \
         Throughput and packet rates: higher is better; latency: lower is better.\n"
    );
    let columns: Vec<(WorkloadName, Metric, &str)> = workloads(run)
        .into_iter()
        .flat_map(|w| headline(w).iter().map(move |&(m, label)| (w, m, label)))
        .collect();
    let _ = write!(md, "| path |");
    for (_, _, label) in &columns {
        let _ = write!(md, " {label} |");
    }
    let _ = write!(md, "\n|---|");
    for _ in &columns {
        md.push_str("--:|");
    }
    md.push('\n');
    let mut marked = false;
    for path in run.measured_paths() {
        let _ = write!(md, "| {path} |");
        for &(w, m, _) in &columns {
            let cell = match (run.median(path, w.name(), m), run.median(base, w.name(), m)) {
                (Some(v), Some(b)) if b > 0.0 => {
                    let (p, bl) = (sender_limited(run, path, w), sender_limited(run, base, w));
                    marked |= p == Some(true) || bl == Some(true);
                    ratio_cell(v, b, p, bl)
                }
                _ => "–".to_owned(),
            };
            let _ = write!(md, " {cell} |");
        }
        md.push('\n');
    }
    md.push('\n');
    if marked {
        let _ = writeln!(
            md,
            "† The receiving pod got at least {:.0} % of the UDP packets sent (median loss ≤ {} %; \
             offered and received packets/s are in the table below): the sending side set this \
             rate, not drops on the way, so the path carries at least this much and may carry \
             more. On kernel paths the sending side includes most of the path's own work, which \
             the kernel does on the sender's CPU during its send calls. `≤`: only `{base}` is \
             marked, so the ratio is an upper bound of this path's ratio against a `{base}` fed \
             faster. `≥`: only this path is marked, so the ratio is a lower bound. Both marked: \
             the ratio compares two sending rates and bounds neither way.\n",
            100.0 - SENDER_LIMITED_LOSS_PERCENT,
            SENDER_LIMITED_LOSS_PERCENT,
        );
    }
    if measured_over(run, "sleeve") && workloads(run).contains(&WorkloadName::Rr) {
        let _ = writeln!(
            md,
            "Round trips (rr): on `{base}` the kernel carries each request and answer in softirq; \
             on the sleeve each direction also passes through two weave-router processes in \
             user space (a worker on host1 wakes to read the TAP and send UDP, one on host2 wakes \
             to receive it and write the TAP), so a round trip adds four thread wake-ups.\n"
        );
    }
}

fn absolutes(md: &mut String, run: &RunResult) {
    let paths = run.measured_paths();
    let counts: Vec<usize> = workloads(run)
        .into_iter()
        .flat_map(|w| absolute(w).map(move |m| (w, m)))
        .flat_map(|(w, m)| paths.iter().filter_map(move |p| run.spread(p, w.name(), m)))
        .map(|s| s.n)
        .collect();
    let most = counts.iter().copied().max().unwrap_or(0);
    let uniform = counts.iter().all(|&n| n == most);
    let _ = writeln!(md, "## {}\n", medians_heading(most, uniform));
    let _ = write!(md, "| workload | metric |");
    for p in &paths {
        let _ = write!(md, " {p} |");
    }
    let _ = write!(md, "\n|---|---|");
    for _ in &paths {
        md.push_str("--:|");
    }
    md.push('\n');
    for w in workloads(run) {
        for m in absolute(w) {
            let _ = write!(md, "| {} | {} |", w.name(), metric_label(m));
            for p in &paths {
                let cell = run
                    .spread(p, w.name(), m)
                    .map_or_else(|| "–".to_owned(), |s| spread_cell(m, s, most));
                let _ = write!(md, " {cell} |");
            }
            md.push('\n');
        }
    }
    md.push('\n');
}

fn router_costs(md: &mut String, run: &RunResult) {
    let router_paths: Vec<&str> = run
        .paths
        .iter()
        .filter(|p| p.measured && p.kind == PathKind::Router)
        .map(|p| p.name.as_str())
        .collect();
    if router_paths.is_empty() {
        return;
    }
    let _ = writeln!(md, "## What the routers spent (medians)\n");
    let _ = writeln!(
        md,
        "CPU is user + system time of every router of the path over the counted window, per GiB \
         the receiving pod got; peak RSS is the largest router's VmHWM during the window; \
         datagrams per call is the batching factor of UDP sends and receives (GSO/GRO).\n"
    );
    if measured_over(run, "fastdp") {
        let _ = writeln!(
            md,
            "On `{}` the kernel's VXLAN device carries the pods' traffic and the routers only \
             program it: their CPU is background work (gossip, heartbeats, the harness's status \
             requests), a few clock ticks per window rather than per-packet work, so per GiB it \
             is near zero except where little data flows (udp64); their datagrams are the \
             heartbeats, one per call.\n",
            NetPath::Fastdp.name()
        );
    }
    let _ = write!(md, "| path | workload |");
    for (_, label) in ROUTER_COLUMNS {
        let _ = write!(md, " {label} |");
    }
    let _ = write!(md, "\n|---|---|");
    for _ in ROUTER_COLUMNS {
        md.push_str("--:|");
    }
    md.push('\n');
    for path in router_paths {
        for w in workloads(run) {
            let _ = write!(md, "| {path} | {} |", w.name());
            for (m, _) in ROUTER_COLUMNS {
                let cell = run
                    .median(path, w.name(), m)
                    .map_or_else(|| "–".to_owned(), |v| format_value(m, v));
                let _ = write!(md, " {cell} |");
            }
            md.push('\n');
        }
    }
    md.push('\n');
}

fn failures(md: &mut String, run: &RunResult) {
    let failed: Vec<_> = run.failures().collect();
    if failed.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Failed measurements\n");
    for s in failed {
        let _ = writeln!(
            md,
            "- repeat {} {} {}: {}",
            s.repeat,
            s.path,
            s.workload,
            s.error.as_deref().unwrap_or("")
        );
    }
    md.push('\n');
}

/// The row label of a metric in the absolute table.
pub fn metric_label(m: Metric) -> &'static str {
    match m {
        Metric::ThroughputGbps => "Gbit/s",
        Metric::PacketsPerSecond => "received packets/s",
        Metric::OfferedPacketsPerSecond => "offered packets/s",
        Metric::UdpLossPercent => "loss %",
        Metric::RoundTripsPerSecond => "round trips/s",
        Metric::LatencyP50Us => "p50 µs",
        Metric::LatencyP90Us => "p90 µs",
        Metric::LatencyP99Us => "p99 µs",
        Metric::LatencyP999Us => "p99.9 µs",
        Metric::RouterCpuSPerGib => "router CPU s/GiB",
        Metric::RouterPeakRssMib => "router peak RSS MiB",
        Metric::TxSegmentsPerCall => "tx datagrams/call",
        Metric::RxSegmentsPerCall => "rx datagrams/call",
    }
}

/// The heading of the absolute table from the sample counts of its cells: `most` is the
/// largest, `uniform` whether every cell has that many.
fn medians_heading(most: usize, uniform: bool) -> String {
    match (most, uniform) {
        (0, _) => "Medians".to_owned(),
        (1, true) => "Values (one measurement each)".to_owned(),
        (n, true) => format!("Medians (min–max of {n})"),
        (n, false) => format!("Medians (min–max of {n}; a cell over fewer says n=)"),
    }
}

/// A cell of the absolute table; a cell over fewer samples than `most` says how many.
fn spread_cell(m: Metric, s: Spread, most: usize) -> String {
    let n = if s.n < most {
        format!("n={}", s.n)
    } else {
        String::new()
    };
    if s.n < 2 {
        return match n.is_empty() {
            true => format_value(m, s.median),
            false => format!("{} ({n})", format_value(m, s.median)),
        };
    }
    let sep = if n.is_empty() { "" } else { ", " };
    format!(
        "{} ({}–{}{sep}{n})",
        format_value(m, s.median),
        format_value(m, s.min),
        format_value(m, s.max)
    )
}

/// A value of `m` as the reports print it.
pub fn format_value(m: Metric, v: f64) -> String {
    match m {
        Metric::PacketsPerSecond
        | Metric::OfferedPacketsPerSecond
        | Metric::RoundTripsPerSecond => format_rate(v),
        Metric::ThroughputGbps | Metric::RouterCpuSPerGib => format!("{v:.2}"),
        Metric::UdpLossPercent
        | Metric::LatencyP50Us
        | Metric::LatencyP90Us
        | Metric::LatencyP99Us
        | Metric::LatencyP999Us
        | Metric::RouterPeakRssMib
        | Metric::TxSegmentsPerCall
        | Metric::RxSegmentsPerCall => format!("{v:.1}"),
    }
}

/// A rate with a k/M suffix: `1.23M`, `456k`, `789`.
pub fn format_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::result::tests::sample_run;
    use crate::harness::result::PathInfo;

    #[test]
    fn ratios_are_against_vxlan_and_baseline_is_one() {
        let run = sample_run();

        let md = render_markdown(&run);

        // vxlan tcp1 is 4 Gbit/s and sleeve-epoll 3 Gbit/s in the sample run.
        let line = md
            .lines()
            .find(|l| l.starts_with("| sleeve-epoll |"))
            .unwrap_or_else(|| panic!("no sleeve-epoll row:\n{md}"));
        assert!(line.starts_with("| sleeve-epoll | 0.75× |"), "{line}");
        let base = md.lines().find(|l| l.starts_with("| vxlan |")).unwrap();
        assert!(base.starts_with("| vxlan | 1.00× | 1.00× |"), "{base}");
    }

    #[test]
    fn report_names_the_machine_and_the_fast_datapath() {
        let md = render_markdown(&sample_run());

        assert!(md.contains("Linux 6.1.0-test, 2 cores"), "{md}");
        assert!(md.contains("commit 0123abcd"), "{md}");
        assert!(
            md.contains("- `fastdp`: weave-router fast datapath (kernel VXLAN on UDP 6784"),
            "{md}"
        );
        assert!(row(&md, "fastdp").starts_with("| fastdp | 1.25× |"), "{md}");
        assert!(md.contains("| sleeve-io-uring | tcp1 | 0.50 |"), "{md}");
        assert!(md.contains("| fastdp | tcp1 | 0.36 |"), "{md}");
        assert!(md.contains("near zero"), "{md}");
        assert!(md.contains("| tcp1 | Gbit/s | 4.00 (3.90–4.10) |"), "{md}");
        assert!(
            !md.contains("not selected") && !md.contains("not available"),
            "{md}"
        );
    }

    #[test]
    fn paths_not_measured_are_listed_with_the_reason() {
        let mut run = sample_run();
        for p in run.paths.iter_mut().filter(|p| p.name == "fastdp") {
            *p = PathInfo::new(NetPath::Fastdp, false);
        }
        // A path a newer weave-perf knows, reported unavailable in its file.
        let mut later = PathInfo::new(NetPath::Fastdp, false);
        later.name = "ebpf".into();
        later.note = Some("not available: no eBPF datapath yet".into());
        run.paths.push(later);

        let md = render_markdown(&run);

        assert!(md.contains("- fastdp: not selected"), "{md}");
        assert!(
            md.contains("- ebpf: not available: no eBPF datapath yet"),
            "{md}"
        );
        assert!(!md.contains("| fastdp |"), "{md}");
        assert!(!md.contains("near zero"), "{md}");
    }

    #[test]
    fn kernel_paths_show_dashes_for_router_figures_and_no_router_rows() {
        let md = render_markdown(&sample_run());

        assert!(!md.contains("| vxlan | tcp1 |"), "{md}");
    }

    #[test]
    fn without_the_baseline_there_are_no_ratios() {
        let mut run = sample_run();
        run.paths.retain(|p| p.name != "vxlan");

        let md = render_markdown(&run);

        assert!(md.contains("did not measure `vxlan`"), "{md}");
    }

    /// Sets the median loss of `path` and `workload` in the summary.
    fn set_loss(run: &mut RunResult, path: &str, workload: &str, loss: f64) {
        let row = run
            .summary
            .iter_mut()
            .find(|r| r.path == path && r.workload == workload)
            .unwrap();
        row.metrics.insert(
            Metric::UdpLossPercent.key().to_owned(),
            Some(Spread {
                median: loss,
                min: loss,
                max: loss,
                n: 3,
            }),
        );
    }

    fn row<'a>(md: &'a str, path: &str) -> &'a str {
        md.lines()
            .find(|l| l.starts_with(&format!("| {path} |")))
            .unwrap_or_else(|| panic!("no {path} row:\n{md}"))
    }

    #[test]
    fn sender_limited_udp_cells_are_marked_and_bounded() {
        let mut run = sample_run();
        for p in run
            .measured_paths()
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
        {
            for w in ["udp64", "udp1400"] {
                set_loss(&mut run, &p, w, 40.0);
            }
        }
        // udp64: vxlan lost nothing (its sender set its rate), epoll lost half, veth nothing.
        set_loss(&mut run, "vxlan", "udp64", 0.0);
        set_loss(&mut run, "veth", "udp64", 0.0);
        // udp1400: vxlan lost much, epoll lost 3 %: the boundary counts as sender-limited.
        set_loss(&mut run, "sleeve-epoll", "udp1400", 3.0);

        let md = render_markdown(&run);

        // Columns: tcp1, tcp4, udp64, udp1400, rr p50, rr p99.
        assert!(
            row(&md, "vxlan").starts_with("| vxlan | 1.00× | 1.00× | 1.00×† | 1.00× | 1.00× |"),
            "{md}"
        );
        assert!(row(&md, "veth").contains("| 2.00×† | 2.00× |"), "{md}");
        assert!(
            row(&md, "sleeve-epoll").contains("| ≤0.75× | ≥0.75×† |"),
            "{md}"
        );
        assert!(
            row(&md, "sleeve-no-gso").contains("| ≤0.40× | 0.40× |"),
            "{md}"
        );
        assert!(
            md.contains("† The receiving pod got at least 97 % of the UDP packets sent"),
            "{md}"
        );
        assert!(md.contains("upper bound"), "{md}");
    }

    #[test]
    fn no_footnote_where_every_udp_path_dropped_packets() {
        let mut run = sample_run();
        for p in run
            .measured_paths()
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
        {
            for w in ["udp64", "udp1400"] {
                set_loss(&mut run, &p, w, 10.0);
            }
        }

        let md = render_markdown(&run);

        assert!(!md.contains('†'), "{md}");
        assert!(!md.contains('≤') && !md.contains('≥'), "{md}");
        assert!(
            row(&md, "sleeve-epoll").contains("| 0.75× | 0.75× |"),
            "{md}"
        );
    }

    #[test]
    fn udp_rows_show_offered_next_to_received() {
        let md = render_markdown(&sample_run());

        assert!(
            md.contains("| udp64 | received packets/s | 400k (390k–410k) |"),
            "{md}"
        );
        assert!(
            md.contains("| udp64 | offered packets/s | 410k (400k–420k) |"),
            "{md}"
        );
    }

    #[test]
    fn round_trips_through_the_sleeve_are_explained_only_with_a_router_path() {
        let md = render_markdown(&sample_run());
        assert!(md.contains("four thread wake-ups"), "{md}");

        let mut kernel_only = sample_run();
        for p in &mut kernel_only.paths {
            p.measured = p.kind != PathKind::Router && p.measured;
        }
        assert!(!render_markdown(&kernel_only).contains("wake-ups"));

        // The fast datapath's routers are not on the way of a round trip.
        let mut without_sleeve = sample_run();
        for p in &mut without_sleeve.paths {
            p.measured = p.measured && !p.name.starts_with("sleeve");
        }
        let md = render_markdown(&without_sleeve);
        assert!(md.contains("| fastdp |"), "{md}");
        assert!(!md.contains("wake-ups"), "{md}");
    }

    #[test]
    fn medians_heading_counts_the_samples_the_spreads_are_over() {
        let md = render_markdown(&sample_run());
        assert!(md.contains("## Medians (min–max of 3)"), "{md}");

        // One failed repeat of sleeve-epoll tcp1: its cell is over two samples.
        let mut run = sample_run();
        run.settings.repeats = 4;
        let row = run
            .summary
            .iter_mut()
            .find(|r| r.path == "sleeve-epoll" && r.workload == "tcp1")
            .unwrap();
        let spread = row
            .metrics
            .get_mut("throughput_gbps")
            .unwrap()
            .as_mut()
            .unwrap();
        spread.n = 2;
        let md = render_markdown(&run);
        assert!(
            md.contains("## Medians (min–max of 3; a cell over fewer says n=)"),
            "{md}"
        );
        assert!(md.contains("| 3.00 (2.92–3.07, n=2) |"), "{md}");
        assert!(md.contains("| tcp1 | Gbit/s | 4.00 (3.90–4.10) |"), "{md}");

        assert_eq!(medians_heading(1, true), "Values (one measurement each)");
        assert_eq!(
            spread_cell(Metric::ThroughputGbps, Spread::of(&[2.0]).unwrap(), 3),
            "2.00 (n=1)"
        );
    }

    #[test]
    fn rates_get_suffixes() {
        assert_eq!(format_rate(1_234_567.0), "1.23M");
        assert_eq!(format_rate(45_600.0), "46k");
        assert_eq!(format_rate(789.0), "789");
    }
}
