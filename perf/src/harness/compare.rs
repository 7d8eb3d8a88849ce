//! `weave-perf compare A.json B.json`: what changed between two runs.

use std::fmt::Write as _;

use super::markdown::format_value;
use super::model::{Better, Metric, WorkloadName};
use super::placement::{format_cpu_list, Placement};
use super::result::{RunResult, Spread};

/// One metric of one path and workload, as both runs measured it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The path's name.
    pub path: String,
    /// The workload's name.
    pub workload: String,
    /// The metric's key.
    pub metric: String,
    /// The older run's figures.
    pub old: Spread,
    /// The newer run's figures.
    pub new: Spread,
    /// Change of the median in percent of the old one (`None` when the old one is 0).
    pub percent: Option<f64>,
    /// Whether the two runs' min–max ranges do not overlap: a change beyond both spreads.
    pub beyond_spread: bool,
    /// Whether the change is an improvement, for metrics whose direction is known.
    pub improved: Option<bool>,
}

/// Every (path, workload, metric) measured in both runs, in the newer run's order.
pub fn compare(old: &RunResult, new: &RunResult) -> Vec<Change> {
    let mut changes = Vec::new();
    for row in &new.summary {
        let Some(old_row) = old.row(&row.path, &row.workload) else {
            continue;
        };
        let mut keys: Vec<&String> = row.metrics.keys().collect();
        // Known metrics in the workload's report order, unknown ones after, by name.
        let rank = |k: &str| {
            let known = WorkloadName::from_name(&row.workload)
                .and_then(|w| w.metrics().iter().position(|m| m.key() == k));
            (known.unwrap_or(usize::MAX), k.to_owned())
        };
        keys.sort_by_key(|k| rank(k));
        for key in keys {
            let (Some(Some(n)), Some(Some(o))) = (row.metrics.get(key), old_row.metrics.get(key))
            else {
                continue;
            };
            let percent = (o.median != 0.0).then(|| (n.median - o.median) / o.median.abs() * 100.0);
            let beyond_spread = n.min > o.max || n.max < o.min;
            let improved = Metric::from_key(key).and_then(|m| {
                let up = n.median > o.median;
                match (n.median == o.median, m.better()) {
                    (true, _) => None,
                    (false, Better::Higher) => Some(up),
                    (false, Better::Lower) => Some(!up),
                    (false, Better::Neither) => None,
                }
            });
            changes.push(Change {
                path: row.path.clone(),
                workload: row.workload.clone(),
                metric: key.clone(),
                old: *o,
                new: *n,
                percent,
                beyond_spread,
                improved,
            });
        }
    }
    changes
}

/// The comparison as a text table; `old_name` and `new_name` label the two runs.
pub fn render_compare(
    old: &RunResult,
    new: &RunResult,
    old_name: &str,
    new_name: &str,
    changes: &[Change],
) -> String {
    let mut out = String::new();
    let describe = |r: &RunResult| {
        let commit = r
            .machine
            .git_commit
            .as_deref()
            .map(|c| format!(", commit {}", c.get(..12).unwrap_or(c)))
            .unwrap_or_default();
        format!(
            "{} on Linux {}, {} cores{commit}, {} × {} s",
            r.started_utc,
            r.machine.kernel,
            r.machine.cores,
            r.settings.repeats,
            r.settings.seconds
        )
    };
    let _ = writeln!(out, "old: {old_name}: {}", describe(old));
    let _ = writeln!(out, "new: {new_name}: {}", describe(new));
    if old.machine.kernel != new.machine.kernel
        || old.machine.cores != new.machine.cores
        || old.machine.cpu_model != new.machine.cpu_model
    {
        let _ = writeln!(
            out,
            "note: the runs were taken on different machines or kernels; only ratios within each run compare well"
        );
    }
    if (old.schema_version < 2) != (new.schema_version < 2) {
        let _ = writeln!(
            out,
            "note: the runs' files are of schema versions {} and {}: before version 2, UDP \
             received packets/s and Gbit/s were over the span between the first and last \
             arrival, not the counted window, so they read higher on lossy paths",
            old.schema_version, new.schema_version
        );
    }
    let (old_place, new_place) = (placement(old), placement(new));
    if old_place != new_place {
        let _ = writeln!(
            out,
            "note: the routers ran on different CPUs: old {old_place}; new {new_place}"
        );
    }
    for (label, rows) in [
        ("old", missing_metrics(old, new)),
        ("new", missing_metrics(new, old)),
    ] {
        if rows.is_empty() {
            continue;
        }
        let listed: Vec<String> = rows
            .iter()
            .map(|(key, workloads)| format!("{key} ({})", workloads.join(", ")))
            .collect();
        let _ = writeln!(
            out,
            "not in {label} (its weave-perf did not record them), so not compared: {}",
            listed.join("; ")
        );
    }
    let _ = writeln!(
        out,
        "'!' marks a change beyond the min–max spread of both runs"
    );
    if old.settings.repeats < 2 || new.settings.repeats < 2 {
        let _ = writeln!(
            out,
            "note: a run of one repeat has no spread, so every change against it is marked"
        );
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "{:<16} {:<8} {:<24} {:>12} {:>12} {:>9}",
        "path", "workload", "metric", "old", "new", "change"
    );
    for c in changes {
        let value = |v: f64| match Metric::from_key(&c.metric) {
            Some(m) => format_value(m, v),
            None => format!("{v:.3}"),
        };
        let pct = c
            .percent
            .map_or_else(|| "–".to_owned(), |p| format!("{p:+.1}%"));
        let flag = match (c.beyond_spread, c.improved) {
            (false, _) => "",
            (true, Some(true)) => " ! better",
            (true, Some(false)) => " ! worse",
            (true, None) => " !",
        };
        let _ = writeln!(
            out,
            "{:<16} {:<8} {:<24} {:>12} {:>12} {:>9}{flag}",
            c.path,
            c.workload,
            c.metric,
            value(c.old.median),
            value(c.new.median),
            pct
        );
    }
    let only = |a: &RunResult, b: &RunResult| -> Vec<String> {
        a.summary
            .iter()
            .filter(|r| b.row(&r.path, &r.workload).is_none())
            .map(|r| format!("{} {}", r.path, r.workload))
            .collect()
    };
    for (label, rows) in [
        ("only in old", only(old, new)),
        ("only in new", only(new, old)),
    ] {
        if !rows.is_empty() {
            let _ = writeln!(out, "\n{label}: {}", rows.join(", "));
        }
    }
    out
}

/// Where a run's routers ran, in a few words.
fn placement(run: &RunResult) -> String {
    let Some(p) = &run.settings.placement else {
        return "not recorded (every router on every CPU)".to_owned();
    };
    match p.placement {
        Placement::Split => {
            let hosts: Vec<String> = p
                .hosts
                .iter()
                .map(|h| format!("{} CPU {}", h.host, format_cpu_list(&h.cpus)))
                .collect();
            format!("split ({})", hosts.join(", "))
        }
        Placement::Shared => format!(
            "shared (every router on CPUs {})",
            format_cpu_list(&p.machine_cpus)
        ),
    }
}

/// Metric keys that rows of `has` record and the same rows of `lacks` do not (rows both runs
/// have), each with the workloads it is missing for, in `has`'s order.
fn missing_metrics(lacks: &RunResult, has: &RunResult) -> Vec<(String, Vec<String>)> {
    let mut missing: Vec<(String, Vec<String>)> = Vec::new();
    for row in &has.summary {
        let Some(other) = lacks.row(&row.path, &row.workload) else {
            continue;
        };
        for key in row
            .metrics
            .keys()
            .filter(|k| !other.metrics.contains_key(*k))
        {
            let at = match missing.iter_mut().position(|(k, _)| k == key) {
                Some(i) => &mut missing[i].1,
                None => {
                    missing.push((key.clone(), Vec::new()));
                    &mut missing.last_mut().expect("just pushed").1
                }
            };
            if !at.contains(&row.workload) {
                at.push(row.workload.clone());
            }
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::result::tests::sample_run;

    fn scale(run: &mut RunResult, path: &str, workload: &str, metric: &str, factor: f64) {
        let row = run
            .summary
            .iter_mut()
            .find(|r| r.path == path && r.workload == workload)
            .unwrap();
        let s = row.metrics.get_mut(metric).unwrap().as_mut().unwrap();
        s.median *= factor;
        s.min *= factor;
        s.max *= factor;
    }

    #[test]
    fn a_run_compared_with_itself_has_no_flags() {
        let run = sample_run();

        let changes = compare(&run, &run);

        assert!(!changes.is_empty());
        assert!(changes.iter().all(|c| !c.beyond_spread));
        assert!(changes.iter().all(|c| c.percent == Some(0.0)));
        // Null router figures of kernel paths are not compared.
        assert!(!changes
            .iter()
            .any(|c| c.path == "vxlan" && c.metric == "router_cpu_s_per_gib"));
    }

    #[test]
    fn changes_beyond_both_spreads_are_flagged_with_their_direction() {
        let old = sample_run();
        let mut new = sample_run();
        // tcp1 over vxlan spreads ±2.5 %: +20 % leaves it, +2 % does not.
        scale(&mut new, "vxlan", "tcp1", "throughput_gbps", 1.2);
        scale(&mut new, "veth", "tcp1", "throughput_gbps", 1.02);
        scale(&mut new, "sleeve-epoll", "rr", "latency_p99_us", 1.5);

        let changes = compare(&old, &new);

        let find = |p: &str, w: &str, m: &str| {
            changes
                .iter()
                .find(|c| c.path == p && c.workload == w && c.metric == m)
                .unwrap()
        };
        let up = find("vxlan", "tcp1", "throughput_gbps");
        assert!(up.beyond_spread);
        assert_eq!(up.improved, Some(true));
        assert!((up.percent.unwrap() - 20.0).abs() < 1e-9);
        assert!(!find("veth", "tcp1", "throughput_gbps").beyond_spread);
        let slower = find("sleeve-epoll", "rr", "latency_p99_us");
        assert!(slower.beyond_spread);
        assert_eq!(slower.improved, Some(false));
        let text = render_compare(&old, &new, "a.json", "b.json", &changes);
        assert!(
            text.lines()
                .any(|l| l.starts_with("vxlan") && l.contains("+20.0%") && l.ends_with("! better")),
            "{text}"
        );
        assert!(text
            .lines()
            .any(|l| l.contains("latency_p99_us") && l.ends_with("! worse")));
    }

    #[test]
    fn rows_in_one_run_only_are_listed() {
        let old = sample_run();
        let mut new = sample_run();
        new.summary.retain(|r| r.path != "sleeve-no-gso");

        let changes = compare(&old, &new);
        let text = render_compare(&old, &new, "a", "b", &changes);

        assert!(!changes.iter().any(|c| c.path == "sleeve-no-gso"));
        assert!(text.contains("only in old: sleeve-no-gso tcp1"), "{text}");
    }

    #[test]
    fn metrics_and_placement_an_older_run_lacks_are_named() {
        let mut old = sample_run();
        old.schema_version = 1;
        old.settings.placement = None;
        for r in &mut old.summary {
            r.metrics.remove("machine_cpu_s_per_gib");
            r.metrics.remove("loss_free_packets_per_second");
        }
        let new = sample_run();

        let changes = compare(&old, &new);
        let text = render_compare(&old, &new, "old.json", "new.json", &changes);

        assert!(
            text.contains(
                "not in old (its weave-perf did not record them), so not compared: \
                 machine_cpu_s_per_gib (tcp1, tcp4, udp64, udp1400); \
                 loss_free_packets_per_second (udp64, udp1400)"
            ),
            "{text}"
        );
        assert!(!text.contains("not in new"), "{text}");
        assert!(text.contains("schema versions 1 and 2"), "{text}");
        assert!(
            text.contains(
                "note: the routers ran on different CPUs: old not recorded (every router on \
                 every CPU); new split (host1 CPU 0, host2 CPU 1, host3 CPU 0)"
            ),
            "{text}"
        );
        assert!(!changes.iter().any(|c| c.metric == "machine_cpu_s_per_gib"));
    }
}
