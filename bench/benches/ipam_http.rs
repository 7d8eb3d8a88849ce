//! IPAM over HTTP, end to end: a real `weave-router` (seeded with its own name, so the ring
//! exists at once; no data plane; store in a temporary directory) answers 1,000
//! `POST /ip/{id}` from 50 concurrent clients, then 1,000 `DELETE /ip/{id}`. Each request
//! is a fresh loopback connection, as the CNI plugin makes them, and each allocation is
//! committed to the store before its answer. Reports p50/p99/max latency and throughput.
//!
//! Needs the router binary: `$WEAVE_ROUTER_BIN`, else `target/release/weave-router`, else
//! `target/debug/weave-router` of the target directory this benchmark was built in.
//! Build it first with `cargo build --release -p weave-router`.
//!
//! Run with `cargo bench -p weave-bench --bench ipam_http`. Under `cargo test` (no
//! `--bench` argument) it does nothing.

use std::collections::HashSet;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use weave_router::cli::http;

const REQUESTS: usize = 1_000;
const CLIENTS: usize = 50;
const NAME: &str = "aa:00:00:00:00:01";
const ROUTER_BIN_ENV: &str = "WEAVE_ROUTER_BIN";
/// Longest latency the histograms track (a request gives up after the client's own 10 s).
const MAX_TRACKED_NS: u64 = 60_000_000_000;

fn main() -> ExitCode {
    if !std::env::args().any(|a| a == "--bench") {
        println!("ipam_http: run it with `cargo bench -p weave-bench --bench ipam_http`");
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipam_http: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The router binary: `$WEAVE_ROUTER_BIN`, else a release build, else a debug build in the
/// target directory that holds this benchmark (`target/release/deps/ipam_http-*`).
fn locate_router_bin() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(ROUTER_BIN_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "{ROUTER_BIN_ENV}={} is not a file; build the router with `cargo build --release -p weave-router`",
                path.display()
            ))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("current executable unknown: {e}"))?;
    // deps/ → <profile>/ → target/
    let target = exe
        .ancestors()
        .nth(3)
        .ok_or_else(|| format!("no target directory above {}", exe.display()))?;
    let candidates: Vec<PathBuf> = ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("weave-router"))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            format!(
                "weave-router binary not found (looked at {}); build it with \
                 `cargo build --release -p weave-router` or set {ROUTER_BIN_ENV}",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// A loopback port that was free a moment ago.
fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

/// The router under test, killed and reaped on drop.
struct Router {
    child: Child,
    api: SocketAddr,
    log: PathBuf,
}

impl Router {
    fn launch(bin: &Path, dir: &Path) -> Result<Router, String> {
        let port = free_port()?;
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()?)
            .parse()
            .map_err(|e| format!("API address: {e}"))?;
        let log = dir.join("router.log");
        let out = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(bin)
            .arg("launch")
            .args(["--name", NAME, "--nickname", "bench"])
            .args(["--port", &port.to_string()])
            .args(["--http-addr", &api.to_string(), "--metrics-addr="])
            .args(["--dataplane", "none"])
            .args(["--ipalloc-init", &format!("seed={NAME}")])
            .arg("--db-dir")
            .arg(dir.join("db"))
            .env_remove("KUBE_PEERS")
            .env_remove("IPALLOC_RANGE")
            .env_remove("IPALLOC_DEFAULT_SUBNET")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut router = Router { child, api, log };
        router.wait_ready()?;
        Ok(router)
    }

    /// Waits (bounded) until the ring exists and the API answers.
    fn wait_ready(&mut self) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..200 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "weave-router exited ({status}); its log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ));
            }
            match http::get(self.api, "/ring?timeout=1", "text/plain") {
                Ok(_) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
            thread::sleep(Duration::from_millis(50));
        }
        Err(format!("weave-router did not get ready: {last}"))
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One phase's results.
struct Phase {
    hist: Histogram<u64>,
    wall: Duration,
    bodies: Vec<String>,
    errors: Vec<String>,
}

/// `CLIENTS` threads, each sending its share of `ids` (`method /ip/{id}`) one after the
/// other, all released at once. Latency is per request: connect, send, answer.
fn phase(api: SocketAddr, method: &str, ids: &[String]) -> Result<Phase, String> {
    let barrier = Barrier::new(CLIENTS + 1);
    let per_client = ids.len().div_ceil(CLIENTS);
    let (results, wall) = thread::scope(|s| {
        let handles: Vec<_> =
            ids.chunks(per_client)
                .map(|chunk| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        let mut hist = Histogram::<u64>::new_with_bounds(1, MAX_TRACKED_NS, 3)
                            .expect("histogram bounds");
                        let mut bodies = Vec::new();
                        let mut errors = Vec::new();
                        barrier.wait();
                        for id in chunk {
                            let path = if method == "POST" {
                                format!("/ip/{id}?timeout=30")
                            } else {
                                format!("/ip/{id}")
                            };
                            let start = Instant::now();
                            let answer = http::request(api, method, &path, &[], b"");
                            let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                            hist.saturating_record(ns.max(1));
                            match answer {
                                Ok(resp) => bodies
                                    .push(String::from_utf8_lossy(&resp.body).trim().to_owned()),
                                Err(e) => errors.push(format!("{method} {path}: {e}")),
                            }
                        }
                        (hist, bodies, errors)
                    })
                })
                .collect();
        // Pad the barrier when `ids` made fewer chunks than clients.
        for _ in handles.len()..CLIENTS {
            s.spawn(|| barrier.wait());
        }
        barrier.wait();
        let start = Instant::now();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect();
        (results, start.elapsed())
    });
    let mut hist = Histogram::<u64>::new_with_bounds(1, MAX_TRACKED_NS, 3)
        .map_err(|e| format!("histogram: {e}"))?;
    let mut bodies = Vec::new();
    let mut errors = Vec::new();
    for (h, b, e) in results {
        hist.add(&h).map_err(|e| format!("histogram: {e}"))?;
        bodies.extend(b);
        errors.extend(e);
    }
    Ok(Phase {
        hist,
        wall,
        bodies,
        errors,
    })
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn report(what: &str, p: &Phase) {
    println!(
        "{what:<9} {:>5} requests in {:>7.3} s = {:>7.0} req/s   latency p50 {:>7.3} ms   p99 {:>7.3} ms   max {:>7.3} ms",
        p.hist.len(),
        p.wall.as_secs_f64(),
        p.hist.len() as f64 / p.wall.as_secs_f64(),
        ms(p.hist.value_at_quantile(0.50)),
        ms(p.hist.value_at_quantile(0.99)),
        ms(p.hist.max()),
    );
}

fn check(what: &str, p: &Phase) -> Result<(), String> {
    if p.errors.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = p.errors.iter().take(5).map(String::as_str).collect();
    Err(format!(
        "{} of {} {what} requests failed, first: {}",
        p.errors.len(),
        p.hist.len(),
        shown.join("; ")
    ))
}

fn run() -> Result<(), String> {
    let bin = locate_router_bin()?;
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let router = Router::launch(&bin, dir.path())?;
    println!(
        "ipam_http: {} (seeded, --dataplane none, store in {}), {REQUESTS} requests from \
         {CLIENTS} concurrent clients, one connection each",
        bin.display(),
        dir.path().display()
    );

    // One round per client first, not measured: connections, store file growth.
    let warm: Vec<String> = (0..CLIENTS).map(|i| format!("warmup-{i}")).collect();
    check("warm-up allocate", &phase(router.api, "POST", &warm)?)?;
    check("warm-up release", &phase(router.api, "DELETE", &warm)?)?;

    let ids: Vec<String> = (0..REQUESTS).map(|i| format!("bench-{i:04}")).collect();
    let alloc = phase(router.api, "POST", &ids)?;
    report("allocate", &alloc);
    check("allocate", &alloc)?;
    let distinct: HashSet<&String> = alloc.bodies.iter().collect();
    if distinct.len() != REQUESTS {
        return Err(format!(
            "{} distinct addresses for {REQUESTS} allocations",
            distinct.len()
        ));
    }
    let release = phase(router.api, "DELETE", &ids)?;
    report("release", &release);
    check("release", &release)?;

    let left =
        http::get(router.api, "/ip", "application/json").map_err(|e| format!("GET /ip: {e}"))?;
    let left: serde_json::Value =
        serde_json::from_slice(&left.body).map_err(|e| format!("GET /ip: {e}"))?;
    let held = left["owned"].as_array().map_or(0, Vec::len);
    if held != 0 {
        return Err(format!(
            "{held} ids still hold addresses after the releases"
        ));
    }
    drop(router);
    Ok(())
}
