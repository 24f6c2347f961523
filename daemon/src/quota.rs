//! Per-uid quotas (`[quotas]` in the configuration): what a request that would go over one
//! gets back. Every refusal names the quota's configuration key, its value and the uid, so
//! the caller knows what to wait for and an admin what to raise.

use serde_json::{Value, json};

/// A request that would take its caller over a quota.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "uid {uid} is over quota `quotas.{key}` = {limit}: {what} (an admin may raise it in the configuration file)"
)]
pub struct Exceeded {
    /// The key below `[quotas]`.
    pub key: &'static str,
    /// Its value in force.
    pub limit: u64,
    /// The caller.
    pub uid: u32,
    /// What the caller holds or asked for, in words.
    pub what: String,
}

impl Exceeded {
    /// A quota refusal of `uid`.
    pub fn new(key: &'static str, limit: impl TryInto<u64>, uid: u32, what: String) -> Self {
        Self {
            key,
            limit: limit.try_into().unwrap_or(u64::MAX),
            uid,
            what,
        }
    }

    /// The error object's `data`: the key, the value and the uid, for scripts.
    pub fn data(&self) -> Value {
        json!({"quota": format!("quotas.{}", self.key), "limit": self.limit, "uid": self.uid})
    }
}
