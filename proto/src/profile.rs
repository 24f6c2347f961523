//! `profile.*`: tuning profiles: list, show, apply, revert, verify, recommend, active.

use serde::{Deserialize, Serialize};

/// Where a profile comes from: `"built-in"` or `"file"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProfileOrigin {
    /// Compiled into cleanroomd (the shipped profiles); its `path` is `(built-in)`.
    #[serde(rename = "built-in")]
    BuiltIn,
    /// A file in one of `tuning.profile_dirs`; its `path` is that file. The default: a
    /// daemon from before built-in profiles sends no `origin`, and read only files.
    #[default]
    #[serde(rename = "file")]
    File,
}

/// One profile in `profile.list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileInfo {
    /// Its name (file stem).
    pub name: String,
    /// Its summary.
    pub summary: String,
    /// Built in, or a file (which replaces a built-in of the same name).
    #[serde(default)]
    pub origin: ProfileOrigin,
    /// The file it was read from, or `(built-in)`.
    pub path: String,
    /// Whether it is the active profile.
    pub active: bool,
    /// Why it cannot be used, if it is broken.
    pub error: Option<String>,
}

/// Result of `profile.list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileListResult {
    /// Sorted by name.
    pub profiles: Vec<ProfileInfo>,
}

/// Params of `profile.show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileShowParams {
    /// Profile name.
    pub name: String,
}

/// One resolved setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingInfo {
    /// Dotted id, e.g. `sysctl.vm.swappiness`, `cpu.governor`, `block."sd*".scheduler`.
    pub setting: String,
    /// The value as text.
    pub value: String,
    /// Where the profile that set it (after includes) came from: its file, or
    /// `NAME (built-in)`.
    pub source: String,
}

/// Result of `profile.show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileShowResult {
    /// Name.
    pub name: String,
    /// Built in, or a file.
    #[serde(default)]
    pub origin: ProfileOrigin,
    /// File, or `(built-in)`.
    pub path: String,
    /// Summary.
    pub summary: String,
    /// Included profiles, as written.
    pub include: Vec<String>,
    /// Every resolved setting.
    pub settings: Vec<SettingInfo>,
}

/// Params of `profile.apply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileApplyParams {
    /// Profile name.
    pub name: String,
    /// Only plan: read every knob and say what would change.
    #[serde(default)]
    pub dry_run: bool,
    /// Apply what can be applied; a failed knob does not undo the others.
    #[serde(default)]
    pub best_effort: bool,
}

/// Params of `profile.revert`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileRevertParams {
    /// Restore knobs someone else changed too.
    #[serde(default)]
    pub force: bool,
}

/// What happened to one knob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KnobStatus {
    /// apply: written.
    Applied,
    /// apply, revert: already held the value.
    Unchanged,
    /// The knob is absent here or cannot take the value (reason says why).
    Unsupported,
    /// Policy forbids it (reason says why).
    Refused,
    /// The write failed (reason says why).
    Failed,
    /// dry run: would be written.
    Planned,
    /// apply: written, then undone because another knob failed.
    RolledBack,
    /// revert (and apply, for knobs the new profile no longer sets): original put back.
    Restored,
    /// revert: someone else changed it; left alone.
    Conflict,
    /// revert with force: someone else changed it; original put back anyway.
    Forced,
    /// verify: holds the profile's value.
    Ok,
    /// verify: holds another value.
    Drifted,
    /// apply, verify: a kernel command-line argument is in the boot loader's
    /// configuration, and the running kernel's `/proc/cmdline` does not show it yet (it
    /// takes effect at the next boot).
    PendingReboot,
}

/// One row of an apply, revert or verify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnobResult {
    /// Display name, e.g. `sysctl vm.swappiness`, `block loop0 scheduler`.
    pub knob: String,
    /// Kernel file.
    pub path: String,
    /// Value before (apply, revert) or expected (verify, conflict).
    pub before: Option<String>,
    /// Value after (apply, revert) or actual (verify, conflict).
    pub after: Option<String>,
    /// What happened.
    pub status: KnobStatus,
    /// Why, for unsupported, refused, failed, conflict, drifted, pending reboot.
    pub reason: Option<String>,
}

/// Result of `profile.apply`, `profile.revert` and `profile.verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TuneResult {
    /// The profile concerned (none for a revert or verify with no active profile).
    pub profile: Option<String>,
    /// Whether the operation fully succeeded: apply without failure, revert without
    /// conflicts or failures, verify without drift.
    pub ok: bool,
    /// Whether this was a dry run.
    #[serde(default)]
    pub dry_run: bool,
    /// Knob by knob.
    pub items: Vec<KnobResult>,
    /// Knobs in the journal afterwards.
    pub journal_entries: u64,
    /// Pin rules: what each matched and did (apply, verify), or what a revert put back,
    /// by the rule that had placed it. Absent when no rule is involved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pins: Vec<PinReport>,
}

/// What one pin rule matched and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinReport {
    /// The rule as one line: `comm="nginx" -> cpus=2-3 policy=fifo:10`.
    pub rule: String,
    /// Where it is written (`FILE: line N`); empty for a revert.
    #[serde(default)]
    pub at: String,
    /// Tasks (threads) it matched; for a revert, tasks it had placed.
    pub matched: u32,
    /// Tasks that hold its placement afterwards (apply, verify), or that got their
    /// originals back (revert).
    pub placed: u32,
    /// Attributes this operation changed.
    pub changed: u32,
    /// Tasks where it did not go as asked, at most 20 (`more_problems` counts the rest).
    pub problems: Vec<PinProblem>,
    /// Problems beyond those listed.
    #[serde(default)]
    pub more_problems: u32,
}

/// One task attribute that is not as a pin rule (or a revert) wants it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinProblem {
    /// Process id.
    pub pid: i32,
    /// Thread id.
    pub tid: i32,
    /// Thread name.
    pub comm: String,
    /// `cpus`, `policy`, `nice` or `ioprio`.
    pub attr: String,
    /// The value wanted.
    pub expected: String,
    /// The value it holds, when it could be read.
    pub actual: Option<String>,
    /// `failed` (the kernel refused), `drifted` (verify: changed since), `conflict`
    /// (revert: changed by someone else, left alone).
    pub status: String,
    /// Why, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Result of `profile.recommend`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecommendResult {
    /// The profile to use.
    pub profile: String,
    /// What the host is, as observed.
    pub reasons: Vec<String>,
}

/// Result of `profile.active`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveResult {
    /// The profile in force, if any.
    pub profile: Option<String>,
    /// `idle`, `applying`, `active` or `reverting`.
    pub phase: String,
    /// Since when (seconds since the Unix epoch).
    pub since: Option<f64>,
    /// Knobs in the journal.
    pub journal_entries: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn origin_on_the_wire() {
        assert_eq!(json!(ProfileOrigin::BuiltIn), json!("built-in"));
        assert_eq!(json!(ProfileOrigin::File), json!("file"));
        // A daemon from before built-in profiles sends no origin: its profiles are files.
        let info: ProfileInfo = serde_json::from_value(json!({
            "name": "p", "summary": "", "path": "/etc/cleanroom/profiles/p.toml",
            "active": false, "error": null
        }))
        .unwrap();
        assert_eq!(info.origin, ProfileOrigin::File);
    }
}
