//! Human-readable output: aligned labels, units, no debug dumps.

use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use cleanroom_proto::{ReloadResult, StatusResult};

/// Rows of `label  value`, labels padded to one column.
fn table(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (label, value) in rows {
        let _ = writeln!(out, "  {label:<width$}  {value}");
    }
    out
}

/// `3d 4h`, `2h 5m`, `7m 3s`, `42s`.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// `status`.
pub fn status(r: &StatusResult) -> String {
    let mut out = format!(
        "cleanroomd {} (protocol {}), pid {}, up {}\n",
        r.version,
        r.protocol,
        r.pid,
        duration(r.uptime_s)
    );
    let socket = if r.socket_activated {
        format!("{} (socket-activated)", r.socket)
    } else {
        r.socket.clone()
    };
    out.push_str(&table(&[
        ("socket", socket),
        ("state dir", r.state_dir.clone()),
        (
            "config",
            r.config_file
                .clone()
                .unwrap_or_else(|| "built-in defaults".into()),
        ),
        ("host root", r.host_root.clone()),
        ("cgroups", r.cgroup.as_str().to_owned()),
        ("connections", r.connections.to_string()),
        (
            "you",
            format!(
                "uid {} gid {} pid {}, role {}",
                r.caller.uid, r.caller.gid, r.caller.pid, r.caller.role
            ),
        ),
    ]));
    out
}

/// `ping`.
pub fn ping(socket: &Path, rtt: Duration) -> String {
    format!(
        "pong from cleanroomd at {} in {}\n",
        socket.display(),
        micros(rtt)
    )
}

fn micros(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

/// `reload`.
pub fn reload(r: &ReloadResult) -> String {
    let from = r
        .config_file
        .clone()
        .unwrap_or_else(|| "built-in defaults (no file)".into());
    let mut out = format!("configuration reloaded from {from}\n");
    if r.changed.is_empty() && r.restart_required.is_empty() {
        out.push_str("  nothing changed\n");
    }
    let mut rows = Vec::new();
    if !r.changed.is_empty() {
        rows.push(("changed", r.changed.join(", ")));
    }
    if !r.restart_required.is_empty() {
        rows.push((
            "needs restart",
            format!(
                "{} (systemctl restart cleanroomd)",
                r.restart_required.join(", ")
            ),
        ));
    }
    out.push_str(&table(&rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (secs, want) in [
            (0, "0s"),
            (59, "59s"),
            (61, "1m 1s"),
            (3_700, "1h 1m"),
            (90_000, "1d 1h"),
        ] {
            assert_eq!(duration(secs), want);
        }
    }

    #[test]
    fn table_aligns_values() {
        let t = table(&[("a", "1".into()), ("long label", "2".into())]);
        assert_eq!(t, "  a           1\n  long label  2\n");
    }

    #[test]
    fn reload_says_nothing_changed() {
        let r = ReloadResult {
            config_file: None,
            changed: vec![],
            restart_required: vec![],
        };
        assert!(reload(&r).contains("nothing changed"));
    }
}
