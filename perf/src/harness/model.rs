//! What the harness measures: the paths traffic takes, the workloads sent over them, the
//! metrics taken from each measurement, and the order the measurements run in. Pure data.

use serde::{Deserialize, Serialize};

use crate::load;

/// A way for traffic to get from one pod to another, measured side by side with the others.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum NetPath {
    /// The kernel's VXLAN overlay: the baseline every ratio is taken against.
    Vxlan,
    /// The plain underlay, host namespace to host namespace: the ceiling.
    Veth,
    /// weave-router's sleeve on the io_uring backend.
    SleeveIoUring,
    /// weave-router's sleeve on the epoll backend.
    SleeveEpoll,
    /// weave-router's sleeve on io_uring with GSO/GRO and TAP offloads off.
    SleeveNoGso,
    /// weave-router's encrypted sleeve on io_uring: a password, AES-256-GCM between the
    /// routers.
    SleeveEncrypted,
    /// weave-router's encrypted sleeve on io_uring in Weave Net's NaCl format, as towards
    /// Weave Net peers.
    SleeveEncryptedNacl,
    /// weave-router's fast datapath: the kernel's VXLAN, programmed by the router.
    Fastdp,
}

/// Which kind of thing carries a path's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    /// The kernel alone, through an overlay device.
    Kernel,
    /// The kernel alone, without an overlay.
    Underlay,
    /// weave-router processes.
    Router,
}

impl NetPath {
    /// Every path, in the order reports list them.
    pub const ALL: [NetPath; 8] = [
        NetPath::Vxlan,
        NetPath::Veth,
        NetPath::SleeveIoUring,
        NetPath::SleeveEpoll,
        NetPath::SleeveNoGso,
        NetPath::SleeveEncrypted,
        NetPath::SleeveEncryptedNacl,
        NetPath::Fastdp,
    ];

    /// The baseline of every ratio.
    pub const BASELINE: NetPath = NetPath::Vxlan;

    /// The name used on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            NetPath::Vxlan => "vxlan",
            NetPath::Veth => "veth",
            NetPath::SleeveIoUring => "sleeve-io-uring",
            NetPath::SleeveEpoll => "sleeve-epoll",
            NetPath::SleeveNoGso => "sleeve-no-gso",
            NetPath::SleeveEncrypted => "sleeve-encrypted",
            NetPath::SleeveEncryptedNacl => "sleeve-encrypted-nacl",
            NetPath::Fastdp => "fastdp",
        }
    }

    /// The path called `name`, if any.
    pub fn from_name(name: &str) -> Option<NetPath> {
        NetPath::ALL.into_iter().find(|p| p.name() == name)
    }

    /// One line saying what the path is.
    pub fn description(self) -> &'static str {
        match self {
            NetPath::Vxlan => "kernel VXLAN overlay (vxlan device on a Linux bridge), pod MTU 1450",
            NetPath::Veth => "plain underlay veth, host namespace to host namespace, no overlay",
            NetPath::SleeveIoUring => "weave-router sleeve, --dataplane io-uring, pod MTU 1438",
            NetPath::SleeveEpoll => "weave-router sleeve, --dataplane epoll, pod MTU 1438",
            NetPath::SleeveNoGso => {
                "weave-router sleeve, --dataplane io-uring --offload off (one datagram per system call)"
            }
            NetPath::SleeveEncrypted => {
                "weave-router sleeve with a password, AES-256-GCM between the routers, \
                 --dataplane io-uring, pod MTU 1414"
            }
            NetPath::SleeveEncryptedNacl => {
                "weave-router sleeve with a password, Weave Net's NaCl format \
                 (--sleeve-cipher weave), --dataplane io-uring, pod MTU 1414"
            }
            NetPath::Fastdp => {
                "weave-router fast datapath (kernel VXLAN on UDP 6784, programmed by the router), \
                 pod MTU 1438"
            }
        }
    }

    /// What carries the traffic.
    pub fn kind(self) -> PathKind {
        match self {
            NetPath::Vxlan => PathKind::Kernel,
            NetPath::Veth => PathKind::Underlay,
            NetPath::SleeveIoUring
            | NetPath::SleeveEpoll
            | NetPath::SleeveNoGso
            | NetPath::SleeveEncrypted
            | NetPath::SleeveEncryptedNacl
            | NetPath::Fastdp => PathKind::Router,
        }
    }

    /// `Err(why)` for a path the harness cannot build; every path it knows can be built now.
    /// Result files of older runs keep the reason they gave then, in the path's `note`.
    pub fn availability(self) -> Result<(), &'static str> {
        match self {
            NetPath::Vxlan
            | NetPath::Veth
            | NetPath::SleeveIoUring
            | NetPath::SleeveEpoll
            | NetPath::SleeveNoGso
            | NetPath::SleeveEncrypted
            | NetPath::SleeveEncryptedNacl
            | NetPath::Fastdp => Ok(()),
        }
    }

    /// What must carry every connection of a router path, as `weave-router status
    /// connections` names it after `established` (`fastdp` or `sleeve`); `None` for paths
    /// without routers. A router that fell back to another overlay is not this path.
    pub fn overlay(self) -> Option<&'static str> {
        match self {
            NetPath::Vxlan | NetPath::Veth => None,
            NetPath::SleeveIoUring
            | NetPath::SleeveEpoll
            | NetPath::SleeveNoGso
            | NetPath::SleeveEncrypted
            | NetPath::SleeveEncryptedNacl => Some("sleeve"),
            NetPath::Fastdp => Some("fastdp"),
        }
    }

    /// The MTU of the pods' `eth0`; `None` where traffic runs between host namespaces.
    pub fn pod_mtu(self) -> Option<u32> {
        match self {
            // 1500 minus the 50 bytes of outer Ethernet, IPv4, UDP and VXLAN headers.
            NetPath::Vxlan => Some(1450),
            NetPath::Veth => None,
            // What the sleeve carries on a 1500-byte underlay; the router's weave bridge has
            // this MTU whichever overlay carries a peer, so the fast datapath gets it too.
            NetPath::SleeveIoUring
            | NetPath::SleeveEpoll
            | NetPath::SleeveNoGso
            | NetPath::Fastdp => Some(1438),
            // Weave's encrypted format takes 24 bytes more, and so does the fast one.
            NetPath::SleeveEncrypted | NetPath::SleeveEncryptedNacl => Some(1414),
        }
    }

    /// The `weave-router launch` flags that select this path; empty for kernel paths. The
    /// router uses its fast datapath by default, so the sleeve paths turn it off.
    pub fn router_args(self) -> &'static [&'static str] {
        match self {
            NetPath::Vxlan | NetPath::Veth => &[],
            NetPath::SleeveIoUring => &["--dataplane", "io-uring", "--no-fastdp"],
            NetPath::SleeveEpoll => &["--dataplane", "epoll", "--no-fastdp"],
            NetPath::SleeveNoGso => &["--dataplane", "io-uring", "--offload", "off", "--no-fastdp"],
            // The testbed is the machine's own: a password in the command line shows only
            // to its root.
            NetPath::SleeveEncrypted => &[
                "--dataplane",
                "io-uring",
                "--no-fastdp",
                "--password",
                "weave-perf",
            ],
            NetPath::SleeveEncryptedNacl => &[
                "--dataplane",
                "io-uring",
                "--no-fastdp",
                "--password",
                "weave-perf",
                "--sleeve-cipher",
                "weave",
            ],
            NetPath::Fastdp => &["--dataplane", "io-uring"],
        }
    }

    /// The default selection: every available path.
    pub fn default_set() -> Vec<NetPath> {
        NetPath::ALL
            .into_iter()
            .filter(|p| p.availability().is_ok())
            .collect()
    }
}

/// A traffic pattern sent over every path.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadName {
    /// TCP bulk, one stream.
    Tcp1,
    /// TCP bulk, four streams.
    Tcp4,
    /// UDP, 64-byte payloads, two sender threads: packets per second.
    Udp64,
    /// UDP, 1400-byte payloads, two sender threads: packets per second.
    Udp1400,
    /// TCP request/response of one byte each way, each request after the last answer
    /// (closed loop): round-trip latency.
    Rr,
    /// TCP request/response of one byte each way at [`RR_PACED_RATE`] requests per second,
    /// sent on schedule whatever the answers do (open loop): latency from each request's
    /// scheduled send time, so stalls are not hidden by the requests they hold back.
    RrPaced,
}

/// Requests per second of [`WorkloadName::RrPaced`]: a light load that every path carries
/// (closed-loop rr reaches several thousand per second on each), the same for all.
pub const RR_PACED_RATE: f64 = 2000.0;

impl WorkloadName {
    /// Every workload, in the order reports list them.
    pub const ALL: [WorkloadName; 6] = [
        WorkloadName::Tcp1,
        WorkloadName::Tcp4,
        WorkloadName::Udp64,
        WorkloadName::Udp1400,
        WorkloadName::Rr,
        WorkloadName::RrPaced,
    ];

    /// The name used on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            WorkloadName::Tcp1 => "tcp1",
            WorkloadName::Tcp4 => "tcp4",
            WorkloadName::Udp64 => "udp64",
            WorkloadName::Udp1400 => "udp1400",
            WorkloadName::Rr => "rr",
            WorkloadName::RrPaced => "rr-paced",
        }
    }

    /// Whether it is a UDP flood, which gets a loss-free rate search after it.
    pub fn is_udp(self) -> bool {
        match self {
            WorkloadName::Udp64 | WorkloadName::Udp1400 => true,
            WorkloadName::Tcp1 | WorkloadName::Tcp4 | WorkloadName::Rr | WorkloadName::RrPaced => {
                false
            }
        }
    }

    /// The workload called `name`, if any.
    pub fn from_name(name: &str) -> Option<WorkloadName> {
        WorkloadName::ALL.into_iter().find(|w| w.name() == name)
    }

    /// What the load client runs for it.
    pub fn spec(self) -> WorkloadSpec {
        let (workload, streams, size, rate) = match self {
            WorkloadName::Tcp1 => (load::Workload::Tcp, 1, 0, None),
            WorkloadName::Tcp4 => (load::Workload::Tcp, 4, 0, None),
            WorkloadName::Udp64 => (load::Workload::Udp, 2, 64, None),
            // 1400 bytes of payload plus 28 of IPv4 and UDP fit every path's MTU.
            WorkloadName::Udp1400 => (load::Workload::Udp, 2, 1400, None),
            WorkloadName::Rr => (load::Workload::Rr, 1, 1, None),
            WorkloadName::RrPaced => (load::Workload::Rr, 1, 1, Some(RR_PACED_RATE)),
        };
        WorkloadSpec {
            workload,
            streams,
            size,
            rate,
        }
    }

    /// The metrics a measurement of this workload yields, in report order. Router-only
    /// metrics are listed for every path (null where no router runs).
    pub fn metrics(self) -> &'static [Metric] {
        match self {
            WorkloadName::Tcp1 | WorkloadName::Tcp4 => &[
                Metric::ThroughputGbps,
                Metric::MachineCpuSPerGib,
                Metric::RouterCpuSPerGib,
                Metric::RouterPeakRssMib,
                Metric::TxSegmentsPerCall,
                Metric::RxSegmentsPerCall,
            ],
            WorkloadName::Udp64 | WorkloadName::Udp1400 => &[
                Metric::LossFreePacketsPerSecond,
                Metric::PacketsPerSecond,
                Metric::OfferedPacketsPerSecond,
                Metric::ThroughputGbps,
                Metric::UdpLossPercent,
                Metric::MachineCpuSPerGib,
                Metric::RouterCpuSPerGib,
                Metric::RouterPeakRssMib,
                Metric::TxSegmentsPerCall,
                Metric::RxSegmentsPerCall,
            ],
            WorkloadName::Rr | WorkloadName::RrPaced => &[
                Metric::LatencyP50Us,
                Metric::LatencyP90Us,
                Metric::LatencyP99Us,
                Metric::LatencyP999Us,
                Metric::RoundTripsPerSecond,
                Metric::RouterPeakRssMib,
                Metric::TxSegmentsPerCall,
                Metric::RxSegmentsPerCall,
            ],
        }
    }
}

/// The load client's arguments for one workload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkloadSpec {
    /// The client's workload.
    pub workload: load::Workload,
    /// Streams (tcp) or sender threads (udp).
    pub streams: usize,
    /// Payload bytes (udp, rr); 0 for tcp.
    pub size: usize,
    /// The client's `--rate` (per second); `None` for unpaced traffic.
    pub rate: Option<f64>,
}

/// A figure taken from one measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Payload bits per second received, in Gbit/s.
    ThroughputGbps,
    /// The highest UDP packet rate offered (paced) that the path carried with less than
    /// [`super::search::MAX_LOSS_PERCENT`] loss, found by a search of short trials.
    LossFreePacketsPerSecond,
    /// UDP packets per second received during the unpaced flood.
    PacketsPerSecond,
    /// UDP packets per second the sender put out over its counted window: what the path was
    /// offered. Received close to offered means the sender, not the path, set the rate.
    OfferedPacketsPerSecond,
    /// Share of UDP packets sent that did not arrive, in percent.
    UdpLossPercent,
    /// Round trips per second (rr).
    RoundTripsPerSecond,
    /// Median round trip, µs.
    LatencyP50Us,
    /// 90th percentile round trip, µs.
    LatencyP90Us,
    /// 99th percentile round trip, µs.
    LatencyP99Us,
    /// 99.9th percentile round trip, µs.
    LatencyP999Us,
    /// Busy CPU seconds of the whole machine (every CPU's user, nice, system, irq, softirq
    /// and steal time) per GiB received.
    MachineCpuSPerGib,
    /// CPU seconds (user + system) of all routers of the path per GiB received.
    RouterCpuSPerGib,
    /// Largest peak resident set of the path's routers during the measurement, MiB.
    RouterPeakRssMib,
    /// Sleeve datagrams per UDP send call, over the path's routers.
    TxSegmentsPerCall,
    /// Sleeve datagrams per UDP receive call, over the path's routers.
    RxSegmentsPerCall,
}

/// Whether a bigger value of a metric is the better one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// More is better (throughput).
    Higher,
    /// Less is better (latency, cost).
    Lower,
    /// Neither: a property of the load put on the path rather than of the path (offered rate).
    Neither,
}

impl Metric {
    /// Every metric.
    pub const ALL: [Metric; 15] = [
        Metric::ThroughputGbps,
        Metric::LossFreePacketsPerSecond,
        Metric::PacketsPerSecond,
        Metric::OfferedPacketsPerSecond,
        Metric::UdpLossPercent,
        Metric::RoundTripsPerSecond,
        Metric::LatencyP50Us,
        Metric::LatencyP90Us,
        Metric::LatencyP99Us,
        Metric::LatencyP999Us,
        Metric::MachineCpuSPerGib,
        Metric::RouterCpuSPerGib,
        Metric::RouterPeakRssMib,
        Metric::TxSegmentsPerCall,
        Metric::RxSegmentsPerCall,
    ];

    /// The key in result files.
    pub fn key(self) -> &'static str {
        match self {
            Metric::ThroughputGbps => "throughput_gbps",
            Metric::LossFreePacketsPerSecond => "loss_free_packets_per_second",
            Metric::PacketsPerSecond => "packets_per_second",
            Metric::OfferedPacketsPerSecond => "offered_packets_per_second",
            Metric::UdpLossPercent => "udp_loss_percent",
            Metric::RoundTripsPerSecond => "round_trips_per_second",
            Metric::LatencyP50Us => "latency_p50_us",
            Metric::LatencyP90Us => "latency_p90_us",
            Metric::LatencyP99Us => "latency_p99_us",
            Metric::LatencyP999Us => "latency_p999_us",
            Metric::MachineCpuSPerGib => "machine_cpu_s_per_gib",
            Metric::RouterCpuSPerGib => "router_cpu_s_per_gib",
            Metric::RouterPeakRssMib => "router_peak_rss_mib",
            Metric::TxSegmentsPerCall => "tx_segments_per_call",
            Metric::RxSegmentsPerCall => "rx_segments_per_call",
        }
    }

    /// The metric stored under `key`, if known.
    pub fn from_key(key: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.key() == key)
    }

    /// Its unit as printed.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::ThroughputGbps => "Gbit/s",
            Metric::LossFreePacketsPerSecond
            | Metric::PacketsPerSecond
            | Metric::OfferedPacketsPerSecond => "pps",
            Metric::UdpLossPercent => "%",
            Metric::RoundTripsPerSecond => "1/s",
            Metric::LatencyP50Us
            | Metric::LatencyP90Us
            | Metric::LatencyP99Us
            | Metric::LatencyP999Us => "µs",
            Metric::MachineCpuSPerGib | Metric::RouterCpuSPerGib => "s/GiB",
            Metric::RouterPeakRssMib => "MiB",
            Metric::TxSegmentsPerCall | Metric::RxSegmentsPerCall => "per call",
        }
    }

    /// Which direction is an improvement.
    pub fn better(self) -> Better {
        match self {
            Metric::ThroughputGbps
            | Metric::LossFreePacketsPerSecond
            | Metric::PacketsPerSecond
            | Metric::RoundTripsPerSecond
            | Metric::TxSegmentsPerCall
            | Metric::RxSegmentsPerCall => Better::Higher,
            Metric::UdpLossPercent
            | Metric::LatencyP50Us
            | Metric::LatencyP90Us
            | Metric::LatencyP99Us
            | Metric::LatencyP999Us
            | Metric::MachineCpuSPerGib
            | Metric::RouterCpuSPerGib
            | Metric::RouterPeakRssMib => Better::Lower,
            Metric::OfferedPacketsPerSecond => Better::Neither,
        }
    }

    /// Whether only a router can report it (null on kernel paths).
    pub fn router_only(self) -> bool {
        match self {
            Metric::RouterCpuSPerGib
            | Metric::RouterPeakRssMib
            | Metric::TxSegmentsPerCall
            | Metric::RxSegmentsPerCall => true,
            Metric::ThroughputGbps
            | Metric::LossFreePacketsPerSecond
            | Metric::PacketsPerSecond
            | Metric::OfferedPacketsPerSecond
            | Metric::UdpLossPercent
            | Metric::RoundTripsPerSecond
            | Metric::LatencyP50Us
            | Metric::LatencyP90Us
            | Metric::LatencyP99Us
            | Metric::LatencyP999Us
            | Metric::MachineCpuSPerGib => false,
        }
    }

    /// Whether it is a round-trip percentile, which summaries also take over the repeats'
    /// histograms merged.
    pub fn is_latency(self) -> bool {
        match self {
            Metric::LatencyP50Us
            | Metric::LatencyP90Us
            | Metric::LatencyP99Us
            | Metric::LatencyP999Us => true,
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
            | Metric::RxSegmentsPerCall => false,
        }
    }
}

/// One measurement of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// 1-based repeat.
    pub repeat: usize,
    /// The workload.
    pub workload: WorkloadName,
    /// The path.
    pub path: NetPath,
}

/// The order of measurements: for each repeat, for each workload, every path, with the
/// path order rotated by one per repeat, so that slow drift of a noisy machine (another
/// job starting, the CPU warming up) falls on every path rather than on whichever runs last.
pub fn schedule(paths: &[NetPath], workloads: &[WorkloadName], repeats: usize) -> Vec<Step> {
    let mut steps = Vec::with_capacity(paths.len() * workloads.len() * repeats);
    for r in 0..repeats {
        for &workload in workloads {
            for i in 0..paths.len() {
                steps.push(Step {
                    repeat: r + 1,
                    workload,
                    path: paths[(i + r) % paths.len()],
                });
            }
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_interleaves_paths_and_rotates_per_repeat() {
        let paths = [NetPath::Vxlan, NetPath::Veth, NetPath::SleeveEpoll];
        let workloads = [WorkloadName::Tcp1, WorkloadName::Rr];

        let steps = schedule(&paths, &workloads, 2);

        let shown: Vec<String> = steps
            .iter()
            .map(|s| format!("{}:{}:{}", s.repeat, s.workload.name(), s.path.name()))
            .collect();
        assert_eq!(
            shown,
            [
                "1:tcp1:vxlan",
                "1:tcp1:veth",
                "1:tcp1:sleeve-epoll",
                "1:rr:vxlan",
                "1:rr:veth",
                "1:rr:sleeve-epoll",
                "2:tcp1:veth",
                "2:tcp1:sleeve-epoll",
                "2:tcp1:vxlan",
                "2:rr:veth",
                "2:rr:sleeve-epoll",
                "2:rr:vxlan",
            ]
        );
    }

    #[test]
    fn schedule_of_nothing_is_empty() {
        assert!(schedule(&[], &WorkloadName::ALL, 3).is_empty());
        assert!(schedule(&[NetPath::Vxlan], &WorkloadName::ALL, 0).is_empty());
    }

    #[test]
    fn names_round_trip_and_match_clap() {
        use clap::ValueEnum as _;
        for p in NetPath::ALL {
            assert_eq!(NetPath::from_name(p.name()), Some(p));
            let clap_name = p.to_possible_value().map(|v| v.get_name().to_owned());
            assert_eq!(clap_name.as_deref(), Some(p.name()));
        }
        for w in WorkloadName::ALL {
            assert_eq!(WorkloadName::from_name(w.name()), Some(w));
            let clap_name = w.to_possible_value().map(|v| v.get_name().to_owned());
            assert_eq!(clap_name.as_deref(), Some(w.name()));
        }
        for m in Metric::ALL {
            assert_eq!(Metric::from_key(m.key()), Some(m));
        }
    }

    #[test]
    fn fast_datapath_is_selected_by_default_after_the_baseline() {
        assert_eq!(NetPath::Fastdp.availability(), Ok(()));
        assert_eq!(NetPath::default_set(), NetPath::ALL.to_vec());
        assert_eq!(NetPath::default_set()[0], NetPath::BASELINE);
        assert_eq!(NetPath::Fastdp.pod_mtu(), Some(1438));
        assert_eq!(NetPath::Fastdp.kind(), PathKind::Router);
    }

    #[test]
    fn sleeve_paths_turn_the_fast_datapath_off_and_fastdp_keeps_it() {
        for p in NetPath::ALL {
            let args = p.router_args();
            let off = args.contains(&"--no-fastdp");
            match p.overlay() {
                Some("sleeve") => assert!(off, "{}: {args:?}", p.name()),
                Some("fastdp") => assert!(!off && !args.is_empty(), "{}: {args:?}", p.name()),
                Some(other) => panic!("{}: unknown overlay {other}", p.name()),
                None => {
                    assert!(args.is_empty(), "{}: {args:?}", p.name());
                    assert_ne!(p.kind(), PathKind::Router, "{}", p.name());
                }
            }
            assert_eq!(p.overlay().is_some(), p.kind() == PathKind::Router);
        }
        assert_eq!(NetPath::Fastdp.router_args(), ["--dataplane", "io-uring"]);
    }

    #[test]
    fn only_the_paced_round_trips_and_no_flood_are_paced() {
        for w in WorkloadName::ALL {
            let spec = w.spec();
            assert_eq!(
                spec.rate.is_some(),
                w == WorkloadName::RrPaced,
                "{}",
                w.name()
            );
            assert_eq!(
                w.metrics().contains(&Metric::LossFreePacketsPerSecond),
                w.is_udp(),
                "{}",
                w.name()
            );
        }
        assert_eq!(WorkloadName::RrPaced.spec().workload, load::Workload::Rr);
        assert_eq!(
            WorkloadName::from_name("rr-paced"),
            Some(WorkloadName::RrPaced)
        );
    }
}
