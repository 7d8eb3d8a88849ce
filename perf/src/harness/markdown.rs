//! The Markdown report of a run: machine facts and CPU placement, ratios against the kernel
//! VXLAN baseline, the absolute medians with their spread, and what each path cost.

use std::fmt::Write as _;

use super::model::{Metric, NetPath, PathKind, WorkloadName};
use super::placement::{format_cpu_list, Placement};
use super::result::{RunResult, Spread};
use super::search::MAX_LOSS_PERCENT;

/// The figures the ratio table shows for `workload`: (metric, column label).
fn headline(run: &RunResult, workload: WorkloadName) -> Vec<(Metric, String)> {
    let name = workload.name();
    match workload {
        WorkloadName::Tcp1 | WorkloadName::Tcp4 => {
            vec![(Metric::ThroughputGbps, format!("{name} throughput"))]
        }
        WorkloadName::Udp64 | WorkloadName::Udp1400 => match has_loss_free(run, workload) {
            true => vec![(
                Metric::LossFreePacketsPerSecond,
                format!("{name} loss-free pps"),
            )],
            false => vec![(
                Metric::PacketsPerSecond,
                format!("{name} received pps (flood)"),
            )],
        },
        WorkloadName::Rr | WorkloadName::RrPaced => vec![
            (Metric::LatencyP50Us, format!("{name} p50")),
            (Metric::LatencyP99Us, format!("{name} p99")),
        ],
    }
}

/// Whether any path of the run has a loss-free rate for `workload` (files from before the
/// search, or runs with `--search-trials 0`, have none: their ratio is the flood's).
fn has_loss_free(run: &RunResult, workload: WorkloadName) -> bool {
    run.measured_paths().iter().any(|p| {
        run.spread(p, workload.name(), Metric::LossFreePacketsPerSecond)
            .is_some()
    })
}

/// The figures of the absolute table, per workload: what the workload measures, without the
/// costs (those have their own table).
fn absolute(workload: WorkloadName) -> impl Iterator<Item = Metric> {
    workload
        .metrics()
        .iter()
        .copied()
        .filter(|m| !m.router_only() && !COST_COLUMNS.iter().any(|(c, _)| c == m))
}

/// Cost figures shown per path and workload.
const COST_COLUMNS: [(Metric, &str); 5] = [
    (Metric::MachineCpuSPerGib, "machine CPU s/GiB"),
    (Metric::RouterCpuSPerGib, "router CPU s/GiB"),
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
    costs(&mut md, run);
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

/// Whether the run measured a path of `kind`.
fn measured_kind(run: &RunResult, kind: PathKind) -> bool {
    run.paths.iter().any(|p| p.measured && p.kind == kind)
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
    if let Some(busy) = m.background_busy_cpus {
        let _ = write!(
            machine,
            ", {busy:.2} CPUs busy with other work just before the testbed was built"
        );
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
        None => "one data-plane worker per CPU it is given".to_owned(),
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
    if let Some(search) = &s.search {
        let _ = writeln!(
            md,
            "- loss-free UDP rate: each UDP flood is the search's first trial (one that lost \
             less than {} % ends it); after a lossy one, up to {} paced trials of {} s (after \
             {} s of paced warm-up) bisect below the flood's offered rate",
            search.max_loss_percent, search.trials, search.seconds, search.warmup
        );
    }
    if let Some(paced) = run.workloads.iter().find_map(|w| {
        (WorkloadName::from_name(&w.name) == Some(WorkloadName::RrPaced))
            .then_some(w.rate)
            .flatten()
    }) {
        let _ = writeln!(
            md,
            "- rr-paced: {paced:.0} requests/s, sent on schedule over one connection"
        );
    }
    placement_line(md, run);
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

/// Where the routers (and everything else) ran.
fn placement_line(md: &mut String, run: &RunResult) {
    let baselines: Vec<String> = run
        .paths
        .iter()
        .filter(|p| p.measured && p.kind != PathKind::Router)
        .map(|p| format!("`{}`", p.name))
        .collect();
    let unpinned = match baselines.is_empty() {
        true => "the pods and the load generators run unpinned".to_owned(),
        false => format!(
            "the pods, the load generators and the endpoints of {} (which have no router) run \
             unpinned",
            baselines.join(" and ")
        ),
    };
    if !measured_kind(run, PathKind::Router) {
        let _ = writeln!(md, "- CPU placement: no routers; {unpinned}");
        return;
    }
    let Some(p) = &run.settings.placement else {
        let _ = writeln!(
            md,
            "- CPU placement: not recorded (weave-perf did not place routers then: each used \
             every CPU, pinning its worker i to CPU i); {unpinned}"
        );
        return;
    };
    let all = format_cpu_list(&p.machine_cpus);
    let how = match p.placement {
        Placement::Split => {
            let hosts: Vec<String> = p
                .hosts
                .iter()
                .map(|h| {
                    format!(
                        "{}{} CPU {}",
                        h.host,
                        role(&h.host),
                        format_cpu_list(&h.cpus)
                    )
                })
                .collect();
            format!(
                "split: each host's router has its own CPUs (`--cpus`, one data-plane worker \
                 pinned to each), as on separate nodes: {}",
                hosts.join(", ")
            )
        }
        Placement::Shared => format!(
            "shared: every router may use CPUs {all} and pins its worker i to the i-th of them \
             (the router's default), so host1's and host2's workers share CPUs"
        ),
    };
    let note = p
        .note
        .as_deref()
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
    let asked = match (p.requested, p.placement) {
        (Some(r), done) if r != done => format!("; --placement {} was asked for", r.name()),
        (Some(_) | None, _) => String::new(),
    };
    let _ = writeln!(
        md,
        "- CPU placement: {how}{note}{asked}. Only the data-plane workers are pinned: the \
         routers' control threads, {unpinned} on any of CPUs {all}"
    );
}

/// What a host of a group does in the traffic, for the placement line.
fn role(host: &str) -> &'static str {
    match host {
        "host1" => " (sends)",
        "host2" => " (receives)",
        _ => "",
    }
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
        "Each path's figure over `{base}`'s, measured side by side in this run: medians of the \
         repeats; round-trip percentiles of all repeats' round trips together. Throughput and \
         packet rates: higher is better; latency: lower is better. `n=` marks a ratio whose \
         path or `{base}` figure stands on fewer repeats than the run took (the smaller count).\n"
    );
    let columns: Vec<(WorkloadName, Metric, String)> = workloads(run)
        .into_iter()
        .flat_map(|w| {
            headline(run, w)
                .into_iter()
                .map(move |(m, label)| (w, m, label))
        })
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
    let repeats = run.settings.repeats;
    for path in run.measured_paths() {
        let _ = write!(md, "| {path} |");
        for (w, m, _) in &columns {
            let cell = match (run.value(path, w.name(), *m), run.value(base, w.name(), *m)) {
                (Some((v, n)), Some((b, bn))) if b > 0.0 => ratio_cell(v / b, n.min(bn), repeats),
                _ => "–".to_owned(),
            };
            let _ = write!(md, " {cell} |");
        }
        md.push('\n');
    }
    md.push('\n');
    udp_notes(md, run);
    round_trip_notes(md, run);
}

/// A ratio, with the repeats it stands on where that is fewer than the run took.
fn ratio_cell(ratio: f64, n: usize, repeats: usize) -> String {
    match n < repeats {
        true => format!("{ratio:.2}× (n={n})"),
        false => format!("{ratio:.2}×"),
    }
}

/// What the UDP columns are, and which paths the sender rather than the path limited.
fn udp_notes(md: &mut String, run: &RunResult) {
    let udp: Vec<WorkloadName> = workloads(run).into_iter().filter(|w| w.is_udp()).collect();
    if udp.is_empty() {
        return;
    }
    if !udp.iter().any(|&w| has_loss_free(run, w)) {
        let _ = writeln!(
            md,
            "UDP: packets/s the receiving pod got from an unpaced two-thread flood (this run has \
             no loss-free rates); offered packets/s and loss are in the table below.\n"
        );
        return;
    }
    let _ = writeln!(
        md,
        "UDP: the loss-free rate, the highest rate (packets/s offered by two sender threads) \
         the path carried with less than {MAX_LOSS_PERCENT} % loss, searched as RFC 2544's \
         throughput test does it in a few short trials: the unpaced flood first, then paced \
         rates below it. The flood itself (received, offered, loss) is in the table below. A \
         loss-free rate above the flood's received rate is no contradiction: the flood's \
         senders never sleep and take CPU time the path needs, paced ones leave it.\n"
    );
    for w in udp {
        let at_ceiling: Vec<String> = run
            .measured_paths()
            .into_iter()
            .filter(|p| {
                let searches: Vec<bool> = run
                    .samples
                    .iter()
                    .filter(|s| s.path == *p && s.workload == w.name())
                    .filter_map(|s| s.search.as_ref().map(|r| r.reached_ceiling()))
                    .collect();
                !searches.is_empty() && searches.iter().all(|&r| r)
            })
            .map(|p| format!("`{p}`"))
            .collect();
        if at_ceiling.is_empty() {
            continue;
        }
        let _ = writeln!(
            md,
            "{}: {} carried all the unpaced sender could offer (the search's first trial) in \
             every repeat, so the sender set {} loss-free rate. On the kernel paths the sender's \
             CPU does much of the path's own work in its send calls, so that is close to the \
             path's limit; a router path that reaches it may carry more.\n",
            w.name(),
            at_ceiling.join(", "),
            if at_ceiling.len() == 1 {
                "its"
            } else {
                "their"
            },
        );
    }
}

/// What the two round-trip workloads measure, and what the sleeve adds to one.
fn round_trip_notes(md: &mut String, run: &RunResult) {
    let base = NetPath::BASELINE.name();
    let all = workloads(run);
    if all.contains(&WorkloadName::Rr) || all.contains(&WorkloadName::RrPaced) {
        let rate = run
            .workloads
            .iter()
            .find(|w| w.name == WorkloadName::RrPaced.name())
            .and_then(|w| w.rate)
            .map_or_else(String::new, |r| format!(" at {r:.0} requests/s"));
        let _ = writeln!(
            md,
            "Round trips: `rr` sends each one-byte request when the last answer is back (closed \
             loop: a stall delays only the request it holds up, and no request is sent during \
             it); `rr-paced` sends requests on schedule{rate} over one connection whatever the \
             answers do, and times each from its scheduled send time (open loop), so a stall of \
             the path or of the sender counts for every request it held back. At that light \
             load each request finds the threads on its way asleep, so its figures include \
             their wake-ups, which the back-to-back closed loop mostly avoids.\n"
        );
    }
    if measured_over(run, "sleeve") && all.contains(&WorkloadName::Rr) {
        let _ = writeln!(
            md,
            "On `{base}` the kernel carries each request and answer in softirq; on the sleeve \
             each direction also passes through two weave-router processes in user space (a \
             worker on host1 wakes to read the TAP and send UDP, one on host2 wakes to receive it \
             and write the TAP), so a round trip adds four thread wake-ups.\n"
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
    let mut merged = false;
    for w in workloads(run) {
        for m in absolute(w) {
            let _ = write!(md, "| {} | {} |", w.name(), row_label(w, m));
            for p in &paths {
                let shown = run.value(p, w.name(), m).map(|(v, _)| v);
                let cell = run.spread(p, w.name(), m).map_or_else(
                    || "–".to_owned(),
                    |s| spread_cell(m, shown.unwrap_or(s.median), s, most),
                );
                merged |= m.is_latency()
                    && run
                        .row(p, w.name())
                        .is_some_and(|r| r.merged_latency.is_some());
                let _ = write!(md, " {cell} |");
            }
            md.push('\n');
        }
    }
    md.push('\n');
    if workloads(run).iter().any(|w| w.is_udp()) {
        let _ = writeln!(
            md,
            "Flood: two threads sending as fast as they can for the counted window; received \
             and offered packets/s are both over that nominal window, so received over offered \
             is one minus the loss.\n"
        );
    }
    if merged {
        let _ = writeln!(
            md,
            "Round-trip percentiles are those of every repeat's round trips together (the \
             repeats' histograms merged); the range is the spread of the repeats' own \
             percentiles.\n"
        );
    }
}

fn costs(md: &mut String, run: &RunResult) {
    let rows: Vec<(&str, WorkloadName, Vec<String>)> = run
        .measured_paths()
        .into_iter()
        .flat_map(|p| workloads(run).into_iter().map(move |w| (p, w)))
        .filter_map(|(p, w)| {
            let cells: Vec<Option<String>> = COST_COLUMNS
                .iter()
                .map(|&(m, _)| run.median(p, w.name(), m).map(|v| format_value(m, v)))
                .collect();
            cells.iter().any(Option::is_some).then(|| {
                let cells = cells
                    .into_iter()
                    .map(|c| c.unwrap_or_else(|| "–".to_owned()))
                    .collect();
                (p, w, cells)
            })
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(md, "## What the paths cost (medians)\n");
    let has_machine = run.summary.iter().any(|r| {
        r.metrics
            .get(Metric::MachineCpuSPerGib.key())
            .is_some_and(Option::is_some)
    });
    if has_machine {
        let background = run
            .machine
            .background_busy_cpus
            .map(|b| format!(" (about {b:.2} CPUs were busy with it just before the run)"))
            .unwrap_or_default();
        let _ = writeln!(
            md,
            "Machine CPU is the busy time of all CPUs over the counted window (user, nice, \
             system, irq, softirq and steal in /proc/stat: everything but idle and iowait), per \
             GiB the receiving pod got. It is the whole cost of moving the data on this one \
             machine, every path alike: it includes the load generators (the sending and \
             receiving processes, their system calls and the kernel's work on their packets) \
             and whatever else runs on the machine{background}.\n"
        );
    }
    if measured_kind(run, PathKind::Router) {
        let _ = writeln!(
            md,
            "Router CPU is the user + system time of the path's router processes over the same \
             window, per GiB. It leaves out kernel work done for the routers' traffic in other \
             contexts: softirq processing of their packets (the underlay's UDP receive and GRO, \
             the bridge, delivery into the pods' veths), which runs on whatever the CPU was \
             doing or in ksoftirqd, and the pods' own system calls on the far side of the TAP. \
             Peak RSS is the largest router's VmHWM during the window; datagrams per call is the \
             batching factor of the routers' UDP sends and receives (GSO/GRO).\n"
        );
    }
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
    for (_, label) in COST_COLUMNS {
        let _ = write!(md, " {label} |");
    }
    let _ = write!(md, "\n|---|---|");
    for _ in COST_COLUMNS {
        md.push_str("--:|");
    }
    md.push('\n');
    for (path, w, cells) in rows {
        let _ = writeln!(md, "| {path} | {} | {} |", w.name(), cells.join(" | "));
    }
    md.push('\n');
}

fn failures(md: &mut String, run: &RunResult) {
    let mut lines: Vec<String> = run
        .failures()
        .map(|s| {
            format!(
                "- repeat {} {} {}: {}",
                s.repeat,
                s.path,
                s.workload,
                s.error.as_deref().unwrap_or("")
            )
        })
        .collect();
    for s in &run.samples {
        let Some(search) = &s.search else {
            continue;
        };
        let why = match (&search.error, search.loss_free_pps) {
            (Some(e), _) => e.clone(),
            (None, None) => {
                let lowest = search
                    .trials
                    .iter()
                    .map(|t| t.offered_pps)
                    .min_by(f64::total_cmp)
                    .map_or_else(String::new, |o| {
                        format!(" (the lowest, {} packets/s)", format_rate(o))
                    });
                format!(
                    "no trial passed: every rate offered{lowest} lost {MAX_LOSS_PERCENT} % or more"
                )
            }
            (None, Some(_)) => continue,
        };
        lines.push(format!(
            "- repeat {} {} {} loss-free search: {why}",
            s.repeat, s.path, s.workload
        ));
    }
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Failed measurements\n");
    for line in lines {
        let _ = writeln!(md, "{line}");
    }
    md.push('\n');
}

/// The row label of a metric of `workload` in the absolute table: the flood's figures say so.
fn row_label(workload: WorkloadName, m: Metric) -> String {
    match workload.is_udp() && m != Metric::LossFreePacketsPerSecond {
        true => format!("flood {}", metric_label(m)),
        false => metric_label(m).to_owned(),
    }
}

/// The row label of a metric in the absolute table.
pub fn metric_label(m: Metric) -> &'static str {
    match m {
        Metric::ThroughputGbps => "Gbit/s",
        Metric::LossFreePacketsPerSecond => "loss-free packets/s",
        Metric::PacketsPerSecond => "received packets/s",
        Metric::OfferedPacketsPerSecond => "offered packets/s",
        Metric::UdpLossPercent => "loss %",
        Metric::RoundTripsPerSecond => "round trips/s",
        Metric::LatencyP50Us => "p50 µs",
        Metric::LatencyP90Us => "p90 µs",
        Metric::LatencyP99Us => "p99 µs",
        Metric::LatencyP999Us => "p99.9 µs",
        Metric::MachineCpuSPerGib => "machine CPU s/GiB",
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

/// A cell of the absolute table: `shown` (the median, or a merged percentile) with the
/// spread of the samples; a cell over fewer samples than `most` says how many.
fn spread_cell(m: Metric, shown: f64, s: Spread, most: usize) -> String {
    let n = if s.n < most {
        format!("n={}", s.n)
    } else {
        String::new()
    };
    if s.n < 2 {
        return match n.is_empty() {
            true => format_value(m, shown),
            false => format!("{} ({n})", format_value(m, shown)),
        };
    }
    let sep = if n.is_empty() { "" } else { ", " };
    format!(
        "{} ({}–{}{sep}{n})",
        format_value(m, shown),
        format_value(m, s.min),
        format_value(m, s.max)
    )
}

/// A value of `m` as the reports print it.
pub fn format_value(m: Metric, v: f64) -> String {
    match m {
        Metric::LossFreePacketsPerSecond
        | Metric::PacketsPerSecond
        | Metric::OfferedPacketsPerSecond
        | Metric::RoundTripsPerSecond => format_rate(v),
        Metric::ThroughputGbps | Metric::MachineCpuSPerGib | Metric::RouterCpuSPerGib => {
            format!("{v:.2}")
        }
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
    use crate::harness::placement::plan;
    use crate::harness::result::tests::sample_run;
    use crate::harness::result::PathInfo;
    use crate::harness::search::{SearchRecord, Trial};

    fn row<'a>(md: &'a str, path: &str) -> &'a str {
        md.lines()
            .find(|l| l.starts_with(&format!("| {path} |")))
            .unwrap_or_else(|| panic!("no {path} row:\n{md}"))
    }

    #[test]
    fn ratios_are_against_vxlan_and_baseline_is_one() {
        let run = sample_run();

        let md = render_markdown(&run);

        // vxlan tcp1 is 4 Gbit/s and sleeve-epoll 3 Gbit/s in the sample run.
        assert!(
            row(&md, "sleeve-epoll").starts_with("| sleeve-epoll | 0.75× |"),
            "{md}"
        );
        assert!(
            row(&md, "vxlan").starts_with("| vxlan | 1.00× | 1.00× |"),
            "{md}"
        );
    }

    #[test]
    fn report_names_the_machine_and_the_fast_datapath() {
        let md = render_markdown(&sample_run());

        assert!(md.contains("Linux 6.1.0-test, 2 cores"), "{md}");
        assert!(md.contains("0.25 CPUs busy with other work"), "{md}");
        assert!(md.contains("commit 0123abcd"), "{md}");
        assert!(
            md.contains("- `fastdp`: weave-router fast datapath (kernel VXLAN on UDP 6784"),
            "{md}"
        );
        assert!(row(&md, "fastdp").starts_with("| fastdp | 1.25× |"), "{md}");
        // Machine CPU 1.5 s/GiB and router CPU 0.45 s/GiB at vxlan's rate, scaled per path.
        assert!(
            md.contains("| sleeve-io-uring | tcp1 | 1.67 | 0.50 |"),
            "{md}"
        );
        assert!(md.contains("| fastdp | tcp1 | 1.20 | 0.36 |"), "{md}");
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
    fn kernel_paths_have_machine_cpu_and_dashes_for_router_figures() {
        let md = render_markdown(&sample_run());

        assert!(
            md.contains("| vxlan | tcp1 | 1.50 | – | – | – | – |"),
            "{md}"
        );
        // Nothing to show for a kernel path's round trips.
        assert!(!md.contains("| vxlan | rr |"), "{md}");
        assert!(md.contains("| sleeve-epoll | rr | – | – |"), "{md}");
        assert!(md.contains("includes the load generators"), "{md}");
        assert!(md.contains("leaves out kernel work"), "{md}");
        assert!(md.contains("softirq"), "{md}");
    }

    #[test]
    fn without_the_baseline_there_are_no_ratios() {
        let mut run = sample_run();
        run.paths.retain(|p| p.name != "vxlan");

        let md = render_markdown(&run);

        assert!(md.contains("did not measure `vxlan`"), "{md}");
    }

    #[test]
    fn udp_ratios_are_loss_free_rates_without_bound_marks() {
        let md = render_markdown(&sample_run());

        assert!(
            md.contains(
                "| path | tcp1 throughput | tcp4 throughput | udp64 loss-free pps | \
                         udp1400 loss-free pps | rr p50 | rr p99 | rr-paced p50 | rr-paced p99 |"
            ),
            "{md}"
        );
        // Columns: tcp1, tcp4, udp64, udp1400.
        assert!(
            row(&md, "sleeve-no-gso")
                .starts_with("| sleeve-no-gso | 0.40× | 0.40× | 0.40× | 0.40× |"),
            "{md}"
        );
        assert!(
            !md.contains('†') && !md.contains('≤') && !md.contains('≥'),
            "{md}"
        );
        assert!(md.contains("less than 0.1 % loss"), "{md}");
    }

    #[test]
    fn without_loss_free_rates_the_flood_is_compared() {
        let mut run = sample_run();
        for r in &mut run.summary {
            r.metrics.remove(Metric::LossFreePacketsPerSecond.key());
        }

        let md = render_markdown(&run);

        assert!(md.contains("| udp64 received pps (flood) |"), "{md}");
        assert!(md.contains("no loss-free rates"), "{md}");
        assert!(!md.contains('†'), "{md}");
    }

    /// A search record of a flood at `ceiling` that passed or not.
    fn one_trial(ceiling: f64, passed: bool) -> SearchRecord {
        let trial = Trial::flood(ceiling, if passed { 0.0 } else { 50.0 });
        SearchRecord {
            ceiling_pps: ceiling,
            loss_free_pps: passed.then_some(ceiling),
            trials: vec![trial],
            error: None,
        }
    }

    #[test]
    fn paths_whose_sender_set_the_loss_free_rate_are_named() {
        let mut run = sample_run();
        for s in run.samples.iter_mut().filter(|s| s.workload == "udp64") {
            let kernel = s.path == "vxlan" || s.path == "veth";
            s.search = Some(one_trial(400_000.0, kernel));
        }

        let md = render_markdown(&run);

        assert!(
            md.contains("udp64: `vxlan`, `veth` carried all the unpaced sender could offer"),
            "{md}"
        );
        assert!(!md.contains("udp1400: `"), "{md}");
        // The router paths' searches found nothing; each says so.
        assert!(
            md.contains(
                "- repeat 1 sleeve-epoll udp64 loss-free search: no trial passed: every rate \
                 offered (the lowest, 400k packets/s) lost 0.1 % or more"
            ),
            "{md}"
        );
    }

    #[test]
    fn udp_rows_show_the_loss_free_rate_next_to_the_flood() {
        let md = render_markdown(&sample_run());

        assert!(
            md.contains("| udp64 | loss-free packets/s | 300k (292k–308k) |"),
            "{md}"
        );
        assert!(
            md.contains("| udp64 | flood received packets/s | 400k (390k–410k) |"),
            "{md}"
        );
        assert!(
            md.contains("| udp64 | flood offered packets/s | 410k (400k–420k) |"),
            "{md}"
        );
        assert!(md.contains("| udp64 | flood loss % |"), "{md}");
        assert!(md.contains("one minus the loss"), "{md}");
    }

    #[test]
    fn round_trips_through_the_sleeve_are_explained_only_with_a_router_path() {
        let md = render_markdown(&sample_run());
        assert!(md.contains("four thread wake-ups"), "{md}");
        assert!(
            md.contains("times each from its scheduled send time (open loop)"),
            "{md}"
        );
        assert!(md.contains("- rr-paced: 2000 requests/s"), "{md}");

        let mut kernel_only = sample_run();
        for p in &mut kernel_only.paths {
            p.measured = p.kind != PathKind::Router && p.measured;
        }
        assert!(!render_markdown(&kernel_only).contains("four thread wake-ups"));

        // The fast datapath's routers are not on the way of a round trip.
        let mut without_sleeve = sample_run();
        for p in &mut without_sleeve.paths {
            p.measured = p.measured && !p.name.starts_with("sleeve");
        }
        let md = render_markdown(&without_sleeve);
        assert!(md.contains("| fastdp |"), "{md}");
        assert!(!md.contains("four thread wake-ups"), "{md}");
    }

    #[test]
    fn a_failed_repeat_shows_as_n_in_both_tables() {
        let md = render_markdown(&sample_run());
        assert!(md.contains("## Medians (min–max of 3)"), "{md}");
        assert!(!md.contains("(n=") && !md.contains(", n="), "{md}");

        // One failed repeat of sleeve-epoll tcp1: its cells are over two samples.
        let mut run = sample_run();
        let row_of = run
            .summary
            .iter_mut()
            .find(|r| r.path == "sleeve-epoll" && r.workload == "tcp1")
            .unwrap();
        let spread = row_of
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
        assert!(
            row(&md, "sleeve-epoll").starts_with("| sleeve-epoll | 0.75× (n=2) | 0.75× |"),
            "{md}"
        );

        assert_eq!(medians_heading(1, true), "Values (one measurement each)");
        assert_eq!(
            spread_cell(Metric::ThroughputGbps, 2.0, Spread::of(&[2.0]).unwrap(), 3),
            "2.00 (n=1)"
        );
    }

    #[test]
    fn placement_says_where_routers_and_everything_else_ran() {
        let md = render_markdown(&sample_run());
        assert!(
            md.contains(
                "- CPU placement: split: each host's router has its own CPUs (`--cpus`, one \
                 data-plane worker pinned to each), as on separate nodes: host1 (sends) CPU 0, \
                 host2 (receives) CPU 1, host3 CPU 0 (host3 shares CPU 0 with host1: 2 CPUs"
            ),
            "{md}"
        );
        assert!(
            md.contains("the endpoints of `vxlan` and `veth` (which have no router) run unpinned"),
            "{md}"
        );

        let mut shared = sample_run();
        shared.settings.placement = Some(plan(Some(Placement::Shared), &[0, 1], 3, true).unwrap());
        let md = render_markdown(&shared);
        assert!(
            md.contains("- CPU placement: shared: every router may use CPUs 0-1"),
            "{md}"
        );

        let mut fell_back = sample_run();
        fell_back.settings.placement = Some(plan(Some(Placement::Split), &[0], 3, true).unwrap());
        let md = render_markdown(&fell_back);
        assert!(md.contains("split placement needs 2 CPUs"), "{md}");
        assert!(md.contains("--placement split was asked for"), "{md}");

        let mut old = sample_run();
        old.settings.placement = None;
        assert!(render_markdown(&old).contains("- CPU placement: not recorded"));
    }

    #[test]
    fn rates_get_suffixes() {
        assert_eq!(format_rate(1_234_567.0), "1.23M");
        assert_eq!(format_rate(45_600.0), "46k");
        assert_eq!(format_rate(789.0), "789");
    }
}
