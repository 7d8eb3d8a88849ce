//! Three weave-routers in three network namespaces, started as a chain (host3 knows only
//! host2): they form a full mesh, survive the loss of the middle router, and take it back
//! when it restarts. Needs root; builds and removes its own namespaces.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use weave_perf::router::{self, Report, Router};
use weave_perf::testbed::{self, Host, Process, Testbed, TestbedConfig};

/// Generous: the machines running this are small and shared. No assertion is made on how
/// fast the mesh converges, only that it does within this bound.
const CONVERGE: Duration = Duration::from_secs(20);

static NOT_CANCELLED: AtomicBool = AtomicBool::new(false);

#[test]
fn chain_of_three_forms_a_mesh_survives_and_rejoins() {
    if !testbed::privileged_or_skip("chain_of_three_forms_a_mesh_survives_and_rejoins") {
        return;
    }
    // Inside the router crate Cargo names the binary; elsewhere it is found next to the
    // test executable or through WEAVE_ROUTER_BIN.
    let bin = router::locate_router_bin(option_env!("CARGO_BIN_EXE_weave-router").map(Path::new))
        .expect("weave-router binary");
    let router = Router::new(bin);
    let bed = Testbed::new(&TestbedConfig::new("wmt", 3).with_subnet(150)).expect("testbed");
    let [h1, h2, h3] = [1, 2, 3].map(|i| bed.host(i).expect("host").clone());
    let start = Instant::now();

    let mut r1 = router.launch(&h1, &[]).expect("launch host1");
    let mut r2 = router.launch(&h2, &[h1.addr()]).expect("launch host2");
    let mut r3 = router.launch(&h3, &[h2.addr()]).expect("launch host3");

    // 1. The chain becomes a mesh of three peers.
    for (host, process) in [(&h1, &mut r1), (&h2, &mut r2), (&h3, &mut r3)] {
        await_report(&router, host, process, "3 peers", |r| peers_are(r, 3));
    }
    println!(
        "all three routers see 3 peers after {:.2?}",
        start.elapsed()
    );

    // 2. host1 and host3 learn of each other through host2 and connect directly.
    let discovered = Instant::now();
    let report1 = await_report(&router, &h1, &mut r1, "a connection to host3", |r| {
        established(r, h3.addr())
    });
    await_report(&router, &h3, &mut r3, "a connection to host1", |r| {
        established(r, h1.addr())
    });
    println!(
        "host1 <-> host3 established {:.2?} after the mesh formed",
        discovered.elapsed()
    );
    let old_uid = report1
        .peer(&router::peer_name(2))
        .expect("host1 knows host2")
        .uid;

    // 3. Without host2, host1 and host3 stay connected and forget host2.
    r2.kill().expect("kill host2's router");
    let killed = Instant::now();
    for (host, process, other) in [(&h1, &mut r1, &h3), (&h3, &mut r3, &h1)] {
        await_report(
            &router,
            host,
            process,
            "host2 gone, the other still connected",
            |r| {
                established(r, other.addr())?;
                peers_are(r, 2)?;
                match r.peer(&router::peer_name(2)) {
                    Some(_) => Err("host2 still listed".to_owned()),
                    None => Ok(()),
                }
            },
        );
    }
    println!(
        "host2 killed: host1 and host3 still connected, host2 removed after {:.2?}",
        killed.elapsed()
    );

    // 4. A restarted host2 rejoins as a new incarnation of the same peer.
    let mut r2 = router.launch(&h2, &[h1.addr()]).expect("relaunch host2");
    let restarted = Instant::now();
    for (host, process) in [(&h1, &mut r1), (&h2, &mut r2), (&h3, &mut r3)] {
        await_report(&router, host, process, "3 peers again", |r| peers_are(r, 3));
    }
    let report1 = await_report(&router, &h1, &mut r1, "host2's new UID", |r| {
        match r.peer(&router::peer_name(2)) {
            Some(p) if p.uid != old_uid => Ok(()),
            Some(_) => Err(format!("host2 still has its old UID {old_uid}")),
            None => Err("host2 unknown".to_owned()),
        }
    });
    let new_uid = report1
        .peer(&router::peer_name(2))
        .expect("host2 rejoined")
        .uid;
    assert_ne!(new_uid, old_uid);
    println!(
        "host2 restarted: all three see 3 peers after {:.2?} (host2 UID {old_uid} -> {new_uid})",
        restarted.elapsed()
    );

    drop((r1, r2, r3));
    bed.teardown().expect("teardown");
}

/// Polls `host`'s report until `check` accepts it; panics with the last reason, or with the
/// router's log if it exited.
fn await_report(
    router: &Router,
    host: &Host,
    process: &mut Process,
    what: &str,
    check: impl Fn(&Report) -> Result<(), String>,
) -> Report {
    let what = format!("{}: {what}", host.name());
    process
        .wait_for(&what, CONVERGE, &NOT_CANCELLED, || {
            let report = router.report(host).map_err(|e| e.to_string())?;
            check(&report).map(|()| report)
        })
        .unwrap_or_else(|e| panic!("{e}"))
}

fn peers_are(report: &Report, n: usize) -> Result<(), String> {
    let names: Vec<&str> = report
        .router
        .peers
        .iter()
        .map(|p| p.nickname.as_str())
        .collect();
    if names.len() == n {
        Ok(())
    } else {
        Err(format!("{} peers {names:?}, want {n}", names.len()))
    }
}

fn established(report: &Report, ip: Ipv4Addr) -> Result<(), String> {
    if report.established_to(ip) {
        return Ok(());
    }
    let conns: Vec<String> = report
        .router
        .connections
        .iter()
        .map(|c| format!("{} {}", c.address, c.state))
        .collect();
    Err(format!("no established connection to {ip}; have {conns:?}"))
}
