//! The shell of the harness: builds one group of hosts per path on one testbed, keeps them
//! for the whole run, and takes the measurements in the planned order.
//!
//! ```text
//!  underlay br0 ── group vxlan:   h1 h2 h3   kbr + vx0 per host, pods on kbr (MTU 1450)
//!              ├── group veth:    h4 h5 h6   client in h4, server in h5 (underlay only)
//!              ├── group sleeve-*: ...       weave-router per host (--no-fastdp), pods on `weave`
//!              └── group fastdp:  ...        weave-router per host, its kernel VXLAN carries
//!                                            the pods' traffic (MTU 1438 for both)
//! ```
//!
//! Traffic always runs from host1's pod (or host1 itself) to host2's of its group; the other
//! hosts of a group are mesh members, as in a cluster. The load server runs for the whole run
//! in each group's receiving pod; one load client runs per measurement.

use std::io::Read as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::facts::{self, ProcSample};
use super::model::{schedule, NetPath, PathKind, Step, WorkloadName};
use super::result::{
    derive_metrics, summarize, PathInfo, RouterSample, RunResult, Sample, Settings, WorkloadInfo,
    SCHEMA, SCHEMA_VERSION,
};
use crate::load::{self, LoadResult};
use crate::router::{Router, RouterError, WorkerReport};
use crate::testbed::{self, Host, InNetns, Pod, Process, Testbed, TestbedConfig, TestbedError};

/// Namespace prefix of the harness's testbeds.
pub const PREFIX: &str = "wprf";
/// How long routers get to start and to mesh with verified MTUs.
const CONVERGE: Duration = Duration::from_secs(60);
/// How long a load server gets to listen, and a first ping to cross a path.
const READY: Duration = Duration::from_secs(20);
/// Slack for a client's start and control exchange, beyond its warm-up and counted time.
const CLIENT_SLACK: Duration = Duration::from_secs(30);
/// Time from starting a client until its warm-up starts (process start, control exchange);
/// the routers are sampled this much after the warm-up ends, so their window lies inside
/// the client's counted one.
const CLIENT_START: Duration = Duration::from_millis(50);
/// The VXLAN network id of the baseline.
const VNI: &str = "42";

/// Errors of a harness run.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The options cannot describe a run.
    #[error("{0}")]
    Config(String),
    /// The testbed failed (or the run was cancelled).
    #[error(transparent)]
    Testbed(#[from] TestbedError),
    /// A router could not be found, started or read.
    #[error(transparent)]
    Router(#[from] RouterError),
    /// Building a path's group failed.
    #[error("setting up path {path}: {detail}")]
    Setup {
        /// The path.
        path: String,
        /// What failed.
        detail: String,
    },
    /// Writing or reading a file, or running a helper, failed.
    // The source is left to the error chain, which the binary prints after this.
    #[error("{what}")]
    Io {
        /// The file and operation.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A result file is not a weave-perf run.
    #[error("{path} is not a weave-perf result: {detail}")]
    BadResult {
        /// The file.
        path: String,
        /// Why.
        detail: String,
    },
}

impl HarnessError {
    /// Whether the run stopped because it was cancelled (Ctrl-C, SIGTERM).
    pub fn is_cancelled(&self) -> bool {
        match self {
            HarnessError::Testbed(TestbedError::Cancelled { .. })
            | HarnessError::Router(RouterError::Testbed(TestbedError::Cancelled { .. })) => true,
            HarnessError::Testbed(_)
            | HarnessError::Router(_)
            | HarnessError::Config(_)
            | HarnessError::Setup { .. }
            | HarnessError::Io { .. }
            | HarnessError::BadResult { .. } => false,
        }
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Paths, in the order of the first repeat.
    pub paths: Vec<NetPath>,
    /// Workloads, in order.
    pub workloads: Vec<WorkloadName>,
    /// Measurements of each path and workload.
    pub repeats: usize,
    /// Counted seconds per measurement.
    pub seconds: f64,
    /// Warm-up seconds per measurement.
    pub warmup: f64,
    /// Hosts per path (at least 2).
    pub hosts_per_path: usize,
    /// Third octet of the underlay subnet.
    pub subnet: u8,
    /// `--workers` for the routers (`None`: their default).
    pub router_workers: Option<usize>,
    /// Whether this is a `--quick` run (recorded, and shortens the pauses).
    pub quick: bool,
    /// The weave-router binary.
    pub router_bin: PathBuf,
    /// The binary that has the `load-server` and `load-client` subcommands (weave-perf).
    pub load_bin: PathBuf,
    /// The command line, for the record.
    pub command_line: Vec<String>,
}

impl RunOptions {
    /// Checks what can be checked without building anything.
    pub fn validate(&self) -> Result<(), HarnessError> {
        let bad = |m: String| Err(HarnessError::Config(m));
        if self.paths.is_empty() || self.workloads.is_empty() {
            return bad("choose at least one path and one workload".into());
        }
        if let Some(p) = self.paths.iter().find(|p| p.availability().is_err()) {
            let why = p.availability().err().unwrap_or_default();
            return bad(format!("path {}: {why}", p.name()));
        }
        if self.repeats == 0 {
            return bad("--repeats must be at least 1".into());
        }
        if !(self.seconds.is_finite() && self.seconds >= 0.1 && self.seconds <= 3600.0) {
            return bad(format!("--seconds {} is not in 0.1..=3600", self.seconds));
        }
        if !(self.warmup.is_finite() && (0.0..=600.0).contains(&self.warmup)) {
            return bad(format!("--warmup {} is not in 0..=600", self.warmup));
        }
        if self.hosts_per_path < 2 {
            return bad("--hosts must be at least 2 (traffic goes host1 → host2)".into());
        }
        if self.paths.len() * self.hosts_per_path > 254 {
            return bad(format!(
                "{} paths × {} hosts do not fit one /24 underlay",
                self.paths.len(),
                self.hosts_per_path
            ));
        }
        Ok(())
    }
}

/// What the run reports while it goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// Setting up: what is being done.
    Note(String),
    /// A measurement starts.
    Start {
        /// 1-based.
        index: usize,
        /// Measurements in the run.
        total: usize,
        /// Repeats in the run.
        repeats: usize,
        /// What is measured.
        step: Step,
        /// Estimated time until the run ends.
        eta: Duration,
    },
    /// A measurement ended.
    Done(&'a Sample),
}

/// Runs the measurements of `opts`; the testbed is removed before this returns, also on
/// error and on cancellation. A failed measurement is recorded in its sample, not returned.
pub fn run(
    opts: &RunOptions,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<RunResult, HarnessError> {
    opts.validate()?;
    if !testbed::is_root() {
        return Err(HarnessError::Config(
            "the harness creates network namespaces: run it as root".into(),
        ));
    }
    check_router_flags(opts)?;
    let started = facts::unix_now();
    let machine = facts::machine_facts(&opts.router_bin, opts.command_line.clone());
    let ticks_per_s = facts::clock_ticks_per_second() as f64;
    let router = Router::new(opts.router_bin.clone());

    let hosts = opts.paths.len() * opts.hosts_per_path;
    progress(Event::Note(format!(
        "building the testbed: {hosts} hosts ({} per path) on 192.168.{}.0/24",
        opts.hosts_per_path, opts.subnet
    )));
    let bed = Testbed::new(&TestbedConfig::new(PREFIX, hosts).with_subnet(opts.subnet))?;
    let mut groups = Vec::new();
    for (g, &path) in opts.paths.iter().enumerate() {
        let t = Instant::now();
        let group = Group::build(&bed, &router, opts, path, g, cancel)?;
        progress(Event::Note(format!(
            "{}: ready after {:.1} s",
            path.name(),
            t.elapsed().as_secs_f64()
        )));
        groups.push(group);
    }

    let steps = schedule(&opts.paths, &opts.workloads, opts.repeats);
    let total = steps.len();
    let pause = if opts.quick {
        Duration::from_millis(100)
    } else {
        Duration::from_millis(300)
    };
    let mut per_step = Duration::from_secs_f64(opts.warmup + opts.seconds) + pause * 2;
    let run_start = Instant::now();
    let mut samples = Vec::with_capacity(total);
    for (i, step) in steps.into_iter().enumerate() {
        let eta = per_step * (total - i) as u32;
        progress(Event::Start {
            index: i + 1,
            total,
            repeats: opts.repeats,
            step,
            eta,
        });
        let group = groups
            .iter_mut()
            .find(|g| g.path == step.path)
            .ok_or_else(|| HarnessError::Config(format!("no group for {}", step.path.name())))?;
        let sample = group.measure(&router, opts, step, i + 1, ticks_per_s, cancel)?;
        progress(Event::Done(&sample));
        samples.push(sample);
        // Queues of a UDP flood drain before the next path starts.
        sleep_cancellable(pause, cancel)?;
        per_step = run_start.elapsed() / (i + 1) as u32;
    }

    drop(groups);
    bed.teardown()?;
    let path_names: Vec<String> = opts.paths.iter().map(|p| p.name().to_owned()).collect();
    let workload_names: Vec<String> = opts.workloads.iter().map(|w| w.name().to_owned()).collect();
    let summary = summarize(&path_names, &workload_names, &samples);
    let mut paths: Vec<PathInfo> = opts.paths.iter().map(|&p| PathInfo::new(p, true)).collect();
    paths.extend(
        NetPath::ALL
            .into_iter()
            .filter(|p| !opts.paths.contains(p))
            .map(|p| PathInfo::new(p, false)),
    );
    Ok(RunResult {
        schema: SCHEMA.to_owned(),
        schema_version: SCHEMA_VERSION,
        started_utc: facts::utc_stamps(started).0,
        finished_utc: facts::utc_stamps(facts::unix_now()).0,
        machine,
        settings: Settings {
            repeats: opts.repeats,
            seconds: opts.seconds,
            warmup: opts.warmup,
            hosts_per_path: opts.hosts_per_path,
            router_workers: opts.router_workers,
            quick: opts.quick,
        },
        paths,
        workloads: opts
            .workloads
            .iter()
            .map(|&w| WorkloadInfo::new(w))
            .collect(),
        samples,
        summary,
    })
}

/// Fails early, before anything is built, when the router lacks a flag a chosen path needs.
fn check_router_flags(opts: &RunOptions) -> Result<(), HarnessError> {
    let needed: Vec<(&NetPath, &str)> = opts
        .paths
        .iter()
        .flat_map(|p| {
            p.router_args()
                .iter()
                .filter(|a| a.starts_with("--"))
                .map(move |a| (p, *a))
        })
        .collect();
    if needed.is_empty() {
        return Ok(());
    }
    let out = Command::new(&opts.router_bin)
        .args(["launch", "--help"])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| HarnessError::Io {
            what: format!("running {} launch --help", opts.router_bin.display()),
            source,
        })?;
    let help = String::from_utf8_lossy(&out.stdout);
    for (path, flag) in needed {
        let known = help
            .split(|c: char| c.is_whitespace() || c == ',' || c == '=')
            .any(|w| w == flag);
        if !known {
            return Err(HarnessError::Config(format!(
                "path {} needs `weave-router launch {flag}`, which {} does not have; \
                 leave the path out with --paths",
                path.name(),
                opts.router_bin.display()
            )));
        }
    }
    Ok(())
}

/// Where a group's load client runs and its server listens.
enum Endpoints {
    /// Pods on host1 and host2 of the group.
    Pods {
        /// host1's pod.
        client: Pod,
        /// host2's pod.
        server: Pod,
    },
    /// host1 and host2 themselves.
    Hosts {
        /// host1.
        client: Host,
        /// host2.
        server: Host,
    },
}

impl Endpoints {
    fn client_command(&self, program: &std::path::Path) -> Command {
        match self {
            Endpoints::Pods { client, .. } => client.command(program),
            Endpoints::Hosts { client, .. } => client.command(program),
        }
    }

    fn server_command(&self, program: &std::path::Path) -> Command {
        match self {
            Endpoints::Pods { server, .. } => server.command(program),
            Endpoints::Hosts { server, .. } => server.command(program),
        }
    }

    fn server_addr(&self) -> Ipv4Addr {
        match self {
            Endpoints::Pods { server, .. } => server.addr(),
            Endpoints::Hosts { server, .. } => server.addr(),
        }
    }

    fn server_run(&self, program: &str, args: &[&str]) -> Result<String, TestbedError> {
        match self {
            Endpoints::Pods { server, .. } => server.run(program, args),
            Endpoints::Hosts { server, .. } => server.run(program, args),
        }
    }

    fn client_ping(&self, to: Ipv4Addr) -> Result<bool, TestbedError> {
        match self {
            Endpoints::Pods { client, .. } => client.ping(to),
            Endpoints::Hosts { client, .. } => client.ping(to),
        }
    }
}

/// The hosts, routers, pods and load server of one path. Fields drop in order: the server
/// before the pods it runs in, the pods before the routers whose bridge they hang on.
struct Group {
    path: NetPath,
    server: Process,
    endpoints: Endpoints,
    routers: Vec<(Host, Process)>,
}

impl Group {
    /// Builds group `g` (0-based) of `path` on hosts `g*H+1 ..= g*H+H`.
    fn build(
        bed: &Testbed,
        router: &Router,
        opts: &RunOptions,
        path: NetPath,
        g: usize,
        cancel: &AtomicBool,
    ) -> Result<Group, HarnessError> {
        let setup = |e: HarnessError| match e.is_cancelled() {
            true => e,
            false => HarnessError::Setup {
                path: path.name().to_owned(),
                detail: e.to_string(),
            },
        };
        let hosts: Vec<Host> = (1..=opts.hosts_per_path)
            .map(|i| bed.host(g * opts.hosts_per_path + i).cloned())
            .collect::<Result<_, _>>()?;
        let mut routers = Vec::new();
        let bridge = match path.kind() {
            PathKind::Kernel => {
                vxlan_overlay(&hosts).map_err(|e| setup(e.into()))?;
                Some("kbr")
            }
            PathKind::Underlay => None,
            PathKind::Router => {
                routers = start_routers(router, opts, path, &hosts, cancel).map_err(setup)?;
                Some("weave")
            }
        };
        let endpoints = match (bridge, path.pod_mtu()) {
            (Some(bridge), Some(mtu)) => {
                // Pod indexes are unique in the testbed; addresses only within the overlay.
                let pod = |host: &Host, n: usize| {
                    let addr = Ipv4Addr::new(10, 32, 0, n as u8);
                    bed.add_pod(host, g * 10 + n, bridge, addr, 12, mtu)
                };
                let client = pod(&hosts[0], 1).map_err(|e| setup(e.into()))?;
                let server = pod(&hosts[1], 2).map_err(|e| setup(e.into()))?;
                Endpoints::Pods { client, server }
            }
            (None, _) | (Some(_), None) => Endpoints::Hosts {
                client: hosts[0].clone(),
                server: hosts[1].clone(),
            },
        };
        let to = endpoints.server_addr();
        testbed::wait_until_cancellable(
            &format!("{}: a ping from host1 to {to}", path.name()),
            READY,
            cancel,
            || match endpoints.client_ping(to) {
                Ok(true) => Ok(()),
                Ok(false) => Err("no answer".to_owned()),
                Err(e) => Err(e.to_string()),
            },
        )
        .map_err(|e| setup(e.into()))?;
        let server = start_server(bed, opts, path, &endpoints, cancel).map_err(setup)?;
        Ok(Group {
            path,
            server,
            endpoints,
            routers,
        })
    }

    /// Takes one measurement. Only cancellation is an error; anything else that goes wrong
    /// is recorded in the sample.
    fn measure(
        &mut self,
        router: &Router,
        opts: &RunOptions,
        step: Step,
        index: usize,
        ticks_per_s: f64,
        cancel: &AtomicBool,
    ) -> Result<Sample, HarnessError> {
        let mut sample = Sample {
            index,
            repeat: step.repeat,
            path: step.path.name().to_owned(),
            workload: step.workload.name().to_owned(),
            window_s: 0.0,
            load: None,
            router: None,
            metrics: Default::default(),
            error: None,
        };
        match self.measure_inner(router, opts, step, ticks_per_s, cancel, &mut sample) {
            Ok(()) => Ok(sample),
            Err(Failure::Cancelled(what)) => Err(TestbedError::Cancelled { what }.into()),
            Err(Failure::Failed(why)) => {
                sample.error = Some(why);
                sample.metrics.clear();
                Ok(sample)
            }
        }
    }

    fn measure_inner(
        &mut self,
        router: &Router,
        opts: &RunOptions,
        step: Step,
        ticks_per_s: f64,
        cancel: &AtomicBool,
        sample: &mut Sample,
    ) -> Result<(), Failure> {
        if !self.server.is_running() {
            return Err(Failure::Failed(format!(
                "the load server is not running; log {}:\n{}",
                self.server.log_path().display(),
                self.server.log_tail(10)
            )));
        }
        let spec = step.workload.spec();
        let mut cmd = self.endpoints.client_command(&opts.load_bin);
        cmd.arg("load-client")
            .args(["--server", &self.endpoints.server_addr().to_string()])
            .args(["--port", &load::DEFAULT_PORT.to_string()])
            .args(["--workload", workload_arg(spec.workload)])
            .args(["--streams", &spec.streams.to_string()])
            .args(["--size", &spec.size.to_string()])
            .args(["--seconds", &opts.seconds.to_string()])
            .args(["--warmup", &opts.warmup.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|e| Failure::Failed(format!("starting the load client: {e}")))?;
        let mut client = ClientGuard(child);

        // Sample the routers over a window inside the client's counted time.
        let warm = Duration::from_secs_f64(opts.warmup) + CLIENT_START;
        let counted = Duration::from_secs_f64(opts.seconds);
        let has_routers = !self.routers.is_empty();
        if has_routers {
            wait_phase(&mut client, start + warm, cancel)?;
            for (_, p) in &self.routers {
                facts::reset_peak_rss(p.pid());
            }
            let t0 = Instant::now();
            let before = self.router_counters(router)?;
            wait_phase(&mut client, start + warm + counted - CLIENT_START, cancel)?;
            let t1 = Instant::now();
            let after = self.router_counters(router)?;
            sample.window_s = t1.duration_since(t0).as_secs_f64();
            sample.router = Some(router_delta(&before, &after, ticks_per_s));
        }

        // The client ends on its own after its counted time; give it slack to report.
        let deadline = start + warm + counted + CLIENT_SLACK;
        let status = loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(cancelled("the load client to finish"));
            }
            match client.0.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    return Err(Failure::Failed(format!(
                        "the load client did not finish within {:.0} s",
                        deadline.duration_since(start).as_secs_f64()
                    )));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(Failure::Failed(format!("waiting for the load client: {e}"))),
            }
        };
        let (stdout, stderr) = client.output();
        if !status.success() {
            return Err(Failure::Failed(format!(
                "the load client failed ({status}): {}",
                last_lines(&stderr, 5)
            )));
        }
        let line = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            Failure::Failed(format!("the load client printed no result ({e}): {line:?}"))
        })?;
        let load: LoadResult = serde_json::from_value(value.clone()).map_err(|e| {
            Failure::Failed(format!("the load client's result does not parse: {e}"))
        })?;
        if !has_routers {
            sample.window_s = load.seconds;
        }
        sample.metrics = derive_metrics(
            step.workload,
            &load,
            sample.router.as_ref(),
            sample.window_s,
            opts.seconds,
        );
        sample.load = Some(value);
        Ok(())
    }

    /// CPU, memory and data-plane counters of every router of the group.
    fn router_counters(&self, router: &Router) -> Result<Vec<Counters>, Failure> {
        let mut all = Vec::with_capacity(self.routers.len());
        for (host, process) in &self.routers {
            let proc = facts::read_proc(process.pid())
                .map_err(|e| Failure::Failed(format!("router on {}: {e}", host.name())))?;
            all.push((host, proc));
        }
        let mut counters = Vec::with_capacity(all.len());
        for (host, proc) in all {
            let report = router.report(host).map_err(|e| {
                Failure::Failed(format!("status of the router on {}: {e}", host.name()))
            })?;
            let dataplane = report.dataplane.map(|d| d.totals()).unwrap_or_default();
            counters.push(Counters { proc, dataplane });
        }
        Ok(counters)
    }
}

/// A load client killed if it is still running when dropped (cancellation, failure).
struct ClientGuard(Child);

impl ClientGuard {
    /// stdout and stderr of the exited client.
    fn output(&mut self) -> (String, String) {
        let mut out = String::new();
        let mut err = String::new();
        if let Some(s) = self.0.stdout.as_mut() {
            let _ = s.read_to_string(&mut out);
        }
        if let Some(s) = self.0.stderr.as_mut() {
            let _ = s.read_to_string(&mut err);
        }
        (out, err)
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// One router's figures at one moment.
#[derive(Debug)]
struct Counters {
    proc: ProcSample,
    dataplane: WorkerReport,
}

/// Why a measurement did not produce figures.
enum Failure {
    /// The run is being cancelled while waiting for this: stop everything.
    Cancelled(String),
    /// This measurement failed: record why and go on.
    Failed(String),
}

fn cancelled(what: &str) -> Failure {
    Failure::Cancelled(what.to_owned())
}

/// Sleeps until `until`, failing early when the client exits or the run is cancelled.
fn wait_phase(
    client: &mut ClientGuard,
    until: Instant,
    cancel: &AtomicBool,
) -> Result<(), Failure> {
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(cancelled("a measurement"));
        }
        let now = Instant::now();
        if now >= until {
            return Ok(());
        }
        if let Ok(Some(status)) = client.0.try_wait() {
            let (_, err) = client.output();
            return Err(Failure::Failed(format!(
                "the load client exited early ({status}): {}",
                last_lines(&err, 5)
            )));
        }
        std::thread::sleep((until - now).min(Duration::from_millis(20)));
    }
}

fn sleep_cancellable(d: Duration, cancel: &AtomicBool) -> Result<(), HarnessError> {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if cancel.load(Ordering::Relaxed) {
            return Err(TestbedError::Cancelled {
                what: "a pause between measurements".into(),
            }
            .into());
        }
        std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
    }
    Ok(())
}

/// The routers' figures over a window: CPU and datagram counters summed, memory maxed.
fn router_delta(before: &[Counters], after: &[Counters], ticks_per_s: f64) -> RouterSample {
    let mut s = RouterSample {
        processes: after.len(),
        ..RouterSample::default()
    };
    let mut ticks = 0u64;
    for (b, a) in before.iter().zip(after) {
        ticks += a.proc.cpu_ticks.saturating_sub(b.proc.cpu_ticks);
        s.peak_rss_kib = s.peak_rss_kib.max(a.proc.peak_rss_kib);
        let (bd, ad) = (&b.dataplane, &a.dataplane);
        s.tx_datagrams += ad.udp_tx_datagrams.saturating_sub(bd.udp_tx_datagrams);
        s.tx_calls += ad.udp_tx_calls.saturating_sub(bd.udp_tx_calls);
        s.rx_datagrams += ad.udp_rx_datagrams.saturating_sub(bd.udp_rx_datagrams);
        s.rx_calls += ad.udp_rx_calls.saturating_sub(bd.udp_rx_calls);
    }
    s.cpu_s = ticks as f64 / ticks_per_s;
    s
}

fn workload_arg(w: load::Workload) -> &'static str {
    match w {
        load::Workload::Tcp => "tcp",
        load::Workload::Udp => "udp",
        load::Workload::Rr => "rr",
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// The kernel VXLAN overlay on `hosts`: a bridge `kbr` with a `vx0` per host, flooding to
/// every other host of the group through all-zero fdb entries.
fn vxlan_overlay(hosts: &[Host]) -> Result<(), TestbedError> {
    for host in hosts {
        let local = host.addr().to_string();
        host.run(
            "ip",
            &["link", "add", "kbr", "type", "bridge", "stp_state", "0"],
        )?;
        host.run(
            "ip",
            &[
                "link", "add", "vx0", "type", "vxlan", "id", VNI, "dstport", "4789", "local",
                &local, "dev", "eth0",
            ],
        )?;
        for other in hosts.iter().filter(|o| o.index() != host.index()) {
            host.run(
                "bridge",
                &[
                    "fdb",
                    "append",
                    "00:00:00:00:00:00",
                    "dev",
                    "vx0",
                    "dst",
                    &other.addr().to_string(),
                ],
            )?;
        }
        host.run("ip", &["link", "set", "vx0", "master", "kbr", "up"])?;
        host.run("ip", &["link", "set", "kbr", "up"])?;
    }
    Ok(())
}

/// Starts a router on every host (each knows all hosts before it), waits until each has
/// a connection with a verified MTU to every other, carried by the path's overlay (the
/// sleeve, or the fast datapath). A fast-datapath router that stays on the sleeve fails the
/// path with its status (which says why) rather than being measured as the fast datapath.
fn start_routers(
    router: &Router,
    opts: &RunOptions,
    path: NetPath,
    hosts: &[Host],
    cancel: &AtomicBool,
) -> Result<Vec<(Host, Process)>, HarnessError> {
    let workers = opts.router_workers.map(|n| n.to_string());
    let mut extra: Vec<&str> = path.router_args().to_vec();
    if let Some(n) = &workers {
        extra.extend(["--workers", n]);
    }
    let mut routers: Vec<(Host, Process)> = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let peers: Vec<Ipv4Addr> = hosts[..i].iter().map(Host::addr).collect();
        let mut process = router.launch_with(host, &peers, &extra)?;
        router.wait_ready(host, &mut process, CONVERGE, cancel)?;
        routers.push((host.clone(), process));
    }
    let overlay = path
        .overlay()
        .ok_or_else(|| HarnessError::Config(format!("path {} runs no routers", path.name())))?;
    let others = hosts.len() - 1;
    for (host, process) in &mut routers {
        let what = format!(
            "{}: {others} connections established over {overlay} with an MTU",
            host.name()
        );
        process.wait_for(&what, CONVERGE, cancel, || {
            let text = router
                .status_text(host, Some("connections"))
                .map_err(|e| e.to_string())?;
            let ready = connections_over(&text, overlay);
            match ready >= others {
                true => Ok(()),
                false => Err(format!("{ready} of {others} over {overlay}:\n{text}")),
            }
        })?;
    }
    Ok(routers)
}

/// Lines of `weave-router status connections` that are established over `overlay` with an
/// MTU: `-> 192.168.1.2:6783     established fastdp aa:…(host2) mtu=1438`. The overlay is
/// the word right after the state, so a sleeve connection's `(not fastdp: …)` note does not
/// count as the fast datapath.
fn connections_over(status: &str, overlay: &str) -> usize {
    status
        .lines()
        .filter(|line| {
            let mut words = line.split_whitespace().skip_while(|w| *w != "established");
            words.next().is_some()
                && words.next() == Some(overlay)
                && line.split_whitespace().any(|w| w.starts_with("mtu="))
        })
        .count()
}

/// Starts the group's load server and waits until it listens.
fn start_server(
    bed: &Testbed,
    opts: &RunOptions,
    path: NetPath,
    endpoints: &Endpoints,
    cancel: &AtomicBool,
) -> Result<Process, HarnessError> {
    let mut cmd = endpoints.server_command(&opts.load_bin);
    cmd.arg("load-server")
        .args(["--port", &load::DEFAULT_PORT.to_string()]);
    let label = format!("load-server-{}", path.name());
    // Any host's spawn logs to the testbed's directory; the command itself enters the pod.
    let mut server = bed.host(1)?.spawn(&label, cmd)?;
    let port = format!(":{}", load::DEFAULT_PORT);
    server.wait_for(
        &format!("{label} to listen on {port}"),
        READY,
        cancel,
        || {
            let listening = endpoints
                .server_run("ss", &["-Hltn"])
                .map_err(|e| e.to_string())?;
            match listening
                .lines()
                .any(|l| l.split_whitespace().any(|w| w.ends_with(&port)))
            {
                true => Ok(()),
                false => Err(format!("not listening yet: {listening:?}")),
            }
        },
    )?;
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(ticks: u64, rss: u64, tx: (u64, u64), rx: (u64, u64)) -> Counters {
        Counters {
            proc: ProcSample {
                cpu_ticks: ticks,
                peak_rss_kib: rss,
            },
            dataplane: WorkerReport {
                udp_tx_datagrams: tx.0,
                udp_tx_calls: tx.1,
                udp_rx_datagrams: rx.0,
                udp_rx_calls: rx.1,
            },
        }
    }

    #[test]
    fn router_delta_sums_cpu_and_counters_and_maxes_memory() {
        let before = [
            counters(100, 5000, (10, 5), (0, 0)),
            counters(50, 9000, (0, 0), (7, 7)),
        ];
        let after = [
            counters(150, 6000, (110, 10), (0, 0)),
            counters(100, 8000, (0, 0), (207, 17)),
        ];

        let d = router_delta(&before, &after, 100.0);

        assert_eq!(d.processes, 2);
        assert!((d.cpu_s - 1.0).abs() < 1e-12);
        assert_eq!(d.peak_rss_kib, 8000);
        assert_eq!((d.tx_datagrams, d.tx_calls), (100, 5));
        assert_eq!((d.rx_datagrams, d.rx_calls), (200, 10));
    }

    fn options() -> RunOptions {
        RunOptions {
            paths: NetPath::default_set(),
            workloads: WorkloadName::ALL.to_vec(),
            repeats: 3,
            seconds: 5.0,
            warmup: 1.0,
            hosts_per_path: 3,
            subnet: 120,
            router_workers: None,
            quick: false,
            router_bin: PathBuf::from("/nonexistent"),
            load_bin: PathBuf::from("/nonexistent"),
            command_line: Vec::new(),
        }
    }

    #[test]
    fn options_are_checked() {
        assert!(options().validate().is_ok());
        assert!(options().paths.contains(&NetPath::Fastdp));
        type Change = fn(&mut RunOptions);
        let cases: [(&str, Change); 6] = [
            ("one path", |o| o.paths.clear()),
            ("--repeats", |o| o.repeats = 0),
            ("--seconds", |o| o.seconds = f64::NAN),
            ("--warmup", |o| o.warmup = -1.0),
            ("--hosts", |o| o.hosts_per_path = 1),
            ("/24", |o| o.hosts_per_path = 60),
        ];
        for (needle, change) in cases {
            let mut o = options();
            change(&mut o);
            let err = o.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn connections_count_only_over_the_paths_overlay() {
        let status = "\
-> 192.168.120.1:6783   established fastdp aa:00:00:00:00:01(host1) mtu=1438
<- 192.168.120.3:41234  established sleeve aa:00:00:00:00:03(host3) (not fastdp: no heartbeat yet) mtu=1438
-> 192.168.120.4:6783   established fastdp aa:00:00:00:00:04(host4)
-> 192.168.120.5:6783   pending     fastdp aa:00:00:00:00:05(host5) mtu=1438
-> 192.168.120.6:6783   retrying    connection refused
";

        assert_eq!(connections_over(status, "fastdp"), 1);
        assert_eq!(connections_over(status, "sleeve"), 1);
        assert_eq!(connections_over("", "sleeve"), 0);
    }

    #[test]
    fn last_lines_skips_blank_ones() {
        assert_eq!(last_lines("a\n\nb\nc\n", 2), "b | c");
        assert_eq!(last_lines("", 3), "");
    }
}
