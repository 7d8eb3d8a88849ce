//! The HTTP API and its client end to end: a real axum server on 127.0.0.1:0 serving a real
//! `RouterStatus` (the captured host2 report), queried with the `weave-router` client code.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use weave_router::api::stats::Stats;
use weave_router::api::{self, text, ApiRequest, ApiState};
use weave_router::cli::{self, http, CliError, ClientError, StatusArgs, StatusPage};
use weave_router::mesh::rtt::RttSummary;
use weave_router::mesh::status::{Report, RouterStatus};

/// An order the stand-in owner task received.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Order {
    Connect(Vec<SocketAddr>, bool),
    Forget(Vec<SocketAddr>),
}

struct Server {
    api: SocketAddr,
    metrics: SocketAddr,
    orders: Arc<Mutex<Vec<Order>>>,
    status: RouterStatus,
    stop: watch::Sender<bool>,
}

/// host2's `/report` Router section (it has no nulls, so it parses as is).
fn host2_status() -> RouterStatus {
    let text = include_str!("../testdata/report-host2.json");
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    serde_json::from_value(v["Router"].clone()).unwrap()
}

/// Starts the API and metrics servers, and a task that answers them as the mesh owner does.
async fn start(answering: bool) -> Server {
    let status = host2_status();
    let (tx, mut rx) = mpsc::channel(8);
    let orders = Arc::new(Mutex::new(Vec::new()));
    let (stop, stop_rx) = watch::channel(false);

    let owner_status = status.clone();
    let owner_orders = orders.clone();
    tokio::spawn(async move {
        if !answering {
            // Gone, as when the router is shutting down.
            drop(rx);
            return;
        }
        while let Some(req) = rx.recv().await {
            match req {
                ApiRequest::Status { reply } => {
                    let _ = reply.send(owner_status.clone());
                }
                ApiRequest::Stats { reply } => {
                    let _ = reply.send(api::MeshSnapshot {
                        router: owner_status.clone(),
                        rtt: [("192.168.77.1:6783".to_string(), rtt())].into(),
                    });
                }
                ApiRequest::Connect {
                    addrs,
                    replace,
                    reply,
                } => {
                    owner_orders.lock().unwrap().push(Order::Connect(
                        addrs.iter().map(|d| d.addr).collect(),
                        replace,
                    ));
                    let _ = reply.send(());
                }
                ApiRequest::Forget { addrs, reply } => {
                    owner_orders
                        .lock()
                        .unwrap()
                        .push(Order::Forget(addrs.iter().map(|d| d.addr).collect()));
                    let _ = reply.send(());
                }
                // IPAM is off in this server: its handlers answer without asking.
                ApiRequest::Ipam(_) => unreachable!("IPAM request with IPAM off"),
            }
        }
    });

    let state = ApiState {
        requests: tx,
        port: 6783,
        dataplane: None,
        started: std::time::Instant::now(),
        ipam: false,
    };
    let mut addrs = Vec::new();
    for app in [api::router(state.clone()), api::metrics_router(state)] {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(l.local_addr().unwrap());
        let mut stop_rx = stop_rx.clone();
        tokio::spawn(api::serve(l, app, async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        }));
    }
    Server {
        api: addrs[0],
        metrics: addrs[1],
        orders,
        status,
        stop,
    }
}

/// The RTT summary the stand-in owner reports for host1's connection.
fn rtt() -> RttSummary {
    RttSummary {
        samples: 5,
        last_us: 210,
        p50_us: 200,
        p90_us: 300,
        p99_us: 400,
        max_us: 400,
        lost: 0,
    }
}

/// Runs blocking client code off the runtime's worker threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn status_output(
    addr: SocketAddr,
    page: Option<StatusPage>,
    json: bool,
) -> Result<String, CliError> {
    let mut out = Vec::new();
    cli::status(
        &StatusArgs {
            page,
            http_addr: addr,
            json,
        },
        &mut out,
    )?;
    Ok(String::from_utf8(out).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_pages_show_the_snapshot() {
    let s = start(true).await;
    let addr = s.api;
    let pages = blocking(move || {
        [
            None,
            Some(StatusPage::Peers),
            Some(StatusPage::Connections),
            Some(StatusPage::Targets),
        ]
        .map(|p| status_output(addr, p, false).unwrap())
    })
    .await;
    assert_eq!(pages[0], text::render_status(api::VERSION, &s.status, None));
    assert!(pages[0].contains("           Name: aa:00:00:00:00:02(host2)\n"));
    assert_eq!(
        pages[1],
        "aa:00:00:00:00:02(host2)\n\
         \x20  -> 192.168.77.1:6783     aa:00:00:00:00:01(host1)              established\n\
         \x20  <- 192.168.78.3:48645    aa:00:00:00:00:03(host3)              established\n\
         aa:00:00:00:00:01(host1)\n\
         \x20  <- 192.168.77.2:43347    aa:00:00:00:00:02(host2)              established\n\
         aa:00:00:00:00:03(host3)\n\
         \x20  -> 192.168.78.2:6783     aa:00:00:00:00:02(host2)              established\n"
    );
    assert_eq!(
        pages[2],
        "-> 192.168.77.1:6783     established sleeve aa:00:00:00:00:01(host1) mtu=1438\n\
         <- 192.168.78.3:48645    established sleeve aa:00:00:00:00:03(host3) mtu=1438\n"
    );
    assert_eq!(pages[3], "192.168.77.1\n");
    let _ = s.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_report_round_trips() {
    let s = start(true).await;
    let addr = s.api;
    let out = blocking(move || status_output(addr, None, true).unwrap()).await;
    // Weave's key order and indentation, not re-sorted by the client.
    assert!(
        out.starts_with("{\n    \"Ready\": true,\n    \"Version\": "),
        "{out}"
    );
    let report: Report = serde_json::from_str(&out).unwrap();
    assert!(report.ready);
    assert_eq!(report.version, api::VERSION);
    assert_eq!(report.router, s.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_forget_reach_the_owner() {
    let s = start(true).await;
    let addr = s.api;
    blocking(move || {
        cli::connect(&cli::ConnectArgs {
            replace: true,
            http_addr: addr,
            peers: vec![
                "10.0.0.1".into(),
                "[fd00::2]:7000".into(),
                "localhost:7001".into(),
            ],
        })
        .unwrap();
        cli::forget(&cli::ForgetArgs {
            http_addr: addr,
            peers: vec!["10.0.0.1".into()],
        })
        .unwrap();
        // The query string works too, and replace defaults to false.
        http::post_form(addr, "/connect?peer=10.0.0.4%3A9", "").unwrap();
    })
    .await;
    let orders = s.orders.lock().unwrap().clone();
    assert_eq!(
        orders,
        [
            Order::Connect(
                vec![
                    "10.0.0.1:6783".parse().unwrap(),
                    "[fd00::2]:7000".parse().unwrap(),
                    "127.0.0.1:7001".parse().unwrap()
                ],
                true
            ),
            Order::Forget(vec!["10.0.0.1:6783".parse().unwrap()]),
            Order::Connect(vec!["10.0.0.4:9".parse().unwrap()], false),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_peers_are_refused_but_good_ones_taken() {
    let s = start(true).await;
    let addr = s.api;
    let err = blocking(move || {
        http::post_form(
            addr,
            "/connect",
            "peer=a%3Ab%3Ac&peer=10.0.0.3&replace=false",
        )
        .unwrap_err()
    })
    .await;
    match err {
        ClientError::Refused {
            status, message, ..
        } => {
            assert_eq!(status, 400);
            assert!(message.contains("bad peer address 'a:b:c'"), "{message}");
        }
        other => panic!("unexpected {other}"),
    }
    let bad_form =
        blocking(move || http::post_form(addr, "/forget", "peer=%zz").unwrap_err()).await;
    assert!(
        bad_form.to_string().contains("unable to parse form"),
        "{bad_form}"
    );
    assert_eq!(
        s.orders.lock().unwrap().clone(),
        [Order::Connect(
            vec!["10.0.0.3:6783".parse().unwrap()],
            false
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_connections() {
    let s = start(true).await;
    let addr = s.metrics;
    let resp = blocking(move || http::get(addr, "/metrics", "text/plain").unwrap()).await;
    let body = String::from_utf8(resp.body).unwrap();
    assert!(
        body.lines()
            .any(|l| l
                == "weave_connections{encryption=\"\",state=\"established\",type=\"sleeve\"} 2")
    );
    assert!(body
        .lines()
        .any(|l| l == "weave_connection_terminations_total 0"));
    // A real scrape parses as the exposition format, and the RTT of host1 is in it.
    let samples = api::metrics::check_exposition(&body).unwrap();
    let p90 = samples
        .iter()
        .find(|s| {
            s.name == "weave_router_peer_rtt_seconds"
                && s.label("nickname") == Some("host1")
                && s.label("quantile") == Some("0.9")
        })
        .unwrap_or_else(|| panic!("no host1 p90 RTT in:\n{body}"));
    assert_eq!(p90.value, 0.0003);
    // The same page through the `metrics` client subcommand.
    let printed = blocking(move || {
        let mut out = Vec::new();
        cli::metrics(&cli::MetricsArgs { metrics_addr: addr }, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    })
    .await;
    assert!(printed.ends_with("# EOF\n"), "{printed}");
    // The control API is not served on the metrics address.
    let err = blocking(move || http::get(addr, "/status", "text/plain").unwrap_err()).await;
    assert!(
        matches!(err, ClientError::Refused { status: 404, .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_gone_is_503() {
    let s = start(false).await;
    let addr = s.api;
    let err = blocking(move || status_output(addr, None, false).unwrap_err()).await;
    assert!(
        matches!(
            err,
            CliError::Http(ClientError::Refused { status: 503, .. })
        ),
        "{err}"
    );
}

/// A `weave-router launch` child process, killed if the test ends early.
struct Daemon {
    child: std::process::Child,
    http: SocketAddr,
    _db: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn launch(name: &str, nickname: &str, peers: &[String]) -> (Daemon, u16) {
    let port = free_port();
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let db = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_weave-router"))
        .arg("launch")
        .arg("--db-dir")
        .arg(db.path())
        .arg(format!("--name={name}"))
        .arg(format!("--nickname={nickname}"))
        .arg(format!("--port={port}"))
        .arg(format!("--http-addr={http}"))
        .arg("--metrics-addr=")
        .arg("--dataplane=none")
        .args(peers)
        .env_remove("KUBE_PEERS")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    (
        Daemon {
            child,
            http,
            _db: db,
        },
        port,
    )
}

/// Polls `/report` until `done` holds; gives up (fails) after a generous bound so a broken
/// build fails instead of hanging. Not a timing assertion.
fn wait_for(d: &Daemon, what: &str, done: impl Fn(&Report) -> bool) -> Report {
    let mut last = String::new();
    for _ in 0..300 {
        match http::get(d.http, "/report", "application/json") {
            Ok(resp) => {
                let report: Report = serde_json::from_slice(&resp.body).unwrap();
                if done(&report) {
                    return report;
                }
                last = format!("{:?}", report.router.connections);
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("gave up waiting for {what}; last: {last}");
}

fn established(r: &Report) -> bool {
    r.router.connections.len() == 1 && r.router.connections[0].state == "established"
}

#[test]
fn two_daemons_on_loopback_connect_and_shut_down_on_sigterm() {
    let (a, a_port) = launch("aa:00:00:00:00:01", "host1", &[]);
    let (mut b, _) = launch(
        "aa:00:00:00:00:02",
        "host2",
        &[format!("127.0.0.1:{a_port}")],
    );

    let ra = wait_for(&a, "host1 to accept host2", established);
    let rb = wait_for(&b, "host2 to reach host1", established);
    assert!(!ra.router.connections[0].outbound);
    assert!(rb.router.connections[0].outbound);
    assert_eq!(rb.router.targets, [format!("127.0.0.1:{a_port}")]);
    let rb = wait_for(&b, "host2 to learn host1", |r| r.router.peers.len() == 2);
    assert_eq!(rb.router.peers[1].nickname, "host1");

    let peers = status_output(b.http, Some(StatusPage::Peers), false).unwrap();
    assert!(
        peers.starts_with("aa:00:00:00:00:02(host2)\n   -> 127.0.0.1:"),
        "{peers}"
    );

    // SIGTERM: host2 logs and exits cleanly; host1 sees the connection end.
    let pid = b.child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = b.child.wait().unwrap();
    assert!(status.success(), "{status}");
    let mut log = String::new();
    std::io::Read::read_to_string(b.child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(log.contains("=== received SIGTERM ==="), "{log}");
    let ra = wait_for(&a, "host1 to drop host2", |r| {
        r.router.connections.is_empty()
    });
    assert!(ra.router.termination_count >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_json_and_text_reports() {
    let s = start(true).await;
    let addr = s.api;
    let raw: Stats = blocking(move || cli::stats::fetch(addr).unwrap()).await;
    assert_eq!(raw.name, "aa:00:00:00:00:02");
    assert_eq!(raw.dataplane, None);
    let host1 = &raw.peers[0];
    assert_eq!(host1.nickname, "host1");
    assert_eq!(host1.rtt, Some(rtt()));
    assert_eq!(host1.mtu, Some(1438));

    let args = move |json| cli::StatsArgs {
        http_addr: addr,
        watch: false,
        json,
        interval: std::time::Duration::from_millis(50),
        count: Some(2),
    };
    let (json, text) = blocking(move || {
        let mut json = Vec::new();
        cli::stats::run(&args(true), &mut json).unwrap();
        let mut text = Vec::new();
        cli::stats::run(&args(false), &mut text).unwrap();
        (
            String::from_utf8(json).unwrap(),
            String::from_utf8(text).unwrap(),
        )
    })
    .await;
    let docs: Vec<cli::stats::StatsReport> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(docs.len(), 2, "{json}");
    // The router's own clock: later samples are later, and nothing restarted.
    assert!(docs[1].totals.monotonic_ns > docs[0].totals.monotonic_ns);
    assert!(docs.iter().all(|d| !d.restarted && d.interval_s > 0.0));
    assert_eq!(docs[0].peers[1].overlay.as_deref(), Some("sleeve"));
    assert!(text.contains("aa:00:00:00:00:01(host1)"), "{text}");
    assert!(
        text.contains("0.20/0.30/0.40/0.40 (5 samples, 0 lost)"),
        "{text}"
    );
    assert_eq!(text.matches("no data plane").count(), 2, "{text}");
    let _ = s.stop.send(true);
}

#[test]
fn stats_says_when_the_router_is_not_running() {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let args = cli::StatsArgs {
        http_addr: addr,
        watch: false,
        json: false,
        interval: std::time::Duration::from_millis(10),
        count: None,
    };
    let err = cli::stats::run(&args, &mut Vec::new()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("cannot reach weave-router at {addr}:")),
        "{text}"
    );
    assert!(text.ends_with("(is it running?)"), "{text}");
}
