//! `shield.*`: the CPU shield exclusive runs raise over the isolation pool.
//!
//! The daemon journals everything the shield changes (IRQ affinities, cpusets, moved
//! processes, thread masks, a cgroup v2 partition) and puts it back when the last exclusive
//! run ends. What the kernel refuses to take back stays journaled for the next lowering,
//! and while anything does, every exclusive run is refused: its raise would journal the
//! shield's own values as originals. `shield.lower` is the admin's way out: it lowers again
//! and says what stays and why, or, with `force`, forgets what the kernel still refuses,
//! naming each item with the value it should hold, to be set by hand.

use serde::{Deserialize, Serialize};

/// Params of `shield.lower`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShieldLowerParams {
    /// Forget what the kernel still refuses to take back (each item forgotten is written
    /// to the audit log and reported, to be set by hand).
    #[serde(default)]
    pub force: bool,
}

/// What a shield item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShieldKind {
    /// An IRQ's affinity (`/proc/irq/N/smp_affinity_list`, a CPU list) or the default
    /// affinity (`/proc/irq/default_smp_affinity`, a hexadecimal mask).
    Irq,
    /// A cgroup v1 cpuset that gave up the shielded CPUs (`.../cpuset.cpus`, a CPU list).
    Cpuset,
}

/// What happened to a shield item the kernel refused to take back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShieldItemStatus {
    /// Still journaled: the next lowering tries again, and exclusive runs are refused
    /// until one succeeds.
    Kept,
    /// Forgotten from the journal (`force`), and written to the audit log: it is the
    /// admin's to set by hand.
    Forgotten,
}

/// One kernel file the shield changed and the kernel refused to give its original back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShieldItem {
    /// What it is.
    pub kind: ShieldKind,
    /// The kernel file, to write by hand.
    pub path: String,
    /// The value it should hold (its value before the shield), in the file's own format:
    /// `echo ORIGINAL > PATH` puts it back.
    pub original: String,
    /// The value it holds now, as read (none when it cannot be read).
    pub current: Option<String>,
    /// Kept or forgotten.
    pub status: ShieldItemStatus,
    /// Why it was not put back: the kernel's refusal.
    pub reason: String,
}

/// Result of `shield.lower`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShieldLowerResult {
    /// Whether a shield was journaled when asked (otherwise there was nothing to do).
    pub was_raised: bool,
    /// Things put back: thread masks, cpusets, IRQ affinities, the partition.
    pub restored: u64,
    /// What the kernel refused to take back: kept journaled, or, with `force`, forgotten.
    pub items: Vec<ShieldItem>,
    /// A cgroup v2 partition a process the kernel cannot end yet still holds: it gave its
    /// CPUs back and stays journaled (even with `force`) until a lowering removes it; it
    /// does not hold exclusive runs back.
    pub partition_left: Option<String>,
    /// Whether anything is still journaled. While an item is kept, exclusive runs are
    /// refused.
    pub journaled: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_forgotten_item_on_the_wire() {
        let item = ShieldItem {
            kind: ShieldKind::Irq,
            path: "/proc/irq/default_smp_affinity".into(),
            original: "f".into(),
            current: Some("3".into()),
            status: ShieldItemStatus::Forgotten,
            reason: "cannot write \"f\" to /proc/irq/default_smp_affinity: busy".into(),
        };
        let wire = serde_json::to_value(&item).unwrap();
        assert_eq!(wire["kind"], "irq");
        assert_eq!(wire["status"], "forgotten");
        assert_eq!(wire["current"], "3");
        assert_eq!(serde_json::from_value::<ShieldItem>(wire).unwrap(), item);
        // Without params, nothing is forgotten.
        let p: ShieldLowerParams = serde_json::from_value(json!({})).unwrap();
        assert!(!p.force);
        assert!(serde_json::from_value::<ShieldLowerParams>(json!({"forse": true})).is_err());
    }
}
