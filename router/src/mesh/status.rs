//! Snapshots of the mesh for the HTTP API, in the shape of Weave's `/report`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::PeerName;

/// Reads Weave's `null` (its encoding of an empty Go slice or map) as the empty value.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The `Router` section of `/report`, with Weave's keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RouterStatus {
    /// Always `"weave"`.
    pub protocol: String,
    /// Lowest protocol version we speak.
    pub protocol_min_version: u8,
    /// Highest protocol version we speak.
    pub protocol_max_version: u8,
    /// Whether a password is set.
    pub encryption: bool,
    /// Whether addresses learned from gossip are dialled.
    pub peer_discovery: bool,
    /// Our name.
    pub name: PeerName,
    /// Our nickname.
    #[serde(rename = "NickName")]
    pub nickname: String,
    /// The TCP/UDP port of the mesh.
    pub port: u16,
    /// Every known peer, ourself first.
    pub peers: Vec<PeerStatus>,
    /// First hop per destination (`Via` 00:00:00:00:00:00 for ourself).
    pub unicast_routes: Vec<UnicastRouteStatus>,
    /// Next hops per broadcast source.
    pub broadcast_routes: Vec<BroadcastRouteStatus>,
    /// Our connections and connection attempts.
    #[serde(default, deserialize_with = "null_as_default")]
    pub connections: Vec<LocalConnectionStatus>,
    /// How many connections have ended since start.
    pub termination_count: u64,
    /// The addresses the connection maker is asked to keep connected.
    #[serde(default, deserialize_with = "null_as_default")]
    pub targets: Vec<String>,
    /// Subnets trusted to carry unencrypted traffic.
    #[serde(default, deserialize_with = "null_as_default")]
    pub trusted_subnets: Vec<String>,
    /// How often a peer's unicast moved between the fast datapath and the sleeve since
    /// start (not in Weave's report).
    #[serde(default)]
    pub fastdp_moves: u64,
    /// How many application broadcasts were dropped since start because this router had
    /// already delivered or sent them: each is a loop through views of the topology that
    /// disagreed (not in Weave's report).
    #[serde(default)]
    pub broadcast_repeats: u64,
}

/// One peer in the topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PeerStatus {
    /// Its name.
    pub name: PeerName,
    /// Its nickname.
    #[serde(rename = "NickName")]
    pub nickname: String,
    /// Its process UID.
    #[serde(rename = "UID")]
    pub uid: u64,
    /// Its short id.
    #[serde(rename = "ShortID")]
    pub short_id: u16,
    /// Its topology version.
    pub version: u64,
    /// Its connections as it gossips them.
    #[serde(default, deserialize_with = "null_as_default")]
    pub connections: Vec<PeerConnectionStatus>,
}

/// A connection of some peer, as gossiped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PeerConnectionStatus {
    /// The remote peer's name.
    pub name: PeerName,
    /// The remote peer's nickname (empty if unknown).
    #[serde(rename = "NickName")]
    pub nickname: String,
    /// The remote TCP address as the owner sees it.
    pub address: String,
    /// Whether the owner dialled.
    pub outbound: bool,
    /// Whether it is established.
    pub established: bool,
}

/// A unicast route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UnicastRouteStatus {
    /// Destination peer.
    pub dest: PeerName,
    /// First hop.
    pub via: PeerName,
}

/// The broadcast next hops for one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BroadcastRouteStatus {
    /// Broadcast source.
    pub source: PeerName,
    /// Neighbours to forward to.
    #[serde(default, deserialize_with = "null_as_default")]
    pub via: Vec<PeerName>,
}

/// One of our connections or connection attempts (`/status/connections`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LocalConnectionStatus {
    /// Remote address (`ip:port`).
    pub address: String,
    /// Whether we dialled.
    pub outbound: bool,
    /// `connecting`, `pending`, `established`, `failed`, `retrying`.
    pub state: String,
    /// Free text: the remote peer, or the error and next retry.
    pub info: String,
    /// Overlay attributes (`name`, `mtu`) once established.
    #[serde(default, deserialize_with = "null_as_default")]
    pub attrs: BTreeMap<String, serde_json::Value>,
}

/// The whole `/report` document (the parts that exist).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Report {
    /// Whether the router is ready (it always is once it answers).
    pub ready: bool,
    /// The router's version string.
    pub version: String,
    /// The mesh.
    pub router: RouterStatus,
    /// Address management, when it runs.
    #[serde(rename = "IPAM", default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<crate::ipam::allocator::IpamStatus>,
    /// The data plane's counters, when one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane: Option<DataplaneStatus>,
}

/// The data plane in `/report`: its backend and each worker's counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DataplaneStatus {
    /// `epoll` or `io_uring`.
    pub backend: String,
    /// One entry per worker.
    pub workers: Vec<WorkerStatus>,
}

/// One worker's counters since start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WorkerStatus {
    /// Frames read from the TAP (after GSO split).
    pub tap_rx_frames: u64,
    /// Bytes read from the TAP.
    pub tap_rx_bytes: u64,
    /// Writes to the TAP (a coalesced super-frame counts once).
    pub tap_tx_writes: u64,
    /// Bytes written to the TAP.
    pub tap_tx_bytes: u64,
    /// Sleeve datagrams received.
    pub udp_rx_datagrams: u64,
    /// Bytes received.
    pub udp_rx_bytes: u64,
    /// Receive calls that delivered data.
    pub udp_rx_calls: u64,
    /// Sleeve datagrams sent.
    pub udp_tx_datagrams: u64,
    /// Bytes sent.
    pub udp_tx_bytes: u64,
    /// Send calls; datagrams per call is the batching factor.
    pub udp_tx_calls: u64,
    /// Drops by reason.
    pub drops: BTreeMap<String, u64>,
    /// Traffic per directly connected peer.
    pub peers: BTreeMap<String, PeerTrafficStatus>,
    /// Its backend and state, and what its I/O loop dropped and recovered from.
    #[serde(flatten)]
    pub io: WorkerIoStatus,
}

/// A worker's backend and state, and what its I/O loop counted beside the traffic (not in
/// Weave's report).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct WorkerIoStatus {
    /// The backend it runs: `io_uring`, or `epoll` (also after falling back from io_uring).
    pub backend: String,
    /// `running`, `restarting` (it failed and is started again after a backoff) or `failed`
    /// (it failed more often than it may be restarted).
    pub state: String,
    /// Times it was restarted after a failure.
    pub restarts: u64,
    /// Datagrams dropped before the kernel took them (a full send buffer, or more sends in
    /// flight than the worker allows).
    pub send_dropped: u64,
    /// Segmented sends the kernel refused (an IPsec policy on the underlay), sent again one
    /// datagram at a time.
    pub gso_fallbacks: u64,
    /// Special frames dropped because the control task's queue was full.
    pub control_dropped: u64,
    /// Times a stopped input (TAP read, UDP receive) was armed again after a wait.
    pub rearms: u64,
    /// Transient io_uring errors retried in place.
    pub ring_retries: u64,
    /// Microseconds spent busy-polling instead of sleeping.
    pub busy_poll_micros: u64,
    /// Busy-polls that found work (thread wake-ups saved).
    pub busy_poll_hits: u64,
}

/// Frames and bytes exchanged with one directly connected peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PeerTrafficStatus {
    /// Frames received from it.
    pub rx_frames: u64,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Frames sent to it.
    pub tx_frames: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weave_reports_with_nulls_parse() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/report-host1.json"
        ))
        .unwrap();
        let report: Report = serde_json::from_str(&text).expect("Weave's own /report parses");
        assert_eq!(report.router.name.to_string(), "aa:00:00:00:00:01");
        assert_eq!(report.router.peers.len(), 3);
        assert!(report.router.targets.is_empty());
    }
}
