//! The control protocol and the UDP packet header as values: no sockets or clocks here, so
//! every rule (validation, framing, result arithmetic) is tested without a network.
//!
//! Control lines are JSON objects, one per line, tagged by `"type"`:
//! - client → server, first line of a control connection: `start` (the [`Spec`]);
//! - client → server, first line of a data connection (tcp, rr): `stream`;
//! - client → server, on the control connection when its traffic has stopped: `done`;
//! - server → client: `ready`, `error` (with a message), `counted` (the server's counts).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher as _;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::histogram::LatencyHistogram;
use super::{ClientArgs, Latency, LoadResult, Workload};

/// Version of the control protocol; a server refuses a `start` of another version.
pub(super) const VERSION: u32 = 1;

/// The longest control line either side accepts, newline included.
pub(super) const MAX_LINE: usize = 4096;

/// Bytes of the header every UDP payload starts with, so the smallest `--size` for udp.
pub const UDP_HEADER_LEN: usize = 24;

/// The largest UDP payload over IPv4 (65535 minus the IPv4 and UDP headers).
pub const MAX_UDP_SIZE: usize = 65_507;

/// The largest request/answer size for rr.
pub const MAX_RR_SIZE: usize = 1 << 20;

/// The most streams (tcp) or sending threads (udp) one test may use.
pub const MAX_STREAMS: usize = 128;

/// The longest test, warm-up excluded, a server accepts.
const MAX_SECONDS: f64 = 24.0 * 3600.0;

/// The longest warm-up a server accepts.
const MAX_WARMUP: f64 = 3600.0;

/// The highest `--rate` a client accepts, per second: far above what one machine sends, low
/// enough that the pacing arithmetic stays exact in an f64.
pub const MAX_RATE: f64 = 1e9;

const UDP_MAGIC: [u8; 4] = *b"wvpf";
const UDP_VERSION: u8 = 1;

/// Identifies one client run, so a server serving several at once counts each apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub(super) struct TestId(pub u64);

impl TestId {
    /// A fresh random id (std's per-process random hasher keys, mixed with the clock).
    pub(super) fn random() -> TestId {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        TestId(RandomState::new().hash_one((nanos, std::process::id())))
    }
}

impl std::fmt::Display for TestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What a client asks the server to take part in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Spec {
    /// [`VERSION`] of the client.
    pub version: u32,
    /// This run's id.
    pub test: TestId,
    /// The workload.
    pub workload: Workload,
    /// Streams (tcp) or sending threads (udp); 1 for rr.
    pub streams: usize,
    /// Payload size (udp, rr).
    pub size: usize,
    /// Counted seconds.
    pub seconds: f64,
    /// Warm-up seconds.
    pub warmup: f64,
}

impl Spec {
    /// The spec of a client run.
    pub(super) fn from_args(args: &ClientArgs, test: TestId) -> Spec {
        Spec {
            version: VERSION,
            test,
            workload: args.workload,
            // rr always runs over exactly one connection, whatever --streams says.
            streams: match args.workload {
                Workload::Tcp | Workload::Udp => args.streams,
                Workload::Rr => 1,
            },
            size: args.size,
            seconds: args.seconds,
            warmup: args.warmup,
        }
    }

    /// Checks that the spec describes a test this side can run; the message names the field.
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.version != VERSION {
            return Err(format!(
                "protocol version {} (this side speaks {VERSION})",
                self.version
            ));
        }
        if self.streams == 0 || self.streams > MAX_STREAMS {
            return Err(format!(
                "streams must be 1..={MAX_STREAMS}, not {}",
                self.streams
            ));
        }
        if !(self.seconds.is_finite() && self.seconds > 0.0 && self.seconds <= MAX_SECONDS) {
            return Err(format!(
                "seconds must be above 0 and at most {MAX_SECONDS}, not {}",
                self.seconds
            ));
        }
        if !(self.warmup.is_finite() && self.warmup >= 0.0 && self.warmup <= MAX_WARMUP) {
            return Err(format!(
                "warmup must be 0..={MAX_WARMUP} seconds, not {}",
                self.warmup
            ));
        }
        match self.workload {
            Workload::Tcp => Ok(()),
            Workload::Udp if (UDP_HEADER_LEN..=MAX_UDP_SIZE).contains(&self.size) => Ok(()),
            Workload::Udp => Err(format!(
                "udp size must be {UDP_HEADER_LEN}..={MAX_UDP_SIZE} bytes, not {}",
                self.size
            )),
            Workload::Rr if (1..=MAX_RR_SIZE).contains(&self.size) => Ok(()),
            Workload::Rr => Err(format!(
                "rr size must be 1..={MAX_RR_SIZE} bytes, not {}",
                self.size
            )),
        }
    }

    /// The warm-up as a duration (only after [`Spec::validate`] passed).
    pub(super) fn warmup_duration(&self) -> Duration {
        Duration::from_secs_f64(self.warmup)
    }

    /// The counted time as a duration (only after [`Spec::validate`] passed).
    pub(super) fn counted_duration(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }

    /// The counted window of a test that started (on this side's clock) at `start`.
    pub(super) fn window(&self, start: Instant) -> Window {
        let begin = start + self.warmup_duration();
        Window {
            start: begin,
            end: begin + self.counted_duration(),
        }
    }
}

/// Checks a client's `--rate` against its workload: a pace is packets (udp) or requests (rr)
/// per second; tcp streams are not paced.
pub(super) fn check_rate(workload: Workload, rate: Option<f64>) -> Result<(), String> {
    let Some(rate) = rate else {
        return Ok(());
    };
    match workload {
        Workload::Tcp => Err("rate applies to udp and rr, not tcp".into()),
        Workload::Udp | Workload::Rr if rate.is_finite() && rate > 0.0 && rate <= MAX_RATE => {
            Ok(())
        }
        Workload::Udp | Workload::Rr => Err(format!(
            "rate must be above 0 and at most {MAX_RATE} per second, not {rate}"
        )),
    }
}

/// When each packet (or request) of a paced sender is due: packet `n` (0-based) at
/// `start + n / per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Pace {
    /// When packet 0 is due.
    pub start: Instant,
    /// Packets per second.
    pub per_second: f64,
}

impl Pace {
    /// How many packets are due by `now`: all of those due at or before it.
    pub(super) fn due_by(&self, now: Instant) -> u64 {
        match now.checked_duration_since(self.start) {
            // Truncation is the point: packet n is due once n / per_second has passed.
            Some(elapsed) => (elapsed.as_secs_f64() * self.per_second) as u64 + 1,
            None => 0,
        }
    }

    /// When packet `n` is due.
    pub(super) fn due_at(&self, n: u64) -> Instant {
        self.start + Duration::from_secs_f64(n as f64 / self.per_second)
    }

    /// How many of the packets due by `now` to send next (at most `batch`), counting from
    /// `next` (the first not yet sent), and where the schedule goes on from. A sender behind
    /// its schedule catches up at full speed, batch after batch, as long as it is at most
    /// `backlog` packets behind (a short deschedule on a busy machine); further behind, it
    /// skips the excess rather than flooding the path with it, and offers a little less.
    pub(super) fn batch(&self, next: u64, now: Instant, batch: u64, backlog: u64) -> PacedBatch {
        let due = self.due_by(now);
        let first = next.max(due.saturating_sub(backlog));
        PacedBatch {
            count: due.saturating_sub(first).min(batch),
            first,
        }
    }
}

/// What [`Pace::batch`] says to send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PacedBatch {
    /// Packets to send now (0: wait until [`Pace::due_at`] of `first`).
    pub count: u64,
    /// The schedule index of the first of them.
    pub first: u64,
}

/// A line a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub(super) enum Request {
    /// Opens a test (first line of a control connection).
    Start(Spec),
    /// Joins a data connection to a test (first line of a data connection).
    Stream {
        /// The test.
        test: TestId,
        /// 0-based stream index, below the test's `streams`.
        index: usize,
    },
    /// The client's traffic has stopped; the server answers with its counts.
    Done,
}

impl Request {
    /// The line's `type`, for error messages.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Request::Start(_) => "start",
            Request::Stream { .. } => "stream",
            Request::Done => "done",
        }
    }
}

/// A line a server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub(super) enum Reply {
    /// The test or stream is accepted; traffic may start.
    Ready,
    /// The request was refused; the connection closes after this line.
    Error {
        /// What was wrong.
        message: String,
    },
    /// The server's counts for the test, after `done`.
    Counted(Counted),
}

/// What a server counted for one test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Counted {
    /// Payload bytes received while counting.
    pub bytes: u64,
    /// Packets (udp) or requests (rr) received while counting.
    pub packets: u64,
    /// Seconds the counts cover: the server's window (tcp, rr), the client's nominal one
    /// (udp: every packet sent inside it counts, whenever it arrives).
    pub seconds: f64,
}

/// Serializes a control line, newline included.
pub(super) fn encode_line<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail (no maps with non-string keys, no I/O).
    let mut line = serde_json::to_vec(msg).unwrap_or_default();
    line.push(b'\n');
    line
}

/// Parses a control line from a client.
pub(super) fn parse_request(line: &[u8]) -> Result<Request, String> {
    serde_json::from_slice(trim_line(line))
        .map_err(|e| format!("bad control line {}: {e}", quote(line)))
}

/// Parses a control line from a server.
pub(super) fn parse_reply(line: &[u8]) -> Result<Reply, String> {
    serde_json::from_slice(trim_line(line))
        .map_err(|e| format!("bad control line {}: {e}", quote(line)))
}

fn trim_line(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\n")
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .unwrap_or(line)
}

/// The start of a line, printable, for an error message.
fn quote(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(trim_line(line));
    let short: String = text.chars().take(80).collect();
    if short.len() < text.len() {
        format!("{short:?}...")
    } else {
        format!("{short:?}")
    }
}

/// The counted interval of a test on one side's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Window {
    /// Counting starts (warm-up over).
    pub start: Instant,
    /// Counting ends.
    pub end: Instant,
}

impl Window {
    /// Whether `t` falls in the window.
    pub(super) fn contains(&self, t: Instant) -> bool {
        self.start <= t && t < self.end
    }

    /// Seconds of the window that had passed by `t` (0 before it, all of it after).
    pub(super) fn seconds_until(&self, t: Instant) -> f64 {
        t.min(self.end)
            .saturating_duration_since(self.start)
            .as_secs_f64()
    }
}

/// Which part of a test a UDP packet was sent in; the server counts only [`Phase::Counted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Sent during the warm-up.
    Warmup,
    /// Sent in the client's counted window.
    Counted,
}

/// The header at the start of every UDP payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct UdpHeader {
    /// The test.
    pub test: TestId,
    /// The sending thread.
    pub stream: u16,
    /// When it was sent.
    pub phase: Phase,
    /// Per-thread sequence number.
    pub seq: u64,
}

impl UdpHeader {
    /// Writes the header into the first [`UDP_HEADER_LEN`] bytes of `buf`; `buf` must be at
    /// least that long (callers size payloads after [`Spec::validate`]).
    pub(super) fn emit(&self, buf: &mut [u8]) {
        let Some(out) = buf.get_mut(..UDP_HEADER_LEN) else {
            return;
        };
        out[0..4].copy_from_slice(&UDP_MAGIC);
        out[4] = UDP_VERSION;
        out[5] = match self.phase {
            Phase::Warmup => 0,
            Phase::Counted => 1,
        };
        out[6..8].copy_from_slice(&self.stream.to_be_bytes());
        out[8..16].copy_from_slice(&self.test.0.to_be_bytes());
        out[16..24].copy_from_slice(&self.seq.to_be_bytes());
    }

    /// Parses the header of a payload; `None` for anything that is not one of ours.
    pub(super) fn parse(buf: &[u8]) -> Option<UdpHeader> {
        let h = buf.get(..UDP_HEADER_LEN)?;
        if h[0..4] != UDP_MAGIC || h[4] != UDP_VERSION {
            return None;
        }
        let phase = match h[5] {
            0 => Phase::Warmup,
            1 => Phase::Counted,
            _ => return None,
        };
        Some(UdpHeader {
            test: TestId(u64::from_be_bytes(h[8..16].try_into().ok()?)),
            stream: u16::from_be_bytes([h[6], h[7]]),
            phase,
            seq: u64::from_be_bytes(h[16..24].try_into().ok()?),
        })
    }
}

/// What the client measured itself.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct ClientSide {
    /// UDP packets sent in the counted window (udp) or round trips completed (rr).
    pub packets_sent: u64,
    /// UDP send calls that failed and were skipped (udp).
    pub send_errors: u64,
    /// Counted seconds as the client measured them (rr).
    pub seconds: f64,
    /// Round-trip latency (rr).
    pub latency: Option<Latency>,
    /// The round trips behind `latency` (rr).
    pub histogram: Option<LatencyHistogram>,
}

/// Combines the server's counts and the client's own into the result a client reports.
///
/// UDP rates are over the nominal counted window (`args.seconds`), for packets received as
/// for packets sent: the server counts every packet sent inside the window, whenever it
/// arrives, so received over offered is one minus the loss.
pub(super) fn assemble(args: &ClientArgs, counted: &Counted, side: &ClientSide) -> LoadResult {
    let (size, seconds, bytes, sent, received) = match args.workload {
        Workload::Tcp => (0, counted.seconds, counted.bytes, 0, 0),
        Workload::Udp => (
            args.size,
            args.seconds,
            counted.bytes,
            side.packets_sent,
            counted.packets,
        ),
        // The client times each round trip, so it owns the window; every counted round trip
        // carried one request of `size` bytes to the server.
        Workload::Rr => (
            args.size,
            side.seconds,
            side.packets_sent.saturating_mul(args.size as u64),
            side.packets_sent,
            side.packets_sent,
        ),
    };
    LoadResult {
        workload: args.workload,
        streams: match args.workload {
            Workload::Tcp | Workload::Udp => args.streams,
            Workload::Rr => 1,
        },
        size,
        seconds,
        bytes_received: bytes,
        packets_sent: sent,
        packets_received: received,
        bits_per_second: per_second(bytes as f64 * 8.0, seconds),
        packets_per_second: match args.workload {
            Workload::Tcp => 0.0,
            Workload::Udp | Workload::Rr => per_second(received as f64, seconds),
        },
        latency: match args.workload {
            Workload::Tcp | Workload::Udp => None,
            Workload::Rr => side.latency.clone(),
        },
        rate: args.rate,
        histogram: match args.workload {
            Workload::Tcp | Workload::Udp => None,
            Workload::Rr => side.histogram.clone(),
        },
    }
}

/// `amount / seconds`, 0 for an empty window rather than infinity or NaN.
fn per_second(amount: f64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        amount / seconds
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn args(workload: Workload) -> ClientArgs {
        ClientArgs {
            server: Ipv4Addr::LOCALHOST,
            port: 1,
            workload,
            streams: 2,
            size: 1400,
            seconds: 1.0,
            warmup: 0.5,
            rate: None,
        }
    }

    #[test]
    fn start_line_round_trips() {
        let spec = Spec::from_args(&args(Workload::Udp), TestId(u64::MAX));
        let line = encode_line(&Request::Start(spec.clone()));

        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(parse_request(&line), Ok(Request::Start(spec)));
    }

    #[test]
    fn replies_round_trip() {
        for reply in [
            Reply::Ready,
            Reply::Error {
                message: "no".into(),
            },
            Reply::Counted(Counted {
                bytes: 1 << 40,
                packets: 7,
                seconds: 0.25,
            }),
        ] {
            assert_eq!(parse_reply(&encode_line(&reply)), Ok(reply));
        }
    }

    #[test]
    fn done_line_is_plain_json() {
        assert_eq!(encode_line(&Request::Done), b"{\"type\":\"done\"}\n");
        assert_eq!(parse_request(b"{\"type\":\"done\"}\r\n"), Ok(Request::Done));
    }

    #[test]
    fn bad_line_error_quotes_it() {
        let err = parse_request(b"hello there\n").unwrap_err();

        assert!(err.starts_with("bad control line \"hello there\""), "{err}");
    }

    #[test]
    fn rr_spec_uses_one_stream() {
        let spec = Spec::from_args(&args(Workload::Rr), TestId(1));

        assert_eq!(spec.streams, 1);
    }

    #[test]
    fn validate_rejects_each_bad_field() {
        let good = Spec::from_args(&args(Workload::Udp), TestId(1));
        assert_eq!(good.validate(), Ok(()));
        type Breaker = fn(&mut Spec);
        let cases: [(&str, Breaker); 7] = [
            ("version", |s| s.version = 99),
            ("streams", |s| s.streams = 0),
            ("streams", |s| s.streams = MAX_STREAMS + 1),
            ("seconds", |s| s.seconds = f64::NAN),
            ("seconds", |s| s.seconds = 0.0),
            ("warmup", |s| s.warmup = -1.0),
            ("udp size", |s| s.size = UDP_HEADER_LEN - 1),
        ];
        for (field, break_it) in cases {
            let mut spec = good.clone();
            break_it(&mut spec);
            let err = spec.validate().unwrap_err();
            assert!(err.contains(field), "{field}: {err}");
        }
        let mut rr = Spec::from_args(&args(Workload::Rr), TestId(1));
        rr.size = 0;
        assert!(rr.validate().unwrap_err().contains("rr size"));
        let mut tcp = Spec::from_args(&args(Workload::Tcp), TestId(1));
        tcp.size = 0;
        assert_eq!(tcp.validate(), Ok(()));
    }

    #[test]
    fn udp_header_round_trips_and_rejects_foreign_payloads() {
        let header = UdpHeader {
            test: TestId(0x0102_0304_0506_0708),
            stream: 3,
            phase: Phase::Counted,
            seq: 42,
        };
        let mut buf = [0u8; 100];
        header.emit(&mut buf);

        assert_eq!(UdpHeader::parse(&buf), Some(header));
        assert_eq!(UdpHeader::parse(&buf[..UDP_HEADER_LEN - 1]), None);
        let mut foreign = buf;
        foreign[0] = b'x';
        assert_eq!(UdpHeader::parse(&foreign), None);
        let mut bad_phase = buf;
        bad_phase[5] = 9;
        assert_eq!(UdpHeader::parse(&bad_phase), None);
    }

    #[test]
    fn window_counts_only_inside() {
        let t0 = Instant::now();
        let mut spec = Spec::from_args(&args(Workload::Tcp), TestId(1));
        spec.warmup = 1.0;
        spec.seconds = 2.0;
        let w = spec.window(t0);

        assert!(!w.contains(t0));
        assert!(w.contains(t0 + Duration::from_secs(1)));
        assert!(!w.contains(t0 + Duration::from_secs(3)));
        assert_eq!(w.seconds_until(t0), 0.0);
        assert_eq!(w.seconds_until(t0 + Duration::from_millis(1500)), 0.5);
        assert_eq!(w.seconds_until(t0 + Duration::from_secs(10)), 2.0);
    }

    #[test]
    fn assemble_tcp_uses_server_counts() {
        let counted = Counted {
            bytes: 1000,
            packets: 0,
            seconds: 2.0,
        };
        let r = assemble(&args(Workload::Tcp), &counted, &ClientSide::default());

        assert_eq!(r.bytes_received, 1000);
        assert_eq!(r.bits_per_second, 4000.0);
        assert_eq!((r.size, r.packets_sent, r.packets_received), (0, 0, 0));
        assert_eq!(r.latency, None);
    }

    #[test]
    fn assemble_udp_takes_sent_from_client_and_received_from_server() {
        let counted = Counted {
            bytes: 14_000,
            packets: 10,
            seconds: 1.0,
        };
        let side = ClientSide {
            packets_sent: 12,
            ..ClientSide::default()
        };
        let mut a = args(Workload::Udp);
        a.seconds = 2.0;
        a.rate = Some(6.0);

        let r = assemble(&a, &counted, &side);

        assert_eq!((r.packets_sent, r.packets_received), (12, 10));
        // Over the nominal 2 s window, as the 12 packets sent are.
        assert_eq!(r.seconds, 2.0);
        assert_eq!(r.packets_per_second, 5.0);
        assert_eq!(r.bits_per_second, 56_000.0);
        assert_eq!(r.streams, 2);
        assert_eq!(r.rate, Some(6.0));
        assert_eq!(r.histogram, None);
    }

    #[test]
    fn rates_are_checked_against_the_workload() {
        assert_eq!(check_rate(Workload::Tcp, None), Ok(()));
        assert_eq!(check_rate(Workload::Udp, Some(1e5)), Ok(()));
        assert_eq!(check_rate(Workload::Rr, Some(2000.0)), Ok(()));
        assert!(check_rate(Workload::Tcp, Some(1.0))
            .unwrap_err()
            .contains("tcp"));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 2e9] {
            let err = check_rate(Workload::Udp, Some(bad)).unwrap_err();
            assert!(err.contains("rate must be"), "{bad}: {err}");
        }
    }

    #[test]
    fn pace_spreads_packets_evenly_from_its_start() {
        let t0 = Instant::now();
        let pace = Pace {
            start: t0,
            per_second: 1000.0,
        };
        let ms = |n: u64| t0 + Duration::from_millis(n);

        assert_eq!(pace.due_by(t0), 1);
        assert_eq!(pace.due_by(ms(10)), 11);
        assert_eq!(pace.due_at(10), ms(10));
        // Before its start nothing is due.
        let later = Pace {
            start: ms(5),
            ..pace
        };
        assert_eq!(later.due_by(t0), 0);
    }

    #[test]
    fn a_sender_behind_its_pace_catches_up_a_backlog_and_skips_beyond_it() {
        let t0 = Instant::now();
        let pace = Pace {
            start: t0,
            per_second: 1000.0,
        };
        let batch =
            |next, ms, backlog| pace.batch(next, t0 + Duration::from_millis(ms), 64, backlog);

        // On time: packets 5..=10 are due at 10 ms.
        assert_eq!(batch(5, 10, 512), PacedBatch { count: 6, first: 5 });
        // Nothing due yet: wait for packet 11.
        assert_eq!(
            batch(11, 10, 512),
            PacedBatch {
                count: 0,
                first: 11
            }
        );
        // 190 behind at 200 ms: within the backlog, so a full batch now and more after.
        assert_eq!(
            batch(11, 200, 512),
            PacedBatch {
                count: 64,
                first: 11
            }
        );
        // 990 behind at 1 s: the oldest 478 are skipped, the last 512 go, 64 at a time.
        assert_eq!(
            batch(11, 1000, 512),
            PacedBatch {
                count: 64,
                first: 489
            }
        );
    }

    #[test]
    fn assemble_rr_uses_client_window() {
        let latency = Latency {
            p50_us: 1.0,
            p90_us: 2.0,
            p99_us: 3.0,
            p999_us: 4.0,
            mean_us: 1.5,
            samples: 100,
        };
        let side = ClientSide {
            packets_sent: 100,
            seconds: 0.5,
            latency: Some(latency.clone()),
            histogram: Some(LatencyHistogram {
                significant_figures: 3,
                highest_ns: 1000,
                buckets: vec![[500, 100]],
            }),
            ..ClientSide::default()
        };
        let counted = Counted {
            bytes: 0,
            packets: 0,
            seconds: 9.0,
        };
        let r = assemble(&args(Workload::Rr), &counted, &side);

        assert_eq!(r.packets_per_second, 200.0);
        assert_eq!(r.bytes_received, 140_000);
        assert_eq!(r.streams, 1);
        assert_eq!(r.latency, Some(latency));
        assert_eq!(r.histogram.map(|h| h.samples()), Some(100));
    }

    #[test]
    fn empty_window_gives_zero_rates() {
        let counted = Counted {
            bytes: 0,
            packets: 0,
            seconds: 0.0,
        };
        let r = assemble(&args(Workload::Tcp), &counted, &ClientSide::default());

        assert_eq!((r.bits_per_second, r.packets_per_second), (0.0, 0.0));
    }
}
