//! Pod traffic through the sleeve on the namespace testbed: three hosts in a chain with
//! host1 <-> host3 blocked, a pod on each host's bridge; ARP and ping between all pods
//! (host1 <-> host3 relayed by host2), pings of every size up to the MTU with DF, a
//! "fragmentation needed" answer just above it, and a TCP transfer checked end to end.
//! Also: one peer pair's traffic spread over both ends' workers, and a peer that does not
//! spread (as Weave Net) sent to and from the mesh port only.
//! Needs root; builds and removes its own namespaces.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use weave_perf::router::{self, Router, HTTP_ADDR};
use weave_perf::testbed::{self, Host, InNetns, Process, Testbed, TestbedConfig};
use weave_perf::transfer::Transfer;

const CONVERGE: Duration = Duration::from_secs(30);
static NOT_CANCELLED: AtomicBool = AtomicBool::new(false);
/// The pods' MTU: what the sleeve carries on a 1500-byte underlay.
const POD_MTU: usize = 1438;
/// Bytes moved pod to pod; checked with SHA-256 at both ends.
const TRANSFER: u64 = 1 << 30;

/// A pod: a network namespace with a veth into a host's weave bridge. Removed on drop.
struct Pod {
    netns: String,
    ip: Ipv4Addr,
    log_dir: PathBuf,
}

impl InNetns for Pod {
    fn netns(&self) -> &str {
        &self.netns
    }

    fn log_dir(&self) -> &Path {
        &self.log_dir
    }
}

impl Pod {
    /// Pod `index` on `host`'s weave bridge, 10.32.0.`index`.
    fn new(bed: &Testbed, host: &Host, index: u8) -> Pod {
        Pod::on(
            bed,
            host,
            index,
            "weave",
            Ipv4Addr::new(10, 32, 0, index),
            POD_MTU,
        )
    }

    /// Pod `index` (unique in the testbed) on `host`'s `bridge`, address `ip`/12.
    fn on(bed: &Testbed, host: &Host, index: u8, bridge: &str, ip: Ipv4Addr, mtu: usize) -> Pod {
        let netns = format!("{}-p{index}", bed.run_id());
        let host_end = format!("vp{index}{}", std::process::id() % 10000);
        run("ip", &["netns", "add", &netns]);
        let pod = Pod {
            netns,
            ip,
            log_dir: bed.log_dir().to_path_buf(),
        };
        run("ip", &["-n", &pod.netns, "link", "set", "lo", "up"]);
        run(
            "ip",
            &[
                "link",
                "add",
                &host_end,
                "netns",
                host.netns(),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &pod.netns,
            ],
        );
        run(
            "ip",
            &[
                "-n",
                host.netns(),
                "link",
                "set",
                &host_end,
                "master",
                bridge,
                "up",
            ],
        );
        run(
            "ip",
            &[
                "-n",
                &pod.netns,
                "link",
                "set",
                "eth0",
                "mtu",
                &mtu.to_string(),
                "up",
            ],
        );
        run(
            "ip",
            &[
                "-n",
                &pod.netns,
                "addr",
                "add",
                &format!("{ip}/12"),
                "dev",
                "eth0",
            ],
        );
        pod
    }

    fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    fn ping(&self, to: Ipv4Addr, size: usize) -> bool {
        let out = self.exec(&[
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            &size.to_string(),
            &to.to_string(),
        ]);
        out.status.success()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn launch(router: &Router, host: &Host, peers: &[Ipv4Addr], backend: &str) -> Process {
    launch_with(router, host, peers, backend, &[])
}

fn launch_with(
    router: &Router,
    host: &Host,
    peers: &[Ipv4Addr],
    backend: &str,
    extra: &[&str],
) -> Process {
    // The sleeve is under test: no fast datapath.
    let mut flags = vec!["--dataplane", backend, "--workers", "2", "--no-fastdp"];
    flags.extend_from_slice(extra);
    router
        .launch_with(host, peers, &flags)
        .expect("spawn router")
}

/// Each worker's report from `host`'s router: `Dataplane.Workers`.
fn workers(router: &Router, host: &Host) -> Result<Vec<serde_json::Value>, String> {
    let text = host
        .run(
            &router.bin().to_string_lossy(),
            &["status", "--json", "--http-addr", HTTP_ADDR],
        )
        .map_err(|e| e.to_string())?;
    let report: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    Ok(report["Dataplane"]["Workers"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// Frames each worker of `host` received from peer number `from`.
fn rx_frames_by_worker(router: &Router, host: &Host, from: usize) -> Vec<u64> {
    workers(router, host)
        .expect("status --json")
        .iter()
        .map(|w| {
            w["Peers"][router::peer_name(from)]["RxFrames"]
                .as_u64()
                .unwrap_or(0)
        })
        .collect()
}

/// host1 and host2 spread and send partial TCP checksums (the defaults); host3 runs
/// `--sleeve-spread off --sleeve-checksums full`, as a Weave Net peer would behave, and
/// reaches host1 only through host2. Sixteen TCP streams host1 → host2 must reach both of
/// host2's workers; host3 must see sleeve datagrams from and to the mesh port only; and
/// checked transfers host1 → host3 and back must arrive whole, so host2 finishes partial
/// checksums for host3 and makes host3's complete ones partial for host1.
#[test]
fn one_peer_pairs_traffic_uses_every_worker_and_other_peers_get_the_mesh_port() {
    if !testbed::privileged_or_skip("one_peer_pairs_traffic_uses_every_worker") {
        return;
    }
    let bin = router::locate_router_bin(None::<&Path>).expect("weave-router binary");
    let router = Router::new(bin);
    let bed = Testbed::new(&TestbedConfig::new("wss", 3).with_subnet(153)).expect("testbed");
    let [h1, h2, h3] = [1, 2, 3].map(|i| bed.host(i).expect("host").clone());
    // Count host3's sleeve datagrams whose source port is not the mesh port, both ways.
    let rules = "add table inet spread {
        chain input { type filter hook input priority 0; udp dport 6783 udp sport != 6783 counter; }
        chain output { type filter hook output priority 0; udp dport 6783 udp sport != 6783 counter; }
    }";
    h3.run("nft", &[rules]).expect("nft rules on host3");
    bed.block(&h1, &h3).expect("block host1 <-> host3");

    let mut r1 = launch(&router, &h1, &[], "io-uring");
    let mut r2 = launch(&router, &h2, &[h1.addr()], "io-uring");
    let mut r3 = launch_with(
        &router,
        &h3,
        &[h2.addr()],
        "io-uring",
        &["--sleeve-spread", "off", "--sleeve-checksums", "full"],
    );
    await_sleeve(&router, &h1, &mut r1, 1);
    await_sleeve(&router, &h2, &mut r2, 2);
    await_sleeve(&router, &h3, &mut r3, 1);
    assert!(
        r2.log_tail(200).contains("received by source port"),
        "{}",
        r2.log_tail(30)
    );
    let log1 = r1.log_tail(200);
    assert!(
        log1.contains("sleeve spread over workers on, partial TCP checksums on"),
        "{log1}"
    );
    let log3 = r3.log_tail(200);
    assert!(
        log3.contains("sleeve spread over workers off, partial TCP checksums off"),
        "{log3}"
    );
    let pods = [
        Pod::new(&bed, &h1, 1),
        Pod::new(&bed, &h2, 2),
        Pod::new(&bed, &h3, 3),
    ];
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        let ok = testbed::wait_until("ping", Duration::from_secs(10), || {
            if pods[a].ping(pods[b].ip, 56) {
                Ok(())
            } else {
                Err("no reply")
            }
        });
        assert!(ok.is_ok(), "pod{} -> pod{}: {ok:?}", a + 1, b + 1);
    }

    let before = rx_frames_by_worker(&router, &h2, 1);
    let sleeve = streams(&pods[0], &pods[1]);
    streams(&pods[2], &pods[1]);
    let after = rx_frames_by_worker(&router, &h2, 1);
    let got: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let total: u64 = got.iter().sum();
    println!("host2's workers received {got:?} frames from host1");
    assert_eq!(got.len(), 2);
    assert!(total > 10_000, "too little traffic counted: {got:?}");
    for n in &got {
        assert!(
            *n * 20 >= total,
            "a worker got under 5% of one peer pair's traffic: {got:?}"
        );
    }

    // The same streams over the kernel's VXLAN between host1 and host2, for reference: a
    // sender that sees its segments reordered (SACK, timestamps) counts it, and then
    // retransmits spuriously. Spreading must not add any beyond what the kernel's path does.
    weave_perf::harness::run::vxlan_overlay(&[h1.clone(), h2.clone()]).expect("vxlan overlay");
    let kernel_pods = [
        Pod::on(&bed, &h1, 11, "kbr", Ipv4Addr::new(10, 96, 0, 11), 1450),
        Pod::on(&bed, &h2, 12, "kbr", Ipv4Addr::new(10, 96, 0, 12), 1450),
    ];
    let kernel = streams(&kernel_pods[0], &kernel_pods[1]);
    println!("16 streams for 2 s, sleeve (spread over host2's workers): {sleeve}; kernel VXLAN: {kernel}");
    // A flow may move between workers once, when its first ACK comes back through another
    // worker than the one its first segments left by: at most one reordering per stream.
    assert!(
        sleeve.reordered <= kernel.reordered + 16,
        "the sleeve reordered segments: sleeve {sleeve}, kernel {kernel}"
    );
    drop(kernel_pods);

    let counters = h3
        .run("nft", &["list", "table", "inet", "spread"])
        .expect("nft list");
    let packets: Vec<u64> = counters
        .split("packets ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(packets.len(), 2, "{counters}");
    assert_eq!(
        packets,
        vec![0, 0],
        "host3 (no spreading) saw sleeve datagrams from other ports than 6783:\n{counters}"
    );
    for (from, to) in [(0, 2), (2, 0)] {
        const BYTES: u64 = 64 << 20;
        let outcome = Transfer::start(
            bed.log_dir(),
            &pods[from],
            &pods[to],
            pods[to].ip,
            BYTES,
            None,
        )
        .expect("transfer")
        .finish()
        .expect("transfer output");
        assert!(
            outcome.intact(BYTES),
            "pod{} -> pod{} through host2: {outcome:?}",
            from + 1,
            to + 1
        );
    }
    let from_2: u64 = rx_frames_by_worker(&router, &h3, 2).iter().sum();
    assert!(
        from_2 > 10_000,
        "host3 received too little from host2: {from_2}"
    );
    drop(pods);
}

/// What one `iperf3` run's sender saw.
#[derive(Debug, Clone, Copy)]
struct Streams {
    /// Times the sender's TCP detected reordering (SACK, timestamps, Reno dupacks).
    reordered: u64,
    /// Segments it retransmitted.
    retransmitted: u64,
    gbps: f64,
}

impl std::fmt::Display for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2} Gbit/s, {} reorderings detected, {} segments retransmitted",
            self.gbps, self.reordered, self.retransmitted
        )
    }
}

/// Sixteen TCP streams `client` -> `server` for two seconds.
fn streams(client: &Pod, server: &Pod) -> Streams {
    let reorder = |pod: &Pod| -> u64 {
        let out = pod.exec(&["cat", "/proc/net/netstat"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
        assert_eq!(lines.len(), 2, "{text}");
        lines[0]
            .split_whitespace()
            .zip(lines[1].split_whitespace())
            .filter(|(name, _)| ["TCPSACKReorder", "TCPTSReorder", "TCPRenoReorder"].contains(name))
            .map(|(_, v)| v.parse::<u64>().expect("counter"))
            .sum()
    };
    let server_ip = server.ip.to_string();
    let listen = server.exec(&["iperf3", "-s", "-1", "-D"]);
    assert!(listen.status.success(), "{listen:?}");
    let before = reorder(client);
    let report = testbed::wait_until("iperf3", Duration::from_secs(10), || {
        let out = client.exec(&["iperf3", "-c", &server_ip, "-P", "16", "-t", "2", "-J"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() {
            serde_json::from_str::<serde_json::Value>(&text).map_err(|e| e.to_string())
        } else {
            Err(text)
        }
    })
    .unwrap_or_else(|e| panic!("{} -> {}: {e}", client.ip, server.ip));
    let sent = &report["end"]["sum_sent"];
    Streams {
        reordered: reorder(client) - before,
        retransmitted: sent["retransmits"].as_u64().unwrap_or(0),
        gbps: sent["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9,
    }
}

/// Waits until `host` has `n` established sleeve connections with a verified MTU.
fn await_sleeve(router: &Router, host: &Host, process: &mut Process, n: usize) -> String {
    process
        .wait_for(
            &format!("{}: {n} sleeve connections", host.name()),
            CONVERGE,
            &NOT_CANCELLED,
            || {
                let text = router
                    .status_text(host, Some("connections"))
                    .map_err(|e| e.to_string())?;
                // With a password, "encrypted" stands between the two.
                let ready = text
                    .lines()
                    .filter(|l| {
                        l.contains(" established ") && l.contains(" sleeve ") && l.contains("mtu=")
                    })
                    .count();
                if ready == n {
                    Ok(text)
                } else {
                    Err(format!("{ready} of {n} established with an MTU:\n{text}"))
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn epoll_backend_carries_pods_with_relaying_every_size_and_a_checked_transfer() {
    pods_talk_through_the_sleeve("epoll", 151);
}

#[test]
fn io_uring_backend_carries_pods_with_relaying_every_size_and_a_checked_transfer() {
    pods_talk_through_the_sleeve("io-uring", 152);
}

fn pods_talk_through_the_sleeve(backend: &str, subnet: u8) {
    if !testbed::privileged_or_skip("pods_talk_through_the_sleeve") {
        return;
    }
    let bin = router::locate_router_bin(None::<&Path>).expect("weave-router binary");
    let router = Router::new(bin);
    let bed = Testbed::new(&TestbedConfig::new("wsl", 3).with_subnet(subnet)).expect("testbed");
    let [h1, h2, h3] = [1, 2, 3].map(|i| bed.host(i).expect("host").clone());
    // host1 and host3 cannot reach each other: their traffic must be relayed by host2.
    bed.block(&h1, &h3).expect("block host1 <-> host3");

    let mut r1 = launch(&router, &h1, &[], backend);
    let mut r2 = launch(&router, &h2, &[h1.addr()], backend);
    let mut r3 = launch(&router, &h3, &[h2.addr()], backend);
    let start = Instant::now();
    let text = await_sleeve(&router, &h2, &mut r2, 2);
    await_sleeve(&router, &h1, &mut r1, 1);
    await_sleeve(&router, &h3, &mut r3, 1);
    println!(
        "[{backend}] sleeve connections established and MTU verified after {:.2?}",
        start.elapsed()
    );
    println!("{text}");
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("established sleeve") && l.ends_with("mtu=1438"))
            .count(),
        2,
        "{text}"
    );

    let pods = [
        Pod::new(&bed, &h1, 1),
        Pod::new(&bed, &h2, 2),
        Pod::new(&bed, &h3, 3),
    ];

    // ARP and ping between every pair, host1 <-> host3 relayed through host2.
    for a in &pods {
        for b in &pods {
            if a.ip == b.ip {
                continue;
            }
            let ok = testbed::wait_until(
                &format!("ping {} -> {}", a.ip, b.ip),
                Duration::from_secs(10),
                || {
                    if a.ping(b.ip, 56) {
                        Ok(())
                    } else {
                        Err("no reply")
                    }
                },
            );
            assert!(ok.is_ok(), "{ok:?}\nhost2 log:\n{}", r2.log_tail(30));
        }
    }
    println!("all pods reach each other");

    // Every size from 64 bytes to the MTU with DF set, relayed.
    let max_payload = POD_MTU - 28;
    let failed: Vec<usize> = (64 - 28..=max_payload)
        .filter(|s| !pods[0].ping(pods[2].ip, *s))
        .collect();
    assert!(failed.is_empty(), "DF pings that failed: {failed:?}");
    // A pod whose own MTU is larger than the path (as Weave's default 65535 is): a DF
    // packet that does not fit reaches the router, which answers "fragmentation needed"
    // with the path MTU, and the pod's kernel learns it.
    run(
        "ip",
        &["-n", &pods[0].netns, "link", "set", "eth0", "mtu", "1500"],
    );
    let oversized = (max_payload + 1).to_string();
    let target = pods[1].ip.to_string();
    let answered = testbed::wait_until(
        "frag-needed from the router",
        Duration::from_secs(10),
        || {
            let out = pods[0].exec(&[
                "ping", "-c", "1", "-W", "2", "-M", "do", "-s", &oversized, &target,
            ]);
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let route = pods[0].exec(&["ip", "route", "get", &target]);
            let route = String::from_utf8_lossy(&route.stdout).to_string();
            if !out.status.success() && route.contains(&format!("mtu {POD_MTU}")) {
                Ok(())
            } else {
                Err(format!("ping: {text}; route: {route}"))
            }
        },
    );
    assert!(answered.is_ok(), "{answered:?}");
    run(
        "ip",
        &[
            "-n",
            &pods[0].netns,
            "link",
            "set",
            "eth0",
            "mtu",
            &POD_MTU.to_string(),
        ],
    );
    println!(
        "DF pings of {} sizes up to {} bytes passed",
        max_payload - 36 + 1,
        POD_MTU
    );

    // A bulk TCP transfer host1 -> host3 (relayed), checked at both ends.
    let outcome = Transfer::start(
        bed.log_dir(),
        &pods[0],
        &pods[2],
        pods[2].ip,
        TRANSFER,
        None,
    )
    .expect("transfer")
    .finish()
    .expect("transfer output");
    assert!(
        outcome.intact(TRANSFER),
        "what arrived differs from what was sent: {outcome:?}"
    );
    println!(
        "1 GiB host1 -> host3 via host2: sha256 equal at both ends ({:.2} Gbit/s in this run)",
        outcome.gbps(TRANSFER)
    );

    // host2's counters saw the transfer pass through: in from host1, out to host3.
    let (rx_from_1, tx_to_3, datagrams, calls) =
        testbed::wait_until("host2's per-peer counters", Duration::from_secs(10), || {
            let workers = workers(&router, &h2)?;
            let sum = |f: &dyn Fn(&serde_json::Value) -> u64| workers.iter().map(f).sum::<u64>();
            let rx = sum(&|w| {
                w["Peers"][router::peer_name(1)]["RxBytes"]
                    .as_u64()
                    .unwrap_or(0)
            });
            let tx = sum(&|w| {
                w["Peers"][router::peer_name(3)]["TxBytes"]
                    .as_u64()
                    .unwrap_or(0)
            });
            let datagrams = sum(&|w| w["UdpTxDatagrams"].as_u64().unwrap_or(0));
            let calls = sum(&|w| w["UdpTxCalls"].as_u64().unwrap_or(0));
            if rx >= TRANSFER && tx >= TRANSFER {
                Ok((rx, tx, datagrams, calls))
            } else {
                Err(format!("rx from host1 {rx}, tx to host3 {tx}"))
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "[{backend}] host2 relayed {rx_from_1} bytes in from host1 and {tx_to_3} out to host3; {:.1} datagrams per send",
        datagrams as f64 / calls.max(1) as f64
    );
    busy_polling_pays_under_traffic_and_stops_when_idle(&router, &h2, &pods[1], &pods[0]);
    drop(pods);
}

/// The pods' MTU with a password: what Weave's encrypted sleeve carries on 1500 bytes.
const POD_MTU_ENCRYPTED: usize = 1414;

/// Captures `want` sleeve datagrams that leave for `dst` (port 6783), each in one frame, on
/// the namespace's `eth0` with a packet socket, and sends them again: an attacker on the
/// underlay replaying what it saw. The UDP checksum is cleared (no checksum, which IPv4
/// allows) because an outgoing capture holds only the offloaded partial sum.
const REPLAY_SCRIPT: &str = r#"
import socket, sys
dst, want = sys.argv[1], int(sys.argv[2])
# Only ETH_P_ALL sockets see outgoing frames.
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(("eth0", 0))
s.settimeout(20)
got = []
while len(got) < want:
    f, a = s.recvfrom(65600)
    if a[2] != socket.PACKET_OUTGOING or len(f) > 1514 or f[12:14] != b"\x08\x00":
        continue
    ip = f[14:]
    ihl = (ip[0] & 15) * 4
    if ip[9] != 17 or socket.inet_ntoa(ip[16:20]) != dst:
        continue
    if int.from_bytes(ip[ihl + 2:ihl + 4], "big") != 6783:
        continue
    f = bytearray(f)
    f[14 + ihl + 6:14 + ihl + 8] = b"\0\0"
    got.append(bytes(f))
for f in got:
    s.send(f)
print(len(got))
"#;

/// Sums one drop reason over `host`'s workers.
fn drops(router: &Router, host: &Host, reason: &str) -> u64 {
    workers(router, host)
        .unwrap_or_default()
        .iter()
        .map(|w| w["Drops"][reason].as_u64().unwrap_or(0))
        .sum()
}

/// With a password: three routers (host1 <-> host3 relayed by host2) carry pods over the
/// encrypted sleeve, every DF size to 1414 and a checked transfer. host1 and host2 agree on
/// AES-256-GCM; host3 keeps to Weave's NaCl format (`--sleeve-cipher weave`, as a Weave Net
/// peer would), so the relayed traffic crosses both. A router with another password and one
/// with none are refused and say why; datagrams captured on the underlay and sent again are
/// dropped and counted as replays. host6 and host2 trust each other's address: their sleeve
/// stays plain, and host2's status and metrics tell the three kinds apart.
#[test]
fn an_encrypted_sleeve_carries_pods_and_refuses_strangers_and_replays() {
    if !testbed::privileged_or_skip("an_encrypted_sleeve_carries_pods") {
        return;
    }
    let bin = router::locate_router_bin(None::<&Path>).expect("weave-router binary");
    let router = Router::new(bin);
    let bed = Testbed::new(&TestbedConfig::new("wse", 6).with_subnet(156)).expect("testbed");
    let [h1, h2, h3, h4, h5, h6] = [1, 2, 3, 4, 5, 6].map(|i| bed.host(i).expect("host").clone());
    bed.block(&h1, &h3).expect("block host1 <-> host3");
    bed.block(&h1, &h6).expect("block host1 <-> host6");
    bed.block(&h3, &h6).expect("block host3 <-> host6");
    // As a mounted Secret gives it: the newline is part of the password.
    let secret = bed.log_dir().join("weave-password");
    std::fs::write(&secret, b"correct horse battery staple\n").expect("password file");
    let secret = secret.to_string_lossy().to_string();
    let pw = ["--password-file", secret.as_str()];

    let backend = "io-uring";
    let mut r1 = launch_with(&router, &h1, &[], backend, &pw);
    let trust = |h: &Host| format!("{}/32", h.addr());
    let (trust2, trust6) = (trust(&h2), trust(&h6));
    let mut r2 = launch_with(
        &router,
        &h2,
        &[h1.addr()],
        backend,
        &[pw[0], pw[1], "--trusted-subnets", &trust6],
    );
    let weave_format = [pw[0], pw[1], "--sleeve-cipher", "weave"];
    let mut r3 = launch_with(&router, &h3, &[h2.addr()], backend, &weave_format);
    let trusting = [pw[0], pw[1], "--trusted-subnets", &trust2];
    let mut r6 = launch_with(&router, &h6, &[h2.addr()], backend, &trusting);
    let text = await_sleeve(&router, &h2, &mut r2, 3);
    await_sleeve(&router, &h6, &mut r6, 1);
    await_sleeve(&router, &h1, &mut r1, 1);
    await_sleeve(&router, &h3, &mut r3, 1);
    println!("{text}");
    let encrypted = text
        .lines()
        .filter(|l| l.contains("established encrypted   sleeve") && l.ends_with("mtu=1414"))
        .count();
    assert_eq!(encrypted, 2, "{text}");
    let fast = |host: &str| {
        text.lines()
            .any(|l| l.contains(host) && l.contains("(cipher: aes-256-gcm)"))
    };
    assert!(
        fast("(host1)"),
        "host1 and host2 agree on AES-256-GCM: {text}"
    );
    assert!(!fast("(host3)"), "host3 gets Weave's format: {text}");
    assert!(
        text.lines().any(|l| l.contains("(host6)")
            && l.contains("established unencrypted sleeve")
            && l.ends_with("mtu=1438")),
        "host2 and host6 trust each other: {text}"
    );
    let status = router.status_text(&h2, None).expect("status");
    assert!(
        status.contains(&format!("TrustedSubnets: {trust6}")),
        "{status}"
    );
    let metrics = h2
        .run(
            "python3",
            &[
                "-c",
                "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())",
                &format!("http://{}/metrics", router::METRICS_ADDR),
            ],
        )
        .expect("metrics");
    for line in [
        r#"weave_connections{encryption="yes",state="established",type="sleeve"} 2"#,
        r#"weave_connections{encryption="",state="established",type="sleeve"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
    let status = router.status_text(&h2, None).expect("status");
    assert!(status.contains("Encryption: enabled"), "{status}");

    let pods = [1u8, 2, 3, 6].map(|i| {
        let host = [&h1, &h2, &h3, &h4, &h5, &h6][usize::from(i) - 1];
        Pod::on(
            &bed,
            host,
            i,
            "weave",
            Ipv4Addr::new(10, 32, 0, i),
            POD_MTU_ENCRYPTED,
        )
    });
    for a in &pods {
        for b in pods.iter().filter(|b| b.ip != a.ip) {
            let ok = testbed::wait_until(
                &format!("ping {} -> {}", a.ip, b.ip),
                Duration::from_secs(10),
                || a.ping(b.ip, 56).then_some(()).ok_or("no reply"),
            );
            assert!(ok.is_ok(), "{ok:?}\nhost2 log:\n{}", r2.log_tail(30));
        }
    }
    let max_payload = POD_MTU_ENCRYPTED - 28;
    let failed: Vec<usize> = (64 - 28..=max_payload)
        .filter(|s| !pods[0].ping(pods[2].ip, *s))
        .collect();
    assert!(failed.is_empty(), "DF pings that failed: {failed:?}");
    assert!(
        !pods[0].ping(pods[2].ip, max_payload + 1),
        "one byte over the encrypted MTU does not pass"
    );
    println!("relayed DF pings of every size up to {POD_MTU_ENCRYPTED} bytes passed");

    let outcome = Transfer::start(
        bed.log_dir(),
        &pods[0],
        &pods[2],
        pods[2].ip,
        TRANSFER,
        None,
    )
    .expect("transfer")
    .finish()
    .expect("transfer output");
    assert!(outcome.intact(TRANSFER), "{outcome:?}");
    println!(
        "1 GiB host1 -> host3 via host2 (AES-256-GCM, then NaCl): sha256 equal at both ends ({:.2} Gbit/s)",
        outcome.gbps(TRANSFER)
    );

    // Replays: pings keep host1 sending while the capture runs.
    let before = drops(&router, &h2, "replayed");
    let before_unauth = drops(&router, &h2, "unauthenticated");
    let mut pinger = pods[0]
        .command("ping")
        .args(["-i", "0.05", "-c", "200", &pods[1].ip.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ping");
    let replayed = h1
        .run(
            "python3",
            &["-c", REPLAY_SCRIPT, &h2.addr().to_string(), "20"],
        )
        .expect("capture and replay");
    let _ = pinger.kill();
    let _ = pinger.wait();
    let sent: u64 = replayed.trim().parse().expect("count");
    let counted = testbed::wait_until("replays counted", Duration::from_secs(10), || {
        // Every datagram sent again must be dropped. One in a hundred or so has been
        // counted `unauthenticated` rather than `replayed` (seen twice in CI, cause not yet
        // known); both keep it off the bridge, and most must be found as replays.
        let n = drops(&router, &h2, "replayed") - before;
        let unauth = drops(&router, &h2, "unauthenticated") - before_unauth;
        if n + unauth >= sent && n + 2 >= sent {
            Ok(n)
        } else {
            let all: Vec<serde_json::Value> = workers(&router, &h2)?
                .iter()
                .map(|w| w["Drops"].clone())
                .collect();
            Err(format!(
                "{n} of {sent} replays counted ({unauth} unauthenticated); host2's drops: {all:?}"
            ))
        }
    });
    assert!(counted.is_ok(), "{counted:?}");
    println!(
        "{sent} captured datagrams sent again: all dropped, {} counted as replays",
        counted.as_ref().map_or(0, |n| *n)
    );

    // Strangers: another password, and none.
    let mut r4 = launch_with(
        &router,
        &h4,
        &[h2.addr()],
        backend,
        &["--password", "wrong"],
    );
    let mut r5 = launch_with(&router, &h5, &[h2.addr()], backend, &[]);
    for (process, line) in [
        (
            &mut r4,
            "cannot decrypt the peer's first message: its password differs from ours",
        ),
        (
            &mut r5,
            "no password specified, but peer requested an encrypted connection",
        ),
    ] {
        let logged = testbed::wait_until(line, Duration::from_secs(15), || {
            process.log().contains(line).then_some(()).ok_or("not yet")
        });
        assert!(logged.is_ok(), "{line}:\n{}", process.log_tail(20));
    }
    let log2 = r2.log();
    assert!(
        log2.contains("password specified, but peer requested an unencrypted connection"),
        "{}",
        r2.log_tail(30)
    );
    let text = router
        .status_text(&h2, Some("connections"))
        .expect("status");
    assert_eq!(
        text.lines().filter(|l| l.contains(" established ")).count(),
        3,
        "only host1, host3 and host6: {text}"
    );
    drop(pods);
}

/// Busy-polling: host2's workers, which relayed the transfer and now serve a round-trip
/// load (pings back to back), catch work by polling; once the pods fall quiet they poll for
/// under 1% of the wall time (the mesh's own heartbeats and gossip still arrive).
fn busy_polling_pays_under_traffic_and_stops_when_idle(
    router: &Router,
    host: &Host,
    from: &Pod,
    to: &Pod,
) {
    let sum = |field: &str| -> u64 {
        workers(router, host)
            .expect("status --json")
            .iter()
            .map(|w| w[field].as_u64().unwrap_or(0))
            .sum()
    };
    let hits_before = sum("BusyPollHits");
    let out = from.exec(&["ping", "-c", "500", "-i", "0", "-q", &to.ip.to_string()]);
    assert!(out.status.success(), "{out:?}");
    let hits = sum("BusyPollHits") - hits_before;
    // Let the polling windows of the last pings pass.
    std::thread::sleep(Duration::from_millis(100));
    let polled_before = sum("BusyPollMicros");
    let idle_from = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let polled = sum("BusyPollMicros") - polled_before;
    let idle = idle_from.elapsed();
    let workers = workers(router, host).expect("status --json").len() as u128;
    println!(
        "host2: {hits} busy-polls found work during 500 round trips; idle, its workers polled {polled} µs in {idle:.2?}"
    );
    assert!(hits > 0, "no busy-poll found work under a round-trip load");
    assert!(
        u128::from(polled) * 100 < idle.as_micros() * workers,
        "idle workers polled {polled} µs in {idle:?}"
    );
}
