//! Run cgroups prepared ahead of requests, so a run's request path creates no cgroup and
//! migrates no process.
//!
//! cgroup v1 only: a slot is a fresh run cgroup in every hierarchy, `ready-<id>`, made by
//! a background task, with a parked [`Helper`] inside that will clone the run's child. A
//! run takes a ready slot (renamed `run-<id>`) and sets its limits (a few file writes); a
//! run that finds none ready makes its cgroup on the spot as before. Each take starts a
//! refill; cgroups are never reused (a used one is removed after the answer), so no counter
//! of an earlier run leaks into a later one.
//!
//! On cgroup v2 there is no pool: `CLONE_INTO_CGROUP` already avoids the migration, and
//! creating the run's cgroup is one `mkdir` (v2 cannot rename cgroups, so a prepared one
//! could not take the run's name).
//!
//! Limitation: the pool is small ([`READY`]); a burst of runs beyond it takes the slow
//! path until the refill catches up.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::cgroup::{Layout, RunCgroup};
use super::helper::Helper;
use crate::host::Host;

/// Slots kept ready.
pub const READY: usize = 2;

/// A prepared run cgroup, and on v1 the helper parked in it.
#[derive(Debug)]
pub struct Slot {
    /// The cgroup.
    pub cgroup: RunCgroup,
    /// The helper (cgroup v1).
    pub helper: Option<Helper>,
}

/// The pool of prepared slots.
#[derive(Debug)]
pub struct Slots {
    host: Host,
    layout: Layout,
    ids: Arc<AtomicU64>,
    ready: Mutex<Vec<Slot>>,
    filling: AtomicBool,
    /// Set at a stop: no slot is made any more, and one made meanwhile is undone.
    closed: AtomicBool,
    /// Held while a slot is made, and by the shield while it goes up: a helper joining its
    /// cgroups must not be in the root cpuset when the shield moves that cpuset's processes
    /// (it would be carried out of its run's cgroup).
    gate: Mutex<()>,
}

impl Slots {
    /// A pool making its cgroups in `layout`, naming them from `ids`.
    pub fn new(host: Host, layout: Layout, ids: Arc<AtomicU64>) -> Self {
        Self {
            host,
            layout,
            ids,
            ready: Mutex::new(Vec::new()),
            filling: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            gate: Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        // Held for a push or a pop only.
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A ready slot, if there is one; a refill starts either way.
    pub fn take(self: &Arc<Self>) -> Option<Slot> {
        let slot = self.lock().pop();
        self.refill();
        slot
    }

    /// Tops the pool up to [`READY`] in the background (one refill at a time). Must be
    /// called from within the runtime.
    pub fn refill(self: &Arc<Self>) {
        if self.closed.load(Ordering::Acquire) || self.filling.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            while pool.lock().len() < READY && !pool.closed.load(Ordering::Acquire) {
                let p = Arc::clone(&pool);
                match tokio::task::spawn_blocking(move || p.prepare()).await {
                    Ok(Ok(slot)) if pool.closed.load(Ordering::Acquire) => pool.undo(slot),
                    Ok(Ok(slot)) => pool.lock().push(slot),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot prepare a run cgroup ahead; runs make theirs");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "preparing a run cgroup failed");
                        break;
                    }
                }
            }
            pool.filling.store(false, Ordering::Release);
        });
    }

    /// Keeps slots from being made while held (the shield takes it while it goes up).
    pub fn gate(&self) -> std::sync::MutexGuard<'_, ()> {
        self.gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One slot: its cgroup, and on v1 a helper inside (the migrations happen here).
    fn prepare(&self) -> std::io::Result<Slot> {
        let _gate = self.gate();
        let id = self.ids.fetch_add(1, Ordering::Relaxed).to_string();
        let cgroup = self
            .layout
            .create_slot(&self.host, &id)
            .map_err(std::io::Error::other)?;
        let procs: Vec<_> = cgroup
            .procs_files()
            .iter()
            .filter_map(|p| self.host.path(p).ok())
            .collect();
        match Helper::park(&procs) {
            Ok(helper) => Ok(Slot {
                cgroup,
                helper: Some(helper),
            }),
            Err(e) => {
                cgroup.kill_all(&self.host);
                cgroup.wait_empty(&self.host, std::time::Duration::from_secs(1));
                cgroup.remove(&self.host);
                Err(e)
            }
        }
    }

    /// At a stop: no more slots; waits (briefly) for a refill in progress, then ends the
    /// parked helpers and removes their cgroups.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(300);
        while self.filling.load(Ordering::Acquire) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let slots: Vec<Slot> = self.lock().drain(..).collect();
        for slot in slots {
            self.undo(slot);
        }
    }

    /// Ends a slot's helper and removes its cgroup.
    fn undo(&self, slot: Slot) {
        if let Some(h) = slot.helper {
            h.dismiss();
        }
        slot.cgroup.remove(&self.host);
    }
}
