//! Fuzz target: `tombstone_domain::fuzzing::webhook_verify` (see that module for the properties).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tombstone_domain::fuzzing::webhook_verify(data));
