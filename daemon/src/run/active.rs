//! The batches in progress: who owns each, what it runs, the exclusive cores it holds, and
//! the token that ends it. A batch is listed from its start until its last process is gone
//! and its result is stored; it unlists itself when its registration is dropped, however it
//! ends. Listing is where the per-uid quotas on batches are kept, under one lock, so two
//! requests at once cannot both take the last place.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cleanroom_proto::ActiveBatch;
use tokio_util::sync::CancellationToken;

use super::batch::Caller;
use super::error::Error;
use crate::config::Quotas;
use crate::quota::Exceeded;

/// What is listed of a batch when it starts.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Its owner.
    pub owner: u32,
    /// Whether the owner is an admin (exempt from the per-uid quotas).
    pub admin: bool,
    /// Its label.
    pub label: Option<String>,
    /// The command.
    pub argv: Vec<String>,
    /// Whether it goes on without its client.
    pub detached: bool,
}

/// One batch in progress.
#[derive(Debug, Clone)]
struct Entry {
    listing: Listing,
    started: f64,
    cancel: CancellationToken,
    /// The exclusive CPUs it holds (how many, the list) and the shield's method.
    exclusive: Option<(usize, String, String)>,
}

/// The batches in progress.
#[derive(Debug, Default)]
pub struct Active {
    batches: Mutex<HashMap<String, Entry>>,
    changed: tokio::sync::Notify,
}

/// A batch's place in [`Active`]; dropping it unlists the batch.
#[derive(Debug)]
pub struct Registration {
    active: Arc<Active>,
    batch: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.active.lock().remove(&self.batch);
        self.active.changed.notify_one();
    }
}

impl Active {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // Only ever held for a map operation: a panic cannot leave it half-changed.
        self.batches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lists `batch`, ended by `cancel`, unless its owner (not an admin) already has
    /// `quotas.runs_per_uid` batches in progress, or `quotas.detached_per_uid` detached
    /// ones and this one is detached too.
    pub fn register(
        self: &Arc<Self>,
        batch: &str,
        listing: Listing,
        cancel: CancellationToken,
        quotas: &Quotas,
    ) -> Result<Registration, Exceeded> {
        let mut batches = self.lock();
        if !listing.admin {
            let uid = listing.owner;
            let mine = batches.values().filter(|e| e.listing.owner == uid);
            let (all, detached) = mine.fold((0, 0), |(a, d), e| {
                (a + 1, d + usize::from(e.listing.detached))
            });
            if all >= quotas.runs_per_uid {
                return Err(Exceeded::new(
                    "runs_per_uid",
                    quotas.runs_per_uid,
                    uid,
                    format!("{all} batches in progress (cleanroomctl runs active)"),
                ));
            }
            if listing.detached && detached >= quotas.detached_per_uid {
                return Err(Exceeded::new(
                    "detached_per_uid",
                    quotas.detached_per_uid,
                    uid,
                    format!("{detached} detached batches in progress (cleanroomctl runs active)"),
                ));
            }
        }
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        batches.insert(
            batch.to_owned(),
            Entry {
                listing,
                started,
                cancel,
                exclusive: None,
            },
        );
        drop(batches);
        self.changed.notify_one();
        Ok(Registration {
            active: Arc::clone(self),
            batch: batch.to_owned(),
        })
    }

    /// Records that `batch` holds `count` exclusive CPUs (`cpus`, shielded by `shield`),
    /// unless its owner (not an admin) would then hold more than `quota` (0: no quota).
    pub fn hold_exclusive(
        &self,
        batch: &str,
        (count, cpus, shield): (usize, String, String),
        quota: usize,
    ) -> Result<(), Exceeded> {
        let mut batches = self.lock();
        let Some(owner) = batches.get(batch).map(|e| e.listing.clone()) else {
            return Ok(());
        };
        if quota > 0 && !owner.admin {
            let held: usize = batches
                .values()
                .filter(|e| e.listing.owner == owner.owner)
                .filter_map(|e| e.exclusive.as_ref().map(|x| x.0))
                .sum();
            if held + count > quota {
                return Err(Exceeded::new(
                    "exclusive_cpus_per_uid",
                    quota,
                    owner.owner,
                    format!("{held} exclusive CPUs held, {count} more asked"),
                ));
            }
        }
        if let Some(e) = batches.get_mut(batch) {
            e.exclusive = Some((count, cpus, shield));
        }
        Ok(())
    }

    /// Records that `batch` holds no exclusive CPUs any more.
    pub fn release_exclusive(&self, batch: &str) {
        if let Some(e) = self.lock().get_mut(batch) {
            e.exclusive = None;
        }
    }

    /// How many exclusive CPUs `uid`'s batches hold.
    pub fn exclusive_cpus_of(&self, uid: u32) -> usize {
        self.lock()
            .values()
            .filter(|e| e.listing.owner == uid)
            .filter_map(|e| e.exclusive.as_ref().map(|x| x.0))
            .sum()
    }

    /// The batches in progress `caller` may see, oldest first.
    pub fn list(&self, caller: &Caller) -> Vec<ActiveBatch> {
        let mut list: Vec<ActiveBatch> = self
            .lock()
            .iter()
            .filter(|(_, e)| caller.may_see(e.listing.owner))
            .map(|(batch, e)| ActiveBatch {
                batch: batch.clone(),
                uid: e.listing.owner,
                label: e.listing.label.clone(),
                argv: e.listing.argv.clone(),
                started: e.started,
                detached: e.listing.detached,
                exclusive_cpus: e.exclusive.as_ref().map(|x| x.1.clone()),
                shield: e.exclusive.as_ref().map(|x| x.2.clone()),
            })
            .collect();
        list.sort_by(|a, b| a.started.total_cmp(&b.started).then(a.batch.cmp(&b.batch)));
        list
    }

    /// Ends `batch` if it is in progress and the caller's (or the caller is an admin);
    /// whether it was in progress.
    pub fn cancel(&self, batch: &str, caller: &Caller) -> Result<bool, Error> {
        let Some(entry) = self.lock().get(batch).cloned() else {
            return Ok(false);
        };
        if !caller.may_see(entry.listing.owner) {
            return Err(Error::NotYours {
                what: format!("batch {batch}"),
                owner: entry.listing.owner,
            });
        }
        entry.cancel.cancel();
        Ok(true)
    }

    /// The owner of `batch`, if it is in progress.
    pub fn owner(&self, batch: &str) -> Option<u32> {
        self.lock().get(batch).map(|e| e.listing.owner)
    }

    /// How many batches are in progress.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves at the next start or end of a batch.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(uid: u32, admin: bool) -> Caller {
        Caller {
            uid,
            gid: uid,
            groups: Vec::new(),
            admin,
        }
    }

    fn listing(owner: u32, admin: bool, detached: bool) -> Listing {
        Listing {
            owner,
            admin,
            argv: vec!["true".into()],
            detached,
            ..Listing::default()
        }
    }

    #[test]
    fn a_uid_holds_at_most_its_quota_of_batches_and_detached_ones_admins_exempt() {
        let active = Arc::new(Active::default());
        let q = Quotas {
            runs_per_uid: 3,
            detached_per_uid: 1,
            ..Quotas::default()
        };
        let t = CancellationToken::new;
        let a = active
            .register("1", listing(1000, false, true), t(), &q)
            .unwrap();
        let e = active
            .register("2", listing(1000, false, true), t(), &q)
            .unwrap_err();
        assert_eq!((e.key, e.limit, e.uid), ("detached_per_uid", 1, 1000));
        let _b = active
            .register("3", listing(1000, false, false), t(), &q)
            .unwrap();
        let _c = active
            .register("4", listing(1000, false, false), t(), &q)
            .unwrap();
        let e = active
            .register("5", listing(1000, false, false), t(), &q)
            .unwrap_err();
        assert_eq!((e.key, e.limit), ("runs_per_uid", 3));
        assert!(e.to_string().contains("3 batches in progress"), "{e}");
        // Others, and admins, are not held back by uid 1000.
        let _d = active
            .register("6", listing(1001, false, true), t(), &q)
            .unwrap();
        let _e: Vec<_> = (0..5)
            .map(|i| {
                active
                    .register(&format!("a{i}"), listing(0, true, true), t(), &q)
                    .unwrap()
            })
            .collect();
        // A place comes back when a batch ends.
        drop(a);
        let _f = active
            .register("7", listing(1000, false, true), t(), &q)
            .unwrap();
        // Exclusive CPUs are counted by uid, up to its quota.
        let x = |n: usize| (n, "2-3".to_owned(), "cpuset".to_owned());
        active.hold_exclusive("3", x(2), 3).unwrap();
        let e = active.hold_exclusive("4", x(2), 3).unwrap_err();
        assert_eq!((e.key, e.limit, e.uid), ("exclusive_cpus_per_uid", 3, 1000));
        assert!(
            e.to_string()
                .contains("2 exclusive CPUs held, 2 more asked"),
            "{e}"
        );
        active.hold_exclusive("4", x(1), 3).unwrap();
        active.hold_exclusive("a0", x(8), 3).unwrap();
        assert_eq!(active.exclusive_cpus_of(1000), 3);
        assert_eq!(active.exclusive_cpus_of(1001), 0);
        active.release_exclusive("4");
        assert_eq!(active.exclusive_cpus_of(1000), 2);
        let mine = active.list(&caller(1000, false));
        assert_eq!(mine.len(), 3);
        assert!(mine.iter().all(|b| b.uid == 1000));
        assert_eq!(active.list(&caller(0, true)).len(), 9);
        let three = mine.iter().find(|b| b.batch == "3").unwrap();
        assert_eq!(three.exclusive_cpus.as_deref(), Some("2-3"));
        assert_eq!(three.shield.as_deref(), Some("cpuset"));
    }

    #[test]
    fn batches_are_listed_while_registered_and_cancelled_by_owner_or_admin() {
        let active = Arc::new(Active::default());
        let token = CancellationToken::new();
        let reg = active
            .register(
                "7",
                listing(1000, false, false),
                token.clone(),
                &Quotas::default(),
            )
            .unwrap();
        assert_eq!((active.len(), active.owner("7")), (1, Some(1000)));
        let e = active.cancel("7", &caller(1001, false)).unwrap_err();
        assert!(e.to_string().contains("belongs to uid 1000"), "{e}");
        assert!(!token.is_cancelled());
        assert!(active.cancel("7", &caller(0, true)).unwrap());
        assert!(token.is_cancelled());
        assert!(!active.cancel("8", &caller(1000, false)).unwrap());
        drop(reg);
        assert!(active.is_empty());
    }
}
