//! The worker scaffolding both backends share: what a worker is started with, the thread that
//! runs its loop, the handle the daemon keeps, and what a failed worker hands back (its engine,
//! TAP queue and sockets) so that its successor runs on the same ones.
//!
//! Also the small decisions both loops make the same way, kept pure: how long a failing input
//! waits before it is tried again ([`Backoff`]), what a failed send means ([`send_failure`]),
//! and how special frames reach the control task without ever blocking a worker
//! ([`forward_control`]).

use std::io;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc::error::TrySendError;

use crate::dataplane::engine::{ControlFrame, Counters, Engine, Snapshot};
use crate::dataplane::learn::LearnBus;
use crate::dataplane::uring::UringError;
use crate::ids::PeerName;
use crate::mesh::sleeve::Udp;
use crate::sys::eventfd::Wake;
use crate::sys::tap::TapQueue;

/// Special frames queued for the control task; beyond this a worker drops them and counts the
/// drops rather than let a stalled control task grow the queue without bound.
pub const CONTROL_QUEUE: usize = 1024;

/// Where workers send special frames (heartbeats, MTU probes) for the control task.
pub type ControlSender = tokio::sync::mpsc::Sender<ControlFrame>;

/// Where a failed worker reports, handing its parts back. Unbounded, but each worker sends at
/// most one message in its life.
pub type ExitSender = tokio::sync::mpsc::UnboundedSender<WorkerExit>;

/// The I/O backend a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Readiness: `poll(2)` and plain system calls.
    Epoll,
    /// Completions: one io_uring per worker.
    IoUring,
}

impl Backend {
    /// The name used in logs, `/report` and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Epoll => "epoll",
            Backend::IoUring => "io_uring",
        }
    }

    fn code(self) -> u8 {
        match self {
            Backend::Epoll => 1,
            Backend::IoUring => 2,
        }
    }

    fn from_code(code: u8) -> Option<Backend> {
        match code {
            1 => Some(Backend::Epoll),
            2 => Some(Backend::IoUring),
            _ => None,
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

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
    backend: Backend,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Tells the worker `msg` and wakes it; false when the worker has exited.
    pub fn send(&self, msg: ToWorker) -> bool {
        self.deliver(msg).is_ok()
    }

    /// Tells the worker `msg` and wakes it; hands `msg` back when the worker has exited.
    pub fn deliver(&self, msg: ToWorker) -> Result<(), ToWorker> {
        let sent = self.tx.send(msg).map_err(|e| e.0);
        if sent.is_ok() {
            self.wake.notify();
        }
        sent
    }

    /// The backend it runs.
    pub fn backend(&self) -> Backend {
        self.backend
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

/// What a worker runs on: handed to [`start`], and handed back in [`WorkerExit`] when the
/// worker fails, so that a restart reuses them (the TAP queue and the socket's place in the
/// reuseport group cannot be had again without disturbing the other workers).
pub struct WorkerParts {
    /// Its frame engine, with the MACs it learned and its inbox on the learn bus.
    pub engine: Engine,
    /// Its TAP queue.
    pub tap: TapQueue,
    /// Its UDP sockets.
    pub sockets: WorkerSockets,
}

impl WorkerParts {
    /// The parts of worker `setup.index`: a fresh engine counting into `counters`, with the
    /// given TAP queue and sockets.
    pub fn new(
        setup: &WorkerSetup,
        tap: TapQueue,
        sockets: WorkerSockets,
        counters: Arc<Counters>,
    ) -> Self {
        let engine = Engine::new(setup.ourself, counters)
            .with_kernel_gro(kernel_gro())
            .with_offload(setup.offload)
            .with_learn_bus(Arc::clone(&setup.learn), setup.index);
        WorkerParts {
            engine,
            tap,
            sockets,
        }
    }
}

impl std::fmt::Debug for WorkerParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerParts")
            .field("tap", &self.tap)
            .field("sockets", &self.sockets)
            .finish_non_exhaustive()
    }
}

/// What a worker thread's loop works with.
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
    pub control: ControlSender,
    /// Its bounds.
    pub limits: WorkerLimits,
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
    /// Its bounds.
    pub limits: WorkerLimits,
}

/// A worker's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerLimits {
    /// Failures in a row of one input (the TAP read, the UDP receive) before the worker gives
    /// up and reports itself failed; between them it waits from 1 ms, doubling, up to 1 s.
    pub input_failures: u32,
    /// Sends submitted and not yet completed (io_uring); a send beyond is dropped and counted.
    pub sends_in_flight: usize,
    /// How long a worker polls for more work after its last before it sleeps (see
    /// [`crate::dataplane::busypoll`]); zero: it never polls.
    pub busy_poll: Duration,
}

impl Default for WorkerLimits {
    fn default() -> Self {
        WorkerLimits {
            // 1 + 2 + ... + 512 ms, then ten times 1 s: about 11 s of an input failing
            // without a single success in between.
            input_failures: 20,
            // The completion queue (2048 entries) holds every send's completion beside a
            // full round of the receive rings' buffers.
            sends_in_flight: 1024,
            busy_poll: DEFAULT_BUSY_POLL,
        }
    }
}

/// The default busy-polling window (`--busy-poll`).
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(50);

/// First wait before a failed input is tried again.
pub const INPUT_BACKOFF_FIRST: Duration = Duration::from_millis(1);
/// Longest wait before a failed input is tried again.
pub const INPUT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Why a worker's loop ended when it was not told to stop.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Its io_uring failed (set up, entering, or arming an operation) for good.
    #[error(transparent)]
    Ring(#[from] UringError),
    /// Waiting for readiness failed.
    #[error("poll: {0}")]
    Poll(#[source] io::Error),
    /// An input kept failing, with backoff, until its bound.
    #[error("{input} failed {failures} times in a row; last: {last}")]
    Input {
        /// Which input (`TAP read`, `UDP receive`).
        input: &'static str,
        /// Failures in a row.
        failures: u32,
        /// The last failure.
        last: String,
    },
    /// The loop panicked (a bug); its parts are handed back all the same.
    #[error("panicked: {0}")]
    Panicked(String),
}

/// A failed worker's report: which, on what, why, and its parts for the next one.
#[derive(Debug)]
pub struct WorkerExit {
    /// The worker's index.
    pub index: usize,
    /// The backend it ran.
    pub backend: Backend,
    /// Why it ended.
    pub error: WorkerError,
    /// What it ran on.
    pub parts: WorkerParts,
}

/// Starts worker `setup.index` on `backend` on a thread of its own, pinned to `setup.cpu`
/// when given, forwarding by `snapshot` (when given) from its first frame on. If its loop
/// fails (or panics), the thread sends a [`WorkerExit`] with its parts on `exits`; when told
/// to stop, it just ends.
pub fn start(
    backend: Backend,
    setup: WorkerSetup,
    parts: WorkerParts,
    snapshot: Option<Arc<Snapshot>>,
    (control, exits): (ControlSender, ExitSender),
) -> io::Result<Worker> {
    let (tx, rx) = mpsc::channel();
    let wake = Arc::new(Wake::new()?);
    let WorkerParts {
        mut engine,
        tap,
        sockets,
    } = parts;
    let io = WorkerIo {
        tap,
        udp: sockets.udp,
        own: sockets.own,
        rx,
        wake: Arc::clone(&wake),
        control,
        limits: setup.limits,
    };
    let index = setup.index;
    let name = match backend {
        Backend::Epoll => format!("weave-worker-{index}"),
        Backend::IoUring => format!("weave-uring-{index}"),
    };
    if let Some(s) = snapshot {
        engine.set_snapshot(s);
    }
    engine.counters().io.set_running(backend);
    let thread = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            if let Some(cpu) = setup.cpu {
                if let Err(e) = crate::sys::cpu::pin_current_thread(cpu) {
                    tracing::warn!("{name}: cannot pin to CPU {cpu}: {e}");
                }
            }
            // The parts outlive a panic: the TAP queue and sockets are plain descriptors and
            // the engine's state is caches and counters, so the next worker may take them.
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match backend {
                Backend::Epoll => crate::dataplane::epoll::run(&mut engine, &io),
                Backend::IoUring => crate::dataplane::iouring::run(&mut engine, &io),
            }));
            let error = match ran {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e,
                Err(panic) => WorkerError::Panicked(panic_text(panic.as_ref())),
            };
            tracing::error!("Data plane: worker {index} ({backend}) failed: {error}");
            let WorkerIo { tap, udp, own, .. } = io;
            let parts = WorkerParts {
                engine,
                tap,
                sockets: WorkerSockets { udp, own },
            };
            // Nobody listens while the daemon shuts down; the parts are closed then.
            let _ = exits.send(WorkerExit {
                index,
                backend,
                error,
                parts,
            });
        })?;
    Ok(Worker {
        tx,
        wake,
        backend,
        thread: Some(thread),
    })
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// What a worker's I/O shell counts beside the traffic: its own drops, its recoveries and its
/// state. Relaxed atomics, written by the worker (and the supervisor), read by anyone.
#[derive(Debug, Default)]
pub struct IoCounters {
    /// Datagrams dropped before the kernel took them: beyond the cap on sends in flight, or
    /// refused because the socket's send buffer was full.
    pub send_dropped: AtomicU64,
    /// Segmented (UDP GSO) sends the kernel refused, sent again one datagram at a time.
    pub gso_fallbacks: AtomicU64,
    /// Special frames dropped because the control task's queue was full.
    pub control_dropped: AtomicU64,
    /// Times a stopped input (the TAP read, the UDP receive) was armed again after a wait.
    pub rearms: AtomicU64,
    /// Transient ring errors (`EBUSY`, `EAGAIN`) retried in place.
    pub ring_retries: AtomicU64,
    /// Microseconds spent busy-polling (CPU time the worker used instead of sleeping).
    pub busy_poll_micros: AtomicU64,
    /// Busy-polls that found work: thread wake-ups saved.
    pub busy_poll_hits: AtomicU64,
    /// Times the worker was restarted after it failed.
    pub restarts: AtomicU64,
    /// The backend it runs (see [`Backend::code`]); 0 before it first starts.
    backend: AtomicU8,
    /// A [`WorkerState`] code.
    state: AtomicU8,
}

/// Whether a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Not started yet.
    Idle,
    /// Its loop runs.
    Running,
    /// It failed and waits to be started again.
    Restarting,
    /// It failed more often than it may be restarted; its share of the traffic is lost.
    Failed,
}

impl WorkerState {
    /// The name used in `/report` and metrics.
    pub fn name(self) -> &'static str {
        match self {
            WorkerState::Idle => "idle",
            WorkerState::Running => "running",
            WorkerState::Restarting => "restarting",
            WorkerState::Failed => "failed",
        }
    }

    fn code(self) -> u8 {
        match self {
            WorkerState::Idle => 0,
            WorkerState::Running => 1,
            WorkerState::Restarting => 2,
            WorkerState::Failed => 3,
        }
    }

    fn from_code(code: u8) -> WorkerState {
        match code {
            1 => WorkerState::Running,
            2 => WorkerState::Restarting,
            3 => WorkerState::Failed,
            _ => WorkerState::Idle,
        }
    }
}

impl IoCounters {
    /// Marks the worker running on `backend`.
    pub fn set_running(&self, backend: Backend) {
        self.backend.store(backend.code(), Ordering::Relaxed);
        self.state
            .store(WorkerState::Running.code(), Ordering::Relaxed);
    }

    /// Records the worker's state.
    pub fn set_state(&self, state: WorkerState) {
        self.state.store(state.code(), Ordering::Relaxed);
    }

    /// The worker's state.
    pub fn state(&self) -> WorkerState {
        WorkerState::from_code(self.state.load(Ordering::Relaxed))
    }

    /// The backend it runs or last ran, if it ever started.
    pub fn backend(&self) -> Option<Backend> {
        Backend::from_code(self.backend.load(Ordering::Relaxed))
    }

    /// Adds `n` to one of the counters.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A snapshot for `/report`.
    pub fn status(&self) -> crate::mesh::status::WorkerIoStatus {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        crate::mesh::status::WorkerIoStatus {
            backend: self.backend().map_or("", Backend::name).to_string(),
            state: self.state().name().to_string(),
            restarts: get(&self.restarts),
            send_dropped: get(&self.send_dropped),
            gso_fallbacks: get(&self.gso_fallbacks),
            control_dropped: get(&self.control_dropped),
            rearms: get(&self.rearms),
            ring_retries: get(&self.ring_retries),
            busy_poll_micros: get(&self.busy_poll_micros),
            busy_poll_hits: get(&self.busy_poll_hits),
        }
    }
}

/// Exponential backoff for something that keeps failing: the first failure waits `first`,
/// each further one twice as long up to `max`, and failure number `limit + 1` in a row gives
/// up. A success starts over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    limit: u32,
    failures: u32,
}

impl Backoff {
    /// A backoff from `first` to `max` that allows `limit` failures in a row.
    pub fn new(first: Duration, max: Duration, limit: u32) -> Self {
        Backoff {
            first,
            max,
            limit,
            failures: 0,
        }
    }

    /// The backoff of a failing input: 1 ms to 1 s, `limit` failures in a row.
    pub fn input(limit: u32) -> Self {
        Backoff::new(INPUT_BACKOFF_FIRST, INPUT_BACKOFF_MAX, limit)
    }

    /// Counts a failure: how long to wait before trying again, or `None` when that was one
    /// failure too many.
    pub fn fail(&mut self) -> Option<Duration> {
        self.failures = self.failures.saturating_add(1);
        if self.failures > self.limit {
            return None;
        }
        let factor = 1u32.checked_shl(self.failures - 1).unwrap_or(u32::MAX);
        Some(self.first.saturating_mul(factor).min(self.max))
    }

    /// Counts a success: the next failure waits `first` again.
    pub fn succeed(&mut self) {
        self.failures = 0;
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// What a send that failed means for the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFailure {
    /// The kernel would not segment: an IPsec policy on the underlay refuses `UDP_SEGMENT`
    /// with `EIO`, a path narrower than the segment (the IPsec overhead) with `EINVAL`.
    /// The run goes out again one datagram at a time, and so does everything after it on
    /// that socket.
    GsoRefused,
    /// The socket's send buffer is full (`EAGAIN`, `ENOBUFS`): dropped and counted, as a
    /// full link would.
    BufferFull,
    /// Anything else (an ICMP error reported on the socket, `EMSGSIZE` of a path-MTU probe):
    /// dropped; the sender's own protocol copes.
    Other,
}

/// Classifies the error of a send; `segmented` when it carried `UDP_SEGMENT`.
pub fn send_failure(err: &io::Error, segmented: bool) -> SendFailure {
    match err.raw_os_error() {
        Some(libc::EIO | libc::EINVAL) if segmented => SendFailure::GsoRefused,
        Some(libc::EAGAIN | libc::ENOBUFS) => SendFailure::BufferFull,
        Some(_) | None => SendFailure::Other,
    }
}

/// Busy-polls until `deadline` (see [`crate::dataplane::busypoll`]): calls `probe`, which
/// asks the backend without waiting, until it finds something or the deadline passes, and
/// counts the time spent and whether it paid. `None`: nothing came; the caller sleeps.
pub fn busy_poll<T, E>(
    deadline: std::time::Instant,
    counters: &Counters,
    mut probe: impl FnMut() -> Result<Option<T>, E>,
) -> Result<Option<T>, E> {
    let started = std::time::Instant::now();
    let found = loop {
        if let Some(found) = probe()? {
            break Some(found);
        }
        if std::time::Instant::now() >= deadline {
            break None;
        }
        std::hint::spin_loop();
    };
    let spent = started.elapsed();
    IoCounters::add(
        &counters.io.busy_poll_micros,
        u64::try_from(spent.as_micros()).unwrap_or(u64::MAX),
    );
    if found.is_some() {
        IoCounters::add(&counters.io.busy_poll_hits, 1);
    }
    Ok(found)
}

/// Whether a receive error concerns one exchange rather than the socket or device: ICMP
/// errors the socket reports for earlier sends, interrupted or empty reads. Anything else
/// (`EBADFD` from a deleted TAP, `EIO`) makes the input wait and count towards its bound.
pub fn transient_input_error(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(
            libc::EINTR
                | libc::EAGAIN
                | libc::ECONNREFUSED
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::EMSGSIZE
        )
    )
}

/// Passes the batch's special frames to the control task without waiting: when its queue is
/// full, a frame is dropped and counted (heartbeats and probes repeat).
pub fn forward_control(frames: &mut Vec<ControlFrame>, control: &ControlSender, c: &IoCounters) {
    for frame in frames.drain(..) {
        match control.try_send(frame) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => IoCounters::add(&c.control_dropped, 1),
            // The daemon is shutting down and will stop the worker.
            Err(TrySendError::Closed(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_first_to_max_and_gives_up_after_the_limit() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(1), ms(10), 6);
        let waits: Vec<Option<Duration>> = (0..7).map(|_| b.fail()).collect();
        assert_eq!(
            waits,
            vec![
                Some(ms(1)),
                Some(ms(2)),
                Some(ms(4)),
                Some(ms(8)),
                Some(ms(10)),
                Some(ms(10)),
                None
            ]
        );
        b.succeed();
        assert_eq!(b.fail(), Some(ms(1)), "a success starts over");
    }

    #[test]
    fn backoff_does_not_overflow_with_a_large_limit() {
        let mut b = Backoff::input(u32::MAX);
        let last = (0..100).map(|_| b.fail()).last().flatten();
        assert_eq!(last, Some(INPUT_BACKOFF_MAX));
    }

    #[test]
    fn a_refused_segmented_send_falls_back_and_a_full_buffer_drops() {
        let err = io::Error::from_raw_os_error;
        assert_eq!(send_failure(&err(libc::EIO), true), SendFailure::GsoRefused);
        assert_eq!(
            send_failure(&err(libc::EINVAL), true),
            SendFailure::GsoRefused
        );
        assert_eq!(send_failure(&err(libc::EINVAL), false), SendFailure::Other);
        assert_eq!(
            send_failure(&err(libc::EAGAIN), true),
            SendFailure::BufferFull
        );
        assert_eq!(
            send_failure(&err(libc::ENOBUFS), false),
            SendFailure::BufferFull
        );
        assert_eq!(
            send_failure(&err(libc::ECONNREFUSED), true),
            SendFailure::Other
        );
    }

    #[test]
    fn a_deleted_tap_is_not_a_transient_input_error_but_an_icmp_error_is() {
        let err = io::Error::from_raw_os_error;
        assert!(!transient_input_error(&err(libc::EBADFD)));
        assert!(!transient_input_error(&err(libc::EIO)));
        assert!(transient_input_error(&err(libc::ECONNREFUSED)));
        assert!(transient_input_error(&err(libc::EAGAIN)));
    }

    #[test]
    fn control_frames_beyond_the_queue_are_dropped_and_counted() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let counters = IoCounters::default();
        let frame = |n: u8| ControlFrame {
            from: "10.0.0.1:6783".parse().unwrap(),
            src: PeerName::from_bytes([0xaa, 0, 0, 0, 0, 1]),
            frame: vec![n; 14],
        };
        let mut frames: Vec<ControlFrame> = (0..5).map(frame).collect();

        forward_control(&mut frames, &tx, &counters);

        assert!(frames.is_empty());
        assert_eq!(counters.control_dropped.load(Ordering::Relaxed), 3);
        assert_eq!(rx.try_recv().unwrap(), frame(0), "the first ones are kept");
        assert_eq!(rx.try_recv().unwrap(), frame(1));
        assert!(rx.try_recv().is_err());
        drop(rx);
        let mut late = vec![frame(9)];
        forward_control(&mut late, &tx, &counters);
        assert_eq!(
            counters.control_dropped.load(Ordering::Relaxed),
            3,
            "a closed queue is shutdown, not a drop"
        );
    }

    #[test]
    fn the_state_reads_back_as_set() {
        let c = IoCounters::default();
        assert_eq!(c.state(), WorkerState::Idle);
        assert_eq!(c.backend(), None);
        c.set_running(Backend::IoUring);
        c.set_state(WorkerState::Restarting);
        let s = c.status();
        assert_eq!(
            (s.backend.as_str(), s.state.as_str()),
            ("io_uring", "restarting")
        );
    }
}
