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
