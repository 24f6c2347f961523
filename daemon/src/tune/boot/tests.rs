//! The boot-loader knobs on fake host roots: detection, the files written, the journal,
//! revert, pending reboot against a fake `/proc/cmdline`. The generators are recorded, not
//! run (a fake root has none); `tests/boot/grub.sh` runs the real `update-grub` in a
//! Debian root.

use std::sync::Arc;

use super::*;
use crate::host::fake_root;
use crate::testing::{Commands, Tuning};
use crate::tune::profile::ProfileSet;
use crate::tune::{OnStart, apply, recover, revert, verify};

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn arguments_are_checked_with_errors_naming_them() {
    let ok: &[&[&str]] = &[
        &["nohz_full=2-3", "rcu_nocbs=2-3"],
        &[
            "isolcpus=managed_irq,domain,2-7",
            "mitigations=off",
            "nosmt",
        ],
        &["console=tty0", "console=ttyS0,115200n8"],
        &[
            "intel_idle.max_cstate=1",
            "processor.max_cstate=1",
            "idle=poll",
        ],
    ];
    for args in ok {
        assert_eq!(check_args(&strings(args)), Ok(()), "{args:?}");
    }
    let bad: &[(&[&str], usize, &str)] = &[
        (&[], 0, "empty list"),
        (&["nohz_full=2-3", ""], 1, "empty argument"),
        (&["a b"], 0, "white space"),
        (&["a\nb"], 0, "white space"),
        (&["quiet\t"], 0, "white space"),
        (&["x=\"a\""], 0, "outside the allowed set"),
        (&["x='a'"], 0, "outside the allowed set"),
        (&["x=$(reboot)"], 0, "outside the allowed set"),
        (&["x=a;b"], 0, "outside the allowed set"),
        (&["x=a\\b"], 0, "outside the allowed set"),
        (&["=1"], 0, "outside the allowed set"),
        (
            &["nohz_full=2-3", "nohz_full=4"],
            1,
            "contradicts \"nohz_full=2-3\"",
        ),
        (&["quiet", "quiet"], 1, "listed twice"),
        (&["root=/dev/sda1"], 0, "refused"),
        (&["init=/bin/sh"], 0, "refused"),
        (&["rd.break"], 0, "refused"),
        (&["selinux=0"], 0, "refused"),
        (&["--"], 0, "refused"),
        (&["single"], 0, "refused"),
    ];
    for (args, at, want) in bad {
        let (i, e) = check_args(&strings(args)).unwrap_err();
        assert_eq!(i, *at, "{args:?}: {e}");
        assert!(e.contains(want), "{args:?}: {e:?} lacks {want:?}");
        if let Some(arg) = args.get(*at).filter(|a| !a.is_empty()) {
            assert!(e.contains(&format!("{arg:?}")), "{e} does not name {arg:?}");
        }
    }
    let long = vec!["x=".to_owned() + &"1".repeat(300)];
    assert!(check_args(&long).unwrap_err().1.contains("longer than"));
}

#[test]
fn partition_args_for_isolated_cpus() {
    let table: &[(&[u32], &[&str])] = &[
        (
            &[2, 3],
            &[
                "nohz_full=2-3",
                "rcu_nocbs=2-3",
                "isolcpus=managed_irq,domain,2-3",
            ],
        ),
        (
            &[1, 3, 5, 6, 7],
            &[
                "nohz_full=1,3,5-7",
                "rcu_nocbs=1,3,5-7",
                "isolcpus=managed_irq,domain,1,3,5-7",
            ],
        ),
        (
            &[4],
            &[
                "nohz_full=4",
                "rcu_nocbs=4",
                "isolcpus=managed_irq,domain,4",
            ],
        ),
        (&[], &[]),
    ];
    for (cpus, want) in table {
        let set: BTreeSet<u32> = cpus.iter().copied().collect();
        let args = partition_args(&set);
        assert_eq!(args, strings(want), "{cpus:?}");
        if !args.is_empty() {
            assert_eq!(
                check_args(&args),
                Ok(()),
                "derived arguments pass the checks"
            );
        }
    }
}

#[test]
fn proc_cmdline_is_split_as_the_kernel_does() {
    let table: &[(&str, &[&str])] = &[
        ("ro quiet\n", &["ro", "quiet"]),
        (
            "BOOT_IMAGE=/vmlinuz root=UUID=ab ro nohz_full=2-3 -- --init-arg x\n",
            &["BOOT_IMAGE=/vmlinuz", "root=UUID=ab", "ro", "nohz_full=2-3"],
        ),
        ("a=\"b c\"  d", &["a=b c", "d"]),
        ("\"quoted word\" --", &["quoted word"]),
        ("", &[]),
    ];
    for (text, want) in table {
        assert_eq!(parse_cmdline(text), strings(want), "{text:?}");
    }
}

#[test]
fn the_grub_drop_in_is_shell_quoted_and_reads_back() {
    let args = strings(&["nohz_full=2-3", "rcu_nocbs=2-3"]);
    let text = dropin_text(&args);
    assert_eq!(
        text,
        "# Kernel arguments of the cleanroom profile in force (cleanroomd writes this file;\n\
         # `cleanroomctl profile revert` removes it). Recovery entries do not get them.\n\
         GRUB_CMDLINE_LINUX_DEFAULT=\"${GRUB_CMDLINE_LINUX_DEFAULT}\"' nohz_full=2-3 rcu_nocbs=2-3'\n"
    );
    assert_eq!(dropin_value(Some(&text)), "nohz_full=2-3 rcu_nocbs=2-3");
    assert_eq!(dropin_value(None), ABSENT);
    // Anything else is someone else's content, kept exactly (as a JSON string).
    let theirs = "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\n";
    let value = dropin_value(Some(theirs));
    assert_eq!(value, "\"GRUB_CMDLINE_LINUX_DEFAULT=\\\"quiet\\\"\\n\"");
    assert_eq!(dropin_content(&value).unwrap().as_deref(), Some(theirs));
    // An edit of the arguments reads as those arguments; anything added makes it theirs.
    let edited = text.replace("2-3'", "2-4'");
    assert_eq!(dropin_value(Some(&edited)), "nohz_full=2-3 rcu_nocbs=2-4");
    let added = format!("{text}GRUB_TIMEOUT=1\n");
    assert!(dropin_value(Some(&added)).starts_with('"'));
    assert_eq!(dropin_content(ABSENT).unwrap(), None);
    assert_eq!(
        dropin_content("nohz_full=2-3 rcu_nocbs=2-3").unwrap(),
        Some(text)
    );
}

const DEBIAN: &[(&str, &str)] = &[
    (
        "/etc/default/grub",
        "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\n",
    ),
    ("/usr/sbin/update-grub", ""),
    ("/usr/sbin/grub-mkconfig", ""),
    ("/boot/grub/grub.cfg", ""),
];

#[test]
fn the_boot_loader_is_detected_from_the_root() {
    let entry = (
        "/boot/loader/entries/abc-6.1.conf",
        "title x\noptions root=UUID=1 ro\n",
    );
    type Case<'a> = (Vec<(&'a str, &'a str)>, Result<Loader, &'a str>);
    let cases: Vec<Case<'_>> = vec![
        (
            DEBIAN.to_vec(),
            Ok(Loader::Grub {
                generator: vec!["/usr/sbin/update-grub"],
            }),
        ),
        (
            vec![
                ("/etc/default/grub", ""),
                ("/usr/sbin/grub-mkconfig", ""),
                ("/boot/grub/grub.cfg", ""),
            ],
            Ok(Loader::Grub {
                generator: vec!["/usr/sbin/grub-mkconfig", "-o", "/boot/grub/grub.cfg"],
            }),
        ),
        (
            vec![("/etc/default/grub", ""), ("/usr/sbin/grubby", ""), entry],
            Ok(Loader::Grubby {
                program: "/usr/sbin/grubby",
            }),
        ),
        (
            vec![
                ("/usr/bin/kernel-install", ""),
                ("/proc/sys/kernel/osrelease", "6.1.0-9-amd64\n"),
                ("/usr/lib/modules/6.1.0-9-amd64/vmlinuz", ""),
                entry,
            ],
            Ok(Loader::KernelInstall {
                release: "6.1.0-9-amd64".into(),
            }),
        ),
        (
            vec![
                ("/usr/bin/kernel-install", ""),
                ("/proc/sys/kernel/osrelease", "6.1.0-9-amd64\n"),
                entry,
            ],
            Err("no image of the running kernel"),
        ),
        (
            vec![("/usr/sbin/update-grub", "")],
            Err("no supported boot loader"),
        ),
        (
            vec![("/usr/sbin/grubby", "")],
            Err("no supported boot loader"),
        ),
    ];
    for (files, want) in cases {
        let (_d, host) = fake_root(&files);
        match (detect(&host), want) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{files:?}"),
            (Err(got), Err(want)) => assert!(got.contains(want), "{files:?}: {got}"),
            (got, want) => panic!("{files:?}: {got:?}, expected {want:?}"),
        }
    }
    // No boot loader: the setting is one unsupported knob with the reason.
    let (_d, host) = fake_root(&[("/proc/cmdline", "ro\n")]);
    let planned = expand(&host, &strings(&["nohz_full=1"]));
    assert_eq!(planned.len(), 1);
    assert!(
        matches!(&planned[0].want, Want::Unsupported(w) if w.contains("no supported boot loader")),
        "{planned:?}"
    );
}

/// A fake Debian host with GRUB, a store, and profiles `iso` (two arguments) and `other`
/// (a sysctl only); its programs are recorded.
struct Fixture {
    t: Tuning,
    commands: Arc<Commands>,
}

impl std::ops::Deref for Fixture {
    type Target = Tuning;
    fn deref(&self) -> &Tuning {
        &self.t
    }
}

impl Fixture {
    fn new(extra: &[(&str, &str)]) -> Self {
        let mut files = DEBIAN.to_vec();
        files.extend([
            ("/proc/sys/kernel/random/boot_id", "boot-1\n"),
            (
                "/proc/cmdline",
                "BOOT_IMAGE=/boot/vmlinuz root=UUID=1 ro quiet\n",
            ),
            ("/proc/sys/vm/swappiness", "60\n"),
        ]);
        files.extend(extra);
        let mut t = Tuning::new(
            &files,
            &[
                (
                    "iso",
                    "[bootloader]\ncmdline = [\"nohz_full=2-3\", \"rcu_nocbs=2-3\"]\n",
                ),
                ("other", "[sysctl]\n\"vm.swappiness\" = 5\n"),
            ],
        );
        let commands = Commands::new();
        t.host = t.host.clone().with_commands(Arc::clone(&commands));
        Self { t, commands }
    }

    fn dropin(&self) -> Option<String> {
        std::fs::read_to_string(self.host.path(GRUB_DROPIN).unwrap()).ok()
    }

    fn set(&self, abs: &str, text: &str) {
        std::fs::write(self.host.path(abs).unwrap(), text).unwrap();
    }

    fn rows(&self) -> Vec<journal::Row> {
        journal::rows(&self.store.lock_blocking()).unwrap()
    }
}

fn boot_item(r: &cleanroom_proto::TuneResult) -> &KnobResult {
    r.items
        .iter()
        .find(|i| i.path == GRUB_DROPIN)
        .unwrap_or_else(|| panic!("no drop-in item: {r:?}"))
}

#[test]
fn apply_writes_the_drop_in_journaled_then_pending_until_proc_cmdline_shows_it() {
    let f = Fixture::new(&[]);
    let r = apply(f.ctx(), "iso", false, false).unwrap();
    assert!(r.ok, "{r:?}");
    let item = boot_item(&r);
    assert_eq!(item.status, KnobStatus::PendingReboot);
    assert_eq!(
        (item.before.as_deref(), item.after.as_deref()),
        (Some(ABSENT), Some("nohz_full=2-3 rcu_nocbs=2-3"))
    );
    assert!(
        item.reason
            .as_deref()
            .unwrap()
            .contains("lacks nohz_full=2-3 rcu_nocbs=2-3"),
        "{item:?}"
    );
    assert_eq!(
        f.dropin().as_deref(),
        Some(dropin_text(&strings(&["nohz_full=2-3", "rcu_nocbs=2-3"])).as_str())
    );
    assert_eq!(f.commands.take(), ["/usr/sbin/update-grub"]);
    let rows = f.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (
            rows[0].path.as_str(),
            rows[0].kind.as_str(),
            rows[0].original.as_str()
        ),
        (GRUB_DROPIN, "grub-dropin", ABSENT),
        "the original (no file) is journaled"
    );

    // verify: the file is right, the running kernel has not booted with it yet.
    let v = verify(f.ctx()).unwrap();
    assert!(v.ok, "a pending reboot is not drift: {v:?}");
    assert_eq!(boot_item(&v).status, KnobStatus::PendingReboot);
    assert_eq!(running_item(&v).status, KnobStatus::PendingReboot);
    // Rebooted with the arguments: applied, and verify says ok.
    f.set(
        "/proc/cmdline",
        "BOOT_IMAGE=/boot/vmlinuz root=UUID=1 ro quiet nohz_full=2-3 rcu_nocbs=2-3\n",
    );
    let v = verify(f.ctx()).unwrap();
    assert_eq!(boot_item(&v).status, KnobStatus::Ok);
    assert_eq!(running_item(&v).status, KnobStatus::Applied, "{v:?}");
    let again = apply(f.ctx(), "iso", false, false).unwrap();
    assert_eq!(boot_item(&again).status, KnobStatus::Unchanged);
    assert!(f.commands.take().is_empty(), "nothing to regenerate");

    // Someone edits the drop-in: verify says drifted.
    f.set(GRUB_DROPIN, "GRUB_CMDLINE_LINUX_DEFAULT=\"nohz_full=1\"\n");
    let v = verify(f.ctx()).unwrap();
    assert!(!v.ok);
    assert_eq!(boot_item(&v).status, KnobStatus::Drifted);
}

/// verify's row of the running kernel's command line.
fn running_item(r: &cleanroom_proto::TuneResult) -> &KnobResult {
    r.items
        .iter()
        .find(|i| i.path == "/proc/cmdline")
        .unwrap_or_else(|| panic!("no row of /proc/cmdline: {r:?}"))
}

#[test]
fn revert_removes_the_drop_in_and_regenerates() {
    let f = Fixture::new(&[]);
    assert!(apply(f.ctx(), "iso", false, false).unwrap().ok);
    f.commands.take();
    let r = revert(f.ctx(), false).unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(boot_item(&r).status, KnobStatus::Restored);
    assert_eq!(f.dropin(), None, "the file is gone");
    assert_eq!(f.commands.take(), ["/usr/sbin/update-grub"]);
    assert!(f.rows().is_empty());
}

#[test]
fn a_drop_in_someone_changed_is_a_conflict_and_force_puts_the_original_back() {
    let f = Fixture::new(&[]);
    assert!(apply(f.ctx(), "iso", false, false).unwrap().ok);
    f.set(GRUB_DROPIN, "# mine\n");
    let r = revert(f.ctx(), false).unwrap();
    assert!(!r.ok);
    assert_eq!(boot_item(&r).status, KnobStatus::Conflict);
    assert_eq!(f.dropin().as_deref(), Some("# mine\n"), "left alone");
    let forced = revert(f.ctx(), true).unwrap();
    assert!(forced.ok, "{forced:?}");
    assert_eq!(f.dropin(), None);
}

#[test]
fn a_file_there_before_is_journaled_and_put_back() {
    let theirs = "GRUB_CMDLINE_LINUX_DEFAULT=\"$GRUB_CMDLINE_LINUX_DEFAULT mitigations=off\"\n";
    let f = Fixture::new(&[(GRUB_DROPIN, theirs)]);
    assert!(apply(f.ctx(), "iso", false, false).unwrap().ok);
    assert_eq!(f.rows()[0].original, serde_json::to_string(theirs).unwrap());
    assert!(revert(f.ctx(), false).unwrap().ok);
    assert_eq!(f.dropin().as_deref(), Some(theirs), "exactly the original");
}

#[test]
fn a_failing_generator_fails_the_apply_and_the_drop_in_is_rolled_back() {
    let f = Fixture::new(&[]);
    f.commands
        .fail_next("grub-probe: error: cannot find a device for /");
    let r = apply(f.ctx(), "iso", false, false).unwrap();
    assert!(!r.ok);
    let item = boot_item(&r);
    assert_eq!(item.status, KnobStatus::Failed);
    let reason = item.reason.as_deref().unwrap();
    assert!(
        reason.contains("/usr/sbin/update-grub") && reason.contains("grub-probe"),
        "{reason}"
    );
    assert_eq!(f.dropin(), None, "rolled back");
    assert_eq!(
        f.commands.take(),
        ["/usr/sbin/update-grub", "/usr/sbin/update-grub"],
        "the configuration made again without it"
    );
    assert!(f.rows().is_empty());
}

#[test]
fn switching_to_a_profile_without_the_section_puts_the_original_back() {
    let f = Fixture::new(&[]);
    assert!(apply(f.ctx(), "iso", false, false).unwrap().ok);
    f.commands.take();
    let r = apply(f.ctx(), "other", false, false).unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(boot_item(&r).status, KnobStatus::Restored);
    assert_eq!(f.dropin(), None);
    assert_eq!(f.commands.take(), ["/usr/sbin/update-grub"]);
}

#[test]
fn the_boot_loader_rows_outlive_a_reboot() {
    let f = Fixture::new(&[]);
    assert!(apply(f.ctx(), "iso", false, false).unwrap().ok);
    assert!(apply(f.ctx(), "other", false, true).is_ok());
    assert!(apply(f.ctx(), "iso", false, false).unwrap().ok);
    f.commands.take();
    // A new boot, with the arguments: kernel values' originals go, the drop-in's stays.
    f.set("/proc/sys/kernel/random/boot_id", "boot-2\n");
    f.set(
        "/proc/cmdline",
        "root=UUID=1 ro quiet nohz_full=2-3 rcu_nocbs=2-3\n",
    );
    let said = recover(f.ctx(), OnStart::Reapply).unwrap();
    assert!(said.contains("re-applied"), "{said}");
    assert!(f.commands.take().is_empty(), "the drop-in already holds it");
    let rows = f.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].original, ABSENT,
        "not re-captured as cleanroom's own file"
    );
    assert_eq!(boot_item(&verify(f.ctx()).unwrap()).status, KnobStatus::Ok);
    // Configured to revert at start: after a reboot the drop-in goes too.
    f.set("/proc/sys/kernel/random/boot_id", "boot-3\n");
    let said = recover(f.ctx(), OnStart::Revert).unwrap();
    assert!(said.contains("boot loader changes reverted"), "{said}");
    assert_eq!(f.dropin(), None);
    assert_eq!(f.commands.take(), ["/usr/sbin/update-grub"]);
    assert!(f.rows().is_empty());
}

#[test]
fn profile_errors_name_the_file_line_and_argument() {
    let table: &[(&str, &[&str])] = &[
        (
            "[bootloader]\ncmdline = [\n  \"nohz_full=2-3\",\n  \"root=/dev/sda1\",\n]\n",
            &[
                "line 4",
                "bootloader.cmdline",
                "\"root=/dev/sda1\"",
                "refused",
            ],
        ),
        (
            "[bootloader]\ncmdline = [\"a b\"]\n",
            &["line 2", "bootloader.cmdline", "\"a b\"", "white space"],
        ),
        (
            "[bootloader]\ncmdline = [\"nohz_full=1\",\n \"nohz_full=2\"]\n",
            &["line 3", "contradicts"],
        ),
        ("[bootloader]\ncmdline = []\n", &["line 2", "empty list"]),
        ("[bootloader]\nargs = [\"x\"]\n", &["line 2", "args"]),
        (
            "[bootloader]\ncmdline = \"x\"\n",
            &["line 2", "bootloader.cmdline"],
        ),
    ];
    for (text, wants) in table {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.toml"), text).unwrap();
        let s = ProfileSet::load(&[dir.path().to_owned()], &[]);
        let e = s.get("p").unwrap_err();
        assert!(e.contains("p.toml"), "{e}");
        for w in *wants {
            assert!(e.contains(w), "{text:?}: {e:?} lacks {w:?}");
        }
    }
}

#[test]
fn grubby_knobs_are_one_per_argument_name() {
    let entry = |opts: &str| format!("title Fedora\nlinux /vmlinuz-6.8\noptions {opts}\n");
    let a = entry("root=UUID=1 ro nohz_full=1");
    let b = entry("$kernelopts");
    let (_d, host) = fake_root(&[
        ("/usr/sbin/grubby", ""),
        ("/boot/loader/entries/a-6.8.conf", &a),
        ("/boot/loader/entries/b-6.9.conf", &b),
        (
            "/boot/grub2/grubenv",
            "kernelopts=root=UUID=1 ro nohz_full=1\n",
        ),
        ("/proc/cmdline", "root=UUID=1 ro nohz_full=1\n"),
    ]);
    let commands = Commands::new();
    let host = host.with_commands(Arc::clone(&commands));
    let planned = expand(&host, &strings(&["nohz_full=2-3", "rcu_nocbs=2-3"]));
    let got: Vec<(&str, Option<&str>, &Want)> = planned
        .iter()
        .map(|p| (p.path.as_str(), p.current.as_deref(), &p.want))
        .collect();
    assert_eq!(
        got,
        [
            (
                "/boot/loader/entries#nohz_full",
                Some("nohz_full=1"),
                &Want::Value("nohz_full=2-3".into())
            ),
            (
                "/boot/loader/entries#rcu_nocbs",
                Some(ABSENT),
                &Want::Value("rcu_nocbs=2-3".into())
            ),
        ]
    );
    write(&host, &planned[0].path, Kind::GrubbyArg, "nohz_full=2-3").unwrap();
    write(&host, &planned[1].path, Kind::GrubbyArg, ABSENT).unwrap();
    assert_eq!(
        commands.take(),
        [
            "/usr/sbin/grubby --update-kernel=ALL --remove-args=nohz_full",
            "/usr/sbin/grubby --update-kernel=ALL --args=nohz_full=2-3",
            "/usr/sbin/grubby --update-kernel=ALL --remove-args=rcu_nocbs",
        ]
    );
    // Entries that disagree: read as each value, and not written back blindly.
    std::fs::write(
        host.path("/boot/loader/entries/a-6.8.conf").unwrap(),
        entry("root=UUID=1 ro nohz_full=2-3"),
    )
    .unwrap();
    let mixed = read(&host, "/boot/loader/entries#nohz_full", Kind::GrubbyArg).unwrap();
    assert_eq!(mixed, "nohz_full=1 | nohz_full=2-3");
    let e = write(
        &host,
        "/boot/loader/entries#nohz_full",
        Kind::GrubbyArg,
        &mixed,
    )
    .unwrap_err();
    assert!(e.to_string().contains("different values"), "{e}");
    // pending: only the knob's own argument counts.
    let mut items = vec![KnobResult {
        knob: "k".into(),
        path: "/boot/loader/entries#rcu_nocbs".into(),
        before: None,
        after: None,
        status: KnobStatus::Applied,
        reason: None,
    }];
    mark_pending(
        &host,
        &strings(&["nohz_full=1", "rcu_nocbs=2-3"]),
        &mut items,
    );
    assert_eq!(items[0].status, KnobStatus::PendingReboot);
    assert!(
        items[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("lacks rcu_nocbs=2-3")
    );
}

#[test]
fn kernel_install_gets_the_running_command_line_with_the_arguments() {
    let (_d, host) = fake_root(&[
        ("/etc/os-release", ""),
        ("/usr/bin/kernel-install", ""),
        ("/proc/sys/kernel/osrelease", "6.8.0\n"),
        ("/usr/lib/modules/6.8.0/vmlinuz", ""),
        ("/boot/loader/entries/x-6.8.0.conf", "options root=UUID=1\n"),
        (
            "/proc/cmdline",
            "BOOT_IMAGE=/vmlinuz-6.8.0 initrd=/initrd root=UUID=1 rw nohz_full=1\n",
        ),
    ]);
    let commands = Commands::new();
    let host = host.with_commands(Arc::clone(&commands));
    let args = strings(&["nohz_full=2-3", "rcu_nocbs=2-3"]);
    let planned = expand(&host, &args);
    assert_eq!(planned.len(), 1);
    assert_eq!(planned[0].current.as_deref(), Some(ABSENT));
    let want = "root=UUID=1 rw nohz_full=2-3 rcu_nocbs=2-3";
    assert_eq!(planned[0].want, Want::Value(want.into()));
    write(&host, KERNEL_CMDLINE, Kind::KernelCmdline, want).unwrap();
    assert_eq!(host.read(KERNEL_CMDLINE).unwrap(), format!("{want}\n"));
    assert_eq!(
        commands.take(),
        ["/usr/bin/kernel-install add 6.8.0 /usr/lib/modules/6.8.0/vmlinuz"]
    );
    // Another profile's arguments go onto the journaled original, not onto the file
    // the first profile wrote.
    let row = journal::Row {
        path: KERNEL_CMDLINE.into(),
        knob: "k".into(),
        kind: "kernel-cmdline".into(),
        original: "root=UUID=1 rw quiet".into(),
        written: want.into(),
        pending_prev: None,
    };
    let mut planned = expand(&host, &strings(&["isolcpus=4"]));
    rebase(&host, &mut planned, &[row], &strings(&["isolcpus=4"]));
    assert_eq!(
        planned[0].want,
        Want::Value("root=UUID=1 rw quiet isolcpus=4".into())
    );
    write(&host, KERNEL_CMDLINE, Kind::KernelCmdline, ABSENT).unwrap();
    assert!(
        !host.exists(KERNEL_CMDLINE),
        "an absent original removes the file"
    );
}

/// The daemon died between writing the drop-in and running update-grub: the restart's
/// re-apply finds the file holding its value, and still makes the configuration again.
#[test]
fn an_apply_cut_short_before_the_generator_is_finished_by_the_restart() {
    let f = Fixture::new(&[]);
    let args = strings(&["nohz_full=2-3", "rcu_nocbs=2-3"]);
    journal::begin_apply(
        &mut f.store.lock_blocking(),
        "iso",
        "boot-1",
        &[journal::Change {
            path: GRUB_DROPIN,
            knob: "bootloader cmdline (GRUB drop-in)",
            kind: "grub-dropin",
            current: ABSENT,
            desired: "nohz_full=2-3 rcu_nocbs=2-3",
        }],
    )
    .unwrap();
    std::fs::create_dir_all(f.host.path("/etc/default/grub.d").unwrap()).unwrap();
    f.set(GRUB_DROPIN, &dropin_text(&args));
    let said = recover(f.ctx(), OnStart::Reapply).unwrap();
    assert!(said.contains("re-applied"), "{said}");
    assert_eq!(f.commands.take(), ["/usr/sbin/update-grub"]);
    // Settled: a later apply has nothing to do.
    assert!(apply(f.ctx(), "iso", false, false).unwrap().ok);
    assert!(f.commands.take().is_empty());
    assert_eq!(f.rows()[0].original, ABSENT);
}

/// The daemon died between removing the drop-in and running update-grub: the restart
/// finishes the revert by making the configuration again; a generator that fails there
/// keeps the row, to be tried by the next revert.
#[test]
fn a_revert_cut_short_before_the_generator_is_finished_by_the_restart() {
    let f = Fixture::new(&[]);
    assert!(apply(f.ctx(), "iso", false, false).unwrap().ok);
    f.commands.take();
    journal::set_state(
        &mut f.store.lock_blocking(),
        None,
        journal::Phase::Reverting,
        "boot-1",
    )
    .unwrap();
    std::fs::remove_file(f.host.path(GRUB_DROPIN).unwrap()).unwrap();
    f.commands.fail_next("update-grub: out of disk space");
    recover(f.ctx(), OnStart::Reapply).unwrap();
    assert_eq!(f.commands.take(), ["/usr/sbin/update-grub"]);
    assert_eq!(f.rows().len(), 1, "kept for the next revert");
    let r = revert(f.ctx(), false).unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(f.commands.take(), ["/usr/sbin/update-grub"]);
    assert!(f.rows().is_empty());
}
