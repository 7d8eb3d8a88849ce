//! The daemon shell: real sockets, clocks and randomness around the sans-IO [`Mesh`].
//!
//! One task owns the mesh. Every connection has a reader task (bytes in) and a writer task
//! (bytes out, in order); they and the dialers talk to the owner over channels, and the
//! HTTP handlers ask it for snapshots the same way. The owner feeds inputs to the mesh,
//! then performs the commands it asks for, logs its events and sleeps until its next timer.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::api::{self, ApiRequest, ApiState};
use crate::cli::http::io_reason;
use crate::config::{Config, Dataplane};
use crate::dataplane::engine::{ControlFrame, DataplaneCounters, PeerPath, Snapshot};
use crate::dataplane::learn::LearnBus;
use crate::dataplane::plumbing;
use crate::dataplane::sealed::PathCrypto;
use crate::dataplane::supervise::{RestartPolicy, Supervisor};
use crate::dataplane::worker::{
    self, Backend, WorkerExit, WorkerLimits, WorkerSetup, WorkerSockets,
};
use crate::fastdp::shell::FastdpShell;
use crate::ids::{PeerName, PeerUid};
use crate::ipam::shell::IpamShell;
use crate::mesh::{Command, ConnKey, DirectPeer, Event, Mesh, MeshConfig};
use crate::switch::Routes;
use crate::sys::socket::{open_udp, UdpOptions};
use crate::sys::tap::{TapOffloads, TapOptions, TapQueue};
use std::sync::Arc;

/// How long a dial may take before it counts as failed.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from a connection at a time.
const READ_CHUNK: usize = 64 * 1024;
/// Events queued from I/O tasks to the owner before readers wait (backpressure).
const IO_QUEUE: usize = 1024;
/// How long shutdown waits for writers to flush and servers to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Runs the router until SIGINT or SIGTERM.
pub async fn run(mut config: Config) -> anyhow::Result<()> {
    info!("weave-router {}", api::VERSION);
    // Weave Net's words, which operators know.
    match &config.encryption {
        Some(e) => {
            info!("Communication between peers via untrusted networks is encrypted.");
            if !e.trusted_subnets.is_empty() {
                let subnets: Vec<String> =
                    e.trusted_subnets.iter().map(ToString::to_string).collect();
                info!("Trusted subnets: {}", subnets.join(", "));
            }
        }
        None => info!("Communication between peers is unencrypted."),
    }

    let now = Instant::now();
    let uid = PeerUid(rand::random());
    let mesh_config = MeshConfig {
        name: config.name,
        nickname: config.nickname.clone(),
        uid,
        port: config.port,
        conn_limit: config.conn_limit,
        discovery: config.discovery,
        overlays: vec!["sleeve".to_string()],
    };
    let mut mesh = Mesh::new(mesh_config, rand::random(), now);
    if let Some(e) = &config.encryption {
        mesh = mesh.with_encryption(e.clone());
    }
    if config.topology_digest {
        mesh = mesh.with_topology_digest();
    } else {
        info!("Topology gossip as Weave Net's to every peer (--topology-gossip weave)");
    }
    while let Some(ev) = mesh.poll_event() {
        log_event(&ev);
    }
    let kube = connect_kubernetes(&mut config).await?;
    // The store is opened before anything listens: a peer whose allocations cannot be
    // read must not join the mesh and hand out addresses that pods already hold.
    let ipam = match &config.ipam {
        Some(settings) => {
            let alloc_config = IpamShell::config(
                settings,
                config.name,
                uid,
                &config.nickname,
                config.peers.len(),
            );
            Some(IpamShell::start(
                alloc_config,
                &settings.db_dir,
                &mut mesh,
                now,
            )?)
        }
        None => {
            info!("IP address management is off (--ipalloc-range \"\")");
            None
        }
    };
    let (control_tx, control_rx) = mpsc::channel(worker::CONTROL_QUEUE);
    let (exits_tx, exits_rx) = mpsc::unbounded_channel();
    let (fastdp_tx, fastdp_rx) = mpsc::channel(crate::fastdp::shell::FRAME_QUEUE);
    let mut fastdp = None;
    let mut workers = Supervisor::new(control_tx, exits_tx, RestartPolicy::default());
    let dataplane_counters = match config.dataplane {
        Dataplane::None => {
            info!("No data plane: connections establish on the TCP handshake");
            None
        }
        Dataplane::Epoll | Dataplane::IoUring | Dataplane::Auto => {
            let backend = choose_backend(config.dataplane);
            let StartedDataplane { learned, spread } =
                start_dataplane(&config, backend, &mut workers, !config.no_fastdp).await?;
            mesh = mesh.with_sleeve(underlay_mtu(config.mtu));
            if spread {
                mesh = mesh.with_sleeve_spread();
            }
            if config.partial_checksums {
                mesh = mesh.with_partial_checksums();
            }
            let pod_mtu = pod_mtu(&config);
            mesh = match learned {
                None => {
                    info!("Fast datapath turned off (--no-fastdp): the sleeve carries every peer");
                    mesh.without_fastdp("turned off (--no-fastdp)")
                }
                Some((learned, bus)) => {
                    match start_fastdp(&config, pod_mtu, learned, bus, fastdp_tx).await {
                        Ok(f) => {
                            fastdp = Some(f);
                            mesh.with_fastdp(pod_mtu)
                        }
                        Err(e) => {
                            warn!(
                                "Fast datapath unavailable, the sleeve carries every peer: {e:#}"
                            );
                            mesh.without_fastdp(format!("unavailable on this host: {e:#}"))
                        }
                    }
                }
            };
            let counters = DataplaneCounters {
                backend: backend.name(),
                workers: workers.counters(),
            };
            Some(Arc::new(counters))
        }
    };

    let mut initial = Vec::new();
    for peer in &config.peers {
        match api::resolve(peer).await {
            Ok(addr) => initial.push(DirectPeer::new(
                peer.target_text(config.port),
                addr,
                config.port,
            )),
            // A peer that does not resolve yet (a node still joining) must not stop us.
            Err(e) => warn!("Ignoring initial peer {peer}: {e}"),
        }
    }
    let shown: Vec<String> = config.peers.iter().map(|p| p.to_string()).collect();
    info!("Using supplied peer list: [{}]", shown.join(" "));

    let mesh_addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, config.port));
    let listener = TcpListener::bind(mesh_addr)
        .await
        .with_context(|| format!("cannot listen for peers on TCP {mesh_addr}"))?;
    info!("Listening for peer connections on TCP {mesh_addr}");

    let http_listener = match config.http_addr {
        Some(addr) => Some((
            addr,
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for HTTP control messages on {addr}"))?,
        )),
        None => None,
    };
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some((
            addr,
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for metrics requests on {addr}"))?,
        )),
        None => None,
    };

    if !initial.is_empty() {
        mesh.connect(&initial, false, Instant::now());
    }

    let (io_tx, io_rx) = mpsc::channel(IO_QUEUE);
    let (api_tx, api_rx) = mpsc::channel(64);
    let (stop_tx, stop_rx) = watch::channel(false);

    let acceptor = tokio::spawn(accept_loop(listener, io_tx.clone()));
    let state = ApiState {
        requests: api_tx,
        port: config.port,
        dataplane: dataplane_counters.clone(),
        started: now,
        ipam: ipam.is_some(),
    };
    let mut servers = Vec::new();
    if let Some((addr, l)) = http_listener {
        info!("Listening for HTTP control messages on {addr}");
        servers.push(tokio::spawn(serve_until_stopped(
            l,
            api::router(state.clone()),
            stop_rx.clone(),
            "HTTP API",
        )));
    }
    if let Some((addr, l)) = metrics_listener {
        info!("Listening for metrics requests on {addr}");
        servers.push(tokio::spawn(serve_until_stopped(
            l,
            api::metrics_router(state.clone()),
            stop_rx.clone(),
            "metrics",
        )));
    }
    let kube_task = kube.map(|k| spawn_kubernetes(k, state.requests.clone(), ipam.is_some()));
    // The owner holds no sender of its own API channel, so it ends only on a signal.
    drop(state);

    let mut shell = Shell {
        mesh,
        conns: HashMap::new(),
        dialing: HashMap::new(),
        io_tx,
        workers,
        published: None,
        sessions: BTreeMap::new(),
        ipam,
        fastdp,
    };
    let signal = shell
        .run(io_rx, api_rx, control_rx, exits_rx, fastdp_rx)
        .await?;
    info!("=== received {signal} ===");

    acceptor.abort();
    if let Some(task) = kube_task {
        task.abort();
    }
    let _ = stop_tx.send(true);
    if let Some(f) = shell.fastdp.take() {
        f.stop();
    }
    shell.workers.stop();
    let writers = shell.close_all();
    let wait = async {
        for w in writers {
            let _ = w.await;
        }
        for s in servers {
            let _ = s.await;
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, wait).await.is_err() {
        warn!("Shutdown did not finish within {SHUTDOWN_GRACE:?}; exiting anyway");
    }
    info!("exiting");
    Ok(())
}

/// In a cluster: connects to the API server, takes the initial peers from the Nodes (they
/// also set the IPAM quorum) unless peers were given, and checks the IPAM store against the
/// cluster's peer list before it is opened.
#[cfg(feature = "kubernetes")]
async fn connect_kubernetes(config: &mut Config) -> anyhow::Result<Option<crate::kube::Kube>> {
    let Some(settings) = config.kubernetes.clone() else {
        return Ok(None);
    };
    let kube = crate::kube::Kube::connect(settings.clone(), config.name, config.port).await?;
    info!("Kubernetes: Node {}", settings.node_name);
    if settings.discover_peers {
        config.peers = kube
            .initial_peers()
            .await?
            .into_iter()
            .map(crate::config::PeerAddr::Ip)
            .collect();
    }
    if let Some(ipam) = &config.ipam {
        kube.prepare_store(&ipam.db_dir).await?;
    }
    Ok(Some(kube))
}

/// Without the `kubernetes` feature, asking for the integration is an error.
#[cfg(not(feature = "kubernetes"))]
async fn connect_kubernetes(
    config: &mut Config,
) -> anyhow::Result<Option<std::convert::Infallible>> {
    if config.kubernetes.is_some() {
        anyhow::bail!(
            "this weave-router was built without the `kubernetes` feature; use --kubernetes off"
        );
    }
    Ok(None)
}

#[cfg(feature = "kubernetes")]
fn spawn_kubernetes(
    kube: crate::kube::Kube,
    requests: mpsc::Sender<ApiRequest>,
    ipam: bool,
) -> JoinHandle<()> {
    kube.spawn(requests, ipam)
}

#[cfg(not(feature = "kubernetes"))]
fn spawn_kubernetes(
    kube: std::convert::Infallible,
    _requests: mpsc::Sender<ApiRequest>,
    _ipam: bool,
) -> JoinHandle<()> {
    match kube {}
}

/// The underlay MTU the sleeve's path-MTU search starts from, unless `--mtu` says otherwise.
const UNDERLAY_MTU: u16 = 1500;

/// The underlay MTU that carries pods of MTU `pod_mtu` in the sleeve (1500 by default).
fn underlay_mtu(pod_mtu: Option<u16>) -> u16 {
    let overhead = UNDERLAY_MTU - crate::mesh::sleeve::mtu_for_underlay(UNDERLAY_MTU, false);
    pod_mtu.map_or(UNDERLAY_MTU, |m| m.saturating_add(overhead))
}

/// The pods' MTU (the bridge's, and the fast datapath's): `--mtu`, else what the sleeve
/// carries on a 1500-byte underlay, encrypted when there is a password.
fn pod_mtu(config: &Config) -> u16 {
    let encrypted = config.mtu.is_none() && config.encryption.is_some();
    crate::mesh::sleeve::mtu_for_underlay(underlay_mtu(config.mtu), encrypted)
}

/// Picks the backend: io_uring unless refused (seccomp, old kernel) or epoll was asked for.
fn choose_backend(asked: Dataplane) -> Backend {
    if asked == Dataplane::Epoll {
        return Backend::Epoll;
    }
    match crate::dataplane::iouring::probe() {
        Ok(()) => Backend::IoUring,
        Err(e) => {
            warn!("io_uring is not available ({e}); the data plane falls back to epoll");
            Backend::Epoll
        }
    }
}

/// Starts the fast datapath (Open vSwitch when the kernel has it, else Linux VXLAN devices)
/// next to the bridge and TAP the data plane set up.
async fn start_fastdp(
    config: &Config,
    pod_mtu: u16,
    learned: std::sync::mpsc::Receiver<crate::dataplane::learn::Post>,
    bus: Arc<LearnBus>,
    frames: mpsc::Sender<Vec<u8>>,
) -> anyhow::Result<FastdpShell> {
    let (connection, handle, _) =
        rtnetlink::new_connection().context("cannot open a netlink connection")?;
    // The programming task uses this connection for the router's whole life.
    tokio::spawn(connection);
    let host = crate::fastdp::shell::Host {
        bridge: plumbing::BRIDGE_NAME,
        tap: plumbing::TAP_NAME,
        mtu: u32::from(pod_mtu),
        ourself: config.name,
    };
    let shell = FastdpShell::start(handle, host, learned, bus, frames).await?;
    info!("Fast datapath backend: {}", shell.backend());
    Ok(shell)
}

/// Steers the mesh port's reuseport `group` by source port and opens one sending port per
/// worker, consecutive, so that a peer's steering spreads them over its workers.
fn own_ports(group: &[std::net::UdpSocket]) -> anyhow::Result<Vec<std::net::UdpSocket>> {
    let n = u32::try_from(group.len()).context("too many workers")?;
    if let Some(first) = group.first() {
        crate::sys::socket::steer_by_source_port(first, n)
            .context("cannot steer the sleeve port by source port")?;
    }
    let opts = UdpOptions {
        reuse_port: false,
        gro: false,
        // Nothing is read from these sockets; a stray datagram waits in a small buffer.
        recv_buffer: None,
        ..UdpOptions::sleeve(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), true)
    };
    crate::sys::socket::open_port_block(&opts, group.len())
        .context("cannot open the workers' sending ports")
}

/// The running data plane, as [`start_dataplane`] leaves it.
struct StartedDataplane {
    /// With a fast datapath: the mailbox where workers post the MACs they learn.
    learned: Option<(
        std::sync::mpsc::Receiver<crate::dataplane::learn::Post>,
        Arc<LearnBus>,
    )>,
    /// Whether the workers send to spreading peers from ports of their own.
    spread: bool,
}

/// Sets up the bridge and TAP and starts the workers under `workers`; with `fastdp`, also
/// returns the mailbox where the workers post the MACs they learn for the fast datapath.
async fn start_dataplane(
    config: &Config,
    backend: Backend,
    workers: &mut Supervisor,
    fastdp: bool,
) -> anyhow::Result<StartedDataplane> {
    let pod_mtu = u32::from(pod_mtu(config));
    let desired = plumbing::HostPlumbing::new(pod_mtu);
    let (connection, handle, _) =
        rtnetlink::new_connection().context("cannot open a netlink connection")?;
    let driver = tokio::spawn(connection);
    let ops = plumbing::ensure(&handle, &desired).await.with_context(|| {
        format!(
            "cannot set up bridge {} and TAP {}",
            desired.bridge, desired.tap
        )
    })?;
    driver.abort();
    info!(
        "Bridge {} and TAP {} ready ({} changes)",
        desired.bridge,
        desired.tap,
        ops.len()
    );

    let allowed = crate::sys::cpu::allowed_cpus().unwrap_or_default();
    let cpus = match &config.cpus {
        Some(listed) => {
            if let Some(cpu) = listed.iter().find(|c| !allowed.contains(c)) {
                anyhow::bail!(
                    "--cpus/WEAVE_CPUS: CPU {cpu} is not one this router may run on ({})",
                    allowed
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                );
            }
            listed.clone()
        }
        None => allowed,
    };
    let count = config.workers.unwrap_or(cpus.len().max(1));
    let tap_options = TapOptions {
        napi: worker::kernel_gro(),
        offloads: if config.offload {
            TapOffloads::SLEEVE
        } else {
            TapOffloads::NONE
        },
        ..TapOptions::default()
    };
    let queues = TapQueue::open_queues(&desired.tap, count, &tap_options)
        .with_context(|| format!("cannot open {count} queues of TAP {}", desired.tap))?;
    let bind = SocketAddr::from((Ipv4Addr::UNSPECIFIED, config.port));
    // With a fast datapath, one mailbox more than workers: its programming task's.
    let learn = LearnBus::new(queues.len() + usize::from(fastdp));
    let learned = if fastdp {
        learn
            .inbox(queues.len())
            .map(|inbox| (inbox, Arc::clone(&learn)))
    } else {
        None
    };
    let mut group = Vec::new();
    for _ in 0..queues.len() {
        let udp = open_udp(&UdpOptions {
            gro: config.offload,
            ..UdpOptions::sleeve(bind, true)
        })
        .with_context(|| format!("cannot open the sleeve's UDP socket on {bind}"))?;
        group.push(udp);
    }
    let mut own: Vec<Option<std::net::UdpSocket>> = Vec::new();
    if !config.sleeve_spread {
        info!(
            "Sleeve: every worker sends from port {} (--sleeve-spread off)",
            config.port
        );
    } else {
        match own_ports(&group) {
            Ok(block) => {
                let first = block.first().and_then(|s| s.local_addr().ok());
                let first = first.map_or(0, |a| a.port());
                info!(
                    "Sleeve: workers send to weave-routers from ports {first}-{}, received by source port",
                    usize::from(first) + block.len() - 1
                );
                own = block.into_iter().map(Some).collect();
            }
            Err(e) => warn!(
                "Sleeve: every worker sends from port {}: {e:#}",
                config.port
            ),
        }
    }
    let spread = !own.is_empty();
    own.resize_with(group.len(), || None);
    for (i, ((tap, udp), own)) in queues.into_iter().zip(group).zip(own).enumerate() {
        let sockets = WorkerSockets { udp, own };
        let setup = WorkerSetup {
            index: i,
            ourself: config.name,
            learn: Arc::clone(&learn),
            offload: config.offload,
            cpu: cpus.get(i % cpus.len().max(1)).copied(),
            limits: WorkerLimits {
                busy_poll: config.busy_poll,
                ..WorkerLimits::default()
            },
        };
        workers
            .start(backend, setup, tap, sockets, Instant::now())
            .with_context(|| format!("cannot start worker {i}"))?;
    }
    info!(
        "Data plane: {count} {} workers on UDP {bind} (CPUs {}), offloads {}",
        backend.name(),
        cpus.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        if config.offload { "on" } else { "off" }
    );
    Ok(StartedDataplane { learned, spread })
}

/// Something an I/O task reports to the owner.
#[derive(Debug)]
enum IoEvent {
    /// A peer connected to us.
    Accepted(TcpStream, SocketAddr),
    /// A dial finished.
    Dialed(ConnKey, Result<TcpStream, String>),
    /// Bytes arrived.
    Data(ConnKey, Vec<u8>),
    /// The connection ended (EOF or error text).
    Closed(ConnKey, String),
}

/// What the owner tells a writer task.
#[derive(Debug)]
enum WriterMsg {
    /// Write these bytes after the ones before.
    Bytes(Vec<u8>),
    /// Flush, send FIN and stop.
    Close,
}

/// The I/O tasks of one open connection.
struct ConnIo {
    writer_tx: mpsc::UnboundedSender<WriterMsg>,
    writer: JoinHandle<()>,
    reader: JoinHandle<()>,
}

/// The task that owns the mesh.
struct Shell {
    mesh: Mesh,
    conns: HashMap<ConnKey, ConnIo>,
    dialing: HashMap<ConnKey, JoinHandle<()>>,
    io_tx: mpsc::Sender<IoEvent>,
    /// The data plane's workers (none without a data plane).
    workers: Supervisor,
    published: Option<u64>,
    /// The encrypted sleeve sessions the workers share, kept from one snapshot to the next
    /// so that sequence numbers and replay windows carry on.
    sessions: BTreeMap<PeerName, Arc<PathCrypto>>,
    ipam: Option<IpamShell>,
    fastdp: Option<FastdpShell>,
}

impl Shell {
    /// Drives the mesh until a termination signal; returns the signal's name.
    async fn run(
        &mut self,
        mut io_rx: mpsc::Receiver<IoEvent>,
        mut api_rx: mpsc::Receiver<ApiRequest>,
        mut control_rx: mpsc::Receiver<ControlFrame>,
        mut exits_rx: mpsc::UnboundedReceiver<WorkerExit>,
        mut fastdp_rx: mpsc::Receiver<Vec<u8>>,
    ) -> anyhow::Result<&'static str> {
        // The signal streams are made once so a signal between two loop turns is not lost.
        let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        loop {
            self.drain()?;
            let now = Instant::now();
            let ipam_deadline = self.ipam.as_ref().map(|i| i.poll_timeout(now));
            let restarts = self.workers.poll_timeout();
            let deadline = [self.mesh.poll_timeout(), ipam_deadline, restarts]
                .into_iter()
                .flatten()
                .min();
            let timer = async move {
                match deadline {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                ev = io_rx.recv() => {
                    // The acceptor holds a sender until shutdown, so None cannot come first.
                    let Some(ev) = ev else { anyhow::bail!("I/O event channel closed") };
                    self.handle_io(ev);
                }
                Some(req) = api_rx.recv() => self.handle_api(req),
                Some(f) = control_rx.recv() => {
                    self.mesh.handle_sleeve_frame(f.from, f.src, &f.frame, Instant::now());
                }
                Some(exit) = exits_rx.recv() => self.workers.handle_exit(exit, Instant::now()),
                Some(frame) = fastdp_rx.recv() => {
                    self.mesh.handle_fastdp_frame(&frame, Instant::now());
                }
                () = timer => {
                    let now = Instant::now();
                    self.mesh.handle_timeout(now);
                    if let Some(ipam) = &mut self.ipam {
                        ipam.handle_timeout(now);
                    }
                    self.workers.handle_timeout(now);
                }
                _ = sigint.recv() => return Ok("SIGINT"),
                _ = sigterm.recv() => return Ok("SIGTERM"),
            }
        }
    }

    fn handle_io(&mut self, ev: IoEvent) {
        let now = Instant::now();
        match ev {
            IoEvent::Accepted(stream, remote) => {
                let conn = self.mesh.handle_accepted(remote, now);
                self.start_io(conn, stream);
            }
            IoEvent::Dialed(conn, result) => {
                // A dial the mesh has since closed is dropped here, stream and all.
                if self.dialing.remove(&conn).is_none() {
                    return;
                }
                match result {
                    Ok(stream) => {
                        self.start_io(conn, stream);
                        self.mesh.handle_dialed(conn, now);
                    }
                    Err(e) => self.mesh.handle_dial_failed(conn, &e, now),
                }
            }
            IoEvent::Data(conn, bytes) => {
                // Data read before the mesh closed the connection is stale.
                if self.conns.contains_key(&conn) {
                    self.mesh.handle_data(conn, &bytes, now);
                }
            }
            IoEvent::Closed(conn, reason) => {
                // Both halves may report the same end; the mesh hears of it once.
                let Some(io) = self.conns.remove(&conn) else {
                    return;
                };
                io.reader.abort();
                drop(io.writer_tx);
                self.mesh.handle_closed(conn, &reason, now);
            }
        }
    }

    fn handle_api(&mut self, req: ApiRequest) {
        let now = Instant::now();
        match req {
            ApiRequest::Status { reply } => {
                let _ = reply.send(self.mesh.status(now));
            }
            ApiRequest::Stats { reply } => {
                let rtt = self.mesh.rtts();
                let router = self.mesh.status(now);
                let _ = reply.send(api::MeshSnapshot { router, rtt });
            }
            ApiRequest::Connect {
                addrs,
                replace,
                reply,
            } => {
                self.mesh.connect(&addrs, replace, now);
                let _ = reply.send(());
            }
            ApiRequest::Forget { addrs, reply } => {
                self.mesh.forget(&addrs, now);
                let _ = reply.send(());
            }
            ApiRequest::Ipam(req) => match &mut self.ipam {
                Some(ipam) => ipam.handle_request(req, now),
                // The handlers check first; a request that slips through gets a 503.
                None => drop(req),
            },
        }
    }

    /// Lets the allocator persist and speak, then performs every queued command and logs
    /// every queued event. Fails only when the IPAM store cannot be written.
    fn drain(&mut self) -> anyhow::Result<()> {
        if let Some(ipam) = &mut self.ipam {
            ipam.flush(&mut self.mesh, Instant::now())?;
        }
        // Before the commands: a new peer's first heartbeat must find its session in the
        // worker that seals it (snapshots and datagrams reach a worker in order).
        self.publish();
        while let Some(cmd) = self.mesh.poll_command() {
            self.execute(cmd);
        }
        while let Some(ev) = self.mesh.poll_event() {
            log_event(&ev);
        }
        self.publish();
        Ok(())
    }

    /// Gives the workers a new forwarding snapshot when routes or sleeve paths changed.
    fn publish(&mut self) {
        if self.workers.is_empty() || self.published == Some(self.mesh.generation()) {
            return;
        }
        self.published = Some(self.mesh.generation());
        let old = std::mem::take(&mut self.sessions);
        self.sessions = self
            .mesh
            .sleeve_sessions()
            .into_iter()
            .map(|(peer, s)| {
                let kept = old
                    .get(&peer)
                    .filter(|c| c.same_session(&s.key, s.outbound, s.aead))
                    .cloned();
                let session =
                    kept.unwrap_or_else(|| Arc::new(PathCrypto::new(s.key, s.outbound, s.aead)));
                (peer, session)
            })
            .collect();
        let snapshot = Arc::new(Snapshot {
            crypto: self.sessions.clone(),
            routes: Routes {
                ourself: self.mesh.name(),
                unicast: self.mesh.unicast_routes(),
                broadcast: self.mesh.broadcast_routes(),
            },
            paths: self
                .mesh
                .sleeve_peers()
                .into_iter()
                .map(|(peer, p)| {
                    let path = PeerPath {
                        udp: p.udp,
                        mtu: p.mtu,
                        spread: p.spread,
                        partial_csum: p.partial_csum,
                    };
                    (peer, path)
                })
                .collect(),
        });
        self.workers.publish(snapshot);
        if let Some(f) = &self.fastdp {
            f.publish(self.mesh.fastdp_view());
        }
    }

    fn execute(&mut self, cmd: Command) {
        match cmd {
            Command::Dial { conn, addr } => {
                let tx = self.io_tx.clone();
                let task = tokio::spawn(async move {
                    let result = dial(addr).await;
                    let _ = tx.send(IoEvent::Dialed(conn, result)).await;
                });
                self.dialing.insert(conn, task);
            }
            Command::Send { conn, bytes } => {
                // A send to a connection that has just ended is moot: the mesh hears of
                // the end through `handle_closed`.
                if let Some(io) = self.conns.get(&conn) {
                    let _ = io.writer_tx.send(WriterMsg::Bytes(bytes));
                }
            }
            Command::Close { conn } => {
                if let Some(io) = self.conns.remove(&conn) {
                    io.reader.abort();
                    let _ = io.writer_tx.send(WriterMsg::Close);
                } else if let Some(task) = self.dialing.remove(&conn) {
                    task.abort();
                }
            }
            Command::SendFastdp { to, datagram } => {
                if let Some(f) = &self.fastdp {
                    f.send(to, &datagram);
                }
            }
            Command::SendUdp(udp) => {
                let to = udp.to;
                // The mesh runs the sleeve only together with the workers; they are all
                // down only while restarting, or after every one was given up.
                if !self.workers.send_datagram(udp) {
                    warn!("Dropping a sleeve datagram to {to}: no data plane worker is running");
                }
            }
        }
    }

    fn start_io(&mut self, conn: ConnKey, stream: TcpStream) {
        // Control messages are small and latency matters more than packing.
        let _ = stream.set_nodelay(true);
        let label = match (stream.local_addr(), stream.peer_addr()) {
            (Ok(l), Ok(r)) => format!("{l}->{r}"),
            _ => conn.to_string(),
        };
        let (rd, wr) = stream.into_split();
        let (writer_tx, writer_rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(conn, rd, label.clone(), self.io_tx.clone()));
        let writer = tokio::spawn(write_loop(conn, wr, label, writer_rx, self.io_tx.clone()));
        self.conns.insert(
            conn,
            ConnIo {
                writer_tx,
                writer,
                reader,
            },
        );
    }

    /// Closes every connection and dial; returns the writers to wait for.
    fn close_all(&mut self) -> Vec<JoinHandle<()>> {
        for (_, task) in self.dialing.drain() {
            task.abort();
        }
        self.conns
            .drain()
            .map(|(_, io)| {
                io.reader.abort();
                let _ = io.writer_tx.send(WriterMsg::Close);
                io.writer
            })
            .collect()
    }
}

/// Logs a sans-IO module's event at its level.
pub(crate) fn log_event(ev: &Event) {
    if ev.warning {
        warn!("{ev}");
    } else {
        info!("{ev}");
    }
}

async fn accept_loop(listener: TcpListener, tx: mpsc::Sender<IoEvent>) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                if tx.send(IoEvent::Accepted(stream, remote)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // Usually out of file descriptors: pause rather than spin.
                warn!("accepting a peer connection failed: {}", io_reason(&e));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn dial(addr: SocketAddr) -> Result<TcpStream, String> {
    match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(format!("dial tcp {addr}: connect: {}", io_reason(&e))),
        Err(_) => Err(format!(
            "dial tcp {addr}: no answer within {}s",
            DIAL_TIMEOUT.as_secs()
        )),
    }
}

async fn read_loop(conn: ConnKey, mut rd: OwnedReadHalf, label: String, tx: mpsc::Sender<IoEvent>) {
    let mut buf = vec![0u8; READ_CHUNK];
    let reason = loop {
        match rd.read(&mut buf).await {
            Ok(0) => break "EOF".to_string(),
            Ok(n) => {
                if tx
                    .send(IoEvent::Data(conn, buf[..n].to_vec()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => break format!("read tcp {label}: {}", io_reason(&e)),
        }
    };
    let _ = tx.send(IoEvent::Closed(conn, reason)).await;
}

async fn write_loop(
    conn: ConnKey,
    mut wr: OwnedWriteHalf,
    label: String,
    mut rx: mpsc::UnboundedReceiver<WriterMsg>,
    tx: mpsc::Sender<IoEvent>,
) {
    while let Some(msg) = rx.recv().await {
        match msg {
            WriterMsg::Bytes(bytes) => {
                if let Err(e) = wr.write_all(&bytes).await {
                    let reason = format!("write tcp {label}: {}", io_reason(&e));
                    let _ = tx.send(IoEvent::Closed(conn, reason)).await;
                    return;
                }
            }
            WriterMsg::Close => break,
        }
    }
    // Everything queued is written; send FIN. The mesh has already forgotten this
    // connection, so a failure here has no one to tell.
    let _ = wr.shutdown().await;
}

async fn serve_until_stopped(
    listener: TcpListener,
    app: axum::Router,
    mut stop: watch::Receiver<bool>,
    what: &'static str,
) {
    let shutdown = async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    if let Err(e) = api::serve(listener, app, shutdown).await {
        warn!("{what} server failed: {e}");
    }
}
