//! What every request handler shares: the configuration in force, the store, the metrics,
//! the host, and facts fixed at start.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use cleanroom_proto::{CgroupMode, ReloadResult, Role};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{AuthPolicy, Peer};
use crate::config::{self, Config, Overrides, Source};
use crate::host::Host;
use crate::metrics::Metrics;
use crate::run::{self, Engine};
use crate::store::Store;
use crate::store::journal::Phase;
use crate::tune::profile::{ProfileSet, Setting};

/// The configuration in force and what was derived from it.
#[derive(Debug, Clone)]
pub struct Live {
    /// The effective configuration.
    pub config: Config,
    /// The file it came from, if any.
    pub file: Option<PathBuf>,
    /// Group ids that grant roles, resolved from `config.auth`.
    pub auth: AuthPolicy,
    /// The tuning profiles: the built-in ones under those in `config.tuning.profile_dirs`.
    pub profiles: Arc<ProfileSet>,
}

impl Live {
    /// Resolves the derived parts of a loaded configuration.
    pub fn new(loaded: config::Loaded) -> Self {
        let auth = AuthPolicy::resolve(&loaded.config.auth);
        let profiles = Arc::new(ProfileSet::load(
            &loaded.config.tuning.profile_dirs,
            &loaded.config.tuning.sysctl_allow,
        ));
        for (name, entry) in &profiles.entries {
            if let Err(e) = &entry.profile {
                tracing::warn!(profile = %name, error = %e, "profile is broken; the others stay usable");
            }
        }
        Self {
            config: loaded.config,
            file: loaded.file,
            auth,
            profiles,
        }
    }
}

/// The socket the daemon serves.
#[derive(Debug, Clone)]
pub struct SocketInfo {
    /// Its path.
    pub path: PathBuf,
    /// Whether systemd passed it (socket activation).
    pub activated: bool,
}

/// Shared daemon state: reached through its methods, so what may change (the configuration,
/// the connection limit) changes in one place.
#[derive(Debug)]
pub struct State {
    live: RwLock<Arc<Live>>,
    source: Source,
    overrides: Overrides,
    store: Store,
    metrics: Metrics,
    host: Host,
    cgroup: CgroupMode,
    socket: SocketInfo,
    started: Instant,
    shutdown: CancellationToken,
    tune_lock: tokio::sync::Mutex<()>,
    reloaded: tokio::sync::Notify,
    engine: Arc<Engine>,
    runs: TaskTracker,
    status_changed: tokio::sync::Notify,
    active_profile: Mutex<Option<String>>,
    connections: ConnectionLimit,
}

/// What [`State::new`] needs.
#[derive(Debug)]
pub struct Parts {
    /// The configuration loaded at start.
    pub live: Live,
    /// Where it was read from, for reloads.
    pub source: Source,
    /// Command-line overrides, applied again on every reload.
    pub overrides: Overrides,
    /// The opened store.
    pub store: Store,
    /// The host.
    pub host: Host,
    /// Detected cgroup mode.
    pub cgroup: CgroupMode,
    /// The socket.
    pub socket: SocketInfo,
    /// When start-up began.
    pub started: Instant,
    /// The runner (cgroups prepared, stale runs cleaned).
    pub runner: Arc<run::Runner>,
}

impl State {
    /// Shared state from its parts.
    pub fn new(parts: Parts) -> Arc<Self> {
        let limit = parts.live.config.limits.max_connections;
        Arc::new(Self {
            live: RwLock::new(Arc::new(parts.live)),
            source: parts.source,
            overrides: parts.overrides,
            engine: Arc::new(Engine::new(parts.runner, parts.store.clone())),
            store: parts.store,
            metrics: Metrics::new(),
            host: parts.host,
            cgroup: parts.cgroup,
            socket: parts.socket,
            started: parts.started,
            shutdown: CancellationToken::new(),
            tune_lock: tokio::sync::Mutex::new(()),
            reloaded: tokio::sync::Notify::new(),
            runs: TaskTracker::new(),
            status_changed: tokio::sync::Notify::new(),
            active_profile: Mutex::new(None),
            connections: ConnectionLimit::new(limit),
        })
    }

    /// The configuration in force now.
    pub fn live(&self) -> Arc<Live> {
        // The lock guards one Arc swap: a panic cannot leave it half-written.
        Arc::clone(&self.live.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The state database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The host's kernel interfaces.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Cgroup hierarchies detected at start.
    pub fn cgroup(&self) -> CgroupMode {
        self.cgroup
    }

    /// The socket served.
    pub fn socket(&self) -> &SocketInfo {
        &self.socket
    }

    /// When the daemon started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Cancelled when the daemon begins to shut down.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Serialises applies and reverts: concurrent requests queue here.
    pub fn tune_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.tune_lock
    }

    /// Woken after every successful reload.
    pub fn reloaded(&self) -> &tokio::sync::Notify {
        &self.reloaded
    }

    /// The run engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Batches in progress, as tasks: shutdown waits for their cleanup.
    pub fn runs(&self) -> &TaskTracker {
        &self.runs
    }

    /// Resolves when what [`State::status_line`] says may have changed.
    pub async fn status_changed(&self) {
        tokio::select! {
            () = self.status_changed.notified() => {}
            () = self.engine.active().changed() => {}
        }
    }

    /// Re-reads the configuration file. A refused file leaves the configuration in force
    /// untouched. Blocking (file and group database reads): call from a blocking context.
    pub fn reload(&self) -> Result<ReloadResult, config::Error> {
        let loaded = match config::load(&self.source, &self.overrides) {
            Ok(l) => l,
            Err(e) => {
                self.metrics.reloads.with_label_values(&["refused"]).inc();
                return Err(e);
            }
        };
        let new = Live::new(loaded);
        let mut guard = self.live.write().unwrap_or_else(|p| p.into_inner());
        let (changed, restart_required) = guard.config.diff(&new.config);
        let result = ReloadResult {
            config_file: new.file.as_ref().map(|p| p.display().to_string()),
            changed,
            restart_required,
        };
        self.connections
            .set_limit(new.config.limits.max_connections);
        *guard = Arc::new(new);
        drop(guard);
        self.metrics.reloads.with_label_values(&["ok"]).inc();
        self.reloaded.notify_waiters();
        Ok(result)
    }

    /// Takes a connection slot; `None` when the limit is reached.
    pub fn admit_connection(self: &Arc<Self>) -> Option<ConnectionSlot> {
        match self.connections.admit() {
            Some(permit) => {
                self.metrics.connections_open.inc();
                self.metrics.connections_total.inc();
                Some(ConnectionSlot {
                    state: Arc::clone(self),
                    permit: Some(permit),
                })
            }
            None => {
                self.metrics.connections_rejected.inc();
                None
            }
        }
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.connections.in_use()
    }

    /// The context tuning operations need, for the configuration in force.
    pub fn tune_ctx<'a>(&'a self, live: &'a Live) -> crate::tune::Ctx<'a> {
        crate::tune::Ctx {
            host: &self.host,
            store: &self.store,
            profiles: &live.profiles,
            allow: &live.config.tuning.sysctl_allow,
        }
    }

    /// Records the active profile (after start-up, an apply or a revert): the metric and
    /// the service status follow it.
    pub fn set_active_profile(&self, profile: Option<&str>) {
        self.metrics.set_active_profile(profile);
        *self
            .active_profile
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = profile.map(str::to_owned);
        self.status_changed.notify_one();
    }

    /// The one-line summary the service manager shows (`systemctl status`), e.g.
    /// "profile throughput-performance active, 2 runs" or "no profile active, 0 runs".
    pub fn status_line(&self) -> String {
        let runs = self.engine.active().len();
        let profile = self
            .active_profile
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        status_line(profile.as_deref(), runs)
    }

    /// The caller as the run engine sees it: its identity and whether it is an admin.
    pub fn caller(&self, peer: &Peer) -> run::Caller {
        run::Caller {
            uid: peer.uid,
            gid: peer.gid,
            groups: peer.groups.clone(),
            admin: peer.role(&self.live().auth) == Role::Admin,
        }
    }

    /// The settings a batch starts with: the configuration's, and the isolation pool of
    /// the active profile (`[isolation] cpus`), which replaces the configured one while
    /// that profile is in force.
    pub async fn run_settings(
        &self,
        exclusive: bool,
    ) -> Result<run::Settings, crate::store::Error> {
        let live = self.live();
        let pool = if exclusive {
            let state = self.store.call(|c| crate::store::journal::state(c)).await?;
            state
                .filter(|t| t.phase == Phase::Active)
                .and_then(|t| t.profile)
                .and_then(|name| isolation_pool(&live.profiles, &name))
        } else {
            None
        };
        let cfg = &live.config.runs;
        Ok(run::Settings {
            history_limit: cfg.history_limit,
            compare: run::history::CompareSettings {
                alpha: cfg.compare_alpha,
                threshold: cfg.compare_threshold_percent / 100.0,
            },
            pool,
        })
    }
}

/// The `[isolation] cpus` of profile `name`, if it sets them.
fn isolation_pool(profiles: &ProfileSet, name: &str) -> Option<BTreeSet<u32>> {
    match &profiles
        .get(name)
        .ok()?
        .settings
        .get("isolation.cpus")?
        .setting
    {
        Setting::IsolationCpus(set) => Some(set.clone()),
        _ => None,
    }
}

fn status_line(profile: Option<&str>, runs: usize) -> String {
    let plural = if runs == 1 { "run" } else { "runs" };
    match profile {
        Some(p) => format!("profile {p} active, {runs} {plural}"),
        None => format!("no profile active, {runs} {plural}"),
    }
}

/// The connection limit: a semaphore whose permits are connection slots. A reload that
/// lowers the limit takes the permits it can at once and the rest as connections close
/// (its debt); one that raises it pays the debt first.
#[derive(Debug)]
struct ConnectionLimit {
    slots: Arc<Semaphore>,
    /// (the limit, permits still to take back as connections close)
    limit: Mutex<(usize, usize)>,
}

impl ConnectionLimit {
    fn new(limit: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limit)),
            limit: Mutex::new((limit, 0)),
        }
    }

    fn admit(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.slots).try_acquire_owned().ok()
    }

    fn set_limit(&self, new: usize) {
        let mut guard = self.limit.lock().unwrap_or_else(|p| p.into_inner());
        let (old, debt) = *guard;
        if new >= old {
            let raise = new - old;
            let paid = raise.min(debt);
            self.slots.add_permits(raise - paid);
            *guard = (new, debt - paid);
        } else {
            let lower = old - new;
            let taken = self.slots.forget_permits(lower);
            *guard = (new, debt + lower - taken);
        }
    }

    /// Gives a closing connection's slot back, or keeps it to pay the debt of a lowered
    /// limit.
    fn release(&self, permit: OwnedSemaphorePermit) {
        let mut guard = self.limit.lock().unwrap_or_else(|p| p.into_inner());
        if guard.1 > 0 {
            guard.1 -= 1;
            permit.forget();
        } else {
            // Given back under the lock, so a lowering in between counts it right.
            drop(permit);
        }
    }

    fn in_use(&self) -> usize {
        let (limit, debt) = *self.limit.lock().unwrap_or_else(|p| p.into_inner());
        (limit + debt).saturating_sub(self.slots.available_permits())
    }
}

/// One admitted connection; frees its slot when dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    state: Arc<State>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.state.connections.release(permit);
        }
        self.state.metrics.connections_open.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_limit_follows_reloads_up_and_down() {
        let limit = ConnectionLimit::new(3);
        let held: Vec<_> = (0..3).map(|_| limit.admit().unwrap()).collect();
        assert!(limit.admit().is_none());
        assert_eq!(limit.in_use(), 3);
        // Lowered to 1 with 3 open: two slots are taken back as connections close.
        limit.set_limit(1);
        let mut held = held.into_iter();
        limit.release(held.next().unwrap());
        assert!(limit.admit().is_none(), "2 open, limit 1");
        limit.release(held.next().unwrap());
        assert_eq!(limit.in_use(), 1);
        assert!(limit.admit().is_none(), "1 open, limit 1");
        limit.release(held.next().unwrap());
        let one = limit.admit().unwrap();
        assert!(limit.admit().is_none());
        // Raised again: new slots at once.
        limit.set_limit(2);
        let two = limit.admit().unwrap();
        assert!(limit.admit().is_none());
        assert_eq!(limit.in_use(), 2);
        limit.release(one);
        limit.release(two);
        assert_eq!(limit.in_use(), 0);
    }

    #[test]
    fn raising_a_lowered_limit_pays_its_debt_first() {
        let limit = ConnectionLimit::new(2);
        let a = limit.admit().unwrap();
        let b = limit.admit().unwrap();
        limit.set_limit(1); // debt 1
        limit.set_limit(3); // pays the debt, adds 1
        assert_eq!(limit.in_use(), 2);
        let c = limit.admit().unwrap();
        assert!(limit.admit().is_none());
        for p in [a, b, c] {
            limit.release(p);
        }
        assert_eq!(limit.in_use(), 0);
        assert_eq!(limit.slots.available_permits(), 3);
    }
}
