//! Clean-room runs: a command in its own cgroup, as the caller, measured, and ended with
//! every process it started.
//!
//! A run: create the cgroup (limits set) → start the child inside it before exec
//! ([`spawn`]) → stream its output → wait for it, the timeout, or cancellation → kill
//! whatever is left in the cgroup (double-forked and setsid'd processes included) → read
//! the cgroup's accounting → remove the cgroup. Results are ready as soon as the last
//! process is gone: nothing sleeps for a fixed time.
//!
//! Exclusive runs take whole cores ([`cpus`]) and, while any holds cores, the [`shield`]
//! keeps every other task off the isolation pool.

mod active;
pub mod batch;
pub mod cgroup;
pub mod changepoint;
pub mod collect;
pub mod compare;
pub mod contain;
pub mod counters;
pub mod cpus;
mod error;
mod exec;
pub mod fingerprint;
pub mod fsroom;
pub mod helper;
pub mod history;
pub mod instructions;
pub mod interleave;
pub mod noise;
pub mod request;
pub mod shield;
mod slots;
pub mod spawn;
pub mod verdict;

pub use active::{Active, Registration};
pub use batch::{Batch, Caller, Engine, RunEvent, Settings};
pub use error::Error;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::host::Host;
use cgroup::{Layout, Limits};

/// One command to run, fully resolved (identity, environment, limits).
#[derive(Debug, Clone)]
pub struct Job {
    /// What to start (its `cgroup_procs` is filled in per run).
    pub spec: spawn::Spec,
    /// Cgroup limits.
    pub limits: Limits,
    /// Wall-clock limit.
    pub timeout: Option<Duration>,
    /// Where each run's clean-room stage is kept, for a batch that collects from it.
    pub latest: Option<collect::Latest>,
}

/// Runs jobs on this host.
#[derive(Debug)]
pub struct Runner {
    host: Host,
    layout: Result<Layout, cgroup::LayoutError>,
    next: Arc<AtomicU64>,
    /// Run cgroups prepared ahead (none where runs are unavailable).
    slots: Option<Arc<slots::Slots>>,
    /// Output beyond this many bytes per run is dropped (and said so).
    pub max_output: u64,
    store: crate::store::Store,
    /// CPUs exclusive runs may take (from the config; a profile's `[isolation] cpus`
    /// replaces it while that profile is active).
    pool: BTreeSet<u32>,
    /// CPUs held by exclusive runs now, and the CPUs the shield covers (the pool in force
    /// when it went up; it stays the pool until the shield comes down).
    cores: std::sync::Mutex<Held>,
    /// Woken whenever exclusive cores are released.
    released: tokio::sync::Notify,
    /// What the shield leaves alone.
    exempt: shield::Exempt,
    /// How the shield works here.
    method: shield::Method,
    /// While the shield is up: the CPUs left to everything else, and the partition
    /// exclusive runs go into (v2). Its lock is only ever held for a copy (never across
    /// raising or lowering), so runs can read it from async code.
    up: std::sync::Mutex<Option<Up>>,
    /// Noise probes by CPU list.
    probes: std::sync::Mutex<std::collections::HashMap<String, noise::Probe>>,
    /// Told of every execution's end (the daemon's metrics), once set.
    on_end: std::sync::OnceLock<Watcher>,
}

/// What watches every execution's end.
type WatchFn = Box<dyn Fn(&RunEnd<'_>) + Send + Sync>;

/// The runner's watcher (the daemon's metrics).
struct Watcher(WatchFn);

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watcher")
    }
}

/// One execution as it ended, for whoever watches the runner.
#[derive(Debug)]
pub struct RunEnd<'a> {
    /// Its record.
    pub record: &'a cleanroom_proto::RunRecord,
    /// Whether it ran on CPUs the shield kept for it (an exclusive run).
    pub shielded: bool,
}

/// Exclusive CPUs and the shield now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Occupancy {
    /// CPUs exclusive runs hold.
    pub exclusive: usize,
    /// CPUs the shield covers (0: the shield is down).
    pub shielded: usize,
    /// CPUs of a profile's partition (0: none).
    pub partition: usize,
}

/// The shield in force.
#[derive(Debug, Clone)]
struct Up {
    rest: String,
    partition: Option<String>,
}

/// Exclusive cores now.
#[derive(Debug, Default)]
struct Held {
    taken: BTreeSet<u32>,
    shielded: BTreeSet<u32>,
    /// The partition a profile holds (the shield, kept up while the profile is in force).
    partition: Option<Partition>,
}

/// A profile's partition in force: the shield, raised for the profile rather than for
/// exclusive runs, and kept up until the profile goes out of force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// The profile holding it.
    pub profile: String,
    /// Its CPUs.
    pub cpus: BTreeSet<u32>,
    /// The CPUs exclusive runs take cores from while it is up: the partition but for the
    /// CPUs pin rules place workers on (all of it when that leaves none).
    pub pool: BTreeSet<u32>,
    /// How the shield keeps others off (`partition (isolated)`, `partition`, `cpuset`,
    /// `affinity`).
    pub method: &'static str,
    /// cgroup v1: the cpuset hierarchy's mount and the shield's cpuset, which does not
    /// admit the partition's CPUs (a task pinned there moves to the root cpuset first).
    pub cpuset: Option<(String, String)>,
    /// cgroup v2: the partition's cgroup (only tasks inside it may run on its CPUs).
    pub cgroup: Option<String>,
    /// What raising it did (counts of what moved).
    pub moved: PartitionCounts,
}

/// What raising a partition moved, and what it could not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionCounts {
    /// Processes moved into the shield's cpuset (v1).
    pub processes: usize,
    /// Threads whose affinity was narrowed (kernel threads included).
    pub threads: usize,
    /// Threads still allowed there (per-CPU kernel threads, refusals).
    pub unmovable: usize,
    /// IRQs (and the workqueue cpumask) moved off.
    pub irqs: usize,
    /// IRQs the kernel would not move.
    pub irqs_unmovable: usize,
}

/// Why a partition could not go up (nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    /// Exclusive runs hold cores under a shield over other CPUs.
    #[error(
        "exclusive runs hold CPUs {held} under a shield over CPUs {shielded}: the partition \
         can go up once they end (`cleanroomctl runs active` lists them)"
    )]
    Busy {
        /// CPUs the runs hold.
        held: String,
        /// CPUs their shield covers.
        shielded: String,
    },
    /// The shield could not go up (the kernel refused, the journal failed, a previous
    /// shield is left).
    #[error("cannot raise the partition: {0}")]
    Shield(#[from] shield::Error),
}

/// Which exclusive CPUs a run wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// This many, as whole cores.
    Count(usize),
    /// Exactly these (whole cores).
    List(BTreeSet<u32>),
}

/// Cores held by an exclusive run. Released (and the shield lowered after the last one) by
/// the explicit, awaited [`Exclusive::release`]; dropping it unreleased releases it there
/// and then, blocking, as a last resort (and says so).
#[derive(Debug)]
pub struct Exclusive {
    runner: Arc<Runner>,
    /// The CPUs, as a CPU list.
    pub cpus: String,
    set: BTreeSet<u32>,
    /// How the shield works (`partition`, `cpuset`, `affinity`).
    pub method: &'static str,
    released: bool,
}

impl Exclusive {
    /// How many CPUs it holds.
    pub fn count(&self) -> usize {
        self.set.len()
    }

    /// Gives the cores back; the last holder lowers the shield (which scans /proc and
    /// writes kernel files: done on the blocking pool).
    pub async fn release(mut self) {
        let done = tokio::task::spawn_blocking(move || self.release_now()).await;
        if let Err(e) = done {
            tracing::error!(error = %e, "releasing exclusive cores failed");
        }
    }

    fn release_now(&mut self) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        let mut held = self.runner.cores.lock().unwrap_or_else(|p| p.into_inner());
        for c in &self.set {
            held.taken.remove(c);
        }
        // A profile's partition stays up when the runs inside it end.
        if held.taken.is_empty() && !held.shielded.is_empty() && held.partition.is_none() {
            self.runner.lower_locked(&mut held);
        }
        drop(held);
        self.runner.released.notify_waiters();
    }
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        if !self.released {
            tracing::warn!(cpus = %self.cpus, "exclusive cores released on drop, not by their holder");
            self.release_now();
        }
    }
}

/// Lowers a shield a daemon that died left raised (its journal says so), at a start or
/// by `cleanroomd --revert` and `--cleanup`; what it did, when one was journaled and the
/// lowering could use its journal. With `force` (`cleanroomd --revert --force`, audited as
/// that actor), what the kernel still refuses to take back is forgotten
/// ([`shield::lower_forcing`]).
pub fn lower_left_shield(
    host: &Host,
    store: &crate::store::Store,
    force: Option<&crate::store::AuditEvent>,
) -> Option<shield::Lowered> {
    let mut conn = store.lock_blocking();
    if !shield::is_raised(&conn).unwrap_or(false) {
        return None;
    }
    let lowered = match force {
        None => shield::lower(host, &mut conn),
        Some(actor) => shield::lower_forcing(host, &mut conn, actor),
    };
    match lowered {
        Ok(l) => {
            tracing::warn!(
                restored = l.restored,
                kept = l.kept(),
                "lowered a shield left by a previous daemon"
            );
            Some(l)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot lower a shield left by a previous daemon");
            None
        }
    }
}

/// Ends the runs a daemon that died left (of its `instance`, below this process's own
/// cgroups, where that daemon's were when it ran from here) and removes their cgroups, for
/// `cleanroomd --revert`; how many.
pub fn end_left_runs(host: &Host, instance: &str) -> usize {
    let Ok(mode) = host.cgroup_mode() else {
        return 0;
    };
    match Layout::detect(host, mode, instance) {
        Ok(layout) => {
            let n = layout.cleanup_stale(host);
            layout.remove_base(host);
            n
        }
        Err(_) => 0,
    }
}

/// Shield settings from the configuration.
#[derive(Debug, Clone, Default)]
pub struct ShieldConfig {
    /// The isolation pool (a CPU list); default every online CPU but CPU 0.
    pub pool: Option<String>,
    /// What the shield leaves alone.
    pub exempt: shield::Exempt,
    /// On cgroup v2, shield with a cpuset partition (default); otherwise by affinity.
    pub partition: bool,
}

impl Runner {
    /// Prepares the run cgroups below the daemon's own and removes those a dead daemon
    /// left behind.
    pub fn new(
        host: Host,
        mode: cleanroom_proto::CgroupMode,
        max_output: u64,
        instance: &str,
        store: crate::store::Store,
        shield_config: ShieldConfig,
    ) -> Self {
        // A shield left by a daemon that died is lowered before anything else: on v1 it
        // moved this process (started from a shielded one) into its cpuset, and where the
        // daemon is decides where its runs go.
        lower_left_shield(&host, &store, None);
        let layout = Layout::detect(&host, mode, instance);
        match &layout {
            Ok(l) => {
                let n = l.cleanup_stale(&host);
                tracing::info!(layout = ?l, stale_removed = n, "run cgroups ready");
            }
            Err(e) => tracing::warn!(error = %e, "runs are unavailable: no usable cgroups"),
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let online = host
            .read("/sys/devices/system/cpu/online")
            .ok()
            .and_then(|t| crate::host::format::parse_cpu_list(&t).ok())
            .unwrap_or_default();
        let pool = match shield_config
            .pool
            .as_deref()
            .map(crate::host::format::parse_cpu_list)
        {
            Some(Ok(p)) => p.intersection(&online).copied().collect(),
            _ => online.iter().copied().filter(|c| *c != 0).collect(),
        };
        let method = match &layout {
            Ok(l) => l.shield_method(&host, instance, shield_config.partition),
            Err(_) => shield::Method::Affinity,
        };
        let next = Arc::new(AtomicU64::new(seed));
        // Prepared run cgroups with parked helpers where a child cannot be cloned into its
        // cgroup (v1); on v2 `CLONE_INTO_CGROUP` already avoids the migration.
        let slots = match &layout {
            Ok(l @ Layout::V1(_)) => Some(Arc::new(slots::Slots::new(
                host.clone(),
                l.clone(),
                Arc::clone(&next),
            ))),
            _ => None,
        };
        Self {
            host,
            layout,
            next,
            slots,
            max_output,
            store,
            pool,
            cores: std::sync::Mutex::new(Held::default()),
            released: tokio::sync::Notify::new(),
            exempt: shield_config.exempt,
            method,
            up: std::sync::Mutex::new(None),
            probes: std::sync::Mutex::new(Default::default()),
            on_end: std::sync::OnceLock::new(),
        }
    }

    /// Takes exclusive CPUs as whole cores from the pool (`pool`, from the active profile,
    /// or the configured one) and, for the first exclusive run, raises the shield over the
    /// pool. Blocking (sysfs, /proc, SQLite).
    pub fn take_exclusive(
        self: &Arc<Self>,
        want: &Want,
        pool: Option<&BTreeSet<u32>>,
    ) -> Result<Exclusive, cpus::PickError> {
        let mut held = self.cores.lock().unwrap_or_else(|p| p.into_inner());
        // While the shield is up, its CPUs are the pool; a profile's partition is the
        // pool but for the CPUs its workers are pinned on (`pool` where it gives one).
        let pool = match (&held.partition, pool) {
            (Some(p), Some(asked)) if !asked.is_disjoint(&p.cpus) => {
                asked.intersection(&p.cpus).copied().collect()
            }
            (Some(p), _) => p.pool.clone(),
            (None, _) if !held.shielded.is_empty() => held.shielded.clone(),
            (None, pool) => pool.unwrap_or(&self.pool).clone(),
        };
        let topology = cpus::topology(&self.host, &pool);
        let set = match want {
            Want::Count(n) => cpus::pick(&topology, &pool, &held.taken, (*n).max(1))?,
            Want::List(list) => cpus::pick_list(&topology, &pool, &held.taken, list)?,
        };
        if held.shielded.is_empty() {
            let mut conn = self.store.lock_blocking();
            if let Err(e) = self.raise_locked(&mut held, &pool, &self.exempt, &mut conn) {
                return Err(cpus::PickError::Never(format!(
                    "cannot raise the shield: {e}"
                )));
            }
        }
        held.taken.extend(set.iter().copied());
        let partition = self
            .up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|u| u.partition.clone());
        let method = match (&self.method, &partition) {
            (shield::Method::Partition { .. }, Some(_)) => "partition",
            (shield::Method::Cpuset { .. }, _) => "cpuset",
            _ => "affinity",
        };
        Ok(Exclusive {
            runner: Arc::clone(self),
            cpus: crate::host::format::format_cpu_list(&set),
            set,
            method,
            released: false,
        })
    }

    /// Resolves once exclusive cores are released after this call (to wait for cores:
    /// take the future, try, then await it).
    pub fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.released.notified()
    }

    /// Starts preparing run cgroups ahead of requests (from within the runtime).
    pub fn warm_up(&self) {
        if let Some(s) = &self.slots {
            s.refill();
        }
    }

    /// At a clean stop: ends runs still going, lowers the shield, removes the directories
    /// of run cgroups (a crash leaves all that to the next start).
    pub fn shutdown(&self) {
        if let Some(s) = &self.slots {
            s.close();
        }
        if let Ok(l) = &self.layout {
            l.end_all(&self.host, "ended a run still going at the stop");
        }
        let mut conn = self.store.lock_blocking();
        if shield::is_raised(&conn).unwrap_or(true) {
            match shield::lower(&self.host, &mut conn) {
                Ok(l) => tracing::info!(
                    restored = l.restored,
                    kept = l.refused.len(),
                    "shield lowered at the stop"
                ),
                Err(e) => tracing::error!(error = %e, "cannot lower the shield at the stop"),
            }
        }
        drop(conn);
        if let Ok(l) = &self.layout {
            l.remove_base(&self.host);
        }
    }

    /// `shield.lower`: lowers a shield left journaled (retrying what the kernel refused to
    /// take back before) while no exclusive run holds cores; with `force` (the request's
    /// audit record), forgets what the kernel still refuses ([`shield::lower_forcing`]).
    /// Blocking (sysfs, /proc, SQLite). Refused while exclusive runs hold cores: their
    /// shield is in use, and comes down when the last of them ends.
    pub fn lower_shield(
        &self,
        force: Option<&crate::store::AuditEvent>,
    ) -> Result<cleanroom_proto::ShieldLowerResult, Error> {
        // Held throughout: no exclusive run raises the shield while it comes down.
        let held = self.cores.lock().unwrap_or_else(|p| p.into_inner());
        if !held.taken.is_empty() {
            return Err(Error::ShieldInUse(crate::host::format::format_cpu_list(
                &held.taken,
            )));
        }
        if let Some(p) = &held.partition {
            return Err(Error::PartitionHeld {
                profile: p.profile.clone(),
                cpus: crate::host::format::format_cpu_list(&p.cpus),
            });
        }
        let mut conn = self.store.lock_blocking();
        let sqlite = |source| crate::store::Error::Sqlite {
            path: self.store.path().to_owned(),
            source,
        };
        if !shield::is_raised(&conn).map_err(sqlite)? {
            return Ok(cleanroom_proto::ShieldLowerResult {
                was_raised: false,
                restored: 0,
                items: Vec::new(),
                partition_left: None,
                journaled: false,
            });
        }
        let lowered = match force {
            None => shield::lower(&self.host, &mut conn),
            Some(actor) => shield::lower_forcing(&self.host, &mut conn, actor),
        }
        .map_err(sqlite)?;
        tracing::info!(
            restored = lowered.restored,
            refused = lowered.refused.len(),
            forced = force.is_some(),
            "shield lowered on request"
        );
        Ok(cleanroom_proto::ShieldLowerResult {
            was_raised: true,
            restored: lowered.restored as u64,
            items: lowered.refused,
            partition_left: lowered.partition_left,
            journaled: shield::is_raised(&conn).map_err(sqlite)?,
        })
    }

    /// Raises the shield over `pool` for what holds `held` (exclusive runs or a
    /// partition), leaving `exempt` alone. Blocking (sysfs, /proc, SQLite).
    fn raise_locked(
        &self,
        held: &mut Held,
        pool: &BTreeSet<u32>,
        exempt: &shield::Exempt,
        conn: &mut rusqlite::Connection,
    ) -> Result<shield::Raised, shield::Error> {
        self.raise_with(held, pool, exempt, &self.method, conn)
    }

    /// [`Runner::raise_locked`] by `method`.
    fn raise_with(
        &self,
        held: &mut Held,
        pool: &BTreeSet<u32>,
        exempt: &shield::Exempt,
        method: &shield::Method,
        conn: &mut rusqlite::Connection,
    ) -> Result<shield::Raised, shield::Error> {
        // No run helper is half-way into its cgroups while the shield moves processes.
        let _gate = self.slots.as_ref().map(|s| s.gate());
        let r = shield::raise(&self.host, conn, pool, exempt, method)?;
        tracing::info!(
            cpus = %crate::host::format::format_cpu_list(pool),
            method = r.method,
            fallback = r.fallback.as_ref().map(ToString::to_string).unwrap_or_default(),
            processes_moved = r.processes_moved,
            cpusets_narrowed = r.cpusets_narrowed,
            moved = r.moved,
            unmovable = r.unmovable,
            irqs_moved = r.irqs_moved,
            irqs_unmovable = r.irqs_unmovable,
            "shield raised"
        );
        held.shielded = pool.clone();
        let online = self
            .host
            .read("/sys/devices/system/cpu/online")
            .ok()
            .and_then(|t| crate::host::format::parse_cpu_list(&t).ok())
            .unwrap_or_default();
        *self.up.lock().unwrap_or_else(|p| p.into_inner()) = Some(Up {
            rest: crate::host::format::format_cpu_list(&online.difference(pool).copied().collect()),
            partition: r.partition.clone(),
        });
        Ok(r)
    }

    /// Lowers the shield `held` says is up. Blocking.
    fn lower_locked(&self, held: &mut Held) {
        let mut conn = self.store.lock_blocking();
        match shield::lower(&self.host, &mut conn) {
            Ok(l) => tracing::info!(
                restored = l.restored,
                kept = l.refused.len(),
                "shield lowered"
            ),
            Err(e) => tracing::error!(error = %e, "cannot lower the shield"),
        }
        held.shielded.clear();
        *self.up.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Puts profile `profile`'s partition over `cpus` in force, or (`None`) takes the
    /// partition out of force. The partition is the shield, held by the profile: raised
    /// with the threads pin rules placed there left alone (their journal says which),
    /// lowered when
    /// the profile goes out of force, but kept for exclusive runs still inside it (they
    /// lower it when the last ends). `pinned_cpus` are the CPUs pin rules place workers
    /// on: exclusive runs take cores from the rest of the partition, and on cgroup v2 a
    /// partition they reach is kept by affinity (a kernel partition would admit only its
    /// own cgroup's tasks). Blocking.
    pub fn hold_partition(
        &self,
        want: Option<(&str, &BTreeSet<u32>)>,
        pinned_cpus: &BTreeSet<u32>,
    ) -> Result<Option<Partition>, PartitionError> {
        let mut held = self.cores.lock().unwrap_or_else(|p| p.into_inner());
        let Some((profile, cpus)) = want else {
            if held.partition.take().is_some() && held.taken.is_empty() {
                self.lower_locked(&mut held);
            }
            return Ok(None);
        };
        let pool: BTreeSet<u32> = match cpus.difference(pinned_cpus).copied().collect() {
            p if BTreeSet::is_empty(&p) => cpus.clone(),
            p => p,
        };
        if let Some(p) = held.partition.as_mut().filter(|p| &p.cpus == cpus) {
            p.profile = profile.to_owned();
            p.pool = pool;
            return Ok(held.partition.clone());
        }
        if !held.shielded.is_empty() {
            if !held.taken.is_empty() && &held.shielded != cpus {
                return Err(PartitionError::Busy {
                    held: crate::host::format::format_cpu_list(&held.taken),
                    shielded: crate::host::format::format_cpu_list(&held.shielded),
                });
            }
            if held.taken.is_empty() {
                self.lower_locked(&mut held);
            }
        }
        let mut counts = PartitionCounts::default();
        let mut method = match &self.method {
            shield::Method::Partition { .. } => "partition",
            shield::Method::Cpuset { .. } => "cpuset",
            shield::Method::Affinity => "affinity",
        };
        let cgroup;
        if held.shielded.is_empty() {
            let mut conn = self.store.lock_blocking();
            let pinned = crate::store::pins::placed_on(&conn, cpus)
                .map_err(|e| PartitionError::Shield(shield::Error::Journal(e)))?;
            let exempt = shield::Exempt {
                tids: pinned,
                ..self.exempt.clone()
            };
            // The profile's partition is an isolated one where the kernel has them. On
            // cgroup v2 a kernel partition admits only the tasks inside its own cgroup,
            // so one that pin rules place work on (services in their own cgroups) is
            // kept by affinity instead.
            let inside = !cpus.is_disjoint(pinned_cpus);
            let method_here = match &self.method {
                shield::Method::Partition { .. } if inside => shield::Method::Affinity,
                shield::Method::Partition {
                    mount,
                    dir,
                    limits_from,
                    ..
                } => shield::Method::Partition {
                    mount: mount.clone(),
                    dir: dir.clone(),
                    limits_from: limits_from.clone(),
                    isolated: true,
                },
                other => other.clone(),
            };
            let r = self.raise_with(&mut held, cpus, &exempt, &method_here, &mut conn)?;
            method = match r.partition_type {
                Some("isolated") => "partition (isolated)",
                _ => r.method,
            };
            cgroup = r.partition.clone();
            counts = PartitionCounts {
                processes: r.processes_moved,
                threads: r.moved,
                unmovable: r.unmovable,
                irqs: r.irqs_moved,
                irqs_unmovable: r.irqs_unmovable,
            };
        } else {
            // The exclusive runs' shield covers exactly these CPUs: the profile takes it.
            cgroup = self
                .up
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .and_then(|u| u.partition.clone());
            if cgroup.is_none() && method == "partition" {
                method = "affinity";
            }
        }
        let cpuset = match &self.method {
            shield::Method::Cpuset { mount, dir, .. } => Some((mount.clone(), dir.clone())),
            _ => None,
        };
        held.partition = Some(Partition {
            profile: profile.to_owned(),
            cpus: cpus.clone(),
            pool,
            method,
            cpuset,
            cgroup,
            moved: counts,
        });
        Ok(held.partition.clone())
    }

    /// The partition in force, if a profile holds one.
    pub fn partition(&self) -> Option<Partition> {
        self.cores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .partition
            .clone()
    }

    /// Exclusive CPUs held, CPUs shielded, and the partition's CPUs, now.
    pub fn occupancy(&self) -> Occupancy {
        let held = self.cores.lock().unwrap_or_else(|p| p.into_inner());
        Occupancy {
            exclusive: held.taken.len(),
            shielded: held.shielded.len(),
            partition: held.partition.as_ref().map_or(0, |p| p.cpus.len()),
        }
    }

    /// Calls `watch` at the end of every execution from now on (once: a second watcher is
    /// refused and returned).
    pub fn watch<F>(&self, watch: F) -> Result<(), WatchFn>
    where
        F: Fn(&RunEnd<'_>) + Send + Sync + 'static,
    {
        self.on_end.set(Watcher(Box::new(watch))).map_err(|w| w.0)
    }

    /// Tells the watcher that `record` ended.
    fn ended(&self, record: &cleanroom_proto::RunRecord) {
        if let Some(watch) = self.on_end.get() {
            let cpus = crate::host::format::parse_cpu_list(&record.cpus).unwrap_or_default();
            let shielded = !cpus.is_empty() && {
                let held = self.cores.lock().unwrap_or_else(|p| p.into_inner());
                cpus.is_subset(&held.shielded)
            };
            (watch.0)(&RunEnd { record, shielded });
        }
    }

    /// The directories holding this daemon's run cgroups.
    pub fn cgroup_bases(&self) -> Vec<String> {
        self.layout.as_ref().map(Layout::bases).unwrap_or_default()
    }

    /// The host it runs on (kernel files below its root).
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Why runs cannot happen here, if they cannot.
    pub fn unavailable(&self) -> Option<&cgroup::LayoutError> {
        self.layout.as_ref().err()
    }

    /// CPUs runs may use (the daemon's own affinity).
    fn own_cpus(&self) -> String {
        let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
            .ok()
            .map(|s| {
                (0..nix::sched::CpuSet::count() as u32)
                    .filter(|c| s.is_set(*c as usize).unwrap_or(false))
                    .collect::<std::collections::BTreeSet<u32>>()
            })
            .unwrap_or_default();
        crate::host::format::format_cpu_list(&set)
    }

    /// A fresh id for one run.
    fn next_run_id(&self) -> String {
        self.next.fetch_add(1, Ordering::Relaxed).to_string()
    }

    /// The noise probe of a CPU list: what the host can tell about a set of CPUs does not
    /// change, so it is found once per set.
    fn probe(&self, cpus: &str) -> noise::Probe {
        let mut probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        if probes.len() > 256 {
            probes.clear(); // CPU lists are the caller's choice: keep the cache small
        }
        probes
            .entry(cpus.to_owned())
            .or_insert_with(|| noise::Probe::new(&self.host, cpus))
            .clone()
    }
}

/// A short tag naming this daemon instance in cgroup paths: derived from its state
/// directory, so a restart finds the runs its predecessor left, and two daemons with
/// different state directories (tests, side-by-side instances) never touch each other's.
pub fn instance_tag(state_dir: &std::path::Path) -> String {
    use sha2::Digest;
    let path = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_owned());
    let hash = sha2::Sha256::digest(path.as_os_str().as_encoded_bytes());
    hash.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runner on a fake host of four CPUs without cgroups (the affinity shield, over
    /// the default IRQ affinity and IRQ 1), its kernel refusing its `refused`-th change.
    fn runner(refused: usize) -> (tempfile::TempDir, tempfile::TempDir, Arc<Runner>) {
        let (root, host) = crate::host::fake_root(&[
            ("/sys/devices/system/cpu/online", "0-3\n"),
            ("/proc/sys/kernel/random/boot_id", "b\n"),
            ("/proc/irq/default_smp_affinity", "f\n"),
            ("/proc/irq/1/smp_affinity_list", "0-3\n"),
        ]);
        let host = host.with_faults(crate::testing::Faults::refuse(refused));
        let state = crate::testing::scratch_dir();
        let store = crate::store::Store::open(state.path()).unwrap();
        let runner = Runner::new(
            host,
            cleanroom_proto::CgroupMode::None,
            1 << 20,
            "t",
            store,
            ShieldConfig {
                pool: Some("2-3".into()),
                ..ShieldConfig::default()
            },
        );
        (root, state, Arc::new(runner))
    }

    #[test]
    fn the_shield_is_lowered_on_request_only_while_no_exclusive_run_holds_cores() {
        // Changes: the raise narrows the default (0) and IRQ 1 (1); the release puts the
        // default back (2, refused) and IRQ 1 (3).
        let (_root, _state, runner) = runner(2);
        let nothing = runner.lower_shield(None).unwrap();
        assert!(!nothing.was_raised && !nothing.journaled && nothing.items.is_empty());
        let cores = runner.take_exclusive(&Want::Count(1), None).unwrap();
        let in_use = runner.lower_shield(None).unwrap_err();
        assert!(matches!(in_use, Error::ShieldInUse(_)), "{in_use}");
        assert!(
            in_use.to_string().contains("the shield is in use"),
            "{in_use}"
        );
        // Released, refused in part: the default stays journaled.
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(cores.release());
        let lowered = runner.lower_shield(None).unwrap();
        assert!(lowered.was_raised, "{lowered:?}");
        // The kernel takes it back now.
        assert_eq!(lowered.items, [], "{lowered:?}");
        assert_eq!(lowered.restored, 1);
        assert!(!lowered.journaled);
    }
}
