//! weave-perf: runs weave-router on a network-namespace testbed.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
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
            res = &mut task => return res.context("demo thread panicked")?,
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("weave-perf: stopping, removing the testbed...");
        cancel.store(true, Ordering::Relaxed);
        task.await.context("demo thread panicked")?
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
        )
    })
}

/// Peers of each host in the chain: host1 none, host N the host before it.
fn chain_peers(bed: &Testbed, index: usize) -> anyhow::Result<Vec<std::net::Ipv4Addr>> {
    Ok(match index {
        1 => Vec::new(),
        n => vec![bed.host(n - 1)?.addr()],
    })
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
            "{} ({}): weave-router launch --name {} --nickname {} {}",
            host.name(),
            host.addr(),
            router::peer_name(host.index()),
            host.name(),
            shown.join(" ")
        );
        let mut process = router
            .launch(host, &peers)
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

    drop(routers);
    bed.set_keep_logs(false);
    bed.teardown().context("removing the testbed")?;
    say!("testbed removed");
    Ok(())
}
