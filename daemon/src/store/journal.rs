//! The tuning journal: originals and written values of every knob cleanroom changed, and
//! the tuning state (active profile, phase, boot id). Synchronous functions on a
//! connection: the tuner calls them from its blocking task, interleaved with kernel
//! writes, and every function that changes rows commits before it returns (with
//! `synchronous=FULL`, the rows are on disk when it does).

use rusqlite::{Connection, OptionalExtension, params};

/// One journal row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Kernel file (absolute, below the host root).
    pub path: String,
    /// Display name.
    pub knob: String,
    /// Value kind name.
    pub kind: String,
    /// Canonical value before cleanroom first touched it.
    pub original: String,
    /// Canonical value cleanroom last wrote (or is writing).
    pub written: String,
    /// While an apply runs: the value before that apply.
    pub pending_prev: Option<String>,
}

/// The tuning state.
#[derive(Debug, Clone, PartialEq)]
pub struct TuningState {
    /// Active profile.
    pub profile: Option<String>,
    /// `idle`, `applying`, `active`, `reverting`.
    pub phase: String,
    /// Boot id when it was set.
    pub boot_id: String,
    /// When (seconds since the epoch).
    pub since: f64,
}

/// A knob an apply is about to write.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    /// Kernel file.
    pub path: &'a str,
    /// Display name.
    pub knob: &'a str,
    /// Kind name.
    pub kind: &'a str,
    /// Canonical value it holds now.
    pub current: &'a str,
    /// Canonical value to write.
    pub desired: &'a str,
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Every row, by path.
pub fn rows(conn: &Connection) -> rusqlite::Result<Vec<Row>> {
    let mut stmt = conn.prepare_cached(
        "SELECT path, knob, kind, original, written, pending_prev FROM journal ORDER BY path",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(Row {
            path: r.get(0)?,
            knob: r.get(1)?,
            kind: r.get(2)?,
            original: r.get(3)?,
            written: r.get(4)?,
            pending_prev: r.get(5)?,
        })
    })?;
    rows.collect()
}

/// How many rows.
pub fn count(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row("SELECT count(*) FROM journal", [], |r| r.get::<_, i64>(0))
        .map(|n| n as u64)
}

/// The tuning state, if any was ever set.
pub fn state(conn: &Connection) -> rusqlite::Result<Option<TuningState>> {
    conn.query_row(
        "SELECT profile, phase, boot_id, since FROM tuning_state WHERE id = 1",
        [],
        |r| {
            Ok(TuningState {
                profile: r.get(0)?,
                phase: r.get(1)?,
                boot_id: r.get(2)?,
                since: r.get(3)?,
            })
        },
    )
    .optional()
}

fn put_state(
    conn: &Connection,
    profile: Option<&str>,
    phase: &str,
    boot_id: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO tuning_state (id, profile, phase, boot_id, since) VALUES (1, ?1, ?2, ?3, ?4)
         ON CONFLICT(id) DO UPDATE SET profile = ?1, phase = ?2, boot_id = ?3, since = ?4",
        params![profile, phase, boot_id, now()],
    )?;
    Ok(())
}

/// Sets the tuning state, committed.
pub fn set_state(
    conn: &mut Connection,
    profile: Option<&str>,
    phase: &str,
    boot_id: &str,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    put_state(&tx, profile, phase, boot_id)?;
    tx.commit()
}

/// Before an apply writes anything: records the original of every knob not yet in the
/// journal, marks each change as pending, and sets the state to `applying`. One commit.
pub fn begin_apply(
    conn: &mut Connection,
    profile: &str,
    boot_id: &str,
    changes: &[Change<'_>],
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO journal (path, knob, kind, original, written, pending_prev, updated)
             VALUES (?1, ?2, ?3, ?4, ?4, NULL, ?5) ON CONFLICT(path) DO NOTHING",
        )?;
        let mut pend = tx.prepare_cached(
            "UPDATE journal SET pending_prev = ?2, written = ?3, updated = ?4 WHERE path = ?1",
        )?;
        let t = now();
        for c in changes {
            insert.execute(params![c.path, c.knob, c.kind, c.current, t])?;
            pend.execute(params![c.path, c.current, c.desired, t])?;
        }
    }
    put_state(&tx, Some(profile), "applying", boot_id)?;
    tx.commit()
}

/// After an apply (or its rollback): each knob's final value becomes `written`, pending
/// marks go, rows back at their original go, and the state is set. One commit.
pub fn settle(
    conn: &mut Connection,
    finals: &[(&str, &str)],
    profile: Option<&str>,
    phase: &str,
    boot_id: &str,
    refused: Option<&[(String, String)]>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut upd = tx.prepare_cached(
            "UPDATE journal SET written = ?2, pending_prev = NULL, updated = ?3 WHERE path = ?1",
        )?;
        let t = now();
        for (path, value) in finals {
            upd.execute(params![path, value, t])?;
        }
    }
    tx.execute("UPDATE journal SET pending_prev = NULL", [])?;
    tx.execute("DELETE FROM journal WHERE written = original", [])?;
    if let Some(refused) = refused {
        tx.execute("DELETE FROM tuning_refused", [])?;
        let mut ins = tx.prepare_cached(
            "INSERT OR REPLACE INTO tuning_refused (path, reason) VALUES (?1, ?2)",
        )?;
        for (path, reason) in refused {
            ins.execute(params![path, reason])?;
        }
    }
    put_state(&tx, profile, phase, boot_id)?;
    tx.commit()
}

/// Drops one row (its original is back, or was forced back).
pub fn forget(conn: &Connection, path: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM journal WHERE path = ?1", [path])?;
    Ok(())
}

/// After a revert: a row that stays records what the file holds now, and no value of an
/// apply long over counts as cleanroom's any more.
pub fn keep_after_revert(conn: &Connection, path: &str, now: Option<&str>) -> rusqlite::Result<()> {
    match now {
        Some(v) => conn.execute(
            "UPDATE journal SET written = ?2, pending_prev = NULL WHERE path = ?1",
            params![path, v],
        )?,
        None => conn.execute(
            "UPDATE journal SET pending_prev = NULL WHERE path = ?1",
            [path],
        )?,
    };
    Ok(())
}

/// Drops every row (a new boot made the originals stale).
pub fn clear(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM journal", [])?;
    Ok(())
}

/// The knobs the kernel refused at the last apply, with the reason.
pub fn refused(conn: &Connection) -> rusqlite::Result<std::collections::HashMap<String, String>> {
    let mut stmt = conn.prepare_cached("SELECT path, reason FROM tuning_refused")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}
