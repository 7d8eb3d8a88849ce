//! Runs the `weave-cni` binary the way a container runtime does: CNI_COMMAND in the
//! environment, the network configuration on stdin.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

const CONF: &str = r#"{"cniVersion": "1.0.0", "name": "weave", "type": "weave-net"}"#;

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
fn add_exits_1_with_cni_error() {
    let (code, out) = run("ADD", CONF);

    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["code"], 100);
    assert_eq!(v["msg"], weave_cni::NO_IPAM_MSG);
    assert_eq!(v["cniVersion"], "1.0.0");
}

#[test]
fn check_exits_1_with_cni_error() {
    let (code, out) = run("CHECK", CONF);

    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["code"], 100);
}

#[test]
fn del_exits_0_silently() {
    let (code, out) = run("DEL", CONF);

    assert_eq!(code, 0);
    assert_eq!(out, "");
}
