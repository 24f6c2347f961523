//! The process event connector: a thread that hears every exec, fork and name change on
//! the host (netlink, `CN_IDX_PROC`) and places what the rules in force want, within
//! moments of the event and without polling.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Weak;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use proc_connector::{EventMask, ProcConnector, ProcEvent};

use super::Pinner;
use crate::host::Host;
use crate::store::Store;

/// The listening thread; dropping this stops it (without waiting: it may be waiting for
/// the store's connection, which the dropper may hold).
#[derive(Debug)]
pub(super) struct Listener {
    stop: EventFd,
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Err(e) = self.stop.write(1) {
            tracing::error!(error = %e, "cannot stop the process event thread");
        }
    }
}

impl Listener {
    /// Subscribes to exec, fork, comm and exit events and starts the thread. Needs
    /// `CAP_NET_ADMIN`.
    pub(super) fn start(pinner: Weak<Pinner>, host: Host, store: Store) -> std::io::Result<Self> {
        let conn = ProcConnector::new().map_err(std::io::Error::other)?;
        // Room for bursts of forks between two wake-ups of the thread.
        if let Err(e) = conn.set_recv_buf_size(4 << 20) {
            tracing::debug!(error = %e, "the process event socket keeps its default buffer");
        }
        // The crate waits for the kernel's acknowledgement of the subscription, which a
        // filtered subscription never gets (the acknowledgement is an event of a type
        // the filter leaves out): it would wait for the next exec on the host. So the
        // wait is bounded, and running out of it means subscribed. (A real event read in
        // its place is lost; the scan every apply makes after subscribing covers it.)
        nix::sys::socket::setsockopt(
            &conn,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(0, 100_000),
        )?;
        match conn.subscribe_filtered(
            EventMask::EXEC | EventMask::FORK | EventMask::COMM | EventMask::EXIT,
        ) {
            Ok(()) | Err(proc_connector::Error::WouldBlock) => {}
            Err(e) => return Err(std::io::Error::other(e)),
        }
        // Events are read without blocking, after poll says they are there.
        conn.set_nonblocking().map_err(std::io::Error::other)?;
        let stop = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        let stop_fd: OwnedFd = stop.as_fd().try_clone_to_owned()?;
        std::thread::Builder::new()
            .name("pin-events".into())
            .spawn(move || run(&conn, &stop_fd, &pinner, &host, &store))?;
        Ok(Self { stop })
    }
}

/// How long ended tasks' rows wait, at most, to be dropped together (ms).
const DROP_AFTER_MS: u8 = 100;

/// The thread: waits for events or the stop signal, and handles each event.
fn run(conn: &ProcConnector, stop: &OwnedFd, pinner: &Weak<Pinner>, host: &Host, store: &Store) {
    let mut buf = vec![0u8; 16 << 10];
    let mut waiting_since: Option<std::time::Instant> = None;
    loop {
        let mut fds = [
            PollFd::new(conn.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        // Rows of ended tasks are dropped together, a moment after the first of them
        // ended, between events (not one commit per exit in the way of placements).
        let Some(p) = pinner.upgrade() else { return };
        let timeout = match (p.rows_to_drop(), waiting_since) {
            (false, _) => {
                waiting_since = None;
                PollTimeout::NONE
            }
            (true, None) => {
                waiting_since = Some(std::time::Instant::now());
                PollTimeout::from(DROP_AFTER_MS)
            }
            (true, Some(t)) if t.elapsed().as_millis() >= u128::from(DROP_AFTER_MS) => {
                if let Err(e) = p.drop_ended(&mut store.lock_blocking()) {
                    tracing::error!(error = %e, "cannot forget ended tasks' placements");
                }
                waiting_since = None;
                continue;
            }
            (true, Some(t)) => {
                PollTimeout::from(DROP_AFTER_MS.saturating_sub(t.elapsed().as_millis() as u8))
            }
        };
        drop(p);
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "process events: poll failed; later processes are not placed");
                return;
            }
        }
        if fds[1].any().unwrap_or(false) {
            return;
        }
        loop {
            let event = match conn.recv(&mut buf) {
                Ok(e) => e,
                // Nothing more for now (`recv` reports it as an OS error of that kind).
                Err(proc_connector::Error::WouldBlock) => break,
                Err(proc_connector::Error::Os(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    break;
                }
                Err(proc_connector::Error::Interrupted) => continue,
                Err(proc_connector::Error::Overrun) => {
                    tracing::warn!(
                        "process events were dropped (a storm of forks): placing every process again"
                    );
                    let Some(p) = pinner.upgrade() else { return };
                    let mut c = store.lock_blocking();
                    let pids = super::place::pids(host);
                    for pid in pids {
                        p.place_process(host, &mut c, pid, None);
                    }
                    continue;
                }
                // Back to waiting: a message that cannot be read is not read again.
                Err(e) => {
                    tracing::debug!(error = %e, "process events: a message skipped");
                    break;
                }
            };
            let Some(p) = pinner.upgrade() else { return };
            handle(&p, host, store, &event);
        }
    }
}

/// One event: the tasks it concerns placed by the rules in force; an ended task's rows
/// dropped. The connection is taken first: the rules are read under it, so a revert that
/// holds it is never followed by a placement under the rules it took out of force.
fn handle(pinner: &Pinner, host: &Host, store: &Store, event: &ProcEvent) {
    match *event {
        ProcEvent::Exec { tgid, .. } => {
            let mut c = store.lock_blocking();
            pinner.place_process(host, &mut c, tgid as i32, None);
        }
        // A process renamed: all its threads may match otherwise; a thread renamed: itself.
        ProcEvent::Comm { pid, tgid, .. } => {
            let only = (pid != tgid).then_some(pid as i32);
            let mut c = store.lock_blocking();
            pinner.place_process(host, &mut c, tgid as i32, only);
        }
        ProcEvent::Fork {
            parent_pid,
            parent_tgid,
            child_pid,
            child_tgid,
            ..
        } => {
            let mut c = store.lock_blocking();
            if pinner.rules().is_empty() {
                return;
            }
            if let Err(e) = pinner.created(
                host,
                &mut c,
                (parent_pid as i32, parent_tgid as i32),
                (child_tgid as i32, child_pid as i32),
            ) {
                tracing::error!(error = %e, child = child_pid, "cannot journal an inherited placement");
            }
            // A new process is its parent's copy until it execs: the rules take it as
            // they took the parent, whose placement it inherited (journaled above); its
            // exec event places it anew. A new thread may match a thread rule by the
            // name it inherited.
            if child_pid != child_tgid {
                pinner.place_process(host, &mut c, child_tgid as i32, Some(child_pid as i32));
            }
        }
        ProcEvent::Exit { pid, .. } => {
            let mut c = store.lock_blocking();
            if let Err(e) = pinner.ended(&mut c, pid as i32) {
                tracing::error!(error = %e, tid = pid, "cannot forget an ended task's placement");
            }
        }
        _ => {}
    }
}
