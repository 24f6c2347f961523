//! The noise report of a run: how much of the run's CPUs something else used while it ran,
//! and whether those CPUs ran slower (frequency, thermal throttling). The host-wide PSI
//! deltas are read by the run itself ([`super`]).
//!
//! [`Probe::sample`] is taken just before the program is started and again once its last
//! process is gone; [`report`] subtracts the two. On each of the run's CPUs:
//!
//! - the time tasks ran there: the root cpuacct cgroup's `cpuacct.usage_percpu` where
//!   cgroup v1 has one (nanoseconds, every task of the host), else `/proc/stat`
//!   `user + nice + system` (guest time is already inside `user` and `nice`: it is not
//!   added again);
//! - minus the run's own CPU time there ([`Own`]: per CPU from the run cgroup's
//!   `cpuacct.usage_percpu` on v1; on v2 only `usage_usec` in total, all of it on the
//!   run's CPUs since the run inherits them), clamped at 0 per CPU (in total on v2);
//! - plus `irq + softirq` and `steal` from `/proc/stat`.
//!
//! Residual error (what the figures can be off by):
//! - The window opens before the fork: the daemon's fork and the child's few microseconds
//!   before it enters its cgroup (the first thing it does) count as foreign when they run
//!   on the run's CPUs. From the cgroup on, before exec, everything the child does is the
//!   run's own. Waiting for the exec (a v1 cgroup migration can wait for an RCU grace
//!   period) sleeps and costs no CPU. At the end, the daemon's reaping and emptiness checks
//!   count as foreign too, as do the last microseconds of an exiting process that has
//!   already left `cgroup.procs`. Tens of microseconds in all; on exclusive cores, where
//!   the daemon is shielded off, most of it runs elsewhere.
//! - cpuacct is charged when the scheduler updates a task's runtime (at a tick or a
//!   switch): a task running on a CPU at a sample point may carry up to one tick
//!   (1/`CONFIG_HZ` s) not yet charged.
//! - `/proc/stat` counts in USER_HZ units (10 ms) and, on kernels without
//!   `CONFIG_VIRT_CPU_ACCOUNTING_GEN` / `CONFIG_IRQ_TIME_ACCOUNTING`, samples at the tick
//!   who was running. Where task time comes from there (no v1 cpuacct), a short run can be
//!   off by about 10 ms per CPU either way; clamping at 0 makes short runs lean towards a
//!   little foreign time. `irq_ms` and `steal_ms` always have this granularity.
//! - Without `CONFIG_IRQ_TIME_ACCOUNTING` the kernel also charges interrupt time to the
//!   task it interrupted: an interrupt over a foreign task can count twice (tick-sampled,
//!   small).
//! - With cgroup v1 inside a cgroup namespace the root cpuacct is the namespace's: tasks
//!   outside it are not seen.
//!
//! Every read goes through [`Host`]; everything this host cannot show is `None`.

use std::collections::{BTreeMap, BTreeSet};

use cleanroom_proto::Noise;

use crate::host::Host;

/// One CPU's line of `/proc/stat`, in USER_HZ ticks. `guest` and `guest_nice` are not
/// kept: the kernel already counts them inside `user` and `nice`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Normal processes in user mode (guest time included).
    pub user: u64,
    /// Niced processes in user mode (niced guest time included).
    pub nice: u64,
    /// Kernel mode, outside interrupts.
    pub system: u64,
    /// Idle.
    pub idle: u64,
    /// Idle with I/O outstanding.
    pub iowait: u64,
    /// Hard interrupts.
    pub irq: u64,
    /// Soft interrupts.
    pub softirq: u64,
    /// Taken by the hypervisor.
    pub steal: u64,
}

impl CpuTimes {
    /// Field by field `self - earlier`, 0 where a counter went backwards (a CPU brought
    /// back online starts again from 0).
    fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user.saturating_sub(earlier.user),
            nice: self.nice.saturating_sub(earlier.nice),
            system: self.system.saturating_sub(earlier.system),
            idle: self.idle.saturating_sub(earlier.idle),
            iowait: self.iowait.saturating_sub(earlier.iowait),
            irq: self.irq.saturating_sub(earlier.irq),
            softirq: self.softirq.saturating_sub(earlier.softirq),
            steal: self.steal.saturating_sub(earlier.steal),
        }
    }

    /// Task time: user, nice and system (guest is inside user and nice).
    fn tasks(&self) -> u64 {
        self.user + self.nice + self.system
    }
}

/// A kernel counter file that does not read as its format says (the message quotes it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// The per-CPU lines (`cpu0 ...`, `cpu1 ...`) of `/proc/stat`, by CPU number. The
/// all-CPU line and the other lines are skipped; an offline CPU has no line. Columns an
/// old kernel does not have read as 0.
pub fn parse_proc_stat(text: &str) -> Result<BTreeMap<u32, CpuTimes>, ParseError> {
    let mut cpus = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(cpu) = words
            .next()
            .and_then(|w| w.strip_prefix("cpu"))
            .filter(|n| !n.is_empty())
        else {
            continue;
        };
        let cpu: u32 = cpu
            .parse()
            .map_err(|_| ParseError(format!("bad CPU name in /proc/stat line {line:?}")))?;
        let mut field = || -> Result<u64, ParseError> {
            match words.next() {
                None => Ok(0),
                Some(w) => w.parse().map_err(|_| {
                    ParseError(format!("bad counter {w:?} in /proc/stat line {line:?}"))
                }),
            }
        };
        let times = CpuTimes {
            user: field()?,
            nice: field()?,
            system: field()?,
            idle: field()?,
            iowait: field()?,
            irq: field()?,
            softirq: field()?,
            steal: field()?,
        };
        cpus.insert(cpu, times);
    }
    Ok(cpus)
}

/// `cpuacct.usage_percpu` (`12 0 345 ` — nanoseconds, one per possible CPU, CPU 0 first)
/// by CPU number.
pub fn parse_usage_percpu(text: &str) -> Result<BTreeMap<u32, u64>, ParseError> {
    text.split_whitespace()
        .enumerate()
        .map(|(cpu, w)| {
            w.parse().map(|ns| (cpu as u32, ns)).map_err(|_| {
                ParseError(format!("bad value {w:?} in cpuacct.usage_percpu {text:?}"))
            })
        })
        .collect()
}

/// The run's own CPU time, nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Own {
    /// By CPU (cgroup v1 cpuacct).
    PerCpu(BTreeMap<u32, u64>),
    /// In total (cgroup v2), all of it on the run's CPUs.
    Total(u64),
    /// Not readable: no foreign time can be told apart.
    #[default]
    Unknown,
}

/// What a [`Probe`] read at one moment, for the run's CPUs only.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// `/proc/stat` lines.
    stat: BTreeMap<u32, CpuTimes>,
    /// Root cpuacct time of all tasks, nanoseconds.
    tasks_ns: BTreeMap<u32, u64>,
    /// `scaling_cur_freq` values, kHz.
    freq_khz: Vec<u64>,
    /// `core_throttle_count` by CPU.
    core_throttle: BTreeMap<u32, u64>,
    /// `package_throttle_count` by package id.
    package_throttle: BTreeMap<String, u64>,
}

/// Reads the noise counters of a set of CPUs. What the host has is found once, at
/// [`Probe::new`], so a sample is only a few reads.
#[derive(Debug, Clone)]
pub struct Probe {
    host: Host,
    cpus: BTreeSet<u32>,
    /// The root cpuacct cgroup's `cpuacct.usage_percpu` (cgroup v1).
    tasks_file: Option<String>,
    /// CPUs with `cpufreq/scaling_cur_freq`.
    freq_cpus: Vec<u32>,
    /// CPUs with `thermal_throttle/core_throttle_count`.
    core_cpus: Vec<u32>,
    /// Package id → a CPU of the run in it whose `package_throttle_count` stands for it.
    packages: BTreeMap<String, u32>,
}

fn cpu_dir(cpu: u32) -> String {
    format!("/sys/devices/system/cpu/cpu{cpu}")
}

impl Probe {
    /// A probe of the CPUs in the CPU list `cpus` (an unreadable list: no CPUs, so every
    /// CPU figure of the report is `None`).
    pub fn new(host: &Host, cpus: &str) -> Self {
        let cpus = crate::host::format::parse_cpu_list(cpus).unwrap_or_default();
        let tasks_file = host.cgroup_mounts().ok().and_then(|mounts| {
            let m = mounts
                .iter()
                .find(|m| !m.unified && m.controllers.iter().any(|c| c == "cpuacct"))?;
            let file = format!(
                "{}/cpuacct.usage_percpu",
                m.mount_point.display().to_string().trim_end_matches('/')
            );
            host.exists(&file).then_some(file)
        });
        let has = |cpu: u32, f: &str| host.exists(&format!("{}/{f}", cpu_dir(cpu)));
        let freq_cpus = cpus
            .iter()
            .copied()
            .filter(|c| has(*c, "cpufreq/scaling_cur_freq"))
            .collect();
        let core_cpus = cpus
            .iter()
            .copied()
            .filter(|c| has(*c, "thermal_throttle/core_throttle_count"))
            .collect();
        let mut packages = BTreeMap::new();
        for &cpu in cpus
            .iter()
            .filter(|c| has(**c, "thermal_throttle/package_throttle_count"))
        {
            // Every CPU of a package shows the package's counter: count it once.
            let id = host
                .read(&format!("{}/topology/physical_package_id", cpu_dir(cpu)))
                .map(|t| t.trim().to_owned())
                .unwrap_or_else(|_| format!("cpu{cpu}"));
            packages.entry(id).or_insert(cpu);
        }
        Self {
            host: host.clone(),
            cpus,
            tasks_file,
            freq_cpus,
            core_cpus,
            packages,
        }
    }

    /// The counters now. What cannot be read is left out (and the report says `None`).
    pub fn sample(&self) -> Sample {
        let mut s = Sample::default();
        if self.cpus.is_empty() {
            return s;
        }
        match self.host.read("/proc/stat").map(|t| parse_proc_stat(&t)) {
            Ok(Ok(all)) => {
                s.stat = all
                    .into_iter()
                    .filter(|(c, _)| self.cpus.contains(c))
                    .collect();
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "no noise report from /proc/stat"),
            Err(e) => tracing::debug!(error = %e, "no noise report from /proc/stat"),
        }
        if let Some(f) = &self.tasks_file {
            if let Ok(Ok(all)) = self.host.read(f).map(|t| parse_usage_percpu(&t)) {
                s.tasks_ns = all
                    .into_iter()
                    .filter(|(c, _)| self.cpus.contains(c))
                    .collect();
            }
        }
        let number = |cpu: u32, f: &str| -> Option<u64> {
            self.host
                .read(&format!("{}/{f}", cpu_dir(cpu)))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        s.freq_khz = self
            .freq_cpus
            .iter()
            .filter_map(|c| number(*c, "cpufreq/scaling_cur_freq"))
            .collect();
        s.core_throttle = self
            .core_cpus
            .iter()
            .filter_map(|c| Some((*c, number(*c, "thermal_throttle/core_throttle_count")?)))
            .collect();
        s.package_throttle = self
            .packages
            .iter()
            .filter_map(|(id, c)| {
                Some((
                    id.clone(),
                    number(*c, "thermal_throttle/package_throttle_count")?,
                ))
            })
            .collect();
        s
    }
}

/// Sum of `after - before` over the keys both have (0 for a counter that went
/// backwards); `None` when they have none in common.
fn counter_delta<K: Ord>(before: &BTreeMap<K, u64>, after: &BTreeMap<K, u64>) -> Option<u64> {
    let mut total = None;
    for (k, a) in after {
        if let Some(b) = before.get(k) {
            *total.get_or_insert(0) += a.saturating_sub(*b);
        }
    }
    total
}

/// The noise report between two samples of the same [`Probe`], given the run's own CPU
/// time and the length of a `/proc/stat` tick (`1 / USER_HZ` seconds). The PSI fields are
/// left `None` (the run reads them).
pub fn report(before: &Sample, after: &Sample, own: &Own, user_hz: u64) -> Noise {
    let tick_ns = 1_000_000_000 / user_hz.max(1);
    let ms = |ns: u64| ns as f64 / 1e6;
    // Per CPU: (task time, its source's counters known) and the /proc/stat deltas.
    let mut tasks: BTreeMap<u32, u64> = BTreeMap::new();
    let (mut irq, mut steal, mut stat_seen) = (0u64, 0u64, false);
    let cpus: BTreeSet<u32> = after
        .stat
        .keys()
        .chain(after.tasks_ns.keys())
        .copied()
        .collect();
    for cpu in cpus {
        let stat = match (before.stat.get(&cpu), after.stat.get(&cpu)) {
            (Some(b), Some(a)) => Some(a.since(b)),
            _ => None,
        };
        if let Some(d) = stat {
            stat_seen = true;
            irq += (d.irq + d.softirq) * tick_ns;
            steal += d.steal * tick_ns;
        }
        let cpuacct = match (before.tasks_ns.get(&cpu), after.tasks_ns.get(&cpu)) {
            (Some(b), Some(a)) => Some(a.saturating_sub(*b)),
            _ => None,
        };
        if let Some(t) = cpuacct.or(stat.map(|d| d.tasks() * tick_ns)) {
            tasks.insert(cpu, t);
        }
    }
    let foreign_tasks = match own {
        _ if tasks.is_empty() => None,
        Own::PerCpu(own) => Some(
            tasks
                .iter()
                .map(|(cpu, t)| t.saturating_sub(own.get(cpu).copied().unwrap_or(0)))
                .sum::<u64>(),
        ),
        Own::Total(own) => Some(tasks.values().sum::<u64>().saturating_sub(*own)),
        Own::Unknown => None,
    };
    let freq = before.freq_khz.iter().chain(&after.freq_khz);
    let throttle = match (
        counter_delta(&before.core_throttle, &after.core_throttle),
        counter_delta(&before.package_throttle, &after.package_throttle),
    ) {
        (None, None) => None,
        (c, p) => Some(c.unwrap_or(0) + p.unwrap_or(0)),
    };
    Noise {
        foreign_cpu_ms: foreign_tasks.map(|t| ms(t + irq + steal)),
        irq_ms: stat_seen.then(|| ms(irq)),
        steal_ms: stat_seen.then(|| ms(steal)),
        freq_min_khz: freq.clone().min().copied(),
        freq_max_khz: freq.max().copied(),
        throttle_events: throttle,
        ..Noise::default()
    }
}

/// Ticks per second of `/proc/stat` (USER_HZ; 100 on every Linux architecture in use).
pub fn user_hz() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake_root;

    const STAT: &str = "cpu  30 0 9 100 1 0 2 1 0 0
cpu0 10 0 3 50 1 0 1 0 0 0
cpu1 20 0 6 50 0 0 1 1 5 0
intr 7091047 0 0 0
ctxt 123
";

    fn times(v: [u64; 8]) -> CpuTimes {
        let [user, nice, system, idle, iowait, irq, softirq, steal] = v;
        CpuTimes {
            user,
            nice,
            system,
            idle,
            iowait,
            irq,
            softirq,
            steal,
        }
    }

    #[test]
    fn proc_stat_lines() {
        type Want = Result<Vec<(u32, [u64; 8])>, &'static str>;
        let table: &[(&str, Want)] = &[
            (
                STAT,
                Ok(vec![
                    (0, [10, 0, 3, 50, 1, 0, 1, 0]),
                    // guest (5) is inside user already: not a field of its own.
                    (1, [20, 0, 6, 50, 0, 0, 1, 1]),
                ]),
            ),
            // An offline CPU has no line; an old kernel has fewer columns.
            (
                "cpu 1 2 3 4\ncpu0 1 2 3 4 5 6 7\ncpu3 9 0 0 1\n",
                Ok(vec![
                    (0, [1, 2, 3, 4, 5, 6, 7, 0]),
                    (3, [9, 0, 0, 1, 0, 0, 0, 0]),
                ]),
            ),
            ("intr 1 2\nctxt 5\n", Ok(vec![])),
            ("", Ok(vec![])),
            ("cpu0 1 x 3\n", Err("bad counter \"x\"")),
            ("cpuX 1 2 3\n", Err("bad CPU name")),
            ("cpu0 -1 2 3\n", Err("bad counter \"-1\"")),
        ];
        for (text, want) in table {
            let got = parse_proc_stat(text);
            match want {
                Ok(lines) => {
                    let want: BTreeMap<u32, CpuTimes> =
                        lines.iter().map(|(c, v)| (*c, times(*v))).collect();
                    assert_eq!(got.as_ref(), Ok(&want), "{text:?}");
                }
                Err(part) => {
                    let e = got.unwrap_err();
                    assert!(
                        e.0.contains(part) && e.0.contains("/proc/stat"),
                        "{text:?}: {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn usage_percpu_values() {
        assert_eq!(
            parse_usage_percpu("12 0 345 \n"),
            Ok(BTreeMap::from([(0, 12), (1, 0), (2, 345)]))
        );
        assert_eq!(parse_usage_percpu("\n"), Ok(BTreeMap::new()));
        let e = parse_usage_percpu("1 two").unwrap_err();
        assert!(e.0.contains("\"two\""), "{e}");
    }

    fn stat_sample(cpus: &[(u32, [u64; 8])]) -> Sample {
        Sample {
            stat: cpus.iter().map(|(c, v)| (*c, times(*v))).collect(),
            ..Sample::default()
        }
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn foreign_time_arithmetic() {
        struct Case {
            name: &'static str,
            before: Sample,
            after: Sample,
            own: Own,
            /// foreign, irq, steal (ms)
            want: (Option<f64>, Option<f64>, Option<f64>),
        }
        let zero = [0; 8];
        let cases = [
            Case {
                name: "proc/stat only, own in total: busy 30+10+5 ticks, irq 2+1, steal 4",
                before: stat_sample(&[(1, zero)]),
                after: stat_sample(&[(1, [30, 10, 5, 900, 7, 2, 1, 4])]),
                own: Own::Total(20 * MS),
                // 450 ms of tasks - 20 ms own + 30 ms irq + 40 ms steal; idle and iowait
                // are not busy.
                want: (Some(500.0), Some(30.0), Some(40.0)),
            },
            Case {
                name: "cpuacct per CPU wins over proc/stat; own subtracted per CPU",
                before: Sample {
                    tasks_ns: BTreeMap::from([(0, 1000 * MS), (1, 2000 * MS)]),
                    ..stat_sample(&[(0, zero), (1, zero)])
                },
                after: Sample {
                    tasks_ns: BTreeMap::from([(0, 1100 * MS), (1, 2050 * MS)]),
                    ..stat_sample(&[(0, [99, 0, 0, 0, 0, 0, 1, 0]), (1, zero)])
                },
                // CPU 1: the run used more than cpuacct saw there (a tick's staleness):
                // 0 there, not a negative that hides CPU 0's 70 ms.
                own: Own::PerCpu(BTreeMap::from([(0, 30 * MS), (1, 60 * MS), (5, 1)])),
                want: (Some(80.0), Some(10.0), Some(0.0)),
            },
            Case {
                name: "counters that went backwards count 0",
                before: Sample {
                    tasks_ns: BTreeMap::from([(1, 5000 * MS)]),
                    ..stat_sample(&[(1, [50, 0, 50, 0, 0, 9, 9, 9])])
                },
                after: Sample {
                    tasks_ns: BTreeMap::from([(1, 10 * MS)]),
                    ..stat_sample(&[(1, [1, 0, 1, 0, 0, 1, 1, 1])])
                },
                own: Own::Total(0),
                want: (Some(0.0), Some(0.0), Some(0.0)),
            },
            Case {
                name: "the run's own time beyond the busy time clamps at 0",
                before: stat_sample(&[(1, zero)]),
                after: stat_sample(&[(1, [7, 0, 0, 0, 0, 0, 0, 0])]),
                own: Own::Total(75 * MS),
                want: (Some(0.0), Some(0.0), Some(0.0)),
            },
            Case {
                name: "a CPU missing from one sample is left out",
                before: stat_sample(&[(0, zero)]),
                after: stat_sample(&[
                    (0, [1, 0, 0, 0, 0, 0, 0, 0]),
                    (1, [50, 0, 0, 0, 0, 0, 0, 0]),
                ]),
                own: Own::Total(0),
                want: (Some(10.0), Some(0.0), Some(0.0)),
            },
            Case {
                name: "no CPU in both samples: nothing to tell",
                before: stat_sample(&[(0, zero)]),
                after: stat_sample(&[(1, zero)]),
                own: Own::Total(0),
                want: (None, None, None),
            },
            Case {
                name: "unknown own time: no foreign figure, irq and steal still",
                before: stat_sample(&[(1, zero)]),
                after: stat_sample(&[(1, [5, 0, 0, 0, 0, 1, 0, 2])]),
                own: Own::Unknown,
                want: (None, Some(10.0), Some(20.0)),
            },
            Case {
                name: "cpuacct without /proc/stat: tasks only, no irq or steal",
                before: Sample {
                    tasks_ns: BTreeMap::from([(2, 0)]),
                    ..Sample::default()
                },
                after: Sample {
                    tasks_ns: BTreeMap::from([(2, 3 * MS)]),
                    ..Sample::default()
                },
                own: Own::PerCpu(BTreeMap::from([(2, MS)])),
                want: (Some(2.0), None, None),
            },
        ];
        for c in cases {
            let n = report(&c.before, &c.after, &c.own, 100);
            assert_eq!(
                (n.foreign_cpu_ms, n.irq_ms, n.steal_ms),
                c.want,
                "{}",
                c.name
            );
            assert_eq!(n.cpu_pressure_us, None, "the run fills PSI in");
        }
    }

    #[test]
    fn counter_deltas() {
        let m = |v: &[(u32, u64)]| v.iter().copied().collect::<BTreeMap<u32, u64>>();
        assert_eq!(
            counter_delta(&m(&[(0, 1), (1, 5)]), &m(&[(0, 4), (1, 6)])),
            Some(4)
        );
        assert_eq!(counter_delta(&m(&[(0, 9)]), &m(&[(0, 2)])), Some(0));
        assert_eq!(counter_delta(&m(&[(0, 1)]), &m(&[(1, 2)])), None);
        assert_eq!(counter_delta(&m(&[]), &m(&[])), None);
    }

    /// A host with cgroup v1 cpuacct, cpufreq and thermal throttle counters for CPUs 0-3
    /// (CPUs 1 and 2 in package 0, CPU 3 in package 1); the run has CPUs 1-3.
    fn v1_host_with_freq_and_throttling() -> (tempfile::TempDir, Host) {
        let mut files: Vec<(String, String)> = vec![
            (
                "/proc/self/mountinfo".into(),
                "33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n"
                    .into(),
            ),
            (
                "/sys/fs/cgroup/cpuacct/cpuacct.usage_percpu".into(),
                "0 100000000 200000000 300000000 \n".into(),
            ),
            (
                "/proc/stat".into(),
                "cpu  0 0 0 0\ncpu0 0 0 0 0\ncpu1 0 0 0 0\ncpu2 0 0 0 0\ncpu3 0 0 0 0\n".into(),
            ),
        ];
        for (cpu, freq, core, package, id) in [
            (0, 800_000, 0, 0, 0),
            (1, 2_400_000, 3, 10, 0),
            (2, 2_000_000, 0, 10, 0),
            (3, 3_000_000, 1, 7, 1),
        ] {
            let d = format!("/sys/devices/system/cpu/cpu{cpu}");
            files.extend([
                (format!("{d}/cpufreq/scaling_cur_freq"), format!("{freq}\n")),
                (
                    format!("{d}/thermal_throttle/core_throttle_count"),
                    format!("{core}\n"),
                ),
                (
                    format!("{d}/thermal_throttle/package_throttle_count"),
                    format!("{package}\n"),
                ),
                (
                    format!("{d}/topology/physical_package_id"),
                    format!("{id}\n"),
                ),
            ]);
        }
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(p, c)| (p.as_str(), c.as_str()))
            .collect();
        fake_root(&refs)
    }

    fn put(dir: &tempfile::TempDir, path: &str, text: &str) {
        std::fs::write(dir.path().join(path.trim_start_matches('/')), text).unwrap();
    }

    #[test]
    fn frequency_throttling_and_cpuacct_on_a_fake_root() {
        let (dir, host) = v1_host_with_freq_and_throttling();
        let probe = Probe::new(&host, "1-3");
        let before = probe.sample();
        // During the run: CPU 1 slows down and throttles twice, package 0 (CPUs 1 and 2,
        // counted once) five times, package 1 not at all; CPU 3's frequency is unreadable
        // at the end. 40 ms of other tasks ran on CPU 2, the run's 25 ms on CPU 1.
        let cpu = |n: u32, f: &str| format!("/sys/devices/system/cpu/cpu{n}/{f}");
        put(&dir, &cpu(1, "cpufreq/scaling_cur_freq"), "1200000\n");
        put(&dir, &cpu(3, "cpufreq/scaling_cur_freq"), "");
        put(&dir, &cpu(1, "thermal_throttle/core_throttle_count"), "5\n");
        for n in [1, 2] {
            put(
                &dir,
                &cpu(n, "thermal_throttle/package_throttle_count"),
                "15\n",
            );
        }
        put(
            &dir,
            "/sys/fs/cgroup/cpuacct/cpuacct.usage_percpu",
            "999000000 125000000 240000000 300000000\n",
        );
        put(
            &dir,
            "/proc/stat",
            "cpu0 100 0 0 0\ncpu1 1 0 0 0 0 0 1 0\ncpu2 9 0 0 0\ncpu3 0 0 0 0 0 0 0 1\n",
        );
        let after = probe.sample();
        let own = Own::PerCpu(BTreeMap::from([(1, 25_000_000), (0, 900_000_000)]));
        let n = report(&before, &after, &own, 100);
        assert_eq!(n.freq_min_khz, Some(1_200_000));
        assert_eq!(n.freq_max_khz, Some(3_000_000), "CPU 0 is not the run's");
        assert_eq!(n.throttle_events, Some(2 + 5));
        // 40 ms of tasks (cpuacct, not the 90 ms /proc/stat's ticks say) + 10 ms softirq
        // on CPU 1 + 10 ms steal on CPU 3; CPU 0's 999 ms are not the run's CPUs.
        assert_eq!(n.foreign_cpu_ms, Some(60.0));
        assert_eq!((n.irq_ms, n.steal_ms), (Some(10.0), Some(10.0)));
    }

    #[test]
    fn a_host_without_cpuacct_cpufreq_or_throttle_counters() {
        let (dir, host) = fake_root(&[
            (
                "/proc/self/mountinfo",
                "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
            ),
            ("/proc/stat", "cpu0 0 0 0 0\ncpu1 0 0 0 0\n"),
        ]);
        let probe = Probe::new(&host, "1");
        let before = probe.sample();
        put(&dir, "/proc/stat", "cpu0 50 0 0 0\ncpu1 8 0 4 0 0 1 0 0\n");
        let n = report(&before, &probe.sample(), &Own::Total(100 * MS), 100);
        assert_eq!(
            n.foreign_cpu_ms,
            Some(30.0),
            "120 ms busy - 100 ms own + 10 ms irq"
        );
        assert_eq!(
            (n.freq_min_khz, n.freq_max_khz, n.throttle_events),
            (None, None, None)
        );
        // No CPUs (an unreadable list): nothing at all.
        let none = Probe::new(&host, "");
        let n = report(&none.sample(), &none.sample(), &Own::Total(0), 100);
        assert_eq!(n, Noise::default());
    }
}
