//! The `/metrics` page, in the OpenMetrics text format that Prometheus scrapes, encoded by
//! the `prometheus-client` crate.
//!
//! Weave Net's own series keep their names and labels (`weave_connections`,
//! `weave_connection_terminations_total`) so existing dashboards and alerts keep working;
//! the data plane's series are named `weave_router_*`. Nothing is registered ahead of time:
//! each scrape builds a registry around one [`Scrape`] (the mesh snapshot and the `/stats`
//! document, whose counters were just loaded from the workers' atomics), so the workers
//! never see a lock or a metric handle.

use std::collections::BTreeSet;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::api::stats::{PeerStats, Stats, WorkerStats};
use crate::api::text::{ipam_owners, IpamOwner, CONNECTION_STATES};
use crate::ipam::allocator::IpamStatus;
use crate::mesh::rtt::RttSummary;
use crate::mesh::status::{LocalConnectionStatus, RouterStatus};

/// The content type of the page (OpenMetrics 1.0 text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The overlay every connection may use, so its series exist even before a connection does.
const BASE_OVERLAY: &str = "sleeve";

/// Everything one scrape shows.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The mesh snapshot (connections and terminations).
    pub router: RouterStatus,
    /// The data-plane and per-peer counters.
    pub stats: Stats,
    /// Address management, when it runs.
    pub ipam: Option<IpamStatus>,
}

/// The `/metrics` page for one scrape.
pub fn render_metrics(scrape: Scrape) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    // Writing to a String fails only if a collector fails, and ours only write.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        out = format!("# cannot encode metrics: {e}\n# EOF\n");
    }
    out
}

/// A label set given as name/value pairs, in the order they are printed.
type Labels<'a> = Vec<(&'static str, &'a str)>;

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_connections(&mut encoder, &self.router)?;
        for (name, help, value) in [
            (
                "weave_connection_terminations",
                "Number of peer-to-peer connections terminated.",
                self.router.termination_count,
            ),
            (
                "weave_router_fastdp_moves",
                "Times a peer's unicast moved between the fast datapath and the sleeve.",
                self.router.fastdp_moves,
            ),
            (
                "weave_router_broadcast_repeats",
                "Broadcasts dropped because this router had already delivered or sent them.",
                self.router.broadcast_repeats,
            ),
        ] {
            let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(m)?;
        }
        if let Some(dp) = &self.stats.dataplane {
            let info = Info::new(vec![("backend", dp.backend.as_str())]);
            let m = encoder.encode_descriptor(
                "weave_router_dataplane",
                "The data plane's I/O backend.",
                None,
                info.metric_type(),
            )?;
            info.encode(m)?;
            gauges(
                &mut encoder,
                "weave_router_dataplane_workers",
                "Number of data-plane workers.",
                &[(Labels::new(), dp.workers.len() as u64)],
            )?;
            encode_workers(&mut encoder, &dp.workers)?;
        }
        if let Some(ipam) = &self.ipam {
            encode_ipam(&mut encoder, ipam)?;
        }
        encode_peers(&mut encoder, &self.stats.peers)
    }
}

/// Weave's IPAM gauges.
fn encode_ipam(encoder: &mut DescriptorEncoder, s: &IpamStatus) -> Result<(), std::fmt::Error> {
    gauges(
        encoder,
        "weave_ips",
        "Number of IP addresses.",
        &[(vec![("state", "local-used")], s.active_ips)],
    )?;
    gauges(
        encoder,
        "weave_max_ips",
        "Size of IP address space used by allocator.",
        &[(Labels::new(), s.range_num_ips)],
    )?;
    let owners = ipam_owners(s);
    let unreachable: Vec<&IpamOwner> = owners.iter().filter(|o| !o.reachable).collect();
    gauges(
        encoder,
        "weave_ipam_unreachable_count",
        "Number of unreachable peers.",
        &[(Labels::new(), unreachable.len() as u64)],
    )?;
    let ips: u64 = unreachable.iter().map(|o| o.ips).sum();
    let percentage = if s.range_num_ips == 0 {
        0.0
    } else {
        ips as f64 * 100.0 / s.range_num_ips as f64
    };
    let m = encoder.encode_descriptor(
        "weave_ipam_unreachable_percentage",
        "Percentage of IP addresses owned by unreachable peers.",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(percentage).encode(m)?;
    gauges(
        encoder,
        "weave_ipam_pending_allocates",
        "Number of pending allocates.",
        &[(Labels::new(), s.pending_allocates.len() as u64)],
    )?;
    gauges(
        encoder,
        "weave_ipam_pending_claims",
        "Number of pending claims.",
        &[(Labels::new(), s.pending_claims.len() as u64)],
    )
}

/// `weave_connections` with Weave's labels (`state`, `type` = overlay name or `unknown`,
/// `encryption` = `yes` or empty); every state gets a series for every overlay seen plus
/// sleeve, so `sum(weave_connections{state="connecting"})` is 0 rather than absent.
fn encode_connections(
    encoder: &mut DescriptorEncoder,
    r: &RouterStatus,
) -> Result<(), std::fmt::Error> {
    let mut types: BTreeSet<String> = r.connections.iter().map(overlay_type).collect();
    types.insert(BASE_OVERLAY.to_string());
    let mut series = Vec::new();
    for state in CONNECTION_STATES {
        for ty in &types {
            for encrypted in [false, true] {
                let n = r
                    .connections
                    .iter()
                    .filter(|c| c.state == state && overlay_type(c) == *ty)
                    .filter(|c| is_encrypted(c) == encrypted)
                    .count();
                let enc = if encrypted { "yes" } else { "" };
                let labels = vec![("encryption", enc), ("state", state), ("type", ty.as_str())];
                series.push((labels, n as u64));
            }
        }
    }
    gauges(
        encoder,
        "weave_connections",
        "Number of peer-to-peer connections.",
        &series,
    )
}

fn encode_workers(
    encoder: &mut DescriptorEncoder,
    workers: &[WorkerStats],
) -> Result<(), std::fmt::Error> {
    let ids: Vec<String> = workers.iter().map(|w| w.worker.to_string()).collect();
    type Field = fn(&WorkerStats) -> u64;
    let fields: [(&str, &str, Field); 18] = [
        (
            "weave_router_tap_rx_frames",
            "Frames read from the TAP, after GSO split.",
            |w| w.tap_rx_frames,
        ),
        (
            "weave_router_tap_rx_bytes",
            "Bytes read from the TAP.",
            |w| w.tap_rx_bytes,
        ),
        (
            "weave_router_tap_tx_writes",
            "Writes to the TAP (a coalesced super-frame counts once).",
            |w| w.tap_tx_writes,
        ),
        (
            "weave_router_tap_tx_bytes",
            "Bytes written to the TAP.",
            |w| w.tap_tx_bytes,
        ),
        (
            "weave_router_udp_rx_datagrams",
            "Sleeve datagrams received.",
            |w| w.udp_rx_datagrams,
        ),
        (
            "weave_router_udp_rx_bytes",
            "Bytes of sleeve datagrams received.",
            |w| w.udp_rx_bytes,
        ),
        (
            "weave_router_udp_rx_calls",
            "Receive calls or completions that delivered datagrams.",
            |w| w.udp_rx_calls,
        ),
        (
            "weave_router_udp_tx_datagrams",
            "Sleeve datagrams sent.",
            |w| w.udp_tx_datagrams,
        ),
        (
            "weave_router_udp_tx_bytes",
            "Bytes of sleeve datagrams sent.",
            |w| w.udp_tx_bytes,
        ),
        (
            "weave_router_udp_tx_calls",
            "Send calls or submissions (datagrams per call is the batching factor).",
            |w| w.udp_tx_calls,
        ),
        (
            "weave_router_udp_tx_dropped",
            "Sleeve datagrams dropped before the kernel took them: a full send buffer, \
             or more sends in flight than the worker allows.",
            |w| w.send_dropped,
        ),
        (
            "weave_router_gso_fallbacks",
            "Segmented (UDP GSO) sends the kernel refused, sent again one datagram at a time.",
            |w| w.gso_fallbacks,
        ),
        (
            "weave_router_control_dropped",
            "Special frames (heartbeats, probes) dropped because the control task's queue was full.",
            |w| w.control_dropped,
        ),
        (
            "weave_router_input_rearms",
            "Times a stopped input (TAP read, UDP receive) was armed again after a wait.",
            |w| w.rearms,
        ),
        (
            "weave_router_ring_retries",
            "Transient io_uring errors retried in place.",
            |w| w.ring_retries,
        ),
        (
            "weave_router_busy_poll_microseconds",
            "Microseconds a data-plane worker spent busy-polling for work instead of sleeping.",
            |w| w.busy_poll_micros,
        ),
        (
            "weave_router_busy_poll_hits",
            "Busy-polls that found work, each a thread wake-up saved.",
            |w| w.busy_poll_hits,
        ),
        (
            "weave_router_worker_restarts",
            "Times a data-plane worker was restarted after it failed.",
            |w| w.restarts,
        ),
    ];
    for (name, help, get) in fields {
        let series: Vec<(Labels, u64)> = workers
            .iter()
            .zip(&ids)
            .map(|(w, id)| (vec![("worker", id.as_str())], get(w)))
            .collect();
        counters(encoder, name, help, &series)?;
    }
    let drops: Vec<(Labels, u64)> = workers
        .iter()
        .zip(&ids)
        .flat_map(|(w, id)| {
            w.drops
                .iter()
                .map(move |(reason, n)| (vec![("worker", id.as_str()), ("reason", reason)], *n))
        })
        .collect();
    counters(
        encoder,
        "weave_router_drops",
        "Frames or datagrams the data plane dropped, by reason.",
        &drops,
    )?;
    let states: Vec<(Labels, u64)> = workers
        .iter()
        .zip(&ids)
        .flat_map(|(w, id)| {
            WORKER_STATES.into_iter().map(move |state| {
                let labels = vec![
                    ("worker", id.as_str()),
                    ("backend", w.backend.as_str()),
                    ("state", state),
                ];
                (labels, u64::from(w.state == state))
            })
        })
        .collect();
    gauges(
        encoder,
        "weave_router_worker_state",
        "1 for the state a data-plane worker is in (restarting: it failed and starts \
         again after a backoff; failed: given up), with the backend it runs.",
        &states,
    )
}

/// The states of a worker, each a series of `weave_router_worker_state`.
const WORKER_STATES: [&str; 3] = ["running", "restarting", "failed"];

fn encode_peers(
    encoder: &mut DescriptorEncoder,
    peers: &[PeerStats],
) -> Result<(), std::fmt::Error> {
    let labels = |p: &'_ PeerStats| -> Vec<(&'static str, String)> {
        vec![("peer", p.name.clone()), ("nickname", p.nickname.clone())]
    };
    let owned: Vec<Vec<(&'static str, String)>> = peers.iter().map(labels).collect();
    let borrowed: Vec<Labels> = owned
        .iter()
        .map(|l| l.iter().map(|(k, v)| (*k, v.as_str())).collect())
        .collect();
    type Field = fn(&PeerStats) -> u64;
    let fields: [(&str, &str, Field); 4] = [
        (
            "weave_router_peer_rx_frames",
            "Frames received from a directly connected peer.",
            |p| p.traffic.rx_frames,
        ),
        (
            "weave_router_peer_rx_bytes",
            "Bytes of frames received from a directly connected peer.",
            |p| p.traffic.rx_bytes,
        ),
        (
            "weave_router_peer_tx_frames",
            "Frames sent to a directly connected peer.",
            |p| p.traffic.tx_frames,
        ),
        (
            "weave_router_peer_tx_bytes",
            "Bytes of frames sent to a directly connected peer.",
            |p| p.traffic.tx_bytes,
        ),
    ];
    for (name, help, get) in fields {
        let series: Vec<(Labels, u64)> = peers
            .iter()
            .zip(&borrowed)
            .map(|(p, l)| (l.clone(), get(p)))
            .collect();
        counters(encoder, name, help, &series)?;
    }

    type Quantile = fn(&RttSummary) -> u32;
    let quantiles: [(&str, Quantile); 4] = [
        ("0.5", |s| s.p50_us),
        ("0.9", |s| s.p90_us),
        ("0.99", |s| s.p99_us),
        ("1", |s| s.max_us),
    ];
    let mut rtt = Vec::new();
    let mut samples = Vec::new();
    let mut lost = Vec::new();
    for (p, l) in peers.iter().zip(&borrowed) {
        let Some(s) = &p.rtt else { continue };
        for (q, get) in quantiles {
            let mut with_q = l.clone();
            with_q.push(("quantile", q));
            rtt.push((with_q, f64::from(get(s)) / 1e6));
        }
        samples.push((l.clone(), s.samples as u64));
        lost.push((l.clone(), s.lost));
    }
    {
        let mut m = encoder.encode_descriptor(
            "weave_router_peer_rtt_seconds",
            "Round-trip time to a peer (a sleeve probe each second, answered over TCP), \
             by quantile over the last 300 samples; quantile 1 is the maximum.",
            None,
            MetricType::Gauge,
        )?;
        for (labels, v) in &rtt {
            ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
        }
    }
    gauges(
        encoder,
        "weave_router_peer_rtt_samples",
        "Samples in the round-trip time window of a peer.",
        &samples,
    )?;
    counters(
        encoder,
        "weave_router_peer_rtt_lost",
        "Round-trip probes to a peer that went unanswered for 5 s.",
        &lost,
    )
}

fn counters<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(L, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauges<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(L, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn overlay_type(c: &LocalConnectionStatus) -> String {
    match c.attrs.get("name") {
        Some(serde_json::Value::String(name)) => name.clone(),
        _ => "unknown".to_string(),
    }
}

fn is_encrypted(c: &LocalConnectionStatus) -> bool {
    matches!(
        c.attrs.get("encrypted"),
        Some(serde_json::Value::Bool(true))
    )
}

/// A check that a page is well-formed OpenMetrics/Prometheus text: every line is a `HELP`,
/// `TYPE` or `UNIT` comment, a sample, or the final `# EOF`; names and label names are
/// valid; every sample belongs to a family declared with both `HELP` and `TYPE` before it;
/// values parse as numbers. Returns the samples as (name, labels, value).
///
/// Public so the integration tests can check real scrapes with it.
pub fn check_exposition(page: &str) -> Result<Vec<Sample>, String> {
    let mut declared: std::collections::BTreeMap<String, (bool, Option<String>)> =
        Default::default();
    let mut samples = Vec::new();
    let mut eof = false;
    for (i, line) in page.lines().enumerate() {
        let at = |why: String| format!("line {}: {why}: {line:?}", i + 1);
        if eof {
            return Err(at("text after # EOF".into()));
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let text = parts.next().unwrap_or("");
            if !valid_name(name) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            let entry = declared.entry(name.to_string()).or_default();
            match kind {
                "HELP" => entry.0 = true,
                "TYPE" => {
                    let known = [
                        "counter",
                        "gauge",
                        "histogram",
                        "info",
                        "summary",
                        "unknown",
                    ];
                    if !known.contains(&text) {
                        return Err(at(format!("unknown type {text:?}")));
                    }
                    entry.1 = Some(text.to_string());
                }
                "UNIT" => {}
                other => return Err(at(format!("unknown comment {other:?}"))),
            }
            continue;
        }
        let sample = parse_sample(line).map_err(at)?;
        let family = declared
            .iter()
            .filter(|(name, _)| {
                sample.name == **name
                    || sample
                        .name
                        .strip_prefix(name.as_str())
                        .is_some_and(|s| ["_total", "_info", "_created"].contains(&s))
            })
            .max_by_key(|(name, _)| name.len());
        match family {
            Some((_, (true, Some(_)))) => samples.push(sample),
            Some(_) => return Err(at("family lacks HELP or TYPE".into())),
            None => return Err(at("sample of an undeclared family".into())),
        }
    }
    if !eof {
        return Err("no # EOF at the end".into());
    }
    Ok(samples)
}

/// One sample line of a page.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels in page order.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if present.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let b = line.as_bytes();
    let mut labels = Vec::new();
    let mut pos = name_end;
    if b[pos] == b'{' {
        pos += 1;
        loop {
            if b.get(pos) == Some(&b'}') {
                pos += 1;
                break;
            }
            let eq = line[pos..].find('=').ok_or("label without '='")? + pos;
            let key = &line[pos..eq];
            if !valid_label_name(key) {
                return Err(format!("bad label name {key:?}"));
            }
            if b.get(eq + 1) != Some(&b'"') {
                return Err("label value not quoted".into());
            }
            let (value, after) = label_value(line, eq + 2)?;
            labels.push((key.to_string(), value));
            match b.get(after) {
                Some(b',') => pos = after + 1,
                Some(b'}') => {
                    pos = after + 1;
                    break;
                }
                _ => return Err("expected ',' or '}' after a label".into()),
            }
        }
    }
    let value_text = line[pos..]
        .strip_prefix(' ')
        .ok_or("no space before the value")?;
    // A timestamp may follow the value; we never write one.
    let value_text = value_text.split(' ').next().unwrap_or("");
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().map_err(|_| format!("bad value {v:?}"))?,
    };
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Reads a quoted label value starting just after its opening quote; returns the unescaped
/// value and the index just past the closing quote.
fn label_value(line: &str, mut i: usize) -> Result<(String, usize), String> {
    let b = line.as_bytes();
    let mut value = String::new();
    loop {
        match b.get(i) {
            None => return Err("unterminated label value".into()),
            Some(b'"') => return Ok((value, i + 1)),
            Some(b'\\') => {
                match b.get(i + 1) {
                    Some(b'n') => value.push('\n'),
                    Some(b'\\') => value.push('\\'),
                    Some(b'"') => value.push('"'),
                    _ => return Err("bad escape in label value".into()),
                }
                i += 2;
            }
            Some(_) => {
                let c = line[i..].chars().next().ok_or("bad UTF-8")?;
                value.push(c);
                i += c.len_utf8();
            }
        }
    }
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::stats::{DataplaneStats, TrafficStats};
    use std::collections::BTreeMap;

    fn conn(state: &str, attrs: &[(&str, serde_json::Value)]) -> LocalConnectionStatus {
        LocalConnectionStatus {
            address: "10.0.0.1:6783".into(),
            outbound: true,
            state: state.into(),
            info: String::new(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn status(conns: Vec<LocalConnectionStatus>, terminations: u64) -> RouterStatus {
        RouterStatus {
            protocol: "weave".into(),
            protocol_min_version: 1,
            protocol_max_version: 2,
            encryption: false,
            peer_discovery: true,
            name: "aa:00:00:00:00:01".parse().unwrap(),
            nickname: "host1".into(),
            port: 6783,
            peers: vec![],
            unicast_routes: vec![],
            broadcast_routes: vec![],
            connections: conns,
            termination_count: terminations,
            targets: vec![],
            trusted_subnets: vec![],
            fastdp_moves: 0,
            broadcast_repeats: 3,
        }
    }

    fn stats(dataplane: Option<DataplaneStats>, peers: Vec<PeerStats>) -> Stats {
        Stats {
            version: "0".into(),
            name: "aa:00:00:00:00:01".into(),
            nickname: "host1".into(),
            instance: 1,
            monotonic_ns: 5,
            dataplane,
            peers,
        }
    }

    fn lines(page: &str) -> Vec<&str> {
        page.lines().collect()
    }

    #[test]
    fn counts_by_state_type_and_encryption() {
        let sleeve = ("name", serde_json::json!("sleeve"));
        let r = status(
            vec![
                conn("established", std::slice::from_ref(&sleeve)),
                conn("established", std::slice::from_ref(&sleeve)),
                conn(
                    "established",
                    &[sleeve, ("encrypted", serde_json::json!(true))],
                ),
                conn("failed", &[]),
            ],
            7,
        );
        let page = render_metrics(Scrape {
            ipam: None,
            router: r,
            stats: stats(None, vec![]),
        });
        let l = lines(&page);
        for want in [
            "weave_connections{encryption=\"\",state=\"established\",type=\"sleeve\"} 2",
            "weave_connections{encryption=\"yes\",state=\"established\",type=\"sleeve\"} 1",
            "weave_connections{encryption=\"\",state=\"failed\",type=\"unknown\"} 1",
            "weave_connections{encryption=\"\",state=\"connecting\",type=\"sleeve\"} 0",
            "weave_connection_terminations_total 7",
            "weave_router_fastdp_moves_total 0",
            "weave_router_broadcast_repeats_total 3",
            "# TYPE weave_connection_terminations counter",
            "# TYPE weave_connections gauge",
        ] {
            assert!(l.contains(&want), "{want} missing from:\n{page}");
        }
        // Every state has a series for each overlay seen plus sleeve, both encryptions.
        let series = l
            .iter()
            .filter(|x| x.starts_with("weave_connections{"))
            .count();
        assert_eq!(series, CONNECTION_STATES.len() * 2 * 2);
        // No data plane: no data-plane series.
        assert!(!page.contains("weave_router_udp"));
        check_exposition(&page).unwrap();
    }

    #[test]
    fn dataplane_and_peer_series_with_their_labels() {
        let worker = |i: usize, n: u64| WorkerStats {
            worker: i,
            udp_tx_datagrams: n,
            udp_tx_calls: 2,
            drops: [("no_route".to_string(), 3), ("too_big".to_string(), 0)]
                .into_iter()
                .collect(),
            backend: ["io_uring", "epoll"][i].into(),
            state: "running".into(),
            restarts: 4 * i as u64,
            send_dropped: 5,
            control_dropped: 6,
            ..WorkerStats::default()
        };
        let peer = PeerStats {
            name: "aa:00:00:00:00:02".into(),
            nickname: "ho\"st2".into(),
            address: Some("10.0.0.2:6783".into()),
            outbound: true,
            state: Some("established".into()),
            overlay: Some("sleeve".into()),
            mtu: Some(1438),
            encrypted: false,
            traffic: TrafficStats {
                rx_frames: 10,
                rx_bytes: 1000,
                tx_frames: 20,
                tx_bytes: 2000,
            },
            rtt: Some(RttSummary {
                samples: 4,
                last_us: 150,
                p50_us: 150,
                p90_us: 250,
                p99_us: 1000,
                max_us: 1000,
                lost: 0,
            }),
        };
        let dp = DataplaneStats {
            backend: "io_uring".into(),
            workers: vec![worker(0, 40), worker(1, 41)],
        };
        let page = render_metrics(Scrape {
            ipam: None,
            router: status(vec![], 0),
            stats: stats(Some(dp), vec![peer]),
        });
        let l = lines(&page);
        for want in [
            "weave_router_dataplane_info{backend=\"io_uring\"} 1",
            "weave_router_dataplane_workers 2",
            "weave_router_udp_tx_datagrams_total{worker=\"0\"} 40",
            "weave_router_udp_tx_datagrams_total{worker=\"1\"} 41",
            "weave_router_udp_tx_calls_total{worker=\"1\"} 2",
            "weave_router_drops_total{worker=\"1\",reason=\"no_route\"} 3",
            "weave_router_drops_total{worker=\"0\",reason=\"too_big\"} 0",
            "weave_router_worker_restarts_total{worker=\"1\"} 4",
            "weave_router_udp_tx_dropped_total{worker=\"0\"} 5",
            "weave_router_control_dropped_total{worker=\"1\"} 6",
            "weave_router_gso_fallbacks_total{worker=\"1\"} 0",
            "weave_router_worker_state{worker=\"1\",backend=\"epoll\",state=\"running\"} 1",
            "weave_router_worker_state{worker=\"1\",backend=\"epoll\",state=\"failed\"} 0",
            "weave_router_peer_rx_frames_total{peer=\"aa:00:00:00:00:02\",nickname=\"ho\\\"st2\"} 10",
            "weave_router_peer_tx_bytes_total{peer=\"aa:00:00:00:00:02\",nickname=\"ho\\\"st2\"} 2000",
            "weave_router_peer_rtt_seconds{peer=\"aa:00:00:00:00:02\",nickname=\"ho\\\"st2\",quantile=\"0.9\"} 0.00025",
            "weave_router_peer_rtt_seconds{peer=\"aa:00:00:00:00:02\",nickname=\"ho\\\"st2\",quantile=\"1\"} 0.001",
            "weave_router_peer_rtt_samples{peer=\"aa:00:00:00:00:02\",nickname=\"ho\\\"st2\"} 4",
            "# TYPE weave_router_tap_rx_frames counter",
        ] {
            assert!(l.contains(&want), "{want} missing from:\n{page}");
        }
        let samples = check_exposition(&page).unwrap();
        let nick = samples
            .iter()
            .find(|s| s.name == "weave_router_peer_rx_bytes_total")
            .and_then(|s| s.label("nickname"))
            .unwrap();
        assert_eq!(nick, "ho\"st2");
        assert_eq!(page.lines().last(), Some("# EOF"));
    }

    #[test]
    fn exposition_check_refuses_malformed_pages() {
        let good = "# HELP a x\n# TYPE a counter\na_total{k=\"v\",j=\"\\\\\"} 1\n# EOF\n";
        assert!(
            check_exposition(good).is_ok(),
            "{:?}",
            check_exposition(good)
        );
        for bad in [
            "a 1\n# EOF\n",
            "# HELP a x\na 1\n# EOF\n",
            "# HELP a x\n# TYPE a gauge\na{k=v} 1\n# EOF\n",
            "# HELP a x\n# TYPE a gauge\na{1k=\"v\"} 1\n# EOF\n",
            "# HELP a x\n# TYPE a gauge\na one\n# EOF\n",
            "# HELP a x\n# TYPE a gauge\na 1\n",
            "# HELP 9a x\n# TYPE 9a gauge\n9a 1\n# EOF\n",
            "# HELP a x\n# TYPE a sometimes\na 1\n# EOF\n",
        ] {
            assert!(check_exposition(bad).is_err(), "accepted {bad:?}");
        }
    }
}
