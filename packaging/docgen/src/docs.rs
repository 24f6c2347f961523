//! Man pages (clap_mangen, gzipped) and shell completions (clap_complete).
//!
//! Layout under the output directory, which the asset list in `daemon/Cargo.toml` names:
//!
//! ```text
//! man/cleanroomd.8.gz
//! man/cleanroomctl.1.gz  man/cleanroomctl-run.1.gz  man/cleanroomctl-profile-apply.1.gz ...
//! completions/{cleanroomctl,cleanroomd}.bash  _cleanroomctl  _cleanroomd
//! completions/{cleanroomctl,cleanroomd}.fish
//! ```
//!
//! Pages carry no date, and the gzip streams no timestamp, so the same sources always give
//! the same bytes.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::CommandFactory as _;
use clap_complete::Shell;

/// The manual every page belongs to.
const MANUAL: &str = "cleanroom";

/// The daemon's command, as the binary parses it.
pub fn cleanroomd() -> clap::Command {
    cleanroomd::args::Args::command()
}

/// The client's command, as the binary parses it.
pub fn cleanroomctl() -> clap::Command {
    cleanroomctl::cli::Cli::command()
}

/// Writes every man page and completion below `out` and returns the files written.
pub fn write_all(out: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let man = out.join("man");
    std::fs::create_dir_all(&man)?;
    written.extend(man_pages(cleanroomd(), "8", &man)?);
    written.extend(man_pages(cleanroomctl(), "1", &man)?);
    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        for mut cmd in [cleanroomctl(), cleanroomd()] {
            let name = cmd.get_name().to_owned();
            written.push(clap_complete::generate_to(
                shell,
                &mut cmd,
                name,
                &completions,
            )?);
        }
    }
    Ok(written)
}

/// One gzipped page for `cmd` and one for each of its subcommands, recursively (named
/// like `cleanroomctl-profile-apply.1.gz`).
fn man_pages(cmd: clap::Command, section: &str, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    fn walk(
        cmd: clap::Command,
        section: &str,
        dir: &Path,
        out: &mut Vec<PathBuf>,
    ) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub.clone(), section, dir, out)?;
        }
        let man = clap_mangen::Man::new(cmd).section(section).manual(MANUAL);
        let mut roff = Vec::new();
        man.render(&mut roff)?;
        let path = dir.join(format!("{}.gz", man.get_filename()));
        let mut gz = flate2::GzBuilder::new()
            .write(std::fs::File::create(&path)?, flate2::Compression::best());
        gz.write_all(&roff)?;
        gz.finish()?.sync_all()?;
        out.push(path);
        Ok(())
    }
    // Building sets each subcommand's display name to `parent-sub`, which names its page.
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    walk(cmd, section, dir, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn gunzip(path: &Path) -> String {
        let mut text = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        text
    }

    /// Every subcommand (at every depth) has its page, and the top page names it.
    #[test]
    fn pages_cover_every_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        write_all(dir.path()).unwrap();
        let man = dir.path().join("man");
        let top = gunzip(&man.join("cleanroomctl.1.gz"));
        assert!(top.contains(".TH cleanroomctl 1"), "{top}");
        fn names(cmd: &clap::Command, prefix: &str, out: &mut Vec<(String, String)>) {
            for sub in cmd.get_subcommands() {
                let page = format!("{prefix}-{}", sub.get_name());
                out.push((sub.get_name().to_owned(), page.clone()));
                names(sub, &page, out);
            }
        }
        let mut subs = Vec::new();
        names(&cleanroomctl(), "cleanroomctl", &mut subs);
        assert!(subs.len() >= 20, "{subs:?}");
        for (name, page) in &subs {
            let text = gunzip(&man.join(format!("{page}.1.gz")));
            assert!(text.contains(name.as_str()), "{page} lacks {name}");
        }
        for top_level in cleanroomctl().get_subcommands() {
            assert!(
                top.contains(top_level.get_name()),
                "cleanroomctl.1 lacks {}",
                top_level.get_name()
            );
        }
        let daemon = gunzip(&man.join("cleanroomd.8.gz"));
        assert!(daemon.contains(".TH cleanroomd 8"), "{daemon}");
        for flag in ["check\\-config", "state\\-dir", "host\\-root", "socket"] {
            assert!(daemon.contains(flag), "cleanroomd.8 lacks {flag}");
        }
    }

    /// Each shell's completion for cleanroomctl offers every top-level subcommand.
    #[test]
    fn completions_offer_every_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        write_all(dir.path()).unwrap();
        let c = dir.path().join("completions");
        for file in ["cleanroomctl.bash", "_cleanroomctl", "cleanroomctl.fish"] {
            let text = std::fs::read_to_string(c.join(file)).unwrap();
            for sub in cleanroomctl().get_subcommands() {
                assert!(
                    text.contains(sub.get_name()),
                    "{file} lacks {}",
                    sub.get_name()
                );
            }
            assert!(text.contains("socket"), "{file} lacks --socket");
        }
        for file in ["cleanroomd.bash", "_cleanroomd", "cleanroomd.fish"] {
            let text = std::fs::read_to_string(c.join(file)).unwrap();
            assert!(text.contains("check-config"), "{file} lacks --check-config");
        }
    }

    #[test]
    fn output_is_reproducible() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let fa = write_all(a.path()).unwrap();
        write_all(b.path()).unwrap();
        for f in fa {
            let rel = f.strip_prefix(a.path()).unwrap();
            assert_eq!(
                std::fs::read(&f).unwrap(),
                std::fs::read(b.path().join(rel)).unwrap(),
                "{}",
                rel.display()
            );
        }
    }
}
