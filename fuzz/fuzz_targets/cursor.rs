//! Fuzz target: `tombstone_domain::fuzzing::cursor` (see that module for the properties).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tombstone_domain::fuzzing::cursor(data));
