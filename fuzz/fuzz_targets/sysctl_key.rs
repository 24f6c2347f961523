//! `cleanroomd::fuzzing::sysctl_key`: what it feeds the daemon and what it asserts is documented
//! there.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cleanroomd::fuzzing::sysctl_key(data));
