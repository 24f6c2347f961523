//! What a batch, or a request about stored batches, can fail with. Each variant names the
//! input at fault; `server/` maps them to wire codes in one exhaustive match.

/// Errors of the run engine and the run history.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A parameter is malformed or out of range; the message names it.
    #[error("{0}")]
    Invalid(String),
    /// Only an admin may ask for this (the message says what).
    #[error("{0} is for admins only")]
    AdminOnly(&'static str),
    /// Runs cannot happen on this host (no usable cgroups).
    #[error("runs are unavailable on this host: {0}")]
    Unavailable(String),
    /// The exclusive cores asked for exist but other runs hold them.
    #[error("{0} (--wait waits for them)")]
    CoresBusy(String),
    /// The exclusive cores asked for can never be had (the pool is too small, or the CPUs
    /// are outside it), or the shield cannot go up.
    #[error("{0}")]
    CoresNever(String),
    /// The shield cannot be lowered on request while exclusive runs hold these CPUs.
    #[error(
        "the shield is in use: exclusive runs hold CPUs {0} (it comes down when the last of \
         them ends; `cleanroomctl runs active` lists them, `cleanroomctl runs cancel BATCH` \
         ends one)"
    )]
    ShieldInUse(String),
    /// The shield is a profile's partition: it comes down with the profile.
    #[error(
        "the shield is profile {profile}'s partition over CPUs {cpus}: it comes down when the \
         profile does (`cleanroomctl profile revert`, or apply a profile without `[partition]`)"
    )]
    PartitionHeld {
        /// The profile holding it.
        profile: String,
        /// Its CPUs.
        cpus: String,
    },
    /// Cancelled while waiting for exclusive cores.
    #[error("cancelled while waiting for exclusive cores: {0}")]
    CancelledWaiting(String),
    /// No stored batch or baseline by that name (the message says which was asked for).
    #[error("{0}")]
    NotFound(String),
    /// The batch or baseline belongs to someone else.
    #[error("{what} belongs to uid {owner}")]
    NotYours {
        /// What was asked for (`batch 12`, `baseline main`).
        what: String,
        /// Its owner.
        owner: u32,
    },
    /// A stored batch of someone else's (whose, is not said: batches are private).
    #[error("batch {0} is not yours")]
    NotYourBatch(String),
    /// The batch is still running: it has no stored result yet.
    #[error(
        "batch {batch} is still running (its result is stored when it ends; \
         `cleanroomctl runs cancel {batch}` ends it now; owner uid {owner})"
    )]
    StillRunning {
        /// The batch.
        batch: String,
        /// Its owner.
        owner: u32,
    },
    /// The runs are stored, but the baseline to save was taken by someone else meanwhile.
    #[error(
        "the runs are stored as batch {batch}, but baseline {name} was saved by someone else \
         meanwhile and is not replaced"
    )]
    BaselineTaken {
        /// The stored batch.
        batch: String,
        /// The baseline.
        name: String,
    },
    /// Two stored batches without a sample between them.
    #[error("nothing to compare: {0}")]
    NothingToCompare(String),
    /// `strict` and the two sides ran in different environments.
    #[error("refused (strict): the environments differ: {0}")]
    EnvironmentsDiffer(String),
    /// A stored result cannot be read back.
    #[error("stored batch {batch} is unreadable: {source}")]
    Unreadable {
        /// The batch.
        batch: String,
        /// What serde said.
        source: serde_json::Error,
    },
    /// The run's cgroup could not be prepared (the error names the file).
    #[error("cannot prepare the run's cgroup: {0}")]
    Cgroup(#[from] crate::host::Error),
    /// The state database failed.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// The state directory has too little room left to store a result.
    #[error(
        "the state directory {dir} has {free_kib} KiB free; a run needs {need_kib} KiB there to store its result (free some space)"
    )]
    StateFull {
        /// The directory.
        dir: String,
        /// Free bytes, KiB.
        free_kib: u64,
        /// Needed, KiB.
        need_kib: u64,
    },
    /// The caller is at one of its quotas.
    #[error(transparent)]
    Quota(#[from] crate::quota::Exceeded),
    /// A task of the engine panicked or was cancelled.
    #[error("run task failed: {0}")]
    Task(String),
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Task(e.to_string())
    }
}

impl From<super::cpus::PickError> for Error {
    fn from(e: super::cpus::PickError) -> Self {
        match e {
            super::cpus::PickError::Busy(why) => Error::CoresBusy(why),
            super::cpus::PickError::Never(why) => Error::CoresNever(why),
        }
    }
}
