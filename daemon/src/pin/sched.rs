//! A task's placement attributes, read and set by system call: CPU affinity, scheduling
//! policy and priority, nice value, I/O priority. Each attribute has one canonical text,
//! the form the pin journal stores and compares (`0-1`, `fifo:10`, `-5`, `be:4`).

use std::collections::BTreeSet;
use std::io;

use nix::sched::{sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

use crate::host::format::{format_cpu_list, parse_cpu_list};
use crate::host::tasks::{mask_of, set_of};

/// One placement attribute of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Attr {
    /// The CPUs it may run on (a CPU list).
    Affinity,
    /// Scheduling policy and real-time priority (`other`, `batch`, `idle`, `fifo:N`, `rr:N`).
    Sched,
    /// Nice value (-20 to 19).
    Nice,
    /// I/O priority (`none`, `rt:N`, `be:N`, `idle`).
    Ioprio,
}

impl Attr {
    /// Every attribute, in the order a placement sets them.
    pub const ALL: [Attr; 4] = [Attr::Affinity, Attr::Sched, Attr::Nice, Attr::Ioprio];

    /// The stored and displayed name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Attr::Affinity => "cpus",
            Attr::Sched => "policy",
            Attr::Nice => "nice",
            Attr::Ioprio => "ioprio",
        }
    }

    /// The attribute of a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

impl std::fmt::Display for Attr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scheduling policy with its real-time priority (0 for the others).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sched {
    /// `SCHED_*`.
    pub policy: i32,
    /// 1-99 for `fifo` and `rr`, 0 otherwise.
    pub priority: i32,
}

const POLICIES: [(&str, i32); 5] = [
    ("other", libc::SCHED_OTHER),
    ("batch", libc::SCHED_BATCH),
    ("idle", libc::SCHED_IDLE),
    ("fifo", libc::SCHED_FIFO),
    ("rr", libc::SCHED_RR),
];

/// Whether a policy takes a real-time priority.
fn realtime(policy: i32) -> bool {
    policy == libc::SCHED_FIFO || policy == libc::SCHED_RR
}

impl Sched {
    /// From a policy name and an optional priority, as a rule gives them.
    pub fn new(name: &str, priority: Option<i32>) -> Result<Self, String> {
        let names = || {
            POLICIES
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let policy = POLICIES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| *p)
            .ok_or_else(|| format!("unknown policy {name:?} (one of {})", names()))?;
        match (realtime(policy), priority) {
            (true, Some(p)) if (1..=99).contains(&p) => Ok(Self {
                policy,
                priority: p,
            }),
            (true, Some(p)) => Err(format!("priority {p} is out of range for {name} (1-99)")),
            (true, None) => Err(format!("policy {name:?} needs a priority (1-99)")),
            (false, Some(p)) if p != 0 => Err(format!(
                "policy {name:?} takes no priority (only fifo and rr do); got {p}"
            )),
            (false, _) => Ok(Self {
                policy,
                priority: 0,
            }),
        }
    }

    /// The canonical text: `other`, `fifo:10`.
    pub fn text(self) -> String {
        let name = POLICIES
            .iter()
            .find(|(_, p)| *p == self.policy)
            .map_or("unknown", |(n, _)| *n);
        if realtime(self.policy) {
            format!("{name}:{}", self.priority)
        } else {
            name.to_owned()
        }
    }

    /// From the canonical text.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            Some((name, p)) => {
                let p = p.parse().map_err(|_| format!("bad priority in {text:?}"))?;
                Self::new(name, Some(p))
            }
            None => Self::new(text, None),
        }
    }
}

/// An I/O priority: class and level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ioprio {
    /// `IOPRIO_CLASS_*`: 0 none, 1 rt, 2 be, 3 idle.
    pub class: u16,
    /// 0-7 for rt and be.
    pub level: u16,
}

const IOPRIO_CLASS_SHIFT: u16 = 13;
const IOPRIO_WHO_PROCESS: libc::c_int = 1;
const IOPRIO_CLASSES: [&str; 4] = ["none", "rt", "be", "idle"];

impl Ioprio {
    /// From the canonical text: `none`, `idle`, `rt:N`, `be:N` (N 0-7, 0 the highest).
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "bad I/O priority {text:?}: one of \"none\", \"idle\", \"be:N\" or \"rt:N\" (N 0-7)"
            )
        };
        let (name, level) = match text.split_once(':') {
            Some((n, l)) => (n, Some(l.parse::<u16>().map_err(|_| bad())?)),
            None => (text, None),
        };
        let class = IOPRIO_CLASSES
            .iter()
            .position(|c| *c == name)
            .ok_or_else(bad)? as u16;
        match (class, level) {
            (1 | 2, Some(l)) if l <= 7 => Ok(Self { class, level: l }),
            (0 | 3, None) => Ok(Self { class, level: 0 }),
            _ => Err(bad()),
        }
    }

    /// The canonical text.
    pub fn text(self) -> String {
        let name = IOPRIO_CLASSES
            .get(self.class as usize)
            .copied()
            .unwrap_or("unknown");
        match self.class {
            1 | 2 => format!("{name}:{}", self.level),
            _ => name.to_owned(),
        }
    }

    fn raw(self) -> libc::c_int {
        libc::c_int::from((self.class << IOPRIO_CLASS_SHIFT) | self.level)
    }

    fn from_raw(raw: libc::c_int) -> Self {
        let raw = raw as u16;
        Self {
            class: raw >> IOPRIO_CLASS_SHIFT,
            level: raw & ((1 << IOPRIO_CLASS_SHIFT) - 1),
        }
    }
}

/// A placement value in its canonical text, checked: what a rule or the journal holds.
pub fn canonical(attr: Attr, text: &str) -> Result<String, String> {
    match attr {
        Attr::Affinity => parse_cpu_list(text).map(|s| format_cpu_list(&s)),
        Attr::Sched => Sched::parse(text).map(Sched::text),
        Attr::Nice => match text.parse::<i32>() {
            Ok(n) if (-20..=19).contains(&n) => Ok(n.to_string()),
            _ => Err(format!("bad nice value {text:?} (-20 to 19)")),
        },
        Attr::Ioprio => Ioprio::parse(text).map(Ioprio::text),
    }
}

/// Thread `tid`'s attribute, in its canonical text.
pub fn get(tid: i32, attr: Attr) -> io::Result<String> {
    match attr {
        Attr::Affinity => {
            let mask = sched_getaffinity(Pid::from_raw(tid))?;
            Ok(format_cpu_list(&set_of(&mask)))
        }
        Attr::Sched => {
            // SAFETY: plain system calls on a thread id; `param` is a valid out-pointer.
            let policy = unsafe { libc::sched_getscheduler(tid) };
            if policy < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut param = libc::sched_param { sched_priority: 0 };
            // SAFETY: as above.
            if unsafe { libc::sched_getparam(tid, &mut param) } < 0 {
                return Err(io::Error::last_os_error());
            }
            let policy = policy & !libc::SCHED_RESET_ON_FORK;
            Ok(Sched {
                policy,
                priority: if realtime(policy) {
                    param.sched_priority
                } else {
                    0
                },
            }
            .text())
        }
        Attr::Nice => {
            nix::errno::Errno::clear();
            // SAFETY: getpriority has no memory arguments; -1 is a valid value, so errno
            // (cleared above) tells an error apart.
            let n = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
            if n == -1 && nix::errno::Errno::last_raw() != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(n.to_string())
        }
        Attr::Ioprio => {
            // SAFETY: ioprio_get takes two integers.
            let raw = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid) };
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Ioprio::from_raw(raw as libc::c_int).text())
        }
    }
}

/// Sets thread `tid`'s attribute to `value` (canonical text).
pub fn set(tid: i32, attr: Attr, value: &str) -> io::Result<()> {
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
    match attr {
        Attr::Affinity => {
            let cpus: BTreeSet<u32> = parse_cpu_list(value).map_err(invalid)?;
            let mask = mask_of(&cpus).ok_or_else(|| invalid(format!("CPU list {value:?}")))?;
            sched_setaffinity(Pid::from_raw(tid), &mask)?;
        }
        Attr::Sched => {
            let s = Sched::parse(value).map_err(invalid)?;
            let param = libc::sched_param {
                sched_priority: s.priority,
            };
            // SAFETY: `param` is valid for the call.
            if unsafe { libc::sched_setscheduler(tid, s.policy, &param) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Attr::Nice => {
            let n: i32 = value
                .parse()
                .map_err(|_| invalid(format!("nice {value:?}")))?;
            // SAFETY: no memory arguments.
            if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, n) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Attr::Ioprio => {
            let p = Ioprio::parse(value).map_err(invalid)?;
            // SAFETY: ioprio_set takes three integers.
            let r =
                unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, tid, p.raw()) };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_need_exactly_the_priority_they_take() {
        assert_eq!(Sched::new("fifo", Some(10)).unwrap().text(), "fifo:10");
        assert_eq!(Sched::new("batch", None).unwrap().text(), "batch");
        assert!(
            Sched::new("fifo", None)
                .unwrap_err()
                .contains("needs a priority")
        );
        assert!(Sched::new("rr", Some(100)).unwrap_err().contains("1-99"));
        assert!(
            Sched::new("idle", Some(3))
                .unwrap_err()
                .contains("takes no priority")
        );
        assert!(
            Sched::new("deadline", None)
                .unwrap_err()
                .contains("unknown policy")
        );
        assert_eq!(Sched::parse("rr:5").unwrap().text(), "rr:5");
    }

    #[test]
    fn io_priorities_round_trip_through_the_kernels_encoding() {
        for text in ["none", "idle", "be:0", "be:7", "rt:3"] {
            let p = Ioprio::parse(text).unwrap();
            assert_eq!(Ioprio::from_raw(p.raw()).text(), text);
        }
        // The kernel's encoding (include/uapi/linux/ioprio.h): class << 13 | level.
        assert_eq!(Ioprio::parse("be:4").unwrap().raw(), (2 << 13) | 4);
        for bad in ["be", "be:8", "rt:-1", "idle:1", "fast", ""] {
            assert!(Ioprio::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn canonical_values_are_checked() {
        assert_eq!(canonical(Attr::Affinity, "3,1-2").unwrap(), "1-3");
        assert_eq!(canonical(Attr::Nice, "-05").unwrap(), "-5");
        assert!(canonical(Attr::Nice, "20").is_err());
        assert!(canonical(Attr::Sched, "fifo").is_err());
    }

    /// Every attribute of a real thread (a child of this test, so nothing else is touched):
    /// set, read back, and set back.
    #[test]
    fn a_threads_attributes_are_set_and_read_back() {
        if !crate::testing::root_or_skip("a_threads_attributes_are_set_and_read_back") {
            return;
        }
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let tid = child.id() as i32;
        let cases = [
            (Attr::Affinity, "0"),
            (Attr::Sched, "fifo:7"),
            (Attr::Sched, "batch"),
            (Attr::Nice, "-3"),
            (Attr::Ioprio, "idle"),
            (Attr::Ioprio, "rt:2"),
        ];
        for (attr, value) in cases {
            let before = get(tid, attr).unwrap();
            set(tid, attr, value).unwrap();
            assert_eq!(get(tid, attr).unwrap(), value, "{attr}");
            set(tid, attr, &before).unwrap();
            assert_eq!(get(tid, attr).unwrap(), before, "{attr}");
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
