//! `profile.apply` in its steps: plan → journal → write → roll back (on failure, unless
//! best effort) → settle. Each knob the apply writes is one [`Change`], which carries its
//! values and its fate from step to step.
//!
//! Why the order: the originals (and the value each write replaces) are committed before
//! the first write, so a crash at any point leaves every file at a value the journal knows;
//! settling records what the files hold after the writes (one write can change another
//! knob: a new I/O scheduler resets `nr_requests`), so revert compares against the truth.

use std::collections::{HashMap, HashSet};

use cleanroom_proto::{KnobResult, KnobStatus, TuneResult};
use rusqlite::Connection;

use super::plugins::{Kind, Planned, Want};
use super::{Ctx, Error, apply_rank, item, read_canonical, write_knob};
use crate::host::Host;
use crate::store::journal::{self, Phase};

/// One knob this apply writes, and what became of it.
#[derive(Debug)]
struct Change {
    planned: Planned,
    /// Canonical value before this apply.
    before: String,
    /// Canonical value to write.
    desired: String,
    /// The previous profile set it and this one does not: its original goes back.
    restore: bool,
    /// What happened; `None` while not attempted.
    status: Option<KnobStatus>,
    /// What the file holds after the step that last touched it.
    after: Option<String>,
    /// Why, for anything but applied and restored.
    reason: Option<String>,
    /// Whether the file may hold something other than `before` because of this apply.
    touched: bool,
    /// The kernel would not take the value (reported, not fatal): kept out of verify.
    kernel_refused: Option<String>,
    /// When `before` is someone else's value (the knob is a conflict an earlier revert
    /// left), the value the journal counted as cleanroom's until this apply.
    theirs_over: Option<String>,
}

impl Change {
    /// The value the journal records as cleanroom's for this knob: what the file holds,
    /// or, when that is unknown, the value written (the row and its original stay). A
    /// knob this apply leaves as it found it (never written, or rolled back) keeps what
    /// the journal said before: someone else's value does not become cleanroom's, to be
    /// "restored" over by the next revert.
    fn final_value(&self) -> String {
        if !self.touched {
            return self
                .theirs_over
                .clone()
                .unwrap_or_else(|| self.before.clone());
        }
        self.after.clone().unwrap_or_else(|| self.desired.clone())
    }

    /// The knob's path and final value, for the journal.
    fn settled(&self) -> (String, String) {
        (self.planned.path.clone(), self.final_value())
    }

    /// Whether this apply leaves the knob holding someone else's value, as it found it.
    fn left_to_them(&self) -> bool {
        !self.touched && self.theirs_over.is_some()
    }

    fn result(&self) -> KnobResult {
        item(
            &self.planned,
            Some(self.before.clone()),
            self.after.clone(),
            self.status.unwrap_or(KnobStatus::Planned),
            self.reason.clone(),
        )
    }
}

/// The plan of an apply: the knobs it writes, and the rows of those it leaves alone
/// (unchanged, unsupported, refused, conflicts).
#[derive(Debug, Default)]
struct Plan {
    changes: Vec<Change>,
    items: Vec<KnobResult>,
    /// Journaled knobs already holding the desired value: settled as they are.
    unchanged: Vec<(String, String)>,
}

/// `profile.apply`.
pub fn apply(
    ctx: Ctx<'_>,
    name: &str,
    dry_run: bool,
    best_effort: bool,
) -> Result<TuneResult, Error> {
    let mut planned = super::plan(ctx, name)?;
    let profile = ctx.profiles.get(name).map_err(Error::Profile)?;
    let boot_args = super::boot::profile_args(profile);
    let rules = profile.pins.clone();
    let latency = super::max_latency(profile);
    let partition = super::partition::wanted(profile);
    // Rules that do not fit this host stop the apply before anything is written.
    crate::pin::Pinner::check(ctx.host, &rules)?;
    if let Some(cpus) = &partition {
        super::partition::check(ctx.host, name, cpus)?;
    }
    // The partition first (the run engine before the connection, as exclusive runs take
    // them): a partition the kernel refuses stops the apply before any knob is written.
    let previous_partition = ctx.runner.and_then(|r| r.partition());
    let partition_row = if dry_run {
        partition.as_ref().map(super::partition::planned)
    } else {
        super::partition::hold(ctx, name, partition.as_ref(), &rules)?
    };
    let mut conn = ctx.store.lock_blocking();
    let rows = journal::rows(&conn)?;
    super::boot::rebase(ctx.host, &mut planned, &rows, &boot_args);
    let mut plan = plan_changes(ctx.host, planned, &rows);
    if dry_run {
        for c in &plan.changes {
            plan.items.push(item(
                &c.planned,
                Some(c.before.clone()),
                Some(c.desired.clone()),
                KnobStatus::Planned,
                None,
            ));
        }
        if let Some(n) = latency {
            plan.items.push(KnobResult {
                knob: "cpu latency request (held open)".into(),
                path: "/dev/cpu_dma_latency".into(),
                before: None,
                after: Some(n.to_string()),
                status: KnobStatus::Planned,
                reason: None,
            });
        }
        plan.items.extend(partition_row);
        plan.items.sort_by(|a, b| a.knob.cmp(&b.knob));
        let pins = ctx
            .pins
            .apply(ctx.host, ctx.store, &mut conn, &rules, true)?;
        return Ok(TuneResult {
            profile: Some(name.to_owned()),
            ok: true,
            dry_run: true,
            items: plan.items,
            journal_entries: journal::count(&conn)?,
            pins,
        });
    }
    let boot = ctx.host.boot_id()?;
    let previous = journal::state(&conn)?;
    record_originals(&mut conn, name, &boot, &plan.changes)?;
    let failed = write_all(ctx.host, &conn, &mut plan.changes, best_effort);
    let ok = !failed;
    plan.items.extend(partition_row);
    if failed && !best_effort {
        roll_back(ctx.host, &mut plan.changes);
        // The partition that was in force before, if any.
        drop(conn);
        let back = previous_partition
            .as_ref()
            .map(|p| (p.profile.as_str(), &p.cpus));
        if let Err(e) = match back {
            Some((profile, cpus)) => super::partition::hold(ctx, profile, Some(cpus), &rules),
            None => super::partition::hold(ctx, name, None, &rules),
        } {
            tracing::error!(error = %e, "cannot put the previous partition back");
        }
        conn = ctx.store.lock_blocking();
        // The previous state stands: its profile, and active if it was being applied.
        let (profile, phase) = match &previous {
            Some(st) if st.phase == Phase::Applying => (st.profile.as_deref(), Phase::Active),
            Some(st) => (st.profile.as_deref(), st.phase),
            None => (None, Phase::Idle),
        };
        settle(&mut conn, &plan, profile, phase, &boot, None)?;
    } else {
        reread(ctx.host, &mut plan.changes);
        let refused: Vec<(String, String)> = plan
            .changes
            .iter()
            .filter_map(|c| Some((c.planned.path.clone(), c.kernel_refused.clone()?)))
            .collect();
        settle(
            &mut conn,
            &plan,
            Some(name),
            Phase::Active,
            &boot,
            Some(&refused),
        )?;
    }
    // The processes, once the knobs are in place (a failed apply leaves the rules in
    // force as they were).
    let pins = if failed && !best_effort {
        Vec::new()
    } else {
        let pins = ctx
            .pins
            .apply(ctx.host, ctx.store, &mut conn, &rules, false)?;
        // The latency request the profile holds while in force (dropped if it has none).
        plan.items.extend(ctx.pins.hold_latency(ctx.host, latency));
        pins
    };
    // Knobs after a failure that stopped the writes were never attempted: not listed.
    let mut items = plan.items;
    items.extend(
        plan.changes
            .iter()
            .filter(|c| c.status.is_some())
            .map(Change::result),
    );
    if ok {
        items.sort_by(|a, b| a.knob.cmp(&b.knob));
    }
    super::boot::mark_pending(ctx.host, &boot_args, &mut items);
    Ok(TuneResult {
        profile: Some(name.to_owned()),
        ok,
        dry_run: false,
        items,
        journal_entries: journal::count(&conn)?,
        pins,
    })
}

/// Step 1: what to write. Knobs of the profile that hold another value are changes; knobs
/// the previous profile changed and this one does not set go back to their originals
/// (unless someone else changed them since: then they stay, as conflicts).
fn plan_changes(host: &Host, planned: Vec<Planned>, rows: &[journal::Row]) -> Plan {
    let mut plan = Plan::default();
    let journaled: HashMap<&str, &journal::Row> =
        rows.iter().map(|r| (r.path.as_str(), r)).collect();
    // Only knobs this profile will actually set count as its own: one it cannot set here
    // (unsupported, refused) goes back to its original like any other it drops.
    let in_plan: HashSet<String> = planned
        .iter()
        .filter(|p| matches!(p.want, Want::Value(_)))
        .map(|p| p.path.clone())
        .collect();
    let mut wanted: Vec<(Planned, bool)> = planned.into_iter().map(|p| (p, false)).collect();
    for row in rows.iter().filter(|r| !in_plan.contains(&r.path)) {
        match restoration(host, row) {
            Restoration::Write(p) => wanted.push((p, true)),
            Restoration::Conflict(conflict) => plan.items.push(conflict),
        }
    }
    // Restorations join the profile's knobs in the order that writes must happen in.
    wanted.sort_by_key(|(p, _)| apply_rank(&p.path));
    for (p, restore) in wanted {
        match p.want.clone() {
            Want::Unsupported(why) => plan.items.push(item(
                &p,
                p.current.clone(),
                None,
                KnobStatus::Unsupported,
                Some(why),
            )),
            Want::Refused(why) => plan.items.push(item(
                &p,
                p.current.clone(),
                None,
                KnobStatus::Refused,
                Some(why),
            )),
            Want::Value(d)
                if p.current.as_ref() == Some(&d)
                    && !super::boot::interrupted(
                        p.kind,
                        journaled.get(p.path.as_str()).copied(),
                    ) =>
            {
                if journaled.contains_key(p.path.as_str()) {
                    plan.unchanged.push((p.path.clone(), d.clone()));
                }
                plan.items.push(item(
                    &p,
                    p.current.clone(),
                    Some(d),
                    KnobStatus::Unchanged,
                    None,
                ));
            }
            Want::Value(desired) => {
                let before = p.current.clone().unwrap_or_default();
                let theirs_over = journaled
                    .get(p.path.as_str())
                    .filter(|row| !holds_ours(row, &before))
                    .map(|row| row.written.clone());
                plan.changes.push(Change {
                    before,
                    desired,
                    restore,
                    planned: p,
                    status: None,
                    after: None,
                    reason: None,
                    touched: false,
                    kernel_refused: None,
                    theirs_over,
                })
            }
        }
    }
    plan
}

/// Whether a journaled knob holding `value` holds cleanroom's value: the one it wrote, the
/// one an interrupted apply was replacing, or the original (the rule `journal::begin_apply`
/// applies too).
fn holds_ours(row: &journal::Row, value: &str) -> bool {
    value == row.written || value == row.original || row.pending_prev.as_deref() == Some(value)
}

/// What becomes of a journaled knob the new profile drops.
#[derive(Debug)]
enum Restoration {
    /// Its original goes back.
    Write(Planned),
    /// Someone else changed it since: left alone.
    Conflict(KnobResult),
}

/// A journaled knob the new profile drops: its original goes back if the file still holds
/// cleanroom's value (or already the original); otherwise it is a conflict row.
fn restoration(host: &Host, row: &journal::Row) -> Restoration {
    let kind = Kind::parse_name(&row.kind).unwrap_or(Kind::Text);
    let current = read_canonical(host, &row.path, kind).ok();
    let ours = current.as_ref().is_some_and(|c| holds_ours(row, c));
    let p = Planned {
        knob: row.knob.clone(),
        path: row.path.clone(),
        kind,
        current: current.clone(),
        want: Want::Value(row.original.clone()),
        soft: false,
    };
    if ours {
        Restoration::Write(p)
    } else {
        Restoration::Conflict(item(
            &p,
            Some(row.written.clone()),
            current,
            KnobStatus::Conflict,
            Some("the previous profile's value was changed by someone else; left alone".into()),
        ))
    }
}

/// Step 2: the originals (and the values about to be replaced) on disk before any write.
fn record_originals(
    conn: &mut Connection,
    profile: &str,
    boot: &str,
    changes: &[Change],
) -> Result<(), Error> {
    let rows: Vec<journal::Change<'_>> = changes
        .iter()
        .map(|c| journal::Change {
            path: &c.planned.path,
            knob: &c.planned.knob,
            kind: c.planned.kind.as_str(),
            current: &c.before,
            desired: &c.desired,
        })
        .collect();
    journal::begin_apply(conn, profile, boot, &rows)?;
    Ok(())
}

/// Step 3: every write, in order. Returns whether a knob failed for real (a soft knob the
/// kernel refuses is reported as unsupported instead); without `best_effort` the first
/// failure stops the writes.
///
/// A write the kernel keeps in another form than the one asked for (rounded, partly
/// stored) has that form journaled before the next write ([`journal::rendered`]), so a
/// crash later in the apply leaves a row that knows the file's value. What stays open is
/// the instant between that one write(2) and its commit: a crash there leaves a value the
/// journal cannot tell from someone else's, and the revert reports it as a conflict (and
/// says why it may be one). A probe (writing the value again to see the kernel's form)
/// would close it, but would overwrite someone else's value whenever putting it back
/// failed; a false conflict loses nothing.
fn write_all(host: &Host, conn: &Connection, changes: &mut [Change], best_effort: bool) -> bool {
    let mut failed = false;
    for c in changes.iter_mut() {
        let ok = write_one(host, c);
        if let Some(after) = c.after.as_ref().filter(|a| c.touched && **a != c.desired) {
            if let Err(e) = journal::rendered(conn, &c.planned.path, after) {
                // The settle records it too, or fails the apply with the same error.
                tracing::warn!(path = %c.planned.path, value = %after, error = %e, "cannot journal the kernel's form of a write");
            }
        }
        if !ok {
            failed = true;
            if !best_effort {
                break;
            }
        }
    }
    failed
}

/// Writes one knob; false when it failed for real.
fn write_one(host: &Host, c: &mut Change) -> bool {
    let p = &c.planned;
    match write_knob(host, &p.path, p.kind, &c.desired) {
        Ok(actual) if actual != c.desired && !c.restore => {
            // Accepted, but the kernel kept another value (a managed IRQ, a value it
            // rounds): not this profile's value, and not drift either.
            let reason = format!("the kernel accepted {:?} but kept {actual:?}", c.desired);
            c.status = Some(KnobStatus::Unsupported);
            c.kernel_refused = Some(reason.clone());
            c.reason = Some(reason);
            c.after = Some(actual);
            c.touched = true;
            true
        }
        Ok(actual) => {
            c.status = Some(if c.restore {
                KnobStatus::Restored
            } else {
                KnobStatus::Applied
            });
            c.after = Some(actual);
            c.touched = true;
            true
        }
        Err(e) => {
            // A failed write may still have changed the file (a vector sysctl is stored
            // element by element): what the file holds now decides.
            c.after = read_canonical(host, &p.path, p.kind).ok();
            c.touched = c.after.as_ref() != Some(&c.before);
            if p.soft {
                let reason = format!("the kernel refused: {e}");
                c.status = Some(KnobStatus::Unsupported);
                c.kernel_refused = Some(reason.clone());
                c.reason = Some(reason);
                true
            } else {
                c.status = Some(KnobStatus::Failed);
                c.reason = Some(e.to_string());
                false
            }
        }
    }
}

/// Step 4 (on failure, unless best effort): what this apply wrote goes back to the value
/// it had before, newest first. A knob whose undo fails stays journaled with its original.
fn roll_back(host: &Host, changes: &mut [Change]) {
    for c in changes.iter_mut().rev().filter(|c| c.touched) {
        let p = &c.planned;
        match write_knob(host, &p.path, p.kind, &c.before) {
            Ok(actual) if actual == c.before => {
                if c.status != Some(KnobStatus::Failed) {
                    c.status = Some(KnobStatus::RolledBack);
                }
                c.after = Some(actual);
                c.touched = false;
            }
            Ok(actual) => {
                tracing::error!(path = %p.path, value = %c.before, kept = %actual, "rollback: the kernel kept another value");
                c.status = Some(KnobStatus::Failed);
                c.reason = Some(format!(
                    "rolled back, but the kernel kept {actual:?} instead of {:?}",
                    c.before
                ));
                c.after = Some(actual);
            }
            Err(e) => {
                tracing::error!(path = %p.path, value = %c.before, error = %e, "rollback failed");
                c.status = Some(KnobStatus::Failed);
                c.reason = Some(format!("written, then rollback failed: {e}"));
            }
        }
    }
}

/// After the writes: what each written file holds now is what the journal records (one
/// write can change another knob).
fn reread(host: &Host, changes: &mut [Change]) {
    for c in changes.iter_mut().filter(|c| c.touched) {
        if let Ok(now) = read_canonical(host, &c.planned.path, c.planned.kind) {
            c.after = Some(now);
        }
    }
}

/// Step 5: each knob's final value becomes cleanroom's `written` value, rows back at their
/// original go, and the state is set; one commit. Knobs left holding someone else's value
/// are settled apart: their row stays whatever its values.
fn settle(
    conn: &mut Connection,
    plan: &Plan,
    profile: Option<&str>,
    phase: Phase,
    boot: &str,
    refused: Option<&[(String, String)]>,
) -> Result<(), Error> {
    let (theirs, ours): (Vec<&Change>, Vec<&Change>) =
        plan.changes.iter().partition(|c| c.left_to_them());
    let finals: Vec<(String, String)> = plan
        .unchanged
        .iter()
        .cloned()
        .chain(ours.into_iter().map(Change::settled))
        .collect();
    let theirs: Vec<(String, String)> = theirs.into_iter().map(Change::settled).collect();
    journal::settle(
        conn,
        &str_pairs(&finals),
        &str_pairs(&theirs),
        profile,
        phase,
        boot,
        refused,
    )?;
    Ok(())
}

fn str_pairs(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect()
}
