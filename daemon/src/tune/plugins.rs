//! Plugins turn a profile's settings into concrete kernel knobs on this host: which files,
//! what they hold now, and what to write. Each plugin reads current values through the
//! host layer; applying and verifying one knob is the same for every plugin (a file, a
//! value kind, a value), so [`super`] does it once.
//!
//! Limitations: block devices and cpufreq policies are those present at plan time; a
//! device that appears later is not tuned until the next apply.

use std::collections::BTreeSet;

use crate::host::Host;
use crate::host::format::{
    format_cpu_list, format_cpu_mask, normalize_words, parse_cpu_list, parse_cpu_mask,
    parse_selector,
};
use crate::host::sysctl::refusal;

use super::profile::Setting;

/// How a knob's file content compares and is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Words, compared with whitespace normalized (numbers, vectors, names).
    Text,
    /// `a [b] c`: the bracketed option is the value; writing the option name selects it.
    Selector,
    /// A CPU list (`0-3,8`), compared as a set.
    CpuList,
    /// A hex CPU mask, compared as a set; kept as a CPU list, written as a mask.
    CpuMask,
    /// GRUB's drop-in of kernel arguments (`super::boot`): the arguments it appends.
    GrubDropin,
    /// kernel-install's `/etc/kernel/cmdline` (`super::boot`): the command line.
    KernelCmdline,
    /// One kernel argument in the BLS entries grubby edits (`super::boot`).
    GrubbyArg,
    /// A systemd unit's `AllowedCPUs=` (`unit:NAME/AllowedCPUs`), through D-Bus: a CPU
    /// list, empty for no restriction.
    UnitCpus,
}

impl Kind {
    /// The canonical value of a file's content.
    pub fn read(self, raw: &str) -> Result<String, String> {
        match self {
            Kind::Text => Ok(normalize_words(raw)),
            Kind::Selector => {
                let (options, selected) = parse_selector(raw);
                Ok(selected.unwrap_or_else(|| options.join(" ")))
            }
            Kind::CpuList | Kind::UnitCpus => parse_cpu_list(raw).map(|s| format_cpu_list(&s)),
            Kind::CpuMask => parse_cpu_mask(raw).map(|s| format_cpu_list(&s)),
            Kind::GrubDropin => Ok(super::boot::dropin_value(Some(raw))),
            Kind::KernelCmdline | Kind::GrubbyArg => Ok(normalize_words(raw)),
        }
    }

    /// The boot-loader kinds: files read and written by `super::boot` (created and
    /// removed, the boot loader's configuration made again), whose journal rows outlive a
    /// boot as the files do.
    pub const BOOT: [Kind; 3] = [Kind::GrubDropin, Kind::KernelCmdline, Kind::GrubbyArg];

    /// Whether this is a boot-loader kind.
    pub fn is_boot(self) -> bool {
        Self::BOOT.contains(&self)
    }

    /// What to write to make the file hold the canonical value `v`.
    pub fn to_write(self, v: &str) -> String {
        match self {
            Kind::CpuMask => parse_cpu_list(v)
                .map(|s| format_cpu_mask(&s))
                .unwrap_or_else(|_| v.to_owned()),
            Kind::Text
            | Kind::Selector
            | Kind::CpuList
            | Kind::GrubDropin
            | Kind::KernelCmdline
            | Kind::GrubbyArg
            | Kind::UnitCpus => v.to_owned(),
        }
    }

    /// Stable name for the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Selector => "selector",
            Kind::CpuList => "cpulist",
            Kind::CpuMask => "cpumask",
            Kind::GrubDropin => "grub-dropin",
            Kind::KernelCmdline => "kernel-cmdline",
            Kind::GrubbyArg => "grubby-arg",
            Kind::UnitCpus => "unit-cpus",
        }
    }

    /// From the journal's name.
    pub fn parse_name(s: &str) -> Option<Self> {
        Some(match s {
            "text" => Kind::Text,
            "selector" => Kind::Selector,
            "cpulist" => Kind::CpuList,
            "cpumask" => Kind::CpuMask,
            "grub-dropin" => Kind::GrubDropin,
            "kernel-cmdline" => Kind::KernelCmdline,
            "grubby-arg" => Kind::GrubbyArg,
            "unit-cpus" => Kind::UnitCpus,
            _ => return None,
        })
    }
}

/// What a plugin wants for one knob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// Write this canonical value.
    Value(String),
    /// The knob is absent or cannot take the value here; why.
    Unsupported(String),
    /// Policy forbids it; why.
    Refused(String),
}

/// One knob of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// Display name (`sysctl vm.swappiness`, `block loop0 scheduler`).
    pub knob: String,
    /// Absolute kernel path.
    pub path: String,
    /// Value kind.
    pub kind: Kind,
    /// Canonical current value, if readable.
    pub current: Option<String>,
    /// What is wanted.
    pub want: Want,
    /// Whether a refused write is reported rather than fatal (IRQs the kernel will not
    /// move).
    pub soft: bool,
}

impl Planned {
    fn new(knob: String, path: String, kind: Kind, host: &Host) -> Self {
        let current = host.read(&path).ok().and_then(|raw| kind.read(&raw).ok());
        Self {
            knob,
            path,
            kind,
            current,
            want: Want::Unsupported(String::new()),
            soft: false,
        }
    }

    fn want(mut self, want: Want) -> Self {
        self.want = match (&self.current, want) {
            (None, Want::Value(_)) => {
                Want::Unsupported(format!("{} does not exist on this host", self.path))
            }
            (_, w) => w,
        };
        self
    }
}

const CPUFREQ: &str = "/sys/devices/system/cpu/cpufreq";
const THP: &str = "/sys/kernel/mm/transparent_hugepage";

/// The knobs one setting means on this host.
pub fn expand(setting: &Setting, host: &Host, allow: &[String]) -> Vec<Planned> {
    match setting {
        Setting::Sysctl { key, value } => {
            let p = Planned::new(format!("sysctl {key}"), key.path(), Kind::Text, host);
            vec![match refusal(key, allow) {
                Some(why) => p.want(Want::Refused(why)),
                None => p.want(Want::Value(normalize_words(value))),
            }]
        }
        Setting::Governor(g) => {
            per_policy(host, "cpu governor", "scaling_governor", |host, policy| {
                let avail = host
                    .read(&format!("{CPUFREQ}/{policy}/scaling_available_governors"))
                    .unwrap_or_default();
                if avail.split_whitespace().any(|a| a == g) {
                    Want::Value(g.clone())
                } else {
                    Want::Unsupported(format!(
                        "governor {g:?} not offered by {policy} (offers: {})",
                        avail.trim()
                    ))
                }
            })
        }
        Setting::Epp(e) => per_policy(
            host,
            "cpu energy_performance_preference",
            "energy_performance_preference",
            |_, _| Want::Value(e.clone()),
        ),
        Setting::MinFreqMax => per_policy(
            host,
            "cpu min_freq",
            "scaling_min_freq",
            |host, policy| match host.read(&format!("{CPUFREQ}/{policy}/cpuinfo_max_freq")) {
                Ok(max) => Want::Value(normalize_words(&max)),
                Err(e) => Want::Unsupported(e.to_string()),
            },
        ),
        Setting::Boost(on) => {
            let boost = format!("{CPUFREQ}/boost");
            let no_turbo = "/sys/devices/system/cpu/intel_pstate/no_turbo";
            if host.exists(&boost) {
                let p = Planned::new("cpu boost".into(), boost, Kind::Text, host);
                vec![p.want(Want::Value(if *on { "1" } else { "0" }.into()))]
            } else if host.exists(no_turbo) {
                // intel_pstate says it the other way round: no_turbo=1 means boost off.
                let p = Planned::new(
                    "cpu boost (intel_pstate no_turbo)".into(),
                    no_turbo.into(),
                    Kind::Text,
                    host,
                );
                vec![p.want(Want::Value(if *on { "0" } else { "1" }.into()))]
            } else {
                vec![unsupported(
                    "cpu boost",
                    &boost,
                    "no cpufreq boost control on this host (neither cpufreq/boost nor intel_pstate/no_turbo)",
                )]
            }
        }
        Setting::Smt(v) => {
            let path = "/sys/devices/system/cpu/smt/control";
            let p = Planned::new("cpu smt".into(), path.into(), Kind::Text, host);
            match p.current.as_deref() {
                Some("on" | "off") => vec![p.want(Want::Value(v.clone()))],
                Some(state) => {
                    let state = state.to_owned();
                    vec![p.want(Want::Unsupported(format!(
                        "SMT control is {state:?} on this host"
                    )))]
                }
                None => vec![p.want(Want::Value(v.clone()))],
            }
        }
        Setting::Scheduler { glob, prefs } => {
            per_device(host, glob, "scheduler", Kind::Selector, |host, path| {
                let (options, _) = parse_selector(&host.read(path).unwrap_or_default());
                match prefs.iter().find(|p| options.contains(p)) {
                    Some(p) => Want::Value(p.clone()),
                    None => Want::Unsupported(format!(
                        "offers none of {} (has: {})",
                        prefs.join(", "),
                        options.join(" ")
                    )),
                }
            })
        }
        Setting::ReadAhead { glob, kb } => {
            per_device(host, glob, "read_ahead_kb", Kind::Text, |_, _| {
                Want::Value(kb.to_string())
            })
        }
        Setting::NrRequests { glob, n } => {
            per_device(host, glob, "nr_requests", Kind::Text, |_, _| {
                Want::Value(n.to_string())
            })
        }
        Setting::Thp(v) => vec![selector_knob(
            host,
            "vm transparent_hugepage",
            &format!("{THP}/enabled"),
            v,
        )],
        Setting::ThpDefrag(v) => vec![selector_knob(
            host,
            "vm transparent_hugepage defrag",
            &format!("{THP}/defrag"),
            v,
        )],
        Setting::IrqAffinity(cpus) => irq(host, cpus),
        Setting::IsolationCpus(_) => Vec::new(),
        Setting::Partition(cpus) => slices(host, cpus),
        Setting::MaxLatencyUs(n) => resume_latency(host, *n),
        Setting::BootCmdline(args) => super::boot::expand(host, args),
    }
}

/// The units everything not started by cleanroom runs in, on a systemd host.
const SLICES: [&str; 3] = ["init.scope", "system.slice", "user.slice"];

/// A partition on a systemd host: `AllowedCPUs=` of PID 1's scope and the system and
/// user slices narrowed to the CPUs left outside it, at runtime, so systemd's own view
/// agrees with the kernel's partition (and keeps them narrowed for units it starts).
/// None elsewhere: the partition itself is the shield's.
fn slices(host: &Host, cpus: &BTreeSet<u32>) -> Vec<Planned> {
    use crate::systemd::units::{self, SetProperty};
    if !units::booted(host) {
        return Vec::new();
    }
    let online = host
        .read("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|t| parse_cpu_list(t.trim()).ok())
        .unwrap_or_default();
    let rest = format_cpu_list(&online.difference(cpus).copied().collect());
    SLICES
        .iter()
        .map(|unit| {
            let (current, want) = match units::read_list(unit, SetProperty::Cpus) {
                Ok(Some(c)) => (Some(c), Want::Value(rest.clone())),
                Ok(None) => (None, Want::Unsupported(format!("no unit {unit}"))),
                Err(e) => (None, Want::Unsupported(e.to_string())),
            };
            Planned {
                knob: format!("{unit} AllowedCPUs"),
                path: units::key(unit, SetProperty::Cpus),
                kind: Kind::UnitCpus,
                current,
                want,
                soft: false,
            }
        })
        .collect()
}

/// Every online CPU's `pm_qos_resume_latency_us` set to `n` (the kernel writes `0` as "no
/// limit" and `n/a` as "no latency at all", so a limit of 0 is written `n/a`). The request
/// held on `/dev/cpu_dma_latency` is the tuning operations' (`crate::pin::Pinner`), not a
/// file knob.
fn resume_latency(host: &Host, n: u32) -> Vec<Planned> {
    let online = host
        .read("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|t| crate::host::format::parse_cpu_list(t.trim()).ok())
        .unwrap_or_default();
    let value = if n == 0 {
        "n/a".to_owned()
    } else {
        n.to_string()
    };
    let knobs: Vec<Planned> = online
        .iter()
        .map(|cpu| format!("/sys/devices/system/cpu/cpu{cpu}/power/pm_qos_resume_latency_us"))
        .filter(|path| host.exists(path))
        .map(|path| {
            let cpu = path.split('/').nth(5).unwrap_or("cpu").to_owned();
            let mut p = Planned::new(format!("{cpu} resume latency"), path, Kind::Text, host);
            // A CPU that will not take a limit (offline meanwhile) is reported, not fatal.
            p.soft = true;
            p.want(Want::Value(value.clone()))
        })
        .collect();
    if knobs.is_empty() {
        return vec![unsupported(
            "cpu resume latency",
            "/sys/devices/system/cpu/cpu0/power/pm_qos_resume_latency_us",
            "this kernel has no per-CPU resume latency limits",
        )];
    }
    knobs
}

fn unsupported(knob: &str, path: &str, why: &str) -> Planned {
    Planned {
        knob: knob.to_owned(),
        path: path.to_owned(),
        kind: Kind::Text,
        current: None,
        want: Want::Unsupported(why.to_owned()),
        soft: false,
    }
}

fn per_policy(
    host: &Host,
    knob: &str,
    file: &str,
    want: impl Fn(&Host, &str) -> Want,
) -> Vec<Planned> {
    let policies: Vec<String> = host
        .list(CPUFREQ)
        .into_iter()
        .filter(|n| n.starts_with("policy"))
        .collect();
    if policies.is_empty() {
        return vec![unsupported(
            knob,
            &format!("{CPUFREQ}/policy*/{file}"),
            &format!("no cpufreq policies on this host ({CPUFREQ} has none)"),
        )];
    }
    policies
        .iter()
        .map(|policy| {
            let p = Planned::new(
                format!("{knob} {policy}"),
                format!("{CPUFREQ}/{policy}/{file}"),
                Kind::Text,
                host,
            );
            let w = want(host, policy);
            p.want(w)
        })
        .collect()
}

fn per_device(
    host: &Host,
    glob: &str,
    file: &str,
    kind: Kind,
    want: impl Fn(&Host, &str) -> Want,
) -> Vec<Planned> {
    let Ok(pattern) = glob::Pattern::new(glob) else {
        return vec![unsupported(
            &format!("block {glob} {file}"),
            "/sys/block",
            "bad device glob",
        )];
    };
    let devices: Vec<String> = host
        .list("/sys/block")
        .into_iter()
        .filter(|d| pattern.matches(d))
        .collect();
    if devices.is_empty() {
        return vec![unsupported(
            &format!("block {glob} {file}"),
            &format!("/sys/block/{glob}"),
            &format!("no block device matches {glob:?}"),
        )];
    }
    devices
        .iter()
        .map(|dev| {
            let path = format!("/sys/block/{dev}/queue/{file}");
            let p = Planned::new(format!("block {dev} {file}"), path.clone(), kind, host);
            let w = want(host, &path);
            p.want(w)
        })
        .collect()
}

fn selector_knob(host: &Host, knob: &str, path: &str, value: &str) -> Planned {
    let p = Planned::new(knob.to_owned(), path.to_owned(), Kind::Selector, host);
    let (options, _) = parse_selector(&host.read(path).unwrap_or_default());
    // An absent file is reported as unsupported by `want`.
    if p.current.is_none() || options.iter().any(|o| o == value) {
        p.want(Want::Value(value.to_owned()))
    } else {
        p.want(Want::Unsupported(format!(
            "{value:?} not offered (has: {})",
            options.join(" ")
        )))
    }
}

fn irq(host: &Host, cpus: &BTreeSet<u32>) -> Vec<Planned> {
    let list = format_cpu_list(cpus);
    let mut out = vec![
        Planned::new(
            "irq default_smp_affinity".into(),
            "/proc/irq/default_smp_affinity".into(),
            Kind::CpuMask,
            host,
        )
        .want(Want::Value(list.clone())),
    ];
    let mut irqs: Vec<u32> = host
        .list("/proc/irq")
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect();
    irqs.sort_unstable();
    for n in irqs {
        let mut p = Planned::new(
            format!("irq {n} smp_affinity_list"),
            format!("/proc/irq/{n}/smp_affinity_list"),
            Kind::CpuList,
            host,
        )
        .want(Want::Value(list.clone()));
        p.soft = true;
        out.push(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake_root as fake;
    use crate::host::sysctl::SysctlKey;

    #[test]
    fn kinds_read_and_write() {
        assert_eq!(
            Kind::Text.read("4096\t87380\t6291456\n").unwrap(),
            "4096 87380 6291456"
        );
        assert_eq!(
            Kind::Selector.read("none [mq-deadline] kyber\n").unwrap(),
            "mq-deadline"
        );
        assert_eq!(Kind::CpuList.read("1,0\n").unwrap(), "0-1");
        assert_eq!(Kind::CpuMask.read("3\n").unwrap(), "0-1");
        assert_eq!(Kind::CpuMask.to_write("0-1"), "3");
        for k in [Kind::Text, Kind::Selector, Kind::CpuList, Kind::CpuMask]
            .into_iter()
            .chain(Kind::BOOT)
        {
            assert_eq!(Kind::parse_name(k.as_str()), Some(k));
        }
    }

    #[test]
    fn cpufreq_plugin_on_a_fake_host() {
        let (_d, host) = fake(&[
            (
                "/sys/devices/system/cpu/cpufreq/policy0/scaling_governor",
                "powersave\n",
            ),
            (
                "/sys/devices/system/cpu/cpufreq/policy0/scaling_available_governors",
                "performance powersave\n",
            ),
            (
                "/sys/devices/system/cpu/cpufreq/policy0/cpuinfo_max_freq",
                "3600000\n",
            ),
            (
                "/sys/devices/system/cpu/cpufreq/policy0/scaling_min_freq",
                "800000\n",
            ),
            (
                "/sys/devices/system/cpu/cpufreq/policy1/scaling_governor",
                "powersave\n",
            ),
            (
                "/sys/devices/system/cpu/cpufreq/policy1/scaling_available_governors",
                "powersave\n",
            ),
            (
                "/sys/devices/system/cpu/cpufreq/policy1/cpuinfo_max_freq",
                "3000000\n",
            ),
            (
                "/sys/devices/system/cpu/cpufreq/policy1/scaling_min_freq",
                "800000\n",
            ),
            ("/sys/devices/system/cpu/intel_pstate/no_turbo", "0\n"),
        ]);
        let g = expand(&Setting::Governor("performance".into()), &host, &[]);
        assert_eq!(g[0].want, Want::Value("performance".into()));
        assert!(matches!(&g[1].want, Want::Unsupported(w) if w.contains("policy1")));
        let m = expand(&Setting::MinFreqMax, &host, &[]);
        assert_eq!(m[0].want, Want::Value("3600000".into()));
        assert_eq!(m[1].want, Want::Value("3000000".into()));
        let b = expand(&Setting::Boost(false), &host, &[]);
        assert_eq!(b[0].path, "/sys/devices/system/cpu/intel_pstate/no_turbo");
        assert_eq!(
            b[0].want,
            Want::Value("1".into()),
            "boost off is no_turbo 1"
        );
    }

    #[test]
    fn absent_knobs_are_unsupported_with_a_reason() {
        let (_d, host) = fake(&[("/proc/sys/vm/swappiness", "60\n")]);
        for s in [
            Setting::Governor("performance".into()),
            Setting::Boost(true),
            Setting::MinFreqMax,
        ] {
            let items = expand(&s, &host, &[]);
            assert!(
                matches!(&items[0].want, Want::Unsupported(w) if !w.is_empty()),
                "{s:?}: {items:?}"
            );
        }
        let allow = vec!["vm.".to_owned()];
        let key = SysctlKey::parse("vm.nonexistent").unwrap();
        let items = expand(
            &Setting::Sysctl {
                key,
                value: "1".into(),
            },
            &host,
            &allow,
        );
        assert!(matches!(&items[0].want, Want::Unsupported(w) if w.contains("does not exist")));
    }

    #[test]
    fn scheduler_takes_the_first_offered_preference() {
        let (_d, host) = fake(&[
            (
                "/sys/block/sda/queue/scheduler",
                "[mq-deadline] kyber none\n",
            ),
            ("/sys/block/sdb/queue/scheduler", "[none] mq-deadline\n"),
            ("/sys/block/vda/queue/scheduler", "[none]\n"),
        ]);
        let s = Setting::Scheduler {
            glob: "sd*".into(),
            prefs: vec!["kyber".into(), "mq-deadline".into()],
        };
        let items = expand(&s, &host, &[]);
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].want, Want::Value("kyber".into()));
        assert_eq!(items[0].current.as_deref(), Some("mq-deadline"));
        assert_eq!(items[1].want, Want::Value("mq-deadline".into()));
        let s = Setting::Scheduler {
            glob: "vda".into(),
            prefs: vec!["bfq".into()],
        };
        assert!(
            matches!(&expand(&s, &host, &[])[0].want, Want::Unsupported(w) if w.contains("bfq"))
        );
    }
}
