//! Privileged tests of the data-plane workers under faults, on both backends, each in a
//! fresh network namespace (a real TAP queue, UDP sockets on its loopback):
//!
//! - a TAP deleted under a worker: its read is armed again with backoff, not in a busy loop;
//!   the worker then gives up and the supervisor restarts it on the same TAP queue and
//!   socket, falls back from io_uring to epoll, and finally gives it up;
//! - a full send buffer: sends are dropped and counted, and nothing blocks;
//! - a kernel that refuses segmented sends: the run goes out one datagram at a time;
//! - a control task that does not keep up: special frames are dropped and counted.
//!
//! They need root; without it they print why they are skipped (and fail under `CI`).
#![allow(unsafe_code)]

use std::io::IoSlice;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weave_router::dataplane::engine::{ControlFrame, Counters, PeerPath, Snapshot};
use weave_router::dataplane::learn::LearnBus;
use weave_router::dataplane::supervise::{RestartPolicy, Supervisor};
use weave_router::dataplane::worker::{
    Backend, WorkerError, WorkerExit, WorkerLimits, WorkerSetup, WorkerSockets, WorkerState,
};
use weave_router::ids::PeerName;
use weave_router::mesh::sleeve::Udp;
use weave_router::switch::Routes;
use weave_router::sys::netns;
use weave_router::sys::socket::{open_udp, send_segments, UdpOptions};
use weave_router::sys::tap::{TapOptions, TapQueue};
use weave_router::wire::sleeve::{encode_packet, SleeveFrame};

mod common;
use common::Netns;

const PREFIX: &str = "wrfault-";
const TAP: &str = "wrf0";
/// How long any one wait in these tests may take before it fails the test.
const PATIENCE: Duration = Duration::from_secs(30);

fn peer(last: u8) -> PeerName {
    PeerName::from_bytes([0xaa, 0, 0, 0, 0, last])
}

/// Us (the worker's router), a peer that sends to us, and a peer we relay to.
fn ourself() -> PeerName {
    peer(1)
}
fn x() -> PeerName {
    peer(2)
}
fn y() -> PeerName {
    peer(3)
}

/// A namespace with a TAP queue and sockets for one worker, and peers X and Y as sockets.
struct Bed {
    ns: Netns,
    tap: Option<TapQueue>,
    udp: Option<UdpSocket>,
    /// The worker's socket's address.
    addr: SocketAddr,
    /// Peer X: sends to the worker.
    x: UdpSocket,
    /// Peer Y: the worker relays to it (its path may be overridden with `y_path`).
    y: UdpSocket,
}

impl Bed {
    /// A bed whose worker socket is opened with `udp` (bound to any address, port chosen).
    fn new(test: &str, udp: UdpOptions) -> Option<Bed> {
        let ns = Netns::new(test, PREFIX)?;
        let (tap, worker_udp, x, y) = netns::run_in_netns(&ns.name, || {
            let tap = TapQueue::open(TAP, &TapOptions::default()).expect("open the TAP");
            let worker_udp = open_udp(&udp).expect("open the worker's socket");
            let x = UdpSocket::bind("127.0.0.1:0").unwrap();
            let y = UdpSocket::bind("127.0.0.1:0").unwrap();
            (tap, worker_udp, x, y)
        })
        .expect("enter the namespace");
        y.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        // The TAP stays down: the kernel's own frames (IPv6 solicitations) would be flooded
        // to X and Y. Reads from it just find nothing.
        let port = worker_udp.local_addr().unwrap().port();
        Some(Bed {
            ns,
            tap: Some(tap),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            udp: Some(worker_udp),
            x,
            y,
        })
    }

    /// Starts the worker on `backend` under a new supervisor whose control queue holds
    /// `control` frames, and gives it routes to X and Y (Y at `y_path`, or its socket).
    fn start(
        &mut self,
        backend: Backend,
        limits: WorkerLimits,
        policy: RestartPolicy,
        control: usize,
        y_path: Option<SocketAddr>,
    ) -> Running {
        let (control_tx, control_rx) = tokio::sync::mpsc::channel(control);
        let (exits_tx, exits_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut supervisor = Supervisor::new(control_tx, exits_tx, policy);
        let setup = WorkerSetup {
            index: 0,
            ourself: ourself(),
            learn: LearnBus::new(1),
            offload: true,
            cpu: None,
            limits,
        };
        let sockets = WorkerSockets {
            udp: self.udp.take().expect("one worker per bed"),
            own: None,
        };
        let tap = self.tap.take().expect("one worker per bed");
        // Published first, the snapshot is the worker's before its first datagram.
        supervisor.publish(Arc::new(snapshot(
            self.x.local_addr().unwrap(),
            y_path.unwrap_or_else(|| self.y.local_addr().unwrap()),
        )));
        supervisor
            .start(backend, setup, tap, sockets, Instant::now())
            .expect("start the worker");
        let counters = supervisor.counters().remove(0);
        Running {
            supervisor,
            counters,
            control: control_rx,
            exits: exits_rx,
        }
    }

    /// X sends `datagrams` (each a sleeve packet of the same size) to the worker in one
    /// segmented send, so that they arrive as one GRO batch.
    fn x_sends_burst(&self, datagrams: &[Vec<u8>]) {
        let size = datagrams[0].len();
        assert!(datagrams.iter().all(|d| d.len() == size));
        let bytes = datagrams.concat();
        let sent = send_segments(
            &self.x,
            &[IoSlice::new(&bytes)],
            Some(self.addr),
            Some(size as u16),
        )
        .expect("X sends a burst");
        assert_eq!(sent, bytes.len());
    }

    /// Datagrams Y receives until none arrives for a while, up to `want`.
    fn y_receives(&self, want: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + PATIENCE;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65_536];
        while got.len() < want && Instant::now() < deadline {
            if let Ok(n) = self.y.recv(&mut buf) {
                got.push(buf[..n].to_vec());
            }
        }
        got
    }
}

/// A worker under its supervisor, with the ends the daemon would hold.
struct Running {
    supervisor: Supervisor,
    counters: Arc<Counters>,
    control: tokio::sync::mpsc::Receiver<ControlFrame>,
    exits: tokio::sync::mpsc::UnboundedReceiver<WorkerExit>,
}

impl Running {
    /// The next failure report.
    fn next_exit(&mut self) -> WorkerExit {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(exit) = self.exits.try_recv() {
                return exit;
            }
            assert!(
                Instant::now() < deadline,
                "no worker failure reported within {PATIENCE:?}; counters: {:?}",
                self.counters.status().io
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Lets the supervisor carry out the restart it scheduled.
    fn restart_when_due(&mut self) {
        let due = self
            .supervisor
            .poll_timeout()
            .expect("a restart is scheduled");
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        self.supervisor.handle_timeout(Instant::now());
        assert_eq!(self.supervisor.poll_timeout(), None, "restarted");
    }

    /// Waits until `done` holds of the counters.
    fn wait_for(&self, what: &str, done: impl Fn(&Counters) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done(&self.counters) {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {PATIENCE:?}; counters: {:?}",
                self.counters.status()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn load(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn snapshot(x_addr: SocketAddr, y_addr: SocketAddr) -> Snapshot {
    let path = |udp| PeerPath {
        udp,
        mtu: 1438,
        spread: false,
        partial_csum: false,
    };
    Snapshot {
        routes: Routes {
            ourself: ourself(),
            unicast: [(x(), x()), (y(), y())].into_iter().collect(),
            broadcast: [(ourself(), vec![x(), y()]), (x(), vec![]), (y(), vec![])]
                .into_iter()
                .collect(),
        },
        paths: [(x(), path(x_addr)), (y(), path(y_addr))]
            .into_iter()
            .collect(),
        crypto: Default::default(),
    }
}

/// A sleeve datagram from X carrying frame number `n` (of `len` bytes) for a pod behind Y.
fn relayed_frame(n: u8, len: usize) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 0x0b, 0x02, 0, 0, 0, 0, 0x0a, 0x88, 0xb5];
    frame.resize(len, n);
    let f = SleeveFrame {
        src: x(),
        dst: y(),
        frame: &frame,
    };
    encode_packet(x(), &[f]).unwrap()
}

/// A sleeve datagram from X carrying a special frame (all-zero Ethernet header) for us.
fn special_frame(n: u8) -> Vec<u8> {
    let mut frame = vec![0u8; 14];
    frame.extend_from_slice(&[n; 10]);
    let f = SleeveFrame {
        src: x(),
        dst: ourself(),
        frame: &frame,
    };
    encode_packet(x(), &[f]).unwrap()
}

fn with_watchdog(seconds: u64, test: impl FnOnce() + Send + 'static) {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        test();
        done_tx.send(()).unwrap();
    });
    match done_rx.recv_timeout(Duration::from_secs(seconds)) {
        Ok(()) => worker.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("hung for {seconds} s"),
    }
}

fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) {
    // SAFETY: `value` outlives the call and the length matches its type.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
}

/// The worker's socket, bound to every address of the namespace (a socket bound to
/// loopback may send nowhere else).
fn worker_socket() -> UdpOptions {
    UdpOptions {
        reuse_port: false,
        ..UdpOptions::sleeve("0.0.0.0:0".parse().unwrap(), true)
    }
}

/// The TAP is deleted under an io_uring worker. Each life of the worker arms the dead read
/// again exactly `input_failures` times, with growing waits, then fails; the supervisor
/// (one restart per backend) restarts it on io_uring, then falls back to epoll, then gives
/// up. Every life runs on the same TAP queue and socket: a datagram queued on the socket
/// while no worker runs is relayed by the next one.
#[test]
fn a_deleted_tap_backs_off_then_the_worker_restarts_on_its_socket_falls_back_and_is_given_up() {
    with_watchdog(120, || {
        let test = "a_deleted_tap_backs_off_then_the_worker_restarts";
        let Some(mut bed) = Bed::new(test, worker_socket()) else {
            return;
        };
        let limits = WorkerLimits {
            input_failures: 8,
            ..WorkerLimits::default()
        };
        let policy = RestartPolicy {
            restarts: 1,
            first_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            healthy_after: Duration::from_secs(600),
        };
        let mut w = bed.start(Backend::IoUring, limits, policy, 16, None);
        bed.x
            .send_to(&relayed_frame(0, 100), bed.addr)
            .expect("X sends");
        assert_eq!(bed.y_receives(1).len(), 1, "relayed before the fault");

        bed.ns.ip(&["link", "del", TAP]);

        let mut exits = Vec::new();
        let mut parts = Vec::new();
        for life in 0..3u8 {
            let exit = w.next_exit();
            assert!(
                matches!(
                    exit.error,
                    WorkerError::Input {
                        input: "TAP read",
                        failures: 9,
                        ..
                    }
                ),
                "life {life}: {}",
                exit.error
            );
            exits.push(exit.backend);
            parts.push((
                exit.parts.tap.as_raw_fd(),
                exit.parts.sockets.udp.local_addr().unwrap(),
            ));
            w.supervisor.handle_exit(exit, Instant::now());
            if life == 2 {
                break;
            }
            assert_eq!(w.counters.io.state(), WorkerState::Restarting);
            // Queued on the socket while no worker runs: only the next one can relay it.
            bed.x
                .send_to(&relayed_frame(life + 1, 100), bed.addr)
                .expect("X sends");
            w.restart_when_due();
            assert_eq!(w.counters.io.state(), WorkerState::Running);
            let got = bed.y_receives(1);
            assert_eq!(
                got.len(),
                1,
                "life {}: the restarted worker relays",
                life + 1
            );
            assert_eq!(*got[0].last().unwrap(), life + 1);
        }

        assert_eq!(
            exits,
            vec![Backend::IoUring, Backend::IoUring, Backend::Epoll]
        );
        assert!(
            parts.windows(2).all(|p| p[0] == p[1]),
            "every life on the same TAP queue and socket: {parts:?}"
        );
        let status = w.counters.status().io;
        assert_eq!(
            (status.backend.as_str(), status.state.as_str()),
            ("epoll", "failed")
        );
        assert_eq!(status.restarts, 2);
        assert_eq!(
            status.rearms,
            3 * u64::from(limits.input_failures),
            "each life re-arms the dead read its bound of times, no more"
        );
        assert_eq!(w.supervisor.poll_timeout(), None, "given up");
        let probe = Udp {
            peer: y(),
            to: bed.y.local_addr().unwrap(),
            df: true,
            datagram: vec![0; 8],
        };
        assert!(
            !w.supervisor.send_datagram(probe),
            "no worker left to send through"
        );
        w.supervisor.stop();
    });
}

/// Sends to a destination behind a slow qdisc with a tiny send buffer: the buffer fills, and
/// the sends beyond are dropped and counted; every send is accounted for, and the worker
/// goes on handling what arrives.
fn a_full_send_buffer_drops_and_counts(backend: Backend) {
    let test = format!("a_full_send_buffer_drops_and_counts ({backend})");
    let options = UdpOptions {
        send_buffer: Some(4096),
        ..worker_socket()
    };
    let Some(mut bed) = Bed::new(&test, options) else {
        return;
    };
    // 10.9.9.2 lies behind a veth whose queue drains at 1 kB/s: what the worker sends there
    // stays charged to its send buffer. Loopback (X, Y) stays fast.
    let cmds: [&[&str]; 5] = [
        &[
            "link", "add", "wrd0", "type", "veth", "peer", "name", "wrd1",
        ],
        &["addr", "add", "10.9.9.1/24", "dev", "wrd0"],
        &["link", "set", "wrd0", "up"],
        &["link", "set", "wrd1", "up"],
        &[
            "neigh",
            "add",
            "10.9.9.2",
            "lladdr",
            "02:00:00:00:00:99",
            "dev",
            "wrd0",
        ],
    ];
    for cmd in cmds {
        bed.ns.ip(cmd);
    }
    bed.ns.exec(&[
        "tc", "qdisc", "add", "dev", "wrd0", "root", "tbf", "rate", "8kbit", "burst", "1600",
        "limit", "1000000",
    ]);
    let slow: SocketAddr = "10.9.9.2:9".parse().unwrap();
    let mut w = bed.start(
        backend,
        WorkerLimits::default(),
        RestartPolicy::default(),
        1024,
        Some(slow),
    );
    let (direct, relayed) = (300u64, 64u64);

    for n in 0..direct {
        let udp = Udp {
            peer: y(),
            to: slow,
            df: true,
            datagram: vec![n as u8; 1000],
        };
        assert!(w.supervisor.send_datagram(udp), "the worker runs");
    }
    let burst: Vec<Vec<u8>> = (0..relayed as u8).map(|n| relayed_frame(n, 1000)).collect();
    for chunk in burst.chunks(16) {
        bed.x_sends_burst(chunk);
    }

    w.wait_for("every send sent or dropped", |c| {
        load(&c.udp_tx_datagrams) + load(&c.io.send_dropped) == direct + relayed
    });
    let sent = load(&w.counters.udp_tx_datagrams);
    let dropped = load(&w.counters.io.send_dropped);
    println!("[{backend}] sent {sent}, dropped {dropped}");
    assert!(dropped > 0, "a full send buffer drops");
    assert!(sent > 0, "what fits is sent");
    // Still at work: a special frame from X reaches the control task.
    bed.x.send_to(&special_frame(7), bed.addr).unwrap();
    let deadline = Instant::now() + PATIENCE;
    let frame = loop {
        if let Ok(f) = w.control.try_recv() {
            break f;
        }
        assert!(Instant::now() < deadline, "the worker stopped working");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(frame.src, x());
    assert_eq!(w.counters.io.state(), WorkerState::Running);
    w.supervisor.stop();
}

#[test]
fn a_full_send_buffer_drops_and_counts_on_io_uring() {
    with_watchdog(120, || {
        a_full_send_buffer_drops_and_counts(Backend::IoUring)
    });
}

#[test]
fn a_full_send_buffer_drops_and_counts_on_epoll() {
    with_watchdog(120, || a_full_send_buffer_drops_and_counts(Backend::Epoll));
}

/// A socket without UDP checksums (`SO_NO_CHECK`) makes the kernel refuse segmented sends
/// with `EINVAL`, as an IPsec policy does with `EIO`: the relayed run goes out one datagram
/// at a time, and so does the next one, without another refusal.
fn a_refused_segmented_send_goes_out_unsegmented(backend: Backend) {
    let test = format!("a_refused_segmented_send_goes_out_unsegmented ({backend})");
    let Some(mut bed) = Bed::new(&test, worker_socket()) else {
        return;
    };
    let fd = bed.udp.as_ref().unwrap().as_raw_fd();
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_NO_CHECK, 1);
    let mut w = bed.start(
        backend,
        WorkerLimits::default(),
        RestartPolicy::default(),
        16,
        None,
    );

    for round in 0..2u8 {
        let burst: Vec<Vec<u8>> = (0..10)
            .map(|n| relayed_frame(round * 10 + n, 600))
            .collect();
        bed.x_sends_burst(&burst);

        let got = bed.y_receives(10);

        assert_eq!(
            got.len(),
            10,
            "round {round}: every relayed datagram arrives; counters: {:?}",
            w.counters.status()
        );
        let mut tags: Vec<u8> = got.iter().map(|d| *d.last().unwrap()).collect();
        tags.sort_unstable();
        let want: Vec<u8> = (round * 10..round * 10 + 10).collect();
        assert_eq!(tags, want);
    }
    w.wait_for("twenty sent", |c| load(&c.udp_tx_datagrams) == 20);
    assert_eq!(
        load(&w.counters.io.gso_fallbacks),
        1,
        "refused once; unsegmented from then on"
    );
    w.supervisor.stop();
}

#[test]
fn a_refused_segmented_send_goes_out_unsegmented_on_io_uring() {
    with_watchdog(60, || {
        a_refused_segmented_send_goes_out_unsegmented(Backend::IoUring)
    });
}

#[test]
fn a_refused_segmented_send_goes_out_unsegmented_on_epoll() {
    with_watchdog(60, || {
        a_refused_segmented_send_goes_out_unsegmented(Backend::Epoll)
    });
}

/// The control task's queue holds four frames and nobody reads it: of twenty special frames,
/// four wait in the queue and sixteen are dropped and counted.
fn special_frames_beyond_the_control_queue_are_dropped_and_counted(backend: Backend) {
    let test = format!("special_frames_beyond_the_control_queue ({backend})");
    let Some(mut bed) = Bed::new(&test, worker_socket()) else {
        return;
    };
    let mut w = bed.start(
        backend,
        WorkerLimits::default(),
        RestartPolicy::default(),
        4,
        None,
    );

    for n in 0..20 {
        bed.x.send_to(&special_frame(n), bed.addr).unwrap();
    }

    w.wait_for("twenty datagrams received", |c| {
        load(&c.udp_rx_datagrams) == 20
    });
    w.wait_for("sixteen dropped", |c| load(&c.io.control_dropped) == 16);
    let mut queued = 0;
    while w.control.try_recv().is_ok() {
        queued += 1;
    }
    assert_eq!(queued, 4);
    w.supervisor.stop();
}

#[test]
fn special_frames_beyond_the_control_queue_are_dropped_and_counted_on_io_uring() {
    with_watchdog(60, || {
        special_frames_beyond_the_control_queue_are_dropped_and_counted(Backend::IoUring)
    });
}

#[test]
fn special_frames_beyond_the_control_queue_are_dropped_and_counted_on_epoll() {
    with_watchdog(60, || {
        special_frames_beyond_the_control_queue_are_dropped_and_counted(Backend::Epoll)
    });
}
