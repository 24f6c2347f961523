//! Getting the listening socket: inherited from systemd socket activation, or bound here.
//!
//! When the daemon binds, a stale socket file (nobody accepting) is replaced, a live one
//! makes start-up fail, and a path that is not a socket is never deleted. The socket is
//! chmod'ed and chgrp'ed before the daemon reports READY, so no client ever sees it with
//! the wrong permissions after READY.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::{AddressFamily, SockaddrLike, UnixAddr, getsockname, getsockopt, sockopt};
use nix::unistd::{Group, chown};

/// Errors getting the socket; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another daemon accepts on the path.
    #[error("another cleanroomd is already serving {}; stop it first or pass another --socket", path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The path exists and is not a socket; it is left alone.
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// An operation on the path failed.
    #[error("socket {}: {what}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        source: io::Error,
    },
    /// systemd passed something other than one listening Unix stream socket.
    #[error("socket activation: {0}")]
    Activation(String),
}

/// A listening socket ready to be served.
#[derive(Debug)]
pub struct Listening {
    /// The socket, non-blocking.
    pub listener: UnixListener,
    /// Its path.
    pub path: PathBuf,
    /// Whether systemd passed it.
    pub activated: bool,
}

/// The socket systemd passed (`LISTEN_FDS`/`LISTEN_PID` naming this process), if any.
pub fn inherited() -> Result<Option<Listening>, Error> {
    let fds: Vec<RawFd> = sd_notify::listen_fds()
        .map_err(|e| Error::Activation(e.to_string()))?
        .collect();
    match fds.as_slice() {
        [] => Ok(None),
        [fd] => {
            // SAFETY: systemd passed this descriptor to this process (LISTEN_PID matched)
            // and nothing else in the process owns it; we take ownership exactly once.
            let owned = unsafe { OwnedFd::from_raw_fd(*fd) };
            let listening = getsockopt(&owned, sockopt::AcceptConn)
                .map_err(|e| Error::Activation(format!("fd {fd}: {e}")))?;
            let addr: UnixAddr =
                getsockname(*fd).map_err(|e| Error::Activation(format!("fd {fd}: {e}")))?;
            if addr.family() != Some(AddressFamily::Unix) || !listening {
                return Err(Error::Activation(format!(
                    "fd {fd} is not a listening Unix stream socket"
                )));
            }
            let path = addr
                .path()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("(unnamed)"));
            let listener = UnixListener::from(owned);
            listener.set_nonblocking(true).map_err(|source| Error::Io {
                path: path.clone(),
                what: "set non-blocking",
                source,
            })?;
            Ok(Some(Listening {
                listener,
                path,
                activated: true,
            }))
        }
        more => Err(Error::Activation(format!(
            "expected one socket, got {} (fds {more:?}); configure one ListenStream",
            more.len()
        ))),
    }
}

/// Binds `path`, replacing a stale socket file, and sets its group and mode.
pub fn bind(path: &Path, group: &str, mode: u32) -> Result<Listening, Error> {
    let io_err = |what: &'static str| {
        move |source| Error::Io {
            path: path.to_owned(),
            what,
            source,
        }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(io_err("create parent directory"))?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => {
                return Err(Error::InUse {
                    path: path.to_owned(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(socket = %path.display(), "replacing stale socket file");
                std::fs::remove_file(path).map_err(io_err("remove stale socket"))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    path: path.to_owned(),
                    what: "probe existing socket",
                    source,
                });
            }
        },
        Ok(_) => {
            return Err(Error::NotASocket {
                path: path.to_owned(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(Error::Io {
                path: path.to_owned(),
                what: "inspect",
                source,
            });
        }
    }
    let listener = UnixListener::bind(path).map_err(io_err("bind"))?;
    listener
        .set_nonblocking(true)
        .map_err(io_err("set non-blocking"))?;
    match Group::from_name(group) {
        Ok(Some(g)) => {
            chown(path, None, Some(g.gid)).map_err(|e| io_err("chgrp")(io::Error::from(e)))?
        }
        Ok(None) => tracing::warn!(
            group,
            socket = %path.display(),
            "socket group does not exist; socket keeps the daemon's group"
        ),
        Err(e) => tracing::warn!(group, error = %e, "cannot look socket group up"),
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod"))?;
    Ok(Listening {
        listener,
        path: path.to_owned(),
        activated: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_stale_socket_and_refuses_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/d.sock");
        let first = bind(&path, "no-such-group-here", 0o600).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let e = bind(&path, "no-such-group-here", 0o600).unwrap_err();
        assert!(matches!(e, Error::InUse { .. }), "{e}");
        drop(first); // the file stays behind: stale
        assert!(path.exists());
        let again = bind(&path, "no-such-group-here", 0o660).unwrap();
        UnixStream::connect(&again.path).unwrap();
    }

    #[test]
    fn never_deletes_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("precious");
        std::fs::write(&path, "data").unwrap();
        let e = bind(&path, "x", 0o660).unwrap_err();
        assert!(matches!(e, Error::NotASocket { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
    }
}
