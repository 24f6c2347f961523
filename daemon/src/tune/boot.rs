//! Kernel command-line arguments (`[bootloader] cmdline`), through the boot loader this
//! host has, as knobs journaled and reverted compare-and-swap like every other.
//!
//! | boot loader | knob (journal path) | value | written by |
//! |---|---|---|---|
//! | GRUB, Debian style | `/etc/default/grub.d/cleanroom.cfg` | the arguments it appends | the file, then `update-grub` (or `grub-mkconfig -o /boot/grub/grub.cfg`) |
//! | BLS with grubby (Fedora, RHEL) | `/boot/loader/entries#KEY`, one per argument name | the argument as every entry has it | `grubby --update-kernel=ALL --args` / `--remove-args` |
//! | systemd-boot, kernel-install | `/etc/kernel/cmdline` | the whole command line | the file, then `kernel-install add` for the running kernel |
//!
//! A file that does not exist has the value `(absent)`: writing that value removes the
//! file. GRUB's drop-in appends to `GRUB_CMDLINE_LINUX_DEFAULT`, so the recovery entries
//! stay without the arguments (a way back should one of them keep the host from
//! booting). A drop-in someone else changed holds its content as a JSON string, which
//! revert compares and `--force` writes back.
//!
//! The arguments reach the kernel at the next boot: until `/proc/cmdline` shows them an
//! applied or verified knob is `pending reboot` (`mark_pending`). The files outlive a
//! boot, so their journal rows do too (`recover` keeps them while it drops the rows of
//! kernel values).
//!
//! Every argument is checked at profile load ([`check_args`]): a strict character set (no
//! white space, quotes, `$`, `\`, `;` or newline can reach a shell or grub.cfg), no empty
//! ones, no contradicting duplicates, and none that change what boots, open a root shell,
//! turn security off or cap memory ([`REFUSED`]). Programs run through
//! [`Host::run`](crate::host::Host::run): no shell, a clean environment, a bounded time,
//! inside the host root.
//!
//! Limitations: kernel-install regenerates the running kernel's entry only (other
//! installed kernels get the arguments when they are next installed); once created,
//! `/etc/kernel/cmdline` is removed again by a revert only if nothing else changed it; a
//! BLS argument whose entries held different values before cleanroom cannot be put back
//! entry by entry (the revert fails and says so).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cleanroom_proto::{KnobResult, KnobStatus};

use super::KnobError;
use super::plugins::{Kind, Planned, Want};
use crate::host::Host;
use crate::host::format::{format_cpu_list, normalize_words};
use crate::store::journal;

/// The value of a boot-loader file that does not exist.
pub const ABSENT: &str = "(absent)";
/// GRUB's drop-in (Debian's `update-grub` sources `/etc/default/grub.d/*.cfg`).
pub const GRUB_DROPIN: &str = "/etc/default/grub.d/cleanroom.cfg";
/// The command line kernel-install puts in new loader entries.
pub const KERNEL_CMDLINE: &str = "/etc/kernel/cmdline";
/// Boot Loader Specification entries (grubby's, and systemd-boot's on /boot).
const ENTRIES: &str = "/boot/loader/entries";
/// How long a generator may take (os-prober on a host with many disks is slow).
const GENERATOR_TIMEOUT: Duration = Duration::from_secs(300);
/// At most this many arguments, each at most [`MAX_ARG`] bytes: the kernel's command
/// line is 2048 bytes on x86, and the host's own arguments need room too.
const MAX_ARGS: usize = 32;
const MAX_ARG: usize = 256;

/// Argument names refused in a profile: they change what boots or how the root file
/// system is found, open a root shell or a rescue mode, turn security modules or lockdown
/// off, or cap memory. Added blindly to every boot entry, each can leave a host that does
/// not boot or is not the host it was.
pub const REFUSED: &[&str] = &[
    "--",
    "BOOT_IMAGE",
    "init",
    "rdinit",
    "initrd",
    "root",
    "rootfstype",
    "rootflags",
    "nfsroot",
    "ip",
    "ro",
    "rw",
    "resume",
    "resume_offset",
    "single",
    "emergency",
    "rescue",
    "s",
    "S",
    "1",
    "2",
    "3",
    "4",
    "5",
    "systemd.unit",
    "systemd.debug_shell",
    "systemd.debug-shell",
    "rd.break",
    "rd.shell",
    "rd.emergency",
    "rd.systemd.unit",
    "selinux",
    "enforcing",
    "apparmor",
    "security",
    "lsm",
    "lockdown",
    "module.sig_enforce",
    "mem",
    "memmap",
];

/// Names that may be given more than once with different values (the kernel takes
/// every `console=`).
const REPEATABLE: &[&str] = &["console"];

/// An argument's name: what comes before `=`.
pub fn arg_key(arg: &str) -> &str {
    arg.split_once('=').map_or(arg, |(k, _)| k)
}

/// One argument: a name of letters, digits, `_`, `-` and `.`, then optionally `=` and a
/// value of letters, digits and `_ - . , : = / + @`; not a refused name.
pub fn check_arg(arg: &str) -> Result<(), String> {
    if arg.is_empty() {
        return Err("an empty argument".into());
    }
    if arg.len() > MAX_ARG {
        return Err(format!("{arg:?} is longer than {MAX_ARG} bytes"));
    }
    if let Some(c) = arg.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{arg:?} holds white space or a control character ({c:?}): one argument per string"
        ));
    }
    let key = arg_key(arg);
    if REFUSED.contains(&key) {
        return Err(format!(
            "{arg:?} is refused: `{key}` changes what boots, opens a root shell, turns security off or caps memory, and is never added to every boot entry blindly"
        ));
    }
    let key_ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    let value_ok = arg.split_once('=').is_none_or(|(_, v)| {
        v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.,:=/+@".contains(c))
    });
    if !key_ok || !value_ok {
        return Err(format!(
            "{arg:?} has a character outside the allowed set (name: letters, digits, `_-.`; value after `=`: letters, digits, `_-.,:=/+@`; no quotes, `$`, `\\` or `;`)"
        ));
    }
    Ok(())
}

/// A profile's list: every argument valid, at most `MAX_ARGS` (32), and no name given twice
/// (with another value it contradicts; with the same one it is a slip) unless the kernel
/// takes it repeatedly. On error, the index of the offending argument and why.
pub fn check_args(args: &[String]) -> Result<(), (usize, String)> {
    if args.is_empty() {
        return Err((0, "an empty list: leave the section out instead".into()));
    }
    if args.len() > MAX_ARGS {
        return Err((MAX_ARGS, format!("more than {MAX_ARGS} arguments")));
    }
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (i, arg) in args.iter().enumerate() {
        check_arg(arg).map_err(|e| (i, e))?;
        let key = arg_key(arg);
        match seen.insert(key, arg) {
            Some(before) if before == arg => {
                return Err((i, format!("{arg:?} is listed twice")));
            }
            Some(before) if !REPEATABLE.contains(&key) => {
                return Err((
                    i,
                    format!("{arg:?} contradicts {before:?}: `{key}` may be given once"),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The arguments that keep `isolated` CPUs free of the kernel's own work: no scheduler
/// tick while one task runs (`nohz_full`), RCU callbacks elsewhere (`rcu_nocbs`), and no
/// managed IRQs or scheduler domains (`isolcpus=managed_irq,domain`). None for no CPUs.
pub fn partition_args(isolated: &BTreeSet<u32>) -> Vec<String> {
    if isolated.is_empty() {
        return Vec::new();
    }
    let list = format_cpu_list(isolated);
    vec![
        format!("nohz_full={list}"),
        format!("rcu_nocbs={list}"),
        format!("isolcpus=managed_irq,domain,{list}"),
    ]
}

/// The kernel's arguments in `/proc/cmdline`: words split at white space outside double
/// quotes (`a="b c"` is the word `a=b c`), up to `--`, after which the words are init's.
pub fn parse_cmdline(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut started = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    if word == "--" {
                        return words;
                    }
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if started && word != "--" {
        words.push(word);
    }
    words
}

/// The boot loader of a host, as far as cleanroom writes to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loader {
    /// GRUB configured from `/etc/default/grub` (Debian, Ubuntu): the drop-in, then the
    /// generator (program and arguments).
    Grub {
        /// `update-grub`, or `grub-mkconfig -o /boot/grub/grub.cfg`.
        generator: Vec<&'static str>,
    },
    /// Boot Loader Specification entries edited by grubby.
    Grubby {
        /// grubby's path.
        program: &'static str,
    },
    /// kernel-install (systemd-boot): `/etc/kernel/cmdline`, then the running kernel's
    /// entry made again.
    KernelInstall {
        /// The running kernel's release.
        release: String,
    },
}

/// Which boot loader this host has, or why none that cleanroom supports. grubby first:
/// a BLS host may have `/etc/default/grub` too, which its GRUB does not read from a
/// drop-in directory.
pub fn detect(host: &Host) -> Result<Loader, String> {
    let entries = host.list(ENTRIES).iter().any(|e| e.ends_with(".conf"));
    if let Some(program) = ["/usr/sbin/grubby", "/usr/bin/grubby"]
        .into_iter()
        .find(|p| host.exists(p))
    {
        if entries {
            return Ok(Loader::Grubby { program });
        }
    }
    if host.exists("/etc/default/grub") {
        if host.exists("/usr/sbin/update-grub") {
            return Ok(Loader::Grub {
                generator: vec!["/usr/sbin/update-grub"],
            });
        }
        if host.exists("/usr/sbin/grub-mkconfig") && host.exists("/boot/grub") {
            return Ok(Loader::Grub {
                generator: vec!["/usr/sbin/grub-mkconfig", "-o", "/boot/grub/grub.cfg"],
            });
        }
    }
    if host.exists("/usr/bin/kernel-install") && entries {
        let release = host
            .read("/proc/sys/kernel/osrelease")
            .map_err(|e| e.to_string())?
            .trim()
            .to_owned();
        if host.exists(&kernel_image(&release)) {
            return Ok(Loader::KernelInstall { release });
        }
        return Err(format!(
            "kernel-install has no image of the running kernel at {}",
            kernel_image(&release)
        ));
    }
    Err("no supported boot loader: neither grubby with entries in /boot/loader/entries, GRUB with /etc/default/grub and update-grub or grub-mkconfig, nor kernel-install with loader entries".into())
}

fn kernel_image(release: &str) -> String {
    format!("/usr/lib/modules/{release}/vmlinuz")
}

/// The knobs `[bootloader] cmdline = args` means on this host.
pub fn expand(host: &Host, args: &[String]) -> Vec<Planned> {
    let planned = |knob: String, path: String, kind: Kind, want: Want| {
        let current = read(host, &path, kind).ok();
        let want = match (&current, want) {
            (None, Want::Value(_)) => Want::Unsupported(format!("cannot read {path}")),
            (_, w) => w,
        };
        Planned {
            knob,
            path,
            kind,
            current,
            want,
            soft: false,
        }
    };
    match detect(host) {
        Err(why) => vec![Planned {
            knob: "bootloader cmdline".into(),
            path: "/boot".into(),
            kind: Kind::GrubDropin,
            current: None,
            want: Want::Unsupported(why),
            soft: false,
        }],
        Ok(Loader::Grub { .. }) => vec![planned(
            "bootloader cmdline (GRUB drop-in)".into(),
            GRUB_DROPIN.into(),
            Kind::GrubDropin,
            Want::Value(args.join(" ")),
        )],
        Ok(Loader::Grubby { .. }) => by_key(args)
            .into_iter()
            .map(|(key, value)| {
                planned(
                    format!("bootloader cmdline {key} (grubby)"),
                    format!("{ENTRIES}#{key}"),
                    Kind::GrubbyArg,
                    Want::Value(value),
                )
            })
            .collect(),
        Ok(Loader::KernelInstall { .. }) => {
            let current = read(host, KERNEL_CMDLINE, Kind::KernelCmdline).ok();
            let base = current.map(|c| base_words(host, &c));
            vec![planned(
                "bootloader cmdline (kernel-install)".into(),
                KERNEL_CMDLINE.into(),
                Kind::KernelCmdline,
                Want::Value(merge(&base.unwrap_or_default(), args)),
            )]
        }
    }
}

/// The arguments grouped by name, each name's in the profile's order.
fn by_key(args: &[String]) -> BTreeMap<&str, String> {
    let mut out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for a in args {
        out.entry(arg_key(a)).or_default().push(a);
    }
    out.into_iter().map(|(k, v)| (k, v.join(" "))).collect()
}

/// The words a kernel-install command line starts from: the file's, or where there is
/// none, the running kernel's as kernel-install itself would take them (less
/// `BOOT_IMAGE=` and `initrd=`, which name this boot's files).
fn base_words(host: &Host, value: &str) -> Vec<String> {
    if value != ABSENT {
        return value.split_whitespace().map(str::to_owned).collect();
    }
    let running = host.read("/proc/cmdline").unwrap_or_default();
    running
        .split_whitespace()
        .filter(|w| !w.starts_with("BOOT_IMAGE=") && !w.starts_with("initrd="))
        .map(str::to_owned)
        .collect()
}

/// `base` with every argument of a name in `args` replaced by `args`, at the end.
fn merge(base: &[String], args: &[String]) -> String {
    let keys: BTreeSet<&str> = args.iter().map(|a| arg_key(a)).collect();
    base.iter()
        .filter(|w| !keys.contains(arg_key(w)))
        .chain(args)
        .cloned()
        .collect::<Vec<_>>()
        .join(" ")
}

/// kernel-install's command line is the whole file: computed from the current one it
/// would keep what an earlier profile added and this one drops. Where the journal has
/// the file's original, the profile's arguments go onto that instead.
pub(super) fn rebase(host: &Host, planned: &mut [Planned], rows: &[journal::Row], args: &[String]) {
    for p in planned.iter_mut().filter(|p| p.kind == Kind::KernelCmdline) {
        let Some(row) = rows.iter().find(|r| r.path == p.path) else {
            continue;
        };
        if matches!(p.want, Want::Value(_)) {
            p.want = Want::Value(merge(&base_words(host, &row.original), args));
        }
    }
}

/// The GRUB drop-in that appends `args`.
pub fn dropin_text<S: AsRef<str>>(args: &[S]) -> String {
    let words: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let appended = format!(" {}", words.join(" "));
    // Validated arguments hold no NUL, the one thing quoting refuses.
    let quoted = shlex::try_quote(&appended).unwrap_or_default();
    format!(
        "# Kernel arguments of the cleanroom profile in force (cleanroomd writes this file;\n\
         # `cleanroomctl profile revert` removes it). Recovery entries do not get them.\n\
         {DROPIN_PREFIX}{quoted}\n"
    )
}

const DROPIN_PREFIX: &str = "GRUB_CMDLINE_LINUX_DEFAULT=\"${GRUB_CMDLINE_LINUX_DEFAULT}\"";

/// A drop-in's value: `(absent)`, the arguments when it is exactly what cleanroom writes
/// for them, or else its content as a JSON string.
pub(super) fn dropin_value(content: Option<&str>) -> String {
    let Some(content) = content else {
        return ABSENT.into();
    };
    let ours = content
        .lines()
        .find_map(|l| l.strip_prefix(DROPIN_PREFIX))
        .and_then(shlex::split)
        .filter(|w| w.len() == 1)
        .map(|w| {
            w[0].split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|args| !args.is_empty() && args.iter().all(|a| check_arg(a).is_ok()))
        .filter(|args| dropin_text(args) == content);
    match ours {
        Some(args) => args.join(" "),
        None => serde_json::to_string(content).unwrap_or_default(),
    }
}

/// The content that gives a drop-in the value `value` (`None`: no file).
fn dropin_content(value: &str) -> Result<Option<String>, String> {
    if value == ABSENT {
        Ok(None)
    } else if value.starts_with('"') {
        serde_json::from_str(value)
            .map(Some)
            .map_err(|e| format!("not a drop-in value: {e}"))
    } else {
        let args: Vec<&str> = value.split_whitespace().collect();
        match args.iter().find_map(|a| check_arg(a).err()) {
            Some(e) => Err(e),
            None => Ok(Some(dropin_text(&args))),
        }
    }
}

/// Whether a journal path is a boot-loader knob.
pub fn is_boot_path(path: &str) -> bool {
    path == GRUB_DROPIN || path == KERNEL_CMDLINE || grubby_key(path).is_some()
}

fn grubby_key(path: &str) -> Option<&str> {
    path.strip_prefix(ENTRIES)?.strip_prefix('#')
}

/// A boot-loader knob's value (see the module's table).
pub(super) fn read(host: &Host, path: &str, kind: Kind) -> Result<String, KnobError> {
    match kind {
        Kind::GrubDropin => Ok(dropin_value(host.read_config(path)?.as_deref())),
        Kind::KernelCmdline => Ok(host
            .read_config(path)?
            .map_or_else(|| ABSENT.to_owned(), |t| normalize_words(&t))),
        Kind::GrubbyArg => {
            let key =
                grubby_key(path).ok_or_else(|| format_error(path, "", "not a grubby knob"))?;
            grubby_value(host, key)
        }
        Kind::Text | Kind::Selector | Kind::CpuList | Kind::CpuMask | Kind::UnitCpus => {
            Err(format_error(path, "", "not a boot-loader knob"))
        }
    }
}

fn format_error(path: &str, raw: &str, detail: &str) -> KnobError {
    KnobError::Format {
        path: path.to_owned(),
        raw: raw.to_owned(),
        detail: detail.to_owned(),
    }
}

/// What the BLS entries hold for the argument `key`: its words where every entry agrees,
/// `(absent)` where none has it, else each entry's distinct value, `|`-separated.
fn grubby_value(host: &Host, key: &str) -> Result<String, KnobError> {
    let mut values = BTreeSet::new();
    for name in host.list(ENTRIES).iter().filter(|n| n.ends_with(".conf")) {
        let text = host.read(&format!("{ENTRIES}/{name}"))?;
        let options = entry_options(host, &text);
        let mine: Vec<&str> = options
            .split_whitespace()
            .filter(|w| arg_key(w) == key)
            .collect();
        values.insert(if mine.is_empty() {
            ABSENT.to_owned()
        } else {
            mine.join(" ")
        });
    }
    Ok(match values.len() {
        0 => ABSENT.to_owned(),
        _ => values.into_iter().collect::<Vec<_>>().join(" | "),
    })
}

/// A BLS entry's `options`, with `$kernelopts` taken from GRUB's environment block as
/// older Fedoras write it.
fn entry_options(host: &Host, entry: &str) -> String {
    let options: String = entry
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("options"))
        .collect::<Vec<_>>()
        .join(" ");
    if !options.contains("$kernelopts") {
        return options;
    }
    let env = host.read("/boot/grub2/grubenv").unwrap_or_default();
    let kernelopts = env
        .lines()
        .find_map(|l| l.strip_prefix("kernelopts="))
        .unwrap_or("");
    options.replace("$kernelopts", kernelopts)
}

/// Makes a boot-loader knob hold `value`, then has the boot loader's configuration made
/// again.
pub(super) fn write(host: &Host, path: &str, kind: Kind, value: &str) -> Result<(), KnobError> {
    let loader = detect(host).map_err(|e| format_error(path, value, &e))?;
    match (kind, loader) {
        (Kind::GrubDropin, Loader::Grub { .. }) => {
            match dropin_content(value).map_err(|e| format_error(path, value, &e))? {
                Some(text) => {
                    host.make_dir("/etc/default/grub.d")?;
                    host.put_config(path, &text)?;
                }
                None => host.remove_config(path)?,
            }
        }
        (Kind::KernelCmdline, Loader::KernelInstall { .. }) => {
            if value == ABSENT {
                host.remove_config(path)?;
            } else {
                host.make_dir("/etc/kernel")?;
                host.put_config(path, &format!("{value}\n"))?;
            }
        }
        (Kind::GrubbyArg, Loader::Grubby { program }) => {
            let key =
                grubby_key(path).ok_or_else(|| format_error(path, value, "not a grubby knob"))?;
            if value.contains(" | ") {
                return Err(format_error(
                    path,
                    value,
                    "the entries held different values; set them by hand with grubby --update-kernel=KERNEL",
                ));
            }
            let remove = format!("--remove-args={key}");
            host.run(
                program,
                &["--update-kernel=ALL", &remove],
                GENERATOR_TIMEOUT,
            )?;
            if value != ABSENT {
                let add = format!("--args={value}");
                host.run(program, &["--update-kernel=ALL", &add], GENERATOR_TIMEOUT)?;
            }
        }
        (_, loader) => {
            return Err(format_error(
                path,
                value,
                &format!("this host's boot loader is now {loader:?}"),
            ));
        }
    }
    regenerate(host, path, kind)
}

/// Has the boot loader's configuration made again from the files as they are, where a
/// write of `path` needs that (a crash between a file and its generator leaves the
/// configuration behind the file). grubby edits the entries themselves: nothing to do.
pub(super) fn regenerate(host: &Host, path: &str, kind: Kind) -> Result<(), KnobError> {
    match (kind, detect(host)) {
        (Kind::GrubDropin, Ok(Loader::Grub { generator })) => {
            host.run(generator[0], &generator[1..], GENERATOR_TIMEOUT)?;
        }
        (Kind::KernelCmdline, Ok(Loader::KernelInstall { release })) => {
            let image = kernel_image(&release);
            host.run(
                "/usr/bin/kernel-install",
                &["add", &release, &image],
                GENERATOR_TIMEOUT,
            )?;
        }
        (Kind::GrubbyArg, _) => {}
        (_, Ok(loader)) => {
            return Err(format_error(
                path,
                "",
                &format!("this host's boot loader is now {loader:?}"),
            ));
        }
        (_, Err(e)) => return Err(format_error(path, "", &e)),
    }
    Ok(())
}

/// Whether an apply must write a boot-loader knob that already holds its value: its row
/// says an apply was writing it when the daemon stopped, so the file may be newer than
/// the configuration made from it.
pub(super) fn interrupted(kind: Kind, row: Option<&journal::Row>) -> bool {
    kind.is_boot() && row.is_some_and(|r| r.pending_prev.is_some())
}

/// The arguments a profile asks for, if any.
pub(super) fn profile_args(profile: &super::profile::Resolved) -> Vec<String> {
    profile
        .settings
        .values()
        .find_map(|s| match &s.setting {
            super::profile::Setting::BootCmdline(args) => Some(args.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Boot-loader knobs that hold the profile's arguments (applied, unchanged, ok) while the
/// running kernel's `/proc/cmdline` lacks some of them become `pending reboot`, naming
/// those.
pub(super) fn mark_pending(host: &Host, args: &[String], items: &mut [KnobResult]) {
    let Ok(text) = host.read("/proc/cmdline") else {
        return;
    };
    let running = parse_cmdline(&text);
    for item in items.iter_mut().filter(|i| {
        is_boot_path(&i.path)
            && matches!(
                i.status,
                KnobStatus::Applied | KnobStatus::Unchanged | KnobStatus::Ok
            )
    }) {
        let key = grubby_key(&item.path);
        let missing: Vec<&str> = args
            .iter()
            .filter(|a| key.is_none_or(|k| arg_key(a) == k))
            .filter(|a| !running.contains(a))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            item.status = KnobStatus::PendingReboot;
            item.reason = Some(format!(
                "/proc/cmdline lacks {}: the arguments take effect at the next boot",
                missing.join(" ")
            ));
        }
    }
}

/// Verify's row of the running kernel: `applied` when `/proc/cmdline` shows every one of
/// `args`, `pending reboot` (naming those it lacks) when not. Whatever the boot loader,
/// or without one: a host booted with the arguments some other way has them.
pub(super) fn running(host: &Host, args: &[String]) -> Option<KnobResult> {
    if args.is_empty() {
        return None;
    }
    let text = host.read("/proc/cmdline").ok()?;
    let running = parse_cmdline(&text);
    let missing: Vec<&str> = args
        .iter()
        .filter(|a| !running.contains(a))
        .map(String::as_str)
        .collect();
    Some(KnobResult {
        knob: "running kernel's command line".into(),
        path: "/proc/cmdline".into(),
        before: None,
        after: Some(args.join(" ")),
        status: if missing.is_empty() {
            KnobStatus::Applied
        } else {
            KnobStatus::PendingReboot
        },
        reason: Some(if missing.is_empty() {
            "the running kernel was booted with every argument".into()
        } else {
            format!(
                "lacks {}: they take effect at the next boot",
                missing.join(" ")
            )
        }),
    })
}

#[cfg(test)]
mod tests;
