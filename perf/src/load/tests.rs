//! Loopback runs of every workload against a real server on a test thread.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::{client, ClientArgs, LoadError, LoadResult, Server, ServerArgs, Workload};

/// A server on an ephemeral loopback port, stopped (and checked to stop) on drop.
struct TestServer {
    addr: SocketAddrV4,
    cancel: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<Result<(), LoadError>>>,
}

impl TestServer {
    fn start() -> TestServer {
        let server = Server::bind(&ServerArgs {
            bind: Ipv4Addr::LOCALHOST,
            port: 0,
        })
        .expect("bind a loopback server");
        let addr = server.local_addr();
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&cancel);
        let handle = thread::spawn(move || server.run(&flag));
        TestServer {
            addr,
            cancel,
            handle: Some(handle),
        }
    }

    fn args(&self, workload: Workload, streams: usize, size: usize) -> ClientArgs {
        ClientArgs {
            server: *self.addr.ip(),
            port: self.addr.port(),
            workload,
            streams,
            size,
            seconds: 0.5,
            warmup: 0.1,
            rate: None,
        }
    }

    /// Sets cancel and returns the server's result once its thread has ended.
    fn stop(mut self) -> Result<(), LoadError> {
        self.cancel.store(true, Ordering::Relaxed);
        let handle = self.handle.take().expect("running");
        // Generous bound: the server polls every 100 ms; this only catches a server that
        // never returns.
        for _ in 0..500 {
            if handle.is_finished() {
                return handle.join().expect("server thread did not panic");
            }
            thread::sleep(Duration::from_millis(10));
        }
        panic!("serve did not return within 5 s of cancel");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

fn run(args: &ClientArgs) -> LoadResult {
    client(args).unwrap_or_else(|e| panic!("{:?} client failed: {e}", args.workload))
}

#[test]
fn tcp_counts_bytes_from_every_stream() {
    let server = TestServer::start();

    let r = run(&server.args(Workload::Tcp, 2, 0));

    assert_eq!(r.workload, Workload::Tcp);
    assert_eq!(r.streams, 2);
    assert!(r.bytes_received > 0, "{r:?}");
    assert!(r.seconds > 0.0 && r.seconds <= 0.5, "{r:?}");
    assert!(r.bits_per_second > 0.0, "{r:?}");
    assert_eq!((r.packets_sent, r.packets_received, r.size), (0, 0, 0));
    assert_eq!(r.latency, None);
    server.stop().expect("server ran cleanly");
}

#[test]
fn udp_counts_only_packets_sent_in_the_window() {
    let server = TestServer::start();

    let r = run(&server.args(Workload::Udp, 1, 1000));

    assert!(r.packets_received > 0, "{r:?}");
    assert!(r.packets_received <= r.packets_sent, "{r:?}");
    assert_eq!(r.bytes_received, r.packets_received * 1000, "{r:?}");
    assert!(r.packets_per_second > 0.0 && r.seconds > 0.0, "{r:?}");
    assert_eq!(r.latency, None);
    server.stop().expect("server ran cleanly");
}

#[test]
fn paced_udp_sends_about_its_rate_and_counts_over_the_nominal_window() {
    let server = TestServer::start();
    let mut args = server.args(Workload::Udp, 2, 200);
    args.rate = Some(2000.0);

    let r = run(&args);

    // 2000 packets/s for 0.5 s is 1000 packets; a loaded machine may send somewhat fewer
    // (a late sender skips rather than bursts), never more.
    assert!(
        (500..=1002).contains(&r.packets_sent),
        "{} sent: {r:?}",
        r.packets_sent
    );
    assert_eq!(r.rate, Some(2000.0));
    assert_eq!(r.seconds, 0.5);
    assert_eq!(r.packets_per_second, r.packets_received as f64 / 0.5);
    server.stop().expect("server ran cleanly");
}

#[test]
fn paced_rr_answers_every_request_and_keeps_its_histogram() {
    let server = TestServer::start();
    let mut args = server.args(Workload::Rr, 1, 16);
    args.rate = Some(1000.0);

    let r = run(&args);

    let l = r.latency.clone().expect("rr reports latency");
    let h = r.histogram.clone().expect("rr keeps its histogram");
    // Requests scheduled in the 0.5 s window: 500 of them (give or take the one on an
    // edge), all answered.
    assert!((499..=501).contains(&l.samples), "{r:?}");
    assert_eq!(h.samples(), l.samples);
    assert_eq!(r.packets_received, l.samples);
    assert_eq!(r.seconds, 0.5);
    assert!(l.p50_us > 0.0 && l.p50_us <= l.p999_us, "{l:?}");
    server.stop().expect("server ran cleanly");
}

#[test]
fn tcp_cannot_be_paced() {
    let args = ClientArgs {
        rate: Some(10.0),
        ..TestServer::start().args(Workload::Tcp, 1, 0)
    };

    let err = client(&args).unwrap_err();

    assert!(
        err.to_string().contains("rate applies to udp and rr"),
        "{err}"
    );
}

#[test]
fn rr_reports_ordered_percentiles() {
    let server = TestServer::start();

    let r = run(&server.args(Workload::Rr, 1, 64));

    let l = r.latency.clone().expect("rr reports latency");
    assert!(l.samples > 0, "{r:?}");
    assert_eq!(r.packets_sent, l.samples);
    assert_eq!(r.packets_received, l.samples);
    assert_eq!(r.bytes_received, l.samples * 64);
    assert!(l.p50_us > 0.0, "{l:?}");
    assert!(
        l.p50_us <= l.p90_us && l.p90_us <= l.p99_us && l.p99_us <= l.p999_us,
        "{l:?}"
    );
    assert!(r.packets_per_second > 0.0, "{r:?}");
    assert_eq!(r.histogram.map(|h| h.samples()), Some(l.samples));
    server.stop().expect("server ran cleanly");
}

#[test]
fn bad_control_line_is_refused_and_server_keeps_serving() {
    let server = TestServer::start();
    let mut raw = TcpStream::connect(server.addr).expect("connect");
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    raw.write_all(b"GET / HTTP/1.0\n").unwrap();
    let mut answer = String::new();
    BufReader::new(&raw).read_line(&mut answer).unwrap();

    assert!(answer.contains("\"type\":\"error\""), "{answer}");
    assert!(answer.contains("bad control line"), "{answer}");
    let r = run(&server.args(Workload::Rr, 1, 32));
    assert!(r.latency.is_some_and(|l| l.samples > 0));
    server.stop().expect("server ran cleanly");
}

#[test]
fn client_that_vanishes_mid_test_does_not_stop_the_server() {
    let server = TestServer::start();
    let mut raw = TcpStream::connect(server.addr).expect("connect");
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let start = "{\"type\":\"start\",\"version\":1,\"test\":7,\"workload\":\"tcp\",\
                 \"streams\":1,\"size\":0,\"seconds\":30.0,\"warmup\":0.0}\n";

    raw.write_all(start.as_bytes()).unwrap();
    let mut answer = String::new();
    BufReader::new(&raw).read_line(&mut answer).unwrap();
    assert_eq!(answer, "{\"type\":\"ready\"}\n");
    drop(raw);

    let r = run(&server.args(Workload::Tcp, 1, 0));
    assert!(r.bytes_received > 0, "{r:?}");
    server.stop().expect("server ran cleanly");
}

#[test]
fn stream_for_an_unknown_test_is_refused() {
    let server = TestServer::start();
    let mut raw = TcpStream::connect(server.addr).expect("connect");
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    raw.write_all(b"{\"type\":\"stream\",\"test\":12345,\"index\":0}\n")
        .unwrap();
    let mut answer = String::new();
    BufReader::new(&raw).read_line(&mut answer).unwrap();

    assert!(answer.contains("unknown test"), "{answer}");
    server.stop().expect("server ran cleanly");
}

#[test]
fn client_rejects_bad_arguments_before_connecting() {
    let args = ClientArgs {
        server: Ipv4Addr::LOCALHOST,
        port: 9,
        workload: Workload::Udp,
        streams: 1,
        size: 4,
        seconds: 0.5,
        warmup: 0.1,
        rate: None,
    };

    let err = client(&args).unwrap_err();

    assert!(matches!(err, LoadError::InvalidArgs(_)), "{err}");
    assert!(err.to_string().contains("udp size"), "{err}");
}

#[test]
fn client_names_the_server_it_cannot_reach() {
    // Bind then drop a listener so the port is (almost certainly) closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let args = ClientArgs {
        server: Ipv4Addr::LOCALHOST,
        port,
        workload: Workload::Tcp,
        streams: 1,
        size: 0,
        seconds: 0.5,
        warmup: 0.1,
        rate: None,
    };

    let err = client(&args).unwrap_err();

    assert!(matches!(err, LoadError::Connect { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("connect to server 127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn serve_returns_after_cancel_in_the_middle_of_a_test() {
    for workload in [Workload::Tcp, Workload::Rr] {
        let server = TestServer::start();
        let mut args = server.args(workload, 1, 64);
        args.seconds = 30.0;
        let running = thread::spawn(move || client(&args));
        thread::sleep(Duration::from_millis(300));

        server.stop().expect("server ran cleanly");

        let err = running.join().unwrap().unwrap_err();
        assert!(
            err.to_string().contains("server 127.0.0.1:"),
            "{workload:?}: {err}"
        );
    }
}

#[test]
fn serve_returns_after_cancel_when_idle() {
    let server = TestServer::start();

    server.stop().expect("server ran cleanly");
}
