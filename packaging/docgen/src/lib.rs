//! Packaging helpers of cleanroom, used by `packaging/build` and its tests.
//!
//! - [`docs`] writes the man pages and shell completions from the binaries' own clap
//!   definitions (`cleanroomd::args`, `cleanroomctl::cli`), so they cannot drift from what
//!   the binaries parse.
//! - [`assets`] reads the one list of packaged files (`[package.metadata.deb] assets` in
//!   `daemon/Cargo.toml`) and derives the rpm's list from it, so there is no second copy to
//!   keep in step.

pub mod assets;
pub mod docs;
