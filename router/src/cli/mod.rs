//! Client subcommands: `status`, `stats`, `metrics`, `connect`, `forget`, `rmpeer`. They talk to a
//! running router's HTTP API with a tiny blocking client (no async runtime needed for one
//! request).

pub mod http;
pub mod reset;
pub mod stats;

use std::io::Write;
use std::net::SocketAddr;

use crate::api::form;
use crate::config::{DEFAULT_HTTP_ADDR, DEFAULT_METRICS_ADDR};
pub use http::ClientError;
pub use stats::StatsArgs;

/// Which status page to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusPage {
    /// Peers and the connections each gossips.
    Peers,
    /// Our connections and attempts.
    Connections,
    /// Addresses we are asked to keep connected.
    Targets,
    /// Each peer's share of the IP range.
    Ipam,
}

/// Flags of `weave-router status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Which page (default: the summary).
    #[arg(value_enum)]
    pub page: Option<StatusPage>,
    /// Address of the router's HTTP API.
    #[arg(long, env = "WEAVE_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
    pub http_addr: SocketAddr,
    /// Print the full /report JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `weave-router metrics`.
#[derive(Debug, Clone, clap::Args)]
pub struct MetricsArgs {
    /// Address of the router's metrics endpoint.
    #[arg(long, default_value = DEFAULT_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,
}

/// Flags of `weave-router connect`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// Replace the current targets instead of adding to them.
    #[arg(long)]
    pub replace: bool,
    /// Address of the router's HTTP API.
    #[arg(long, env = "WEAVE_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
    pub http_addr: SocketAddr,
    /// Peers: host or host:port.
    #[arg(value_name = "PEER")]
    pub peers: Vec<String>,
}

/// Flags of `weave-router forget`.
#[derive(Debug, Clone, clap::Args)]
pub struct ForgetArgs {
    /// Address of the router's HTTP API.
    #[arg(long, env = "WEAVE_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
    pub http_addr: SocketAddr,
    /// Peers: host or host:port.
    #[arg(value_name = "PEER", required = true)]
    pub peers: Vec<String>,
}

/// Flags of `weave-router rmpeer`.
#[derive(Debug, Clone, clap::Args)]
pub struct RmpeerArgs {
    /// Address of the router's HTTP API.
    #[arg(long, env = "WEAVE_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
    pub http_addr: SocketAddr,
    /// Peers to remove: names (aa:00:00:00:00:01) or nicknames.
    #[arg(value_name = "PEER", required = true)]
    pub peers: Vec<String>,
}

/// Why a client subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The HTTP exchange failed.
    #[error(transparent)]
    Http(#[from] ClientError),
    /// `/report` did not hold JSON.
    #[error("the router's /report is not JSON: {0}")]
    BadJson(String),
    /// Writing to our output failed.
    #[error("cannot write output")]
    Output(#[from] std::io::Error),
    /// `reset` could not do (or refused) what was asked.
    #[error("reset: {0}")]
    Reset(String),
}

impl CliError {
    /// True when our reader went away (`status | head`): not worth an error message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// `weave-router status`: prints the chosen page, or `/report` as indented JSON.
pub fn status(args: &StatusArgs, out: &mut impl Write) -> Result<(), CliError> {
    if args.json {
        let resp = http::get(args.http_addr, "/report", "application/json")?;
        // Checked, then printed as sent: re-encoding would sort the keys out of the
        // server's (and Weave's) order, and both servers already indent.
        let v: serde_json::Value =
            serde_json::from_slice(&resp.body).map_err(|e| CliError::BadJson(e.to_string()))?;
        if resp.body.contains(&b'\n') {
            out.write_all(resp.body.trim_ascii_end())?;
        } else {
            let text =
                crate::api::to_json_pretty(&v).map_err(|e| CliError::BadJson(e.to_string()))?;
            out.write_all(text.as_bytes())?;
        }
        out.write_all(b"\n")?;
        return Ok(());
    }
    let path = match args.page {
        None => "/status",
        Some(StatusPage::Peers) => "/status/peers",
        Some(StatusPage::Connections) => "/status/connections",
        Some(StatusPage::Targets) => "/status/targets",
        Some(StatusPage::Ipam) => "/status/ipam",
    };
    let resp = http::get(args.http_addr, path, "text/plain")?;
    out.write_all(&resp.body)?;
    Ok(())
}

/// `weave-router metrics`: prints the `/metrics` page as served (what Prometheus scrapes).
pub fn metrics(args: &MetricsArgs, out: &mut impl Write) -> Result<(), CliError> {
    let resp = http::get(args.metrics_addr, "/metrics", "text/plain")?;
    out.write_all(&resp.body)?;
    Ok(())
}

/// `weave-router connect`: asks the router to connect to peers.
pub fn connect(args: &ConnectArgs) -> Result<(), CliError> {
    let mut body = peer_form(&args.peers);
    body.push_str(if args.replace {
        "&replace=true"
    } else {
        "&replace=false"
    });
    http::post_form(args.http_addr, "/connect", body.trim_start_matches('&'))?;
    Ok(())
}

/// `weave-router forget`: asks the router to stop keeping peers connected.
pub fn forget(args: &ForgetArgs) -> Result<(), CliError> {
    http::post_form(args.http_addr, "/forget", &peer_form(&args.peers))?;
    Ok(())
}

/// `weave-router rmpeer`: the router takes over the address space of dead peers and
/// prints how much it took, one line per peer.
pub fn rmpeer(args: &RmpeerArgs, out: &mut impl Write) -> Result<(), CliError> {
    for peer in &args.peers {
        let path = format!("/peer/{}", form::encode(peer));
        let resp = http::request(args.http_addr, "DELETE", &path, &[], b"")?;
        out.write_all(&resp.body)?;
    }
    Ok(())
}

/// `peer=a&peer=b`, the way Weave's `weave connect` posts them.
pub fn peer_form(peers: &[String]) -> String {
    peers
        .iter()
        .map(|p| format!("peer={}", form::encode(p)))
        .collect::<Vec<_>>()
        .join("&")
}
