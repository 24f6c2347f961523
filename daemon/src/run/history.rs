//! The run history and baselines as callers see them: who may see, compare, save or delete
//! what, over the rows `store::history` keeps. A reader or runner sees its own batches, an
//! admin every one; a baseline is read by its owner, an admin, or anyone when it was saved
//! public, and replaced or deleted only by its owner or an admin.

use cleanroom_proto::{
    BaselineDeleteResult, BaselineInfo, BaselineListResult, BatchInfo, Comparison, RunResult,
    RunsListResult,
};

use super::batch::Caller;
use super::compare;
use super::error::Error;
use crate::quota::Exceeded;
use crate::store::{Store, history};

/// A stored batch as read back.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its id.
    pub batch: String,
    /// Who ran it.
    pub owner: u32,
    /// The result as `run.start` answered it.
    pub result: RunResult,
}

/// The comparison settings in force.
#[derive(Debug, Clone, Copy)]
pub struct CompareSettings {
    /// Significance level.
    pub alpha: f64,
    /// Smallest relative change that counts (a fraction, 0.02 for 2 %).
    pub threshold: f64,
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
    let result = serde_json::from_str(&row.result).map_err(|source| Error::Unreadable {
        batch: row.batch.clone(),
        source,
    })?;
    Ok(Stored {
        batch: row.batch,
        owner: row.uid,
        result,
    })
}

/// The wall times of a stored result.
pub fn wall_samples(r: &RunResult) -> Vec<f64> {
    // Every run's, from `samples`; results stored before it have every record instead.
    if let Some(walls) = r.samples.get("wall_ms") {
        walls.clone()
    } else if r.runs.is_empty() {
        vec![r.last.wall_ms]
    } else {
        r.runs.iter().map(|x| x.wall_ms).collect()
    }
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
/// the caller may read.
pub async fn compare(
    store: &Store,
    caller: &Caller,
    a: &str,
    b: &str,
    settings: CompareSettings,
) -> Result<Comparison, Error> {
    let sa = load(store, caller, a).await?;
    let sb = load(store, caller, b).await?;
    compare::compare(
        "wall_ms",
        &wall_samples(&sa.result),
        &wall_samples(&sb.result),
        settings.alpha,
        settings.threshold,
    )
    .ok_or_else(|| Error::NothingToCompare(format!("{a} and {b} hold no samples")))
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
