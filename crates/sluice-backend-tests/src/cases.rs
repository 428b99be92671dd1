//! The conformance cases. Each takes the backend under test and panics on a
//! failure; [`crate::conformance_suite!`] turns each into a `#[test]`.

use std::sync::Arc;

use bytes::Bytes;
use sluice_core::{Backend, DataType, ErrorKind, Instance, LoadedModel, Tensor};

use crate::{assert_close, load, load_with, model_source, reference_cases, threads};

/// Runs every reference case of `model` and compares each output with ONNX
/// Runtime's (Python) within the stated tolerance.
fn matches_reference(backend: &dyn Backend, model: &str) {
    let cases: Vec<_> = reference_cases()
        .into_iter()
        .filter(|c| c.model == model)
        .collect();
    assert!(!cases.is_empty(), "the fixture has no case for {model}");
    let loaded = load(backend, &cases[0].repository, model)
        .unwrap_or_else(|e| panic!("{}: {model} failed to load: {e}", backend.name()));
    let mut instance = loaded.instance(&threads(0, 1)).unwrap();
    for case in &cases {
        let what = format!("{} {model} {}", backend.name(), case.label);
        let out = instance
            .run(case.inputs.clone())
            .unwrap_or_else(|e| panic!("{what}: run failed: {e}"));
        assert_eq!(out.len(), case.outputs.len(), "{what}: output count");
        for (actual, expected) in out.iter().zip(&case.outputs) {
            assert_close(actual, expected, &what);
        }
    }
}

/// digits (scikit-learn MLP via skl2onnx, `config.json`): FP32 in, INT64 labels and
/// FP32 probabilities out.
pub fn digits_matches_reference(backend: &dyn Backend) {
    matches_reference(backend, "digits");
}

/// mlp (`config.pbtxt`, batch up to 32) at 1, 5 and 8 rows.
pub fn mlp_matches_reference(backend: &dyn Backend) {
    matches_reference(backend, "mlp");
}

/// cnn (no config: auto-completed from the ONNX file) at 1 and 3 rows.
pub fn cnn_matches_reference(backend: &dyn Backend) {
    matches_reference(backend, "cnn");
}

/// mixed: three inputs and three outputs of INT32, FP64, FP16 and BOOL, no batching.
pub fn mixed_datatypes_and_several_outputs_match_reference(backend: &dyn Backend) {
    matches_reference(backend, "mixed");
}

/// dynamic: non-batch dimensions of any length (3 and 7), shared by two inputs.
pub fn dynamic_shapes_match_reference(backend: &dyn Backend) {
    matches_reference(backend, "dynamic");
}

/// Deterministic rows of multiples of 1/8.
fn rows_of(name: &str, rows: usize, row_shape: &[usize], seed: u64) -> Tensor {
    let per_row: usize = row_shape.iter().product();
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let data: Vec<u8> = (0..rows * per_row)
        .flat_map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let v = ((state >> 33) % 33) as f32 / 8.0 - 2.0;
            v.to_le_bytes()
        })
        .collect();
    let mut shape = vec![rows];
    shape.extend_from_slice(row_shape);
    Tensor::new(name, DataType::F32, shape, Bytes::from(data)).unwrap()
}

fn batch_invariance(backend: &dyn Backend, model: &str, input: &str, row_shape: &[usize]) {
    let (config, file) = model_source("examples/models", model).unwrap();
    let max = usize::try_from(config.max_batch_size).unwrap();
    let loaded = load_with(backend, model, &config, &file).unwrap();
    let mut instance = loaded.instance(&threads(0, 1)).unwrap();
    let mut sizes: Vec<usize> = vec![1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 32];
    sizes.retain(|&s| s <= max);
    sizes.push(max);
    sizes.dedup();
    for rows in sizes {
        let batch = rows_of(input, rows, row_shape, rows as u64);
        let together = instance
            .run(vec![batch.clone()])
            .unwrap_or_else(|e| panic!("{} {model}: batch of {rows} failed: {e}", backend.name()));
        let singles = batch.split_rows(&vec![1; rows]).unwrap();
        for (r, single) in singles.into_iter().enumerate() {
            let alone = instance.run(vec![single]).unwrap();
            for (t, a) in together.iter().zip(&alone) {
                assert_eq!(
                    t.shape[0], rows,
                    "{model}: output rows of a batch of {rows}"
                );
                let row = &t.split_rows(&[r, 1, rows - r - 1]).unwrap()[1];
                assert_close(
                    row,
                    a,
                    &format!("{} {model} row {r} of a batch of {rows}", backend.name()),
                );
            }
        }
    }
}

/// Every batch size up to `max_batch_size` gives, row by row, what one row alone
/// gives: padding, planned shapes and slicing inside a backend never leak.
pub fn every_batch_size_matches_row_by_row(backend: &dyn Backend) {
    batch_invariance(backend, "mlp", "input", &[784]);
    batch_invariance(backend, "cnn", "image", &[3, 32, 32]);
}

/// A corrupt file and a config that names a missing input fail at load, with the
/// reason; the valid model of the same repository loads and runs.
pub fn broken_models_fail_to_load_with_reasons(backend: &dyn Backend) {
    let name = backend.name();
    let err = load(backend, "tests/data/broken_models", "corrupt")
        .err()
        .unwrap_or_else(|| panic!("{name}: a corrupt file must not load"));
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{name}: {err}");
    assert!(err.message().contains("ONNX file"), "{name}: {err}");

    let err = load(backend, "tests/data/broken_models", "mismatch")
        .err()
        .unwrap_or_else(|| panic!("{name}: a mismatched config must not load"));
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{name}: {err}");
    assert!(err.message().contains("'nope'"), "{name}: {err}");

    let good = load(backend, "tests/data/broken_models", "good").unwrap();
    let x = rows_of("x", 1, &[4], 7);
    let x = Tensor::new("x", DataType::F32, vec![4], x.data).unwrap();
    let out = good
        .instance(&threads(0, 1))
        .unwrap()
        .run(vec![x.clone()])
        .unwrap();
    assert_eq!(out[0].data, x.data, "{name}: good is an Identity");
}

/// A config whose datatypes, dims or output names disagree with the file, a missing
/// file, and a datatype the engine lacks are load errors, never panics.
pub fn a_config_that_disagrees_with_the_file_is_refused(backend: &dyn Backend) {
    let name = backend.name();
    let (config, file) = model_source("examples/models", "mlp").unwrap();
    let mut wrong_type = config.clone();
    wrong_type.input[0].data_type = DataType::F64;
    let mut wrong_dims = config.clone();
    wrong_dims.input[0].dims = vec![783];
    let mut wrong_output = config.clone();
    wrong_output.output[0].name = "nope".to_owned();
    for (what, cfg) in [
        ("FP64 input", &wrong_type),
        ("783 features", &wrong_dims),
        ("output 'nope'", &wrong_output),
    ] {
        let err = load_with(backend, "mlp", cfg, &file)
            .err()
            .unwrap_or_else(|| panic!("{name}: a config with {what} must not load"));
        assert!(
            matches!(
                err.kind(),
                ErrorKind::InvalidArgument | ErrorKind::Unsupported
            ),
            "{name} {what}: {err}"
        );
    }
    let err = load_with(backend, "mlp", &wrong_output, &file)
        .err()
        .unwrap();
    assert!(err.message().contains("'nope'"), "{name}: {err}");

    let missing = file.with_file_name("missing.onnx");
    let err = load_with(backend, "mlp", &config, &missing).err().unwrap();
    assert!(err.message().contains("does not exist"), "{name}: {err}");

    let mut strings = config;
    strings.input[0].data_type = DataType::Bytes;
    let err = load_with(backend, "mlp", &strings, &file).err().unwrap();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::Unsupported | ErrorKind::InvalidArgument
        ),
        "{name}: {err}"
    );
}

/// Inputs the scheduler would never send (a wrong trailing shape, no input at all)
/// make the engine fail: an `Err`, never a panic, and the instance still works.
pub fn a_failing_run_is_an_error_and_the_instance_recovers(backend: &dyn Backend) {
    let name = backend.name();
    let loaded = load(backend, "examples/models", "mlp").unwrap();
    let mut instance = loaded.instance(&threads(0, 1)).unwrap();
    let err = instance
        .run(vec![rows_of("input", 1, &[5], 1)])
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal, "{name}: {err}");
    let err = instance
        .run(vec![rows_of("input", 3, &[785], 1)])
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal, "{name}: {err}");
    let err = instance.run(vec![]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal, "{name}: {err}");
    let out = instance.run(vec![rows_of("input", 2, &[784], 1)]).unwrap();
    assert_eq!(out[0].shape, vec![2, 10], "{name}");
}

/// Several instances of one loaded model, each driven by its own thread with its
/// own intra-op thread count, give the reference outputs.
pub fn instances_run_on_their_own_threads(backend: &dyn Backend) {
    let case = reference_cases()
        .into_iter()
        .find(|c| c.model == "mlp" && c.label == "rows=5")
        .expect("the fixture has mlp rows=5");
    let loaded: Arc<dyn LoadedModel> = load(backend, &case.repository, "mlp").unwrap();
    let instances: Vec<Box<dyn Instance>> = (0..3)
        .map(|i| loaded.instance(&threads(i, 1 + i % 2)).unwrap())
        .collect();
    drop(loaded); // instances keep what they need
    let name = backend.name();
    std::thread::scope(|scope| {
        for (i, mut instance) in instances.into_iter().enumerate() {
            let case = &case;
            scope.spawn(move || {
                for _ in 0..3 {
                    let out = instance.run(case.inputs.clone()).unwrap();
                    assert_close(&out[0], &case.outputs[0], &format!("{name} instance {i}"));
                }
            });
        }
    });
}
