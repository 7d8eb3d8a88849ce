//! Runs the `weave-cni` binary the way a container runtime does: CNI_COMMAND in the
//! environment, the network configuration on stdin.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

/// The router API points at a port nothing listens on: no router answers these tests.
const CONF: &str = r#"{"cniVersion": "1.0.0", "name": "weave", "type": "weave-net", "routerAPI": "127.0.0.1:1", "bridge": "wvtest-none"}"#;

fn run(command: &str, stdin: &str) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weave-cni"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "c0ffee")
        .env("CNI_NETNS", "/var/run/netns/none")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start weave-cni");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait for weave-cni");
    (
        out.status.code().expect("exit code"),
        String::from_utf8(out.stdout).expect("utf-8 stdout"),
    )
}

#[test]
fn version_answers_spec_json() {
    let (code, out) = run("VERSION", r#"{"cniVersion": "1.0.0"}"#);

    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["cniVersion"], "1.0.0");
    assert!(v["supportedVersions"]
        .as_array()
        .unwrap()
        .contains(&Value::from("0.4.0")));
}

#[test]
fn add_with_a_missing_netns_is_an_unknown_container() {
    let (code, out) = run("ADD", CONF);

    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["code"], 3);
    assert!(v["msg"].as_str().unwrap().contains("CNI_NETNS"), "{out}");
    assert_eq!(v["cniVersion"], "1.0.0");
}

#[test]
fn check_without_a_previous_result_is_a_config_error() {
    let (code, out) = run("CHECK", CONF);

    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["code"], 7);
    assert!(v["msg"].as_str().unwrap().contains("prevResult"), "{out}");
}

#[test]
fn del_succeeds_with_nothing_to_remove_and_no_router() {
    let (code, out) = run("DEL", CONF);

    assert_eq!(code, 0);
    assert_eq!(out, "");
}

#[test]
fn status_without_a_router_is_not_available() {
    let (code, out) = run("STATUS", CONF);

    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["code"], 50);
}

#[test]
fn install_and_uninstall_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let (bin, conf) = (dir.path().join("bin"), dir.path().join("conf"));
    let status = Command::new(env!("CARGO_BIN_EXE_weave-cni"))
        .args(["install", "--bin-dir"])
        .arg(&bin)
        .arg("--conf-dir")
        .arg(&conf)
        .env_remove("CNI_COMMAND")
        .status()
        .unwrap();
    assert!(status.success());
    assert!(bin.join("weave-net").exists());
    assert!(conf.join("10-weave.conflist").exists());

    let status = Command::new(env!("CARGO_BIN_EXE_weave-cni"))
        .args(["uninstall", "--bin-dir"])
        .arg(&bin)
        .env_remove("CNI_COMMAND")
        .status()
        .unwrap();
    assert!(status.success());
    assert!(!bin.join("weave-net").exists());
    assert!(!conf.join("10-weave.conflist").exists());

    let bad = Command::new(env!("CARGO_BIN_EXE_weave-cni"))
        .args(["install", "--bin-dir"])
        .env_remove("CNI_COMMAND")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--bin-dir"));
}
