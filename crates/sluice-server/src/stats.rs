//! Triton's statistics extension: `GET v2/models[/{m}[/versions/{v}]]/stats` over
//! HTTP and `ModelStatistics` over gRPC.
//!
//! Key decision: one conversion, from the runtime's [`VersionStats`] to the protobuf
//! `ModelStatistics`; the HTTP body is written from that message (with numbers, as
//! Triton's HTTP endpoint does, not the strings of protobuf's JSON mapping), so the
//! two protocols cannot disagree. `cache_hit` and `cache_miss` follow Triton: a hit's
//! time is its lookup, a miss's the lookup plus the insert; hits count in `success`
//! and never in `inference_count` or `execution_count`.

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use sluice_proto::inference::{
    InferBatchStatistics, InferStatistics, ModelStatistics, StatisticDuration,
};
use sluice_runtime::{Runtime, VersionStats};

use crate::models::parse_version;
use crate::{ApiError, AppState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v2/models/stats", get(all))
        .route("/v2/models/{model}/stats", get(model))
        .route("/v2/models/{model}/versions/{version}/stats", get(version))
}

async fn all(State(s): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    body(&s.runtime, None, None)
}

async fn model(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    body(&s.runtime, Some(&model), None)
}

async fn version(
    State(s): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let version = parse_version(&version)?;
    body(&s.runtime, Some(&model), Some(version))
}

fn body(
    runtime: &Runtime,
    model: Option<&str>,
    version: Option<u64>,
) -> Result<Json<Value>, ApiError> {
    let versions = runtime.stats(model, version)?;
    let mut rows: Vec<Value> = versions
        .iter()
        .map(|v| {
            let mut row = to_json(&to_proto(v));
            // Sluice's addition: what the version runs now (see the instances API).
            row["instances"] = json!(v.instances.count);
            row["intra_op_thread_count"] = json!(v.instances.threads_per_instance);
            row
        })
        .collect();
    // A variant family's row also says how many requests each variant answered.
    let families = runtime.variant_choices();
    for row in &mut rows {
        if let Some((_, variants)) = families.iter().find(|(n, _)| row["name"] == n.as_str()) {
            row["variant_choices"] = variants
                .iter()
                .map(|v| json!({ "variant": v.variant, "count": v.count }))
                .collect();
        }
    }
    Ok(Json(json!({ "model_stats": rows })))
}

/// The statistics of every ready version (`model` `None`), of one model's ready
/// versions, or of one version.
pub fn model_statistics(
    runtime: &Runtime,
    model: Option<&str>,
    version: Option<u64>,
) -> sluice_core::Result<Vec<ModelStatistics>> {
    Ok(runtime
        .stats(model, version)?
        .iter()
        .map(to_proto)
        .collect())
}

fn duration((count, ns): (u64, u64)) -> Option<StatisticDuration> {
    Some(StatisticDuration { count, ns })
}

fn to_proto(v: &VersionStats) -> ModelStatistics {
    let s = &v.stats;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    ModelStatistics {
        name: v.name.clone(),
        version: v.version.to_string(),
        last_inference: s.last_inference_ms(),
        inference_count: load(&s.rows),
        execution_count: load(&s.executions),
        inference_stats: Some(InferStatistics {
            success: duration(s.success.get()),
            fail: duration(s.fail.get()),
            queue: duration(s.queue.get()),
            compute_input: duration(s.compute_input.get()),
            compute_infer: duration(s.compute_infer.get()),
            compute_output: duration(s.compute_output.get()),
            cache_hit: duration(s.cache_hit.get()),
            cache_miss: duration(s.cache_miss.get()),
        }),
        batch_stats: s
            .batch_stats()
            .map(|(rows, b)| InferBatchStatistics {
                batch_size: rows as u64,
                compute_input: duration(b.compute_input.get()),
                compute_infer: duration(b.compute_infer.get()),
                compute_output: duration(b.compute_output.get()),
            })
            .collect(),
        memory_usage: vec![sluice_proto::inference::MemoryUsage {
            r#type: "CPU".to_owned(),
            id: 0,
            byte_size: v.memory_bytes,
        }],
        response_stats: Default::default(),
    }
}

fn duration_json(d: Option<&StatisticDuration>) -> Value {
    let d = d.copied().unwrap_or_default();
    json!({ "count": d.count, "ns": d.ns })
}

/// Triton's HTTP shape of one model's statistics.
fn to_json(m: &ModelStatistics) -> Value {
    let i = m.inference_stats.unwrap_or_default();
    json!({
        "name": m.name,
        "version": m.version,
        "last_inference": m.last_inference,
        "inference_count": m.inference_count,
        "execution_count": m.execution_count,
        "inference_stats": {
            "success": duration_json(i.success.as_ref()),
            "fail": duration_json(i.fail.as_ref()),
            "queue": duration_json(i.queue.as_ref()),
            "compute_input": duration_json(i.compute_input.as_ref()),
            "compute_infer": duration_json(i.compute_infer.as_ref()),
            "compute_output": duration_json(i.compute_output.as_ref()),
            "cache_hit": duration_json(i.cache_hit.as_ref()),
            "cache_miss": duration_json(i.cache_miss.as_ref()),
        },
        "batch_stats": m.batch_stats.iter().map(|b| json!({
            "batch_size": b.batch_size,
            "compute_input": duration_json(b.compute_input.as_ref()),
            "compute_infer": duration_json(b.compute_infer.as_ref()),
            "compute_output": duration_json(b.compute_output.as_ref()),
        })).collect::<Vec<_>>(),
        "memory_usage": m.memory_usage.iter().map(|u| json!({
            "type": u.r#type,
            "id": u.id,
            "byte_size": u.byte_size,
        })).collect::<Vec<_>>(),
    })
}
