use std::time::Duration;

use crate::Tensor;

/// An inference request as decoded from any protocol, before it is checked against
/// a model (see [`crate::ModelSignature::validate`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InferRequest {
    /// Client-chosen id, echoed in the response.
    pub id: Option<String>,
    pub inputs: Vec<Tensor>,
    /// Outputs to return; empty means all of the model's outputs.
    pub outputs: Vec<RequestedOutput>,
    /// Priority level, 1 the highest; 0 means the model's default.
    pub priority: u32,
    /// How long the request may wait in the queue (v2 `parameters.timeout`, the gRPC
    /// deadline); `None` means the model's default policy.
    pub timeout: Option<Duration>,
    /// What the response cache may do for this request (the `sluice_cache` parameter).
    pub cache: CacheControl,
}

/// What a request lets the response cache do, from its `sluice_cache` parameter.
/// Only models with `response_cache { enable: true }` on a server with a cache
/// configured cache at all; this narrows what they do for one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CacheControl {
    /// `"use"` (the default): answer from the cache, store a new answer on a miss.
    #[default]
    Use,
    /// `"skip"`: neither look up nor store; the model runs.
    Skip,
    /// `"no_store"`: answer from the cache if it holds the answer; otherwise run and
    /// do not store.
    NoStore,
    /// `"refresh"`: do not look up; run and store the new answer.
    Refresh,
}

impl CacheControl {
    /// The name of the request parameter that carries it.
    pub const PARAMETER: &'static str = "sluice_cache";

    /// Parses the parameter's value.
    pub fn parse(value: &str) -> crate::Result<CacheControl> {
        Ok(match value {
            "use" => CacheControl::Use,
            "skip" => CacheControl::Skip,
            "no_store" => CacheControl::NoStore,
            "refresh" => CacheControl::Refresh,
            other => {
                return Err(crate::Error::invalid(format!(
                    "parameter '{}' must be one of \"use\", \"skip\", \"no_store\", \"refresh\"; got '{other}'",
                    CacheControl::PARAMETER
                )))
            }
        })
    }

    /// The cache is consulted before running.
    pub fn looks_up(self) -> bool {
        matches!(self, CacheControl::Use | CacheControl::NoStore)
    }

    /// A new answer is stored.
    pub fn stores(self) -> bool {
        matches!(self, CacheControl::Use | CacheControl::Refresh)
    }
}

/// An output named by the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedOutput {
    pub name: String,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: u64,
    pub id: Option<String>,
    pub outputs: Vec<Tensor>,
}
