//! The vocabulary of Sluice: datatypes, tensors, model configuration, inference
//! requests and responses, the error type, and the `Backend → LoadedModel → Instance`
//! traits that execution engines implement.
//!
//! Key decision: this crate knows no wire format and does no IO beyond reading a
//! model file's metadata ([`FileIdentity::of`], [`LoadSpec::check_file_exists`]). Every other crate
//! speaks in these types, so a request decoded from HTTP JSON, Triton's binary
//! extension or gRPC becomes the same [`InferRequest`], and is checked once by
//! [`ModelSignature::validate`] into a [`ValidRequest`] that cannot hold a wrong
//! name, datatype or shape by the time it reaches a queue.

mod backend;
mod config;
mod datatype;
pub mod ensemble;
mod error;
mod file;
mod request;
mod reshape;
pub mod rng;
mod signature;
mod tensor;

pub use backend::{
    catch_panics, panic_message, Backend, InlineRun, Instance, InstanceOptions, LoadSpec,
    LoadedModel,
};
pub use config::{
    limits, DynamicBatching, InstanceGroup, ModelConfig, ModelParameter, QueuePolicy, Reshape,
    ResponseCache, TensorConfig, VersionPolicy,
};
pub use datatype::DataType;
pub use error::{Error, ErrorKind, Result};
pub use file::FileIdentity;
pub use request::{
    AnsweredBy, CacheControl, InferRequest, InferResponse, Objective, RequestedOutput,
};
pub use reshape::ReshapePlan;
pub use signature::{BytesContent, ModelSignature, TensorSpec, ValidRequest};
pub use tensor::{serialize_bytes, BytesElements, Tensor};
