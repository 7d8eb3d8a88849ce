//! The `weave-router` binary: the daemon (`launch`) and its client subcommands.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use weave_router::cli;
use weave_router::config::{Config, HostInfo, LaunchArgs};

/// Per-node router of a Weave-compatible overlay network.
#[derive(Debug, Parser)]
#[command(name = "weave-router", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the router.
    Launch(Box<LaunchArgs>),
    /// Show a running router's status.
    Status(cli::StatusArgs),
    /// Show a running router's traffic rates, drops, batching and peer round-trip times.
    ///
    /// Takes two samples of the router's /stats an interval apart and shows, per peer and
    /// per data-plane worker, bits and packets per second in and out, drops by reason,
    /// datagrams per send and per receive call, the overlay and MTU of each connection,
    /// the data-plane backend, and round-trip percentiles. Round-trip times are timed by
    /// the router once a second per connection, over the last 300 samples: a small path-MTU
    /// probe goes out over the sleeve and the peer answers it at once over TCP (Weave Net
    /// peers do too), since Weave's heartbeats go one way only.
    Stats(cli::StatsArgs),
    /// Print a running router's Prometheus metrics page.
    #[command(hide = true)]
    Metrics(cli::MetricsArgs),
    /// Ask a running router to connect to peers.
    Connect(cli::ConnectArgs),
    /// Ask a running router to stop keeping peers connected.
    Forget(cli::ForgetArgs),
    /// Take over the IP address space of peers that are gone for good.
    ///
    /// Run it on one live peer only, after the named peers have stopped for good: their
    /// addresses become this peer's to hand out. A peer that is still reachable is refused.
    Rmpeer(cli::RmpeerArgs),
    /// Remove what the router made on this host: the weave bridge, its TAP and the fast
    /// datapath's devices with their forwarding entries; nothing else.
    ///
    /// Run it with the router stopped, to take weave-router off a node: pods still
    /// attached lose their network (their veths are detached, not deleted).
    Reset(cli::reset::ResetArgs),
}

fn main() -> ExitCode {
    let args = Cli::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weave-router: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Cli) -> anyhow::Result<()> {
    match args.command {
        Cmd::Launch(launch) => {
            init_logging();
            let env: BTreeMap<String, String> = std::env::vars().collect();
            let config = Config::resolve(&launch, &env, &HostInfo::read())?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(weave_router::daemon::run(config))
        }
        Cmd::Status(status) => {
            let stdout = std::io::stdout();
            match cli::status(&status, &mut stdout.lock()) {
                Err(e) if e.is_broken_pipe() => Ok(()),
                other => Ok(other?),
            }
        }
        Cmd::Stats(stats) => {
            let stdout = std::io::stdout();
            match cli::stats::run(&stats, &mut stdout.lock()) {
                Err(e) if e.is_broken_pipe() => Ok(()),
                other => Ok(other?),
            }
        }
        Cmd::Metrics(metrics) => {
            let stdout = std::io::stdout();
            match cli::metrics(&metrics, &mut stdout.lock()) {
                Err(e) if e.is_broken_pipe() => Ok(()),
                other => Ok(other?),
            }
        }
        Cmd::Connect(connect) => Ok(cli::connect(&connect)?),
        Cmd::Forget(forget) => Ok(cli::forget(&forget)?),
        Cmd::Reset(reset) => {
            let stdout = std::io::stdout();
            match cli::reset::reset(&reset, &mut stdout.lock()) {
                Err(e) if e.is_broken_pipe() => Ok(()),
                other => Ok(other?),
            }
        }
        Cmd::Rmpeer(rmpeer) => {
            let stdout = std::io::stdout();
            match cli::rmpeer(&rmpeer, &mut stdout.lock()) {
                Err(e) if e.is_broken_pipe() => Ok(()),
                other => Ok(other?),
            }
        }
    }
}

/// Logs to stderr; RUST_LOG picks the level (info by default).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
