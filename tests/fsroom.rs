//! End-to-end tests of file-system clean rooms (`--isolate fs`): real overlays on this
//! host's mounts, in each run's own mount namespace. What a run writes outside its `--rw`
//! directories is gone when it ends, nothing of it is ever mounted on the host (a
//! `kill -9` of the daemon mid-run included), permissions are the caller's.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use cleanroom::{Daemon, is_root_or_skip};

/// The host's mounts a clean room could have left: any naming the daemon's directory (its
/// stage, an overlay's layers) or one of this test's directories (others' mounts come and
/// go while the test runs; they are not looked at).
fn leaked(d: &Daemon) -> Vec<String> {
    let dir = d.dir().display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&dir) || l.contains("cleanroom-fsroom-"))
        .map(str::to_owned)
        .collect()
}

/// A directory outside `/tmp` (which a clean room shows empty), removed when dropped.
fn outside_tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("cleanroom-fsroom-")
        .tempdir_in("/var/lib")
        .unwrap()
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cleanroomctl GLOBAL run ARGS` in a clean room of `/` (`--rw none`) that collects
/// `pattern` into `into`, running `script`.
fn collect_run(
    d: &Daemon,
    (global, args): (&[&str], &[&str]),
    pattern: &str,
    into: &std::path::Path,
    script: &str,
) -> Output {
    let mut all: Vec<&str> = global.to_vec();
    all.push("run");
    all.extend_from_slice(args);
    all.extend([
        "--isolate",
        "fs",
        "--cwd",
        "/",
        "--rw",
        "none",
        "--collect",
        pattern,
    ]);
    all.extend([
        "--collect-to",
        into.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        script,
    ]);
    d.ctl(&all)
}

/// [`collect_run`] as nobody.
fn collect_as_nobody(d: &Daemon, pattern: &str, into: &std::path::Path, script: &str) -> Output {
    collect_run(d, (&[], &["--user", "nobody"]), pattern, into, script)
}

/// `cleanroomctl run ARGS -- true` is refused, saying `says`.
fn refused(d: &Daemon, args: &[&str], says: &str) {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    all.extend(["--", "true"]);
    let out = d.ctl(&all);
    assert!(!out.status.success(), "{args:?}: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(says), "{args:?}: {err}");
}

/// `cleanroomctl run --isolate fs ARGS -- sh -c SCRIPT`.
fn room(d: &Daemon, args: &[&str], script: &str) -> Output {
    let mut all = vec!["run", "--isolate", "fs"];
    all.extend_from_slice(args);
    all.extend(["--", "sh", "-c", script]);
    d.ctl(&all)
}

#[test]
fn writes_vanish_with_the_run_and_rw_directories_keep_theirs() {
    if !is_root_or_skip("writes_vanish_with_the_run_and_rw_directories_keep_theirs") {
        return;
    }
    let d = Daemon::start();
    let before = Vec::<String>::new();
    let marker = format!("cleanroom-fsroom-{}", std::process::id());
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let etc = PathBuf::from("/etc").join(&marker);
    let var_tmp = PathBuf::from("/var/tmp").join(&marker);
    let cache = PathBuf::from(&home).join(".cache").join(&marker);
    // Writes everywhere, read back inside the run; the private directories empty.
    let script = format!(
        "set -e; echo a > {etc}; echo b > {var_tmp}; mkdir -p {cache_dir}; echo c > {cache}; \
         cat {etc} {var_tmp} {cache}; ls -A /tmp /var/tmp /run /dev/shm | grep -v '^/' | \
         grep -vx {marker} | grep -v '^$' || echo empty",
        etc = etc.display(),
        var_tmp = var_tmp.display(),
        cache = cache.display(),
        cache_dir = cache.parent().unwrap().display(),
    );
    let out = room(&d, &["--cwd", "/", "--rw", "none"], &script);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out), "a\nb\nc\nempty\n", "{out:?}");
    for p in [&etc, &var_tmp, &cache] {
        assert!(!p.exists(), "{} reached the host", p.display());
    }
    // A second run does not see the first one's writes.
    let out = room(
        &d,
        &["--cwd", "/", "--rw", "none"],
        &format!("test -e {} && echo seen || echo gone", etc.display()),
    );
    assert_eq!(text(&out), "gone\n", "{out:?}");

    // The working directory (outside /tmp) is where writes reach the host by default; a
    // named --rw directory too; everything else still vanishes.
    let work = outside_tmp();
    let other = outside_tmp();
    // Traversable by anyone: what keeps nobody out below it is the files' own modes.
    std::fs::set_permissions(
        other.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = room(
        &d,
        &[
            "--cwd",
            work.path().to_str().unwrap(),
            "--rw",
            work.path().to_str().unwrap(),
            "--rw",
            other.path().to_str().unwrap(),
        ],
        &format!(
            "echo kept > here; echo kept > {}/there; echo gone > {}",
            other.path().display(),
            etc.display()
        ),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(work.path().join("here")).unwrap(),
        "kept\n"
    );
    assert_eq!(
        std::fs::read_to_string(other.path().join("there")).unwrap(),
        "kept\n"
    );
    assert!(!etc.exists());
    let out = room(
        &d,
        &["--cwd", work.path().to_str().unwrap()],
        "echo default > cwd-default",
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        work.path().join("cwd-default").exists(),
        "the default --rw is the cwd"
    );
    // --rw none: even the working directory's writes vanish.
    let out = room(
        &d,
        &["--cwd", work.path().to_str().unwrap(), "--rw", "none"],
        "echo x > throwaway; cat throwaway",
    );
    assert_eq!(text(&out), "x\n", "{out:?}");
    assert!(!work.path().join("throwaway").exists());

    // --ro shows a directory read-only; --hide shows an empty one.
    std::fs::write(other.path().join("secret"), "s3cret").unwrap();
    let out = room(
        &d,
        &[
            "--cwd",
            "/",
            "--rw",
            "none",
            "--ro",
            work.path().to_str().unwrap(),
            "--hide",
            other.path().to_str().unwrap(),
        ],
        &format!(
            "touch {}/nope 2>/dev/null && echo wrote || echo read-only; ls -A {} | wc -l",
            work.path().display(),
            other.path().display()
        ),
    );
    assert_eq!(text(&out), "read-only\n0\n", "{out:?}");

    // --hide through a symlink hides what it leads to (resolved before the room is built,
    // never mounted beside it); /proc is the run's own (nothing of the host's processes,
    // whose /proc/PID/root would lead back to the host's tree).
    let real = other.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::write(real.join("f"), "x").unwrap();
    let alias = other.path().join("alias");
    std::os::unix::fs::symlink(&real, &alias).unwrap();
    let out = room(
        &d,
        &[
            "--cwd",
            "/",
            "--rw",
            "none",
            "--hide",
            alias.to_str().unwrap(),
        ],
        &format!(
            "ls -A {} | wc -l; ls -A {} | wc -l; cat /proc/1/comm; \
             test -e /proc/{}/root && echo host || echo own",
            alias.display(),
            real.display(),
            std::process::id()
        ),
    );
    assert_eq!(text(&out), "0\n0\nsh\nown\n", "{out:?}");

    // A caller's permissions: nobody cannot write /etc in the overlay either, nor read
    // what it could not read on the host.
    std::fs::set_permissions(
        other.path().join("secret"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let out = room(
        &d,
        &["--user", "nobody", "--cwd", "/", "--rw", "none"],
        &format!(
            "touch /etc/{marker} 2>/dev/null && echo wrote || echo refused; \
             cat {}/secret 2>/dev/null || echo unreadable",
            other.path().display()
        ),
    );
    assert_eq!(text(&out), "refused\nunreadable\n", "{out:?}");

    // --rw and --ro reach only what the caller could reach on the host: a directory below
    // one nobody cannot enter is refused, also through a symlink that leads there.
    let locked = outside_tmp();
    let inner = locked.path().join("inner");
    std::fs::create_dir(&inner).unwrap();
    std::fs::set_permissions(&inner, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    std::fs::set_permissions(
        locked.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let link = other.path().join("link");
    std::os::unix::fs::symlink(&inner, &link).unwrap();
    for (flag, path) in [("--rw", &inner), ("--ro", &inner), ("--rw", &link)] {
        let out = room(
            &d,
            &[
                "--user",
                "nobody",
                "--cwd",
                "/",
                flag,
                path.to_str().unwrap(),
            ],
            "echo ran",
        );
        assert!(!out.status.success(), "{flag} {}: {out:?}", path.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("as uid 65534") && err.contains("Permission denied"),
            "{flag} {}: {err}",
            path.display()
        );
    }
    // Root may: the same directory is bound for a root caller.
    let out = room(
        &d,
        &["--cwd", "/", "--rw", inner.to_str().unwrap()],
        &format!("echo in > {}/file", inner.display()),
    );
    assert!(out.status.success(), "{out:?}");
    assert!(inner.join("file").exists());

    // Nothing of any of it is mounted on the host.
    assert_eq!(leaked(&d), before);
}

#[test]
fn a_clean_room_is_bounded_checked_and_leaves_no_mount_behind_a_killed_daemon() {
    if !is_root_or_skip(
        "a_clean_room_is_bounded_checked_and_leaves_no_mount_behind_a_killed_daemon",
    ) {
        return;
    }
    let before = Vec::<String>::new();
    let state = tempfile::tempdir().unwrap();
    let mut d = Daemon::builder()
        .config("[runs]\nfs_write_mb = 8\n")
        .state_dir(&state.path().join("s"))
        .start();
    // Writes beyond runs.fs_write_mb fail in the run: the host's disk is not the limit.
    let out = room(
        &d,
        &["--cwd", "/", "--rw", "none"],
        "dd if=/dev/zero of=/big bs=1M count=32 2>&1 | grep -o 'No space left on device' | head -n 1",
    );
    assert_eq!(text(&out), "No space left on device\n", "{out:?}");
    // So do writes to each private directory, /tmp included.
    for dir in ["/tmp", "/var/tmp", "/dev/shm", "/run"] {
        let out = room(
            &d,
            &["--cwd", "/", "--rw", "none"],
            &format!(
                "dd if=/dev/zero of={dir}/big bs=1M count=32 2>&1 | \
                 grep -o 'No space left on device' | head -n 1"
            ),
        );
        assert_eq!(text(&out), "No space left on device\n", "{dir}: {out:?}");
    }
    // One bound for all of it: 6 MiB in /tmp and 6 MiB in /var/tmp do not both fit.
    let out = room(
        &d,
        &["--cwd", "/", "--rw", "none"],
        "dd if=/dev/zero of=/tmp/a bs=1M count=6 2>/dev/null && echo first; \
         dd if=/dev/zero of=/var/tmp/b bs=1M count=6 2>&1 | \
         grep -o 'No space left on device' | head -n 1",
    );
    assert_eq!(text(&out), "first\nNo space left on device\n", "{out:?}");
    // Bad requests name what is wrong.
    let bad = |args: &[&str], says: &str| refused(&d, args, says);
    bad(&["--rw", "/srv"], "rw, ro and hide go with isolate fs");
    bad(
        &["--isolate", "fs", "--cwd", "/", "--rw", "/run/x"],
        "/run/x is below /run",
    );
    bad(
        &["--isolate", "fs", "--cwd", "/", "--hide", "/no/such/dir"],
        "/no/such/dir",
    );
    // A kill -9 of the daemon mid-run: the run's mounts were never the host's; a restart
    // ends the run left behind.
    let sleeper = format!("{}.25", 1000 + std::process::id() % 1000);
    let child = std::process::Command::new(cleanroom::bin("cleanroomctl"))
        .args([
            "--socket",
            d.dir().join("cleanroomd.sock").to_str().unwrap(),
        ])
        .args(["run", "--isolate", "fs", "--cwd", "/", "--rw", "none", "--"])
        .args(["sleep", &sleeper])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _child = Guard(child);
    let alive = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .any(|c| c == format!("sleep\0{sleeper}\0").into_bytes())
    };
    let started = std::time::Instant::now();
    while !alive() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the run did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    d.signal(nix::sys::signal::Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(10));
    assert_eq!(leaked(&d), before, "a mount reached the host");
    let d2 = Daemon::builder().state_dir(&state.path().join("s")).start();
    assert!(!alive(), "the run left behind still runs");
    assert_eq!(leaked(&d), before);
    drop(d2);
}

#[test]
fn collect_copies_what_the_run_wrote_as_the_caller_and_lets_the_room_go() {
    if !is_root_or_skip("collect_copies_what_the_run_wrote_as_the_caller_and_lets_the_room_go") {
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let d = Daemon::start();
    let marker = format!("cleanroom-fsroom-{}", std::process::id());
    let etc = PathBuf::from("/etc").join(&marker);
    let work = outside_tmp();
    let out_dir = work.path().join("collected");
    // The clean rooms' stages the daemon holds: descriptors of a tmpfs mounted nowhere (in
    // no namespace after the run's pivot), which name themselves `/`; the daemon holds no
    // other descriptor of `/`.
    let stages = || {
        std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|l| l == std::path::Path::new("/"))
            .count()
    };
    assert_eq!(stages(), 0);
    // While a collecting run runs, the daemon holds its stage (the probe sees it).
    let sleeper = format!("{}.75", 1000 + std::process::id() % 1000);
    let child = std::process::Command::new(cleanroom::bin("cleanroomctl"))
        .args([
            "--socket",
            d.dir().join("cleanroomd.sock").to_str().unwrap(),
        ])
        .args(["run", "--isolate", "fs", "--cwd", "/", "--rw", "none"])
        .args(["--collect", "/x", "--collect-to"])
        .arg(work.path().join("none"))
        .args(["--", "sleep", &sleeper])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Guard(child);
    let begun = std::time::Instant::now();
    while stages() != 1 {
        assert!(
            begun.elapsed() < Duration::from_secs(20),
            "the run's stage never showed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Its client gone, the run is cancelled.
    let _ = child.0.kill();
    let _ = child.0.wait();

    // Root's run with --rw none: files in the private directories, an overlaid /etc and
    // the working directory (relative pattern) are collected; what matches no pattern is
    // not; none of it reaches the host otherwise.
    let script = format!(
        "set -e; echo etc > {etc}; echo log > /var/tmp/a.log; echo tmp > /tmp/b.log; \
         echo no > /var/tmp/skip.txt; echo shm > /dev/shm/c.log; mkdir -p out/x/y; \
         echo xml > out/x/y/r.xml; echo no > out/r.txt; ln -s /etc/passwd /var/tmp/l.log",
        etc = etc.display()
    );
    let out = d.ctl(&[
        "--json",
        "run",
        "--isolate",
        "fs",
        "--cwd",
        work.path().to_str().unwrap(),
        "--rw",
        "none",
        "--collect",
        "/var/tmp/*.log",
        "--collect",
        "/tmp/*.log",
        "--collect",
        "/dev/shm/*",
        "--collect",
        &format!("/etc/{marker}"),
        "--collect",
        "out/**/*.xml",
        "--collect-to",
        out_dir.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert!(out.status.success(), "{out:?}");
    let r = cleanroom::runs::json_of(&out);
    let c = &r["collected"];
    assert_eq!(c["files"], 5, "{r}");
    assert_eq!(c["bytes"], 4 + 4 + 4 + 4 + 4, "{r}");
    assert_eq!(c["into"], out_dir.to_str().unwrap(), "{r}");
    let read = |rel: &str| std::fs::read_to_string(out_dir.join(rel)).ok();
    assert_eq!(read(&format!("etc/{marker}")).as_deref(), Some("etc\n"));
    assert_eq!(read("var/tmp/a.log").as_deref(), Some("log\n"));
    assert_eq!(read("tmp/b.log").as_deref(), Some("tmp\n"));
    assert_eq!(read("dev/shm/c.log").as_deref(), Some("shm\n"));
    assert_eq!(read("out/x/y/r.xml").as_deref(), Some("xml\n"));
    for never in ["var/tmp/skip.txt", "out/r.txt", "var/tmp/l.log"] {
        assert!(!out_dir.join(never).exists(), "{never} was collected");
    }
    assert!(!etc.exists(), "{} reached the host", etc.display());
    assert!(
        !work.path().join("out").exists(),
        "--rw none wrote the host"
    );

    // A user's run: the files are theirs, the copy is made as them (a file the run made
    // unreadable is not read: left out, and said why), and the human summary says so.
    let theirs = work.path().join("nobody");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::set_permissions(work.path(), PermissionsExt::from_mode(0o755)).unwrap();
    nix::unistd::chown(&theirs, Some(65534.into()), Some(65534.into())).unwrap();
    let out = collect_as_nobody(
        &d,
        "/var/tmp/*",
        &theirs.join("into"),
        "echo mine > /var/tmp/mine; echo locked > /var/tmp/locked; chmod 000 /var/tmp/locked",
    );
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "1 file (5 B) into {}, 1 left out",
            theirs.join("into").display()
        )),
        "{err}"
    );
    assert!(
        err.contains("collect: /var/tmp/locked: Permission denied"),
        "{err}"
    );
    let mine = theirs.join("into/var/tmp/mine");
    let md = std::fs::metadata(&mine).unwrap();
    assert_eq!((md.uid(), md.gid()), (65534, 65534), "owned by the caller");
    assert_eq!(std::fs::metadata(theirs.join("into")).unwrap().uid(), 65534);

    // Where the caller cannot write, refused before anything runs.
    let root_only = work.path().join("root-only");
    std::fs::create_dir(&root_only).unwrap();
    std::fs::set_permissions(&root_only, PermissionsExt::from_mode(0o700)).unwrap();
    let out = collect_as_nobody(&d, "*", &root_only.join("x"), "echo ran");
    assert!(!out.status.success(), "{out:?}");
    assert!(!text(&out).contains("ran"), "it ran: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("collect_to:") && err.contains("Permission denied"),
        "{err}"
    );
    // Bad patterns and requests are named.
    let bad = |args: &[&str], says: &str| refused(&d, args, says);
    bad(
        &["--cwd", "/", "--collect", "*.log"],
        "collect goes with isolate fs",
    );
    bad(
        &["--cwd", "/", "--isolate", "fs", "--collect", "[oops"],
        "\"[oops\" is not a glob pattern",
    );
    bad(
        &["--cwd", "/", "--isolate", "fs", "--collect", "../x"],
        "has `..`",
    );
    // A relative pattern where the working directory's writes reach the host.
    bad(
        &[
            "--cwd",
            work.path().to_str().unwrap(),
            "--isolate",
            "fs",
            "--collect",
            "out/*",
        ],
        "whose writes reach the host",
    );

    // Every stage kept for collecting was let go (the cancelled run's too), and nothing
    // is mounted on the host.
    let begun = std::time::Instant::now();
    while stages() != 0 {
        assert!(
            begun.elapsed() < Duration::from_secs(20),
            "a clean room's stage is still held"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(leaked(&d), Vec::<String>::new());
}

#[test]
fn collect_is_bounded_and_cannot_be_turned_against_the_caller() {
    if !is_root_or_skip("collect_is_bounded_and_cannot_be_turned_against_the_caller") {
        return;
    }
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let d = Daemon::builder()
        .config("[runs]\nfs_write_mb = 16\n")
        .start();
    // Nobody's working directory (its writes reach the host), and another of theirs.
    let work = outside_tmp();
    std::fs::set_permissions(work.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let (cwd, elsewhere) = (work.path().join("cwd"), work.path().join("elsewhere"));
    for dir in [&cwd, &elsewhere] {
        std::fs::create_dir(dir).unwrap();
        nix::unistd::chown(dir, Some(65534.into()), Some(65534.into())).unwrap();
    }
    let nobody = |collect: &[&str], script: &str| {
        let mut args = vec![
            "--json",
            "run",
            "--user",
            "nobody",
            "--isolate",
            "fs",
            "--cwd",
            cwd.to_str().unwrap(),
        ];
        for c in collect {
            args.extend(["--collect", c]);
        }
        args.extend(["--collect-to", "collected", "--", "sh", "-c", script]);
        // The client resolves --collect-to from its own directory.
        let out = std::process::Command::new(cleanroom::bin("cleanroomctl"))
            .current_dir(&cwd)
            .args([
                "--socket",
                d.dir().join("cleanroomd.sock").to_str().unwrap(),
            ])
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        cleanroom::runs::json_of(&out)["collected"].clone()
    };

    // The run owns the destination (in its rw working directory): a symlink it puts on
    // the way is not followed, a FIFO it leaves at a file's place does not hang the copy.
    let c = nobody(
        &["/var/tmp/*.log"],
        &format!(
            "mkdir -p collected/var collected/dev/shm && ln -s {} collected/var/tmp && \
             mkfifo collected/dev/shm/f.log && echo a > /var/tmp/a.log && echo f > /dev/shm/f.log",
            elsewhere.display()
        ),
    );
    assert_eq!(c["files"], 0, "{c}");
    assert!(
        c["errors"][0]
            .as_str()
            .unwrap()
            .contains("tmp in the destination is not a directory (a symlink is not followed)"),
        "{c}"
    );
    assert_eq!(
        std::fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "written through the symlink"
    );
    let c = nobody(&["/dev/shm/*"], "echo f > /dev/shm/f.log");
    assert_eq!(c["files"], 1, "{c}");
    let f = cwd.join("collected/dev/shm/f.log");
    assert!(std::fs::symlink_metadata(&f).unwrap().file_type().is_file());
    assert!(!std::fs::symlink_metadata(&f).unwrap().file_type().is_fifo());
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "f\n");

    std::fs::remove_file(cwd.join("collected/var/tmp")).unwrap();
    // A sparse file far larger than the room: copied up to the room's size, then stopped.
    let c = nobody(&["/var/tmp/*"], "truncate -s 1T /var/tmp/huge");
    assert_eq!(c["files"], 0, "{c}");
    assert_eq!(c["left_out"], 1, "{c}");
    assert!(
        c["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("stopped at 16777216 bytes, the clean room's size"),
        "{c}"
    );
    assert!(!cwd.join("collected/var/tmp/huge").exists());
    // Only whole files land: no temporary one is left.
    let leftovers: Vec<_> = std::fs::read_dir(cwd.join("collected/var/tmp"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".cleanroom-collect")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The batch's last run is the one collected (a counter in the working directory tells
    // the runs apart: a warm-up and three repeats).
    std::fs::write(cwd.join("count"), "0").unwrap();
    nix::unistd::chown(&cwd.join("count"), Some(65534.into()), None).unwrap();
    let mut args = vec![
        "run",
        "--user",
        "nobody",
        "--isolate",
        "fs",
        "--warmup",
        "1",
        "--repeat",
        "3",
        "--collect",
        "/var/tmp/n",
        "--cwd",
    ];
    args.push(cwd.to_str().unwrap());
    let into = work.path().join("elsewhere/runs");
    args.extend(["--collect-to", into.to_str().unwrap(), "--", "sh", "-c"]);
    args.push("n=$(($(cat count) + 1)); echo $n > count; echo $n > /var/tmp/n");
    let out = d.ctl(&args);
    assert!(out.status.success(), "{out:?}");
    // (Noisy repeats are measured again: at least four runs, maybe more.)
    let runs = std::fs::read_to_string(cwd.join("count")).unwrap();
    assert!(runs.trim().parse::<u32>().unwrap() >= 4, "{runs}");
    assert_eq!(
        std::fs::read_to_string(into.join("var/tmp/n")).unwrap(),
        runs
    );
}

#[test]
fn collect_stops_at_its_bounds_on_files_and_entries() {
    if !is_root_or_skip("collect_stops_at_its_bounds_on_files_and_entries") {
        return;
    }
    let d = Daemon::start();
    let work = outside_tmp();
    let into = work.path().join("into");
    // 200 100 empty files (no block of the room's size each, an inode each).
    let out = collect_run(
        &d,
        (&["--json"], &[]),
        "/var/tmp/many/*",
        &into,
        "mkdir /var/tmp/many && cd /var/tmp/many && seq 200100 | xargs touch",
    );
    assert!(out.status.success(), "{out:?}");
    let c = &cleanroom::runs::json_of(&out)["collected"];
    assert_eq!(c["files"], 10_000, "{c}");
    let errors = c["errors"].to_string();
    assert!(errors.contains("at most 10000 files are collected"), "{c}");
    assert!(errors.contains("stopped after 200000 entries"), "{c}");
    assert_eq!(
        std::fs::read_dir(into.join("var/tmp/many"))
            .unwrap()
            .count(),
        10_000
    );
    // 70 directories deep: looked into 64 deep, and said so.
    let out = collect_run(
        &d,
        (&["--json"], &[]),
        "/var/tmp/**/f",
        &into,
        "cd /var/tmp && for i in $(seq 70); do mkdir d && cd d; done && echo x > f && \
         echo y > /var/tmp/d/f",
    );
    assert!(out.status.success(), "{out:?}");
    let c = &cleanroom::runs::json_of(&out)["collected"];
    assert_eq!(c["files"], 1, "the shallow one alone: {c}");
    assert!(
        c["errors"]
            .to_string()
            .contains("more than 64 directories deep, not looked into"),
        "{c}"
    );
}

/// A child process killed and reaped when the test ends, however it ends.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
