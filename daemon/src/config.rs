//! The daemon's configuration file (TOML).
//!
//! Every key is optional and has a documented default; an unknown key or a value of the
//! wrong type is an error naming the file, the key, the line and the expected type. The
//! file is read at start and again on SIGHUP or `daemon.reload`; a refused file leaves the
//! configuration in force untouched.
//!
//! ```toml
//! [daemon]
//! state_dir = "/var/lib/cleanroom"     # SQLite state database lives here
//! host_root = "/"                      # root under which /proc and /sys are used
//!
//! [socket]
//! path = "/run/cleanroom/cleanroomd.sock"
//! group = "cleanroom"                  # group owning the socket
//! mode = 0o660                         # 0o666 lets every local user read status
//!
//! [limits]
//! max_connections = 1024               # further connections get an error and are closed
//! max_in_flight = 32                   # unanswered requests per connection
//! idle_timeout_s = 300                 # close connections silent for this long
//! max_queued_bytes = 4194304           # output queued per connection for a slow reader
//! audit_rows = 100000                  # audit rows kept (the newest)
//! shutdown_grace_ms = 500              # how long SIGTERM waits for requests in flight
//!
//! [quotas]                             # per uid; admins are exempt
//! connections_per_uid = 64             # connections one uid may hold
//! admin_connections = 16               # of max_connections, kept for admins (at most half)
//! runs_per_uid = 32                    # batches in progress per uid
//! detached_per_uid = 4                 # detached batches in progress per uid
//! exclusive_cpus_per_uid = 0           # exclusive CPUs per uid (0: the whole pool)
//! exclusive_hold_s = 3600              # longest a batch holds exclusive CPUs
//! baselines_per_uid = 100              # baselines one uid may own
//! default_pids = 4096                  # task limit of a run that asks none
//! max_pids = 32768                     # highest task limit a runner may ask
//! default_memory_percent = 50          # memory limit of a run that asks none (0: none)
//! max_memory_percent = 90              # highest memory limit a runner may ask
//!
//! [auth]
//! runner_group = "cleanroom"           # members may run tests
//! admin_group = "cleanroom-admin"      # members may tune the host
//!
//! [tuning]
//! profile_dirs = ["/usr/lib/cleanroom/profiles", "/etc/cleanroom/profiles"] # over the built-ins
//! sysctl_allow = ["vm.", "net.core.", ...]   # prefixes profiles may set
//! on_start = "reapply"                 # or "revert": what a restart does with the journal
//! drift_check_interval_s = 0           # periodic verify of the active profile (0: off)
//! revert_on_stop = false               # put the originals back when the daemon stops
//!
//! [runs]
//! max_output_bytes = 16777216          # output streamed per run; the rest is dropped
//! max_repeat = 10000                   # most repetitions per request
//! history_limit = 1000                 # batches kept in the run history, per uid
//! compare_alpha = 0.05                 # 1 - confidence level of verdicts (95 %)
//! compare_threshold_percent = 2.0      # equivalence margin of verdicts, percent
//! noisy_percent = 10.0                 # foreign CPU share that makes a repeat noisy
//! max_reruns = 3                       # noisy repeats measured again, per batch
//! fs_write_mb = 1024                   # what an `isolate fs` run may write, MiB
//! isolation_cpus = "1-3"               # CPUs exclusive runs may take (default: all but 0)
//! shield_exempt_pids = [1]             # processes the shield leaves alone
//! shield_exempt_names = ["qemu-*"]     # ... by command name (glob)
//! shield_exempt_cgroups = ["/system.slice/db.service"] # ... by cgroup (and below)
//! shield_partition = true              # v2: a cpuset partition (no exemptions possible)
//!
//! [metrics]                            # GET /metrics over HTTP (off by default)
//! listen = "127.0.0.1:9469"            # unauthenticated, read-only; loopback unless:
//! allow_remote = false                 # true lets `listen` be any address
//! max_connections = 16                 # served at once; more are closed at once
//! timeout_ms = 5000                    # longest a connection takes, accept to answer
//! ```
//!
//! Command-line flags (`--socket`, `--state-dir`, `--host-root`) and `CLEANROOM_SOCKET`
//! take precedence over the file, also after a reload.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where the daemon looks for its configuration unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/cleanroom/cleanroomd.toml";

/// Errors loading a configuration; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema.
    #[error("config file {}: {detail}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Key, line and what was expected.
        detail: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Paths of the daemon itself.
    pub daemon: DaemonSection,
    /// The control socket.
    pub socket: SocketSection,
    /// Connection limits.
    pub limits: Limits,
    /// Groups that grant roles.
    pub auth: Auth,
    /// Tuning profiles and the journal.
    pub tuning: Tuning,
    /// Clean-room runs.
    pub runs: Runs,
    /// What one member of the groups may hold (admins are exempt from the per-uid ones).
    pub quotas: Quotas,
    /// The Prometheus scrape endpoint over HTTP.
    pub metrics: MetricsSection,
}

/// `[metrics]`: `GET /metrics` over HTTP for Prometheus, off unless `listen` is set. The
/// endpoint is unauthenticated and read-only; it serves nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Address and port to listen on (`127.0.0.1:9469`); none: no listener.
    pub listen: Option<String>,
    /// Let `listen` be an address other than loopback (the endpoint is then reachable by
    /// anyone who can reach the host).
    pub allow_remote: bool,
    /// Connections served at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Longest a connection may take, from its accept until its answer is sent,
    /// milliseconds (a client that sends nothing, or reads nothing, is closed then).
    pub timeout_ms: u64,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            listen: None,
            allow_remote: false,
            max_connections: 16,
            timeout_ms: 5000,
        }
    }
}

impl MetricsSection {
    /// The address to listen on, checked: an address and port, loopback unless
    /// `allow_remote`.
    pub fn address(&self) -> Result<Option<std::net::SocketAddr>, String> {
        let Some(text) = &self.listen else {
            return Ok(None);
        };
        let addr: std::net::SocketAddr = text.parse().map_err(|_| {
            format!("key `metrics.listen`: {text:?} is not an address and port (e.g. \"127.0.0.1:9469\")")
        })?;
        if !addr.ip().is_loopback() && !self.allow_remote {
            return Err(format!(
                "key `metrics.listen`: {addr} is not a loopback address; the endpoint is \
                 unauthenticated, so serving it beyond this host takes `metrics.allow_remote = true`"
            ));
        }
        Ok(Some(addr))
    }
}

/// `[quotas]`: bounds on what one caller (uid) may hold, so a member of the runner group
/// cannot take the daemon or the host from the others. Admins are exempt from every
/// per-uid quota and from the maxima; the defaults apply to everyone who asks nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// Connections one uid may hold at once (default 64).
    pub connections_per_uid: usize,
    /// Of `limits.max_connections`, how many only admins may take (default 16, at most
    /// half of them), so a crowd of runners never locks admins out of revert and cancel.
    pub admin_connections: usize,
    /// Batches in progress at once per uid, detached ones included (default 32).
    pub runs_per_uid: usize,
    /// Detached batches in progress at once per uid (default 4).
    pub detached_per_uid: usize,
    /// Exclusive CPUs one uid may hold at once (default 0: as many as the pool has).
    pub exclusive_cpus_per_uid: usize,
    /// Seconds a batch may hold exclusive CPUs; a batch still holding them then is ended
    /// (default 3600).
    pub exclusive_hold_s: u64,
    /// Baselines one uid may own (default 100).
    pub baselines_per_uid: u64,
    /// Task limit (`pids.max`) of a run that asks none (default 4096).
    pub default_pids: u64,
    /// Highest task limit a runner may ask (default 32768).
    pub max_pids: u64,
    /// Memory limit of a run that asks none, percent of the host's memory (default 50;
    /// 0: none).
    pub default_memory_percent: u8,
    /// Highest memory limit a runner may ask, percent of the host's memory (default 90).
    pub max_memory_percent: u8,
}

impl Quotas {
    /// Most baselines `caller` may own: none for an admin.
    pub fn baselines_for(&self, admin: bool) -> Option<u64> {
        (!admin).then_some(self.baselines_per_uid)
    }

    /// The connections kept for admins out of `max_connections`: at most half of them.
    pub fn admin_connections_of(&self, max_connections: usize) -> usize {
        self.admin_connections.min(max_connections / 2)
    }

    fn validate(&self) -> Result<(), String> {
        let q = self;
        for (key, value) in [
            ("connections_per_uid", q.connections_per_uid),
            ("runs_per_uid", q.runs_per_uid),
            ("detached_per_uid", q.detached_per_uid),
            ("baselines_per_uid", q.baselines_per_uid as usize),
        ] {
            if value == 0 {
                return Err(format!("key `quotas.{key}`: must be at least 1"));
            }
        }
        if q.exclusive_hold_s == 0 {
            return Err("key `quotas.exclusive_hold_s`: must be at least 1".into());
        }
        if q.default_pids == 0 || q.max_pids == 0 {
            return Err(
                "keys `quotas.default_pids` and `quotas.max_pids`: must be at least 1".into(),
            );
        }
        if q.default_pids > q.max_pids {
            return Err(format!(
                "key `quotas.default_pids`: {} is over quotas.max_pids ({})",
                q.default_pids, q.max_pids
            ));
        }
        if q.max_memory_percent == 0 || q.max_memory_percent > 100 || q.default_memory_percent > 100
        {
            return Err(
                "keys `quotas.default_memory_percent` (0 to 100) and `quotas.max_memory_percent` (1 to 100): out of range".into(),
            );
        }
        if q.default_memory_percent > q.max_memory_percent {
            return Err(format!(
                "key `quotas.default_memory_percent`: {} is over quotas.max_memory_percent ({})",
                q.default_memory_percent, q.max_memory_percent
            ));
        }
        Ok(())
    }
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            connections_per_uid: 64,
            admin_connections: 16,
            runs_per_uid: 32,
            detached_per_uid: 4,
            exclusive_cpus_per_uid: 0,
            exclusive_hold_s: 3600,
            baselines_per_uid: 100,
            default_pids: 4096,
            max_pids: 32768,
            default_memory_percent: 50,
            max_memory_percent: 90,
        }
    }
}

/// `[runs]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Runs {
    /// Output of one run streamed to the client at most, in bytes; the rest is dropped
    /// and the run says so (default 16 MiB).
    pub max_output_bytes: u64,
    /// Most repetitions one request may ask for (default 10000).
    pub max_repeat: u32,
    /// Batches kept in the run history per uid (default 1000; baselines' batches are kept
    /// too).
    pub history_limit: u32,
    /// 1 − the confidence level of a verdict's interval (default 0.05: 95 %); with
    /// several comparisons at once, the family's (Holm).
    pub compare_alpha: f64,
    /// The equivalence margin δ of verdicts, percent (default 2): a change within it is
    /// `equivalent`, one beyond it with its interval clear of 1 `slower` or `faster`.
    pub compare_threshold_percent: f64,
    /// A measured repeat whose CPUs spent more than this share of their time (wall time ×
    /// CPUs) on something else, or that saw thermal throttling or its frequency move, is
    /// noisy and measured again, percent (default 10; 0 turns it off).
    pub noisy_percent: f64,
    /// Most noisy repeats measured again per batch (per command of a comparison);
    /// default 3.
    pub max_reruns: u32,
    /// CPUs exclusive runs may take, a CPU list (default: every online CPU but CPU 0).
    pub isolation_cpus: Option<String>,
    /// Pids the shield leaves alone (default none; e.g. `[1]` where init is not yours).
    pub shield_exempt_pids: Vec<i32>,
    /// Command names (`/proc/<pid>/comm`, globs like `qemu-*`) the shield leaves alone.
    pub shield_exempt_names: Vec<String>,
    /// cgroup paths (as in `/proc/<pid>/cgroup`, e.g. `/system.slice/db.service`) whose
    /// processes, and their descendants', the shield leaves alone.
    pub shield_exempt_cgroups: Vec<String>,
    /// On cgroup v2, shield with a cpuset partition: the kernel itself keeps every other
    /// task off the CPUs, but it cannot honour exemptions (default true; false shields by
    /// affinity, which does).
    pub shield_partition: bool,
    /// Most MiB a run in a file-system clean room (`isolate` `fs`) writes outside its `rw`
    /// directories, and holds in each of its private `/var/tmp`, `/run` and `/dev/shm`
    /// (tmpfs, counted in the run's memory; default 1024).
    pub fs_write_mb: u64,
}

impl Runs {
    /// The shield settings (the config is validated: the globs parse).
    pub fn shield(&self) -> crate::run::ShieldConfig {
        crate::run::ShieldConfig {
            pool: self.isolation_cpus.clone(),
            exempt: crate::run::shield::Exempt {
                pids: self.shield_exempt_pids.clone(),
                names: self
                    .shield_exempt_names
                    .iter()
                    .filter_map(|n| glob::Pattern::new(n).ok())
                    .collect(),
                cgroups: self.shield_exempt_cgroups.clone(),
                tids: Vec::new(),
            },
            partition: self.shield_partition,
        }
    }
}

impl Default for Runs {
    fn default() -> Self {
        Self {
            max_output_bytes: 16 << 20,
            max_repeat: 10_000,
            history_limit: 1000,
            compare_alpha: 0.05,
            compare_threshold_percent: 2.0,
            noisy_percent: 10.0,
            max_reruns: 3,
            fs_write_mb: 1024,
            isolation_cpus: None,
            shield_exempt_pids: Vec::new(),
            shield_exempt_names: Vec::new(),
            shield_exempt_cgroups: Vec::new(),
            shield_partition: true,
        }
    }
}

/// `[daemon]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSection {
    /// Directory of the state database (default `/var/lib/cleanroom`).
    pub state_dir: PathBuf,
    /// Root under which `/proc` and `/sys` are read and written (default `/`).
    pub host_root: PathBuf,
}

impl Default for DaemonSection {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/cleanroom"),
            host_root: PathBuf::from("/"),
        }
    }
}

/// `[socket]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketSection {
    /// Socket path (default `/run/cleanroom/cleanroomd.sock`).
    pub path: PathBuf,
    /// Group that owns the socket file (default `cleanroom`); left alone if it does not
    /// exist on this host.
    pub group: String,
    /// Permission bits of the socket file (default `0o660`); an octal integer (`0o660`) or
    /// an octal string (`"0660"`).
    pub mode: Mode,
}

impl Default for SocketSection {
    fn default() -> Self {
        Self {
            path: PathBuf::from(cleanroom_proto::DEFAULT_SOCKET),
            group: "cleanroom".to_owned(),
            mode: Mode(0o660),
        }
    }
}

/// File permission bits, shown in octal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:04o}", self.0))
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u32),
            Text(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected an octal mode such as 0o660 or \"0660\"")
        })? {
            Raw::Int(m) => Ok(Mode(m)),
            Raw::Text(t) => u32::from_str_radix(t.trim_start_matches("0o"), 8)
                .map(Mode)
                .map_err(|_| {
                    serde::de::Error::custom(format!("{t:?} is not an octal mode such as \"0660\""))
                }),
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Most connections served at once (default 1024).
    pub max_connections: usize,
    /// Most unanswered requests per connection before the daemon stops reading from it
    /// (default 32).
    pub max_in_flight: usize,
    /// Seconds a connection may stay silent with nothing in flight, and a peer may read
    /// nothing while the daemon has something to send it (default 300).
    pub idle_timeout_s: u64,
    /// Bytes of notifications (run output, as JSON) queued for one connection before its
    /// runs wait for the client to read (default 4 MiB, at least 64 KiB).
    pub max_queued_bytes: usize,
    /// Audit rows kept, the newest (default 100000, at least 1000): every state-changing
    /// request writes one, denied ones included.
    pub audit_rows: u64,
    /// Milliseconds SIGTERM waits for requests in flight before exiting (default 500,
    /// at most 900 so the daemon always exits within a second).
    pub shutdown_grace_ms: u64,
}

/// Least `limits.max_queued_bytes`: one pipe buffer of output.
pub const MIN_QUEUED_BYTES: usize = 64 << 10;
/// Most `limits.max_queued_bytes` (the daemon counts it in semaphore permits).
pub const MAX_QUEUED_BYTES: usize = 1 << 30;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_in_flight: 32,
            idle_timeout_s: 300,
            max_queued_bytes: 4 << 20,
            audit_rows: 100_000,
            shutdown_grace_ms: 500,
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Members may run tests (default `cleanroom`).
    pub runner_group: String,
    /// Members may tune the host and act for others (default `cleanroom-admin`).
    pub admin_group: String,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            runner_group: "cleanroom".to_owned(),
            admin_group: "cleanroom-admin".to_owned(),
        }
    }
}

/// `[tuning]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tuning {
    /// Profile directories, searched in order; a later directory's profile replaces an
    /// earlier one of the same name, and any of them the built-in profile of its name
    /// (default: `/usr/lib/cleanroom/profiles`, then `/etc/cleanroom/profiles`; empty: the
    /// built-in profiles only).
    pub profile_dirs: Vec<PathBuf>,
    /// Sysctl key prefixes profiles may set (default: vm., net.core., net.ipv4., ...).
    /// Keys that make the kernel run a program are refused whatever this says.
    pub sysctl_allow: Vec<String>,
    /// At start, with a journal left by a previous run: `reapply` the active profile
    /// (default) or `revert` to the originals.
    pub on_start: crate::tune::OnStart,
    /// Seconds between drift checks of the active profile (0, the default: off).
    pub drift_check_interval_s: u64,
    /// Revert the tuning when the daemon stops (default false: tuning outlives the daemon,
    /// the journal keeps the originals).
    pub revert_on_stop: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            profile_dirs: vec![
                PathBuf::from("/usr/lib/cleanroom/profiles"),
                PathBuf::from("/etc/cleanroom/profiles"),
            ],
            sysctl_allow: crate::host::sysctl::DEFAULT_ALLOW
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            on_start: crate::tune::OnStart::Reapply,
            drift_check_interval_s: 0,
            revert_on_stop: false,
        }
    }
}

/// Values from the command line and environment that win over the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--socket` or `CLEANROOM_SOCKET`.
    pub socket: Option<PathBuf>,
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `--host-root`.
    pub host_root: Option<PathBuf>,
}

/// Which file to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--config PATH`: must exist.
    Explicit(PathBuf),
    /// The default path: may be missing, then defaults apply.
    Default(PathBuf),
}

/// A configuration and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The effective configuration (file, then overrides).
    pub config: Config,
    /// The file read, if one was.
    pub file: Option<PathBuf>,
}

/// Reads and validates the configuration, then applies the overrides.
pub fn load(source: &Source, overrides: &Overrides) -> Result<Loaded, Error> {
    let (path, required) = match source {
        Source::Explicit(p) => (p, true),
        Source::Default(p) => (p, false),
    };
    let (mut config, file) = match std::fs::read_to_string(path) {
        Ok(text) => (parse(path, &text)?, Some(path.clone())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            (Config::default(), None)
        }
        Err(source) => {
            return Err(Error::Read {
                path: path.clone(),
                source,
            });
        }
    };
    if let Some(p) = &overrides.socket {
        config.socket.path = p.clone();
    }
    if let Some(p) = &overrides.state_dir {
        config.daemon.state_dir = p.clone();
    }
    if let Some(p) = &overrides.host_root {
        config.daemon.host_root = p.clone();
    }
    Ok(Loaded { config, file })
}

/// Parses and validates one configuration text.
pub fn parse(path: &Path, text: &str) -> Result<Config, Error> {
    let invalid = |detail: String| Error::Invalid {
        path: path.to_owned(),
        detail,
    };
    let de = toml::de::Deserializer::parse(text).map_err(|e| invalid(describe(text, &e)))?;
    let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let detail = describe(text, &inner);
        if key.is_empty() || key == "." {
            invalid(detail)
        } else {
            invalid(format!("key `{key}`: {detail}"))
        }
    })?;
    config.validate().map_err(invalid)?;
    Ok(config)
}

/// One line: what is wrong, and where, with the line itself (toml's messages alone, such
/// as "duplicate key", do not say which).
fn describe(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let line = text[..start].matches('\n').count() + 1;
            let shown = text.lines().nth(line - 1).unwrap_or("").trim();
            let shown: String = shown.chars().take(80).collect();
            if shown.is_empty() {
                format!("{message} (line {line})")
            } else {
                format!("{message} (line {line}: `{shown}`)")
            }
        }
        None => message.to_owned(),
    }
}

impl Config {
    /// Checks value ranges the types alone cannot express.
    fn validate(&self) -> Result<(), String> {
        let l = &self.limits;
        if l.max_connections == 0 || l.max_connections > 1 << 20 {
            return Err(format!(
                "key `limits.max_connections`: {} is not between 1 and 1048576",
                l.max_connections
            ));
        }
        if l.max_in_flight == 0 {
            return Err("key `limits.max_in_flight`: must be at least 1".into());
        }
        if l.idle_timeout_s == 0 {
            return Err("key `limits.idle_timeout_s`: must be at least 1".into());
        }
        if l.audit_rows < 1000 {
            return Err(format!(
                "key `limits.audit_rows`: {} is under 1000",
                l.audit_rows
            ));
        }
        if !(MIN_QUEUED_BYTES..=MAX_QUEUED_BYTES).contains(&l.max_queued_bytes) {
            return Err(format!(
                "key `limits.max_queued_bytes`: {} is not between {MIN_QUEUED_BYTES} and {MAX_QUEUED_BYTES}",
                l.max_queued_bytes
            ));
        }
        if l.shutdown_grace_ms > 900 {
            return Err(format!(
                "key `limits.shutdown_grace_ms`: {} is over 900; the daemon must exit within a second",
                l.shutdown_grace_ms
            ));
        }
        if self.socket.mode.0 > 0o777 {
            return Err(format!(
                "key `socket.mode`: {:#o} is not a permission mode (write it like 0o660)",
                self.socket.mode.0
            ));
        }
        if !self.socket.path.is_absolute() {
            return Err(format!(
                "key `socket.path`: {} is not an absolute path",
                self.socket.path.display()
            ));
        }
        let m = &self.metrics;
        m.address()?;
        if !(1..=1024).contains(&m.max_connections) {
            return Err(format!(
                "key `metrics.max_connections`: {} is not between 1 and 1024",
                m.max_connections
            ));
        }
        if !(100..=60_000).contains(&m.timeout_ms) {
            return Err(format!(
                "key `metrics.timeout_ms`: {} is not between 100 and 60000",
                m.timeout_ms
            ));
        }
        let r = &self.runs;
        if !(r.compare_alpha > 0.0 && r.compare_alpha < 1.0) {
            return Err(format!(
                "key `runs.compare_alpha`: {} is not between 0 and 1",
                r.compare_alpha
            ));
        }
        if !(r.compare_threshold_percent >= 0.0 && r.compare_threshold_percent.is_finite()) {
            return Err("key `runs.compare_threshold_percent`: must be 0 or more".into());
        }
        if !(r.noisy_percent >= 0.0 && r.noisy_percent <= 100.0) {
            return Err(format!(
                "key `runs.noisy_percent`: {} is not between 0 and 100",
                r.noisy_percent
            ));
        }
        if !(1..=1_048_576).contains(&r.fs_write_mb) {
            return Err(format!(
                "key `runs.fs_write_mb`: {} is not between 1 and 1048576",
                r.fs_write_mb
            ));
        }
        if r.max_reruns > 1000 {
            return Err(format!(
                "key `runs.max_reruns`: {} is over 1000",
                r.max_reruns
            ));
        }
        if let Some(c) = &r.isolation_cpus {
            crate::host::format::parse_cpu_list(c)
                .map_err(|e| format!("key `runs.isolation_cpus`: {e}"))?;
        }
        for n in &r.shield_exempt_names {
            glob::Pattern::new(n)
                .map_err(|e| format!("key `runs.shield_exempt_names`: {n:?} is not a glob: {e}"))?;
        }
        for c in &r.shield_exempt_cgroups {
            if !c.starts_with('/') || c.trim_end_matches('/').is_empty() {
                return Err(format!(
                    "key `runs.shield_exempt_cgroups`: {c:?} must be an absolute cgroup path \
                     below the root (like /system.slice/db.service)"
                ));
            }
        }
        if r.history_limit == 0 {
            return Err("key `runs.history_limit`: must be at least 1".into());
        }
        self.quotas.validate()?;
        for p in &self.tuning.sysctl_allow {
            if p.is_empty() {
                return Err(
                    "key `tuning.sysctl_allow`: an empty prefix would allow every key".into(),
                );
            }
        }
        if self.auth.runner_group.is_empty() || self.auth.admin_group.is_empty() {
            return Err("keys `auth.runner_group` and `auth.admin_group` may not be empty".into());
        }
        Ok(())
    }

    /// The effective configuration as TOML, for `--check-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// Dotted keys whose values differ between `self` and `newer`, split into those that
    /// take effect at once and those that need a restart.
    pub fn diff(&self, newer: &Config) -> (Vec<String>, Vec<String>) {
        let old = flatten(self);
        let new = flatten(newer);
        let mut live = Vec::new();
        let mut restart = Vec::new();
        for (key, value) in &new {
            if old.get(key) != Some(value) {
                let bound_at_start = key.starts_with("daemon.")
                    || key.starts_with("socket.")
                    || key.starts_with("metrics.");
                if bound_at_start {
                    restart.push(key.clone());
                } else {
                    live.push(key.clone());
                }
            }
        }
        (live, restart)
    }
}

fn flatten(config: &Config) -> BTreeMap<String, Value> {
    fn walk(prefix: &str, v: Value, out: &mut BTreeMap<String, Value>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_owned(), other);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(
        "",
        serde_json::to_value(config).unwrap_or(Value::Null),
        &mut out,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(Path::new("/etc/x.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(parse(Path::new("x"), "").unwrap(), Config::default());
    }

    #[test]
    fn full_file_parses() {
        let c = parse(
            Path::new("x"),
            "[daemon]\nstate_dir = \"/s\"\n[socket]\nmode = 0o666\n[limits]\nmax_connections = 5\n[auth]\nadmin_group = \"wheel\"\n",
        )
        .unwrap();
        assert_eq!(c.daemon.state_dir, Path::new("/s"));
        assert_eq!(c.socket.mode, Mode(0o666));
        assert_eq!(c.limits.max_connections, 5);
        assert_eq!(c.auth.admin_group, "wheel");
        assert_eq!(c.auth.runner_group, "cleanroom");
        let c = parse(Path::new("x"), "[socket]\nmode = \"0640\"\n").unwrap();
        assert_eq!(c.socket.mode, Mode(0o640));
    }

    #[test]
    fn errors_name_file_key_line_and_type() {
        let table: &[(&str, &[&str])] = &[
            (
                "[limits]\nmax_connections = \"many\"\n",
                &["/etc/x.toml", "limits.max_connections", "line 2", "string"],
            ),
            (
                "[limits]\nmax_conections = 3\n",
                &["/etc/x.toml", "max_conections", "line 2"],
            ),
            ("[sockets]\n", &["sockets", "line 1"]),
            ("[limits\n", &["/etc/x.toml", "line 1"]),
            (
                "[limits]\nmax_in_flight = 4\n\n[limits]\n",
                &["duplicate", "line 4: `[limits]`"],
            ),
            ("[limits]\nmax_in_flight = 0\n", &["limits.max_in_flight"]),
            ("[socket]\nmode = 0o1777\n", &["socket.mode"]),
            ("[socket]\npath = \"rel.sock\"\n", &["socket.path"]),
            ("[socket]\nmode = \"rw\"\n", &["socket.mode", "octal"]),
            (
                "[limits]\nshutdown_grace_ms = 5000\n",
                &["shutdown_grace_ms"],
            ),
            (
                "[limits]\nmax_queued_bytes = 1000\n",
                &["limits.max_queued_bytes", "1000", "65536"],
            ),
        ];
        for (text, wants) in table {
            let e = err(text);
            for want in *wants {
                assert!(e.contains(want), "{text:?}: {e:?} lacks {want:?}");
            }
        }
    }

    #[test]
    fn overrides_win_and_missing_default_file_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let overrides = Overrides {
            socket: Some("/tmp/s.sock".into()),
            ..Overrides::default()
        };
        let loaded = load(&Source::Default(dir.path().join("absent.toml")), &overrides).unwrap();
        assert_eq!(loaded.file, None);
        assert_eq!(loaded.config.socket.path, Path::new("/tmp/s.sock"));
        let e = load(
            &Source::Explicit(dir.path().join("absent.toml")),
            &overrides,
        )
        .unwrap_err();
        assert!(e.to_string().contains("absent.toml"), "{e}");
    }

    #[test]
    fn diff_splits_live_and_restart_keys() {
        let a = Config::default();
        let mut b = a.clone();
        b.limits.max_connections = 3;
        b.socket.path = "/x.sock".into();
        let (live, restart) = a.diff(&b);
        assert_eq!(live, vec!["limits.max_connections"]);
        assert_eq!(restart, vec!["socket.path"]);
        assert_eq!(a.diff(&a), (vec![], vec![]));
    }

    #[test]
    fn rendered_config_parses_back() {
        let c = Config::default();
        assert_eq!(parse(Path::new("x"), &c.to_toml()).unwrap(), c);
    }
}
