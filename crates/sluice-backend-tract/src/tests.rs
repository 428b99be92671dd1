use std::path::Path;

use sluice_repository::{Repository, RepositoryOptions};

use super::*;
use crate::cache::Caches;
use sluice_core::{DataType, InstanceOptions};

fn calibration_of(caches: &Caches, root: &Path) -> Option<Calibration> {
    let source = Repository::open(root, RepositoryOptions::default())
        .unwrap()
        .read_model("cnn")
        .unwrap();
    caches
        .load(
            &source.load_spec(&source.versions[0]),
            TractConfig::default(),
        )
        .unwrap()
        .plans
        .calibration
        .clone()
}

#[test]
fn loaded_models_of_one_file_share_their_plans() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/models");
    let source = Repository::open(&examples, RepositoryOptions::default())
        .unwrap()
        .read_model("cnn")
        .unwrap();
    let spec = source.load_spec(&source.versions[0]);
    let caches = Caches::default();
    let load = |spec: &LoadSpec<'_>| caches.load(spec, TractConfig::default()).unwrap();
    let a = load(&spec);
    let b = load(&spec);
    assert!(Arc::ptr_eq(&a.plans, &b.plans), "one set of plans");
    // Another backend value owns other caches: nothing is shared with it.
    let elsewhere = Caches::default()
        .load(&spec, TractConfig::default())
        .unwrap();
    assert!(!Arc::ptr_eq(&a.plans, &elsewhere.plans));
    // Another batch size shapes other plans: built anew.
    let mut smaller = source.config.clone();
    smaller.max_batch_size = source.config.max_batch_size / 2;
    let c = load(&LoadSpec {
        config: &smaller,
        ..spec
    });
    assert!(!Arc::ptr_eq(&a.plans, &c.plans));
    // The server keeps only instances once they exist: they keep the plans shared.
    let plans = Arc::downgrade(&a.plans);
    let instance = a
        .instance(&InstanceOptions {
            index: 0,
            intra_op_threads: 1,
        })
        .unwrap();
    drop((a, b));
    let d = load(&spec);
    assert!(std::ptr::eq(plans.as_ptr(), Arc::as_ptr(&d.plans)));
    drop(instance);
}

#[test]
fn a_bytes_model_is_refused_at_load_naming_the_engine() {
    let config = ModelConfig {
        max_batch_size: 4,
        input: vec![
            sluice_core::TensorConfig::new("x", DataType::F32, vec![2]),
            sluice_core::TensorConfig::new("text", DataType::Bytes, vec![1]),
        ],
        output: vec![sluice_core::TensorConfig::new("y", DataType::F32, vec![1])],
        ..ModelConfig::default()
    };
    let spec = LoadSpec {
        model_name: "strings",
        version: 1,
        model_file: Path::new("no/such/model.onnx"),
        config: &config,
    };
    let err = TractBackend::new().load(&spec).err().expect("refused");
    assert_eq!(err.kind(), sluice_core::ErrorKind::Unsupported);
    assert_eq!(
        err.message(),
        "the tract backend does not support BYTES tensors (input 'text'); \
         use backend \"onnxruntime\" for string models"
    );
}

#[test]
fn a_reloaded_file_keeps_its_calibration_and_a_new_one_is_timed() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/models");
    let caches = Caches::default();
    let first = calibration_of(&caches, &examples);
    assert!(first.is_some(), "the example CNN batches and is calibrated");
    assert_eq!(
        first,
        calibration_of(&caches, &examples),
        "the same file: remembered"
    );
    // A copy is another file: timed anew (nanosecond timings never repeat exactly).
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("cnn/1")).unwrap();
    std::fs::copy(
        examples.join("cnn/1/model.onnx"),
        dir.path().join("cnn/1/model.onnx"),
    )
    .unwrap();
    let copy = calibration_of(&caches, dir.path());
    assert!(copy.is_some());
    assert_ne!(first, copy);
}
