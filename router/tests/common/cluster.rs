//! A testbed of routers for the privileged tests: router namespaces joined by veths to a
//! bridge in a hub namespace, `weave-router launch` processes in them with their stores and
//! logs in a temporary directory, HTTP calls made from inside a namespace, and the ring as
//! `/report` shows it. Routers are killed and their logs printed (on failure) on drop.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use weave_router::cli::http::{self, ClientError, Response};
use weave_router::mesh::status::Report;
use weave_router::sys::netns;

use super::Netns;

const BIN: &str = env!("CARGO_BIN_EXE_weave-router");
/// The HTTP API of every router: the same loopback address, each in its own namespace.
pub const API: &str = "127.0.0.1:6784";

pub fn api() -> SocketAddr {
    API.parse().expect("API address")
}

/// One request to the router whose namespace the calling thread is in.
pub fn call(method: &str, path: &str) -> Result<Response, ClientError> {
    http::request(api(), method, path, &[], b"")
}

/// One `weave-router launch` process, killed (SIGKILL) and reaped on drop.
pub struct Router {
    /// From 1.
    pub index: usize,
    /// Its namespace.
    pub ns: String,
    child: Child,
    /// Its log file.
    pub log: PathBuf,
}

impl Router {
    pub fn nickname(&self) -> String {
        format!("n{}", self.index)
    }

    /// One HTTP request, made from a thread inside the router's namespace.
    pub fn call(&self, method: &str, path: &str) -> Result<Response, ClientError> {
        netns::run_in_netns(&self.ns, || call(method, path)).expect("enter router namespace")
    }

    /// A request that must succeed; its body as text.
    pub fn text(&self, method: &str, path: &str) -> String {
        let resp = self
            .call(method, path)
            .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", self.nickname()));
        String::from_utf8(resp.body).expect("utf-8 body")
    }

    pub fn report(&self) -> Report {
        serde_json::from_str(&self.text("GET", "/report")).expect("/report JSON")
    }

    /// The ring as `/report` shows it.
    pub fn ring(&self) -> Vec<Entry> {
        let ipam = self.report().ipam.expect("IPAM in /report");
        ipam.entries
            .iter()
            .map(|e| Entry {
                start: parse_ip(&e.token),
                size: e.size,
                peer: e.peer.clone(),
                version: e.version,
                reachable: e.is_known_peer,
            })
            .collect()
    }

    /// `weave-router ARGS... --http-addr API`, run inside the router's namespace.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns, BIN])
            .args(args)
            .args(["--http-addr", API])
            .env_remove("WEAVE_HTTP_ADDR")
            .output()
            .expect("run weave-router client")
    }

    /// Kills the router outright and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One range of the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// First address.
    pub start: u32,
    /// Number of addresses.
    pub size: u32,
    /// Owner.
    pub peer: String,
    /// Token version.
    pub version: u32,
    /// Whether the owner is reachable.
    pub reachable: bool,
}

impl Entry {
    pub fn contains(&self, addr: u32) -> bool {
        addr >= self.start && u64::from(addr) < u64::from(self.start) + u64::from(self.size)
    }
}

/// Who owns what: the ranges and their owners. A change of owner is broadcast at once.
pub fn ownership(ring: &[Entry]) -> Vec<(u32, u32, String)> {
    ring.iter()
        .map(|e| (e.start, e.size, e.peer.clone()))
        .collect()
}

/// Ownership and each token's version. A version also moves when the owner's free count
/// changes, and that travels only with the periodic gossip (every 30 s, as in Weave).
pub fn versions(ring: &[Entry]) -> Vec<(u32, u32, String, u32)> {
    ring.iter()
        .map(|e| (e.start, e.size, e.peer.clone(), e.version))
        .collect()
}

pub fn owner_of(ring: &[Entry], addr: u32) -> &str {
    ring.iter()
        .find(|e| e.contains(addr))
        .map(|e| e.peer.as_str())
        .unwrap_or_else(|| panic!("{} is in no ring range: {ring:?}", Ipv4Addr::from(addr)))
}

pub fn peer_name(index: usize) -> String {
    format!("aa:00:00:00:00:0{index}")
}

pub fn parse_ip(text: &str) -> u32 {
    u32::from(
        text.parse::<Ipv4Addr>()
            .unwrap_or_else(|e| panic!("{text:?}: {e}")),
    )
}

/// Polls `probe` until it gives a value; fails after a generous bound so that a broken
/// build fails instead of hanging. Not a timing assertion.
pub fn wait_until<T>(what: &str, probe: impl FnMut() -> Result<T, String>) -> T {
    wait_longer(what, Duration::from_secs(30), probe)
}

/// [`wait_until`] with another bound.
pub fn wait_longer<T>(
    what: &str,
    bound: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let mut last = String::new();
    let start = Instant::now();
    while start.elapsed() < bound {
        match probe() {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("gave up waiting for {what}; last: {last}");
}

/// Three router namespaces on a bridge in a hub namespace, and the routers in them.
pub struct Cluster {
    /// Index 0 is router 1. Dropped (killed) before the namespaces go.
    pub routers: Vec<Option<Router>>,
    /// The routers' namespaces.
    pub hosts: Vec<Netns>,
    /// The namespace of the bridge.
    pub hub: Netns,
    /// Stores and logs.
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// `hosts` router namespaces named `<prefix>…`, with addresses `<underlay>.<index>/24`
    /// on a bridge `br0` in a hub namespace.
    pub fn new(test: &str, prefix: &str, underlay: &str, hosts: usize) -> Option<Self> {
        let hub = Netns::new(test, prefix)?;
        hub.ip(&["link", "add", "br0", "type", "bridge"]);
        hub.ip(&["link", "set", "br0", "up"]);
        let mut namespaces = Vec::new();
        for i in 1..=hosts {
            let ns = Netns::new(test, prefix).expect("root was checked");
            let port = format!("vr{i}");
            hub.ip(&[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
            ]);
            hub.ip(&["link", "set", &port, "master", "br0", "up"]);
            ns.ip(&["addr", "add", &format!("{underlay}.{i}/24"), "dev", "eth0"]);
            ns.ip(&["link", "set", "eth0", "up"]);
            namespaces.push(ns);
        }
        Some(Self {
            routers: (0..hosts).map(|_| None).collect(),
            hosts: namespaces,
            hub,
            dir: tempfile::tempdir().expect("temp dir"),
        })
    }

    pub fn r(&self, index: usize) -> &Router {
        self.routers[index - 1]
            .as_ref()
            .unwrap_or_else(|| panic!("router {index} is not running"))
    }

    /// Starts router `index` (from 1) with its store in its own directory (the same one on
    /// a restart), `args` after the common flags and `env` added to a clean environment,
    /// and waits for its API.
    pub fn launch_with(&mut self, index: usize, args: &[String], env: &[(&str, String)]) {
        assert!(self.routers[index - 1].is_none(), "router {index} runs");
        let ns = self.hosts[index - 1].name.clone();
        let db = self.dir.path().join(format!("db{index}"));
        std::fs::create_dir_all(&db).expect("db dir");
        let log_path = self.dir.path().join(format!("router{index}.log"));
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("log file");
        writeln!(log, "=== test: launching router {index} ===").expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, BIN, "launch"])
            .args(["--name", &peer_name(index)])
            .args(["--nickname", &format!("n{index}")])
            .args(["--port", "6783", "--http-addr", API, "--metrics-addr="])
            .args(["--dataplane", "none"])
            .arg("--db-dir")
            .arg(&db)
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("KUBE_PEERS")
            .env_remove("IPALLOC_RANGE")
            .env_remove("IPALLOC_DEFAULT_SUBNET")
            .env_remove("WEAVE_NO_DISCOVERY")
            .env_remove("CONN_LIMIT")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBECONFIG")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn weave-router");
        // `ip netns exec` execs the router in place: the child is the router itself.
        let mut router = Router {
            index,
            ns,
            child,
            log: log_path,
        };
        wait_until(&format!("router {index}'s API"), || {
            if let Ok(Some(status)) = router.child.try_wait() {
                panic!(
                    "router {index} exited ({status}):\n{}",
                    std::fs::read_to_string(&router.log).unwrap_or_default()
                );
            }
            router.call("GET", "/status").map_err(|e| e.to_string())
        });
        self.routers[index - 1] = Some(router);
    }

    /// `kill -9` of router `index`; checks that nothing is left running in its namespace.
    pub fn kill(&mut self, index: usize) {
        let mut router = self.routers[index - 1].take().expect("router runs");
        router.kill();
        let left = self.hosts[index - 1].pids();
        assert!(left.is_empty(), "processes left after the kill: {left:?}");
    }

    pub fn running(&self) -> Vec<&Router> {
        self.routers.iter().flatten().collect()
    }

    /// Waits until every running router sees all the others and has an established
    /// connection to each.
    pub fn wait_for_full_mesh(&self) {
        let routers = self.running();
        for r in &routers {
            wait_until(&format!("{} to see the whole mesh", r.nickname()), || {
                let report = r.report();
                let established = report
                    .router
                    .connections
                    .iter()
                    .filter(|c| c.state == "established")
                    .count();
                if report.router.peers.len() == routers.len() && established == routers.len() - 1 {
                    Ok(())
                } else {
                    Err(format!(
                        "{} peers, {established} established connections: {:?}",
                        report.router.peers.len(),
                        report.router.connections
                    ))
                }
            });
        }
    }

    /// Waits until every running router has the same ring owners, and returns the ring.
    pub fn wait_for_agreement(&self) -> Vec<Entry> {
        self.agree(ownership, Duration::from_secs(30))
    }

    /// Waits until every running router has the same ring, token versions included, which
    /// takes a round of periodic gossip; returns the ring.
    pub fn wait_for_gossip_to_settle(&self) -> Vec<Entry> {
        // Three gossip intervals: a generous bound, not a timing assertion.
        self.agree(versions, Duration::from_secs(90))
    }

    pub fn agree<K: PartialEq>(&self, key: fn(&[Entry]) -> Vec<K>, bound: Duration) -> Vec<Entry> {
        let routers = self.running();
        wait_longer("the rings to agree", bound, || {
            let rings: Vec<Vec<Entry>> = routers.iter().map(|r| r.ring()).collect();
            let first = key(&rings[0]);
            if !first.is_empty() && rings.iter().all(|ring| key(ring) == first) {
                Ok(rings[0].clone())
            } else {
                Err(format!("{rings:?}"))
            }
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Kill the routers before their namespaces go; show their logs if the test failed
        // (or WEAVE_TEST_LOGS is set).
        let panicking = thread::panicking() || std::env::var_os("WEAVE_TEST_LOGS").is_some();
        for router in self.routers.iter_mut().flatten() {
            router.kill();
        }
        if panicking {
            for i in 1..=self.hosts.len() {
                let path = self.dir.path().join(format!("router{i}.log"));
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(200)..];
                eprintln!("----- router {i} log (last {} lines) -----", tail.len());
                for l in tail {
                    eprintln!("{l}");
                }
            }
        }
        self.routers.clear();
    }
}
