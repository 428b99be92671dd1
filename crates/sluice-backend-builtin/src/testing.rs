//! Helpers for the unit tests: configs, loading, tensors.

use std::path::Path;

use sluice_core::{
    Backend, DataType, Error, Instance, InstanceOptions, LoadSpec, ModelConfig, ModelParameter,
    Tensor, TensorConfig,
};

type Io<'a> = (&'a str, DataType, Vec<i64>);

pub fn config(
    backend: &str,
    max_batch_size: i32,
    inputs: &[Io<'_>],
    outputs: &[Io<'_>],
    params: &[(&str, &str)],
) -> ModelConfig {
    let tensors = |list: &[Io<'_>]| {
        list.iter()
            .map(|(n, d, dims)| TensorConfig::new(*n, *d, dims.clone()))
            .collect()
    };
    ModelConfig {
        name: "step".into(),
        backend: backend.into(),
        max_batch_size,
        input: tensors(inputs),
        output: tensors(outputs),
        parameters: params
            .iter()
            .map(|(k, v)| {
                (
                    (*k).to_owned(),
                    ModelParameter {
                        string_value: (*v).to_owned(),
                    },
                )
            })
            .collect(),
        ..ModelConfig::default()
    }
}

pub fn spec<'a>(config: &'a ModelConfig, model_file: &'a Path) -> LoadSpec<'a> {
    LoadSpec {
        model_name: "step",
        version: 1,
        model_file,
        config,
    }
}

/// Loads `config` with a version folder at `dir` (files the step reads live there).
pub fn load_in(backend: &dyn Backend, config: &ModelConfig, dir: &Path) -> Box<dyn Instance> {
    let file = dir.join("model.onnx");
    let model = backend.load(&spec(config, &file)).unwrap();
    model
        .instance(&InstanceOptions {
            index: 0,
            intra_op_threads: 1,
        })
        .unwrap()
}

pub fn load(backend: &dyn Backend, config: &ModelConfig) -> Box<dyn Instance> {
    load_in(backend, config, Path::new("/nonexistent/1"))
}

pub fn load_err_in(backend: &dyn Backend, config: &ModelConfig, dir: &Path) -> Error {
    let file = dir.join("model.onnx");
    match backend.load(&spec(config, &file)) {
        Ok(_) => panic!("the config loaded: {config:?}"),
        Err(e) => e,
    }
}

pub fn load_err(backend: &dyn Backend, config: &ModelConfig) -> Error {
    load_err_in(backend, config, Path::new("/nonexistent/1"))
}

pub fn bytes_tensor(name: &str, rows: &[&[u8]]) -> Tensor {
    Tensor::new(
        name,
        DataType::Bytes,
        vec![rows.len(), 1],
        sluice_core::serialize_bytes(rows).unwrap(),
    )
    .unwrap()
}

pub fn f32_tensor(name: &str, shape: Vec<usize>, values: &[f32]) -> Tensor {
    crate::params::f32_tensor(name, shape, values).unwrap()
}

pub fn i64_tensor(name: &str, shape: Vec<usize>, values: &[i64]) -> Tensor {
    crate::params::int_tensor(name, DataType::I64, shape, values.iter().copied()).unwrap()
}

pub fn read_f32(t: &Tensor) -> Vec<f32> {
    crate::params::f32_values(t)
}

pub fn read_i64(t: &Tensor) -> Vec<i64> {
    crate::params::int_values(t).unwrap()
}

pub fn read_strings(t: &Tensor) -> Vec<String> {
    t.bytes_elements()
        .map(|e| String::from_utf8(e.unwrap().to_vec()).unwrap())
        .collect()
}
