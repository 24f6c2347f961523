//! The in-tree fuzz corpus, replayed on stable: every file of `fuzz/corpus/<target>/` (the
//! seeds, and every input that once crashed a target) through its target's entry point in
//! `cleanroomd::fuzzing`, the code the fuzzer runs. A regression fails here, in
//! `cargo test`, without nightly or cargo-fuzz.

use std::path::{Path, PathBuf};

use cleanroomd::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_file_passes_its_target() {
    for (name, entry) in TARGETS {
        let files = files_in(&fuzz_dir().join("corpus").join(name));
        assert!(!files.is_empty(), "the corpus of {name} is empty");
        for file in files {
            let input = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            // Name the file before a failure inside the target does.
            eprintln!("{name}: {}", file.display());
            entry(&input);
        }
    }
}

/// The fuzz crate, the corpus and `TARGETS` name the same targets: none is fuzzed
/// without its corpus being replayed here, and no corpus is left without its target.
#[test]
fn targets_corpora_and_fuzz_binaries_agree() {
    let mut targets: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    targets.sort_unstable();
    let stems = |dir: &str, strip: &str| -> Vec<String> {
        let mut names: Vec<String> = files_in(&fuzz_dir().join(dir))
            .iter()
            .filter_map(|p| {
                p.file_name()?
                    .to_str()?
                    .strip_suffix(strip)
                    .map(str::to_owned)
            })
            .collect();
        names.sort();
        names
    };
    assert_eq!(stems("corpus", ""), targets, "fuzz/corpus/");
    assert_eq!(stems("fuzz_targets", ".rs"), targets, "fuzz/fuzz_targets/");
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for name in &targets {
        assert!(
            manifest.contains(&format!("path = \"fuzz_targets/{name}.rs\"")),
            "fuzz/Cargo.toml has no bin for {name}"
        );
    }
}
