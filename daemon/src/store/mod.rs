//! The SQLite state database: `<state-dir>/cleanroom.db`.
//!
//! WAL mode, `synchronous=FULL` (a committed row survives a power cut, which the tuning
//! journal will rely on), schema version in `PRAGMA user_version` with forward-only
//! migrations applied at start. A database newer than this binary, or a file that is not
//! a SQLite database, is an error at start: never a silent reset.
//!
//! SQLite calls block, so async code reaches the database only through [`Store::call`],
//! which runs the closure on tokio's blocking pool, never on an async worker thread.
//!
//! Limitations: one connection behind a mutex; enough for the control plane's write rate.

pub mod history;
pub mod journal;
mod migrations;
pub mod pins;
pub mod shield;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags};

/// File name of the database inside the state directory.
pub const DB_FILE: &str = "cleanroom.db";

/// Errors of the store; each names the database or directory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The state directory cannot be created or used.
    #[error("state directory {}: {source}", path.display())]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The state directory path exists and is not a directory.
    #[error("state directory {} exists and is not a directory", path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The file exists but is not a usable SQLite database.
    #[error(
        "state database {} is unreadable or corrupt ({source}); move it aside to start with an empty state",
        path.display()
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// Another daemon holds the state directory.
    #[error("state directory {} is in use by another cleanroomd ({holder}); stop it first or pass another --state-dir", path.display())]
    Locked {
        /// The directory.
        path: PathBuf,
        /// What the lock file says about its holder.
        holder: String,
    },
    /// The database was written by a newer cleanroomd.
    #[error(
        "state database {} has schema version {found}, newer than the {known} this cleanroomd knows; run a newer cleanroomd",
        path.display()
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// Ours.
        known: i64,
    },
    /// A statement failed.
    #[error("state database {}: {source}", path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The blocking task running a statement panicked or was cancelled.
    #[error("state database task failed: {0}")]
    Task(String),
}

/// The state database.
#[derive(Debug, Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    /// Writes queued behind their callers, for the writer thread (started at the first,
    /// so not before the daemon's capabilities are dropped: they are per thread).
    behind: Arc<std::sync::OnceLock<tokio::sync::mpsc::Sender<Behind>>>,
    /// The lock on the state directory, held as long as the store lives.
    _lock: Arc<std::fs::File>,
}

/// Most writes queued behind their callers at once: past it, [`Store::behind`] waits (a flood
/// of requests slows down to the database's pace instead of growing a queue).
pub const MAX_BEHIND: usize = 1024;

/// A write to the database, to be done later.
type Write = Box<dyn FnOnce(&mut Connection) -> rusqlite::Result<()> + Send>;

/// A write queued behind its caller, or a reader's marker.
enum Behind {
    Write { what: &'static str, f: Write },
    Settled(tokio::sync::oneshot::Sender<()>),
}

/// The writer of [`Store::behind`]: one thread, taking the queue in order, so a marker is
/// reached once everything queued before it is written.
fn write_behind(conn: Arc<Mutex<Connection>>, mut queue: tokio::sync::mpsc::Receiver<Behind>) {
    while let Some(item) = queue.blocking_recv() {
        match item {
            Behind::Write { what, f } => {
                let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = f(&mut c) {
                    tracing::error!(error = %e, "cannot store {what}");
                }
            }
            Behind::Settled(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Room the state directory keeps for the tuning journal: on a full file system, a revert
/// frees it to record its steps and put the host back.
pub const RESERVE_BYTES: u64 = 2 << 20;

/// The reserve's file name inside the state directory.
const RESERVE_FILE: &str = "reserve";

/// Whether a SQLite error says the disk (or the database's quota) is full.
pub fn is_full(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull
    )
}

/// Most bytes of an audit row's outcome: an error message can echo what the caller sent.
pub const MAX_OUTCOME_BYTES: usize = 256;

/// `text` cut to at most `max` bytes on a character boundary, with `…` when cut.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// One state-changing request, as the audit table records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Caller uid (from the kernel).
    pub uid: u32,
    /// Caller gid.
    pub gid: u32,
    /// Caller pid.
    pub pid: i32,
    /// Method name (`cleanroomd --revert --force` for what that forgets without a daemon).
    pub method: String,
    /// SHA-256 of the params as received, hex (empty for `cleanroomd --revert --force`,
    /// which has no params).
    pub params_digest: String,
    /// `ok` or `error <code>: <message>`; for a shield item a forced lowering forgot,
    /// `forgot <path>: ...` (see [`shield::finish_lowering`]).
    pub outcome: String,
}

/// Takes `<state-dir>/cleanroomd.lock` (flock, released when the process ends, however it
/// ends) and writes our pid into it.
/// How long a start waits for the state directory's lock to come free.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

fn lock_state_dir(state_dir: &Path) -> Result<std::fs::File, Error> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    let path = state_dir.join("cleanroomd.lock");
    let dir_err = |source| Error::StateDir {
        path: path.clone(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(dir_err)?;
    // A daemon killed a moment ago can leave a copy of its lock behind for a moment: a
    // child it was starting (a run, a helper) shares the lock until its exec closes it.
    // So a lock held is tried again for a while before it is taken for a live daemon's.
    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
    let rc = loop {
        // SAFETY: flock on a descriptor this function owns.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 || std::time::Instant::now() >= deadline {
            break rc;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    if rc != 0 {
        let mut holder = String::new();
        let _ = f.read_to_string(&mut holder);
        let holder = match holder.trim() {
            "" => "unknown pid".to_owned(),
            pid => format!("pid {pid}"),
        };
        return Err(Error::Locked {
            path: state_dir.to_owned(),
            holder,
        });
    }
    f.set_len(0).map_err(dir_err)?;
    f.rewind().map_err(dir_err)?;
    writeln!(f, "{}", std::process::id()).map_err(dir_err)?;
    Ok(f)
}

impl Store {
    /// Opens (creating if needed) the database in `state_dir` and migrates it. Blocking:
    /// call it at start, before the runtime serves requests.
    pub fn open(state_dir: &Path) -> Result<Self, Error> {
        match std::fs::metadata(state_dir) {
            Ok(m) if !m.is_dir() => {
                return Err(Error::NotADirectory {
                    path: state_dir.to_owned(),
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(state_dir)
                    .map_err(|source| Error::StateDir {
                        path: state_dir.to_owned(),
                        source,
                    })?;
            }
            Err(source) => {
                return Err(Error::StateDir {
                    path: state_dir.to_owned(),
                    source,
                });
            }
        }
        // One daemon per state directory: a second one would recover (re-apply, revert) a
        // journal and clean up run cgroups the first one still owns.
        let lock = lock_state_dir(state_dir)?;
        let path = state_dir.join(DB_FILE);
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags).map_err(|source| {
            match std::fs::File::options().read(true).write(true).open(&path) {
                Err(io) if io.kind() != std::io::ErrorKind::NotFound => Error::StateDir {
                    path: path.clone(),
                    source: io,
                },
                _ => Error::Corrupt {
                    path: path.clone(),
                    source,
                },
            }
        })?;
        // The first statement reads the header: a file that is not a database fails here.
        let corrupt = |source| Error::Corrupt {
            path: path.clone(),
            source,
        };
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(corrupt)?;
        conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0))
            .map_err(corrupt)?;
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
            .map_err(corrupt)?;
        // Audit rows and, later, the tuning journal are for root's eyes: owner only. SQLite
        // gives the -wal and -shm files the database file's mode.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
                |source| Error::StateDir {
                    path: path.clone(),
                    source,
                },
            )?;
        }
        let mut conn = conn;
        migrations::migrate(&mut conn, &path)?;
        let conn = Arc::new(Mutex::new(conn));
        Ok(Self {
            conn,
            path,
            behind: Arc::default(),
            _lock: Arc::new(lock),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes sure the state directory keeps [`RESERVE_BYTES`] of room for putting the host
    /// back when its file system fills up ([`Store::release_reserve`]). Best effort: on a
    /// full disk it is made on a later call.
    pub fn keep_reserve(&self) {
        let path = self.reserve_path();
        if std::fs::metadata(&path).is_ok_and(|m| m.len() >= RESERVE_BYTES) {
            return;
        }
        let made = std::fs::File::create(&path).and_then(|f| {
            // Allocated for real (not a sparse file): deleting it frees that much.
            nix::fcntl::posix_fallocate(&f, 0, RESERVE_BYTES as i64)?;
            f.sync_all()
        });
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            tracing::warn!(path = %path.display(), error = %e, "cannot keep the state directory's reserve");
        }
    }

    /// Frees the reserve's room for the journal; whether there was one to free.
    pub fn release_reserve(&self) -> bool {
        std::fs::remove_file(self.reserve_path()).is_ok()
    }

    fn reserve_path(&self) -> PathBuf {
        self.path.with_file_name(RESERVE_FILE)
    }

    /// Bytes free (for unprivileged users: the daemon's writes may use root's reserve,
    /// which is left for the tuning journal) on the state directory's file system.
    pub fn free_bytes(&self) -> std::io::Result<u64> {
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        let st = nix::sys::statvfs::statvfs(dir)?;
        Ok(st.blocks_available() * st.fragment_size())
    }

    /// The connection, for code already on a blocking thread (the tuner interleaves
    /// kernel writes with journal commits). Never call from async code.
    pub fn lock_blocking(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` with the connection on the blocking pool.
    pub async fn call<F, R>(&self, f: F) -> Result<R, Error>
    where
        F: FnOnce(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard).map_err(|source| Error::Sqlite { path, source })
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
    }

    /// Queues `f` to run after the caller moves on (a batch's history row, written after
    /// its answer), logging a failure as `what`; waits only while `MAX_BEHIND` (1,024)
    /// writes are queued. A reader that must see it calls [`Store::settled`] first.
    pub async fn behind<F>(&self, what: &'static str, f: F)
    where
        F: FnOnce(&mut Connection) -> rusqlite::Result<()> + Send + 'static,
    {
        let write = Behind::Write {
            what,
            f: Box::new(f),
        };
        if self.writer().send(write).await.is_err() {
            tracing::error!("cannot store {what}: no writer thread");
        }
    }

    /// The writer thread's queue, the thread started by the first caller (one that cannot
    /// start leaves a queue nobody reads: every write to it fails, and says so).
    fn writer(&self) -> &tokio::sync::mpsc::Sender<Behind> {
        self.behind.get_or_init(|| {
            let (queue, items) = tokio::sync::mpsc::channel(MAX_BEHIND);
            let conn = Arc::clone(&self.conn);
            if let Err(e) = std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || write_behind(conn, items))
            {
                tracing::error!(error = %e, "cannot start the store's writer thread");
            }
            queue
        })
    }

    /// Waits until every write [`Store::behind`] queued before this call is done.
    pub async fn settled(&self) {
        // Nothing was ever queued: nothing to wait for.
        let Some(queue) = self.behind.get() else {
            return;
        };
        let (done, written) = tokio::sync::oneshot::channel();
        if queue.send(Behind::Settled(done)).await.is_ok() {
            let _ = written.await;
        }
    }

    /// Appends one audit event. Like the history, the audit log is not the journal: in WAL
    /// mode `synchronous=NORMAL` keeps the database consistent and only a power cut may
    /// lose the newest rows, without an fsync on every state-changing request.
    /// Written behind the caller ([`Store::behind`]): the answer does not wait for it, a
    /// stop does. Only the newest `keep` rows are kept.
    pub async fn record_audit(&self, event: AuditEvent, keep: u64) {
        let ts = now();
        self.behind("an audit record", move |c| {
            with_normal_sync(c, |c| {
                let tx = c.transaction()?;
                insert_audit(&tx, ts, &event)?;
                // The newest `keep` rows: a range of the primary key, cheap when there
                // is nothing to drop.
                tx.execute(
                    "DELETE FROM audit WHERE id <= (SELECT max(id) FROM audit) - ?1",
                    [keep.min(i64::MAX as u64) as i64],
                )?;
                tx.commit()
            })
        })
        .await
    }

    /// The most recent audit events, newest first.
    pub async fn recent_audit(&self, limit: u32) -> Result<Vec<AuditEvent>, Error> {
        self.settled().await;
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT uid, gid, pid, method, params_digest, outcome FROM audit
                 ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit], |r| {
                Ok(AuditEvent {
                    uid: r.get(0)?,
                    gid: r.get(1)?,
                    pid: r.get(2)?,
                    method: r.get(3)?,
                    params_digest: r.get(4)?,
                    outcome: r.get(5)?,
                })
            })?;
            rows.collect()
        })
        .await
    }
}

/// Seconds since the Unix epoch, as every table records times.
pub(crate) fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Inserts one audit row (its outcome cut to [`MAX_OUTCOME_BYTES`]), in the caller's
/// transaction.
fn insert_audit(conn: &Connection, ts: f64, event: &AuditEvent) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO audit (ts, uid, gid, pid, method, params_digest, outcome)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        rusqlite::params![
            ts,
            event.uid,
            event.gid,
            event.pid,
            event.method,
            event.params_digest,
            cut(&event.outcome, MAX_OUTCOME_BYTES)
        ],
    )?;
    Ok(())
}

/// Audits `events` now, in the caller's transaction (so they commit with what they
/// record, at its durability): for changes that must not happen unaudited, such as the
/// shield journal's forced forgets ([`shield::finish_lowering`]).
pub(crate) fn audit_now(conn: &Connection, events: &[AuditEvent]) -> rusqlite::Result<()> {
    let ts = now();
    events.iter().try_for_each(|e| insert_audit(conn, ts, e))
}

/// Runs `f` with `synchronous=NORMAL` (no fsync at commit in WAL mode), then puts the
/// connection back to `FULL`, which everything else (the journals) relies on.
pub(crate) fn with_normal_sync<R>(
    conn: &mut Connection,
    f: impl FnOnce(&mut Connection) -> rusqlite::Result<R>,
) -> rusqlite::Result<R> {
    conn.execute_batch("PRAGMA synchronous=NORMAL")?;
    let result = f(conn);
    conn.execute_batch("PRAGMA synchronous=FULL")?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn creates_migrates_and_records() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let store = Store::open(&state).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let event = AuditEvent {
            uid: 0,
            gid: 0,
            pid: 1,
            method: "daemon.reload".into(),
            params_digest: "ab".into(),
            outcome: "ok".into(),
        };
        rt().block_on(store.record_audit(event.clone(), 1000));
        assert_eq!(rt().block_on(store.recent_audit(10)).unwrap(), vec![event]);
        drop(store);
        // Reopening keeps the rows and does not migrate twice.
        let store = Store::open(&state).unwrap();
        assert_eq!(rt().block_on(store.recent_audit(10)).unwrap().len(), 1);
    }

    #[test]
    fn the_audit_keeps_its_newest_rows_and_cuts_long_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let rt = rt();
        // An outcome echoing a long input, in multi-byte characters.
        let long = "é".repeat(1000);
        for i in 0..1500u32 {
            let event = AuditEvent {
                uid: i,
                gid: 0,
                pid: 1,
                method: "run.start".into(),
                params_digest: "ab".into(),
                outcome: if i == 1499 { long.clone() } else { "ok".into() },
            };
            rt.block_on(store.record_audit(event, 1000));
        }
        let kept = rt.block_on(store.recent_audit(5000)).unwrap();
        assert_eq!(kept.len(), 1000);
        assert_eq!(
            (kept[0].uid, kept[999].uid),
            (1499, 500),
            "the newest, newest first"
        );
        let outcome = &kept[0].outcome;
        assert!(outcome.len() <= MAX_OUTCOME_BYTES, "{}", outcome.len());
        assert!(
            outcome.ends_with('…') && outcome.starts_with("éé"),
            "{outcome}"
        );
    }

    #[test]
    fn garbage_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), vec![0x42u8; 8192]).unwrap();
        let e = Store::open(dir.path()).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
        assert!(e.to_string().contains(DB_FILE), "{e}");
        // The file was not replaced.
        assert_eq!(std::fs::read(dir.path().join(DB_FILE)).unwrap()[0], 0x42);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
        c.execute_batch("PRAGMA user_version = 999").unwrap();
        drop(c);
        let e = Store::open(dir.path()).unwrap_err();
        assert!(matches!(e, Error::NewerSchema { found: 999, .. }), "{e:?}");
    }

    #[test]
    fn one_daemon_per_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path()).unwrap();
        let e = Store::open(dir.path()).unwrap_err();
        assert!(matches!(e, Error::Locked { .. }), "{e:?}");
        assert!(
            e.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        drop(first);
        Store::open(dir.path()).unwrap();
    }

    #[test]
    fn state_dir_that_is_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let e = Store::open(&file).unwrap_err();
        assert!(e.to_string().contains("is not a directory"), "{e}");
    }
}
