//! cleanroomd: the cleanroom daemon as a library, so that its binary stays a thin list of
//! start-up steps and its parts can be tested one by one.
//!
//! Data flows one way: socket → [`server::connection`] (framing) →
//! [`server::dispatch::dispatch`] (no socket types below this point) → tune/run →
//! [`host`] and [`store`]. Only [`host`] opens kernel files.

pub mod args;
pub mod auth;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod metrics;
pub mod pin;
pub mod privileges;
pub mod quota;
pub mod run;
pub mod server;
pub mod state;
pub mod store;
pub mod systemd;
#[cfg(test)]
mod testing;
pub mod tune;
