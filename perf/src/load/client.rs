//! The client: a control connection that frames the test, and the workload's traffic
//! (bulk streams, UDP sender threads, or one request/response connection).

use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::conn::{is_timeout, LineConn};
use super::histogram::{self, LatencyHistogram};
use super::proto::{
    self, ClientSide, Counted, Pace, Phase, Reply, Request, Spec, TestId, UdpHeader, Window,
};
use super::sys::{self, MAX_BATCH};
use super::{ClientArgs, LoadError, LoadResult, Workload};

/// How long connecting to the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the server may take to answer a control line.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server may take to answer one rr request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes per write on a bulk stream.
const BULK_WRITE: usize = 128 * 1024;
/// How long one bulk write may block before the deadline is checked again.
const WRITE_POLL: Duration = Duration::from_millis(100);
/// Send buffer asked for on each UDP sender socket.
const UDP_SNDBUF: usize = 4 << 20;
/// How far a paced UDP sender may fall behind its schedule and still catch up, in packets:
/// 16 batches, some milliseconds at the rates a machine sends, so that being descheduled for
/// a moment does not lower the rate offered.
const PACE_BACKLOG: u64 = 16 * MAX_BATCH as u64;
/// Longest round trip the histogram tells apart from longer ones (60 s, in ns).
const MAX_TRACKED_NS: u64 = 60_000_000_000;

/// Runs one test; see [`super::client`].
pub(super) fn run(args: &ClientArgs) -> Result<LoadResult, LoadError> {
    let spec = Spec::from_args(args, TestId::random());
    spec.validate().map_err(LoadError::InvalidArgs)?;
    proto::check_rate(args.workload, args.rate).map_err(LoadError::InvalidArgs)?;
    let server = SocketAddrV4::new(args.server, args.port);
    let mut control = connect(server)?;
    control
        .send(&Request::Start(spec.clone()))
        .map_err(|source| io_err(format!("send start to server {server}"), source))?;
    expect_ready(&mut control, server, "start")?;
    let started = Instant::now();
    let window = spec.window(started);
    // Traffic is paced from the start of the warm-up, so the path is at the rate when
    // counting starts.
    let pace = |per_second: f64| Pace {
        start: started,
        per_second,
    };
    let side = match (spec.workload, args.rate) {
        (Workload::Tcp, _) => run_tcp(server, &spec, window)?,
        (Workload::Udp, rate) => {
            let per_thread = rate.map(|r| pace(r / spec.streams as f64));
            run_udp(server, &spec, window, per_thread)?
        }
        (Workload::Rr, None) => run_rr(server, &spec, window)?,
        (Workload::Rr, Some(rate)) => run_rr_paced(server, &spec, window, pace(rate))?,
    };
    control
        .send(&Request::Done)
        .map_err(|source| io_err(format!("send done to server {server}"), source))?;
    let counted = expect_counted(&mut control, server)?;
    Ok(proto::assemble(args, &counted, &side))
}

fn io_err(what: String, source: io::Error) -> LoadError {
    LoadError::Io { what, source }
}

fn connect(server: SocketAddrV4) -> Result<LineConn, LoadError> {
    let connect_err = |source| LoadError::Connect {
        addr: server,
        source,
    };
    let stream = TcpStream::connect_timeout(&SocketAddr::V4(server), CONNECT_TIMEOUT)
        .map_err(connect_err)?;
    LineConn::new(stream).map_err(connect_err)
}

fn recv_reply(conn: &mut LineConn, server: SocketAddrV4, after: &str) -> Result<Reply, LoadError> {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    match conn.recv_line(deadline, &|| false) {
        Ok(Some(line)) => proto::parse_reply(&line).map_err(|detail| LoadError::Protocol {
            peer: server,
            detail,
        }),
        Ok(None) => Err(LoadError::Protocol {
            peer: server,
            detail: format!("connection closed instead of an answer to {after}"),
        }),
        Err(source) => Err(io_err(
            format!("read the answer to {after} from server {server}"),
            source,
        )),
    }
}

fn expect_ready(conn: &mut LineConn, server: SocketAddrV4, after: &str) -> Result<(), LoadError> {
    match recv_reply(conn, server, after)? {
        Reply::Ready => Ok(()),
        Reply::Error { message } => Err(LoadError::Refused {
            addr: server,
            message,
        }),
        Reply::Counted(_) => Err(LoadError::Protocol {
            peer: server,
            detail: format!("counted instead of ready after {after}"),
        }),
    }
}

fn expect_counted(conn: &mut LineConn, server: SocketAddrV4) -> Result<Counted, LoadError> {
    match recv_reply(conn, server, "done")? {
        Reply::Counted(counted) => Ok(counted),
        Reply::Error { message } => Err(LoadError::Refused {
            addr: server,
            message,
        }),
        Reply::Ready => Err(LoadError::Protocol {
            peer: server,
            detail: "ready instead of counted after done".into(),
        }),
    }
}

/// Opens data connection `index` of the test and waits for the server to accept it.
fn open_stream(
    server: SocketAddrV4,
    test: TestId,
    index: usize,
    nodelay: bool,
) -> Result<LineConn, LoadError> {
    let mut conn = connect(server)?;
    if nodelay {
        conn.stream
            .set_nodelay(true)
            .map_err(|source| io_err("set TCP_NODELAY".into(), source))?;
    }
    conn.send(&Request::Stream { test, index })
        .map_err(|source| io_err(format!("open stream {index} to server {server}"), source))?;
    expect_ready(&mut conn, server, &format!("stream {index}"))?;
    Ok(conn)
}

/// Joins worker threads, returning the first error (a panic becomes one too).
fn join_all<T>(
    handles: Vec<thread::ScopedJoinHandle<'_, Result<T, LoadError>>>,
    what: &str,
) -> Result<Vec<T>, LoadError> {
    let mut out = Vec::with_capacity(handles.len());
    let mut first_err = None;
    for handle in handles {
        match handle.join() {
            Ok(Ok(v)) => out.push(v),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(LoadError::Panicked(what.to_owned()));
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

fn run_tcp(server: SocketAddrV4, spec: &Spec, window: Window) -> Result<ClientSide, LoadError> {
    thread::scope(|s| {
        let handles = (0..spec.streams)
            .map(|index| s.spawn(move || bulk_stream(server, spec.test, index, window.end)))
            .collect();
        join_all(handles, "bulk stream")
    })?;
    Ok(ClientSide::default())
}

/// Writes as fast as the connection takes until `end`, then closes it.
fn bulk_stream(
    server: SocketAddrV4,
    test: TestId,
    index: usize,
    end: Instant,
) -> Result<(), LoadError> {
    let conn = open_stream(server, test, index, false)?;
    let mut stream = conn.stream;
    stream
        .set_write_timeout(Some(WRITE_POLL))
        .map_err(|source| io_err("set a write timeout".into(), source))?;
    let buf = vec![0u8; BULK_WRITE];
    while Instant::now() < end {
        match stream.write(&buf) {
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(source) => {
                return Err(io_err(
                    format!("send stream {index} to server {server}"),
                    source,
                ))
            }
        }
    }
    // The server counts until end of stream; shutting down (rather than a reset) lets it
    // read what is still in flight.
    let _ = stream.shutdown(Shutdown::Write);
    Ok(())
}

fn run_udp(
    server: SocketAddrV4,
    spec: &Spec,
    window: Window,
    pace: Option<Pace>,
) -> Result<ClientSide, LoadError> {
    let sides = thread::scope(|s| {
        let handles = (0..spec.streams)
            .map(|index| s.spawn(move || udp_sender(server, spec, index, window, pace)))
            .collect();
        join_all(handles, "UDP sender")
    })?;
    Ok(sides
        .into_iter()
        .fold(ClientSide::default(), |a, b| ClientSide {
            packets_sent: a.packets_sent + b.packets_sent,
            send_errors: a.send_errors + b.send_errors,
            ..ClientSide::default()
        }))
}

/// Sends `size`-byte datagrams in batches until the window ends, as fast as the socket takes
/// them or at `pace`; counts those the kernel took inside the window.
fn udp_sender(
    server: SocketAddrV4,
    spec: &Spec,
    index: usize,
    window: Window,
    pace: Option<Pace>,
) -> Result<ClientSide, LoadError> {
    let local = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
    let sock = UdpSocket::bind(local).map_err(|source| LoadError::Bind {
        what: "UDP",
        addr: local,
        source,
    })?;
    sock.connect(server).map_err(|source| LoadError::Connect {
        addr: server,
        source,
    })?;
    // A smaller buffer only means more blocking in sendmmsg.
    let _ = sys::set_buffer(&sock, sys::Buffer::Send, UDP_SNDBUF);
    if pace.is_some() {
        precise_sleeps();
    }
    let mut bufs = vec![vec![0u8; spec.size]; MAX_BATCH];
    let stream = u16::try_from(index).unwrap_or(u16::MAX);
    let mut seq = 0u64;
    // The pace's schedule index of the next packet (paced senders only).
    let mut next = 0u64;
    let mut side = ClientSide::default();
    loop {
        let now = Instant::now();
        if now >= window.end {
            break;
        }
        let count = match pace {
            None => MAX_BATCH,
            Some(pace) => {
                let batch = pace.batch(next, now, MAX_BATCH as u64, PACE_BACKLOG);
                next = batch.first;
                if batch.count == 0 {
                    thread::sleep(
                        pace.due_at(next)
                            .min(window.end)
                            .saturating_duration_since(now),
                    );
                    continue;
                }
                usize::try_from(batch.count).unwrap_or(MAX_BATCH)
            }
        };
        let phase = if now < window.start {
            Phase::Warmup
        } else {
            Phase::Counted
        };
        for (i, buf) in bufs[..count].iter_mut().enumerate() {
            let header = UdpHeader {
                test: spec.test,
                stream,
                phase,
                seq: seq + i as u64,
            };
            header.emit(buf);
        }
        match sys::send_batch(&sock, &bufs[..count]) {
            Ok(n) => {
                seq += n as u64;
                next += n as u64;
                if phase == Phase::Counted {
                    side.packets_sent += n as u64;
                }
            }
            Err(e) if is_transient_send_error(&e) => side.send_errors += 1,
            Err(source) => {
                return Err(io_err(
                    format!("send UDP to server {server} (thread {index})"),
                    source,
                ))
            }
        }
    }
    Ok(side)
}

/// Send errors that say "not now" (full queues, a stale ICMP error, a route or filter that
/// drops for a moment) rather than "never": the sender counts them and goes on.
fn is_transient_send_error(e: &io::Error) -> bool {
    is_timeout(e)
        || matches!(
            e.raw_os_error(),
            Some(
                libc::ENOBUFS
                    | libc::ECONNREFUSED
                    | libc::EAGAIN
                    | libc::ENETUNREACH
                    | libc::EHOSTUNREACH
                    | libc::EPERM
            )
        )
}

fn run_rr(server: SocketAddrV4, spec: &Spec, window: Window) -> Result<ClientSide, LoadError> {
    let mut conn = open_stream(server, spec.test, 0, true)?;
    conn.stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(|source| io_err("set a read timeout".into(), source))?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, MAX_TRACKED_NS, 3)
        .map_err(|e| LoadError::Histogram(e.to_string()))?;
    let request: Vec<u8> = (0..spec.size).map(|i| i as u8).collect();
    let mut answer = vec![0u8; spec.size];
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    loop {
        let start = Instant::now();
        if start >= window.end {
            break;
        }
        conn.stream
            .write_all(&request)
            .map_err(|source| io_err(format!("send request to server {server}"), source))?;
        conn.reader
            .read_exact(&mut answer)
            .map_err(|source| io_err(format!("read answer from server {server}"), source))?;
        let end = Instant::now();
        if answer != request {
            return Err(LoadError::Protocol {
                peer: server,
                detail: "the answer differs from the request".into(),
            });
        }
        if start >= window.start {
            let ns = u64::try_from(end.duration_since(start).as_nanos()).unwrap_or(u64::MAX);
            hist.saturating_record(ns.max(1));
            first.get_or_insert(start);
            last = end;
        }
    }
    let _ = conn.stream.shutdown(Shutdown::Write);
    let samples = hist.len();
    Ok(ClientSide {
        packets_sent: samples,
        send_errors: 0,
        seconds: first.map_or(0.0, |f| last.duration_since(f).as_secs_f64()),
        latency: Some(histogram::latency_of(&hist)),
        histogram: Some(LatencyHistogram::from_histogram(&hist)),
    })
}

/// Open-loop request/response: request `i` goes out at `pace.due_at(i)` whether or not the
/// answers before it came back, on a sending thread, while this thread reads the answers
/// (in order: one TCP connection) and times answer `i` from request `i`'s scheduled send
/// time. A path (or sender) that stalls for a while delays every request scheduled during
/// the stall, and each of them counts the delay: no coordinated omission. Requests
/// scheduled inside the counted window are counted; its nominal length is the window.
fn run_rr_paced(
    server: SocketAddrV4,
    spec: &Spec,
    window: Window,
    pace: Pace,
) -> Result<ClientSide, LoadError> {
    let conn = open_stream(server, spec.test, 0, true)?;
    conn.stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(|source| io_err("set a read timeout".into(), source))?;
    let writer = conn
        .stream
        .try_clone()
        .map_err(|source| io_err("clone the request connection".into(), source))?;
    let LineConn { mut reader, stream } = conn;
    let mut hist = Histogram::<u64>::new_with_bounds(1, MAX_TRACKED_NS, 3)
        .map_err(|e| LoadError::Histogram(e.to_string()))?;
    let request: Vec<u8> = (0..spec.size).map(|i| i as u8).collect();
    let (sent, answered) = thread::scope(|s| {
        let sender = s.spawn(|| send_on_schedule(writer, &request, pace, window.end, server));
        let answered = read_answers(&mut reader, &request, pace, window, &mut hist, server);
        if answered.is_err() {
            // Unblocks a sender stuck in a write to a server that stopped reading.
            let _ = stream.shutdown(Shutdown::Both);
        }
        let sent = sender
            .join()
            .map_err(|_| LoadError::Panicked("request sender".into()))?;
        Ok::<_, LoadError>((sent, answered))
    })?;
    let sent = sent?;
    let answered = answered?;
    if answered != sent {
        return Err(LoadError::Protocol {
            peer: server,
            detail: format!("{answered} answers to {sent} requests"),
        });
    }
    Ok(ClientSide {
        packets_sent: hist.len(),
        send_errors: 0,
        seconds: spec.seconds,
        latency: Some(histogram::latency_of(&hist)),
        histogram: Some(LatencyHistogram::from_histogram(&hist)),
    })
}

/// Writes request `i` at `pace.due_at(i)` (at once when late) until the schedule reaches
/// `end`, then ends the stream; returns how many went out.
fn send_on_schedule(
    mut writer: TcpStream,
    request: &[u8],
    pace: Pace,
    end: Instant,
    server: SocketAddrV4,
) -> Result<u64, LoadError> {
    precise_sleeps();
    let mut sent = 0u64;
    loop {
        let due = pace.due_at(sent);
        if due >= end {
            break;
        }
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        writer
            .write_all(request)
            .map_err(|source| io_err(format!("send request to server {server}"), source))?;
        sent += 1;
    }
    // The server echoes what is in flight, then closes: the reader's end of stream.
    let _ = writer.shutdown(Shutdown::Write);
    Ok(sent)
}

/// Reads answers until the server closes, recording each counted one's delay from its
/// request's scheduled send time; returns how many came.
fn read_answers(
    reader: &mut std::io::BufReader<TcpStream>,
    request: &[u8],
    pace: Pace,
    window: Window,
    hist: &mut Histogram<u64>,
    server: SocketAddrV4,
) -> Result<u64, LoadError> {
    let mut answer = vec![0u8; request.len()];
    let mut answered = 0u64;
    loop {
        match read_answer(reader, &mut answer) {
            Ok(true) => {}
            Ok(false) => return Ok(answered),
            Err(source) => {
                return Err(io_err(
                    format!("read answer {answered} from server {server}"),
                    source,
                ))
            }
        }
        let end = Instant::now();
        if answer != request {
            return Err(LoadError::Protocol {
                peer: server,
                detail: "the answer differs from the request".into(),
            });
        }
        let scheduled = pace.due_at(answered);
        if window.contains(scheduled) {
            let ns = u64::try_from(end.saturating_duration_since(scheduled).as_nanos())
                .unwrap_or(u64::MAX);
            hist.saturating_record(ns.max(1));
        }
        answered += 1;
    }
}

/// Fills `buf` with one answer; `Ok(false)` at a clean end of stream before its first byte.
fn read_answer(reader: &mut impl io::Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Asks for the calling thread's sleeps to end on time: a paced sender's schedule is only as
/// good as its wake-ups, which the default 50 µs timer slack would make late (best effort).
fn precise_sleeps() {
    let _ = sys::set_timer_slack(Duration::from_nanos(1));
}
