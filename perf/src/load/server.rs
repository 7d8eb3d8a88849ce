//! The server: one acceptor, one thread per TCP connection (control, bulk stream or rr echo),
//! one UDP receiver; every thread checks the stop flag at least every [`POLL`].

use std::collections::HashMap;
use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::conn::{is_timeout, LineConn, POLL};
use super::proto::{self, Counted, Phase, Reply, Request, Spec, TestId, UdpHeader, Window};
use super::sys::{self, MAX_BATCH, PEEK_LEN};
use super::{LoadError, ServerArgs, Workload};

/// How long a new connection has to send its first line.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after its window a test's control connection may take to say `done`.
const DONE_GRACE: Duration = Duration::from_secs(30);
/// A data connection silent this long is given up (its client vanished without closing).
const IDLE_LIMIT: Duration = Duration::from_secs(30);
/// After `done`, how long the server waits for bulk streams to reach end of stream.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// After `done`, a UDP test is over once none of its packets arrived for this long...
const UDP_QUIET: Duration = Duration::from_millis(50);
/// ...or this long has passed.
const UDP_DRAIN_LIMIT: Duration = Duration::from_secs(1);
/// Receive buffer asked for on the UDP socket, so bursts are not dropped by the socket.
const UDP_RCVBUF: usize = 16 << 20;
/// Read size of a bulk stream.
const BULK_READ: usize = 128 * 1024;
/// How often the server tries for a UDP port equal to an ephemeral TCP port.
const EPHEMERAL_TRIES: usize = 20;

/// A bound server, so a caller can learn the port (e.g. after binding port 0) before
/// running it.
#[derive(Debug)]
pub struct Server {
    tcp: TcpListener,
    udp: UdpSocket,
    addr: SocketAddrV4,
}

impl Server {
    /// Binds TCP and UDP on `args.bind:args.port`; port 0 picks a free port that is free for
    /// both.
    pub fn bind(args: &ServerArgs) -> Result<Server, LoadError> {
        let want = SocketAddrV4::new(args.bind, args.port);
        let tries = if args.port == 0 { EPHEMERAL_TRIES } else { 1 };
        let mut last_err = None;
        for _ in 0..tries {
            let tcp = TcpListener::bind(want).map_err(|source| LoadError::Bind {
                what: "TCP",
                addr: want,
                source,
            })?;
            let port = tcp
                .local_addr()
                .map_err(|source| LoadError::Bind {
                    what: "TCP",
                    addr: want,
                    source,
                })?
                .port();
            let addr = SocketAddrV4::new(args.bind, port);
            match UdpSocket::bind(addr) {
                Ok(udp) => return Ok(Server { tcp, udp, addr }),
                Err(source) => {
                    last_err = Some(LoadError::Bind {
                        what: "UDP",
                        addr,
                        source,
                    })
                }
            }
        }
        Err(last_err.unwrap_or(LoadError::Bind {
            what: "UDP",
            addr: want,
            source: io::Error::from(io::ErrorKind::AddrInUse),
        }))
    }

    /// The address the server listens on (TCP and UDP).
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// Serves tests until `cancel` is set; returns once every thread has finished (within a
    /// few hundred milliseconds of `cancel`).
    pub fn run(self, cancel: &AtomicBool) -> Result<(), LoadError> {
        self.tcp
            .set_nonblocking(true)
            .map_err(|source| LoadError::Io {
                what: format!("make TCP listener {} non-blocking", self.addr),
                source,
            })?;
        self.udp
            .set_read_timeout(Some(POLL))
            .map_err(|source| LoadError::Io {
                what: format!("set a timeout on UDP socket {}", self.addr),
                source,
            })?;
        // A small buffer only costs drops under load, so failure here is not fatal.
        let _ = sys::set_buffer(&self.udp, sys::Buffer::Receive, UDP_RCVBUF);
        let registry = Registry::default();
        let stop = Stop {
            outer: cancel,
            inner: AtomicBool::new(false),
        };
        thread::scope(|s| {
            s.spawn(|| receive_udp(&self.udp, &registry, &stop));
            let result = accept_loop(s, &self.tcp, &registry, &stop);
            stop.inner.store(true, Ordering::Relaxed);
            result
        })
    }
}

/// The caller's cancel flag, or the server's own when it must wind down by itself.
struct Stop<'a> {
    outer: &'a AtomicBool,
    inner: AtomicBool,
}

impl Stop<'_> {
    fn is_set(&self) -> bool {
        self.outer.load(Ordering::Relaxed) || self.inner.load(Ordering::Relaxed)
    }
}

/// The tests in progress, by id.
#[derive(Default)]
struct Registry {
    tests: Mutex<HashMap<TestId, Arc<Test>>>,
}

impl Registry {
    fn insert(&self, test: Arc<Test>) -> bool {
        let mut tests = self.tests.lock().unwrap_or_else(|e| e.into_inner());
        if tests.contains_key(&test.spec.test) {
            return false;
        }
        tests.insert(test.spec.test, test);
        true
    }

    fn get(&self, id: TestId) -> Option<Arc<Test>> {
        let tests = self.tests.lock().unwrap_or_else(|e| e.into_inner());
        tests.get(&id).cloned()
    }

    fn remove(&self, id: TestId) {
        let mut tests = self.tests.lock().unwrap_or_else(|e| e.into_inner());
        tests.remove(&id);
    }
}

/// One test's counters, shared by its control, data and UDP threads.
struct Test {
    spec: Spec,
    /// When the server said `ready`; UDP arrival times are nanoseconds after it.
    created: Instant,
    /// The server's counted window (tcp, rr).
    window: Window,
    bytes: AtomicU64,
    packets: AtomicU64,
    /// Last arrival of any UDP packet of the test, ns after `created`.
    activity_ns: AtomicU64,
    /// Which stream indices have connected.
    claimed: Mutex<Vec<bool>>,
    /// Data connections still open.
    open_streams: AtomicUsize,
}

impl Test {
    fn new(spec: Spec, now: Instant) -> Test {
        Test {
            window: spec.window(now),
            claimed: Mutex::new(vec![false; spec.streams]),
            spec,
            created: now,
            bytes: AtomicU64::new(0),
            packets: AtomicU64::new(0),
            activity_ns: AtomicU64::new(0),
            open_streams: AtomicUsize::new(0),
        }
    }

    fn since_created(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.created).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Claims a stream index; the message says why not.
    fn claim(&self, index: usize) -> Result<(), String> {
        let mut claimed = self.claimed.lock().unwrap_or_else(|e| e.into_inner());
        match claimed.get_mut(index) {
            None => Err(format!(
                "stream {index} is beyond the test's {} streams",
                self.spec.streams
            )),
            Some(true) => Err(format!("stream {index} already connected")),
            Some(slot) => {
                *slot = true;
                Ok(())
            }
        }
    }
}

/// Removes a test from the registry however its control thread ends.
struct Unregister<'a> {
    registry: &'a Registry,
    id: TestId,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.registry.remove(self.id);
    }
}

/// Counts a data connection as open while it lives.
struct OpenStream<'a>(&'a Test);

impl Drop for OpenStream<'_> {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::AcqRel);
    }
}

fn accept_loop<'scope>(
    s: &'scope thread::Scope<'scope, '_>,
    listener: &TcpListener,
    registry: &'scope Registry,
    stop: &'scope Stop<'_>,
) -> Result<(), LoadError> {
    while !stop.is_set() {
        match sys::wait_readable(listener, POLL) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) if is_timeout(&e) => continue,
            Err(source) => {
                return Err(LoadError::Io {
                    what: "wait for connections".into(),
                    source,
                })
            }
        }
        match listener.accept() {
            Ok((stream, _)) => {
                s.spawn(move || serve_connection(stream, registry, stop));
            }
            // Transient (the peer gave up, out of descriptors for a moment): keep serving.
            Err(e) if is_timeout(&e) => {}
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
    Ok(())
}

/// Reads a connection's first line and runs it as a control or data connection. Failures end
/// only this connection: the client gets an `error` line when it can still read one.
fn serve_connection(stream: TcpStream, registry: &Registry, stop: &Stop<'_>) {
    // Accepted sockets do not inherit the listener's O_NONBLOCK on Linux, but make sure.
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let Ok(mut conn) = LineConn::new(stream) else {
        return;
    };
    let deadline = Instant::now() + HELLO_TIMEOUT;
    let line = match conn.recv_line(deadline, &|| stop.is_set()) {
        Ok(Some(line)) => line,
        Ok(None) => return,
        Err(e) => {
            refuse(&mut conn, format!("bad control line: {e}"));
            return;
        }
    };
    match proto::parse_request(&line) {
        Ok(Request::Start(spec)) => run_control(conn, spec, registry, stop),
        Ok(Request::Stream { test, index }) => run_stream(conn, test, index, registry, stop),
        Ok(Request::Done) => refuse(&mut conn, "done before start".into()),
        Err(message) => refuse(&mut conn, message),
    }
}

fn refuse(conn: &mut LineConn, message: String) {
    let _ = conn.send(&Reply::Error { message });
}

fn run_control(mut conn: LineConn, spec: Spec, registry: &Registry, stop: &Stop<'_>) {
    if let Err(message) = spec.validate() {
        refuse(&mut conn, message);
        return;
    }
    let id = spec.test;
    let test = Arc::new(Test::new(spec, Instant::now()));
    if !registry.insert(Arc::clone(&test)) {
        refuse(&mut conn, format!("test {id} is already running"));
        return;
    }
    let _unregister = Unregister { registry, id };
    if conn.send(&Reply::Ready).is_err() {
        return;
    }
    let deadline = test.window.end + DONE_GRACE;
    // A client that vanishes mid-test ends here (end of stream, reset or deadline).
    let Ok(Some(line)) = conn.recv_line(deadline, &|| stop.is_set()) else {
        return;
    };
    match proto::parse_request(&line) {
        Ok(Request::Done) => {}
        Ok(other) => {
            refuse(&mut conn, format!("expected done, got {}", other.name()));
            return;
        }
        Err(message) => {
            refuse(&mut conn, message);
            return;
        }
    }
    let counted = finish(&test, stop);
    let _ = conn.send(&Reply::Counted(counted));
}

/// Waits for the test's traffic to drain and reads its counts.
fn finish(test: &Test, stop: &Stop<'_>) -> Counted {
    let done_at = Instant::now();
    match test.spec.workload {
        Workload::Tcp | Workload::Rr => {
            // The client closes its data connections before `done`; their last bytes are
            // read once each reaches end of stream.
            let limit = done_at + DRAIN_LIMIT;
            while test.open_streams.load(Ordering::Acquire) > 0
                && Instant::now() < limit
                && !stop.is_set()
            {
                thread::sleep(Duration::from_millis(2));
            }
            Counted {
                bytes: test.bytes.load(Ordering::Acquire),
                packets: test.packets.load(Ordering::Acquire),
                seconds: test.window.seconds_until(done_at),
            }
        }
        Workload::Udp => {
            let limit = done_at + UDP_DRAIN_LIMIT;
            loop {
                let now = Instant::now();
                let quiet_since =
                    test.created + Duration::from_nanos(test.activity_ns.load(Ordering::Acquire));
                if now.saturating_duration_since(quiet_since) >= UDP_QUIET
                    || now >= limit
                    || stop.is_set()
                {
                    break;
                }
                thread::sleep(Duration::from_millis(5));
            }
            // Every packet the client sent inside its window counts, whenever it arrives, so
            // the counts cover the client's nominal window.
            Counted {
                bytes: test.bytes.load(Ordering::Acquire),
                packets: test.packets.load(Ordering::Acquire),
                seconds: test.spec.seconds,
            }
        }
    }
}

fn run_stream(mut conn: LineConn, id: TestId, index: usize, registry: &Registry, stop: &Stop<'_>) {
    let Some(test) = registry.get(id) else {
        refuse(&mut conn, format!("unknown test {id}"));
        return;
    };
    if let Err(message) = test.claim(index) {
        refuse(&mut conn, message);
        return;
    }
    test.open_streams.fetch_add(1, Ordering::AcqRel);
    let _open = OpenStream(&test);
    match test.spec.workload {
        Workload::Tcp => {
            if conn.send(&Reply::Ready).is_ok() {
                count_bulk(conn, &test, stop);
            }
        }
        Workload::Rr => {
            let _ = conn.stream.set_nodelay(true);
            let _ = conn.stream.set_write_timeout(Some(IDLE_LIMIT));
            if conn.send(&Reply::Ready).is_ok() {
                echo(conn, &test, stop);
            }
        }
        Workload::Udp => refuse(&mut conn, format!("test {id} is udp; it has no streams")),
    }
}

/// Reads a bulk stream to its end, counting bytes read inside the window.
fn count_bulk(mut conn: LineConn, test: &Test, stop: &Stop<'_>) {
    let mut buf = vec![0u8; BULK_READ];
    let mut last_data = Instant::now();
    while !stop.is_set() {
        match conn.reader.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                last_data = Instant::now();
                if test.window.contains(last_data) {
                    test.bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            Err(e) if is_timeout(&e) => {
                if last_data.elapsed() > IDLE_LIMIT {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// Answers each `size`-byte request with its bytes, counting requests inside the window.
fn echo(mut conn: LineConn, test: &Test, stop: &Stop<'_>) {
    let mut buf = vec![0u8; test.spec.size];
    // A busy connection never times out, so the stop flag is checked every request.
    while !stop.is_set() {
        match read_full(&mut conn, &mut buf, stop) {
            Ok(true) => {}
            Ok(false) | Err(_) => return,
        }
        if test.window.contains(Instant::now()) {
            test.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
            test.packets.fetch_add(1, Ordering::Relaxed);
        }
        if conn.stream.write_all(&buf).is_err() {
            return;
        }
    }
}

/// Fills `buf`; `Ok(false)` on a clean end of stream before the first byte.
fn read_full(conn: &mut LineConn, buf: &mut [u8], stop: &Stop<'_>) -> io::Result<bool> {
    let mut filled = 0;
    let mut last_data = Instant::now();
    while filled < buf.len() {
        match conn.reader.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                filled += n;
                last_data = Instant::now();
            }
            Err(e) if is_timeout(&e) => {
                if stop.is_set() || last_data.elapsed() > IDLE_LIMIT {
                    return Err(io::ErrorKind::TimedOut.into());
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Counts the UDP packets of every running test until the server stops.
fn receive_udp(sock: &UdpSocket, registry: &Registry, stop: &Stop<'_>) {
    let mut bufs = [[0u8; PEEK_LEN]; MAX_BATCH];
    let mut lens = [0usize; MAX_BATCH];
    while !stop.is_set() {
        match sys::recv_batch(sock, &mut bufs, &mut lens) {
            Ok(n) => account_udp(&bufs[..n], &lens[..n], registry, Instant::now()),
            Err(e) if is_timeout(&e) => {}
            // Nothing a receive socket reports is worth ending the server for; avoid spinning.
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Adds one received batch to the tests it belongs to; foreign packets are ignored.
fn account_udp(bufs: &[[u8; PEEK_LEN]], lens: &[usize], registry: &Registry, now: Instant) {
    // Consecutive packets nearly always belong to the same test: look it up once per run.
    let mut current: Option<(TestId, Option<Arc<Test>>)> = None;
    let mut tally = Tally::default();
    for (buf, &len) in bufs.iter().zip(lens) {
        let Some(header) = UdpHeader::parse(&buf[..len.min(PEEK_LEN)]) else {
            continue;
        };
        if current.as_ref().map(|(id, _)| *id) != Some(header.test) {
            if let Some((_, test)) = current.take() {
                tally.flush(test.as_deref(), now);
            }
            current = Some((header.test, registry.get(header.test)));
        }
        tally.any = true;
        match header.phase {
            Phase::Warmup => {}
            Phase::Counted => {
                tally.packets += 1;
                tally.bytes += len as u64;
            }
        }
    }
    if let Some((_, test)) = current {
        tally.flush(test.as_deref(), now);
    }
}

#[derive(Default)]
struct Tally {
    any: bool,
    packets: u64,
    bytes: u64,
}

impl Tally {
    fn flush(&mut self, test: Option<&Test>, now: Instant) {
        let tally = std::mem::take(self);
        let Some(test) = test.filter(|t| t.spec.workload == Workload::Udp) else {
            return;
        };
        if !tally.any {
            return;
        }
        let at = test.since_created(now);
        test.activity_ns.fetch_max(at, Ordering::AcqRel);
        if tally.packets > 0 {
            test.packets.fetch_add(tally.packets, Ordering::Relaxed);
            test.bytes.fetch_add(tally.bytes, Ordering::Relaxed);
        }
    }
}
