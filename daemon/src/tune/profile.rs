//! Tuning profiles: the built-in ones and TOML files in the profile directories, with
//! inheritance.
//!
//! ```toml
//! [profile]
//! summary = "what it is for"
//! include = ["throughput-performance"]   # resolved first, in order; later wins
//!
//! [sysctl]
//! "vm.swappiness" = 10                   # integer, string, or array (vectors)
//! [cpu]
//! governor = "performance"
//! energy_performance_preference = "performance"
//! boost = false
//! min_freq = "max"
//! smt = "off"
//! max_latency_us = 10                    # C-state exit latency limit while in force
//! [block."sd*"]
//! scheduler = ["mq-deadline", "none"]    # the first one the device offers
//! read_ahead_kb = 4096
//! nr_requests = 256
//! [vm]
//! transparent_hugepage = "madvise"
//! defrag = "madvise"
//! [irq]
//! affinity = "0"                         # CPU list for default and every IRQ
//! [bench]
//! aslr = false                           # kernel.randomize_va_space 0 (true: 2)
//! perf_event_max_sample_rate = 1
//! [isolation]
//! cpus = "1-3"                           # the pool exclusive runs may take
//! [partition]
//! isolated = "2-3"                       # kept free of all but what is pinned there
//! kernel_args = true                     # nohz_full, rcu_nocbs, isolcpus for them at boot
//! [bootloader]
//! cmdline = ["nohz_full=2-3", "rcu_nocbs=2-3"]   # kernel arguments from the next boot
//! ```
//!
//! Profiles come in layers, by name. The lowest is [`BUILTIN`]: the shipped profiles
//! (`daemon/profiles/*.toml`), compiled into the binary, so a daemon started from the build
//! tree or installed without the package has them. Above it the profile directories, in
//! order: a later directory's profile replaces an earlier one of the same name, and any
//! file replaces the built-in of its name (the package installs copies of the built-ins
//! to `/usr/lib/cleanroom/profiles`, for admins to read and copy; they replace the
//! built-ins with themselves). Includes are resolved by name after layering, so a file
//! profile may include a built-in, and a file named like a built-in replaces it for every
//! profile that includes it.
//!
//! Every profile is validated at load: an unknown section or key, a wrong type, a refused
//! sysctl key or a malformed value is an error naming the file, the line and the key. A
//! broken profile is listed with its error and cannot be applied; the others stay usable.
//! A broken file does not fall back to the built-in it replaces (see [`ProfileSet::load`]).
//! Built-ins cannot be broken at run time: a unit test parses and resolves every one with
//! the default sysctl allowlist (a narrower `tuning.sysctl_allow` can still refuse one of
//! their keys, which then lists it as broken like a file).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::host::format::{format_cpu_list, parse_cpu_list};
use crate::host::sysctl::{SysctlKey, refusal};
use crate::pin::rule::Rule;

/// `(name, text)` of each shipped profile, one line per file of `daemon/profiles/`.
macro_rules! builtin {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../profiles/", $name, ".toml")))),*]
    };
}

/// The shipped profiles, built in: `(name, TOML text)`, the lowest layer below the profile
/// directories. The package installs the same files to `/usr/lib/cleanroom/profiles`; the
/// packaging tests check that the installed set and this table are the same.
pub const BUILTIN: &[(&str, &str)] = builtin![
    "balanced",
    "benchmark",
    "latency-performance",
    "network-latency",
    "network-throughput",
    "throughput-performance",
    "virtual-guest",
];

/// The text of a built-in profile.
fn builtin_text(name: &str) -> Option<&'static str> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Where a profile comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Compiled into the daemon ([`BUILTIN`]).
    BuiltIn,
    /// A file in one of the profile directories.
    File(PathBuf),
}

impl Origin {
    /// The file, or `(built-in)`: what the wire's `path` says (never a made-up path).
    pub fn path_text(&self) -> String {
        match self {
            Origin::BuiltIn => "(built-in)".into(),
            Origin::File(path) => path.display().to_string(),
        }
    }

    /// The profile `name` from here, as errors and setting sources name it: the file, or
    /// `NAME (built-in)`.
    pub fn describe(&self, name: &str) -> String {
        match self {
            Origin::BuiltIn => format!("{name} (built-in)"),
            Origin::File(path) => path.display().to_string(),
        }
    }
}

impl From<&Origin> for cleanroom_proto::ProfileOrigin {
    fn from(o: &Origin) -> Self {
        match o {
            Origin::BuiltIn => Self::BuiltIn,
            Origin::File(_) => Self::File,
        }
    }
}

/// One desired setting, before it meets a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    /// A sysctl key and its value (vectors space-separated).
    Sysctl {
        /// The key.
        key: SysctlKey,
        /// The value as written to the file.
        value: String,
    },
    /// cpufreq governor of every policy.
    Governor(String),
    /// energy_performance_preference of every policy.
    Epp(String),
    /// Turbo/boost on or off.
    Boost(bool),
    /// Frequency floor of every policy set to its maximum.
    MinFreqMax,
    /// SMT control (`on`, `off`).
    Smt(String),
    /// Block devices matching a glob: I/O scheduler preferences.
    Scheduler {
        /// Device name glob.
        glob: String,
        /// Preferences, first available wins.
        prefs: Vec<String>,
    },
    /// Block devices matching a glob: read-ahead.
    ReadAhead {
        /// Device name glob.
        glob: String,
        /// KiB.
        kb: u64,
    },
    /// Block devices matching a glob: queue depth.
    NrRequests {
        /// Device name glob.
        glob: String,
        /// Requests.
        n: u64,
    },
    /// Transparent huge pages `enabled`.
    Thp(String),
    /// Transparent huge pages `defrag`.
    ThpDefrag(String),
    /// IRQ affinity (default and every IRQ).
    IrqAffinity(BTreeSet<u32>),
    /// The CPU pool for exclusive runs (not a kernel knob).
    IsolationCpus(BTreeSet<u32>),
    /// CPUs kept free of every task, IRQ and unbound kernel work not pinned there while
    /// the profile is in force (the shield, held by the profile: `run::Runner`).
    Partition(BTreeSet<u32>),
    /// C-state exit latency limit in microseconds while the profile is in force: every
    /// CPU's `pm_qos_resume_latency_us`, and a request held open on
    /// `/dev/cpu_dma_latency` (as tuned's `force_latency`).
    MaxLatencyUs(u32),
    /// Kernel command-line arguments, through the boot loader (`super::boot`), checked by
    /// `super::boot::check_args`.
    BootCmdline(Vec<String>),
}

impl Setting {
    /// The merge key: two settings with the same id replace each other.
    pub fn id(&self) -> String {
        match self {
            Setting::Sysctl { key, .. } => format!("sysctl.{key}"),
            Setting::Governor(_) => "cpu.governor".into(),
            Setting::Epp(_) => "cpu.energy_performance_preference".into(),
            Setting::Boost(_) => "cpu.boost".into(),
            Setting::MinFreqMax => "cpu.min_freq".into(),
            Setting::Smt(_) => "cpu.smt".into(),
            Setting::Scheduler { glob, .. } => format!("block.\"{glob}\".scheduler"),
            Setting::ReadAhead { glob, .. } => format!("block.\"{glob}\".read_ahead_kb"),
            Setting::NrRequests { glob, .. } => format!("block.\"{glob}\".nr_requests"),
            Setting::Thp(_) => "vm.transparent_hugepage".into(),
            Setting::ThpDefrag(_) => "vm.defrag".into(),
            Setting::IrqAffinity(_) => "irq.affinity".into(),
            Setting::IsolationCpus(_) => "isolation.cpus".into(),
            Setting::Partition(_) => "partition.isolated".into(),
            Setting::MaxLatencyUs(_) => "cpu.max_latency_us".into(),
            Setting::BootCmdline(_) => "bootloader.cmdline".into(),
        }
    }

    /// The value as text, for display.
    pub fn value_text(&self) -> String {
        match self {
            Setting::Sysctl { value, .. } => value.clone(),
            Setting::Governor(v) | Setting::Epp(v) | Setting::Smt(v) => v.clone(),
            Setting::Thp(v) | Setting::ThpDefrag(v) => v.clone(),
            Setting::Boost(b) => b.to_string(),
            Setting::MinFreqMax => "max".into(),
            Setting::Scheduler { prefs, .. } => prefs.join(", "),
            Setting::ReadAhead { kb, .. } => kb.to_string(),
            Setting::NrRequests { n, .. } => n.to_string(),
            Setting::IrqAffinity(s) | Setting::IsolationCpus(s) | Setting::Partition(s) => {
                format_cpu_list(s)
            }
            Setting::MaxLatencyUs(n) => n.to_string(),
            Setting::BootCmdline(args) => args.join(" "),
        }
    }
}

/// A setting and the profile it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced {
    /// The setting.
    pub setting: Setting,
    /// The profile that set it (itself or one it includes).
    pub profile: String,
    /// Where that profile came from.
    pub origin: Origin,
}

impl Sourced {
    /// Where it came from, for display: the file, or `NAME (built-in)`.
    pub fn source_text(&self) -> String {
        self.origin.describe(&self.profile)
    }
}

/// A profile with its includes resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Its name.
    pub name: String,
    /// Where it came from.
    pub origin: Origin,
    /// One line on what it is for.
    pub summary: String,
    /// Included profiles, as written.
    pub include: Vec<String>,
    /// Every setting, by id, with its source.
    pub settings: BTreeMap<String, Sourced>,
    /// Pin rules: those of included profiles first, then its own, in file order; a rule
    /// with the selector of an earlier one replaces it.
    pub pins: Vec<Rule>,
}

/// One profile as found (the top layer of its name), resolved or broken.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Where it came from.
    pub origin: Origin,
    /// The resolved profile, or why it cannot be used.
    pub profile: Result<Resolved, String>,
}

/// Every profile: the built-in ones, and those found in the profile directories.
#[derive(Debug, Clone, Default)]
pub struct ProfileSet {
    /// By name.
    pub entries: BTreeMap<String, Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    profile: Meta,
    #[serde(default)]
    sysctl: BTreeMap<String, Spanned<SysctlValue>>,
    cpu: Option<CpuDoc>,
    #[serde(default)]
    block: BTreeMap<String, BlockDoc>,
    vm: Option<VmDoc>,
    irq: Option<IrqDoc>,
    bench: Option<BenchDoc>,
    isolation: Option<IsolationDoc>,
    partition: Option<PartitionDoc>,
    bootloader: Option<BootloaderDoc>,
    #[serde(default)]
    pin: Vec<crate::pin::rule::PinDoc>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    #[serde(default)]
    summary: String,
    #[serde(default)]
    include: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SysctlValue {
    Int(i64),
    Text(String),
    Vector(Vec<i64>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CpuDoc {
    governor: Option<String>,
    energy_performance_preference: Option<String>,
    boost: Option<bool>,
    min_freq: Option<Spanned<String>>,
    smt: Option<Spanned<String>>,
    max_latency_us: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockDoc {
    scheduler: Option<OneOrMany>,
    read_ahead_kb: Option<u64>,
    nr_requests: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmDoc {
    transparent_hugepage: Option<String>,
    defrag: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IrqDoc {
    affinity: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BenchDoc {
    aslr: Option<bool>,
    perf_event_max_sample_rate: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IsolationDoc {
    cpus: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartitionDoc {
    isolated: Option<Spanned<String>>,
    kernel_args: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BootloaderDoc {
    cmdline: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[bootloader] cmdline`, checked; errors are `(line, message)`.
fn boot_cmdline(
    list: Spanned<Vec<Spanned<String>>>,
    line: &dyn Fn(usize) -> usize,
) -> Result<Setting, (usize, String)> {
    let at_list = line(list.span().start);
    let list = list.into_inner();
    let args: Vec<String> = list.iter().map(|a| a.get_ref().clone()).collect();
    super::boot::check_args(&args).map_err(|(i, msg)| {
        let at = list.get(i).map_or(at_list, |a| line(a.span().start));
        (at, msg)
    })?;
    Ok(Setting::BootCmdline(args))
}

/// A parsed file before includes are resolved.
#[derive(Debug, Clone)]
struct Parsed {
    summary: String,
    include: Vec<String>,
    settings: Vec<Setting>,
    pins: Vec<Rule>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Whether a profile name is acceptable (it becomes part of a path).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Parses one profile's text. `what` names it in errors (its file, or `NAME (built-in)`);
/// `allow` is the sysctl allowlist.
fn parse(what: &str, text: &str, allow: &[String]) -> Result<Parsed, String> {
    let at =
        |line: usize, key: &str, msg: String| format!("{what}: line {line}: key `{key}`: {msg}");
    let de = toml::de::Deserializer::parse(text).map_err(|e| {
        let line = e.span().map_or(0, |s| line_of(text, s.start));
        format!("{what}: line {line}: {}", e.message().trim_end())
    })?;
    let doc: FileDoc = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let line = inner.span().map_or(0, |s| line_of(text, s.start));
        at(line, &key, inner.message().trim_end().to_owned())
    })?;
    let mut settings = Vec::new();
    for (raw_key, value) in &doc.sysctl {
        let line = line_of(text, value.span().start);
        let key =
            SysctlKey::parse(raw_key).map_err(|e| at(line, &format!("sysctl.{raw_key}"), e))?;
        if let Some(why) = refusal(&key, allow) {
            return Err(at(line, &format!("sysctl.{raw_key}"), why));
        }
        let value = match value.get_ref() {
            SysctlValue::Int(i) => i.to_string(),
            SysctlValue::Text(s) => crate::host::format::normalize_words(s),
            SysctlValue::Vector(v) => v.iter().map(i64::to_string).collect::<Vec<_>>().join(" "),
        };
        settings.push(Setting::Sysctl { key, value });
    }
    if let Some(cpu) = doc.cpu {
        if let Some(g) = cpu.governor {
            settings.push(Setting::Governor(g));
        }
        if let Some(e) = cpu.energy_performance_preference {
            settings.push(Setting::Epp(e));
        }
        if let Some(b) = cpu.boost {
            settings.push(Setting::Boost(b));
        }
        if let Some(m) = cpu.min_freq {
            if m.get_ref() != "max" {
                return Err(at(
                    line_of(text, m.span().start),
                    "cpu.min_freq",
                    format!(
                        "{:?} is not supported; the only value is \"max\"",
                        m.get_ref()
                    ),
                ));
            }
            settings.push(Setting::MinFreqMax);
        }
        if let Some(s) = cpu.smt {
            if !matches!(s.get_ref().as_str(), "on" | "off") {
                return Err(at(
                    line_of(text, s.span().start),
                    "cpu.smt",
                    format!("{:?} is not \"on\" or \"off\"", s.get_ref()),
                ));
            }
            settings.push(Setting::Smt(s.into_inner()));
        }
        if let Some(n) = cpu.max_latency_us {
            settings.push(Setting::MaxLatencyUs(n));
        }
    }
    for (glob, b) in doc.block {
        if glob.contains('/') || glob.contains("..") || glob.is_empty() {
            return Err(at(
                0,
                &format!("block.\"{glob}\""),
                "a device glob may not contain `/` or `..`".into(),
            ));
        }
        if let Err(e) = glob::Pattern::new(&glob) {
            return Err(at(
                0,
                &format!("block.\"{glob}\""),
                format!("bad glob: {e}"),
            ));
        }
        if let Some(s) = b.scheduler {
            let prefs = match s {
                OneOrMany::One(s) => vec![s],
                OneOrMany::Many(v) => v,
            };
            if prefs.is_empty() {
                return Err(at(
                    0,
                    &format!("block.\"{glob}\".scheduler"),
                    "empty list".into(),
                ));
            }
            settings.push(Setting::Scheduler {
                glob: glob.clone(),
                prefs,
            });
        }
        if let Some(kb) = b.read_ahead_kb {
            settings.push(Setting::ReadAhead {
                glob: glob.clone(),
                kb,
            });
        }
        if let Some(n) = b.nr_requests {
            settings.push(Setting::NrRequests {
                glob: glob.clone(),
                n,
            });
        }
    }
    if let Some(vm) = doc.vm {
        if let Some(t) = vm.transparent_hugepage {
            settings.push(Setting::Thp(t));
        }
        if let Some(d) = vm.defrag {
            settings.push(Setting::ThpDefrag(d));
        }
    }
    if let Some(irq) = doc.irq {
        if let Some(a) = irq.affinity {
            let set = parse_cpu_list(a.get_ref())
                .map_err(|e| at(line_of(text, a.span().start), "irq.affinity", e))?;
            if set.is_empty() {
                return Err(at(
                    line_of(text, a.span().start),
                    "irq.affinity",
                    "empty CPU list".into(),
                ));
            }
            settings.push(Setting::IrqAffinity(set));
        }
    }
    if let Some(bench) = doc.bench {
        if let Some(aslr) = bench.aslr {
            settings.push(Setting::Sysctl {
                key: SysctlKey::parse("kernel.randomize_va_space").expect("valid key"),
                value: if aslr { "2" } else { "0" }.into(),
            });
        }
        if let Some(rate) = bench.perf_event_max_sample_rate {
            settings.push(Setting::Sysctl {
                key: SysctlKey::parse("kernel.perf_event_max_sample_rate").expect("valid key"),
                value: rate.to_string(),
            });
        }
    }
    if let Some(iso) = doc.isolation {
        if let Some(c) = iso.cpus {
            let set = parse_cpu_list(c.get_ref())
                .map_err(|e| at(line_of(text, c.span().start), "isolation.cpus", e))?;
            settings.push(Setting::IsolationCpus(set));
        }
    }
    // `[partition] kernel_args = true`: the boot arguments derived from the isolated CPUs,
    // added to `[bootloader] cmdline` below.
    let mut derived: Option<(usize, Vec<String>)> = None;
    if let Some(p) = doc.partition {
        if let Some(k) = p.kernel_args.as_ref().filter(|k| *k.get_ref()) {
            let line = line_of(text, k.span().start);
            let Some(c) = &p.isolated else {
                return Err(at(
                    line,
                    "partition.kernel_args",
                    "derives the boot arguments from `isolated`, which this section lacks".into(),
                ));
            };
            let set = parse_cpu_list(c.get_ref()).unwrap_or_default();
            derived = Some((line, super::boot::partition_args(&set)));
        }
        if let Some(c) = p.isolated {
            let line = line_of(text, c.span().start);
            let set = parse_cpu_list(c.get_ref()).map_err(|e| at(line, "partition.isolated", e))?;
            if set.is_empty() {
                return Err(at(line, "partition.isolated", "empty CPU list".into()));
            }
            let pool = settings.iter().find_map(|s| match s {
                Setting::IsolationCpus(pool) => Some(pool),
                _ => None,
            });
            if let Some(pool) = pool.filter(|pool| !pool.is_subset(&set)) {
                return Err(at(
                    line,
                    "partition.isolated",
                    format!(
                        "the exclusive runs' pool (isolation.cpus = \"{}\") must lie inside the \
                         partition \"{}\": while it is up, no other CPU is shielded",
                        format_cpu_list(pool),
                        format_cpu_list(&set)
                    ),
                ));
            }
            settings.push(Setting::Partition(set));
        }
    }
    let mut boot = Vec::new();
    if let Some(cmdline) = doc.bootloader.and_then(|b| b.cmdline) {
        match boot_cmdline(cmdline, &|offset| line_of(text, offset))
            .map_err(|(line, msg)| at(line, "bootloader.cmdline", msg))?
        {
            Setting::BootCmdline(args) => boot = args,
            other => settings.push(other),
        }
    }
    if let Some((line, args)) = derived {
        for arg in args {
            let key = super::boot::arg_key(&arg);
            match boot.iter().find(|b| super::boot::arg_key(b) == key) {
                Some(b) if *b == arg => {}
                Some(b) => {
                    return Err(at(
                        line,
                        "partition.kernel_args",
                        format!(
                            "derives {arg:?}, but [bootloader] cmdline has {b:?}: drop one of them"
                        ),
                    ));
                }
                None => boot.push(arg),
            }
        }
        super::boot::check_args(&boot)
            .map_err(|(_, msg)| at(line, "partition.kernel_args", msg))?;
    }
    if !boot.is_empty() {
        settings.push(Setting::BootCmdline(boot));
    }
    let mut include = Vec::new();
    for inc in doc.profile.include {
        if !valid_name(inc.get_ref()) {
            return Err(at(
                line_of(text, inc.span().start),
                "profile.include",
                format!("{:?} is not a profile name", inc.get_ref()),
            ));
        }
        include.push(inc.into_inner());
    }
    let mut pins = Vec::new();
    for (i, d) in doc.pin.into_iter().enumerate() {
        let rule = d
            .rule(i, what, &|offset| line_of(text, offset))
            .map_err(|(line, key, msg)| at(line, &key, msg))?;
        pins.push(rule);
    }
    crate::pin::rule::check_contradictions(&pins)?;
    Ok(Parsed {
        summary: doc.profile.summary,
        include,
        settings,
        pins,
    })
}

/// Every profile's top layer, by name: where it comes from and its text parsed.
type Layers = BTreeMap<String, (Origin, Result<Parsed, String>)>;

/// The built-in profiles parsed under an allowlist, for [`ProfileSet::with_file_text`] to
/// layer a text over many times without parsing them each time.
#[derive(Debug, Clone)]
pub(crate) struct Builtins(Layers);

impl Builtins {
    /// Parses every built-in profile under `allow`.
    pub(crate) fn parse(allow: &[String]) -> Self {
        Self(
            BUILTIN
                .iter()
                .map(|(name, text)| {
                    let origin = Origin::BuiltIn;
                    let result = parse(&origin.describe(name), text, allow);
                    ((*name).to_owned(), (origin, result))
                })
                .collect(),
        )
    }
}

/// The profiles of every layer, by name: the top layer's origin wins.
fn layered(dirs: &[PathBuf]) -> BTreeMap<String, Origin> {
    let mut found: BTreeMap<String, Origin> = BUILTIN
        .iter()
        .map(|(name, _)| ((*name).to_owned(), Origin::BuiltIn))
        .collect();
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        for path in files {
            if let Some(name) = path.file_stem().and_then(|s| s.to_str()) {
                if valid_name(name) {
                    found.insert(name.to_owned(), Origin::File(path));
                }
            }
        }
    }
    found
}

/// Reads and parses the profile `name` from `origin`.
fn read(name: &str, origin: &Origin, allow: &[String]) -> Result<Parsed, String> {
    let what = origin.describe(name);
    let text = match origin {
        Origin::BuiltIn => Cow::Borrowed(
            builtin_text(name).ok_or_else(|| format!("{what}: no such built-in profile"))?,
        ),
        Origin::File(path) => Cow::Owned(
            std::fs::read_to_string(path).map_err(|e| format!("{what}: cannot read: {e}"))?,
        ),
    };
    parse(&what, &text, allow)
}

impl ProfileSet {
    /// Layers the built-in profiles and every `*.toml` in `dirs` (a later directory
    /// overrides an earlier one of the same name, and any file a built-in), then resolves
    /// includes across layers. Never fails as a whole: broken profiles carry their error.
    ///
    /// A broken file replaces the built-in of its name all the same: the admin wrote that
    /// file to change the profile, so applying the built-in instead would tune the host in
    /// a way nobody asked for, and silently; listed as broken, the profile says which line
    /// to fix, and deleting the file brings the built-in back.
    pub fn load(dirs: &[PathBuf], allow: &[String]) -> Self {
        let parsed: Layers = layered(dirs)
            .into_iter()
            .map(|(name, origin)| {
                let result = read(&name, &origin, allow);
                (name, (origin, result))
            })
            .collect();
        Self::resolved(&parsed)
    }

    /// The built-in profiles and a file `path` holding `text`, layered and resolved as
    /// [`ProfileSet::load`] does with a profile directory holding that one file, but
    /// without reading any: how the fuzzer ([`crate::fuzzing`]) reaches the loader.
    /// `builtins` must have been parsed under `allow`.
    pub(crate) fn with_file_text(
        builtins: &Builtins,
        path: &std::path::Path,
        text: &str,
        allow: &[String],
    ) -> Self {
        let mut parsed = builtins.0.clone();
        if let Some(name) = path.file_stem().and_then(|s| s.to_str()) {
            if valid_name(name) {
                let origin = Origin::File(path.to_owned());
                let result = parse(&origin.describe(name), text, allow);
                parsed.insert(name.to_owned(), (origin, result));
            }
        }
        Self::resolved(&parsed)
    }

    /// Every layered profile resolved, or broken with its error.
    fn resolved(parsed: &Layers) -> Self {
        let entries = parsed
            .iter()
            .map(|(name, (origin, _))| {
                let profile = resolve(name, parsed, &mut Vec::new());
                (
                    name.clone(),
                    Entry {
                        origin: origin.clone(),
                        profile,
                    },
                )
            })
            .collect();
        Self { entries }
    }

    /// Marks broken every profile whose pin rules or partition name CPUs (or memory
    /// nodes) this host does not have, `online` and `nodes` (those it has, online or not):
    /// checked at load with the rest of the profile, so `profile list` says so before
    /// anyone applies it (the apply checks the online ones).
    pub fn on_host(mut self, online: &BTreeSet<u32>, nodes: &BTreeSet<u32>) -> Self {
        for entry in self.entries.values_mut() {
            let Ok(p) = &entry.profile else {
                continue;
            };
            let pins = p.pins.iter().find_map(|r| {
                crate::pin::rule::missing_cpus(r, online, "it has")
                    .or_else(|| crate::pin::rule::missing_nodes(r, nodes, "it has"))
            });
            let partition = p.settings.values().find_map(|s| match &s.setting {
                Setting::Partition(cpus) if !cpus.is_subset(online) => Some(format!(
                    "{}: key `partition.isolated`: CPUs {} do not exist on this host (it has: {})",
                    s.source_text(),
                    format_cpu_list(&cpus.difference(online).copied().collect()),
                    format_cpu_list(online)
                )),
                _ => None,
            });
            if let Some(e) = pins.or(partition) {
                entry.profile = Err(e);
            }
        }
        self
    }

    /// A usable profile by name, or why not.
    pub fn get(&self, name: &str) -> Result<&Resolved, String> {
        match self.entries.get(name) {
            Some(Entry { profile: Ok(p), .. }) => Ok(p),
            Some(Entry {
                profile: Err(e), ..
            }) => Err(format!("profile {name:?} is broken: {e}")),
            None => Err(format!(
                "no profile named {name:?}; available: {}",
                self.entries.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
        }
    }
}

fn resolve(name: &str, parsed: &Layers, stack: &mut Vec<String>) -> Result<Resolved, String> {
    if let Some(pos) = stack.iter().position(|n| n == name) {
        let mut cycle: Vec<&str> = stack[pos..].iter().map(String::as_str).collect();
        cycle.push(name);
        return Err(format!("include cycle: {}", cycle.join(" -> ")));
    }
    let Some((origin, result)) = parsed.get(name) else {
        return Err(format!(
            "included profile {name:?} does not exist (included by {})",
            stack.last().map_or("?", String::as_str)
        ));
    };
    let p = match result {
        Ok(p) => p,
        Err(e) if stack.is_empty() => return Err(e.clone()),
        Err(e) => return Err(format!("included profile {name:?} is broken: {e}")),
    };
    stack.push(name.to_owned());
    let mut settings = BTreeMap::new();
    let mut pins: Vec<Rule> = Vec::new();
    let add_pins = |pins: &mut Vec<Rule>, more: &[Rule]| {
        for rule in more {
            pins.retain(|r| r.select != rule.select);
            pins.push(rule.clone());
        }
    };
    for inc in &p.include {
        let r = resolve(inc, parsed, stack);
        match r {
            Ok(r) => {
                settings.extend(r.settings);
                add_pins(&mut pins, &r.pins);
            }
            Err(e) => {
                stack.pop();
                return Err(e);
            }
        }
    }
    stack.pop();
    add_pins(&mut pins, &p.pins);
    for s in &p.settings {
        settings.insert(
            s.id(),
            Sourced {
                setting: s.clone(),
                profile: name.to_owned(),
                origin: origin.clone(),
            },
        );
    }
    Ok(Resolved {
        name: name.to_owned(),
        origin: origin.clone(),
        summary: p.summary.clone(),
        include: p.include.clone(),
        settings,
        pins,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::sysctl::DEFAULT_ALLOW;

    fn allow() -> Vec<String> {
        DEFAULT_ALLOW.iter().map(|s| s.to_string()).collect()
    }

    fn set(files: &[(&str, &str)]) -> (tempfile::TempDir, ProfileSet) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(format!("{name}.toml")), text).unwrap();
        }
        let s = ProfileSet::load(&[dir.path().to_owned()], &allow());
        (dir, s)
    }

    #[test]
    fn includes_merge_later_wins_with_sources() {
        let (_d, s) = set(&[
            (
                "base",
                "[sysctl]\n\"vm.swappiness\" = 30\n\"vm.dirty_ratio\" = 10\n",
            ),
            (
                "top",
                "[profile]\ninclude = [\"base\"]\n[sysctl]\n\"vm.swappiness\" = 5\n\"net.ipv4.tcp_rmem\" = [4096, 87380, 6291456]\n",
            ),
        ]);
        let top = s.get("top").unwrap();
        let sw = &top.settings["sysctl.vm.swappiness"];
        assert_eq!(sw.setting.value_text(), "5");
        assert!(sw.source_text().ends_with("top.toml"));
        let dr = &top.settings["sysctl.vm.dirty_ratio"];
        assert!(dr.source_text().ends_with("base.toml"));
        assert_eq!(
            top.settings["sysctl.net.ipv4.tcp_rmem"]
                .setting
                .value_text(),
            "4096 87380 6291456"
        );
    }

    #[test]
    fn cycles_are_named() {
        let (_d, s) = set(&[
            ("a", "[profile]\ninclude = [\"b\"]\n"),
            ("b", "[profile]\ninclude = [\"c\"]\n"),
            ("c", "[profile]\ninclude = [\"a\"]\n"),
            ("ok", "[sysctl]\n\"vm.swappiness\" = 1\n"),
        ]);
        let e = s.get("a").unwrap_err();
        assert!(e.contains("include cycle: a -> b -> c -> a"), "{e}");
        assert!(s.get("ok").is_ok(), "the others stay usable");
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let table: &[(&str, &[&str])] = &[
            (
                "[sysctl]\n\"kernel.core_pattern\" = \"|/bin/sh\"\n",
                &["line 2", "sysctl.kernel.core_pattern", "always refused"],
            ),
            (
                "[sysctl]\n\"kernel.domainname\" = \"x\"\n",
                &["line 2", "allowlist"],
            ),
            ("[sysctl]\n\"vm/../../etc\" = 1\n", &["line 2", "not valid"]),
            ("[cpu]\ngovernor = 3\n", &["line 2", "cpu.governor"]),
            ("[cpu]\nturbo = true\n", &["line 2", "turbo"]),
            ("[gpu]\nx = 1\n", &["line 1", "gpu"]),
            ("[cpu]\nmin_freq = \"min\"\n", &["line 2", "cpu.min_freq"]),
            ("[irq]\naffinity = \"0-\"\n", &["line 2", "irq.affinity"]),
            ("[block.\"../x\"]\nread_ahead_kb = 1\n", &["block"]),
            (
                "[profile]\ninclude = [\"../etc\"]\n",
                &["line 2", "profile.include"],
            ),
        ];
        for (text, wants) in table {
            let (_d, s) = set(&[("p", text)]);
            let e = s.get("p").unwrap_err();
            assert!(e.contains("p.toml"), "{e}");
            for w in *wants {
                assert!(e.contains(w), "{text:?}: {e:?} lacks {w:?}");
            }
        }
    }

    #[test]
    fn later_directories_override() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("p.toml"), "[sysctl]\n\"vm.swappiness\" = 1\n").unwrap();
        std::fs::write(b.path().join("p.toml"), "[sysctl]\n\"vm.swappiness\" = 2\n").unwrap();
        let s = ProfileSet::load(&[a.path().to_owned(), b.path().to_owned()], &allow());
        assert_eq!(
            s.get("p").unwrap().settings["sysctl.vm.swappiness"]
                .setting
                .value_text(),
            "2"
        );
    }

    #[test]
    fn missing_include_and_broken_include() {
        let (_d, s) = set(&[
            ("a", "[profile]\ninclude = [\"nope\"]\n"),
            ("b", "[profile]\ninclude = [\"broken\"]\n"),
            ("broken", "[sysctl\n"),
        ]);
        assert!(s.get("a").unwrap_err().contains("\"nope\" does not exist"));
        assert!(s.get("b").unwrap_err().contains("\"broken\" is broken"));
        assert!(s.get("zzz").unwrap_err().contains("no profile named"));
    }

    fn value(r: &Resolved, id: &str) -> String {
        r.settings[id].setting.value_text()
    }

    /// `[partition] kernel_args = true` adds the derived arguments to `[bootloader]
    /// cmdline` (one written the same is kept once); one written otherwise, or no
    /// `isolated` to derive from, is an error naming the line and key. A partition whose
    /// runs' pool lies outside it is refused too.
    #[test]
    fn a_partition_derives_its_boot_arguments() {
        let (_d, s) = set(&[
            (
                "both",
                "[bootloader]\ncmdline = [\"quiet\", \"rcu_nocbs=2-3\"]\n[partition]\nisolated = \"2-3\"\nkernel_args = true\n",
            ),
            (
                "clash",
                "[bootloader]\ncmdline = [\"nohz_full=3\"]\n[partition]\nisolated = \"2-3\"\nkernel_args = true\n",
            ),
            ("bare", "[partition]\nkernel_args = true\n"),
            (
                "pool",
                "[isolation]\ncpus = \"1-2\"\n[partition]\nisolated = \"2-3\"\n",
            ),
        ]);
        let both = s.get("both").unwrap();
        assert_eq!(
            value(both, "bootloader.cmdline"),
            "quiet rcu_nocbs=2-3 nohz_full=2-3 isolcpus=managed_irq,domain,2-3"
        );
        assert_eq!(value(both, "partition.isolated"), "2-3");
        let clash = s.get("clash").unwrap_err();
        assert!(
            clash.contains("line 5")
                && clash.contains("partition.kernel_args")
                && clash.contains("\"nohz_full=3\""),
            "{clash}"
        );
        let bare = s.get("bare").unwrap_err();
        assert!(
            bare.contains("line 2") && bare.contains("isolated"),
            "{bare}"
        );
        let pool = s.get("pool").unwrap_err();
        assert!(
            pool.contains("line 4") && pool.contains("must lie inside"),
            "{pool}"
        );
    }

    /// A built-in broken at run time would be a release nobody can use: each one parses,
    /// and resolves, under the default allowlist, with every setting from the built-ins.
    #[test]
    fn every_builtin_parses_and_resolves_with_the_default_allowlist() {
        let s = ProfileSet::load(&[], &allow());
        assert_eq!(s.entries.len(), BUILTIN.len(), "names are unique");
        for (name, _) in BUILTIN {
            assert!(valid_name(name), "{name}");
            let p = s.get(name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(p.origin, Origin::BuiltIn, "{name}");
            assert!(!p.summary.is_empty(), "{name} has no summary");
            for (id, src) in &p.settings {
                assert_eq!(src.origin, Origin::BuiltIn, "{name}: {id}");
            }
        }
    }

    #[test]
    fn builtins_need_no_directory() {
        let missing = PathBuf::from("/nonexistent/cleanroom/profiles");
        for dirs in [vec![], vec![missing]] {
            let s = ProfileSet::load(&dirs, &allow());
            let p = s.get("throughput-performance").unwrap();
            assert_eq!(p.origin, Origin::BuiltIn);
            assert_eq!(value(p, "cpu.governor"), "performance");
            assert_eq!(
                p.settings["cpu.governor"].source_text(),
                "throughput-performance (built-in)"
            );
            assert_eq!(s.entries["benchmark"].origin.path_text(), "(built-in)");
        }
    }

    /// A file named like a built-in replaces it, for itself and for every profile that
    /// includes it (here the built-in network-throughput).
    #[test]
    fn a_file_overrides_the_builtin_of_its_name_everywhere() {
        let (d, s) = set(&[(
            "throughput-performance",
            "[profile]\nsummary = \"mine\"\n[sysctl]\n\"vm.swappiness\" = 7\n",
        )]);
        let file = Origin::File(d.path().join("throughput-performance.toml"));
        let tp = s.get("throughput-performance").unwrap();
        assert_eq!((&tp.origin, tp.summary.as_str()), (&file, "mine"));
        assert_eq!(value(tp, "sysctl.vm.swappiness"), "7");
        assert!(
            !tp.settings.contains_key("cpu.governor"),
            "nothing of the built-in"
        );

        let nt = s.get("network-throughput").unwrap();
        assert_eq!(nt.origin, Origin::BuiltIn);
        assert_eq!(nt.settings["sysctl.vm.swappiness"].origin, file);
        assert!(!nt.settings.contains_key("cpu.governor"));
        assert_eq!(
            nt.settings["sysctl.net.core.rmem_max"].source_text(),
            "network-throughput (built-in)"
        );
    }

    #[test]
    fn a_file_profile_includes_a_builtin() {
        let (d, s) = set(&[(
            "mybench",
            "[profile]\ninclude = [\"benchmark\"]\n[cpu]\nboost = true\n",
        )]);
        let p = s.get("mybench").unwrap();
        assert_eq!(p.origin, Origin::File(d.path().join("mybench.toml")));
        assert_eq!(value(p, "cpu.boost"), "true");
        assert_eq!(p.settings["cpu.boost"].origin, p.origin);
        let gov = &p.settings["cpu.governor"];
        assert_eq!(
            (gov.profile.as_str(), &gov.origin),
            ("benchmark", &Origin::BuiltIn)
        );
        assert_eq!(gov.source_text(), "benchmark (built-in)");
    }

    /// The example profiles a newcomer copies load without an error (their CPUs are
    /// another host's: checked here without this one's).
    #[test]
    fn the_example_profiles_load() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/profiles");
        let s = ProfileSet::load(std::slice::from_ref(&dir), &allow());
        let examples: Vec<&String> = s
            .entries
            .iter()
            .filter(|(_, e)| matches!(&e.origin, Origin::File(p) if p.starts_with(&dir)))
            .map(|(name, e)| {
                assert!(e.profile.is_ok(), "{name}: {:?}", e.profile);
                name
            })
            .collect();
        assert_eq!(examples, ["pinned-service"]);
        let p = s.get("pinned-service").unwrap();
        assert_eq!(p.pins.len(), 3);
        // On a host of two CPUs, it is broken, naming the line.
        let small = s.on_host(&[0, 1].into(), &[0].into());
        let e = small.get("pinned-service").unwrap_err();
        assert!(
            e.contains("pinned-service.toml: line 26: key `cpus`: CPUs 2-7 do not exist"),
            "{e}"
        );
    }

    /// A broken file replaces the built-in of its name all the same, and so breaks the
    /// profiles that include it. Falling back to the built-in would apply settings the
    /// admin meant to change, with nothing to say so but a log line; broken, the profile
    /// names the file and line to fix, and cannot be applied by mistake.
    #[test]
    fn a_broken_file_does_not_fall_back_to_the_builtin() {
        let (d, s) = set(&[(
            "throughput-performance",
            "[cpu]\ngovernour = \"performance\"\n",
        )]);
        let entry = &s.entries["throughput-performance"];
        assert_eq!(
            entry.origin,
            Origin::File(d.path().join("throughput-performance.toml"))
        );
        let e = s.get("throughput-performance").unwrap_err();
        assert!(
            e.contains("is broken")
                && e.contains("throughput-performance.toml: line 2")
                && e.contains("governour"),
            "{e}"
        );
        let e = s.get("network-throughput").unwrap_err();
        assert!(
            e.contains("included profile \"throughput-performance\" is broken"),
            "{e}"
        );
        assert!(s.get("benchmark").is_ok(), "the others stay usable");
    }

    /// A narrower allowlist than the default can refuse a built-in's key: it is then
    /// listed as broken like a file, its error naming it, the line and the key.
    #[test]
    fn a_narrow_allowlist_breaks_a_builtin_with_a_precise_error() {
        let s = ProfileSet::load(&[], &["vm.".to_owned()]);
        let e = s.get("benchmark").unwrap_err();
        assert!(
            e.contains("benchmark (built-in): line ") && e.contains("sysctl.kernel."),
            "{e}"
        );
        assert!(s.get("balanced").is_ok());
    }
}
