//! The readiness backend: one thread per worker waiting with `poll(2)` on its TAP queue
//! and UDP socket, reading in batches, sending with UDP GSO and receiving with UDP GRO.
//! Used where io_uring is refused (seccomp profiles, old kernels), asked for with
//! `--dataplane epoll`, or for a worker whose io_uring kept failing.
//!
//! Failures mirror the io_uring backend's: an input whose reads fail (a deleted TAP answers
//! `EBADFD` and polls as an error for ever) leaves the poll set for a wait that doubles from
//! 1 ms to 1 s, and after too many failures in a row the worker gives up and the supervisor
//! restarts it. The sockets are non-blocking, so a full send buffer drops the send (counted).
#![allow(unsafe_code)]

use std::io::{self, IoSlice};
use std::net::UdpSocket;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::dataplane::busypoll::BusyPoll;
use crate::dataplane::engine::{Counters, Engine, Output, SendRun};
use crate::dataplane::worker::{
    busy_poll, forward_control, send_failure, transient_input_error, Backoff, IoCounters,
    SendFailure, ToWorker, WorkerError, WorkerIo,
};
use crate::mesh::sleeve::Udp;
use crate::sys::eventfd::Wake;
use crate::sys::socket::{recv_segments, send_segments, send_without_df};
use crate::sys::tap::TapQueue;

/// Reads or receives per readiness before the loop looks at its other inputs.
const BATCH: usize = 64;
/// How long an idle worker sleeps in `poll` before it publishes its counters and sweeps; a
/// message on its control channel wakes it at once (the wake eventfd).
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How often learned MACs are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Runs an epoll worker's loop until it is told to stop (`Ok`) or fails for good (the
/// caller, [`crate::dataplane::worker::start`], reports that to the supervisor).
pub(crate) fn run(engine: &mut Engine, io: &WorkerIo) -> Result<(), WorkerError> {
    let WorkerIo {
        tap,
        udp,
        own,
        rx,
        wake,
        control,
        limits,
    } = io;
    let mut out = engine.output();
    let mut tap_buf = vec![0u8; 65_536 + 64];
    let mut udp_buf = vec![0u8; 65_536];
    let mut tap_input = Paused::new("TAP read", limits.input_failures);
    let mut udp_input = Paused::new("UDP receive", limits.input_failures);
    let mut gso = [true; 2];
    let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
    let mut busy = BusyPoll::new(limits.busy_poll);
    loop {
        loop {
            match rx.try_recv() {
                Ok(ToWorker::Snapshot(s)) => engine.set_snapshot(s),
                Ok(ToWorker::Send(d)) => {
                    if let Some(d) = engine.seal_control(d) {
                        send_one(udp, &d, engine.counters());
                    }
                }
                Ok(ToWorker::Stop) | Err(mpsc::TryRecvError::Disconnected) => return Ok(()),
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        let now = Instant::now();
        let timeout = [tap_input.until, udp_input.until]
            .into_iter()
            .flatten()
            .map(|until| until.saturating_duration_since(now))
            .fold(POLL_INTERVAL, Duration::min);
        let tap_set = tap_input.ready(now).then_some(tap);
        let udp_set = udp_input.ready(now).then_some(udp);
        let ready = match busy.deadline(now) {
            None => wait(tap_set, udp_set, wake, timeout).map_err(WorkerError::Poll)?,
            Some(deadline) => poll(tap_set, udp_set, wake, deadline, timeout, engine.counters())?,
        };
        let (tap_ready, udp_ready) = (ready.tap, ready.udp);
        let now = Instant::now();
        if tap_ready || udp_ready {
            busy.worked(now);
        }
        if tap_ready {
            for _ in 0..BATCH {
                match tap.read(&mut tap_buf) {
                    Ok(n) => {
                        tap_input.delivered();
                        engine.from_tap(&tap_buf[..n], now, &mut out);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tap_input.failed(&e, now, &engine.counters().io)?;
                        break;
                    }
                }
            }
        }
        if udp_ready {
            for _ in 0..BATCH {
                match recv_segments(udp, &mut udp_buf) {
                    Ok(meta) => {
                        udp_input.delivered();
                        let c = engine.counters();
                        c.udp_rx_calls.fetch_add(1, Ordering::Relaxed);
                        let Some(from) = meta.source else { continue };
                        let data = &udp_buf[..meta.len];
                        let step = meta.segment_size.map_or(data.len(), usize::from).max(1);
                        for datagram in data.chunks(step) {
                            engine.from_udp(from, datagram, now, &mut out);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if transient_input_error(&e) => {
                        // ICMP errors from earlier sends surface here; they are not the
                        // socket's.
                        tracing::debug!("UDP receive: {e}");
                        break;
                    }
                    Err(e) => {
                        udp_input.failed(&e, now, &engine.counters().io)?;
                        break;
                    }
                }
            }
            engine.flush(&mut out);
        }
        flush(engine, tap, (udp, own.as_ref()), &mut gso, &mut out);
        forward_control(&mut out.control, control, &engine.counters().io);
        engine.publish();
        engine.share_macs();
        if now >= next_sweep {
            engine.sweep(now);
            next_sweep = now + SWEEP_INTERVAL;
        }
    }
}

/// An input taken out of the poll set for a while after its reads failed.
#[derive(Debug)]
struct Paused {
    name: &'static str,
    /// Back in the poll set from then on.
    until: Option<Instant>,
    backoff: Backoff,
}

impl Paused {
    fn new(name: &'static str, limit: u32) -> Self {
        Paused {
            name,
            until: None,
            backoff: Backoff::input(limit),
        }
    }

    /// Whether it is polled now.
    fn ready(&mut self, now: Instant) -> bool {
        if self.until.is_some_and(|until| until <= now) {
            self.until = None;
        }
        self.until.is_none()
    }

    fn delivered(&mut self) {
        self.backoff.succeed();
    }

    /// A read failed with `e` at `now`: pauses the input, or gives up.
    fn failed(&mut self, e: &io::Error, now: Instant, c: &IoCounters) -> Result<(), WorkerError> {
        let Some(after) = self.backoff.fail() else {
            return Err(WorkerError::Input {
                input: self.name,
                failures: self.backoff.failures(),
                last: e.to_string(),
            });
        };
        tracing::warn!("{} failed: {e}; polling it again in {after:?}", self.name);
        self.until = Some(now + after);
        IoCounters::add(&c.rearms, 1);
        Ok(())
    }
}

/// Performs what a batch produced: sends and TAP writes. `gso` says, per socket (the mesh
/// port's, the worker's own), whether the kernel still takes segmented sends from it.
fn flush(
    engine: &Engine,
    tap: &TapQueue,
    (udp, own): (&UdpSocket, Option<&UdpSocket>),
    gso: &mut [bool; 2],
    out: &mut Output,
) {
    let c = engine.counters();
    for run in out.send.runs() {
        let (sock, socket) = match own {
            Some(own) if run.spread => (own, 1),
            _ => (udp, 0),
        };
        send_run(sock, run, &mut gso[socket], c);
    }
    out.send.clear();
    for write in out.tap.iter() {
        match tap.write(write) {
            Ok(n) => {
                c.tap_tx_writes.fetch_add(1, Ordering::Relaxed);
                c.tap_tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => tracing::debug!("TAP write: {e}"),
        }
    }
    out.tap.clear();
}

/// Sends one run: segmented while the socket takes it (`gso`), else one datagram at a time.
fn send_run(sock: &UdpSocket, run: &SendRun, gso: &mut bool, c: &Counters) {
    if run.count > 1 && !*gso {
        for datagram in run.buf.chunks(run.segment.max(1)) {
            send_datagrams(sock, run, datagram, None, 1, c);
        }
        return;
    }
    let segment = (run.count > 1).then_some(run.segment as u16);
    let Some(e) = send_datagrams(sock, run, &run.buf, segment, run.count, c) else {
        return;
    };
    if std::mem::replace(gso, false) {
        tracing::warn!(
            "Data plane: the kernel refuses segmented (UDP GSO) sends to {} ({e}), as an \
             IPsec policy on the underlay does; this worker sends from that socket one \
             datagram at a time from now on",
            run.to
        );
    }
    IoCounters::add(&c.io.gso_fallbacks, 1);
    for datagram in run.buf.chunks(run.segment.max(1)) {
        send_datagrams(sock, run, datagram, None, 1, c);
    }
}

/// One `sendmsg` of `count` datagrams in `bytes` to `run.to`, counted. Returns the error
/// when the kernel refused to segment it, for the caller to send it again unsegmented; other
/// failures drop it here.
fn send_datagrams(
    sock: &UdpSocket,
    run: &SendRun,
    bytes: &[u8],
    segment: Option<u16>,
    count: usize,
    c: &Counters,
) -> Option<io::Error> {
    match send_segments(sock, &[IoSlice::new(bytes)], Some(run.to), segment) {
        Ok(n) => {
            c.udp_tx_calls.fetch_add(1, Ordering::Relaxed);
            c.udp_tx_datagrams
                .fetch_add(count as u64, Ordering::Relaxed);
            c.udp_tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
            None
        }
        Err(e) => match send_failure(&e, segment.is_some()) {
            SendFailure::GsoRefused => Some(e),
            SendFailure::BufferFull => {
                IoCounters::add(&c.io.send_dropped, count as u64);
                None
            }
            SendFailure::Other => {
                tracing::debug!("UDP send to {}: {e}", run.to);
                None
            }
        },
    }
}

/// Sends one control datagram; one without DF (the fragmentation test) is sent with the
/// socket's DF policy lifted for that send. A full send buffer drops it (counted).
pub fn send_one(udp: &UdpSocket, d: &Udp, c: &Counters) {
    let sent = if d.df {
        send_segments(udp, &[IoSlice::new(&d.datagram)], Some(d.to), None)
    } else {
        send_without_df(udp, &d.datagram, d.to)
    };
    match sent {
        Ok(n) => {
            c.udp_tx_calls.fetch_add(1, Ordering::Relaxed);
            c.udp_tx_datagrams.fetch_add(1, Ordering::Relaxed);
            c.udp_tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        Err(e) => match send_failure(&e, false) {
            SendFailure::BufferFull => IoCounters::add(&c.io.send_dropped, 1),
            // An oversized probe fails locally with EMSGSIZE: the search then tries smaller.
            SendFailure::GsoRefused | SendFailure::Other => {
                tracing::debug!("sleeve control datagram to {}: {e}", d.to);
            }
        },
    }
}

/// What [`wait`] found ready.
#[derive(Debug, Clone, Copy, Default)]
struct Ready {
    tap: bool,
    udp: bool,
    /// The control channel was written to.
    woken: bool,
}

/// Busy-polls (see [`crate::dataplane::busypoll`]): asks without waiting until an input or
/// the control channel is ready or `deadline` passes, then waits up to `timeout`.
fn poll(
    tap: Option<&TapQueue>,
    udp: Option<&UdpSocket>,
    wake: &Wake,
    deadline: Instant,
    timeout: Duration,
    counters: &Counters,
) -> Result<Ready, WorkerError> {
    let found = busy_poll(deadline, counters, || {
        let ready = wait(tap, udp, wake, Duration::ZERO).map_err(WorkerError::Poll)?;
        Ok::<_, WorkerError>((ready.tap || ready.udp || ready.woken).then_some(ready))
    })?;
    match found {
        Some(ready) => Ok(ready),
        None => wait(tap, udp, wake, timeout).map_err(WorkerError::Poll),
    }
}

/// Waits until the TAP or the socket is readable (each only when given), the control channel
/// was written to (the wake descriptor, drained here), or `timeout` passed.
fn wait(
    tap: Option<&TapQueue>,
    udp: Option<&UdpSocket>,
    wake: &Wake,
    timeout: Duration,
) -> io::Result<Ready> {
    // A negative descriptor is skipped by poll: how a paused input leaves the set.
    let fd = |f: Option<std::os::fd::BorrowedFd<'_>>| f.map_or(-1, |f| f.as_raw_fd());
    let mut fds = [
        libc::pollfd {
            fd: fd(tap.map(AsFd::as_fd)),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: fd(udp.map(AsFd::as_fd)),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // Rounded up, so that a wait for a paused input's time does not spin on zero.
    let ms = timeout.as_micros().div_ceil(1000);
    let ms = libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fds` is a live array of three initialised pollfd structs and its true length
    // is passed; poll only writes their `revents` fields.
    let ret = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if ret < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(Ready::default());
        }
        return Err(e);
    }
    let ready = |f: &libc::pollfd| f.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0;
    let woken = ready(&fds[2]);
    if woken {
        wake.drain();
    }
    Ok(Ready {
        tap: ready(&fds[0]),
        udp: ready(&fds[1]),
        woken,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_input_leaves_the_poll_set_for_longer_each_time_then_fails_the_worker() {
        let c = IoCounters::default();
        let mut input = Paused::new("TAP read", 3);
        let start = Instant::now();
        let badfd = io::Error::from_raw_os_error(libc::EBADFD);
        let mut now = start;
        for expected in [1, 2, 4] {
            assert!(input.ready(now));
            input.failed(&badfd, now, &c).unwrap();
            assert!(!input.ready(now), "paused");
            let until = input.until.unwrap();
            assert_eq!((until - now).as_millis(), expected);
            now = until;
        }
        assert!(input.ready(now));

        let err = input.failed(&badfd, now, &c).unwrap_err();

        assert!(matches!(
            err,
            WorkerError::Input {
                input: "TAP read",
                failures: 4,
                ..
            }
        ));
        assert_eq!(c.rearms.load(Ordering::Relaxed), 3);
    }
}
