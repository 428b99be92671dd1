//! Sluice's instances extension: `GET /v2/models/{m}/instances` reads the instances
//! each ready version runs, `POST` with `{"count": N, "intra_op_thread_count": T}`
//! (either or both) changes them in place, without a reload. Over gRPC the same
//! change is a `RepositoryModelLoad` whose config differs only in `instance_group`
//! counts and `intra_op_thread_count` (Triton's in-place rule), so no new RPC.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use sluice_core::Error;
use sluice_runtime::InstanceView;

use crate::{ApiError, AppState};

pub fn router() -> Router<AppState> {
    Router::new().route("/v2/models/{model}/instances", get(read).post(change))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Change {
    count: Option<usize>,
    intra_op_thread_count: Option<usize>,
}

fn answer(model: &str, views: &[InstanceView]) -> Json<Value> {
    Json(json!({
        "name": model,
        "versions": views.iter().map(|v| {
            let mut row = json!({
                "version": v.version.to_string(),
                "count": v.count,
                "intra_op_thread_count": v.threads_per_instance,
                "running_threads": v.running_threads,
            });
            if let Some((min, max)) = v.autoscale {
                row["autoscale"] = json!({ "min": min, "max": max });
            }
            row
        }).collect::<Vec<_>>(),
    }))
}

async fn read(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(answer(&model, &s.runtime.instances(&model)?))
}

async fn change(
    State(s): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let body = crate::body::read_body(&headers, body, s.config.max_body_bytes).await?;
    let request: Change = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid(format!(
            "instances request: {e} (expected {{\"count\": N, \"intra_op_thread_count\": T}})"
        ))
    })?;
    if request.count.is_none() && request.intra_op_thread_count.is_none() {
        return Err(ApiError::invalid(
            "instances request: give \"count\", \"intra_op_thread_count\" or both",
        ));
    }
    let runtime = s.runtime.clone();
    let name = model.clone();
    let views = tokio::task::spawn_blocking(move || {
        runtime.set_instances(&name, request.count, request.intra_op_thread_count)
    })
    .await
    .map_err(|e| Error::internal(format!("the instances task failed: {e}")))??;
    Ok(answer(&model, &views))
}
