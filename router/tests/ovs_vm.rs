//! The Open vSwitch backend for real, in a QEMU guest booted from Debian's stock kernel
//! (this host's kernel has no openvswitch module): `scripts/ovs-vm/test.sh` builds the
//! guest once (cached under /var/tmp), shares this build's weave-router with it, and the
//! guest runs two routers with a pod each through the Open vSwitch datapath (see
//! `scripts/ovs-vm/guest-test.sh`); the result comes back on the serial console.
//!
//! Needs root (apt for QEMU, network namespaces in the guest are its own); skipped
//! otherwise, and never skipped in CI.

mod common;

use std::process::Command;

#[test]
fn open_vswitch_datapath_carries_pods_in_a_guest() {
    if !common::privileged_or_skip("open_vswitch_datapath_carries_pods_in_a_guest") {
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/ovs-vm/test.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_weave-router"))
        .output()
        .expect("run scripts/ovs-vm/test.sh");
    let log = String::from_utf8_lossy(&out.stdout);
    let steps: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("STEP-") || l.starts_with("RESULT") || l.contains("tun_id"))
        .collect();
    println!("{}", steps.join("\n"));
    assert!(
        out.status.success() && log.contains("RESULT: PASS"),
        "guest failed ({}):\n{log}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "backend-is-open-vswitch",
        "pods-ping",
        "flow-sets-weaves-tunnel",
        "vnis-name-both-ends",
        "reset-removes-datapath",
    ] {
        assert!(log.contains(&format!("STEP-OK: {step}")), "{step}:\n{log}");
    }
}
