//! Facts about the machine and its processes: /proc parsing (pure) and the thin readers
//! around it, and UTC timestamps without a date crate.

use std::path::Path;
use std::process::{Command, Stdio};

use super::result::MachineFacts;

/// What one read of a process's /proc files gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// VmHWM, KiB.
    pub peak_rss_kib: u64,
}

/// The CPU time of the whole machine, from the `cpu` line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTicks {
    /// user + nice + system + irq + softirq + steal: everything but idle and iowait (guest
    /// time is counted inside user already).
    pub busy: u64,
    /// Every field of the line but guest and guest_nice: busy, idle and iowait.
    pub total: u64,
}

/// The machine's CPU time from the text of `/proc/stat`.
pub fn parse_proc_stat(stat: &str) -> Option<CpuTicks> {
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some("cpu"))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]; kernels before
    // 2.6.11 had no steal, which counts as 0.
    let field = |i: usize| fields.get(i).copied();
    let (user, nice, system, idle, iowait, irq, softirq) = (
        field(0)?,
        field(1)?,
        field(2)?,
        field(3)?,
        field(4)?,
        field(5)?,
        field(6)?,
    );
    let steal = field(7).unwrap_or(0);
    let busy = user + nice + system + irq + softirq + steal;
    Some(CpuTicks {
        busy,
        total: busy + idle + iowait,
    })
}

/// Reads the machine's CPU time now.
pub fn read_machine_cpu() -> Result<CpuTicks, String> {
    let stat = std::fs::read_to_string("/proc/stat").map_err(|e| format!("/proc/stat: {e}"))?;
    parse_proc_stat(&stat).ok_or_else(|| "/proc/stat: no cpu line".to_owned())
}

/// The CPUs this process may run on (`Cpus_allowed_list` of /proc/self/status), which the
/// routers it starts inherit; every online CPU where that cannot be read.
pub fn allowed_cpus() -> Vec<usize> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .and_then(super::placement::parse_cpu_list)
        })
        .filter(|cpus| !cpus.is_empty())
        .unwrap_or_else(|| {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            (0..n).collect()
        })
}

/// utime + stime (clock ticks) from the text of `/proc/PID/stat`. The command name in
/// parentheses may itself contain spaces and parentheses, so fields are counted from the
/// last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0], so utime (14) and stime (15) are [11] and [12].
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The value in KiB of a `Name:   123 kB` line of `/proc/PID/status` or `/proc/meminfo`.
pub fn parse_kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The first `model name` of `/proc/cpuinfo`.
pub fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("model name"))
        .find_map(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

/// Reads `pid`'s CPU time and peak RSS.
pub fn read_proc(pid: u32) -> Result<ProcSample, String> {
    let stat_path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&stat_path).map_err(|e| format!("{stat_path}: {e}"))?;
    let cpu_ticks =
        parse_stat_cpu_ticks(&stat).ok_or_else(|| format!("{stat_path}: unexpected format"))?;
    let status_path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&status_path).map_err(|e| format!("{status_path}: {e}"))?;
    let peak_rss_kib =
        parse_kib_field(&status, "VmHWM").ok_or_else(|| format!("{status_path}: no VmHWM"))?;
    Ok(ProcSample {
        cpu_ticks,
        peak_rss_kib,
    })
}

/// Resets `pid`'s peak RSS to its current RSS, so the next VmHWM is the peak of what
/// follows. Best effort: where the kernel refuses, VmHWM stays the peak since start.
pub fn reset_peak_rss(pid: u32) {
    // "5" resets the peak resident set size (Linux 4.0 and later).
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Clock ticks per second of /proc CPU times (`getconf CLK_TCK`; 100 where unknown, which
/// is what Linux uses on every common architecture).
pub fn clock_ticks_per_second() -> u64 {
    command_stdout(Command::new("getconf").arg("CLK_TCK"))
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// Gathers the facts of this machine; what cannot be found is left `None`.
pub fn machine_facts(router_bin: &Path, command_line: Vec<String>) -> MachineFacts {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let kernel = read("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let git_commit = command_stdout(Command::new("git").args(["rev-parse", "HEAD"]))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    let git_dirty = git_commit.as_ref().and_then(|_| {
        command_stdout(Command::new("git").args(["status", "--porcelain", "--untracked-files=no"]))
            .map(|s| !s.trim().is_empty())
    });
    MachineFacts {
        kernel,
        cores,
        cpu_model: read("/proc/cpuinfo").as_deref().and_then(parse_cpu_model),
        memory_bytes: read("/proc/meminfo")
            .as_deref()
            .and_then(|m| parse_kib_field(m, "MemTotal"))
            .map(|kib| kib * 1024),
        load_average: read("/proc/loadavg")
            .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse().ok())),
        git_commit,
        git_dirty,
        router_version: command_stdout(Command::new(router_bin).arg("--version"))
            .map(|s| s.trim().to_owned()),
        router_bin: router_bin.display().to_string(),
        command_line,
        background_busy_cpus: None,
    }
}

/// stdout of a command that succeeded; `None` when it could not run or failed.
fn command_stdout(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A UTC time as RFC 3339 (`2026-11-25T22:15:00Z`) and as a file-name stamp
/// (`20261125T221500Z`), from seconds since the Unix epoch.
pub fn utc_stamps(unix_secs: u64) -> (String, String) {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (secs / 3600, secs / 60 % 60, secs % 60);
    (
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z"),
        format!("{y:04}{m:02}{d:02}T{hh:02}{mm:02}{ss:02}Z"),
    )
}

/// Seconds since the Unix epoch now (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Year, month, day of the proleptic Gregorian calendar for a count of days since
/// 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_ticks_count_from_the_last_parenthesis() {
        let stat = "4242 (weave (router) x) S 1 4242 4242 0 -1 4194560 2000 0 0 0 \
                    150 75 0 0 20 0 9 0 12345 100000 2000 18446744073709551615";

        assert_eq!(parse_stat_cpu_ticks(stat), Some(225));
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1 2"), None);
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn machine_cpu_counts_everything_but_idle_and_iowait() {
        let stat = "cpu  100 5 30 1000 40 7 8 2 50 0\n\
                    cpu0 50 5 15 500 20 3 4 1 25 0\n\
                    intr 12345\n";

        let t = parse_proc_stat(stat).unwrap();

        // user 100 + nice 5 + system 30 + irq 7 + softirq 8 + steal 2; guest (50) is in user.
        assert_eq!(t.busy, 152);
        assert_eq!(t.total, 152 + 1000 + 40);
        assert_eq!(
            parse_proc_stat("cpu  1 2 3 4 5 6 7\n"),
            Some(CpuTicks {
                busy: 1 + 2 + 3 + 6 + 7,
                total: 28
            })
        );
        assert_eq!(parse_proc_stat("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(parse_proc_stat("cpu 1 2 x\n"), None);
        assert!(read_machine_cpu().unwrap().total > 0);
        assert!(!allowed_cpus().is_empty());
    }

    #[test]
    fn kib_fields_and_cpu_model_are_read() {
        let status =
            "Name:\tweave-router\nVmPeak:\t  999 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(parse_kib_field(status, "VmHWM"), Some(12345));
        assert_eq!(parse_kib_field(status, "VmSwap"), None);
        let meminfo = "MemTotal:       24576000 kB\nMemFree: 1 kB\n";
        assert_eq!(parse_kib_field(meminfo, "MemTotal"), Some(24_576_000));
        let cpuinfo = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags: x\n";
        assert_eq!(
            parse_cpu_model(cpuinfo).as_deref(),
            Some("Intel(R) Xeon(R) Processor")
        );
    }

    #[test]
    fn utc_stamps_match_known_dates() {
        assert_eq!(
            utc_stamps(0),
            ("1970-01-01T00:00:00Z".into(), "19700101T000000Z".into())
        );
        // 2000-02-29 12:34:56 UTC, a leap day.
        assert_eq!(utc_stamps(951_827_696).0, "2000-02-29T12:34:56Z");
        // 2026-11-25 22:15:00 UTC.
        assert_eq!(utc_stamps(1_795_644_900).1, "20261125T221500Z");
    }

    #[test]
    fn this_process_can_be_read() {
        let sample = read_proc(std::process::id()).unwrap();

        assert!(sample.peak_rss_kib > 0);
    }
}
