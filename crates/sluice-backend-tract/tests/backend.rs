//! The tract backend on the example and broken models: loads, runs, and turns every
//! failure into an error instead of a panic.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use sluice_backend_tract::TractBackend;
use sluice_core::{Backend, DataType, InstanceOptions, LoadSpec, LoadedModel, Tensor};
use sluice_repository::{Repository, RepositoryOptions};

fn repo(rel: &str) -> Repository {
    let root: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel);
    Repository::open(root, RepositoryOptions::default()).unwrap()
}

fn load(rel: &str, name: &str) -> sluice_core::Result<std::sync::Arc<dyn LoadedModel>> {
    let source = repo(rel).read_model(name)?;
    let v = &source.versions[0];
    TractBackend.load(&LoadSpec {
        model_name: name,
        version: v.version,
        model_file: &v.model_file,
        config: &source.config,
    })
}

fn f32s(name: &str, shape: Vec<usize>, values: impl IntoIterator<Item = f32>) -> Tensor {
    let data: Vec<u8> = values.into_iter().flat_map(f32::to_le_bytes).collect();
    Tensor::new(name, DataType::F32, shape, Bytes::from(data)).unwrap()
}

fn opts(threads: usize) -> InstanceOptions {
    InstanceOptions { index: 0, intra_op_threads: threads }
}

#[test]
fn mlp_runs_any_batch_size_on_one_plan() {
    let model = load("examples/models", "mlp").unwrap();
    let mut instance = model.instance(&opts(1)).unwrap();
    for rows in [1, 3, 32] {
        let x = f32s("input", vec![rows, 784], (0..rows * 784).map(|i| (i % 7) as f32 / 7.0));
        let out = instance.run(vec![x]).unwrap();
        assert_eq!(out[0].name, "probabilities");
        assert_eq!(out[0].shape, vec![rows, 10]);
        // Softmax rows sum to one.
        let values: Vec<f32> = out[0].data.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        for row in values.chunks(10) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }
    // A second instance with intra-op threads gives the same answer.
    let x = f32s("input", vec![2, 784], (0..2 * 784).map(|i| (i % 5) as f32));
    let a = instance.run(vec![x.clone()]).unwrap();
    let b = model.instance(&opts(2)).unwrap().run(vec![x]).unwrap();
    assert_eq!(a, b);
}

#[test]
fn digits_returns_int64_labels() {
    let model = load("examples/models", "digits").unwrap();
    let mut instance = model.instance(&opts(1)).unwrap();
    let out = instance.run(vec![f32s("input", vec![2, 64], (0..128).map(|i| (i % 16) as f32 / 16.0))]).unwrap();
    assert_eq!(out[0].datatype, DataType::I64);
    assert_eq!(out[0].shape, vec![2]);
    assert_eq!(out[1].shape, vec![2, 10]);
}

#[test]
fn broken_models_fail_to_load_with_reasons() {
    let err = load("tests/data/broken_models", "corrupt").err().expect("corrupt must fail");
    assert!(err.message().contains("cannot read the ONNX file"), "{err}");
    let err = load("tests/data/broken_models", "mismatch").err().expect("mismatch must fail");
    assert!(err.message().contains("'nope'"), "{err}");
    assert!(load("tests/data/broken_models", "good").is_ok());
}

#[test]
fn a_failing_run_is_an_error_not_a_panic() {
    let model = load("examples/models", "mlp").unwrap();
    let mut instance = model.instance(&opts(1)).unwrap();
    // Shapes the scheduler would never send: the engine must refuse, not crash.
    let err = instance.run(vec![f32s("input", vec![1, 5], [0.0; 5])]).unwrap_err();
    assert_eq!(err.kind(), sluice_core::ErrorKind::Internal, "{err}");
    let err = instance.run(vec![]).unwrap_err();
    assert_eq!(err.kind(), sluice_core::ErrorKind::Internal, "{err}");
    // And the instance still works afterwards.
    assert!(instance.run(vec![f32s("input", vec![1, 784], [0.5; 784])]).is_ok());
}
