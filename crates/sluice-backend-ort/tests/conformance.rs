//! The backend conformance suite (crate `sluice-backend-tests`) against ONNX Runtime.
//!
//! The library comes from `ORT_DYLIB_PATH` or the workspace's `.venv`. Without it the
//! cases are skipped with a message, unless `SLUICE_REQUIRE_ORT=1` (set by
//! `scripts/test.sh`), which turns a missing library into a failure.

use std::sync::Arc;

use sluice_backend_ort::{OrtBackend, OrtOptions};
use sluice_backend_tests::{engine_required, load, ort_library_for_tests, threads, Backend};
use sluice_core::{serialize_bytes, BytesContent, DataType, Tensor};

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

// ONNX string tensors (`BYTES`) on ONNX Runtime: the `strings` fixture
// (`tests/data/conformance/strings`, written by `scripts/make_conformance_fixtures.py`,
// which checks its codes against Python's ONNX Runtime): `echo = Identity(text)` and
// `code = LabelEncoder(text)`. Skipped without a library unless `SLUICE_REQUIRE_ORT=1`.

fn text(rows: usize, values: &[&str]) -> Tensor {
    Tensor::new(
        "text",
        DataType::Bytes,
        vec![rows, 2],
        serialize_bytes(values).unwrap(),
    )
    .unwrap()
}

fn codes(t: &Tensor) -> Vec<i64> {
    t.data
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn string_tensors_in_and_out() {
    let Some(backend) = backend() else { return };
    assert_eq!(backend.bytes_content(), BytesContent::Text);
    let loaded = load(backend.as_ref(), "tests/data/conformance", "strings").unwrap();
    let mut instance = loaded.instance(&threads(0, 1)).unwrap();
    let big = "\u{e9}".repeat(300_000);
    let values = ["apple", "", "caf\u{e9}", "kiwi", &big, "banana"];
    let out = instance.run(vec![text(3, &values)]).unwrap();
    let (echo, code) = (&out[0], &out[1]);
    assert_eq!(
        (echo.datatype, echo.shape.clone()),
        (DataType::Bytes, vec![3, 2])
    );
    let echoed: Vec<&[u8]> = echo.bytes_elements().map(Result::unwrap).collect();
    let sent: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
    assert_eq!(echoed, sent);
    assert_eq!(
        (code.datatype, code.shape.clone()),
        (DataType::I64, vec![3, 2])
    );
    assert_eq!(codes(code), vec![1, 4, 3, -1, -1, 2]);
    // The batch splits back into its requests' rows.
    let parts = echo.split_rows(&[1, 2]).unwrap();
    for (part, expected) in parts
        .iter()
        .zip([text(1, &values[..2]), text(2, &values[2..])])
    {
        assert_eq!((&part.shape, &part.data), (&expected.shape, &expected.data));
    }
}

#[test]
fn bytes_that_are_not_text_are_refused_not_truncated() {
    let Some(backend) = backend() else { return };
    let loaded = load(backend.as_ref(), "tests/data/conformance", "strings").unwrap();
    let mut instance = loaded.instance(&threads(0, 1)).unwrap();
    for bad in [&b"a\0b"[..], &[0xff, 0xfe]] {
        let data = serialize_bytes([&b"apple"[..], bad]).unwrap();
        let t = Tensor::new("text", DataType::Bytes, vec![1, 2], data).unwrap();
        let err = instance.run(vec![t]).unwrap_err();
        assert_eq!(err.kind(), sluice_core::ErrorKind::InvalidArgument);
        assert!(err.message().contains("UTF-8 text without NUL"), "{err}");
    }
    // The instance still runs.
    let out = instance.run(vec![text(1, &["banana", "x"])]).unwrap();
    assert_eq!(codes(&out[1]), vec![2, -1]);
}
