//! `weave-router stats --json` and `/metrics` count the traffic this test sends: two hosts
//! with routers on the default data plane, a pod on each bridge, a known number of pings of
//! a known size from pod 1 to pod 2, and both routers sampled before and after. The
//! counters must have moved by at least what was sent (never by how fast).
//! Needs root; builds and removes its own namespaces.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde_json::Value;
use weave_perf::router::{self, Router, HTTP_ADDR, METRICS_ADDR};
use weave_perf::testbed::{self, Host, InNetns, Process, Testbed, TestbedConfig};

const CONVERGE: Duration = Duration::from_secs(30);
static NOT_CANCELLED: AtomicBool = AtomicBool::new(false);
/// The pods' MTU: what the sleeve carries on a 1500-byte underlay.
const POD_MTU: u32 = 1438;
/// Echo requests sent pod 1 -> pod 2.
const PINGS: u64 = 200;
/// ICMP payload of each; the Ethernet frame is 42 bytes more (14 + 20 + 8 of headers).
const PAYLOAD: u64 = 1000;
const FRAME: u64 = PAYLOAD + 42;

#[test]
fn stats_and_metrics_count_the_traffic_the_test_sent() {
    if !testbed::privileged_or_skip("stats_and_metrics_count_the_traffic_the_test_sent") {
        return;
    }
    let bin = router::locate_router_bin(None::<&Path>).expect("weave-router binary");
    let router = Router::new(bin);
    let bed = Testbed::new(&TestbedConfig::new("wsm", 2).with_subnet(153)).expect("testbed");
    let [h1, h2] = [1, 2].map(|i| bed.host(i).expect("host").clone());
    // The sleeve's counters are under test: no fast datapath.
    let mut r1 = router
        .launch_with(&h1, &[], &["--no-fastdp"])
        .expect("launch host1");
    let mut r2 = router
        .launch_with(&h2, &[h1.addr()], &["--no-fastdp"])
        .expect("launch host2");
    await_sleeve(&router, &h1, &mut r1);
    await_sleeve(&router, &h2, &mut r2);

    let pod1 = bed
        .add_pod(&h1, 1, "weave", Ipv4Addr::new(10, 32, 0, 1), 12, POD_MTU)
        .expect("pod 1");
    let pod2 = bed
        .add_pod(&h2, 2, "weave", Ipv4Addr::new(10, 32, 0, 2), 12, POD_MTU)
        .expect("pod 2");
    // ARP and the routers' MAC learning first, so the measured pings go straight through.
    testbed::wait_until(
        "pod 1 to reach pod 2",
        Duration::from_secs(10),
        || match pod1.ping(pod2.addr()) {
            Ok(true) => Ok(()),
            Ok(false) => Err("no reply".to_string()),
            Err(e) => Err(e.to_string()),
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nhost1 log:\n{}", r1.log_tail(30)));

    let (name1, name2) = (router::peer_name(1), router::peer_name(2));
    let before = [sample(&router, &h1, &name2), sample(&router, &h2, &name1)];

    let count = PINGS.to_string();
    let size = PAYLOAD.to_string();
    let target = pod2.addr().to_string();
    let out = pod1
        .run(
            "ping",
            &[
                "-c", &count, "-i", "0.01", "-s", &size, "-W", "2", "-q", &target,
            ],
        )
        .expect("ping pod 1 -> pod 2");
    println!("{}", out.trim());

    // Per-peer counters reach the API within about a second; wait for them, bounded.
    let after = testbed::wait_until(
        "the counters to show the pings",
        Duration::from_secs(15),
        || {
            let after = [sample(&router, &h1, &name2), sample(&router, &h2, &name1)];
            let moved = Moved::between(&before, &after);
            if moved.enough() {
                Ok(after)
            } else {
                Err(format!("moved so far: {moved:?}"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let moved = Moved::between(&before, &after);
    println!("{PINGS} pings of {FRAME}-byte frames sent; counters moved: {moved:?}");
    assert!(moved.enough(), "{moved:?}");

    // The text screen names the peer, its overlay and MTU, and the backend.
    let text = h1
        .run(
            &router.bin().to_string_lossy(),
            &["stats", "--http-addr", HTTP_ADDR, "--interval", "0.5"],
        )
        .expect("weave-router stats");
    println!("{text}");
    assert!(text.contains(&format!("{name2}(host2)")), "{text}");
    assert!(text.contains("sleeve") && text.contains("1438"), "{text}");
    assert!(text.contains("data plane,"), "{text}");

    // Round trips to host2 are timed once a second by the router's own probes.
    let bin = router.bin().to_string_lossy().to_string();
    let rtt = testbed::wait_until(
        "host1 to time a round trip to host2",
        Duration::from_secs(10),
        || {
            let json = h1
                .run(
                    &bin,
                    &[
                        "stats",
                        "--json",
                        "--count",
                        "1",
                        "--interval",
                        "0.1",
                        "--http-addr",
                        HTTP_ADDR,
                    ],
                )
                .map_err(|e| e.to_string())?;
            let doc: Value = serde_json::from_str(json.trim()).map_err(|e| e.to_string())?;
            let peer = doc["totals"]["peers"]
                .as_array()
                .and_then(|peers| peers.iter().find(|p| p["name"] == name2.as_str()).cloned())
                .ok_or("no host2 in stats")?;
            match &peer["rtt"] {
                Value::Null => Err("no RTT yet".to_string()),
                rtt => Ok(rtt.clone()),
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    println!("RTT host1 -> host2: {rtt}");
    let us = |k: &str| rtt[k].as_u64().unwrap_or_else(|| panic!("{k} in {rtt}"));
    assert!(us("samples") >= 1, "{rtt}");
    assert!(us("p50_us") > 0, "a real round trip takes time: {rtt}");
    assert!(
        us("p50_us") <= us("p99_us") && us("p99_us") <= us("max_us"),
        "{rtt}"
    );
    let page = h1
        .run(&bin, &["metrics", "--metrics-addr", METRICS_ADDR])
        .expect("weave-router metrics");
    assert!(
        page.lines()
            .any(|l| l.starts_with("weave_router_peer_rtt_seconds{")
                && l.contains(&format!("peer=\"{name2}\""))),
        "{page}"
    );
    drop((pod1, pod2));
}

/// What one router reports about its traffic with one peer, by both interfaces.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    /// From `stats --json` totals: frames and bytes to and from the peer.
    stats: Traffic,
    /// UDP datagrams sent and received by all workers (`stats --json`).
    udp_tx: u64,
    udp_rx: u64,
    /// The same per-peer and worker counters from `/metrics`.
    metrics: Traffic,
    metrics_udp_tx: u64,
    metrics_udp_rx: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Traffic {
    tx_frames: u64,
    tx_bytes: u64,
    rx_frames: u64,
    rx_bytes: u64,
}

fn sample(router: &Router, host: &Host, peer: &str) -> Sample {
    let bin = router.bin().to_string_lossy().to_string();
    let json = host
        .run(
            &bin,
            &[
                "stats",
                "--json",
                "--count",
                "1",
                "--interval",
                "0.1",
                "--http-addr",
                HTTP_ADDR,
            ],
        )
        .expect("weave-router stats --json");
    let doc: Value = serde_json::from_str(json.trim()).expect("stats --json is one JSON document");
    let totals = &doc["totals"];
    let p = totals["peers"]
        .as_array()
        .and_then(|peers| peers.iter().find(|p| p["name"] == peer))
        .unwrap_or_else(|| panic!("{peer} not in stats: {json}"));
    let t = &p["traffic"];
    let num = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"));
    let workers = totals["dataplane"]["workers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let sum = |key: &str| workers.iter().map(|w| num(&w[key])).sum::<u64>();

    let page = host
        .run(&bin, &["metrics", "--metrics-addr", METRICS_ADDR])
        .expect("weave-router metrics");
    assert!(page.ends_with("# EOF\n"), "{page}");
    let metric = |name: &str, peer_label: bool| -> u64 {
        page.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter(|l| !peer_label || l.contains(&format!("peer=\"{peer}\"")))
            .map(|l| {
                let v = l.rsplit(' ').next().unwrap_or_default();
                v.parse::<u64>()
                    .unwrap_or_else(|_| panic!("bad value in {l}"))
            })
            .sum()
    };
    Sample {
        stats: Traffic {
            tx_frames: num(&t["tx_frames"]),
            tx_bytes: num(&t["tx_bytes"]),
            rx_frames: num(&t["rx_frames"]),
            rx_bytes: num(&t["rx_bytes"]),
        },
        udp_tx: sum("udp_tx_datagrams"),
        udp_rx: sum("udp_rx_datagrams"),
        metrics: Traffic {
            tx_frames: metric("weave_router_peer_tx_frames_total", true),
            tx_bytes: metric("weave_router_peer_tx_bytes_total", true),
            rx_frames: metric("weave_router_peer_rx_frames_total", true),
            rx_bytes: metric("weave_router_peer_rx_bytes_total", true),
        },
        metrics_udp_tx: metric("weave_router_udp_tx_datagrams_total", false),
        metrics_udp_rx: metric("weave_router_udp_rx_datagrams_total", false),
    }
}

/// How far host1's counters towards host2 and host2's from host1 moved.
#[derive(Debug)]
struct Moved {
    h1_tx: Traffic,
    h2_rx: Traffic,
    h1_metrics_tx: Traffic,
    h2_metrics_rx: Traffic,
    h1_udp_tx: (u64, u64),
    h2_udp_rx: (u64, u64),
}

impl Moved {
    fn between(before: &[Sample; 2], after: &[Sample; 2]) -> Moved {
        let d = |a: Traffic, b: Traffic| Traffic {
            tx_frames: b.tx_frames.saturating_sub(a.tx_frames),
            tx_bytes: b.tx_bytes.saturating_sub(a.tx_bytes),
            rx_frames: b.rx_frames.saturating_sub(a.rx_frames),
            rx_bytes: b.rx_bytes.saturating_sub(a.rx_bytes),
        };
        Moved {
            h1_tx: d(before[0].stats, after[0].stats),
            h2_rx: d(before[1].stats, after[1].stats),
            h1_metrics_tx: d(before[0].metrics, after[0].metrics),
            h2_metrics_rx: d(before[1].metrics, after[1].metrics),
            h1_udp_tx: (
                after[0].udp_tx.saturating_sub(before[0].udp_tx),
                after[0]
                    .metrics_udp_tx
                    .saturating_sub(before[0].metrics_udp_tx),
            ),
            h2_udp_rx: (
                after[1].udp_rx.saturating_sub(before[1].udp_rx),
                after[1]
                    .metrics_udp_rx
                    .saturating_sub(before[1].metrics_udp_rx),
            ),
        }
    }

    /// Every counter moved by at least what was sent: each echo request is one frame of
    /// [`FRAME`] bytes out of host1 to host2 and into host2 from host1, and weave-router
    /// sends every frame in a sleeve datagram of its own.
    fn enough(&self) -> bool {
        let out = |t: &Traffic| t.tx_frames >= PINGS && t.tx_bytes >= PINGS * FRAME;
        let inn = |t: &Traffic| t.rx_frames >= PINGS && t.rx_bytes >= PINGS * FRAME;
        out(&self.h1_tx)
            && inn(&self.h2_rx)
            && out(&self.h1_metrics_tx)
            && inn(&self.h2_metrics_rx)
            && self.h1_udp_tx.0 >= PINGS
            && self.h1_udp_tx.1 >= PINGS
            && self.h2_udp_rx.0 >= PINGS
            && self.h2_udp_rx.1 >= PINGS
    }
}

/// Waits until `host` has an established sleeve connection with a verified MTU.
fn await_sleeve(router: &Router, host: &Host, process: &mut Process) {
    process
        .wait_for(
            &format!("{}: a sleeve connection", host.name()),
            CONVERGE,
            &NOT_CANCELLED,
            || {
                let text = router
                    .status_text(host, Some("connections"))
                    .map_err(|e| e.to_string())?;
                if text
                    .lines()
                    .any(|l| l.contains("established sleeve") && l.contains("mtu="))
                {
                    Ok(())
                } else {
                    Err(format!("not yet:\n{text}"))
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
}
