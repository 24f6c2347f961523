//! `pin.*`: pin rules an admin adds by hand, beside those of the active profile. The same
//! selectors and placements as a profile's `[[pin]]` tables, journaled and reverted the
//! same way; they stay in force across restarts until removed (or until
//! `cleanroomd --revert` puts the whole host back).

use serde::{Deserialize, Serialize};

use crate::PinReport;

/// A pin rule as a request gives it: one selector (`comm`, `cmdline`, `thread`, narrowed
/// by `user`) and at least one placement, with the values a profile's `[[pin]]` takes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinRuleSpec {
    /// Glob over the process name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// Regex over the command line (arguments joined by spaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Glob over thread names inside the matched processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    /// Only processes of this user (a name or a uid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The processes in this cgroup (an absolute path) and below it; alone, the rule's
    /// `cpus` and `mems` go to the cgroup's cpuset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The processes of this systemd unit; alone, the rule's `cpus` and `mems` are set
    /// as the unit's `AllowedCPUs=` and `AllowedMemoryNodes=` (at runtime, over D-Bus).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// CPU list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<String>,
    /// Memory node list (a `cgroup` rule alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mems: Option<String>,
    /// `other`, `batch`, `idle`, `fifo` or `rr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// 1-99, for `fifo` and `rr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// -20 to 19.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nice: Option<i64>,
    /// `none`, `idle`, `be:N` or `rt:N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ioprio: Option<String>,
}

/// Params of `pin.add`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinAddParams {
    /// The rule.
    pub rule: PinRuleSpec,
    /// Say what it would match and change, and change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// Result of `pin.add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinAddResult {
    /// The rule's id (for `pin.remove`); 0 for a dry run.
    pub id: u64,
    /// What it matched and did.
    pub report: PinReport,
}

/// One rule in force, for `pin.list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRuleInfo {
    /// Its id, for a rule added by hand; none for a profile's.
    pub id: Option<u64>,
    /// `profile NAME`, or `added by uid N`.
    pub source: String,
    /// The rule, what it matches now, and what does not hold its placement (drifted).
    pub report: PinReport,
}

/// Result of `pin.list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinListResult {
    /// Every rule in force: the profile's, then those added by hand; a task matched by
    /// several takes each attribute from the last that sets it.
    pub rules: Vec<PinRuleInfo>,
}

/// Params of `pin.remove`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinRemoveParams {
    /// The id `pin.add` gave.
    pub id: u64,
}

/// Result of `pin.remove`: what went back (compare-and-swap, as a revert).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRemoveResult {
    /// The rule removed.
    pub id: u64,
    /// Whether every task it had placed got its original back.
    pub ok: bool,
    /// By the rule that had placed each task.
    pub pins: Vec<PinReport>,
}
