//! Result files: where they go, writing a run's three files, reading a run back.

use std::fs;
use std::path::{Path, PathBuf};

use super::markdown::render_markdown;
use super::result::{backfill_offered, RunResult, SCHEMA};
use super::run::HarnessError;
use super::svg::render_svg;

/// The files written for one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The result (`run-<stamp>.json`).
    pub json: PathBuf,
    /// The Markdown report next to it.
    pub markdown: PathBuf,
    /// The chart next to it.
    pub svg: PathBuf,
}

/// `perf/results` of the Cargo workspace that `start` lies in, or `start/perf/results`
/// outside of one.
pub fn default_output_dir(start: &Path) -> PathBuf {
    let root = start.ancestors().find(|dir| {
        dir.join("perf").is_dir()
            && fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|t| t.contains("[workspace]"))
    });
    root.unwrap_or(start).join("perf").join("results")
}

/// Writes `run` as `run-<stamp>.json` with its `.md` and `.svg` into `dir` (created if
/// missing). A stamp already taken gets `-2`, `-3`, ... so no earlier run is overwritten.
pub fn write_run(dir: &Path, stamp: &str, run: &RunResult) -> Result<Written, HarnessError> {
    fs::create_dir_all(dir).map_err(|source| HarnessError::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    let base = (1..)
        .map(|n| match n {
            1 => format!("run-{stamp}"),
            n => format!("run-{stamp}-{n}"),
        })
        .find(|b| {
            ["json", "md", "svg"]
                .iter()
                .all(|ext| !dir.join(format!("{b}.{ext}")).exists())
        })
        .unwrap_or_else(|| format!("run-{stamp}"));
    let written = Written {
        json: dir.join(format!("{base}.json")),
        markdown: dir.join(format!("{base}.md")),
        svg: dir.join(format!("{base}.svg")),
    };
    let json = serde_json::to_string_pretty(run).map_err(|e| HarnessError::Io {
        what: "encoding the result".to_owned(),
        source: e.into(),
    })?;
    for (path, text) in [
        (&written.json, json + "\n"),
        (&written.markdown, render_markdown(run)),
        (&written.svg, render_svg(run)),
    ] {
        fs::write(path, text).map_err(|source| HarnessError::Io {
            what: format!("writing {}", path.display()),
            source,
        })?;
    }
    Ok(written)
}

/// Writes the `.md` and `.svg` of the result file `json` next to it again (after the
/// renderers changed, or for a file from another machine).
pub fn rerender(json: &Path) -> Result<Written, HarnessError> {
    let run = read_run(json)?;
    let written = Written {
        json: json.to_path_buf(),
        markdown: json.with_extension("md"),
        svg: json.with_extension("svg"),
    };
    for (path, text) in [
        (&written.markdown, render_markdown(&run)),
        (&written.svg, render_svg(&run)),
    ] {
        fs::write(path, text).map_err(|source| HarnessError::Io {
            what: format!("writing {}", path.display()),
            source,
        })?;
    }
    Ok(written)
}

/// Reads a result file written by `weave-perf run`.
pub fn read_run(path: &Path) -> Result<RunResult, HarnessError> {
    let text = fs::read_to_string(path).map_err(|source| HarnessError::Io {
        what: format!("reading {}", path.display()),
        source,
    })?;
    parse_run(&text).map_err(|detail| HarnessError::BadResult {
        path: path.display().to_string(),
        detail,
    })
}

/// Parses a result file's text, checking its schema first so that another JSON file gets
/// a plain answer rather than a missing-field error. A file written before the offered UDP
/// rate was recorded gets it derived from its raw samples ([`backfill_offered`]).
pub fn parse_run(text: &str) -> Result<RunResult, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    match value.get("schema").and_then(|s| s.as_str()) {
        Some(SCHEMA) => {}
        Some(other) => return Err(format!("schema is {other:?}, not {SCHEMA:?}")),
        None => return Err(format!("no \"schema\": {SCHEMA:?} field")),
    }
    let mut run: RunResult = serde_json::from_value(value).map_err(|e| e.to_string())?;
    backfill_offered(&mut run);
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::result::tests::sample_run;

    #[test]
    fn a_run_is_written_as_three_files_and_read_back() {
        let dir = std::env::temp_dir().join(format!("weave-perf-output-{}", std::process::id()));
        let run = sample_run();

        let first = write_run(&dir, "20261125T221500Z", &run).unwrap();
        let second = write_run(&dir, "20261125T221500Z", &run).unwrap();

        let back = read_run(&first.json).unwrap();
        let names: Vec<String> = [&second.json, &second.markdown, &second.svg]
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        fs::remove_dir_all(&dir).unwrap();
        crate::harness::result::tests::assert_same_run(&back, &run);
        assert!(first.json.ends_with("run-20261125T221500Z.json"));
        assert_eq!(
            names,
            [
                "run-20261125T221500Z-2.json",
                "run-20261125T221500Z-2.md",
                "run-20261125T221500Z-2.svg"
            ]
        );
    }

    #[test]
    fn a_file_from_before_the_offered_rate_still_reads_and_renders() {
        // A version-1 run committed before weave-perf recorded the offered UDP rate.
        let old = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/harness/testdata/run-before-offered-rate.json");
        let text = fs::read_to_string(&old).unwrap_or_else(|e| panic!("{}: {e}", old.display()));
        assert!(!text.contains("offered_packets_per_second"));

        let run = parse_run(&text).unwrap();

        // vxlan's udp64 sender put out 1241408, 1039936 and 1032576 packets in 5 s.
        let offered = run
            .spread(
                "vxlan",
                "udp64",
                crate::harness::Metric::OfferedPacketsPerSecond,
            )
            .unwrap();
        assert_eq!((offered.n, offered.median), (3, 1039936.0 / 5.0));
        let md = render_markdown(&run);
        assert!(
            md.contains("| udp64 | flood offered packets/s | 208k (207k–248k) |"),
            "{md}"
        );
        // That run could not measure the fast datapath, and its file still says so.
        assert!(!run.measured_paths().contains(&"fastdp"));
        assert!(
            md.contains("- fastdp: not available: weave-router has no fast datapath yet"),
            "{md}"
        );
        assert!(!md.contains("| fastdp |"), "{md}");
        let svg = render_svg(&run);
        assert!(!svg.is_empty());
        assert!(!svg.contains("fastdp"));
    }

    #[test]
    fn every_committed_result_still_reads_renders_and_compares_with_a_new_run() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no results in {}", dir.display());
        let new = sample_run();

        for file in &files {
            let run = read_run(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let md = render_markdown(&run);
            assert!(md.contains("## Against the kernel VXLAN baseline"), "{md}");
            assert!(!render_svg(&run).is_empty());
            let changes = crate::harness::compare::compare(&run, &new);
            let text = crate::harness::compare::render_compare(&run, &new, "old", "new", &changes);
            if run.schema_version < 2 {
                assert!(text.contains("schema versions"), "{text}");
                assert!(text.contains("not in old"), "{text}");
            }
        }
    }

    #[test]
    fn other_json_is_refused_plainly() {
        assert!(parse_run("{}").unwrap_err().contains("no \"schema\""));
        assert!(parse_run(r#"{"schema": "x"}"#).unwrap_err().contains("not"));
        assert!(parse_run("not json").is_err());
    }

    #[test]
    fn output_defaults_to_the_workspace_results() {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));

        let dir = default_output_dir(&here.join("src"));

        assert_eq!(dir, here.join("results"));
    }
}
