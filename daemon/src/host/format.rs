//! Pure parsers and printers for the kernel's text formats. No I/O here.

use std::collections::BTreeSet;

/// `none [mq-deadline] kyber` → (options, selected). The selected one is the bracketed
/// option; files without brackets (some drivers) have none selected.
pub fn parse_selector(text: &str) -> (Vec<String>, Option<String>) {
    let mut options = Vec::new();
    let mut selected = None;
    for word in text.split_whitespace() {
        match word.strip_prefix('[').and_then(|w| w.strip_suffix(']')) {
            Some(inner) => {
                selected = Some(inner.to_owned());
                options.push(inner.to_owned());
            }
            None => options.push(word.to_owned()),
        }
    }
    (options, selected)
}

/// CPU numbers at or above this are refused (Linux's largest `NR_CPUS` is 8192).
pub const MAX_CPUS: u32 = 8192;

/// `0-3,8,10-11` → {0,1,2,3,8,10,11}. Empty text is the empty set.
pub fn parse_cpu_list(text: &str) -> Result<BTreeSet<u32>, String> {
    let mut set = BTreeSet::new();
    let text = text.trim();
    if text.is_empty() {
        return Ok(set);
    }
    for part in text.split(',') {
        let part = part.trim();
        let bad = || format!("bad CPU list element {part:?} in {text:?}");
        match part.split_once('-') {
            Some((a, b)) => {
                let a: u32 = a.trim().parse().map_err(|_| bad())?;
                let b: u32 = b.trim().parse().map_err(|_| bad())?;
                if a > b || b >= MAX_CPUS {
                    return Err(bad());
                }
                set.extend(a..=b);
            }
            None => {
                let n: u32 = part.parse().map_err(|_| bad())?;
                if n >= MAX_CPUS {
                    return Err(bad());
                }
                set.insert(n);
            }
        }
    }
    Ok(set)
}

/// {0,1,2,3,8} → `0-3,8`.
pub fn format_cpu_list(set: &BTreeSet<u32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

/// A hex CPU mask as in `/proc/irq/default_smp_affinity` (`3`, `00000000,0000000f`) → set.
/// Bits of CPUs at or above [`MAX_CPUS`] are refused, as in a CPU list: the set is kept and
/// written back as a list too.
pub fn parse_cpu_mask(text: &str) -> Result<BTreeSet<u32>, String> {
    let mut set = BTreeSet::new();
    let groups: Vec<&str> = text.trim().split(',').collect();
    for (i, group) in groups.iter().rev().enumerate() {
        let bits = u32::from_str_radix(group, 16)
            .map_err(|_| format!("bad CPU mask group {group:?} in {text:?}"))?;
        if bits != 0 && i >= (MAX_CPUS / 32) as usize {
            return Err(format!(
                "CPU mask {text:?} names CPUs from {} on; Linux has at most {MAX_CPUS}",
                i * 32
            ));
        }
        for b in 0..32 {
            if bits & (1 << b) != 0 {
                set.insert(i as u32 * 32 + b);
            }
        }
    }
    Ok(set)
}

/// Set → hex mask in 32-bit comma-separated groups, as the kernel prints it.
pub fn format_cpu_mask(set: &BTreeSet<u32>) -> String {
    let groups = set.iter().next_back().map_or(1, |max| max / 32 + 1);
    let mut words = vec![0u32; groups as usize];
    for cpu in set {
        words[(cpu / 32) as usize] |= 1 << (cpu % 32);
    }
    let mut parts: Vec<String> = words.iter().rev().map(|w| format!("{w:08x}")).collect();
    if parts.len() == 1 {
        // A single group prints without leading zeros beyond what the kernel accepts.
        parts[0] = format!("{:x}", words[0]);
    }
    parts.join(",")
}

/// Whitespace-separated vectors (`4096\t131072\t6291456`) compare by their words.
pub fn normalize_words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A pressure file (`/proc/pressure/cpu`: `some avg10=0.00 avg60=0.00 avg300=0.00
/// total=12345`, then a `full` line) → the `some` line's `total`, microseconds.
pub fn parse_psi_some_total(text: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with("some"))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u32]) -> BTreeSet<u32> {
        v.iter().copied().collect()
    }

    #[test]
    fn selectors() {
        let table: &[(&str, &[&str], Option<&str>)] = &[
            (
                "none [mq-deadline] kyber bfq \n",
                &["none", "mq-deadline", "kyber", "bfq"],
                Some("mq-deadline"),
            ),
            ("[none] mq-deadline", &["none", "mq-deadline"], Some("none")),
            (
                "always [madvise] never",
                &["always", "madvise", "never"],
                Some("madvise"),
            ),
            (
                "always defer defer+madvise [madvise] never",
                &["always", "defer", "defer+madvise", "madvise", "never"],
                Some("madvise"),
            ),
            ("performance powersave", &["performance", "powersave"], None),
            ("", &[], None),
        ];
        for (text, options, selected) in table {
            let (o, s) = parse_selector(text);
            assert_eq!(o, *options, "{text:?}");
            assert_eq!(s.as_deref(), *selected, "{text:?}");
        }
    }

    #[test]
    fn cpu_lists() {
        let table: &[(&str, &[u32], &str)] = &[
            ("0-3,8,10-11", &[0, 1, 2, 3, 8, 10, 11], "0-3,8,10-11"),
            ("0", &[0], "0"),
            ("1,0", &[0, 1], "0-1"),
            ("0-1\n", &[0, 1], "0-1"),
            ("", &[], ""),
            ("5,3-4", &[3, 4, 5], "3-5"),
        ];
        for (text, cpus, canonical) in table {
            let s = parse_cpu_list(text).unwrap();
            assert_eq!(s, set(cpus), "{text:?}");
            assert_eq!(format_cpu_list(&s), *canonical);
        }
        for bad in [
            "a",
            "3-1",
            "1-",
            "-1",
            "1,,2",
            "0-99999999",
            "8192",
            "0-8192",
        ] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cpu_masks() {
        let table: &[(&str, &[u32], &str)] = &[
            ("3\n", &[0, 1], "3"),
            ("f", &[0, 1, 2, 3], "f"),
            ("00000001,00000000", &[32], "00000001,00000000"),
            ("0", &[], "0"),
        ];
        for (text, cpus, canonical) in table {
            let s = parse_cpu_mask(text).unwrap();
            assert_eq!(s, set(cpus), "{text:?}");
            assert_eq!(format_cpu_mask(&s), *canonical);
        }
        assert!(parse_cpu_mask("xyz").is_err());
        // 256 groups of 32 bits are Linux's 8192 CPUs; a bit beyond them is refused (the
        // set would not read back as a CPU list), leading zero groups are not.
        let beyond = format!("1{}", ",00000000".repeat(256));
        assert!(parse_cpu_mask(&beyond).is_err());
        let last = format!("80000000{}", ",00000000".repeat(255));
        assert_eq!(parse_cpu_mask(&last).unwrap(), set(&[MAX_CPUS - 1]));
        let zeros = format!("{}1", "00000000,".repeat(300));
        assert_eq!(parse_cpu_mask(&zeros).unwrap(), set(&[0]));
    }

    #[test]
    fn pressure_totals() {
        let table: &[(&str, Option<u64>)] = &[
            (
                "some avg10=0.00 avg60=0.12 avg300=0.05 total=12345\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=99\n",
                Some(12345),
            ),
            ("full avg10=0.00 total=99\n", None),
            ("some avg10=0.00\n", None),
            ("some total=x\n", None),
            ("", None),
        ];
        for (text, want) in table {
            assert_eq!(parse_psi_some_total(text), *want, "{text:?}");
        }
    }

    #[test]
    fn vectors_normalize() {
        assert_eq!(
            normalize_words("4096\t131072\t6291456\n"),
            "4096 131072 6291456"
        );
        assert_eq!(normalize_words("  60 \n"), "60");
    }
}
