//! Launch configuration: `weave-router launch` flags and the environment the DaemonSet sets.
//!
//! Parsing is pure: [`Config::resolve`] takes the parsed flags, a map of environment
//! variables and the host's identity, so every rule (defaults, precedence, validation) is
//! unit-tested without touching the real environment. Flags win over the environment.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use crate::ids::PeerName;
use crate::ipam::address::Cidr;

/// Default TCP/UDP port of the mesh.
pub const DEFAULT_PORT: u16 = 6783;
/// Default address of the HTTP control API.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:6784";
/// Default address of the Prometheus metrics endpoint.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:6782";
/// Default most connections kept (Weave's `--conn-limit`).
pub const DEFAULT_CONN_LIMIT: usize = 200;
/// Default cluster address range (Weave's).
pub const DEFAULT_IPALLOC_RANGE: &str = "10.32.0.0/12";
/// Default directory of the IPAM store (Weave's).
pub const DEFAULT_DB_DIR: &str = "/var/lib/weave";
/// Default longest random wait before reclaiming a deleted node's addresses (Weave's).
pub const DEFAULT_RECLAIM_JITTER_SECS: u64 = 5;
/// Smallest pod MTU accepted (IPv4's minimum datagram size).
pub const MIN_MTU: u16 = 576;
/// Largest pod MTU accepted: what leaves room for the sleeve's headers in a 64 KiB datagram.
pub const MAX_MTU: u16 = 65_000;

/// Flags of `weave-router launch`, as the command line gives them (values still unchecked).
///
/// Values are taken as strings so that a bad flag and a bad environment variable are
/// refused by the same code with the same kind of message.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LaunchArgs {
    /// Our peer name, six hex octets like aa:00:00:00:00:01 (default: derived from
    /// /etc/machine-id, or the host name). Env: WEAVE_NAME.
    #[arg(long, value_name = "MAC")]
    pub name: Option<String>,
    /// Our nickname in status output (default: the host name). Env: WEAVE_NICKNAME.
    #[arg(long, value_name = "NAME")]
    pub nickname: Option<String>,
    /// TCP and UDP port of the mesh [default: 6783]. Env: WEAVE_PORT.
    #[arg(long, value_name = "PORT")]
    pub port: Option<String>,
    /// Loopback address of the HTTP control API, or "" for none [default: 127.0.0.1:6784].
    /// Env: WEAVE_HTTP_ADDR (or WEAVE_STATUS_ADDR).
    #[arg(long, value_name = "ADDR")]
    pub http_addr: Option<String>,
    /// Address of the Prometheus metrics endpoint, or "" for none
    /// [default: 127.0.0.1:6782]. Env: WEAVE_METRICS_ADDR.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// Most peer connections kept; 0 for no limit [default: 200]. Env: CONN_LIMIT.
    #[arg(long, value_name = "N")]
    pub conn_limit: Option<String>,
    /// Do not dial peers learned from gossip. Env: WEAVE_NO_DISCOVERY.
    #[arg(long)]
    pub no_discovery: bool,
    /// Peers to connect to: host or host:port, IPv4/IPv6 literals or names. Env: KUBE_PEERS
    /// (separated by spaces or commas).
    #[arg(value_name = "PEER")]
    pub peers: Vec<String>,
    /// Data plane: `auto` (io_uring, else epoll), `io-uring`, `epoll`, or `none` (mesh only).
    #[arg(long, value_name = "BACKEND")]
    pub dataplane: Option<String>,
    /// Number of data-plane workers (default: one per CPU). Env: WEAVE_WORKERS.
    #[arg(long, value_name = "N")]
    pub workers: Option<String>,
    /// CPUs for the data-plane workers, e.g. `0-1,3`: one worker per CPU listed, pinned to
    /// it (with `--workers`, worker i goes to the i-th CPU listed, round robin)
    /// [default: every CPU the router may run on]. Env: WEAVE_CPUS.
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<String>,
    /// Sleeve ports towards other weave-routers: `on` (the default: each worker sends from
    /// a port of its own, next to the mesh port's, and the mesh port steers what it receives
    /// by source port, so one peer pair's traffic uses every worker) or `off` (everything
    /// from and to the mesh port, for firewalls that insist on source port 6783). Weave Net
    /// peers always get the mesh port. Env: WEAVE_SLEEVE_SPREAD.
    #[arg(long, value_name = "on|off")]
    pub sleeve_spread: Option<String>,
    /// Checksums of TCP segments between weave-routers: `partial` (the default: the
    /// pseudo-header sum only, as the sending pod's kernel left it; the outer UDP checksum
    /// covers the way, and neither router sums the payload) or `full` (complete, as Weave
    /// Net peers always get them). Env: WEAVE_SLEEVE_CHECKSUMS.
    #[arg(long, value_name = "partial|full")]
    pub sleeve_checksums: Option<String>,
    /// Topology gossip between weave-routers: `digest` (the default: summaries every 30 s,
    /// and only the entries a neighbour lacks, so gossip grows with change rather than with
    /// the mesh) or `weave` (the whole table every 30 s and every change in full, as Weave
    /// Net gossips). Weave Net peers always get Weave's gossip. Env: WEAVE_TOPOLOGY_GOSSIP.
    #[arg(long, value_name = "digest|weave")]
    pub topology_gossip: Option<String>,
    /// Microseconds a data-plane worker keeps polling for more work after its last before it
    /// sleeps, from 0 (never poll: every frame after a quiet moment costs a thread wake-up)
    /// to 1000. Polling lowers round-trip latency for CPU time; it stops while traffic is too
    /// sparse for it to pay, and an idle router does not poll [default: 50].
    /// Env: WEAVE_BUSY_POLL.
    #[arg(long, value_name = "MICROSECONDS")]
    pub busy_poll: Option<String>,
    /// Sleeve offloads: `on` (UDP GSO/GRO and TAP TSO/checksum offload, the default) or
    /// `off` (one datagram per system call, frames segmented by the kernel; for measuring
    /// what batching buys). Env: WEAVE_OFFLOAD.
    #[arg(long, value_name = "on|off")]
    pub offload: Option<String>,
    /// The range pod addresses come from, as a CIDR, or "" for no IPAM
    /// [default: 10.32.0.0/12]. Every peer must be given the same. Env: IPALLOC_RANGE.
    #[arg(long, value_name = "CIDR")]
    pub ipalloc_range: Option<String>,
    /// The subnet inside the range that `POST /ip/{id}` allocates from when none is given
    /// [default: the whole range]. Env: IPALLOC_DEFAULT_SUBNET.
    #[arg(long, value_name = "CIDR")]
    pub ipalloc_default_subnet: Option<String>,
    /// How the range is first divided: `consensus` (a majority of the initial peers agree),
    /// `consensus=N` (N peers, quorum N/2+1), `seed=NAME,...` (these peers split it, no
    /// election) or `observer` (take no part; get space from others) [default: consensus].
    /// Env: IPALLOC_INIT.
    #[arg(long, value_name = "MODE")]
    pub ipalloc_init: Option<String>,
    /// Directory of the IPAM store (the ring and every allocation) [default: /var/lib/weave].
    /// Env: WEAVE_DB_DIR.
    #[arg(long, value_name = "DIR")]
    pub db_dir: Option<String>,
    /// MTU of the pods' network (the `weave` bridge and TAP); the sleeve's path-MTU search
    /// starts from it plus the sleeve's overhead [default: 1438, what a 1500-byte underlay
    /// carries]. Env: WEAVE_MTU.
    #[arg(long, value_name = "BYTES")]
    pub mtu: Option<String>,
    /// Carry every peer's traffic in the sleeve: set up no fast datapath (the kernel's VXLAN
    /// on UDP 6784) and offer none to peers. Env: WEAVE_NO_FASTDP.
    #[arg(long)]
    pub no_fastdp: bool,
    /// Encrypt the mesh and the sleeve with this password, as Weave Net's `--password` does;
    /// every peer needs the same one. Prefer --password-file: a flag shows in `ps`.
    /// Env: WEAVE_PASSWORD.
    #[arg(long, value_name = "PASSWORD")]
    pub password: Option<String>,
    /// Read the password from this file (a mounted Secret), byte for byte: a trailing
    /// newline is part of it, as it is in WEAVE_PASSWORD from the same Secret.
    /// Env: WEAVE_PASSWORD_FILE.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<String>,
    /// Comma- or space-separated IPv4 subnets (CIDR) whose peers may talk to us unencrypted
    /// in the sleeve when they trust us too (Weave's `--trusted-subnets`).
    /// Env: WEAVE_TRUSTED_SUBNETS.
    #[arg(long, value_name = "CIDRS")]
    pub trusted_subnets: Option<String>,
    /// With a password, the sleeve's cipher towards other weave-routers: `auto` (AES-256-GCM
    /// when both offer it) or `weave` (Weave Net's NaCl format, as towards Weave Net peers,
    /// which always get it) [default: auto]. Env: WEAVE_SLEEVE_CIPHER.
    #[arg(long, value_name = "auto|weave")]
    pub sleeve_cipher: Option<String>,
    /// Kubernetes integration: `auto` (on when running in a cluster, i.e. when
    /// KUBERNETES_SERVICE_HOST is set), `on` (cluster from KUBECONFIG or the in-cluster
    /// service account) or `off` [default: auto]. Env: WEAVE_KUBERNETES.
    #[arg(long, value_name = "auto|on|off")]
    pub kubernetes: Option<String>,
    /// This node's Kubernetes name (default: NODE_NAME, else HOSTNAME, else the host name).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Longest random wait, in seconds, before reclaiming a deleted node's addresses, so that
    /// the routers do not all contend for the ConfigMap at once [default: 5].
    /// Env: WEAVE_RECLAIM_JITTER.
    #[arg(long, value_name = "SECONDS")]
    pub reclaim_jitter: Option<String>,
}

/// Facts about the host that feed the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostInfo {
    /// The host name (default nickname; fallback seed of the peer name).
    pub hostname: String,
    /// Contents of /etc/machine-id, if readable and non-empty.
    pub machine_id: Option<String>,
}

impl HostInfo {
    /// Reads the host name and machine id of this machine.
    pub fn read() -> Self {
        let read_trimmed = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        let hostname = read_trimmed("/proc/sys/kernel/hostname")
            .or_else(|| read_trimmed("/etc/hostname"))
            .unwrap_or_else(|| "localhost".to_string());
        let machine_id = read_trimmed("/etc/machine-id");
        HostInfo {
            hostname,
            machine_id,
        }
    }
}

/// A peer address as configured: an IP literal, or a name resolved when the daemon starts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerAddr {
    /// An IP address and port.
    Ip(SocketAddr),
    /// A host name and port, to resolve.
    Host {
        /// The host name.
        host: String,
        /// The port.
        port: u16,
    },
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Ip(addr) => write!(f, "{addr}"),
            PeerAddr::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl PeerAddr {
    /// How the connection maker shows this peer: without the port when it is the default.
    pub fn target_text(&self, default_port: u16) -> String {
        match self {
            PeerAddr::Ip(addr) if addr.port() == default_port => addr.ip().to_string(),
            PeerAddr::Host { host, port } if *port == default_port => host.clone(),
            PeerAddr::Ip(_) | PeerAddr::Host { .. } => self.to_string(),
        }
    }
}

/// Why a peer address is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad peer address '{0}'")]
pub struct BadPeerAddr(pub String);

impl PeerAddr {
    /// Parses `host`, `host:port`, `ip`, `ip:port`, `ipv6`, `[ipv6]` or `[ipv6]:port`;
    /// `default_port` fills a missing port.
    pub fn parse(s: &str, default_port: u16) -> Result<Self, BadPeerAddr> {
        let bad = || BadPeerAddr(s.to_string());
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(PeerAddr::Ip(addr));
        }
        // A bare IPv6 literal has colons but no port.
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(PeerAddr::Ip(SocketAddr::new(ip, default_port)));
        }
        if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            let ip: std::net::Ipv6Addr = inner.parse().map_err(|_| bad())?;
            return Ok(PeerAddr::Ip(SocketAddr::new(IpAddr::V6(ip), default_port)));
        }
        let (host, port) = match s.split_once(':') {
            None => (s, default_port),
            Some((host, port)) => {
                let port = parse_port(port).ok_or_else(bad)?;
                (host, port)
            }
        };
        if !is_host_name(host) {
            return Err(bad());
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(PeerAddr::Ip(SocketAddr::new(ip, port)));
        }
        Ok(PeerAddr::Host {
            host: host.to_string(),
            port,
        })
    }
}

/// The daemon's whole configuration, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Our peer name.
    pub name: PeerName,
    /// Our nickname.
    pub nickname: String,
    /// Mesh port (TCP and UDP).
    pub port: u16,
    /// Where the HTTP API listens (always loopback); `None` to serve none.
    pub http_addr: Option<SocketAddr>,
    /// Where metrics are served; `None` to serve none.
    pub metrics_addr: Option<SocketAddr>,
    /// Most connections kept; 0 means no limit.
    pub conn_limit: usize,
    /// Whether addresses learned from gossip are dialled.
    pub discovery: bool,
    /// Initial peers (flags first, then KUBE_PEERS), without duplicates.
    pub peers: Vec<PeerAddr>,
    /// Which data plane carries pod traffic.
    pub dataplane: Dataplane,
    /// Number of data-plane workers; `None` for one per CPU.
    pub workers: Option<usize>,
    /// CPUs the workers are pinned to, in order; `None` for every CPU the router may use.
    pub cpus: Option<Vec<usize>>,
    /// Whether workers send to weave-routers from ports of their own (`--sleeve-spread`).
    pub sleeve_spread: bool,
    /// Whether TCP checksums between weave-routers are partial (`--sleeve-checksums`).
    pub partial_checksums: bool,
    /// Whether topology digests are offered to weave-routers (`--topology-gossip`).
    pub topology_digest: bool,
    /// Whether the sleeve batches with UDP GSO/GRO and TAP offloads.
    pub offload: bool,
    /// How long workers poll for work before they sleep (`--busy-poll`).
    pub busy_poll: std::time::Duration,
    /// Address management; `None` when `--ipalloc-range ""` turned it off.
    pub ipam: Option<IpamConfig>,
    /// The pods' MTU, when set; else what the underlay's 1500 bytes carry.
    pub mtu: Option<u16>,
    /// Whether `--no-fastdp` was asked for.
    pub no_fastdp: bool,
    /// The password and trusted subnets; `None` without a password.
    pub encryption: Option<crate::mesh::Encryption>,
    /// The Kubernetes integration; `None` outside a cluster.
    pub kubernetes: Option<KubeSettings>,
}

/// What the router does in a Kubernetes cluster (see [`crate::kube`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSettings {
    /// This node's name.
    pub node_name: String,
    /// Whether peers come from the Node objects (no peers were given on the command line or
    /// in KUBE_PEERS).
    pub discover_peers: bool,
    /// Longest random wait before a reclaim.
    pub reclaim_jitter: std::time::Duration,
}

/// Address management settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    /// The cluster range.
    pub range: Cidr,
    /// Where allocations without a subnet come from.
    pub default_subnet: Cidr,
    /// How the ring is first divided.
    pub init: IpamInit,
    /// Directory of the store.
    pub db_dir: PathBuf,
}

/// `--ipalloc-init`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpamInit {
    /// Paxos; `Some(n)` for `consensus=n`, `None` to count the initial peers.
    Consensus(Option<u32>),
    /// These peers split the range.
    Seed(Vec<PeerName>),
    /// No part in the election.
    Observer,
}

impl IpamInit {
    /// The allocator's form: the quorum is `n/2+1` of `consensus=n`, or else a majority of
    /// the initial peers and ourselves (`peers + 1`), as Weave computes it.
    pub fn to_allocator(&self, initial_peers: usize) -> crate::ipam::allocator::Init {
        use crate::ipam::allocator::Init;
        match self {
            IpamInit::Consensus(Some(n)) => Init::Consensus { quorum: n / 2 + 1 },
            IpamInit::Consensus(None) => Init::Consensus {
                quorum: u32::try_from(initial_peers + 1).unwrap_or(u32::MAX) / 2 + 1,
            },
            IpamInit::Seed(names) => Init::Seed(names.clone()),
            IpamInit::Observer => Init::Observer,
        }
    }
}

/// The data-plane backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dataplane {
    /// The mesh only: connections establish on the TCP handshake and no traffic is carried.
    None,
    /// The sleeve on readiness-based I/O (poll, GSO/GRO).
    Epoll,
    /// The sleeve on io_uring.
    IoUring,
    /// io_uring where the kernel allows it, else epoll.
    Auto,
}

/// Why the launch configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A flag or variable has a value of the wrong form.
    #[error("invalid value '{value}' for '{source_name}': {reason}")]
    InvalidValue {
        /// The flag (`--port`) or variable (`WEAVE_PORT`) that carried it.
        source_name: String,
        /// The value given.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// The HTTP API address is not a loopback address.
    #[error(
        "refusing '{source_name}' = {addr}: the HTTP API is unauthenticated, so it must listen \
         on a loopback address (127.0.0.1 or ::1)"
    )]
    NonLoopbackHttp {
        /// The flag or variable that carried it.
        source_name: String,
        /// The address given.
        addr: SocketAddr,
    },
    /// A setting asks for something this build cannot do.
    #[error("refusing '{source_name}': {reason}")]
    Unsupported {
        /// The flag or variable that asked for it.
        source_name: String,
        /// Why it is refused.
        reason: String,
    },
    /// A peer address is malformed.
    #[error("{source_name}: {error}")]
    BadPeer {
        /// `KUBE_PEERS` or `peer argument`.
        source_name: String,
        /// The malformed address.
        error: BadPeerAddr,
    },
}

/// A value and where it came from, for error messages.
struct Sourced<'a> {
    value: &'a str,
    source_name: String,
}

impl Sourced<'_> {
    /// The error for this value, which is not what was expected (`reason`).
    fn invalid(&self, reason: String) -> ConfigError {
        ConfigError::InvalidValue {
            source_name: self.source_name.clone(),
            value: self.value.to_string(),
            reason,
        }
    }
}

impl Config {
    /// Combines flags, environment and host facts into a checked configuration.
    pub fn resolve<'a>(
        args: &'a LaunchArgs,
        env: &'a BTreeMap<String, String>,
        host: &HostInfo,
    ) -> Result<Config, ConfigError> {
        let pick = |flag: &'a Option<String>, flag_name: &str, vars: &[&str]| {
            pick_source(flag, flag_name, vars, env)
        };

        let name = match pick(&args.name, "name", &["WEAVE_NAME"]) {
            Some(s) => s.value.parse::<PeerName>().map_err(|_| {
                s.invalid("expected six hex octets like aa:00:00:00:00:01".to_string())
            })?,
            None => default_peer_name(host.machine_id.as_deref().unwrap_or(&host.hostname)),
        };

        let nickname = match pick(&args.nickname, "nickname", &["WEAVE_NICKNAME"]) {
            Some(s) if s.value.is_empty() => host.hostname.clone(),
            Some(s) => s.value.to_string(),
            None => host.hostname.clone(),
        };

        let port = match pick(&args.port, "port", &["WEAVE_PORT"]) {
            Some(s) => parse_port(s.value)
                .ok_or_else(|| s.invalid("expected a port number from 1 to 65535".to_string()))?,
            None => DEFAULT_PORT,
        };

        let http_addr = match pick(
            &args.http_addr,
            "http-addr",
            &["WEAVE_HTTP_ADDR", "WEAVE_STATUS_ADDR"],
        ) {
            Some(s) => {
                let addr = parse_listen_addr(&s)?;
                if let Some(addr) = addr {
                    if !addr.ip().is_loopback() {
                        return Err(ConfigError::NonLoopbackHttp {
                            source_name: s.source_name,
                            addr,
                        });
                    }
                }
                addr
            }
            None => Some(DEFAULT_HTTP_ADDR.parse().expect("constant address")),
        };

        let metrics_addr = match pick(&args.metrics_addr, "metrics-addr", &["WEAVE_METRICS_ADDR"]) {
            Some(s) => parse_listen_addr(&s)?,
            None => Some(DEFAULT_METRICS_ADDR.parse().expect("constant address")),
        };

        let conn_limit = match pick(&args.conn_limit, "conn-limit", &["CONN_LIMIT"]) {
            Some(s) => s.value.trim().parse::<usize>().map_err(|_| {
                s.invalid("expected a number of connections (0 for no limit)".to_string())
            })?,
            None => DEFAULT_CONN_LIMIT,
        };

        let discovery = if args.no_discovery {
            false
        } else {
            match env.get("WEAVE_NO_DISCOVERY") {
                Some(v) => !parse_bool("WEAVE_NO_DISCOVERY", v)?,
                None => true,
            }
        };

        let mut peers: Vec<PeerAddr> = Vec::new();
        for p in &args.peers {
            let addr = PeerAddr::parse(p, port).map_err(|error| ConfigError::BadPeer {
                source_name: "peer argument".to_string(),
                error,
            })?;
            push_unique(&mut peers, addr);
        }
        if let Some(list) = env.get("KUBE_PEERS") {
            for p in split_peer_list(list) {
                let addr = PeerAddr::parse(p, port).map_err(|error| ConfigError::BadPeer {
                    source_name: "KUBE_PEERS".to_string(),
                    error,
                })?;
                push_unique(&mut peers, addr);
            }
        }

        let dataplane = match pick(&args.dataplane, "dataplane", &["WEAVE_DATAPLANE"]) {
            Some(s) => choose(
                s,
                &[
                    ("none", Dataplane::None),
                    ("epoll", Dataplane::Epoll),
                    ("io-uring", Dataplane::IoUring),
                    ("io_uring", Dataplane::IoUring),
                    ("iouring", Dataplane::IoUring),
                    ("auto", Dataplane::Auto),
                ],
                "expected auto, io-uring, epoll or none",
            )?,
            None => Dataplane::Auto,
        };

        let workers = match pick(&args.workers, "workers", &["WEAVE_WORKERS"]) {
            Some(s) => Some(
                s.value
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=256).contains(n))
                    .ok_or_else(|| {
                        s.invalid("expected a number of workers from 1 to 256".to_string())
                    })?,
            ),
            None => None,
        };

        let cpus = match pick(&args.cpus, "cpus", &["WEAVE_CPUS"]) {
            Some(s) => Some(parse_cpu_list(s.value).map_err(|reason| s.invalid(reason))?),
            None => None,
        };

        let sleeve_spread = match pick(
            &args.sleeve_spread,
            "sleeve-spread",
            &["WEAVE_SLEEVE_SPREAD"],
        ) {
            Some(s) => choose(
                s,
                &[("on", true), ("1", true), ("off", false), ("0", false)],
                "expected on or off",
            )?,
            None => true,
        };

        let partial_checksums = match pick(
            &args.sleeve_checksums,
            "sleeve-checksums",
            &["WEAVE_SLEEVE_CHECKSUMS"],
        ) {
            Some(s) => choose(
                s,
                &[("partial", true), ("full", false)],
                "expected partial or full",
            )?,
            None => true,
        };

        let topology_digest = match pick(
            &args.topology_gossip,
            "topology-gossip",
            &["WEAVE_TOPOLOGY_GOSSIP"],
        ) {
            Some(s) => choose(
                s,
                &[("digest", true), ("weave", false)],
                "expected digest or weave",
            )?,
            None => true,
        };

        let offload = match pick(&args.offload, "offload", &["WEAVE_OFFLOAD"]) {
            Some(s) => choose(s, &[("on", true), ("off", false)], "expected on or off")?,
            None => true,
        };

        let busy_poll = match pick(&args.busy_poll, "busy-poll", &["WEAVE_BUSY_POLL"]) {
            Some(s) => s
                .value
                .trim()
                .parse::<u64>()
                .ok()
                .map(std::time::Duration::from_micros)
                .filter(|d| *d <= crate::dataplane::busypoll::MAX_WINDOW)
                .ok_or_else(|| {
                    s.invalid(format!(
                        "expected microseconds from 0 to {}",
                        crate::dataplane::busypoll::MAX_WINDOW.as_micros()
                    ))
                })?,
            None => crate::dataplane::worker::DEFAULT_BUSY_POLL,
        };

        let ipam = resolve_ipam(args, env)?;

        let mtu = match pick(&args.mtu, "mtu", &["WEAVE_MTU"]) {
            Some(s) if s.value.trim().is_empty() => None,
            Some(s) => Some(
                s.value
                    .trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|m| (MIN_MTU..=MAX_MTU).contains(m))
                    .ok_or_else(|| {
                        s.invalid(format!("expected an MTU from {MIN_MTU} to {MAX_MTU} bytes"))
                    })?,
            ),
            None => None,
        };

        let no_fastdp = args.no_fastdp
            || match env.get("WEAVE_NO_FASTDP") {
                Some(v) => parse_bool("WEAVE_NO_FASTDP", v)?,
                None => false,
            };

        let encryption = resolve_encryption(args, env)?;

        let kubernetes = resolve_kubernetes(args, env, host, !peers.is_empty())?;

        Ok(Config {
            mtu,
            no_fastdp,
            encryption,
            kubernetes,
            ipam,
            dataplane,
            workers,
            cpus,
            sleeve_spread,
            partial_checksums,
            topology_digest,
            offload,
            busy_poll,
            name,
            nickname,
            port,
            http_addr,
            metrics_addr,
            conn_limit,
            discovery,
            peers,
        })
    }
}

/// `--password`, `--password-file`, `--trusted-subnets` and `--sleeve-cipher`.
fn resolve_encryption(
    args: &LaunchArgs,
    env: &BTreeMap<String, String>,
) -> Result<Option<crate::mesh::Encryption>, ConfigError> {
    let given = pick_source(&args.password, "password", &["WEAVE_PASSWORD"], env);
    let file = pick_source(
        &args.password_file,
        "password-file",
        &["WEAVE_PASSWORD_FILE"],
        env,
    )
    .filter(|s| !s.value.is_empty());
    let password = match (given.filter(|s| !s.value.is_empty()), file) {
        (Some(g), Some(f)) => {
            return Err(f.invalid(format!(
                "a password is also given by '{}'; give one",
                g.source_name
            )))
        }
        // Never put the password itself in a message.
        (Some(g), None) => zeroize::Zeroizing::new(g.value.as_bytes().to_vec()),
        (None, Some(f)) => {
            let bytes = std::fs::read(f.value)
                .map_err(|e| f.invalid(format!("cannot read the password: {e}")))?;
            if bytes.is_empty() {
                return Err(f.invalid("the file is empty".to_string()));
            }
            zeroize::Zeroizing::new(bytes)
        }
        (None, None) => zeroize::Zeroizing::new(Vec::new()),
    };
    let mut trusted_subnets = Vec::new();
    if let Some(s) = pick_source(
        &args.trusted_subnets,
        "trusted-subnets",
        &["WEAVE_TRUSTED_SUBNETS"],
        env,
    ) {
        for item in split_peer_list(s.value) {
            let cidr: Cidr = item.parse().map_err(|e| {
                s.invalid(format!(
                    "expected IPv4 subnets like 10.0.0.0/8: {item}: {e}"
                ))
            })?;
            trusted_subnets.push(cidr);
        }
    }
    let fast_cipher = match pick_source(
        &args.sleeve_cipher,
        "sleeve-cipher",
        &["WEAVE_SLEEVE_CIPHER"],
        env,
    ) {
        Some(s) => choose(
            s,
            &[("auto", true), ("weave", false)],
            "expected auto or weave",
        )?,
        None => true,
    };
    // Weave takes an empty password as none.
    if password.is_empty() {
        return Ok(None);
    }
    Ok(Some(crate::mesh::Encryption {
        password,
        trusted_subnets,
        fast_cipher,
    }))
}

/// `--kubernetes`, `--node-name` and `--reclaim-jitter`.
fn resolve_kubernetes(
    args: &LaunchArgs,
    env: &BTreeMap<String, String>,
    host: &HostInfo,
    peers_given: bool,
) -> Result<Option<KubeSettings>, ConfigError> {
    let in_cluster = env
        .get("KUBERNETES_SERVICE_HOST")
        .is_some_and(|v| !v.trim().is_empty());
    let on = match pick_source(&args.kubernetes, "kubernetes", &["WEAVE_KUBERNETES"], env) {
        Some(s) => choose(
            s,
            &[
                ("auto", in_cluster),
                ("", in_cluster),
                ("on", true),
                ("off", false),
            ],
            "expected auto, on or off",
        )?,
        None => in_cluster,
    };
    let node_name = match pick_source(
        &args.node_name,
        "node-name",
        &["NODE_NAME", "HOSTNAME"],
        env,
    ) {
        Some(s) if !s.value.trim().is_empty() => s.value.trim().to_string(),
        _ => host.hostname.clone(),
    };
    let reclaim_jitter = match pick_source(
        &args.reclaim_jitter,
        "reclaim-jitter",
        &["WEAVE_RECLAIM_JITTER"],
        env,
    ) {
        Some(s) => s
            .value
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n <= 300)
            .map(std::time::Duration::from_secs)
            .ok_or_else(|| s.invalid("expected a number of seconds from 0 to 300".to_string()))?,
        None => std::time::Duration::from_secs(DEFAULT_RECLAIM_JITTER_SECS),
    };
    // Checked even when unused, so that a typo shows before it matters.
    if !on {
        return Ok(None);
    }
    Ok(Some(KubeSettings {
        node_name,
        discover_peers: !peers_given,
        reclaim_jitter,
    }))
}

/// The `--ipalloc-*` and `--db-dir` settings.
fn resolve_ipam(
    args: &LaunchArgs,
    env: &BTreeMap<String, String>,
) -> Result<Option<IpamConfig>, ConfigError> {
    let range = match pick_source(
        &args.ipalloc_range,
        "ipalloc-range",
        &["IPALLOC_RANGE"],
        env,
    ) {
        Some(s) if s.value.trim().is_empty() => return Ok(None),
        Some(s) => Cidr::parse_subnet(s.value.trim())
            .map_err(|e| s.invalid(format!("expected a CIDR like 10.32.0.0/12: {e}")))?,
        None => Cidr::parse_subnet(DEFAULT_IPALLOC_RANGE).expect("constant range"),
    };
    let default_subnet = match pick_source(
        &args.ipalloc_default_subnet,
        "ipalloc-default-subnet",
        &["IPALLOC_DEFAULT_SUBNET"],
        env,
    ) {
        Some(s) if !s.value.trim().is_empty() => {
            let subnet = Cidr::parse_subnet(s.value.trim())
                .map_err(|e| s.invalid(format!("expected a CIDR: {e}")))?;
            let (r, sub) = (range.range(), subnet.range());
            if sub.start < r.start || sub.end > r.end {
                return Err(s.invalid(format!(
                    "the default subnet must lie inside the range {range}"
                )));
            }
            subnet
        }
        Some(_) | None => range,
    };
    let init = match pick_source(&args.ipalloc_init, "ipalloc-init", &["IPALLOC_INIT"], env) {
        Some(s) => parse_ipalloc_init(s.value.trim()).map_err(|reason| s.invalid(reason))?,
        None => IpamInit::Consensus(None),
    };
    let db_dir = match pick_source(&args.db_dir, "db-dir", &["WEAVE_DB_DIR"], env) {
        Some(s) if s.value.trim().is_empty() => {
            return Err(s.invalid("expected a directory".to_string()))
        }
        Some(s) => PathBuf::from(s.value.trim()),
        None => PathBuf::from(DEFAULT_DB_DIR),
    };
    Ok(Some(IpamConfig {
        range,
        default_subnet,
        init,
        db_dir,
    }))
}

/// Parses `consensus`, `consensus=N`, `seed=NAME,...` or `observer`.
fn parse_ipalloc_init(v: &str) -> Result<IpamInit, String> {
    let expected = "expected consensus, consensus=N, seed=NAME,... or observer";
    let (mode, arg) = match v.split_once('=') {
        Some((m, a)) => (m, Some(a)),
        None => (v, None),
    };
    match (mode, arg) {
        ("consensus", None) => Ok(IpamInit::Consensus(None)),
        ("consensus", Some(n)) => match n.trim().parse::<u32>() {
            Ok(n) if n >= 1 => Ok(IpamInit::Consensus(Some(n))),
            _ => Err(format!(
                "consensus=N needs a number of peers of at least 1; {expected}"
            )),
        },
        ("seed", Some(list)) => {
            let names = list
                .split(',')
                .map(|n| {
                    n.trim()
                        .parse::<PeerName>()
                        .map_err(|_| format!("'{n}' is not a peer name like aa:00:00:00:00:01"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if names.is_empty() {
                return Err(format!("seed= needs at least one peer name; {expected}"));
            }
            Ok(IpamInit::Seed(names))
        }
        ("observer", None) => Ok(IpamInit::Observer),
        _ => Err(expected.to_string()),
    }
}

/// A CPU list as `taskset` and `/sys` write it: numbers and ranges, comma-separated
/// (`0-1,3`), in the order given, without repeats.
fn parse_cpu_list(list: &str) -> Result<Vec<usize>, String> {
    const EXPECTED: &str = "expected CPU numbers or ranges separated by commas, e.g. 0-1,3";
    let max = crate::sys::cpu::MAX_CPUS - 1;
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim) {
        let number = |s: &str| -> Result<usize, String> {
            let n: usize = s.trim().parse().map_err(|_| EXPECTED.to_string())?;
            if n > max {
                return Err(format!("CPU {n} is above the highest CPU number, {max}"));
            }
            Ok(n)
        };
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => (number(part)?, number(part)?),
        };
        if first > last {
            return Err(format!("range {part} runs backwards"));
        }
        for cpu in first..=last {
            if cpus.contains(&cpu) {
                return Err(format!("CPU {cpu} is listed twice"));
            }
            cpus.push(cpu);
        }
    }
    Ok(cpus)
}

/// The value of the choice `s` names (trimmed), or an error that lists what was expected.
fn choose<T: Copy>(s: Sourced, choices: &[(&str, T)], expected: &str) -> Result<T, ConfigError> {
    let v = s.value.trim();
    choices
        .iter()
        .find(|(name, _)| *name == v)
        .map(|(_, value)| *value)
        .ok_or_else(|| ConfigError::InvalidValue {
            source_name: s.source_name,
            value: v.to_string(),
            reason: expected.to_string(),
        })
}

/// The flag's value if given, else the first of `vars` that is set.
fn pick_source<'a>(
    flag: &'a Option<String>,
    flag_name: &str,
    vars: &[&str],
    env: &'a BTreeMap<String, String>,
) -> Option<Sourced<'a>> {
    if let Some(v) = flag {
        return Some(Sourced {
            value: v.as_str(),
            source_name: format!("--{flag_name}"),
        });
    }
    vars.iter().find_map(|var| {
        env.get(*var).map(|v| Sourced {
            value: v.as_str(),
            source_name: (*var).to_string(),
        })
    })
}

/// A stable peer name from a machine id (or host name): FNV-1a, cut to 48 bits, marked as a
/// locally administered unicast MAC so it cannot clash with a vendor-assigned one.
pub fn default_peer_name(seed: &str) -> PeerName {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = FNV_OFFSET;
    for b in seed.trim().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    // Fold the high bits in so all 64 bits of the hash count.
    let v = (h ^ (h >> 48)) & PeerName::MAX;
    let mut bytes = PeerName::from_u64(v).expect("masked to 48 bits").to_bytes();
    bytes[0] = (bytes[0] | 0x02) & !0x01;
    PeerName::from_bytes(bytes)
}

/// Splits a KUBE_PEERS value on spaces and commas.
pub fn split_peer_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
}

fn push_unique(peers: &mut Vec<PeerAddr>, addr: PeerAddr) {
    if !peers.contains(&addr) {
        peers.push(addr);
    }
}

fn parse_port(s: &str) -> Option<u16> {
    s.trim().parse::<u16>().ok().filter(|p| *p != 0)
}

/// An empty value means "do not listen".
fn parse_listen_addr(s: &Sourced) -> Result<Option<SocketAddr>, ConfigError> {
    if s.value.trim().is_empty() {
        return Ok(None);
    }
    s.value
        .trim()
        .parse::<SocketAddr>()
        .map(Some)
        .map_err(|_| s.invalid("expected ip:port, like 127.0.0.1:6784 or [::1]:6784".to_string()))
}

fn parse_bool(source_name: &str, v: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "" | "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::InvalidValue {
            source_name: source_name.to_string(),
            value: v.to_string(),
            reason: "expected true or false (1/0, yes/no)".to_string(),
        }),
    }
}

/// Letters, digits, '-', '_' and '.', not empty: what a DNS name (or IPv4 literal) can hold.
fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_take_numbers_and_ranges_in_order() {
        assert_eq!(parse_cpu_list("0-1,3"), Ok(vec![0, 1, 3]));
        assert_eq!(parse_cpu_list(" 5 , 2 "), Ok(vec![5, 2]));
        for bad in ["", "a", "1-", "3-1", "1,1", "0-2,2", "100000"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn default_name_is_stable_local_and_unicast() {
        let a = default_peer_name("4c4c4544004a4b10804bb4c04f4d4e32");
        let b = default_peer_name("4c4c4544004a4b10804bb4c04f4d4e32\n");
        let c = default_peer_name("another-machine");
        assert_eq!(a, b);
        assert_ne!(a, c);
        for n in [a, c] {
            let first = n.to_bytes()[0];
            assert_eq!(first & 0x02, 0x02, "{n} must be locally administered");
            assert_eq!(first & 0x01, 0x00, "{n} must be unicast");
        }
    }

    #[test]
    fn peer_addr_forms() {
        let ip = |s: &str| PeerAddr::Ip(s.parse().unwrap());
        assert_eq!(PeerAddr::parse("10.0.0.1", 6783), Ok(ip("10.0.0.1:6783")));
        assert_eq!(
            PeerAddr::parse("10.0.0.1:7000", 6783),
            Ok(ip("10.0.0.1:7000"))
        );
        assert_eq!(PeerAddr::parse("fd00::1", 6783), Ok(ip("[fd00::1]:6783")));
        assert_eq!(PeerAddr::parse("[fd00::1]", 6783), Ok(ip("[fd00::1]:6783")));
        assert_eq!(PeerAddr::parse("[fd00::1]:9", 6783), Ok(ip("[fd00::1]:9")));
        assert_eq!(
            PeerAddr::parse("node-2.example", 6783),
            Ok(PeerAddr::Host {
                host: "node-2.example".into(),
                port: 6783
            })
        );
        assert_eq!(
            PeerAddr::parse("node-2:1234", 6783),
            Ok(PeerAddr::Host {
                host: "node-2".into(),
                port: 1234
            })
        );
        for bad in [
            "a:b:c",
            "",
            ":6783",
            "host:",
            "host:0",
            "host:70000",
            "[zz]",
            "a b",
        ] {
            assert_eq!(
                PeerAddr::parse(bad, 6783),
                Err(BadPeerAddr(bad.to_string())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn peer_list_splits_on_spaces_and_commas() {
        let v: Vec<&str> = split_peer_list(" 10.0.0.1,10.0.0.2  10.0.0.3 ,\n").collect();
        assert_eq!(v, ["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
    }
}
