#![no_main]
//! See `sluice_server::fuzzing::onnx_model` for the input layout.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_server::fuzzing::onnx_model(data));
