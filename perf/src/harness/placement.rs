//! Where the testbed's routers run. In a cluster every node's router has its node's CPUs to
//! itself; on one test machine the hosts' routers share its CPUs unless told otherwise. The
//! plan here gives each host's router its own CPUs (`weave-router launch --cpus`) where the
//! machine has enough, or leaves every router on every CPU as before. Pure: the shell reads
//! the CPUs this process may use and whether the router has `--cpus`.

use serde::{Deserialize, Serialize};

/// How the hosts' routers are placed on the machine's CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// Each host's router gets its own CPUs (`--cpus`), as on separate nodes; host1 and
    /// host2, between which the traffic runs, never share one.
    Split,
    /// Every router may use every CPU and pins its worker i to the i-th (the router's
    /// default): the sending and receiving hosts' workers share CPUs.
    Shared,
}

impl Placement {
    /// The name on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Placement::Split => "split",
            Placement::Shared => "shared",
        }
    }
}

/// The CPUs of one host's router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCpus {
    /// The host within its path's group: `host1` sends, `host2` receives.
    pub host: String,
    /// The CPUs its data-plane workers are pinned to, one worker each.
    pub cpus: Vec<usize>,
}

/// The placement a run used, as result files keep it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementRecord {
    /// What `--placement` asked for; `None` for the default.
    pub requested: Option<Placement>,
    /// What the run did.
    pub placement: Placement,
    /// The CPUs weave-perf (and so every router) may run on.
    pub machine_cpus: Vec<usize>,
    /// Each host's router's CPUs, the same for every router path.
    pub hosts: Vec<HostCpus>,
    /// Why the placement is not the one asked for, or who shares a CPU.
    pub note: Option<String>,
}

impl PlacementRecord {
    /// The `weave-router launch` flags of host `index` (1-based within its group).
    pub fn router_args(&self, index: usize) -> Vec<String> {
        match (
            self.placement,
            index.checked_sub(1).and_then(|i| self.hosts.get(i)),
        ) {
            (Placement::Split, Some(host)) => vec!["--cpus".into(), format_cpu_list(&host.cpus)],
            (Placement::Split, None) | (Placement::Shared, _) => Vec::new(),
        }
    }
}

/// Plans the CPUs of `hosts` routers on `machine_cpus`. `router_has_cpus` says whether the
/// router binary takes `--cpus`. The default (`requested` `None`) is split where the
/// machine and the router allow it, else shared with a note; an explicit `split` the
/// router cannot do is an error, one the machine cannot do falls back with a note.
pub fn plan(
    requested: Option<Placement>,
    machine_cpus: &[usize],
    hosts: usize,
    router_has_cpus: bool,
) -> Result<PlacementRecord, String> {
    let shared = |note: Option<String>| PlacementRecord {
        requested,
        placement: Placement::Shared,
        machine_cpus: machine_cpus.to_vec(),
        hosts: (1..=hosts)
            .map(|i| HostCpus {
                host: format!("host{i}"),
                cpus: machine_cpus.to_vec(),
            })
            .collect(),
        note,
    };
    if requested == Some(Placement::Shared) {
        return Ok(shared(None));
    }
    if machine_cpus.len() < 2 {
        return Ok(shared(Some(format!(
            "split placement needs 2 CPUs (one each for host1 and host2), this machine lets \
             weave-perf use {}: every router shares them",
            machine_cpus.len()
        ))));
    }
    if !router_has_cpus {
        return match requested {
            Some(_) => Err(
                "--placement split needs `weave-router launch --cpus`, which this router does \
                 not have; use --placement shared"
                    .into(),
            ),
            None => Ok(shared(Some(
                "the router has no --cpus flag, so its workers cannot be placed: every router \
                 shares every CPU"
                    .into(),
            ))),
        };
    }
    let n = machine_cpus.len();
    let (cpus, note) = if n >= hosts {
        // Equal blocks in order; CPUs left over stay without router workers.
        let per = n / hosts;
        let cpus: Vec<Vec<usize>> = (0..hosts)
            .map(|i| machine_cpus[i * per..(i + 1) * per].to_vec())
            .collect();
        let spare = &machine_cpus[hosts * per..];
        let note = (!spare.is_empty()).then(|| {
            format!(
                "CPU {} runs no router worker (the CPUs do not divide evenly among {hosts} hosts)",
                format_cpu_list(spare)
            )
        });
        (cpus, note)
    } else {
        // One CPU each, round robin: host1 and host2 still get their own, the hosts beyond
        // carry no measured traffic (mesh members only) and share with the first ones.
        let cpus: Vec<Vec<usize>> = (0..hosts).map(|i| vec![machine_cpus[i % n]]).collect();
        let shares: Vec<String> = (n..hosts)
            .map(|i| {
                format!(
                    "host{} shares CPU {} with host{}",
                    i + 1,
                    machine_cpus[i % n],
                    i % n + 1
                )
            })
            .collect();
        let note = format!(
            "{}: {n} CPUs for {hosts} hosts, and hosts beyond host2 carry no measured traffic",
            shares.join(", ")
        );
        (cpus, Some(note))
    };
    Ok(PlacementRecord {
        requested,
        placement: Placement::Split,
        machine_cpus: machine_cpus.to_vec(),
        hosts: cpus
            .into_iter()
            .enumerate()
            .map(|(i, cpus)| HostCpus {
                host: format!("host{}", i + 1),
                cpus,
            })
            .collect(),
        note,
    })
}

/// A CPU list as `taskset -c` and `--cpus` take it: `0-2,5`.
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        parts.push(match j - i {
            0 => cpus[i].to_string(),
            _ => format!("{}-{}", cpus[i], cpus[j]),
        });
        i = j + 1;
    }
    parts.join(",")
}

/// Parses a CPU list (`0-2,5`, as /proc's `Cpus_allowed_list` writes it); `None` for
/// anything else.
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',') {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
            None => {
                let n: usize = part.trim().parse().ok()?;
                (n, n)
            }
        };
        if first > last {
            return None;
        }
        cpus.extend(first..=last);
    }
    Some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus_of(record: &PlacementRecord) -> Vec<Vec<usize>> {
        record.hosts.iter().map(|h| h.cpus.clone()).collect()
    }

    #[test]
    fn two_cpus_and_three_hosts_give_the_traffic_pair_one_each() {
        let p = plan(None, &[0, 1], 3, true).unwrap();

        assert_eq!(p.placement, Placement::Split);
        assert_eq!(cpus_of(&p), [vec![0], vec![1], vec![0]]);
        assert_eq!(
            p.note.as_deref(),
            Some(
                "host3 shares CPU 0 with host1: 2 CPUs for 3 hosts, and hosts beyond host2 \
                 carry no measured traffic"
            )
        );
        assert_eq!(p.router_args(2), ["--cpus", "1"]);
        assert_eq!(p.hosts[2].host, "host3");
    }

    #[test]
    fn enough_cpus_give_every_host_its_own_block() {
        let p = plan(Some(Placement::Split), &[0, 1, 2, 3, 4, 5, 6], 3, true).unwrap();

        assert_eq!(cpus_of(&p), [vec![0, 1], vec![2, 3], vec![4, 5]]);
        assert_eq!(p.router_args(1), ["--cpus", "0-1"]);
        assert!(
            p.note.as_deref().unwrap().starts_with("CPU 6 runs no"),
            "{p:?}"
        );
        let even = plan(None, &[0, 1, 2], 3, true).unwrap();
        assert_eq!(cpus_of(&even), [vec![0], vec![1], vec![2]]);
        assert_eq!(even.note, None);
    }

    #[test]
    fn shared_placement_passes_no_flag() {
        let p = plan(Some(Placement::Shared), &[0, 1], 3, false).unwrap();

        assert_eq!(p.placement, Placement::Shared);
        assert_eq!(cpus_of(&p), [vec![0, 1], vec![0, 1], vec![0, 1]]);
        assert!(p.router_args(1).is_empty());
        assert_eq!(p.note, None);
    }

    #[test]
    fn split_falls_back_to_shared_where_it_cannot_be_done() {
        let one = plan(Some(Placement::Split), &[3], 3, true).unwrap();
        assert_eq!(one.placement, Placement::Shared);
        assert!(one.note.unwrap().contains("needs 2 CPUs"));

        let old_router = plan(None, &[0, 1], 3, false).unwrap();
        assert_eq!(old_router.placement, Placement::Shared);
        assert!(old_router.note.unwrap().contains("no --cpus"));

        let err = plan(Some(Placement::Split), &[0, 1], 3, false).unwrap_err();
        assert!(err.contains("--placement shared"), "{err}");
    }

    #[test]
    fn cpu_lists_round_trip() {
        assert_eq!(format_cpu_list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(format_cpu_list(&[]), "");
        assert_eq!(parse_cpu_list("0-2,5,7-8\n"), Some(vec![0, 1, 2, 5, 7, 8]));
        assert_eq!(parse_cpu_list("4"), Some(vec![4]));
        assert_eq!(parse_cpu_list("2-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }
}
