//! weave-perf: runs weave-router on a network-namespace testbed and measures it against the
//! kernel's own VXLAN.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use std::net::Ipv4Addr;
use weave_perf::harness::{
    self, compare, output, run::Event, HarnessError, NetPath, Placement, SearchOptions,
    WorkloadName,
};

use weave_perf::cni::{self, PodNetns};
use weave_perf::load;
use weave_perf::router::{self, Router, ROUTER_BIN_ENV};
use weave_perf::testbed::{self, Process, Testbed, TestbedConfig, TestbedError};

/// Testbed and measurements for weave-router.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start three routers in network namespaces as a chain (host3 knows only host2), wait
    /// until each sees all three peers, print their `status peers`, and clean up. Needs root.
    Demo(DemoArgs),
    /// Measure weave-router against the kernel's VXLAN and the bare underlay, side by side:
    /// TCP throughput, UDP packet rates (flood and loss-free), request/response latency
    /// (closed and open loop), machine and router CPU, memory. Writes run-<UTC time>.json,
    /// .md and .svg into the output folder. Needs root.
    Run(RunArgs),
    /// Show what changed between two runs' result files.
    Compare(CompareArgs),
    /// Write the Markdown report and SVG chart of a result file again, next to it.
    Report(ReportArgs),
    /// The harness's traffic receiver (run inside a pod namespace).
    #[command(hide = true)]
    LoadServer(load::ServerArgs),
    /// The harness's traffic sender: runs one workload, prints the result as one JSON line.
    #[command(hide = true)]
    LoadClient(load::ClientArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Paths to measure [default: all, vxlan (the baseline) first].
    #[arg(long, value_enum, value_delimiter = ',')]
    paths: Vec<NetPath>,
    /// Workloads to run [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    workloads: Vec<WorkloadName>,
    /// Measurements of each path and workload, interleaved [default: 3; 1 with --quick].
    #[arg(long, value_name = "N")]
    repeats: Option<usize>,
    /// Counted seconds per measurement [default: 5; 1 with --quick].
    #[arg(long, value_name = "S")]
    seconds: Option<f64>,
    /// Seconds of traffic before counting starts [default: 1; 0.2 with --quick].
    #[arg(long, value_name = "S")]
    warmup: Option<f64>,
    /// A smoke run: one repeat of one second per measurement, short warm-up, a short
    /// loss-free search.
    #[arg(long)]
    quick: bool,
    /// Where the hosts' routers run: `split` gives each its own CPUs (`weave-router launch
    /// --cpus`), as on separate nodes; `shared` lets every router use every CPU [default:
    /// split where the machine has 2 CPUs and the router has --cpus, else shared].
    #[arg(long, value_enum, value_name = "HOW")]
    placement: Option<Placement>,
    /// Trials of the loss-free UDP rate search per path, UDP workload and repeat; 0 turns
    /// the search off [default: 6; 4 with --quick].
    #[arg(long, value_name = "N")]
    search_trials: Option<usize>,
    /// Counted seconds per search trial, after a paced warm-up [default: 0.5, with 0.2 s of
    /// warm-up; 0.25 with 0.1 with --quick].
    #[arg(long, value_name = "S")]
    search_seconds: Option<f64>,
    /// Hosts per path, all routers meshed; traffic goes host1 → host2.
    #[arg(long, value_name = "N", default_value_t = 3)]
    hosts: usize,
    /// Data-plane workers per router [default: the router's, one per CPU].
    #[arg(long, value_name = "N")]
    router_workers: Option<usize>,
    /// Folder for the result files [default: perf/results of the workspace around the
    /// current directory, else ./perf/results].
    #[arg(long, value_name = "DIR")]
    output: Option<PathBuf>,
    /// The weave-router binary [default: next to this executable].
    #[arg(long, value_name = "PATH", env = ROUTER_BIN_ENV)]
    router_bin: Option<PathBuf>,
    /// Third octet of the underlay subnet 192.168.<N>.0/24.
    #[arg(long, value_name = "N", default_value_t = 120)]
    subnet: u8,
}

#[derive(Debug, clap::Args)]
struct ReportArgs {
    /// A result file written by `weave-perf run`.
    json: PathBuf,
}

#[derive(Debug, clap::Args)]
struct CompareArgs {
    /// The older run's JSON file.
    old: PathBuf,
    /// The newer run's JSON file.
    new: PathBuf,
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// The weave-router binary [default: next to this executable].
    #[arg(long, value_name = "PATH", env = ROUTER_BIN_ENV)]
    router_bin: Option<PathBuf>,
    /// Third octet of the underlay subnet 192.168.<N>.0/24.
    #[arg(long, value_name = "N", default_value_t = 100)]
    subnet: u8,
    /// Seconds to wait for the mesh to form before giving up.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Demo(args) => run_interruptible(move |cancel| demo(&args, &cancel)),
        Cmd::Run(args) => run_interruptible(move |cancel| run(&args, &cancel)),
        Cmd::Compare(args) => compare_runs(&args),
        Cmd::Report(args) => output::rerender(&args.json)
            .map_err(anyhow::Error::from)
            .and_then(|w| {
                writeln!(
                    std::io::stdout().lock(),
                    "wrote {}\nwrote {}",
                    w.markdown.display(),
                    w.svg.display()
                )
                .context("writing to stdout")
            }),
        Cmd::LoadServer(args) => {
            run_interruptible(move |cancel| load::serve(&args, &cancel).context("load server"))
        }
        Cmd::LoadClient(args) => load_client(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_cancelled(&e) => {
            let _ = writeln!(
                std::io::stderr(),
                "weave-perf: interrupted; testbed removed"
            );
            ExitCode::from(130)
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "weave-perf: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `work` on a blocking thread while this thread waits for Ctrl-C or SIGTERM; a signal
/// sets the cancel flag and then waits for `work` to return, so that its testbed is always
/// torn down by its own destructors rather than left behind by a dying process.
fn run_interruptible(
    work: impl FnOnce(Arc<AtomicBool>) -> anyhow::Result<()> + Send + 'static,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal runtime")?;
    rt.block_on(async {
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        let mut task = tokio::task::spawn_blocking(move || work(flag));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            res = &mut task => return res.context("the work thread panicked")?,
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = writeln!(std::io::stderr(), "weave-perf: stopping...");
        cancel.store(true, Ordering::Relaxed);
        task.await.context("the work thread panicked")?
    })
}

fn is_cancelled(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<TestbedError>(),
            Some(TestbedError::Cancelled { .. })
        ) || matches!(
            c.downcast_ref::<router::RouterError>(),
            Some(router::RouterError::Testbed(TestbedError::Cancelled { .. }))
        ) || c
            .downcast_ref::<HarnessError>()
            .is_some_and(HarnessError::is_cancelled)
    })
}

/// `weave-perf run`: measures, writes the three result files, prints where they are.
fn run(args: &RunArgs, cancel: &AtomicBool) -> anyhow::Result<()> {
    let router_bin = router::locate_router_bin(args.router_bin.as_deref())?;
    let load_bin = std::env::current_exe().context("finding this executable")?;
    let output_dir = match &args.output {
        Some(dir) => dir.clone(),
        None => {
            let cwd = std::env::current_dir().context("reading the current directory")?;
            output::default_output_dir(&cwd)
        }
    };
    let opts = harness::RunOptions {
        paths: dedup(if args.paths.is_empty() {
            NetPath::default_set()
        } else {
            args.paths.clone()
        }),
        workloads: dedup(if args.workloads.is_empty() {
            WorkloadName::ALL.to_vec()
        } else {
            args.workloads.clone()
        }),
        repeats: args.repeats.unwrap_or(if args.quick { 1 } else { 3 }),
        seconds: args.seconds.unwrap_or(if args.quick { 1.0 } else { 5.0 }),
        warmup: args.warmup.unwrap_or(if args.quick { 0.2 } else { 1.0 }),
        hosts_per_path: args.hosts,
        subnet: args.subnet,
        router_workers: args.router_workers,
        placement: args.placement,
        search: SearchOptions {
            trials: args.search_trials.unwrap_or(if args.quick { 4 } else { 6 }),
            seconds: args
                .search_seconds
                .unwrap_or(if args.quick { 0.25 } else { 0.5 }),
            warmup: if args.quick { 0.1 } else { 0.2 },
        },
        quick: args.quick,
        router_bin,
        load_bin,
        command_line: std::env::args().collect(),
    };
    opts.validate()?;
    let started = harness::facts::unix_now();
    let mut err = std::io::stderr();
    let mut progress = |event: Event<'_>| {
        // Progress is best effort: a closed stderr must not stop the run.
        let _ = match event {
            Event::Note(text) => writeln!(err, "weave-perf: {text}"),
            Event::Start {
                index,
                total,
                repeats,
                step,
                eta,
            } => write!(
                err,
                "[{index}/{total}] repeat {}/{repeats}  {:<15}  {:<7}  ETA {:>6}  ... ",
                step.repeat,
                step.path.name(),
                step.workload.name(),
                harness::format_eta(eta)
            )
            .and_then(|()| err.flush()),
            Event::Done(sample) => writeln!(err, "{}", harness::sample_headline(sample)),
        };
    };
    let result = harness::run::run(&opts, cancel, &mut progress)?;
    let stamp = harness::facts::utc_stamps(started).1;
    let written = output::write_run(&output_dir, &stamp, &result)
        .with_context(|| format!("writing the results into {}", output_dir.display()))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", harness::markdown::render_markdown(&result))
        .context("writing to stdout")?;
    for path in [&written.json, &written.markdown, &written.svg] {
        writeln!(out, "wrote {}", path.display()).context("writing to stdout")?;
    }
    let failed = result.failures().count();
    if failed > 0 {
        bail!(
            "{failed} of {} measurements failed (see the report)",
            result.samples.len()
        );
    }
    Ok(())
}

/// The order given, each element once.
fn dedup<T: PartialEq + Copy>(items: Vec<T>) -> Vec<T> {
    let mut seen = Vec::with_capacity(items.len());
    for i in items {
        if !seen.contains(&i) {
            seen.push(i);
        }
    }
    seen
}

/// `weave-perf compare OLD NEW`.
fn compare_runs(args: &CompareArgs) -> anyhow::Result<()> {
    let old = output::read_run(&args.old)?;
    let new = output::read_run(&args.new)?;
    let changes = compare::compare(&old, &new);
    let text = compare::render_compare(&old, &new, &show(&args.old), &show(&args.new), &changes);
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("writing to stdout")?;
    Ok(())
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

/// `weave-perf load-client`: one workload, its result as one JSON line on stdout.
fn load_client(args: &load::ClientArgs) -> anyhow::Result<()> {
    let result = load::client(args).with_context(|| {
        format!(
            "load client ({:?} to {}:{})",
            args.workload, args.server, args.port
        )
    })?;
    let line = serde_json::to_string(&result).context("encoding the result")?;
    writeln!(std::io::stdout().lock(), "{line}").context("writing to stdout")?;
    Ok(())
}

/// Peers of each host in the chain: host1 none, host N the host before it.
fn chain_peers(bed: &Testbed, index: usize) -> anyhow::Result<Vec<std::net::Ipv4Addr>> {
    Ok(match index {
        1 => Vec::new(),
        n => vec![bed.host(n - 1)?.addr()],
    })
}

/// Gbit/s of one 3-second TCP stream from pod `from` to pod `to` (address `to_ip`).
fn pod_throughput(from: &PodNetns, to: &PodNetns, to_ip: Ipv4Addr) -> anyhow::Result<f64> {
    let mut server = std::process::Command::new("ip")
        .args(["netns", "exec", &to.name, "iperf3", "-s", "-1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting iperf3 -s")?;
    let mut last = String::new();
    for _ in 0..20 {
        let out = from
            .exec("iperf3", &["-c", &to_ip.to_string(), "-t", "3", "-J"])
            .context("running iperf3 -c")?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bps) = json["end"]["sum_received"]["bits_per_second"].as_f64() {
            let _ = server.wait();
            return Ok(bps / 1e9);
        }
        last = json["error"].as_str().unwrap_or("no result").to_owned();
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = server.kill();
    let _ = server.wait();
    bail!("iperf3: {last}")
}

fn demo(args: &DemoArgs, cancel: &AtomicBool) -> anyhow::Result<()> {
    // Output goes through `say!`, which fails instead of panicking on a closed stdout
    // (`weave-perf demo | head`), so the testbed is still removed by its destructor.
    let mut out = std::io::stdout().lock();
    macro_rules! say {
        ($($arg:tt)*) => {
            writeln!(out, $($arg)*).context("writing to stdout")?
        };
    }
    const HOSTS: usize = 3;
    if !testbed::is_root() {
        bail!("the demo creates network namespaces: run it as root");
    }
    let router = Router::new(router::locate_router_bin(args.router_bin.as_deref())?);
    let timeout = Duration::from_secs(args.timeout);
    say!("weave-router: {}", router.bin().display());

    let mut bed = Testbed::new(&TestbedConfig::new("wdem", HOSTS).with_subnet(args.subnet))
        .context("building the testbed")?;
    // Until the demo succeeds, the routers' logs are what explains a failure.
    bed.set_keep_logs(true);
    say!(
        "testbed {}: {HOSTS} hosts on 192.168.{}.0/24",
        bed.run_id(),
        args.subnet
    );

    let start = Instant::now();
    let mut routers: Vec<Process> = Vec::new();
    for host in bed.hosts() {
        let peers = chain_peers(&bed, host.index())?;
        let shown: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
        say!(
            "{} ({}): weave-router launch --name {} --nickname {} --ipalloc-init consensus={HOSTS} {}",
            host.name(),
            host.addr(),
            router::peer_name(host.index()),
            host.name(),
            shown.join(" ")
        );
        let consensus = format!("consensus={HOSTS}");
        let mut process = router
            .launch_with(host, &peers, &["--ipalloc-init", &consensus])
            .with_context(|| format!("launching the router on {}", host.name()))?;
        router
            .wait_ready(host, &mut process, timeout, cancel)
            .with_context(|| format!("router on {}", host.name()))?;
        routers.push(process);
    }

    for (host, process) in bed.hosts().iter().zip(routers.iter_mut()) {
        let what = format!("{} to see {HOSTS} peers", host.name());
        process.wait_for(&what, timeout, cancel, || {
            let report = router.report(host).map_err(|e| e.to_string())?;
            match report.peer_count() {
                HOSTS => Ok(()),
                n => Err(format!("{n} peers")),
            }
        })?;
    }
    say!(
        "mesh formed: every router sees {HOSTS} peers after {:.1} s",
        start.elapsed().as_secs_f64()
    );

    // Peers gossip a connection as established a little after they see it so themselves;
    // waiting for that makes the three printouts agree. Not reaching it is worth a note,
    // not a failure: the mesh itself has formed.
    for (host, process) in bed.hosts().iter().zip(routers.iter_mut()) {
        let what = format!("{} to see every connection established", host.name());
        let settled = process.wait_for(&what, timeout, cancel, || {
            let report = router.report(host).map_err(|e| e.to_string())?;
            match report.established_links() {
                n if n == HOSTS * (HOSTS - 1) => Ok(()),
                n => Err(format!("{n} established")),
            }
        });
        match settled {
            Ok(()) => {}
            Err(e @ TestbedError::Cancelled { .. }) => return Err(e.into()),
            Err(e) => say!("note: {e}"),
        }
    }
    say!(
        "all connections established after {:.1} s\n",
        start.elapsed().as_secs_f64()
    );

    for host in bed.hosts() {
        let text = router
            .status_text(host, Some("peers"))
            .with_context(|| format!("status peers on {}", host.name()))?;
        say!(
            "===== {} ({}): weave-router status peers",
            host.name(),
            host.addr()
        );
        say!("{}", text.trim_end());
        say!();
    }

    // Pods: two per host, attached by weave-cni exactly as a container runtime calls it
    // (CNI_* variables, the minimal configuration on stdin). The first ADD starts the
    // consensus that divides the address range among the three routers.
    let cni_bin = cni::locate_cni_bin(router.bin()).map_err(anyhow::Error::msg)?;
    say!("weave-cni: {}", cni_bin.display());
    let mut pods: Vec<(PodNetns, String, Ipv4Addr)> = Vec::new();
    for host in bed.hosts() {
        for i in 1..=2 {
            let pod = PodNetns::new(&format!("{}-{}-pod{i}", bed.run_id(), host.name()))
                .map_err(anyhow::Error::msg)?;
            let (ip, _) = cni::add(&cni_bin, host, &pod).map_err(anyhow::Error::msg)?;
            say!("{}: weave-cni ADD {} -> {ip}", host.name(), pod.id);
            if pods.iter().any(|(_, _, other)| *other == ip) {
                bail!("{ip} was handed out twice");
            }
            pods.push((pod, host.name(), ip));
        }
    }
    for (a, host, _) in &pods {
        for (_, _, to) in &pods {
            if a.ping(*to) {
                continue;
            }
            testbed::wait_until(&format!("{} ({host}) to reach {to}", a.id), timeout, || {
                if a.ping(*to) {
                    Ok(())
                } else {
                    Err("no reply")
                }
            })?;
        }
    }
    say!(
        "every pod reaches every other pod ({} pairs, across the sleeve)",
        pods.len() * (pods.len() - 1)
    );
    let (first, last) = (&pods[0], &pods[pods.len() - 1]);
    match pod_throughput(&first.0, &last.0, last.2) {
        Ok(gbps) => say!(
            "{} ({}) -> {} ({}): {gbps:.2} Gbit/s, one TCP stream for 3 s (iperf3)",
            first.2,
            first.1,
            last.2,
            last.1
        ),
        Err(e) => say!("note: no throughput figure: {e}"),
    }
    say!();
    for host in bed.hosts() {
        let text = router
            .status_text(host, Some("ipam"))
            .with_context(|| format!("status ipam on {}", host.name()))?;
        say!(
            "===== {} ({}): weave-router status ipam",
            host.name(),
            host.addr()
        );
        say!("{}", text.trim_end());
        say!();
    }

    for (pod, host, ip) in &pods {
        let host = bed
            .hosts()
            .iter()
            .find(|h| h.name() == *host)
            .context("pod's host")?;
        let del = cni::invoke(&cni_bin, host, "DEL", Some(pod), None, cni::MINIMAL_CONF)
            .context("weave-cni DEL")?;
        if del.code != 0 {
            bail!(
                "weave-cni DEL {} ({ip}): {} {}",
                pod.id,
                del.json,
                del.stderr
            );
        }
    }
    say!("weave-cni DEL of every pod: addresses returned");
    drop(pods);
    drop(routers);
    bed.set_keep_logs(false);
    bed.teardown().context("removing the testbed")?;
    say!("testbed removed");
    Ok(())
}
