//! `profile.revert`: every original in the journal goes back, compare-and-swap. It needs
//! only the journal, not the profile file.
//!
//! A knob is restored only if its file still holds cleanroom's value (the one it wrote, or
//! the one an interrupted apply was replacing when that one was cleanroom's); a knob
//! someone else changed since is a conflict, left alone and kept in the journal, unless
//! `force`. A knob whose original the kernel refuses stays in the journal too, still
//! cleanroom's.

use cleanroom_proto::{KnobResult, KnobStatus, TuneResult};
use rusqlite::Connection;

use super::plugins::{Kind, Planned, Want};
use super::{Error, item, read_canonical, revert_rank, write_knob};
use crate::host::Host;
use crate::store::journal::{self, Phase};

/// What becomes of a journal row.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    /// The original is back: the row goes.
    Done,
    /// The row stays; with what its file holds now, when that is known and changed.
    Kept(Option<String>),
    /// The row stays for `--force`, but the file holds someone else's value, and no value
    /// but the original counts as cleanroom's any more: no profile is in force, so an admin
    /// who later sets the knob by hand, even to the old profile's value, keeps it.
    Theirs,
}

/// Puts every original back that cleanroom still owns (all of them with `force`). No
/// profile is in force from the first step on, so a restart finishes a revert that was
/// cut short instead of re-applying.
pub(super) fn revert_locked(
    ctx: super::Ctx<'_>,
    conn: &mut Connection,
    force: bool,
) -> Result<TuneResult, Error> {
    let host = ctx.host;
    let boot = host.boot_id()?;
    let mut rows = journal::rows(conn)?;
    rows.sort_by_key(|r| revert_rank(&r.path));
    let state = journal::state(conn)?;
    let interrupted = state.as_ref().is_some_and(|s| s.phase == Phase::Applying);
    let previous = state.and_then(|s| s.profile);
    journal::set_state(conn, None, Phase::Reverting, &boot)?;
    // Processes first: their rules go out of force, then their originals come back.
    let pins = ctx.pins.revert(host, ctx.store, conn, force)?;
    let latency = ctx.pins.hold_latency(host, None);
    let outcomes: Vec<(KnobResult, Fate)> = rows
        .iter()
        .map(|row| restore(host, row, force, interrupted))
        .collect();
    record(conn, &rows, &outcomes)?;
    journal::set_state(conn, None, Phase::Idle, &boot)?;
    let ok = outcomes.iter().all(|(_, fate)| *fate == Fate::Done)
        && pins.iter().all(|p| p.problems.is_empty());
    Ok(TuneResult {
        profile: previous,
        ok,
        dry_run: false,
        items: outcomes
            .into_iter()
            .map(|(item, _)| item)
            .chain(latency)
            .collect(),
        journal_entries: journal::count(conn)?,
        pins,
    })
}

/// One row: restored, already at its original, a conflict, or a failure. `interrupted`:
/// the daemon died in an apply, so a row it was writing may show the kernel's form of the
/// value asked for (the conflict's reason says so).
fn restore(host: &Host, row: &journal::Row, force: bool, interrupted: bool) -> (KnobResult, Fate) {
    let kind = Kind::parse_name(&row.kind).unwrap_or(Kind::Text);
    let p = Planned {
        knob: row.knob.clone(),
        path: row.path.clone(),
        kind,
        current: None,
        want: Want::Value(row.original.clone()),
        soft: false,
    };
    let current = match read_canonical(host, &row.path, kind) {
        Ok(c) => c,
        Err(e) => {
            let reason = Some(format!("cannot read: {e}"));
            return (
                item(&p, None, None, KnobStatus::Failed, reason),
                Fate::Kept(None),
            );
        }
    };
    if current == row.original {
        // A boot loader's file back at its original by a revert cut short before the
        // generator ran: the configuration is made again from it.
        if kind.is_boot() && row.written != row.original {
            if let Err(e) = super::boot::regenerate(host, &row.path, kind) {
                let (b, a) = (Some(current.clone()), Some(current.clone()));
                let reason = Some(e.to_string());
                // `written` stays as it was, so the next revert tries again.
                return (item(&p, b, a, KnobStatus::Failed, reason), Fate::Kept(None));
            }
        }
        let (b, a) = (Some(current.clone()), Some(current));
        return (item(&p, b, a, KnobStatus::Unchanged, None), Fate::Done);
    }
    let ours = current == row.written || row.pending_prev.as_ref() == Some(&current);
    if !ours && !force {
        let reason = if interrupted && row.written != row.original {
            format!(
                "holds neither the original {:?} nor {:?}, which cleanroom was writing when it stopped mid-apply: someone else's value, or the kernel's form of cleanroom's; left alone (--force restores the original)",
                row.original, row.written
            )
        } else if row.written == row.original {
            format!(
                "someone else's value since an earlier revert; left alone (original {:?}; --force restores it)",
                row.original
            )
        } else {
            format!(
                "changed by someone else since cleanroom wrote it; left alone (original {:?}; --force restores it)",
                row.original
            )
        };
        return (
            item(
                &p,
                Some(row.written.clone()),
                Some(current),
                KnobStatus::Conflict,
                Some(reason),
            ),
            Fate::Theirs,
        );
    }
    match write_knob(host, &row.path, kind, &row.original) {
        Ok(actual) if actual == row.original => {
            let status = if ours {
                KnobStatus::Restored
            } else {
                KnobStatus::Forced
            };
            (
                item(&p, Some(current), Some(actual), status, None),
                Fate::Done,
            )
        }
        Ok(actual) => {
            tracing::error!(path = %row.path, value = %row.original, kept = %actual, "revert: the kernel kept another value");
            let reason = format!(
                "the kernel kept {actual:?} instead of the original {:?}",
                row.original
            );
            (
                item(
                    &p,
                    Some(current),
                    Some(actual.clone()),
                    KnobStatus::Failed,
                    Some(reason),
                ),
                Fate::Kept(Some(actual)),
            )
        }
        Err(e) => {
            tracing::error!(path = %row.path, value = %row.original, error = %e, "revert: cannot write the original");
            // The row stays, and must go on knowing the file's value as cleanroom's if it
            // was (the pending value it leaned on is cleared), or if the failed write
            // changed it (a vector stored in part): else the next revert would take
            // cleanroom's own value for someone else's, and leave the host tuned.
            let now = read_canonical(host, &row.path, kind).ok();
            let fate = match now.clone() {
                Some(n) if ours || n != current => Fate::Kept(Some(n)),
                // Forced over someone else's value, and the file still holds it.
                Some(_) => Fate::Theirs,
                None => Fate::Kept(None),
            };
            (
                item(
                    &p,
                    Some(current),
                    now,
                    KnobStatus::Failed,
                    Some(e.to_string()),
                ),
                fate,
            )
        }
    }
}

/// Rows whose original is back go; the others stay, recording what their file holds now,
/// and no value of an apply long over counts as cleanroom's any more. One commit.
fn record(
    conn: &mut Connection,
    rows: &[journal::Row],
    outcomes: &[(KnobResult, Fate)],
) -> Result<(), Error> {
    let tx = conn.transaction()?;
    for (row, (_, fate)) in rows.iter().zip(outcomes) {
        match fate {
            Fate::Done => journal::forget(&tx, &row.path)?,
            Fate::Kept(now) => journal::keep_after_revert(&tx, &row.path, now.as_deref())?,
            Fate::Theirs => journal::disown(&tx, &row.path)?,
        }
    }
    journal::clear_refused(&tx)?;
    tx.commit()?;
    Ok(())
}
