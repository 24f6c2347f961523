//! Tuning: plan → journal → write, revert by compare-and-swap, verify, crash recovery,
//! recommendation.
//!
//! The journal's promise: before the first write to a knob, its original value is on disk
//! (`synchronous=FULL`); before any write, the value it is about to replace is on disk too.
//! So whatever moment the daemon dies at, every file cleanroom touched holds a value the
//! journal knows (original, the previous value, or the new one), and revert can put the
//! original back without ever overwriting a value someone else wrote.
//!
//! Everything here blocks (kernel files, SQLite): callers run it on a blocking thread and
//! serialise applies and reverts with one lock.
//!
//! Limitations: a knob's identity is its kernel file; two settings that map to the same
//! file are merged (the later one wins).

pub mod plugins;
pub mod profile;
pub mod recommend;

use std::collections::{BTreeMap, HashSet};

use cleanroom_proto::{ActiveResult, KnobResult, KnobStatus, TuneResult};
use rusqlite::Connection;

use crate::host::Host;
use crate::store::Store;
use crate::store::journal::{self, Change};
use plugins::{Kind, Planned, Want};
use profile::ProfileSet;

/// What the daemon does with the journal at start (config `tuning.on_start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStart {
    /// Re-apply the active profile (the originals in the journal stand).
    Reapply,
    /// Put every original back.
    Revert,
}

/// Errors of tuning operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The profile is missing or broken.
    #[error("{0}")]
    Profile(String),
    /// The journal failed: nothing was written after the failure.
    #[error("tuning journal: {0}")]
    Journal(#[from] rusqlite::Error),
    /// The host could not be read where it must be (boot id).
    #[error(transparent)]
    Host(#[from] crate::host::Error),
}

/// What a tuning operation needs.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// The host.
    pub host: &'a Host,
    /// The state database.
    pub store: &'a Store,
    /// The profiles loaded now.
    pub profiles: &'a ProfileSet,
    /// The sysctl allowlist.
    pub allow: &'a [String],
}

fn item(
    p: &Planned,
    before: Option<String>,
    after: Option<String>,
    status: KnobStatus,
    reason: Option<String>,
) -> KnobResult {
    KnobResult {
        knob: p.knob.clone(),
        path: p.path.clone(),
        before,
        after,
        status,
        reason,
    }
}

/// The plan of a profile on this host: every knob it means, with current values.
fn plan(ctx: Ctx<'_>, name: &str) -> Result<Vec<Planned>, Error> {
    let profile = ctx.profiles.get(name).map_err(Error::Profile)?;
    let mut by_path: BTreeMap<String, Planned> = BTreeMap::new();
    let mut order = Vec::new();
    for s in profile.settings.values() {
        for p in plugins::expand(&s.setting, ctx.host, ctx.allow) {
            if !by_path.contains_key(&p.path) {
                order.push(p.path.clone());
            }
            by_path.insert(p.path.clone(), p);
        }
    }
    let mut planned: Vec<Planned> = order
        .into_iter()
        .filter_map(|k| by_path.remove(&k))
        .collect();
    planned.sort_by_key(|p| apply_rank(&p.path));
    Ok(planned)
}

/// Order of writes where one knob affects another: an I/O scheduler before the queue
/// settings it resets; SMT last (turning it off takes CPUs, and their cpufreq policies,
/// offline). The sort is stable, so the rest keep the profile's order.
fn apply_rank(path: &str) -> u8 {
    if path.ends_with("/queue/scheduler") {
        0
    } else if path.ends_with("/smt/control") {
        3
    } else {
        1
    }
}

/// Order of restores: SMT first (its CPUs come back before their policies are
/// restored), then schedulers before the queue settings they reset.
fn revert_rank(path: &str) -> u8 {
    if path.ends_with("/smt/control") {
        0
    } else if path.ends_with("/queue/scheduler") {
        1
    } else {
        2
    }
}

fn read_canonical(host: &Host, path: &str, kind: Kind) -> Result<String, String> {
    host.read(path)
        .map_err(|e| e.to_string())
        .and_then(|raw| kind.read(&raw))
}

/// Writes `value` and reads back what the kernel kept.
fn write_knob(host: &Host, path: &str, kind: Kind, value: &str) -> Result<String, String> {
    host.write(path, &kind.to_write(value))
        .map_err(|e| e.to_string())?;
    read_canonical(host, path, kind)
}

/// `profile.apply`.
pub fn apply(
    ctx: Ctx<'_>,
    name: &str,
    dry_run: bool,
    best_effort: bool,
) -> Result<TuneResult, Error> {
    let mut planned = plan(ctx, name)?;
    let mut conn = ctx.store.lock_blocking();
    let rows = journal::rows(&conn)?;
    // Only knobs this profile will actually set count as "in the plan": one it cannot set
    // here (unsupported, refused) goes back to its original like any other it drops.
    let in_plan: HashSet<String> = planned
        .iter()
        .filter(|p| matches!(p.want, Want::Value(_)))
        .map(|p| p.path.clone())
        .collect();
    // Knobs the previous profile changed and this one does not set go back to their
    // originals, unless someone else changed them since (then they stay, as conflicts).
    let mut restore_paths = HashSet::new();
    let mut items = Vec::new();
    for row in rows.iter().filter(|r| !in_plan.contains(&r.path)) {
        let kind = Kind::parse_name(&row.kind).unwrap_or(Kind::Text);
        let current = read_canonical(ctx.host, &row.path, kind).ok();
        let ours = current
            .as_ref()
            .is_some_and(|c| *c == row.written || row.pending_prev.as_ref() == Some(c));
        let p = Planned {
            knob: row.knob.clone(),
            path: row.path.clone(),
            kind,
            current: current.clone(),
            want: Want::Value(row.original.clone()),
            soft: false,
        };
        if ours || current.as_ref() == Some(&row.original) {
            restore_paths.insert(row.path.clone());
            planned.push(p);
        } else {
            items.push(item(
                &p,
                Some(row.written.clone()),
                current,
                KnobStatus::Conflict,
                Some("the previous profile's value was changed by someone else; left alone".into()),
            ));
        }
    }

    let mut changes: Vec<&Planned> = Vec::new();
    let mut finals: Vec<(String, String)> = Vec::new();
    let journaled: HashSet<&str> = rows.iter().map(|r| r.path.as_str()).collect();
    for p in &planned {
        match &p.want {
            Want::Unsupported(why) => items.push(item(
                p,
                p.current.clone(),
                None,
                KnobStatus::Unsupported,
                Some(why.clone()),
            )),
            Want::Refused(why) => items.push(item(
                p,
                p.current.clone(),
                None,
                KnobStatus::Refused,
                Some(why.clone()),
            )),
            Want::Value(d) if p.current.as_ref() == Some(d) => {
                if journaled.contains(p.path.as_str()) {
                    finals.push((p.path.clone(), d.clone()));
                }
                items.push(item(
                    p,
                    p.current.clone(),
                    Some(d.clone()),
                    KnobStatus::Unchanged,
                    None,
                ));
            }
            Want::Value(d) => {
                if dry_run {
                    items.push(item(
                        p,
                        p.current.clone(),
                        Some(d.clone()),
                        KnobStatus::Planned,
                        None,
                    ));
                } else {
                    changes.push(p);
                }
            }
        }
    }
    if dry_run {
        let journal_entries = journal::count(&conn)?;
        return Ok(TuneResult {
            profile: Some(name.to_owned()),
            ok: true,
            dry_run: true,
            items,
            journal_entries,
        });
    }

    let boot = ctx.host.boot_id()?;
    let previous = journal::state(&conn)?;
    let desired = |p: &Planned| match &p.want {
        Want::Value(d) => d.clone(),
        _ => unreachable!("only knobs with a value are changes"),
    };
    let desired_values: Vec<String> = changes.iter().map(|p| desired(p)).collect();
    let currents: Vec<String> = changes
        .iter()
        .map(|p| p.current.clone().unwrap_or_default())
        .collect();
    let kinds: Vec<&str> = changes.iter().map(|p| p.kind.as_str()).collect();
    let journal_changes: Vec<Change<'_>> = changes
        .iter()
        .enumerate()
        .map(|(i, p)| Change {
            path: &p.path,
            knob: &p.knob,
            kind: kinds[i],
            current: &currents[i],
            desired: &desired_values[i],
        })
        .collect();
    // The originals (and the values about to be replaced) are on disk before any write.
    journal::begin_apply(&mut conn, name, &boot, &journal_changes)?;

    let mut written: Vec<usize> = Vec::new();
    let mut refused_by_kernel: Vec<(String, String)> = Vec::new();
    let mut failed = false;
    let mut change_items: Vec<KnobResult> = Vec::new();
    for (i, p) in changes.iter().enumerate() {
        let want = &desired_values[i];
        let restore = restore_paths.contains(&p.path);
        match write_knob(ctx.host, &p.path, p.kind, want) {
            Ok(actual) if actual != *want && !restore => {
                // The write was accepted but the kernel kept another value (a managed IRQ,
                // a value it rounds): not this profile's value, and not drift either.
                let reason = format!("the kernel accepted {want:?} but kept {actual:?}");
                refused_by_kernel.push((p.path.clone(), reason.clone()));
                change_items.push(item(
                    p,
                    p.current.clone(),
                    Some(actual.clone()),
                    KnobStatus::Unsupported,
                    Some(reason),
                ));
                finals.push((p.path.clone(), actual));
                written.push(i);
            }
            Ok(actual) => {
                let status = if restore {
                    KnobStatus::Restored
                } else {
                    KnobStatus::Applied
                };
                change_items.push(item(
                    p,
                    p.current.clone(),
                    Some(actual.clone()),
                    status,
                    None,
                ));
                finals.push((p.path.clone(), actual));
                written.push(i);
            }
            Err(e) => {
                // A failed write may still have changed the file (a vector sysctl is
                // stored element by element): what the file holds now decides.
                match read_canonical(ctx.host, &p.path, p.kind) {
                    Ok(now) if now == currents[i] => {
                        finals.push((p.path.clone(), now));
                    }
                    Ok(now) => {
                        finals.push((p.path.clone(), now));
                        written.push(i);
                    }
                    Err(_) => {
                        // Unknown: keep the journal row (its original) for revert.
                        finals.push((p.path.clone(), desired_values[i].clone()));
                        written.push(i);
                    }
                }
                let after = finals.last().map(|f| f.1.clone());
                if p.soft {
                    let reason = format!("the kernel refused: {e}");
                    refused_by_kernel.push((p.path.clone(), reason.clone()));
                    change_items.push(item(
                        p,
                        p.current.clone(),
                        after,
                        KnobStatus::Unsupported,
                        Some(reason),
                    ));
                } else {
                    change_items.push(item(
                        p,
                        p.current.clone(),
                        after,
                        KnobStatus::Failed,
                        Some(e),
                    ));
                    failed = true;
                    if !best_effort {
                        break;
                    }
                }
            }
        }
    }
    if failed && !best_effort {
        // Atomic: undo what this apply wrote, newest first.
        for &i in written.iter().rev() {
            let p = changes[i];
            let pos = change_items
                .iter()
                .position(|it| it.path == p.path)
                .expect("written knob has an item");
            match write_knob(ctx.host, &p.path, p.kind, &currents[i]) {
                Ok(actual) => {
                    if actual == currents[i] {
                        if change_items[pos].status != KnobStatus::Failed {
                            change_items[pos].status = KnobStatus::RolledBack;
                        }
                    } else {
                        change_items[pos].status = KnobStatus::Failed;
                        change_items[pos].reason = Some(format!(
                            "rolled back, but the kernel kept {actual:?} instead of {:?}",
                            currents[i]
                        ));
                    }
                    change_items[pos].after = Some(actual.clone());
                    set_final(&mut finals, &p.path, actual);
                }
                Err(e) => {
                    change_items[pos].status = KnobStatus::Failed;
                    change_items[pos].reason = Some(format!("written, then rollback failed: {e}"));
                }
            }
        }
        // Knobs after the failure were never written.
        for p in changes.iter().skip(change_items.len()) {
            finals.push((p.path.clone(), p.current.clone().unwrap_or_default()));
        }
        let finals_ref: Vec<(&str, &str)> = finals
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let (prof, phase) = match &previous {
            Some(st) => (st.profile.as_deref(), st.phase.as_str()),
            None => (None, "idle"),
        };
        let phase = if phase == "applying" { "active" } else { phase };
        journal::settle(&mut conn, &finals_ref, prof, phase, &boot, None)?;
        items.extend(change_items);
        let journal_entries = journal::count(&conn)?;
        return Ok(TuneResult {
            profile: Some(name.to_owned()),
            ok: false,
            dry_run: false,
            items,
            journal_entries,
        });
    }
    // One write can change another knob (a new I/O scheduler resets nr_requests): what
    // the files hold now is what the journal records.
    for &k in &written {
        let p = changes[k];
        if let Ok(now) = read_canonical(ctx.host, &p.path, p.kind) {
            set_final(&mut finals, &p.path, now);
        }
    }
    let finals_ref: Vec<(&str, &str)> = finals
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    journal::settle(
        &mut conn,
        &finals_ref,
        Some(name),
        "active",
        &boot,
        Some(&refused_by_kernel),
    )?;
    items.extend(change_items);
    items.sort_by(|a, b| a.knob.cmp(&b.knob));
    let journal_entries = journal::count(&conn)?;
    Ok(TuneResult {
        profile: Some(name.to_owned()),
        ok: !failed,
        dry_run: false,
        items,
        journal_entries,
    })
}

fn set_final(finals: &mut [(String, String)], path: &str, value: String) {
    if let Some(f) = finals.iter_mut().find(|(p, _)| p == path) {
        f.1 = value;
    }
}

/// `profile.revert`: needs no profile file, only the journal.
pub fn revert(ctx: Ctx<'_>, force: bool) -> Result<TuneResult, Error> {
    let mut conn = ctx.store.lock_blocking();
    revert_locked(ctx.host, &mut conn, force)
}

fn revert_locked(host: &Host, conn: &mut Connection, force: bool) -> Result<TuneResult, Error> {
    let boot = host.boot_id()?;
    let mut rows = journal::rows(conn)?;
    rows.sort_by_key(|r| revert_rank(&r.path));
    let previous = journal::state(conn)?.and_then(|s| s.profile);
    // No profile is in force from here on, even if the revert is cut short: a restart then
    // finishes the revert instead of re-applying.
    journal::set_state(conn, None, "reverting", &boot)?;
    let mut items = Vec::new();
    let mut done = Vec::new();
    // Rows that stay, with what their file holds now when it was read.
    let mut kept: Vec<(String, Option<String>)> = Vec::new();
    let mut ok = true;
    for row in &rows {
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
                ok = false;
                kept.push((row.path.clone(), None));
                let reason = Some(format!("cannot read: {e}"));
                items.push(item(&p, None, None, KnobStatus::Failed, reason));
                continue;
            }
        };
        if current == row.original {
            let (b, a) = (Some(current.clone()), Some(current));
            items.push(item(&p, b, a, KnobStatus::Unchanged, None));
            done.push(row.path.clone());
            continue;
        }
        let ours = current == row.written || row.pending_prev.as_ref() == Some(&current);
        if !ours && !force {
            ok = false;
            let reason = format!(
                "changed by someone else since cleanroom wrote it; left alone (original {:?}; --force restores it)",
                row.original
            );
            items.push(item(
                &p,
                Some(row.written.clone()),
                Some(current),
                KnobStatus::Conflict,
                Some(reason),
            ));
            kept.push((row.path.clone(), None));
            continue;
        }
        match write_knob(host, &row.path, kind, &row.original) {
            Ok(actual) if actual == row.original => {
                let status = if ours {
                    KnobStatus::Restored
                } else {
                    KnobStatus::Forced
                };
                items.push(item(&p, Some(current), Some(actual), status, None));
                done.push(row.path.clone());
            }
            Ok(actual) => {
                // The original did not stick: the row stays, with what the file holds.
                ok = false;
                let reason = format!(
                    "the kernel kept {actual:?} instead of the original {:?}",
                    row.original
                );
                items.push(item(
                    &p,
                    Some(current),
                    Some(actual.clone()),
                    KnobStatus::Failed,
                    Some(reason),
                ));
                kept.push((row.path.clone(), Some(actual)));
            }
            Err(e) => {
                ok = false;
                items.push(item(&p, Some(current), None, KnobStatus::Failed, Some(e)));
                kept.push((row.path.clone(), None));
            }
        }
    }
    let tx = conn.transaction()?;
    for path in &done {
        journal::forget(&tx, path)?;
    }
    for (path, now) in &kept {
        journal::keep_after_revert(&tx, path, now.as_deref())?;
    }
    tx.execute("DELETE FROM tuning_refused", [])?;
    tx.commit()?;
    journal::set_state(conn, None, "idle", &boot)?;
    let journal_entries = journal::count(conn)?;
    Ok(TuneResult {
        profile: previous,
        ok,
        dry_run: false,
        items,
        journal_entries,
    })
}

/// `profile.verify`: the active profile against the host.
pub fn verify(ctx: Ctx<'_>) -> Result<TuneResult, Error> {
    let (state, journal_entries, refused) = {
        let conn = ctx.store.lock_blocking();
        (
            journal::state(&conn)?,
            journal::count(&conn)?,
            journal::refused(&conn)?,
        )
    };
    let Some(name) = state.and_then(|s| s.profile) else {
        return Ok(TuneResult {
            profile: None,
            ok: true,
            dry_run: false,
            items: Vec::new(),
            journal_entries,
        });
    };
    let mut items = Vec::new();
    let mut ok = true;
    for p in plan(ctx, &name)? {
        items.push(match &p.want {
            Want::Value(d) if p.current.as_ref() == Some(d) => {
                item(&p, Some(d.clone()), p.current.clone(), KnobStatus::Ok, None)
            }
            Want::Value(_) if refused.contains_key(&p.path) => item(
                &p,
                None,
                p.current.clone(),
                KnobStatus::Unsupported,
                refused.get(&p.path).cloned(),
            ),
            Want::Value(d) => {
                ok = false;
                item(
                    &p,
                    Some(d.clone()),
                    p.current.clone(),
                    KnobStatus::Drifted,
                    Some(format!(
                        "expected {d:?}, found {:?}",
                        p.current.clone().unwrap_or_default()
                    )),
                )
            }
            Want::Unsupported(why) => item(
                &p,
                None,
                p.current.clone(),
                KnobStatus::Unsupported,
                Some(why.clone()),
            ),
            Want::Refused(why) => item(
                &p,
                None,
                p.current.clone(),
                KnobStatus::Refused,
                Some(why.clone()),
            ),
        });
    }
    Ok(TuneResult {
        profile: Some(name),
        ok,
        dry_run: false,
        items,
        journal_entries,
    })
}

/// `profile.active`.
pub fn active(store: &Store) -> Result<ActiveResult, Error> {
    let conn = store.lock_blocking();
    let state = journal::state(&conn)?;
    Ok(ActiveResult {
        profile: state.as_ref().and_then(|s| s.profile.clone()),
        phase: state
            .as_ref()
            .map_or_else(|| "idle".to_owned(), |s| s.phase.clone()),
        since: state.map(|s| s.since),
        journal_entries: journal::count(&conn)?,
    })
}

/// Start-up recovery. Same boot: re-apply the active profile (`on_start = reapply`) or
/// revert. New boot: the kernel started from its defaults, so the journal's originals are
/// stale; they are dropped and, when re-applying, captured again from the current values.
pub fn recover(ctx: Ctx<'_>, on_start: OnStart) -> Result<String, Error> {
    let boot = ctx.host.boot_id()?;
    let (state, count) = {
        let conn = ctx.store.lock_blocking();
        (journal::state(&conn)?, journal::count(&conn)?)
    };
    let Some(state) = state.filter(|s| s.profile.is_some() || count > 0 || s.phase != "idle")
    else {
        return Ok("nothing to recover".into());
    };
    let wanted = state.profile.clone().filter(|_| {
        on_start == OnStart::Reapply && matches!(state.phase.as_str(), "applying" | "active")
    });
    if state.boot_id != boot {
        {
            let mut conn = ctx.store.lock_blocking();
            journal::clear(&conn)?;
            journal::set_state(&mut conn, None, "idle", &boot)?;
        }
        return match wanted {
            Some(name) => match apply(ctx, &name, false, false) {
                Ok(r) if !r.ok => Ok(format!(
                    "new boot: stale originals dropped; profile {name} could not be re-applied whole, nothing of it stays"
                )),
                Ok(r) => Ok(format!(
                    "new boot: stale originals dropped, profile {name} re-applied ({} knobs journaled)",
                    r.journal_entries
                )),
                Err(e) => Ok(format!(
                    "new boot: stale originals dropped; profile {name} not re-applied: {e}"
                )),
            },
            None => Ok("new boot: stale originals dropped".into()),
        };
    }
    // Re-applied atomically: a crash in the middle of an apply ends with the profile
    // applied whole, or (if that fails now) with the originals back; never half of it.
    if let Some(name) = wanted {
        match apply(ctx, &name, false, false) {
            Ok(r) if !r.ok => {
                tracing::warn!(
                    profile = name,
                    "the active profile cannot be applied whole any more; reverting"
                );
            }
            Ok(r) => {
                return Ok(format!(
                    "profile {name} re-applied after restart ({} knobs journaled)",
                    r.journal_entries
                ));
            }
            Err(e) => {
                tracing::warn!(profile = name, error = %e, "cannot re-apply the active profile; reverting")
            }
        }
    }
    let r = revert(ctx, false)?;
    Ok(format!(
        "reverted after restart: {} knobs restored, {} conflicts left in the journal",
        r.items
            .iter()
            .filter(|i| matches!(i.status, KnobStatus::Restored | KnobStatus::Unchanged))
            .count(),
        r.items
            .iter()
            .filter(|i| i.status == KnobStatus::Conflict)
            .count()
    ))
}
