//! `cleanroomd::fuzzing::kernel_formats`: what it feeds the daemon and what it asserts is documented
//! there.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cleanroomd::fuzzing::kernel_formats(data));
