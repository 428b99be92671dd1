#![no_main]
//! See `sluice_server::fuzzing::http_json` for the input layout.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_server::fuzzing::http_json(data));
