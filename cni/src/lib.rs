//! The weave-router CNI plugin (`weave-net` on a node): attaches pods to the `weave` bridge
//! with an address from the router's IPAM, per the CNI specification 1.1 (ADD, DEL, CHECK,
//! STATUS, GC, VERSION), answering runtimes that speak 0.3.0 to 1.1.0.
//!
//! [`run`] is one invocation: the `CNI_*` environment and stdin in, the spec's JSON and an
//! exit code out. The pure parts ([`mod@env`], [`config`], [`result`]) are unit-tested; the
//! netlink and router work ([`plugin`], [`link`], [`router_api`]) is tested by running the
//! binary as a runtime does, on network namespaces (`tests/pods_netns.rs`).
#![deny(unsafe_code)]

use std::collections::BTreeMap;

use serde::Serialize;

pub mod config;
pub mod env;
pub mod install;
pub mod link;
pub mod plugin;
pub mod result;
pub mod router_api;

use config::{answer_version, ConfigError, NetConf};
pub use config::{LATEST_VERSION, SUPPORTED_VERSIONS};
use env::{CniEnv, Command};
use result::{CniError, ErrorCode, Failure, VersionInfo};

/// What the plugin writes and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Written to stdout (may be empty).
    pub stdout: String,
    /// The process exit code.
    pub exit_code: u8,
}

/// Runs one plugin invocation with the environment `vars` and `stdin`.
pub fn run(vars: &BTreeMap<String, String>, stdin: &[u8]) -> Reply {
    let version = answer_version(stdin);
    let env = match CniEnv::from_vars(vars) {
        Ok(env) => env,
        Err(e) => {
            return failure(
                &version,
                &Failure::new(ErrorCode::InvalidEnvironment, e.to_string(), ""),
            )
        }
    };
    if env.command == Command::Version {
        return version_reply(stdin, &version);
    }
    let conf = match NetConf::parse(stdin) {
        Ok(conf) => conf,
        // DEL must not fail for a configuration it cannot read: the runtime would retry the
        // teardown forever. What it can release without one, it does (with the defaults).
        Err(e) if env.command == Command::Del => {
            eprintln!("weave-cni: DEL with a bad configuration ({e}); using the defaults");
            match NetConf::parse(b"{}") {
                Ok(conf) => conf,
                Err(e) => return failure(&version, &config_failure(e)),
            }
        }
        Err(e) => return failure(&version, &config_failure(e)),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return failure(
                &version,
                &Failure::new(ErrorCode::IoFailure, "start a runtime", e),
            )
        }
    };
    let outcome = runtime.block_on(dispatch(&env, &conf));
    match outcome {
        Ok(stdout) => Reply {
            stdout,
            exit_code: 0,
        },
        Err(f) => failure(&conf.cni_version, &f),
    }
}

async fn dispatch(env: &CniEnv, conf: &NetConf) -> Result<String, Failure> {
    let att = env.attachment.as_ref();
    let need = || {
        Failure::new(
            ErrorCode::InvalidEnvironment,
            "CNI_CONTAINERID: not set",
            "",
        )
    };
    match env.command {
        Command::Add => {
            let result = plugin::add(env, att.ok_or_else(need)?, conf).await?;
            Ok(json(&result))
        }
        Command::Del => plugin::del(env, att.ok_or_else(need)?, conf)
            .await
            .map(|()| String::new()),
        Command::Check => plugin::check(att.ok_or_else(need)?, conf)
            .await
            .map(|()| String::new()),
        Command::Gc => plugin::gc(conf).map(|()| String::new()),
        Command::Status => plugin::status(conf).await.map(|()| String::new()),
        Command::Version => Ok(String::new()),
    }
}

fn version_reply(stdin: &[u8], version: &str) -> Reply {
    // VERSION may come with empty stdin; with a version this plugin does not speak, say so.
    if let Err(e @ ConfigError::Version(_)) = NetConf::parse(stdin) {
        return failure(LATEST_VERSION, &config_failure(e));
    }
    Reply {
        stdout: json(&VersionInfo {
            cni_version: version.to_owned(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| v.to_string()).collect(),
        }),
        exit_code: 0,
    }
}

fn config_failure(e: ConfigError) -> Failure {
    let code = match e {
        ConfigError::Decode(_) => ErrorCode::DecodeFailure,
        ConfigError::Version(_) => ErrorCode::IncompatibleVersion,
        ConfigError::Invalid { .. } => ErrorCode::InvalidConfig,
    };
    match e {
        ConfigError::Decode(d) => {
            Failure::new(code, "cannot decode the network configuration on stdin", d)
        }
        other => Failure::new(code, other.to_string(), ""),
    }
}

fn failure(version: &str, f: &Failure) -> Reply {
    eprintln!("weave-cni: {f}");
    Reply {
        stdout: json(&CniError::from_failure(version, f)),
        exit_code: 1,
    }
}

fn json(value: &impl Serialize) -> String {
    // These types hold only strings, numbers and JSON values: serialising cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::tests::vars;

    fn parse_error(reply: &Reply) -> CniError {
        assert_eq!(reply.exit_code, 1, "{}", reply.stdout);
        serde_json::from_str(&reply.stdout).unwrap()
    }

    #[test]
    fn version_lists_supported_versions() {
        let reply = run(
            &vars(&[("CNI_COMMAND", "VERSION")]),
            br#"{"cniVersion": "0.4.0"}"#,
        );
        assert_eq!(reply.exit_code, 0);
        let info: VersionInfo = serde_json::from_str(&reply.stdout).unwrap();
        assert_eq!(info.cni_version, "0.4.0");
        assert!(info.supported_versions.iter().any(|v| v == "1.0.0"));
        let empty = run(&vars(&[("CNI_COMMAND", "VERSION")]), b"");
        let info: VersionInfo = serde_json::from_str(&empty.stdout).unwrap();
        assert_eq!(info.cni_version, LATEST_VERSION);
    }

    #[test]
    fn environment_errors_name_the_variable() {
        let err = parse_error(&run(
            &vars(&[("CNI_COMMAND", "ADD")]),
            br#"{"cniVersion":"1.0.0"}"#,
        ));
        assert_eq!(err.code, 4);
        assert!(err.msg.contains("CNI_CONTAINERID"), "{}", err.msg);
        assert_eq!(err.cni_version, "1.0.0");
        assert_eq!(parse_error(&run(&vars(&[]), b"{}")).code, 4);
    }

    #[test]
    fn config_errors_carry_their_codes() {
        let add = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_NETNS", "/nonexistent"),
            ("CNI_IFNAME", "eth0"),
        ];
        assert_eq!(parse_error(&run(&vars(&add), b"not json")).code, 6);
        assert_eq!(
            parse_error(&run(&vars(&add), br#"{"cniVersion":"0.1.0"}"#)).code,
            1
        );
        let err = parse_error(&run(&vars(&add), br#"{"cniVersion":"1.0.0","mtu":1}"#));
        assert_eq!(err.code, 7);
        assert!(err.msg.starts_with("mtu"), "{}", err.msg);
    }
}
