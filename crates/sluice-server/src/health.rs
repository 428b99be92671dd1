//! Server health, server metadata and the repository index.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use crate::{ApiError, AppState};

/// What `GET /v2` lists: only what this server implements.
pub const EXTENSIONS: &[&str] = &["binary_tensor_data", "model_configuration"];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(metadata))
        .route("/v2/repository/index", post(index))
}

async fn live(State(s): State<AppState>) -> impl IntoResponse {
    let live = s.runtime.live();
    (status(live), Json(json!({ "live": live })))
}

async fn ready(State(s): State<AppState>) -> impl IntoResponse {
    let ready = s.runtime.ready();
    (status(ready), Json(json!({ "ready": ready })))
}

fn status(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn metadata() -> impl IntoResponse {
    Json(json!({
        "name": "sluice",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
    }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct IndexRequest {
    #[serde(default)]
    ready: bool,
}

async fn index(State(s): State<AppState>, body: Bytes) -> Result<impl IntoResponse, ApiError> {
    let request: IndexRequest = if body.iter().all(u8::is_ascii_whitespace) {
        IndexRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(format!("invalid index request: {e}")))?
    };
    let entries: Vec<_> = s
        .runtime
        .index()
        .into_iter()
        .filter(|e| !request.ready || e.state == sluice_runtime::ModelState::Ready)
        .map(|e| {
            let mut row = json!({ "name": e.name, "state": e.state.as_str(), "reason": e.reason });
            if let Some(v) = e.version {
                row["version"] = json!(v.to_string());
            }
            row
        })
        .collect();
    Ok(Json(entries))
}
