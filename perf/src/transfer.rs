//! A TCP transfer between two pods checked end to end: the client sends a known byte
//! pattern, both ends hash what passed with SHA-256, and the two digests must be equal. An
//! optional rate makes it last long enough for something to happen during it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::testbed::InNetns;

/// The port the server listens on.
pub const PORT: u16 = 5001;

/// Server: `server`; client: `client ADDR BYTES [BYTES_PER_SECOND]`. Each prints
/// `<bytes> <sha256>` when done.
pub const SCRIPT: &str = r#"
import socket, sys, hashlib, time
if sys.argv[1] == "server":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 5001)); s.listen(1); print("listening", flush=True)
    c, _ = s.accept(); h = hashlib.sha256(); n = 0
    while True:
        b = c.recv(1 << 20)
        if not b: break
        h.update(b); n += len(b)
    print(n, h.hexdigest(), flush=True)
else:
    total = int(sys.argv[3]); rate = float(sys.argv[4]) if len(sys.argv) > 4 else 0
    block = bytes((i * 7 + 3) % 251 for i in range(1 << 20))
    c = socket.create_connection((sys.argv[2], 5001)); h = hashlib.sha256(); n = 0
    start = time.monotonic()
    while n < total:
        m = min(len(block), total - n); c.sendall(block[:m]); h.update(block[:m]); n += m
        if rate > 0:
            ahead = n / rate - (time.monotonic() - start)
            if ahead > 0: time.sleep(ahead)
    c.shutdown(socket.SHUT_WR); c.recv(1)
    print(n, h.hexdigest(), flush=True)
"#;

/// A transfer under way: the server and client processes.
pub struct Transfer {
    server: Child,
    client: Child,
    started: Instant,
}

/// What a finished transfer reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `<bytes> <sha256>` as the client saw it.
    pub sent: String,
    /// `<bytes> <sha256>` as the server saw it.
    pub received: String,
    /// From the client's start to both ends' end.
    pub took: Duration,
}

impl Outcome {
    /// Both ends saw the same bytes, and `bytes` of them.
    pub fn intact(&self, bytes: u64) -> bool {
        self.sent == self.received && self.sent.starts_with(&format!("{bytes} "))
    }

    /// Throughput in Gbit/s.
    pub fn gbps(&self, bytes: u64) -> f64 {
        bytes as f64 * 8.0 / self.took.as_secs_f64().max(1e-9) / 1e9
    }
}

impl Transfer {
    /// Writes the script to `dir`, starts the server in `to`, and once it listens the client
    /// in `from` towards `addr`, sending `bytes` (at most `rate` bytes a second when given).
    pub fn start(
        dir: &Path,
        from: &impl InNetns,
        to: &impl InNetns,
        addr: std::net::Ipv4Addr,
        bytes: u64,
        rate: Option<u64>,
    ) -> std::io::Result<Transfer> {
        let script = dir.join("checked-tcp.py");
        std::fs::write(&script, SCRIPT)?;
        let mut server = to.command("python3");
        server.arg(&script).arg("server").stdout(Stdio::piped());
        let mut server = server.spawn()?;
        // The server prints "listening" first; reading it means it listens.
        let mut first = [0u8; 10];
        if let Some(out) = server.stdout.as_mut() {
            use std::io::Read;
            out.read_exact(&mut first)?;
        }
        let mut client: Command = from.command("python3");
        client
            .arg(&script)
            .arg("client")
            .arg(addr.to_string())
            .arg(bytes.to_string());
        if let Some(r) = rate {
            client.arg(r.to_string());
        }
        let client = client
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        Ok(Transfer {
            server,
            client,
            started: Instant::now(),
        })
    }

    /// Waits for both ends.
    pub fn finish(self) -> std::io::Result<Outcome> {
        let client = self.client.wait_with_output()?;
        let server = self.server.wait_with_output()?;
        let took = self.started.elapsed();
        let last = |b: &[u8]| {
            String::from_utf8_lossy(b)
                .lines()
                .last()
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        let mut sent = last(&client.stdout);
        if !client.status.success() {
            sent = format!(
                "client failed ({}): {}",
                client.status,
                String::from_utf8_lossy(&client.stderr).trim()
            );
        }
        Ok(Outcome {
            sent,
            received: last(&server.stdout),
            took,
        })
    }
}
