//! The io_uring backend: one ring per worker (SINGLE_ISSUER | DEFER_TASKRUN where the
//! kernel allows it), a multishot `recvmsg` with UDP GRO and a multishot read on the TAP
//! queue, both into provided-buffer rings, and sends with UDP_SEGMENT, all submitted in
//! batches. The frame engine is the same as the epoll backend's.
//!
//! Failures: a transient ring error (`EBUSY`, `EAGAIN`, `EINTR`) is retried in place; an
//! input the kernel stops (a deleted TAP answers `EBADFD`) is armed again after a wait that
//! doubles from 1 ms to 1 s, and after too many failures in a row the worker gives up like it
//! does on any other ring error: its loop returns it and the supervisor
//! ([`crate::dataplane::supervise`]) restarts the worker on the same TAP queue and sockets, or
//! falls back to epoll. Sends carry `MSG_DONTWAIT`, at most
//! [`WorkerLimits::sends_in_flight`](crate::dataplane::worker::WorkerLimits) at a time; what
//! does not fit is dropped and counted, as a full link would drop it.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::dataplane::bufsize::Limits;
use crate::dataplane::busypoll::BusyPoll;
use crate::dataplane::engine::{Counters, Engine, SendBatch, SendRun};
use crate::dataplane::uring::{
    BufGroup, Completion, OpId, Ring, RingOptions, SizedBufRings, StopReason, Target, TxBuf,
    UringError, RECV_OVERHEAD,
};
use crate::dataplane::worker::{
    busy_poll, forward_control, send_failure, Backoff, IoCounters, SendFailure, ToWorker,
    WorkerError, WorkerIo, INPUT_BACKOFF_FIRST, INPUT_BACKOFF_MAX,
};

/// How long an idle worker waits for completions before it publishes its counters and
/// sweeps; a message on its control channel wakes it at once (the wake eventfd).
const WAIT: Duration = Duration::from_millis(250);
/// How often learned MACs are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Buffer group of the UDP receive ring.
const UDP_GROUP: BufGroup = BufGroup(1);
/// Buffer group of the TAP read ring.
const TAP_GROUP: BufGroup = BufGroup(2);
/// Buffer group of the wake eventfd's reads.
const WAKE_GROUP: BufGroup = BufGroup(3);
/// Buffers of the UDP and TAP receive rings (64 KiB each, for GRO batches and TSO frames): few
/// while traffic is light, doubled whenever a loop turn finds a ring (nearly) empty, and back
/// to the minimum, their memory given back, after a quiet spell (see `bufsize`).
const BUFFERS: Limits = Limits {
    min: 4,
    max: 16,
    quiet: Duration::from_secs(5),
};

/// Checks that this kernel gives us everything the backend needs, so that the daemon can
/// fall back to epoll before it starts any worker.
pub fn probe() -> Result<(), UringError> {
    let mut ring = Ring::new(8, RingOptions::default())?;
    ring.add_buf_ring(UDP_GROUP, 1, (RECV_OVERHEAD + 1) as u32 + 1)?;
    let _ = ring.shutdown();
    Ok(())
}

/// Runs an io_uring worker's loop until it is told to stop (`Ok`) or fails for good (the
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
    let mut ring = Ring::new(512, RingOptions::default())?;
    let mut pools = SizedBufRings::new(BUFFERS);
    pools.add(
        &mut ring,
        UDP_GROUP,
        (RECV_OVERHEAD + 65_536) as u32,
        Instant::now(),
    )?;
    pools.add(&mut ring, TAP_GROUP, 65_536 + 64, Instant::now())?;
    let udp_fd = udp.as_raw_fd();
    let own_fd = own.as_ref().map_or(udp_fd, AsRawFd::as_raw_fd);
    let tap_fd = tap.as_raw_fd();
    // Each eventfd read is 8 bytes; a few buffers cover wakes between two reaps.
    let _wake_bufs = ring.add_buf_ring(WAKE_GROUP, 4, 8)?;
    let wake_fd = wake.as_raw_fd();
    let mut inputs = Inputs::new(limits.input_failures, Instant::now());
    let mut sends = Sends::new([udp_fd, own_fd], limits.sends_in_flight);
    let mut enter_backoff = Backoff::new(
        INPUT_BACKOFF_FIRST,
        INPUT_BACKOFF_MAX,
        limits.input_failures,
    );
    let mut busy = BusyPoll::new(limits.busy_poll);
    let mut out = engine.output();
    let mut completions = Vec::new();
    let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
    loop {
        loop {
            match rx.try_recv() {
                Ok(ToWorker::Snapshot(s)) => engine.set_snapshot(s),
                Ok(ToWorker::Send(d)) => {
                    let Some(d) = engine.seal_control(d) else {
                        continue;
                    };
                    if !d.df {
                        // Sent at once, outside the ring: its DF policy is the socket's at
                        // the moment of sending.
                        crate::dataplane::epoll::send_one(udp, &d, engine.counters());
                        continue;
                    }
                    let to = Destination {
                        socket: MESH_PORT,
                        to: d.to,
                    };
                    let segment = d.datagram.len();
                    let c = engine.counters();
                    sends.queue(&mut ring, to, d.datagram, (segment, 1), c, &mut out.send);
                }
                Ok(ToWorker::Stop) | Err(mpsc::TryRecvError::Disconnected) => {
                    if let Err(e) = ring.shutdown() {
                        tracing::warn!("io_uring worker shutdown: {e}");
                    }
                    return Ok(());
                }
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        let now = Instant::now();
        for input in Input::ALL {
            if !inputs.is_due(input, now) {
                continue;
            }
            let armed = match input {
                Input::Udp => ring.recv_multi(Target::Fd(udp_fd), UDP_GROUP),
                Input::Tap => ring.read_multi(Target::Fd(tap_fd), TAP_GROUP),
                Input::Wake => ring.read_multi(Target::Fd(wake_fd), WAKE_GROUP),
            };
            match armed {
                Ok(op) => inputs.armed(input, op),
                Err(e) if transient(&e) => {
                    IoCounters::add(&engine.counters().io.ring_retries, 1);
                    inputs.failed(input, &e, now)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let wait = inputs
            .next_due()
            .map_or(WAIT, |due| due.saturating_duration_since(now).min(WAIT));
        match busy.deadline(now) {
            None => enter(&mut ring, wait, &mut enter_backoff, engine.counters())?,
            Some(deadline) => poll(
                &mut ring,
                deadline,
                wait,
                &mut enter_backoff,
                engine.counters(),
                &mut completions,
            )?,
        }
        ring.reap(&mut completions);
        let now = Instant::now();
        if !completions.is_empty() {
            busy.worked(now);
        }
        let mut received = false;
        for c in completions.drain(..) {
            match c {
                Completion::Received { datagram, .. } => {
                    received = true;
                    inputs.delivered(Input::Udp);
                    engine
                        .counters()
                        .udp_rx_calls
                        .fetch_add(1, Ordering::Relaxed);
                    let Some(from) = datagram.source else {
                        continue;
                    };
                    for segment in datagram.segments() {
                        engine.from_udp(from, segment, now, &mut out);
                    }
                }
                Completion::Read { op, buf } => match inputs.which(op) {
                    // A wake: the read reset the counter; the channel is read at the loop's top.
                    Some(Input::Wake) => inputs.delivered(Input::Wake),
                    Some(Input::Tap) => {
                        inputs.delivered(Input::Tap);
                        engine.from_tap(&buf, now, &mut out);
                    }
                    Some(Input::Udp) | None => {}
                },
                Completion::Sent { op, result, bufs } => {
                    let c = engine.counters();
                    sends.completed(&mut ring, op, result, bufs, c, &mut out.send);
                }
                Completion::Written { result, bufs, .. } => {
                    account_write(engine.counters(), &result);
                    recycle(bufs, |b| out.tap.recycle(b));
                }
                Completion::Stopped { op, reason } => {
                    let Some(input) = inputs.which(op) else {
                        continue;
                    };
                    if inputs.stopped(input, &reason, now)?.is_some() {
                        IoCounters::add(&engine.counters().io.rearms, 1);
                    }
                }
            }
        }
        if received {
            engine.flush(&mut out);
        }
        pools.tick(now, &mut ring);
        for run in out.send.take() {
            sends.queue_run(&mut ring, run, engine.counters(), &mut out.send);
        }
        for write in out.tap.take() {
            if let Err(rejected) = ring.write(Target::Fd(tap_fd), TxBuf::Owned(write)) {
                tracing::debug!("TAP write not queued: {}", rejected.error);
                recycle(rejected.bufs, |b| out.tap.recycle(b));
            }
        }
        forward_control(&mut out.control, control, &engine.counters().io);
        engine.publish();
        engine.share_macs();
        if now >= next_sweep {
            engine.sweep(now);
            next_sweep = now + SWEEP_INTERVAL;
        }
    }
}

/// Submits what is queued and waits up to `wait` for a completion. A transient error is
/// counted and passes (after a pause unless the kernel asked for a reap); too many in a row,
/// or any other error, end the worker.
fn enter(
    ring: &mut Ring,
    wait: Duration,
    backoff: &mut Backoff,
    counters: &Counters,
) -> Result<(), WorkerError> {
    match ring.submit_and_wait(1, Some(wait)) {
        Ok(_) => {
            backoff.succeed();
            Ok(())
        }
        Err(e) if transient(&e) => {
            IoCounters::add(&counters.io.ring_retries, 1);
            let Some(pause) = backoff.fail() else {
                return Err(e.into());
            };
            // EBUSY asks for the completions to be reaped, which follows at once; the
            // kernel short of memory (EAGAIN) asks for a moment.
            if !is_errno(&e, libc::EBUSY) {
                std::thread::sleep(pause);
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Busy-polls (see [`crate::dataplane::busypoll`]): submits what is queued and enters the
/// kernel without sleeping (with DEFER_TASKRUN, completions are only posted while the
/// worker is in `io_uring_enter`) until a completion is there or `deadline` passes, then
/// sleeps up to `wait` as [`enter`] does. Completions found while polling are left in
/// `completions` for the caller's reap to add to.
fn poll(
    ring: &mut Ring,
    deadline: Instant,
    wait: Duration,
    backoff: &mut Backoff,
    counters: &Counters,
    completions: &mut Vec<Completion>,
) -> Result<(), WorkerError> {
    let found = busy_poll(deadline, counters, || {
        enter(ring, Duration::ZERO, backoff, counters)?;
        Ok::<_, WorkerError>((ring.reap(completions) > 0).then_some(()))
    })?;
    match found {
        Some(()) => Ok(()),
        None => enter(ring, wait, backoff, counters),
    }
}

/// Whether a ring error passes when tried again: `EBUSY` (the completion queue must be
/// reaped first), `EAGAIN` (the kernel was short of memory), `EINTR`, a submission queue
/// that stayed full through a submit.
fn transient(e: &UringError) -> bool {
    match e {
        UringError::Enter(_) => [libc::EBUSY, libc::EAGAIN, libc::EINTR]
            .into_iter()
            .any(|errno| is_errno(e, errno)),
        UringError::QueueFull => true,
        UringError::Setup(_)
        | UringError::Unsupported { .. }
        | UringError::BufRing { .. }
        | UringError::BadBufRing(_)
        | UringError::GroupInUse(_)
        | UringError::UnknownGroup(_)
        | UringError::RegisterFile(_)
        | UringError::FileTableFull
        | UringError::BadRange { .. }
        | UringError::DrainTimeout { .. }
        | UringError::ShutDown => false,
    }
}

fn is_errno(e: &UringError, errno: i32) -> bool {
    matches!(e, UringError::Enter(err) if err.raw_os_error() == Some(errno))
}

/// The worker's multishot operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Input {
    /// The UDP socket's receive.
    Udp,
    /// The TAP queue's read.
    Tap,
    /// The wake eventfd's read.
    Wake,
}

impl Input {
    const ALL: [Input; 3] = [Input::Udp, Input::Tap, Input::Wake];

    fn name(self) -> &'static str {
        match self {
            Input::Udp => "UDP receive",
            Input::Tap => "TAP read",
            Input::Wake => "wake read",
        }
    }

    fn index(self) -> usize {
        match self {
            Input::Udp => 0,
            Input::Tap => 1,
            Input::Wake => 2,
        }
    }
}

/// Each input's operation while it is armed, or when to arm it again after it stopped.
#[derive(Debug)]
struct Inputs {
    slots: [InputSlot; 3],
}

#[derive(Debug)]
struct InputSlot {
    op: Option<OpId>,
    /// When to arm it; `None` while armed, or for good after it was cancelled.
    due: Option<Instant>,
    /// Stops since it last delivered something.
    backoff: Backoff,
}

impl Inputs {
    /// Every input due at `now`, each allowed `limit` failures in a row.
    fn new(limit: u32, now: Instant) -> Self {
        let slot = || InputSlot {
            op: None,
            due: Some(now),
            backoff: Backoff::input(limit),
        };
        Inputs {
            slots: [slot(), slot(), slot()],
        }
    }

    fn slot(&mut self, input: Input) -> &mut InputSlot {
        &mut self.slots[input.index()]
    }

    /// Whether `input` waits to be armed and its time has come.
    fn is_due(&self, input: Input, now: Instant) -> bool {
        let slot = &self.slots[input.index()];
        slot.op.is_none() && slot.due.is_some_and(|due| due <= now)
    }

    fn armed(&mut self, input: Input, op: OpId) {
        let slot = self.slot(input);
        slot.op = Some(op);
        slot.due = None;
    }

    /// The input `op` is the operation of.
    fn which(&self, op: OpId) -> Option<Input> {
        Input::ALL
            .into_iter()
            .find(|input| self.slots[input.index()].op == Some(op))
    }

    /// `input` delivered something: its next failure is a first one again.
    fn delivered(&mut self, input: Input) {
        self.slot(input).backoff.succeed();
    }

    /// The earliest time an input waits for.
    fn next_due(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter(|s| s.op.is_none())
            .filter_map(|s| s.due)
            .min()
    }

    /// `input`'s operation stopped at `now`: how long until it is armed again, or `None` when
    /// it was cancelled (only shutdown cancels, so it stays stopped); an error when it failed
    /// once too often in a row.
    fn stopped(
        &mut self,
        input: Input,
        reason: &StopReason,
        now: Instant,
    ) -> Result<Option<Duration>, WorkerError> {
        let why = match reason {
            StopReason::Cancelled => {
                let slot = self.slot(input);
                slot.op = None;
                slot.due = None;
                tracing::debug!("io_uring {} cancelled", input.name());
                return Ok(None);
            }
            StopReason::EndOfFile => "end of file".to_string(),
            StopReason::Error(e) => e.to_string(),
        };
        self.failed(input, &why, now).map(Some)
    }

    /// `input` stopped, or could not be armed, at `now` because of `why`: schedules it after
    /// its backoff, or gives up.
    fn failed(
        &mut self,
        input: Input,
        why: &dyn std::fmt::Display,
        now: Instant,
    ) -> Result<Duration, WorkerError> {
        let slot = self.slot(input);
        slot.op = None;
        match slot.backoff.fail() {
            Some(after) => {
                slot.due = Some(now + after);
                tracing::warn!(
                    "io_uring {} ended: {why}; arming it again in {after:?}",
                    input.name()
                );
                Ok(after)
            }
            None => {
                slot.due = None;
                Err(WorkerError::Input {
                    input: input.name(),
                    failures: slot.backoff.failures(),
                    last: why.to_string(),
                })
            }
        }
    }
}

/// The mesh port's socket; its own port's is [`OWN_PORT`].
const MESH_PORT: usize = 0;
/// The worker's own sending port's socket (the mesh port's when it has none).
const OWN_PORT: usize = 1;

/// Where a send goes: from which of the worker's sockets, to whom.
#[derive(Debug, Clone, Copy)]
struct Destination {
    socket: usize,
    to: SocketAddr,
}

/// A send the kernel has not completed.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    dest: Destination,
    /// The segment size, when it was sent with `UDP_SEGMENT`.
    segment: Option<u16>,
    /// Datagrams it carries.
    count: usize,
}

/// The worker's sends: each with `MSG_DONTWAIT`, at most `cap` in flight, and with
/// `UDP_SEGMENT` from each socket until the kernel refuses it there.
#[derive(Debug)]
struct Sends {
    fds: [RawFd; 2],
    gso: [bool; 2],
    cap: usize,
    in_flight: HashMap<OpId, InFlight>,
}

impl Sends {
    /// Sends from the mesh port's socket and the worker's own port's.
    fn new(fds: [RawFd; 2], cap: usize) -> Self {
        Sends {
            fds,
            gso: [true; 2],
            cap,
            in_flight: HashMap::new(),
        }
    }

    /// Queues one run of the engine's.
    fn queue_run(&mut self, ring: &mut Ring, run: SendRun, c: &Counters, spare: &mut SendBatch) {
        let dest = Destination {
            socket: if run.spread { OWN_PORT } else { MESH_PORT },
            to: run.to,
        };
        self.queue(ring, dest, run.buf, (run.segment, run.count), c, spare);
    }

    /// Queues `count` datagrams of `segment` bytes (the last may be shorter) back to back in
    /// `buf`: one segmented send, or one send each where the socket refused segmenting.
    fn queue(
        &mut self,
        ring: &mut Ring,
        dest: Destination,
        buf: Vec<u8>,
        (segment, count): (usize, usize),
        c: &Counters,
        spare: &mut SendBatch,
    ) {
        if count > 1 && !self.gso[dest.socket] {
            for datagram in buf.chunks(segment.max(1)) {
                self.queue_one(ring, dest, datagram.to_vec(), (None, 1), c, spare);
            }
            spare.recycle(buf);
            return;
        }
        let segment = (count > 1).then_some(segment as u16);
        self.queue_one(ring, dest, buf, (segment, count), c, spare);
    }

    fn queue_one(
        &mut self,
        ring: &mut Ring,
        dest: Destination,
        buf: Vec<u8>,
        (segment, count): (Option<u16>, usize),
        c: &Counters,
        spare: &mut SendBatch,
    ) {
        if self.in_flight.len() >= self.cap {
            IoCounters::add(&c.io.send_dropped, count as u64);
            spare.recycle(buf);
            return;
        }
        let bufs = vec![TxBuf::Owned(buf)];
        let fd = Target::Fd(self.fds[dest.socket]);
        match ring.sendmsg(fd, Some(dest.to), bufs, segment, libc::MSG_DONTWAIT) {
            Ok(op) => {
                let sent = InFlight {
                    dest,
                    segment,
                    count,
                };
                self.in_flight.insert(op, sent);
            }
            Err(rejected) => {
                tracing::debug!("send to {} not queued: {}", dest.to, rejected.error);
                IoCounters::add(&c.io.send_dropped, count as u64);
                recycle(rejected.bufs, |b| spare.recycle(b));
            }
        }
    }

    /// Accounts for a completed send; a segmented one the kernel refused goes out again one
    /// datagram at a time, as does everything after it from that socket.
    fn completed(
        &mut self,
        ring: &mut Ring,
        op: OpId,
        result: io::Result<usize>,
        bufs: Vec<TxBuf>,
        c: &Counters,
        spare: &mut SendBatch,
    ) {
        let Some(sent) = self.in_flight.remove(&op) else {
            recycle(bufs, |b| spare.recycle(b));
            return;
        };
        let e = match result {
            Ok(n) => {
                c.udp_tx_calls.fetch_add(1, Ordering::Relaxed);
                c.udp_tx_datagrams
                    .fetch_add(sent.count as u64, Ordering::Relaxed);
                c.udp_tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
                recycle(bufs, |b| spare.recycle(b));
                return;
            }
            Err(e) => e,
        };
        match send_failure(&e, sent.segment.is_some()) {
            SendFailure::GsoRefused => {
                if std::mem::replace(&mut self.gso[sent.dest.socket], false) {
                    tracing::warn!(
                        "Data plane: the kernel refuses segmented (UDP GSO) sends to {} ({e}), \
                         as an IPsec policy on the underlay does; this worker sends from that \
                         socket one datagram at a time from now on",
                        sent.dest.to
                    );
                }
                IoCounters::add(&c.io.gso_fallbacks, 1);
                let segment = sent.segment.map_or(0, usize::from);
                for b in bufs {
                    match b {
                        TxBuf::Owned(v) => {
                            self.queue(ring, sent.dest, v, (segment, sent.count), c, spare)
                        }
                        TxBuf::Provided(_) => {}
                    }
                }
            }
            SendFailure::BufferFull => {
                IoCounters::add(&c.io.send_dropped, sent.count as u64);
                recycle(bufs, |b| spare.recycle(b));
            }
            SendFailure::Other => {
                tracing::debug!("io_uring send to {}: {e}", sent.dest.to);
                recycle(bufs, |b| spare.recycle(b));
            }
        }
    }
}

fn account_write(c: &Counters, result: &io::Result<usize>) {
    match result {
        Ok(n) => {
            c.tap_tx_writes.fetch_add(1, Ordering::Relaxed);
            c.tap_tx_bytes.fetch_add(*n as u64, Ordering::Relaxed);
        }
        Err(e) => tracing::debug!("io_uring TAP write failed: {e}"),
    }
}

fn recycle(bufs: Vec<TxBuf>, mut put: impl FnMut(Vec<u8>)) {
    for b in bufs {
        match b {
            TxBuf::Owned(v) => put(v),
            TxBuf::Provided(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Log lines written while `f` runs.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = buf.0.lock().unwrap().clone();
        String::from_utf8(text).unwrap()
    }

    fn op(slot: u32) -> OpId {
        OpId::new(crate::dataplane::uring::OpKind::ReadMulti, slot, 0)
    }

    #[test]
    fn a_stopped_input_waits_longer_each_time_and_then_fails_the_worker() {
        let start = Instant::now();
        let mut inputs = Inputs::new(4, start);
        let badfd = || StopReason::Error(io::Error::from_raw_os_error(libc::EBADFD));
        let mut now = start;
        let mut waits = Vec::new();

        let mut error = None;
        for _ in 0..100 {
            assert!(inputs.is_due(Input::Tap, now));
            inputs.armed(Input::Tap, op(1));
            assert!(!inputs.is_due(Input::Tap, now), "armed, not due");
            match inputs.stopped(Input::Tap, &badfd(), now) {
                Ok(Some(after)) => {
                    assert!(!inputs.is_due(Input::Tap, now), "not re-armed at once");
                    assert_eq!(inputs.next_due(), Some(start), "the others are still due");
                    now += after;
                    waits.push(after.as_millis());
                }
                Ok(None) => panic!("an error stop is re-armed"),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }

        assert_eq!(waits, vec![1, 2, 4, 8]);
        let Some(error) = error else {
            panic!("never gave up");
        };
        let WorkerError::Input {
            input, failures, ..
        } = error
        else {
            panic!("unexpected {error:?}");
        };
        assert_eq!((input, failures), ("TAP read", 5));
    }

    #[test]
    fn an_input_that_delivers_starts_its_backoff_over() {
        let now = Instant::now();
        let mut inputs = Inputs::new(2, now);
        let eof = StopReason::EndOfFile;
        for _ in 0..2 {
            inputs.armed(Input::Udp, op(2));
            inputs.stopped(Input::Udp, &eof, now).unwrap();
        }
        inputs.armed(Input::Udp, op(2));
        inputs.delivered(Input::Udp);

        let after = inputs.stopped(Input::Udp, &eof, now).unwrap();

        assert_eq!(after, Some(Duration::from_millis(1)));
    }

    #[test]
    fn a_cancelled_input_stays_stopped_without_saying_it_restarts() {
        let now = Instant::now();
        let mut inputs = Inputs::new(3, now);
        inputs.armed(Input::Tap, op(3));

        let text = logged(|| {
            let after = inputs
                .stopped(Input::Tap, &StopReason::Cancelled, now)
                .unwrap();
            assert_eq!(after, None);
        });

        assert!(!text.contains("again"), "logged: {text}");
        assert!(!text.contains("WARN"), "logged: {text}");
        assert!(!inputs.is_due(Input::Tap, now + Duration::from_secs(10)));
        assert_eq!(inputs.which(op(3)), None);
    }

    #[test]
    fn busy_and_short_of_memory_rings_are_retried_others_are_not() {
        let enter = |errno| UringError::Enter(io::Error::from_raw_os_error(errno));
        assert!(transient(&enter(libc::EBUSY)));
        assert!(transient(&enter(libc::EAGAIN)));
        assert!(transient(&enter(libc::EINTR)));
        assert!(transient(&UringError::QueueFull));
        assert!(!transient(&enter(libc::EBADF)));
        assert!(!transient(&UringError::Setup(
            io::Error::from_raw_os_error(libc::ENOMEM)
        )));
        assert!(!transient(&UringError::ShutDown));
    }
}
