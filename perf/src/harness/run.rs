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

use super::facts::{self, CpuTicks, ProcSample};
use super::model::{schedule, Metric, NetPath, PathKind, Step, WorkloadName, WorkloadSpec};
use super::placement::{self, Placement, PlacementRecord};
use super::result::{
    derive_metrics, summarize, MachineSample, PathInfo, RouterSample, RunResult, Sample,
    SearchSettings, Settings, WorkloadInfo, SCHEMA, SCHEMA_VERSION,
};
use super::search::{RateSearch, SearchRecord, Trial, MAX_LOSS_PERCENT};
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
/// The pause before each trial of a loss-free search, for queues to drain.
const TRIAL_PAUSE: Duration = Duration::from_millis(100);

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
    /// Where the routers run (`None`: split where the machine and the router allow it,
    /// else shared).
    pub placement: Option<Placement>,
    /// The loss-free rate search after each UDP flood.
    pub search: SearchOptions,
    /// Whether this is a `--quick` run (recorded, and shortens the pauses).
    pub quick: bool,
    /// The weave-router binary.
    pub router_bin: PathBuf,
    /// The binary that has the `load-server` and `load-client` subcommands (weave-perf).
    pub load_bin: PathBuf,
    /// The command line, for the record.
    pub command_line: Vec<String>,
}

/// How the loss-free rate of a UDP workload is searched.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchOptions {
    /// The most trials per path, UDP workload and repeat (0: no search).
    pub trials: usize,
    /// Counted seconds per trial.
    pub seconds: f64,
    /// Paced seconds before counting starts.
    pub warmup: f64,
}

impl SearchOptions {
    /// The most trials a search may be given: past that the run gets long for little.
    pub const MAX_TRIALS: usize = 20;
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
        let search = &self.search;
        if search.trials > SearchOptions::MAX_TRIALS {
            return bad(format!(
                "--search-trials {} is above {}",
                search.trials,
                SearchOptions::MAX_TRIALS
            ));
        }
        if !(search.seconds.is_finite() && search.seconds >= 0.1 && search.seconds <= 60.0) {
            return bad(format!(
                "--search-seconds {} is not in 0.1..=60",
                search.seconds
            ));
        }
        if !(search.warmup.is_finite() && (0.0..=10.0).contains(&search.warmup)) {
            return bad(format!(
                "the search's warm-up {} is not in 0..=10",
                search.warmup
            ));
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
    let placement = place_routers(opts)?;
    if let Some(note) = placement.as_ref().and_then(|p| p.note.as_ref()) {
        progress(Event::Note(format!("CPU placement: {note}")));
    }
    let started = facts::unix_now();
    let mut machine = facts::machine_facts(&opts.router_bin, opts.command_line.clone());
    let ticks_per_s = facts::clock_ticks_per_second() as f64;
    machine.background_busy_cpus = Some(background_cpus(opts, ticks_per_s, cancel)?);
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
        let group = Group::build(&bed, &router, opts, placement.as_ref(), path, g, cancel)?;
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
            placement,
            search: (opts.search.trials > 0).then_some(SearchSettings {
                trials: opts.search.trials,
                seconds: opts.search.seconds,
                warmup: opts.search.warmup,
                max_loss_percent: MAX_LOSS_PERCENT,
            }),
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

/// Checks the router's flags against the paths and plans where the routers run; `None` when
/// no router path is measured. Fails early, before anything is built, when the router lacks
/// a flag a chosen path or placement needs.
fn place_routers(opts: &RunOptions) -> Result<Option<PlacementRecord>, HarnessError> {
    let router_paths: Vec<NetPath> = opts
        .paths
        .iter()
        .copied()
        .filter(|p| p.kind() == PathKind::Router)
        .collect();
    if router_paths.is_empty() {
        return Ok(None);
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
    let has = |flag: &str| {
        help.split(|c: char| c.is_whitespace() || c == ',' || c == '=')
            .any(|w| w == flag)
    };
    for path in router_paths {
        let missing = path
            .router_args()
            .iter()
            .find(|a| a.starts_with("--") && !has(a));
        if let Some(flag) = missing {
            return Err(HarnessError::Config(format!(
                "path {} needs `weave-router launch {flag}`, which {} does not have; \
                 leave the path out with --paths",
                path.name(),
                opts.router_bin.display()
            )));
        }
    }
    placement::plan(
        opts.placement,
        &facts::allowed_cpus(),
        opts.hosts_per_path,
        has("--cpus"),
    )
    .map(Some)
    .map_err(HarnessError::Config)
}

/// How many CPUs the machine keeps busy before the testbed exists (other work that machine
/// CPU figures will include): busy CPU seconds per second over a short sample.
fn background_cpus(
    opts: &RunOptions,
    ticks_per_s: f64,
    cancel: &AtomicBool,
) -> Result<f64, HarnessError> {
    let span = match opts.quick {
        true => Duration::from_millis(500),
        false => Duration::from_secs(1),
    };
    let read = || {
        facts::read_machine_cpu().map_err(|e| HarnessError::Io {
            what: "reading the machine's CPU time".into(),
            source: std::io::Error::other(e),
        })
    };
    let before = read()?;
    let t0 = Instant::now();
    sleep_cancellable(span, cancel)?;
    let after = read()?;
    let busy = machine_delta(before, after, ticks_per_s).busy_s;
    Ok(busy / t0.elapsed().as_secs_f64())
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
        placement: Option<&PlacementRecord>,
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
                routers =
                    start_routers(router, opts, placement, path, &hosts, cancel).map_err(setup)?;
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

    /// Takes one measurement (with the loss-free search after a UDP flood). Only
    /// cancellation is an error; anything else that goes wrong is recorded in the sample.
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
            machine: None,
            search: None,
            metrics: Default::default(),
            error: None,
        };
        match self.measure_inner(router, opts, step, ticks_per_s, cancel, &mut sample) {
            Ok(()) => {}
            Err(Failure::Cancelled(what)) => return Err(TestbedError::Cancelled { what }.into()),
            Err(Failure::Failed(why)) => {
                sample.error = Some(why);
                sample.metrics.clear();
                return Ok(sample);
            }
        }
        let metric = |m: Metric| sample.metrics.get(m.key()).copied().flatten();
        let flood = metric(Metric::OfferedPacketsPerSecond)
            .zip(metric(Metric::UdpLossPercent))
            .map(|(offered, loss)| Trial::flood(offered, loss));
        if let (true, Some(flood)) = (step.workload.is_udp() && opts.search.trials > 0, flood) {
            let record = self.search(opts, step.workload, flood, cancel)?;
            sample.metrics.insert(
                Metric::LossFreePacketsPerSecond.key().to_owned(),
                record.loss_free_pps,
            );
            sample.search = Some(record);
        }
        Ok(sample)
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
        if let Some(why) = self.router_exited() {
            return Err(Failure::Failed(why));
        }
        let spec = step.workload.spec();
        let (mut client, start) = self.start_client(opts, spec, opts.seconds, opts.warmup)?;

        // Sample the machine (and the routers) over a window inside the client's counted
        // time. The routers' status requests, which start processes, run outside it.
        let warm = Duration::from_secs_f64(opts.warmup) + CLIENT_START;
        let counted = Duration::from_secs_f64(opts.seconds);
        wait_phase(&mut client, start + warm, cancel)?;
        for (_, p) in &self.routers {
            facts::reset_peak_rss(p.pid());
        }
        let reports_before = self.router_reports(router)?;
        let t0 = Instant::now();
        let machine_before = facts::read_machine_cpu().map_err(Failure::Failed)?;
        let procs_before = self.router_procs()?;
        wait_phase(&mut client, start + warm + counted - CLIENT_START, cancel)?;
        let t1 = Instant::now();
        let machine_after = facts::read_machine_cpu().map_err(Failure::Failed)?;
        let procs_after = self.router_procs()?;
        let reports_after = self.router_reports(router)?;
        sample.window_s = t1.duration_since(t0).as_secs_f64();
        sample.machine = Some(machine_delta(machine_before, machine_after, ticks_per_s));
        if !self.routers.is_empty() {
            sample.router = Some(router_delta(
                &procs_before,
                &procs_after,
                &reports_before,
                &reports_after,
                ticks_per_s,
            ));
        }

        let (load, value) = finish_client(client, start, warm + counted, cancel)?;
        sample.metrics = derive_metrics(
            step.workload,
            &load,
            sample.router.as_ref(),
            sample.machine.as_ref(),
            sample.window_s,
            opts.seconds,
        );
        sample.load = Some(value);
        Ok(())
    }

    /// Searches the highest rate of `workload` this path carries with less than
    /// [`MAX_LOSS_PERCENT`] loss: the `flood` just measured, or else the best of at most
    /// `opts.search.trials` paced trials below its offered rate. A trial that fails ends the
    /// search, with its reason in the record; only cancellation is an error.
    fn search(
        &mut self,
        opts: &RunOptions,
        workload: WorkloadName,
        flood: Trial,
        cancel: &AtomicBool,
    ) -> Result<SearchRecord, HarnessError> {
        let mut search = RateSearch::after_flood(flood, opts.search.trials);
        while let Some(rate) = search.poll_rate() {
            // What the last trial (or the flood) left queued drains first.
            sleep_cancellable(TRIAL_PAUSE, cancel)?;
            match self.trial(opts, workload, rate, cancel) {
                Ok(trial) => search.handle_trial(trial),
                Err(Failure::Cancelled(what)) => {
                    return Err(TestbedError::Cancelled { what }.into())
                }
                Err(Failure::Failed(why)) => {
                    let why = format!("trial at {rate:.0} packets/s: {why}");
                    return Ok(search.finish(Some(why)));
                }
            }
        }
        Ok(search.finish(None))
    }

    /// One trial of the search: `workload` paced at `rate` packets/s.
    fn trial(
        &mut self,
        opts: &RunOptions,
        workload: WorkloadName,
        rate: f64,
        cancel: &AtomicBool,
    ) -> Result<Trial, Failure> {
        let spec = WorkloadSpec {
            rate: Some(rate),
            ..workload.spec()
        };
        let search = &opts.search;
        let (client, start) = self.start_client(opts, spec, search.seconds, search.warmup)?;
        let until = Duration::from_secs_f64(search.warmup + search.seconds);
        let (load, _) = finish_client(client, start, until, cancel)?;
        Ok(Trial::from_counts(
            rate,
            load.packets_sent,
            load.packets_received,
            search.seconds,
        ))
    }

    /// Starts the load client of one measurement or trial in the group's sending pod.
    fn start_client(
        &mut self,
        opts: &RunOptions,
        spec: WorkloadSpec,
        seconds: f64,
        warmup: f64,
    ) -> Result<(ClientGuard, Instant), Failure> {
        if !self.server.is_running() {
            return Err(Failure::Failed(format!(
                "the load server is not running; log {}:\n{}",
                self.server.log_path().display(),
                self.server.log_tail(10)
            )));
        }
        let mut cmd = self.endpoints.client_command(&opts.load_bin);
        cmd.arg("load-client")
            .args(["--server", &self.endpoints.server_addr().to_string()])
            .args(["--port", &load::DEFAULT_PORT.to_string()])
            .args(["--workload", workload_arg(spec.workload)])
            .args(["--streams", &spec.streams.to_string()])
            .args(["--size", &spec.size.to_string()])
            .args(["--seconds", &seconds.to_string()])
            .args(["--warmup", &warmup.to_string()]);
        if let Some(rate) = spec.rate {
            cmd.args(["--rate", &rate.to_string()]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|e| Failure::Failed(format!("starting the load client: {e}")))?;
        Ok((ClientGuard(child), start))
    }

    /// The data-plane counters of every router of the group (read through `status`).
    fn router_reports(&mut self, router: &Router) -> Result<Vec<WorkerReport>, Failure> {
        let mut reports = Vec::with_capacity(self.routers.len());
        for i in 0..self.routers.len() {
            let host = &self.routers[i].0;
            match router.report(host) {
                Ok(report) => {
                    reports.push(report.dataplane.map(|d| d.totals()).unwrap_or_default())
                }
                Err(e) => {
                    let why = format!("status of the router on {}: {e}", host.name());
                    return Err(Failure::Failed(self.router_exited().unwrap_or(why)));
                }
            }
        }
        Ok(reports)
    }

    /// What ended the first router of the group that is no longer running, with the end of
    /// its log; `None` while all run.
    fn router_exited(&mut self) -> Option<String> {
        self.routers.iter_mut().find_map(|(host, process)| {
            (!process.is_running()).then(|| {
                format!(
                    "the router on {} exited; log {}:\n{}",
                    host.name(),
                    process.log_path().display(),
                    process.log_tail(15)
                )
            })
        })
    }

    /// CPU time and memory of every router process of the group (read from /proc).
    fn router_procs(&self) -> Result<Vec<ProcSample>, Failure> {
        self.routers
            .iter()
            .map(|(host, process)| {
                facts::read_proc(process.pid())
                    .map_err(|e| Failure::Failed(format!("router on {}: {e}", host.name())))
            })
            .collect()
    }
}

/// Waits for a client started at `start` to exit (it ends on its own `until` after it
/// started, given [`CLIENT_SLACK`] to report) and reads its result: the parsed one and the
/// JSON it printed.
fn finish_client(
    mut client: ClientGuard,
    start: Instant,
    until: Duration,
    cancel: &AtomicBool,
) -> Result<(LoadResult, serde_json::Value), Failure> {
    let deadline = start + until + CLIENT_SLACK;
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
    let load: LoadResult = serde_json::from_value(value.clone())
        .map_err(|e| Failure::Failed(format!("the load client's result does not parse: {e}")))?;
    Ok((load, value))
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
fn router_delta(
    procs_before: &[ProcSample],
    procs_after: &[ProcSample],
    reports_before: &[WorkerReport],
    reports_after: &[WorkerReport],
    ticks_per_s: f64,
) -> RouterSample {
    let mut s = RouterSample {
        processes: procs_after.len(),
        ..RouterSample::default()
    };
    let mut ticks = 0u64;
    for (b, a) in procs_before.iter().zip(procs_after) {
        ticks += a.cpu_ticks.saturating_sub(b.cpu_ticks);
        s.peak_rss_kib = s.peak_rss_kib.max(a.peak_rss_kib);
    }
    for (b, a) in reports_before.iter().zip(reports_after) {
        s.tx_datagrams += a.udp_tx_datagrams.saturating_sub(b.udp_tx_datagrams);
        s.tx_calls += a.udp_tx_calls.saturating_sub(b.udp_tx_calls);
        s.rx_datagrams += a.udp_rx_datagrams.saturating_sub(b.udp_rx_datagrams);
        s.rx_calls += a.udp_rx_calls.saturating_sub(b.udp_rx_calls);
    }
    s.cpu_s = ticks as f64 / ticks_per_s;
    s
}

/// The machine's busy and total CPU seconds between two reads of /proc/stat.
fn machine_delta(before: CpuTicks, after: CpuTicks, ticks_per_s: f64) -> MachineSample {
    MachineSample {
        busy_s: after.busy.saturating_sub(before.busy) as f64 / ticks_per_s,
        total_s: after.total.saturating_sub(before.total) as f64 / ticks_per_s,
    }
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
/// every other host of the group through all-zero fdb entries (UDP 4789). Tests use it as
/// the kernel reference on their own testbeds.
pub fn vxlan_overlay(hosts: &[Host]) -> Result<(), TestbedError> {
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

/// Starts a router on every host (each knows all hosts before it, each on the CPUs
/// `placement` gives its host), waits until each has
/// a connection with a verified MTU to every other, carried by the path's overlay (the
/// sleeve, or the fast datapath). A fast-datapath router that stays on the sleeve fails the
/// path with its status (which says why) rather than being measured as the fast datapath.
fn start_routers(
    router: &Router,
    opts: &RunOptions,
    placement: Option<&PlacementRecord>,
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
        let cpus = placement.map_or_else(Vec::new, |p| p.router_args(i + 1));
        let mut args = extra.clone();
        args.extend(cpus.iter().map(String::as_str));
        let mut process = router.launch_with(host, &peers, &args)?;
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
/// the word right after the state (and after `encrypted` or `unencrypted` with a password),
/// so a sleeve connection's `(not fastdp: …)` note does not count as the fast datapath.
fn connections_over(status: &str, overlay: &str) -> usize {
    status
        .lines()
        .filter(|line| {
            let mut words = line
                .split_whitespace()
                .skip_while(|w| *w != "established")
                .skip(1)
                .skip_while(|w| *w == "encrypted" || *w == "unencrypted");
            words.next() == Some(overlay) && line.split_whitespace().any(|w| w.contains("mtu="))
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

    fn proc(ticks: u64, rss: u64) -> ProcSample {
        ProcSample {
            cpu_ticks: ticks,
            peak_rss_kib: rss,
        }
    }

    fn report(tx: (u64, u64), rx: (u64, u64)) -> WorkerReport {
        WorkerReport {
            udp_tx_datagrams: tx.0,
            udp_tx_calls: tx.1,
            udp_rx_datagrams: rx.0,
            udp_rx_calls: rx.1,
        }
    }

    #[test]
    fn router_delta_sums_cpu_and_counters_and_maxes_memory() {
        let procs_before = [proc(100, 5000), proc(50, 9000)];
        let procs_after = [proc(150, 6000), proc(100, 8000)];
        let reports_before = [report((10, 5), (0, 0)), report((0, 0), (7, 7))];
        let reports_after = [report((110, 10), (0, 0)), report((0, 0), (207, 17))];

        let d = router_delta(
            &procs_before,
            &procs_after,
            &reports_before,
            &reports_after,
            100.0,
        );

        assert_eq!(d.processes, 2);
        assert!((d.cpu_s - 1.0).abs() < 1e-12);
        assert_eq!(d.peak_rss_kib, 8000);
        assert_eq!((d.tx_datagrams, d.tx_calls), (100, 5));
        assert_eq!((d.rx_datagrams, d.rx_calls), (200, 10));
    }

    #[test]
    fn machine_delta_is_in_cpu_seconds() {
        let before = CpuTicks {
            busy: 1000,
            total: 5000,
        };
        let after = CpuTicks {
            busy: 1150,
            total: 5200,
        };

        let m = machine_delta(before, after, 100.0);

        assert_eq!((m.busy_s, m.total_s), (1.5, 2.0));
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
            placement: None,
            search: SearchOptions {
                trials: 6,
                seconds: 0.5,
                warmup: 0.2,
            },
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
        let cases: [(&str, Change); 9] = [
            ("one path", |o| o.paths.clear()),
            ("--search-trials", |o| o.search.trials = 21),
            ("--search-seconds", |o| o.search.seconds = 0.0),
            ("warm-up", |o| o.search.warmup = f64::NAN),
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
-> 192.168.120.7:6783   established encrypted   sleeve aa:00:00:00:00:07(host7) encrypted=truemtu=1414
-> 192.168.120.8:6783   established unencrypted sleeve aa:00:00:00:00:08(host8) mtu=1414
";

        assert_eq!(connections_over(status, "fastdp"), 1);
        assert_eq!(connections_over(status, "sleeve"), 3);
        assert_eq!(connections_over("", "sleeve"), 0);
    }

    #[test]
    fn last_lines_skips_blank_ones() {
        assert_eq!(last_lines("a\n\nb\nc\n", 2), "b | c");
        assert_eq!(last_lines("", 3), "");
    }
}
