//! `cleanroomd::fuzzing::request_line`: what it feeds the daemon and what it asserts is documented
//! there.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cleanroomd::fuzzing::request_line(data));
