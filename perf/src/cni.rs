//! Pods attached by `weave-cni`, called exactly as a container runtime calls a CNI plugin:
//! `CNI_*` variables, the network configuration on stdin, the result (or error) on stdout.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::testbed::{Host, InNetns};

/// The minimal configuration: every other field has Weave's default.
pub const MINIMAL_CONF: &str = r#"{"cniVersion":"1.1.0","name":"weave","type":"weave-net"}"#;

/// `weave-cni` beside `router_bin` (both are built into one target directory).
pub fn locate_cni_bin(router_bin: &Path) -> Result<PathBuf, String> {
    let bin = router_bin.with_file_name("weave-cni");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not built (cargo build -p weave-cni)",
            bin.display()
        ))
    }
}

/// A pod's network namespace (no interfaces but `lo` until ADD), removed on drop.
pub struct PodNetns {
    /// The namespace's name.
    pub name: String,
    /// The container id the runtime would pass.
    pub id: String,
}

impl PodNetns {
    /// Creates namespace `name`.
    pub fn new(name: &str) -> Result<PodNetns, String> {
        let ok = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .map_err(|e| format!("ip netns add {name}: {e}"))?
            .success();
        if !ok {
            return Err(format!("ip netns add {name} failed"));
        }
        Ok(PodNetns {
            name: name.to_owned(),
            id: name.to_owned(),
        })
    }

    /// `CNI_NETNS` for it.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `program args` inside it.
    pub fn exec(&self, program: &str, args: &[&str]) -> std::io::Result<std::process::Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
    }

    /// One ping to `to`, waiting at most 2 s.
    pub fn ping(&self, to: Ipv4Addr) -> bool {
        self.exec("ping", &["-c", "1", "-W", "2", &to.to_string()])
            .map(|o| o.status.success())
            .unwrap_or(false)
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// What one invocation answered.
#[derive(Debug)]
pub struct CniAnswer {
    /// Exit code.
    pub code: i32,
    /// stdout as JSON (`Null` when empty or not JSON).
    pub json: Value,
    /// stderr.
    pub stderr: String,
}

/// Runs `bin` on `host` with `CNI_COMMAND=command`; `pod` gives `CNI_CONTAINERID` and
/// `CNI_NETNS` (unless `netns` overrides it), `CNI_IFNAME` is `eth0`.
pub fn invoke(
    bin: &Path,
    host: &Host,
    command: &str,
    pod: Option<&PodNetns>,
    netns: Option<&str>,
    conf: &str,
) -> std::io::Result<CniAnswer> {
    let mut cmd = host.command(bin);
    cmd.env("CNI_COMMAND", command)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(pod) = pod {
        cmd.env("CNI_CONTAINERID", &pod.id);
        cmd.env(
            "CNI_NETNS",
            netns.map(String::from).unwrap_or_else(|| pod.path()),
        );
    }
    let mut child = cmd.spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(conf.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    Ok(CniAnswer {
        code: out.status.code().unwrap_or(-1),
        json: serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// ADD with the minimal configuration: the pod's address and the whole result.
pub fn add(bin: &Path, host: &Host, pod: &PodNetns) -> Result<(Ipv4Addr, Value), String> {
    let a = invoke(bin, host, "ADD", Some(pod), None, MINIMAL_CONF)
        .map_err(|e| format!("weave-cni ADD {}: {e}", pod.id))?;
    if a.code != 0 {
        return Err(format!("ADD {}: {} {}", pod.id, a.json, a.stderr.trim()));
    }
    let ip = a.json["ips"][0]["address"]
        .as_str()
        .and_then(|c| c.split('/').next())
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| format!("ADD {}: no address in {}", pod.id, a.json))?;
    Ok((ip, a.json))
}
