//! Checks of the packaging files against the code they describe: the units (systemd's own
//! verifier, the capability set of privileges.rs), the sysctl.d file (keys the kernel
//! has), the shipped config (the daemon's parser and defaults), the asset list (both
//! packages, every source present, the installed profiles are the built-in ones) and the
//! maintainer scripts (they parse).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use cleanroom_docgen::assets::{self, Asset};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Whether a tool is on PATH; in CI (CI=true, which installs it) its absence fails.
fn have(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} is missing, and CI must have it"
        );
        eprintln!("skipped: {tool} is not installed (CI installs it)");
    }
    found
}

/// The files a source (maybe a glob) names, canonical.
fn matches(pattern: &Path) -> BTreeSet<PathBuf> {
    glob::glob(&pattern.to_string_lossy())
        .unwrap()
        .map(|p| p.unwrap().canonicalize().unwrap())
        .collect()
}

fn deb_assets() -> Vec<Asset> {
    assets::deb_assets("daemon/Cargo.toml", &read("daemon/Cargo.toml")).unwrap()
}

fn executable(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, "#!/bin/sh\n").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A root holding the host's unit files (for sysinit.target and friends), ours, and
/// stand-ins for the programs the service runs, for `systemd-analyze --root`.
fn unit_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let units = dir.path().join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    // Copies, not symlinks: systemd resolves absolute links inside --root.
    let status = Command::new("cp")
        .arg("-a")
        .arg("/usr/lib/systemd/system/.")
        .arg(&units)
        .status()
        .unwrap();
    assert!(status.success());
    for unit in ["cleanroomd.service", "cleanroomd.socket"] {
        std::fs::copy(root().join("systemd").join(unit), units.join(unit)).unwrap();
    }
    executable(&dir.path().join("usr/sbin/cleanroomd"));
    executable(&dir.path().join("bin/sh"));
    dir
}

/// `systemd-analyze verify` exits 0 on warnings, so its output must be empty.
#[test]
fn units_pass_systemd_analyze_verify_silently() {
    if !have("systemd-analyze") {
        return;
    }
    let dir = unit_root();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", dir.path().display()))
        .args(["cleanroomd.socket", "cleanroomd.service"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.is_empty(), "{text}");

    // The check can fail: a bogus key is reported.
    let service = dir.path().join("usr/lib/systemd/system/cleanroomd.service");
    let text = std::fs::read_to_string(&service).unwrap();
    std::fs::write(
        &service,
        text.replace("[Service]\n", "[Service]\nBogusKey=1\n"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", dir.path().display()))
        .arg("cleanroomd.service")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("BogusKey"));
}

/// The value of the one `Key=` line of a unit.
fn unit_value(unit: &str, key: &str) -> String {
    let prefix = format!("{key}=");
    let values: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .collect();
    assert_eq!(values.len(), 1, "{key}: {values:?}");
    values[0].to_owned()
}

#[test]
fn bounding_set_is_what_the_daemon_keeps() {
    let service = read("systemd/cleanroomd.service");
    let unit: BTreeSet<String> = unit_value(&service, "CapabilityBoundingSet")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let kept: BTreeSet<String> = cleanroomd::privileges::KEPT
        .iter()
        .map(|(c, _)| c.to_string())
        .collect();
    assert_eq!(unit, kept);
}

/// The interface the install tests and the daemon rely on.
#[test]
fn units_say_what_the_daemon_expects() {
    let service = read("systemd/cleanroomd.service");
    for (key, want) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("ExecStart", "/usr/sbin/cleanroomd"),
        (
            "ExecReload",
            r#"/bin/sh -c '/usr/sbin/cleanroomd --check-config >/dev/null && kill -HUP "$MAINPID"'"#,
        ),
        ("Delegate", "yes"),
        ("KillMode", "mixed"),
        ("StateDirectory", "cleanroom"),
        ("Requires", "cleanroomd.socket"),
        ("Also", "cleanroomd.socket"),
    ] {
        assert_eq!(unit_value(&service, key), want, "{key}");
    }
    assert!(!service.contains("\nRuntimeDirectory="));
    let socket = read("systemd/cleanroomd.socket");
    let config = cleanroomd::config::Config::default();
    assert_eq!(
        Path::new(&unit_value(&socket, "ListenStream")),
        config.socket.path
    );
    assert_eq!(unit_value(&socket, "SocketGroup"), config.socket.group);
    assert_eq!(
        u32::from_str_radix(&unit_value(&socket, "SocketMode"), 8).unwrap(),
        config.socket.mode.0
    );
}

#[test]
fn sysctl_file_sets_known_keys_to_numbers() {
    let text = read("sysctl.d/10-cleanroom.conf");
    let mut keys = 0;
    let mut commented = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') {
            commented = true;
            continue;
        }
        if line.is_empty() {
            commented = false;
            continue;
        }
        let (key, value) = line.split_once('=').expect(line);
        let key = cleanroomd::host::sysctl::SysctlKey::parse(key.trim()).expect(line);
        assert!(commented, "{line}: say why above it");
        assert!(value.trim().parse::<u64>().is_ok(), "{line}");
        assert!(Path::new(&key.path()).exists(), "{}", key.path());
        keys += 1;
    }
    assert!(keys >= 4);
}

/// The shipped file is accepted, is all defaults, and shows every key with its real
/// default: uncommenting every `#key` line changes nothing.
#[test]
fn shipped_config_shows_the_real_defaults() {
    use cleanroomd::config::{Config, parse};
    let text = read("packaging/cleanroomd.toml");
    let path = Path::new("packaging/cleanroomd.toml");
    assert_eq!(parse(path, &text).unwrap(), Config::default());
    let uncommented: String = text
        .lines()
        .filter(|l| !l.starts_with("##"))
        .map(|l| l.strip_prefix('#').unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(parse(path, &uncommented).unwrap(), Config::default());
    let defaults: toml::Table = toml::from_str(&Config::default().to_toml()).unwrap();
    for (section, table) in &defaults {
        assert!(text.contains(&format!("[{section}]")), "[{section}]");
        for key in table.as_table().unwrap().keys() {
            assert!(
                text.contains(&format!("\n#{key} = ")),
                "{section}.{key} is not shown"
            );
        }
    }
}

/// The destinations the install tests and the README name.
#[test]
fn packages_hold_the_promised_files() {
    let dests: BTreeSet<String> = deb_assets().iter().map(Asset::absolute_dest).collect();
    for want in [
        "/usr/sbin/",
        "/usr/bin/",
        "/usr/lib/systemd/system/",
        "/usr/lib/sysctl.d/",
        "/usr/lib/cleanroom/profiles/",
        "/etc/cleanroom/cleanroomd.toml",
        "/usr/share/man/man8/",
        "/usr/share/man/man1/",
        "/usr/share/bash-completion/completions/cleanroomctl",
        "/usr/share/zsh/vendor-completions/",
        "/usr/share/fish/vendor_completions.d/",
        "/usr/share/doc/cleanroom/",
    ] {
        assert!(dests.contains(want), "no asset goes to {want}");
    }
}

/// Every deb asset is in the rpm list with the same destination (but zsh completions, which
/// go where rpm distributions' zsh looks) and mode, and the rpm metadata in Cargo.toml
/// holds no list of its own.
#[test]
fn rpm_list_is_the_deb_list() {
    let manifest: toml::Table = toml::from_str(&read("daemon/Cargo.toml")).unwrap();
    let rpm_meta = &manifest["package"]["metadata"]["generate-rpm"];
    assert_eq!(rpm_meta["assets"].as_array().map(Vec::len), Some(0));
    let deb = deb_assets();
    let rpm = assets::rpm_assets(&deb, Path::new("daemon"));
    assert_eq!(deb.len(), rpm.len());
    for (d, r) in deb.iter().zip(&rpm) {
        assert_eq!(
            r.dest,
            d.absolute_dest().replace(
                "/usr/share/zsh/vendor-completions/",
                "/usr/share/zsh/site-functions/"
            )
        );
        assert_eq!(r.mode, d.mode);
        assert_eq!(
            r.config.is_some(),
            r.dest.starts_with("/etc/"),
            "{}",
            r.dest
        );
        if d.is_build_output() {
            assert_eq!(r.source, d.source);
        } else {
            // cargo-generate-rpm reads sources from the workspace root, cargo-deb from
            // the package: the same files either way.
            assert_eq!(
                matches(&root().join(&r.source)),
                matches(&root().join("daemon").join(&d.source)),
                "{}",
                d.source
            );
            assert!(!matches(&root().join(&r.source)).is_empty(), "{}", r.source);
        }
    }
}

/// Every source exists: checked-in files in the tree, generated ones after docgen, and
/// build outputs are binaries of the workspace.
#[test]
fn every_asset_source_exists() {
    let generated = tempfile::tempdir().unwrap();
    cleanroom_docgen::docs::write_all(generated.path()).unwrap();
    let bins: BTreeSet<String> = ["daemon/Cargo.toml", "ctl/Cargo.toml"]
        .iter()
        .flat_map(|m| {
            let t: toml::Table = toml::from_str(&read(m)).unwrap();
            t["bin"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["name"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    for a in deb_assets() {
        let pattern = if let Some(rest) = a.source.strip_prefix("target/release/docgen/") {
            generated.path().join(rest)
        } else if let Some(bin) = a.source.strip_prefix("target/release/") {
            assert!(bins.contains(bin), "{bin} is not a binary of the workspace");
            continue;
        } else {
            root().join("daemon").join(&a.source)
        };
        assert!(
            !matches(&pattern).is_empty(),
            "{} matches nothing",
            a.source
        );
        if a.source.contains('*') {
            assert!(
                a.dest.ends_with('/'),
                "{}: a glob needs a directory",
                a.source
            );
        }
    }
}

/// The daemon has the shipped profiles built in; the package installs them as files too,
/// for admins to read and copy. The copies must be the built-ins, name for name and byte
/// for byte: a missing, extra or different file would show an admin a profile that is not
/// the one the daemon uses (and, installed, the file is what the daemon uses).
#[test]
fn installed_profiles_are_the_built_in_ones() {
    let sources: Vec<String> = deb_assets()
        .into_iter()
        .filter(|a| a.absolute_dest() == "/usr/lib/cleanroom/profiles/")
        .map(|a| a.source)
        .collect();
    assert!(!sources.is_empty(), "no asset installs the profiles");
    let installed: BTreeMap<String, String> = sources
        .iter()
        .flat_map(|s| matches(&root().join("daemon").join(s)))
        .map(|path| {
            let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
            assert_eq!(path.extension().unwrap(), "toml", "{}", path.display());
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    let built_in: BTreeMap<String, String> = cleanroomd::tune::profile::BUILTIN
        .iter()
        .map(|(name, text)| ((*name).to_owned(), (*text).to_owned()))
        .collect();
    assert_eq!(
        installed.keys().collect::<Vec<_>>(),
        built_in.keys().collect::<Vec<_>>(),
        "installed profiles vs the BUILTIN table in daemon/src/tune/profile.rs"
    );
    for (name, text) in &installed {
        assert!(
            text == &built_in[name],
            "{name}: the installed file is not the built-in"
        );
    }
}

#[test]
fn maintainer_scripts_parse() {
    for script in [
        "packaging/debian/postinst",
        "packaging/debian/prerm",
        "packaging/debian/postrm",
        "packaging/rpm/post",
        "packaging/rpm/preun",
        "packaging/rpm/postun",
        "packaging/raise-ceilings",
        "packaging/revert-before-removal",
    ] {
        let status = Command::new("sh")
            .arg("-n")
            .arg(root().join(script))
            .status()
            .unwrap();
        assert!(status.success(), "{script} does not parse");
        // Starting and stopping units needs a running systemd; without one (a chroot)
        // only enabling, which works on files, may happen.
        let text = read(script);
        if text.contains(" start ") || text.contains(" stop ") {
            assert!(text.contains("[ -d /run/systemd/system ]"), "{script}");
        }
    }
}

/// The metric families the daemon exports, by name (from its own registry, with a series
/// in every family that has none until something happens).
fn exported_families() -> BTreeSet<String> {
    let m = cleanroomd::metrics::Metrics::new();
    m.observe_request("daemon.ping", None, 0.0);
    m.reloads.with_label_values(&["ok"]).inc();
    m.set_active_profile(Some("throughput-performance"));
    m.render()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .map(str::to_owned)
        .collect()
}

/// The Grafana dashboard shipped as an example: a dashboard Grafana imports (its input,
/// panels inside a 24-column grid that do not overlap, every panel on the Prometheus
/// input), whose queries name only metrics the daemon exports, and which shows every
/// metric of the daemon's own.
#[test]
fn grafana_dashboard_queries_what_the_daemon_exports() {
    let text = read("packaging/grafana/cleanroom-dashboard.json");
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dash["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(dash["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let panels = dash["panels"].as_array().unwrap();
    let exported = exported_families();
    let name = regex::Regex::new(r"\b(?:cleanroomd|process)_[a-z_]+\b").unwrap();
    let mut shown = BTreeSet::new();
    let mut cells: BTreeMap<(u64, u64), String> = BTreeMap::new();
    for p in panels {
        let title = p["title"].as_str().unwrap();
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24 && w > 0 && h > 0, "{title}: {g}");
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), title.to_owned()) {
                    panic!("{title} overlaps {other}");
                }
            }
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            for m in name.find_iter(expr) {
                let m = m.as_str();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| m.strip_suffix(s))
                    .filter(|f| exported.contains(*f))
                    .unwrap_or(m);
                assert!(exported.contains(family), "{title}: {m} is not exported");
                shown.insert(family.to_owned());
            }
        }
    }
    for family in exported.iter().filter(|f| f.starts_with("cleanroomd_")) {
        assert!(shown.contains(family), "{family} is on no panel");
    }
}

/// The scrape configuration example scrapes the address the configuration example and
/// the README give, and gives up before the daemon closes the connection.
#[test]
fn scrape_example_fits_the_endpoint() {
    let text = read("packaging/prometheus/cleanroom-scrape.yml");
    assert!(text.contains(r#"targets: ["127.0.0.1:9469"]"#), "{text}");
    assert!(read("packaging/cleanroomd.toml").contains(r#"listen = "127.0.0.1:9469""#));
    let timeout_s: u64 = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("scrape_timeout: ")?
                .strip_suffix('s')?
                .parse()
                .ok()
        })
        .expect("scrape_timeout");
    let daemon = cleanroomd::config::MetricsSection::default().timeout_ms;
    assert!(
        timeout_s * 1000 < daemon,
        "{timeout_s} s against {daemon} ms"
    );
}
