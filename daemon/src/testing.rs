//! Helpers shared by the unit tests of this crate (compiled for tests only).

/// Whether this process is root; prints why `test` skips when it is not. Every unit test
/// that needs root starts with it.
pub(crate) fn root_or_skip(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("skipping {test}: needs root (CI runs as root)");
    }
    root
}
