//! Privileged end-to-end test of IP address management: three `weave-router` processes, each
//! in its own network namespace and joined by veths to a bridge in a fourth, elect the ring
//! by consensus, hand out addresses concurrently, keep them across a `kill -9`, and take
//! over a dead peer's space with `rmpeer`. Every process and namespace is removed even when
//! the test fails, and the routers' logs are printed then.
//!
//! It needs root; without it it prints why it is skipped (and fails under `CI`).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Instant;

use serde_json::Value;
use weave_router::cli::http::ClientError;
use weave_router::sys::netns;

const PREFIX: &str = "wripam-";
/// The routers' addresses are `<UNDERLAY>.<index>/24`, on the bridge in the hub namespace.
const UNDERLAY: &str = "192.168.213";
/// The default allocation range, 10.32.0.0/12.
const RANGE_START: u32 = 0x0a20_0000;
const RANGE_SIZE: u32 = 1 << 20;
/// How long an allocation may wait for the ring; answered (503) well inside the client's
/// 10 s read timeout, so a stuck allocation fails with the router's reason.
const ALLOC_WAIT: &str = "timeout=8";

mod common;
use common::cluster::{
    call, owner_of, ownership, parse_ip, peer_name, wait_until, Cluster, Router,
};

/// Starts router `index` with consensus=3; routers 2 and 3 are given router 1 as their peer.
fn launch(cluster: &mut Cluster, index: usize) {
    let mut args = vec!["--ipalloc-init".to_string(), "consensus=3".to_string()];
    if index > 1 {
        args.push(format!("{UNDERLAY}.1"));
    }
    cluster.launch_with(index, &args, &[]);
}

/// "10.32.0.5/12" → the address; it must be a host address of the default subnet.
fn parse_cidr(text: &str) -> u32 {
    let (ip, plen) = text
        .trim()
        .split_once('/')
        .unwrap_or_else(|| panic!("no prefix length in {text:?}"));
    assert_eq!(plen, "12", "{text}: not in the default subnet 10.32.0.0/12");
    let addr = parse_ip(ip);
    assert!(
        addr > RANGE_START && addr < RANGE_START + RANGE_SIZE - 1,
        "{text}: not a host address of 10.32.0.0/12"
    );
    addr
}

/// Every id router `r` holds addresses for, from `GET /ip`.
fn allocations(r: &Router) -> BTreeMap<String, Vec<u32>> {
    let v: Value = serde_json::from_str(&r.text("GET", "/ip")).expect("/ip JSON");
    v["owned"]
        .as_array()
        .expect("owned list")
        .iter()
        .map(|m| {
            let id = m["containerid"].as_str().expect("containerid").to_owned();
            let addrs = m["addrs"]
                .as_array()
                .expect("addrs")
                .iter()
                .map(|a| parse_cidr(a.as_str().expect("address")))
                .collect();
            (id, addrs)
        })
        .collect()
}

/// One answered allocation.
#[derive(Debug, Clone)]
struct Allocation {
    router: usize,
    id: String,
    addr: u32,
}

/// `threads` clients on each router, each allocating `per_thread` addresses in a row,
/// all at once. Every allocation must succeed.
fn allocate_concurrently(
    routers: &[&Router],
    threads: usize,
    per_thread: usize,
    tag: &str,
) -> Vec<Allocation> {
    thread::scope(|s| {
        let mut handles = Vec::new();
        for r in routers {
            for t in 0..threads {
                let (ns, index, nick) = (r.ns.clone(), r.index, r.nickname());
                handles.push(s.spawn(move || {
                    netns::enter_netns(&ns).expect("enter router namespace");
                    (0..per_thread)
                        .map(|k| {
                            let id = format!("{tag}-{nick}-{t}-{k}");
                            let resp = call("POST", &format!("/ip/{id}?{ALLOC_WAIT}"))
                                .unwrap_or_else(|e| panic!("allocate {id} on {nick}: {e}"));
                            assert_eq!(resp.status, 200, "allocate {id}");
                            let body = String::from_utf8(resp.body).expect("utf-8");
                            Allocation {
                                router: index,
                                id,
                                addr: parse_cidr(&body),
                            }
                        })
                        .collect::<Vec<_>>()
                }));
            }
        }
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("allocating thread"))
            .collect()
    })
}

/// Fails if two of `allocs` share an address.
fn assert_distinct<'a>(allocs: impl IntoIterator<Item = (&'a str, u32)>) -> usize {
    let mut seen: HashMap<u32, &str> = HashMap::new();
    for (id, addr) in allocs {
        if let Some(other) = seen.insert(addr, id) {
            panic!(
                "{} handed out twice: {other} and {id}",
                Ipv4Addr::from(addr)
            );
        }
    }
    seen.len()
}

/// Every allocation the running routers hold, as `GET /ip` lists them.
fn live_allocations(cluster: &Cluster) -> Vec<(String, u32)> {
    cluster
        .running()
        .iter()
        .flat_map(|r| {
            allocations(r).into_iter().flat_map(move |(id, addrs)| {
                addrs
                    .into_iter()
                    .map(move |a| (format!("{}/{id}", r.nickname()), a))
            })
        })
        .collect()
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn three_routers_elect_allocate_survive_kill_and_take_over_a_dead_peer() {
    const TEST: &str = "three_routers_elect_allocate";
    let Some(mut cluster) = Cluster::new(TEST, PREFIX, UNDERLAY, 3) else {
        return;
    };
    let started = Instant::now();

    // (a) Router 1 alone: consensus=3 needs a quorum of 2, so nothing can be allocated.
    launch(&mut cluster, 1);
    let r1 = cluster.r(1);
    let err = r1
        .call("POST", "/ip/x?timeout=2")
        .expect_err("no allocation before consensus");
    match &err {
        ClientError::Refused {
            status: 503,
            message,
            ..
        } => assert!(
            message.contains("awaiting consensus (quorum: 2, known: 1)"),
            "{message}"
        ),
        other => panic!("expected 503, got {other}"),
    }
    let status = r1.cli(&["status"]);
    assert!(status.status.success(), "{}", stderr_of(&status));
    assert!(
        stdout_of(&status).contains("         Status: awaiting consensus (quorum: 2, known: 1)\n"),
        "{}",
        stdout_of(&status)
    );
    let ipam = r1.cli(&["status", "ipam"]);
    assert!(ipam.status.success(), "{}", stderr_of(&ipam));
    assert_eq!(
        stdout_of(&ipam),
        "awaiting consensus (quorum: 2, known: 1)\n"
    );
    assert!(matches!(
        r1.call("GET", "/ip/x"),
        Err(ClientError::Refused { status: 404, .. })
    ));
    assert!(allocations(r1).is_empty());
    let ipam = r1.report().ipam.expect("IPAM in /report");
    assert!(ipam.entries.is_empty(), "{ipam:?}");
    assert_eq!(ipam.active_ips, 0);
    assert!(ipam.pending_allocates.is_empty(), "{ipam:?}");
    eprintln!("(a) done at {:?}", started.elapsed());

    // (b) The others join: the ring is made, and 300 concurrent allocations over the three
    // routers are all distinct, inside the range, and each in a range its router owns.
    launch(&mut cluster, 2);
    launch(&mut cluster, 3);
    for r in cluster.running() {
        wait_until(&format!("{}'s ring", r.nickname()), || {
            r.call("GET", "/ring?timeout=1").map_err(|e| e.to_string())
        });
    }
    let routers = cluster.running();
    let allocs = allocate_concurrently(&routers, 4, 25, "b");
    assert_eq!(allocs.len(), 300);
    assert_eq!(
        assert_distinct(allocs.iter().map(|a| (a.id.as_str(), a.addr))),
        300
    );
    for r in &routers {
        let mine: Vec<&Allocation> = allocs.iter().filter(|a| a.router == r.index).collect();
        assert_eq!(mine.len(), 100);
        netns::run_in_netns(&r.ns, || {
            for a in &mine {
                let resp = call("GET", &format!("/ip/{}", a.id))
                    .unwrap_or_else(|e| panic!("look up {}: {e}", a.id));
                let body = String::from_utf8(resp.body).expect("utf-8");
                assert_eq!(parse_cidr(&body), a.addr, "{}", a.id);
            }
        })
        .expect("enter router namespace");
        let ipam = r.report().ipam.expect("IPAM");
        assert_eq!(ipam.active_ips, 100, "{}", r.nickname());
    }
    let ring = cluster.wait_for_agreement();
    let owners: Vec<&str> = ring.iter().map(|e| e.peer.as_str()).collect();
    for i in 1..=3 {
        assert!(owners.contains(&peer_name(i).as_str()), "{ring:?}");
    }
    assert_eq!(
        ring.iter().map(|e| u64::from(e.size)).sum::<u64>(),
        u64::from(RANGE_SIZE),
        "{ring:?}"
    );
    for a in &allocs {
        assert_eq!(owner_of(&ring, a.addr), peer_name(a.router), "{a:?}");
    }
    drop(routers);
    cluster.wait_for_full_mesh();
    let settled = cluster.wait_for_gossip_to_settle();
    assert_eq!(ownership(&settled), ownership(&ring));
    eprintln!("(b) done at {:?}", started.elapsed());

    // (c) kill -9 of router 2 while a client is allocating on it: after a restart on the
    // same store it still holds every address it answered with, and what it hands out next
    // collides with nothing.
    let answered = AtomicUsize::new(0);
    let r2_ns = cluster.r(2).ns.clone();
    let inflight: Vec<Allocation> = thread::scope(|s| {
        let worker = s.spawn(|| {
            netns::enter_netns(&r2_ns).expect("enter router namespace");
            let mut got = Vec::new();
            for k in 0.. {
                let id = format!("c-inflight-{k}");
                match call("POST", &format!("/ip/{id}?{ALLOC_WAIT}")) {
                    Ok(resp) => {
                        let body = String::from_utf8(resp.body).expect("utf-8");
                        got.push(Allocation {
                            router: 2,
                            id,
                            addr: parse_cidr(&body),
                        });
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                    // The router died under the request (or before it): the connection
                    // was refused, reset, or closed with no answer.
                    Err(
                        ClientError::Io { .. }
                        | ClientError::Unreachable { .. }
                        | ClientError::BadResponse { .. },
                    ) => break,
                    Err(e) => panic!("allocate {id}: {e}"),
                }
            }
            got
        });
        wait_until("allocations in flight on n2", || {
            if answered.load(Ordering::SeqCst) >= 20 || worker.is_finished() {
                Ok(())
            } else {
                Err(format!("{} answered", answered.load(Ordering::SeqCst)))
            }
        });
        cluster.kill(2);
        worker.join().expect("allocating thread")
    });
    assert!(inflight.len() >= 20, "{} answered", inflight.len());
    let ring_before = cluster.r(1).ring();
    launch(&mut cluster, 2);
    let r2 = cluster.r(2);
    let held: Vec<&Allocation> = allocs
        .iter()
        .filter(|a| a.router == 2)
        .chain(&inflight)
        .collect();
    netns::run_in_netns(&r2.ns, || {
        for a in &held {
            let resp = call("GET", &format!("/ip/{}", a.id))
                .unwrap_or_else(|e| panic!("n2 lost {} after the restart: {e}", a.id));
            let body = String::from_utf8(resp.body).expect("utf-8");
            assert_eq!(parse_cidr(&body), a.addr, "{}", a.id);
        }
    })
    .expect("enter router namespace");
    // An allocation in flight at the kill may have been stored without its answer.
    let active = r2.report().ipam.expect("IPAM").active_ips;
    assert!(
        active == held.len() as u64 || active == held.len() as u64 + 1,
        "n2 holds {active} addresses, answered {}",
        held.len()
    );
    eprintln!(
        "(c) n2 answered {} allocations ({} in flight at the kill); it holds {active} after the restart",
        held.len(),
        inflight.len()
    );
    assert_eq!(ownership(&r2.ring()), ownership(&ring_before));
    let fresh = allocate_concurrently(&[r2], 3, 10, "c-after");
    let mut all = live_allocations(&cluster);
    assert_eq!(
        all.len(),
        300 + inflight.len() + fresh.len() + (active as usize - held.len())
    );
    assert_distinct(all.iter().map(|(id, a)| (id.as_str(), *a)));
    for a in &fresh {
        assert!(all.iter().any(|(_, addr)| *addr == a.addr), "{a:?}");
        assert_eq!(owner_of(&ring_before, a.addr), peer_name(2), "{a:?}");
    }
    cluster.wait_for_full_mesh();
    cluster.wait_for_agreement();
    eprintln!("(c) done at {:?}", started.elapsed());

    // (d) Router 3 stops for good: once router 1 sees it gone, rmpeer there takes over its
    // ranges, the ring everywhere forgets it, and allocations go on.
    let ring = cluster.r(1).ring();
    let n3 = peer_name(3);
    let n3_share: u64 = ring
        .iter()
        .filter(|e| e.peer == n3)
        .map(|e| u64::from(e.size))
        .sum();
    let n3_first = ring
        .iter()
        .find(|e| e.peer == n3)
        .expect("n3 owns a range")
        .clone();
    assert!(n3_share > 0);
    cluster.kill(3);
    let r1 = cluster.r(1);
    wait_until("n1 to see n3 unreachable", || {
        let ring = r1.ring();
        if ring.iter().filter(|e| e.peer == n3).all(|e| !e.reachable) {
            Ok(())
        } else {
            Err(format!("{ring:?}"))
        }
    });
    let ranges = r1.text("GET", "/status/ipam");
    assert!(
        ranges.contains("aa:00:00:00:00:03(n3)") && ranges.contains("- unreachable!"),
        "{ranges}"
    );
    let out = r1.cli(&["rmpeer", "n3"]);
    assert!(out.status.success(), "rmpeer n3: {}", stderr_of(&out));
    assert_eq!(
        stdout_of(&out),
        format!("{n3_share} IPs taken over from n3\n")
    );
    let ring1 = r1.ring();
    assert!(ring1.iter().all(|e| e.peer != n3), "{ring1:?}");
    assert_eq!(
        ring1.iter().map(|e| u64::from(e.size)).sum::<u64>(),
        u64::from(RANGE_SIZE)
    );
    let ranges = r1.text("GET", "/status/ipam");
    assert!(!ranges.contains("(n3)"), "{ranges}");
    let status = r1.cli(&["status"]);
    assert!(
        stdout_of(&status).contains("         Status: ready\n"),
        "{}",
        stdout_of(&status)
    );
    let ring = cluster.wait_for_agreement();
    assert!(ring.iter().all(|e| e.peer != n3), "{ring:?}");
    assert_eq!(owner_of(&ring, n3_first.start), peer_name(1));
    // n3's former space is n1's to hand out: a claim there succeeds.
    let taken = Ipv4Addr::from(n3_first.start + 1).to_string();
    let resp = r1
        .call("PUT", &format!("/ip/d-claim/{taken}/12?{ALLOC_WAIT}"))
        .expect("claim in n3's former range");
    assert_eq!(resp.status, 204);
    assert_eq!(r1.text("GET", "/ip/d-claim").trim(), format!("{taken}/12"));
    let more = allocate_concurrently(&cluster.running(), 3, 10, "d");
    assert_eq!(more.len(), 60);
    for a in &more {
        assert_eq!(owner_of(&ring, a.addr), peer_name(a.router), "{a:?}");
    }
    all = live_allocations(&cluster);
    assert_distinct(all.iter().map(|(id, a)| (id.as_str(), *a)));
    for a in &more {
        assert!(all.iter().any(|(_, addr)| *addr == a.addr), "{a:?}");
    }
    eprintln!("(d) done at {:?}", started.elapsed());

    // (e) A live peer cannot be removed, by nickname or by name; nothing changes.
    let r1 = cluster.r(1);
    let r2 = cluster.r(2);
    for (on, target) in [(r1, "n2".to_owned()), (r2, peer_name(1))] {
        let out = on.cli(&["rmpeer", &target]);
        assert!(!out.status.success(), "rmpeer {target} of a live peer");
        let err = stderr_of(&out);
        assert!(err.contains("409") && err.contains("is reachable"), "{err}");
        assert!(stdout_of(&out).is_empty(), "{}", stdout_of(&out));
    }
    assert_eq!(ownership(&cluster.wait_for_agreement()), ownership(&ring));
    eprintln!("(e) done at {:?}", started.elapsed());
}
