//! Model metadata, readiness and configuration, with and without `/versions/{v}`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::{ApiError, AppState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v2/models/{model}", get(metadata))
        .route("/v2/models/{model}/versions/{version}", get(metadata_v))
        .route("/v2/models/{model}/ready", get(ready))
        .route("/v2/models/{model}/versions/{version}/ready", get(ready_v))
        .route("/v2/models/{model}/config", get(config))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(config_v),
        )
}

/// Parses a `{version}` path segment.
pub fn parse_version(version: &str) -> Result<u64, ApiError> {
    version
        .parse::<u64>()
        .map_err(|_| ApiError::invalid(format!("version '{version}' is not a positive integer")))
}

async fn metadata(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    metadata_of(&s, &model, None)
}

async fn metadata_v(
    State(s): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    metadata_of(&s, &model, Some(parse_version(&version)?))
}

fn metadata_of(
    s: &AppState,
    model: &str,
    version: Option<u64>,
) -> Result<impl IntoResponse, ApiError> {
    let meta = s.runtime.model_metadata(model, version)?;
    let sig = &meta.signature;
    let tensors = |specs: &[sluice_core::TensorSpec]| -> Vec<serde_json::Value> {
        specs
            .iter()
            .map(|t| json!({ "name": t.name, "datatype": t.datatype.v2_name(), "shape": sig.full_dims(t) }))
            .collect()
    };
    Ok(Json(json!({
        "name": meta.name,
        "versions": meta.versions.iter().map(u64::to_string).collect::<Vec<_>>(),
        "platform": meta.platform,
        "inputs": tensors(&sig.inputs),
        "outputs": tensors(&sig.outputs),
    })))
}

async fn ready(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    ready_of(&s, &model, None)
}

async fn ready_v(
    State(s): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    ready_of(&s, &model, Some(parse_version(&version)?))
}

fn ready_of(
    s: &AppState,
    model: &str,
    version: Option<u64>,
) -> Result<impl IntoResponse, ApiError> {
    let ready = s.runtime.model_ready(model, version)?;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, Json(json!({ "name": model, "ready": ready }))))
}

async fn config(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(s.runtime.model_config(&model, None)?.as_ref().clone()))
}

async fn config_v(
    State(s): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let version = parse_version(&version)?;
    Ok(Json(
        s.runtime
            .model_config(&model, Some(version))?
            .as_ref()
            .clone(),
    ))
}
