//! Results and errors in the specification's JSON, in the version the runtime asked for.
//!
//! One result type serves every supported version: 0.3.x and 0.4.0 add `"version": "4"` to
//! each IP (removed in 1.0.0); nothing this plugin returns differs otherwise.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Error codes of the CNI specification used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 1: the configuration's `cniVersion` is not supported.
    IncompatibleVersion,
    /// 3: the container (its network namespace) does not exist.
    UnknownContainer,
    /// 4: a `CNI_*` variable is missing or malformed.
    InvalidEnvironment,
    /// 5: reading or writing failed (netlink, a file).
    IoFailure,
    /// 6: stdin is not a JSON network configuration.
    DecodeFailure,
    /// 7: the configuration holds a value this plugin cannot use.
    InvalidConfig,
    /// 11: try again later (the router is not there yet).
    TryAgainLater,
    /// 50: STATUS: the plugin cannot service ADD requests.
    PluginNotAvailable,
    /// 100: plugin-specific: the router refused to give an address.
    AddressRefused,
    /// 101: plugin-specific: CHECK found the attachment not as ADD made it.
    CheckFailed,
}

impl ErrorCode {
    /// The number on the wire.
    pub fn code(self) -> u32 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::UnknownContainer => 3,
            ErrorCode::InvalidEnvironment => 4,
            ErrorCode::IoFailure => 5,
            ErrorCode::DecodeFailure => 6,
            ErrorCode::InvalidConfig => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::PluginNotAvailable => 50,
            ErrorCode::AddressRefused => 100,
            ErrorCode::CheckFailed => 101,
        }
    }
}

/// A failed invocation: a code, a short message and detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct Failure {
    /// Which code.
    pub code: ErrorCode,
    /// What failed.
    pub msg: String,
    /// Why.
    pub details: String,
}

impl Failure {
    /// A failure with `code`.
    pub fn new(code: ErrorCode, msg: impl Into<String>, details: impl ToString) -> Failure {
        Failure {
            code,
            msg: msg.into(),
            details: details.to_string(),
        }
    }
}

/// A CNI error result (written to stdout, with a non-zero exit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniError {
    /// The spec version of this answer.
    pub cni_version: String,
    /// The error code.
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// More detail for operators.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub details: String,
}

impl CniError {
    /// `failure` as the spec's error JSON.
    pub fn from_failure(version: &str, failure: &Failure) -> CniError {
        CniError {
            cni_version: version.to_owned(),
            code: failure.code.code(),
            msg: failure.msg.clone(),
            details: failure.details.clone(),
        }
    }
}

/// The answer to `VERSION`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    /// The spec version of this answer.
    pub cni_version: String,
    /// The versions the plugin accepts.
    pub supported_versions: Vec<String>,
}

/// The result of ADD.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddResult {
    /// The spec version of this answer.
    pub cni_version: String,
    /// Host end, then pod end.
    pub interfaces: Vec<Interface>,
    /// The pod's address.
    pub ips: Vec<IpConfig>,
    /// Routes in the pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// DNS settings from the configuration.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub dns: Value,
}

/// An interface in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MAC address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// The netns path, for interfaces inside the container.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    /// Its MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// An address in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// "4" before 1.0.0; absent after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The address with its prefix length.
    pub address: String,
    /// The gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination, as a CIDR.
    pub dst: String,
    /// Next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<Ipv4Addr>,
}

/// Whether results of `version` carry `"version": "4"` in their IPs.
pub fn ips_carry_version(version: &str) -> bool {
    matches!(version, "0.3.0" | "0.3.1" | "0.4.0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(version: &str) -> AddResult {
        AddResult {
            cni_version: version.into(),
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "aa:bb:cc:dd:ee:ff".into(),
                sandbox: "/var/run/netns/p".into(),
                mtu: None,
            }],
            ips: vec![IpConfig {
                version: ips_carry_version(version).then(|| "4".to_owned()),
                address: "10.32.0.2/12".into(),
                gateway: Some("10.32.0.1".parse().unwrap()),
                interface: Some(0),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: None,
            }],
            dns: Value::Null,
        }
    }

    #[test]
    fn old_versions_name_the_ip_version_new_ones_do_not() {
        let old = serde_json::to_value(result("0.3.1")).unwrap();
        assert_eq!(old["ips"][0]["version"], "4");
        let new = serde_json::to_value(result("1.0.0")).unwrap();
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["ips"][0]["address"], "10.32.0.2/12");
        assert!(new.get("dns").is_none());
    }

    #[test]
    fn errors_carry_the_spec_code() {
        let e = CniError::from_failure(
            "1.0.0",
            &Failure::new(
                ErrorCode::TryAgainLater,
                "router down",
                "connection refused",
            ),
        );
        let v = serde_json::to_value(e).unwrap();
        assert_eq!(v["code"], 11);
        assert_eq!(v["details"], "connection refused");
    }
}
