//! `daemon.*`: liveness, status, metrics and configuration reloads.

use serde::{Deserialize, Serialize};

use crate::wire::Role;

/// Result of `daemon.ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingResult {
    /// Always true.
    pub pong: bool,
}

/// Which cgroup hierarchies the host has mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    /// Only the unified (cgroup2) hierarchy, at `/sys/fs/cgroup`.
    V2,
    /// Only legacy (v1) controller hierarchies.
    V1,
    /// v1 controllers plus a cgroup2 mount elsewhere (often `/sys/fs/cgroup/unified`).
    Hybrid,
    /// No cgroup file system mounted.
    None,
}

impl CgroupMode {
    /// The lowercase name used on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            CgroupMode::V2 => "v2",
            CgroupMode::V1 => "v1",
            CgroupMode::Hybrid => "hybrid",
            CgroupMode::None => "none",
        }
    }
}

/// The caller as the kernel identified it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// Effective uid of the connecting process.
    pub uid: u32,
    /// Effective gid of the connecting process.
    pub gid: u32,
    /// Pid of the connecting process (at connect time).
    pub pid: i32,
    /// The role those credentials give.
    pub role: Role,
}

/// Result of `daemon.status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusResult {
    /// Daemon version (semver).
    pub version: String,
    /// [`crate::PROTOCOL_VERSION`] of the daemon.
    pub protocol: u32,
    /// Daemon pid.
    pub pid: u32,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// Directory of the state database.
    pub state_dir: String,
    /// Socket path the daemon serves.
    pub socket: String,
    /// Whether the socket came from systemd socket activation.
    pub socket_activated: bool,
    /// Configuration file in force, if one was read.
    pub config_file: Option<String>,
    /// Root under which /proc and /sys are read (`/` in production).
    pub host_root: String,
    /// Cgroup hierarchies detected at start.
    pub cgroup: CgroupMode,
    /// Connections open now, this one included.
    pub connections: u64,
    /// The tuning profile in force, if any.
    #[serde(default)]
    pub active_profile: Option<String>,
    /// Knobs in the tuning journal (values cleanroom changed and can put back).
    #[serde(default)]
    pub journal_entries: u64,
    /// Directories holding this daemon's run cgroups (one per v1 hierarchy).
    #[serde(default)]
    pub run_cgroups: Vec<String>,
    /// Pin rules in force (the profile's, then those added by hand), each as one line.
    #[serde(default)]
    pub pin_rules: Vec<String>,
    /// Task attributes pinning changed and can put back.
    #[serde(default)]
    pub pinned: u64,
    /// Whether processes that start later are being followed (the process event
    /// connector is subscribed); false with no rules in force.
    #[serde(default)]
    pub pin_events: bool,
    /// The active profile's partition (`[partition] isolated`), while it is up.
    #[serde(default)]
    pub partition: Option<PartitionStatus>,
    /// Who asked.
    pub caller: Caller,
}

/// A profile's partition in force: CPUs kept free of every task, IRQ and unbound kernel
/// work that pin rules do not place there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionStatus {
    /// The profile holding it.
    pub profile: String,
    /// Its CPUs, as a CPU list.
    pub cpus: String,
    /// How others are kept off: `partition` (a cgroup v2 cpuset partition), `cpuset` (the
    /// cgroup v1 cpusets) or `affinity` (every task's CPU mask).
    pub method: String,
    /// The CPUs exclusive runs take cores from while it is up, as a CPU list.
    pub run_pool: String,
}

/// Result of `daemon.metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsResult {
    /// Prometheus text format 0.0.4.
    pub text: String,
}

/// Result of `daemon.reload`. A refused configuration is an error
/// ([`crate::ErrorCode::ConfigInvalid`]) instead, and the old configuration stays in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadResult {
    /// The file read, if any (none when running on defaults).
    pub config_file: Option<String>,
    /// Dotted keys whose value changed and took effect, e.g. `limits.max_connections`.
    pub changed: Vec<String>,
    /// Dotted keys that changed but only take effect after a restart (e.g. `socket.path`).
    pub restart_required: Vec<String>,
}
