//! Privileged tests of the host plumbing and of the sys layer (TAP queues, UDP GSO/GRO,
//! DF sockets), each in a fresh network namespace that is removed even when the test fails.
//!
//! They need root; without it they print why they are skipped (and fail under `CI`).

use std::io::{ErrorKind, IoSlice};
use std::net::{SocketAddr, UdpSocket};
use std::thread;
use std::time::Duration;

use serde_json::Value;
use weave_router::dataplane::plumbing::{
    self, HostPlumbing, IfAddr, PlumbingOp, BRIDGE_NAME, TAP_NAME,
};
use weave_router::sys::netns;
use weave_router::sys::socket::{self, PmtuDiscovery, UdpOptions};
use weave_router::sys::tap::{self, TapOffloads, TapOptions, TapQueue, VNET_HDR_LEN};

const MTU: u32 = 1376;
const PREFIX: &str = "wrplumb-";

mod common;
use common::Netns;

/// What the plumbing tests do in a namespace beyond the shared helpers.
trait PlumbingNetns {
    /// Runs `f` on a thread inside the namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T;
    /// The `ip -d -j link show` object of one link.
    fn link(&self, name: &str) -> Value;
    /// Plumbing as the router does it at start, inside the namespace.
    fn ensure(&self, desired: &HostPlumbing) -> Vec<PlumbingOp>;
}

impl PlumbingNetns for Netns {
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        netns::run_in_netns(&self.name, f).expect("enter test namespace")
    }

    fn link(&self, name: &str) -> Value {
        let out = self.ip(&["-d", "-s", "-j", "link", "show", "dev", name]);
        let mut all: Vec<Value> = serde_json::from_str(&out).expect("ip -j output");
        assert_eq!(all.len(), 1, "one link called {name}");
        all.remove(0)
    }

    fn ensure(&self, desired: &HostPlumbing) -> Vec<PlumbingOp> {
        self.run(|| plumbing::ensure_blocking(desired))
            .unwrap_or_else(|e| panic!("plumbing in {}: {e}", self.name))
    }
}

fn master_of(link: &Value) -> Option<&str> {
    link["master"].as_str()
}

fn ops_text(ops: &[PlumbingOp]) -> Vec<String> {
    ops.iter().map(ToString::to_string).collect()
}

#[test]
fn plumbing_builds_bridge_and_tap_and_a_second_run_does_nothing() {
    let Some(ns) = Netns::new("plumbing_builds_bridge_and_tap", PREFIX) else {
        return;
    };
    let desired = HostPlumbing::new(MTU);

    let first = ns.ensure(&desired);
    assert!(!first.is_empty());

    let bridge = ns.link(BRIDGE_NAME);
    assert_eq!(bridge["linkinfo"]["info_kind"], "bridge");
    assert_eq!(bridge["linkinfo"]["info_data"]["stp_state"], 0);
    assert_eq!(bridge["mtu"], MTU);
    assert!(bridge["flags"]
        .as_array()
        .expect("flags")
        .contains(&Value::from("UP")));

    let tap = ns.link(TAP_NAME);
    let info = &tap["linkinfo"]["info_data"];
    assert_eq!(tap["linkinfo"]["info_kind"], "tun");
    assert_eq!(info["type"], "tap");
    assert_eq!(info["multi_queue"], true);
    assert_eq!(info["persist"], true);
    assert_eq!(info["pi"], false);
    assert_eq!(tap["mtu"], desired.tap_mtu);
    assert_eq!(tap["txqlen"], plumbing::DEFAULT_TAP_TXQUEUELEN);
    assert_eq!(master_of(&tap), Some(BRIDGE_NAME));
    assert!(tap["flags"]
        .as_array()
        .expect("flags")
        .contains(&Value::from("UP")));

    assert_eq!(ops_text(&ns.ensure(&desired)), Vec::<String>::new());
}

#[test]
fn pods_keep_their_port_and_the_bridge_its_mtu_across_reruns() {
    let Some(ns) = Netns::new("pods_keep_their_port", PREFIX) else {
        return;
    };
    let desired = HostPlumbing::new(MTU);
    ns.ensure(&desired);

    // A "pod": one end of a veth on the bridge, with a larger MTU than the bridge.
    ns.ip(&[
        "link",
        "add",
        "vethwepl0",
        "mtu",
        "1500",
        "type",
        "veth",
        "peer",
        "name",
        "pod0",
    ]);
    ns.ip(&["link", "set", "vethwepl0", "master", BRIDGE_NAME, "up"]);

    assert_eq!(ops_text(&ns.ensure(&desired)), Vec::<String>::new());
    assert_eq!(master_of(&ns.link("vethwepl0")), Some(BRIDGE_NAME));
    assert_eq!(ns.link(BRIDGE_NAME)["mtu"], MTU);

    // Drift on the TAP is repaired, and only that: the bridge MTU is pinned, so it did not
    // follow its ports' smallest MTU up to 1400, and the pod stays where it was.
    ns.ip(&["link", "set", TAP_NAME, "nomaster"]);
    ns.ip(&["link", "set", TAP_NAME, "mtu", "1400", "txqueuelen", "77"]);
    assert_eq!(
        ops_text(&ns.ensure(&desired)),
        [
            format!("set {TAP_NAME} mtu {}", desired.tap_mtu),
            format!("set {TAP_NAME} txqueuelen 10000"),
            format!("set {TAP_NAME} master {BRIDGE_NAME}"),
        ]
    );
    assert_eq!(master_of(&ns.link(TAP_NAME)), Some(BRIDGE_NAME));
    assert_eq!(master_of(&ns.link("vethwepl0")), Some(BRIDGE_NAME));
}

#[test]
fn a_link_of_the_wrong_kind_is_replaced_only_while_nothing_is_attached() {
    let Some(ns) = Netns::new("a_link_of_the_wrong_kind", PREFIX) else {
        return;
    };
    // A port-less "weave" of another kind is replaced by the bridge.
    ns.ip(&["link", "add", BRIDGE_NAME, "type", "ifb"]);
    let ops = ns.ensure(&HostPlumbing::new(MTU));
    assert_eq!(
        ops_text(&ops[..2]),
        [
            format!("delete link {BRIDGE_NAME}"),
            format!("create bridge {BRIDGE_NAME}")
        ]
    );
    assert_eq!(ns.link(BRIDGE_NAME)["linkinfo"]["info_kind"], "bridge");

    // The TAP's name held by a bridge with a port: replacing it would cut the port off,
    // so the plumbing stops and touches nothing. (This kernel has no bond or vrf, so a
    // bridge is the master at hand.)
    ns.ip(&["link", "add", "wrtap0", "type", "bridge"]);
    ns.ip(&["link", "add", "p0", "type", "veth", "peer", "name", "p1"]);
    ns.ip(&["link", "set", "p0", "master", "wrtap0"]);
    let desired = HostPlumbing {
        tap: "wrtap0".to_owned(),
        ..HostPlumbing::new(MTU)
    };
    let result = ns.run(|| plumbing::ensure_blocking(&desired));
    let Err(plumbing::PlumbingError::Plan(plumbing::PlanError::WouldDetachPorts { ports, .. })) =
        result
    else {
        panic!("expected a refusal, got {result:?}");
    };
    assert_eq!(ports, ["p0"]);
    assert_eq!(ns.link("wrtap0")["linkinfo"]["info_kind"], "bridge");
    assert_eq!(master_of(&ns.link("p0")), Some("wrtap0"));
}

#[test]
fn bridge_address_is_added_once() {
    let Some(ns) = Netns::new("bridge_address_is_added_once", PREFIX) else {
        return;
    };
    let desired = HostPlumbing {
        bridge_address: Some(IfAddr {
            addr: "10.32.0.1".parse().expect("ip"),
            prefix_len: 12,
        }),
        ..HostPlumbing::new(MTU)
    };
    ns.ensure(&desired);
    assert_eq!(ops_text(&ns.ensure(&desired)), Vec::<String>::new());
    let addrs = ns.ip(&["-4", "-o", "addr", "show", "dev", BRIDGE_NAME]);
    assert_eq!(addrs.matches("10.32.0.1/12").count(), 1, "{addrs}");
}

#[test]
fn tap_queues_have_vnet_header_offloads_and_follow_the_worker_count() {
    let Some(ns) = Netns::new("tap_queues", PREFIX) else {
        return;
    };
    let desired = HostPlumbing::new(MTU);
    ns.ensure(&desired);

    let features = ns.run(tap::kernel_features).expect("TUNGETFEATURES");
    for flag in [libc::IFF_MULTI_QUEUE, libc::IFF_VNET_HDR, libc::IFF_NAPI] {
        assert_ne!(features & flag, 0, "kernel lacks tun flag {flag:#x}");
    }

    let queues = ns
        .run(|| TapQueue::open_queues(TAP_NAME, 4, &TapOptions::default()))
        .expect("open 4 queues");
    for q in &queues {
        let flags = q.flags().expect("TUNGETIFF");
        for flag in [
            libc::IFF_TAP,
            libc::IFF_NO_PI,
            libc::IFF_VNET_HDR,
            libc::IFF_MULTI_QUEUE,
            libc::IFF_PERSIST,
        ] {
            assert_ne!(flags & flag, 0, "queue flags {flags:#x} lack {flag:#x}");
        }
        assert_eq!(q.vnet_hdr_len(), VNET_HDR_LEN);
        // USO arrived in 6.2; on older kernels the fallback must still have TSO.
        assert!(q.offloads().contains(TapOffloads::SLEEVE.without_uso()));
    }
    let uso = queues[0].offloads().contains(TapOffloads::USO4);
    eprintln!(
        "tap offloads {:#x} (uso: {uso})",
        queues[0].offloads().bits()
    );
    assert_eq!(ns.link(TAP_NAME)["linkinfo"]["info_data"]["numqueues"], 4);

    let check_offloads = || {
        let ethtool = ns.exec(&["ethtool", "-k", TAP_NAME]);
        let feature = |name: &str| {
            ethtool
                .lines()
                .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
                .map(|v| v.starts_with("on"))
                .unwrap_or_else(|| panic!("ethtool -k has no {name}:\n{ethtool}"))
        };
        assert!(feature("tx-checksum-ip-generic"), "{ethtool}");
        assert!(feature("tx-tcp-segmentation"), "{ethtool}");
        assert!(feature("tx-tcp6-segmentation"), "{ethtool}");
        assert_eq!(feature("tx-udp-segmentation"), uso, "{ethtool}");
    };
    check_offloads();
    // Adopting the TAP again (what the plumbing does for a non-persistent one) must not
    // reset the device-wide offloads under the open queues.
    ns.run(|| tap::create_persistent(TAP_NAME)).expect("adopt");
    check_offloads();

    // A frame from the bridge side arrives on some queue behind a 12-byte vnet header:
    // give the bridge an address and make the host ARP for a neighbour behind the TAP.
    ns.ip(&["addr", "add", "10.99.0.1/24", "dev", BRIDGE_NAME]);
    let frame = ns.run(|| {
        let probe = UdpSocket::bind("10.99.0.1:0").expect("bind");
        let mut buf = vec![0u8; 65_536];
        // Bounded retries: the ARP request goes out as soon as the first send needs it, and
        // is repeated; this is not a timing assertion.
        for _ in 0..200 {
            let _ = probe.send_to(b"x", "10.99.0.2:9");
            for q in &queues {
                match q.read(&mut buf) {
                    // IPv6 neighbour discovery from the bridge comes first: skip to ARP.
                    Ok(n) if buf[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14] == [0x08, 0x06] => {
                        return buf[..n].to_vec()
                    }
                    Ok(n) => assert!(n >= VNET_HDR_LEN + 14, "short frame {n}"),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => panic!("tap read: {e}"),
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("no ARP request arrived on any tap queue");
    });
    assert!(frame.len() >= VNET_HDR_LEN + 14 + 28, "{frame:02x?}");
    let ethertype = &frame[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14];
    assert_eq!(ethertype, [0x08, 0x06], "ARP after the vnet header");
    assert_eq!(&frame[VNET_HDR_LEN..VNET_HDR_LEN + 6], [0xff; 6]);

    // A frame written into a queue (all-zero vnet header: no offload) enters the bridge.
    let rx_before = ns.link(TAP_NAME)["stats64"]["rx"]["packets"]
        .as_u64()
        .expect("rx packets");
    let mut out = vec![0u8; VNET_HDR_LEN];
    out.extend_from_slice(&[0xff; 6]); // broadcast
    out.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    out.extend_from_slice(&[0x88, 0xb5]); // local experimental ethertype
    out.extend_from_slice(&[0u8; 46]);
    let written = queues[1].write(&out).expect("tap write");
    assert_eq!(written, out.len());
    let rx_after = ns.link(TAP_NAME)["stats64"]["rx"]["packets"]
        .as_u64()
        .expect("rx packets");
    assert_eq!(rx_after, rx_before + 1);

    // A restart with fewer workers: the queues go, the TAP and its port stay, and the
    // plumbing has nothing to do.
    drop(queues);
    assert_eq!(ns.link(TAP_NAME)["linkinfo"]["info_data"]["numqueues"], 0);
    assert_eq!(master_of(&ns.link(TAP_NAME)), Some(BRIDGE_NAME));
    assert_eq!(ops_text(&ns.ensure(&desired)), Vec::<String>::new());
    let napi = TapOptions {
        napi: true,
        ..TapOptions::default()
    };
    let two = ns
        .run(|| TapQueue::open_queues(TAP_NAME, 2, &napi))
        .expect("open 2 napi queues");
    assert_eq!(ns.link(TAP_NAME)["linkinfo"]["info_data"]["numqueues"], 2);
    assert_eq!(two[0].write(&out).expect("napi write"), out.len());
    assert_eq!(ops_text(&ns.ensure(&desired)), Vec::<String>::new());
}

#[test]
fn tap_open_refuses_a_name_that_is_not_a_multi_queue_tap() {
    let Some(ns) = Netns::new("tap_open_refuses", PREFIX) else {
        return;
    };
    ns.ip(&["link", "add", "notatap", "type", "bridge"]);
    ns.ip(&["tuntap", "add", "mode", "tap", "name", "singleq"]);
    for name in ["notatap", "singleq"] {
        let err = ns
            .run(|| TapQueue::open(name, &TapOptions::default()))
            .expect_err("must refuse");
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{name}: {err}");
        assert!(err.to_string().contains(name), "{err}");
    }
    // The plumbing replaces a single-queue TAP of the right name (nothing attached to it).
    ns.ip(&["tuntap", "add", "mode", "tap", "name", TAP_NAME]);
    let ops = ns.ensure(&HostPlumbing::new(MTU));
    assert_eq!(
        ops_text(&ops[2..4]),
        [
            format!("delete link {TAP_NAME}"),
            format!("create persistent multi-queue tap {TAP_NAME}"),
        ]
    );
    assert_eq!(
        ns.link(TAP_NAME)["linkinfo"]["info_data"]["multi_queue"],
        true
    );
}

#[test]
fn gso_send_of_64_segments_arrives_as_one_gro_batch() {
    let Some(ns) = Netns::new("gso_send_of_64_segments", PREFIX) else {
        return;
    };
    const SEGMENTS: usize = 64;
    const SEGMENT: usize = 1000;
    let (meta, payload) = ns.run(|| {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let receiver = socket::open_udp(&UdpOptions {
            nonblocking: false,
            ..UdpOptions::sleeve(any, true)
        })
        .expect("receiver");
        receiver
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let sender = socket::open_udp(&UdpOptions::sleeve(any, true)).expect("sender");
        assert!(socket::udp_segment_supported(&sender));

        let data: Vec<u8> = (0..SEGMENTS * SEGMENT)
            .map(|i| (i / SEGMENT) as u8 ^ (i as u8))
            .collect();
        // Two iovecs, split off a segment boundary, to show gathering works with GSO.
        let parts = [IoSlice::new(&data[..1500]), IoSlice::new(&data[1500..])];
        let dest = receiver.local_addr().expect("addr");
        let sent = socket::send_segments(&sender, &parts, Some(dest), Some(SEGMENT as u16))
            .expect("gso send");
        assert_eq!(sent, data.len());

        let mut buf = vec![0u8; 65_536];
        let meta = socket::recv_segments(&receiver, &mut buf).expect("gro recv");
        assert_eq!(meta.source, Some(sender.local_addr().expect("addr")));
        (meta, (buf[..meta.len].to_vec(), data))
    });
    assert_eq!(meta.segment_size, Some(SEGMENT as u16), "{meta:?}");
    assert_eq!(meta.len, SEGMENTS * SEGMENT);
    assert_eq!(meta.segments(), SEGMENTS);
    assert!(!meta.truncated);
    assert!(payload.0 == payload.1, "payload differs");
}

#[test]
fn df_and_non_df_sockets_share_the_port_and_differ_above_the_path_mtu() {
    let Some(ns) = Netns::new("df_and_non_df_sockets", PREFIX) else {
        return;
    };
    // A link with a small MTU stands for a narrow path.
    ns.ip(&[
        "link", "add", "narrow0", "mtu", "1300", "type", "veth", "peer", "name", "narrow1",
    ]);
    ns.ip(&["link", "set", "narrow1", "up"]);
    ns.ip(&["addr", "add", "10.98.0.1/24", "dev", "narrow0"]);
    ns.ip(&["link", "set", "narrow0", "up"]);
    ns.run(|| {
        let local: SocketAddr = "10.98.0.1:6783".parse().expect("addr");
        let peer: SocketAddr = "10.98.0.2:6783".parse().expect("addr");
        let df = socket::open_udp(&UdpOptions::sleeve(local, true)).expect("df socket");
        let plain = socket::open_udp(&UdpOptions::sleeve(local, false)).expect("non-df socket");
        assert_eq!(
            socket::pmtu_discovery(&df).expect("mode"),
            PmtuDiscovery::Do
        );
        assert_eq!(
            socket::pmtu_discovery(&plain).expect("mode"),
            PmtuDiscovery::Dont
        );

        // Root may exceed net.core.rmem_max with SO_RCVBUFFORCE (the kernel doubles it).
        let sizes = socket::buffer_sizes(&df).expect("sizes");
        assert!(sizes.recv >= 8 << 20, "{sizes:?}");
        assert!(sizes.send >= 8 << 20, "{sizes:?}");

        let big = vec![0u8; 1400];
        let err = socket::send_segments(&df, &[IoSlice::new(&big)], Some(peer), None)
            .expect_err("DF send above the path MTU");
        assert_eq!(err.raw_os_error(), Some(libc::EMSGSIZE), "{err}");
        let sent = socket::send_segments(&plain, &[IoSlice::new(&big)], Some(peer), None)
            .expect("non-DF send is fragmented");
        assert_eq!(sent, big.len());

        let connected = socket::open_udp(&UdpOptions::sleeve(
            "10.98.0.1:0".parse().expect("addr"),
            true,
        ))
        .expect("probe socket");
        connected.connect(peer).expect("connect");
        assert_eq!(socket::path_mtu(&connected).expect("IP_MTU"), 1300);
    });
}
