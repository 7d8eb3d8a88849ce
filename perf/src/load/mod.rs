//! The traffic generator the harness runs inside pod namespaces: a server (`weave-perf
//! load-server`) and a client (`weave-perf load-client`) that speak a small control protocol
//! over TCP, so the harness depends on no outside tool.
//!
//! INTERFACE (fixed; the orchestrator in `crate::harness` and `main.rs` build against it):
//! - [`ServerArgs`] / [`ClientArgs`]: clap argument structs for the two subcommands.
//! - [`serve`]: runs the server until `cancel` is set (or forever); [`Server`] splits it into
//!   bind and run, for callers that bind port 0 and need the port.
//! - [`client`]: runs one workload against a server and returns a [`LoadResult`], which the
//!   `load-client` subcommand prints as one line of JSON on stdout.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

mod client;
mod conn;
pub mod histogram;
mod proto;
mod server;
mod sys;
#[cfg(test)]
mod tests;

pub use histogram::LatencyHistogram;
pub use proto::{MAX_RATE, MAX_RR_SIZE, MAX_STREAMS, MAX_UDP_SIZE, UDP_HEADER_LEN};
pub use server::Server;

/// The TCP (control, bulk, request/response) and UDP port a server listens on by default.
pub const DEFAULT_PORT: u16 = 5201;

/// What a client measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// TCP bulk transfer client → server over `streams` connections.
    Tcp,
    /// UDP packets of `size` bytes of payload, client → server, as fast as the sender can
    /// or at a paced rate.
    Udp,
    /// TCP request/response: one `size`-byte request, one `size`-byte answer, repeated:
    /// each request after the last answer (closed loop), or at a paced rate (open loop).
    Rr,
}

/// `weave-perf load-server`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Address to listen on (TCP and UDP).
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: Ipv4Addr,
    /// Port to listen on (TCP and UDP).
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
}

/// `weave-perf load-client`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The server's address.
    #[arg(long)]
    pub server: Ipv4Addr,
    /// The server's port.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// What to measure.
    #[arg(long, value_enum)]
    pub workload: Workload,
    /// Parallel TCP streams (tcp) or sending threads (udp); rr uses one connection.
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// Payload bytes per UDP packet (udp) or per request and answer (rr).
    #[arg(long, default_value_t = 1400)]
    pub size: usize,
    /// Seconds to run, after the warm-up.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Seconds of traffic before counting starts (not counted).
    #[arg(long, default_value_t = 0.5)]
    pub warmup: f64,
    /// Pace the traffic: packets per second over all sending threads (udp), or requests per
    /// second sent on schedule whether or not earlier answers came back (rr, open loop: each
    /// round trip counts from its request's scheduled send time, so a stall delays every
    /// request behind it instead of hiding them). Unpaced when absent.
    #[arg(long, value_name = "PER_SECOND")]
    pub rate: Option<f64>,
}

/// Round-trip latency percentiles in microseconds (rr only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Mean.
    pub mean_us: f64,
    /// Round trips recorded.
    pub samples: u64,
}

/// What one client run measured (counted part only, warm-up excluded).
///
/// Fields added after the first version are optional, so results of older clients still read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadResult {
    /// The workload run.
    pub workload: Workload,
    /// Streams or threads used.
    pub streams: usize,
    /// Payload size (udp, rr); 0 for tcp.
    pub size: usize,
    /// Seconds counted: the server's window for tcp, the nominal counted window for udp (the
    /// span packets were sent in and counted for), the client's for rr.
    pub seconds: f64,
    /// Payload bytes the server received while counting.
    pub bytes_received: u64,
    /// Packets (udp) or round trips (rr) the client sent while counting; 0 for tcp.
    pub packets_sent: u64,
    /// Packets (udp) or answers (rr) received while counting; 0 for tcp.
    pub packets_received: u64,
    /// Payload bits per second received by the server.
    pub bits_per_second: f64,
    /// Packets per second received by the server (udp) or round trips per second (rr).
    pub packets_per_second: f64,
    /// Latency (rr only).
    pub latency: Option<Latency>,
    /// The pace asked for (`--rate`), per second; `None` when unpaced.
    #[serde(default)]
    pub rate: Option<f64>,
    /// The round trips behind `latency` (rr only).
    #[serde(default)]
    pub histogram: Option<LatencyHistogram>,
}

/// Errors of the load generator.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The arguments cannot describe a test (e.g. a UDP size below the packet header).
    #[error("invalid arguments: {0}")]
    InvalidArgs(String),
    /// Binding a socket failed.
    #[error("bind {what} {addr}: {source}")]
    Bind {
        /// "TCP" or "UDP".
        what: &'static str,
        /// The address asked for.
        addr: SocketAddrV4,
        /// Why.
        source: io::Error,
    },
    /// Connecting to the server failed.
    #[error("connect to server {addr}: {source}")]
    Connect {
        /// The server.
        addr: SocketAddrV4,
        /// Why.
        source: io::Error,
    },
    /// A socket operation failed during a test.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the peer.
        what: String,
        /// Why.
        source: io::Error,
    },
    /// The server sent something the control protocol does not allow at that point.
    #[error("bad control line from server {peer}: {detail}")]
    Protocol {
        /// The server.
        peer: SocketAddrV4,
        /// What was wrong.
        detail: String,
    },
    /// The server answered with an error (it refused the test or a stream).
    #[error("server {addr} refused: {message}")]
    Refused {
        /// The server.
        addr: SocketAddrV4,
        /// The server's message.
        message: String,
    },
    /// The latency histogram could not be set up.
    #[error("latency histogram: {0}")]
    Histogram(String),
    /// A worker thread panicked (a bug).
    #[error("{0} thread panicked")]
    Panicked(String),
}

/// Runs the server until `cancel` is set.
pub fn serve(args: &ServerArgs, cancel: &AtomicBool) -> Result<(), LoadError> {
    Server::bind(args)?.run(cancel)
}

/// Runs one workload against a server.
pub fn client(args: &ClientArgs) -> Result<LoadResult, LoadError> {
    client::run(args)
}
