//! The `CNI_*` environment of one invocation, checked per command as the CNI specification
//! 1.1 requires (section "Parameters"): a missing or malformed variable is refused with its
//! name, error code 4.

use std::collections::BTreeMap;

/// The six commands of the specification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container.
    Del,
    /// Verify an attachment.
    Check,
    /// Is the plugin ready for ADD?
    Status,
    /// Release what no valid attachment uses.
    Gc,
    /// Which spec versions are supported.
    Version,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }
}

/// The variables an attachment command needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`; DEL may come without one.
    pub netns: Option<String>,
    /// `CNI_IFNAME`.
    pub ifname: String,
}

/// A checked environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// For ADD, DEL and CHECK.
    pub attachment: Option<Attachment>,
    /// `CNI_PATH`, split on `:`: where chained IPAM plugins are looked up.
    pub path: Vec<String>,
}

/// A refused environment: the variable and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct EnvError {
    /// The variable's name.
    pub var: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl CniEnv {
    /// Reads and checks the variables `command` needs from `vars`.
    pub fn from_vars(vars: &BTreeMap<String, String>) -> Result<CniEnv, EnvError> {
        let get = |k: &str| vars.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let Some(raw) = get("CNI_COMMAND") else {
            return Err(missing("CNI_COMMAND"));
        };
        let command = Command::parse(raw).ok_or_else(|| EnvError {
            var: "CNI_COMMAND",
            reason: format!("{raw:?} is not a CNI command"),
        })?;
        let path = get("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let attachment = match command {
            Command::Add | Command::Check | Command::Del => {
                let container_id =
                    get("CNI_CONTAINERID").ok_or_else(|| missing("CNI_CONTAINERID"))?;
                check_container_id(container_id)?;
                let ifname = get("CNI_IFNAME").ok_or_else(|| missing("CNI_IFNAME"))?;
                check_ifname(ifname)?;
                let netns = get("CNI_NETNS");
                if netns.is_none() && command != Command::Del {
                    return Err(missing("CNI_NETNS"));
                }
                Some(Attachment {
                    container_id: container_id.to_owned(),
                    netns: netns.map(String::from),
                    ifname: ifname.to_owned(),
                })
            }
            Command::Status | Command::Gc | Command::Version => None,
        };
        Ok(CniEnv {
            command,
            attachment,
            path,
        })
    }
}

fn missing(var: &'static str) -> EnvError {
    EnvError {
        var,
        reason: "not set".to_owned(),
    }
}

/// The spec: a container id is non-empty and made of alphanumerics, `_`, `.` and `-`.
fn check_container_id(id: &str) -> Result<(), EnvError> {
    if id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Ok(());
    }
    Err(EnvError {
        var: "CNI_CONTAINERID",
        reason: format!("{id:?} may hold only letters, digits, '_', '.' and '-'"),
    })
}

/// The spec (and the kernel): at most 15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
fn check_ifname(name: &str) -> Result<(), EnvError> {
    let bad = name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if !bad {
        return Ok(());
    }
    Err(EnvError {
        var: "CNI_IFNAME",
        reason: format!(
            "{name:?} is not an interface name (at most 15 bytes, no '/', ':' or spaces)"
        ),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An environment from pairs (also used by the crate's other tests).
    pub(crate) fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn add_needs_its_three_variables() {
        let full = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc-1"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ];
        let env = CniEnv::from_vars(&vars(&full)).unwrap();
        assert_eq!(env.command, Command::Add);
        assert_eq!(env.path, vec!["/opt/cni/bin", "/usr/lib/cni"]);
        for skip in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            let partial: Vec<_> = full.iter().copied().filter(|(k, _)| *k != skip).collect();
            let err = CniEnv::from_vars(&vars(&partial)).unwrap_err();
            assert_eq!(err.var, skip);
        }
    }

    #[test]
    fn del_may_come_without_a_netns() {
        let env = CniEnv::from_vars(&vars(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap();
        assert_eq!(env.attachment.unwrap().netns, None);
    }

    #[test]
    fn malformed_values_are_named() {
        let base = [("CNI_COMMAND", "ADD"), ("CNI_NETNS", "/x")];
        let with = |id: &str, ifname: &str| {
            let mut v = vars(&base);
            v.insert("CNI_CONTAINERID".into(), id.into());
            v.insert("CNI_IFNAME".into(), ifname.into());
            CniEnv::from_vars(&v)
        };
        assert_eq!(with("a/b", "eth0").unwrap_err().var, "CNI_CONTAINERID");
        assert_eq!(
            with("ab", "a-very-long-ifname").unwrap_err().var,
            "CNI_IFNAME"
        );
        assert_eq!(with("ab", "..").unwrap_err().var, "CNI_IFNAME");
        assert_eq!(with("ab", "eth 0").unwrap_err().var, "CNI_IFNAME");
        assert!(with("ab.c_d-e", "eth0").is_ok());
    }

    #[test]
    fn status_gc_and_version_need_nothing_else() {
        for c in ["STATUS", "GC", "VERSION"] {
            assert!(CniEnv::from_vars(&vars(&[("CNI_COMMAND", c)])).is_ok());
        }
        let err = CniEnv::from_vars(&vars(&[("CNI_COMMAND", "ATTACH")])).unwrap_err();
        assert_eq!(err.var, "CNI_COMMAND");
        assert_eq!(
            CniEnv::from_vars(&vars(&[])).unwrap_err().var,
            "CNI_COMMAND"
        );
    }
}
