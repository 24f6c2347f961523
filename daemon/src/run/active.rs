//! The batches in progress: who owns each, and the token that ends it. A batch is listed
//! from its start until its last process is gone and its result is stored; it unlists
//! itself when its registration is dropped, however it ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::batch::Caller;
use super::error::Error;

/// One batch in progress.
#[derive(Debug, Clone)]
struct Entry {
    owner: u32,
    cancel: CancellationToken,
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

    /// Lists `batch` of `owner`, ended by `cancel`.
    pub fn register(
        self: &Arc<Self>,
        batch: &str,
        owner: u32,
        cancel: CancellationToken,
    ) -> Registration {
        self.lock()
            .insert(batch.to_owned(), Entry { owner, cancel });
        self.changed.notify_one();
        Registration {
            active: Arc::clone(self),
            batch: batch.to_owned(),
        }
    }

    /// Ends `batch` if it is in progress and the caller's (or the caller is an admin);
    /// whether it was in progress.
    pub fn cancel(&self, batch: &str, caller: &Caller) -> Result<bool, Error> {
        let Some(entry) = self.lock().get(batch).cloned() else {
            return Ok(false);
        };
        if !caller.may_see(entry.owner) {
            return Err(Error::NotYours {
                what: format!("batch {batch}"),
                owner: entry.owner,
            });
        }
        entry.cancel.cancel();
        Ok(true)
    }

    /// The owner of `batch`, if it is in progress.
    pub fn owner(&self, batch: &str) -> Option<u32> {
        self.lock().get(batch).map(|e| e.owner)
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

    #[test]
    fn batches_are_listed_while_registered_and_cancelled_by_owner_or_admin() {
        let active = Arc::new(Active::default());
        let token = CancellationToken::new();
        let reg = active.register("7", 1000, token.clone());
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
