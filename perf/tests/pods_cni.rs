//! Pods attached by `weave-cni`, called exactly as a container runtime calls a CNI plugin
//! (`CNI_*` variables, the configuration on stdin, the result on stdout), on three hosts whose
//! routers share one IPAM ring. host1 and host3 cannot reach each other: their pods' traffic
//! is relayed by host2.
//!
//! Needs root (network namespaces); skipped otherwise, and never skipped in CI.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use weave_perf::cni::{self, PodNetns as Pod};
use weave_perf::router::{self, Router, HTTP_ADDR};
use weave_perf::testbed::{self, Host, InNetns, Testbed, TestbedConfig};

const CONF: &str = cni::MINIMAL_CONF;

fn cni_bin() -> PathBuf {
    let router = router::locate_router_bin(None::<&Path>).expect("weave-router binary");
    cni::locate_cni_bin(&router).expect("weave-cni binary")
}

fn pod(bed: &Testbed, name: &str) -> Pod {
    Pod::new(&format!("{}-{name}", bed.run_id())).expect("pod netns")
}

/// `weave-cni` on `host`, as a runtime calls it.
fn call(
    bin: &Path,
    host: &Host,
    command: &str,
    pod: Option<&Pod>,
    netns: Option<&str>,
    conf: &str,
) -> cni::CniAnswer {
    cni::invoke(bin, host, command, pod, netns, conf).expect("run weave-cni")
}

fn add(bin: &Path, host: &Host, pod: &Pod) -> (Ipv4Addr, Value) {
    cni::add(bin, host, pod).unwrap_or_else(|e| panic!("{e}"))
}

/// The router's allocations on `host`: container id -> addresses.
fn allocations(host: &Host) -> Value {
    let out = host
        .run("curl", &["-sf", &format!("http://{HTTP_ADDR}/ip")])
        .expect("GET /ip");
    serde_json::from_str(&out).expect("allocation JSON")
}

fn holds(host: &Host, id: &str) -> bool {
    allocations(host)["owned"]
        .as_array()
        .is_some_and(|o| o.iter().any(|e| e["containerid"] == id))
}

fn host_veths(host: &Host) -> usize {
    host.run("ip", &["-o", "link", "show"])
        .expect("ip link")
        .lines()
        .filter(|l| l.contains("vethwepl"))
        .count()
}

#[test]
fn pods_attached_by_weave_cni_reach_each_other_and_leave_nothing_behind() {
    if !testbed::privileged_or_skip("pods_attached_by_weave_cni") {
        return;
    }
    let bin = cni_bin();
    let router = Router::new(router::locate_router_bin(None::<&Path>).expect("weave-router"));
    let bed = Testbed::new(&TestbedConfig::new("wcn", 3).with_subnet(153)).expect("testbed");
    let [h1, h2, h3] = [1, 2, 3].map(|i| bed.host(i).expect("host").clone());
    bed.block(&h1, &h3).expect("block host1 <-> host3");
    let init = ["--ipalloc-init", "consensus=3"];
    let mut r1 = router.launch_with(&h1, &[], &init).expect("router 1");
    let mut r2 = router
        .launch_with(&h2, &[h1.addr()], &init)
        .expect("router 2");
    let mut r3 = router
        .launch_with(&h3, &[h2.addr()], &init)
        .expect("router 3");
    for h in [&h1, &h2, &h3] {
        await_router(&router, h);
    }

    // Two pods per host, as the runtime would attach them.
    let pods: Vec<(Pod, &Host)> = [&h1, &h1, &h2, &h2, &h3, &h3]
        .iter()
        .enumerate()
        .map(|(i, h)| (pod(&bed, &format!("p{i}")), *h))
        .collect();
    let mut ips = Vec::new();
    let mut results = Vec::new();
    for (pod, host) in &pods {
        let (ip, result) = add(&bin, host, pod);
        println!(
            "{} on {}: {ip} via {}",
            pod.id,
            host.name(),
            result["ips"][0]["gateway"]
        );
        assert_eq!(result["interfaces"][1]["name"], "eth0");
        assert_eq!(result["interfaces"][1]["sandbox"], pod.path());
        ips.push(ip);
        results.push(result);
    }
    let mut distinct = ips.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), ips.len(), "{ips:?}");

    // Every pod reaches every other, host1 <-> host3 relayed by host2.
    for (a, (pod, _)) in pods.iter().enumerate() {
        for (b, ip) in ips.iter().enumerate() {
            if a == b {
                continue;
            }
            let reached = testbed::wait_until(
                &format!("{} -> {ip}", pod.id),
                Duration::from_secs(15),
                || {
                    if pod.ping(*ip) {
                        Ok(())
                    } else {
                        Err("no reply")
                    }
                },
            );
            assert!(
                reached.is_ok(),
                "{reached:?}\nhost2 router:\n{}",
                r2.log_tail(20)
            );
        }
    }
    println!("all {} pods reach each other", pods.len());

    // CHECK accepts what ADD made.
    let (pod0, host0) = &pods[0];
    let prev = call(&bin, host0, "ADD", Some(pod0), None, CONF);
    assert_ne!(
        prev.code, 0,
        "a second ADD of the same attachment is refused"
    );
    let mut conf: Value = serde_json::from_str(CONF).unwrap();
    let prev_result = results[0].clone();
    conf["prevResult"] = prev_result;
    let check = call(&bin, host0, "CHECK", Some(pod0), None, &conf.to_string());
    assert_eq!(check.code, 0, "CHECK: {} {}", check.json, check.stderr);

    // Failed ADDs leave nothing behind.
    let veths = host_veths(&h1);
    let ghost = pod(&bed, "ghost");
    let missing_ns = call(
        &bin,
        &h1,
        "ADD",
        Some(&ghost),
        Some("/run/netns/does-not-exist"),
        CONF,
    );
    assert_eq!(missing_ns.code, 1);
    assert_eq!(missing_ns.json["code"], 3, "{}", missing_ns.json);
    let no_router = call(
        &bin,
        &h1,
        "ADD",
        Some(&ghost),
        None,
        r#"{"cniVersion":"1.0.0","name":"weave","type":"weave-net","routerAPI":"127.0.0.1:1"}"#,
    );
    assert_eq!(no_router.json["code"], 11, "{}", no_router.json);
    let broken = call(
        &bin,
        &h1,
        "ADD",
        Some(&ghost),
        None,
        r#"{"cniVersion":"1.0.0","mtu":"x"}"#,
    );
    assert_eq!(broken.json["code"], 6, "{}", broken.json);
    let no_bridge = call(
        &bin,
        &h1,
        "ADD",
        Some(&ghost),
        None,
        r#"{"cniVersion":"1.0.0","bridge":"nosuchbr"}"#,
    );
    assert_eq!(no_bridge.json["code"], 11, "{}", no_bridge.json);
    assert_eq!(host_veths(&h1), veths, "a failed ADD left a veth");
    assert!(!holds(&h1, &ghost.id), "a failed ADD left an address");
    println!("failed ADDs: codes 3, 11, 6, 11; nothing left behind");

    // GC releases an orphan's address.
    let orphan = pod(&bed, "orphan");
    add(&bin, &h1, &orphan);
    assert!(holds(&h1, &orphan.id));
    let valid: Vec<Value> = pods
        .iter()
        .filter(|(_, h)| h.index() == 1)
        .map(|(p, _)| serde_json::json!({"containerID": p.id, "ifname": "eth0"}))
        .collect();
    let gc_conf = serde_json::json!({"cniVersion": "1.1.0", "name": "weave", "type": "weave-net",
        "cni.dev/valid-attachments": valid});
    let gc = call(&bin, &h1, "GC", None, None, &gc_conf.to_string());
    assert_eq!(gc.code, 0, "GC: {} {}", gc.json, gc.stderr);
    assert!(!holds(&h1, &orphan.id), "GC left the orphan's address");
    assert!(holds(&h1, &pods[0].0.id), "GC released a valid attachment");
    println!("GC freed the orphan");
    // GC frees addresses only; the orphan's veth goes with its netns.
    drop(orphan);

    // STATUS: ready.
    let status = call(&bin, &h2, "STATUS", None, None, CONF);
    assert_eq!(status.code, 0, "STATUS: {} {}", status.json, status.stderr);

    // DEL returns every address; a second DEL succeeds too.
    for (pod, host) in &pods {
        let del = call(&bin, host, "DEL", Some(pod), None, CONF);
        assert_eq!(del.code, 0, "DEL {}: {} {}", pod.id, del.json, del.stderr);
        let again = call(&bin, host, "DEL", Some(pod), None, CONF);
        assert_eq!(again.code, 0, "second DEL {}", pod.id);
        assert!(!holds(host, &pod.id), "{} still holds an address", pod.id);
    }
    for h in [&h1, &h2, &h3] {
        assert_eq!(host_veths(h), 0, "{} kept pod veths", h.name());
    }
    // DEL while the router is down succeeds (GC reclaims later).
    r3.kill().expect("kill router 3");
    let late = pod(&bed, "late");
    let del = call(&bin, &h3, "DEL", Some(&late), None, CONF);
    assert_eq!(
        del.code, 0,
        "DEL with the router down: {} {}",
        del.json, del.stderr
    );
    println!("DEL returned every address; DEL with the router down succeeds");
    drop(r1.kill());
    drop(r2.kill());
}

/// Waits until `host`'s router answers (its bridge exists by then).
fn await_router(router: &Router, host: &Host) {
    let up = testbed::wait_until(
        &format!("router on {}", host.name()),
        Duration::from_secs(30),
        || {
            router
                .status_text(host, Some("ipam"))
                .map_err(|e| e.to_string())?;
            host.run("ip", &["link", "show", "weave"])
                .map_err(|e| e.to_string())
        },
    );
    assert!(up.is_ok(), "{up:?}");
}

#[test]
fn fifty_concurrent_adds_on_one_node_give_fifty_working_pods() {
    if !testbed::privileged_or_skip("fifty_concurrent_adds") {
        return;
    }
    let bin = cni_bin();
    let router = Router::new(router::locate_router_bin(None::<&Path>).expect("weave-router"));
    let bed = Testbed::new(&TestbedConfig::new("wcc", 1).with_subnet(154)).expect("testbed");
    let h1 = bed.host(1).expect("host").clone();
    let mut r1 = router.launch_with(&h1, &[], &[]).expect("router");
    await_router(&router, &h1);
    let pods: Vec<Pod> = (0..50).map(|i| pod(&bed, &format!("c{i}"))).collect();
    let ips: Vec<Ipv4Addr> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|p| s.spawn(|| add(&bin, &h1, p).0))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ADD thread"))
            .collect()
    });
    let mut distinct = ips.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 50, "{ips:?}");
    // Every pod reaches the next one.
    std::thread::scope(|s| {
        for (i, p) in pods.iter().enumerate() {
            let to = ips[(i + 1) % ips.len()];
            s.spawn(move || {
                let ok = testbed::wait_until(
                    &format!("{} -> {to}", p.id),
                    Duration::from_secs(15),
                    || {
                        if p.ping(to) {
                            Ok(())
                        } else {
                            Err("no reply")
                        }
                    },
                );
                assert!(ok.is_ok(), "{ok:?}");
            });
        }
    });
    println!("50 concurrent ADDs: 50 distinct addresses, 50 pods that answer");
    std::thread::scope(|s| {
        for p in &pods {
            let (bin, h1) = (&bin, &h1);
            s.spawn(move || {
                let del = call(bin, h1, "DEL", Some(p), None, CONF);
                assert_eq!(del.code, 0, "{}", del.stderr);
            });
        }
    });
    let left: Vec<Value> = allocations(&h1)["owned"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["containerid"] != "weave:expose")
        .collect();
    assert!(left.is_empty(), "addresses left after DEL: {left:?}");
    assert_eq!(host_veths(&h1), 0);
    drop(r1.kill());
}

#[test]
fn portmap_chained_after_weave_net_maps_a_host_port_and_a_chained_ipam_plugin_is_honoured() {
    if !testbed::privileged_or_skip("portmap_chained") {
        return;
    }
    let plugins = Path::new("/usr/lib/cni");
    assert!(
        plugins.join("portmap").is_file(),
        "Debian's containernetworking-plugins are missing (scripts/setup.sh installs them)"
    );
    let bin = cni_bin();
    let router = Router::new(router::locate_router_bin(None::<&Path>).expect("weave-router"));
    let bed = Testbed::new(&TestbedConfig::new("wcp", 2).with_subnet(155)).expect("testbed");
    let [h1, h2] = [1, 2].map(|i| bed.host(i).expect("host").clone());
    let mut r1 = router.launch_with(&h1, &[], &[]).expect("router 1");
    let mut r2 = router
        .launch_with(&h2, &[h1.addr()], &[])
        .expect("router 2");
    await_router(&router, &h1);
    await_router(&router, &h2);
    // A Kubernetes node forwards (kubelet and kube-proxy need it); portmap's DNAT does too.
    h1.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
        .expect("ip_forward");

    // The conflist's two entries, as a runtime runs them: weave-net, then portmap with
    // weave-net's result as prevResult and the pod's port mappings as runtimeConfig.
    let web = pod(&bed, "web");
    let conf = r#"{"cniVersion":"1.0.0","name":"weave","type":"weave-net","hairpinMode":true}"#;
    let added = call(&bin, &h1, "ADD", Some(&web), None, conf);
    assert_eq!(added.code, 0, "{} {}", added.json, added.stderr);
    let ip = added.json["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let portmap_conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "weave", "type": "portmap",
        "capabilities": {"portMappings": true}, "snat": true,
        "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]},
        "prevResult": added.json,
    })
    .to_string();
    let mapped = call(
        &plugins.join("portmap"),
        &h1,
        "ADD",
        Some(&web),
        None,
        &portmap_conf,
    );
    assert_eq!(
        mapped.code, 0,
        "portmap ADD: {} {}",
        mapped.json, mapped.stderr
    );

    let mut server = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &web.name,
            "python3",
            "-m",
            "http.server",
            "8080",
            "--bind",
            &ip,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("http server in the pod");
    let url = format!("http://{}:18080/", h1.addr());
    let served = testbed::wait_until(
        &format!("GET {url} from host2"),
        Duration::from_secs(15),
        || {
            h2.run(
                "curl",
                &[
                    "-sf",
                    "-m",
                    "2",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &url,
                ],
            )
        },
    );
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(served.expect("host port reaches the pod"), "200");
    println!("host2 -> {}:18080 -> pod {ip}:8080 answered 200", h1.addr());

    let unmapped = call(
        &plugins.join("portmap"),
        &h1,
        "DEL",
        Some(&web),
        None,
        &portmap_conf,
    );
    assert_eq!(unmapped.code, 0, "portmap DEL: {}", unmapped.stderr);
    let del = call(&bin, &h1, "DEL", Some(&web), None, conf);
    assert_eq!(del.code, 0, "{}", del.stderr);
    assert!(!holds(&h1, &web.id));

    // An `ipam` section naming another plugin is honoured instead of the router's IPAM.
    let data = tempfile::tempdir().expect("host-local data dir");
    let other = pod(&bed, "hl");
    let hl_conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "weave", "type": "weave-net",
        "ipam": {"type": "host-local", "subnet": "10.99.0.0/24", "dataDir": data.path()},
    })
    .to_string();
    let added = call(&bin, &h1, "ADD", Some(&other), None, &hl_conf);
    assert_eq!(added.code, 0, "{} {}", added.json, added.stderr);
    let addr = added.json["ips"][0]["address"].as_str().unwrap().to_owned();
    assert!(addr.starts_with("10.99.0."), "{addr}");
    assert!(!holds(&h1, &other.id), "the router's IPAM was asked too");
    let del = call(&bin, &h1, "DEL", Some(&other), None, &hl_conf);
    assert_eq!(del.code, 0, "{}", del.stderr);
    let leases: Vec<_> = std::fs::read_dir(data.path().join("weave"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        !leases
            .iter()
            .any(|n| n.to_string_lossy().starts_with("10.99.")),
        "host-local kept a lease: {leases:?}"
    );
    println!("host-local gave {addr} and took it back");
    drop(r1.kill());
    drop(r2.kill());
}
