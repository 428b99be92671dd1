//! Per-image time of the `sluice_image` step alone (no server): decode, resize to a
//! shorter side of 256, center crop 224, normalize `(x - 127) / 128` into NCHW, the
//! EfficientNet-Lite recipe of `examples/pipelines/image_preprocess`. One thread.
//!
//! `cargo run --release -p sluice-backend-builtin --example image_step_bench -- IMAGE... [--iterations N]`
//!
//! Prints one line per image: `<file> <µs per image>`. `bench/image_step.py` runs it next
//! to the same work in Pillow + numpy.

use std::path::Path;
use std::time::Instant;

use sluice_core::{
    Backend, DataType, InstanceOptions, LoadSpec, ModelConfig, ModelParameter, Tensor, TensorConfig,
};

fn main() {
    let mut files = Vec::new();
    let mut iterations = 200usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--iterations" {
            iterations = args
                .next()
                .and_then(|n| n.parse().ok())
                .expect("--iterations N");
        } else {
            files.push(a);
        }
    }
    let params = [
        ("resize", "shorter_side"),
        ("shorter_side", "256"),
        ("scale", "1"),
        ("mean", "127"),
        ("std", "128"),
    ];
    let config = ModelConfig {
        name: "image_preprocess".into(),
        backend: "sluice_image".into(),
        max_batch_size: 1,
        input: vec![TensorConfig::new("image", DataType::Bytes, vec![1])],
        output: vec![TensorConfig::new(
            "pixels",
            DataType::F32,
            vec![3, 224, 224],
        )],
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
    };
    let model = sluice_backend_builtin::ImageBackend
        .load(&LoadSpec {
            model_name: "image_preprocess",
            version: 1,
            model_file: Path::new("1/model.onnx"),
            config: &config,
        })
        .expect("load");
    let mut instance = model
        .instance(&InstanceOptions {
            index: 0,
            intra_op_threads: 1,
        })
        .expect("instance");
    for file in files {
        let bytes = std::fs::read(&file).expect("read the image");
        let data = sluice_core::serialize_bytes([&bytes]).expect("serialize");
        let input = Tensor::new("image", DataType::Bytes, vec![1, 1], data).expect("tensor");
        for _ in 0..5 {
            instance.run(vec![input.clone()]).expect("run");
        }
        let started = Instant::now();
        for _ in 0..iterations {
            instance.run(vec![input.clone()]).expect("run");
        }
        let us = started.elapsed().as_secs_f64() * 1e6 / iterations as f64;
        println!("{file} {us:.1}");
    }
}
