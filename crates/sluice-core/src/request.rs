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
