//! cleanroom-docgen: writes man pages and completions, or the rpm asset list, for
//! `packaging/build`. Run from the workspace root.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

/// Generates cleanroom's packaging inputs.
#[derive(Debug, Parser)]
enum Cli {
    /// Write man pages (man/) and shell completions (completions/) below DIR.
    Docs {
        /// Output directory (created if missing).
        dir: PathBuf,
    },
    /// Write cargo-generate-rpm's `--metadata-overwrite` file with the asset list derived
    /// from the manifest's `[package.metadata.deb] assets`.
    RpmAssets {
        /// The manifest holding the list, relative to the workspace root.
        #[arg(long, default_value = "daemon/Cargo.toml")]
        manifest: PathBuf,
        /// The file to write.
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse() {
        Cli::Docs { dir } => {
            let written = cleanroom_docgen::docs::write_all(&dir)
                .with_context(|| format!("cannot write docs below {}", dir.display()))?;
            eprintln!("wrote {} files below {}", written.len(), dir.display());
        }
        Cli::RpmAssets { manifest, out } => {
            let text = std::fs::read_to_string(&manifest)
                .with_context(|| format!("cannot read {}", manifest.display()))?;
            let deb = cleanroom_docgen::assets::deb_assets(&manifest.display().to_string(), &text)?;
            let package_dir = manifest.parent().unwrap_or(std::path::Path::new(""));
            std::fs::write(
                &out,
                cleanroom_docgen::assets::rpm_metadata(&deb, package_dir),
            )
            .with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!("wrote {} rpm assets to {}", deb.len(), out.display());
        }
    }
    Ok(())
}
