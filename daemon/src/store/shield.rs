//! The shield journal: what raising the shield changed, written before each change, so
//! lowering it (or the next start, after a crash) can put everything back
//! compare-and-swap. Synchronous functions on a connection, called from the shield's
//! blocking code; each commits before it returns.
//!
//! Tables (migrations 3 and 4): `shield_meta` (one row while a shield is journaled: when and
//! over which CPUs it went up, and the cgroups it made), `shield` (thread masks, and which
//! belong to processes moved into the v1 shield cpuset), `shield_cpuset` (v1 cpusets that
//! gave up the shielded CPUs) and `shield_irq` (IRQ affinities, plus a marker row saying the
//! list is complete, so IRQs that appear later are told apart).
//!
//! What the kernel refused to take back stays until a lowering puts it back, or until an
//! admin's forced lowering forgets it ([`Refused::Forget`]), in the commit that writes one
//! audit row per item forgotten.

use rusqlite::{Connection, OptionalExtension, params};

/// The `shield_irq` row saying every IRQ present at raise time is journaled.
const IRQS_COMPLETE: &str = "(every irq)";

/// When and over what a shield went up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Clock ticks since boot when it went up (threads born later are told apart).
    pub raised_at: i64,
    /// The boot it went up in.
    pub boot_id: String,
    /// The shielded CPUs, a CPU list.
    pub shielded: String,
    /// The online CPUs then, a CPU list.
    pub online: String,
    /// v1: the cpuset the other processes moved into.
    pub cpuset_dir: Option<String>,
    /// v1: the mount (root cpuset) they came from.
    pub cpuset_mount: Option<String>,
    /// v2: the partition exclusive runs live in.
    pub partition: Option<String>,
    /// v2: controllers the shield enabled in the root cgroup (space-separated).
    pub root_enabled: Option<String>,
}

/// A journaled value of one thing the shield changed: a thread's mask, a cpuset's CPUs, an
/// IRQ's affinity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved<K> {
    /// What it is: a thread, a cpuset directory, an IRQ file.
    pub key: K,
    /// Its value before the shield, a CPU list.
    pub original: String,
    /// The value the shield left, a CPU list.
    pub written: String,
}

/// A thread: its id and start time (clock ticks since boot), which together name it even
/// after its id is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thread {
    /// Thread id.
    pub tid: i32,
    /// Start time.
    pub start: i64,
}

/// A cpuset directory and its depth below the mount (restored parents first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cpuset {
    /// The directory.
    pub path: String,
    /// Its depth below the mount.
    pub depth: i64,
}

/// Records that a shield is going up (replacing any earlier record).
pub fn begin(conn: &Connection, meta: &Meta) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO shield_meta
             (id, raised_at, boot_id, shielded, online, cpuset_dir, cpuset_mount, partition,
              root_enabled)
         VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            meta.raised_at,
            meta.boot_id,
            meta.shielded,
            meta.online,
            meta.cpuset_dir,
            meta.cpuset_mount,
            meta.partition,
            meta.root_enabled,
        ],
    )?;
    Ok(())
}

/// The shield's record, if one is journaled.
pub fn meta(conn: &Connection) -> rusqlite::Result<Option<Meta>> {
    conn.query_row(
        "SELECT raised_at, boot_id, shielded, online, cpuset_dir, cpuset_mount, partition,
                root_enabled
         FROM shield_meta WHERE id = 1",
        [],
        |r| {
            Ok(Meta {
                raised_at: r.get(0)?,
                boot_id: r.get(1)?,
                shielded: r.get(2)?,
                online: r.get(3)?,
                cpuset_dir: r.get(4)?,
                cpuset_mount: r.get(5)?,
                partition: r.get(6)?,
                root_enabled: r.get(7)?,
            })
        },
    )
    .optional()
}

/// Sets (or clears) the partition of the journaled shield.
pub fn set_partition(conn: &Connection, partition: Option<&str>) -> rusqlite::Result<()> {
    conn.execute("UPDATE shield_meta SET partition = ?1", params![partition])?;
    Ok(())
}

/// Sets (or clears) the controllers the shield enabled in the root cgroup.
pub fn set_root_enabled(conn: &Connection, controllers: Option<&str>) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE shield_meta SET root_enabled = ?1",
        params![controllers],
    )?;
    Ok(())
}

/// Whether a shield is journaled (raised, or left by a crash).
pub fn is_raised(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM shield) OR EXISTS (SELECT 1 FROM shield_irq)
             OR EXISTS (SELECT 1 FROM shield_meta) OR EXISTS (SELECT 1 FROM shield_cpuset)",
        [],
        |r| r.get(0),
    )
}

/// Whether anything but the record itself is still journaled (a lowering that did not
/// finish).
pub fn has_leftovers(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM shield) OR EXISTS (SELECT 1 FROM shield_irq)
             OR EXISTS (SELECT 1 FROM shield_cpuset)",
        [],
        |r| r.get(0),
    )
}

/// Journals thread masks about to change (one commit); a thread already journaled keeps
/// its first original. `moved`: they belong to processes moved into the v1 cpuset.
pub fn add_threads(
    conn: &mut Connection,
    rows: &[Saved<Thread>],
    moved: bool,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut ins = tx.prepare_cached(
            "INSERT OR IGNORE INTO shield (tid, start_time, original, written, moved)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for r in rows {
            ins.execute(params![
                r.key.tid,
                r.key.start,
                r.original,
                r.written,
                moved
            ])?;
        }
    }
    tx.commit()
}

/// Records the mask the kernel actually gave a thread.
pub fn set_thread_written(conn: &Connection, tid: i32, written: &str) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE shield SET written = ?2 WHERE tid = ?1",
        params![tid, written],
    )?;
    Ok(())
}

/// Forgets the journaled masks of threads whose process could not be moved after all.
pub fn forget_moved_threads(conn: &Connection, tids: &[i32]) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached("DELETE FROM shield WHERE tid = ?1 AND moved = 1")?;
    for tid in tids {
        stmt.execute(params![tid])?;
    }
    Ok(())
}

/// The journaled thread masks, those of moved processes or the others.
pub fn threads(conn: &Connection, moved: bool) -> rusqlite::Result<Vec<Saved<Thread>>> {
    let mut stmt = conn
        .prepare_cached("SELECT tid, start_time, original, written FROM shield WHERE moved = ?1")?;
    let rows = stmt.query_map(params![moved], |r| {
        Ok(Saved {
            key: Thread {
                tid: r.get(0)?,
                start: r.get(1)?,
            },
            original: r.get(2)?,
            written: r.get(3)?,
        })
    })?;
    rows.collect()
}

/// Forgets every journaled thread mask.
pub fn clear_threads(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM shield", [])?;
    Ok(())
}

/// Journals cpusets about to give up CPUs (one commit).
pub fn add_cpusets(conn: &mut Connection, rows: &[Saved<Cpuset>]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut ins = tx.prepare_cached(
            "INSERT OR IGNORE INTO shield_cpuset (path, depth, original, written)
             VALUES (?1, ?2, ?3, ?4)",
        )?;
        for r in rows {
            ins.execute(params![r.key.path, r.key.depth, r.original, r.written])?;
        }
    }
    tx.commit()
}

/// The journaled cpusets, parents first.
pub fn cpusets(conn: &Connection) -> rusqlite::Result<Vec<Saved<Cpuset>>> {
    let mut stmt = conn.prepare_cached(
        "SELECT path, depth, original, written FROM shield_cpuset ORDER BY depth ASC",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(Saved {
            key: Cpuset {
                path: r.get(0)?,
                depth: r.get(1)?,
            },
            original: r.get(2)?,
            written: r.get(3)?,
        })
    })?;
    rows.collect()
}

/// Forgets every journaled cpuset but those in `kept` (directories whose CPUs could not be
/// given back).
pub fn clear_cpusets_but(conn: &Connection, kept: &[String]) -> rusqlite::Result<()> {
    let mut paths = conn.prepare_cached("SELECT path FROM shield_cpuset")?;
    let paths: Vec<String> = paths
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut forget = conn.prepare_cached("DELETE FROM shield_cpuset WHERE path = ?1")?;
    for path in paths.iter().filter(|p| !kept.contains(p)) {
        forget.execute([path])?;
    }
    Ok(())
}

/// Journals every IRQ affinity file (those left alone with their value unchanged) and marks
/// the list complete, in one commit.
pub fn add_irqs(conn: &mut Connection, rows: &[Saved<String>]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut ins = tx.prepare_cached(
            "INSERT OR IGNORE INTO shield_irq (path, original, written) VALUES (?1, ?2, ?3)",
        )?;
        for r in rows {
            ins.execute(params![r.key, r.original, r.written])?;
        }
        ins.execute(params![IRQS_COMPLETE, "", ""])?;
    }
    tx.commit()
}

/// IRQs whose affinity the kernel would not change (managed ones): journaled as left alone
/// (`written` their original), so neither a lowering nor a verify takes them for moved.
/// One commit for all of them.
pub fn irqs_left_alone(conn: &mut Connection, paths: &[&str]) -> rusqlite::Result<()> {
    if paths.is_empty() {
        return Ok(());
    }
    let tx = conn.transaction()?;
    {
        let mut update =
            tx.prepare_cached("UPDATE shield_irq SET written = original WHERE path = ?1")?;
        for path in paths {
            update.execute([path])?;
        }
    }
    tx.commit()
}

/// The journaled IRQ affinities, and whether the list is complete (every IRQ present when
/// the shield went up).
pub fn irqs(conn: &Connection) -> rusqlite::Result<(Vec<Saved<String>>, bool)> {
    let mut stmt = conn.prepare_cached("SELECT path, original, written FROM shield_irq")?;
    let rows = stmt.query_map([], |r| {
        Ok(Saved {
            key: r.get::<_, String>(0)?,
            original: r.get(1)?,
            written: r.get(2)?,
        })
    })?;
    let all: Vec<Saved<String>> = rows.collect::<rusqlite::Result<_>>()?;
    let complete = all.iter().any(|r| r.key == IRQS_COMPLETE);
    Ok((
        all.into_iter().filter(|r| r.key != IRQS_COMPLETE).collect(),
        complete,
    ))
}

/// What a lowering does with what the kernel refused to take back.
#[derive(Debug, Clone, Copy)]
pub enum Refused<'a> {
    /// Keeps it journaled for the next lowering: these IRQ rows (IRQs whose original the
    /// kernel refused, and IRQs that appeared under the shield and could not be widened,
    /// which are added), and the cpusets [`clear_cpusets_but`] kept.
    Keep(&'a [Saved<String>]),
    /// Forgets it, cpusets included, and audits each item forgotten with one of these
    /// rows, in the same commit: no row is forgotten unaudited.
    Forget(&'a [crate::store::AuditEvent]),
}

/// After lowering: the IRQ rows and the record go, in one commit, but for what could not
/// be put back. With `partition_left` (a partition that could not be removed yet) the
/// record stays with only the partition, so the next lowering removes it. While any IRQ
/// could not be put back and is kept ([`Refused::Keep`]), the IRQ journal stays whole, so
/// the next lowering tries again and still tells IRQs that appear meanwhile apart; cpusets
/// [`clear_cpusets_but`] kept stay too. The record stays for them all. A forced lowering
/// ([`Refused::Forget`]) forgets them instead, with their audit rows.
pub fn finish_lowering(
    conn: &mut Connection,
    partition_left: bool,
    refused: Refused<'_>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let kept = match refused {
        Refused::Keep(kept) => kept,
        Refused::Forget(audit) => {
            tx.execute("DELETE FROM shield_cpuset", [])?;
            crate::store::audit_now(&tx, audit)?;
            &[]
        }
    };
    if kept.is_empty() {
        tx.execute("DELETE FROM shield_irq", [])?;
    } else {
        let mut keep = tx.prepare_cached(
            "INSERT OR IGNORE INTO shield_irq (path, original, written) VALUES (?1, ?2, ?3)",
        )?;
        for r in kept {
            keep.execute(params![r.key, r.original, r.written])?;
        }
    }
    let cpusets_kept: bool =
        tx.query_row("SELECT EXISTS (SELECT 1 FROM shield_cpuset)", [], |r| {
            r.get(0)
        })?;
    if partition_left || cpusets_kept || !kept.is_empty() {
        tx.execute(
            "UPDATE shield_meta SET cpuset_dir = NULL, cpuset_mount = NULL, root_enabled = NULL,
                 partition = CASE WHEN ?1 THEN partition END",
            [partition_left],
        )?;
    } else {
        tx.execute("DELETE FROM shield_meta", [])?;
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, crate::store::Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn a_shield_is_journaled_until_lowering_finishes() {
        let (_d, store) = store();
        let mut c = store.lock_blocking();
        assert!(!is_raised(&c).unwrap());
        let up = Meta {
            raised_at: 5,
            boot_id: "b".into(),
            shielded: "1".into(),
            online: "0-1".into(),
            partition: Some("/sys/fs/cgroup/p".into()),
            ..Meta::default()
        };
        begin(&c, &up).unwrap();
        set_root_enabled(&c, Some("cpuset")).unwrap();
        assert_eq!(
            meta(&c).unwrap().unwrap().root_enabled.as_deref(),
            Some("cpuset")
        );
        let t = |tid| Saved {
            key: Thread { tid, start: 9 },
            original: "0-1".into(),
            written: "0".into(),
        };
        add_threads(&mut c, &[t(10), t(11)], true).unwrap();
        add_threads(&mut c, &[t(12)], false).unwrap();
        // A thread already journaled keeps its first original.
        add_threads(
            &mut c,
            &[Saved {
                original: "1".into(),
                ..t(12)
            }],
            false,
        )
        .unwrap();
        forget_moved_threads(&c, &[11]).unwrap();
        assert_eq!(threads(&c, true).unwrap(), vec![t(10)]);
        assert_eq!(threads(&c, false).unwrap(), vec![t(12)]);
        add_irqs(
            &mut c,
            &[Saved {
                key: "/proc/irq/1/smp_affinity_list".into(),
                original: "0-1".into(),
                written: "0".into(),
            }],
        )
        .unwrap();
        let (irq_rows, complete) = irqs(&c).unwrap();
        assert!(complete);
        assert_eq!(irq_rows.len(), 1, "the marker row is not an IRQ");
        clear_threads(&c).unwrap();
        clear_cpusets_but(&c, &[]).unwrap();
        // A partition that could not be removed keeps the record, without the rest.
        finish_lowering(&mut c, true, Refused::Keep(&[])).unwrap();
        assert!(!has_leftovers(&c).unwrap());
        let left = meta(&c).unwrap().unwrap();
        assert_eq!(left.partition, up.partition);
        assert_eq!(left.root_enabled, None);
        assert!(is_raised(&c).unwrap());
        finish_lowering(&mut c, false, Refused::Keep(&[])).unwrap();
        assert!(!is_raised(&c).unwrap());
    }

    #[test]
    fn a_cpuset_a_lowering_could_not_put_back_keeps_the_record() {
        let (_d, store) = store();
        let mut c = store.lock_blocking();
        let cs = |path: &str| Saved {
            key: Cpuset {
                path: path.into(),
                depth: 1,
            },
            original: "0-3".into(),
            written: "0-1".into(),
        };
        begin(&c, &Meta::default()).unwrap();
        add_cpusets(&mut c, &[cs("/a"), cs("/b")]).unwrap();
        clear_cpusets_but(&c, &["/b".to_owned()]).unwrap();
        finish_lowering(&mut c, false, Refused::Keep(&[])).unwrap();
        assert_eq!(cpusets(&c).unwrap(), vec![cs("/b")]);
        assert!(has_leftovers(&c).unwrap() && meta(&c).unwrap().is_some());
        clear_cpusets_but(&c, &[]).unwrap();
        finish_lowering(&mut c, false, Refused::Keep(&[])).unwrap();
        assert!(!is_raised(&c).unwrap());
    }

    #[test]
    fn a_forced_lowering_forgets_what_was_kept_with_its_audit_rows() {
        let (_d, store) = store();
        let mut c = store.lock_blocking();
        begin(&c, &Meta::default()).unwrap();
        let irq = Saved {
            key: "/proc/irq/1/smp_affinity_list".to_owned(),
            original: "0-3".into(),
            written: "0-1".into(),
        };
        add_irqs(&mut c, std::slice::from_ref(&irq)).unwrap();
        add_cpusets(
            &mut c,
            &[Saved {
                key: Cpuset {
                    path: "/a".into(),
                    depth: 1,
                },
                original: "0-3".into(),
                written: "0-1".into(),
            }],
        )
        .unwrap();
        // Both refused: kept.
        clear_cpusets_but(&c, &["/a".to_owned()]).unwrap();
        finish_lowering(&mut c, false, Refused::Keep(std::slice::from_ref(&irq))).unwrap();
        assert!(has_leftovers(&c).unwrap());
        // Refused again, forced: forgotten, each with its audit row, in one commit.
        let audit = |what: &str| crate::store::AuditEvent {
            uid: 0,
            gid: 0,
            pid: 7,
            method: "shield.lower".into(),
            params_digest: String::new(),
            outcome: format!("forgot {what}"),
        };
        clear_cpusets_but(&c, &["/a".to_owned()]).unwrap();
        let rows = [audit("/a/cpuset.cpus"), audit(&irq.key)];
        finish_lowering(&mut c, false, Refused::Forget(&rows)).unwrap();
        assert!(!is_raised(&c).unwrap());
        drop(c);
        let recorded = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(store.recent_audit(10))
            .unwrap();
        assert_eq!(recorded, [rows[1].clone(), rows[0].clone()], "newest first");
    }

    #[test]
    fn cpusets_come_back_parents_first() {
        let (_d, store) = store();
        let mut c = store.lock_blocking();
        let cs = |path: &str, depth| Saved {
            key: Cpuset {
                path: path.into(),
                depth,
            },
            original: "0-3".into(),
            written: "0-1".into(),
        };
        add_cpusets(&mut c, &[cs("/a/b/c", 3), cs("/a", 1), cs("/a/b", 2)]).unwrap();
        let order: Vec<String> = cpusets(&c)
            .unwrap()
            .into_iter()
            .map(|r| r.key.path)
            .collect();
        assert_eq!(order, ["/a", "/a/b", "/a/b/c"]);
    }
}
