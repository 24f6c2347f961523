//! The run history and baselines as callers see them: who may see, compare, save or delete
//! what, over the rows `store::history` keeps. A reader or runner sees its own batches, an
//! admin every one; a baseline is read by its owner, an admin, or anyone when it was saved
//! public, and replaced or deleted only by its owner or an admin.

use cleanroom_proto::{
    BaselineDeleteResult, BaselineInfo, BaselineListResult, BatchInfo, BetweenBatch,
    ChangePointInfo, Comparison, Design, HistoryPoint, Metric, RunResult, RunsHistoryResult,
    RunsListResult,
};

use super::batch::Caller;
use super::compare::{self, Plan, Side};
use super::error::Error;
use super::{changepoint, verdict};
use crate::quota::Exceeded;
use crate::store::{Store, history};

/// A stored batch as read back.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its id.
    pub batch: String,
    /// Who ran it.
    pub owner: u32,
    /// Its label.
    pub label: Option<String>,
    /// The result as `run.start` answered it.
    pub result: RunResult,
}

/// A baseline name must be one: letters, digits, `.`, `_`, `-`; at most 64.
pub fn check_name(name: &str, field: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{field}: {name:?} is not a name (letters, digits, . _ -; at most 64)"
        )))
    }
}

/// Loads a stored batch (by id, or `baseline:NAME`) that `caller` may read: a batch its
/// owner's (or any, for an admin), a baseline its owner's, public, or any for an admin.
pub async fn load(store: &Store, caller: &Caller, what: &str) -> Result<Stored, Error> {
    store.settled().await;
    let key = what.to_owned();
    let (found, base) = store
        .call(move |c| {
            let base = match key.strip_prefix("baseline:") {
                Some(name) => match history::baseline(c, name)? {
                    Some(b) => Some(b),
                    None => return Ok((None, None)),
                },
                None => None,
            };
            let batch = base.as_ref().map_or(key.as_str(), |b| b.batch.as_str());
            Ok((history::get(c, batch)?, base))
        })
        .await?;
    if let Some(b) = &base {
        if !b.public && !caller.may_see(b.uid) {
            return Err(Error::NotYours {
                what: format!("baseline {} (private: not saved --public)", b.name),
                owner: b.uid,
            });
        }
    }
    let Some(row) = found else {
        return Err(Error::NotFound(match what.strip_prefix("baseline:") {
            Some(name) => format!("no baseline named {name:?} (cleanroomctl baseline list)"),
            None => format!("no stored batch {what} (cleanroomctl runs list)"),
        }));
    };
    // A batch by id is its owner's; one reached through a baseline the caller may read is
    // readable too.
    if base.is_none() && !caller.may_see(row.uid) {
        return Err(Error::NotYourBatch(what.to_owned()));
    }
    let mut result: RunResult =
        serde_json::from_str(&row.result).map_err(|source| Error::Unreadable {
            batch: row.batch.clone(),
            source,
        })?;
    // The command line and label are the owner's (an argument can hold a secret): someone
    // reading a public baseline gets when and by whom only.
    let own = caller.may_see(row.uid);
    result.stored = Some(cleanroom_proto::Provenance {
        ts: row.ts,
        uid: row.uid,
        label: row.label.clone().filter(|_| own),
        argv: if own {
            serde_json::from_str(&row.argv).unwrap_or_default()
        } else {
            Vec::new()
        },
    });
    Ok(Stored {
        batch: row.batch,
        owner: row.uid,
        label: row.label,
        result,
    })
}

/// Earlier batches a between-batch spread is estimated from (the newest of the label).
const SPREAD_BATCHES: u32 = 30;

/// The between-batch spread of a command for a sequential comparison with `baseline`:
/// from the caller's earlier batches labelled `label` (the two compared left out) when
/// there are at least three, else from the drift within the baseline's own repeats (at
/// least ten), else unknown, with the reason. Only the caller's own batches: nobody else
/// can widen or narrow their verdicts by running under their label.
pub async fn spread(
    store: &Store,
    label: Option<&str>,
    uid: u32,
    exclude: [&str; 2],
    metric: Metric,
    baseline: &[f64],
) -> Result<BetweenBatch, String> {
    if let Some(label) = label {
        store.settled().await;
        let l = label.to_owned();
        let rows = match store
            .call(move |c| history::labelled(c, &l, Some(&[uid]), SPREAD_BATCHES))
            .await
        {
            Ok(rows) => rows,
            Err(e) => return Err(format!("the label's history cannot be read: {e}")),
        };
        let batches: Vec<Vec<f64>> = rows
            .iter()
            .filter(|row| !exclude.contains(&row.batch.as_str()))
            .filter_map(|row| serde_json::from_str::<RunResult>(&row.result).ok())
            .map(|r| r.metric_values(metric))
            .collect();
        if let Some(sd) = compare::spread_of_history(&batches) {
            return Ok(BetweenBatch {
                percent: sd * 100.0,
                source: "history".into(),
                from: batches.len() as u32,
            });
        }
    }
    if let Some(sd) = compare::spread_of_drift(baseline) {
        return Ok(BetweenBatch {
            percent: sd * 100.0,
            source: "baseline".into(),
            from: baseline.len() as u32,
        });
    }
    Err(format!(
        "the between-batch spread of this command is unknown: {} and a baseline of {} \
         repeats (10 needed); label the runs (--label) to build a history, or use \
         `cleanroomctl compare` for an interleaved verdict",
        match label {
            Some(l) => format!("fewer than 3 earlier batches labelled {l:?}"),
            None => "no label".to_owned(),
        },
        baseline.len()
    ))
}

/// `runs.list`: the newest batches the caller may see, newest first.
pub async fn list(store: &Store, caller: &Caller, limit: u32) -> Result<RunsListResult, Error> {
    store.settled().await;
    let uid = (!caller.admin).then_some(caller.uid);
    let rows = store.call(move |c| history::list(c, uid, limit)).await?;
    let batches = rows
        .into_iter()
        .filter_map(|row| {
            let end_reason = serde_json::from_value(row.end_reason?.into()).ok()?;
            Some(BatchInfo {
                batch: row.batch,
                ts: row.ts,
                uid: row.uid,
                label: row.label,
                argv: serde_json::from_str(&row.argv).unwrap_or_default(),
                runs: row.runs,
                end_reason,
                exit_code: row.exit_code,
                wall_ms: row.wall_ms.unwrap_or(0.0),
            })
        })
        .collect();
    Ok(RunsListResult { batches })
}

/// `runs.show`: a stored batch the caller may see.
pub async fn show(store: &Store, caller: &Caller, batch: &str) -> Result<RunResult, Error> {
    Ok(load(store, caller, batch).await?.result)
}

/// `runs.compare`: `b` against `a`, each the caller's (or any, for an admin) or a baseline
/// the caller may read, as sequential batches.
pub async fn compare(
    store: &Store,
    caller: &Caller,
    a: &str,
    b: &str,
    strict: bool,
    metric: Metric,
    settings: &verdict::Settings,
) -> Result<Comparison, Error> {
    let sa = load(store, caller, a).await?;
    let sb = load(store, caller, b).await?;
    if strict {
        let now = sb.result.fingerprint.clone().unwrap_or_default();
        if let Some(differ) = super::batch::differences(&now, sa.result.fingerprint.as_ref()) {
            return Err(Error::EnvironmentsDiffer(differ));
        }
    }
    let (old, new) = (
        sa.result.metric_values(metric),
        sb.result.metric_values(metric),
    );
    if old.is_empty() || new.is_empty() {
        return Err(Error::NothingToCompare(format!(
            "{a} and {b} hold no samples"
        )));
    }
    let label = sb.label.clone().or_else(|| sa.label.clone());
    let spread = spread(
        store,
        label.as_deref(),
        caller.uid,
        [&sa.batch, &sb.batch],
        metric,
        &old,
    )
    .await;
    let plan = Plan {
        metric: metric.series().into(),
        against: a.to_owned(),
        against_batch: sa.batch.clone(),
        design: Design::Independent,
    };
    let (fa, fb, s) = (
        sa.result.fingerprint.clone(),
        sb.result.fingerprint.clone(),
        *settings,
    );
    verdict::in_turn(move || {
        let prepared = compare::sequential(
            plan,
            Side {
                values: &old,
                fingerprint: fa.as_ref(),
            },
            Side {
                values: &new,
                fingerprint: fb.as_ref(),
            },
            spread,
            &s,
        );
        compare::decide(vec![prepared], &s).pop()
    })
    .await?
    .ok_or_else(|| Error::NothingToCompare(format!("{a} and {b}")))
}

/// Most batches `runs.history` reads.
pub const MAX_HISTORY: u32 = 500;

/// `runs.history`: the caller's batches labelled `label` (an admin: everyone's), oldest
/// first, with the change points of `metric`'s medians.
pub async fn label_history(
    store: &Store,
    caller: &Caller,
    label: &str,
    metric: Metric,
    limit: u32,
) -> Result<RunsHistoryResult, Error> {
    store.settled().await;
    let (l, uid) = (label.to_owned(), caller.uid);
    let admin = caller.admin;
    let rows = store
        .call(move |c| {
            let mine = [uid];
            history::label_points(c, &l, (!admin).then_some(&mine[..]), limit.min(MAX_HISTORY))
        })
        .await?;
    let batches: Vec<HistoryPoint> = rows
        .into_iter()
        .filter_map(|row| {
            let median = match metric {
                Metric::Wall => row.median_wall_ms,
                Metric::Cpu => row.median_cpu_ms,
                Metric::Instructions => row.median_instructions,
                Metric::Cycles => row.median_cycles,
            }?;
            Some(HistoryPoint {
                batch: row.batch,
                ts: row.ts,
                uid: row.uid,
                median,
                runs: row.runs,
                baselines: row.baselines,
            })
        })
        .collect();
    let settings = changepoint::Settings::default();
    let series: Vec<f64> = batches.iter().map(|b| b.median).collect();
    let change_points =
        tokio::task::spawn_blocking(move || changepoint::detect(&series, &settings))
            .await?
            .into_iter()
            .map(|cp| ChangePointInfo {
                batch: batches[cp.index].batch.clone(),
                index: cp.index as u32,
                magnitude: cp.magnitude,
                confidence: 1.0 - cp.p,
            })
            .collect();
    Ok(RunsHistoryResult {
        label: label.to_owned(),
        metric,
        batches,
        change_points,
        min_segment: settings.min_segment as u32,
    })
}

fn info(row: history::BaselineRow) -> BaselineInfo {
    BaselineInfo {
        name: row.name,
        batch: row.batch,
        ts: row.ts,
        uid: row.uid,
        public: row.public,
    }
}

/// `baseline.list`: the caller's and the public ones (an admin: every one).
pub async fn baselines(store: &Store, caller: &Caller) -> Result<BaselineListResult, Error> {
    store.settled().await;
    let rows = store.call(|c| history::baselines(c)).await?;
    Ok(BaselineListResult {
        baselines: rows
            .into_iter()
            .filter(|b| b.public || caller.may_see(b.uid))
            .map(info)
            .collect(),
    })
}

/// Refuses a baseline name someone else holds (only its owner or an admin may replace it),
/// and a new one past the caller's `most` baselines.
pub async fn may_save_baseline(
    store: &Store,
    caller: &Caller,
    name: &str,
    most: Option<u64>,
) -> Result<(), Error> {
    store.settled().await;
    let (n, uid) = (name.to_owned(), caller.uid);
    let (found, owned) = store
        .call(move |c| {
            Ok((
                history::baseline(c, &n)?,
                history::baselines_owned(c, uid, &n)?,
            ))
        })
        .await?;
    match found {
        Some(b) if !caller.may_see(b.uid) => Err(Error::NotYours {
            what: format!("baseline {name} (pick another name)"),
            owner: b.uid,
        }),
        _ => match most {
            Some(most) if owned >= most => Err(Exceeded::new(
                "baselines_per_uid",
                most,
                uid,
                format!("{owned} baselines saved (cleanroomctl baseline delete NAME)"),
            )
            .into()),
            _ => Ok(()),
        },
    }
}

/// `baseline.save`: names a stored batch of the caller's (or any, for an admin), public
/// or not.
pub async fn save_baseline(
    store: &Store,
    caller: &Caller,
    name: &str,
    batch: &str,
    public: bool,
    most: Option<u64>,
) -> Result<BaselineInfo, Error> {
    check_name(name, "name")?;
    let stored = load(store, caller, batch).await?;
    if !caller.may_see(stored.owner) {
        return Err(Error::NotYourBatch(batch.to_owned()));
    }
    may_save_baseline(store, caller, name, most).await?;
    let (n, b) = (name.to_owned(), stored.batch.clone());
    let by = history::Saver {
        uid: caller.uid,
        admin: caller.admin,
        public,
        most,
    };
    // One statement: a baseline saved by someone else meanwhile is never replaced.
    let saved = store
        .call(move |c| {
            let saved = history::save_baseline(c, &n, &b, by)?;
            Ok((saved, history::baseline(c, &n)?))
        })
        .await?;
    match saved {
        (history::Saved::Saved, Some(row)) => Ok(info(row)),
        (history::Saved::Full(owned), _) => Err(Exceeded::new(
            "baselines_per_uid",
            most.unwrap_or_default(),
            caller.uid,
            format!("{owned} baselines saved (cleanroomctl baseline delete NAME)"),
        )
        .into()),
        _ => Err(Error::BaselineTaken {
            batch: batch.to_owned(),
            name: name.to_owned(),
        }),
    }
}

/// `baseline.delete`: its owner or an admin.
pub async fn delete_baseline(
    store: &Store,
    caller: &Caller,
    name: &str,
) -> Result<BaselineDeleteResult, Error> {
    store.settled().await;
    let n = name.to_owned();
    let found = store.call(move |c| history::baseline(c, &n)).await?;
    let deleted = match found {
        None => false,
        Some(b) if !caller.may_see(b.uid) => {
            return Err(Error::NotYours {
                what: format!("baseline {name}"),
                owner: b.uid,
            });
        }
        Some(_) => {
            let n = name.to_owned();
            store.call(move |c| history::delete_baseline(c, &n)).await?
        }
    };
    Ok(BaselineDeleteResult {
        name: name.to_owned(),
        deleted,
    })
}
