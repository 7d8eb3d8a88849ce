//! The plain-text status pages, in the exact shapes Weave Net's `weave status` prints, so
//! that operators' scripts that cut columns out of them keep working.
//!
//! Every renderer is a pure function of a [`RouterStatus`] snapshot.

use std::fmt::Write as _;

use crate::mesh::status::{LocalConnectionStatus, PeerStatus, RouterStatus};

/// Connection states in the order the summary counts them.
pub const CONNECTION_STATES: [&str; 5] =
    ["established", "pending", "retrying", "failed", "connecting"];

/// `GET /status`: the router section (no IPAM section yet).
pub fn render_status(version: &str, r: &RouterStatus) -> String {
    let mut s = String::new();
    let protocol = if r.protocol_min_version == r.protocol_max_version {
        r.protocol_max_version.to_string()
    } else {
        format!("{}..{}", r.protocol_min_version, r.protocol_max_version)
    };
    // `write!` into a String cannot fail.
    let _ = writeln!(
        s,
        "        Version: {version} (version check update disabled)"
    );
    s.push('\n');
    s.push_str("        Service: router\n");
    let _ = writeln!(s, "       Protocol: {} {protocol}", r.protocol);
    let _ = writeln!(s, "           Name: {}({})", r.name, r.nickname);
    let _ = writeln!(s, "     Encryption: {}", enabled(r.encryption));
    let _ = writeln!(s, "  PeerDiscovery: {}", enabled(r.peer_discovery));
    let _ = writeln!(s, "        Targets: {}", r.targets.len());
    let _ = write!(s, "    Connections: {}", r.connections.len());
    let counts = connection_counts(&r.connections);
    if !counts.is_empty() {
        let _ = write!(s, " ({counts})");
    }
    s.push('\n');
    let _ = write!(s, "          Peers: {}", r.peers.len());
    let peer_counts = peer_connection_counts(&r.peers);
    if !peer_counts.is_empty() {
        let _ = write!(s, " (with {peer_counts} connections)");
    }
    s.push('\n');
    let subnets = if r.trusted_subnets.is_empty() {
        "none".to_string()
    } else {
        r.trusted_subnets.join(", ")
    };
    let _ = writeln!(s, " TrustedSubnets: {subnets}");
    s
}

/// `GET /status/peers`: every peer and the connections it gossips.
pub fn render_peers(r: &RouterStatus) -> String {
    let mut s = String::new();
    for peer in &r.peers {
        let _ = writeln!(s, "{}({})", peer.name, peer.nickname);
        for c in &peer.connections {
            let who = format!("{}({})", c.name, c.nickname);
            let _ = writeln!(
                s,
                "   {} {:<21} {:<37} {}",
                arrow(c.outbound),
                c.address,
                who,
                if c.established {
                    "established"
                } else {
                    "pending"
                }
            );
        }
    }
    s
}

/// `GET /status/connections`: our connections and connection attempts.
pub fn render_connections(r: &RouterStatus) -> String {
    let mut s = String::new();
    for c in &r.connections {
        // Weave prints the info, a space, then every attribute but the overlay name as
        // key=value with no separator between them; the trailing space when there are no
        // attributes is part of that shape.
        let _ = write!(
            s,
            "{} {:<21} {:<11} {} ",
            arrow(c.outbound),
            c.address,
            c.state,
            c.info
        );
        for (key, value) in &c.attrs {
            if key == "name" {
                continue;
            }
            let _ = write!(s, "{key}={}", attr_value(value));
        }
        s.push('\n');
    }
    s
}

/// `GET /status/targets`: the addresses the connection maker keeps connected, one a line.
pub fn render_targets(r: &RouterStatus) -> String {
    r.targets.iter().map(|t| format!("{t}\n")).collect()
}

/// "2 established, 1 failed", in [`CONNECTION_STATES`] order; states not listed there are
/// left out, as Weave does.
fn connection_counts(conns: &[LocalConnectionStatus]) -> String {
    CONNECTION_STATES
        .iter()
        .filter_map(|state| {
            let n = conns.iter().filter(|c| c.state == *state).count();
            (n > 0).then(|| format!("{n} {state}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn peer_connection_counts(peers: &[PeerStatus]) -> String {
    let all = peers.iter().flat_map(|p| &p.connections);
    let established = all.clone().filter(|c| c.established).count();
    let pending = all.filter(|c| !c.established).count();
    let mut parts = Vec::new();
    if established > 0 {
        parts.push(format!("{established} established"));
    }
    if pending > 0 {
        parts.push(format!("{pending} pending"));
    }
    parts.join(", ")
}

fn arrow(outbound: bool) -> &'static str {
    if outbound {
        "->"
    } else {
        "<-"
    }
}

fn enabled(on: bool) -> &'static str {
    if on {
        "enabled"
    } else {
        "disabled"
    }
}

/// An attribute as Go's `%v` prints it: strings bare, the rest as JSON text.
fn attr_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "<nil>".to_string(),
        serde_json::Value::Bool(_)
        | serde_json::Value::Number(_)
        | serde_json::Value::Array(_)
        | serde_json::Value::Object(_) => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `Router` section of a captured `/report`. Weave writes `null` for empty lists and
    /// maps; our snapshot type has plain (possibly empty) ones, so nulls become empty here.
    fn captured_router(report_json: &str) -> RouterStatus {
        let mut v: serde_json::Value = serde_json::from_str(report_json).unwrap();
        let router = v.get_mut("Router").unwrap();
        if router["Targets"].is_null() {
            router["Targets"] = serde_json::json!([]);
        }
        for c in router["Connections"].as_array_mut().unwrap() {
            if c["Attrs"].is_null() {
                c["Attrs"] = serde_json::json!({});
            }
        }
        for b in router["BroadcastRoutes"].as_array_mut().unwrap() {
            if b["Via"].is_null() {
                b["Via"] = serde_json::json!([]);
            }
        }
        serde_json::from_value(router.clone()).unwrap()
    }

    /// The body of one `===== GET .../<path> (hostN)` section of a captured status file.
    fn captured_section(text: &str, path: &str) -> String {
        let header = format!("===== GET http://127.0.0.1:6784{path} (");
        let mut lines: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with(&header))
            .skip(1)
            .take_while(|l| !l.starts_with("===== "))
            .collect();
        // The capture separates sections with one empty line.
        assert_eq!(
            lines.pop(),
            Some(""),
            "section {path} not found or unterminated"
        );
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    const HOST1_REPORT: &str = include_str!("../../testdata/report-host1.json");
    const HOST1_STATUS: &str = include_str!("../../testdata/status-host1.txt");
    const HOST2_REPORT: &str = include_str!("../../testdata/report-host2.json");
    const HOST2_STATUS: &str = include_str!("../../testdata/status-host2.txt");
    const PW_REPORT: &str = include_str!("../../testdata/password-report-host1.json");
    const PW_STATUS: &str = include_str!("../../testdata/password-status-host1.txt");

    #[test]
    fn peers_match_captures() {
        for (report, status) in [
            (HOST1_REPORT, HOST1_STATUS),
            (HOST2_REPORT, HOST2_STATUS),
            (PW_REPORT, PW_STATUS),
        ] {
            let r = captured_router(report);
            assert_eq!(render_peers(&r), captured_section(status, "/status/peers"));
        }
    }

    #[test]
    fn connections_match_captures() {
        for (report, status) in [
            (HOST1_REPORT, HOST1_STATUS),
            (HOST2_REPORT, HOST2_STATUS),
            (PW_REPORT, PW_STATUS),
        ] {
            let r = captured_router(report);
            assert_eq!(
                render_connections(&r),
                captured_section(status, "/status/connections")
            );
        }
    }

    #[test]
    fn status_router_part_matches_captures() {
        for (report, status) in [
            (HOST1_REPORT, HOST1_STATUS),
            (HOST2_REPORT, HOST2_STATUS),
            (PW_REPORT, PW_STATUS),
        ] {
            let r = captured_router(report);
            let want = captured_section(status, "/status");
            let router_part: String = want
                .split_inclusive('\n')
                .take_while(|l| l.trim() != "Service: ipam")
                .collect();
            // Our output has no IPAM section, so the blank line that opens it is not ours.
            let router_part = router_part.strip_suffix("\n\n").map(|s| format!("{s}\n"));
            assert_eq!(Some(render_status("research-patched", &r)), router_part);
        }
    }

    #[test]
    fn targets_one_per_line() {
        let r = captured_router(HOST2_REPORT);
        assert_eq!(render_targets(&r), "192.168.77.1\n");
        let r = captured_router(HOST1_REPORT);
        assert_eq!(render_targets(&r), "");
    }

    #[test]
    fn counts_leave_out_empty_states_and_single_version_protocol_prints_once() {
        let mut r = captured_router(HOST1_REPORT);
        r.connections.clear();
        r.peers.truncate(1);
        r.peers[0].connections.clear();
        r.protocol_min_version = 2;
        let s = render_status("v", &r);
        assert!(s.contains("\n    Connections: 0\n"), "{s}");
        assert!(s.contains("\n          Peers: 1\n"), "{s}");
        assert!(s.contains("\n       Protocol: weave 2\n"), "{s}");
    }

    #[test]
    fn pending_peer_connections_are_counted_and_marked() {
        let mut r = captured_router(HOST2_REPORT);
        r.peers[0].connections[1].established = false;
        let s = render_status("v", &r);
        assert!(
            s.contains("Peers: 3 (with 3 established, 1 pending connections)"),
            "{s}"
        );
        let peers = render_peers(&r);
        assert!(
            peers.contains(
                "<- 192.168.78.3:48645    aa:00:00:00:00:03(host3)              pending\n"
            ),
            "{peers}"
        );
    }
}
