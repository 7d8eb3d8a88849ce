//! Helpers shared by the privileged test files: network namespaces named
//! `<prefix><pid>-<n>` that are deleted on drop, the root check that CI never skips, and the
//! removal of namespaces that killed runs left behind.
//!
//! Each test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub mod cluster;

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A network namespace named `<prefix><pid>-<n>`, deleted on drop.
pub struct Netns {
    /// Its name.
    pub name: String,
}

impl Netns {
    /// A fresh namespace with loopback up, or `None` (test skipped) without root. Namespaces
    /// with `prefix` left by earlier runs whose process is gone are removed first.
    pub fn new(test: &str, prefix: &str) -> Option<Self> {
        if !privileged_or_skip(test) {
            return None;
        }
        remove_stale(prefix);
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        Some(ns)
    }

    /// `ip -n NS args...`, returning stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut argv = vec!["ip", "-n", &self.name];
        argv.extend_from_slice(args);
        run(&argv)
    }

    /// `ip netns exec NS argv...`, returning stdout.
    pub fn exec(&self, argv: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(argv);
        run(&full)
    }

    /// The ids of the processes inside the namespace.
    pub fn pids(&self) -> Vec<String> {
        run(&["ip", "netns", "pids", &self.name])
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Runs during unwinding too; a failure here must not hide the test's own panic.
        let status = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("could not delete namespace {}: {status:?}", self.name);
        }
    }
}

/// True as root; otherwise false (the test skips), except in CI, where it fails.
pub fn privileged_or_skip(test: &str) -> bool {
    // The effective uid, from /proc.
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false);
    if root {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: needs root (network namespaces), and CI must run it"
    );
    eprintln!("{test}: skipped, needs root to create network namespaces");
    false
}

/// Deletes namespaces named `<prefix><pid>-..` whose process is gone, after killing what such
/// a run left in them (a test binary killed outright drops nothing).
pub fn remove_stale(prefix: &str) {
    let list = run(&["ip", "netns", "list"]);
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = ns
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for left in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", left]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `argv`, which must succeed, returning stdout.
pub fn run(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}
