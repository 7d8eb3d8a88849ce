//! The network configuration on stdin, with Weave Net's defaults for every field the minimal
//! `{"cniVersion":"1.1.0","name":"weave","type":"weave-net"}` leaves out.
//!
//! Fields Weave's plugin reads keep their names and meaning (`bridge`, `hairpinMode`, `mtu`,
//! `isGateway`, `ipMasq`, and an `ipam` section that is either Weave's own options or a
//! chained plugin's `type`); `routerAPI` is weave-router's (where its HTTP API listens).

use std::net::{Ipv4Addr, SocketAddr};

use serde::Deserialize;
use serde_json::Value;

/// CNI spec versions this plugin accepts in a network configuration.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The version used in answers when the request names none.
pub const LATEST_VERSION: &str = "1.1.0";
/// Where the router's API listens unless `routerAPI` says otherwise.
pub const DEFAULT_ROUTER_API: &str = "127.0.0.1:6784";

/// A checked network configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    /// `cniVersion`.
    pub cni_version: String,
    /// `name`.
    pub name: String,
    /// `bridge`: the bridge pods attach to.
    pub bridge: String,
    /// `hairpinMode`: a pod may reach itself through a service address.
    pub hairpin_mode: bool,
    /// `mtu`: the pod interface's MTU; the bridge's when absent.
    pub mtu: Option<u32>,
    /// `ipam`.
    pub ipam: Ipam,
    /// `dns`, copied into the result.
    pub dns: Option<Value>,
    /// `routerAPI`.
    pub router_api: SocketAddr,
    /// `prevResult` (CHECK, and chained DEL).
    pub prev_result: Option<Value>,
    /// `cni.dev/valid-attachments` (GC).
    pub valid_attachments: Vec<ValidAttachment>,
    /// The configuration as the runtime gave it, for a chained IPAM plugin.
    pub raw: Vec<u8>,
}

/// Where addresses come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Ipam {
    /// The router's IPAM, optionally in a given subnet, with a gateway and routes.
    Weave {
        /// `ipam.subnet`.
        subnet: Option<(Ipv4Addr, u8)>,
        /// `ipam.gateway`.
        gateway: Option<Ipv4Addr>,
        /// `ipam.routes`.
        routes: Option<Vec<Value>>,
    },
    /// A chained IPAM plugin, `ipam.type`, found on `CNI_PATH`.
    Plugin(String),
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidAttachment {
    /// The container.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Its interface.
    #[serde(default)]
    pub ifname: String,
}

/// Why a configuration was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not JSON, or a field of the wrong type (spec code 6).
    #[error("cannot decode the network configuration: {0}")]
    Decode(String),
    /// `cniVersion` is not one this plugin speaks (spec code 1).
    #[error("cniVersion {0} is not supported (supported: {supported})", supported = SUPPORTED_VERSIONS.join(", "))]
    Version(String),
    /// A field with a value this plugin cannot use (spec code 7).
    #[error("{field}: {reason}")]
    Invalid {
        /// The field's name in the configuration.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    cni_version: Option<String>,
    #[serde(default)]
    name: String,
    bridge: Option<String>,
    hairpin_mode: Option<bool>,
    mtu: Option<u32>,
    #[serde(default)]
    is_gateway: bool,
    #[serde(default)]
    ip_masq: bool,
    ipam: Option<RawIpam>,
    dns: Option<Value>,
    #[serde(rename = "routerAPI")]
    router_api: Option<String>,
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    valid_attachments: Vec<ValidAttachment>,
}

#[derive(Deserialize)]
struct RawIpam {
    #[serde(rename = "type", default)]
    kind: String,
    subnet: Option<String>,
    gateway: Option<String>,
    routes: Option<Vec<Value>>,
}

impl NetConf {
    /// Parses and checks `stdin`.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, ConfigError> {
        let raw: Raw =
            serde_json::from_slice(stdin).map_err(|e| ConfigError::Decode(e.to_string()))?;
        let cni_version = raw.cni_version.unwrap_or_else(|| LATEST_VERSION.to_owned());
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(ConfigError::Version(cni_version));
        }
        if raw.is_gateway {
            return Err(invalid("isGateway", "gateway mode is not supported"));
        }
        if raw.ip_masq {
            return Err(invalid("ipMasq", "IP masquerading is not supported"));
        }
        let bridge = raw.bridge.unwrap_or_else(|| "weave".to_owned());
        if bridge.is_empty() || bridge.len() > 15 || bridge.contains(['/', ':', ' ']) {
            return Err(invalid(
                "bridge",
                &format!("{bridge:?} is not an interface name"),
            ));
        }
        if let Some(mtu) = raw.mtu {
            if !(68..=65_535).contains(&mtu) {
                return Err(invalid("mtu", &format!("{mtu} is outside 68-65535")));
            }
        }
        let router_api = raw
            .router_api
            .as_deref()
            .unwrap_or(DEFAULT_ROUTER_API)
            .parse::<SocketAddr>()
            .map_err(|e| invalid("routerAPI", &format!("not an address:port: {e}")))?;
        Ok(NetConf {
            cni_version,
            name: raw.name,
            bridge,
            hairpin_mode: raw.hairpin_mode.unwrap_or(true),
            mtu: raw.mtu,
            ipam: ipam_from(raw.ipam)?,
            dns: raw.dns,
            router_api,
            prev_result: raw.prev_result,
            valid_attachments: raw.valid_attachments,
            raw: stdin.to_vec(),
        })
    }
}

/// The spec version an answer uses when the configuration itself cannot be read: the one it
/// names if that much decodes and is supported, else the latest.
pub fn answer_version(stdin: &[u8]) -> String {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct V {
        cni_version: Option<String>,
    }
    serde_json::from_slice::<V>(stdin)
        .ok()
        .and_then(|v| v.cni_version)
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST_VERSION.to_owned())
}

fn ipam_from(raw: Option<RawIpam>) -> Result<Ipam, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Ipam::Weave {
            subnet: None,
            gateway: None,
            routes: None,
        });
    };
    if !raw.kind.is_empty() && raw.kind != "weave-ipam" {
        if raw.kind.contains('/') {
            return Err(invalid("ipam.type", "must be a plugin name, not a path"));
        }
        return Ok(Ipam::Plugin(raw.kind));
    }
    let subnet = raw
        .subnet
        .map(|s| {
            parse_cidr(&s)
                .ok_or_else(|| invalid("ipam.subnet", &format!("{s:?} is not an IPv4 CIDR")))
        })
        .transpose()?;
    let gateway = raw
        .gateway
        .map(|g| {
            g.parse()
                .map_err(|_| invalid("ipam.gateway", &format!("{g:?} is not an IPv4 address")))
        })
        .transpose()?;
    Ok(Ipam::Weave {
        subnet,
        gateway,
        routes: raw.routes,
    })
}

/// `a.b.c.d/n` as the subnet's first address and prefix length.
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, plen) = s.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let plen: u8 = plen.parse().ok()?;
    (plen <= 32).then_some((ip, plen))
}

fn invalid(field: &'static str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimal_config_gets_weaves_defaults() {
        let c =
            NetConf::parse(br#"{"cniVersion":"1.1.0","name":"weave","type":"weave-net"}"#).unwrap();
        assert_eq!(c.bridge, "weave");
        assert!(c.hairpin_mode);
        assert_eq!(c.mtu, None);
        assert_eq!(c.router_api, DEFAULT_ROUTER_API.parse().unwrap());
        assert!(matches!(c.ipam, Ipam::Weave { subnet: None, .. }));
    }

    #[test]
    fn a_chained_ipam_plugin_or_weaves_options() {
        let c = NetConf::parse(br#"{"cniVersion":"1.0.0","ipam":{"type":"host-local"}}"#).unwrap();
        assert_eq!(c.ipam, Ipam::Plugin("host-local".into()));
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","ipam":{"subnet":"10.40.0.0/16","gateway":"10.40.0.1"}}"#,
        )
        .unwrap();
        assert_eq!(
            c.ipam,
            Ipam::Weave {
                subnet: Some(("10.40.0.0".parse().unwrap(), 16)),
                gateway: Some("10.40.0.1".parse().unwrap()),
                routes: None
            }
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let field = |json: &str| match NetConf::parse(json.as_bytes()) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("{json}: {other:?}"),
        };
        assert_eq!(field(r#"{"mtu":10}"#), "mtu");
        assert_eq!(field(r#"{"bridge":"a/b"}"#), "bridge");
        assert_eq!(field(r#"{"isGateway":true}"#), "isGateway");
        assert_eq!(field(r#"{"ipMasq":true}"#), "ipMasq");
        assert_eq!(field(r#"{"routerAPI":"localhost"}"#), "routerAPI");
        assert_eq!(field(r#"{"ipam":{"subnet":"10.0.0.0/33"}}"#), "ipam.subnet");
        assert_eq!(field(r#"{"ipam":{"gateway":"x"}}"#), "ipam.gateway");
        assert_eq!(field(r#"{"ipam":{"type":"../x"}}"#), "ipam.type");
    }

    #[test]
    fn wrong_types_and_versions_are_refused() {
        assert!(matches!(
            NetConf::parse(br#"{"mtu":"big"}"#),
            Err(ConfigError::Decode(_))
        ));
        assert!(matches!(
            NetConf::parse(br#"{"cniVersion":"0.2.0"}"#),
            Err(ConfigError::Version(_))
        ));
        assert_eq!(
            answer_version(br#"{"cniVersion":"0.4.0","mtu":"x"}"#),
            "0.4.0"
        );
        assert_eq!(answer_version(b"nonsense"), LATEST_VERSION);
    }

    #[test]
    fn gc_reads_the_valid_attachments() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.valid_attachments[0].container_id, "a");
    }
}
