//! Talking to the service manager: READY, STATUS, RELOADING, STOPPING and the watchdog.
//!
//! Every call is a no-op when `NOTIFY_SOCKET` is unset (the daemon was not started by
//! systemd), so the same code path runs everywhere.
//!
//! No send blocks on the socket. `sd_notify::notify` sends on a blocking datagram socket, so a
//! manager that is slow to read (or a test harness that reads only when it waits for
//! something) would stall the calling thread once its queue is full. Here state changes
//! (READY, RELOADING, STOPPING) are retried for a short while and then given up with a
//! warning; watchdog pings are sent once (the next one follows at half the interval);
//! status lines are only ever a summary of state kept elsewhere, so a
//! full queue just reports [`Sent::Full`] and the caller sends the newest line later.

pub mod units;

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// How long a state change is retried while the manager's queue is full.
const STATE_RETRY: Duration = Duration::from_millis(200);

/// What became of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Delivered, or there is no service manager to tell.
    Done,
    /// The manager's queue was full; nothing was sent.
    Full,
    /// The send failed for another reason (logged).
    Failed,
}

/// Tells the service manager that start-up is done, with a status line.
pub fn ready(status: &str) {
    send_state(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Updates the one-line status `systemctl status` shows. Never waits: a full queue
/// returns [`Sent::Full`] and the caller tries again later with its newest line.
pub fn status(status: &str) -> Sent {
    send(&[NotifyState::Status(status)])
}

/// Tells the service manager a reload is under way.
pub fn reloading() {
    send_state(&[NotifyState::Reloading]);
}

/// Tells the service manager the reload is done.
pub fn reloaded(status: &str) {
    send_state(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells the service manager the daemon is stopping.
pub fn stopping() {
    send_state(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// The interval at which to send `WATCHDOG=1` (half of `WATCHDOG_USEC`), if the watchdog
/// is enabled for this process.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .filter(|d| !d.is_zero())
        .map(|d| d / 2)
}

/// Pets the watchdog. Called from async code every half interval, so it never waits: a
/// ping the manager had no room for is followed by the next one.
pub fn watchdog() {
    if send(&[NotifyState::Watchdog]) == Sent::Full {
        tracing::warn!(
            "the service manager's notification queue is full; a watchdog ping was dropped"
        );
    }
}

/// A state change: retried briefly while the queue is full, then given up with a warning.
fn send_state(states: &[NotifyState<'_>]) {
    let deadline = Instant::now() + STATE_RETRY;
    while send(states) == Sent::Full {
        if Instant::now() >= deadline {
            tracing::warn!(
                "the service manager's notification queue stayed full; a state change was not delivered"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn send(states: &[NotifyState<'_>]) -> Sent {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Sent::Done;
    };
    let mut msg = String::new();
    for s in states {
        let _ = writeln!(msg, "{s}");
    }
    match send_nonblocking(&path, msg.as_bytes()) {
        Ok(()) => Sent::Done,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Sent::Full,
        Err(e) => {
            tracing::warn!(socket = ?path, error = %e, "cannot notify the service manager");
            Sent::Failed
        }
    }
}

/// One datagram to `path` (a file, or an abstract address when it starts with `@`),
/// without ever waiting for room in the receiver's queue.
fn send_nonblocking(path: &OsStr, msg: &[u8]) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    let bytes = path.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(path)?,
    };
    let n = sock.send_to_addr(msg, &addr)?;
    if n == msg.len() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short notification datagram",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_is_reported_not_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        // Fill the receiver's queue without reading it.
        let mut full = false;
        for _ in 0..100_000 {
            match send_nonblocking(path.as_os_str(), &[b'x'; 512]) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    full = true;
                    break;
                }
                Err(e) => panic!("unexpected send error: {e}"),
            }
        }
        assert!(full, "the queue never filled");
        // Reading makes room again.
        let mut buf = [0u8; 1024];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(n, 512);
        send_nonblocking(path.as_os_str(), b"STATUS=ok\n").unwrap();
    }

    #[test]
    fn abstract_addresses_are_reached() {
        let name = format!("cleanroom-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        send_nonblocking(OsStr::new(&format!("@{name}")), b"READY=1\n").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
    }
}
