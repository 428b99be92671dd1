//! The backend conformance suite (crate `sluice-backend-tests`) against ONNX Runtime.
//!
//! The library comes from `ORT_DYLIB_PATH` or the workspace's `.venv`. Without it the
//! cases are skipped with a message, unless `SLUICE_REQUIRE_ORT=1` (set by
//! `scripts/test.sh`), which turns a missing library into a failure.

use std::sync::Arc;

use sluice_backend_ort::{OrtBackend, OrtOptions};
use sluice_backend_tests::{engine_required, ort_library_for_tests, Backend};

fn backend() -> Option<Arc<dyn Backend>> {
    let required = engine_required("SLUICE_REQUIRE_ORT");
    let Some(library) = ort_library_for_tests() else {
        assert!(
            !required,
            "SLUICE_REQUIRE_ORT=1 but no ONNX Runtime library: set ORT_DYLIB_PATH"
        );
        return None;
    };
    match OrtBackend::new(&OrtOptions { library }) {
        Ok(b) => Some(Arc::new(b)),
        Err(e) => {
            assert!(!required, "SLUICE_REQUIRE_ORT=1 but {e}");
            eprintln!("ONNX Runtime unavailable: {e}");
            None
        }
    }
}

sluice_backend_tests::conformance_suite!(backend());
