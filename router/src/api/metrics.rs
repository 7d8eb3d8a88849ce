//! Prometheus text exposition of the router's counters, with Weave Net's metric names.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::api::text::CONNECTION_STATES;
use crate::mesh::status::{LocalConnectionStatus, RouterStatus};

/// The overlay every connection may use, so its series exist even before a connection does.
const BASE_OVERLAY: &str = "sleeve";

/// The `/metrics` page for a snapshot.
///
/// `weave_connections` has Weave's labels (`state`, `type` = overlay name or `unknown`,
/// `encryption` = `yes` or empty); every state gets a series for every overlay seen plus
/// sleeve, so `sum(weave_connections{state="connecting"})` is 0 rather than absent.
pub fn render_metrics(r: &RouterStatus) -> String {
    let mut s = String::new();
    s.push_str("# HELP weave_connections Number of peer-to-peer connections.\n");
    s.push_str("# TYPE weave_connections gauge\n");
    let mut types: BTreeSet<String> = r.connections.iter().map(overlay_type).collect();
    types.insert(BASE_OVERLAY.to_string());
    for state in CONNECTION_STATES {
        for ty in &types {
            for encrypted in [false, true] {
                let n = r
                    .connections
                    .iter()
                    .filter(|c| c.state == state && overlay_type(c) == *ty)
                    .filter(|c| is_encrypted(c) == encrypted)
                    .count();
                let enc = if encrypted { "yes" } else { "" };
                // Writing to a String cannot fail.
                let _ = writeln!(
                    s,
                    "weave_connections{{encryption=\"{enc}\",state=\"{state}\",type=\"{}\"}} {n}",
                    escape_label(ty)
                );
            }
        }
    }
    s.push_str(
        "# HELP weave_connection_terminations_total Number of peer-to-peer connections terminated.\n",
    );
    s.push_str("# TYPE weave_connection_terminations_total counter\n");
    let _ = writeln!(
        s,
        "weave_connection_terminations_total {}",
        r.termination_count
    );
    s
}

fn overlay_type(c: &LocalConnectionStatus) -> String {
    match c.attrs.get("name") {
        Some(serde_json::Value::String(name)) => name.clone(),
        _ => "unknown".to_string(),
    }
}

fn is_encrypted(c: &LocalConnectionStatus) -> bool {
    matches!(
        c.attrs.get("encrypted"),
        Some(serde_json::Value::Bool(true))
    )
}

/// Label values escape backslash, quote and newline (Prometheus text format).
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn conn(state: &str, attrs: &[(&str, serde_json::Value)]) -> LocalConnectionStatus {
        LocalConnectionStatus {
            address: "10.0.0.1:6783".into(),
            outbound: true,
            state: state.into(),
            info: String::new(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn status(conns: Vec<LocalConnectionStatus>, terminations: u64) -> RouterStatus {
        RouterStatus {
            protocol: "weave".into(),
            protocol_min_version: 1,
            protocol_max_version: 2,
            encryption: false,
            peer_discovery: true,
            name: "aa:00:00:00:00:01".parse().unwrap(),
            nickname: "host1".into(),
            port: 6783,
            peers: vec![],
            unicast_routes: vec![],
            broadcast_routes: vec![],
            connections: conns,
            termination_count: terminations,
            targets: vec![],
            trusted_subnets: vec![],
        }
    }

    #[test]
    fn counts_by_state_type_and_encryption() {
        let sleeve = ("name", serde_json::json!("sleeve"));
        let r = status(
            vec![
                conn("established", std::slice::from_ref(&sleeve)),
                conn("established", std::slice::from_ref(&sleeve)),
                conn(
                    "established",
                    &[sleeve, ("encrypted", serde_json::json!(true))],
                ),
                conn("failed", &[]),
            ],
            7,
        );
        let m = render_metrics(&r);
        let line = |l: &str| m.lines().any(|x| x == l);
        assert!(line(
            "weave_connections{encryption=\"\",state=\"established\",type=\"sleeve\"} 2"
        ));
        assert!(line(
            "weave_connections{encryption=\"yes\",state=\"established\",type=\"sleeve\"} 1"
        ));
        assert!(line(
            "weave_connections{encryption=\"\",state=\"failed\",type=\"unknown\"} 1"
        ));
        assert!(line(
            "weave_connections{encryption=\"\",state=\"connecting\",type=\"sleeve\"} 0"
        ));
        assert!(line("weave_connection_terminations_total 7"));
        assert!(line("# TYPE weave_connection_terminations_total counter"));
    }
}
