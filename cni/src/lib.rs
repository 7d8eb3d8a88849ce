//! The weave-router CNI plugin, as far as it exists: it answers `VERSION`, and refuses to
//! attach containers because weave-router has no IP address management yet.
//!
//! [`handle`] is the whole plugin as a pure function of `CNI_COMMAND` and stdin, so that
//! every answer is unit-tested; `main` only does the I/O.
#![deny(unsafe_code)]

use serde::{Deserialize, Serialize};

/// CNI spec versions this plugin accepts in a network configuration.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The version used in answers when the request names none.
pub const LATEST_VERSION: &str = "1.1.0";
/// The message of every refused ADD or CHECK.
pub const NO_IPAM_MSG: &str = "weave-cni: IP address management is not available in this version";

/// Error codes of the CNI specification used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 1: the configuration's `cniVersion` is not supported.
    IncompatibleVersion,
    /// 4: `CNI_COMMAND` is missing or unknown.
    InvalidEnvironment,
    /// 6: stdin is not a JSON network configuration.
    DecodeFailure,
    /// 50: STATUS — the plugin cannot service ADD requests.
    PluginNotAvailable,
    /// 100: plugin-specific — no IP address management to give the container an address.
    /// The spec reserves 1-99 for its own meanings, none of which is "this plugin cannot".
    NoIpam,
}

impl ErrorCode {
    /// The number on the wire.
    pub fn code(self) -> u32 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::InvalidEnvironment => 4,
            ErrorCode::DecodeFailure => 6,
            ErrorCode::PluginNotAvailable => 50,
            ErrorCode::NoIpam => 100,
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

/// The answer to `VERSION`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    /// The spec version of this answer.
    pub cni_version: String,
    /// The versions the plugin accepts.
    pub supported_versions: Vec<String>,
}

/// What the plugin writes and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Written to stdout (may be empty).
    pub stdout: String,
    /// The process exit code.
    pub exit_code: u8,
}

/// The part of a network configuration (or a VERSION request) read here.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    cni_version: Option<String>,
}

/// Runs one plugin invocation: `command` is `CNI_COMMAND`, `stdin` the network
/// configuration (or, for VERSION, `{"cniVersion": ..}`).
pub fn handle(command: Option<&str>, stdin: &[u8]) -> Reply {
    let Some(command) = command else {
        return error(
            LATEST_VERSION,
            ErrorCode::InvalidEnvironment,
            "CNI_COMMAND is not set",
            "",
        );
    };
    let version = match request_version(command, stdin) {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    match command {
        "VERSION" => json_reply(
            &VersionInfo {
                cni_version: version,
                supported_versions: SUPPORTED_VERSIONS.iter().map(|v| v.to_string()).collect(),
            },
            0,
        ),
        "ADD" | "CHECK" => error(
            &version,
            ErrorCode::NoIpam,
            NO_IPAM_MSG,
            "weave-router does not allocate pod addresses yet; use another CNI plugin",
        ),
        // ADD never created anything, so there is nothing to remove or collect. Failing DEL
        // would leave runtimes retrying the teardown of pods forever, which the spec asks
        // plugins to avoid.
        "DEL" | "GC" => Reply {
            stdout: String::new(),
            exit_code: 0,
        },
        "STATUS" => error(
            &version,
            ErrorCode::PluginNotAvailable,
            NO_IPAM_MSG,
            "weave-cni cannot service ADD requests",
        ),
        other => error(
            &version,
            ErrorCode::InvalidEnvironment,
            &format!("CNI_COMMAND {other:?} is not a CNI command"),
            "",
        ),
    }
}

/// The spec version to answer with: the request's, which must be supported. VERSION may come
/// with empty stdin, and then gets the latest.
fn request_version(command: &str, stdin: &[u8]) -> Result<String, Reply> {
    let empty = stdin.iter().all(u8::is_ascii_whitespace);
    if empty && command == "VERSION" {
        return Ok(LATEST_VERSION.to_owned());
    }
    let request: Request = serde_json::from_slice(stdin).map_err(|e| {
        error(
            LATEST_VERSION,
            ErrorCode::DecodeFailure,
            "cannot decode the network configuration on stdin",
            &e.to_string(),
        )
    })?;
    let Some(version) = request.cni_version else {
        return Ok(LATEST_VERSION.to_owned());
    };
    if SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return Ok(version);
    }
    Err(error(
        LATEST_VERSION,
        ErrorCode::IncompatibleVersion,
        &format!("cniVersion {version} is not supported"),
        &format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
    ))
}

fn error(version: &str, code: ErrorCode, msg: &str, details: &str) -> Reply {
    json_reply(
        &CniError {
            cni_version: version.to_owned(),
            code: code.code(),
            msg: msg.to_owned(),
            details: details.to_owned(),
        },
        1,
    )
}

fn json_reply(value: &impl Serialize, exit_code: u8) -> Reply {
    // These types hold only strings, numbers and lists: serialising them cannot fail.
    let stdout = serde_json::to_string(value).unwrap_or_default();
    Reply { stdout, exit_code }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &[u8] = br#"{"cniVersion": "1.0.0", "name": "weave", "type": "weave-net"}"#;

    fn parse_error(reply: &Reply) -> CniError {
        assert_eq!(reply.exit_code, 1, "{}", reply.stdout);
        serde_json::from_str(&reply.stdout).unwrap()
    }

    #[test]
    fn version_lists_supported_versions() {
        let reply = handle(Some("VERSION"), br#"{"cniVersion": "0.4.0"}"#);

        assert_eq!(reply.exit_code, 0);
        let info: VersionInfo = serde_json::from_str(&reply.stdout).unwrap();
        assert_eq!(info.cni_version, "0.4.0");
        assert!(info.supported_versions.iter().any(|v| v == "1.0.0"));
    }

    #[test]
    fn version_with_empty_stdin_answers_latest() {
        let reply = handle(Some("VERSION"), b"");

        let info: VersionInfo = serde_json::from_str(&reply.stdout).unwrap();
        assert_eq!(info.cni_version, LATEST_VERSION);
    }

    #[test]
    fn add_is_refused_with_a_plugin_error() {
        let err = parse_error(&handle(Some("ADD"), CONF));

        assert_eq!(err.code, 100);
        assert_eq!(err.msg, NO_IPAM_MSG);
        assert_eq!(err.cni_version, "1.0.0");
    }

    #[test]
    fn check_is_refused_with_a_plugin_error() {
        let err = parse_error(&handle(Some("CHECK"), CONF));

        assert_eq!(err.code, 100);
        assert_eq!(err.msg, NO_IPAM_MSG);
    }

    #[test]
    fn del_succeeds_with_nothing_to_remove() {
        let reply = handle(Some("DEL"), CONF);

        assert_eq!(reply.exit_code, 0);
        assert_eq!(reply.stdout, "");
    }

    #[test]
    fn status_says_the_plugin_is_not_available() {
        let err = parse_error(&handle(Some("STATUS"), br#"{"cniVersion": "1.1.0"}"#));

        assert_eq!(err.code, 50);
    }

    #[test]
    fn unknown_or_missing_command_is_an_environment_error() {
        assert_eq!(parse_error(&handle(Some("ATTACH"), CONF)).code, 4);
        assert_eq!(parse_error(&handle(None, CONF)).code, 4);
    }

    #[test]
    fn bad_stdin_is_a_decode_error() {
        let err = parse_error(&handle(Some("ADD"), b"not json"));

        assert_eq!(err.code, 6);
        assert!(!err.details.is_empty());
    }

    #[test]
    fn unsupported_version_is_refused() {
        let err = parse_error(&handle(Some("ADD"), br#"{"cniVersion": "0.1.0"}"#));

        assert_eq!(err.code, 1);
        assert!(err.msg.contains("0.1.0"));
    }
}
