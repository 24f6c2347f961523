//! Pin rules: which tasks (a selector) get which placement. Parsed from a profile's
//! `[[pin]]` tables; independent of any host until they are applied.
//!
//! ```toml
//! [[pin]]
//! comm = "nginx"                # glob over the process name (/proc/PID/comm)
//! cmdline = "--role=worker"     # or: a regex over the command line, arguments space-separated
//! thread = "io-*"               # only these threads of the matched processes (by thread name)
//! user = "www-data"             # only processes of this user (name or uid)
//! cpus = "2-3"                  # affinity
//! policy = "fifo"               # other | batch | idle | fifo | rr
//! priority = 10                 # 1-99, for fifo and rr only
//! nice = -5
//! ioprio = "be:0"               # none | idle | be:N | rt:N
//!
//! [[pin]]
//! cgroup = "/system.slice/db.service"  # the processes in this cgroup and below it
//! cpus = "0-7"                  # alone, a cgroup's CPUs and memory nodes are its cpuset's:
//! mems = "0"                    # what starts in it later has them from the kernel
//! ```
//!
//! A task matched by several rules takes each attribute from the last rule that sets it
//! (rules of included profiles come first, then the profile's own, in file order), whatever
//! fields they select by: put a narrower rule after a broader one. A rule with the
//! selector of an included profile's rule replaces it. Within a file, one selector is
//! written once, and two rules that select by the same fields and can take one task may not
//! set an attribute to different values (see `check_contradictions`).

use std::collections::BTreeSet;

use super::sched::{Attr, Ioprio, Sched, canonical};
use crate::host::format::format_cpu_list;

/// A glob over a name, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(glob::Pattern);

impl Glob {
    fn new(text: &str) -> Result<Self, String> {
        glob::Pattern::new(text)
            .map(Self)
            .map_err(|e| format!("bad glob {text:?}: {e}"))
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        self.0.matches(name)
    }
}

/// A regular expression over a command line, as written.
#[derive(Debug, Clone)]
pub struct Re(regex::Regex);

impl PartialEq for Re {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for Re {}

impl Re {
    fn new(text: &str) -> Result<Self, String> {
        regex::RegexBuilder::new(text)
            .size_limit(1 << 20)
            .build()
            .map(Self)
            .map_err(|e| format!("bad regex {text:?}: {e}"))
    }

    /// Whether `cmdline` (arguments joined by spaces) matches anywhere.
    pub fn matches(&self, cmdline: &str) -> bool {
        self.0.is_match(cmdline)
    }
}

/// Which tasks a rule takes: processes by name, command line and user, then (with
/// `thread`) only their threads of that name. At least one of them is given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Select {
    /// Glob over the process name.
    pub comm: Option<Glob>,
    /// Regex over the command line.
    pub cmdline: Option<Re>,
    /// Glob over thread names inside the matched processes.
    pub thread: Option<Glob>,
    /// The process's real user id.
    pub user: Option<u32>,
    /// A cgroup path (as `/proc/PID/cgroup` shows it, in any hierarchy): the processes in
    /// it and below it.
    pub cgroup: Option<String>,
    /// A systemd unit: the processes in its cgroup (a path component named so).
    pub unit: Option<String>,
}

impl Select {
    /// The selector as it is written, for messages and listings.
    pub fn text(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = &self.comm {
            parts.push(format!("comm={:?}", c.0.as_str()));
        }
        if let Some(c) = &self.cmdline {
            parts.push(format!("cmdline={:?}", c.0.as_str()));
        }
        if let Some(t) = &self.thread {
            parts.push(format!("thread={:?}", t.0.as_str()));
        }
        if let Some(u) = self.user {
            parts.push(format!("user={u}"));
        }
        if let Some(c) = &self.cgroup {
            parts.push(format!("cgroup={c:?}"));
        }
        if let Some(u) = &self.unit {
            parts.push(format!("unit={u:?}"));
        }
        parts.join(" ")
    }

    /// Whether a process matches (the thread name is checked per task); `cgroups` are
    /// the paths of its `/proc/PID/cgroup` (read only when a rule has a cgroup).
    pub fn process_matches(&self, comm: &str, cmdline: &str, uid: u32, cgroups: &[String]) -> bool {
        self.comm.as_ref().is_none_or(|g| g.matches(comm))
            && self.cmdline.as_ref().is_none_or(|r| r.matches(cmdline))
            && self.user.is_none_or(|u| u == uid)
            && (self.cgroup.is_none() && self.unit.is_none()
                || cgroups.iter().any(|p| self.in_cgroup(p)))
    }

    /// Whether cgroup path `path` is one this selector's cgroup or unit takes (true when
    /// it names neither).
    pub fn in_cgroup(&self, path: &str) -> bool {
        self.cgroup.as_ref().is_none_or(|c| is_under(path, c))
            && self
                .unit
                .as_ref()
                .is_none_or(|u| path.split('/').any(|c| c == u))
    }

    /// The cgroup a rule with only a cgroup selector names: its CPUs and memory nodes are
    /// placed through the cgroup's cpuset, not task by task.
    pub fn whole_cgroup(&self) -> Option<&str> {
        self.cgroup
            .as_deref()
            .filter(|_| self.no_process_selector() && self.unit.is_none())
    }

    /// The unit a rule with only a unit selector names: its CPUs and memory nodes are
    /// set on the unit (`AllowedCPUs=`, `AllowedMemoryNodes=`), not task by task.
    pub fn whole_unit(&self) -> Option<&str> {
        self.unit
            .as_deref()
            .filter(|_| self.no_process_selector() && self.cgroup.is_none())
    }

    /// Whether nothing but a cgroup or unit selects.
    fn no_process_selector(&self) -> bool {
        self.comm.is_none()
            && self.cmdline.is_none()
            && self.thread.is_none()
            && self.user.is_none()
    }

    /// Whether a thread of a matched process is taken.
    pub fn thread_matches(&self, name: &str) -> bool {
        self.thread.as_ref().is_none_or(|g| g.matches(name))
    }
}

/// Whether cgroup `path` is `prefix` or below it.
pub(crate) fn is_under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// A cgroup path as a rule may name it: absolute, no `.` or `..` component, no empty
/// component, printable, at most 4096 bytes.
fn cgroup_path(text: &str) -> Result<String, String> {
    if !text.starts_with('/') {
        return Err(format!(
            "{text:?} is not an absolute cgroup path (\"/system.slice/x.service\")"
        ));
    }
    let trimmed = text.trim_end_matches('/');
    if text.len() > 4096
        || text.chars().any(char::is_control)
        || trimmed
            .split('/')
            .skip(1)
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!(
            "{text:?} is not a cgroup path: no empty, `.` or `..` component, no control characters, at most 4096 bytes"
        ));
    }
    Ok(if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    })
}

/// A systemd unit name as a rule may name it: a name of letters, digits and `:_.@-\\`
/// with a type suffix, at most 255 bytes (systemd's own limit).
fn unit_name(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 255
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":_.@-\\".contains(c))
        && text
            .rsplit_once('.')
            .is_some_and(|(name, kind)| !name.is_empty() && !kind.is_empty());
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a unit name (\"nginx.service\": letters, digits, `:_.@-\\`, a type suffix)"
        ))
    }
}

/// One rule: a selector and the attributes it sets (canonical values, in [`Attr`] order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Which tasks.
    pub select: Select,
    /// What they get.
    pub place: Vec<(Attr, String)>,
    /// The memory nodes of a cgroup rule (its cpuset's `cpuset.mems`), canonical.
    pub mems: Option<String>,
    /// Where it was written: `FILE: line N`.
    pub at: String,
    /// Where its placement's keys (`cpus`, `mems`, `policy`, `nice`, `ioprio`) were
    /// written (`FILE: line N`), for an error about one of them.
    pub keys_at: std::collections::BTreeMap<&'static str, String>,
}

impl Rule {
    /// Where key `key` of its placement was written (where the rule was, for a rule added
    /// by hand).
    pub fn key_at(&self, key: &str) -> &str {
        self.keys_at.get(key).unwrap_or(&self.at)
    }
}

impl Rule {
    /// The rule as one line: `comm="nginx" -> cpus=2-3 policy=fifo:10`.
    pub fn text(&self) -> String {
        let mut place: Vec<String> = self.place.iter().map(|(a, v)| format!("{a}={v}")).collect();
        if let Some(m) = &self.mems {
            place.push(format!("mems={m}"));
        }
        format!("{} -> {}", self.select.text(), place.join(" "))
    }

    /// The attributes the rule sets task by task: all of them but, for a rule with only a
    /// cgroup selector, its CPUs (its cpuset's).
    pub fn task_place(&self) -> impl Iterator<Item = &(Attr, String)> {
        let whole = self.select.whole_cgroup().is_some() || self.select.whole_unit().is_some();
        self.place
            .iter()
            .filter(move |(a, _)| !(whole && *a == Attr::Affinity))
    }

    /// The CPUs the rule pins to, if it does.
    pub fn cpus(&self) -> Option<BTreeSet<u32>> {
        self.place
            .iter()
            .find(|(a, _)| *a == Attr::Affinity)
            .and_then(|(_, v)| crate::host::format::parse_cpu_list(v).ok())
    }
}

/// A user given by name or by uid.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub(crate) enum UserRef {
    Id(u32),
    Name(String),
}

/// A `[[pin]]` table as written. Every value is spanned, so an error names its line.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PinDoc {
    comm: Option<toml::Spanned<String>>,
    cmdline: Option<toml::Spanned<String>>,
    thread: Option<toml::Spanned<String>>,
    user: Option<toml::Spanned<UserRef>>,
    unit: Option<toml::Spanned<String>>,
    cgroup: Option<toml::Spanned<String>>,
    cpus: Option<toml::Spanned<String>>,
    mems: Option<toml::Spanned<String>>,
    policy: Option<toml::Spanned<String>>,
    priority: Option<toml::Spanned<i64>>,
    nice: Option<toml::Spanned<i64>>,
    ioprio: Option<toml::Spanned<String>>,
}

/// Where an error is: the line of a value and the key that holds it.
pub(crate) type ErrAt = (usize, String, String);

impl PinDoc {
    /// The rule, checked; `line` gives the line of a byte offset, `index` is the table's
    /// place among the file's `[[pin]]` tables (for keys in errors: `pin[0].cpus`), `what`
    /// names the file. Errors are (line, key, message).
    pub(crate) fn rule(
        self,
        index: usize,
        what: &str,
        line: &dyn Fn(usize) -> usize,
    ) -> Result<Rule, ErrAt> {
        let key = |k: &str| format!("pin[{index}].{k}");
        let err =
            |span: std::ops::Range<usize>, k: &str, msg: String| (line(span.start), key(k), msg);
        let mut select = Select::default();
        let mut first: Option<usize> = None;
        let mut note = |s: std::ops::Range<usize>| {
            first = Some(first.map_or(s.start, |f| f.min(s.start)));
        };
        if let Some(c) = self.comm {
            note(c.span());
            select.comm = Some(Glob::new(c.get_ref()).map_err(|e| err(c.span(), "comm", e))?);
        }
        if let Some(c) = self.cmdline {
            note(c.span());
            select.cmdline = Some(Re::new(c.get_ref()).map_err(|e| err(c.span(), "cmdline", e))?);
        }
        if let Some(t) = self.thread {
            note(t.span());
            select.thread = Some(Glob::new(t.get_ref()).map_err(|e| err(t.span(), "thread", e))?);
        }
        if let Some(u) = self.user {
            note(u.span());
            let span = u.span();
            select.user = Some(match u.into_inner() {
                UserRef::Id(id) => id,
                UserRef::Name(name) => match nix::unistd::User::from_name(&name) {
                    Ok(Some(user)) => user.uid.as_raw(),
                    Ok(None) => return Err(err(span, "user", format!("no user named {name:?}"))),
                    Err(e) => {
                        return Err(err(span, "user", format!("cannot look up {name:?}: {e}")));
                    }
                },
            });
        }
        if let Some(c) = self.cgroup {
            note(c.span());
            select.cgroup = Some(cgroup_path(c.get_ref()).map_err(|e| err(c.span(), "cgroup", e))?);
        }
        if let Some(u) = self.unit {
            note(u.span());
            select.unit = Some(unit_name(u.get_ref()).map_err(|e| err(u.span(), "unit", e))?);
        }
        if select.comm.is_none()
            && select.cmdline.is_none()
            && select.thread.is_none()
            && select.cgroup.is_none()
            && select.unit.is_none()
        {
            return Err((
                first.map_or(0, line),
                format!("pin[{index}]"),
                "a rule needs a selector: comm, cmdline, thread, cgroup or unit (user narrows one of them)"
                    .into(),
            ));
        }
        let spans: Vec<(&'static str, std::ops::Range<usize>)> = [
            ("cpus", self.cpus.as_ref().map(toml::Spanned::span)),
            ("mems", self.mems.as_ref().map(toml::Spanned::span)),
            ("policy", self.policy.as_ref().map(toml::Spanned::span)),
            ("nice", self.nice.as_ref().map(toml::Spanned::span)),
            ("ioprio", self.ioprio.as_ref().map(toml::Spanned::span)),
        ]
        .into_iter()
        .filter_map(|(k, s)| Some((k, s?)))
        .collect();
        let mut mems = None;
        if let Some(m) = self.mems {
            if select.whole_cgroup().is_none() && select.whole_unit().is_none() {
                return Err(err(
                    m.span(),
                    "mems",
                    "memory nodes are a cgroup's (its cpuset): `mems` needs a `cgroup` or `unit` selector alone"
                        .into(),
                ));
            }
            let set = crate::host::format::parse_cpu_list(m.get_ref())
                .map_err(|e| err(m.span(), "mems", e.replace("CPU", "node")))?;
            if set.is_empty() {
                return Err(err(m.span(), "mems", "empty node list".into()));
            }
            mems = Some(format_cpu_list(&set));
        }
        let mut place = Vec::new();
        if let Some(c) = self.cpus {
            let v = canonical(Attr::Affinity, c.get_ref()).map_err(|e| err(c.span(), "cpus", e))?;
            if v.is_empty() {
                return Err(err(c.span(), "cpus", "empty CPU list".into()));
            }
            place.push((Attr::Affinity, v));
        }
        match (self.policy, self.priority) {
            (Some(p), prio) => {
                let prio_i32 = match &prio {
                    Some(v) => Some(i32::try_from(*v.get_ref()).map_err(|_| {
                        err(
                            v.span(),
                            "priority",
                            format!("{} is out of range", v.get_ref()),
                        )
                    })?),
                    None => None,
                };
                let s = Sched::new(p.get_ref(), prio_i32).map_err(|e| {
                    let (span, k) = match &prio {
                        Some(v) if prio_i32.is_some_and(|x| x != 0) => (v.span(), "priority"),
                        _ => (p.span(), "policy"),
                    };
                    err(span, k, e)
                })?;
                place.push((Attr::Sched, s.text()));
            }
            (None, Some(v)) => {
                return Err(err(
                    v.span(),
                    "priority",
                    "a priority needs a policy (fifo or rr)".into(),
                ));
            }
            (None, None) => {}
        }
        if let Some(n) = self.nice {
            let v = canonical(Attr::Nice, &n.get_ref().to_string())
                .map_err(|e| err(n.span(), "nice", e))?;
            place.push((Attr::Nice, v));
        }
        if let Some(p) = self.ioprio {
            let v = Ioprio::parse(p.get_ref())
                .map(Ioprio::text)
                .map_err(|e| err(p.span(), "ioprio", e))?;
            place.push((Attr::Ioprio, v));
        }
        if place.is_empty() && mems.is_none() {
            return Err((
                first.map_or(0, line),
                format!("pin[{index}]"),
                "a rule needs a placement: cpus, mems, policy, nice or ioprio".into(),
            ));
        }
        let at = format!("{what}: line {}", first.map_or(0, line));
        let keys_at = spans
            .into_iter()
            .map(|(k, s)| (k, format!("{what}: line {}", line(s.start))))
            .collect();
        Ok(Rule {
            select,
            place,
            mems,
            at,
            keys_at,
        })
    }
}

/// Checks a file's rules against each other: one selector written twice is an error
/// (merge them: a later rule with an earlier one's selector would replace it whole), and
/// two rules that can take the same task and set one attribute to different values
/// contradict each other, an error naming both lines and the key. Which rules can take one
/// task is decided where it can be: rules that select by the same fields (a `comm` glob
/// both, or `comm` and `user` both, ...) can when every field can match one value (two
/// globs one name, equal command-line regexes, one user, nested cgroups, one unit). Rules
/// selecting by different fields are not checked against each other: for a task both take,
/// the later one's value holds. Two rules that place whole cgroups or units (a `cgroup` or
/// `unit` alone) set each one's own cpuset: nested ones may differ in `cpus` and `mems`.
pub(crate) fn check_contradictions(rules: &[Rule]) -> Result<(), String> {
    for (i, a) in rules.iter().enumerate() {
        for b in &rules[i + 1..] {
            if a.select == b.select {
                return Err(format!(
                    "{}: a second rule for {} (the first at {}): merge them into one [[pin]]",
                    b.at,
                    a.select.text(),
                    a.at
                ));
            }
            if !may_overlap(&a.select, &b.select) {
                continue;
            }
            let both = |key: &str, va: &str, vb: &str| {
                Err(format!(
                    "{}: key `{key}`: {} and {} can take the same tasks and contradict each \
                     other: {key}={vb} here, {key}={va} at {} (make them agree, or select \
                     disjoint tasks)",
                    b.key_at(key),
                    b.select.text(),
                    a.select.text(),
                    a.key_at(key)
                ))
            };
            // Whole cgroups or units: their cpus and mems are their own cpusets'.
            let whole =
                |r: &Rule| r.select.whole_cgroup().is_some() || r.select.whole_unit().is_some();
            let own_cpusets = whole(a) && whole(b);
            if let (Some(ma), Some(mb), false) = (&a.mems, &b.mems, own_cpusets) {
                if ma != mb {
                    return both("mems", ma, mb);
                }
            }
            for (attr, va) in a.task_place() {
                if let Some((_, vb)) = b.task_place().find(|(x, _)| x == attr) {
                    if va != vb {
                        return both(attr.as_str(), va, vb);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Whether two selectors that select by the same fields can take one task (see
/// [`check_contradictions`]); false for selectors by different fields.
fn may_overlap(a: &Select, b: &Select) -> bool {
    let fields = |s: &Select| {
        [
            s.comm.is_some(),
            s.cmdline.is_some(),
            s.thread.is_some(),
            s.user.is_some(),
            s.cgroup.is_some(),
            s.unit.is_some(),
        ]
    };
    let globs = |x: &Option<Glob>, y: &Option<Glob>| match (x, y) {
        (Some(x), Some(y)) => globs_meet(x.0.as_str(), y.0.as_str()),
        _ => true,
    };
    let nested = |x: &Option<String>, y: &Option<String>| match (x, y) {
        (Some(x), Some(y)) => is_under(x, y) || is_under(y, x),
        _ => true,
    };
    fields(a) == fields(b)
        && globs(&a.comm, &b.comm)
        && globs(&a.thread, &b.thread)
        && a.cmdline == b.cmdline
        && a.user == b.user
        && nested(&a.cgroup, &b.cgroup)
        && a.unit == b.unit
}

/// One position of a glob: a character, `?`, `*`, or a class `[...]` (ranges, `!`
/// negating it).
#[derive(Debug, Clone, PartialEq)]
enum Token {
    Char(char),
    Any,
    Star,
    Class(Vec<(char, char)>, bool),
}

impl Token {
    /// Whether one character can match both (a negated class is taken to leave one).
    fn meets(&self, other: &Token) -> bool {
        let has =
            |ranges: &[(char, char)], c: char| ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
        match (self, other) {
            (Token::Char(x), Token::Char(y)) => x == y,
            (Token::Char(c), Token::Class(r, neg)) | (Token::Class(r, neg), Token::Char(c)) => {
                has(r, *c) != *neg
            }
            (Token::Class(r, false), Token::Class(q, false)) => r
                .iter()
                .any(|&(lo, hi)| q.iter().any(|&(lo2, hi2)| lo <= hi2 && lo2 <= hi)),
            // A character of the class that the negated one does not exclude (a wide range
            // is taken to have one).
            (Token::Class(r, false), Token::Class(n, true))
            | (Token::Class(n, true), Token::Class(r, false)) => r.iter().any(|&(lo, hi)| {
                (hi as u32).saturating_sub(lo as u32) > 4096 || (lo..=hi).any(|c| !has(n, c))
            }),
            _ => true,
        }
    }
}

/// A glob (as `glob::Pattern` reads one) as tokens; `**` (and `**/`) a `*`.
fn tokens(glob: &str) -> Vec<Token> {
    let chars: Vec<char> = glob.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '?' => out.push(Token::Any),
            '*' => {
                if out.last() != Some(&Token::Star) {
                    out.push(Token::Star);
                }
                // `**/` matches any number of whole components, none included: taken as
                // a `*` (it then can also match what it cannot, never the reverse).
                if chars.get(i + 1) == Some(&'*') && chars.get(i + 2) == Some(&'/') {
                    i += 2;
                }
            }
            '[' => {
                // `[!...]` negates; a `]` first is literal; without a closing `]`, a `[`.
                let mut j = i + 1;
                let neg = chars.get(j) == Some(&'!');
                if neg {
                    j += 1;
                }
                let start = j;
                let close = (start..chars.len()).find(|&k| chars[k] == ']' && k > start);
                match close {
                    Some(end) => {
                        let mut ranges = Vec::new();
                        let mut k = start;
                        while k < end {
                            if k + 2 < end && chars[k + 1] == '-' {
                                ranges.push((chars[k], chars[k + 2]));
                                k += 3;
                            } else {
                                ranges.push((chars[k], chars[k]));
                                k += 1;
                            }
                        }
                        out.push(Token::Class(ranges, neg));
                        i = end;
                    }
                    None => out.push(Token::Char('[')),
                }
            }
            c => out.push(Token::Char(c)),
        }
        i += 1;
    }
    out
}

/// Whether some name matches both globs `a` and `b`: both read at once, as far as one
/// string can take them (positions reachable together, a `*` taking nothing or one more
/// character of what the other side matches).
fn globs_meet(a: &str, b: &str) -> bool {
    let (a, b) = (tokens(a), tokens(b));
    let (n, m) = (a.len(), b.len());
    let mut reach = vec![vec![false; m + 1]; n + 1];
    reach[0][0] = true;
    // Positions only grow, so one pass in order reaches everything (a star taking a
    // character stays at its own index, revisited through the inner loop's order).
    for i in 0..=n {
        for j in 0..=m {
            if !reach[i][j] {
                continue;
            }
            let (x, y) = (a.get(i), b.get(j));
            if x == Some(&Token::Star) {
                reach[i + 1][j] = true;
            }
            if y == Some(&Token::Star) {
                reach[i][j + 1] = true;
            }
            match (x, y) {
                (Some(Token::Star), Some(t)) if *t != Token::Star => reach[i][j + 1] = true,
                (Some(t), Some(Token::Star)) if *t != Token::Star => reach[i + 1][j] = true,
                (Some(x), Some(y)) if *x != Token::Star && *y != Token::Star && x.meets(y) => {
                    reach[i + 1][j + 1] = true;
                }
                _ => {}
            }
        }
    }
    reach[n][m]
}

/// CPUs a rule names that this host does not have (`online` are those it has, `what`
/// names them: `online`, `possible`).
pub fn missing_cpus(rule: &Rule, online: &BTreeSet<u32>, what: &str) -> Option<String> {
    let cpus = rule.cpus()?;
    let missing: BTreeSet<u32> = cpus.difference(online).copied().collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{}: key `cpus`: CPUs {} do not exist on this host ({what}: {})",
            rule.key_at("cpus"),
            format_cpu_list(&missing),
            format_cpu_list(online)
        )
    })
}

/// Memory nodes a rule names that this host does not have (as [`missing_cpus`]).
pub fn missing_nodes(rule: &Rule, online: &BTreeSet<u32>, what: &str) -> Option<String> {
    let mems = crate::host::format::parse_cpu_list(rule.mems.as_deref()?).ok()?;
    let missing: BTreeSet<u32> = mems.difference(online).copied().collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{}: key `mems`: memory nodes {} do not exist on this host ({what}: {})",
            rule.key_at("mems"),
            format_cpu_list(&missing),
            format_cpu_list(online)
        )
    })
}

/// A rule as a `pin.add` request gives it, checked as a profile's `[[pin]]` is; errors
/// name the option (`--cpus: ...`). `id` names the rule in reports.
pub fn from_spec(spec: &cleanroom_proto::PinRuleSpec, id: u64) -> Result<Rule, String> {
    fn at<T: Clone>(v: &Option<T>) -> Option<toml::Spanned<T>> {
        v.clone().map(|v| toml::Spanned::new(0..0, v))
    }
    let doc = PinDoc {
        comm: at(&spec.comm),
        cmdline: at(&spec.cmdline),
        thread: at(&spec.thread),
        user: spec.user.as_ref().map(|u| {
            toml::Spanned::new(
                0..0,
                u.parse::<u32>()
                    .map_or_else(|_| UserRef::Name(u.clone()), UserRef::Id),
            )
        }),
        unit: at(&spec.unit),
        cgroup: at(&spec.cgroup),
        cpus: at(&spec.cpus),
        mems: at(&spec.mems),
        policy: at(&spec.policy),
        priority: at(&spec.priority),
        nice: at(&spec.nice),
        ioprio: at(&spec.ioprio),
    };
    let mut rule =
        doc.rule(0, "", &|_| 0)
            .map_err(|(_, key, msg)| match key.strip_prefix("pin[0].") {
                Some(option) => format!("--{option}: {msg}"),
                None => msg,
            })?;
    rule.at = format!("rule {id}, added by hand");
    rule.keys_at.clear();
    Ok(rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> Result<Rule, ErrAt> {
        let doc: PinDoc = toml::from_str(text).unwrap();
        doc.rule(0, "t.toml", &|_| 1)
    }

    #[test]
    fn globs_meet_when_one_name_can_match_both() {
        // Checked against `glob::Pattern` on a witness where they meet.
        for (a, b, witness) in [
            ("ng*", "nginx", Some("nginx")),
            ("nginx", "nginx", Some("nginx")),
            ("*x", "ng*", Some("ngx")),
            ("*", "io-[0-9]", Some("io-3")),
            ("io-?", "io-[!0-9]", Some("io-a")),
            ("[ab]c", "[b-d]c", Some("bc")),
            ("a*b*c", "*bbb*", Some("abbbc")),
            ("a*", "b*", None),
            ("[ab]c", "[cd]c", None),
            ("?", "ab", None),
            ("x*y", "*z", None),
            ("io-[0-9]", "io-x", None),
        ] {
            assert_eq!(globs_meet(a, b), witness.is_some(), "{a} / {b}");
            assert_eq!(globs_meet(b, a), witness.is_some(), "{b} / {a}");
            if let Some(w) = witness {
                let (pa, pb) = (
                    glob::Pattern::new(a).unwrap(),
                    glob::Pattern::new(b).unwrap(),
                );
                assert!(pa.matches(w) && pb.matches(w), "{w} matches {a} and {b}");
            }
        }
    }

    /// No false "disjoint": wherever some name matches both globs (every name of up to
    /// four characters over a small alphabet, matched by `glob::Pattern`), `globs_meet`
    /// says they meet; and for these patterns, built from characters, `?`, `*`, classes
    /// and negated classes, it is exact.
    #[test]
    fn globs_meet_agrees_with_the_glob_crate() {
        let patterns = [
            "a", "b", "ab", "a*", "*a", "*", "?", "??", "a?b", "*b*", "[a]", "[!a]", "[ab]",
            "[!ab]", "[a-b]", "[b-c]", "a[!a]", "[a]*", "[!a]*", "-*", "**/a", "a/**/b", "[-]",
            "[!-]", "*-", "?-?",
        ];
        let alphabet = ['a', 'b', 'c', '-', '/'];
        let mut names = vec![String::new()];
        for len in 1..=4 {
            let mut more = Vec::new();
            for n in names.iter().filter(|n| n.chars().count() == len - 1) {
                for c in alphabet {
                    more.push(format!("{n}{c}"));
                }
            }
            names.extend(more);
        }
        for a in patterns {
            for b in patterns {
                let (pa, pb) = (
                    glob::Pattern::new(a).unwrap(),
                    glob::Pattern::new(b).unwrap(),
                );
                let witness = names.iter().find(|n| pa.matches(n) && pb.matches(n));
                let meet = globs_meet(a, b);
                if let Some(w) = witness {
                    assert!(meet, "{a} / {b}: {w:?} matches both");
                } else if !a.contains("**") && !b.contains("**") {
                    assert!(!meet, "{a} / {b}: no name matches both");
                }
            }
        }
    }

    #[test]
    fn rules_that_can_take_one_task_may_not_contradict() {
        let rules = |text: &str| -> Vec<Rule> {
            #[derive(serde::Deserialize)]
            struct Doc {
                pin: Vec<PinDoc>,
            }
            let doc: Doc = toml::from_str(text).unwrap();
            doc.pin
                .into_iter()
                .enumerate()
                .map(|(i, d)| d.rule(i, "t.toml", &|_| i + 1).unwrap())
                .collect()
        };
        let err = check_contradictions(&rules(
            "[[pin]]\ncomm = \"ng*\"\ncpus = \"0\"\n[[pin]]\ncomm = \"nginx\"\ncpus = \"1\"\n",
        ))
        .unwrap_err();
        assert_eq!(
            err,
            "t.toml: line 2: key `cpus`: comm=\"nginx\" and comm=\"ng*\" can take the same \
             tasks and contradict each other: cpus=1 here, cpus=0 at t.toml: line 1 (make them \
             agree, or select disjoint tasks)"
        );
        for fine in [
            // Disjoint names, or the same value.
            "[[pin]]\ncomm = \"a*\"\nnice = 1\n[[pin]]\ncomm = \"b*\"\nnice = 2\n",
            "[[pin]]\ncomm = \"ng*\"\nnice = 1\n[[pin]]\ncomm = \"nginx\"\nnice = 1\n",
            // A refinement: selecting by more fields, the later one holds where both take.
            "[[pin]]\ncomm = \"nginx\"\nnice = 1\n[[pin]]\ncomm = \"nginx\"\ncmdline = \"worker\"\nnice = 2\n",
            // Other users, other units, cgroups side by side.
            "[[pin]]\ncomm = \"x\"\nuser = 1\nnice = 1\n[[pin]]\ncomm = \"x\"\nuser = 2\nnice = 2\n",
            "[[pin]]\ncgroup = \"/a\"\nnice = 1\n[[pin]]\ncgroup = \"/b\"\nnice = 2\n",
        ] {
            assert_eq!(check_contradictions(&rules(fine)), Ok(()), "{fine}");
        }
        // Nested cgroups take the same tasks: their task attributes may not differ, their
        // cpusets (a whole cgroup's cpus and mems) may.
        assert!(
            check_contradictions(&rules(
                "[[pin]]\ncgroup = \"/a\"\nnice = 1\n[[pin]]\ncgroup = \"/a/b\"\nnice = 2\n"
            ))
            .is_err()
        );
        assert_eq!(
            check_contradictions(&rules(
                "[[pin]]\ncgroup = \"/m\"\ncpus = \"0-3\"\nmems = \"0\"\n[[pin]]\ncgroup = \"/m/vm1\"\ncpus = \"2-3\"\nmems = \"1\"\n"
            )),
            Ok(())
        );
        // One selector twice: merge them (the later would replace the earlier whole).
        let twice = check_contradictions(&rules(
            "[[pin]]\ncomm = \"x\"\ncpus = \"1\"\n[[pin]]\ncomm = \"x\"\nnice = 5\n",
        ))
        .unwrap_err();
        assert!(twice.contains("a second rule for comm=\"x\""), "{twice}");
    }

    /// Cgroup and unit selectors: what they take, what is whole (placed through the
    /// cgroup), and the names and paths refused.
    #[test]
    fn cgroup_and_unit_selectors() {
        let unit = rule("unit = \"db@1.service\"\ncpus = \"1\"\nnice = 2\n").unwrap();
        assert_eq!(unit.select.whole_unit(), Some("db@1.service"));
        assert!(unit.select.in_cgroup("/system.slice/db@1.service"));
        assert!(unit.select.in_cgroup("/system.slice/db@1.service/worker"));
        assert!(!unit.select.in_cgroup("/system.slice/db@10.service"));
        let attrs: Vec<Attr> = unit.task_place().map(|(a, _)| *a).collect();
        assert_eq!(attrs, [Attr::Nice], "its CPUs are the unit's, not per task");
        let cg = rule("cgroup = \"/a/b/\"\ncomm = \"x\"\ncpus = \"1\"\n").unwrap();
        assert_eq!(cg.select.cgroup.as_deref(), Some("/a/b"));
        assert_eq!(
            cg.select.whole_cgroup(),
            None,
            "narrowed by comm: task by task"
        );
        assert!(cg.select.in_cgroup("/a/b/c") && !cg.select.in_cgroup("/a/bc"));
        assert!(cg.select.process_matches("x", "", 0, &["/a/b".into()]));
        assert!(!cg.select.process_matches("x", "", 0, &["/a".into()]));
        for (text, key) in [
            ("unit = \"../x.service\"\ncpus = \"1\"\n", "unit"),
            ("unit = \"nosuffix\"\ncpus = \"1\"\n", "unit"),
            ("cgroup = \"a/b\"\ncpus = \"1\"\n", "cgroup"),
            ("cgroup = \"/a/../b\"\ncpus = \"1\"\n", "cgroup"),
            ("comm = \"x\"\nmems = \"0\"\n", "mems"),
            ("cgroup = \"/a\"\nmems = \"\"\n", "mems"),
        ] {
            let (_, k, msg) = rule(text).unwrap_err();
            assert_eq!(k, format!("pin[0].{key}"), "{text:?}: {msg}");
        }
    }
}
