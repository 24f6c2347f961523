//! What every request handler shares: the configuration in force, the store, the metrics,
//! the host, and facts fixed at start.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use cleanroom_proto::{CgroupMode, ReloadResult, Role};
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
        // What this host has, online or not, for the profiles' CPUs and memory nodes (an
        // apply checks those online again).
        let (online, nodes) = crate::pin::cpus_and_nodes(
            &crate::host::Host::new(&loaded.config.daemon.host_root),
            "possible",
        );
        let profiles = ProfileSet::load(
            &loaded.config.tuning.profile_dirs,
            &loaded.config.tuning.sysctl_allow,
        );
        // A host whose CPUs cannot be read is not taken for one without any.
        let profiles = Arc::new(if online.is_empty() {
            profiles
        } else {
            profiles.on_host(&online, &nodes)
        });
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
    connections: Connections,
    pins: Arc<crate::pin::Pinner>,
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
    /// The pin rules in force (those recovery re-applied).
    pub pins: Arc<crate::pin::Pinner>,
}

impl State {
    /// Shared state from its parts.
    pub fn new(parts: Parts) -> Arc<Self> {
        let metrics = Metrics::new();
        let watcher = metrics.clone();
        if parts
            .runner
            .watch(move |end| watcher.observe_run(end))
            .is_err()
        {
            tracing::warn!("the runner is watched already; runs go uncounted in the metrics");
        }
        Arc::new(Self {
            live: RwLock::new(Arc::new(parts.live)),
            source: parts.source,
            overrides: parts.overrides,
            engine: Arc::new(Engine::new(parts.runner, parts.store.clone())),
            store: parts.store,
            metrics,
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
            connections: Connections::default(),
            pins: parts.pins,
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

    /// Every metric as of now (the gauges of exclusive CPUs, the shield, the partition
    /// and the pin rules read first, from memory), in the Prometheus text format or
    /// OpenMetrics.
    pub fn metrics_text(&self, openmetrics: bool) -> String {
        let m = &self.metrics;
        let o = self.engine.runner().occupancy();
        m.exclusive_cpus.set(o.exclusive as i64);
        m.shielded_cpus.set(o.shielded as i64);
        m.partition_cpus.set(o.partition as i64);
        // Nothing here waits for the store: a scrape must not queue behind it.
        m.pin_rules.set(self.pins.rules().len() as i64);
        if openmetrics {
            m.render_openmetrics()
        } else {
            m.render()
        }
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
        *guard = Arc::new(new);
        drop(guard);
        self.metrics.reloads.with_label_values(&["ok"]).inc();
        self.reloaded.notify_waiters();
        Ok(result)
    }

    /// Takes a connection slot for `peer`, within `limits.max_connections` (less the slots
    /// kept for admins, for anyone else) and the peer's `quotas.connections_per_uid`.
    pub fn admit_connection(self: &Arc<Self>, peer: &Peer) -> Result<ConnectionSlot, Refused> {
        let live = self.live();
        let admin = peer.role(&live.auth) >= Role::Admin;
        let admitted = self.connections.admit(
            peer.uid,
            admin,
            live.config.limits.max_connections,
            &live.config.quotas,
        );
        match admitted {
            Ok(()) => {
                self.metrics.connections_open.inc();
                self.metrics.connections_total.inc();
                Ok(ConnectionSlot {
                    state: Arc::clone(self),
                    uid: peer.uid,
                    admin,
                })
            }
            Err(e) => {
                self.metrics.connections_rejected.inc();
                Err(e)
            }
        }
    }

    /// The host's memory (`MemTotal` of `/proc/meminfo`), bytes; `None` if unreadable.
    pub fn memory_total(&self) -> Option<u64> {
        let meminfo = self.host.read("/proc/meminfo").ok()?;
        let kib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse::<u64>()
            .ok()?;
        Some(kib * 1024)
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.connections.in_use()
    }

    /// The pin rules in force.
    pub fn pins(&self) -> &Arc<crate::pin::Pinner> {
        &self.pins
    }

    /// The context tuning operations need, for the configuration in force.
    pub fn tune_ctx<'a>(&'a self, live: &'a Live) -> crate::tune::Ctx<'a> {
        crate::tune::Ctx {
            host: &self.host,
            store: &self.store,
            profiles: &live.profiles,
            allow: &live.config.tuning.sysctl_allow,
            pins: &self.pins,
            runner: Some(self.engine.runner()),
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
        let state = self.store.call(|c| crate::store::journal::state(c)).await?;
        let pool = if exclusive {
            state
                .as_ref()
                .filter(|t| t.phase == Phase::Active)
                .and_then(|t| t.profile.clone())
                .and_then(|name| isolation_pool(&live.profiles, &name))
        } else {
            None
        };
        let cfg = &live.config.runs;
        Ok(run::Settings {
            history_limit: cfg.history_limit,
            verdict: run::verdict::Settings {
                level: 1.0 - cfg.compare_alpha,
                delta: cfg.compare_threshold_percent / 100.0,
                ..run::verdict::Settings::default()
            },
            noise: run::batch::NoiseRule {
                share: cfg.noisy_percent / 100.0,
                max_reruns: cfg.max_reruns,
            },
            context: run::fingerprint::Context {
                profile: state.as_ref().and_then(|t| t.profile.clone()),
                profile_state: state.as_ref().map(|t| t.phase.as_str().to_owned()),
            },
            pool,
            quotas: live.config.quotas.clone(),
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

/// The connections open, in all and by uid. The limits are read from the configuration in
/// force at each admission: a reload that lowers one refuses new connections until enough
/// have closed, and never closes one.
#[derive(Debug, Default)]
struct Connections {
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    /// Those of callers who are not admins.
    others: usize,
    by_uid: std::collections::HashMap<u32, usize>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Every connection slot the caller may take is taken (`limit` counts only those: for
    /// a non-admin, `limits.max_connections` less those kept for admins).
    Full {
        /// The slots the caller may take.
        limit: usize,
    },
    /// The caller's uid holds its quota of connections.
    Quota(crate::quota::Exceeded),
}

impl Connections {
    fn admit(
        &self,
        uid: u32,
        admin: bool,
        max: usize,
        quotas: &config::Quotas,
    ) -> Result<(), Refused> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= max {
            return Err(Refused::Full { limit: max });
        }
        // The others share what is not kept for admins (admins' own connections do not
        // shrink it).
        if !admin {
            let limit = max - quotas.admin_connections_of(max);
            if open.others >= limit {
                return Err(Refused::Full { limit });
            }
            let mine = open.by_uid.get(&uid).copied().unwrap_or(0);
            if mine >= quotas.connections_per_uid {
                return Err(Refused::Quota(crate::quota::Exceeded::new(
                    "connections_per_uid",
                    quotas.connections_per_uid,
                    uid,
                    format!("{mine} connections open"),
                )));
            }
            open.others += 1;
        }
        open.total += 1;
        *open.by_uid.entry(uid).or_default() += 1;
        Ok(())
    }

    fn release(&self, uid: u32, admin: bool) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if !admin {
            open.others = open.others.saturating_sub(1);
        }
        if let std::collections::hash_map::Entry::Occupied(mut e) = open.by_uid.entry(uid) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    fn in_use(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

/// One admitted connection; frees its slot when dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    state: Arc<State>,
    uid: u32,
    admin: bool,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.state.connections.release(self.uid, self.admin);
        self.state.metrics.connections_open.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_counted_by_uid_and_some_are_kept_for_admins() {
        let c = Connections::default();
        let q = config::Quotas {
            connections_per_uid: 2,
            admin_connections: 1,
            ..config::Quotas::default()
        };
        // uid 1000 holds its 2; a third is its quota, named.
        c.admit(1000, false, 4, &q).unwrap();
        c.admit(1000, false, 4, &q).unwrap();
        match c.admit(1000, false, 4, &q) {
            Err(Refused::Quota(e)) => {
                assert_eq!((e.key, e.limit, e.uid), ("connections_per_uid", 2, 1000))
            }
            other => panic!("{other:?}"),
        }
        // Another uid takes the last slot not kept for admins.
        c.admit(1001, false, 4, &q).unwrap();
        assert_eq!(c.admit(1002, false, 4, &q), Err(Refused::Full { limit: 3 }));
        // An admin still gets in, past its own per-uid quota too.
        c.admit(0, true, 4, &q).unwrap();
        assert_eq!(c.admit(0, true, 4, &q), Err(Refused::Full { limit: 4 }));
        assert_eq!(c.in_use(), 4);
        // A lowered limit refuses, never closes; slots come back as connections close.
        assert_eq!(c.admit(1003, false, 2, &q), Err(Refused::Full { limit: 2 }));
        for (uid, admin) in [(1000, false), (1000, false), (1001, false), (0, true)] {
            c.release(uid, admin);
        }
        assert_eq!(c.in_use(), 0);
        assert!(c.open.lock().unwrap().by_uid.is_empty());
        c.admit(1000, false, 2, &q).unwrap();
    }
}
