//! The result file of one run: machine facts, settings, every raw sample and the summary.
//!
//! Paths, workloads and metrics are stored by name, so that a file written by an older or a
//! newer weave-perf (with a path such as `fastdp` joining) still loads for `compare`. Fields
//! added since the first version are optional: an older file reads with them empty.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::model::{Metric, NetPath, PathKind, WorkloadName};
use super::placement::PlacementRecord;
use super::search::SearchRecord;
use crate::load::{histogram, LatencyHistogram, LoadResult};

/// The `schema` value of every result file.
pub const SCHEMA: &str = "weave-perf-run";
/// The version of the layout below; bumped when a field changes meaning or goes away. A new
/// metric key is not such a change: readers take a missing key as "not measured", and
/// [`backfill_offered`] derives the offered packets per second, which version 1 files did
/// not all record, from what they already hold.
///
/// Version 2: UDP received packets per second (and Gbit/s) are over the nominal counted
/// window, as the offered rate is; version 1 divided them by the span between the first and
/// last arrival.
pub const SCHEMA_VERSION: u32 = 2;

/// One run of `weave-perf run`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// [`SCHEMA_VERSION`] of the writer.
    pub schema_version: u32,
    /// When the run started, UTC, RFC 3339.
    pub started_utc: String,
    /// When the last measurement ended, UTC, RFC 3339.
    pub finished_utc: String,
    /// The machine it ran on.
    pub machine: MachineFacts,
    /// How it was run.
    pub settings: Settings,
    /// Every path measured, then every path known but not available.
    pub paths: Vec<PathInfo>,
    /// Every workload measured.
    pub workloads: Vec<WorkloadInfo>,
    /// Every measurement, in the order taken.
    pub samples: Vec<Sample>,
    /// Median and spread per path, workload and metric.
    pub summary: Vec<SummaryRow>,
}

/// Facts about the machine a run was taken on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineFacts {
    /// `uname -r`.
    pub kernel: String,
    /// Online CPUs.
    pub cores: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: Option<String>,
    /// MemTotal, bytes.
    pub memory_bytes: Option<u64>,
    /// The 1-minute load average when the run started: other work on the machine.
    pub load_average: Option<f64>,
    /// `git rev-parse HEAD` of the working tree, if it is one.
    pub git_commit: Option<String>,
    /// Whether the working tree had uncommitted changes.
    pub git_dirty: Option<bool>,
    /// `weave-router --version`.
    pub router_version: Option<String>,
    /// The weave-router binary used.
    pub router_bin: String,
    /// The command line of the run.
    pub command_line: Vec<String>,
    /// CPUs busy (busy CPU seconds per second, over all CPUs) during a short sample before
    /// the testbed was built: other work on the machine, which machine CPU figures include.
    #[serde(default)]
    pub background_busy_cpus: Option<f64>,
}

/// The settings of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Measurements of each path and workload.
    pub repeats: usize,
    /// Counted seconds per measurement.
    pub seconds: f64,
    /// Seconds of traffic before counting starts.
    pub warmup: f64,
    /// Hosts per path (all routers of a path meshed); traffic goes host1 → host2.
    pub hosts_per_path: usize,
    /// Data-plane workers per router (`None`: the router's default, one per CPU).
    pub router_workers: Option<usize>,
    /// Whether `--quick` was given.
    pub quick: bool,
    /// Where the routers ran (`None`: a file from before weave-perf placed them; every
    /// router then used every CPU).
    #[serde(default)]
    pub placement: Option<PlacementRecord>,
    /// The loss-free rate search after each UDP flood (`None`: not searched).
    #[serde(default)]
    pub search: Option<SearchSettings>,
}

/// How the loss-free UDP rate was searched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchSettings {
    /// The most trials per path, UDP workload and repeat.
    pub trials: usize,
    /// Counted seconds per trial.
    pub seconds: f64,
    /// Paced seconds before counting starts.
    pub warmup: f64,
    /// A trial passes with less loss than this, percent.
    pub max_loss_percent: f64,
}

/// A path as a run saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathInfo {
    /// Its name ([`NetPath::name`]).
    pub name: String,
    /// What it is.
    pub description: String,
    /// What carries its traffic.
    pub kind: PathKind,
    /// Whether it was measured in this run.
    pub measured: bool,
    /// Why it was not measured, if it was not.
    pub note: Option<String>,
    /// The pods' MTU (`None`: host namespaces talk directly).
    pub pod_mtu: Option<u32>,
    /// The flags given to `weave-router launch`.
    pub router_args: Vec<String>,
}

impl PathInfo {
    /// The record of `path`, measured or not.
    pub fn new(path: NetPath, measured: bool) -> Self {
        let note = match (measured, path.availability()) {
            (true, _) => None,
            (false, Err(why)) => Some(why.to_owned()),
            (false, Ok(())) => Some("not selected".to_owned()),
        };
        PathInfo {
            name: path.name().to_owned(),
            description: path.description().to_owned(),
            kind: path.kind(),
            measured,
            note,
            pod_mtu: path.pod_mtu(),
            router_args: path.router_args().iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// A workload as a run sent it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadInfo {
    /// Its name ([`WorkloadName::name`]).
    pub name: String,
    /// `tcp`, `udp` or `rr`.
    pub kind: String,
    /// TCP streams or UDP sender threads.
    pub streams: usize,
    /// Payload bytes per packet or request (0 for tcp).
    pub size: usize,
    /// Packets or requests per second of a paced workload; `None` when unpaced.
    #[serde(default)]
    pub rate: Option<f64>,
}

impl WorkloadInfo {
    /// The record of `workload`.
    pub fn new(workload: WorkloadName) -> Self {
        let spec = workload.spec();
        let kind = match spec.workload {
            crate::load::Workload::Tcp => "tcp",
            crate::load::Workload::Udp => "udp",
            crate::load::Workload::Rr => "rr",
        };
        WorkloadInfo {
            name: workload.name().to_owned(),
            kind: kind.to_owned(),
            streams: spec.streams,
            size: spec.size,
            rate: spec.rate,
        }
    }
}

/// One measurement: one workload over one path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// 1-based position in the run.
    pub index: usize,
    /// 1-based repeat.
    pub repeat: usize,
    /// The path's name.
    pub path: String,
    /// The workload's name.
    pub workload: String,
    /// Seconds between the machine (and router) samples taken at the start and end of
    /// counting.
    pub window_s: f64,
    /// The load client's result as it printed it.
    pub load: Option<serde_json::Value>,
    /// The routers' raw counters over the window (router paths only).
    pub router: Option<RouterSample>,
    /// The whole machine's CPU time over the window.
    #[serde(default)]
    pub machine: Option<MachineSample>,
    /// The loss-free rate search that followed a UDP flood.
    #[serde(default)]
    pub search: Option<SearchRecord>,
    /// The figures derived from the above; null where they do not apply.
    pub metrics: BTreeMap<String, Option<f64>>,
    /// Why the measurement failed, if it did (then `metrics` is empty).
    pub error: Option<String>,
}

/// The whole machine's CPU time over one measurement's window, from /proc/stat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineSample {
    /// Busy CPU seconds, all CPUs: user, nice, system, irq, softirq and steal.
    pub busy_s: f64,
    /// CPU seconds of all CPUs, busy or not (about the window times the CPUs).
    pub total_s: f64,
}

/// Raw router figures of one measurement, summed (or, for memory, maxed) over a path's routers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouterSample {
    /// Router processes read.
    pub processes: usize,
    /// User + system CPU seconds consumed during the window.
    pub cpu_s: f64,
    /// Largest VmHWM after the window (reset at its start where the kernel allows), KiB.
    pub peak_rss_kib: u64,
    /// Sleeve datagrams sent during the window.
    pub tx_datagrams: u64,
    /// UDP send calls during the window.
    pub tx_calls: u64,
    /// Sleeve datagrams received during the window.
    pub rx_datagrams: u64,
    /// UDP receive calls during the window.
    pub rx_calls: u64,
}

/// Median and spread of one metric of one path and workload.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// Median of the samples (mean of the middle two for an even count).
    pub median: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// Samples it was taken over.
    pub n: usize,
}

impl Spread {
    /// The spread of `values`; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n % 2 {
            1 => v[n / 2],
            _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }
}

/// The summary of one path and workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryRow {
    /// The path's name.
    pub path: String,
    /// The workload's name.
    pub workload: String,
    /// Successful samples.
    pub samples: usize,
    /// Failed samples.
    pub failed: usize,
    /// Per metric key: its spread, or null where it does not apply.
    pub metrics: BTreeMap<String, Option<Spread>>,
    /// Round-trip percentiles of every repeat's histogram merged (rr workloads of runs that
    /// kept the histograms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_latency: Option<MergedLatency>,
}

/// Percentiles of the round trips of all repeats together, microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MergedLatency {
    /// Repeats whose histograms were merged.
    pub repeats: usize,
    /// Round trips.
    pub samples: u64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Mean.
    pub mean_us: f64,
}

impl MergedLatency {
    /// The percentile `metric` stands for; `None` for other metrics.
    pub fn get(&self, metric: Metric) -> Option<f64> {
        match metric {
            Metric::LatencyP50Us => Some(self.p50_us),
            Metric::LatencyP90Us => Some(self.p90_us),
            Metric::LatencyP99Us => Some(self.p99_us),
            Metric::LatencyP999Us => Some(self.p999_us),
            Metric::ThroughputGbps
            | Metric::LossFreePacketsPerSecond
            | Metric::PacketsPerSecond
            | Metric::OfferedPacketsPerSecond
            | Metric::UdpLossPercent
            | Metric::RoundTripsPerSecond
            | Metric::MachineCpuSPerGib
            | Metric::RouterCpuSPerGib
            | Metric::RouterPeakRssMib
            | Metric::TxSegmentsPerCall
            | Metric::RxSegmentsPerCall => None,
        }
    }
}

impl RunResult {
    /// The summary row of `path` and `workload`, if the run has one.
    pub fn row(&self, path: &str, workload: &str) -> Option<&SummaryRow> {
        self.summary
            .iter()
            .find(|r| r.path == path && r.workload == workload)
    }

    /// The median of `metric` for `path` and `workload`, if measured.
    pub fn median(&self, path: &str, workload: &str, metric: Metric) -> Option<f64> {
        self.spread(path, workload, metric).map(|s| s.median)
    }

    /// The spread of `metric` for `path` and `workload`, if measured.
    pub fn spread(&self, path: &str, workload: &str, metric: Metric) -> Option<Spread> {
        self.row(path, workload)?
            .metrics
            .get(metric.key())
            .copied()
            .flatten()
    }

    /// The figure reports show for `metric`, and how many repeats it stands on: a
    /// round-trip percentile of the repeats' histograms merged where the run kept them, else
    /// the median.
    pub fn value(&self, path: &str, workload: &str, metric: Metric) -> Option<(f64, usize)> {
        let row = self.row(path, workload)?;
        if let Some(v) = row
            .merged_latency
            .and_then(|m| m.get(metric).map(|v| (v, m.repeats)))
        {
            return Some(v);
        }
        self.spread(path, workload, metric).map(|s| (s.median, s.n))
    }

    /// Names of the paths measured, in run order.
    pub fn measured_paths(&self) -> Vec<&str> {
        self.paths
            .iter()
            .filter(|p| p.measured)
            .map(|p| p.name.as_str())
            .collect()
    }

    /// Samples that failed.
    pub fn failures(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(|s| s.error.is_some())
    }
}

/// The figures of one measurement from the load client's result, the machine's CPU time and,
/// on router paths, the routers' counters. Every metric of the workload gets a key; what does
/// not apply is null (the loss-free rate is filled in by the search that follows a flood).
///
/// The machine and the routers are sampled over `window_s` seconds inside the client's
/// counted window, so CPU per GiB is a CPU rate over the pod's receive rate rather than a
/// quotient of two totals taken over slightly different spans.
///
/// `client_s` is the counted window the load client was given (`--seconds`): the span its
/// `packets_sent` were counted over, and (since schema version 2) its UDP received rate too.
pub fn derive_metrics(
    workload: WorkloadName,
    load: &LoadResult,
    router: Option<&RouterSample>,
    machine: Option<&MachineSample>,
    window_s: f64,
    client_s: f64,
) -> BTreeMap<String, Option<f64>> {
    let gib_per_s = (load.seconds > 0.0)
        .then(|| load.bytes_received as f64 / (1u64 << 30) as f64 / load.seconds)
        .filter(|&r| r > 0.0);
    let ratio = |num: u64, den: u64| (den > 0).then(|| num as f64 / den as f64);
    workload
        .metrics()
        .iter()
        .map(|&m| {
            let value = match m {
                Metric::ThroughputGbps => Some(load.bits_per_second / 1e9),
                Metric::LossFreePacketsPerSecond => None,
                Metric::PacketsPerSecond => Some(load.packets_per_second),
                Metric::OfferedPacketsPerSecond => offered_pps(load.packets_sent, client_s),
                Metric::UdpLossPercent => (load.packets_sent > 0).then(|| {
                    let lost = load.packets_sent.saturating_sub(load.packets_received);
                    100.0 * lost as f64 / load.packets_sent as f64
                }),
                Metric::RoundTripsPerSecond => Some(load.packets_per_second),
                Metric::LatencyP50Us => load.latency.as_ref().map(|l| l.p50_us),
                Metric::LatencyP90Us => load.latency.as_ref().map(|l| l.p90_us),
                Metric::LatencyP99Us => load.latency.as_ref().map(|l| l.p99_us),
                Metric::LatencyP999Us => load.latency.as_ref().map(|l| l.p999_us),
                Metric::MachineCpuSPerGib => machine
                    .filter(|_| window_s > 0.0)
                    .and_then(|c| gib_per_s.map(|g| c.busy_s / window_s / g)),
                Metric::RouterCpuSPerGib => router
                    .filter(|_| window_s > 0.0)
                    .and_then(|r| gib_per_s.map(|g| r.cpu_s / window_s / g)),
                Metric::RouterPeakRssMib => router.map(|r| r.peak_rss_kib as f64 / 1024.0),
                Metric::TxSegmentsPerCall => router.and_then(|r| ratio(r.tx_datagrams, r.tx_calls)),
                Metric::RxSegmentsPerCall => router.and_then(|r| ratio(r.rx_datagrams, r.rx_calls)),
            };
            (m.key().to_owned(), value)
        })
        .collect()
}

/// Packets per second sent: `packets_sent` over the client's counted seconds.
fn offered_pps(packets_sent: u64, client_s: f64) -> Option<f64> {
    (client_s.is_finite() && client_s > 0.0).then(|| packets_sent as f64 / client_s)
}

/// Adds the offered packet rate to the UDP samples and summary rows of a file written before
/// weave-perf recorded it, from each sample's raw load result (`packets_sent`) and the run's
/// counted seconds, exactly as a new run derives it. Samples that already have the metric,
/// failed, or lack a load result are left alone. Returns whether anything was added.
pub fn backfill_offered(run: &mut RunResult) -> bool {
    let key = Metric::OfferedPacketsPerSecond.key();
    let client_s = run.settings.seconds;
    let mut added = false;
    for sample in &mut run.samples {
        let udp = matches!(
            WorkloadName::from_name(&sample.workload),
            Some(WorkloadName::Udp64 | WorkloadName::Udp1400)
        );
        if !udp || sample.error.is_some() || sample.metrics.contains_key(key) {
            continue;
        }
        let sent = sample
            .load
            .as_ref()
            .and_then(|l| l.get("packets_sent"))
            .and_then(|v| v.as_u64());
        if let Some(sent) = sent {
            sample
                .metrics
                .insert(key.to_owned(), offered_pps(sent, client_s));
            added = true;
        }
    }
    if !added {
        return false;
    }
    let mut paths: Vec<String> = Vec::new();
    let mut workloads: Vec<String> = Vec::new();
    for row in &run.summary {
        if !paths.contains(&row.path) {
            paths.push(row.path.clone());
        }
        if !workloads.contains(&row.workload) {
            workloads.push(row.workload.clone());
        }
    }
    let fresh = summarize(&paths, &workloads, &run.samples);
    for row in &mut run.summary {
        if row.metrics.contains_key(key) {
            continue;
        }
        let spread = fresh
            .iter()
            .find(|f| f.path == row.path && f.workload == row.workload)
            .and_then(|f| f.metrics.get(key).copied());
        if let Some(spread) = spread {
            row.metrics.insert(key.to_owned(), spread);
        }
    }
    true
}

/// The summary of `samples`: one row per path and workload (in the order given), each
/// metric's spread over the successful samples.
pub fn summarize(paths: &[String], workloads: &[String], samples: &[Sample]) -> Vec<SummaryRow> {
    let mut rows = Vec::new();
    for workload in workloads {
        for path in paths {
            let mine: Vec<&Sample> = samples
                .iter()
                .filter(|s| &s.path == path && &s.workload == workload)
                .collect();
            let ok: Vec<&Sample> = mine.iter().copied().filter(|s| s.error.is_none()).collect();
            let mut keys: Vec<&String> = ok.iter().flat_map(|s| s.metrics.keys()).collect();
            keys.sort();
            keys.dedup();
            let metrics = keys
                .into_iter()
                .map(|k| {
                    let values: Vec<f64> = ok
                        .iter()
                        .filter_map(|s| s.metrics.get(k).copied().flatten())
                        .collect();
                    (k.clone(), Spread::of(&values))
                })
                .collect();
            rows.push(SummaryRow {
                path: path.clone(),
                workload: workload.clone(),
                samples: ok.len(),
                failed: mine.len() - ok.len(),
                metrics,
                merged_latency: merged_latency(&ok),
            });
        }
    }
    rows
}

/// The percentiles of the round-trip histograms of `samples` merged; `None` where no sample
/// kept one (not rr, or a file from before the histograms were kept) or one does not read.
fn merged_latency(samples: &[&Sample]) -> Option<MergedLatency> {
    let histograms: Vec<LatencyHistogram> = samples
        .iter()
        .filter_map(|s| s.load.as_ref()?.get("histogram"))
        .filter(|h| !h.is_null())
        .map(|h| serde_json::from_value(h.clone()).ok())
        .collect::<Option<_>>()?;
    let merged = histogram::merge(&histograms).ok()??;
    let l = histogram::latency_of(&merged);
    Some(MergedLatency {
        repeats: histograms.len(),
        samples: l.samples,
        p50_us: l.p50_us,
        p90_us: l.p90_us,
        p99_us: l.p99_us,
        p999_us: l.p999_us,
        mean_us: l.mean_us,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::load::{Latency, Workload};

    pub(crate) fn load_result(workload: Workload, bps: f64, pps: f64) -> LoadResult {
        LoadResult {
            workload,
            streams: 1,
            size: 0,
            seconds: 1.0,
            bytes_received: (bps / 8.0) as u64,
            packets_sent: if workload == Workload::Tcp { 0 } else { 1000 },
            packets_received: if workload == Workload::Tcp { 0 } else { 900 },
            bits_per_second: bps,
            packets_per_second: pps,
            latency: (workload == Workload::Rr).then_some(Latency {
                p50_us: 20.0,
                p90_us: 30.0,
                p99_us: 50.0,
                p999_us: 90.0,
                mean_us: 22.0,
                samples: 1000,
            }),
            rate: None,
            histogram: None,
        }
    }

    /// A run of every available path and workload, three repeats, with values chosen so that
    /// medians are round: path factors vxlan 1, veth 2, io-uring 0.9, epoll 0.75, no-gso 0.4,
    /// fastdp 1.25 (inverted for lower-is-better metrics), repeats at -2.5 %, 0, +2.5 %.
    pub(crate) fn sample_run() -> RunResult {
        let paths = NetPath::default_set();
        let factor = |p: NetPath| match p {
            NetPath::Vxlan => 1.0,
            NetPath::Veth => 2.0,
            NetPath::SleeveIoUring => 0.9,
            NetPath::SleeveEpoll => 0.75,
            NetPath::SleeveNoGso => 0.4,
            NetPath::SleeveEncrypted => 0.6,
            NetPath::SleeveEncryptedNacl => 0.2,
            NetPath::Fastdp => 1.25,
        };
        let base = |w: WorkloadName, m: Metric| match (w, m) {
            (WorkloadName::Tcp1, Metric::ThroughputGbps) => 4.0,
            (WorkloadName::Tcp4, Metric::ThroughputGbps) => 6.0,
            (_, Metric::ThroughputGbps) => 0.5,
            (WorkloadName::Udp64, Metric::LossFreePacketsPerSecond) => 300_000.0,
            (_, Metric::LossFreePacketsPerSecond) => 120_000.0,
            (WorkloadName::Udp64, Metric::PacketsPerSecond) => 400_000.0,
            (_, Metric::PacketsPerSecond) => 150_000.0,
            (WorkloadName::Udp64, Metric::OfferedPacketsPerSecond) => 410_000.0,
            (_, Metric::OfferedPacketsPerSecond) => 155_000.0,
            (_, Metric::UdpLossPercent) => 2.0,
            (WorkloadName::RrPaced, Metric::RoundTripsPerSecond) => 2_000.0,
            (_, Metric::RoundTripsPerSecond) => 20_000.0,
            (WorkloadName::RrPaced, Metric::LatencyP50Us) => 50.0,
            (_, Metric::LatencyP50Us) => 40.0,
            (_, Metric::LatencyP90Us) => 55.0,
            (_, Metric::LatencyP99Us) => 80.0,
            (_, Metric::LatencyP999Us) => 200.0,
            (_, Metric::MachineCpuSPerGib) => 1.5,
            (_, Metric::RouterCpuSPerGib) => 0.45,
            (_, Metric::RouterPeakRssMib) => 9.0,
            (_, Metric::TxSegmentsPerCall) => 18.0,
            (_, Metric::RxSegmentsPerCall) => 9.0,
        };
        let mut samples = Vec::new();
        for step in crate::harness::model::schedule(&paths, &WorkloadName::ALL, 3) {
            let jitter = 1.0 + (step.repeat as f64 - 2.0) * 0.025;
            let f = factor(step.path);
            let metrics = step
                .workload
                .metrics()
                .iter()
                .map(|&m| {
                    let scale = match m.better() {
                        crate::harness::model::Better::Higher
                        | crate::harness::model::Better::Neither => f,
                        crate::harness::model::Better::Lower => 1.0 / f,
                    };
                    let applies = !m.router_only() || step.path.kind() == PathKind::Router;
                    let value = applies.then(|| base(step.workload, m) * scale * jitter);
                    (m.key().to_owned(), value)
                })
                .collect();
            samples.push(Sample {
                index: samples.len() + 1,
                repeat: step.repeat,
                path: step.path.name().to_owned(),
                workload: step.workload.name().to_owned(),
                window_s: 1.0,
                load: None,
                router: None,
                machine: None,
                search: None,
                metrics,
                error: None,
            });
        }
        let path_names: Vec<String> = paths.iter().map(|p| p.name().to_owned()).collect();
        let workload_names: Vec<String> = WorkloadName::ALL
            .iter()
            .map(|w| w.name().to_owned())
            .collect();
        let summary = summarize(&path_names, &workload_names, &samples);
        let mut infos: Vec<PathInfo> = paths.iter().map(|&p| PathInfo::new(p, true)).collect();
        infos.extend(
            NetPath::ALL
                .into_iter()
                .filter(|p| !paths.contains(p))
                .map(|p| PathInfo::new(p, false)),
        );
        RunResult {
            schema: SCHEMA.to_owned(),
            schema_version: SCHEMA_VERSION,
            started_utc: "2026-11-25T22:15:00Z".to_owned(),
            finished_utc: "2026-11-25T22:25:00Z".to_owned(),
            machine: MachineFacts {
                kernel: "6.1.0-test".to_owned(),
                cores: 2,
                cpu_model: Some("Test CPU".to_owned()),
                memory_bytes: Some(8 << 30),
                load_average: Some(0.5),
                git_commit: Some("0123abcd".to_owned()),
                git_dirty: Some(false),
                router_version: Some("weave-router 0.1.0".to_owned()),
                router_bin: "/x/weave-router".to_owned(),
                command_line: vec!["weave-perf".to_owned(), "run".to_owned()],
                background_busy_cpus: Some(0.25),
            },
            settings: Settings {
                repeats: 3,
                seconds: 5.0,
                warmup: 1.0,
                hosts_per_path: 3,
                router_workers: None,
                quick: false,
                placement: Some(
                    crate::harness::placement::plan(None, &[0, 1], 3, true)
                        .expect("a split placement"),
                ),
                search: Some(SearchSettings {
                    trials: 6,
                    seconds: 0.5,
                    warmup: 0.2,
                    max_loss_percent: crate::harness::search::MAX_LOSS_PERCENT,
                }),
            },
            paths: infos,
            workloads: WorkloadName::ALL
                .iter()
                .map(|&w| WorkloadInfo::new(w))
                .collect(),
            samples,
            summary,
        }
    }

    /// Asserts that two runs are equal but for the last bits of floats: serde_json's default
    /// float parser is fast rather than exact.
    pub(crate) fn assert_same_run(a: &RunResult, b: &RunResult) {
        fn same(a: &serde_json::Value, b: &serde_json::Value, at: &str) {
            use serde_json::Value as V;
            match (a, b) {
                (V::Number(x), V::Number(y)) => {
                    let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                    assert!(
                        (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
                        "{at}: {x} != {y}"
                    );
                }
                (V::Array(x), V::Array(y)) => {
                    assert_eq!(x.len(), y.len(), "{at}: lengths differ");
                    for (i, (x, y)) in x.iter().zip(y).enumerate() {
                        same(x, y, &format!("{at}[{i}]"));
                    }
                }
                (V::Object(x), V::Object(y)) => {
                    let kx: Vec<_> = x.keys().collect();
                    let ky: Vec<_> = y.keys().collect();
                    assert_eq!(kx, ky, "{at}: keys differ");
                    for (k, v) in x {
                        same(v, &y[k], &format!("{at}.{k}"));
                    }
                }
                (x, y) => assert_eq!(x, y, "{at}"),
            }
        }
        let va = serde_json::to_value(a).unwrap();
        let vb = serde_json::to_value(b).unwrap();
        same(&va, &vb, "run");
    }

    #[test]
    fn sample_run_survives_json() {
        let run = sample_run();

        let text = serde_json::to_string_pretty(&run).unwrap();
        let back: RunResult = serde_json::from_str(&text).unwrap();

        assert_same_run(&back, &run);
        assert_eq!(
            run.median("sleeve-epoll", "tcp1", Metric::ThroughputGbps),
            Some(3.0)
        );
    }

    #[test]
    fn path_info_says_why_a_path_was_not_measured() {
        let measured = PathInfo::new(NetPath::Fastdp, true);
        assert_eq!(measured.note, None);
        assert_eq!(measured.pod_mtu, Some(1438));
        assert_eq!(measured.router_args, ["--dataplane", "io-uring"]);

        let left_out = PathInfo::new(NetPath::Fastdp, false);
        assert!(!left_out.measured);
        assert_eq!(left_out.note.as_deref(), Some("not selected"));
        assert_eq!(
            PathInfo::new(NetPath::SleeveEpoll, true).router_args,
            ["--dataplane", "epoll", "--no-fastdp"]
        );
    }

    #[test]
    fn spread_takes_median_min_max() {
        assert_eq!(Spread::of(&[]), None);
        let odd = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((odd.median, odd.min, odd.max, odd.n), (2.0, 1.0, 3.0, 3));
        let even = Spread::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(even.median, 2.5);
        assert_eq!(Spread::of(&[f64::NAN, 5.0]).unwrap().n, 1);
    }

    #[test]
    fn metrics_of_a_kernel_path_have_null_router_figures() {
        let load = load_result(Workload::Tcp, 8e9, 0.0);

        let m = derive_metrics(WorkloadName::Tcp1, &load, None, None, 1.0, 1.0);

        assert_eq!(m["throughput_gbps"], Some(8.0));
        assert_eq!(m["router_cpu_s_per_gib"], None);
        assert_eq!(m["tx_segments_per_call"], None);
        assert!(!m.contains_key("latency_p50_us"));
        assert!(!m.contains_key("offered_packets_per_second"));
    }

    #[test]
    fn offered_and_received_rates_are_over_the_clients_window() {
        // The client sent 1000 packets in the 2 s it was given; 900 arrived, counted over the
        // same nominal window (the load client divides by it since schema version 2).
        let mut load = load_result(Workload::Udp, 8e6, 900.0 / 2.0);
        load.seconds = 2.0;

        let m = derive_metrics(WorkloadName::Udp1400, &load, None, None, 1.9, 2.0);

        let (offered, received) = (
            m["offered_packets_per_second"].unwrap(),
            m["packets_per_second"].unwrap(),
        );
        assert_eq!((offered, received), (500.0, 450.0));
        // So received over offered is one minus the loss.
        let loss = m["udp_loss_percent"].unwrap();
        assert!((received / offered - (1.0 - loss / 100.0)).abs() < 1e-12);
        // The search fills in the loss-free rate later.
        assert_eq!(m["loss_free_packets_per_second"], None);
        assert_eq!(
            derive_metrics(WorkloadName::Udp64, &load, None, None, 1.9, 0.0)
                ["offered_packets_per_second"],
            None
        );
    }

    #[test]
    fn machine_cpu_is_per_gib_received_on_every_path() {
        // 8 Gbit/s received is 1e9 bytes per second; the machine was busy 1.5 CPUs over 2 s.
        let mut load = load_result(Workload::Tcp, 8e9, 0.0);
        load.seconds = 2.0;
        load.bytes_received = 2_000_000_000;
        let machine = MachineSample {
            busy_s: 3.0,
            total_s: 4.0,
        };

        let m = derive_metrics(WorkloadName::Tcp4, &load, None, Some(&machine), 2.0, 2.0);

        let per_gib = m["machine_cpu_s_per_gib"].unwrap();
        assert!(
            (per_gib - 1.5 / (1e9 / 1073741824.0)).abs() < 1e-9,
            "{per_gib}"
        );
        assert_eq!(m["router_cpu_s_per_gib"], None);
        let rr = derive_metrics(
            WorkloadName::Rr,
            &load_result(Workload::Rr, 1e3, 1e3),
            None,
            Some(&machine),
            2.0,
            2.0,
        );
        assert!(!rr.contains_key("machine_cpu_s_per_gib"));
    }

    #[test]
    fn rr_percentiles_are_also_taken_over_the_merged_histograms() {
        use crate::load::LatencyHistogram;
        let hist = |ns: u64, count: u64| LatencyHistogram {
            significant_figures: 3,
            highest_ns: 60_000_000_000,
            buckets: vec![[ns, count]],
        };
        let mut run = sample_run();
        let mut repeat = 0;
        for s in run
            .samples
            .iter_mut()
            .filter(|s| s.path == "vxlan" && s.workload == "rr")
        {
            // Two fast repeats and one with a slow tail: 10 % of all round trips at 1 ms.
            repeat += 1;
            let h = match repeat {
                3 => hist(1_000_000, 300),
                _ => hist(40_000, 1350),
            };
            s.load = Some(serde_json::json!({ "histogram": h }));
        }
        let paths: Vec<String> = NetPath::default_set()
            .iter()
            .map(|p| p.name().to_owned())
            .collect();

        let summary = summarize(&paths, &["rr".to_owned()], &run.samples);
        run.summary = summary;

        let merged = run.row("vxlan", "rr").unwrap().merged_latency.unwrap();
        assert_eq!((merged.repeats, merged.samples), (3, 3000));
        assert!((merged.p50_us - 40.0).abs() < 0.1, "{merged:?}");
        assert!((merged.p99_us - 1000.0).abs() < 1.0, "{merged:?}");
        // The report's figure is the merged one; the median of the repeats' p99 is 80 µs.
        let (p99, n) = run.value("vxlan", "rr", Metric::LatencyP99Us).unwrap();
        assert_eq!((p99, n), (merged.p99_us, 3));
        assert_eq!(
            run.spread("vxlan", "rr", Metric::LatencyP99Us)
                .unwrap()
                .median,
            80.0
        );
        // Without histograms, the median stands.
        assert_eq!(
            run.value("veth", "rr", Metric::LatencyP99Us),
            Some((40.0, 3))
        );
        assert!(run.row("veth", "rr").unwrap().merged_latency.is_none());
    }

    /// A file as version 1 wrote it before the offered rate: the same run without the key.
    fn without_offered(mut run: RunResult) -> RunResult {
        let key = Metric::OfferedPacketsPerSecond.key();
        for s in &mut run.samples {
            s.metrics.remove(key);
        }
        for r in &mut run.summary {
            r.metrics.remove(key);
        }
        run
    }

    #[test]
    fn offered_rate_is_backfilled_from_the_raw_load_results_of_an_old_file() {
        let mut run = without_offered(sample_run());
        run.settings.seconds = 2.0;
        let mut sent = 1000;
        for s in run.samples.iter_mut().filter(|s| s.path == "vxlan") {
            s.load = Some(serde_json::json!({ "packets_sent": sent }));
            sent += 1000;
        }

        assert!(backfill_offered(&mut run));

        // vxlan's udp64 repeats sent 3000, 9000 and 15000 packets in 2 s each (the schedule
        // puts the six workloads between them).
        let s = run
            .spread("vxlan", "udp64", Metric::OfferedPacketsPerSecond)
            .unwrap();
        assert_eq!((s.min, s.median, s.max, s.n), (1500.0, 4500.0, 7500.0, 3));
        // Other paths have no raw load result here, tcp has no offered rate, and a second
        // pass finds nothing to add.
        assert_eq!(
            run.spread("veth", "udp64", Metric::OfferedPacketsPerSecond),
            None
        );
        assert!(!run
            .row("vxlan", "tcp1")
            .unwrap()
            .metrics
            .contains_key("offered_packets_per_second"));
        assert!(!backfill_offered(&mut run));
        // The other figures are as they were.
        assert_eq!(
            run.median("vxlan", "udp64", Metric::PacketsPerSecond),
            Some(400_000.0)
        );
    }

    #[test]
    fn backfill_leaves_a_new_file_alone() {
        let mut run = sample_run();
        let before = run.clone();

        assert!(!backfill_offered(&mut run));

        assert_eq!(run, before);
    }

    #[test]
    fn router_figures_are_per_gib_and_per_call() {
        // 8 Gbit in one second is 1e9 bytes.
        let load = load_result(Workload::Udp, 8e9, 1e6);
        let router = RouterSample {
            processes: 3,
            cpu_s: 0.5,
            peak_rss_kib: 2048,
            tx_datagrams: 100,
            tx_calls: 10,
            rx_datagrams: 30,
            rx_calls: 0,
        };

        // The routers were sampled over half a second: 1 CPU second per second.
        let m = derive_metrics(WorkloadName::Udp64, &load, Some(&router), None, 0.5, 1.0);

        let per_gib = m["router_cpu_s_per_gib"].unwrap();
        assert!((per_gib - 1.0 / (1e9 / 1073741824.0)).abs() < 1e-9);
        assert_eq!(m["router_peak_rss_mib"], Some(2.0));
        assert_eq!(m["tx_segments_per_call"], Some(10.0));
        assert_eq!(m["rx_segments_per_call"], None);
        assert_eq!(m["packets_per_second"], Some(1e6));
        assert_eq!(m["udp_loss_percent"], Some(10.0));
    }

    #[test]
    fn summary_skips_failed_samples_and_counts_them() {
        let load = load_result(Workload::Tcp, 1e9, 0.0);
        let sample = |repeat, gbps: f64, error: Option<&str>| Sample {
            index: repeat,
            repeat,
            path: "vxlan".into(),
            workload: "tcp1".into(),
            window_s: 1.0,
            load: None,
            router: None,
            machine: None,
            search: None,
            metrics: match error {
                Some(_) => BTreeMap::new(),
                None => {
                    let mut m = derive_metrics(WorkloadName::Tcp1, &load, None, None, 1.0, 1.0);
                    m.insert("throughput_gbps".into(), Some(gbps));
                    m
                }
            },
            error: error.map(str::to_owned),
        };
        let samples = [
            sample(1, 1.0, None),
            sample(2, 0.0, Some("boom")),
            sample(3, 3.0, None),
        ];

        let rows = summarize(&["vxlan".into()], &["tcp1".into()], &samples);

        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].samples, rows[0].failed), (2, 1));
        let t = rows[0].metrics["throughput_gbps"].unwrap();
        assert_eq!((t.median, t.min, t.max), (2.0, 1.0, 3.0));
        assert_eq!(rows[0].metrics["router_cpu_s_per_gib"], None);
    }
}
