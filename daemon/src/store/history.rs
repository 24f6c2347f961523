//! Run history and baselines. Each batch (one `run.start`) is stored with its result as
//! the protocol returns it; the oldest batches beyond the retention limit are dropped
//! (baselines keep theirs).

use rusqlite::{Connection, OptionalExtension, params};

/// One stored batch, without its records.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRow {
    /// Batch id.
    pub batch: String,
    /// When it finished (seconds since the epoch).
    pub ts: f64,
    /// Who ran it.
    pub uid: u32,
    /// Its label.
    pub label: Option<String>,
    /// The command, JSON array.
    pub argv: String,
    /// The result, JSON.
    pub result: String,
}

use super::now;

/// Reserves `count` batch ids, durably, before any is used: the next ones after every id
/// reserved before and every batch stored (a history restored from elsewhere included).
/// Ids reserved and never used are skipped, never given again.
pub fn reserve_ids(conn: &mut Connection, count: u64) -> rusqlite::Result<std::ops::Range<u64>> {
    let tx = conn.transaction()?;
    let reserved: Option<i64> = tx
        .query_row("SELECT next FROM ids WHERE name = 'batch'", [], |r| {
            r.get(0)
        })
        .optional()?;
    let stored: Option<i64> = tx.query_row(
        "SELECT max(CAST(batch AS INTEGER)) FROM runs WHERE batch NOT GLOB '*[^0-9]*'",
        [],
        |r| r.get(0),
    )?;
    let first = reserved
        .unwrap_or(1)
        .max(stored.map_or(1, |s| s.saturating_add(1)))
        .max(1) as u64;
    let end = first.saturating_add(count);
    tx.execute(
        "INSERT INTO ids (name, next) VALUES ('batch', ?1)
         ON CONFLICT (name) DO UPDATE SET next = excluded.next",
        [end as i64],
    )?;
    tx.commit()?;
    Ok(first..end)
}

/// Stores a batch and applies the retention limit (baselines' batches are kept).
pub fn insert(conn: &mut Connection, row: &BatchRow, keep: u32) -> rusqlite::Result<()> {
    // History is not the journal: in WAL mode, NORMAL keeps the database consistent and
    // only a power cut may lose the newest batches, without an fsync on every run. The
    // connection goes back to FULL for everything else.
    super::with_normal_sync(conn, |c| insert_tx(c, row, keep))
}

fn insert_tx(conn: &mut Connection, row: &BatchRow, keep: u32) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    // The listing's columns are read out of the result here, by the same expressions
    // migration 7 used for the rows before it.
    tx.execute(
        "INSERT INTO runs (batch, ts, uid, label, argv, result,
                           n_runs, end_reason, exit_code, median_wall_ms, median_cpu_ms,
                           median_instructions, median_cycles)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, coalesce(json_array_length(?6, '$.samples.wall_ms'), nullif(json_array_length(?6, '$.runs'), 0), 1), json_extract(?6, '$.end_reason'), json_extract(?6, '$.exit_code'), coalesce(json_extract(?6, '$.stats.wall_ms.median'), json_extract(?6, '$.wall_ms')), coalesce(json_extract(?6, '$.stats.cpu_ms.median'), json_extract(?6, '$.user_ms') + json_extract(?6, '$.sys_ms')), coalesce(json_extract(?6, '$.stats.instructions.median'), json_extract(?6, '$.instructions')), coalesce(json_extract(?6, '$.stats.cycles.median'), json_extract(?6, '$.counters.cycles')))",
        params![row.batch, now(), row.uid, row.label, row.argv, row.result],
    )?;
    // Retention is per uid: one runner's thousand batches never push out anyone else's.
    tx.execute(
        "DELETE FROM runs WHERE uid = ?2 AND batch NOT IN (SELECT batch FROM baselines)
           AND batch NOT IN (SELECT batch FROM runs WHERE uid = ?2 ORDER BY ts DESC LIMIT ?1)",
        params![keep, row.uid],
    )?;
    tx.commit()
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BatchRow> {
    Ok(BatchRow {
        batch: r.get(0)?,
        ts: r.get(1)?,
        uid: r.get(2)?,
        label: r.get(3)?,
        argv: r.get(4)?,
        result: r.get(5)?,
    })
}

/// The newest batches, newest first; only `uid`'s when given.
/// A batch as listings show it: its summary columns, never its result.
#[derive(Debug, Clone, PartialEq)]
pub struct ListRow {
    /// Batch id.
    pub batch: String,
    /// When it finished (seconds since the epoch).
    pub ts: f64,
    /// Who ran it.
    pub uid: u32,
    /// Its label.
    pub label: Option<String>,
    /// The command, JSON array.
    pub argv: String,
    /// Measured runs.
    pub runs: u32,
    /// How the last one ended (as the protocol spells it).
    pub end_reason: Option<String>,
    /// Exit code of the last one.
    pub exit_code: Option<i32>,
    /// Median wall time, milliseconds.
    pub wall_ms: Option<f64>,
}

/// The newest batches (of `uid`, or everyone's), newest first.
pub fn list(conn: &Connection, uid: Option<u32>, limit: u32) -> rusqlite::Result<Vec<ListRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT batch, ts, uid, label, argv, n_runs, end_reason, exit_code, median_wall_ms
         FROM runs WHERE ?1 IS NULL OR uid = ?1 ORDER BY ts DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![uid, limit], |r| {
        Ok(ListRow {
            batch: r.get(0)?,
            ts: r.get(1)?,
            uid: r.get(2)?,
            label: r.get(3)?,
            argv: r.get(4)?,
            runs: r.get(5)?,
            end_reason: r.get(6)?,
            exit_code: r.get(7)?,
            wall_ms: r.get(8)?,
        })
    })?;
    rows.collect()
}

/// One batch.
pub fn get(conn: &Connection, batch: &str) -> rusqlite::Result<Option<BatchRow>> {
    conn.query_row(
        "SELECT batch, ts, uid, label, argv, result FROM runs WHERE batch = ?1",
        [batch],
        row,
    )
    .optional()
}

/// A batch in a label's history: its listing columns.
#[derive(Debug, Clone, PartialEq)]
pub struct PointRow {
    /// Batch id.
    pub batch: String,
    /// When it finished.
    pub ts: f64,
    /// Who ran it.
    pub uid: u32,
    /// Measured runs.
    pub runs: u32,
    /// Median wall time, milliseconds.
    pub median_wall_ms: Option<f64>,
    /// Median CPU time (user + system), milliseconds.
    pub median_cpu_ms: Option<f64>,
    /// Median instructions executed, where counted.
    pub median_instructions: Option<f64>,
    /// Median CPU cycles, where counted.
    pub median_cycles: Option<f64>,
    /// The baselines naming it.
    pub baselines: Vec<String>,
}

/// The newest `limit` batches labelled `label` that ran to their end (a run that failed,
/// timed out or was cancelled measures nothing to follow) as listings show them (never their
/// results: a history of hundreds of large batches reads a few columns each), oldest
/// first; of `uids` only when given.
pub fn label_points(
    conn: &Connection,
    label: &str,
    uids: Option<&[u32]>,
    limit: u32,
) -> rusqlite::Result<Vec<PointRow>> {
    let uids = uids.map(|u| serde_json::Value::from(u.to_vec()).to_string());
    let mut stmt = conn.prepare_cached(
        "SELECT batch, ts, uid, n_runs, median_wall_ms, median_cpu_ms, median_instructions,
                median_cycles, (SELECT json_group_array(name) FROM baselines b WHERE b.batch = r.batch)
         FROM runs r
         WHERE label = ?1 AND end_reason = 'exited'
           AND (?2 IS NULL OR uid IN (SELECT value FROM json_each(?2)))
         ORDER BY ts DESC LIMIT ?3",
    )?;
    let mut rows = stmt
        .query_map(params![label, uids, limit], |r| {
            let names: String = r.get(8)?;
            Ok(PointRow {
                batch: r.get(0)?,
                ts: r.get(1)?,
                uid: r.get(2)?,
                runs: r.get(3)?,
                median_wall_ms: r.get(4)?,
                median_cpu_ms: r.get(5)?,
                median_instructions: r.get(6)?,
                median_cycles: r.get(7)?,
                baselines: serde_json::from_str(&names).unwrap_or_default(),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.reverse();
    Ok(rows)
}

/// The newest `limit` batches labelled `label` that ran to their end, whole, oldest
/// first; of `uids` only when given.
pub fn labelled(
    conn: &Connection,
    label: &str,
    uids: Option<&[u32]>,
    limit: u32,
) -> rusqlite::Result<Vec<BatchRow>> {
    let uids = uids.map(|u| serde_json::Value::from(u.to_vec()).to_string());
    let mut stmt = conn.prepare_cached(
        "SELECT batch, ts, uid, label, argv, result FROM runs
         WHERE label = ?1 AND end_reason = 'exited'
           AND (?2 IS NULL OR uid IN (SELECT value FROM json_each(?2)))
         ORDER BY ts DESC LIMIT ?3",
    )?;
    let mut rows = stmt
        .query_map(params![label, uids, limit], row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.reverse();
    Ok(rows)
}

/// Who saves a baseline, and as what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saver {
    /// The caller.
    pub uid: u32,
    /// Whether the caller is an admin (may replace anyone's).
    pub admin: bool,
    /// Whether every user may compare with it.
    pub public: bool,
    /// Most baselines the saver may own (none for admins).
    pub most: Option<u64>,
}

/// What became of a save.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    /// Saved (new, or replacing the saver's own or, for an admin, anyone's).
    Saved,
    /// Someone else holds the name.
    Taken,
    /// The saver already owns its most baselines (this many).
    Full(u64),
}

/// Baselines `uid` owns other than `name`.
pub fn baselines_owned(conn: &Connection, uid: u32, name: &str) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT count(*) FROM baselines WHERE uid = ?1 AND name != ?2",
        params![uid, name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n.max(0) as u64)
}

/// Saves baseline `name` for `batch`, unless someone else holds the name and `by` is no
/// admin, or `by` owns its most baselines already.
pub fn save_baseline(
    conn: &Connection,
    name: &str,
    batch: &str,
    by: Saver,
) -> rusqlite::Result<Saved> {
    if let Some(most) = by.most {
        let owned = baselines_owned(conn, by.uid, name)?;
        if owned >= most {
            return Ok(Saved::Full(owned));
        }
    }
    // One statement: a baseline of someone else's is never replaced, even by a save that
    // was checked before a long run and races another user's save.
    let changed = conn.execute(
        "INSERT INTO baselines (name, batch, ts, uid, public) VALUES (?1, ?2, ?3, ?4, ?6)
         ON CONFLICT(name) DO UPDATE SET batch = excluded.batch, ts = excluded.ts,
             uid = excluded.uid, public = excluded.public
         WHERE baselines.uid = excluded.uid OR ?5",
        params![name, batch, now(), by.uid, by.admin, by.public],
    )?;
    Ok(if changed == 1 {
        Saved::Saved
    } else {
        Saved::Taken
    })
}

/// A stored baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct BaselineRow {
    /// Its name.
    pub name: String,
    /// The batch it names.
    pub batch: String,
    /// When it was saved (seconds since the epoch).
    pub ts: f64,
    /// Who saved it.
    pub uid: u32,
    /// Whether every user may compare with it.
    pub public: bool,
}

fn baseline_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BaselineRow> {
    Ok(BaselineRow {
        name: r.get(0)?,
        batch: r.get(1)?,
        ts: r.get(2)?,
        uid: r.get(3)?,
        public: r.get(4)?,
    })
}

/// Baseline `name`.
pub fn baseline(conn: &Connection, name: &str) -> rusqlite::Result<Option<BaselineRow>> {
    conn.query_row(
        "SELECT name, batch, ts, uid, public FROM baselines WHERE name = ?1",
        [name],
        baseline_row,
    )
    .optional()
}

/// Every baseline, by name.
pub fn baselines(conn: &Connection) -> rusqlite::Result<Vec<BaselineRow>> {
    let mut stmt =
        conn.prepare_cached("SELECT name, batch, ts, uid, public FROM baselines ORDER BY name")?;
    let rows = stmt.query_map([], baseline_row)?;
    rows.collect()
}

/// Deletes baseline `name`; whether it existed.
pub fn delete_baseline(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    Ok(conn.execute("DELETE FROM baselines WHERE name = ?1", [name])? > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch of uid 0 with an empty result.
    fn batch_row(batch: &str) -> BatchRow {
        BatchRow {
            batch: batch.into(),
            ts: 0.0,
            uid: 0,
            label: None,
            argv: "[]".into(),
            result: "{}".into(),
        }
    }

    #[test]
    fn ids_are_reserved_past_every_id_given_or_stored_and_never_replace_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let mut c = store.lock_blocking();
        assert_eq!(reserve_ids(&mut c, 10).unwrap(), 1..11);
        assert_eq!(
            reserve_ids(&mut c, 10).unwrap(),
            11..21,
            "unused ids are skipped"
        );
        let row = batch_row;
        // A stored id ahead of the reservations (a restored history), and one that is not
        // a number: the next block starts after the first, ignores the second.
        insert(&mut c, &row("500"), 100).unwrap();
        insert(&mut c, &row("baseline-x"), 100).unwrap();
        assert_eq!(reserve_ids(&mut c, 5).unwrap(), 501..506);
        assert!(insert(&mut c, &row("500"), 100).is_err(), "never replaced");
        drop(c);
        drop(store);
        let store = crate::store::Store::open(dir.path()).unwrap();
        let mut c = store.lock_blocking();
        assert_eq!(reserve_ids(&mut c, 5).unwrap(), 506..511, "across restarts");
    }

    #[test]
    fn retention_keeps_baselines_and_the_journal_stays_fully_synchronous() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let mut c = store.lock_blocking();
        let row = batch_row;
        insert(&mut c, &row("a"), 2).unwrap();
        let by = |uid, admin| Saver {
            uid,
            admin,
            public: false,
            most: None,
        };
        assert_eq!(
            save_baseline(&c, "base", "a", by(0, false)),
            Ok(Saved::Saved)
        );
        assert_eq!(
            save_baseline(&c, "base", "b", by(1000, false)),
            Ok(Saved::Taken),
            "not uid 1000's"
        );
        assert_eq!(
            save_baseline(&c, "base", "a", by(1000, true)),
            Ok(Saved::Saved),
            "an admin may"
        );
        let public = Saver {
            public: true,
            ..by(0, true)
        };
        assert_eq!(save_baseline(&c, "base", "a", public), Ok(Saved::Saved));
        // At most two of one's own: replacing one of them is fine, a third is not.
        let capped = Saver {
            most: Some(2),
            ..by(7, false)
        };
        assert_eq!(save_baseline(&c, "x1", "a", capped), Ok(Saved::Saved));
        assert_eq!(save_baseline(&c, "x2", "a", capped), Ok(Saved::Saved));
        assert_eq!(save_baseline(&c, "x2", "a", capped), Ok(Saved::Saved));
        assert_eq!(save_baseline(&c, "x3", "a", capped), Ok(Saved::Full(2)));
        let saved = baseline(&c, "base").unwrap().unwrap();
        assert_eq!((saved.uid, saved.public), (0, true));
        for b in ["b", "c", "d"] {
            std::thread::sleep(std::time::Duration::from_millis(2));
            insert(&mut c, &row(b), 2).unwrap();
        }
        let kept: Vec<String> = list(&c, None, 10)
            .unwrap()
            .into_iter()
            .map(|r| r.batch)
            .collect();
        assert_eq!(
            kept,
            vec!["d", "c", "a"],
            "the two newest and the baseline's"
        );
        let sync: i64 = c.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(sync, 2, "FULL again after a history insert");
    }
}
