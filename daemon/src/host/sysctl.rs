//! Sysctl keys: parsing the dotted and slash forms sysctl(8) accepts, and mapping a key to
//! its file under `/proc/sys` without any way to leave that directory.
//!
//! The `sysctl` crate reads `/proc/sys` at a fixed location, which does not fit the
//! host-root design (tests run against a fake root), so keys map to paths here and the
//! host layer's one read and one write path do the I/O.

use std::fmt;

/// A validated sysctl key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SysctlKey {
    components: Vec<String>,
}

impl SysctlKey {
    /// Parses `vm.swappiness` or `vm/swappiness`. As in sysctl(8), the slash form keeps
    /// dots inside components (`net/ipv4/conf/eth0.100/rp_filter`).
    pub fn parse(key: &str) -> Result<Self, String> {
        let trimmed = key.trim();
        let components: Vec<String> = if trimmed.contains('/') {
            trimmed
                .trim_start_matches('/')
                .split('/')
                .map(str::to_owned)
                .collect()
        } else {
            trimmed.split('.').map(str::to_owned).collect()
        };
        if trimmed.is_empty() {
            return Err("empty sysctl key".to_owned());
        }
        for c in &components {
            let ok = !c.is_empty()
                && c != "."
                && c != ".."
                && c.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "_-.:@+".contains(ch));
            if !ok {
                return Err(format!(
                    "sysctl key {key:?} is not valid: component {c:?} would leave /proc/sys or has characters a key cannot have"
                ));
            }
        }
        Ok(Self { components })
    }

    /// The key in dotted form (`net.ipv4.tcp_rmem`); components holding dots keep the slash
    /// form so the name stays unambiguous (a single such component with its leading slash,
    /// which alone says "slash form").
    pub fn name(&self) -> String {
        match self.components.as_slice() {
            [only] if only.contains('.') => format!("/{only}"),
            all if all.iter().any(|c| c.contains('.')) => all.join("/"),
            all => all.join("."),
        }
    }

    /// The absolute kernel path, `/proc/sys/...`.
    pub fn path(&self) -> String {
        format!("/proc/sys/{}", self.components.join("/"))
    }

    /// Whether the dotted name starts with `prefix` (`vm.`, `kernel.sched_`,
    /// `fs.file-max`). A prefix ending in `.` or `_` matches a family; any other prefix
    /// must match the whole key.
    pub fn matches_prefix(&self, prefix: &str) -> bool {
        let name = self.components.join(".");
        if prefix.ends_with('.') || prefix.ends_with('_') {
            name.starts_with(prefix)
        } else {
            name == prefix
        }
    }
}

impl fmt::Display for SysctlKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Keys always refused, whatever the configuration says: those that name a program or
/// path for the kernel to run (writing them is a root shell for whoever controls the
/// value), and one-way switches the kernel never lets back (a journal could not revert
/// them).
pub const ALWAYS_REFUSED: &[&str] = &[
    "kernel.core_pattern",
    "kernel.modprobe",
    "kernel.hotplug",
    "kernel.poweroff_cmd",
    "kernel.usermodehelper.",
    "fs.binfmt_misc.",
    "kernel.modules_disabled",
    "kernel.kexec_load_disabled",
    "kernel.unprivileged_bpf_disabled",
    "kernel.yama.ptrace_scope",
];

/// The default allowlist of key prefixes (config `tuning.sysctl_allow` replaces it).
pub const DEFAULT_ALLOW: &[&str] = &[
    "vm.",
    "net.core.",
    "net.ipv4.",
    "net.ipv6.",
    "net.netfilter.nf_conntrack_max",
    "net.unix.max_dgram_qlen",
    "fs.file-max",
    "fs.nr_open",
    "fs.inotify.",
    "fs.aio-max-nr",
    "kernel.sched_",
    "kernel.numa_balancing",
    "kernel.nmi_watchdog",
    "kernel.watchdog",
    "kernel.perf_event_",
    "kernel.perf_cpu_time_max_percent",
    "kernel.randomize_va_space",
    "kernel.pid_max",
    "kernel.threads-max",
    "kernel.timer_migration",
    "kernel.hung_task_timeout_secs",
    "kernel.split_lock_mitigate",
    "kernel.sem",
    "kernel.shmmax",
    "kernel.shmall",
    "kernel.msgmax",
    "kernel.msgmnb",
];

/// Why a key may not be written, or `None` if it may.
pub fn refusal(key: &SysctlKey, allow: &[String]) -> Option<String> {
    if let Some(p) = ALWAYS_REFUSED.iter().find(|p| key.matches_prefix(p)) {
        return Some(format!(
            "sysctl key {key} is always refused (matches {p}): it names a program for the kernel to run, or is a switch the kernel never lets back"
        ));
    }
    if !allow.iter().any(|p| key.matches_prefix(p)) {
        return Some(format!(
            "sysctl key {key} is not in the allowlist (tuning.sysctl_allow)"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_paths_inside_proc_sys() {
        let table: &[(&str, Option<(&str, &str)>)] = &[
            (
                "vm.swappiness",
                Some(("vm.swappiness", "/proc/sys/vm/swappiness")),
            ),
            (
                "vm/swappiness",
                Some(("vm.swappiness", "/proc/sys/vm/swappiness")),
            ),
            (
                "/vm/swappiness",
                Some(("vm.swappiness", "/proc/sys/vm/swappiness")),
            ),
            (
                "net/ipv4/conf/eth0.100/rp_filter",
                Some((
                    "net/ipv4/conf/eth0.100/rp_filter",
                    "/proc/sys/net/ipv4/conf/eth0.100/rp_filter",
                )),
            ),
            (
                "fs.file-max",
                Some(("fs.file-max", "/proc/sys/fs/file-max")),
            ),
            // One component holding dots: its name keeps the slash, or it would read back
            // as three components (found by the sysctl_key fuzz target).
            ("/pv.smc", Some(("/pv.smc", "/proc/sys/pv.smc"))),
            ("vm..swappiness", None),
            ("vm/../../etc/shadow", None),
            ("../etc/passwd", None),
            ("vm/./swappiness", None),
            ("vm.swap piness", None),
            ("", None),
            ("vm/", None),
        ];
        for (input, want) in table {
            let got = SysctlKey::parse(input).ok().map(|k| (k.name(), k.path()));
            let want = want.map(|(n, p)| (n.to_owned(), p.to_owned()));
            assert_eq!(got, want, "{input:?}");
            if let Some((name, path)) = got {
                let again = SysctlKey::parse(&name).unwrap();
                assert_eq!(
                    again.path(),
                    path,
                    "{input:?}: its name {name:?} is another key"
                );
            }
        }
    }

    #[test]
    fn dangerous_keys_are_refused_even_if_allowed() {
        let allow_all = vec!["kernel.".to_owned(), "fs.".to_owned(), "vm.".to_owned()];
        for key in [
            "kernel.core_pattern",
            "kernel/modprobe",
            "kernel.poweroff_cmd",
            "fs.binfmt_misc.register",
            "kernel.usermodehelper.bset",
            "kernel.hotplug",
        ] {
            let k = SysctlKey::parse(key).unwrap();
            let why = refusal(&k, &allow_all).unwrap_or_else(|| panic!("{key} allowed"));
            assert!(why.contains("always refused"), "{why}");
        }
        assert_eq!(
            refusal(&SysctlKey::parse("vm.swappiness").unwrap(), &allow_all),
            None
        );
    }

    #[test]
    fn allowlist_prefixes() {
        let allow: Vec<String> = DEFAULT_ALLOW.iter().map(|s| s.to_string()).collect();
        for (key, ok) in [
            ("vm.swappiness", true),
            ("net.core.somaxconn", true),
            ("kernel.sched_migration_cost_ns", true),
            ("fs.file-max", true),
            ("fs.file-maxi", false),
            ("kernel.numa_balancing", true),
            ("kernel.domainname", false),
            ("dev.raid.speed_limit_min", false),
        ] {
            let k = SysctlKey::parse(key).unwrap();
            assert_eq!(refusal(&k, &allow).is_none(), ok, "{key}");
        }
    }
}
