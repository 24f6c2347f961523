//! The pin journal: the original and written value of every task attribute pinning
//! changed. Rows are committed before the change is made, with `synchronous=NORMAL`: a
//! task does not outlive a power cut, so what only a power cut could lose (the newest
//! rows of a WAL not yet synced) has nothing left to restore; a crash of the daemon loses
//! nothing.

use rusqlite::{Connection, OptionalExtension, params};

use super::with_normal_sync;

/// One task attribute pinning changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Thread id.
    pub tid: i32,
    /// Its start time (clock ticks since boot).
    pub start: i64,
    /// The attribute's name (`crate::pin::sched::Attr::as_str`).
    pub attr: String,
    /// Its process.
    pub pid: i32,
    /// The thread's name when it was placed.
    pub comm: String,
    /// The rule that placed it, as text.
    pub rule: String,
    /// The value before cleanroom first changed it.
    pub original: String,
    /// The value cleanroom wrote (or is about to write).
    pub written: String,
}

/// Records changes about to be made, one commit: a new row keeps `original`; a row
/// already there keeps its first original and takes the new `written` and rule.
pub fn record(conn: &mut Connection, rows: &[Row]) -> rusqlite::Result<()> {
    record_with(conn, rows, false)
}

/// [`record`], for placements onto a partition's CPUs: a thread whose mask the shield
/// journaled (it narrowed it, or moved its process) is the pinning's from then on. Its
/// `cpus` row takes the shield's original (the mask before either touched it) and the
/// shield forgets the thread, in the same commit.
pub fn record_over_shield(conn: &mut Connection, rows: &[Row]) -> rusqlite::Result<()> {
    record_with(conn, rows, true)
}

fn record_with(conn: &mut Connection, rows: &[Row], over_shield: bool) -> rusqlite::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    with_normal_sync(conn, |conn| {
        let tx = conn.transaction()?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO pin_journal (tid, start, attr, pid, comm, rule, original, written)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (tid, start, attr) DO UPDATE SET
                     written = excluded.written, rule = excluded.rule, comm = excluded.comm",
            )?;
            let mut shielded = tx
                .prepare_cached("SELECT original FROM shield WHERE tid = ?1 AND start_time = ?2")?;
            let mut forget =
                tx.prepare_cached("DELETE FROM shield WHERE tid = ?1 AND start_time = ?2")?;
            for r in rows {
                let mut original = r.original.clone();
                if over_shield && r.attr == "cpus" {
                    let theirs: Option<String> = shielded
                        .query_row(params![r.tid, r.start], |x| x.get(0))
                        .optional()?;
                    if let Some(o) = theirs {
                        original = o;
                        forget.execute(params![r.tid, r.start])?;
                    }
                }
                ins.execute(params![
                    r.tid, r.start, r.attr, r.pid, r.comm, r.rule, original, r.written
                ])?;
            }
        }
        tx.commit()
    })
}

/// After a change the kernel kept in another form (an affinity narrowed to what the
/// task's cpuset allows): that form is cleanroom's value.
pub fn rendered(
    conn: &mut Connection,
    tid: i32,
    start: i64,
    attr: &str,
    value: &str,
) -> rusqlite::Result<()> {
    with_normal_sync(conn, |conn| {
        conn.execute(
            "UPDATE pin_journal SET written = ?4 WHERE tid = ?1 AND start = ?2 AND attr = ?3",
            params![tid, start, attr, value],
        )?;
        Ok(())
    })
}

/// Threads placed on any of `cpus` (their journaled CPU lists reach them): a partition
/// raised over `cpus` leaves them alone.
pub fn placed_on(
    conn: &Connection,
    cpus: &std::collections::BTreeSet<u32>,
) -> rusqlite::Result<Vec<i32>> {
    Ok(rows(conn)?
        .into_iter()
        .filter(|r| {
            r.attr == "cpus"
                && crate::host::format::parse_cpu_list(&r.written)
                    .is_ok_and(|s| !s.is_disjoint(cpus))
        })
        .map(|r| r.tid)
        .collect())
}

/// Every row, by task.
pub fn rows(conn: &Connection) -> rusqlite::Result<Vec<Row>> {
    let mut st = conn.prepare_cached(
        "SELECT tid, start, attr, pid, comm, rule, original, written FROM pin_journal
         ORDER BY pid, tid, attr",
    )?;
    let rows = st.query_map([], row)?;
    rows.collect()
}

/// The rows of every task of process `pid`, newest task first.
pub fn of_process(conn: &Connection, pid: i32) -> rusqlite::Result<Vec<Row>> {
    let mut st = conn.prepare_cached(
        "SELECT tid, start, attr, pid, comm, rule, original, written FROM pin_journal
         WHERE pid = ?1 ORDER BY start DESC, attr",
    )?;
    let rows = st.query_map([pid], row)?;
    rows.collect()
}

/// The rows of the newest task with thread id `tid` that started no later than `before`
/// (a task's creator started before it).
pub fn of_tid(conn: &Connection, tid: i32, before: i64) -> rusqlite::Result<Vec<Row>> {
    let mut st = conn.prepare_cached(
        "SELECT tid, start, attr, pid, comm, rule, original, written FROM pin_journal
         WHERE tid = ?1 AND start = (SELECT max(start) FROM pin_journal WHERE tid = ?1 AND start <= ?2)
         ORDER BY attr",
    )?;
    let rows = st.query_map(params![tid, before], row)?;
    rows.collect()
}

/// Tasks that ended: their rows go (nothing of them is left to put back). One commit.
pub fn exited(conn: &mut Connection, tids: &[i32]) -> rusqlite::Result<()> {
    if tids.is_empty() {
        return Ok(());
    }
    with_normal_sync(conn, |conn| {
        let tx = conn.transaction()?;
        {
            let mut del = tx.prepare_cached("DELETE FROM pin_journal WHERE tid = ?1")?;
            for tid in tids {
                del.execute([tid])?;
            }
        }
        tx.commit()
    })
}

/// The rows of one task.
pub fn of_task(conn: &Connection, tid: i32, start: i64) -> rusqlite::Result<Vec<Row>> {
    let mut st = conn.prepare_cached(
        "SELECT tid, start, attr, pid, comm, rule, original, written FROM pin_journal
         WHERE tid = ?1 AND start = ?2 ORDER BY attr",
    )?;
    let rows = st.query_map(params![tid, start], row)?;
    rows.collect()
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        tid: r.get(0)?,
        start: r.get(1)?,
        attr: r.get(2)?,
        pid: r.get(3)?,
        comm: r.get(4)?,
        rule: r.get(5)?,
        original: r.get(6)?,
        written: r.get(7)?,
    })
}

/// How many rows there are (task attributes and cgroup files).
pub fn count(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT (SELECT count(*) FROM pin_journal) + (SELECT count(*) FROM pin_cgroups)",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as u64)
}

/// What became of each row after a revert: `None` drops it (restored, or the task is
/// gone); `Some(true)` keeps it for `--force` with only its original counting as
/// cleanroom's (someone else's value); `Some(false)` keeps it as it is (the kernel
/// refused the original). One commit.
pub fn settle(conn: &mut Connection, fates: &[(&Row, Option<bool>)]) -> rusqlite::Result<()> {
    with_normal_sync(conn, |conn| {
        let tx = conn.transaction()?;
        {
            let mut del = tx.prepare_cached(
                "DELETE FROM pin_journal WHERE tid = ?1 AND start = ?2 AND attr = ?3",
            )?;
            let mut disown = tx.prepare_cached(
                "UPDATE pin_journal SET written = original WHERE tid = ?1 AND start = ?2 AND attr = ?3",
            )?;
            for (row, fate) in fates {
                let key = params![row.tid, row.start, row.attr];
                match fate {
                    None => del.execute(key)?,
                    Some(true) => disown.execute(key)?,
                    Some(false) => 0,
                };
            }
        }
        tx.commit()
    })
}

/// Drops every row (a new boot: no task of the last one lives).
pub fn clear(conn: &mut Connection) -> rusqlite::Result<()> {
    with_normal_sync(conn, |conn| {
        conn.execute("DELETE FROM pin_journal", [])?;
        conn.execute("DELETE FROM pin_cgroups", [])?;
        Ok(())
    })
}

/// A cgroup file a rule wrote: its original (before cleanroom first changed it) and the
/// value written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupRow {
    /// The file (`.../cpuset.cpus`, `.../cpuset.mems`).
    pub file: String,
    /// The rule that wrote it, as one line.
    pub rule: String,
    /// Its value before.
    pub original: String,
    /// The value written.
    pub written: String,
}

/// Records a cgroup file change about to be made (committed before it is): a file
/// already journaled keeps its first original.
pub fn record_cgroup(conn: &Connection, r: &CgroupRow) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO pin_cgroups (file, rule, original, written) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (file) DO UPDATE SET written = excluded.written, rule = excluded.rule",
        params![r.file, r.rule, r.original, r.written],
    )?;
    Ok(())
}

/// Every journaled cgroup file.
pub fn cgroup_rows(conn: &Connection) -> rusqlite::Result<Vec<CgroupRow>> {
    let mut st =
        conn.prepare_cached("SELECT file, rule, original, written FROM pin_cgroups ORDER BY file")?;
    let rows = st.query_map([], |r| {
        Ok(CgroupRow {
            file: r.get(0)?,
            rule: r.get(1)?,
            original: r.get(2)?,
            written: r.get(3)?,
        })
    })?;
    rows.collect()
}

/// Forgets a cgroup file (its original is back, or the cgroup is gone).
pub fn forget_cgroup(conn: &Connection, file: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM pin_cgroups WHERE file = ?1", [file])?;
    Ok(())
}

/// A pin rule added by hand, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its id.
    pub id: u64,
    /// The rule as the request gave it (JSON).
    pub spec: String,
    /// Who added it.
    pub uid: u32,
}

/// Stores a rule added by hand; its id. Durable (`synchronous=FULL`): a rule outlives a
/// power cut, and its placements are made again after one.
pub fn add_rule(conn: &Connection, spec: &str, uid: u32) -> rusqlite::Result<u64> {
    conn.execute(
        "INSERT INTO pin_rules (spec, uid, created) VALUES (?1, ?2, ?3)",
        params![spec, uid, super::now()],
    )?;
    Ok(conn.last_insert_rowid() as u64)
}

/// Every rule added by hand, oldest first.
pub fn stored_rules(conn: &Connection) -> rusqlite::Result<Vec<Stored>> {
    let mut st = conn.prepare_cached("SELECT id, spec, uid FROM pin_rules ORDER BY id")?;
    let rows = st.query_map([], |r| {
        Ok(Stored {
            id: r.get::<_, i64>(0)? as u64,
            spec: r.get(1)?,
            uid: r.get(2)?,
        })
    })?;
    rows.collect()
}

/// Removes a rule added by hand; whether it was there.
pub fn remove_rule(conn: &Connection, id: u64) -> rusqlite::Result<bool> {
    Ok(conn.execute("DELETE FROM pin_rules WHERE id = ?1", [id as i64])? > 0)
}

/// Removes every rule added by hand (`cleanroomd --revert`: the whole host back).
pub fn clear_rules(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM pin_rules", [])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tid: i32, attr: &str, original: &str, written: &str) -> Row {
        Row {
            tid,
            start: 100,
            attr: attr.into(),
            pid: tid,
            comm: "x".into(),
            rule: "comm=\"x\" -> cpus=1".into(),
            original: original.into(),
            written: written.into(),
        }
    }

    #[test]
    fn the_first_original_stays_and_fates_settle_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let mut c = store.lock_blocking();
        record(
            &mut c,
            &[row(1, "cpus", "0-1", "1"), row(2, "nice", "0", "-5")],
        )
        .unwrap();
        // Placed again by another rule: the first original stays.
        record(&mut c, &[row(1, "cpus", "1", "0")]).unwrap();
        assert_eq!(rows(&c).unwrap()[0].original, "0-1");
        assert_eq!(rows(&c).unwrap()[0].written, "0");
        rendered(&mut c, 2, 100, "nice", "-4").unwrap();
        assert_eq!(of_task(&c, 2, 100).unwrap()[0].written, "-4");
        assert!(of_task(&c, 2, 101).unwrap().is_empty(), "another task");
        let all = rows(&c).unwrap();
        settle(&mut c, &[(&all[0], None), (&all[1], Some(true))]).unwrap();
        let left = rows(&c).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(
            (left[0].original.as_str(), left[0].written.as_str()),
            ("0", "0")
        );
        clear(&mut c).unwrap();
        assert_eq!(count(&c).unwrap(), 0);
    }
}
