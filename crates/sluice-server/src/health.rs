//! Server health and server metadata.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::AppState;

/// What `GET /v2` lists: only what this server implements.
pub const EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(metadata))
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
