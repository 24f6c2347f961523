//! The tuning journal: originals and written values of every knob cleanroom changed, and
//! the tuning state (active profile, phase, boot id). Synchronous functions on a
//! connection: the tuner calls them from its blocking task, interleaved with kernel
//! writes, and every function that changes rows commits before it returns (with
//! `synchronous=FULL`, the rows are on disk when it does).

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, params};

/// Where tuning stands. Stored as its name (`idle`, `applying`, `active`, `reverting`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No profile in force (the journal may still hold conflicts a revert left).
    Idle,
    /// An apply is writing: the journal's pending values say what each file may hold.
    Applying,
    /// A profile is in force.
    Active,
    /// A revert is putting originals back; a restart finishes it.
    Reverting,
}

impl Phase {
    /// The stored and displayed name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Applying => "applying",
            Phase::Active => "active",
            Phase::Reverting => "reverting",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            Phase::Idle,
            Phase::Applying,
            Phase::Active,
            Phase::Reverting,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ToSql for Phase {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl FromSql for Phase {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let s = value.as_str()?;
        Phase::parse(s)
            .ok_or_else(|| FromSqlError::Other(format!("unknown tuning phase {s:?}").into()))
    }
}

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
    /// While an apply runs: the value before that apply, if it was cleanroom's.
    pub pending_prev: Option<String>,
}

/// The tuning state.
#[derive(Debug, Clone, PartialEq)]
pub struct TuningState {
    /// Active profile.
    pub profile: Option<String>,
    /// Where tuning stands.
    pub phase: Phase,
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

use super::now;

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
    phase: Phase,
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
    phase: Phase,
    boot_id: &str,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    put_state(&tx, profile, phase, boot_id)?;
    tx.commit()
}

/// Before an apply writes anything: records the original of every knob not yet in the
/// journal, marks each change as pending, and sets the state to `applying`. One commit.
///
/// A pending change keeps the value it replaces as cleanroom's (`pending_prev`) only if
/// the journal already counted it as cleanroom's: the row's written value, its original,
/// or an earlier pending one. A value someone else wrote (a conflict an earlier revert
/// left) is not: if the daemon dies before this apply writes the knob, a revert must leave
/// it alone as before.
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
        // The right-hand sides see the row as it was before this statement.
        let mut pend = tx.prepare_cached(
            "UPDATE journal SET
                 pending_prev = CASE WHEN ?2 IN (written, original) OR ?2 IS pending_prev
                                     THEN ?2 END,
                 written = ?3, updated = ?4
             WHERE path = ?1",
        )?;
        let t = now();
        for c in changes {
            insert.execute(params![c.path, c.knob, c.kind, c.current, t])?;
            pend.execute(params![c.path, c.current, c.desired, t])?;
        }
    }
    put_state(&tx, Some(profile), Phase::Applying, boot_id)?;
    tx.commit()
}

/// During an apply, right after a write the kernel took in its own form (read-ahead in
/// whole pages, a partly stored vector): the row's `written` becomes what the file holds,
/// before the next write. One commit. Without it, a daemon that dies before the apply
/// settles leaves a row naming the value asked for while the file shows another, which
/// the next revert could not tell from someone else's.
pub fn rendered(conn: &Connection, path: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE journal SET written = ?2, updated = ?3 WHERE path = ?1",
        params![path, value, now()],
    )?;
    Ok(())
}

/// After an apply (or its rollback): each knob's final value (`finals`: what its file
/// holds) becomes `written`, and the row goes if that is its original; knobs left holding
/// someone else's value (`theirs`) get back the `written` value they had before the apply,
/// and stay. Pending marks go and the state is set. One commit.
///
/// Only rows this apply settled at their original go: a row it did not settle (a knob
/// someone else changed, which the apply left alone) may say `written = original` after an
/// interrupted restoration, yet its file holds another value, so it must stay.
pub fn settle(
    conn: &mut Connection,
    finals: &[(&str, &str)],
    theirs: &[(&str, &str)],
    profile: Option<&str>,
    phase: Phase,
    boot_id: &str,
    refused: Option<&[(String, String)]>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut upd = tx.prepare_cached(
            "UPDATE journal SET written = ?2, pending_prev = NULL, updated = ?3 WHERE path = ?1",
        )?;
        let mut back =
            tx.prepare_cached("DELETE FROM journal WHERE path = ?1 AND written = original")?;
        let t = now();
        for (path, value) in finals {
            upd.execute(params![path, value, t])?;
            back.execute(params![path])?;
        }
        for (path, value) in theirs {
            upd.execute(params![path, value, t])?;
        }
    }
    tx.execute("UPDATE journal SET pending_prev = NULL", [])?;
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

/// After a revert: a row that stays for someone else's value counts no value but its
/// original as cleanroom's (`written = original`), so only `--force` overwrites the knob.
pub fn disown(conn: &Connection, path: &str) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE journal SET written = original, pending_prev = NULL WHERE path = ?1",
        [path],
    )?;
    Ok(())
}

/// Drops every row but those of the kinds named in `kept` (a new boot made the originals
/// of kernel values stale; a boot loader's files outlive it). How many rows stay.
pub fn clear(conn: &Connection, kept: &[&str]) -> rusqlite::Result<u64> {
    let list = serde_json::to_string(kept).unwrap_or_else(|_| "[]".into());
    conn.execute(
        "DELETE FROM journal WHERE kind NOT IN (SELECT value FROM json_each(?1))",
        [list],
    )?;
    count(conn)
}

/// Forgets the knobs the kernel refused (a revert: no profile is in force any more).
pub fn clear_refused(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM tuning_refused", [])?;
    Ok(())
}

/// The knobs the kernel refused at the last apply, with the reason.
pub fn refused(conn: &Connection) -> rusqlite::Result<std::collections::HashMap<String, String>> {
    let mut stmt = conn.prepare_cached("SELECT path, reason FROM tuning_refused")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change<'a>(path: &'a str, current: &'a str, desired: &'a str) -> Change<'a> {
        Change {
            path,
            knob: path,
            kind: "text",
            current,
            desired,
        }
    }

    #[test]
    fn the_first_original_stays_and_pending_values_cover_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let mut c = store.lock_blocking();
        begin_apply(&mut c, "a", "b1", &[change("/k", "0", "1")]).unwrap();
        let row = &rows(&c).unwrap()[0];
        assert_eq!(
            (
                row.original.as_str(),
                row.written.as_str(),
                row.pending_prev.as_deref()
            ),
            ("0", "1", Some("0")),
            "mid-apply, the file holds 0 or 1: both are known"
        );
        assert_eq!(state(&c).unwrap().unwrap().phase, Phase::Applying);
        settle(
            &mut c,
            &[("/k", "1")],
            &[],
            Some("a"),
            Phase::Active,
            "b1",
            Some(&[]),
        )
        .unwrap();
        // A second profile: the original is still the first one.
        begin_apply(&mut c, "b", "b1", &[change("/k", "1", "2")]).unwrap();
        let row = &rows(&c).unwrap()[0];
        assert_eq!(
            (
                row.original.as_str(),
                row.written.as_str(),
                row.pending_prev.as_deref()
            ),
            ("0", "2", Some("1"))
        );
        // Settled back at the original: the row goes.
        settle(
            &mut c,
            &[("/k", "0")],
            &[],
            Some("b"),
            Phase::Active,
            "b1",
            None,
        )
        .unwrap();
        assert_eq!(count(&c).unwrap(), 0);
        let st = state(&c).unwrap().unwrap();
        assert_eq!(
            (st.profile.as_deref(), st.phase),
            (Some("b"), Phase::Active)
        );
    }

    #[test]
    fn refused_knobs_are_replaced_by_each_apply_and_cleared_by_a_revert() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let mut c = store.lock_blocking();
        let refused_once = [("/irq/1".to_owned(), "managed".to_owned())];
        settle(
            &mut c,
            &[],
            &[],
            Some("a"),
            Phase::Active,
            "b",
            Some(&refused_once),
        )
        .unwrap();
        assert_eq!(refused(&c).unwrap()["/irq/1"], "managed");
        settle(&mut c, &[], &[], Some("a"), Phase::Active, "b", None).unwrap();
        assert_eq!(refused(&c).unwrap().len(), 1, "a rollback keeps the list");
        clear_refused(&c).unwrap();
        assert!(refused(&c).unwrap().is_empty());
    }
}
