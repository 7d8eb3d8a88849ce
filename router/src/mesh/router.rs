//! [`Mesh`]: the whole control plane of one router, driven by the shell.

use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use crate::ids::{PeerName, PeerUid};
use crate::mesh::status::RouterStatus;

/// What the mesh needs to know about ourself and its limits.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// Our peer name.
    pub name: PeerName,
    /// Our nickname (host name by default).
    pub nickname: String,
    /// Our UID for this process.
    pub uid: PeerUid,
    /// The mesh port (TCP and UDP), used for addresses given without a port.
    pub port: u16,
    /// Most connections we keep (Weave's `--conn-limit`, default 200); 0 means no limit.
    pub conn_limit: usize,
    /// Whether to dial addresses learned from gossip.
    pub discovery: bool,
    /// Overlays offered in the feature map (`Overlays`).
    pub overlays: Vec<String>,
}

/// The shell's handle for one TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnKey(pub u64);

impl fmt::Display for ConnKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// An effect the shell must perform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Open a TCP connection to `addr`; report with `handle_dialed` or `handle_dial_failed`.
    Dial {
        /// The key the mesh will use for this connection.
        conn: ConnKey,
        /// Where to connect.
        addr: SocketAddr,
    },
    /// Write these bytes, in order, to the connection.
    Send {
        /// Which connection.
        conn: ConnKey,
        /// Bytes to write.
        bytes: Vec<u8>,
    },
    /// Close the connection (after writing what was already sent).
    Close {
        /// Which connection.
        conn: ConnKey,
    },
}

/// Something worth a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// True for problems, false for information.
    pub warning: bool,
    /// The log line.
    pub message: String,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The control plane of one router.
pub struct Mesh {
    _config: MeshConfig,
}

impl Mesh {
    /// Creates the mesh; `seed` feeds every random choice (short id, ConnIDs, jitter).
    pub fn new(config: MeshConfig, seed: u64, now: Instant) -> Self {
        let _ = (seed, now);
        Mesh { _config: config }
    }

    /// Adds addresses for the connection maker to keep connected (initial peers,
    /// `POST /connect`); with `replace`, the previous direct targets are dropped.
    pub fn connect(&mut self, addrs: &[SocketAddr], replace: bool, now: Instant) {
        let _ = (addrs, replace, now);
        todo!()
    }

    /// Removes addresses from the targets (`POST /forget`).
    pub fn forget(&mut self, addrs: &[SocketAddr], now: Instant) {
        let _ = (addrs, now);
        todo!()
    }

    /// An inbound TCP connection was accepted from `remote`.
    pub fn handle_accepted(&mut self, remote: SocketAddr, now: Instant) -> ConnKey {
        let _ = (remote, now);
        todo!()
    }

    /// A `Command::Dial` succeeded.
    pub fn handle_dialed(&mut self, conn: ConnKey, now: Instant) {
        let _ = (conn, now);
        todo!()
    }

    /// A `Command::Dial` failed with `error`.
    pub fn handle_dial_failed(&mut self, conn: ConnKey, error: &str, now: Instant) {
        let _ = (conn, error, now);
        todo!()
    }

    /// Bytes arrived on a connection.
    pub fn handle_data(&mut self, conn: ConnKey, data: &[u8], now: Instant) {
        let _ = (conn, data, now);
        todo!()
    }

    /// The connection was closed by the remote end or failed (`reason` for the log).
    pub fn handle_closed(&mut self, conn: ConnKey, reason: &str, now: Instant) {
        let _ = (conn, reason, now);
        todo!()
    }

    /// Time passed: run timers whose deadline is `now` or earlier.
    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = now;
        todo!()
    }

    /// When `handle_timeout` should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        todo!()
    }

    /// The next effect to perform.
    pub fn poll_command(&mut self) -> Option<Command> {
        todo!()
    }

    /// The next event to log.
    pub fn poll_event(&mut self) -> Option<Event> {
        todo!()
    }

    /// A snapshot for `/report` and the status texts; `now` dates retry times.
    pub fn status(&self, now: Instant) -> RouterStatus {
        let _ = now;
        todo!()
    }

    /// Our name.
    pub fn name(&self) -> PeerName {
        self._config.name
    }
}
