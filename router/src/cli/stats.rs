//! `weave-router stats`: a running router's performance, from two samples of `/stats`.
//!
//! The router only counts (cumulative totals and a monotonic timestamp); this client takes
//! two samples an interval apart and turns the difference into rates. [`rates`] and
//! [`render`] are pure; [`run`] does the sampling, the sleeping and the Ctrl-C handling.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::stats::{Stats, WorkerStats};
use crate::cli::{http, CliError};
use crate::config::DEFAULT_HTTP_ADDR;
use crate::mesh::rtt::RttSummary;

/// Flags of `weave-router stats`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatsArgs {
    /// Address of the router's HTTP API.
    #[arg(long, env = "WEAVE_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
    pub http_addr: SocketAddr,
    /// Keep refreshing in place until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    /// Print one JSON document per sample (rates and totals), one per line.
    #[arg(long)]
    pub json: bool,
    /// Seconds between the two samples a report is computed from.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_interval)]
    pub interval: Duration,
    /// Stop after this many reports (default: 1, or unlimited with --watch).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

/// Parses `--interval`: a positive number of seconds, fractions allowed.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
        return Err(format!(
            "'{s}' is out of range: more than 0, at most 86400 seconds"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// One report: rates over the interval between two samples, and the later sample's totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsReport {
    /// Seconds between the two samples (the router's clock).
    pub interval_s: f64,
    /// True when the router restarted between the samples: rates are then since its start.
    pub restarted: bool,
    /// Rates per worker.
    pub workers: Vec<WorkerRates>,
    /// Rates per peer.
    pub peers: Vec<PeerRates>,
    /// The later sample as the router sent it: cumulative counters.
    pub totals: Stats,
}

/// One worker's rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRates {
    /// The worker's index.
    pub worker: usize,
    /// Sleeve traffic received from peers.
    pub udp_in: Flow,
    /// Sleeve traffic sent to peers.
    pub udp_out: Flow,
    /// Frames read from the bridge (TAP).
    pub tap_in: Flow,
    /// Writes to the bridge (TAP); a coalesced super-frame counts once.
    pub tap_out: Flow,
    /// Datagrams per send call over the interval (`None` when nothing was sent).
    pub datagrams_per_send: Option<f64>,
    /// Datagrams per receive call over the interval (`None` when nothing arrived).
    pub datagrams_per_receive: Option<f64>,
    /// Drops by reason: rate over the interval and total since start.
    pub drops: BTreeMap<String, DropRate>,
}

/// Bits and packets per second one way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    /// Bits per second.
    pub bits_per_s: f64,
    /// Packets (frames, datagrams or writes) per second.
    pub packets_per_s: f64,
}

/// Drops of one reason.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DropRate {
    /// Drops per second over the interval.
    pub per_s: f64,
    /// Drops since the router started.
    pub total: u64,
}

/// One peer's rates and connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerRates {
    /// Its peer name.
    pub name: String,
    /// Its nickname.
    pub nickname: String,
    /// Connection state, if we hold a connection.
    pub state: Option<String>,
    /// Overlay in use (`sleeve`, ...).
    pub overlay: Option<String>,
    /// The connection's MTU.
    pub mtu: Option<u64>,
    /// Frames received from it (Ethernet frame bytes).
    pub rx: Flow,
    /// Frames sent to it.
    pub tx: Flow,
    /// Round-trip percentiles timed by the sleeve's probes.
    pub rtt: Option<RttSummary>,
}

/// Rates between two samples of one router.
///
/// A different `instance` or a clock that went backwards means the router restarted: the
/// later sample's counters are then counts since its start, over its uptime. A single
/// counter that went down (it cannot, short of a restart) counts its current value over
/// the interval, so no rate is ever negative.
pub fn rates(prev: &Stats, cur: &Stats) -> StatsReport {
    let restarted = cur.instance != prev.instance || cur.monotonic_ns < prev.monotonic_ns;
    let elapsed_ns = if restarted {
        cur.monotonic_ns
    } else {
        cur.monotonic_ns - prev.monotonic_ns
    };
    let secs = elapsed_ns as f64 / 1e9;
    let d = |p: u64, c: u64| -> u64 {
        if restarted || c < p {
            c
        } else {
            c - p
        }
    };
    let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let flow = |bytes: u64, packets: u64| Flow {
        bits_per_s: per_s(bytes) * 8.0,
        packets_per_s: per_s(packets),
    };
    let ratio = |num: u64, den: u64| (den > 0).then(|| num as f64 / den as f64);

    let no_workers = Vec::new();
    let prev_workers = prev
        .dataplane
        .as_ref()
        .map_or(&no_workers, |dp| &dp.workers);
    let zero = WorkerStats::default();
    let workers = cur
        .dataplane
        .iter()
        .flat_map(|dp| &dp.workers)
        .map(|w| {
            let p = prev_workers
                .iter()
                .find(|p| p.worker == w.worker)
                .unwrap_or(&zero);
            let udp_tx = d(p.udp_tx_datagrams, w.udp_tx_datagrams);
            let udp_rx = d(p.udp_rx_datagrams, w.udp_rx_datagrams);
            WorkerRates {
                worker: w.worker,
                udp_in: flow(d(p.udp_rx_bytes, w.udp_rx_bytes), udp_rx),
                udp_out: flow(d(p.udp_tx_bytes, w.udp_tx_bytes), udp_tx),
                tap_in: flow(
                    d(p.tap_rx_bytes, w.tap_rx_bytes),
                    d(p.tap_rx_frames, w.tap_rx_frames),
                ),
                tap_out: flow(
                    d(p.tap_tx_bytes, w.tap_tx_bytes),
                    d(p.tap_tx_writes, w.tap_tx_writes),
                ),
                datagrams_per_send: ratio(udp_tx, d(p.udp_tx_calls, w.udp_tx_calls)),
                datagrams_per_receive: ratio(udp_rx, d(p.udp_rx_calls, w.udp_rx_calls)),
                drops: w
                    .drops
                    .iter()
                    .map(|(reason, total)| {
                        let before = p.drops.get(reason).copied().unwrap_or(0);
                        let rate = DropRate {
                            per_s: per_s(d(before, *total)),
                            total: *total,
                        };
                        (reason.clone(), rate)
                    })
                    .collect(),
            }
        })
        .collect();

    let peers = cur
        .peers
        .iter()
        .map(|c| {
            let p = prev
                .peers
                .iter()
                .find(|p| p.name == c.name)
                .map(|p| p.traffic)
                .unwrap_or_default();
            let t = c.traffic;
            PeerRates {
                name: c.name.clone(),
                nickname: c.nickname.clone(),
                state: c.state.clone(),
                overlay: c.overlay.clone(),
                mtu: c.mtu,
                rx: flow(d(p.rx_bytes, t.rx_bytes), d(p.rx_frames, t.rx_frames)),
                tx: flow(d(p.tx_bytes, t.tx_bytes), d(p.tx_frames, t.tx_frames)),
                rtt: c.rtt,
            }
        })
        .collect();

    StatsReport {
        interval_s: secs,
        restarted,
        workers,
        peers,
        totals: cur.clone(),
    }
}

/// The text screen of one report.
pub fn render(r: &StatsReport) -> String {
    let t = &r.totals;
    let mut s = String::new();
    let backend = match &t.dataplane {
        Some(dp) => format!("{} data plane, {} workers", dp.backend, dp.workers.len()),
        None => "no data plane".to_string(),
    };
    s.push_str(&format!(
        "weave-router {}({})  {backend}  rates over {:.2}s{}\n\n",
        t.name,
        t.nickname,
        r.interval_s,
        if r.restarted {
            " (router restarted: since its start)"
        } else {
            ""
        }
    ));

    s.push_str(&format!(
        "{:<26} {:<8} {:>5}  {:<12} {:>12} {:>9} {:>12} {:>9}  {}\n",
        "PEER",
        "OVERLAY",
        "MTU",
        "STATE",
        "IN bit/s",
        "IN pkt/s",
        "OUT bit/s",
        "OUT pkt/s",
        "RTT ms p50/p90/p99/max"
    ));
    if r.peers.is_empty() {
        s.push_str("(no peers)\n");
    }
    for p in &r.peers {
        let rtt = match &p.rtt {
            Some(x) => format!(
                "{}/{}/{}/{} ({} samples, {} lost)",
                ms(x.p50_us),
                ms(x.p90_us),
                ms(x.p99_us),
                ms(x.max_us),
                x.samples,
                x.lost
            ),
            None => "-".to_string(),
        };
        s.push_str(&format!(
            "{:<26} {:<8} {:>5}  {:<12} {:>12} {:>9} {:>12} {:>9}  {rtt}\n",
            format!("{}({})", p.name, p.nickname),
            p.overlay.as_deref().unwrap_or("-"),
            p.mtu.map_or("-".to_string(), |m| m.to_string()),
            p.state.as_deref().unwrap_or("-"),
            bits(p.rx.bits_per_s),
            count(p.rx.packets_per_s),
            bits(p.tx.bits_per_s),
            count(p.tx.packets_per_s),
        ));
    }

    if t.dataplane.is_some() {
        s.push('\n');
        s.push_str(&format!(
            "{:<6} {:>12} {:>9} {:>12} {:>9} {:>12} {:>9} {:>12} {:>9} {:>10} {:>10}\n",
            "WORKER",
            "UDP IN b/s",
            "pkt/s",
            "UDP OUT b/s",
            "pkt/s",
            "TAP IN b/s",
            "pkt/s",
            "TAP OUT b/s",
            "writes/s",
            "DGRAM/SEND",
            "DGRAM/RECV"
        ));
        for w in &r.workers {
            s.push_str(&format!(
                "{:<6} {:>12} {:>9} {:>12} {:>9} {:>12} {:>9} {:>12} {:>9} {:>10} {:>10}\n",
                w.worker,
                bits(w.udp_in.bits_per_s),
                count(w.udp_in.packets_per_s),
                bits(w.udp_out.bits_per_s),
                count(w.udp_out.packets_per_s),
                bits(w.tap_in.bits_per_s),
                count(w.tap_in.packets_per_s),
                bits(w.tap_out.bits_per_s),
                count(w.tap_out.packets_per_s),
                factor(w.datagrams_per_send),
                factor(w.datagrams_per_receive),
            ));
        }
        let drops: Vec<(usize, &String, &DropRate)> = r
            .workers
            .iter()
            .flat_map(|w| w.drops.iter().map(move |(k, v)| (w.worker, k, v)))
            .filter(|(_, _, v)| v.total > 0)
            .collect();
        s.push('\n');
        if drops.is_empty() {
            s.push_str("DROPS  none\n");
        } else {
            s.push_str(&format!(
                "{:<6} {:<6} {:<20} {:>10} {:>14}\n",
                "DROPS", "WORKER", "REASON", "per s", "total"
            ));
            for (worker, reason, rate) in drops {
                s.push_str(&format!(
                    "{:<6} {:<6} {:<20} {:>10} {:>14}\n",
                    "",
                    worker,
                    reason,
                    count(rate.per_s),
                    rate.total
                ));
            }
        }
    }
    s.push_str(
        "\nRTT: a small sleeve probe sent each second, answered by the peer over TCP \
         (PMTUVerified); last 300 samples.\n",
    );
    s
}

/// `weave-router stats`: samples `/stats` and prints reports until `--count` or Ctrl-C.
pub fn run(args: &StatsArgs, out: &mut impl Write) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Output)?;
    runtime.block_on(sample_loop(args, out))
}

/// Cursor home and clear screen: each `--watch` refresh draws over the last.
const CLEAR: &str = "\x1b[H\x1b[2J";

async fn sample_loop(args: &StatsArgs, out: &mut impl Write) -> Result<(), CliError> {
    // Installed once, before the first sample, so a Ctrl-C at any moment is seen at the
    // next wait and ends the loop with the screen as it was.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(CliError::Output)?;
    let limit = args.count.or(if args.watch { None } else { Some(1) });
    let addr = args.http_addr;
    let mut prev = match fetch_async(addr).await {
        // Not watching: an unreachable router is an error, said the way `status` says it.
        Err(e) if !args.watch => return Err(e),
        first => first,
    };
    let mut shown = 0u64;
    while limit.is_none_or(|n| shown < n) {
        tokio::select! {
            _ = sigint.recv() => break,
            () = tokio::time::sleep(args.interval) => {}
        }
        let cur = fetch_async(addr).await;
        match (&prev, &cur) {
            (Ok(p), Ok(c)) => {
                let report = rates(p, c);
                if args.json {
                    let line = serde_json::to_string(&report)
                        .map_err(|e| CliError::BadJson(e.to_string()))?;
                    writeln!(out, "{line}")?;
                } else {
                    if args.watch {
                        out.write_all(CLEAR.as_bytes())?;
                    }
                    out.write_all(render(&report).as_bytes())?;
                }
                out.flush()?;
                shown += 1;
            }
            (_, Err(e)) if args.watch => {
                // Watching through a router restart: say so and keep trying.
                if !args.json {
                    out.write_all(CLEAR.as_bytes())?;
                }
                eprintln!("weave-router stats: {e}; retrying");
            }
            (_, Err(_)) => return cur.map(drop),
            (Err(_), Ok(_)) => {}
        }
        prev = cur;
    }
    Ok(())
}

async fn fetch_async(addr: SocketAddr) -> Result<Stats, CliError> {
    tokio::task::spawn_blocking(move || fetch(addr))
        .await
        .map_err(|e| CliError::Output(std::io::Error::other(e)))?
}

/// One `/stats` sample.
pub fn fetch(addr: SocketAddr) -> Result<Stats, CliError> {
    let resp = http::get(addr, "/stats", "application/json")?;
    serde_json::from_slice(&resp.body).map_err(|e| CliError::BadJson(e.to_string()))
}

fn ms(us: u32) -> String {
    let v = f64::from(us) / 1000.0;
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// Bits per second with an SI prefix: `0`, `850`, `12.3k`, `1.25G`.
fn bits(v: f64) -> String {
    scaled(v)
}

/// A rate of things per second with an SI prefix.
fn count(v: f64) -> String {
    scaled(v)
}

fn scaled(v: f64) -> String {
    if v < 0.5 {
        return "0".to_string();
    }
    let (n, unit) = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]
        .into_iter()
        .find(|(scale, _)| v >= *scale)
        .map_or((v, ""), |(scale, unit)| (v / scale, unit));
    if unit.is_empty() {
        format!("{n:.0}")
    } else if n < 10.0 {
        format!("{n:.2}{unit}")
    } else if n < 100.0 {
        format!("{n:.1}{unit}")
    } else {
        format!("{n:.0}{unit}")
    }
}

fn factor(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |f| format!("{f:.1}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::stats::{DataplaneStats, PeerStats, TrafficStats};

    fn sample(at_s: u64, instance: u64, udp_tx: u64, calls: u64, peer_tx_bytes: u64) -> Stats {
        Stats {
            version: "0".into(),
            name: "aa:00:00:00:00:01".into(),
            nickname: "host1".into(),
            instance,
            monotonic_ns: at_s * 1_000_000_000,
            dataplane: Some(DataplaneStats {
                backend: "io_uring".into(),
                workers: vec![WorkerStats {
                    worker: 0,
                    udp_tx_datagrams: udp_tx,
                    udp_tx_bytes: udp_tx * 1000,
                    udp_tx_calls: calls,
                    drops: [("no_route".to_string(), calls)].into_iter().collect(),
                    ..WorkerStats::default()
                }],
            }),
            peers: vec![PeerStats {
                name: "aa:00:00:00:00:02".into(),
                nickname: "host2".into(),
                address: Some("10.0.0.2:6783".into()),
                outbound: true,
                state: Some("established".into()),
                overlay: Some("sleeve".into()),
                mtu: Some(1438),
                encrypted: false,
                traffic: TrafficStats {
                    tx_frames: peer_tx_bytes / 100,
                    tx_bytes: peer_tx_bytes,
                    ..TrafficStats::default()
                },
                rtt: Some(RttSummary {
                    samples: 10,
                    last_us: 120,
                    p50_us: 110,
                    p90_us: 150,
                    p99_us: 900,
                    max_us: 12_345,
                    lost: 0,
                }),
            }],
        }
    }

    #[test]
    fn rates_are_deltas_over_the_router_clock() {
        let r = rates(
            &sample(10, 7, 100, 10, 1000),
            &sample(12, 7, 740, 20, 21_000),
        );
        assert!(!r.restarted);
        assert_eq!(r.interval_s, 2.0);
        let w = &r.workers[0];
        assert_eq!(w.udp_out.packets_per_s, 320.0);
        assert_eq!(w.udp_out.bits_per_s, 320.0 * 1000.0 * 8.0);
        assert_eq!(w.datagrams_per_send, Some(64.0));
        assert_eq!(w.datagrams_per_receive, None);
        assert_eq!(
            w.drops["no_route"],
            DropRate {
                per_s: 5.0,
                total: 20
            }
        );
        let p = &r.peers[0];
        assert_eq!(p.tx.bits_per_s, 20_000.0 * 8.0 / 2.0);
        assert_eq!(p.tx.packets_per_s, 100.0);
        assert_eq!(p.rx, Flow::default());
        assert_eq!(r.totals.peers[0].traffic.tx_bytes, 21_000);
    }

    #[test]
    fn a_restart_counts_from_zero_and_never_goes_negative() {
        // A new instance with smaller counters: rates since its start (3 s of uptime).
        let r = rates(
            &sample(100, 7, 5000, 500, 90_000),
            &sample(3, 8, 30, 3, 600),
        );
        assert!(r.restarted);
        assert_eq!(r.interval_s, 3.0);
        assert_eq!(r.workers[0].udp_out.packets_per_s, 10.0);
        assert_eq!(r.peers[0].tx.bits_per_s, 600.0 * 8.0 / 3.0);
        // Same instance but one counter went down: that counter counts from zero.
        let r = rates(&sample(1, 7, 50, 10, 5000), &sample(2, 7, 60, 11, 100));
        assert!(!r.restarted);
        assert_eq!(r.peers[0].tx.bits_per_s, 800.0);
        assert!(r.workers[0].udp_out.packets_per_s >= 0.0);
    }

    #[test]
    fn a_peer_or_worker_new_in_the_later_sample_counts_from_zero() {
        let mut prev = sample(1, 7, 0, 0, 0);
        prev.peers.clear();
        prev.dataplane = None;
        let r = rates(&prev, &sample(2, 7, 10, 5, 300));
        assert_eq!(r.peers[0].tx.bits_per_s, 2400.0);
        assert_eq!(r.workers[0].datagrams_per_send, Some(2.0));
    }

    #[test]
    fn render_shows_peers_workers_batching_drops_and_rtt() {
        let r = rates(
            &sample(10, 7, 0, 0, 0),
            &sample(11, 7, 64_000, 1000, 125_000_000),
        );
        let text = render(&r);
        let expected_peer = "aa:00:00:00:00:02(host2)   sleeve    1438  established             0         0        1.00G     1.25M  0.11/0.15/0.90/12.3 (10 samples, 0 lost)";
        assert!(text.contains(expected_peer), "{text}");
        assert!(text.starts_with(
            "weave-router aa:00:00:00:00:01(host1)  io_uring data plane, 1 workers  rates over 1.00s\n"
        ));
        let worker_line = text
            .lines()
            .find(|l| l.starts_with("0 "))
            .expect("worker line");
        assert!(worker_line.contains("512M"), "{worker_line}");
        assert!(worker_line.contains("64.0k"), "{worker_line}");
        assert!(
            worker_line.trim_end().ends_with("64.0          -"),
            "{worker_line}"
        );
        assert!(text.contains("no_route"), "{text}");
        assert!(text.contains("PMTUVerified"));
    }

    #[test]
    fn scaled_numbers_keep_three_digits() {
        assert_eq!(scaled(0.0), "0");
        assert_eq!(scaled(999.0), "999");
        assert_eq!(scaled(1234.0), "1.23k");
        assert_eq!(scaled(56_780.0), "56.8k");
        assert_eq!(scaled(9.6e9), "9.60G");
    }

    #[test]
    fn interval_must_be_positive_seconds() {
        assert_eq!(parse_interval("0.25"), Ok(Duration::from_millis(250)));
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("-1").is_err());
        assert!(parse_interval("soon").is_err());
        assert!(parse_interval("NaN").is_err());
    }
}
