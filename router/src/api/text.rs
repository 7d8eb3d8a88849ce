//! The plain-text status pages, in the exact shapes Weave Net's `weave status` prints, so
//! that operators' scripts that cut columns out of them keep working.
//!
//! Every renderer is a pure function of a [`RouterStatus`] snapshot.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::ipam::allocator::IpamStatus;
use crate::mesh::status::{LocalConnectionStatus, PeerStatus, RouterStatus};

/// Connection states in the order the summary counts them.
pub const CONNECTION_STATES: [&str; 5] =
    ["established", "pending", "retrying", "failed", "connecting"];

/// `GET /status`: the router section, then the IPAM section when address management runs.
pub fn render_status(version: &str, r: &RouterStatus, ipam: Option<&IpamStatus>) -> String {
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
    if let Some(ipam) = ipam {
        s.push('\n');
        s.push_str("        Service: ipam\n");
        let _ = writeln!(s, "         Status: {}", ipam.state());
        let _ = writeln!(s, "          Range: {}", ipam.range);
        let _ = writeln!(s, "  DefaultSubnet: {}", ipam.default_subnet);
    }
    s
}

/// One ring owner's share, summed over its ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamOwner {
    /// Peer name.
    pub peer: String,
    /// Its nickname.
    pub nickname: String,
    /// Addresses it owns.
    pub ips: u64,
    /// Whether it is in the mesh now.
    pub reachable: bool,
}

/// The ring's owners in name order, each with the addresses it owns.
pub fn ipam_owners(s: &IpamStatus) -> Vec<IpamOwner> {
    let mut owners: BTreeMap<&str, IpamOwner> = BTreeMap::new();
    for e in &s.entries {
        let o = owners.entry(e.peer.as_str()).or_insert_with(|| IpamOwner {
            peer: e.peer.clone(),
            nickname: e.nickname.clone(),
            ips: 0,
            reachable: e.is_known_peer,
        });
        o.ips += u64::from(e.size);
    }
    owners.into_values().collect()
}

/// `GET /status/ipam`: each owner's share of the range, ourselves first, as Weave prints it.
pub fn render_ipam_ranges(ourself: &str, s: &IpamStatus) -> String {
    let mut out = String::new();
    let owners = ipam_owners(s);
    let line = |out: &mut String, o: &IpamOwner, info: &str| {
        let pct = if s.range_num_ips == 0 {
            0.0
        } else {
            o.ips as f64 * 100.0 / s.range_num_ips as f64
        };
        let name = format!("{}({})", o.peer, o.nickname);
        let _ = writeln!(
            out,
            "{name:<37} {:>8} IPs ({pct:04.1}% of total) {info}",
            o.ips
        );
    };
    if let Some(me) = owners.iter().find(|o| o.peer == ourself) {
        line(&mut out, me, &format!("({} active)", s.active_ips));
    }
    for o in owners.iter().filter(|o| o.peer != ourself) {
        line(&mut out, o, if o.reachable { "" } else { "- unreachable!" });
    }
    if owners.is_empty() {
        let _ = writeln!(out, "{}", s.state());
    }
    out
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
            if key == "name" || key == "fastdp_moves" {
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

    /// The `IPAM` object of a captured `/report`.
    fn captured_ipam(report_json: &str) -> Option<IpamStatus> {
        let v: serde_json::Value = serde_json::from_str(report_json).unwrap();
        let ipam = v.get("IPAM")?;
        Some(serde_json::from_value(ipam.clone()).unwrap())
    }

    #[test]
    fn status_matches_captures_with_the_ipam_section() {
        for (report, status) in [
            (HOST1_REPORT, HOST1_STATUS),
            (HOST2_REPORT, HOST2_STATUS),
            (PW_REPORT, PW_STATUS),
        ] {
            let r = captured_router(report);
            let ipam = captured_ipam(report);
            assert!(ipam.is_some(), "the captures ran Weave with IPAM");
            let want = captured_section(status, "/status");
            // Weave's version line names its version-check state; ours says it is off.
            let want: String = want
                .split_inclusive('\n')
                .skip(1)
                .filter(|l| !l.contains("Service: dns") && !l.contains("Domain:"))
                .collect();
            let got = render_status("v", &r, ipam.as_ref());
            let got: String = got.split_inclusive('\n').skip(1).collect();
            assert!(want.starts_with(&got), "got:\n{got}\nwant:\n{want}");
        }
    }

    #[test]
    fn ipam_ranges_match_captures() {
        for (report, status, me) in [
            (HOST1_REPORT, HOST1_STATUS, "aa:00:00:00:00:01"),
            (HOST2_REPORT, HOST2_STATUS, "aa:00:00:00:00:02"),
        ] {
            let ipam = captured_ipam(report).unwrap();
            let got = render_ipam_ranges(me, &ipam);
            let want = captured_section(status, "/status/ipam");
            let (got_first, got_rest) = got.split_once('\n').unwrap();
            let (want_first, want_rest) = want.split_once('\n').unwrap();
            assert_eq!(got_first, want_first, "ourselves first");
            // Weave prints the others in Go map order; we print them in name order.
            let mut got_rest: Vec<&str> = got_rest.lines().collect();
            let mut want_rest: Vec<&str> = want_rest.lines().collect();
            got_rest.sort_unstable();
            want_rest.sort_unstable();
            assert_eq!(got_rest, want_rest);
        }
    }

    #[test]
    fn ipam_ranges_mark_unreachable_owners() {
        let mut ipam = captured_ipam(HOST1_REPORT).unwrap();
        ipam.entries[2].is_known_peer = false;
        let got = render_ipam_ranges("aa:00:00:00:00:01", &ipam);
        assert!(
            got.contains("aa:00:00:00:00:02(host2)                524288 IPs (50.0% of total) - unreachable!\n"),
            "{got}"
        );
    }

    #[test]
    fn counts_leave_out_empty_states_and_single_version_protocol_prints_once() {
        let mut r = captured_router(HOST1_REPORT);
        r.connections.clear();
        r.peers.truncate(1);
        r.peers[0].connections.clear();
        r.protocol_min_version = 2;
        let s = render_status("v", &r, None);
        assert!(s.contains("\n    Connections: 0\n"), "{s}");
        assert!(s.contains("\n          Peers: 1\n"), "{s}");
        assert!(s.contains("\n       Protocol: weave 2\n"), "{s}");
    }

    #[test]
    fn pending_peer_connections_are_counted_and_marked() {
        let mut r = captured_router(HOST2_REPORT);
        r.peers[0].connections[1].established = false;
        let s = render_status("v", &r, None);
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
