//! The `/stats` document: raw cumulative counters of the data plane and of each peer, with a
//! monotonic timestamp, for `weave-router stats` and scripts to turn into rates.
//!
//! Everything is a running total since the router started (`instance` changes when it
//! restarts); rates are the client's business ([`crate::cli::stats`]). Building the document
//! is pure: the handler passes in the mesh snapshot, the workers' counters as read, the RTT
//! summaries and the clock reading.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::mesh::rtt::RttSummary;
use crate::mesh::status::{
    DataplaneStatus, LocalConnectionStatus, PeerTrafficStatus, RouterStatus, WorkerStatus,
};

/// The whole `/stats` document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// The router's version string.
    pub version: String,
    /// Our peer name.
    pub name: String,
    /// Our nickname.
    pub nickname: String,
    /// Our process UID in the mesh: a new value means the router restarted and its
    /// counters began again from zero.
    pub instance: u64,
    /// Nanoseconds since the router started, from a monotonic clock: the time base of rates.
    pub monotonic_ns: u64,
    /// The data plane, when one runs.
    pub dataplane: Option<DataplaneStats>,
    /// Directly connected peers (and any peer the data plane counted traffic for).
    pub peers: Vec<PeerStats>,
}

/// The data plane's backend and its workers' counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataplaneStats {
    /// `epoll` or `io_uring`.
    pub backend: String,
    /// One entry per worker, in worker order.
    pub workers: Vec<WorkerStats>,
}

/// One worker's counters since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStats {
    /// The worker's index.
    pub worker: usize,
    /// Frames read from the TAP (after GSO split).
    pub tap_rx_frames: u64,
    /// Bytes read from the TAP.
    pub tap_rx_bytes: u64,
    /// Writes to the TAP (a coalesced super-frame counts once).
    pub tap_tx_writes: u64,
    /// Bytes written to the TAP.
    pub tap_tx_bytes: u64,
    /// Sleeve datagrams received.
    pub udp_rx_datagrams: u64,
    /// Bytes of those datagrams.
    pub udp_rx_bytes: u64,
    /// Receive calls (or completions) that delivered datagrams.
    pub udp_rx_calls: u64,
    /// Sleeve datagrams sent.
    pub udp_tx_datagrams: u64,
    /// Bytes of those datagrams.
    pub udp_tx_bytes: u64,
    /// Send calls (or submissions).
    pub udp_tx_calls: u64,
    /// Drops by reason (every reason listed, zero or not).
    pub drops: BTreeMap<String, u64>,
    /// The backend it runs (`io_uring`, or `epoll`, also after falling back).
    #[serde(default)]
    pub backend: String,
    /// `running`, `restarting` or `failed`.
    #[serde(default)]
    pub state: String,
    /// Times it was restarted after a failure.
    #[serde(default)]
    pub restarts: u64,
    /// Datagrams dropped before the kernel took them (full send buffer, too many in flight).
    #[serde(default)]
    pub send_dropped: u64,
    /// Segmented sends the kernel refused, sent again one datagram at a time.
    #[serde(default)]
    pub gso_fallbacks: u64,
    /// Special frames dropped because the control task's queue was full.
    #[serde(default)]
    pub control_dropped: u64,
    /// Times a stopped input was armed again after a wait.
    #[serde(default)]
    pub rearms: u64,
    /// Transient io_uring errors retried in place.
    #[serde(default)]
    pub ring_retries: u64,
    /// Microseconds spent busy-polling instead of sleeping.
    #[serde(default)]
    pub busy_poll_micros: u64,
    /// Busy-polls that found work (thread wake-ups saved).
    #[serde(default)]
    pub busy_poll_hits: u64,
}

/// One peer: its connection and the traffic exchanged with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStats {
    /// Its peer name.
    pub name: String,
    /// Its nickname (empty when unknown).
    pub nickname: String,
    /// Remote TCP address of our connection to it, if we hold one.
    pub address: Option<String>,
    /// Whether we dialled the connection.
    pub outbound: bool,
    /// Connection state (`established`, `pending`), if we hold a connection.
    pub state: Option<String>,
    /// The overlay carrying its traffic (`sleeve`, a fast datapath name), once chosen.
    pub overlay: Option<String>,
    /// The connection's MTU (largest pod frame payload), once known.
    pub mtu: Option<u64>,
    /// Whether the connection is encrypted.
    pub encrypted: bool,
    /// Frames and bytes each way, summed over the workers.
    pub traffic: TrafficStats,
    /// Round-trip times to the peer (sleeve probes answered over TCP), once one was timed.
    pub rtt: Option<RttSummary>,
}

/// Frames and bytes exchanged with one peer (Ethernet frames, sleeve headers excluded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficStats {
    /// Frames received from it.
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Frames sent to it.
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
}

/// What `/stats` is built from.
#[derive(Debug, Clone, Copy)]
pub struct StatsInput<'a> {
    /// The router's version.
    pub version: &'a str,
    /// The mesh snapshot.
    pub router: &'a RouterStatus,
    /// The workers' counters as just read, when a data plane runs.
    pub dataplane: Option<&'a DataplaneStatus>,
    /// RTT summaries by remote TCP address of the connection.
    pub rtt: &'a BTreeMap<String, RttSummary>,
    /// Nanoseconds since the router started.
    pub monotonic_ns: u64,
}

/// Builds the `/stats` document.
pub fn build(input: StatsInput<'_>) -> Stats {
    let r = input.router;
    let nickname_of = |name: &str| {
        r.peers
            .iter()
            .find(|p| p.name.to_string() == name)
            .map(|p| p.nickname.clone())
            .unwrap_or_default()
    };
    let ourself = r.peers.iter().find(|p| p.name == r.name);
    let instance = ourself.map(|p| p.uid).unwrap_or_default();
    // Our own gossiped connections name the peer behind each local connection's address.
    let named: Vec<(String, &LocalConnectionStatus)> = ourself
        .map(|me| {
            me.connections
                .iter()
                .filter_map(|pc| {
                    let local = r.connections.iter().find(|c| c.address == pc.address)?;
                    Some((pc.name.to_string(), local))
                })
                .collect()
        })
        .unwrap_or_default();
    let traffic = input.dataplane.map(peer_traffic).unwrap_or_default();

    let mut names: BTreeSet<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
    names.extend(traffic.keys().map(String::as_str));
    let peers = names
        .into_iter()
        .map(|name| {
            let conn = named.iter().find(|(n, _)| n == name).map(|(_, c)| *c);
            PeerStats {
                name: name.to_string(),
                nickname: nickname_of(name),
                address: conn.map(|c| c.address.clone()),
                outbound: conn.is_some_and(|c| c.outbound),
                state: conn.map(|c| c.state.clone()),
                overlay: conn.and_then(|c| attr_str(c, "name")),
                mtu: conn.and_then(|c| c.attrs.get("mtu")?.as_u64()),
                encrypted: conn.is_some_and(|c| {
                    matches!(
                        c.attrs.get("encrypted"),
                        Some(serde_json::Value::Bool(true))
                    )
                }),
                traffic: traffic.get(name).copied().unwrap_or_default(),
                rtt: conn.and_then(|c| input.rtt.get(&c.address).copied()),
            }
        })
        .collect();

    Stats {
        version: input.version.to_string(),
        name: r.name.to_string(),
        nickname: r.nickname.clone(),
        instance,
        monotonic_ns: input.monotonic_ns,
        dataplane: input.dataplane.map(|d| DataplaneStats {
            backend: d.backend.clone(),
            workers: d
                .workers
                .iter()
                .enumerate()
                .map(|(i, w)| worker_stats(i, w))
                .collect(),
        }),
        peers,
    }
}

fn attr_str(c: &LocalConnectionStatus, key: &str) -> Option<String> {
    c.attrs.get(key)?.as_str().map(str::to_string)
}

fn worker_stats(worker: usize, w: &WorkerStatus) -> WorkerStats {
    WorkerStats {
        worker,
        tap_rx_frames: w.tap_rx_frames,
        tap_rx_bytes: w.tap_rx_bytes,
        tap_tx_writes: w.tap_tx_writes,
        tap_tx_bytes: w.tap_tx_bytes,
        udp_rx_datagrams: w.udp_rx_datagrams,
        udp_rx_bytes: w.udp_rx_bytes,
        udp_rx_calls: w.udp_rx_calls,
        udp_tx_datagrams: w.udp_tx_datagrams,
        udp_tx_bytes: w.udp_tx_bytes,
        udp_tx_calls: w.udp_tx_calls,
        drops: w.drops.clone(),
        backend: w.io.backend.clone(),
        state: w.io.state.clone(),
        restarts: w.io.restarts,
        send_dropped: w.io.send_dropped,
        gso_fallbacks: w.io.gso_fallbacks,
        control_dropped: w.io.control_dropped,
        rearms: w.io.rearms,
        ring_retries: w.io.ring_retries,
        busy_poll_micros: w.io.busy_poll_micros,
        busy_poll_hits: w.io.busy_poll_hits,
    }
}

/// Per-peer traffic summed over the workers (a peer's datagrams may reach several).
fn peer_traffic(d: &DataplaneStatus) -> BTreeMap<String, TrafficStats> {
    let mut sum: BTreeMap<String, TrafficStats> = BTreeMap::new();
    for w in &d.workers {
        for (name, t) in &w.peers {
            let PeerTrafficStatus {
                rx_frames,
                rx_bytes,
                tx_frames,
                tx_bytes,
            } = t;
            let s = sum.entry(name.clone()).or_default();
            s.rx_frames += rx_frames;
            s.rx_bytes += rx_bytes;
            s.tx_frames += tx_frames;
            s.tx_bytes += tx_bytes;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// host2 of the captured Weave Net mesh: connected to host1 (outbound) and host3.
    fn host2() -> RouterStatus {
        let text = include_str!("../../testdata/report-host2.json");
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        serde_json::from_value(v["Router"].clone()).unwrap()
    }

    fn worker(peers: &[(&str, u64)]) -> WorkerStatus {
        WorkerStatus {
            tap_rx_frames: 1,
            tap_rx_bytes: 2,
            tap_tx_writes: 3,
            tap_tx_bytes: 4,
            udp_rx_datagrams: 5,
            udp_rx_bytes: 6,
            udp_rx_calls: 7,
            udp_tx_datagrams: 8,
            udp_tx_bytes: 9,
            udp_tx_calls: 10,
            drops: [("no_route".to_string(), 11)].into_iter().collect(),
            peers: peers
                .iter()
                .map(|(n, v)| {
                    let t = PeerTrafficStatus {
                        rx_frames: *v,
                        rx_bytes: v * 100,
                        tx_frames: v * 2,
                        tx_bytes: v * 200,
                    };
                    (n.to_string(), t)
                })
                .collect(),
            io: crate::mesh::status::WorkerIoStatus {
                backend: "epoll".into(),
                state: "running".into(),
                restarts: 12,
                send_dropped: 13,
                gso_fallbacks: 14,
                control_dropped: 15,
                rearms: 16,
                ring_retries: 17,
                busy_poll_micros: 18,
                busy_poll_hits: 19,
            },
        }
    }

    #[test]
    fn peers_join_connections_traffic_and_rtt() {
        let router = host2();
        let dp = DataplaneStatus {
            backend: "io_uring".into(),
            workers: vec![
                worker(&[("aa:00:00:00:00:01", 3)]),
                worker(&[("aa:00:00:00:00:01", 4), ("aa:00:00:00:00:09", 1)]),
            ],
        };
        let rtt_summary = RttSummary {
            samples: 3,
            last_us: 120,
            p50_us: 110,
            p90_us: 130,
            p99_us: 130,
            max_us: 130,
            lost: 0,
        };
        let rtt = [("192.168.77.1:6783".to_string(), rtt_summary)]
            .into_iter()
            .collect();
        let s = build(StatsInput {
            version: "1.2.3",
            router: &router,
            dataplane: Some(&dp),
            rtt: &rtt,
            monotonic_ns: 42,
        });
        assert_eq!(s.name, "aa:00:00:00:00:02");
        assert_eq!(s.monotonic_ns, 42);
        assert_eq!(s.instance, router.peers[0].uid);
        let d = s.dataplane.as_ref().unwrap();
        assert_eq!(d.backend, "io_uring");
        assert_eq!(d.workers[1].worker, 1);
        assert_eq!(d.workers[1].udp_tx_calls, 10);
        assert_eq!(d.workers[0].drops["no_route"], 11);
        let w = &d.workers[1];
        assert_eq!(
            (w.backend.as_str(), w.state.as_str(), w.restarts),
            ("epoll", "running", 12)
        );
        assert_eq!(
            (w.send_dropped, w.gso_fallbacks, w.control_dropped),
            (13, 14, 15)
        );
        assert_eq!((w.rearms, w.ring_retries), (16, 17));
        assert_eq!((w.busy_poll_micros, w.busy_poll_hits), (18, 19));

        let names: Vec<&str> = s.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "aa:00:00:00:00:01",
                "aa:00:00:00:00:03",
                "aa:00:00:00:00:09"
            ]
        );
        let host1 = &s.peers[0];
        assert_eq!(host1.nickname, "host1");
        assert_eq!(host1.address.as_deref(), Some("192.168.77.1:6783"));
        assert!(host1.outbound);
        assert_eq!(host1.state.as_deref(), Some("established"));
        assert_eq!(host1.overlay.as_deref(), Some("sleeve"));
        assert_eq!(host1.mtu, Some(1438));
        assert_eq!(
            host1.traffic,
            TrafficStats {
                rx_frames: 7,
                rx_bytes: 700,
                tx_frames: 14,
                tx_bytes: 1400
            }
        );
        assert_eq!(host1.rtt, Some(rtt_summary));
        // host3 dialled us: no traffic counted yet, no RTT sampled.
        assert!(!s.peers[1].outbound);
        assert_eq!(s.peers[1].traffic, TrafficStats::default());
        assert_eq!(s.peers[1].rtt, None);
        // Traffic for a peer we hold no connection to still shows.
        assert_eq!(s.peers[2].state, None);
        assert_eq!(s.peers[2].traffic.rx_frames, 1);
    }

    #[test]
    fn no_dataplane_still_lists_connections() {
        let router = host2();
        let s = build(StatsInput {
            version: "1",
            router: &router,
            dataplane: None,
            rtt: &BTreeMap::new(),
            monotonic_ns: 0,
        });
        assert_eq!(s.dataplane, None);
        assert_eq!(s.peers.len(), 2);
        let back: Stats = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
