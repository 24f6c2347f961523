//! The entry points of the fuzz targets, in the library so that the fuzzer
//! (`fuzz/fuzz_targets/`, run by `benches/fuzz.sh`) and an ordinary test on stable
//! (`daemon/tests/fuzz_corpus.rs`, which replays the in-tree corpus `fuzz/corpus/<target>/`)
//! call the same code.
//!
//! Each entry takes arbitrary bytes and runs them through the daemon's own parsing and
//! checking, with no daemon, store or kernel file behind it. Besides "never panics", each
//! asserts what must hold of every input it accepts: a parsed value printed and parsed
//! again is the same value, a kernel path stays below its root, what passes validation can
//! be used as the code after it expects. A failed assertion panics, which the fuzzer
//! reports as a crash and the corpus test as a failure.
//!
//! Not an interface: hidden from the docs, and changed whenever the code it reaches does.

use std::ffi::CString;
use std::path::{Component, Path};
use std::sync::OnceLock;

use cleanroom_proto::{Outcome, Request, Response, RunParams};
use serde_json::Value;

use crate::config::{self, Config};
use crate::host::format::{
    MAX_CPUS, format_cpu_list, format_cpu_mask, normalize_words, parse_cpu_list, parse_cpu_mask,
    parse_psi_some_total, parse_selector,
};
use crate::host::sysctl::{ALWAYS_REFUSED, DEFAULT_ALLOW, SysctlKey, refusal};
use crate::host::{Host, classify_mounts, parse_mountinfo, parse_proc_cgroup};
use crate::run::noise::{CpuTimes, parse_proc_stat, parse_usage_percpu};
use crate::run::{Want, history, request};
use crate::server::{self, connection};
use crate::tune::plugins::Kind;
use crate::tune::profile::{BUILTIN, Builtins, ProfileSet, Resolved, Setting, valid_name};

/// A target's entry point: one input, any bytes.
pub type Entry = fn(&[u8]);

/// Every target: its name (the file `fuzz/fuzz_targets/<name>.rs` and the corpus
/// directory `fuzz/corpus/<name>/`) and its entry point.
pub const TARGETS: &[(&str, Entry)] = &[
    ("request_line", request_line),
    ("profile", profile),
    ("config", config),
    ("kernel_formats", kernel_formats),
    ("sysctl_key", sysctl_key),
];

/// Where the fuzzed host paths are rooted; never read (the host layer's guard is pure).
const FAKE_ROOT: &str = "/nonexistent/cleanroom-fuzz-root";

// ---------------------------------------------------------------------------------------
// request_line

/// What a client can send on a connection: lines, each through the JSON-RPC envelope
/// checks of `server::connection`, `Request::parse` (method and typed params) and the
/// methods' own rules that need no daemon state (`run.start`'s params, a baseline's name).
/// Every refusal must become one JSON line answering the request's id with the error's
/// code; every accepted request must read back from its own params unchanged.
pub fn request_line(data: &[u8]) {
    for frame in data.split(|b| *b == b'\n') {
        let line = connection::trim_line(frame);
        // The connection skips blank lines without an answer.
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let (id, outcome) = match connection::envelope(line) {
            Ok(envelope) => {
                let id = envelope.id.clone().unwrap_or(Value::Null);
                (id, request(&envelope.method, envelope.params))
            }
            Err(refused) => (refused.id, Err(refused.error)),
        };
        if let Err(error) = outcome {
            reply_is_one_response_line(&error, &id);
        }
    }
}

/// Dispatch's parsing (the method looked up, its params typed) and then each method's
/// checks that need no state, in the order the daemon makes them.
fn request(method: &str, params: Option<Value>) -> Result<Request, server::Error> {
    let request = Request::parse(method, params)?;
    assert_eq!(request.info().name, method);
    let params = request.params().expect("params serialize to JSON");
    assert_eq!(
        Request::parse(method, Some(params.clone())).as_ref(),
        Ok(&request),
        "the params {params} read back as another request"
    );
    let run = |error| server::Error::Run {
        method: request.info().name,
        error,
    };
    match &request {
        Request::RunStart(p) => {
            let max_repeat = Config::default().runs.max_repeat;
            request::check(p, max_repeat).map_err(run)?;
            let want = request::wanted_cpus(p).map_err(run)?;
            accepted_run(p, max_repeat, want.as_ref());
        }
        Request::RunCompare(p) => {
            let max_repeat = Config::default().runs.max_repeat;
            request::check_compare(p, max_repeat).map_err(run)?;
            for argv in &p.commands {
                let side = RunParams {
                    argv: argv.clone(),
                    ..p.options.clone()
                };
                request::check(&side, max_repeat).map_err(run)?;
                let want = request::wanted_cpus(&side).map_err(run)?;
                accepted_run(&side, max_repeat, want.as_ref());
            }
            assert!((2..=cleanroom_proto::MAX_COMMANDS).contains(&p.commands.len()));
        }
        Request::BaselineSave(p) => history::check_name(&p.name, "name").map_err(run)?,
        _ => {}
    }
    Ok(request)
}

/// A `run.start` that passed its checks can be started: every string the child gets is a
/// C string (no NUL inside), every variable is `NAME=value` with a name, the counts are in
/// range and the exclusive CPUs are CPUs.
fn accepted_run(p: &RunParams, max_repeat: u32, want: Option<&Want>) {
    assert!(!p.argv.is_empty() && !p.argv[0].is_empty(), "{p:?}");
    for arg in &p.argv {
        assert!(CString::new(arg.as_str()).is_ok(), "argv {arg:?} passed");
    }
    for (name, value) in request::environment(p, "/") {
        assert!(
            !name.is_empty() && !name.contains('='),
            "env {name:?} passed"
        );
        assert!(
            CString::new(format!("{name}={value}")).is_ok(),
            "env {name:?}={value:?} passed"
        );
    }
    if let Some(cwd) = &p.cwd {
        assert!(cwd.starts_with('/'), "cwd {cwd:?} passed");
        assert!(CString::new(cwd.as_str()).is_ok(), "cwd {cwd:?} passed");
    }
    assert!((1..=max_repeat).contains(&p.repeat) && p.warmup <= max_repeat);
    match want {
        None => assert!(!p.exclusive),
        Some(Want::Count(n)) => assert!(*n >= 1),
        Some(Want::List(cpus)) => assert!(cpus.iter().all(|c| *c < MAX_CPUS), "{cpus:?}"),
    }
}

/// The answer to a refused request is one line (the framing is one message per line),
/// a JSON-RPC error response to its id, with the error's code.
fn reply_is_one_response_line(error: &server::Error, id: &Value) {
    let line = error.to_line(id.clone());
    assert!(!line.contains('\n'), "a reply of two lines: {line}");
    let response: Response = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("the reply {line} is not a response: {e}"));
    assert_eq!(&response.id, id, "{line}");
    match response.outcome {
        Outcome::Error(e) => assert_eq!(e.code, error.code().code(), "{line}"),
        Outcome::Result(_) => panic!("a refusal answered with a result: {line}"),
    }
}

// ---------------------------------------------------------------------------------------
// profile

/// A profile file's text, loaded as a file named like a built-in that others include
/// (`throughput-performance.toml`): parsed, layered over the built-ins, includes resolved.
/// Every profile it reaches that resolves holds only settings the loader promises (allowed
/// sysctl keys inside `/proc/sys`, CPU sets of CPUs, device globs that cannot name a path).
pub fn profile(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The built-ins do not change from one input to the next: parsed once per process.
    static BUILTINS: OnceLock<Builtins> = OnceLock::new();
    let allow = default_allow();
    let builtins = BUILTINS.get_or_init(|| Builtins::parse(&allow));
    let path = Path::new("/etc/cleanroom/profiles/throughput-performance.toml");
    let set = ProfileSet::with_file_text(builtins, path, text, &allow);
    for (name, _) in BUILTIN {
        assert!(
            set.entries.contains_key(*name),
            "{name} is no longer listed"
        );
    }
    for entry in set.entries.values() {
        match &entry.profile {
            Ok(resolved) => accepted_profile(resolved, &allow),
            Err(e) => assert!(!e.is_empty()),
        }
    }
}

fn accepted_profile(p: &Resolved, allow: &[String]) {
    for name in &p.include {
        assert!(valid_name(name), "include {name:?} accepted");
    }
    for (id, sourced) in &p.settings {
        let setting = &sourced.setting;
        assert_eq!(*id, setting.id(), "settings are keyed by their id");
        match setting {
            Setting::Sysctl { key, .. } => {
                assert_eq!(refusal(key, allow), None, "{key} accepted");
                key_stays_in_proc_sys(key);
            }
            Setting::IrqAffinity(cpus) | Setting::Partition(cpus) => {
                assert!(!cpus.is_empty());
                assert!(cpus.iter().all(|c| *c < MAX_CPUS), "{cpus:?}");
            }
            Setting::IsolationCpus(cpus) => {
                assert!(cpus.iter().all(|c| *c < MAX_CPUS), "{cpus:?}")
            }
            Setting::Smt(v) => assert!(v == "on" || v == "off", "smt {v:?}"),
            Setting::Scheduler { glob, prefs } => {
                assert!(!prefs.is_empty());
                device_glob(glob);
            }
            Setting::ReadAhead { glob, .. } | Setting::NrRequests { glob, .. } => device_glob(glob),
            Setting::Governor(_)
            | Setting::Epp(_)
            | Setting::Boost(_)
            | Setting::MinFreqMax
            | Setting::Thp(_)
            | Setting::ThpDefrag(_)
            | Setting::MaxLatencyUs(_) => {}
            Setting::BootCmdline(args) => boot_args(args),
        }
    }
    for rule in &p.pins {
        assert!(!rule.place.is_empty(), "a rule places something: {rule:?}");
        if let Some(cpus) = rule.cpus() {
            assert!(
                !cpus.is_empty() && cpus.iter().all(|c| *c < MAX_CPUS),
                "{cpus:?}"
            );
        }
    }
}

/// Accepted kernel arguments are each valid, and GRUB's drop-in made of them reads back
/// as exactly them: nothing in them reaches the shell that sources it.
fn boot_args(args: &[String]) {
    use crate::tune::boot;
    assert!(!args.is_empty());
    assert_eq!(boot::check_args(args), Ok(()), "{args:?}");
    for a in args {
        assert!(!boot::REFUSED.contains(&boot::arg_key(a)), "{a:?} accepted");
    }
    let text = boot::dropin_text(args);
    assert_eq!(text.lines().count(), 3, "{text:?}");
    assert_eq!(
        crate::tune::plugins::Kind::GrubDropin.read(&text),
        Ok(args.join(" ")),
        "{text:?}"
    );
}

/// A block device glob matches names in `/sys/block`: it never names a path.
fn device_glob(glob: &str) {
    assert!(
        !glob.is_empty() && !glob.contains('/') && !glob.contains(".."),
        "device glob {glob:?} accepted"
    );
    assert!(glob::Pattern::new(glob).is_ok());
}

fn default_allow() -> Vec<String> {
    DEFAULT_ALLOW.iter().map(|s| (*s).to_owned()).collect()
}

// ---------------------------------------------------------------------------------------
// config

/// A configuration file's text. A refusal names the file; an accepted configuration is
/// within the ranges validation promises, and what `--check-config` prints of it reads
/// back as the same configuration.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/cleanroom/cleanroomd.toml");
    let c = match config::parse(path, text) {
        Ok(c) => c,
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("/etc/cleanroom/cleanroomd.toml"), "{e}");
            return;
        }
    };
    let shown = c.to_toml();
    let back = config::parse(path, &shown)
        .unwrap_or_else(|e| panic!("--check-config printed what does not load: {e}\n{shown}"));
    assert_eq!(
        back, c,
        "--check-config printed another configuration:\n{shown}"
    );
    assert_eq!(c.diff(&back), (vec![], vec![]));
    let l = &c.limits;
    assert!((1..=1 << 20).contains(&l.max_connections));
    assert!(l.max_in_flight >= 1 && l.idle_timeout_s >= 1 && l.shutdown_grace_ms <= 900);
    assert!((config::MIN_QUEUED_BYTES..=config::MAX_QUEUED_BYTES).contains(&l.max_queued_bytes));
    assert!(c.socket.mode.0 <= 0o777 && c.socket.path.is_absolute());
    let r = &c.runs;
    assert!(r.compare_alpha > 0.0 && r.compare_alpha < 1.0);
    assert!(r.compare_threshold_percent >= 0.0 && r.compare_threshold_percent.is_finite());
    assert!(r.history_limit >= 1);
    if let Some(cpus) = &r.isolation_cpus {
        assert!(parse_cpu_list(cpus).is_ok(), "isolation_cpus {cpus:?}");
    }
    // Every exemption glob compiles: none is dropped on the way to the shield.
    assert_eq!(r.shield().exempt.names.len(), r.shield_exempt_names.len());
    assert!(c.tuning.sysctl_allow.iter().all(|p| !p.is_empty()));
}

// ---------------------------------------------------------------------------------------
// kernel_formats

/// The same bytes as the content of every kernel file the daemon parses: cgroup mounts
/// (`mountinfo`), `/proc/<pid>/cgroup`, I/O-scheduler and THP selectors, CPU lists and
/// masks, whitespace vectors, the tuner's value kinds, `/proc/stat`,
/// `cpuacct.usage_percpu`, `/proc/<tid>/stat`, keyed cgroup files and PSI. What a parser
/// accepts prints back (in its own format or the tuner's) as the same value.
pub fn kernel_formats(data: &[u8]) {
    // mountinfo is read as bytes, the others as text (the host layer's read needs UTF-8).
    mountinfo(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    selector(text);
    cpu_list(text);
    cpu_mask(text);
    words(text);
    value_kinds(text);
    proc_cgroup(text);
    proc_stat(text);
    usage_percpu(text);
    // These only promise an answer: a value or none, never a panic.
    let _ = crate::run::shield::stat_fields(text);
    let _ = parse_psi_some_total(text);
    for key in ["usage_usec", "user_usec", "system_usec", "oom_kill"] {
        let _ = crate::run::cgroup::keyed(text, key);
    }
}

fn mountinfo(data: &[u8]) {
    let Ok(mounts) = parse_mountinfo(data) else {
        return;
    };
    for m in &mounts {
        assert!(!m.unified || m.controllers.is_empty(), "{m:?}");
        assert!(m.controllers.is_sorted(), "{m:?}");
    }
    let _ = classify_mounts(&mounts);
    // What a root caller's run would see of them, its parent at every mount's root.
    let own: Vec<_> = mounts
        .iter()
        .map(|m| crate::host::ProcCgroup {
            id: u32::from(!m.unified),
            controllers: m.controllers.clone(),
            path: m.root.to_string_lossy().into_owned(),
        })
        .collect();
    let joins: Vec<_> = mounts.iter().map(|m| m.mount_point.join("run")).collect();
    let joins: Vec<_> = joins.iter().map(|p| p.as_path()).collect();
    let views = crate::run::contain::views(&mounts, &own, &joins);
    assert!(views.len() <= mounts.len(), "{views:?}");
}

fn selector(text: &str) {
    let (options, selected) = parse_selector(text);
    assert_eq!(options.len(), text.split_whitespace().count());
    if let Some(s) = &selected {
        assert!(options.contains(s), "{s:?} selected among {options:?}");
    }
}

fn cpu_list(text: &str) {
    let Ok(cpus) = parse_cpu_list(text) else {
        return;
    };
    assert!(cpus.iter().all(|c| *c < MAX_CPUS), "{text:?}");
    let printed = format_cpu_list(&cpus);
    assert_eq!(
        parse_cpu_list(&printed),
        Ok(cpus),
        "{text:?} printed {printed:?}"
    );
}

fn cpu_mask(text: &str) {
    let Ok(cpus) = parse_cpu_mask(text) else {
        return;
    };
    let printed = format_cpu_mask(&cpus);
    assert_eq!(
        parse_cpu_mask(&printed).as_ref(),
        Ok(&cpus),
        "{text:?} printed {printed:?}"
    );
    // The tuner keeps a mask as a CPU list: the same set, and the same bound on CPUs.
    let list = format_cpu_list(&cpus);
    assert_eq!(
        parse_cpu_list(&list),
        Ok(cpus),
        "{text:?} as a list {list:?}"
    );
}

fn words(text: &str) {
    let w = normalize_words(text);
    assert_eq!(normalize_words(&w), w);
    assert!(!w.contains("  ") && w.trim() == w, "{w:?}");
}

/// What the tuner reads from a file as its canonical value, writes back in the file's own
/// format, and reads again is the same value (verify compares exactly that).
fn value_kinds(text: &str) {
    for kind in [Kind::Text, Kind::Selector, Kind::CpuList, Kind::CpuMask] {
        let Ok(value) = kind.read(text) else {
            continue;
        };
        // Writing an option's name selects it: a selector file reads back differently.
        if kind == Kind::Selector {
            continue;
        }
        let written = kind.to_write(&value);
        assert_eq!(
            kind.read(&written),
            Ok(value.clone()),
            "{kind:?}: {text:?} read as {value:?}, written as {written:?}"
        );
    }
}

fn proc_cgroup(text: &str) {
    let Ok(lines) = parse_proc_cgroup(text) else {
        return;
    };
    for l in lines {
        let printed = format!("{}:{}:{}", l.id, l.controllers.join(","), l.path);
        assert_eq!(parse_proc_cgroup(&printed), Ok(vec![l]), "{printed:?}");
    }
}

fn proc_stat(text: &str) {
    let Ok(cpus) = parse_proc_stat(text) else {
        return;
    };
    for (cpu, t) in cpus {
        let CpuTimes {
            user,
            nice,
            system,
            idle,
            iowait,
            irq,
            softirq,
            steal,
        } = t;
        let printed =
            format!("cpu{cpu} {user} {nice} {system} {idle} {iowait} {irq} {softirq} {steal}");
        let back = parse_proc_stat(&printed).expect("a printed line parses");
        assert_eq!(
            back.into_iter().collect::<Vec<_>>(),
            vec![(cpu, t)],
            "{printed:?}"
        );
    }
}

fn usage_percpu(text: &str) {
    let Ok(cpus) = parse_usage_percpu(text) else {
        return;
    };
    let n = text.split_whitespace().count();
    assert!(cpus.keys().copied().eq(0..n as u32), "{text:?}");
}

// ---------------------------------------------------------------------------------------
// sysctl_key

/// A sysctl key as a profile names it, and the same text as a kernel path given to the
/// host layer. A key's file is strictly below `/proc/sys` (no `..`, no absolute jump), its
/// name reads back as the same key, and a key whose file is one of the always-refused ones
/// is refused however it is spelt. A path the host layer accepts is below its root.
pub fn sysctl_key(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(key) = SysctlKey::parse(text) {
        key_stays_in_proc_sys(&key);
        refused_however_spelt(&key);
    }
    path_stays_below_root(text);
}

fn key_stays_in_proc_sys(key: &SysctlKey) {
    let path = key.path();
    let rest = path
        .strip_prefix("/proc/sys/")
        .unwrap_or_else(|| panic!("{key}: {path} is not in /proc/sys"));
    for part in rest.split('/') {
        assert!(
            !part.is_empty() && part != "." && part != "..",
            "{key}: {path} climbs"
        );
    }
    // The same, as the path library reads it: one normal component per key component.
    let components: Vec<Component<'_>> = Path::new(rest).components().collect();
    assert_eq!(components.len(), rest.split('/').count(), "{path}");
    assert!(
        components.iter().all(|c| matches!(c, Component::Normal(_))),
        "{path}"
    );
    let host = Host::new(FAKE_ROOT);
    let file = host.path(&path).expect("a key's path is a kernel path");
    let proc_sys = Path::new(FAKE_ROOT).join("proc/sys");
    assert!(file.starts_with(&proc_sys) && file != proc_sys, "{file:?}");
    let again = SysctlKey::parse(&key.name())
        .unwrap_or_else(|e| panic!("{key}: its name does not parse: {e}"));
    assert_eq!(again.path(), path, "{key}: its name is another key");
}

/// With the key's whole top-level directory allowed, a key whose file is one of the
/// always-refused ones is still refused.
fn refused_however_spelt(key: &SysctlKey) {
    let path = key.path();
    let top = path["/proc/sys/".len()..].split('/').next().unwrap_or("");
    let allow = vec![format!("{top}.")];
    for refused in ALWAYS_REFUSED {
        let file = format!(
            "/proc/sys/{}",
            refused.trim_end_matches('.').replace('.', "/")
        );
        let hit = if refused.ends_with('.') {
            path.starts_with(&format!("{file}/"))
        } else {
            path == file
        };
        if hit {
            let why = refusal(key, &allow);
            assert!(
                why.as_deref().is_some_and(|w| w.contains("always refused")),
                "{key} ({path}) is not refused as {refused}: {why:?}"
            );
        }
    }
}

fn path_stays_below_root(text: &str) {
    let Ok(path) = Host::new(FAKE_ROOT).path(text) else {
        return;
    };
    assert!(text.starts_with('/'), "relative {text:?} accepted");
    assert!(path.starts_with(FAKE_ROOT), "{text:?} → {path:?}");
    assert!(
        path.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_))),
        "{text:?} → {path:?}"
    );
}
