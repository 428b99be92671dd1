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
    /// What a request to a variant family asks of the variant that answers it.
    pub objective: Objective,
}

/// A request's objective for a variant family (`parameters.latency_objective_ms`
/// and `parameters.min_accuracy`); models that are not families ignore it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Objective {
    /// The answer is wanted within this long of arrival.
    pub latency: Option<Duration>,
    /// Only variants at least this accurate may answer.
    pub min_accuracy: Option<f64>,
}

impl Objective {
    /// The request parameter of the latency objective, in milliseconds.
    pub const LATENCY_PARAMETER: &'static str = "latency_objective_ms";
    /// The request parameter of the accuracy floor.
    pub const ACCURACY_PARAMETER: &'static str = "min_accuracy";

    /// Checks the two numbers as they come from the wire.
    pub fn from_numbers(latency_ms: Option<f64>, min_accuracy: Option<f64>) -> crate::Result<Self> {
        let latency = match latency_ms {
            None => None,
            Some(ms) if ms.is_finite() && ms > 0.0 => {
                Some(Duration::from_secs_f64(ms / 1e3).min(crate::limits::MAX_TIMEOUT))
            }
            Some(ms) => {
                return Err(crate::Error::invalid(format!(
                    "parameter '{}' must be a positive number of milliseconds, got {ms}",
                    Self::LATENCY_PARAMETER
                )))
            }
        };
        if let Some(a) = min_accuracy.filter(|a| !a.is_finite() || *a < 0.0) {
            return Err(crate::Error::invalid(format!(
                "parameter '{}' must be a finite number >= 0, got {a}",
                Self::ACCURACY_PARAMETER
            )));
        }
        Ok(Objective {
            latency,
            min_accuracy,
        })
    }
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
    /// The variant that answered a request to a variant family (`model_name` stays
    /// the family's): sent back as the `sluice_variant` and `sluice_variant_version`
    /// response parameters.
    pub answered_by: Option<AnsweredBy>,
}

/// The model and version that answered for a variant family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnsweredBy {
    pub model: String,
    pub version: u64,
}

impl AnsweredBy {
    /// The response parameter naming the variant.
    pub const MODEL_PARAMETER: &'static str = "sluice_variant";
    /// The response parameter naming its version.
    pub const VERSION_PARAMETER: &'static str = "sluice_variant_version";
}
