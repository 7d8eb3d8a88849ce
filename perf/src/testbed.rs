//! A testbed of network namespaces: N "hosts" on one underlay L2 segment.
//!
//! ```text
//!  netns <run>-u:  bridge br0 (STP off)
//!                   ├── veth h1 ──── eth0 in netns <run>-h1  192.168.<subnet>.1/24
//!                   ├── veth h2 ──── eth0 in netns <run>-h2  192.168.<subnet>.2/24
//!                   └── ...
//! ```
//!
//! Every link is created directly inside the namespace it belongs to, so nothing appears in
//! the caller's namespace and two testbeds never collide on an interface name. The namespace
//! names carry a run id (`<prefix><pid>-<counter>`), which is what [`cleanup_stale`] uses to
//! find the leftovers of runs whose process has died. Dropping a [`Testbed`] kills every
//! process still inside its namespaces and deletes them, also while a test is panicking.
//!
//! The testbed drives `ip` and `nft` as subprocesses: it is test infrastructure, and the
//! commands it runs are the ones a person would type to reproduce a failure.

use std::ffi::OsStr;
use std::fmt::Display;
use std::fs::{self, File};
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Longest prefix accepted, so that a run id stays within an interface name (15 bytes).
const MAX_PREFIX_LEN: usize = 4;
/// Interface name limit of Linux (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;
/// Name of the nftables table the testbed owns inside each host namespace.
const NFT_TABLE: &str = "weave_testbed";
/// How often [`wait_until`] probes.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Set to keep the log directory after a successful run.
const KEEP_LOGS_ENV: &str = "WEAVE_TESTBED_KEEP_LOGS";

/// Makes run ids unique among the testbeds of one process (tests run on several threads).
static RUN_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Errors of the testbed.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// The configuration cannot describe a testbed.
    #[error("invalid testbed configuration: {0}")]
    Config(String),
    /// A host index outside `1..=hosts` was asked for.
    #[error("no host {index} in a testbed of {hosts} hosts")]
    NoSuchHost {
        /// The index asked for (1-based).
        index: usize,
        /// How many hosts the testbed has.
        hosts: usize,
    },
    /// A command could not be started.
    #[error("cannot run `{cmd}`: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why it could not start.
        source: io::Error,
    },
    /// A command ran and failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its exit status as text.
        status: String,
        /// What it wrote to stderr (trimmed).
        stderr: String,
    },
    /// A file or directory operation of the testbed failed.
    #[error("{what}: {source}")]
    Io {
        /// What the testbed was doing.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A condition did not hold within its time limit.
    #[error("timed out after {waited:?} waiting for {what}; last: {last}")]
    Timeout {
        /// The condition waited for.
        what: String,
        /// How long it was waited for.
        waited: Duration,
        /// What the last probe said.
        last: String,
    },
    /// A process exited while something was waited for from it.
    #[error("{label} exited ({status}) while waiting for {what}; log {log_path}:\n{log_tail}")]
    Exited {
        /// The process's label.
        label: String,
        /// Its exit status as text.
        status: String,
        /// The condition waited for.
        what: String,
        /// Where its full output is.
        log_path: String,
        /// The last lines of its output.
        log_tail: String,
    },
    /// A wait was cancelled from outside (Ctrl-C in the demo).
    #[error("cancelled while waiting for {what}")]
    Cancelled {
        /// The condition waited for.
        what: String,
    },
}

/// Result type of the testbed.
pub type Result<T, E = TestbedError> = std::result::Result<T, E>;

/// Shape of a testbed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestbedConfig {
    /// Short tag (1-4 lowercase letters or digits) starting every namespace name of the run.
    pub prefix: String,
    /// Number of hosts (1-254).
    pub hosts: usize,
    /// Third octet of the hosts' addresses: host i gets `192.168.<subnet>.<i>/24`.
    pub subnet: u8,
}

impl TestbedConfig {
    /// A configuration with `hosts` hosts on `192.168.100.0/24`.
    pub fn new(prefix: &str, hosts: usize) -> Self {
        TestbedConfig {
            prefix: prefix.to_owned(),
            hosts,
            subnet: 100,
        }
    }

    /// The same configuration on `192.168.<subnet>.0/24`.
    pub fn with_subnet(mut self, subnet: u8) -> Self {
        self.subnet = subnet;
        self
    }

    /// Checks the prefix and host count.
    pub fn validate(&self) -> Result<()> {
        validate_prefix(&self.prefix)?;
        if !(1..=254).contains(&self.hosts) {
            return Err(TestbedError::Config(format!(
                "host count {} is not in 1..=254",
                self.hosts
            )));
        }
        Ok(())
    }
}

/// The names of one run's namespaces, derived from its run id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunNames {
    /// `<prefix><pid>-<counter>`.
    pub run_id: String,
}

impl RunNames {
    /// Names for the run of process `pid` with per-process counter `counter`.
    pub fn new(prefix: &str, pid: u32, counter: u32) -> Result<Self> {
        validate_prefix(prefix)?;
        let run_id = format!("{prefix}{pid}-{counter}");
        if run_id.len() > IFNAME_MAX {
            return Err(TestbedError::Config(format!(
                "run id {run_id} is longer than {IFNAME_MAX} bytes"
            )));
        }
        Ok(RunNames { run_id })
    }

    /// The underlay namespace.
    pub fn underlay(&self) -> String {
        format!("{}-u", self.run_id)
    }

    /// The namespace of host `index` (1-based).
    pub fn host(&self, index: usize) -> String {
        format!("{}-h{index}", self.run_id)
    }

    /// The namespace of pod `index`.
    pub fn pod(&self, index: usize) -> String {
        format!("{}-p{index}", self.run_id)
    }
}

/// Parses a namespace name made by [`RunNames`] with `prefix`, returning the pid of the
/// process that made it; `None` for any other name.
pub fn owner_pid(netns: &str, prefix: &str) -> Option<u32> {
    let rest = netns.strip_prefix(prefix)?;
    let (pid, rest) = rest.split_once('-')?;
    let (counter, role) = rest.split_once('-')?;
    let numbered = |tag: char| {
        role.strip_prefix(tag)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let role_ok = role == "u" || numbered('h') || numbered('p');
    let counter_ok = !counter.is_empty() && counter.bytes().all(|b| b.is_ascii_digit());
    if !role_ok || !counter_ok || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Address of host `index` (1-based) on `subnet`.
pub fn host_addr(subnet: u8, index: usize) -> Ipv4Addr {
    // validate() keeps index in 1..=254.
    Ipv4Addr::new(192, 168, subnet, index as u8)
}

fn validate_prefix(prefix: &str) -> Result<()> {
    let ok = !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX_LEN
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && prefix.as_bytes()[0].is_ascii_lowercase();
    if ok {
        Ok(())
    } else {
        Err(TestbedError::Config(format!(
            "prefix {prefix:?} must be 1-{MAX_PREFIX_LEN} lowercase letters or digits, starting with a letter"
        )))
    }
}

/// N hosts on one underlay bridge, torn down on drop.
#[derive(Debug)]
pub struct Testbed {
    names: RunNames,
    hosts: Vec<Host>,
    log_dir: PathBuf,
    /// Whether the namespaces still exist (teardown runs once).
    live: bool,
    /// Keep the log directory at teardown even without a panic.
    keep_logs: bool,
}

impl Testbed {
    /// Builds the testbed: removes leftovers of dead runs with the same prefix, then creates
    /// the underlay and the hosts. On failure, whatever was created is removed again.
    pub fn new(config: &TestbedConfig) -> Result<Testbed> {
        config.validate()?;
        cleanup_stale(&config.prefix)?;
        let counter = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
        let names = RunNames::new(&config.prefix, std::process::id(), counter)?;
        let log_dir = std::env::temp_dir().join(format!("weave-testbed-{}", names.run_id));
        fs::create_dir_all(&log_dir).map_err(|source| TestbedError::Io {
            what: format!("creating log directory {}", log_dir.display()),
            source,
        })?;
        let hosts = (1..=config.hosts)
            .map(|index| Host {
                index,
                netns: names.host(index),
                addr: host_addr(config.subnet, index),
                log_dir: log_dir.clone(),
            })
            .collect();
        // From here on, Drop removes whatever part of the bed exists.
        let mut bed = Testbed {
            names,
            hosts,
            log_dir,
            live: true,
            keep_logs: false,
        };
        bed.build()?;
        Ok(bed)
    }

    fn build(&mut self) -> Result<()> {
        let ul = self.names.underlay();
        run_cmd(&["ip", "netns", "add", &ul])?;
        run_cmd(&["ip", "-n", &ul, "link", "set", "lo", "up"])?;
        run_cmd(&[
            "ip",
            "-n",
            &ul,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
        ])?;
        run_cmd(&["ip", "-n", &ul, "link", "set", "br0", "up"])?;
        for host in &self.hosts {
            let ns = &host.netns;
            let port = format!("h{}", host.index);
            let cidr = format!("{}/24", host.addr);
            run_cmd(&["ip", "netns", "add", ns])?;
            run_cmd(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            run_cmd(&[
                "ip", "-n", &ul, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", ns,
            ])?;
            run_cmd(&["ip", "-n", &ul, "link", "set", &port, "master", "br0"])?;
            run_cmd(&["ip", "-n", &ul, "link", "set", &port, "up"])?;
            run_cmd(&["ip", "-n", ns, "addr", "add", &cidr, "dev", "eth0"])?;
            run_cmd(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    /// The run id shared by every name of this testbed.
    pub fn run_id(&self) -> &str {
        &self.names.run_id
    }

    /// The underlay namespace (holds the bridge `br0`).
    pub fn underlay_netns(&self) -> String {
        self.names.underlay()
    }

    /// All hosts, host 1 first.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `index`, 1-based like the names `host1`, `host2`, ...
    pub fn host(&self, index: usize) -> Result<&Host> {
        index
            .checked_sub(1)
            .and_then(|i| self.hosts.get(i))
            .ok_or(TestbedError::NoSuchHost {
                index,
                hosts: self.hosts.len(),
            })
    }

    /// Where the spawned processes' output goes.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Keeps (true) or removes (false, the default) the log directory at teardown. It is
    /// always kept when teardown runs during a panic, or with `WEAVE_TESTBED_KEEP_LOGS` set.
    pub fn set_keep_logs(&mut self, keep: bool) {
        self.keep_logs = keep;
    }

    /// Adds pod `index` (unique within the testbed): a namespace `<run>-p<index>` whose
    /// `eth0` (address `addr/prefix_len`, MTU `mtu`) is a veth to port `vp<index>` of
    /// `bridge` in `host`. The pod is removed when the returned guard drops; leftovers of a
    /// killed run are removed like its hosts.
    pub fn add_pod(
        &self,
        host: &Host,
        index: usize,
        bridge: &str,
        addr: Ipv4Addr,
        prefix_len: u8,
        mtu: u32,
    ) -> Result<Pod> {
        let netns = self.names.pod(index);
        run_cmd(&["ip", "netns", "add", &netns])?;
        // From here on, Drop removes the namespace again.
        let pod = Pod {
            netns,
            addr,
            log_dir: self.log_dir.clone(),
        };
        let port = format!("vp{index}");
        let ns = pod.netns.as_str();
        let hn = host.netns();
        run_cmd(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        run_cmd(&[
            "ip", "-n", hn, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            ns,
        ])?;
        run_cmd(&["ip", "-n", hn, "link", "set", &port, "master", bridge, "up"])?;
        run_cmd(&[
            "ip",
            "-n",
            ns,
            "link",
            "set",
            "eth0",
            "mtu",
            &mtu.to_string(),
            "up",
        ])?;
        let cidr = format!("{addr}/{prefix_len}");
        run_cmd(&["ip", "-n", ns, "addr", "add", &cidr, "dev", "eth0"])?;
        Ok(pod)
    }

    /// Drops all IPv4 traffic between `a` and `b`, in both hosts' namespaces.
    pub fn block(&self, a: &Host, b: &Host) -> Result<()> {
        a.nft_element("add", b.addr)?;
        b.nft_element("add", a.addr)
    }

    /// Undoes [`Testbed::block`].
    pub fn unblock(&self, a: &Host, b: &Host) -> Result<()> {
        a.nft_element("delete", b.addr)?;
        b.nft_element("delete", a.addr)
    }

    /// Kills every process in the testbed's namespaces and deletes them. Also done on drop;
    /// calling it reports errors that drop can only print.
    pub fn teardown(mut self) -> Result<()> {
        self.teardown_inner()
    }

    fn teardown_inner(&mut self) -> Result<()> {
        if !self.live {
            return Ok(());
        }
        self.live = false;
        let mut namespaces: Vec<String> = self.hosts.iter().map(|h| h.netns.clone()).collect();
        namespaces.push(self.names.underlay());
        let existing = list_netns()?;
        let mut first_error = None;
        for ns in namespaces.iter().filter(|ns| existing.contains(ns)) {
            if let Err(e) = remove_netns(ns) {
                first_error.get_or_insert(e);
            }
        }
        let keep =
            self.keep_logs || thread::panicking() || std::env::var_os(KEEP_LOGS_ENV).is_some();
        if keep {
            note(format_args!(
                "testbed {}: logs kept in {}",
                self.names.run_id,
                self.log_dir.display()
            ));
        } else if let Err(source) = fs::remove_dir_all(&self.log_dir) {
            if source.kind() != io::ErrorKind::NotFound {
                first_error.get_or_insert(TestbedError::Io {
                    what: format!("removing {}", self.log_dir.display()),
                    source,
                });
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Err(e) = self.teardown_inner() {
            note(format_args!("testbed {}: teardown: {e}", self.names.run_id));
        }
    }
}

/// Running programs inside a network namespace of the testbed: a host or a pod.
pub trait InNetns {
    /// The namespace's name.
    fn netns(&self) -> &str;

    /// Where [`InNetns::spawn`] writes its logs.
    fn log_dir(&self) -> &Path;

    /// A [`Command`] that runs `program` inside the namespace.
    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.netns()]).arg(program);
        cmd
    }

    /// Runs `program args` in the namespace, returning stdout; a non-zero exit is an error
    /// carrying stderr.
    fn run<S: AsRef<OsStr>>(&self, program: &str, args: &[S]) -> Result<String> {
        let mut cmd = self.command(program);
        cmd.args(args);
        let out = cmd_output(&mut cmd)?;
        output_to_result(&cmd, out)
    }

    /// Starts a long-running `command` (from [`InNetns::command`]); its stdout and stderr
    /// go to `<log dir>/<label>.log`. The returned guard kills it on drop.
    fn spawn(&self, label: &str, command: Command) -> Result<Process> {
        spawn_logged(self.log_dir(), label, command)
    }

    /// Sends one ICMP echo (ping -c1 -W1) to `addr`; true if it answered.
    fn ping(&self, addr: Ipv4Addr) -> Result<bool> {
        let mut cmd = self.command("ping");
        cmd.args(["-c", "1", "-W", "1", "-n", "-q"])
            .arg(addr.to_string());
        let out = cmd_output(&mut cmd)?;
        Ok(out.status.success())
    }
}

impl InNetns for Host {
    fn netns(&self) -> &str {
        &self.netns
    }

    fn log_dir(&self) -> &Path {
        &self.log_dir
    }
}

impl InNetns for Pod {
    fn netns(&self) -> &str {
        &self.netns
    }

    fn log_dir(&self) -> &Path {
        &self.log_dir
    }
}

/// One host: a network namespace with `eth0` on the underlay.
#[derive(Debug, Clone)]
pub struct Host {
    index: usize,
    netns: String,
    addr: Ipv4Addr,
    log_dir: PathBuf,
}

impl Host {
    /// 1-based index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// `host<index>`, the name used in logs and as a nickname.
    pub fn name(&self) -> String {
        format!("host{}", self.index)
    }

    /// The underlay address of `eth0`.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// Runs `nft` with `args` in this host's namespace.
    pub fn nft<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String> {
        self.run("nft", args)
    }

    /// Makes sure the testbed's table exists: a set `blocked` of peer addresses, dropped on
    /// input and output. Later fault injection adds its rules to the same table.
    fn ensure_nft_table(&self) -> Result<()> {
        let script = format!(
            "table inet {NFT_TABLE} {{\n\
               set blocked {{ type ipv4_addr; }}\n\
               chain input {{ type filter hook input priority 0; policy accept; ip saddr @blocked drop; }}\n\
               chain output {{ type filter hook output priority 0; policy accept; ip daddr @blocked drop; }}\n\
             }}\n"
        );
        // `nft list` succeeds only once the table exists; creating it twice would add the
        // rules twice.
        if self.nft(&["list", "table", "inet", NFT_TABLE]).is_ok() {
            return Ok(());
        }
        let path = self.log_dir.join(format!("{}-nft.conf", self.name()));
        fs::write(&path, script).map_err(|source| TestbedError::Io {
            what: format!("writing {}", path.display()),
            source,
        })?;
        self.nft(&[OsStr::new("-f"), path.as_os_str()])?;
        Ok(())
    }

    fn nft_element(&self, op: &str, addr: Ipv4Addr) -> Result<()> {
        self.ensure_nft_table()?;
        let element = format!("{{ {addr} }}");
        let res = self.nft(&[op, "element", "inet", NFT_TABLE, "blocked", &element]);
        match res {
            // Blocking twice or unblocking what is not blocked is not an error for callers.
            Err(TestbedError::Command { ref stderr, .. })
                if op == "delete" && stderr.contains("No such file") =>
            {
                Ok(())
            }
            other => other.map(drop),
        }
    }
}

/// A pod: a network namespace with `eth0` on a bridge of a host. Made by
/// [`Testbed::add_pod`]; dropping it kills what runs inside and deletes the namespace.
#[derive(Debug)]
pub struct Pod {
    netns: String,
    addr: Ipv4Addr,
    log_dir: PathBuf,
}

impl Pod {
    /// The address of `eth0`.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let gone = list_netns().is_ok_and(|all| !all.contains(&self.netns));
        if gone {
            return;
        }
        if let Err(e) = remove_netns(&self.netns) {
            note(format_args!("pod {}: {e}", self.netns));
        }
    }
}

/// Starts `command` with stdout and stderr appended to `<log_dir>/<label>.log`.
fn spawn_logged(log_dir: &Path, label: &str, mut command: Command) -> Result<Process> {
    let log_path = log_dir.join(format!("{label}.log"));
    let io_err = |source| TestbedError::Io {
        what: format!("opening log {}", log_path.display()),
        source,
    };
    let out = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io_err)?;
    let err = out.try_clone().map_err(io_err)?;
    let child = command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|source| TestbedError::Spawn {
            cmd: describe(&command),
            source,
        })?;
    Ok(Process {
        label: label.to_owned(),
        child,
        log_path,
    })
}

/// A process started in a host namespace; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Process {
    label: String,
    child: Child,
    log_path: PathBuf,
}

impl Process {
    /// The label given at spawn time.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file holding its stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Its output so far (lossy UTF-8; empty if the log cannot be read).
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of its output.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let mut tail: Vec<&str> = log.lines().rev().take(lines).collect();
        tail.reverse();
        tail.join("\n")
    }

    /// Like [`wait_until_cancellable`], but fails at once, with the end of the log, when the
    /// process exits: a crashed daemon should not cost the whole timeout.
    pub fn wait_for<T, E: Display>(
        &mut self,
        what: &str,
        timeout: Duration,
        cancel: &AtomicBool,
        mut probe: impl FnMut() -> std::result::Result<T, E>,
    ) -> Result<T> {
        poll_loop(what, timeout, cancel, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Step::Fail(TestbedError::Exited {
                    label: self.label.clone(),
                    status: status.to_string(),
                    what: what.to_owned(),
                    log_path: self.log_path.display().to_string(),
                    log_tail: self.log_tail(20),
                });
            }
            match probe() {
                Ok(v) => Step::Ready(v),
                Err(e) => Step::Retry(e.to_string()),
            }
        })
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills it with SIGKILL and reaps it, like a crash.
    pub fn kill(&mut self) -> Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        self.child.kill().map_err(|source| TestbedError::Io {
            what: format!("killing {}", self.label),
            source,
        })?;
        self.child.wait().map_err(|source| TestbedError::Io {
            what: format!("reaping {}", self.label),
            source,
        })?;
        Ok(())
    }

    /// Asks it to stop with SIGTERM; kills it if it has not exited within `grace`.
    pub fn stop(&mut self, grace: Duration) -> Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        run_cmd(&["kill", "-TERM", &self.pid().to_string()])?;
        let exited = wait_until(&format!("{} to exit", self.label), grace, || {
            if self.is_running() {
                Err("still running")
            } else {
                Ok(())
            }
        });
        match exited {
            Ok(()) => Ok(()),
            Err(_) => self.kill(),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            note(format_args!("{}: {e}", self.label));
        }
        if thread::panicking() {
            note(format_args!(
                "---- last lines of {} ({})\n{}",
                self.label,
                self.log_path.display(),
                self.log_tail(40)
            ));
        }
    }
}

/// Writes a line to stderr from a destructor. `eprintln!` panics when stderr is gone (a
/// closed pipe), and a panic inside a destructor that runs during a panic aborts the
/// process before the namespaces are removed.
fn note(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(io::stderr().lock(), "{args}");
}

/// Polls `probe` every 100 ms until it returns `Ok`, or fails with the last `Err` text once
/// `timeout` has passed.
pub fn wait_until<T, E: Display>(
    what: &str,
    timeout: Duration,
    probe: impl FnMut() -> std::result::Result<T, E>,
) -> Result<T> {
    static NEVER: AtomicBool = AtomicBool::new(false);
    wait_until_cancellable(what, timeout, &NEVER, probe)
}

/// [`wait_until`] that also gives up as soon as `cancel` is set.
pub fn wait_until_cancellable<T, E: Display>(
    what: &str,
    timeout: Duration,
    cancel: &AtomicBool,
    mut probe: impl FnMut() -> std::result::Result<T, E>,
) -> Result<T> {
    poll_loop(what, timeout, cancel, || match probe() {
        Ok(v) => Step::Ready(v),
        Err(e) => Step::Retry(e.to_string()),
    })
}

/// One probe's outcome inside [`poll_loop`].
enum Step<T> {
    /// The condition holds.
    Ready(T),
    /// Not yet, because of this.
    Retry(String),
    /// It never will.
    Fail(TestbedError),
}

fn poll_loop<T>(
    what: &str,
    timeout: Duration,
    cancel: &AtomicBool,
    mut probe: impl FnMut() -> Step<T>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(TestbedError::Cancelled {
                what: what.to_owned(),
            });
        }
        let last = match probe() {
            Step::Ready(v) => return Ok(v),
            Step::Retry(why) => why,
            Step::Fail(e) => return Err(e),
        };
        if start.elapsed() >= timeout {
            return Err(TestbedError::Timeout {
                what: what.to_owned(),
                waited: start.elapsed(),
                last,
            });
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Removes the namespaces of earlier runs with `prefix` whose process is gone (a test binary
/// killed before its destructors ran). Namespaces of live runs are left alone.
pub fn cleanup_stale(prefix: &str) -> Result<Vec<String>> {
    validate_prefix(prefix)?;
    let mut removed = Vec::new();
    for ns in list_netns()? {
        let Some(pid) = owner_pid(&ns, prefix) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        remove_netns(&ns)?;
        removed.push(ns);
    }
    Ok(removed)
}

/// Whether this process runs as root (effective uid 0), which the testbed needs.
pub fn is_root() -> bool {
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

/// For privileged tests: true when the test can build a testbed. Outside CI, a non-root
/// run prints why the test is skipped and returns false; in CI (`CI` set) it panics, because
/// CI runs as root and a skip there would hide a broken test.
pub fn privileged_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: needs root (network namespaces), and CI must run it"
    );
    eprintln!("{test}: skipped, needs root to create network namespaces");
    false
}

/// Names of all network namespaces (`ip netns list`).
pub fn list_netns() -> Result<Vec<String>> {
    let out = run_cmd(&["ip", "netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Kills the processes inside `ns`, then deletes it.
fn remove_netns(ns: &str) -> Result<()> {
    // A process left inside would keep the namespace (and its links) alive after the name
    // is gone. `ip netns pids` fails when the namespace vanished meanwhile: nothing to kill.
    if let Ok(pids) = run_cmd(&["ip", "netns", "pids", ns]) {
        for pid in pids.split_whitespace() {
            // It may exit on its own between listing and killing.
            let _ = run_cmd(&["kill", "-KILL", pid]);
        }
    }
    run_cmd(&["ip", "netns", "del", ns])?;
    Ok(())
}

/// Runs a command to completion; stdout on success, an error with stderr otherwise.
fn run_cmd(argv: &[&str]) -> Result<String> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| TestbedError::Config("empty command".to_owned()))?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    let out = cmd_output(&mut cmd)?;
    output_to_result(&cmd, out)
}

fn cmd_output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| TestbedError::Spawn {
            cmd: describe(cmd),
            source,
        })
}

fn output_to_result(cmd: &Command, out: Output) -> Result<String> {
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(TestbedError::Command {
        cmd: describe(cmd),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names_fit_an_interface_name() {
        let names = RunNames::new("wtb", 4_194_304, 999).unwrap();

        assert_eq!(names.run_id, "wtb4194304-999");
        assert!(names.run_id.len() <= IFNAME_MAX);
        assert_eq!(names.underlay(), "wtb4194304-999-u");
        assert_eq!(names.host(2), "wtb4194304-999-h2");
    }

    #[test]
    fn bad_prefixes_are_rejected() {
        for prefix in ["", "toolong", "Up", "a-b", "1ab"] {
            assert!(
                matches!(
                    TestbedConfig::new(prefix, 2).validate(),
                    Err(TestbedError::Config(_))
                ),
                "{prefix:?} accepted"
            );
        }
        assert!(TestbedConfig::new("wt", 0).validate().is_err());
        assert!(TestbedConfig::new("wt", 255).validate().is_err());
        assert!(TestbedConfig::new("wt", 254).validate().is_ok());
    }

    #[test]
    fn owner_pid_reads_names_of_this_prefix_only() {
        assert_eq!(owner_pid("wtb123-4-u", "wtb"), Some(123));
        assert_eq!(owner_pid("wtb123-4-h17", "wtb"), Some(123));
        assert_eq!(owner_pid("wtb123-4-p3", "wtb"), Some(123));
        assert_eq!(owner_pid("wtb123-4-p", "wtb"), None);
        assert_eq!(owner_pid("wtb123-4-h", "wtb"), None);
        assert_eq!(owner_pid("wtb123-4-x1", "wtb"), None);
        assert_eq!(owner_pid("wtb123-u", "wtb"), None);
        assert_eq!(owner_pid("wtbx123-4-u", "wtb"), None);
        assert_eq!(owner_pid("other-1-u", "wtb"), None);
    }

    #[test]
    fn host_addresses_use_the_subnet_and_index() {
        assert_eq!(host_addr(77, 3), Ipv4Addr::new(192, 168, 77, 3));
    }

    #[test]
    fn wait_until_reports_the_last_probe_on_timeout() {
        let mut calls = 0;
        let err = wait_until("nothing", Duration::from_millis(250), || {
            calls += 1;
            Err::<(), _>(format!("probe {calls}"))
        })
        .unwrap_err();

        let TestbedError::Timeout { what, last, .. } = err else {
            panic!("expected a timeout, got {err}");
        };
        assert_eq!(what, "nothing");
        assert_eq!(last, format!("probe {calls}"));
        assert!(calls >= 2);
    }

    #[test]
    fn wait_until_returns_the_first_success() {
        let mut calls = 0;
        let v = wait_until("third call", Duration::from_secs(30), || {
            calls += 1;
            if calls == 3 {
                Ok(calls)
            } else {
                Err("not yet")
            }
        })
        .unwrap();

        assert_eq!(v, 3);
    }

    #[test]
    fn cancelled_wait_stops_at_once() {
        let cancel = AtomicBool::new(true);
        let err = wait_until_cancellable("x", Duration::from_secs(30), &cancel, || {
            Err::<(), _>("never")
        })
        .unwrap_err();

        assert!(matches!(err, TestbedError::Cancelled { .. }));
    }

    #[test]
    fn two_hosts_ping_block_unblock_and_teardown() {
        if !privileged_or_skip("two_hosts_ping_block_unblock_and_teardown") {
            return;
        }
        let bed = Testbed::new(&TestbedConfig::new("wtb", 2).with_subnet(201)).unwrap();
        let (h1, h2) = (bed.host(1).unwrap(), bed.host(2).unwrap());
        let namespaces = [
            h1.netns().to_owned(),
            h2.netns().to_owned(),
            bed.underlay_netns(),
        ];

        let reach = || {
            wait_until("h1 to ping h2", Duration::from_secs(10), || {
                match h1.ping(h2.addr()) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err("no reply".to_owned()),
                    Err(e) => Err(e.to_string()),
                }
            })
        };
        reach().unwrap();
        let addrs = h1.run("ip", &["-4", "-o", "addr", "show", "eth0"]).unwrap();
        assert!(addrs.contains("192.168.201.1/24"), "{addrs}");

        bed.block(h1, h2).unwrap();
        assert!(!h1.ping(h2.addr()).unwrap(), "ping crossed a block");
        assert!(!h2.ping(h1.addr()).unwrap(), "ping crossed a block");
        bed.unblock(h1, h2).unwrap();
        reach().unwrap();

        // Output of a spawned process lands in its log.
        let mut failing = h2.spawn("failing", h2.command("sleep")).unwrap();
        wait_until(
            "sleep without operand to exit",
            Duration::from_secs(5),
            || {
                if failing.is_running() {
                    Err("running")
                } else {
                    Ok(())
                }
            },
        )
        .unwrap();
        assert!(
            failing.log().contains("missing operand"),
            "{}",
            failing.log()
        );
        let mut cmd = h2.command("sleep");
        cmd.arg("600");
        let mut sleeper2 = h2.spawn("sleeper2", cmd).unwrap();
        assert!(sleeper2.is_running());
        let pid = sleeper2.pid();
        // `ip netns exec` enters the namespace only after it has been started.
        wait_until("the sleeper to enter host2", Duration::from_secs(5), || {
            let pids = run_cmd(&["ip", "netns", "pids", h2.netns()]).map_err(|e| e.to_string())?;
            match pids.split_whitespace().any(|p| p == pid.to_string()) {
                true => Ok(()),
                false => Err(format!("pids {pids:?}")),
            }
        })
        .unwrap();
        let mut cmd = h1.command("sleep");
        cmd.arg("600");
        let mut stopped = h1.spawn("stopped", cmd).unwrap();
        stopped.stop(Duration::from_secs(5)).unwrap();
        assert!(!stopped.is_running());
        let log_dir = bed.log_dir().to_owned();

        bed.teardown().unwrap();

        let left = list_netns().unwrap();
        for ns in &namespaces {
            assert!(!left.contains(ns), "{ns} survived teardown");
        }
        assert!(!log_dir.exists());
        wait_until("the sleeper to die", Duration::from_secs(5), || {
            if sleeper2.is_running() {
                Err("running")
            } else {
                Ok(())
            }
        })
        .unwrap();
    }

    #[test]
    fn stale_namespaces_of_dead_runs_are_removed() {
        if !privileged_or_skip("stale_namespaces_of_dead_runs_are_removed") {
            return;
        }
        // A process that has exited gives a pid no run owns any more.
        let mut child = Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        let dead = RunNames::new("wts", child.id(), 0).unwrap();
        let live = RunNames::new("wts", std::process::id(), 9_999).unwrap();
        run_cmd(&["ip", "netns", "add", &dead.host(1)]).unwrap();
        run_cmd(&["ip", "netns", "add", &live.underlay()]).unwrap();

        let removed = cleanup_stale("wts").unwrap();

        let left = list_netns().unwrap();
        run_cmd(&["ip", "netns", "del", &live.underlay()]).unwrap();
        assert_eq!(removed, vec![dead.host(1)]);
        assert!(!left.contains(&dead.host(1)));
        assert!(left.contains(&live.underlay()));
    }
}
