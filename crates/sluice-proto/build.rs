//! Compiles `proto/*.proto` with the `protoc` shipped inside the `protoc-bin-vendored`
//! crate, so a fresh machine builds without installing anything by hand. Generates
//! prost messages (bytes fields as `bytes::Bytes`, so tensor payloads are sliced out
//! of the received buffer rather than copied), tonic server and client code, and
//! serde implementations (protobuf's JSON mapping, via pbjson) for the model
//! configuration messages.

use std::path::PathBuf;

/// The messages of `model_config.proto`, which get the JSON mapping: a model's
/// configuration is held as JSON by the server and turned into these messages.
const MODEL_CONFIG_TYPES: &[&str] = &[
    ".inference.DataType",
    ".inference.ModelRateLimiter",
    ".inference.ModelInstanceGroup",
    ".inference.ModelTensorReshape",
    ".inference.ModelInput",
    ".inference.ModelOutput",
    ".inference.BatchInput",
    ".inference.BatchOutput",
    ".inference.ModelVersionPolicy",
    ".inference.ModelOptimizationPolicy",
    ".inference.ModelQueuePolicy",
    ".inference.ModelDynamicBatching",
    ".inference.ModelSequenceBatching",
    ".inference.ModelEnsembling",
    ".inference.ModelParameter",
    ".inference.ModelWarmup",
    ".inference.ModelOperations",
    ".inference.ModelTransactionPolicy",
    ".inference.ModelRepositoryAgents",
    ".inference.ModelResponseCache",
    ".inference.ModelMetrics",
    ".inference.ModelConfig",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = out_dir.join("inference_descriptor.bin");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(".")
        .file_descriptor_set_path(&descriptors)
        .compile_with_config(
            config,
            &["proto/grpc_service.proto", "proto/model_config.proto"],
            &["proto"],
        )?;
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptors)?)?
        .preserve_proto_field_names()
        .build(MODEL_CONFIG_TYPES)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
