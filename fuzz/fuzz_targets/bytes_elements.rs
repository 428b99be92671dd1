#![no_main]
//! See `sluice_server::fuzzing::bytes_elements` for the input layout.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_server::fuzzing::bytes_elements(data));
