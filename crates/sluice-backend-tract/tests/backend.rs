//! tract-specific behaviour on the example models: one symbolic plan serves every
//! batch size, planned fixed-batch plans agree with it row for row, and the planned
//! sizes come from the config. (What every backend must do is in the conformance
//! suite, `tests/conformance.rs`.)

use std::path::{Path, PathBuf};

use bytes::Bytes;
use sluice_backend_tests::assert_close;
use sluice_backend_tract::{BatchPlans, TractBackend, TractConfig, PLANNED_BATCH_SIZES};
use sluice_core::{
    Backend, DataType, InstanceOptions, LoadSpec, LoadedModel, ModelParameter, Tensor,
};
use sluice_repository::{Repository, RepositoryOptions};

fn repo(rel: &str) -> Repository {
    let root: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel);
    Repository::open(root, RepositoryOptions::default()).unwrap()
}

fn load(rel: &str, name: &str) -> sluice_core::Result<std::sync::Arc<dyn LoadedModel>> {
    let source = repo(rel).read_model(name)?;
    let v = &source.versions[0];
    TractBackend::new().load(&source.load_spec(v))
}

fn f32s(name: &str, shape: Vec<usize>, values: impl IntoIterator<Item = f32>) -> Tensor {
    let data: Vec<u8> = values.into_iter().flat_map(f32::to_le_bytes).collect();
    Tensor::new(name, DataType::F32, shape, Bytes::from(data)).unwrap()
}

fn opts(threads: usize) -> InstanceOptions {
    InstanceOptions {
        index: 0,
        intra_op_threads: threads,
    }
}

#[test]
fn mlp_runs_any_batch_size() {
    let model = load("examples/models", "mlp").unwrap();
    let mut instance = model.instance(&opts(1)).unwrap();
    for rows in [1, 3, 32] {
        let x = f32s(
            "input",
            vec![rows, 784],
            (0..rows * 784).map(|i| (i % 7) as f32 / 7.0),
        );
        let out = instance.run(vec![x]).unwrap();
        assert_eq!(out[0].name, "probabilities");
        assert_eq!(out[0].shape, vec![rows, 10]);
        // Softmax rows sum to one.
        let values: Vec<f32> = out[0]
            .data
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
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
    let out = instance
        .run(vec![f32s(
            "input",
            vec![2, 64],
            (0..128).map(|i| (i % 16) as f32 / 16.0),
        )])
        .unwrap();
    assert_eq!(out[0].datatype, DataType::I64);
    assert_eq!(out[0].shape, vec![2]);
    assert_eq!(out[1].shape, vec![2, 10]);
}

#[test]
fn planned_and_symbolic_plans_agree_row_for_row() {
    let symbolic = TractBackend::with_config(TractConfig {
        batch_plans: BatchPlans::SymbolicOnly,
    });
    for (model, input, row) in [("mlp", "input", 784), ("cnn", "image", 3 * 32 * 32)] {
        let planned = load("examples/models", model).unwrap();
        let source = repo("examples/models").read_model(model).unwrap();
        let v = &source.versions[0];
        let plain = symbolic.load(&source.load_spec(v)).unwrap();
        let (mut a, mut b) = (
            planned.instance(&opts(1)).unwrap(),
            plain.instance(&opts(1)).unwrap(),
        );
        let max = usize::try_from(source.config.max_batch_size).unwrap();
        for rows in 1..=max.min(9) {
            let mut shape = source.config.input[0]
                .dims
                .iter()
                .map(|&d| usize::try_from(d).unwrap())
                .collect::<Vec<_>>();
            shape.insert(0, rows);
            let x = f32s(
                input,
                shape,
                (0..rows * row).map(|i| ((i * 7919) % 17) as f32 / 8.0 - 1.0),
            );
            let (pa, pb) = (a.run(vec![x.clone()]).unwrap(), b.run(vec![x]).unwrap());
            assert_eq!(pa.len(), pb.len());
            for (p, s) in pa.iter().zip(&pb) {
                assert_close(p, s, &format!("{model} rows={rows}"));
            }
        }
    }
}

#[test]
fn a_bad_planned_batch_sizes_parameter_is_a_load_error() {
    let source = repo("examples/models").read_model("mlp").unwrap();
    let v = &source.versions[0];
    for (value, ok) in [
        ("1,3,32", true),
        ("none", true),
        ("64", false),
        ("two", false),
    ] {
        let mut config = source.config.clone();
        config.parameters.insert(
            PLANNED_BATCH_SIZES.to_owned(),
            ModelParameter {
                string_value: value.to_owned(),
            },
        );
        let result = TractBackend::new().load(&LoadSpec {
            model_name: "mlp",
            version: v.version,
            model_file: &v.model_file,
            config: &config,
        });
        match (result, ok) {
            (Ok(m), true) => {
                // 2 rows pad to 3 (with "1,3,32") and come back as 2.
                let x = f32s("input", vec![2, 784], (0..2 * 784).map(|i| (i % 3) as f32));
                let out = m.instance(&opts(1)).unwrap().run(vec![x]).unwrap();
                assert_eq!(out[0].shape, vec![2, 10], "{value}");
            }
            (Err(e), false) => assert!(e.message().contains(PLANNED_BATCH_SIZES), "{value}: {e}"),
            (Ok(_), false) => panic!("{value} must be refused"),
            (Err(e), true) => panic!("{value}: {e}"),
        }
    }
}
