//! Instructions executed, counted by valgrind's cachegrind: a measure that does not move
//! with the machine's noise (another tenant, frequency, a shared CI runner), for hosts
//! without a PMU. A measured run is the command under
//! `valgrind --tool=cachegrind --cache-sim=no --branch-sim=no --trace-children=yes`, and
//! its count the sum of the `I refs` lines each process's summary writes to stderr (the
//! run's stderr, which the engine reads anyway: no file, no extra descriptor). A program
//! that prints such lines itself can only fool its own measurement.
//!
//! Warm-ups run the command plain, so their wall time against the measured runs' is what
//! counting costs (the cost factor in the result).

/// The program that counts.
pub const VALGRIND: &str = "valgrind";

/// The Debian package that has it, for the message when it is missing.
pub const PACKAGE: &str = "valgrind";

/// `argv` under cachegrind, counting instructions only (no cache or branch simulation,
/// no output file), in every process it starts.
pub fn wrap(argv: &[String]) -> Vec<String> {
    [
        VALGRIND,
        "--tool=cachegrind",
        "--cache-sim=no",
        "--branch-sim=no",
        "--trace-children=yes",
        "--cachegrind-out-file=/dev/null",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain(argv.iter().cloned())
    .collect()
}

/// Longest line kept while looking for a summary, bytes: longer ones are not summaries.
const MAX_LINE: usize = 4096;

/// The instruction counts in a run's stderr, fed chunk by chunk as it comes.
#[derive(Debug, Default)]
pub struct Count {
    line: Vec<u8>,
    total: u64,
    seen: u32,
}

impl Count {
    /// Takes the next chunk of stderr.
    pub fn feed(&mut self, data: &[u8]) {
        for &b in data {
            if b == b'\n' {
                self.line_done();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
    }

    fn line_done(&mut self) {
        if let Some(n) = std::str::from_utf8(&self.line).ok().and_then(irefs) {
            self.total = self.total.saturating_add(n);
            self.seen += 1;
        }
        self.line.clear();
    }

    /// The instructions of every process counted, if any summary was seen.
    pub fn total(mut self) -> Option<u64> {
        if !self.line.is_empty() {
            self.line_done();
        }
        (self.seen > 0).then_some(self.total)
    }
}

/// The count of a cachegrind summary line `==PID== I   refs:      1,234,567`.
fn irefs(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("==")?;
    let (pid, rest) = rest.split_once("==")?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let rest = rest.trim_start().strip_prefix('I')?.trim_start();
    let count = rest.strip_prefix("refs:")?.trim();
    if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit() || b == b',') {
        return None;
    }
    count.replace(',', "").parse().ok()
}

/// Whether `valgrind` is in `path` (a `PATH` value) as an executable file.
pub fn available(path: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.split(':').filter(|d| d.starts_with('/')).any(|d| {
        std::fs::metadata(std::path::Path::new(d).join(VALGRIND))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cachegrind's summary as valgrind 3.19 (Debian 12) writes it with `--cache-sim=no`,
    /// for a parent and a child it traced; split across chunks anywhere.
    #[test]
    fn sums_the_summaries_of_every_process() {
        let stderr = "==4242== Cachegrind, a cache and branch-prediction profiler\n\
            ==4242== Command: sh -c ./x\n\
            hello from the program\n\
            ==4243== \n\
            ==4243== I   refs:      1,234,567\n\
            ==4242== \n\
            ==4242== I   refs:      89,000\n";
        for split in [1, 7, 64, stderr.len()] {
            let mut c = Count::default();
            for chunk in stderr.as_bytes().chunks(split) {
                c.feed(chunk);
            }
            assert_eq!(c.total(), Some(1_323_567), "chunks of {split}");
        }
        let mut none = Count::default();
        none.feed(b"no summary here\n==1== I refs: many\n");
        assert_eq!(none.total(), None);
        assert_eq!(irefs("==7== I refs: 12"), Some(12));
        assert_eq!(irefs("== I refs: 12"), None, "no pid");
        assert_eq!(irefs("==7== D refs: 12"), None);
    }

    #[test]
    fn wraps_the_command_under_cachegrind() {
        let argv = wrap(&["./bench".to_owned(), "--n".to_owned(), "3".to_owned()]);
        assert_eq!(argv[0], "valgrind");
        assert!(argv.contains(&"--tool=cachegrind".to_owned()));
        assert_eq!(&argv[argv.len() - 3..], ["./bench", "--n", "3"]);
    }
}
