//! IRQ affinity: moved off the shielded CPUs (every IRQ journaled, so those that appear
//! meanwhile are told apart) and put back. The workqueue cpumask (where unbound kernel
//! work runs) is a mask file like the default IRQ affinity, journaled and moved with them.

use super::*;

/// The CPUs unbound workqueues may run on (a mask).
pub(super) const WORKQUEUE: &str = "/sys/devices/virtual/workqueue/cpumask";

/// Whether the affinity file at `path` holds a mask (the default IRQ affinity, the
/// workqueue cpumask), not a CPU list.
pub(super) fn is_mask(path: &str) -> bool {
    path.ends_with("default_smp_affinity") || path == WORKQUEUE
}

/// IRQ affinity files and their current CPU sets: the default (a mask) and every IRQ's
/// list.
pub(super) fn irq_files(host: &Host) -> Vec<(String, bool, BTreeSet<u32>)> {
    let mut out = Vec::new();
    let default = "/proc/irq/default_smp_affinity".to_owned();
    let mask = host
        .read(&default)
        .ok()
        .and_then(|t| crate::host::format::parse_cpu_mask(&t).ok());
    if let Some(set) = mask {
        out.push((default, true, set));
    }
    let workqueue = host
        .read(WORKQUEUE)
        .ok()
        .and_then(|t| crate::host::format::parse_cpu_mask(&t).ok());
    if let Some(set) = workqueue {
        out.push((WORKQUEUE.to_owned(), true, set));
    }
    for irq in host
        .list("/proc/irq")
        .iter()
        .filter(|n| n.parse::<u32>().is_ok())
    {
        let path = format!("/proc/irq/{irq}/smp_affinity_list");
        if let Some(set) = host.read(&path).ok().and_then(|t| parse_cpu_list(&t).ok()) {
            out.push((path, false, set));
        }
    }
    out
}

/// An IRQ affinity file's text for `set`: a mask for the default, a list for an IRQ.
fn irq_value(mask: bool, set: &BTreeSet<u32>) -> String {
    if mask {
        crate::host::format::format_cpu_mask(set)
    } else {
        format_cpu_list(set)
    }
}

/// A journaled CPU list as the text of the IRQ affinity file at `path` (the default's is a
/// mask), for a person to write back by hand.
pub(super) fn irq_text(path: &str, list: &str) -> String {
    match parse_cpu_list(list) {
        Ok(set) => irq_value(is_mask(path), &set),
        Err(_) => list.to_owned(),
    }
}

/// Writes an IRQ's affinity (a mask for the default, a list for an IRQ); a refusal (a
/// managed IRQ) is logged and returned.
pub(super) fn write_irq(
    host: &Host,
    path: &str,
    mask: bool,
    set: &BTreeSet<u32>,
) -> Result<(), crate::host::Error> {
    host.write(path, &irq_value(mask, set)).inspect_err(|e| {
        tracing::debug!(error = %e, "IRQ affinity not changed");
    })
}

/// IRQs off `cpus`, originals journaled first.
pub(super) fn irqs_off(
    host: &Host,
    conn: &mut Connection,
    cpus: &BTreeSet<u32>,
    raised: &mut Raised,
) -> rusqlite::Result<()> {
    // Every IRQ is journaled, those left alone with their affinity unchanged: lowering
    // then knows which IRQs appeared while the shield was up.
    let irqs: Vec<(String, bool, BTreeSet<u32>, BTreeSet<u32>)> = irq_files(host)
        .into_iter()
        .map(|(path, mask, set)| {
            let reduced: BTreeSet<u32> = set.difference(cpus).copied().collect();
            if set.is_disjoint(cpus) || reduced.is_empty() {
                (path, mask, set.clone(), set)
            } else {
                (path, mask, set, reduced)
            }
        })
        .collect();
    let rows: Vec<journal::Saved<String>> = irqs
        .iter()
        .map(|(path, _, original, reduced)| journal::Saved {
            key: path.clone(),
            original: format_cpu_list(original),
            written: format_cpu_list(reduced),
        })
        .collect();
    journal::add_irqs(conn, &rows)?;
    let mut unmovable = Vec::new();
    for (path, mask, _, reduced) in irqs.iter().filter(|(_, _, o, r)| o != r) {
        if write_irq(host, path, *mask, reduced).is_ok() {
            raised.irqs_moved += 1;
        } else {
            raised.irqs_unmovable += 1;
            unmovable.push(path.as_str());
        }
    }
    journal::irqs_left_alone(conn, &unmovable)
}

/// IRQ affinity files the shield moved off its CPUs that are allowed on them again (someone
/// changed them since; a move among the other CPUs, as irqbalance makes, is not drift):
/// each path with the shield's value and the current one.
pub fn drifted_irqs(host: &Host, conn: &Connection) -> Vec<(String, String, String)> {
    let (Ok((rows, _)), Ok(Some(meta))) = (journal::irqs(conn), journal::meta(conn)) else {
        return Vec::new();
    };
    let Ok(shielded) = parse_cpu_list(&meta.shielded) else {
        return Vec::new();
    };
    rows.into_iter()
        .filter(|r| r.original != r.written)
        .filter_map(|r| {
            let text = host.read(&r.key).ok()?;
            let current = if is_mask(&r.key) {
                crate::host::format::parse_cpu_mask(&text).ok()?
            } else {
                parse_cpu_list(&text).ok()?
            };
            let now = format_cpu_list(&current);
            (!current.is_disjoint(&shielded)).then_some((r.key, r.written, now))
        })
        .collect()
}

/// Journaled IRQ affinities still as the shield left them get their originals back.
/// Returns how many were restored, and the rows the kernel refused (still the shield's:
/// they stay journaled, and the next lowering tries again).
pub(super) fn irqs_back(host: &Host, irqs: &[journal::Saved<String>]) -> (usize, Vec<Refusal>) {
    let mut restored = 0;
    let mut refused = Vec::new();
    for row in irqs {
        let mask = is_mask(&row.key);
        let current = host.read(&row.key).ok().and_then(|t| {
            if mask {
                crate::host::format::parse_cpu_mask(&t).ok()
            } else {
                parse_cpu_list(&t).ok()
            }
        });
        let (Ok(original), Ok(written)) =
            (parse_cpu_list(&row.original), parse_cpu_list(&row.written))
        else {
            continue;
        };
        // Compare-and-swap: only an affinity still as the shield left it goes back.
        if original == written || current.as_ref() != Some(&written) {
            continue;
        }
        match write_irq(host, &row.key, mask, &original) {
            Ok(()) => restored += 1,
            Err(e) if host.exists(&row.key) => {
                tracing::error!(path = %row.key, cpus = %row.original, "cannot give an IRQ its CPUs back: kept for the next lowering (forgotten if this one is forced)");
                refused.push(Refusal {
                    row: Row::Irq(row.clone()),
                    reason: e.to_string(),
                });
            }
            Err(_) => {} // gone
        }
    }
    (restored, refused)
}

/// IRQs that appeared while the shield was up took the shield's default affinity; those
/// that still have exactly it get the default's original back. The shield's default is
/// the default's journaled `written` value (without a default file: every online CPU but
/// the shielded ones, to become every online CPU). `journaled` must be the complete list
/// of IRQs at raise time.
/// Returns how many were widened, and rows to journal for those the kernel refused (the
/// next lowering tries again).
pub(super) fn widen_new_irqs(
    host: &Host,
    meta: &journal::Meta,
    journaled: &[journal::Saved<String>],
) -> (usize, Vec<Refusal>) {
    let mut refused = Vec::new();
    if host.boot_id().ok().as_deref() != Some(meta.boot_id.as_str()) {
        return (0, refused);
    }
    let (Ok(shielded), Ok(online)) = (parse_cpu_list(&meta.shielded), parse_cpu_list(&meta.online))
    else {
        return (0, refused);
    };
    let journaled_default = journaled
        .iter()
        .find(|r| r.key.ends_with("default_smp_affinity"))
        .and_then(|r| {
            Some((
                parse_cpu_list(&r.original).ok()?,
                parse_cpu_list(&r.written).ok()?,
            ))
        });
    let (default, reduced) = journaled_default.unwrap_or_else(|| {
        (
            online.clone(),
            online.difference(&shielded).copied().collect(),
        )
    });
    if default == reduced {
        // The default was left as it was: new IRQs took its original.
        return (0, refused);
    }
    let mut widened = 0;
    for (path, mask, current) in irq_files(host) {
        if mask || current != reduced || journaled.iter().any(|r| r.key == path) {
            continue;
        }
        match write_irq(host, &path, false, &default) {
            Ok(()) => widened += 1,
            Err(e) if host.exists(&path) => {
                tracing::error!(path = %path, cpus = %format_cpu_list(&default), "cannot give an IRQ that appeared under the shield the default affinity: kept for the next lowering (forgotten if this one is forced)");
                refused.push(Refusal {
                    row: Row::Irq(journal::Saved {
                        key: path,
                        original: format_cpu_list(&default),
                        written: format_cpu_list(&reduced),
                    }),
                    reason: e.to_string(),
                });
            }
            Err(_) => {} // gone
        }
    }
    (widened, refused)
}
