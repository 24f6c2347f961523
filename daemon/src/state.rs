//! What every request handler shares: the configuration in force, the store, the metrics,
//! the host, and facts fixed at start.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use cleanroom_proto::{CgroupMode, ReloadResult};
use tokio_util::sync::CancellationToken;

use crate::auth::AuthPolicy;
use crate::config::{self, Config, Overrides, Source};
use crate::host::Host;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::tune::profile::ProfileSet;

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

/// Shared daemon state.
#[derive(Debug)]
pub struct State {
    live: RwLock<Arc<Live>>,
    source: Source,
    overrides: Overrides,
    /// The state database.
    pub store: Store,
    /// The metrics registry.
    pub metrics: Metrics,
    /// The host's kernel interfaces.
    pub host: Host,
    /// Cgroup hierarchies detected at start.
    pub cgroup: CgroupMode,
    /// The socket served.
    pub socket: SocketInfo,
    /// When the daemon started.
    pub started: Instant,
    /// Cancelled when the daemon begins to shut down.
    pub shutdown: CancellationToken,
    /// Serialises applies and reverts: concurrent requests queue here.
    pub tune_lock: tokio::sync::Mutex<()>,
    /// Woken after every successful reload.
    pub reloaded: tokio::sync::Notify,
    /// Runs cgroups, spawns and measures runs.
    pub runner: Arc<crate::run::Runner>,
    /// Runs in progress, so shutdown can wait for them to be cleaned up.
    pub runs: tokio_util::task::TaskTracker,
    /// Batches in progress: owner uid and the token that cancels them.
    pub active_runs: std::sync::Mutex<
        std::collections::HashMap<String, (u32, tokio_util::sync::CancellationToken)>,
    >,
    /// Woken whenever what [`State::status_line`] says may have changed.
    pub status_changed: tokio::sync::Notify,
    active_profile: std::sync::Mutex<Option<String>>,
    connections: AtomicUsize,
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
    pub runner: Arc<crate::run::Runner>,
}

impl State {
    /// Shared state from its parts.
    pub fn new(parts: Parts) -> Arc<Self> {
        Arc::new(Self {
            live: RwLock::new(Arc::new(parts.live)),
            source: parts.source,
            overrides: parts.overrides,
            store: parts.store,
            metrics: Metrics::new(),
            host: parts.host,
            cgroup: parts.cgroup,
            socket: parts.socket,
            started: parts.started,
            shutdown: CancellationToken::new(),
            tune_lock: tokio::sync::Mutex::new(()),
            reloaded: tokio::sync::Notify::new(),
            runner: parts.runner,
            runs: tokio_util::task::TaskTracker::new(),
            active_runs: std::sync::Mutex::new(Default::default()),
            status_changed: tokio::sync::Notify::new(),
            active_profile: std::sync::Mutex::new(None),
            connections: AtomicUsize::new(0),
        })
    }

    /// The configuration in force now.
    pub fn live(&self) -> Arc<Live> {
        Arc::clone(&self.live.read().unwrap_or_else(|p| p.into_inner()))
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
        *guard = Arc::new(new);
        drop(guard);
        self.metrics.reloads.with_label_values(&["ok"]).inc();
        self.reloaded.notify_waiters();
        Ok(result)
    }

    /// Counts a connection; `None` when the limit is reached.
    pub fn admit_connection(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let limit = self.live().config.limits.max_connections;
        let prev = self.connections.fetch_add(1, Ordering::AcqRel);
        if prev >= limit {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            self.metrics.connections_rejected.inc();
            return None;
        }
        self.metrics.connections_open.inc();
        self.metrics.connections_total.inc();
        Some(ConnectionSlot {
            state: Arc::clone(self),
        })
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

    /// Records a batch in progress, with its owner and the token that cancels it.
    pub fn batch_started(&self, batch: &str, uid: u32, cancel: CancellationToken) {
        self.active_runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(batch.to_owned(), (uid, cancel));
        self.status_changed.notify_one();
    }

    /// Forgets a batch that has ended.
    pub fn batch_ended(&self, batch: &str) {
        self.active_runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(batch);
        self.status_changed.notify_one();
    }

    /// The one-line summary the service manager shows (`systemctl status`), e.g.
    /// "profile throughput-performance active, 2 runs" or "no profile active, 0 runs".
    pub fn status_line(&self) -> String {
        let runs = self
            .active_runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        let profile = self
            .active_profile
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        status_line(profile.as_deref(), runs)
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }
}

fn status_line(profile: Option<&str>, runs: usize) -> String {
    let plural = if runs == 1 { "run" } else { "runs" };
    match profile {
        Some(p) => format!("profile {p} active, {runs} {plural}"),
        None => format!("no profile active, {runs} {plural}"),
    }
}

/// One admitted connection; frees its slot when dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    state: Arc<State>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.state.connections.fetch_sub(1, Ordering::AcqRel);
        self.state.metrics.connections_open.dec();
    }
}
