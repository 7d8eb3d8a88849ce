//! The chart of a run as a self-contained SVG: grouped bars per path of TCP throughput,
//! UDP packet rates (loss-free where searched) and request/response latency (closed and open
//! loop), medians (round-trip percentiles of all repeats merged) with min–max whiskers.

use std::fmt::Write as _;

use super::model::{Metric, WorkloadName};
use super::result::{RunResult, Spread};
use super::search::MAX_LOSS_PERCENT;

const WIDTH: f64 = 1280.0;
const HEIGHT: f64 = 580.0;
/// Top of the panels' plot areas (below title, subtitle and legend).
const PLOT_TOP: f64 = 165.0;
/// Bottom of the plot areas (above the group labels).
const PLOT_BOTTOM: f64 = HEIGHT - 70.0;
const PANEL_GAP: f64 = 40.0;
const MARGIN_LEFT: f64 = 70.0;
const MARGIN_RIGHT: f64 = 20.0;
const FONT: &str = "DejaVu Sans, Helvetica, Arial, sans-serif";

/// Fill colours of the known paths; later paths take the fallback palette in order.
fn colour(path: &str, index: usize) -> &'static str {
    const FALLBACK: [&str; 4] = ["#e377c2", "#17becf", "#bcbd22", "#aec7e8"];
    match path {
        "vxlan" => "#7f7f7f",
        "veth" => "#c7c7c7",
        "sleeve-io-uring" => "#1f77b4",
        "sleeve-epoll" => "#ff7f0e",
        "sleeve-no-gso" => "#2ca02c",
        "sleeve-encrypted" => "#9467bd",
        "sleeve-encrypted-nacl" => "#8c564b",
        "fastdp" => "#d62728",
        _ => FALLBACK[index % FALLBACK.len()],
    }
}

/// One bar group: a label and where its values come from.
struct Group {
    label: &'static str,
    workload: WorkloadName,
    metric: Metric,
}

/// One panel of the chart.
struct Panel {
    title: &'static str,
    /// A smaller line under the title.
    note: String,
    groups: Vec<Group>,
    /// How values are scaled and labelled for this panel.
    scale: Scale,
}

#[derive(Clone, Copy)]
enum Scale {
    /// Shown as is, with `decimals` decimals.
    Plain { decimals: usize },
    /// Packet rates, shown in k or M per second as the largest needs.
    Rate,
}

/// Renders the chart of `run`.
pub fn render_svg(run: &RunResult) -> String {
    let paths = run.measured_paths();
    let loss_free = [WorkloadName::Udp64, WorkloadName::Udp1400]
        .iter()
        .any(|w| {
            paths.iter().any(|p| {
                run.spread(p, w.name(), Metric::LossFreePacketsPerSecond)
                    .is_some()
            })
        });
    let (udp_metric, udp_note) = match loss_free {
        true => (
            Metric::LossFreePacketsPerSecond,
            format!("loss-free: highest rate with < {MAX_LOSS_PERCENT} % loss; higher is better"),
        ),
        false => (
            Metric::PacketsPerSecond,
            "received from a 2-thread flood; higher is better".to_owned(),
        ),
    };
    let paced = run
        .workloads
        .iter()
        .find(|w| w.name == WorkloadName::RrPaced.name())
        .and_then(|w| w.rate)
        .map_or_else(String::new, |r| format!(", and {r:.0}/s paced"));
    let panels: Vec<Panel> = [
        Panel {
            title: "TCP throughput, Gbit/s",
            note: "higher is better".to_owned(),
            groups: vec![
                group("1 stream", WorkloadName::Tcp1, Metric::ThroughputGbps),
                group("4 streams", WorkloadName::Tcp4, Metric::ThroughputGbps),
            ],
            scale: Scale::Plain { decimals: 2 },
        },
        Panel {
            title: "UDP packets per second",
            note: udp_note,
            groups: vec![
                group("64 B", WorkloadName::Udp64, udp_metric),
                group("1400 B", WorkloadName::Udp1400, udp_metric),
            ],
            scale: Scale::Rate,
        },
        Panel {
            title: "Round-trip latency, µs",
            note: format!("TCP, 1 byte each way, closed loop{paced}; lower is better"),
            groups: vec![
                group("p50", WorkloadName::Rr, Metric::LatencyP50Us),
                group("p99", WorkloadName::Rr, Metric::LatencyP99Us),
                group("paced p50", WorkloadName::RrPaced, Metric::LatencyP50Us),
                group("paced p99", WorkloadName::RrPaced, Metric::LatencyP99Us),
            ],
            scale: Scale::Plain { decimals: 0 },
        },
    ]
    .into_iter()
    .map(|mut p| {
        let measured = |g: &Group| run.workloads.iter().any(|w| w.name == g.workload.name());
        p.groups.retain(measured);
        p
    })
    .filter(|p| !p.groups.is_empty())
    .collect();

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="{FONT}">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    title(&mut svg, run);
    legend(&mut svg, &paths);
    let count = panels.len().max(1) as f64;
    let panel_width = (WIDTH
        - MARGIN_LEFT
        - MARGIN_RIGHT
        - PANEL_GAP * (count - 1.0)
        - (MARGIN_LEFT - 10.0) * (count - 1.0))
        / count;
    for (i, panel) in panels.iter().enumerate() {
        let x0 = MARGIN_LEFT + i as f64 * (panel_width + PANEL_GAP + MARGIN_LEFT - 10.0);
        draw_panel(&mut svg, run, &paths, panel, x0, panel_width);
    }
    svg.push_str("</svg>\n");
    svg
}

fn group(label: &'static str, workload: WorkloadName, metric: Metric) -> Group {
    Group {
        label,
        workload,
        metric,
    }
}

fn title(svg: &mut String, run: &RunResult) {
    let m = &run.machine;
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="34" font-size="24" font-weight="bold" text-anchor="middle">weave-router against the kernel's VXLAN — {}</text>"#,
        WIDTH / 2.0,
        esc(&run.started_utc)
    );
    let mut sub = format!(
        "Linux {}, {} cores; {}; median of {} × {} s, whiskers min–max",
        m.kernel,
        m.cores,
        m.router_version.as_deref().unwrap_or("weave-router"),
        run.settings.repeats,
        run.settings.seconds
    );
    if let Some(c) = &m.git_commit {
        let _ = write!(sub, "; commit {}", c.get(..12).unwrap_or(c));
    }
    if run.settings.quick {
        sub.push_str("; --quick smoke run");
    }
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="60" font-size="15" fill="#444" text-anchor="middle">{}</text>"##,
        WIDTH / 2.0,
        esc(&sub)
    );
}

fn legend(svg: &mut String, paths: &[&str]) {
    // Entries are centred as one row; widths follow the label length.
    let widths: Vec<f64> = paths
        .iter()
        .map(|p| 22.0 + 8.2 * p.chars().count() as f64 + 26.0)
        .collect();
    let total: f64 = widths.iter().sum();
    let mut x = (WIDTH - total) / 2.0;
    for (i, (p, w)) in paths.iter().zip(&widths).enumerate() {
        let _ = writeln!(
            svg,
            r##"<rect x="{x:.1}" y="82" width="16" height="16" fill="{}" stroke="#333" stroke-width="0.8"/><text x="{:.1}" y="95" font-size="15">{}</text>"##,
            colour(p, i),
            x + 22.0,
            esc(p)
        );
        x += w;
    }
}

fn draw_panel(svg: &mut String, run: &RunResult, paths: &[&str], panel: &Panel, x0: f64, w: f64) {
    // Bars stand at the figure the report shows (a merged percentile for round trips),
    // whiskers span the repeats.
    let spreads: Vec<Vec<Option<Spread>>> = panel
        .groups
        .iter()
        .map(|g| {
            paths
                .iter()
                .map(|p| {
                    let s = run.spread(p, g.workload.name(), g.metric)?;
                    let shown = run.value(p, g.workload.name(), g.metric).map(|(v, _)| v);
                    Some(Spread {
                        median: shown.unwrap_or(s.median),
                        ..s
                    })
                })
                .collect()
        })
        .collect();
    let max = spreads
        .iter()
        .flatten()
        .flatten()
        .map(|s| s.max.max(s.median))
        .fold(0.0_f64, f64::max);
    let (divisor, unit_suffix, decimals) = match panel.scale {
        Scale::Plain { decimals } => (1.0, "", decimals),
        Scale::Rate if max >= 1e6 => (1e6, "M", 2),
        Scale::Rate => (1e3, "k", 0),
    };
    let (top, step) = nice_axis(max / divisor);
    let plot_h = PLOT_BOTTOM - PLOT_TOP;
    let y_of = |v: f64| PLOT_BOTTOM - (v / divisor / top).clamp(0.0, 1.0) * plot_h;

    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="16" font-weight="bold" text-anchor="middle">{}</text>"#,
        x0 + w / 2.0,
        PLOT_TOP - 30.0,
        esc(panel.title)
    );
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" font-size="13" fill="#555" text-anchor="middle">{}</text>"##,
        x0 + w / 2.0,
        PLOT_TOP - 12.0,
        esc(&panel.note)
    );
    // Grid lines and tick labels.
    let ticks = (top / step).round() as usize;
    for t in 0..=ticks {
        let v = t as f64 * step;
        let y = PLOT_BOTTOM - v / top * plot_h;
        let _ = writeln!(
            svg,
            r##"<line x1="{x0:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="1"/>"##,
            x0 + w,
            if t == 0 { "#333" } else { "#e3e3e3" }
        );
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" font-size="13" fill="#333" text-anchor="end">{}</text>"##,
            x0 - 6.0,
            y + 4.5,
            match t {
                0 => "0".to_owned(),
                _ => format!("{}{unit_suffix}", tick_label(v, step)),
            }
        );
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{x0:.1}" y1="{PLOT_TOP:.1}" x2="{x0:.1}" y2="{PLOT_BOTTOM:.1}" stroke="#333" stroke-width="1"/>"##
    );

    let group_w = w / panel.groups.len() as f64;
    let bar_w = (group_w * 0.8 / paths.len().max(1) as f64).min(48.0);
    // Value labels stand upright above the bars when all fit, else all lie on their side.
    let widest = spreads
        .iter()
        .flatten()
        .flatten()
        .map(|s| {
            fmt_value(s.median / divisor, decimals, unit_suffix)
                .chars()
                .count()
        })
        .max()
        .unwrap_or(0);
    let upright = bar_w >= 7.0 * widest as f64;
    for (gi, (g, values)) in panel.groups.iter().zip(&spreads).enumerate() {
        let gx = x0 + gi as f64 * group_w;
        let bars_w = bar_w * paths.len() as f64;
        let start = gx + (group_w - bars_w) / 2.0;
        for (pi, (p, s)) in paths.iter().zip(values).enumerate() {
            let x = start + pi as f64 * bar_w;
            let cx = x + bar_w / 2.0;
            let Some(s) = s else {
                let _ = writeln!(
                    svg,
                    r##"<text x="{cx:.1}" y="{:.1}" font-size="11" fill="#888" text-anchor="middle">n/a</text>"##,
                    PLOT_BOTTOM - 6.0
                );
                continue;
            };
            let y = y_of(s.median);
            let _ = writeln!(
                svg,
                r##"<rect class="bar" x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}" stroke="#333" stroke-width="0.6"><title>{} {}: {}</title></rect>"##,
                x + 1.0,
                bar_w - 2.0,
                PLOT_BOTTOM - y,
                colour(p, pi),
                esc(p),
                esc(g.label),
                fmt_value(s.median / divisor, decimals, unit_suffix)
            );
            let label_y = if s.n > 1 && s.max > s.min {
                let (ylo, yhi) = (y_of(s.min), y_of(s.max.max(s.median)));
                let _ = writeln!(
                    svg,
                    r##"<path d="M{cx:.1} {ylo:.1}V{yhi:.1}M{:.1} {yhi:.1}H{:.1}M{:.1} {ylo:.1}H{:.1}" stroke="#111" stroke-width="1.2" fill="none"/>"##,
                    cx - 4.0,
                    cx + 4.0,
                    cx - 4.0,
                    cx + 4.0
                );
                yhi
            } else {
                y
            };
            let text = fmt_value(s.median / divisor, decimals, unit_suffix);
            if upright {
                let _ = writeln!(
                    svg,
                    r##"<text x="{cx:.1}" y="{:.1}" font-size="12" fill="#222" text-anchor="middle">{}</text>"##,
                    label_y - 5.0,
                    esc(&text)
                );
            } else {
                let ly = label_y - 5.0;
                let _ = writeln!(
                    svg,
                    r##"<text x="{cx:.1}" y="{ly:.1}" font-size="12" fill="#222" transform="rotate(-90 {cx:.1} {ly:.1})" dominant-baseline="middle">{}</text>"##,
                    esc(&text)
                );
            }
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="15" text-anchor="middle">{}</text>"#,
            gx + group_w / 2.0,
            PLOT_BOTTOM + 24.0,
            esc(g.label)
        );
    }
}

/// The axis top and tick step for data up to `max`: a 1-2-5 step giving 4 to 8 ticks, with
/// headroom above the largest value for its label.
pub fn nice_axis(max: f64) -> (f64, f64) {
    if !(max.is_finite() && max > 0.0) {
        return (1.0, 0.2);
    }
    let target = max * 1.15;
    let raw = target / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| target / s <= 7.0)
        .unwrap_or(10.0 * mag);
    ((target / step).ceil() * step, step)
}

fn tick_label(v: f64, step: f64) -> String {
    // As many decimals as the step needs to be written exactly (0.25 → 2, 2.5 → 1, 50 → 0).
    let decimals = (0..6)
        .find(|&d| {
            let scaled = step * 10f64.powi(d);
            (scaled - scaled.round()).abs() < 1e-6
        })
        .unwrap_or(6) as usize;
    format!("{v:.decimals$}")
}

fn fmt_value(v: f64, decimals: usize, suffix: &str) -> String {
    format!("{v:.decimals$}{suffix}")
}

/// Escapes text for SVG character data and attribute values.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::result::tests::sample_run;

    #[test]
    fn chart_has_a_bar_per_path_and_group_and_a_legend_entry_per_path() {
        let run = sample_run();

        let svg = render_svg(&run);

        assert!(svg.starts_with("<svg "), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        // 8 paths × (2 tcp + 2 udp + 4 latency groups).
        assert_eq!(run.measured_paths().len(), 8);
        assert_eq!(svg.matches(r#"class="bar""#).count(), 64);
        for p in run.measured_paths() {
            assert!(svg.contains(&format!(">{p}</text>")), "no legend for {p}");
        }
        assert!(svg.contains(colour("fastdp", 5)));
        assert!(svg.contains("TCP throughput"));
        assert!(svg.contains("4 streams"));
        // Loss-free udp64 on veth is 600k pps: the axis is in k.
        assert!(svg.contains(">600k</text>"), "{svg}");
        assert!(
            svg.contains("loss-free: highest rate with &lt; 0.1 % loss"),
            "{svg}"
        );
        assert!(svg.contains("paced p99"), "{svg}");
    }

    #[test]
    fn missing_values_are_marked_not_drawn() {
        let mut run = sample_run();
        run.summary
            .retain(|r| !(r.path == "sleeve-epoll" && r.workload == "tcp1"));

        let svg = render_svg(&run);

        assert_eq!(svg.matches(r#"class="bar""#).count(), 63);
        assert!(svg.contains(">n/a</text>"));
    }

    #[test]
    fn paths_not_measured_are_not_drawn() {
        let mut run = sample_run();
        for p in run.paths.iter_mut().filter(|p| p.name == "fastdp") {
            p.measured = false;
        }

        let svg = render_svg(&run);

        assert_eq!(svg.matches(r#"class="bar""#).count(), 56);
        assert!(!svg.contains("fastdp"), "{svg}");
    }

    #[test]
    fn text_is_escaped() {
        let mut run = sample_run();
        run.machine.kernel = "6.1<&>".into();

        let svg = render_svg(&run);

        assert!(svg.contains("6.1&lt;&amp;&gt;"));
    }

    #[test]
    fn axis_steps_are_round_and_cover_the_data() {
        for max in [0.37, 1.0, 3.3, 9.41, 47.0, 123.0, 812_000.0] {
            let (top, step) = nice_axis(max);
            assert!(top >= max, "{max}: top {top}");
            let ticks = top / step;
            assert!((3.0..=8.0).contains(&ticks.round()), "{max}: {top}/{step}");
            let mantissa = step / 10f64.powf(step.log10().floor());
            assert!(
                [1.0, 2.0, 2.5, 5.0]
                    .iter()
                    .any(|m| (m - mantissa).abs() < 1e-9),
                "{max}: step {step}"
            );
        }
        assert_eq!(nice_axis(0.0), (1.0, 0.2));
        assert_eq!(tick_label(2.5, 2.5), "2.5");
        assert_eq!(tick_label(0.4, 0.2), "0.4");
        assert_eq!(tick_label(200.0, 50.0), "200");
    }
}
