//! CPU topology and the choice of cores for an exclusive run.
//!
//! A run gets whole cores (every SMT sibling of each core it takes), only from the
//! isolation pool, never one another run holds, and all on one NUMA node when one node
//! has enough free cores (memory stays local); otherwise the cores are spread over nodes,
//! lowest numbers first. Topology comes from sysfs (`topology/thread_siblings_list` and
//! the `nodeN` link of each CPU); where sysfs does not say, a CPU is a core of its own on
//! node 0.

use std::collections::{BTreeMap, BTreeSet};

use crate::host::Host;
use crate::host::format::{format_cpu_list, parse_cpu_list};

/// One core: its SMT siblings and its NUMA node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Core {
    /// The core's logical CPUs.
    pub cpus: BTreeSet<u32>,
    /// The NUMA node it belongs to.
    pub node: u32,
}

/// The cores `cpus` belong to, from sysfs.
pub fn topology(host: &Host, cpus: &BTreeSet<u32>) -> Vec<Core> {
    let mut out: Vec<Core> = Vec::new();
    for &cpu in cpus {
        if out.iter().any(|c| c.cpus.contains(&cpu)) {
            continue;
        }
        let dir = format!("/sys/devices/system/cpu/cpu{cpu}");
        let siblings = host
            .read(&format!("{dir}/topology/thread_siblings_list"))
            .ok()
            .and_then(|t| parse_cpu_list(&t).ok())
            .filter(|s| s.contains(&cpu))
            .unwrap_or_else(|| BTreeSet::from([cpu]));
        let node = host
            .list(&dir)
            .iter()
            .find_map(|n| n.strip_prefix("node")?.parse().ok())
            .unwrap_or(0);
        out.push(Core {
            cpus: siblings,
            node,
        });
    }
    out
}

/// Why cores cannot be handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    /// The pool is too small (or the CPUs asked for are outside it): waiting cannot help.
    #[error("{0}")]
    Never(String),
    /// The cores exist but other runs hold them now.
    #[error("{0}")]
    Busy(String),
}

/// Picks `want` CPUs as whole cores of `pool` not in `taken`, on one NUMA node when one
/// node has enough.
pub fn pick(
    cores: &[Core],
    pool: &BTreeSet<u32>,
    taken: &BTreeSet<u32>,
    want: usize,
) -> Result<BTreeSet<u32>, PickError> {
    let usable: Vec<&Core> = cores.iter().filter(|c| c.cpus.is_subset(pool)).collect();
    let capacity: usize = usable.iter().map(|c| c.cpus.len()).sum();
    if capacity < want {
        return Err(PickError::Never(format!(
            "{want} exclusive CPUs can never be served: the isolation pool {} has {capacity} \
             in whole cores",
            format_cpu_list(pool)
        )));
    }
    let free: Vec<&Core> = usable
        .into_iter()
        .filter(|c| c.cpus.is_disjoint(taken))
        .collect();
    let gather = |cores: &mut dyn Iterator<Item = &&Core>| {
        let mut got = BTreeSet::new();
        for core in cores {
            if got.len() >= want {
                break;
            }
            got.extend(core.cpus.iter().copied());
        }
        (got.len() >= want).then_some(got)
    };
    let mut nodes: BTreeMap<u32, Vec<&Core>> = BTreeMap::new();
    for c in &free {
        nodes.entry(c.node).or_default().push(c);
    }
    for on_node in nodes.values() {
        if let Some(got) = gather(&mut on_node.iter()) {
            return Ok(got);
        }
    }
    gather(&mut free.iter()).ok_or_else(|| {
        PickError::Busy(format!(
            "{want} exclusive CPUs are not free now: the isolation pool is {} and other runs \
             hold {}",
            format_cpu_list(pool),
            format_cpu_list(taken)
        ))
    })
}

/// Checks that `list` can be handed out as it is: inside the pool, whole cores, free.
pub fn pick_list(
    cores: &[Core],
    pool: &BTreeSet<u32>,
    taken: &BTreeSet<u32>,
    list: &BTreeSet<u32>,
) -> Result<BTreeSet<u32>, PickError> {
    if list.is_empty() {
        return Err(PickError::Never("the CPU list is empty".into()));
    }
    let outside: BTreeSet<u32> = list.difference(pool).copied().collect();
    if !outside.is_empty() {
        return Err(PickError::Never(format!(
            "CPUs {} are not in the isolation pool {}",
            format_cpu_list(&outside),
            format_cpu_list(pool)
        )));
    }
    for &cpu in list {
        let core = cores.iter().find(|c| c.cpus.contains(&cpu));
        if let Some(core) = core.filter(|c| !c.cpus.is_subset(list)) {
            return Err(PickError::Never(format!(
                "CPU {cpu} shares its core with {}: list whole cores ({})",
                format_cpu_list(&core.cpus.difference(list).copied().collect()),
                format_cpu_list(&core.cpus)
            )));
        }
    }
    let busy: BTreeSet<u32> = list.intersection(taken).copied().collect();
    if !busy.is_empty() {
        return Err(PickError::Busy(format!(
            "CPUs {} are held by another run",
            format_cpu_list(&busy)
        )));
    }
    Ok(list.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u32]) -> BTreeSet<u32> {
        v.iter().copied().collect()
    }

    fn core(cpus: &[u32], node: u32) -> Core {
        Core {
            cpus: set(cpus),
            node,
        }
    }

    #[test]
    fn picks_whole_cores_from_the_pool() {
        let cores = vec![
            core(&[0, 4], 0),
            core(&[1, 5], 0),
            core(&[2, 6], 0),
            core(&[3, 7], 0),
        ];
        let pool = set(&[1, 2, 3, 5, 6, 7]);
        assert_eq!(pick(&cores, &pool, &set(&[]), 2), Ok(set(&[1, 5])));
        assert_eq!(
            pick(&cores, &pool, &set(&[1, 5]), 3),
            Ok(set(&[2, 3, 6, 7]))
        );
        assert!(matches!(
            pick(&cores, &pool, &set(&[1, 2, 3]), 1),
            Err(PickError::Busy(_))
        ));
        assert!(matches!(
            pick(&cores, &pool, &set(&[]), 7),
            Err(PickError::Never(_))
        ));
        // A core half outside the pool is never handed out.
        assert_eq!(
            pick(&cores, &set(&[0, 1, 5]), &set(&[]), 1),
            Ok(set(&[1, 5]))
        );
    }

    #[test]
    fn prefers_one_numa_node() {
        let cores = vec![
            core(&[1], 0),
            core(&[2], 1),
            core(&[3], 1),
            core(&[4], 0),
            core(&[5], 0),
        ];
        let pool = set(&[1, 2, 3, 4, 5]);
        // Node 0 has 1, 4, 5 but 1 is taken: two CPUs fit on node 0 (4, 5) before node 1.
        assert_eq!(pick(&cores, &pool, &set(&[1]), 2), Ok(set(&[4, 5])));
        // Three free on no single node once 4 is taken: spread, lowest first.
        assert_eq!(pick(&cores, &pool, &set(&[4]), 3), Ok(set(&[1, 2, 3])));
        assert_eq!(pick(&cores, &pool, &set(&[]), 3), Ok(set(&[1, 4, 5])));
    }

    #[test]
    fn a_cpu_list_must_be_whole_free_cores_of_the_pool() {
        let cores = vec![core(&[1, 5], 0), core(&[2, 6], 0)];
        let pool = set(&[1, 2, 5, 6]);
        assert_eq!(
            pick_list(&cores, &pool, &set(&[]), &set(&[1, 5])),
            Ok(set(&[1, 5]))
        );
        let half = pick_list(&cores, &pool, &set(&[]), &set(&[1])).unwrap_err();
        assert!(
            half.to_string().contains("CPU 1 shares its core with 5"),
            "{half}"
        );
        let outside = pick_list(&cores, &pool, &set(&[]), &set(&[0])).unwrap_err();
        assert!(
            outside.to_string().contains("not in the isolation pool"),
            "{outside}"
        );
        assert!(matches!(
            pick_list(&cores, &pool, &set(&[2]), &set(&[2, 6])),
            Err(PickError::Busy(_))
        ));
    }

    #[test]
    fn topology_from_a_fake_sysfs() {
        let (_dir, host) = crate::host::fake_root(&[
            (
                "/sys/devices/system/cpu/cpu0/topology/thread_siblings_list",
                "0,2\n",
            ),
            ("/sys/devices/system/cpu/cpu0/node0/cpulist", "0,2\n"),
            (
                "/sys/devices/system/cpu/cpu1/topology/thread_siblings_list",
                "1,3\n",
            ),
            ("/sys/devices/system/cpu/cpu1/node1/cpulist", "1,3\n"),
            (
                "/sys/devices/system/cpu/cpu2/topology/thread_siblings_list",
                "0,2\n",
            ),
        ]);
        let t = topology(&host, &set(&[0, 1, 2, 4]));
        assert_eq!(
            t,
            vec![core(&[0, 2], 0), core(&[1, 3], 1), core(&[4], 0)],
            "CPU 4 has no sysfs entry: a core of its own on node 0"
        );
    }
}
