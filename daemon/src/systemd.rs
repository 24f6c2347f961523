//! Talking to the service manager: READY, STATUS, STOPPING and the watchdog.
//!
//! Every call is a no-op when `NOTIFY_SOCKET` is unset (the daemon was not started by
//! systemd), so the same code path runs everywhere.

use std::time::Duration;

use sd_notify::NotifyState;

/// Tells the service manager that start-up is done, with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Updates the one-line status `systemctl status` shows.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// Tells the service manager a reload is under way.
pub fn reloading() {
    send(&[NotifyState::Reloading]);
}

/// Tells the service manager the reload is done.
pub fn reloaded(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells the service manager the daemon is stopping.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// The interval at which to send `WATCHDOG=1` (half of `WATCHDOG_USEC`), if the watchdog
/// is enabled for this process.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .filter(|d| !d.is_zero())
        .map(|d| d / 2)
}

/// Pets the watchdog.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}
