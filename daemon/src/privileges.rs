//! Dropping the capabilities the daemon does not use, and raising its file limit.
//!
//! Capabilities are per thread on Linux: [`drop_capabilities`] must run before any other
//! thread exists (before the tokio runtime is built), so that every thread the daemon ever
//! has inherits the reduced sets.

use caps::{CapSet, Capability, CapsHashSet};

/// The capabilities cleanroomd keeps, and why.
pub const KEPT: &[(Capability, &str)] = &[
    (
        Capability::CAP_SYS_ADMIN,
        "write /proc/sys, manage cgroups, create namespaces for runs and make their cgroup mounts read-only",
    ),
    (
        Capability::CAP_NET_ADMIN,
        "write net.* sysctls, IRQ affinity",
    ),
    (
        Capability::CAP_SYS_NICE,
        "SCHED_FIFO runs, CPU affinity of other processes when shielding",
    ),
    (
        Capability::CAP_SYS_RESOURCE,
        "set rlimits of runs and of the daemon",
    ),
    (Capability::CAP_SETUID, "run tests as the calling user"),
    (Capability::CAP_SETGID, "run tests with the caller's groups"),
    (
        Capability::CAP_KILL,
        "end every process of a run, whoever owns it",
    ),
    (
        Capability::CAP_DAC_OVERRIDE,
        "write kernel and cgroup files whatever their mode",
    ),
    (
        Capability::CAP_DAC_READ_SEARCH,
        "read /proc of foreign tasks and the caller's working directory",
    ),
    (
        Capability::CAP_FOWNER,
        "set modes on files the daemon does not own (cgroup delegation)",
    ),
    (
        Capability::CAP_CHOWN,
        "hand a run's cgroup to its user; recreate a kept working directory's parents in a private /tmp",
    ),
    (
        Capability::CAP_SETPCAP,
        "empty the capability bounding set of runs (else a root caller's run regains capabilities at exec)",
    ),
    (
        Capability::CAP_SYS_PTRACE,
        "read /proc/<pid> of foreign tasks (noise accounting, shield exemptions)",
    ),
];

/// Errors dropping capabilities.
#[derive(Debug, thiserror::Error)]
#[error("cannot drop capabilities ({what}): {source}")]
pub struct Error {
    what: &'static str,
    source: caps::errors::CapsError,
}

/// Kept beside [`KEPT`] by a daemon whose host root is not `/` (`--host-root`, tests
/// only): the boot loader's generator runs chrooted into that root
/// (`crate::host::Host::run`). A daemon on `/` (the service) never chroots, and its unit's
/// bounding set does not have it.
pub const KEPT_BELOW_ROOT: (Capability, &str) = (
    Capability::CAP_SYS_CHROOT,
    "run the boot loader's generator inside a host root other than /",
);

/// Reduces the bounding, inheritable, permitted and effective sets to [`KEPT`] (and
/// [`KEPT_BELOW_ROOT`] when `chroot` is asked for) and clears the ambient set. A process
/// without capabilities (not root) has nothing to drop.
pub fn drop_capabilities(chroot: bool) -> Result<(), Error> {
    let mut keep: CapsHashSet = KEPT.iter().map(|(c, _)| *c).collect();
    if chroot {
        keep.insert(KEPT_BELOW_ROOT.0);
    }
    let permitted = caps::read(None, CapSet::Permitted).map_err(|source| Error {
        what: "read permitted set",
        source,
    })?;
    if permitted.is_empty() {
        return Ok(());
    }
    // The bounding set first: dropping from it needs CAP_SETPCAP (kept: runs need it to
    // empty their own bounding set).
    if permitted.contains(&Capability::CAP_SETPCAP) {
        let bounding = caps::read(None, CapSet::Bounding).map_err(|source| Error {
            what: "read bounding set",
            source,
        })?;
        for cap in bounding.difference(&keep) {
            caps::drop(None, CapSet::Bounding, *cap).map_err(|source| Error {
                what: "bounding set",
                source,
            })?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|source| Error {
        what: "ambient set",
        source,
    })?;
    let kept: CapsHashSet = permitted.intersection(&keep).copied().collect();
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new()).map_err(|source| Error {
        what: "inheritable set",
        source,
    })?;
    caps::set(None, CapSet::Effective, &kept).map_err(|source| Error {
        what: "effective set",
        source,
    })?;
    caps::set(None, CapSet::Permitted, &kept).map_err(|source| Error {
        what: "permitted set",
        source,
    })?;
    Ok(())
}

/// Raises the soft limit of open files to the hard limit: every connection is a file.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    let _ = ORIGINAL_NOFILE.set((soft, hard));
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(std::io::Error::from)?;
    Ok(hard)
}

static ORIGINAL_NOFILE: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();

/// `RLIMIT_NOFILE` (soft, hard) as the daemon was started with, before it raised its own:
/// what runs get unless they ask for another.
pub fn original_nofile() -> Option<(u64, u64)> {
    ORIGINAL_NOFILE.get().copied()
}
