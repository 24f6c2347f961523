//! Tasks (threads) of the host as `/proc` lists them: their ids, start times and kind, and
//! CPU masks as sets. Shared by the shield and pinning.

use std::collections::BTreeSet;

use nix::sched::CpuSet;

use super::Host;

/// Fields of `/proc/<tid>/stat` after the command name: (flags, start time).
pub fn stat_fields(text: &str) -> Option<(u64, u64)> {
    // From just after the last `)` (one byte, so always a character boundary): the space
    // that follows it is whitespace the split skips, and a text that ends there has none.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(6)?.parse().ok()?, f.get(19)?.parse().ok()?))
}

/// The flag of a kernel thread in `/proc/<tid>/stat`.
pub const PF_KTHREAD: u64 = 0x0020_0000;

/// The flag of a thread whose CPU mask userspace may not change (`/proc/<tid>/stat`):
/// per-CPU kernel threads, among others.
pub const PF_NO_SETAFFINITY: u64 = 0x0400_0000;

/// One thread of the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thread {
    /// Its process (thread group) id.
    pub pid: i32,
    /// Its thread id.
    pub tid: i32,
    /// Whether it is a kernel thread.
    pub kernel: bool,
    /// Whether its CPU mask is the kernel's alone (a per-CPU kernel thread).
    pub fixed: bool,
    /// Its start time (clock ticks since boot): with the id, who it is.
    pub start: u64,
}

/// Every thread in `/proc` whose stat could be read.
pub fn threads(host: &Host) -> Vec<Thread> {
    let mut out = Vec::new();
    for pid in host
        .list("/proc")
        .iter()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        for tid in host
            .list(&format!("/proc/{pid}/task"))
            .iter()
            .filter_map(|t| t.parse::<i32>().ok())
        {
            let stat = host.read(&format!("/proc/{pid}/task/{tid}/stat")).ok();
            if let Some((flags, start)) = stat.and_then(|t| stat_fields(&t)) {
                out.push(Thread {
                    pid,
                    tid,
                    kernel: flags & PF_KTHREAD != 0,
                    fixed: flags & PF_NO_SETAFFINITY != 0,
                    start,
                });
            }
        }
    }
    out
}

/// A set of CPUs as the mask `sched_setaffinity` takes; `None` past the mask's size.
pub fn mask_of(set: &BTreeSet<u32>) -> Option<CpuSet> {
    let mut m = CpuSet::new();
    for &c in set {
        m.set(c as usize).ok()?;
    }
    Some(m)
}

/// The CPUs of an affinity mask.
pub fn set_of(m: &CpuSet) -> BTreeSet<u32> {
    (0..CpuSet::count())
        .filter(|&c| m.is_set(c).unwrap_or(false))
        .map(|c| c as u32)
        .collect()
}

/// Clock ticks since boot, the unit of a task's start time in `/proc/<pid>/stat`.
pub fn uptime_ticks(host: &Host) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    host.read("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, |s| (s * hz) as u64)
}

/// Whether thread `tid` is still the one that started at `start`.
pub fn same_thread(host: &Host, tid: i32, start: i64) -> bool {
    host.read(&format!("/proc/{tid}/stat"))
        .ok()
        .and_then(|t| stat_fields(&t))
        .is_some_and(|(_, s)| s as i64 == start)
}
