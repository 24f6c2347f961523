//! Performance counters of a whole run: every process and thread in its cgroup, through
//! `perf_event_open`'s cgroup mode (one group of counters per CPU the run may use, counting
//! whatever task of the cgroup runs there).
//!
//! Hardware counters count user space only: counts of the kernel's own work would hand every
//! member of the group a side channel into the kernel that the host's
//! `kernel.perf_event_paranoid` (2 and above, Debian's default 3) denies unprivileged
//! users; the software counters count the run's tasks in the kernel too (time, switches,
//! faults: what `getrusage` tells anyone anyway).
//!
//! Software counters (task clock, context switches, CPU migrations, page faults) need only
//! the kernel's perf events and the run's cgroup in the hierarchy that has `perf_event`:
//! a v1 `perf_event` mount, else the unified hierarchy, where the controller is implicit
//! while no v1 hierarchy holds it. Hardware counters (instructions, cycles, branch and
//! cache misses) need a PMU; where the host has none (most virtual machines) they are
//! `None` and the reason says so, in plain words.
//!
//! The counters are opened on the run's fresh cgroup before its process is cloned and read
//! after its last process is gone, so they cover the start in the cgroup (a few hundred
//! microseconds of setting up before the exec) and every process the run left behind.
//! Software and hardware counters are separate groups, so a PMU shared with another
//! user (counts scaled by the share of time the group counted, said in
//! `hardware_running`) never costs the software counts.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use cleanroom_proto::run::Counters;
use perf_event::events::{Event, Hardware, Software};
use perf_event::{Builder, Counter, Group, ReadFormat};

/// The software events, in the order of [`Raw::software`].
const SOFTWARE: [Software; 4] = [
    Software::TASK_CLOCK,
    Software::CONTEXT_SWITCHES,
    Software::CPU_MIGRATIONS,
    Software::PAGE_FAULTS,
];

/// The hardware events, in the order of [`Raw::hardware`].
const HARDWARE: [Hardware; 4] = [
    Hardware::INSTRUCTIONS,
    Hardware::CPU_CYCLES,
    Hardware::BRANCH_MISSES,
    Hardware::CACHE_MISSES,
];

/// Why this host has no hardware counters, or `None` when it has them: asked of the kernel
/// once (a cycles counter of the calling thread), then remembered.
pub fn hardware_unsupported() -> Option<String> {
    // Only the kernel's answer that it has no such event is remembered: any other refusal
    // (out of descriptors, a busy PMU) may pass, and is asked again next time.
    static NONE: OnceLock<Option<String>> = OnceLock::new();
    if let Some(known) = NONE.get() {
        return known.clone();
    }
    match Builder::new(Hardware::CPU_CYCLES).build() {
        Ok(_) => NONE.get_or_init(|| None).clone(),
        Err(e) if no_such_event(&e) => NONE.get_or_init(|| Some(unsupported_reason(&e))).clone(),
        Err(e) => Some(unsupported_reason(&e)),
    }
}

/// Whether the kernel refused an event because it has no such event here.
fn no_such_event(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT | libc::EOPNOTSUPP | libc::ENODEV)
    )
}

/// The plain words for a hardware counter the kernel refused.
fn unsupported_reason(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::EOPNOTSUPP | libc::ENODEV) => format!(
            "no hardware PMU: the kernel counts no CPU cycles on this host (a virtual \
             machine without a virtual PMU, or a CPU perf does not know): {e}"
        ),
        Some(libc::EACCES | libc::EPERM) => {
            format!("the kernel refuses hardware counters to the daemon: {e}")
        }
        _ => format!("hardware counters cannot be opened: {e}"),
    }
}

/// One group of counters on one CPU.
struct CpuGroup {
    group: Group,
    members: Vec<Option<Counter>>,
}

/// Descriptors every run's counters hold at most, per CPU: two group leaders and eight
/// events.
const FDS_PER_CPU: usize = 2 + SOFTWARE.len() + HARDWARE.len();

/// Descriptors held by counters now, in the whole daemon.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// Most descriptors counters may hold at once: a quarter of the daemon's open-files limit,
/// so runs that count (a member's dozens of them on a host of hundreds of CPUs) never take
/// the descriptors connections and runs need.
fn budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| soft);
        let most = usize::try_from(soft).unwrap_or(usize::MAX) / 4;
        tracing::debug!(descriptors = most, "performance counters' budget");
        most
    })
}

/// Descriptors taken from a budget, given back when dropped.
#[derive(Debug)]
struct Reserved {
    held: &'static AtomicUsize,
    n: usize,
}

impl Reserved {
    /// Takes `n` descriptors from `held`'s budget of `most`, or says how many are held.
    fn take(held: &'static AtomicUsize, n: usize, most: usize) -> Result<Reserved, usize> {
        held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
            h.checked_add(n).filter(|&t| t <= most)
        })
        .map(|_| Reserved { held, n })
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.held.fetch_sub(self.n, Ordering::AcqRel);
    }
}

/// Counters open on a run's cgroup.
pub struct Open {
    software: Vec<CpuGroup>,
    hardware: Vec<CpuGroup>,
    /// Why there are no hardware counters.
    unsupported: Option<String>,
    /// Their descriptors' share of the budget (dropped after them).
    _reserved: Reserved,
}

impl std::fmt::Debug for Open {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Open")
            .field("software_cpus", &self.software.len())
            .field("hardware_cpus", &self.hardware.len())
            .field("unsupported", &self.unsupported)
            .finish()
    }
}

/// The group of `events` on `cpu` for the cgroup `cg`, counting in the kernel too when
/// `kernel`: a dummy leader (so any member may be refused alone) and a member per event,
/// `None` where it is not wanted.
fn open_group<E: Event + Copy>(
    cg: &File,
    cpu: usize,
    (events, kernel): (&[E], bool),
    wanted: &[bool],
) -> io::Result<CpuGroup> {
    let mut group = Builder::new(Software::DUMMY)
        .read_format(
            ReadFormat::GROUP
                | ReadFormat::TOTAL_TIME_ENABLED
                | ReadFormat::TOTAL_TIME_RUNNING
                | ReadFormat::ID,
        )
        .observe_cgroup(cg)
        .one_cpu(cpu)
        .build_group()?;
    let mut members = Vec::with_capacity(events.len());
    for (e, want) in events.iter().zip(wanted) {
        if !want {
            members.push(None);
            continue;
        }
        let built = group.add(
            Builder::new(*e)
                .observe_cgroup(cg)
                .one_cpu(cpu)
                .exclude_kernel(!kernel)
                .exclude_hv(true),
        );
        members.push(Some(built?));
    }
    Ok(CpuGroup { group, members })
}

/// Which of `events` the kernel can count on `cpu` for `cg` (an event it does not have
/// is left out; any other refusal is an error).
fn available<E: Event + Copy>(cg: &File, cpu: usize, events: &[E]) -> io::Result<Vec<bool>> {
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        let r = Builder::new(*e)
            .observe_cgroup(cg)
            .one_cpu(cpu)
            .exclude_hv(true)
            .build();
        match r {
            Ok(_) => out.push(true),
            Err(e) if no_such_event(&e) => out.push(false),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

impl Open {
    /// Opens and starts the counters of the cgroup `cg` (its directory, opened) on `cpus`.
    /// Software counters must open (the error says why not); hardware ones are left out
    /// with the reason when the host has no PMU, and any other refusal of theirs is an
    /// error too (a run that counts never loses counts quietly).
    pub fn start(cg: &File, cpus: &BTreeSet<u32>) -> io::Result<Open> {
        let want = cpus.len().saturating_mul(FDS_PER_CPU);
        let reserved = Reserved::take(&HELD, want, budget()).map_err(|held| {
            io::Error::other(format!(
                "too many runs count at once: counters hold {held} descriptors of the {} \
                 the daemon allows them, and this run needs {want} ({} CPUs); try again \
                 when some end",
                budget(),
                cpus.len()
            ))
        })?;
        let mut software = Vec::with_capacity(cpus.len());
        for &cpu in cpus {
            software.push(open_group(cg, cpu as usize, (&SOFTWARE, true), &[true; 4])?);
        }
        let mut hardware = Vec::new();
        let mut unsupported = hardware_unsupported();
        if unsupported.is_none() {
            let opened = cpus.first().map_or(Ok(Vec::new()), |&first| {
                let wanted = available(cg, first as usize, &HARDWARE)?;
                if !wanted[1] {
                    return Err(io::Error::from_raw_os_error(libc::ENOENT));
                }
                cpus.iter()
                    .map(|&cpu| open_group(cg, cpu as usize, (&HARDWARE, false), &wanted))
                    .collect::<io::Result<Vec<_>>>()
            });
            match opened {
                Ok(groups) => hardware = groups,
                Err(e) if no_such_event(&e) => unsupported = Some(unsupported_reason(&e)),
                Err(e) => return Err(e),
            }
        }
        for g in software.iter_mut().chain(hardware.iter_mut()) {
            g.group.enable()?;
        }
        Ok(Open {
            software,
            hardware,
            unsupported,
            _reserved: reserved,
        })
    }

    /// Stops the counters and reads them, summed over the CPUs.
    pub fn finish(mut self) -> io::Result<Counters> {
        let software = read_all(&mut self.software)?;
        let hardware = read_all(&mut self.hardware)?;
        Ok(Raw { software, hardware }.counters(self.unsupported))
    }
}

/// What one set of groups counted: per event, the sum over CPUs of each CPU's count scaled
/// by that CPU's enabled over running time; with the sums of those times.
#[derive(Debug, Clone, Default, PartialEq)]
struct Summed {
    values: Vec<Option<f64>>,
    enabled_ns: u64,
    running_ns: u64,
    /// Some CPU's group never counted while the run was there (its events are unknown).
    starved: bool,
}

/// Reads every group (disabled first, so the counts no longer move) and sums them.
fn read_all(groups: &mut [CpuGroup]) -> io::Result<Summed> {
    let mut reads = Vec::with_capacity(groups.len());
    for g in groups.iter_mut() {
        g.group.disable()?;
        let data = g.group.read()?;
        let enabled = data.time_enabled().map_or(0, |d| d.as_nanos() as u64);
        let running = data.time_running().map_or(0, |d| d.as_nanos() as u64);
        let values = g
            .members
            .iter()
            .map(|m| m.as_ref().and_then(|c| data.get(c)).map(|e| e.value()))
            .collect();
        reads.push(CpuRead {
            values,
            enabled,
            running,
        });
    }
    Ok(sum(&reads))
}

/// One CPU's group as read.
#[derive(Debug, Clone)]
struct CpuRead {
    values: Vec<Option<u64>>,
    enabled: u64,
    running: u64,
}

/// Sums the CPUs' reads, each scaled up by enabled / running where the group shared the
/// PMU (the estimate `perf stat` prints). A CPU whose group never counted while the run
/// was there (running 0, enabled not) makes the event unknown: nothing can be scaled
/// from nothing.
fn sum(reads: &[CpuRead]) -> Summed {
    let width = reads.iter().map(|r| r.values.len()).max().unwrap_or(0);
    let mut out = Summed {
        values: vec![Some(0.0); width],
        ..Summed::default()
    };
    for r in reads {
        out.enabled_ns += r.enabled;
        out.running_ns += r.running;
        out.starved |= r.enabled > 0 && r.running == 0;
        for (i, slot) in out.values.iter_mut().enumerate() {
            let v = r.values.get(i).copied().flatten();
            *slot = match (*slot, v) {
                (Some(acc), Some(_)) if r.enabled == 0 => Some(acc),
                (Some(_), Some(_)) if r.running == 0 => None,
                (Some(acc), Some(v)) => Some(acc + v as f64 * r.enabled as f64 / r.running as f64),
                _ => None,
            };
        }
    }
    out
}

/// Software and hardware sums of one run.
struct Raw {
    software: Summed,
    hardware: Summed,
}

impl Raw {
    fn counters(self, unsupported: Option<String>) -> Counters {
        let sw = |i: usize| self.software.values.get(i).copied().flatten();
        let hw = |i: usize| {
            self.hardware
                .values
                .get(i)
                .copied()
                .flatten()
                .map(|v| v.round() as u64)
        };
        // Opened, but not counted on some CPU the run was on (another user held the PMU
        // all that time there): nothing to scale from, so said rather than guessed.
        let starved = unsupported.is_none() && self.hardware.starved;
        Counters {
            task_clock_ms: sw(0).unwrap_or(0.0) / 1e6,
            context_switches: sw(1).unwrap_or(0.0).round() as u64,
            cpu_migrations: sw(2).unwrap_or(0.0).round() as u64,
            page_faults: sw(3).unwrap_or(0.0).round() as u64,
            instructions: hw(0),
            cycles: hw(1),
            branch_misses: hw(2),
            cache_misses: hw(3),
            hardware_running: (self.hardware.enabled_ns > 0)
                .then(|| self.hardware.running_ns as f64 / self.hardware.enabled_ns as f64),
            hardware_unsupported: unsupported.or_else(|| {
                starved.then(|| {
                    "not counted: other counters held the PMU all the time the run was on \
                     one of its CPUs"
                        .to_owned()
                })
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(values: &[Option<u64>], enabled: u64, running: u64) -> CpuRead {
        CpuRead {
            values: values.to_vec(),
            enabled,
            running,
        }
    }

    #[test]
    fn cpus_add_up_each_scaled_by_its_own_share() {
        // CPU 0 counted all the time: 1000 as is. CPU 1 counted a quarter of the time its
        // group was enabled: 250 seen stands for 1000. Worked by hand: 1000 + 250 × 4.
        let s = sum(&[
            read(&[Some(1000), Some(10)], 8_000, 8_000),
            read(&[Some(250), Some(3)], 4_000, 1_000),
        ]);
        assert_eq!(s.values, vec![Some(2000.0), Some(22.0)]);
        assert_eq!((s.enabled_ns, s.running_ns), (12_000, 9_000));
    }

    #[test]
    fn a_cpu_the_run_never_used_adds_nothing_and_one_never_counted_is_unknown() {
        let unused = sum(&[read(&[Some(7)], 5_000, 5_000), read(&[Some(0)], 0, 0)]);
        assert_eq!(unused.values, vec![Some(7.0)]);
        assert!(!unused.starved);
        let starved = sum(&[read(&[Some(7)], 5_000, 5_000), read(&[Some(0)], 3_000, 0)]);
        assert_eq!(starved.values, vec![None]);
        assert!(starved.starved);
        let missing = sum(&[read(&[None], 5_000, 5_000)]);
        assert_eq!(missing.values, vec![None]);
    }

    #[test]
    fn hardware_left_out_says_why_and_a_busy_pmu_says_so() {
        let raw = |hw: Summed| Raw {
            software: Summed {
                values: vec![Some(2.5e6), Some(3.0), Some(1.0), Some(90.0)],
                enabled_ns: 1,
                running_ns: 1,
                starved: false,
            },
            hardware: hw,
        };
        let none = raw(Summed::default()).counters(Some("no hardware PMU".into()));
        assert_eq!(none.task_clock_ms, 2.5);
        assert_eq!((none.context_switches, none.page_faults), (3, 90));
        assert_eq!(none.cycles, None);
        assert_eq!(none.hardware_running, None);
        assert_eq!(
            none.hardware_unsupported.as_deref(),
            Some("no hardware PMU")
        );
        // Counted on one CPU, starved on another: unknown, and said why.
        let busy = raw(Summed {
            values: vec![None; 4],
            enabled_ns: 10,
            running_ns: 4,
            starved: true,
        })
        .counters(None);
        assert_eq!(busy.cycles, None);
        assert_eq!(busy.hardware_running, Some(0.4));
        assert!(busy.hardware_unsupported.unwrap().contains("held the PMU"));
    }

    #[test]
    fn counters_hold_no_more_descriptors_than_their_budget() {
        static HELD_HERE: AtomicUsize = AtomicUsize::new(0);
        let a = Reserved::take(&HELD_HERE, 60, 100).unwrap();
        // 60 + 50 > 100: refused, saying how many are held.
        assert_eq!(Reserved::take(&HELD_HERE, 50, 100).unwrap_err(), 60);
        let b = Reserved::take(&HELD_HERE, 40, 100).unwrap();
        assert_eq!(HELD_HERE.load(Ordering::Acquire), 100);
        // Given back when dropped: room for the 50 again.
        drop(a);
        let c = Reserved::take(&HELD_HERE, 50, 100).unwrap();
        drop((b, c));
        assert_eq!(HELD_HERE.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_refused_cycles_counter_is_said_plainly() {
        let r = unsupported_reason(&io::Error::from_raw_os_error(libc::ENOENT));
        assert!(r.starts_with("no hardware PMU"), "{r}");
        let r = unsupported_reason(&io::Error::from_raw_os_error(libc::EACCES));
        assert!(r.contains("refuses"), "{r}");
    }
}
