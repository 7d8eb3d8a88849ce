//! The io_uring backend: one ring per worker (SINGLE_ISSUER | DEFER_TASKRUN where the
//! kernel allows it), a multishot `recvmsg` with UDP GRO and a multishot read on the TAP
//! queue, both into provided-buffer rings, and sends with UDP_SEGMENT, all submitted in
//! batches. The frame engine is the same as the epoll backend's.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::dataplane::engine::{ControlFrame, Counters, Engine, Output};
use crate::dataplane::epoll::{start, ToWorker, Worker, WorkerIo, WorkerSetup, WorkerSockets};
use crate::dataplane::uring::{
    BufGroup, Completion, Ring, RingOptions, StopReason, Target, TxBuf, UringError, RECV_OVERHEAD,
};
use crate::sys::tap::TapQueue;

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
/// Buffers per provided-buffer ring.
const BUFFERS: u16 = 64;

/// Checks that this kernel gives us everything the backend needs, so that the daemon can
/// fall back to epoll before it starts any worker.
pub fn probe() -> Result<(), UringError> {
    let mut ring = Ring::new(8, RingOptions::default())?;
    ring.add_buf_ring(UDP_GROUP, 1, (RECV_OVERHEAD + 1) as u32 + 1)?;
    let _ = ring.shutdown();
    Ok(())
}

/// Starts io_uring worker `setup.index` on its own thread.
pub fn spawn(
    setup: WorkerSetup,
    tap: TapQueue,
    sockets: WorkerSockets,
    control: tokio::sync::mpsc::UnboundedSender<ControlFrame>,
) -> io::Result<Worker> {
    let index = setup.index;
    start(
        format!("weave-uring-{index}"),
        setup,
        tap,
        sockets,
        control,
        move |engine, io| {
            if let Err(e) = run(engine, &io) {
                tracing::error!("io_uring worker {index} stopped: {e}");
            }
        },
    )
}

fn run(mut engine: Engine, io: &WorkerIo) -> Result<(), UringError> {
    let WorkerIo {
        tap,
        udp,
        own,
        rx,
        wake,
        control,
    } = io;
    let mut ring = Ring::new(512, RingOptions::default())?;
    let _udp_bufs = ring.add_buf_ring(UDP_GROUP, BUFFERS, (RECV_OVERHEAD + 65_536) as u32)?;
    let _tap_bufs = ring.add_buf_ring(TAP_GROUP, BUFFERS, 65_536 + 64)?;
    let udp_fd = udp.as_raw_fd();
    let own_fd = own.as_ref().map_or(udp_fd, AsRawFd::as_raw_fd);
    let tap_fd = tap.as_raw_fd();
    let mut recv_op = ring.recv_multi(Target::Fd(udp_fd), UDP_GROUP)?;
    let mut read_op = ring.read_multi(Target::Fd(tap_fd), TAP_GROUP)?;
    // Each eventfd read is 8 bytes; a few buffers cover wakes between two reaps.
    let _wake_bufs = ring.add_buf_ring(WAKE_GROUP, 4, 8)?;
    let wake_fd = wake.as_raw_fd();
    let mut wake_op = ring.read_multi(Target::Fd(wake_fd), WAKE_GROUP)?;
    let mut out = engine.output();
    let mut completions = Vec::new();
    let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
    loop {
        loop {
            match rx.try_recv() {
                Ok(ToWorker::Snapshot(s)) => engine.set_snapshot(s),
                Ok(ToWorker::Send(d)) if !d.df => {
                    // Sent at once, outside the ring: its DF policy is the socket's at
                    // the moment of sending.
                    crate::dataplane::epoll::send_one(udp, &d, engine.counters());
                }
                Ok(ToWorker::Send(d)) => {
                    let bufs = vec![TxBuf::Owned(d.datagram)];
                    if ring
                        .sendmsg(Target::Fd(udp_fd), Some(d.to), bufs, None, 0)
                        .is_ok()
                    {
                        engine
                            .counters()
                            .udp_tx_calls
                            .fetch_add(1, Ordering::Relaxed);
                        engine
                            .counters()
                            .udp_tx_datagrams
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(ToWorker::Stop) | Err(mpsc::TryRecvError::Disconnected) => {
                    ring.shutdown()?;
                    return Ok(());
                }
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        ring.submit_and_wait(1, Some(WAIT))?;
        ring.reap(&mut completions);
        let now = Instant::now();
        let mut received = false;
        for c in completions.drain(..) {
            match c {
                Completion::Received { datagram, .. } => {
                    received = true;
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
                // A wake: the read reset the counter; the channel is read at the loop's top.
                Completion::Read { op, .. } if op == wake_op => {}
                Completion::Read { buf, .. } => engine.from_tap(&buf, now, &mut out),
                Completion::Sent { result, bufs, .. } => {
                    account(engine.counters(), &result, true);
                    recycle(bufs, |b| out.send.recycle(b));
                }
                Completion::Written { result, bufs, .. } => {
                    account(engine.counters(), &result, false);
                    recycle(bufs, |b| out.tap.recycle(b));
                }
                Completion::Stopped { op, reason } => {
                    tracing::warn!("io_uring operation ended: {reason:?}; restarting it");
                    if matches!(reason, StopReason::Cancelled) {
                        continue;
                    }
                    if op == recv_op {
                        recv_op = ring.recv_multi(Target::Fd(udp_fd), UDP_GROUP)?;
                    } else if op == read_op {
                        read_op = ring.read_multi(Target::Fd(tap_fd), TAP_GROUP)?;
                    } else if op == wake_op {
                        wake_op = ring.read_multi(Target::Fd(wake_fd), WAKE_GROUP)?;
                    }
                }
            }
        }
        if received {
            engine.flush(&mut out);
        }
        submit(
            &mut ring,
            [udp_fd, own_fd],
            tap_fd,
            &mut out,
            engine.counters(),
        );
        for frame in out.control.drain(..) {
            let _ = control.send(frame);
        }
        engine.publish();
        engine.share_macs();
        if now >= next_sweep {
            engine.sweep(now);
            next_sweep = now + SWEEP_INTERVAL;
        }
    }
}

/// Queues the batch's sends and TAP writes; the ring owns the buffers until they complete.
/// `udp_fds` are the mesh port's socket and the worker's own port's.
fn submit(ring: &mut Ring, udp_fds: [RawFd; 2], tap_fd: RawFd, out: &mut Output, c: &Counters) {
    for run in out.send.take() {
        let segment = (run.count > 1).then_some(run.segment as u16);
        let bufs = vec![TxBuf::Owned(run.buf)];
        let fd = udp_fds[usize::from(run.spread)];
        match ring.sendmsg(Target::Fd(fd), Some(run.to), bufs, segment, 0) {
            Ok(_) => {
                c.udp_tx_calls.fetch_add(1, Ordering::Relaxed);
                c.udp_tx_datagrams
                    .fetch_add(run.count as u64, Ordering::Relaxed);
            }
            Err(rejected) => {
                tracing::debug!("send to {} not queued: {}", run.to, rejected.error);
                recycle(rejected.bufs, |b| out.send.recycle(b));
            }
        }
    }
    for write in out.tap.take() {
        if let Err(rejected) = ring.write(Target::Fd(tap_fd), TxBuf::Owned(write)) {
            tracing::debug!("TAP write not queued: {}", rejected.error);
            recycle(rejected.bufs, |b| out.tap.recycle(b));
        }
    }
}

fn account(c: &Counters, result: &io::Result<usize>, udp: bool) {
    match (result, udp) {
        (Ok(n), true) => {
            c.udp_tx_bytes.fetch_add(*n as u64, Ordering::Relaxed);
        }
        (Ok(n), false) => {
            c.tap_tx_writes.fetch_add(1, Ordering::Relaxed);
            c.tap_tx_bytes.fetch_add(*n as u64, Ordering::Relaxed);
        }
        (Err(e), _) => tracing::debug!(
            "io_uring {} failed: {e}",
            if udp { "send" } else { "TAP write" }
        ),
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
