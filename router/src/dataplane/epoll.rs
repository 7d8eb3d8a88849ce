//! The readiness backend: one thread per worker waiting with `poll(2)` on its TAP queue
//! and UDP socket, reading in batches, sending with UDP GSO and receiving with UDP GRO.
//! Used where io_uring is refused (seccomp profiles, old kernels) or asked for with
//! `--dataplane epoll`.
#![allow(unsafe_code)]

use std::io::{self, IoSlice};
use std::net::UdpSocket;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::dataplane::engine::{ControlFrame, Counters, Engine, Output, Snapshot};
use crate::dataplane::learn::LearnBus;
use crate::ids::PeerName;
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

/// What the control plane tells a worker.
#[derive(Debug)]
pub enum ToWorker {
    /// Forward by this snapshot from now on.
    Snapshot(Arc<Snapshot>),
    /// Send this datagram (heartbeats, MTU probes).
    Send(Udp),
    /// Finish and exit.
    Stop,
}

/// A running worker.
pub struct Worker {
    tx: mpsc::Sender<ToWorker>,
    wake: Arc<Wake>,
    /// Its counters.
    pub counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// A handle on a started worker thread, woken through `wake` when told something.
    pub fn new(
        tx: mpsc::Sender<ToWorker>,
        wake: Arc<Wake>,
        counters: Arc<Counters>,
        thread: JoinHandle<()>,
    ) -> Self {
        Worker {
            tx,
            wake,
            counters,
            thread: Some(thread),
        }
    }

    /// Tells the worker `msg` and wakes it; false when the worker has exited.
    pub fn send(&self, msg: ToWorker) -> bool {
        let sent = self.tx.send(msg).is_ok();
        self.wake.notify();
        sent
    }

    /// Stops the worker and waits for its thread.
    pub fn stop(mut self) {
        self.send(ToWorker::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A worker's UDP sockets.
#[derive(Debug)]
pub struct WorkerSockets {
    /// Its socket in the mesh port's reuseport group: receives, and sends to peers that do
    /// not spread (Weave Net).
    pub udp: UdpSocket,
    /// Its own sending port, for peers that steer by source port; `None` to send
    /// everything from the mesh port.
    pub own: Option<UdpSocket>,
}

/// What a worker thread owns.
pub struct WorkerIo {
    /// Its TAP queue.
    pub tap: TapQueue,
    /// Its UDP socket in the mesh port's group.
    pub udp: UdpSocket,
    /// Its own sending port, if it has one (see [`WorkerSockets`]).
    pub own: Option<UdpSocket>,
    /// Its control channel.
    pub rx: mpsc::Receiver<ToWorker>,
    /// Readable when something was sent on `rx`.
    pub wake: Arc<Wake>,
    /// Where special frames go.
    pub control: tokio::sync::mpsc::UnboundedSender<ControlFrame>,
}

/// Whether frames go to the TAP through the kernel's GRO (IFF_NAPI) rather than ours:
/// `WEAVE_TAP_NAPI=1`, for measuring one against the other.
pub fn kernel_gro() -> bool {
    std::env::var("WEAVE_TAP_NAPI").is_ok_and(|v| v == "1")
}

/// What a worker is started with besides its sockets.
#[derive(Debug, Clone)]
pub struct WorkerSetup {
    /// The worker's index, from 0.
    pub index: usize,
    /// The local peer.
    pub ourself: PeerName,
    /// Where the workers share MAC learning.
    pub learn: Arc<LearnBus>,
    /// Whether the engine batches (UDP GSO/GRO, TAP offloads); see `--offload`.
    pub offload: bool,
    /// The CPU to pin the thread to, if any.
    pub cpu: Option<usize>,
}

/// Starts a worker thread called `name`, pinned to `setup.cpu` when given, running `body`
/// with a fresh engine. Both backends start their workers this way.
pub fn start(
    name: String,
    setup: WorkerSetup,
    tap: TapQueue,
    sockets: WorkerSockets,
    control: tokio::sync::mpsc::UnboundedSender<ControlFrame>,
    body: impl FnOnce(Engine, WorkerIo) + Send + 'static,
) -> io::Result<Worker> {
    let (tx, rx) = mpsc::channel();
    let wake = Arc::new(Wake::new()?);
    let counters = Arc::new(Counters::default());
    let engine = Engine::new(setup.ourself, Arc::clone(&counters))
        .with_kernel_gro(kernel_gro())
        .with_offload(setup.offload)
        .with_learn_bus(Arc::clone(&setup.learn), setup.index);
    let io = WorkerIo {
        tap,
        udp: sockets.udp,
        own: sockets.own,
        rx,
        wake: Arc::clone(&wake),
        control,
    };
    let thread = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            if let Some(cpu) = setup.cpu {
                if let Err(e) = crate::sys::cpu::pin_current_thread(cpu) {
                    tracing::warn!("{name}: cannot pin to CPU {cpu}: {e}");
                }
            }
            body(engine, io);
        })?;
    Ok(Worker::new(tx, wake, counters, thread))
}

/// Starts epoll worker `setup.index` on its own thread.
pub fn spawn(
    setup: WorkerSetup,
    tap: TapQueue,
    sockets: WorkerSockets,
    control: tokio::sync::mpsc::UnboundedSender<ControlFrame>,
) -> io::Result<Worker> {
    start(
        format!("weave-worker-{}", setup.index),
        setup,
        tap,
        sockets,
        control,
        |engine, io| run(engine, &io),
    )
}

fn run(mut engine: Engine, io: &WorkerIo) {
    let WorkerIo {
        tap,
        udp,
        own,
        rx,
        wake,
        control,
    } = io;
    let mut out = engine.output();
    let mut tap_buf = vec![0u8; 65_536 + 64];
    let mut udp_buf = vec![0u8; 65_536];
    let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
    loop {
        loop {
            match rx.try_recv() {
                Ok(ToWorker::Snapshot(s)) => engine.set_snapshot(s),
                Ok(ToWorker::Send(d)) => send_one(udp, &d, engine.counters()),
                Ok(ToWorker::Stop) | Err(mpsc::TryRecvError::Disconnected) => return,
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        let (tap_ready, udp_ready) = match wait(tap, udp, wake, POLL_INTERVAL) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("worker poll failed: {e}");
                return;
            }
        };
        let now = Instant::now();
        if tap_ready {
            for _ in 0..BATCH {
                match tap.read(&mut tap_buf) {
                    Ok(n) => engine.from_tap(&tap_buf[..n], now, &mut out),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::warn!("TAP read: {e}");
                        break;
                    }
                }
            }
        }
        if udp_ready {
            for _ in 0..BATCH {
                match recv_segments(udp, &mut udp_buf) {
                    Ok(meta) => {
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
                    Err(e) => {
                        // ICMP errors from earlier sends surface here; they are not fatal.
                        tracing::debug!("UDP receive: {e}");
                        break;
                    }
                }
            }
            engine.flush(&mut out);
        }
        flush(&engine, tap, (udp, own.as_ref()), &mut out, control);
        engine.publish();
        engine.share_macs();
        if now >= next_sweep {
            engine.sweep(now);
            next_sweep = now + SWEEP_INTERVAL;
        }
    }
}

/// Performs what a batch produced: sends, TAP writes, control frames.
fn flush(
    engine: &Engine,
    tap: &TapQueue,
    (udp, own): (&UdpSocket, Option<&UdpSocket>),
    out: &mut Output,
    control: &tokio::sync::mpsc::UnboundedSender<ControlFrame>,
) {
    let c = engine.counters();
    for run in out.send.runs() {
        let segment = (run.count > 1).then_some(run.segment as u16);
        let sock = match own {
            Some(own) if run.spread => own,
            _ => udp,
        };
        match send_segments(sock, &[IoSlice::new(&run.buf)], Some(run.to), segment) {
            Ok(n) => {
                c.udp_tx_calls.fetch_add(1, Ordering::Relaxed);
                c.udp_tx_datagrams
                    .fetch_add(run.count as u64, Ordering::Relaxed);
                c.udp_tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => tracing::debug!("UDP send to {}: {e}", run.to),
        }
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
    for frame in out.control.drain(..) {
        let _ = control.send(frame);
    }
}

/// Sends one control datagram; one without DF (the fragmentation test) is sent with the
/// socket's DF policy lifted for that send.
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
        // An oversized probe fails locally with EMSGSIZE: the search then tries smaller.
        Err(e) => tracing::debug!("sleeve control datagram to {}: {e}", d.to),
    }
}

/// Waits until the TAP or the socket is readable, or `timeout` passes.
/// Waits until the TAP or the socket is readable, the control channel was written to (the
/// wake descriptor, drained here), or `timeout` passed.
fn wait(
    tap: &TapQueue,
    udp: &UdpSocket,
    wake: &Wake,
    timeout: Duration,
) -> io::Result<(bool, bool)> {
    let mut fds = [
        libc::pollfd {
            fd: tap.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: udp.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fds` is a live array of three initialised pollfd structs and its true length
    // is passed; poll only writes their `revents` fields.
    let ret = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if ret < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok((false, false));
        }
        return Err(e);
    }
    let ready = |f: &libc::pollfd| f.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0;
    if ready(&fds[2]) {
        wake.drain();
    }
    Ok((ready(&fds[0]), ready(&fds[1])))
}
