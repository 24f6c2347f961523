//! The environment a batch runs in ([`Fingerprint`]): what, when it differs between two
//! batches, makes their comparison a comparison of machines rather than of programs.
//!
//! Kernel and CPU facts come from `/proc` and `/sys` through [`Host`] (below its root, so
//! tests give it a fake tree); the executable is found in the run's `PATH` as `execvp`
//! would, and hashed, both **as the run's user**: the thread that does it takes the user's
//! file-system ids and groups for the look-up and the read (`setfsuid`, `setfsgid`, and
//! `setgroups` as a raw system call, all three per thread), so the daemon's root tells the
//! user nothing about a file they could not see or read. A file on a FUSE file system is
//! not hashed (its server could stall the read), nor one larger than [`MAX_HASHED`].

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cleanroom_proto::Fingerprint;
use sha2::{Digest, Sha256};

use crate::host::Host;

/// What the engine knows of the batch, besides the host.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The active profile, if any.
    pub profile: Option<String>,
    /// The tuning journal's phase.
    pub profile_state: Option<String>,
}

/// Who runs the command, for the executable's look-up and the read check.
#[derive(Debug, Clone)]
pub struct Runs<'a> {
    /// The program as given (`argv[0]`).
    pub program: &'a str,
    /// The run's `PATH`.
    pub path: &'a str,
    /// Its working directory (for a relative program).
    pub cwd: &'a Path,
    /// Its uid.
    pub uid: u32,
    /// Its gid and groups.
    pub groups: Vec<u32>,
}

/// Largest executable hashed, bytes: beyond it the hash is left out (a batch does not
/// wait seconds for it).
pub const MAX_HASHED: u64 = 256 << 20;

/// Hashes already computed, by file identity (device, inode, size, change time): a batch
/// run again does not hash its executable again.
#[derive(Debug, Default)]
pub struct Hashes(Mutex<HashMap<FileId, String>>);

/// A file's identity: device, inode, size, change time (seconds, nanoseconds).
type FileId = (u64, u64, u64, i64, i64);

/// Most hashes kept.
const MAX_KEPT: usize = 256;

impl Hashes {
    fn get_or(
        &self,
        meta: &std::fs::Metadata,
        hash: impl FnOnce() -> Option<String>,
    ) -> Option<String> {
        let key = (
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.ctime(),
            meta.ctime_nsec(),
        );
        if let Some(h) = self.0.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Some(h.clone());
        }
        let h = hash()?;
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() >= MAX_KEPT {
            kept.clear();
        }
        kept.insert(key, h.clone());
        Some(h)
    }
}

/// The fingerprint of a batch about to run (blocking: reads files).
pub fn take(host: &Host, ctx: &Context, runs: &Runs<'_>, hashes: &Hashes) -> Fingerprint {
    let cpuinfo = host.read("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_owned())
        })
    };
    let trimmed = |abs: &str| host.read(abs).ok().map(|s| s.trim().to_owned());
    let cpus = host.list("/sys/devices/system/cpu");
    let per_cpu = |file: &str| -> Option<String> {
        let seen: BTreeSet<String> = cpus
            .iter()
            .filter(|c| c.starts_with("cpu") && c[3..].chars().all(|d| d.is_ascii_digit()))
            .filter_map(|c| trimmed(&format!("/sys/devices/system/cpu/{c}/cpufreq/{file}")))
            .collect();
        (!seen.is_empty()).then(|| seen.into_iter().collect::<Vec<_>>().join(","))
    };
    let limits = match (per_cpu("scaling_min_freq"), per_cpu("scaling_max_freq")) {
        (Some(lo), Some(hi)) => Some(format!("{lo}-{hi}")),
        _ => None,
    };
    let boost = trimmed("/sys/devices/system/cpu/cpufreq/boost")
        .map(|b| if b == "1" { "on" } else { "off" }.to_owned())
        .or_else(|| {
            trimmed("/sys/devices/system/cpu/intel_pstate/no_turbo")
                .map(|t| if t == "1" { "off" } else { "on" }.to_owned())
        });
    let (executable, executable_sha256) = match AsUser::become_(runs.uid, &runs.groups) {
        Some(_user) => {
            let executable = resolve(host, runs);
            let sha = executable.as_deref().and_then(|p| sha256(p, hashes));
            (executable, sha)
        }
        None => (None, None),
    };
    Fingerprint {
        cpu_model: field("model name"),
        microcode: field("microcode"),
        kernel: trimmed("/proc/sys/kernel/osrelease"),
        cmdline: trimmed("/proc/cmdline"),
        smt: trimmed("/sys/devices/system/cpu/smt/control"),
        governor: per_cpu("scaling_governor"),
        boost,
        frequency_limits: limits,
        profile: Some(ctx.profile.clone().unwrap_or_else(|| "none".into())),
        profile_state: ctx.profile_state.clone(),
        cgroup: host.cgroup_mode().ok().map(|m| m.as_str().to_owned()),
        shield: None,
        exclusive_cpus: None,
        glibc: glibc_version(),
        executable: executable.map(|p| p.display().to_string()),
        executable_sha256,
    }
}

/// The C library's version, from `confstr(_CS_GNU_LIBC_VERSION)` (`glibc 2.36`).
fn glibc_version() -> Option<String> {
    let mut buf = [0u8; 64];
    // SAFETY: confstr writes at most `buf.len()` bytes, NUL included, into `buf`.
    let n = unsafe {
        libc::confstr(
            libc::_CS_GNU_LIBC_VERSION,
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n == 0 || n > buf.len() {
        return None;
    }
    let s = std::str::from_utf8(&buf[..n - 1]).ok()?;
    Some(s.strip_prefix("glibc ").unwrap_or(s).to_owned())
}

/// The file `execvp` would run: a program with a `/` as it is (relative to the working
/// directory), else the first executable regular file of that name in `PATH`.
fn resolve(host: &Host, runs: &Runs<'_>) -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = if runs.program.contains('/') {
        vec![runs.cwd.join(runs.program)]
    } else {
        runs.path
            .split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| Path::new(d).join(runs.program))
            .collect()
    };
    candidates.into_iter().find_map(|c| {
        let abs = c.to_str()?;
        let real = host.path(abs).ok()?;
        let meta = std::fs::metadata(&real).ok()?;
        (meta.is_file() && meta.mode() & 0o111 != 0).then_some(real)
    })
}

/// The calling thread acting on files as another user until dropped: its file-system
/// uid and gid and its supplementary groups, each a per-thread attribute in the kernel
/// (the C library's `setgroups` would change every thread's, so the system call is made
/// directly), and no effective capability (a per-thread set too): a changed fsuid only
/// drops the file-system ones, and `CAP_SYS_PTRACE` would still follow another user's
/// `/proc/PID/cwd`, `CAP_SYS_RESOURCE` still write past a quota. Dropping it puts root's
/// back.
pub(super) struct AsUser {
    groups: Vec<libc::gid_t>,
    caps: std::collections::HashSet<caps::Capability>,
}

impl AsUser {
    /// Acts as `uid` with `groups` (the first is the primary group); `None` when the
    /// kernel refuses (then nothing changed).
    pub(super) fn become_(uid: u32, groups: &[u32]) -> Option<AsUser> {
        let gid = groups.first().copied().unwrap_or(uid);
        let old = nix::unistd::getgroups().ok()?;
        let old: Vec<libc::gid_t> = old.into_iter().map(|g| g.as_raw()).collect();
        let caps = caps::read(None, caps::CapSet::Effective).ok()?;
        // From here on, dropping `back` undoes whatever was done.
        let back = AsUser { groups: old, caps };
        // SAFETY: setgroups(2) reads `groups.len()` gids from a live slice.
        let r = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
        if r != 0 {
            return None;
        }
        // SAFETY: setfsgid/setfsuid take plain ids; each returns the previous one.
        unsafe {
            libc::setfsgid(gid);
            libc::setfsuid(uid);
        }
        // Read back (an invalid id changes nothing and returns the current one).
        // SAFETY: as above.
        let now = unsafe { libc::setfsuid(u32::MAX) } as u32;
        if now != uid || caps::clear(None, caps::CapSet::Effective).is_err() {
            return None;
        }
        Some(back)
    }
}

impl Drop for AsUser {
    fn drop(&mut self) {
        // The capabilities first: changing the ids back needs them.
        let _ = caps::set(None, caps::CapSet::Effective, &self.caps);
        // SAFETY: plain ids, then the saved list of gids, live for the call.
        unsafe {
            libc::setfsuid(0);
            libc::setfsgid(0);
            libc::syscall(libc::SYS_setgroups, self.groups.len(), self.groups.as_ptr());
        }
    }
}

/// The FUSE file systems' magic number (`statfs` `f_type`).
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// The sha256 of `path`, opened as whoever the thread acts as (never blocking on a FIFO;
/// a FUSE file or one over [`MAX_HASHED`] is not read).
fn sha256(path: &Path, hashes: &Hashes) -> Option<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() > MAX_HASHED {
        return None;
    }
    let fs = nix::sys::statfs::fstatfs(&file).ok()?;
    if fs.filesystem_type().0 as i64 == FUSE_SUPER_MAGIC {
        return None;
    }
    hashes.get_or(&meta, || {
        use std::io::Read;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => h.update(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        Some(
            h.finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread's line of `/proc/thread-self/status`.
    fn status(field: &str) -> String {
        std::fs::read_to_string("/proc/thread-self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_owned()))
            .unwrap()
    }

    #[test]
    fn acting_as_a_user_takes_their_ids_and_no_capability_and_gives_them_back() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let (caps, groups) = (status("CapEff:"), status("Groups:"));
        {
            let _as = AsUser::become_(65534, &[65534, 4242]).unwrap();
            assert_eq!(status("CapEff:"), "0000000000000000");
            assert!(status("Uid:").ends_with("65534"), "{}", status("Uid:"));
            assert!(status("Gid:").ends_with("65534"), "{}", status("Gid:"));
            assert_eq!(status("Groups:"), "4242 65534");
            // Root's files are out of reach, /proc's magic links too.
            assert!(std::fs::read("/proc/1/environ").is_err());
        }
        assert_eq!(status("CapEff:"), caps);
        assert_eq!(status("Groups:"), groups);
        assert!(status("Uid:").ends_with("\t0"), "{}", status("Uid:"));
    }

    /// A fake host: a CPU, a kernel, cpufreq on two CPUs with different governors.
    #[test]
    fn reads_the_hosts_facts_below_its_root() {
        let root = tempfile::tempdir().unwrap();
        // Searchable by everyone, as / is: the read check walks up through it.
        std::fs::set_permissions(
            root.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let put = |p: &str, v: &str| {
            let f = root.path().join(p.trim_start_matches('/'));
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, v).unwrap();
        };
        put(
            "/proc/cpuinfo",
            "processor\t: 0\nmodel name\t: Test CPU @ 3.0GHz\nmicrocode\t: 0xde\n",
        );
        put("/proc/sys/kernel/osrelease", "6.1.0-test\n");
        put("/proc/cmdline", "ro quiet\n");
        put("/sys/devices/system/cpu/smt/control", "notsupported\n");
        for (cpu, gov) in [("cpu0", "performance"), ("cpu1", "powersave")] {
            put(
                &format!("/sys/devices/system/cpu/{cpu}/cpufreq/scaling_governor"),
                gov,
            );
            put(
                &format!("/sys/devices/system/cpu/{cpu}/cpufreq/scaling_min_freq"),
                "800000",
            );
            put(
                &format!("/sys/devices/system/cpu/{cpu}/cpufreq/scaling_max_freq"),
                "3000000",
            );
        }
        put("/sys/devices/system/cpu/intel_pstate/no_turbo", "1\n");
        put("/usr/bin/prog", "#!/bin/sh\n");
        let prog = root.path().join("usr/bin/prog");
        std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let host = Host::new(root.path());
        let ctx = Context {
            profile: Some("bench".into()),
            profile_state: Some("active".into()),
        };
        let runs = Runs {
            program: "prog",
            path: "/nowhere:/usr/bin",
            cwd: Path::new("/"),
            uid: 0,
            groups: vec![],
        };
        let f = take(&host, &ctx, &runs, &Hashes::default());
        assert_eq!(f.cpu_model.as_deref(), Some("Test CPU @ 3.0GHz"));
        assert_eq!(f.microcode.as_deref(), Some("0xde"));
        assert_eq!(f.kernel.as_deref(), Some("6.1.0-test"));
        assert_eq!(f.cmdline.as_deref(), Some("ro quiet"));
        assert_eq!(f.smt.as_deref(), Some("notsupported"));
        assert_eq!(f.governor.as_deref(), Some("performance,powersave"));
        assert_eq!(f.frequency_limits.as_deref(), Some("800000-3000000"));
        assert_eq!(f.boost.as_deref(), Some("off"));
        assert_eq!(f.profile.as_deref(), Some("bench"));
        assert_eq!(f.executable.as_deref(), Some(prog.to_str().unwrap()));
        // sha256 of "#!/bin/sh\n", computed with sha256sum.
        let sum = "a8076d3d28d21e02012b20eaf7dbf75409a6277134439025f282e368e3305abf";
        assert_eq!(f.executable_sha256.as_deref(), Some(sum));
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        // Another user who may not read it gets no hash; one who may, the same.
        std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o711))
            .unwrap();
        let other = Runs {
            uid: 65534,
            groups: vec![65534],
            ..runs.clone()
        };
        let f = take(&host, &ctx, &other, &Hashes::default());
        assert_eq!(f.executable.as_deref(), Some(prog.to_str().unwrap()));
        assert_eq!(f.executable_sha256, None, "exec-only: not readable");
        std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let f = take(&host, &ctx, &other, &Hashes::default());
        assert_eq!(f.executable_sha256.as_deref(), Some(sum));
        // A program that is not there: no executable.
        let missing = Runs {
            program: "absent",
            ..runs
        };
        assert_eq!(
            take(&host, &ctx, &missing, &Hashes::default()).executable,
            None
        );
    }
}
