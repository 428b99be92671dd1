//! Triton's model repository extension over HTTP: the index with each model's state
//! and reason, and explicit load (with a config override and model files) and unload.
//!
//! Key decision: load and unload parameters are decoded here, for both protocols, into
//! one [`LoadOptions`]; the runtime never sees base64 or wire parameter types. Loads
//! and unloads block (they build engines, or wait for in-flight requests), so they run
//! on tokio's blocking pool.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use sluice_core::{Error, Result};
use sluice_runtime::{IndexEntry, LoadOptions, ModelState, Runtime};

use crate::{ApiError, AppState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v2/repository/index", post(index))
        .route("/v2/repository/models/{model}/load", post(load))
        .route("/v2/repository/models/{model}/unload", post(unload))
}

/// A load or unload parameter, whichever protocol it came in.
pub(crate) enum Param {
    Str(String),
    Bytes(Vec<u8>),
    Bool(bool),
    /// An integer (its value is not needed by any parameter Sluice reads).
    Int,
}

impl Param {
    fn kind(&self) -> &'static str {
        match self {
            Param::Str(_) => "a string",
            Param::Bytes(_) => "bytes",
            Param::Bool(_) => "a boolean",
            Param::Int => "an integer",
        }
    }
}

/// Triton's load parameters: `config` (a JSON config string) and `file:<path>` (the
/// file's bytes; base64 text over HTTP, raw bytes over gRPC).
pub(crate) fn load_options(params: Vec<(String, Param)>) -> Result<LoadOptions> {
    let mut options = LoadOptions::default();
    for (key, value) in params {
        if key == "config" {
            let Param::Str(text) = value else {
                return Err(Error::invalid(format!(
                    "load parameter 'config' must be a JSON string, got {}",
                    value.kind()
                )));
            };
            options.config = Some(text);
        } else if let Some(path) = key.strip_prefix("file:") {
            let bytes = match value {
                Param::Bytes(b) => b,
                Param::Str(text) => base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .map_err(|e| {
                        Error::invalid(format!("load parameter '{key}' is not valid base64: {e}"))
                    })?,
                other => {
                    return Err(Error::invalid(format!(
                        "load parameter '{key}' must hold the file's bytes, got {}",
                        other.kind()
                    )))
                }
            };
            options.files.push((path.to_owned(), bytes));
        } else {
            return Err(Error::invalid(format!(
                "unknown load parameter '{key}' (expected 'config' or 'file:<version>/<name>')"
            )));
        }
    }
    Ok(options)
}

/// Triton's unload parameters: only `unload_dependents` (unload an ensemble's
/// composing models with it); returns its value.
pub(crate) fn check_unload_params(params: Vec<(String, Param)>) -> Result<bool> {
    let mut dependents = false;
    for (key, value) in params {
        match (key.as_str(), value) {
            ("unload_dependents", Param::Bool(b)) => dependents = b,
            ("unload_dependents", other) => {
                return Err(Error::invalid(format!(
                    "unload parameter 'unload_dependents' must be a boolean, got {}",
                    other.kind()
                )))
            }
            _ => {
                return Err(Error::invalid(format!(
                    "unknown unload parameter '{key}' (expected 'unload_dependents')"
                )))
            }
        }
    }
    Ok(dependents)
}

/// Runs a blocking load on tokio's blocking pool.
pub(crate) async fn run_load(runtime: Runtime, name: String, options: LoadOptions) -> Result<()> {
    tokio::task::spawn_blocking(move || runtime.load(&name, &options))
        .await
        .map_err(|e| Error::internal(format!("the load task failed: {e}")))?
}

/// Runs a blocking unload on tokio's blocking pool.
pub(crate) async fn run_unload(runtime: Runtime, name: String, dependents: bool) -> Result<()> {
    tokio::task::spawn_blocking(move || match dependents {
        true => runtime.unload_with_dependents(&name),
        false => runtime.unload(&name),
    })
    .await
    .map_err(|e| Error::internal(format!("the unload task failed: {e}")))?
}

/// The index rows a request asks for (`ready`: ready ones only).
pub(crate) fn index_rows(runtime: &Runtime, ready: bool) -> Vec<IndexEntry> {
    runtime
        .index()
        .into_iter()
        .filter(|e| !ready || e.state == ModelState::Ready)
        .collect()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct IndexRequest {
    #[serde(default)]
    ready: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ControlRequest {
    #[serde(default)]
    parameters: serde_json::Map<String, Value>,
}

fn parse_body<T: Default + serde::de::DeserializeOwned>(
    body: &Bytes,
    what: &str,
) -> std::result::Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("invalid {what}: {e}")))
}

fn params(map: serde_json::Map<String, Value>) -> Result<Vec<(String, Param)>> {
    map.into_iter()
        .map(|(k, v)| {
            let p = match v {
                Value::String(s) => Param::Str(s),
                Value::Bool(b) => Param::Bool(b),
                Value::Number(n) if n.is_i64() => Param::Int,
                other => {
                    return Err(Error::invalid(format!(
                        "parameter '{k}' must be a string, boolean or integer, got {other}"
                    )))
                }
            };
            Ok((k, p))
        })
        .collect()
}

/// Decodes the body of an HTTP load request (JSON `parameters`, files in base64).
pub(crate) fn load_request(body: &Bytes) -> std::result::Result<LoadOptions, ApiError> {
    let request: ControlRequest = parse_body(body, "load request")?;
    Ok(load_options(params(request.parameters)?)?)
}

/// Reads a control body under `--max-body-bytes` (compressed or not), like infer bodies.
async fn read(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> std::result::Result<Bytes, ApiError> {
    crate::body::read_body(headers, body, s.config.max_body_bytes).await
}

async fn index(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> std::result::Result<impl IntoResponse, ApiError> {
    let body = read(&s, &headers, body).await?;
    let request: IndexRequest = parse_body(&body, "index request")?;
    let rows: Vec<Value> = index_rows(&s.runtime, request.ready)
        .into_iter()
        .map(|e| {
            let mut row = json!({ "name": e.name, "state": e.state.as_str(), "reason": e.reason });
            if let Some(v) = e.version {
                row["version"] = json!(v.to_string());
            }
            if let Some(d) = e.load_duration {
                row["load_duration_ms"] = json!(d.as_secs_f64() * 1e3);
            }
            if let Some(m) = e.memory_bytes {
                row["memory_bytes"] = json!(m);
            }
            if let Some((count, threads)) = e.instances {
                row["instances"] = json!(count);
                row["intra_op_thread_count"] = json!(threads);
            }
            row
        })
        .collect();
    Ok(Json(rows))
}

async fn load(
    State(s): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> std::result::Result<impl IntoResponse, ApiError> {
    let body = read(&s, &headers, body).await?;
    let options = load_request(&body)?;
    run_load(s.runtime.clone(), model, options).await?;
    Ok(StatusCode::OK)
}

async fn unload(
    State(s): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> std::result::Result<impl IntoResponse, ApiError> {
    let body = read(&s, &headers, body).await?;
    let request: ControlRequest = parse_body(&body, "unload request")?;
    let dependents = check_unload_params(params(request.parameters)?)?;
    run_unload(s.runtime.clone(), model, dependents).await?;
    Ok(StatusCode::OK)
}
