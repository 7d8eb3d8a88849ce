//! `weave-perf run --quick` end to end: the built binary builds its testbed, measures every
//! path and workload once (with a loss-free search after each UDP flood), and writes one
//! JSON, one Markdown and one SVG file. Checks the files' shape and that every path moved
//! data in every workload, never how fast. Needs root and a built weave-router next to
//! weave-perf.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use weave_perf::harness::{Metric, NetPath, WorkloadName};
use weave_perf::testbed;

/// A temporary folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How long the quick run may take before the test gives up on it. It normally takes a
/// minute or two; this only keeps a hung harness from hanging the test run.
const RUN_DEADLINE: Duration = Duration::from_secs(360);
/// How long the harness gets to tear its testbed down after SIGINT before it is killed.
const TEARDOWN_GRACE: Duration = Duration::from_secs(30);

/// Reads a pipe to its end on a thread, so the child never blocks on a full pipe.
fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Polls `child` until it exits or `deadline` passes; `None` on the deadline.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait().expect("poll weave-perf") {
            Some(status) => return Some(status),
            None if Instant::now() >= deadline => return None,
            None => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Waits for the harness with a deadline. Past it, SIGINT lets the harness remove its
/// testbed; if it does not exit within [`TEARDOWN_GRACE`] it is killed. Either way the test
/// fails with what the harness wrote to stderr.
fn wait_for_harness(mut child: Child) -> (ExitStatus, String) {
    let stdout = drain(child.stdout.take().expect("stdout piped"));
    let stderr = drain(child.stderr.take().expect("stderr piped"));
    let started = Instant::now();
    let status = wait_until(&mut child, started + RUN_DEADLINE);
    let Some(status) = status else {
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let after_int = wait_until(&mut child, Instant::now() + TEARDOWN_GRACE);
        if after_int.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let stderr = stderr.join().unwrap_or_default();
        panic!(
            "weave-perf run --quick did not finish within {} s; sent SIGINT{}; stderr:\n{stderr}",
            RUN_DEADLINE.as_secs(),
            match after_int {
                Some(s) => format!(", it exited ({s})"),
                None => format!(", and killed it {} s later", TEARDOWN_GRACE.as_secs()),
            }
        );
    };
    let _ = stdout.join();
    (status, stderr.join().unwrap_or_default())
}

fn files_with(dir: &Path, ext: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("read output dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect()
}

#[test]
fn quick_run_measures_every_path_and_workload_and_writes_three_files() {
    if !testbed::privileged_or_skip("quick_run_measures_every_path_and_workload") {
        return;
    }
    let out = TempDir::new("weave-perf-quick");

    let child = Command::new(env!("CARGO_BIN_EXE_weave-perf"))
        .args(["run", "--quick", "--subnet", "122", "--output"])
        .arg(&out.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start weave-perf");
    let pid = child.id();
    let (status, stderr) = wait_for_harness(child);

    assert!(status.success(), "weave-perf run failed:\n{stderr}");
    let [json, md, svg] = ["json", "md", "svg"].map(|ext| files_with(&out.0, ext));
    assert_eq!(
        (json.len(), md.len(), svg.len()),
        (1, 1, 1),
        "{json:?} {md:?} {svg:?}"
    );
    let stem = |p: &Path| p.file_stem().map(|s| s.to_owned());
    assert_eq!(stem(&json[0]), stem(&md[0]));
    assert_eq!(stem(&json[0]), stem(&svg[0]));
    let name = json[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("run-") && name.ends_with("Z.json"),
        "{name}"
    );
    // Progress: one line per measurement with its position.
    let total = NetPath::default_set().len() * WorkloadName::ALL.len();
    assert!(
        stderr.contains(&format!("[{total}/{total}] repeat 1/1")),
        "{stderr}"
    );

    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&json[0]).expect("read json")).unwrap();
    assert_eq!(doc["schema"], "weave-perf-run");
    assert_eq!(doc["schema_version"], 2);
    let machine = &doc["machine"];
    assert!(machine["kernel"].as_str().is_some_and(|k| !k.is_empty()));
    assert!(machine["cores"].as_u64().is_some_and(|c| c >= 1));
    assert!(machine["router_version"]
        .as_str()
        .is_some_and(|v| v.starts_with("weave-router")));
    assert!(machine["command_line"]
        .as_array()
        .is_some_and(|a| a.len() > 2));
    assert!(machine.get("git_commit").is_some());
    assert_eq!(doc["settings"]["quick"], true);
    assert_eq!(doc["settings"]["repeats"], 1);
    assert_eq!(doc["settings"]["search"]["trials"], 4);
    assert!(machine["background_busy_cpus"].is_number(), "{machine}");
    // Where the routers ran: split or shared, each of the three hosts with its CPUs.
    let placement = &doc["settings"]["placement"];
    assert!(
        ["split", "shared"].contains(&placement["placement"].as_str().unwrap_or("")),
        "{placement}"
    );
    let hosts = placement["hosts"].as_array().expect("placement hosts");
    assert_eq!(hosts.len(), 3, "{placement}");
    assert!(
        hosts
            .iter()
            .all(|h| h["cpus"].as_array().is_some_and(|c| !c.is_empty())),
        "{placement}"
    );
    if placement["placement"] == "split" {
        assert_ne!(hosts[0]["cpus"], hosts[1]["cpus"], "{placement}");
    }

    let paths = doc["paths"].as_array().expect("paths");
    for p in NetPath::ALL {
        let info = paths
            .iter()
            .find(|i| i["name"] == p.name())
            .unwrap_or_else(|| panic!("{} missing from paths", p.name()));
        assert_eq!(info["measured"], p.availability().is_ok(), "{info}");
    }
    let samples = doc["samples"].as_array().expect("samples");
    assert_eq!(samples.len(), total);
    for path in NetPath::default_set() {
        for workload in WorkloadName::ALL {
            let (p, w) = (path.name(), workload.name());
            let sample = samples
                .iter()
                .find(|s| s["path"] == p && s["workload"] == w)
                .unwrap_or_else(|| panic!("no sample for {p} {w}"));
            assert!(sample["error"].is_null(), "{p} {w}: {}", sample["error"]);
            let load = &sample["load"];
            let moved = match workload {
                WorkloadName::Tcp1 | WorkloadName::Tcp4 => load["bytes_received"].as_u64(),
                WorkloadName::Udp64 | WorkloadName::Udp1400 => load["packets_received"].as_u64(),
                WorkloadName::Rr | WorkloadName::RrPaced => load["latency"]["samples"].as_u64(),
            };
            assert!(
                moved.is_some_and(|n| n > 0),
                "{p} {w} moved nothing: {load}"
            );
            assert!(
                sample["machine"]["busy_s"]
                    .as_f64()
                    .is_some_and(|b| b > 0.0),
                "{p} {w}: {}",
                sample["machine"]
            );
            let rr = matches!(workload, WorkloadName::Rr | WorkloadName::RrPaced);
            if rr {
                // Each repeat's round trips are kept, for merging across repeats.
                assert!(
                    load["histogram"]["buckets"]
                        .as_array()
                        .is_some_and(|b| !b.is_empty()),
                    "{p} {w}: {load}"
                );
            }
            let search = &sample["search"];
            if workload.is_udp() {
                let trials = search["trials"].as_array().expect("the search's trials");
                assert!(!trials.is_empty(), "{p} {w}: {search}");
                assert_eq!(trials[0]["paced"], false, "{p} {w}: {search}");
            } else {
                assert!(search.is_null(), "{p} {w}: {search}");
            }
            let metrics = sample["metrics"].as_object().expect("metrics");
            for m in workload.metrics() {
                let value = metrics
                    .get(m.key())
                    .unwrap_or_else(|| panic!("{p} {w}: no {}", m.key()));
                match (m.router_only(), path.kind()) {
                    (true, weave_perf::harness::model::PathKind::Router) => {
                        assert!(value.is_number(), "{p} {w} {}: {value}", m.key())
                    }
                    (true, _) => assert!(value.is_null(), "{p} {w} {}: {value}", m.key()),
                    // A search that found no rate with little enough loss says so in its
                    // record and leaves the metric null.
                    (false, _) if *m == Metric::LossFreePacketsPerSecond => assert_eq!(
                        value.is_number(),
                        !search["loss_free_pps"].is_null(),
                        "{p} {w}: {value} {search}"
                    ),
                    (false, _) => assert!(value.is_number(), "{p} {w} {}: {value}", m.key()),
                }
            }
            let row = doc["summary"]
                .as_array()
                .expect("summary")
                .iter()
                .find(|r| r["path"] == p && r["workload"] == w)
                .unwrap_or_else(|| panic!("no summary for {p} {w}"));
            assert_eq!(row["samples"], 1);
            if matches!(workload, WorkloadName::Rr | WorkloadName::RrPaced) {
                assert!(
                    row["merged_latency"]["p50_us"].is_number(),
                    "{p} {w}: {row}"
                );
            }
        }
    }

    let md = std::fs::read_to_string(&md[0]).expect("read md");
    assert!(md.contains("## Against the kernel VXLAN baseline"), "{md}");
    assert!(md.contains("| vxlan | 1.00× |"), "{md}");
    assert!(md.contains(" udp64 loss-free pps |"), "{md}");
    assert!(md.contains("| udp64 | loss-free packets/s |"), "{md}");
    assert!(md.contains("| udp64 | flood offered packets/s |"), "{md}");
    assert!(md.contains(" rr-paced p99 |"), "{md}");
    assert!(md.contains("- CPU placement: "), "{md}");
    assert!(md.contains("| vxlan | tcp1 |"), "{md}");
    assert!(!md.contains('†'), "{md}");
    let svg = std::fs::read_to_string(&svg[0]).expect("read svg");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    // The testbed is gone: no namespace of the run's process is left.
    let left = testbed::list_netns().expect("ip netns list");
    assert!(
        !left
            .iter()
            .any(|ns| testbed::owner_pid(ns, "wprf") == Some(pid)),
        "{left:?}"
    );
}
