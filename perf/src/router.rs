//! Running `weave-router` on testbed hosts and reading what it reports.
//!
//! The router is driven through its command line only (`launch`, `status`), exactly as an
//! operator would, so the testbed exercises the real binary and its HTTP API.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde::Deserialize;

use crate::testbed::{Host, InNetns, Process, TestbedError};

/// The mesh port every testbed router listens on (TCP and UDP).
pub const MESH_PORT: u16 = 6783;
/// The HTTP API address inside each host namespace.
pub const HTTP_ADDR: &str = "127.0.0.1:6784";
/// The metrics address inside each host namespace.
pub const METRICS_ADDR: &str = "127.0.0.1:6782";
/// Environment variable naming the router binary.
pub const ROUTER_BIN_ENV: &str = "WEAVE_ROUTER_BIN";

/// Errors of running routers on the testbed.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The testbed failed underneath.
    #[error(transparent)]
    Testbed(#[from] TestbedError),
    /// No router binary was found.
    #[error("weave-router binary not found (looked at {looked}); build it with `cargo build -p weave-router` or set {ROUTER_BIN_ENV}")]
    BinaryNotFound {
        /// The paths tried.
        looked: String,
    },
    /// `status --json` printed something that is not a report.
    #[error("cannot parse `weave-router status --json` output on {host}: {source}")]
    BadReport {
        /// The host asked.
        host: String,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// Finds the `weave-router` binary: `explicit` if given, else `$WEAVE_ROUTER_BIN`, else next
/// to the running executable (the same target directory), or one level up from it (test
/// binaries live in `target/<profile>/deps/`).
pub fn locate_router_bin(explicit: Option<&Path>) -> Result<PathBuf, RouterError> {
    if let Some(path) = explicit {
        return existing(path.to_path_buf());
    }
    if let Some(path) = std::env::var_os(ROUTER_BIN_ENV) {
        return existing(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|e| RouterError::BinaryNotFound {
        looked: format!("current executable unknown: {e}"),
    })?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("weave-router"))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| RouterError::BinaryNotFound {
            looked: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

fn existing(path: PathBuf) -> Result<PathBuf, RouterError> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(RouterError::BinaryNotFound {
            looked: path.display().to_string(),
        })
    }
}

/// The peer name of testbed host `index`: `aa:00:00:00:00:<index as hex>`.
pub fn peer_name(index: usize) -> String {
    format!("aa:00:00:00:00:{:02x}", index & 0xff)
}

/// A `weave-router` binary to run on testbed hosts.
#[derive(Debug, Clone)]
pub struct Router {
    bin: PathBuf,
}

impl Router {
    /// Uses the binary at `bin`.
    pub fn new(bin: PathBuf) -> Self {
        Router { bin }
    }

    /// The binary's path.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Starts `weave-router launch` on `host` with name [`peer_name`], nickname
    /// `host<index>`, the testbed's fixed ports, and `peers` as initial peers.
    pub fn launch(&self, host: &Host, peers: &[Ipv4Addr]) -> Result<Process, RouterError> {
        self.launch_with(host, peers, &[])
    }

    /// [`Router::launch`] with `extra` flags (such as `--dataplane epoll`) before the peers.
    pub fn launch_with(
        &self,
        host: &Host,
        peers: &[Ipv4Addr],
        extra: &[&str],
    ) -> Result<Process, RouterError> {
        let mut cmd = host.command(&self.bin);
        cmd.arg("launch")
            .args(["--name", &peer_name(host.index())])
            .args(["--nickname", &host.name()])
            .args(["--port", &MESH_PORT.to_string()])
            .args(["--http-addr", HTTP_ADDR])
            .args(["--metrics-addr", METRICS_ADDR])
            // Every host's router shares this machine's file system: each gets its own
            // IPAM store, which a restart of that host's router finds again.
            .arg("--db-dir")
            .arg(host.log_dir().join(format!("ipam-{}", host.name())))
            .args(extra)
            .args(peers.iter().map(Ipv4Addr::to_string))
            // The log goes to a file, where colour codes only get in the way.
            .env("NO_COLOR", "1")
            // The testbed places its routers with flags; the shell's settings for a real
            // router would otherwise put every testbed router on the same CPUs.
            .env_remove("WEAVE_CPUS")
            .env_remove("WEAVE_WORKERS");
        Ok(host.spawn(&format!("router-{}", host.name()), cmd)?)
    }

    /// `weave-router status [what]` on `host`: the text report.
    pub fn status_text(&self, host: &Host, what: Option<&str>) -> Result<String, RouterError> {
        let mut args = vec!["status"];
        args.extend(what);
        args.extend(["--http-addr", HTTP_ADDR]);
        Ok(host.run(&self.bin.to_string_lossy(), &args)?)
    }

    /// `POST /ip/{ident}` on `host`'s router: an address for a container, as its CNI plugin
    /// would ask (waits up to `wait_secs` for the ring).
    pub fn allocate(
        &self,
        host: &Host,
        ident: &str,
        wait_secs: u64,
    ) -> Result<String, RouterError> {
        let url = format!("http://{HTTP_ADDR}/ip/{ident}?timeout={wait_secs}");
        let out = host.run(
            "curl",
            &[
                "-sS",
                "--fail-with-body",
                "-X",
                "POST",
                "--max-time",
                &(wait_secs + 5).to_string(),
                &url,
            ],
        )?;
        Ok(out.trim().to_string())
    }

    /// `weave-router status --json` on `host`: the `/report` document.
    pub fn report(&self, host: &Host) -> Result<Report, RouterError> {
        let text = host.run(
            &self.bin.to_string_lossy(),
            &["status", "--json", "--http-addr", HTTP_ADDR],
        )?;
        serde_json::from_str(&text).map_err(|source| RouterError::BadReport {
            host: host.name(),
            source,
        })
    }

    /// Waits until `host`'s router answers `status --json`, failing at once with the end
    /// of its log when the process exits.
    pub fn wait_ready(
        &self,
        host: &Host,
        process: &mut Process,
        timeout: Duration,
        cancel: &AtomicBool,
    ) -> Result<Report, RouterError> {
        let what = format!("weave-router on {} to answer", host.name());
        Ok(process.wait_for(&what, timeout, cancel, || self.report(host))?)
    }
}

/// The parts of `/report` the testbed reads (unknown keys are ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Report {
    /// Whether the router says it is ready.
    #[serde(default)]
    pub ready: bool,
    /// The mesh section.
    pub router: RouterReport,
    /// The data plane's counters (absent with `--dataplane none`).
    #[serde(default)]
    pub dataplane: Option<DataplaneReport>,
}

/// `Dataplane` in `/report`: the backend and each worker's counters since start.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DataplaneReport {
    /// `epoll` or `io_uring`.
    #[serde(default)]
    pub backend: String,
    /// One entry per worker.
    #[serde(default)]
    pub workers: Vec<WorkerReport>,
}

/// One worker of `Dataplane.Workers` (the counters the testbed reads).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WorkerReport {
    /// Sleeve datagrams received.
    #[serde(default)]
    pub udp_rx_datagrams: u64,
    /// Receive calls that delivered data.
    #[serde(default)]
    pub udp_rx_calls: u64,
    /// Sleeve datagrams sent.
    #[serde(default)]
    pub udp_tx_datagrams: u64,
    /// Send calls.
    #[serde(default)]
    pub udp_tx_calls: u64,
}

impl DataplaneReport {
    /// The workers' counters added up.
    pub fn totals(&self) -> WorkerReport {
        self.workers
            .iter()
            .fold(WorkerReport::default(), |acc, w| WorkerReport {
                udp_rx_datagrams: acc.udp_rx_datagrams + w.udp_rx_datagrams,
                udp_rx_calls: acc.udp_rx_calls + w.udp_rx_calls,
                udp_tx_datagrams: acc.udp_tx_datagrams + w.udp_tx_datagrams,
                udp_tx_calls: acc.udp_tx_calls + w.udp_tx_calls,
            })
    }
}

/// `Router` in `/report`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RouterReport {
    /// This router's peer name.
    pub name: String,
    /// This router's nickname.
    #[serde(rename = "NickName", default)]
    pub nickname: String,
    /// Every peer in the topology, this one included.
    #[serde(default)]
    pub peers: Vec<PeerReport>,
    /// This router's connections and connection attempts.
    #[serde(default)]
    pub connections: Vec<ConnectionReport>,
}

/// One peer of `Router.Peers`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PeerReport {
    /// Its peer name.
    pub name: String,
    /// Its nickname.
    #[serde(rename = "NickName", default)]
    pub nickname: String,
    /// Its per-process UID (changes when the router restarts).
    #[serde(rename = "UID")]
    pub uid: u64,
    /// Its short id.
    #[serde(rename = "ShortID", default)]
    pub short_id: u16,
    /// Its connections as it gossips them.
    #[serde(default)]
    pub connections: Vec<PeerConnectionReport>,
}

/// A connection of a peer, as gossiped.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PeerConnectionReport {
    /// The remote peer's name.
    pub name: String,
    /// The remote TCP address as the owner sees it.
    #[serde(default)]
    pub address: String,
    /// Whether the owner dialled.
    #[serde(default)]
    pub outbound: bool,
    /// Whether the connection is established.
    #[serde(default)]
    pub established: bool,
}

/// One of `Router.Connections`: a local connection or attempt.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConnectionReport {
    /// Remote `ip:port`.
    pub address: String,
    /// Whether this router dialled.
    #[serde(default)]
    pub outbound: bool,
    /// `connecting`, `pending`, `established`, `failed`, `retrying`.
    #[serde(default)]
    pub state: String,
    /// Free text: the remote peer, or the error.
    #[serde(default)]
    pub info: String,
}

impl Report {
    /// How many peers the router knows, itself included.
    pub fn peer_count(&self) -> usize {
        self.router.peers.len()
    }

    /// The peer called `name`, if known.
    pub fn peer(&self, name: &str) -> Option<&PeerReport> {
        self.router.peers.iter().find(|p| p.name == name)
    }

    /// How many gossiped connections, over all peers, are established (each link counts
    /// once from each end).
    pub fn established_links(&self) -> usize {
        self.router
            .peers
            .iter()
            .flat_map(|p| &p.connections)
            .filter(|c| c.established)
            .count()
    }

    /// Whether one of the router's own connections to `ip` (either direction) is established.
    pub fn established_to(&self, ip: Ipv4Addr) -> bool {
        self.router
            .connections
            .iter()
            .any(|c| c.state == "established" && address_ip(&c.address) == Some(IpAddr::V4(ip)))
    }
}

/// The IP of an `ip:port` (or bare `ip`) address.
fn address_ip(address: &str) -> Option<IpAddr> {
    address
        .parse::<std::net::SocketAddr>()
        .map(|sa| sa.ip())
        .or_else(|_| address.parse::<IpAddr>())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The report of Weave Net 2.8.1's host1, shortened, parses into the testbed's view.
    const WEAVE_REPORT: &str = r#"{
      "Ready": true, "Version": "x",
      "Router": {
        "Name": "aa:00:00:00:00:01", "NickName": "host1", "Port": 6783,
        "Peers": [
          {"Name": "aa:00:00:00:00:01", "NickName": "host1", "UID": 10147670469106945850,
           "ShortID": 1291, "Version": 2,
           "Connections": [{"Name": "aa:00:00:00:00:02", "NickName": "host2",
             "Address": "192.168.77.2:43347", "Outbound": false, "Established": true}]}
        ],
        "Connections": [
          {"Address": "192.168.77.2:43347", "Outbound": false, "State": "established",
           "Info": "sleeve aa:00:00:00:00:02(host2)", "Attrs": {"mtu": 1438, "name": "sleeve"}},
          {"Address": "192.168.78.3:6783", "Outbound": true, "State": "failed",
           "Info": "dial tcp: network is unreachable", "Attrs": null}
        ],
        "UnicastRoutes": [], "BroadcastRoutes": []
      }
    }"#;

    #[test]
    fn parses_weave_report() {
        let report: Report = serde_json::from_str(WEAVE_REPORT).unwrap();

        assert!(report.ready);
        assert_eq!(report.peer_count(), 1);
        let me = report.peer("aa:00:00:00:00:01").unwrap();
        assert_eq!(me.uid, 10147670469106945850);
        assert_eq!(me.nickname, "host1");
        assert!(me.connections[0].established);
        assert_eq!(report.established_links(), 1);
    }

    #[test]
    fn established_to_matches_ip_of_established_connections_only() {
        let report: Report = serde_json::from_str(WEAVE_REPORT).unwrap();

        assert!(report.established_to(Ipv4Addr::new(192, 168, 77, 2)));
        assert!(!report.established_to(Ipv4Addr::new(192, 168, 78, 3)));
        assert!(!report.established_to(Ipv4Addr::new(192, 168, 77, 9)));
    }

    #[test]
    fn dataplane_counters_are_summed_over_workers() {
        let text = r#"{"Ready": true, "Router": {"Name": "aa:00:00:00:00:01"},
          "Dataplane": {"Backend": "io_uring", "Workers": [
            {"UdpRxDatagrams": 10, "UdpRxCalls": 2, "UdpTxDatagrams": 40, "UdpTxCalls": 4, "Drops": {}},
            {"UdpRxDatagrams": 5, "UdpRxCalls": 1, "UdpTxDatagrams": 0, "UdpTxCalls": 0}]}}"#;

        let report: Report = serde_json::from_str(text).unwrap();

        let dp = report.dataplane.unwrap();
        assert_eq!(dp.backend, "io_uring");
        let t = dp.totals();
        assert_eq!(
            (
                t.udp_rx_datagrams,
                t.udp_rx_calls,
                t.udp_tx_datagrams,
                t.udp_tx_calls
            ),
            (15, 3, 40, 4)
        );
        let weave: Report = serde_json::from_str(WEAVE_REPORT).unwrap();
        assert_eq!(weave.dataplane, None);
    }

    #[test]
    fn peer_names_follow_host_index() {
        assert_eq!(peer_name(1), "aa:00:00:00:00:01");
        assert_eq!(peer_name(12), "aa:00:00:00:00:0c");
    }

    #[test]
    fn explicit_missing_binary_is_an_error() {
        let err = locate_router_bin(Some(Path::new("/nonexistent/weave-router"))).unwrap_err();

        assert!(matches!(err, RouterError::BinaryNotFound { .. }));
    }
}
