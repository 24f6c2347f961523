//! The one list of packaged files, and the rpm list derived from it.
//!
//! The list lives in `daemon/Cargo.toml` as `[package.metadata.deb] assets`, in cargo-deb's
//! form: `[source, dest, mode]`, sources relative to the package directory (except
//! `target/release/...`, which both tools map to the real target directory), `dest`
//! without a leading slash, a glob source going to a directory `dest` ending in `/`.
//!
//! [`rpm_metadata`] turns it into a `--metadata-overwrite` file for cargo-generate-rpm:
//! sources made relative to the workspace root (where cargo-generate-rpm looks first), a
//! leading slash on every `dest`, `config = "noreplace"` for files under `/etc` (what
//! cargo-deb does by itself for a .deb: conffiles), `doc = true` under `/usr/share/doc` and
//! `/usr/share/man`, and zsh completions moved from Debian's
//! `/usr/share/zsh/vendor-completions` to `/usr/share/zsh/site-functions`, the directory
//! on the `fpath` of Fedora's, RHEL's and openSUSE's zsh.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors reading the asset list.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifest is not TOML.
    #[error("cannot parse {path}: {source}")]
    Toml {
        /// The manifest.
        path: String,
        /// Why.
        source: toml::de::Error,
    },
    /// The manifest has no usable `[package.metadata.deb] assets`.
    #[error("{path}: package.metadata.deb.assets: {detail}")]
    Assets {
        /// The manifest.
        path: String,
        /// What is wrong.
        detail: String,
    },
}

/// One packaged file (or glob of files), as cargo-deb reads it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum Raw {
    Array(Vec<String>),
    Table {
        source: String,
        dest: String,
        mode: String,
    },
}

/// One entry of the asset list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asset {
    /// Source, relative to the package directory or `target/release/...`; may be a glob.
    pub source: String,
    /// Destination without a leading slash; a directory when it ends in `/`.
    pub dest: String,
    /// Octal permission bits as a string (`"644"`).
    pub mode: String,
}

impl Asset {
    /// The installed path with its leading slash.
    pub fn absolute_dest(&self) -> String {
        format!("/{}", self.dest.trim_start_matches('/'))
    }

    /// Whether `source` is a build output (mapped to the real target directory).
    pub fn is_build_output(&self) -> bool {
        self.source.starts_with("target/release/")
    }

    /// The source relative to the workspace root, for a package in `package_dir`
    /// (relative to the workspace root too).
    pub fn workspace_source(&self, package_dir: &Path) -> String {
        if self.is_build_output() {
            return self.source.clone();
        }
        normalize(&package_dir.join(&self.source))
            .to_string_lossy()
            .into_owned()
    }
}

/// Reads `[package.metadata.deb] assets` from a manifest's text (`path` only names it in
/// errors).
pub fn deb_assets(path: &str, manifest: &str) -> Result<Vec<Asset>, Error> {
    let doc: toml::Table = toml::from_str(manifest).map_err(|source| Error::Toml {
        path: path.to_owned(),
        source,
    })?;
    let bad = |detail: String| Error::Assets {
        path: path.to_owned(),
        detail,
    };
    let list = doc
        .get("package")
        .and_then(|p| p.get("metadata"))
        .and_then(|m| m.get("deb"))
        .and_then(|d| d.get("assets"))
        .ok_or_else(|| bad("missing".into()))?
        .clone();
    let raw: Vec<Raw> = list
        .try_into()
        .map_err(|e: toml::de::Error| bad(e.message().to_owned()))?;
    raw.into_iter()
        .map(|r| match r {
            Raw::Array(v) => match <[String; 3]>::try_from(v) {
                Ok([source, dest, mode]) => Ok(Asset { source, dest, mode }),
                Err(v) => Err(bad(format!("{v:?} is not [source, dest, mode]"))),
            },
            Raw::Table { source, dest, mode } => Ok(Asset { source, dest, mode }),
        })
        .collect()
}

/// One asset as cargo-generate-rpm reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RpmAsset {
    /// Relative to the workspace root, or `target/release/...`.
    pub source: String,
    /// Absolute; a directory when it ends in `/`.
    pub dest: String,
    /// Octal permission bits.
    pub mode: String,
    /// `noreplace` for configuration files under `/etc`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// Documentation (README, licenses, man pages).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub doc: bool,
}

/// Where Debian's zsh looks for packaged completions, and where rpm distributions' does.
const DEB_ZSH: &str = "/usr/share/zsh/vendor-completions/";
const RPM_ZSH: &str = "/usr/share/zsh/site-functions/";

/// The rpm form of the deb list.
pub fn rpm_assets(deb: &[Asset], package_dir: &Path) -> Vec<RpmAsset> {
    deb.iter()
        .map(|a| {
            let dest = a.absolute_dest();
            let dest = match dest.strip_prefix(DEB_ZSH) {
                Some(rest) => format!("{RPM_ZSH}{rest}"),
                None => dest,
            };
            RpmAsset {
                source: a.workspace_source(package_dir),
                config: dest.starts_with("/etc/").then(|| "noreplace".to_owned()),
                doc: dest.starts_with("/usr/share/doc/") || dest.starts_with("/usr/share/man/"),
                mode: a.mode.clone(),
                dest,
            }
        })
        .collect()
}

/// A cargo-generate-rpm `--metadata-overwrite` file holding the derived asset list.
pub fn rpm_metadata(deb: &[Asset], package_dir: &Path) -> String {
    #[derive(Serialize)]
    struct Overwrite {
        assets: Vec<RpmAsset>,
    }
    let header =
        "# Generated by cleanroom-docgen from [package.metadata.deb] assets; do not edit.\n";
    let body = toml::to_string(&Overwrite {
        assets: rpm_assets(deb, package_dir),
    })
    .unwrap_or_else(|e| format!("# cannot render: {e}\n"));
    format!("{header}{body}")
}

/// Removes `.` and folds `..` lexically (`daemon/../systemd` → `systemd`).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if out.file_name().is_some() => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
[package]
name = "x"
[package.metadata.deb]
assets = [
    ["target/release/cleanroomd", "usr/sbin/", "755"],
    ["../packaging/cleanroomd.toml", "etc/cleanroom/cleanroomd.toml", "644"],
    { source = "profiles/*.toml", dest = "usr/lib/cleanroom/profiles/", mode = "644" },
    ["../README.md", "usr/share/doc/cleanroom/README.md", "644"],
    ["target/release/docgen/completions/_cleanroomctl", "usr/share/zsh/vendor-completions/", "644"],
]
"#;

    #[test]
    fn both_forms_parse_and_map() {
        let deb = deb_assets("m", MANIFEST).unwrap();
        assert_eq!(deb.len(), 5);
        let rpm = rpm_assets(&deb, Path::new("daemon"));
        fn row(r: &RpmAsset) -> (&str, &str, &str, Option<&str>, bool) {
            (
                r.source.as_str(),
                r.dest.as_str(),
                r.mode.as_str(),
                r.config.as_deref(),
                r.doc,
            )
        }
        let rows: Vec<_> = rpm.iter().map(row).collect();
        assert_eq!(
            rows,
            vec![
                (
                    "target/release/cleanroomd",
                    "/usr/sbin/",
                    "755",
                    None,
                    false
                ),
                (
                    "packaging/cleanroomd.toml",
                    "/etc/cleanroom/cleanroomd.toml",
                    "644",
                    Some("noreplace"),
                    false
                ),
                (
                    "daemon/profiles/*.toml",
                    "/usr/lib/cleanroom/profiles/",
                    "644",
                    None,
                    false
                ),
                (
                    "README.md",
                    "/usr/share/doc/cleanroom/README.md",
                    "644",
                    None,
                    true
                ),
                (
                    "target/release/docgen/completions/_cleanroomctl",
                    "/usr/share/zsh/site-functions/",
                    "644",
                    None,
                    false
                ),
            ]
        );
        let text = rpm_metadata(&deb, Path::new("daemon"));
        let back: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(back["assets"].as_array().unwrap().len(), 5);
    }

    #[test]
    fn malformed_lists_are_errors() {
        for bad in [
            "[package]\n",
            "[package.metadata.deb]\nassets = [[\"a\", \"b\"]]\n",
            "[package.metadata.deb]\nassets = 3\n",
            "not toml [",
        ] {
            assert!(deb_assets("m", bad).is_err(), "{bad}");
        }
    }
}
